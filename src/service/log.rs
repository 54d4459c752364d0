//! Logging: where the lines go and how they look.
//!
//! Stderr for a user at a terminal, syslog under systemd (it sets
//! `INVOCATION_ID`, and `JOURNAL_STREAM` when stderr goes to the journal)
//! or with `--syslog`. Every line names the stage that speaks once: the
//! last part of the record's target (the module path: `net`, `playout`,
//! `notify`...), unless the message already starts with that name
//! followed by `: `, so a stage that spells out its own prefix is not
//! printed twice ("net: net: ..." was). The level comes from `-v`/`-q`.

use core::fmt;
use std::io::Write;
use std::sync::Mutex;

/// The logger could not be installed.
#[derive(Debug)]
pub enum Error {
    /// A logger was already installed (a bug in the binary: it installs
    /// once, at startup).
    AlreadyInstalled(log::SetLoggerError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyInstalled(e) => write!(
                f,
                "cannot install the logger: {e} (a bug: please report it with the command line)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
}

impl LogTarget {
    /// Syslog when asked, or when systemd started us; stderr otherwise, so
    /// a user at a terminal sees the lines.
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

/// `-v`/`-q` counts → level: default info, -v debug, -vv trace, -q warn,
/// -qq error.
pub fn level_from_verbosity(verbose: u8, quiet: u8) -> log::LevelFilter {
    match verbose as i32 - quiet as i32 {
        i32::MIN..=-2 => log::LevelFilter::Error,
        -1 => log::LevelFilter::Warn,
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// The level as the stderr lines have always shown it.
fn level_word(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// The stage a record names: the last part of its target.
fn stage(target: &str) -> &str {
    target.rsplit("::").next().unwrap_or(target)
}

/// Writes `stage: message` with the stage once: a message that already
/// starts with `stage: ` is written as it is.
fn write_line(out: &mut impl fmt::Write, target: &str, args: &fmt::Arguments) -> fmt::Result {
    let stage = stage(target);
    // The prefix may come from an argument (a logged error's Display), so
    // the formatted text is checked, without allocating: a probe reads
    // only as far as the prefix decides.
    let mut probe = Probe::new(stage);
    let _ = fmt::write(&mut probe, *args);
    if probe.has_prefix() {
        write!(out, "{args}")
    } else {
        write!(out, "{stage}: {args}")
    }
}

/// Compares the start of a formatted message with `stage: `, then stops
/// listening (returns an error, which `fmt::write` takes as "enough").
struct Probe<'a> {
    expected: [&'a [u8]; 2],
    matched: usize,
    decided: Option<bool>,
}

impl<'a> Probe<'a> {
    fn new(stage: &'a str) -> Probe<'a> {
        Probe {
            expected: [stage.as_bytes(), b": "],
            matched: 0,
            decided: None,
        }
    }

    fn has_prefix(&self) -> bool {
        self.decided == Some(true)
    }

    fn want(&self) -> usize {
        self.expected[0].len() + self.expected[1].len()
    }

    fn byte_at(&self, i: usize) -> u8 {
        let first = self.expected[0];
        if i < first.len() {
            first[i]
        } else {
            self.expected[1][i - first.len()]
        }
    }
}

impl fmt::Write for Probe<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.decided.is_some() {
            return Err(fmt::Error);
        }
        for &b in s.as_bytes() {
            if b != self.byte_at(self.matched) {
                self.decided = Some(false);
                return Err(fmt::Error);
            }
            self.matched += 1;
            if self.matched == self.want() {
                self.decided = Some(true);
                return Err(fmt::Error);
            }
        }
        Ok(())
    }
}

/// Adapts an `io::Write` to `fmt::Write` for [`write_line`].
struct IoFmt<W: Write>(W);

impl<W: Write> fmt::Write for IoFmt<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write_all(s.as_bytes()).map_err(|_| fmt::Error)
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
        let mut err = IoFmt(std::io::stderr().lock());
        // One write per line piece under the stderr lock: lines of two
        // threads never interleave. A closed stderr loses the line, which
        // is all a logger can do.
        let _ = fmt::Write::write_str(&mut err, level_word(record.level()));
        let _ = fmt::Write::write_str(&mut err, " ");
        let _ = write_line(&mut err, record.target(), record.args());
        let _ = fmt::Write::write_str(&mut err, "\n");
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Syslog with the stage named like on stderr (the syslog crate's own
/// logger writes the bare message, which hides who speaks).
struct SyslogLogger {
    level: log::LevelFilter,
    writer: Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>,
}

impl log::Log for SyslogLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = String::new();
        let _ = write_line(&mut line, record.target(), record.args());
        // A poisoned lock means a panic while logging elsewhere; keep
        // logging rather than lose every later line.
        let mut w = match self.writer.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = match record.level() {
            log::Level::Error => w.err(line),
            log::Level::Warn => w.warning(line),
            log::Level::Info => w.info(line),
            log::Level::Debug | log::Level::Trace => w.debug(line),
        };
    }

    fn flush(&self) {}
}

/// Installs the logger once, at startup. Falls back to stderr (and says
/// so) when syslog cannot be reached.
pub fn init(
    program: &'static str,
    target: LogTarget,
    level: log::LevelFilter,
) -> Result<(), Error> {
    let logger: Box<dyn log::Log> = match target {
        LogTarget::Stderr => Box::new(StderrLogger { level }),
        LogTarget::Syslog => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: program.into(),
                pid: std::process::id(),
            };
            match syslog::unix(formatter) {
                Ok(writer) => Box::new(SyslogLogger {
                    level,
                    writer: Mutex::new(writer),
                }),
                Err(e) => {
                    eprintln!("warn service: syslog unavailable ({e}); logging to stderr");
                    Box::new(StderrLogger { level })
                }
            }
        }
    };
    log::set_boxed_logger(logger).map_err(Error::AlreadyInstalled)?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(target: &str, args: fmt::Arguments) -> String {
        let mut s = String::new();
        write_line(&mut s, target, &args).unwrap();
        s
    }

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level_from_verbosity(0, 0), log::LevelFilter::Info);
        assert_eq!(level_from_verbosity(1, 0), log::LevelFilter::Debug);
        assert_eq!(level_from_verbosity(3, 0), log::LevelFilter::Trace);
        assert_eq!(level_from_verbosity(0, 1), log::LevelFilter::Warn);
        assert_eq!(level_from_verbosity(0, 5), log::LevelFilter::Error);
    }

    #[test]
    fn stage_is_last_part_of_module_path() {
        assert_eq!(
            line("netspeaker::receive::playout", format_args!("underrun")),
            "playout: underrun"
        );
        assert_eq!(line("netspeaker", format_args!("up")), "netspeaker: up");
    }

    #[test]
    fn stage_named_once_when_message_already_names_it() {
        let n = 3;
        assert_eq!(
            line(
                "netspeaker::net",
                format_args!("net: dropped {n} datagrams")
            ),
            "net: dropped 3 datagrams"
        );
        let e = "notify: cannot send";
        assert_eq!(
            line("netspeaker::service::notify", format_args!("{e}")),
            "notify: cannot send"
        );
    }

    #[test]
    fn other_prefix_or_partial_match_still_gets_the_stage() {
        assert_eq!(
            line("netspeaker", format_args!("stopping: packets 1")),
            "netspeaker: stopping: packets 1"
        );
        // The stage name as a word start, without ": ", is not a prefix.
        assert_eq!(
            line("netspeaker::net", format_args!("network down")),
            "net: network down"
        );
        assert_eq!(line("netspeaker::net", format_args!("net")), "net: net");
        assert_eq!(line("netspeaker::net", format_args!("")), "net: ");
    }
}
