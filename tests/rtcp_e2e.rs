//! Sender reports on the wire into the real receiver: ffmpeg's RTP muxer
//! (RTCP to port + 1) and netspeaker-send each stream to `netspeaker`,
//! whose statistics lines count the reports and give the sender's media
//! clock against its wall clock. Both senders run on this machine's one
//! clock, so that rate is nominal: a mapping consistent with the stream
//! reads within a few ppm of 0.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use netspeaker::send::wav::write_wav;

const RECEIVER: &str = env!("CARGO_BIN_EXE_netspeaker");
const SENDER: &str = env!("CARGO_BIN_EXE_netspeaker-send");

fn port_pair() -> u16 {
    for _ in 0..200 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port % 2 == 0 && port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

/// Runs the receiver on a null device while `send` streams to `port`;
/// returns its log.
fn receive_while(dir: &std::path::Path, port: u16, send: impl FnOnce()) -> String {
    receive_with(dir, port, &[], send)
}

fn receive_with(
    dir: &std::path::Path,
    port: u16,
    extra: &[&std::ffi::OsStr],
    send: impl FnOnce(),
) -> String {
    std::fs::write(dir.join("alsa.conf"), "pcm.null { type null }\n").unwrap();
    let log = dir.join("ns.log");
    let mut rx = Command::new(RECEIVER)
        .args(["--device", "null", "--stats-interval", "1", "--no-mlock"])
        .args(["--rt-priority", "0", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .env("ALSA_CONFIG_PATH", dir.join("alsa.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("RTCP: sender reports read on")
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    send();
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rx.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    rx.wait().unwrap();
    std::fs::read_to_string(&log).unwrap()
}

/// (sr count, sender-clock ppm) of every statistics line that has both.
fn reports(log: &str) -> Vec<(u64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split(" sr ").nth(1)?;
            let mut w = rest.split_whitespace();
            let n = w.next()?.parse().ok()?;
            (w.next()? == "sender-clock").then_some(())?;
            Some((n, w.next()?.parse().ok()?))
        })
        .collect()
}

fn wav(dir: &std::path::Path, seconds: usize) -> std::path::PathBuf {
    let samples: Vec<i16> = (0..8000 * seconds)
        .map(|i| ((i as f64 * 0.05).sin() * 8000.0) as i16)
        .collect();
    let p = dir.join("in.wav");
    std::fs::write(&p, write_wav(8000, 1, &samples)).unwrap();
    p
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ns-rtcp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn netspeaker_send_reports_reach_the_receiver() {
    let dir = temp("send");
    let input = wav(&dir, 6);
    let port = port_pair();
    let log = receive_while(&dir, port, || {
        let status = Command::new(SENDER)
            .args(["--codec", "pcmu", "-q"])
            .arg(&input)
            .arg(format!("127.0.0.1:{port}"))
            .status()
            .unwrap();
        assert!(status.success());
    });
    let seen = reports(&log);
    let (n, ppm) = *seen
        .last()
        .unwrap_or_else(|| panic!("no sender-clock in\n{log}"));
    assert!(n >= 2, "{log}");
    // Reports pair the clocks at a frame boundary: exact to a few ns.
    assert!(ppm.abs() < 5.0, "sender-clock {ppm} ppm\n{log}");
    assert!(log.contains("clock synced") || log.contains("clock unsynchronised"));
    // After the BYE the mapping is gone; the count stays.
    let last = log.lines().rev().find(|l| l.contains("stopping:")).unwrap();
    assert!(
        last.contains(" sr ") && last.contains("sender-clock unknown"),
        "{last}"
    );
}

#[test]
fn ffmpeg_rtp_muxer_reports_reach_the_receiver() {
    let dir = temp("ffmpeg");
    let input = wav(&dir, 12);
    let port = port_pair();
    let log = receive_while(&dir, port, || {
        let status = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-re", "-i"])
            .arg(&input)
            .args(["-c:a", "pcm_mulaw", "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    });
    let seen = reports(&log);
    // ffmpeg reports at the start and every 5 s or so.
    let (n, ppm) = *seen
        .last()
        .unwrap_or_else(|| panic!("no sender-clock in\n{log}"));
    assert!(n >= 2, "{log}");
    assert!(ppm.abs() < 200.0, "sender-clock {ppm} ppm\n{log}");
}

/// With a key, the reports go as SRTCP (RFC 3711 §3.4) and the receiver
/// authenticates and decrypts them with its SRTCP keys before reading.
#[test]
fn srtcp_reports_reach_an_srtp_receiver() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("srtcp");
    let input = wav(&dir, 6);
    let key = dir.join("key");
    std::fs::write(&key, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = port_pair();
    let log = receive_with(
        &dir,
        port,
        &["--srtp-key-file".as_ref(), key.as_os_str()],
        || {
            let status = Command::new(SENDER)
                .args(["--codec", "pcmu", "-q", "--srtp-key-file"])
                .arg(&key)
                .arg(&input)
                .arg(format!("127.0.0.1:{port}"))
                .status()
                .unwrap();
            assert!(status.success());
        },
    );
    let (n, ppm) = *reports(&log)
        .last()
        .unwrap_or_else(|| panic!("no sender-clock in\n{log}"));
    assert!(n >= 2, "{log}");
    assert!(ppm.abs() < 5.0, "sender-clock {ppm} ppm\n{log}");
    let last = log.lines().rev().find(|l| l.contains("stopping:")).unwrap();
    assert!(last.contains("auth-failed 0"), "{last}");
}
