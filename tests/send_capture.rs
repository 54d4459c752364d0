//! `netspeaker-send --capture` on a private ALSA configuration: a file
//! plugin over the null device, whose capture side reads a file this test
//! wrote (bit-exact, not paced). The packets carry exactly that file.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

#[test]
fn capture_device_frames_reach_the_wire() {
    let dir = std::env::temp_dir().join(format!("ns-send-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let samples: Vec<i16> = (0..16_000i32)
        .map(|i| ((i * 37) % 30_000 - 15_000) as i16)
        .collect();
    let input: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let infile = dir.join("in.raw");
    std::fs::write(&infile, &input).unwrap();
    let conf = dir.join("alsa.conf");
    std::fs::write(
        &conf,
        format!(
            "pcm.null {{ type null }}\n\
             pcm.cap {{ type file slave.pcm \"null\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\n",
            infile.display()
        ),
    )
    .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args(["--capture", "cap", "--raw", &dest, "-q"])
        .env("ALSA_CONFIG_PATH", &conf)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    // The device is not paced, so the sender runs flat out: take the first
    // 20 packets (well within the socket's buffer) and stop it.
    for _ in 0..20 {
        let n = sock
            .recv(&mut buf)
            .expect("a packet from the capture stream");
        assert_eq!(n, 320);
        got.extend_from_slice(&buf[..n]);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(got, input[..got.len()]);
}

#[test]
fn missing_capture_device_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("ns-send-cap2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("alsa.conf");
    std::fs::write(&conf, "pcm.null { type null }\n").unwrap();
    let out = Command::new(BIN)
        .args(["--capture", "nosuchdevice", "127.0.0.1:9"])
        .env("ALSA_CONFIG_PATH", &conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuchdevice") && err.contains("arecord -L"),
        "{err}"
    );
}
