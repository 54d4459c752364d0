//! Signals as flags: SIGTERM and SIGINT ask to stop, SIGHUP to reopen the
//! device, SIGUSR1 for the statistics line now. The handlers (signal-hook)
//! only set atomic flags; the supervisor loop reads and clears them on the
//! main thread, and threads that must stop too share the stop flag.
//!
//! A program handles only the signals it has a use for: the sender takes
//! no SIGHUP or SIGUSR1, so a hangup of its terminal still ends it, as the
//! default action does.

use core::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A handler could not be installed.
#[derive(Debug)]
pub enum Error {
    Install { signal: i32, source: std::io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Install { signal, source } => write!(
                f,
                "cannot install the handler for signal {signal}: {source} (is the process \
                 started under a seccomp filter that forbids rt_sigaction?)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Install { source, .. } => Some(source),
        }
    }
}

/// Which signals besides SIGTERM/SIGINT a program handles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// SIGHUP: reopen the device.
    pub reopen: bool,
    /// SIGUSR1: print the statistics line now.
    pub statistics: bool,
}

/// The flags the handlers set.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    stop: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
    statistics: Arc<AtomicBool>,
}

impl Signals {
    /// Registers SIGTERM and SIGINT (stop), and SIGHUP and SIGUSR1 when
    /// `handled` asks for them.
    pub fn install(handled: Handled) -> Result<Signals, Error> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let signals = Signals::unhooked();
        let mut wanted = vec![(SIGTERM, &signals.stop), (SIGINT, &signals.stop)];
        if handled.reopen {
            wanted.push((SIGHUP, &signals.reopen));
        }
        if handled.statistics {
            wanted.push((SIGUSR1, &signals.statistics));
        }
        for (signal, flag) in wanted {
            signal_hook::flag::register(signal, Arc::clone(flag))
                .map_err(|source| Error::Install { signal, source })?;
        }
        Ok(signals)
    }

    /// Flags no handler sets: for tests, which raise them by hand.
    pub fn unhooked() -> Signals {
        Signals::default()
    }

    /// The stop flag, for threads that end on SIGTERM/SIGINT too.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Whether a stop was asked for (the flag stays set).
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks to stop, as SIGTERM does.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// True once per SIGHUP (several before the check count as one).
    pub fn take_reopen(&self) -> bool {
        self.reopen.swap(false, Ordering::AcqRel)
    }

    /// Asks for a reopen, as SIGHUP does.
    pub fn request_reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// True once per SIGUSR1 (several before the check count as one).
    pub fn take_statistics(&self) -> bool {
        self.statistics.swap(false, Ordering::AcqRel)
    }

    /// Asks for the statistics line, as SIGUSR1 does.
    pub fn request_statistics(&self) {
        self.statistics.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{raise, Signal};

    #[test]
    fn hangup_and_user1_set_their_flags_once() {
        let signals = Signals::install(Handled {
            reopen: true,
            statistics: true,
        })
        .unwrap();
        raise(Signal::SIGUSR1).unwrap();
        raise(Signal::SIGHUP).unwrap();
        raise(Signal::SIGHUP).unwrap();
        assert!(signals.take_statistics());
        assert!(!signals.take_statistics());
        assert!(signals.take_reopen());
        assert!(!signals.take_reopen());
        assert!(!signals.stop_requested());
    }

    #[test]
    fn stop_flag_is_shared_with_threads() {
        let signals = Signals::unhooked();
        let for_thread = signals.stop_flag();
        assert!(!for_thread.load(Ordering::Relaxed));
        signals.request_stop();
        assert!(for_thread.load(Ordering::Relaxed));
        assert!(signals.stop_requested());
    }
}
