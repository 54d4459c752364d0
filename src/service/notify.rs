//! systemd service notification and watchdog (`sd_notify(3)` protocol,
//! spoken directly: no libsystemd).
//!
//! Input: the environment systemd gives a `Type=notify` service
//! (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`) and the playout
//! thread's [`Heartbeat`]. Output: datagrams on the notify socket
//! (`READY=1`, `STATUS=...`, `STOPPING=1`, `RELOADING=1`, `WATCHDOG=1`).
//!
//! Policy: without `NOTIFY_SOCKET` (run by hand, in a test, under another
//! supervisor) every call is a no-op that succeeds. The watchdog is petted
//! only by the main thread through a [`WatchdogGate`], and only when the
//! playout thread's heartbeat advanced since the previous pet: a main thread
//! that keeps running while the playout thread is stuck inside a call (a
//! wedged driver, a hung sound server) must not keep the service alive, so
//! systemd kills and restarts it. A playout thread that is merely waiting
//! for a missing device (reopening with backoff) is alive and keeps beating.
//!
//! Wiring: `main` makes a `Notifier::from_env()` and a
//! `WatchdogGate::from_env(heartbeat)` and hands both to
//! [`crate::service::supervise()`], which sends `READY=1` once the program
//! says it is ready (the receiver: device open, or being waited for — a
//! missing card must not fail the start), ticks the gate at least every
//! `pet_period() / 4` (a late poll eats into the margin the second half of
//! the interval gives), and sends `STOPPING=1` on SIGTERM.

use std::fmt;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest datagram we build; a longer status text is cut at a character
/// boundary (systemd shows one line of status anyway).
const MAX_MESSAGE: usize = 1024;

/// A failure to talk to the service manager. None of them is fatal for the
/// audio; `main` logs them (rate-limited) and runs on.
#[derive(Debug)]
pub enum Error {
    /// `NOTIFY_SOCKET` is neither an absolute path nor an `@abstract` name.
    BadSocketName { name: String },
    /// The local datagram socket could not be created.
    Socket(io::Error),
    /// A message could not be delivered to the notify socket.
    Send { name: String, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadSocketName { name } => write!(
                f,
                "notify: NOTIFY_SOCKET={name:?} is neither an absolute path nor an @abstract \
                 socket name; readiness and watchdog messages are not sent (check the unit's \
                 Type= and the environment of the process that started us)"
            ),
            Error::Socket(e) => write!(
                f,
                "notify: cannot create a Unix datagram socket for systemd notifications: {e} \
                 (check RestrictAddressFamilies= includes AF_UNIX)"
            ),
            Error::Send { name, source } => write!(
                f,
                "notify: cannot send to the systemd notify socket {name}: {source} (is the \
                 service manager still running? is the socket reachable from this mount \
                 namespace?)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::BadSocketName { .. } => None,
            Error::Socket(e) | Error::Send { source: e, .. } => Some(e),
        }
    }
}

/// The connection to the service manager's notify socket, or nothing.
pub struct Notifier {
    target: Option<Target>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// For error messages only.
    name: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; absent or empty gives a no-op notifier. A value
    /// that cannot be used is logged once (warn) and also gives a no-op
    /// notifier: the speaker must play even when supervision is broken.
    pub fn from_env() -> Notifier {
        match Self::try_from_env() {
            Ok(n) => n,
            Err(e) => {
                log::warn!("{e}");
                Notifier::disabled()
            }
        }
    }

