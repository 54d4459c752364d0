//! `netspeaker-send --capture pulse` against a PulseAudio server this test
//! starts (null sink, its monitor as the default source): the stream is
//! paced by the capture device (50 packets a second at ptime 20); when the
//! server is killed and started again, the sender reopens the device and
//! goes on with the same SSRC, a timestamp that skips the gap, and the
//! marker bit on the first packet after it.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

struct Pulse {
    dir: PathBuf,
    server: Child,
}

impl Pulse {
    fn start(dir: &Path) -> Pulse {
        std::fs::create_dir_all(dir.join("pa")).unwrap();
        std::fs::create_dir_all(dir.join("rt")).unwrap();
        let conf = dir.join("default.pa");
        std::fs::write(
            &conf,
            format!(
                "load-module module-null-sink sink_name=speaker rate=48000\n\
                 load-module module-native-protocol-unix auth-anonymous=1 socket={}/pa/native\n\
                 set-default-sink speaker\n\
                 set-default-source speaker.monitor\n",
                dir.display()
            ),
        )
        .unwrap();
        let server = Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--use-pid-file=no",
                "--exit-idle-time=-1",
            ])
            .args(["--disallow-exit", "-F"])
            .arg(&conf)
            .env("PULSE_RUNTIME_PATH", dir.join("rt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pulseaudio");
        let p = Pulse {
            dir: dir.to_path_buf(),
            server,
        };
        let t = Instant::now();
        while !Command::new("pactl")
            .arg("info")
            .env("PULSE_SERVER", p.address())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "pulseaudio did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn address(&self) -> String {
        format!("unix:{}/pa/native", self.dir.display())
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[derive(Clone, Copy)]
struct Head {
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    at: Instant,
}

fn recv_head(sock: &UdpSocket) -> Head {
    try_recv_head(sock).expect("a packet")
}

fn try_recv_head(sock: &UdpSocket) -> Option<Head> {
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).ok()?;
    assert_eq!(n, 12 + 160);
    Some(Head {
        marker: buf[1] & 0x80 != 0,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        at: Instant::now(),
    })
}

#[test]
fn capture_paced_by_device_and_survives_server_restart() {
    let dir = std::env::temp_dir().join(format!("ns-send-pulse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pulse = Pulse::start(&dir);
    let address = pulse.address();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut sender = Command::new(BIN)
        .args(["--capture", "pulse", "--codec", "pcmu", &dest, "-q"])
        .env("PULSE_SERVER", &address)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Paced by the device: after the start-up burst, two seconds bring
    // about 100 packets (20 ms each), not thousands.
    let first = recv_head(&sock);
    assert!(first.marker);
    let mut last = first;
    while last.at.duration_since(first.at) < Duration::from_millis(500) {
        last = recv_head(&sock);
    }
    let (from, seq0) = (last.at, last.seq);
    while last.at.duration_since(from) < Duration::from_secs(2) {
        last = recv_head(&sock);
        assert!(!last.marker);
        assert_eq!(last.ssrc, first.ssrc);
    }
    let in_two_seconds = last.seq.wrapping_sub(seq0);
    assert!(
        (80..=130).contains(&in_two_seconds),
        "{in_two_seconds} packets in 2 s"
    );

    // Device loss: kill the server, wait, start a new one on the same
    // socket path.
    drop(pulse);
    let killed = Instant::now();
    // Drain what was in flight, then expect silence from the sender.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut before = last;
    while let Some(h) = try_recv_head(&sock) {
        before = h;
    }
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(killed.elapsed()));
    let pulse = Pulse::start(&dir);
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let back = recv_head(&sock);
    assert_eq!(
        back.ssrc, first.ssrc,
        "same stream after the device came back"
    );
    assert!(back.marker, "marker bit on the first packet after the gap");
    assert_eq!(
        back.seq,
        before.seq.wrapping_add(1),
        "sequence numbers do not skip"
    );
    // The device was away for at least a second: 8000 frames.
    let skipped = back.ts.wrapping_sub(before.ts);
    assert!(skipped >= 8000, "timestamp moved by only {skipped}");
    let next = recv_head(&sock);
    assert!(!next.marker);
    assert_eq!(next.ts, back.ts.wrapping_add(160));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sender.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = sender.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(2) {
            let _ = sender.kill();
            panic!("netspeaker-send did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    drop(pulse);
}
