//! Interoperability: the senders people already have play through the real
//! `netspeaker`. Input: ffmpeg's and GStreamer's RTP senders, and a plain
//! Python sender that behaves as the tutorial's does (headerless PCM at
//! twice real time). Output: what the receiver wrote to the `paced` device
//! (file plugin over a private PulseAudio null sink), compared with what
//! was sent. Policy: the receiver runs on its defaults (issue #11: what
//! users run): adaptive delay, clock following, the device opened once at
//! its own format (48 kHz stereo here) with every stream converted to it.
//! - L16 at 48 kHz (the device's rate, one clock on this machine) must
//!   pass through untouched once the clock estimate is trusted: most of
//!   the last seconds of a 15 s stream bit-exact, each second aligned on
//!   its own (as `tests/e2e.rs`'s L16 test).
//! - 8 kHz G.711 cannot be bit-exact at 48 kHz: the stream is a sum of
//!   tones, and each 20 ms of the recording is fitted with them (any
//!   phase, any level: the ideal signal after any delay and an exact
//!   conversion). What is left must be no more than what the sender's own
//!   codes leave at 8 kHz (the codec's noise), within 1 dB, and the tones'
//!   levels must be kept within 0.5 dB: a wrong G.711 law, a lost or
//!   repeated piece, a click or an image of the conversion all show.
//! - The tutorial's sender (raw 8 kHz at twice real time): what was kept
//!   is played, for as long as it lasts.
//!
//! (netspeaker-send → ffmpeg via SDP is tests/send_ffmpeg.rs.)

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::paced_receiver::{final_stat, serial, write_s16le, PacedReceiver};
use common::receiver::free_port;
use common::{multitone, noise, once_more_if_stalled, TestDir};
use netspeaker::audio::codec;
use relay::{Impairment, Relay};

const RECEIVER: &str = env!("CARGO_BIN_EXE_netspeaker");

/// The device's format on the defaults (the PulseAudio plugin offers any;
/// the receiver prefers 48 kHz stereo).
const DEVICE_RATE: u32 = 48_000;
const DEVICE_CHANNELS: u16 = 2;

/// The G.711 streams: three tones, multiples of 50 Hz (whole cycles in a
/// 20 ms block), each at 5000 (peak 15000), 10 s.
const TONES: [f64; 3] = [250.0, 650.0, 1000.0];
const TONE_AMPLITUDE: i16 = 5000;
const G711_SECONDS: usize = 15;
/// Judged: the last seconds before the stream's end (the first seconds of
/// a stream, while the delay settles, are judged by tests/defaults.rs's
/// burst timing).
const JUDGED_SECONDS: usize = 3;

/// `netspeaker` on its defaults (the device, `args`, a verbose log, no
/// periodic statistics) on the paced device, once the device takes audio
/// in real time.
fn start_receiver(dir: &TestDir, args: &[&str]) -> PacedReceiver {
    // The receiver says "open:" after a few writes returned, which the
    // PulseAudio plugin lets through before its server starts the stream
    // (up to a second later, here). Streams that start in that second are
    // tests/defaults.rs's subject (and overflow with short packets: see
    // its findings); these tests prove the senders' formats, so they start
    // once the device takes audio in real time: twice in a row, the
    // recording grew by 0.7 to 2 times the span's worth of frames over a
    // span of 100-150 ms (not a buffer filling at once, not a standstill).
    let bytes_per_ms = f64::from(DEVICE_RATE) / 1000.0 * 2.0 * f64::from(DEVICE_CHANNELS);
    let mut last: Option<(Instant, u64)> = None;
    let mut steady = 0;
    PacedReceiver::start(dir, args, move |receiver| {
        let size = std::fs::metadata(&receiver.recording).map_or(0, |m| m.len());
        let now = (Instant::now(), size);
        let Some(before) = last else {
            last = Some(now);
            return false;
        };
        let span = now.0.duration_since(before.0);
        if span < Duration::from_millis(100) {
            return false;
        }
        let real_time = span.as_secs_f64() * 1000.0 * bytes_per_ms;
        let grew = now.1.saturating_sub(before.1) as f64;
        let ok = receiver.log_text().contains(" open: ")
            && span <= Duration::from_millis(150)
            && grew >= 0.7 * real_time
            && grew <= 2.0 * real_time;
        steady = if ok { steady + 1 } else { 0 };
        last = Some(now);
        steady >= 2
    })
}

