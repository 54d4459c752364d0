//! `netspeaker-send` under a `Type=notify` unit with `WatchdogSec=`: a
//! notify socket this test owns receives READY=1 at start, WATCHDOG=1
//! while packets flow, and STOPPING=1 on SIGTERM.

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netspeaker::send::wav::write_wav;

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

#[test]
fn ready_watchdog_and_stopping_reach_systemd() {
    let dir = std::env::temp_dir().join(format!("ns-send-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &[3; 800])).unwrap();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(BIN)
        .args([wav.to_str().unwrap(), "--loop", "-q"])
        .arg(sink.local_addr().unwrap().to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        // 400 ms: a pet is due every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        // Unset: the interval applies to whichever process reads it.
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut messages = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1200) {
        let n = notify.recv(&mut buf).expect("a notification");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        let n = notify.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = m.contains("STOPPING=1");
        messages.push(m);
        if done {
            break;
        }
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(messages[0].contains("READY=1"), "{messages:?}");
    let pets = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    // 1.2 s at one pet per 200 ms: about 5; generous for a loaded machine.
    assert!((3..=8).contains(&pets), "{pets} pets: {messages:?}");
}

/// A source that delivers nothing (standard input stays silent, the
/// writer still attached) leaves the pacing thread without progress: the
/// supervisor does not pet the watchdog, says so once on stderr, and still
/// answers SIGTERM with STOPPING=1 and exit status 0.
#[test]
fn silent_stdin_withholds_watchdog_and_is_reported_once() {
    let dir = std::env::temp_dir().join(format!("ns-send-notify-quiet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stderr_path = dir.join("stderr");
    let mut child = Command::new(BIN)
        .args(["--format", "s16le:8000:1", "-", "-q"])
        .arg(sink.local_addr().unwrap().to_string())
        .env("NOTIFY_SOCKET", &sock_path)
        // 400 ms: a pet is due every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // Held open and never written to.
    let stdin = child.stdin.take().unwrap();
    let t0 = Instant::now();
    let mut messages: Vec<(Duration, String)> = Vec::new();
    let mut buf = [0u8; 1024];
    while t0.elapsed() < Duration::from_millis(2000) {
        if let Ok(n) = notify.recv(&mut buf) {
            messages.push((
                t0.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stop_sent = Instant::now();
    let mut stopping = false;
    while !stopping && stop_sent.elapsed() < Duration::from_secs(5) {
        if let Ok(n) = notify.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    let status = child.wait().unwrap();
    drop(stdin);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stopping, "no STOPPING=1 after SIGTERM: {messages:?}");
    assert_eq!(messages.first().map(|m| m.1.as_str()), Some("READY=1"));
    // The thread's start may count as progress once (one pet at about
    // 200 ms); after that, nothing.
    let late_pets: Vec<_> = messages
        .iter()
        .filter(|(t, m)| m == "WATCHDOG=1" && *t >= Duration::from_millis(700))
        .collect();
    assert!(late_pets.is_empty(), "petted while stalled: {messages:?}");
    assert_eq!(
        stderr.matches("pacing thread stalled").count(),
        1,
        "one stall line: {stderr}"
    );
    assert!(
        stderr.contains("error watchdog: pacing thread stalled for"),
        "{stderr}"
    );
}
