//! Interop: ffmpeg opens the SDP file `netspeaker-send --sdp` wrote,
//! receives the RTP stream on loopback and records it; the recording is
//! bit-exact the signal that was sent (L16), or its G.711 round trip
//! (PCMU), apart from where ffmpeg started listening.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netspeaker::audio::codec;
use netspeaker::send::wav::write_wav;

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ns-send-ff-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn signal(samples: usize) -> Vec<i16> {
    let mut x: u32 = 777;
    (0..samples)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as i16
        })
        .collect()
}

/// An even UDP port that is free now, with the next one free too (ffmpeg
/// binds RTP on the port and RTCP on the port + 1).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p % 2 == 0 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free UDP port pair on loopback");
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Seconds ffmpeg records; the signal lasts longer, so ffmpeg may start
/// up to two seconds late.
const RECORD_S: usize = 2;
const SIGNAL_S: usize = 4;

/// Streams `samples` (a WAV at `rate`/`channels`) with `args`, records it
/// with ffmpeg from the SDP file, and returns the recorded s16le samples.
fn record_with_ffmpeg(
    name: &str,
    rate: u32,
    channels: u16,
    samples: &[i16],
    args: &[&str],
) -> Vec<i16> {
    let dir = temp_dir(name);
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(rate, channels, samples)).unwrap();
    let sdp = dir.join("stream.sdp");
    let out = dir.join("out.raw");
    let port = free_port_pair();
    // The SDP file only exists once the sender has opened everything; it
    // starts sending right away, so ffmpeg misses the first packets (the
    // start offset the comparison allows for).
    let mut sender = Command::new(BIN)
        .arg(&wav)
        .arg(format!("127.0.0.1:{port}"))
        .arg("--sdp")
        .arg(&sdp)
        .args(args)
        .arg("-q")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sdp);
    // ffmpeg records RECORD_S seconds and stops by itself (without -t it
    // would wait ~10 s for more packets after the stream ended).
    let ffmpeg = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-protocol_whitelist", "file,udp,rtp", "-i"])
        .arg(&sdp)
        .args(["-t", &RECORD_S.to_string(), "-f", "s16le"])
        .arg(&out)
        .stdin(Stdio::null())
        .status()
        .expect("run ffmpeg");
    assert!(ffmpeg.success(), "ffmpeg: {ffmpeg}");
    let status = sender.wait().unwrap();
    assert!(status.success(), "sender: {status}");
    let bytes = std::fs::read(&out).expect("ffmpeg wrote no recording");
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// `recorded` must be a contiguous run of `sent`, starting on a frame.
fn assert_contiguous_run(sent: &[i16], recorded: &[i16], channels: usize, min_len: usize) {
    assert!(
        recorded.len() >= min_len,
        "recorded only {} samples",
        recorded.len()
    );
    let head = &recorded[..16];
    let offset = (0..=sent.len() - recorded.len())
        .step_by(channels)
        .find(|&o| &sent[o..o + 16] == head)
        .expect("the recording's start is not in the signal");
    assert_eq!(&sent[offset..offset + recorded.len()], recorded);
}

#[test]
fn ffmpeg_records_l16_stereo_from_sdp() {
    let rate = 48_000;
    let sent = signal(rate as usize * 2 * SIGNAL_S);
    let recorded = record_with_ffmpeg("l16", rate, 2, &sent, &[]);
    assert_contiguous_run(&sent, &recorded, 2, rate as usize * 2 * RECORD_S);
}

#[test]
fn ffmpeg_records_pcmu_from_sdp() {
    let sent = signal(8000 * SIGNAL_S);
    let recorded = record_with_ffmpeg("pcmu", 8000, 1, &sent, &["--codec", "pcmu"]);
    let round_trip: Vec<i16> = sent
        .iter()
        .map(|&s| codec::ulaw_to_linear(codec::linear_to_ulaw(s)))
        .collect();
    assert_contiguous_run(&round_trip, &recorded, 1, 8000 * RECORD_S);
}
