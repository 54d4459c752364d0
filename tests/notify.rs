//! The sd_notify protocol as systemd sees it: a Unix datagram socket owned
//! by the test stands in for the service manager's notify socket, and every
//! message the notifier sends is read back from it.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netspeaker::notify::{watchdog_interval, Heartbeat, Notifier, WatchdogCheck, WatchdogGate};

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
    let now_usec = netspeaker::clock::monotonic_ns() / 1000;
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