/// A same-rate L16 stream on one clock: the sender's samples reach the
/// device untouched whenever the receiver passes through. These tests are
/// about the senders' formats: a wrong byte order, channel order or
/// payload mapping leaves no second exact. A bursty sender (ffmpeg -re,
/// gst on a loaded machine: 3 starved buffers in ffmpeg's first second
/// were seen) moves the adaptive target and leaves the delay tens of ms
/// high, which the defaults take back resampled at up to 1000 ppm, for
/// many seconds, anywhere in the stream; so every second played is
/// judged, not only the tail, and two exact seconds prove the payload
/// decoded bit for bit (tests/e2e.rs's paced case asks two thirds of the
/// tail of a steady sender).
fn assert_passed_through(recording: &[i16], sent: &[i16], log: &str) {
    let (exact, judged) =
        common::exact_seconds(recording, sent, DEVICE_CHANNELS, DEVICE_RATE, None, log);
    eprintln!("{exact} of {judged} s bit-exact");
    assert!(
        exact >= 2,
        "only {exact} of the {judged} s played bit-exact; receiver log:\n{log}"
    );
}

/// An 8 kHz G.711 stream played at 48 kHz: the recording's tone fits
/// against those of `expected` (the sender's codes, decoded, at 8 kHz).
fn assert_converted(recording: &[i16], expected: &[i16], log: &str) {
    let c = common::compare_tones(
        &common::first_channel_s16(recording, DEVICE_CHANNELS),
        DEVICE_RATE,
        &common::to_f32(expected),
        8000,
        &TONES,
        TONE_AMPLITUDE,
        JUDGED_SECONDS,
    );
    eprintln!("{c:?}");
    assert_eq!(
        c.blocks,
        JUDGED_SECONDS * 50,
        "less than {JUDGED_SECONDS} s of the tones were played; receiver log:\n{log}"
    );
    // The codec is right when the tones come out at their levels and the
    // rest is well below them: a wrong law, a lost or repeated piece or a
    // click leaves under 15 dB. A resampled correction of the delay (the
    // defaults follow a bursty sender's moving target: 760-1070 ppm over
    // the judged tail on 2026-12-03) is taken by the fit's free rate
    // (`common::rate_free_fit`); against fixed frequencies it left 30-35
    // dB. Bar: no worse than the codec alone by more than 1 dB.
    assert!(
        c.played_snr_db >= c.reference_snr_db - 1.0,
        "played {:.1} dB against the tones, the codec alone {:.1} dB; receiver log:\n{log}",
        c.played_snr_db,
        c.reference_snr_db
    );
    assert!(
        c.level_error_db <= 0.5,
        "a tone's level changed by {:.2} dB; receiver log:\n{log}",
        c.level_error_db
    );
}

/// What a G.711 stream from ffmpeg must play as: the codes ffmpeg's encoder
/// chose, decoded by netspeaker's decoder. Encoders differ near segment
/// boundaries (about 1 % of the codes of loud noise from ffmpeg differ from
/// the reference encoder's), so the sender's own codes are the reference.
fn ffmpeg_g711_decoded(dir: &TestDir, input: &Path, rate: u32, codec: &str) -> Vec<i16> {
    let (muxer, decode): (&str, fn(u8) -> i16) = match codec {
        "pcm_mulaw" => ("mulaw", codec::ulaw_to_linear),
        _ => ("alaw", codec::alaw_to_linear),
    };
    let out = dir.file("ffmpeg-codes.raw");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-f", "s16le", "-ar", &rate.to_string(), "-ac", "1", "-i"])
        .arg(input)
        .args(["-c:a", codec, "-f", muxer])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg encoding to {muxer}: {status}");
    std::fs::read(&out)
        .expect("ffmpeg's codes")
        .into_iter()
        .map(decode)
        .collect()
}

/// ffmpeg's RTP arguments for the raw signal file.
fn ffmpeg_rtp_args(input: &Path, rate: u32, channels: u16, codec: &str, dest: &str) -> Vec<String> {
    let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["-f", "s16le", "-ar"].map(String::from));
    args.push(rate.to_string());
    args.push("-ac".into());
    args.push(channels.to_string());
    args.push("-i".into());
    args.push(input.display().to_string());
    args.extend(["-c:a", codec, "-f", "rtp", dest].map(String::from));
    args
}

