//! End to end, issue 14 (source validation and lock): the real
//! `netspeaker` on its defaults plays into the paced PulseAudio device
//! (TESTING.md) while a second socket floods its port with junk and
//! RTP-looking packets from random SSRCs at ten times the real stream's
//! packet rate. The real stream must play intact (statistics line:
//! `packets`, `stray`; no "new sender … buffer reset" in the log), and a
//! sender restarted with a new SSRC 100 ms after the old one stopped must
//! be heard within 100 ms of its first packet, its first packet included.

mod common;

use common::receiver::{free_port, send_rtp, RtpStream, RunningReceiver, Stats};
use common::{read_f32le, read_s16le, AlsaConfig, PulseServer, TestDir};
use netspeaker::audio::format::Encoding;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The paced tests run one at a time (one sound server each; a loaded
/// 2-core machine measures itself otherwise).
static PACED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn paced_slot() -> std::sync::MutexGuard<'static, ()> {
    PACED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The receiver on its defaults (latency, clock following, device format),
/// playing into `paced`; only the PulseAudio plugin's period and buffer
/// are set, as every paced test sets them (tests/e2e.rs).
fn receiver(dir: &TestDir, port: u16) -> (PulseServer, AlsaConfig, RunningReceiver) {
    let pulse = PulseServer::start(&dir.path);
    let alsa = AlsaConfig::write(&dir.path);
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--device",
        "paced",
        "--listen",
        &listen,
        "--stats-interval",
        "0",
        "--period-ms",
        "10",
        "--buffer-periods",
        "4",
    ];
    let mut env = alsa.env();
    env.extend(pulse.env());
    let rx = RunningReceiver::start(&args, &env, dir.file("receiver.log"));
    // The null sink starts a new stream 0.5-2 s after it is opened (the
    // receiver logs when it was seen consuming). These tests time the
    // source lock, not that start: their senders begin once it plays.
    assert!(
        rx.wait_for_log("consuming after", Duration::from_secs(10)),
        "the paced device did not start consuming within 10 s:\n{}",
        rx.log_text()
    );
    (pulse, alsa, rx)
}

/// What the flood sent.
#[derive(Default)]
struct FloodCount {
    total: AtomicU64,
    /// RTP-looking with a payload type the receiver maps (0, 8): these
    /// reach the source lock and must end up as `stray`.
    mapped: AtomicU64,
}

