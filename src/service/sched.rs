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

/// Linux's MCL_ONFAULT (since 4.4; the same value on arm, aarch64 and
/// x86), which the libc crate does not export for glibc targets.
const MCL_ONFAULT: nix::libc::c_int = 4;

/// Locks the process's pages in memory as they are touched, so the audio
/// path never waits for a page to come back from swap. On fault, not all
/// at once: the sound-server client libraries (libpulse, PipeWire) map
/// hundreds of MiB of shared-memory pools they never touch, and locking
/// those would make them resident (seen: 291 MB instead of 8 MB). The
/// playout thread's buffers are touched at start-up and stay locked.
pub fn lock_memory() -> Result<(), SchedError> {
    let flags = nix::libc::MCL_CURRENT | nix::libc::MCL_FUTURE;
    // SAFETY: mlockall takes only flags and touches no memory of ours.
    let rc = unsafe { nix::libc::mlockall(flags | MCL_ONFAULT) };
    if rc == 0 {
        return Ok(());
    }
    let errno = nix::errno::Errno::last();
    if errno != nix::errno::Errno::EINVAL {
        return Err(SchedError::LockMemory(errno));
    }
    // A kernel older than 4.4 has no MCL_ONFAULT: lock everything.
    // SAFETY: as above.
    let rc = unsafe { nix::libc::mlockall(flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(SchedError::LockMemory(nix::errno::Errno::last()))
    }
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