/// The payload type ffmpeg gives `codec` at this rate and channel count,
/// read from the SDP it writes (`-sdp_file`): L16 at 48 kHz has no static
/// type, so ffmpeg picks a dynamic one. A 20 ms run of the stream goes to
/// a socket of our own, so nothing else sees it.
fn ffmpeg_payload_type(dir: &TestDir, rate: u32, channels: u16, codec: &str) -> u8 {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    let dest = format!(
        "rtp://127.0.0.1:{}",
        sink.local_addr().expect("addr").port()
    );
    let probe = dir.file("probe.raw");
    write_s16le(&probe, &vec![0; rate as usize / 50 * usize::from(channels)]);
    let sdp = dir.file("ffmpeg.sdp");
    let out = Command::new("ffmpeg")
        .args(ffmpeg_rtp_args(&probe, rate, channels, codec, &dest))
        .arg("-sdp_file")
        .arg(&sdp)
        .stdout(Stdio::null())
        .output()
        .expect("run ffmpeg (apt-get install ffmpeg)");
    assert!(out.status.success(), "ffmpeg: {out:?}");
    let text = std::fs::read_to_string(&sdp).expect("ffmpeg wrote no SDP");
    let rtpmap = text
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:"))
        .unwrap_or_else(|| panic!("no a=rtpmap in ffmpeg's SDP:\n{text}"));
    assert!(
        rtpmap.contains(&format!("L16/{rate}/{channels}")),
        "ffmpeg's SDP: {text}"
    );
    rtpmap
        .split_whitespace()
        .next()
        .and_then(|pt| pt.parse().ok())
        .unwrap_or_else(|| panic!("bad a=rtpmap in ffmpeg's SDP:\n{text}"))
}

/// What one run gave: the receiver's log, the recording, and what the
/// device must have been given (the signal as the sender encoded it).
struct Played {
    log: String,
    recording: Vec<i16>,
    expected: Vec<i16>,
    /// The sound server stood still this long while the receiver played
    /// (outside evidence, from the recording's growth), if it did.
    stalled: Option<Duration>,
    /// The sender's worst lateness against its own pace, as a relay in
    /// front of the receiver saw it (outside evidence); zero where no
    /// relay watched.
    held_up: Duration,
}

/// Plays a stream and judges it: the receiver reported no underrun, and
/// the recording holds what the device must have been given. Once more
/// only if that failed while the sound server stalled, by the evidence of
/// the recording's growth, or while the host held the sender up, by a
/// relay's (never the receiver's own figures); the second run is judged
/// whatever happens in it.
fn judged(name: &str, channels: u16, play: impl Fn() -> Played) {
    // L16 at the device's rate passes through; 8 kHz G.711 is converted.
    let same_rate = channels == DEVICE_CHANNELS;
    once_more_if_stalled(name, |stalled| {
        let p = play();
        stalled.set(common::stood_still_or_held_up(p.stalled, p.held_up));
        assert_eq!(
            final_stat(&p.log, "underruns"),
            0,
            "the device underran; receiver log:\n{}",
            p.log
        );
        if same_rate {
            assert_passed_through(&p.recording, &p.expected, &p.log);
        } else {
            assert_converted(&p.recording, &p.expected, &p.log);
        }
    });
}

/// Streams `signal` with ffmpeg (paced at real time, `-re`) into the
/// receiver.
fn play_from_ffmpeg(name: &str, rate: u32, channels: u16, codec: &str, signal: &[i16]) -> Played {
    play_from_ffmpeg_with(name, rate, channels, codec, signal, &[], &[])
}