/// Floods `to` from its own socket: `per_second` datagrams, paced, until
/// `stop`. A third are random bytes, the rest RTP-looking: version 2, a
/// random SSRC, sequence number and timestamp, payload type 0, 8, 96 or
/// 127, 1 to 400 bytes of payload.
fn flood(to: SocketAddr, per_second: u64, stop: Arc<AtomicBool>, count: Arc<FloodCount>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind flood socket");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = Instant::now();
    let mut buf = [0u8; 600];
    let mut k = 0u64;
    while !stop.load(Relaxed) {
        let due = start + Duration::from_nanos(k * 1_000_000_000 / per_second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        k += 1;
        let len = 1 + (rand() % 400) as usize + 12;
        for b in buf[..len].iter_mut() {
            *b = rand() as u8;
        }
        if rand() % 3 != 0 {
            let pt = [0u8, 8, 96, 127][(rand() % 4) as usize];
            buf[0] = 0x80;
            buf[1] = pt | if rand() % 2 == 0 { 0x80 } else { 0 };
            if pt == 0 || pt == 8 {
                count.mapped.fetch_add(1, Relaxed);
            }
        }
        let _ = sock.send_to(&buf[..len], to);
        count.total.fetch_add(1, Relaxed);
    }
}

fn start_flood(
    to: SocketAddr,
) -> (
    Arc<AtomicBool>,
    Arc<FloodCount>,
    std::thread::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(FloodCount::default());
    let (s, c) = (stop.clone(), count.clone());
    // 20 ms packets: 50 per second; ten times that.
    let handle = std::thread::spawn(move || flood(to, 500, s, c));
    (stop, count, handle)
}

fn report(key: &str, value: impl std::fmt::Display) {
    eprintln!("MEASURED {key} = {value}");
}

#[test]
fn ffmpeg_stream_in_a_junk_flood_plays_intact() {
    let _slot = paced_slot();
    let dir = TestDir::new("source-lock-flood");
    let port = free_port();
    let (_pulse, alsa, mut rx) = receiver(&dir, port);
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let (stop, count, flooder) = start_flood(to);
    // The flood runs first: a fresh receiver must not take junk for a
    // sender.
    std::thread::sleep(Duration::from_millis(300));
    // A real sender: ffmpeg, 5 s of PCMU in 20 ms packets (250), paced at
    // real time, its RTCP on the RTP port, with a BYE at the end.
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi"])
        .args(["-i", "sine=frequency=440:sample_rate=8000:duration=5"])
        .args(["-af", "asetnsamples=n=160:p=0", "-c:a", "pcm_mulaw"])
        .args(["-f", "rtp", "-rtpflags", "send_bye"])
        .arg(format!("rtp://127.0.0.1:{port}?rtcpport={port}"))
        .stdout(Stdio::null())
        .status()
        .expect("ffmpeg is installed (see TESTING.md)");
    assert!(status.success(), "ffmpeg failed");
    // Past the stream-lost timeout (500 ms), the flood still on.
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Relaxed);
    flooder.join().expect("flood thread");
    std::thread::sleep(Duration::from_millis(100));
    let (code, _, stats) = rx.stop();
    assert_eq!(code, Some(0));
    let log = rx.log_text();
    let sent = 250.0;
    // What was heard: the tone and nothing else. Junk played as audio is
    // broadband noise; every 10 ms block with sound must be the 440 Hz
    // tone (concealment repeats its pitch, so it passes).
    let (x, rate) = recording(&alsa, &log);
    let block = (rate / 100.0) as usize;
    let purity: Vec<f64> = x
        .chunks_exact(block)
        .filter(|b| b.iter().map(|v| v * v).sum::<f32>() / block as f32 > 1e-4)
        .map(|b| tone_share(b, 440.0, rate))
        .collect();
    let impure = purity.iter().filter(|&&p| p < 0.9).count();
    let worst = purity.iter().cloned().fold(1.0, f64::min);
    report("10 ms blocks with sound", purity.len());
    report("blocks not the pure tone (< 90 % at 440 Hz)", impure);
    report("worst block's share at 440 Hz", format!("{worst:.3}"));
    let (total, mapped) = (count.total.load(Relaxed), count.mapped.load(Relaxed));
    report("flood datagrams", total);
    report("flood RTP-looking with PT 0/8", mapped);
    report("real packets played", stats.get("packets"));
    report("share played", stats.get("packets") / sent);
    report("stray", stats.get("stray"));
    report("lost", stats.get("lost"));
    report("late", stats.get("late"));
    report("concealed ms", stats.get("concealed"));
    report("underruns", stats.get("underruns"));
    assert!(
        stats.get("packets") >= 0.95 * sent,
        "only {} of {sent} real packets played\n{log}",
        stats.get("packets")
    );
    assert!(
        stats.get("packets") <= sent,
        "junk reached the jitter buffer\n{log}"
    );
    assert_eq!(stats.get("lost"), 0.0, "{log}");
    assert_eq!(stats.get("late"), 0.0, "{log}");
    // Every mapped junk packet reached the source lock and was dropped
    // there (some random-bytes datagrams also look like PT 0/8 RTP; up to
    // a table's worth may still be held when the line is printed).
    assert!(
        stats.get("stray") + 16.0 >= mapped as f64,
        "stray {} of {mapped}\n{log}",
        stats.get("stray")
    );
    // 5 s of tone heard (less what clock following shortened); only
    // blocks at its edges and where ffmpeg's
    // bursty pacing made the buffer conceal (as without the flood) may
    // fall short of a pure tone.
    assert!(
        purity.len() >= 440,
        "{} blocks of tone\n{log}",
        purity.len()
    );
    assert!(
        impure * 100 <= purity.len() * 3,
        "{impure} blocks not the tone\n{log}"
    );
    assert!(!log.contains("new sender"), "{log}");
    assert!(!log.contains("buffer reset"), "{log}");
    assert_eq!(log.matches("stream started").count(), 1, "{log}");
    assert!(
        log.contains("said goodbye (RTCP BYE)"),
        "ffmpeg's BYE\n{log}"
    );
    assert!(
        !log.contains("stream lost"),
        "a BYE is an end, not a loss\n{log}"
    );
    assert_eq!(stats.get("rt-allocs"), 0.0, "{log}");
}