    /// Like [`Notifier::from_env`], but a bad `NOTIFY_SOCKET` is an error.
    pub fn try_from_env() -> Result<Notifier, Error> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(Notifier::disabled()),
            Some(v) => match v.to_str() {
                Some("") => Ok(Notifier::disabled()),
                Some(s) => Notifier::connect(s),
                None => Err(Error::BadSocketName {
                    name: v.to_string_lossy().into_owned(),
                }),
            },
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// For the socket named like `NOTIFY_SOCKET`: `/abs/path` or
    /// `@abstract-name`.
    pub fn connect(name: &str) -> Result<Notifier, Error> {
        let bad = || Error::BadSocketName {
            name: name.to_owned(),
        };
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes()).map_err(|_| bad())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        let socket = UnixDatagram::unbound().map_err(Error::Socket)?;
        // Never let a full notify queue stall the main thread (and with it
        // signal handling): a dropped message is reported, not waited for.
        socket.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(Notifier {
            target: Some(Target {
                socket,
                addr,
                name: name.to_owned(),
            }),
        })
    }

    /// Whether messages go anywhere (a service manager is listening).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: the socket is bound and the device open (or being
    /// waited for); systemd considers the start finished.
    pub fn ready(&self) -> Result<(), Error> {
        self.send(b"READY=1")
    }

    /// `READY=1` with a status line in one datagram.
    pub fn ready_with_status(&self, status: &str) -> Result<(), Error> {
        self.send_with_text(b"READY=1\nSTATUS=", status)
    }

    /// `STATUS=...`: one line shown by `systemctl status`. Newlines are
    /// replaced (they would end the field), long text is cut.
    pub fn status(&self, status: &str) -> Result<(), Error> {
        self.send_with_text(b"STATUS=", status)
    }

    /// `STOPPING=1`: shutdown began (a slow drain is not a hang).
    pub fn stopping(&self) -> Result<(), Error> {
        self.send(b"STOPPING=1")
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that `Type=notify-reload`
    /// requires; follow with [`Notifier::ready`] when done.
    pub fn reloading(&self) -> Result<(), Error> {
        if self.target.is_none() {
            return Ok(());
        }
        let mut buf = [0u8; 64];
        let mut w = Cursor::new(&mut buf);
        w.put(b"RELOADING=1\nMONOTONIC_USEC=");
        w.put_u64(crate::service::clock::monotonic_ns() / 1000);
        let len = w.len;
        self.send(&buf[..len])
    }

    /// `WATCHDOG=1`. Call through a [`WatchdogGate`], which knows whether
    /// the playout thread is alive.
    pub fn watchdog(&self) -> Result<(), Error> {
        self.send(b"WATCHDOG=1")
    }

    /// Sends one raw message (`KEY=value` lines). No-op when disabled.
    pub fn send(&self, message: &[u8]) -> Result<(), Error> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        match t.socket.send_to_addr(message, &t.addr) {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Send {
                name: t.name.clone(),
                source,
            }),
        }
    }

    fn send_with_text(&self, prefix: &[u8], text: &str) -> Result<(), Error> {
        if self.target.is_none() {
            return Ok(());
        }
        let mut buf = [0u8; MAX_MESSAGE];
        let mut w = Cursor::new(&mut buf);
        w.put(prefix);
        w.put_line(text);
        let len = w.len;
        self.send(&buf[..len])
    }
}

/// Writes into a fixed buffer, silently cutting what does not fit, so that
/// building a message never allocates.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Cursor { buf, len: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// One field value: newlines would start a new `KEY=`, so they become
    /// spaces; the cut falls on a character boundary.
    fn put_line(&mut self, text: &str) {
        for c in text.chars() {
            let c = if c == '\n' || c == '\r' { ' ' } else { c };
            let mut utf8 = [0u8; 4];
            let s = c.encode_utf8(&mut utf8);
            if s.len() > self.buf.len() - self.len {
                return;
            }
            self.put(s.as_bytes());
        }
    }

    fn put_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&digits[i..]);
    }
}

/// The watchdog timeout systemd expects us to honour (`WatchdogSec=`), from
/// `WATCHDOG_USEC`; `None` when there is no watchdog or it is meant for
/// another process (`WATCHDOG_PID` names a different pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// The pure part of [`watchdog_interval`].
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        // A pid we cannot read is not ours either (sd_watchdog_enabled
        // treats it the same way).
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    match usec?.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(us) => Some(Duration::from_micros(us)),
    }
}