/// `play_from_ffmpeg` with more ffmpeg output options (`sender_args`,
/// before the URL; an `srtp_out_*` among them makes the URL `srtp://`)
/// and more receiver options (`receiver_args`).
fn play_from_ffmpeg_with(
    name: &str,
    rate: u32,
    channels: u16,
    codec: &str,
    signal: &[i16],
    sender_args: &[String],
    receiver_args: &[String],
) -> Played {
    let _serial = serial();
    let dir = TestDir::new(name);
    let mut rx_args = Vec::new();
    if codec == "pcm_s16be" {
        let pt = ffmpeg_payload_type(&dir, rate, channels, codec);
        rx_args.push("--rtp-format".to_string());
        rx_args.push(format!("{pt}=L16/{rate}/{channels}"));
    }
    let input = dir.file("signal.raw");
    write_s16le(&input, signal);
    let expected = match codec {
        "pcm_s16be" => signal.to_vec(),
        _ => ffmpeg_g711_decoded(&dir, &input, rate, codec),
    };
    let port = free_port();
    rx_args.extend(receiver_args.iter().cloned());
    rx_args.push("--listen".into());
    rx_args.push(format!("127.0.0.1:{port}"));
    let rx_args: Vec<&str> = rx_args.iter().map(String::as_str).collect();
    // ffmpeg sends G.711 in 40 ms packets (its raw demuxer's chunk), 41 ms
    // apart with catch-ups, and -re is not a realtime thread: on a loaded
    // 2-core machine it stalls for tens of ms. The adaptive delay must
    // cover that by itself.
    let receiver = start_receiver(&dir, &rx_args);
    let mut args = vec!["-re".to_string()];
    let scheme = if sender_args.iter().any(|a| a.starts_with("-srtp_out")) {
        "srtp"
    } else {
        "rtp"
    };
    args.extend(ffmpeg_rtp_args(
        &input,
        rate,
        channels,
        codec,
        &format!("{scheme}://127.0.0.1:{port}"),
    ));
    let url = args.pop().expect("the URL");
    args.extend(sender_args.iter().cloned());
    args.push(url);
    let out = Command::new("ffmpeg")
        .args(&args)
        .stdout(Stdio::null())
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg: {out:?}");
    // The playout delay and the device buffer still hold the end.
    std::thread::sleep(Duration::from_millis(400));
    let (log, recording, stalled) = receiver.stop();
    Played {
        log,
        recording,
        expected,
        stalled,
        held_up: Duration::ZERO,
    }
}

/// The GStreamer pipeline that streams the raw signal file: parse, convert,
/// then `tail` (encoder, payloader) into `udpsink`. `udpsink` syncs to the
/// pipeline clock, so the file goes out at real time.
fn gst_pipeline(input: &Path, rate: u32, channels: u16, tail: &str, port: u16) -> Vec<String> {
    let mut args = vec![
        "-q".to_string(),
        "filesrc".into(),
        format!("location={}", input.display()),
        "!".into(),
        "rawaudioparse".into(),
        "format=pcm".into(),
        "pcm-format=s16le".into(),
        format!("sample-rate={rate}"),
        format!("num-channels={channels}"),
        "!".into(),
        "audioconvert".into(),
        "!".into(),
    ];
    args.extend(tail.split_whitespace().map(String::from));
    args.extend(["!", "udpsink", "host=127.0.0.1", &format!("port={port}")].map(String::from));
    args
}

/// What GStreamer's `mulawenc` makes of the signal, decoded by netspeaker's
/// decoder (see `ffmpeg_g711_decoded` for why not our own round trip).
fn gst_ulaw_decoded(dir: &TestDir, input: &Path, rate: u32) -> Vec<i16> {
    let out = dir.file("gst-codes.raw");
    let mut args = gst_pipeline(input, rate, 1, "mulawenc", 0);
    // The same pipeline into a file instead of the network.
    args.truncate(args.len() - 4);
    args.extend(["!", "filesink"].map(String::from));
    args.push(format!("location={}", out.display()));
    let status = Command::new("gst-launch-1.0")
        .args(&args)
        .stdout(Stdio::null())
        .status()
        .expect("run gst-launch-1.0 (apt-get install gstreamer1.0-tools)");
    assert!(status.success(), "gst-launch-1.0 into a file: {status}");
    std::fs::read(&out)
        .expect("mulawenc's codes")
        .into_iter()
        .map(codec::ulaw_to_linear)
        .collect()
}

