//! The sd_notify protocol as systemd sees it: a Unix datagram socket owned
//! by the test stands in for the service manager's notify socket, and every
//! message the notifier sends is read back from it.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netspeaker::service::notify::{
    watchdog_interval, Heartbeat, Notifier, WatchdogCheck, WatchdogGate,
};

const MS: u64 = 1_000_000;

/// A fresh name per socket, so parallel tests and parallel test binaries
/// never share one.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "netspeaker-notify-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The service manager's end: a bound socket on a path in a private
/// directory, removed when dropped.
struct PathManager {
    dir: PathBuf,
    path: PathBuf,
    socket: UnixDatagram,
}

impl PathManager {
    fn new() -> PathManager {
        let dir = std::env::temp_dir().join(unique("dir"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        PathManager { dir, path, socket }
    }

    fn name(&self) -> String {
        self.path.to_str().expect("utf-8 temp path").to_owned()
    }
}

impl Drop for PathManager {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn abstract_manager() -> (String, UnixDatagram) {
    let name = unique("abstract");
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    (format!("@{name}"), socket)
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).expect("a notify message");
    String::from_utf8(buf[..n].to_vec()).expect("utf-8 message")
}

/// Every message waiting on the socket, without blocking.
fn drain(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).expect("nonblocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    socket.set_nonblocking(false).expect("blocking");
    out
}

#[test]
fn ready_status_stopping_on_path_socket() {
    let m = PathManager::new();
    let n = Notifier::connect(&m.name()).expect("connect");
    assert!(n.is_enabled());
    n.ready().expect("ready");
    assert_eq!(recv(&m.socket), "READY=1");
    n.status("playing: RTP L16/48000/2 from 192.0.2.7, delay 40 ms")
        .expect("status");
    assert_eq!(
        recv(&m.socket),
        "STATUS=playing: RTP L16/48000/2 from 192.0.2.7, delay 40 ms"
    );
    n.ready_with_status("waiting for\nstream").expect("ready");
    assert_eq!(recv(&m.socket), "READY=1\nSTATUS=waiting for stream");
    n.stopping().expect("stopping");
    assert_eq!(recv(&m.socket), "STOPPING=1");
    n.reloading().expect("reloading");
    let reload = recv(&m.socket);
    let usec = reload
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .expect("RELOADING with MONOTONIC_USEC");
    let usec: u64 = usec.parse().expect("decimal microseconds");
    let now_usec = netspeaker::service::clock::monotonic_ns() / 1000;
    assert!(usec > 0 && usec <= now_usec, "{usec} vs now {now_usec}");
}

#[test]
fn ready_on_abstract_socket() {
    let (name, socket) = abstract_manager();
    let n = Notifier::connect(&name).expect("connect");
    n.ready().expect("ready");
    assert_eq!(recv(&socket), "READY=1");
    n.watchdog().expect("watchdog");
    assert_eq!(recv(&socket), "WATCHDOG=1");
}

#[test]
fn send_to_vanished_manager_is_an_error() {
    let m = PathManager::new();
    let n = Notifier::connect(&m.name()).expect("connect");
    let name = m.name();
    drop(m);
    let err = n.ready().expect_err("no one listens");
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn watchdog_pets_only_while_heartbeat_advances() {
    let m = PathManager::new();
    let n = Notifier::connect(&m.name()).expect("connect");
    let hb = Arc::new(Heartbeat::new());
    let mut gate = WatchdogGate::new(hb.clone(), Duration::from_millis(400), 0);
    // Simulated time, 10 ms main-loop ticks; the "playout thread" beats
    // every 5 ms for the first second, then is wedged for a second, then
    // recovers.
    let mut pets = Vec::new();
    let mut stalls = 0;
    for t in (0..3000).step_by(10) {
        if !(1000..2000).contains(&t) {
            hb.beat();
            hb.beat();
        }
        match gate.tick(&n, t * MS).expect("tick") {
            WatchdogCheck::Pet => pets.push(t),
            WatchdogCheck::Stalled { .. } => stalls += 1,
            WatchdogCheck::NotDue => {}
        }
    }
    let sent = drain(&m.socket);
    assert!(sent.iter().all(|s| s == "WATCHDOG=1"), "{sent:?}");
    assert_eq!(sent.len(), pets.len());
    // Half of 400 ms: pets at 200, 400, ... while beating; none while wedged
    // (the pet at 1000 ms covers beats up to 990 ms); at once on recovery.
    assert_eq!(
        pets,
        [200, 400, 600, 800, 1000, 2000, 2200, 2400, 2600, 2800]
    );
    assert_eq!(stalls, (1200..2000).step_by(10).count());
}

/// The environment is process-wide, so everything that reads it is in this
/// one test.
#[test]
fn from_env_follows_notify_socket_and_watchdog_variables() {
    let m = PathManager::new();
    std::env::set_var("NOTIFY_SOCKET", m.name());
    let n = Notifier::from_env();
    n.ready().expect("ready");
    assert_eq!(recv(&m.socket), "READY=1");

    let (name, socket) = abstract_manager();
    std::env::set_var("NOTIFY_SOCKET", &name);
    Notifier::from_env().status("up").expect("status");
    assert_eq!(recv(&socket), "STATUS=up");

    std::env::set_var("NOTIFY_SOCKET", "not/absolute");
    assert!(Notifier::try_from_env().is_err());
    assert!(!Notifier::from_env().is_enabled());

    std::env::remove_var("NOTIFY_SOCKET");
    let n = Notifier::from_env();
    assert!(!n.is_enabled());
    n.ready().expect("no-op");
    n.watchdog().expect("no-op");
    assert!(drain(&m.socket).is_empty());
    assert!(drain(&socket).is_empty());

    std::env::set_var("WATCHDOG_USEC", "3000000");
    std::env::remove_var("WATCHDOG_PID");
    assert_eq!(watchdog_interval(), Some(Duration::from_secs(3)));
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(watchdog_interval(), Some(Duration::from_secs(3)));
    std::env::set_var("WATCHDOG_PID", (std::process::id() + 1).to_string());
    assert_eq!(watchdog_interval(), None);
    std::env::remove_var("WATCHDOG_PID");
    std::env::remove_var("WATCHDOG_USEC");
    assert_eq!(watchdog_interval(), None);
    assert!(WatchdogGate::from_env(Arc::new(Heartbeat::new())).is_none());
}

/// End to end with the real receiver, as systemd runs it: READY=1 once it
/// is bound and its device open, WATCHDOG=1 while it plays, no pets while
/// its playout thread is wedged inside an ALSA write (the PulseAudio server
/// behind the `pulse` device is SIGSTOPped), pets again once it is freed,
/// STOPPING=1 on SIGTERM.
mod receiver {
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::net::UdpSocket;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::Instant;

    /// A child process killed (and reaped) when dropped.
    struct Kill(Child);

    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A private PulseAudio server with a null sink: a paced device that
    /// needs no sound card (TESTING.md).
    fn start_pulseaudio(dir: &std::path::Path) -> (Kill, String) {
        std::fs::create_dir_all(dir.join("pa")).expect("pa dir");
        let server = format!("unix:{}", dir.join("pa/native").display());
        std::fs::write(
            dir.join("default.pa"),
            format!(
                "load-module module-null-sink sink_name=speaker rate=48000\n\
                 load-module module-native-protocol-unix auth-anonymous=1 socket={}\n\
                 set-default-sink speaker\n",
                dir.join("pa/native").display()
            ),
        )
        .expect("default.pa");
        let child = Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--use-pid-file=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "-F",
            ])
            .arg(dir.join("default.pa"))
            .env("PULSE_RUNTIME_PATH", dir.join("rt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio (apt-get install pulseaudio pulseaudio-utils)");
        let pa = Kill(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = Command::new("pactl")
                .arg("info")
                .env("PULSE_SERVER", &server)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if up {
                return (pa, server);
            }
            assert!(Instant::now() < deadline, "pulseaudio did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the receiver sends to its notify socket, with arrival
    /// times, collected by a thread.
    struct Log {
        messages: Arc<Mutex<Vec<(Instant, String)>>>,
        stop: Arc<AtomicBool>,
    }

    impl Log {
        fn start(socket: UnixDatagram) -> Log {
            let messages = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (m, s) = (messages.clone(), stop.clone());
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !s.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        m.lock().expect("log").push((Instant::now(), text));
                    }
                }
            });
            Log { messages, stop }
        }

        /// Messages containing the line `line`, arrived in [from, to).
        fn count(&self, line: &str, from: Instant, to: Instant) -> usize {
            self.messages
                .lock()
                .expect("log")
                .iter()
                .filter(|(t, m)| *t >= from && *t < to && m.lines().any(|l| l == line))
                .count()
        }

        fn wait_for(&self, line: &str, from: Instant, timeout: Duration) -> bool {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if self.count(line, from, deadline) > 0 {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }
    }

    impl Drop for Log {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// PCMU (PT 0, 8 kHz mono) at 20 ms per packet, paced on an absolute
    /// clock, until `stop`.
    fn send_rtp(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("sender socket");
            let start = Instant::now();
            let mut pkt = [0u8; 12 + 160];
            for k in 0u32.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                pkt[0] = 0x80;
                pkt[1] = if k == 0 { 0x80 } else { 0 };
                pkt[2..4].copy_from_slice(&(k as u16).to_be_bytes());
                pkt[4..8].copy_from_slice(&(k * 160).to_be_bytes());
                pkt[8..12].copy_from_slice(&0x5eed_0001u32.to_be_bytes());
                for (i, b) in pkt[12..].iter_mut().enumerate() {
                    // A quiet 500 Hz square wave in mu-law.
                    *b = if (i / 8) % 2 == 0 { 0x9f } else { 0x1f };
                }
                let _ = sock.send_to(&pkt, ("127.0.0.1", port));
                let due = start + Duration::from_millis(20 * (k as u64 + 1));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    }

    #[test]
    fn receiver_ready_then_watchdog_follows_playout() {
        let m = PathManager::new();
        let (pa, pulse_server) = start_pulseaudio(&m.dir);
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let log = Log::start(m.socket.try_clone().expect("clone"));
        let t0 = Instant::now();
        let receiver = Command::new(env!("CARGO_BIN_EXE_netspeaker"))
            .args(["--device", "pulse", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("NOTIFY_SOCKET", m.name())
            // 2 s: pets every second, a wedge shows within seconds.
            .env("WATCHDOG_USEC", "2000000")
            .env_remove("WATCHDOG_PID")
            .env("PULSE_SERVER", &pulse_server)
            .stdout(Stdio::null())
            .spawn()
            .expect("netspeaker binary");
        let receiver = Kill(receiver);

        assert!(
            log.wait_for("READY=1", t0, Duration::from_secs(10)),
            "no READY=1 from the receiver"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sender = send_rtp(port, stop.clone());

        // Playing: pets at about half the 2 s interval.
        std::thread::sleep(Duration::from_secs(4));
        let now = Instant::now();
        let pets = log.count("WATCHDOG=1", now - Duration::from_secs(3), now);
        assert!(pets >= 2, "{pets} pets in 3 s of playing");

        // Wedge the playout thread: its ALSA write to `pulse` blocks.
        let pa_pid = Pid::from_raw(pa.0.id() as i32);
        kill(pa_pid, Signal::SIGSTOP).expect("SIGSTOP pulseaudio");
        let wedged = Instant::now();
        // Let the device buffer fill and one pet already due go by.
        std::thread::sleep(Duration::from_secs(5));
        let quiet_from = wedged + Duration::from_millis(1500);
        let pets = log.count("WATCHDOG=1", quiet_from, Instant::now());
        kill(pa_pid, Signal::SIGCONT).expect("SIGCONT pulseaudio");
        assert_eq!(
            pets, 0,
            "watchdog petted while the playout thread was wedged"
        );

        // Freed: it beats and is petted again.
        let freed = Instant::now();
        assert!(
            log.wait_for("WATCHDOG=1", freed, Duration::from_secs(5)),
            "no pet after the playout thread was freed"
        );

        let stopping = Instant::now();
        kill(Pid::from_raw(receiver.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        assert!(
            log.wait_for("STOPPING=1", stopping, Duration::from_secs(5)),
            "no STOPPING=1 on SIGTERM"
        );
        stop.store(true, Ordering::Relaxed);
        let _ = sender.join();
    }

    /// The main thread's signal handling through the supervisor, on
    /// ALSA's `null` device: READY=1 with the "playing" status once the
    /// device is open, the statistics line on SIGUSR1, a device reopen on
    /// SIGHUP, STOPPING=1, the final statistics and status 0 on SIGTERM.
    #[test]
    fn receiver_signals_reach_their_callbacks() {
        let m = PathManager::new();
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let log = Log::start(m.socket.try_clone().expect("clone"));
        let stderr_path = m.dir.join("stderr");
        let t0 = Instant::now();
        let receiver = Command::new(env!("CARGO_BIN_EXE_netspeaker"))
            .args(["--device", "null", "--rt-priority", "0", "--no-mlock"])
            // No periodic line: any statistics line comes from SIGUSR1.
            .args(["--stats-interval", "0", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("NOTIFY_SOCKET", m.name())
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("netspeaker binary");
        let mut receiver = Kill(receiver);
        let pid = Pid::from_raw(receiver.0.id() as i32);
        let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let wait_stderr = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !stderr().contains(what) {
                std::thread::sleep(Duration::from_millis(20));
            }
            stderr().contains(what)
        };
        assert!(
            log.wait_for("READY=1", t0, Duration::from_secs(10)),
            "no READY=1: {}",
            stderr()
        );
        assert_eq!(log.count("STATUS=playing", t0, Instant::now()), 1);
        assert!(!stderr().contains(" packets "), "{}", stderr());

        kill(pid, Signal::SIGUSR1).expect("SIGUSR1");
        assert!(wait_stderr("info netspeaker: packets "), "{}", stderr());
        kill(pid, Signal::SIGHUP).expect("SIGHUP");
        assert!(wait_stderr("reopening the device: SIGHUP"), "{}", stderr());

        let stopping = Instant::now();
        kill(pid, Signal::SIGTERM).expect("SIGTERM");
        assert!(
            log.wait_for("STOPPING=1", stopping, Duration::from_secs(5)),
            "no STOPPING=1 on SIGTERM"
        );
        let status = receiver.0.wait().expect("exit status");
        let text = stderr();
        assert_eq!(status.code(), Some(0), "{text}");
        assert!(
            text.contains("info netspeaker: stopping: packets "),
            "{text}"
        );
        assert_eq!(log.count("READY=1", t0, Instant::now()), 1, "READY once");
    }
}
