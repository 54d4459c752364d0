//! The process around the data path: logging (syslog under systemd or with
//! `--syslog`, stderr otherwise) and signals (SIGTERM/SIGINT stop,
//! SIGHUP reopens the device, SIGUSR1 prints statistics). Signal handlers
//! only set flags; the main thread acts on them.

pub mod alloc;
pub mod clock;
pub mod notify;
pub mod ratelimit;
pub mod sched;

use core::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub enum ServiceError {
    /// A signal handler could not be installed.
    Signal(std::io::Error),
    /// The logger was installed twice (a bug in the binary).
    Logger(log::SetLoggerError),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Signal(e) => write!(f, "cannot install signal handlers: {e}"),
            ServiceError::Logger(e) => write!(f, "cannot install the logger: {e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
}

impl LogTarget {
    /// Syslog when asked, or when systemd started us (it sets
    /// INVOCATION_ID, and JOURNAL_STREAM when stderr goes to the journal);
    /// stderr otherwise, so a user at a terminal sees the lines.
    pub fn choose(syslog_flag: bool) -> LogTarget {
        let under_systemd = std::env::var_os("INVOCATION_ID").is_some()
            || std::env::var_os("JOURNAL_STREAM").is_some();
        if syslog_flag || under_systemd {
            LogTarget::Syslog
        } else {
            LogTarget::Stderr
        }
    }
}

/// `-v`/`-q` counts → level: default info, -v debug, -vv trace, -q warn, -qq error.
pub fn level_from_verbosity(verbose: u8, quiet: u8) -> log::LevelFilter {
    match verbose as i32 - quiet as i32 {
        i32::MIN..=-2 => log::LevelFilter::Error,
        -1 => log::LevelFilter::Warn,
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // The target is the module path; its last part names the stage
        // that speaks (net, jitter, playout, alsa_out...).
        let stage = record.target().rsplit("::").next().unwrap_or("");
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{} {}: {}",
            record.level().as_str().to_ascii_lowercase(),
            stage,
            record.args()
        );
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger once, at startup. Falls back to stderr (and says
/// so) when syslog cannot be reached.
pub fn init_logging(
    program: &'static str,
    target: LogTarget,
    level: log::LevelFilter,
) -> Result<(), ServiceError> {
    if target == LogTarget::Syslog {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: program.into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(writer) => {
                log::set_boxed_logger(Box::new(syslog::BasicLogger::new(writer)))
                    .map_err(ServiceError::Logger)?;
                log::set_max_level(level);
                return Ok(());
            }
            Err(e) => {
                eprintln!("warn service: syslog unavailable ({e}); logging to stderr");
            }
        }
    }
    log::set_boxed_logger(Box::new(StderrLogger { level })).map_err(ServiceError::Logger)?;
    log::set_max_level(level);
    Ok(())
}

/// Flags set by signal handlers, read and cleared by the main thread.
#[derive(Clone, Default)]
pub struct SignalFlags {
    pub stop: Arc<AtomicBool>,
    pub reopen: Arc<AtomicBool>,
    pub stats: Arc<AtomicBool>,
}

impl SignalFlags {
    /// Registers SIGTERM, SIGINT → stop; SIGHUP → reopen; SIGUSR1 → stats.
    pub fn install() -> Result<SignalFlags, ServiceError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let flags = SignalFlags::default();
        for (sig, flag) in [
            (SIGTERM, &flags.stop),
            (SIGINT, &flags.stop),
            (SIGHUP, &flags.reopen),
            (SIGUSR1, &flags.stats),
        ] {
            signal_hook::flag::register(sig, Arc::clone(flag)).map_err(ServiceError::Signal)?;
        }
        Ok(flags)
    }

    /// Returns true once per raised flag.
    pub fn take(flag: &AtomicBool) -> bool {
        flag.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level_from_verbosity(0, 0), log::LevelFilter::Info);
        assert_eq!(level_from_verbosity(1, 0), log::LevelFilter::Debug);
        assert_eq!(level_from_verbosity(3, 0), log::LevelFilter::Trace);
        assert_eq!(level_from_verbosity(0, 1), log::LevelFilter::Warn);
        assert_eq!(level_from_verbosity(0, 5), log::LevelFilter::Error);
    }

    #[test]
    fn signal_sets_flag_once() {
        let flags = SignalFlags::install().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR1).unwrap();
        assert!(SignalFlags::take(&flags.stats));
        assert!(!SignalFlags::take(&flags.stats));
    }
}