/// Streams `signal` with GStreamer (`tail`: encoder and RTP payloader)
/// into the receiver started with `rx_args`.
fn play_from_gstreamer(
    name: &str,
    rate: u32,
    channels: u16,
    tail: &str,
    rx_args: &[&str],
    signal: &[i16],
) -> Played {
    let _serial = serial();
    let dir = TestDir::new(name);
    let input = dir.file("signal.raw");
    write_s16le(&input, signal);
    let expected = if tail.contains("mulawenc") {
        gst_ulaw_decoded(&dir, &input, rate)
    } else {
        signal.to_vec()
    };
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = rx_args.to_vec();
    args.extend(["--listen", &listen]);
    let receiver = start_receiver(&dir, &args);
    // udpsink paces each packet to its timestamp: a relay that forwards
    // untouched sees when the host held gst-launch up (seen in CI: a
    // 60 ms hole, after which the backlog left the delay high for the
    // rest of the stream and 1 s of 24 was exact).
    let mut relay = Relay::start(
        listen.parse().expect("listen address"),
        Impairment::default(),
    );
    let t0 = Instant::now();
    let out = Command::new("gst-launch-1.0")
        .args(gst_pipeline(
            &input,
            rate,
            channels,
            tail,
            relay.addr.port(),
        ))
        .stdout(Stdio::null())
        .output()
        .expect("run gst-launch-1.0");
    assert!(out.status.success(), "gst-launch-1.0: {out:?}");
    let held_up = relay.host_delay(t0, Instant::now());
    eprintln!(
        "{name}: gst-launch's packets at most {:.1} ms behind its pace",
        held_up.as_secs_f64() * 1000.0
    );
    std::thread::sleep(Duration::from_millis(400));
    relay.stop();
    let (log, recording, stalled) = receiver.stop();
    Played {
        log,
        recording,
        expected,
        stalled,
        held_up,
    }
}

#[test]
fn gstreamer_l16_stereo_bit_exact() {
    // 25 s: like ffmpeg's (see ffmpeg_l16_stereo_dynamic_pt_bit_exact), a
    // start that leaves the delay high is taken back for many seconds: 2 of
    // 14 s exact in one of three 15-s runs at load 0.4.
    let sent = noise(21, 2, 48_000 * 25, 20_000);
    // rtpL16pay's default payload type is 96 (dynamic): declared here as a
    // user would from the caps it prints.
    judged("gst-l16", 2, || {
        play_from_gstreamer(
            "gst-l16",
            48_000,
            2,
            "rtpL16pay",
            &["--rtp-format", "96=L16/48000/2"],
            &sent,
        )
    });
}

#[test]
fn gstreamer_pcmu_plays_bit_exact() {
    let sent = multitone(8000, 8000 * G711_SECONDS, &TONES, TONE_AMPLITUDE);
    judged("gst-pcmu", 1, || {
        play_from_gstreamer(
            "gst-pcmu",
            8000,
            1,
            "mulawenc ! rtppcmupay max-ptime=20000000",
            &[],
            &sent,
        )
    });
}

#[test]
fn ffmpeg_pcmu_plays_bit_exact() {
    let sent = multitone(8000, 8000 * G711_SECONDS, &TONES, TONE_AMPLITUDE);
    judged("ff-pcmu", 1, || {
        play_from_ffmpeg("ff-pcmu", 8000, 1, "pcm_mulaw", &sent)
    });
}

#[test]
fn ffmpeg_pcma_plays_bit_exact() {
    let sent = multitone(8000, 8000 * G711_SECONDS, &TONES, TONE_AMPLITUDE);
    judged("ff-pcma", 1, || {
        play_from_ffmpeg("ff-pcma", 8000, 1, "pcm_alaw", &sent)
    });
}

#[test]
fn ffmpeg_l16_stereo_dynamic_pt_bit_exact() {
    // 30 s: ffmpeg -re stalls in its first second (2-3 starved buffers
    // seen even at load 1), the delay ends 20 ms above its target with no
    // room to stretch it away at this latency, and the defaults take it
    // back at 1000 ppm: 20 s resampled, no second exact in 2 of 5 runs of
    // a 20-s stream.
    let sent = noise(13, 2, 48_000 * 30, 20_000);
    judged("ff-l16", 2, || {
        play_from_ffmpeg("ff-l16", 48_000, 2, "pcm_s16be", &sent)
    });
}