/// Progress of the playout thread: it calls [`Heartbeat::beat`] once per
/// loop iteration (a period written, a period of silence, a reopen attempt
/// or backoff step); the main thread only reads it. Lock-free and
/// allocation-free, so the realtime thread can use it.
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub fn new() -> Heartbeat {
        Heartbeat(AtomicU64::new(0))
    }

    /// One step of progress.
    pub fn beat(&self) {
        // Relaxed: only "has it changed" matters, nothing is published
        // through it.
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Beats so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one [`WatchdogGate::poll`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogCheck {
    /// Not yet half the watchdog interval since the last pet: nothing to do.
    NotDue,
    /// The heartbeat advanced: pet now.
    Pet,
    /// A pet is due but the playout thread made no progress since the last
    /// one, for `stalled_for`: no pet, so systemd restarts us when the
    /// interval runs out.
    Stalled { stalled_for: Duration },
}

/// The main thread's watchdog policy: pet at half the interval (systemd's
/// own advice, leaving a whole half for scheduling delays), and only when
/// the playout thread's heartbeat moved since the last pet.
pub struct WatchdogGate {
    heartbeat: Arc<Heartbeat>,
    pet_every_ns: u64,
    last_pet_ns: u64,
    /// Heartbeat count at the last pet (or at construction).
    last_seen: u64,
    /// Heartbeat count at the previous poll, and when it was last seen to
    /// move (for the stall's duration only).
    polled_seen: u64,
    last_progress_ns: u64,
}

impl WatchdogGate {
    /// For a watchdog timeout of `interval` (from [`watchdog_interval`]);
    /// `now_ns` on [`crate::service::clock::monotonic_ns`].
    pub fn new(heartbeat: Arc<Heartbeat>, interval: Duration, now_ns: u64) -> WatchdogGate {
        let pet_every_ns = (interval.as_nanos() / 2).min(u64::MAX as u128) as u64;
        let last_seen = heartbeat.count();
        WatchdogGate {
            heartbeat,
            pet_every_ns: pet_every_ns.max(1),
            last_pet_ns: now_ns,
            last_seen,
            polled_seen: last_seen,
            last_progress_ns: now_ns,
        }
    }

    /// A gate when systemd asked for a watchdog (`WATCHDOG_USEC`), else
    /// `None`.
    pub fn from_env(heartbeat: Arc<Heartbeat>) -> Option<WatchdogGate> {
        watchdog_interval()
            .map(|i| WatchdogGate::new(heartbeat, i, crate::service::clock::monotonic_ns()))
    }

    /// How often the main thread must call [`WatchdogGate::poll`] at least
    /// (it may call more often).
    pub fn pet_period(&self) -> Duration {
        Duration::from_nanos(self.pet_every_ns)
    }

    /// When the next pet falls due, on the monotonic clock in ns.
    pub fn next_due_ns(&self) -> u64 {
        self.last_pet_ns.saturating_add(self.pet_every_ns)
    }

    /// Decides, and remembers a pet as done when it returns
    /// [`WatchdogCheck::Pet`].
    pub fn poll(&mut self, now_ns: u64) -> WatchdogCheck {
        let seen = self.heartbeat.count();
        if seen != self.polled_seen {
            self.polled_seen = seen;
            self.last_progress_ns = now_ns;
        }
        if now_ns < self.next_due_ns() {
            return WatchdogCheck::NotDue;
        }
        if seen == self.last_seen {
            return WatchdogCheck::Stalled {
                stalled_for: Duration::from_nanos(now_ns.saturating_sub(self.last_progress_ns)),
            };
        }
        self.last_seen = seen;
        self.last_pet_ns = now_ns;
        WatchdogCheck::Pet
    }

    /// [`WatchdogGate::poll`], then `WATCHDOG=1` through `notifier` when the
    /// decision is [`WatchdogCheck::Pet`].
    pub fn tick(&mut self, notifier: &Notifier, now_ns: u64) -> Result<WatchdogCheck, Error> {
        let check = self.poll(now_ns);
        if check == WatchdogCheck::Pet {
            notifier.watchdog()?;
        }
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn watchdog_usec_parsed() {
        assert_eq!(
            parse_watchdog(Some("10000000"), None, 7),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn watchdog_for_other_pid_ignored() {
        assert_eq!(parse_watchdog(Some("10000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("10000000"), Some("x"), 7), None);
        assert_eq!(
            parse_watchdog(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn watchdog_absent_zero_or_garbage_is_none() {
        assert_eq!(parse_watchdog(None, None, 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("-5"), None, 7), None);
        assert_eq!(parse_watchdog(Some("ten"), None, 7), None);
    }

    #[test]
    fn socket_name_must_be_path_or_abstract() {
        assert!(matches!(
            Notifier::connect("relative/sock"),
            Err(Error::BadSocketName { .. })
        ));
        assert!(Notifier::connect("/run/systemd/notify").is_ok());
        assert!(Notifier::connect("@netspeaker-test").is_ok());
    }

    #[test]
    fn disabled_notifier_succeeds_silently() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert!(n.ready().is_ok());
        assert!(n.status("playing").is_ok());
        assert!(n.watchdog().is_ok());
        assert!(n.stopping().is_ok());
        assert!(n.reloading().is_ok());
    }

    #[test]
    fn status_newlines_flattened_and_long_text_cut() {
        let mut buf = [0u8; 16];
        let mut w = Cursor::new(&mut buf);
        w.put(b"STATUS=");
        w.put_line("a\nb\u{e9}\u{e9}\u{e9}\u{e9}");
        let len = w.len;
        // 7 + "a b" (3) + three 2-byte é = 16; the fourth does not fit whole.
        assert_eq!(&buf[..len], "STATUS=a bééé".as_bytes());
    }

    #[test]
    fn decimal_digits() {
        let mut buf = [0u8; 32];
        let mut w = Cursor::new(&mut buf);
        w.put_u64(0);
        w.put(b",");
        w.put_u64(18_446_744_073_709_551_615);
        let len = w.len;
        assert_eq!(&buf[..len], b"0,18446744073709551615");
    }

    #[test]
    fn gate_pets_at_half_interval_while_heartbeat_advances() {
        let hb = Arc::new(Heartbeat::new());
        let mut gate = WatchdogGate::new(hb.clone(), Duration::from_secs(2), 0);
        assert_eq!(gate.pet_period(), Duration::from_secs(1));
        hb.beat();
        assert_eq!(gate.poll(999 * MS), WatchdogCheck::NotDue);
        assert_eq!(gate.poll(1000 * MS), WatchdogCheck::Pet);
        hb.beat();
        assert_eq!(gate.poll(1500 * MS), WatchdogCheck::NotDue);
        assert_eq!(gate.poll(2000 * MS), WatchdogCheck::Pet);
    }

    #[test]
    fn wedged_playout_withholds_pet() {
        let hb = Arc::new(Heartbeat::new());
        let mut gate = WatchdogGate::new(hb.clone(), Duration::from_secs(2), 0);
        hb.beat();
        assert_eq!(gate.poll(1000 * MS), WatchdogCheck::Pet);
        // No beat since: due, but stalled, and it stays stalled.
        assert_eq!(
            gate.poll(2000 * MS),
            WatchdogCheck::Stalled {
                stalled_for: Duration::from_secs(1)
            }
        );
        assert_eq!(
            gate.poll(2500 * MS),
            WatchdogCheck::Stalled {
                stalled_for: Duration::from_millis(1500)
            }
        );
    }

    #[test]
    fn playout_recovering_pets_again_at_once() {
        let hb = Arc::new(Heartbeat::new());
        let mut gate = WatchdogGate::new(hb.clone(), Duration::from_secs(2), 0);
        assert!(matches!(
            gate.poll(1000 * MS),
            WatchdogCheck::Stalled { .. }
        ));
        hb.beat();
        // Overdue already: the first sign of life is petted immediately.
        assert_eq!(gate.poll(1100 * MS), WatchdogCheck::Pet);
        assert_eq!(gate.poll(1200 * MS), WatchdogCheck::NotDue);
    }

    #[test]
    fn heartbeat_counts_beats() {
        let hb = Heartbeat::new();
        assert_eq!(hb.count(), 0);
        hb.beat();
        hb.beat();
        assert_eq!(hb.count(), 2);
    }
}
