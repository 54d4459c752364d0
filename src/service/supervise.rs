//! The main thread's loop, the same for both programs: it waits while the
//! worker threads (net and playout; pacing) do the work, and speaks for
//! the process to systemd and to the operator.
//!
//! Input: the [`Signals`] flags, the worker's [`Heartbeat`] (through a
//! [`WatchdogGate`]), and the program's answer to each poll ([`Poll`]).
//! Output: `READY=1` once, the first time the program answers
//! [`Poll::Ready`] (`STATUS=` with it when given); `WATCHDOG=1` only while
//! the heartbeat moves; `STOPPING=1` on SIGTERM/SIGINT; the program's
//! callbacks: `poll` every `poll_every` (draining events, noticing a
//! finished worker), `statistics` every `statistics_every` and on
//! SIGUSR1, `reopen` on SIGHUP.
//!
//! It returns [`Ending::Stopped`] after `STOPPING=1`, or
//! [`Ending::Finished`] when the program's poll says its work is done (the
//! sender's file ended: no `STOPPING=1`, the process simply exits). A
//! stalled worker is logged (rate-limited), never acted on here: not
//! petting the watchdog is the action, systemd restarts us. Failures to
//! reach systemd are logged rate-limited and otherwise ignored: the audio
//! must go on without a service manager.

use std::time::Duration;

use crate::service::clock::monotonic_ns;
use crate::service::notify::{Notifier, WatchdogCheck, WatchdogGate};
use crate::service::ratelimit::RateLimit;
use crate::service::signals::Signals;

/// The stages the supervisor's lines name: a stall is the watchdog's
/// finding; a failed message is the notify protocol's (its errors start
/// with "notify: ", which the logger then prints once).
const WATCHDOG: &str = "watchdog";
const NOTIFY: &str = "notify";

/// The program's answer to a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Still starting: no `READY=1` yet.
    Starting,
    /// Ready (the supervisor sends `READY=1` the first time only), with
    /// the status line `systemctl status` shows, if any.
    Ready(Option<&'static str>),
    /// The work is done; the supervisor returns [`Ending::Finished`].
    Finished,
}

/// Why [`supervise`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM or SIGINT; `STOPPING=1` was sent.
    Stopped,
    /// The program's poll answered [`Poll::Finished`].
    Finished,
}

/// What the loop watches and how often it wakes.
pub struct Config<'a> {
    pub signals: &'a Signals,
    pub notifier: &'a Notifier,
    /// `None` without `WatchdogSec=` (see [`WatchdogGate::from_env`]).
    pub watchdog: Option<WatchdogGate>,
    /// The thread the heartbeat belongs to, named when it stalls
    /// ("playout", "pacing").
    pub watched: &'static str,
    /// How often `poll` runs; also how late a stop signal may be seen.
    pub poll_every: Duration,
    /// The statistics period; `None` for SIGUSR1 only.
    pub statistics_every: Option<Duration>,
}

/// The program's side of the loop. Run on the main thread, so they may
/// log and allocate.
pub struct Callbacks<'a> {
    pub poll: &'a mut dyn FnMut() -> Poll,
    pub statistics: &'a mut dyn FnMut(),
    pub reopen: &'a mut dyn FnMut(),
}

/// The loop's state, stepped with the time passed in, so that tests run it
/// in simulated time; [`supervise`] steps it on the real clock.
pub struct Supervisor<'a> {
    config: Config<'a>,
    ready_sent: bool,
    last_statistics_ns: u64,
    stall_log: RateLimit,
    notify_log: RateLimit,
}