/// How long the recording's first channel sounds, in ms: first to last
/// non-zero sample at the device rate.
fn sounding_ms(recording: &[i16]) -> f64 {
    let left = common::first_channel_s16(recording, DEVICE_CHANNELS);
    match (
        left.iter().position(|&v| v != 0.0),
        left.iter().rposition(|&v| v != 0.0),
    ) {
        (Some(a), Some(b)) => (b - a) as f64 * 1000.0 / f64::from(DEVICE_RATE),
        _ => 0.0,
    }
}

/// What one tutorial stream did: the run (recording and log), the
/// datagrams sender.py sent, how long its sending took, and the
/// receiver's VmHWM in KiB a fifth into the sending, half-way, and just
/// before it stopped.
struct Tutorial {
    played: Played,
    sent: u64,
    sending: Duration,
    hwm_kib: [u64; 3],
}

/// The tutorial's sender (tests/tutorial/sender.py: 320-byte datagrams
/// of s16le 8 kHz mono at twice real time) streams `seconds` of noise into
/// `netspeaker --raw s16le:8000:1`.
fn play_tutorial(name: &str, seconds: usize) -> Tutorial {
    let _serial = serial();
    let dir = TestDir::new(name);
    let sent = noise(31 + seconds as u64, 1, 8000 * seconds, 20_000);
    let input = dir.file("signal.raw");
    write_s16le(&input, &sent);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let receiver = start_receiver(
        &dir,
        // mlockall would make every mapping resident (PulseAudio's 64 MiB
        // shared-memory pools among them), hiding what the receiver itself
        // uses: without it VmHWM counts the pages it touched.
        // A statistics line every second: its buffer figure shows how
        // much audio the jitter buffer held while the excess arrived.
        &[
            "--raw",
            "s16le:8000:1",
            "--listen",
            &listen,
            "--no-mlock",
            "--stats-interval",
            "1",
        ],
    );
    let sending = Instant::now();
    let sender = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tutorial/sender.py");
    let sender = Command::new("python3")
        .arg(sender)
        .arg(&input)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    // A fifth into the sending: the receiver has warmed up and is dropping.
    std::thread::sleep(Duration::from_millis(seconds as u64 * 100));
    let early_hwm = receiver.vm_hwm_kib();
    // Half-way: every buffer has been through its whole length.
    std::thread::sleep(Duration::from_millis(seconds as u64 * 150));
    let mid_hwm = receiver.vm_hwm_kib();
    let out = sender.wait_with_output().expect("wait for sender.py");
    let sending = sending.elapsed();
    assert!(out.status.success(), "sender.py: {out:?}");
    let datagrams: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("sender.py prints the datagrams it sent");
    std::thread::sleep(Duration::from_millis(300));
    let hwm = receiver.vm_hwm_kib();
    let (log, recording, stalled) = receiver.stop();
    let played = Played {
        log,
        recording,
        expected: sent,
        stalled,
        held_up: Duration::ZERO,
    };
    Tutorial {
        played,
        sent: datagrams,
        sending,
        hwm_kib: [early_hwm, mid_hwm, hwm],
    }
}

/// The jitter buffer's capacity for the tutorial's stream: the receiver's
/// least, kept so a device that takes seconds to start loses nothing of a
/// stream's start.
const TUTORIAL_CAPACITY_MS: f64 = netspeaker::receive::engine::MIN_CAPACITY_MS as f64;
/// The fastest the receiver can consume a stream: catching up, the
/// time-stretcher's speed.
const CATCH_UP_SPEED: f64 = netspeaker::receive::stretch::CATCH_UP_SPEED;

/// Resident memory of the receiver (without mlock) after the longer
/// stream, in KiB; its own footprint is about 8 MiB with the PulseAudio
/// plugin loaded.
const TUTORIAL_HWM_BOUND_KIB: u64 = 32 * 1024;
/// Growth allowed from half-way through the 20 s stream's sending (5 s) to
/// its end (10 s), in KiB. What proves the excess is dropped, not kept, are
/// the overflow count and the played length above; this catches a leak:
/// more than about 400 bytes for each of the 250 datagrams of that time.
/// The receiver was seen to add 0 or 64 KiB over it (runs here; from a
/// fifth of the way, 12-84 KiB, as its preallocated buffers' pages are
/// touched for the first time), and no more.
const TUTORIAL_GROWTH_BOUND_KIB: u64 = 96;

