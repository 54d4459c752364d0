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
        // Unpaced device, so the sender runs flat out: not at realtime
        // priority on a shared machine.
        .args([
            "--capture",
            "cap",
            "--raw",
            &dest,
            "-q",
            "--rt-priority",
            "0",
        ])
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

/// A capture device that offers only FLOAT_LE (alsa-lib's lfloat plugin
/// over the file plugin): the open ladder takes the format the device has
/// and `Capture` converts it to the stream's 16 bits. The values must come
/// through exactly (k/32768 as float is exact). The null device behind the
/// file plugin is not paced and its pointer runs ahead of the plugin chain,
/// so the file is read with skips between periods: each packet must be an
/// exact, contiguous run of the file, later in it than the packet before.
#[test]
fn float_only_capture_device_is_converted_to_s16_exactly() {
    let dir = std::env::temp_dir().join(format!("ns-send-cap3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Distinct values (37 is prime to 30_000): a run is found in one place.
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
             pcm.cap {{ type file slave.pcm \"null\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\n\
             pcm.capfloat {{ type lfloat slave {{ pcm \"cap\" format S16_LE }} }}\n",
            infile.display()
        ),
    )
    .unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let mut child = Command::new(BIN)
        .args([
            "--capture",
            "capfloat",
            "--raw",
            &dest,
            "-q",
            "--rt-priority",
            "0",
        ])
        .env("ALSA_CONFIG_PATH", &conf)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut packets = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        let n = sock
            .recv(&mut buf)
            .expect("a packet from the capture stream");
        assert_eq!(n, 320);
        let p: Vec<i16> = buf[..n]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        packets.push(p);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut after = 0usize;
    for (k, p) in packets.iter().enumerate() {
        let at = samples
            .windows(p.len())
            .skip(after)
            .position(|w| w == &p[..])
            .map(|i| i + after);
        let Some(at) = at else {
            panic!(
                "packet {k} is no run of the file after sample {after}: {:?}",
                &p[..4]
            );
        };
        after = at + p.len();
    }
}
