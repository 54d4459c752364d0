//! Realtime scheduling and locked memory for the playout thread. Both are
//! requests: without the privilege (no CAP_SYS_NICE / RLIMIT_RTPRIO, no
//! CAP_IPC_LOCK / RLIMIT_MEMLOCK) the caller says so once and runs on at
//! normal priority, as DESIGN.md asks.

use core::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedError {
    /// SCHED_FIFO refused; carries the priority asked for and errno.
    Realtime {
        priority: i32,
        errno: nix::errno::Errno,
    },
    /// mlockall refused.
    LockMemory(nix::errno::Errno),
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedError::Realtime { priority, errno } => write!(
                f,
                "cannot use realtime priority SCHED_FIFO {priority} ({errno}): running at normal \
                 priority; grant CAP_SYS_NICE or LimitRTPRIO= (the systemd unit does), or use --rt-priority 0"
            ),
            SchedError::LockMemory(errno) => write!(
                f,
                "cannot lock memory ({errno}): pages may be swapped out under memory pressure; \
                 grant CAP_IPC_LOCK or LimitMEMLOCK= (the systemd unit does)"
            ),
        }
    }
}

impl std::error::Error for SchedError {}

/// Puts the calling thread in SCHED_FIFO at `priority` (1..=99).
pub fn set_realtime(priority: i32) -> Result<(), SchedError> {
    let param = libc_sched_param(priority);
    // SAFETY: pthread_self() is always valid for the calling thread and
    // `param` is a fully initialised sched_param.
    let rc = unsafe {
        nix::libc::pthread_setschedparam(nix::libc::pthread_self(), nix::libc::SCHED_FIFO, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(SchedError::Realtime {
            priority,
            errno: nix::errno::Errno::from_raw(rc),
        })
    }
}

fn libc_sched_param(priority: i32) -> nix::libc::sched_param {
    nix::libc::sched_param {
        sched_priority: priority,
    }
}

/// Locks all current and future pages of the process in memory, so the
/// audio path never waits for a page fault from swap.
pub fn lock_memory() -> Result<(), SchedError> {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).map_err(SchedError::LockMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_priority_out_of_range_is_refused_with_reason() {
        let err = set_realtime(1000).unwrap_err();
        assert!(matches!(err, SchedError::Realtime { priority: 1000, .. }));
        assert!(err.to_string().contains("CAP_SYS_NICE"));
    }
}