#[test]
fn tutorial_stream_plays_with_bounded_memory_and_counted_overflow() {
    let short = play_tutorial("tutorial-5s", 5);
    let long = play_tutorial("tutorial-20s", 20);
    for t in [&short, &long] {
        let (p, sent) = (&t.played, t.sent);
        let played_ms = sounding_ms(&p.recording);
        let packets = final_stat(&p.log, "packets");
        let overflow = final_stat(&p.log, "overflow");
        let kept_ms = (packets - overflow) as f64 * 20.0;
        let sending_ms = t.sending.as_secs_f64() * 1000.0;
        let held_ms = buffer_figures(&p.log).fold(0.0, f64::max);
        let context = format!(
            "sent {sent} datagrams in {sending_ms:.0} ms; packets {packets} overflow {overflow}; \
             {played_ms:.0} ms played of {kept_ms:.0} ms kept; at most {held_ms:.0} ms held; log:\n{}",
            p.log
        );
        eprintln!(
            "tutorial: sent {sent} in {sending_ms:.0} ms, overflow {overflow}, \
             played {played_ms:.0} ms of {kept_ms:.0} ms kept, at most {held_ms:.0} ms held"
        );
        // Loopback loses nothing: every datagram is counted.
        assert_eq!(packets, sent, "{context}");
        // Sent at twice real time, played at real time or faster once the
        // device consumes: the excess is dropped, counted, never more than
        // that. The device may take a while to start (PulseAudio's start
        // takes 0.1-2 s here); what arrives meanwhile is held, up to the
        // buffer's capacity, so about the sending time's worth is kept,
        // at least 80 % of it (the sender's own start-up, the target
        // delay, and the host holding sender.py up while the receiver
        // plays what it has). At most what the buffer holds, plus what
        // played while the datagrams came at the time-stretcher's fastest
        // catch-up, plus one datagram in hand in the device and the
        // stretcher.
        let sent_ms = sent as f64 * 20.0;
        assert!(
            kept_ms >= sent_ms.min(sending_ms * 0.8),
            "more was dropped than the excess over real time: {context}"
        );
        assert!(
            kept_ms <= TUTORIAL_CAPACITY_MS + sending_ms * CATCH_UP_SPEED + 20.0,
            "more was kept than the buffer holds and the device played: {context}"
        );
        assert!(
            held_ms <= TUTORIAL_CAPACITY_MS,
            "the buffer held more than its capacity: {context}"
        );
        assert!(overflow > 0, "nothing was counted as overflow: {context}");
        // What was not dropped played, once: the recording sounds for as
        // long as the kept datagrams last (at 48 kHz, not bit for bit),
        // plus at most the concealment's 60 ms fade after the end and one
        // datagram.
        assert!(
            played_ms >= kept_ms * 0.95 && played_ms <= kept_ms + 80.0,
            "the kept datagrams did not play for their length: {context}"
        );
    }
    let [_, _, short_hwm] = short.hwm_kib;
    let [early_hwm, mid_hwm, long_hwm] = long.hwm_kib;
    eprintln!(
        "VmHWM {short_hwm} KiB after the 5 s stream; {early_hwm} KiB 2 s into \
         the 20 s stream, {mid_hwm} KiB 5 s in, {long_hwm} KiB at its end"
    );
    assert!(
        long_hwm <= TUTORIAL_HWM_BOUND_KIB,
        "VmHWM {long_hwm} KiB after the 20 s stream"
    );
    assert!(
        long_hwm <= mid_hwm + TUTORIAL_GROWTH_BOUND_KIB,
        "memory grew with the stream: VmHWM {mid_hwm} KiB 5 s in, {long_hwm} KiB at the end"
    );
}

/// The jitter buffer's level in each statistics line of `log`, in ms.
fn buffer_figures(log: &str) -> impl Iterator<Item = f64> + '_ {
    log.lines().filter_map(|l| {
        let mut words = l.split_whitespace().skip_while(|w| *w != "buffer");
        words.next()?;
        words.next()?.split('/').next()?.parse().ok()
    })
}

const SRTP_KEY: &str = "bmV0c3BlYWtlciBzcnRwIHRlc3Qga2V5IDAwMDEh";
const OTHER_SRTP_KEY: &str = "YW5vdGhlciBzcnRwIGtleSwgbm90IG91cnMgMDIh";