/// The recording of `paced` as mono f32 and its rate, in the format the
/// receiver's log says it opened the device at.
fn recording(alsa: &AlsaConfig, log: &str) -> (Vec<f32>, f64) {
    let line = log
        .lines()
        .find(|l| l.contains("device 'paced' open:"))
        .unwrap_or_else(|| panic!("no device line\n{log}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |unit: &str| -> usize {
        let i = words.iter().position(|w| w.trim_end_matches(',') == unit);
        i.and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok())
            .unwrap_or_else(|| panic!("no {unit} in {line}"))
    };
    let (rate, channels) = (before("Hz"), before("ch"));
    let mono: Vec<f32> = if line.contains("Float") {
        read_f32le(&alsa.paced)
            .into_iter()
            .step_by(channels)
            .collect()
    } else {
        read_s16le(&alsa.paced)
            .into_iter()
            .step_by(channels)
            .map(|s| s as f32 / 32768.0)
            .collect()
    };
    (mono, rate as f64)
}

/// The share of `block`'s energy at `freq` Hz (Goertzel, the block's own
/// window): 1 for a pure tone of that frequency, small for noise.
fn tone_share(block: &[f32], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in block {
        let s0 = v as f64 + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let energy: f64 = block.iter().map(|&v| (v as f64) * (v as f64)).sum();
    // A pure tone's Goertzel power is energy × N / 2.
    (2.0 * power / (energy * block.len() as f64)).min(1.0)
}

/// Index of the first sample at or after `from` that is audible (0.01)
/// after at least `silence` samples below that, and reaches `level`
/// within the next 64 samples: the start of a sound after silence.
fn onset_after_silence(x: &[f32], from: usize, silence: usize, level: f32) -> Option<usize> {
    let mut quiet = 0;
    for (i, &v) in x.iter().enumerate().skip(from) {
        if v.abs() < 0.01 {
            quiet += 1;
            continue;
        }
        let rises = x
            .get(i..i + 64)
            .is_some_and(|w| w.iter().any(|s| s.abs() >= level));
        if quiet >= silence && rises {
            return Some(i);
        }
        quiet = 0;
    }
    None
}

#[test]
fn sender_restart_with_new_ssrc_is_heard_within_100_ms_in_a_flood() {
    let _slot = paced_slot();
    let dir = TestDir::new("source-lock-restart");
    let port = free_port();
    let (_pulse, alsa, mut rx) = receiver(&dir, port);
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let (stop, _count, flooder) = start_flood(to);
    std::thread::sleep(Duration::from_millis(300));
    let pcmu = |ssrc: u32, first_seq: u16| RtpStream {
        payload_type: 0,
        ssrc,
        first_seq,
        first_timestamp: ssrc.wrapping_mul(7919),
        rate: 8000,
        channels: 1,
        ptime_ms: 20,
        encoding: Encoding::Pcmu,
    };
    // The old sender: 1.5 s of a quiet 440 Hz tone.
    let a: Vec<i16> = common::sine(8000, 1, 440.0, 12_000, 6000);
    let t_a = Instant::now();
    let sent_a = send_rtp(to, &pcmu(0x0a0a_0a0a, 1000), &a);
    // It stops; 100 ms after its next packet would have gone, a new sender
    // (new SSRC, sequence and timestamps) starts: its first packet loud,
    // the rest quieter, so the recording shows whether the first played.
    let t_b_due = t_a + Duration::from_millis(20 * sent_a as u64 + 100);
    if let Some(wait) = t_b_due.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let mut b: Vec<i16> = common::sine(8000, 1, 1000.0, 8000, 8000);
    for s in b.iter_mut().skip(160) {
        *s /= 4;
    }
    let t_b = Instant::now();
    let sender = std::thread::spawn(move || send_rtp(to, &pcmu(0x0b0b_0b0b, 40_000), &b));
    // Half way through the new stream: a statistics line (SIGUSR1) for
    // the receiver's delay while it plays.
    std::thread::sleep(Duration::from_millis(500));
    rx.signal(nix::sys::signal::Signal::SIGUSR1);
    let sent_b = sender.join().expect("sender");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Relaxed);
    flooder.join().expect("flood thread");
    let (code, _, stats) = rx.stop();
    assert_eq!(code, Some(0));
    let log = rx.log_text();
    assert_eq!(log.matches("new sender").count(), 1, "{log}");
    let (x, rate) = recording(&alsa, &log);
    let ms = |n: usize| n as f64 * 1000.0 / rate;
    // Onsets: the old sender's after the start-up silence, the new one's
    // after the silence that follows the old one's fade.
    let a_on = onset_after_silence(&x, 0, 1, 0.05).unwrap_or_else(|| {
        let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        panic!("A silent ({} samples, peak {peak})\n{log}", x.len())
    });
    let a_end = a_on + (rate * 1.5) as usize;
    let b_on = onset_after_silence(&x, a_end, (rate * 0.02) as usize, 0.05)
        .unwrap_or_else(|| panic!("B not heard\n{log}"));
    // The new sender played later than the old one's timing would have
    // put it by `extra`; it is heard `extra` after its first packet plus
    // the receiver's delay (jitter buffer and device, `delay` in the
    // statistics line).
    let sent_gap_ms = (t_b - t_a).as_secs_f64() * 1000.0;
    let extra_ms = ms(b_on - a_on) - sent_gap_ms;
    let playing = log
        .lines()
        .filter_map(Stats::parse)
        .next()
        .unwrap_or_else(|| panic!("no statistics line while playing\n{log}"));
    let heard_ms = extra_ms + playing.get("delay");
    // Its first packet played: 20 ms at the loud level right at the onset.
    let loud = x[b_on..b_on + (rate * 0.03) as usize]
        .iter()
        .rposition(|v| v.abs() > 0.16)
        .map_or(0.0, ms);
    report(
        "restart: gap between senders (ms, sent)",
        sent_gap_ms - 20.0 * sent_a as f64,
    );
    report(
        "restart: new sender later than the old one's timing (ms)",
        format!("{extra_ms:.1}"),
    );
    report(
        "restart: receiver delay while playing (ms, stats)",
        playing.get("delay"),
    );
    report(
        "restart: heard after its first packet (ms)",
        format!("{heard_ms:.1}"),
    );
    report(
        "restart: first packet heard (ms of it)",
        format!("{loud:.1}"),
    );
    report("restart: stray", stats.get("stray"));
    report("restart: underruns", stats.get("underruns"));
    assert!(
        heard_ms <= 100.0,
        "heard {heard_ms:.1} ms after its first packet\n{log}"
    );
    assert!(
        (17.0..=23.0).contains(&loud),
        "the first packet ({loud:.1} ms loud) did not play whole\n{log}"
    );
    assert!(
        stats.get("packets") >= 0.95 * (sent_a + sent_b) as f64,
        "{log}"
    );
}