impl<'a> Supervisor<'a> {
    pub fn new(config: Config<'a>, now_ns: u64) -> Supervisor<'a> {
        Supervisor {
            config,
            ready_sent: false,
            last_statistics_ns: now_ns,
            // One stall line per 10 s: the condition lasts until systemd
            // kills us, the first line says all.
            stall_log: RateLimit::new(10_000_000_000, 1),
            notify_log: RateLimit::default_for_input(),
        }
    }

    /// How long to sleep between steps: the poll period, shorter when the
    /// watchdog needs a check at least every quarter of its pet period (a
    /// late check eats into the margin the second half gives).
    pub fn wake_every(&self) -> Duration {
        let poll = self.config.poll_every.max(Duration::from_millis(1));
        match &self.config.watchdog {
            Some(gate) => poll.min((gate.pet_period() / 4).max(Duration::from_millis(1))),
            None => poll,
        }
    }

    /// One round: stop check, poll, SIGHUP, statistics, watchdog. Returns
    /// the ending once there is one.
    pub fn step(&mut self, now_ns: u64, callbacks: &mut Callbacks) -> Option<Ending> {
        if self.config.signals.stop_requested() {
            let r = self.config.notifier.stopping();
            self.report(r, now_ns);
            return Some(Ending::Stopped);
        }
        match (callbacks.poll)() {
            Poll::Starting => {}
            Poll::Ready(status) => {
                if !self.ready_sent {
                    self.ready_sent = true;
                    let r = match status {
                        Some(s) => self.config.notifier.ready_with_status(s),
                        None => self.config.notifier.ready(),
                    };
                    self.report(r, now_ns);
                }
            }
            Poll::Finished => return Some(Ending::Finished),
        }
        if self.config.signals.take_reopen() {
            (callbacks.reopen)();
        }
        let periodic_due = self.config.statistics_every.is_some_and(|every| {
            now_ns.saturating_sub(self.last_statistics_ns) >= every.as_nanos() as u64
        });
        if self.config.signals.take_statistics() || periodic_due {
            (callbacks.statistics)();
            self.last_statistics_ns = now_ns;
        }
        if let Some(gate) = self.config.watchdog.as_mut() {
            match gate.tick(self.config.notifier, now_ns) {
                Ok(WatchdogCheck::Stalled { stalled_for }) => {
                    if self.stall_log.check(now_ns).is_some() {
                        log::error!(
                            target: WATCHDOG,
                            "{} thread stalled for {} ms: not petting the watchdog, systemd \
                             will restart us",
                            self.config.watched,
                            stalled_for.as_millis()
                        );
                    }
                }
                Ok(WatchdogCheck::Pet | WatchdogCheck::NotDue) => {}
                Err(e) => self.report(Err(e), now_ns),
            }
        }
        None
    }

    fn report(&mut self, result: Result<(), crate::service::notify::Error>, now_ns: u64) {
        if let Err(e) = result {
            if let Some(suppressed) = self.notify_log.check(now_ns) {
                if suppressed == 0 {
                    log::warn!(target: NOTIFY, "{e}");
                } else {
                    log::warn!(target: NOTIFY, "{e} ({suppressed} similar lines suppressed)");
                }
            }
        }
    }
}

/// Runs the loop on the main thread until a stop signal or the program's
/// [`Poll::Finished`]. See the module comment for what it does.
pub fn supervise(config: Config, mut callbacks: Callbacks) -> Ending {
    let mut supervisor = Supervisor::new(config, monotonic_ns());
    loop {
        if let Some(ending) = supervisor.step(monotonic_ns(), &mut callbacks) {
            return ending;
        }
        std::thread::sleep(supervisor.wake_every());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::notify::Heartbeat;
    use std::cell::Cell;
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::sync::Arc;

    const MS: u64 = 1_000_000;

    /// The service manager's end: a datagram socket in a private directory.
    struct Manager {
        dir: PathBuf,
        socket: UnixDatagram,
        notifier: Notifier,
    }

    impl Manager {
        fn new(tag: &str) -> Manager {
            let dir = std::env::temp_dir()
                .join(format!("netspeaker-supervise-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify");
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).unwrap();
            socket.set_nonblocking(true).unwrap();
            let notifier = Notifier::connect(path.to_str().unwrap()).unwrap();
            Manager {
                dir,
                socket,
                notifier,
            }
        }

        /// Every message sent so far.
        fn messages(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(n) = self.socket.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        }
    }

    impl Drop for Manager {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn config<'a>(signals: &'a Signals, notifier: &'a Notifier) -> Config<'a> {
        Config {
            signals,
            notifier,
            watchdog: None,
            watched: "playout",
            poll_every: Duration::from_millis(10),
            statistics_every: None,
        }
    }

    #[test]
    fn ready_sent_once_with_status_then_stopping_on_term() {
        let m = Manager::new("ready");
        let signals = Signals::unhooked();
        let polls = Cell::new(0);
        let mut poll = || {
            polls.set(polls.get() + 1);
            if polls.get() < 3 {
                Poll::Starting
            } else {
                Poll::Ready(Some("playing"))
            }
        };
        let (mut stats, mut reopen) = (|| {}, || {});
        let mut cb = Callbacks {
            poll: &mut poll,
            statistics: &mut stats,
            reopen: &mut reopen,
        };
        let mut s = Supervisor::new(config(&signals, &m.notifier), 0);
        for t in 0..10 {
            assert_eq!(s.step(t * 10 * MS, &mut cb), None);
        }
        assert_eq!(m.messages(), ["READY=1\nSTATUS=playing"]);
        signals.request_stop();
        assert_eq!(s.step(100 * MS, &mut cb), Some(Ending::Stopped));
        assert_eq!(m.messages(), ["STOPPING=1"]);
        assert_eq!(polls.get(), 10, "no poll once stopping");
    }

    #[test]
    fn finished_work_ends_without_stopping() {
        let m = Manager::new("finished");
        let signals = Signals::unhooked();
        let polls = Cell::new(0);
        let mut poll = || {
            polls.set(polls.get() + 1);
            if polls.get() == 1 {
                Poll::Ready(None)
            } else {
                Poll::Finished
            }
        };
        let (mut stats, mut reopen) = (|| {}, || {});
        let mut cb = Callbacks {
            poll: &mut poll,
            statistics: &mut stats,
            reopen: &mut reopen,
        };
        let mut s = Supervisor::new(config(&signals, &m.notifier), 0);
        assert_eq!(s.step(0, &mut cb), None);
        assert_eq!(s.step(10 * MS, &mut cb), Some(Ending::Finished));
        assert_eq!(m.messages(), ["READY=1"]);
    }

    #[test]
    fn statistics_on_period_and_on_user1_reopen_on_hangup() {
        let notifier = Notifier::disabled();
        let signals = Signals::unhooked();
        let stats_at = std::cell::RefCell::new(Vec::new());
        let now = Cell::new(0u64);
        let reopens = Cell::new(0);
        let mut poll = || Poll::Ready(None);
        let mut stats = || stats_at.borrow_mut().push(now.get() / MS);
        let mut reopen = || reopens.set(reopens.get() + 1);
        let mut cb = Callbacks {
            poll: &mut poll,
            statistics: &mut stats,
            reopen: &mut reopen,
        };
        let mut cfg = config(&signals, &notifier);
        cfg.statistics_every = Some(Duration::from_secs(1));
        let mut s = Supervisor::new(cfg, 0);
        for t in (0..=2500).step_by(10) {
            now.set(t * MS);
            if t == 1250 {
                signals.request_statistics();
            }
            if t == 1500 {
                signals.request_reopen();
                signals.request_reopen();
            }
            assert_eq!(s.step(t * MS, &mut cb), None);
        }
        // SIGUSR1 at 1250 restarts the period: the next line is a full
        // period after it.
        assert_eq!(*stats_at.borrow(), [1000, 1250, 2250]);
        assert_eq!(reopens.get(), 1, "two SIGHUPs before a step are one");
    }

    #[test]
    fn no_periodic_statistics_without_a_period() {
        let notifier = Notifier::disabled();
        let signals = Signals::unhooked();
        let count = Cell::new(0);
        let mut poll = || Poll::Ready(None);
        let mut stats = || count.set(count.get() + 1);
        let mut reopen = || {};
        let mut cb = Callbacks {
            poll: &mut poll,
            statistics: &mut stats,
            reopen: &mut reopen,
        };
        let mut s = Supervisor::new(config(&signals, &notifier), 0);
        for t in 0..1000 {
            assert_eq!(s.step(t * 100 * MS, &mut cb), None);
        }
        assert_eq!(count.get(), 0);
        signals.request_statistics();
        assert_eq!(s.step(100_000 * MS, &mut cb), None);
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn watchdog_petted_only_while_the_worker_beats() {
        let m = Manager::new("watchdog");
        let signals = Signals::unhooked();
        let hb = Arc::new(Heartbeat::new());
        let now = Cell::new(0u64);
        // The worker beats every poll except between 1 s and 2 s (wedged).
        let mut poll = || {
            let t = now.get() / MS;
            if !(1000..2000).contains(&t) {
                hb.beat();
            }
            Poll::Ready(None)
        };
        let (mut stats, mut reopen) = (|| {}, || {});
        let mut cb = Callbacks {
            poll: &mut poll,
            statistics: &mut stats,
            reopen: &mut reopen,
        };
        let mut cfg = config(&signals, &m.notifier);
        // 400 ms: a pet is due every 200 ms; checks every 50 ms at least.
        cfg.watchdog = Some(WatchdogGate::new(hb.clone(), Duration::from_millis(400), 0));
        cfg.poll_every = Duration::from_millis(100);
        let mut s = Supervisor::new(cfg, 0);
        assert_eq!(s.wake_every(), Duration::from_millis(50));
        let mut pets_at = Vec::new();
        for t in (0..3000).step_by(10) {
            now.set(t * MS);
            assert_eq!(s.step(t * MS, &mut cb), None);
            for msg in m.messages() {
                match msg.as_str() {
                    "WATCHDOG=1" => pets_at.push(t),
                    "READY=1" => assert_eq!(t, 0),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // While wedged (and its first pet interval after), nothing.
        assert_eq!(
            pets_at,
            [200, 400, 600, 800, 1000, 2000, 2200, 2400, 2600, 2800]
        );
    }

    #[test]
    fn supervise_returns_on_stop_in_real_time() {
        let m = Manager::new("real");
        let signals = Signals::unhooked();
        let polls = Cell::new(0);
        let mut poll = || {
            polls.set(polls.get() + 1);
            if polls.get() == 5 {
                signals.request_stop();
            }
            Poll::Ready(Some("waiting for the sound device"))
        };
        let (mut stats, mut reopen) = (|| {}, || {});
        let mut cfg = config(&signals, &m.notifier);
        cfg.poll_every = Duration::from_millis(1);
        let ending = supervise(
            cfg,
            Callbacks {
                poll: &mut poll,
                statistics: &mut stats,
                reopen: &mut reopen,
            },
        );
        assert_eq!(ending, Ending::Stopped);
        assert_eq!(
            m.messages(),
            ["READY=1\nSTATUS=waiting for the sound device", "STOPPING=1"]
        );
    }
}
