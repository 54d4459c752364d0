//! Realtime scheduling and locked memory for the time-critical thread (the
//! receiver's playout thread, the sender's pacing thread). Both are
//! requests: without the privilege (no CAP_SYS_NICE / RLIMIT_RTPRIO, no
//! CAP_IPC_LOCK / RLIMIT_MEMLOCK) the thread runs on at normal priority.
//!
//! [`enter_realtime`] is the one call such a thread makes, at its start: it
//! asks for both and returns what was refused as a value ([`Refusals`]),
//! without logging, so that a thread that must not log (the playout
//! thread) can hand it on, and whoever logs says so once.

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

/// What a thread asks for: SCHED_FIFO at `priority` (0 for none) and
/// locked memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// 1..=99; 0 leaves the thread at normal priority.
    pub priority: i32,
    pub lock_memory: bool,
}

/// What [`enter_realtime`] was refused; empty when everything asked for was
/// granted. Plain values, no allocation: it may be made on a realtime thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "a refusal is to be logged once by the caller"]
pub struct Refusals {
    pub realtime: Option<SchedError>,
    pub memory: Option<SchedError>,
}

impl Refusals {
    /// Whether everything asked for was granted.
    pub fn is_empty(&self) -> bool {
        self.realtime.is_none() && self.memory.is_none()
    }

    /// The refusals, one log line each.
    pub fn iter(&self) -> impl Iterator<Item = &SchedError> {
        self.realtime.iter().chain(self.memory.iter())
    }
}

/// Puts the calling thread in SCHED_FIFO and locks the process's memory,
/// as far as `request` asks and the privileges allow.
pub fn enter_realtime(request: Request) -> Refusals {
    Refusals {
        realtime: if request.priority > 0 {
            set_realtime(request.priority).err()
        } else {
            None
        },
        memory: if request.lock_memory {
            lock_memory().err()
        } else {
            None
        },
    }
}

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

    #[test]
    fn nothing_asked_nothing_refused() {
        let r = enter_realtime(Request {
            priority: 0,
            lock_memory: false,
        });
        assert!(r.is_empty());
        assert_eq!(r.iter().count(), 0);
    }

    #[test]
    fn impossible_priority_refused_as_a_value() {
        // Priority 1000 is out of range for every policy: refused even with
        // CAP_SYS_NICE, so the test holds under root too.
        let r = enter_realtime(Request {
            priority: 1000,
            lock_memory: false,
        });
        assert!(!r.is_empty());
        assert!(matches!(
            r.realtime,
            Some(SchedError::Realtime { priority: 1000, .. })
        ));
        assert!(r.memory.is_none());
        assert_eq!(r.iter().count(), 1);
    }
}