/// The receiver's options for SRTP with `key`, from a key file of mode
/// 0600 as deploy/install.sh --srtp-key writes it.
fn srtp_receiver_args(name: &str, key: &str) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("ns-interop-{name}-{}.key", std::process::id()));
    std::fs::write(&path, format!("{key}\n")).expect("key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    vec!["--srtp-key-file".into(), path.display().to_string()]
}

fn srtp_sender_args(key: &str) -> Vec<String> {
    [
        "-srtp_out_suite",
        "AES_CM_128_HMAC_SHA1_80",
        "-srtp_out_params",
        key,
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn ffmpeg_srtp_pcmu_plays() {
    let sent = multitone(8000, 8000 * G711_SECONDS, &TONES, TONE_AMPLITUDE);
    let rx = srtp_receiver_args("srtp-ok", SRTP_KEY);
    once_more_if_stalled("ff-srtp", |stalled| {
        let p = play_from_ffmpeg_with(
            "ff-srtp",
            8000,
            1,
            "pcm_mulaw",
            &sent,
            &srtp_sender_args(SRTP_KEY),
            &rx,
        );
        stalled.set(common::stood_still_or_held_up(p.stalled, p.held_up));
        // Decrypted exactly (tests/net_srtp.rs compares the payloads byte
        // for byte): what plays is the codes ffmpeg encrypted.
        assert_converted(&p.recording, &p.expected, &p.log);
        assert_eq!(final_stat(&p.log, "auth-failed"), 0, "{}", p.log);
        // The keyed net thread (and the playout thread) allocated nothing.
        assert_eq!(final_stat(&p.log, "rt-allocs"), 0, "{}", p.log);
        assert!(
            p.log.contains("SRTP (AES_CM_128_HMAC_SHA1_80) only"),
            "{}",
            p.log
        );
    });
}

/// A keyed receiver fed by `sender_args` (another key, or none) plays
/// nothing and counts every packet as failing authentication.
fn keyed_receiver_plays_nothing_from(name: &str, sender_args: &[String]) {
    let sent = noise(15, 1, 8000 * 2, 20_000);
    let rx = srtp_receiver_args(name, SRTP_KEY);
    let p = play_from_ffmpeg_with(name, 8000, 1, "pcm_mulaw", &sent, sender_args, &rx);
    assert!(
        p.recording.iter().all(|&s| s == 0),
        "played something from an unauthenticated sender:\n{}",
        p.log
    );
    assert_eq!(final_stat(&p.log, "packets"), 0, "{}", p.log);
    // ffmpeg sends 2 s of PCMU in 40 ms packets: about 50.
    assert!(final_stat(&p.log, "auth-failed") >= 40, "{}", p.log);
    assert_eq!(final_stat(&p.log, "rt-allocs"), 0, "{}", p.log);
    assert!(
        p.log.contains("SRTP authentication failed") && p.log.contains("unencrypted"),
        "the log names the likely causes:\n{}",
        p.log
    );
}

#[test]
fn ffmpeg_srtp_with_another_key_plays_nothing() {
    keyed_receiver_plays_nothing_from("ff-srtp-other", &srtp_sender_args(OTHER_SRTP_KEY));
}

#[test]
fn ffmpeg_plaintext_to_keyed_receiver_plays_nothing() {
    keyed_receiver_plays_nothing_from("ff-srtp-plain", &[]);
}

#[test]
fn receiver_refuses_unusable_key_file_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("srtp-bad-key");
    let open = dir.file("open.key");
    std::fs::write(&open, SRTP_KEY).expect("key file");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let short = dir.file("short.key");
    std::fs::write(&short, "c2VjcmV0Cg==\n").expect("key file");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for (key, says) in [
        (dir.file("missing.key"), "cannot read the SRTP key file"),
        (open, "group or others can read the key"),
        (short, "40-character base64"),
    ] {
        let out = Command::new(RECEIVER)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--device",
                "null",
                "--srtp-key-file",
            ])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .expect("run netspeaker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", key.display());
        assert!(err.contains(says), "{err}");
    }
    let out = Command::new(RECEIVER)
        .args(["--srtp-suite", "AES_CM_128_HMAC_SHA1_32"])
        .output()
        .expect("run netspeaker");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a suite without a key is a usage error"
    );
}
