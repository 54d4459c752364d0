//! Interoperability of Opus (RFC 7587): the Opus senders people have play
//! through the real `netspeaker`. Input: ffmpeg's libopus RTP stream (from
//! an Ogg file, `-c:a copy`, so the packets on the wire are the file's) and
//! GStreamer's `opusenc ! rtpopuspay` (teed into an Ogg file). Output: what
//! the receiver wrote to the `paced` device (file plugin over a private
//! PulseAudio null sink). Policy: the receiver runs with a fixed playout
//! delay, no clock following and the device at the stream's 48 kHz stereo,
//! so the path is bit-exact: the recording must be libopus's decode of the
//! same packets (ffmpeg's libopus decoder reading the Ogg file), apart from
//! the start-up offset, for at least 95 % of it. Through a relay that loses
//! packets, every loss whose next packet arrived must be rebuilt from
//! in-band FEC. (netspeaker-send → ffmpeg is tests/send_ffmpeg.rs.)

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::paced_receiver::{final_stat, serial, write_s16le, PacedReceiver};
use common::receiver::free_port;
use common::{align, compare, noise, once_more_if_stalled, read_s16le, TestDir};

/// Fixed playout delay for streams from other programs (see
/// `play_from_ffmpeg` for why not less).
const INTEROP_LATENCY_MS: u32 = 120;

/// These tests' subject is the decode (bit-exact against libopus's own
/// decode of the same packets), so the samples must reach the device
/// untouched from the first one: on the defaults a 3 s stream that
/// has sound from its first frame is resampled while its start delay
/// is corrected (issue #11, still open), tried: 55-83 % of frames
/// differ. The defaults' Opus playout is judged by tests/opus_fec.rs.
///
/// Starts `netspeaker` with the device fixed at the stream's rate and
/// channel count (so it never reopens when the stream starts: the file
/// plugin starts a new file on every open) and waits until the device
/// consumes. A PulseAudio null sink takes over a second to start a new
/// stream on a loaded machine; a sender started before that would lose
/// its first second to a full queue.
fn start_receiver(
    dir: &TestDir,
    latency_ms: u32,
    rate: u32,
    channels: u16,
    args: &[&str],
) -> PacedReceiver {
    let (latency, rate, channels) = (
        latency_ms.to_string(),
        rate.to_string(),
        channels.to_string(),
    );
    let mut all = vec!["--latency-ms", &latency, "--clock-follow", "off"];
    all.extend(["--device-rate", &rate, "--device-channels", &channels]);
    all.extend(args);
    PacedReceiver::start(dir, &all, |receiver| {
        receiver.log_text().contains("consuming after")
    })
}

/// The recording holds `expected` (what the device should have been given)
/// bit-exact from where the alignment puts it, for at least 95 % of it.
fn assert_played(recording: &[i16], expected: &[i16], channels: u16, log: &str) {
    let al = align(recording, expected, channels, 0).unwrap_or_else(|| {
        panic!(
            "the sent signal is not in the recording ({} samples); receiver log:\n{log}",
            recording.len()
        )
    });
    let cmp = compare(recording, expected, channels, al, 0);
    let sent_frames = expected.len() / usize::from(channels);
    assert_eq!(
        cmp.mismatched_frames, 0,
        "the recording differs from the sent signal: {cmp:?} at {al:?}; receiver log:\n{log}"
    );
    assert!(
        cmp.frames * 100 >= sent_frames * 95,
        "only {} of {sent_frames} sent frames reached the device ({al:?}); receiver log:\n{log}",
        cmp.frames
    );
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
}

/// Plays a stream and judges it: the receiver reported no underrun, and
/// the recording holds what the device must have been given. Once more
/// only if that failed while the sound server stalled, by the evidence of
/// the recording's growth (never the receiver's own figures); the second
/// run is judged whatever happens in it.
fn judged(name: &str, channels: u16, play: impl Fn() -> Played) {
    once_more_if_stalled(name, |stalled| {
        let p = play();
        stalled.set(common::stood_still(p.stalled));
        assert_eq!(
            final_stat(&p.log, "underruns"),
            0,
            "the device underran; receiver log:\n{}",
            p.log
        );
        assert_played(&p.recording, &p.expected, channels, &p.log);
    });
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

/// ffmpeg's Opus, as a user streams it: libopus at 96 kbit/s stereo (its
/// SDP: `97 opus/48000/2`). The signal is encoded once into an Ogg file,
/// sent from it with `-c:a copy` (so the packets on the wire are the
/// file's) and decoded from it by ffmpeg's libopus decoder for the
/// reference: netspeaker must play exactly that decode. `encode_args` go
/// to the encoder; `impairment` sits between ffmpeg and the receiver.
fn play_opus_from_ffmpeg(
    name: &str,
    signal: &[i16],
    encode_args: &[&str],
    impairment: relay::Impairment,
) -> (Played, relay::RelayCounts) {
    let _serial = serial();
    let dir = TestDir::new(name);
    let input = dir.file("signal.raw");
    write_s16le(&input, signal);
    let ogg = dir.file("signal.ogg");
    let quiet = ["-hide_banner", "-loglevel", "error", "-nostdin", "-y"];
    let out = Command::new("ffmpeg")
        .args(quiet)
        .args(["-f", "s16le", "-ar", "48000", "-ac", "2", "-i"])
        .arg(&input)
        .args(["-c:a", "libopus", "-b:a", "96k"])
        .args(encode_args)
        .arg(&ogg)
        .output()
        .expect("run ffmpeg (apt-get install ffmpeg)");
    assert!(out.status.success(), "ffmpeg encode: {out:?}");
    let reference = dir.file("reference.raw");
    let out = Command::new("ffmpeg")
        .args(quiet)
        .args(["-c:a", "libopus", "-i"])
        .arg(&ogg)
        .args(["-f", "s16le"])
        .arg(&reference)
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg decode: {out:?}");
    let expected = read_s16le(&reference);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let receiver = start_receiver(
        &dir,
        INTEROP_LATENCY_MS,
        48_000,
        2,
        &["--rtp-format", "97=OPUS/48000/2", "--listen", &listen],
    );
    let mut relay = relay::Relay::start(listen.parse().expect("addr"), impairment);
    let out = Command::new("ffmpeg")
        .args(quiet)
        .arg("-re")
        .arg("-i")
        .arg(&ogg)
        .args(["-c:a", "copy", "-f", "rtp"])
        .arg(format!("rtp://{}", relay.addr))
        .stdout(Stdio::null())
        .output()
        .expect("run ffmpeg");
    assert!(out.status.success(), "ffmpeg: {out:?}");
    std::thread::sleep(Duration::from_millis(400));
    relay.stop();
    let counts = relay.counts();
    let (log, recording, stalled) = receiver.stop();
    (
        Played {
            log,
            recording,
            expected,
            stalled,
        },
        counts,
    )
}

#[test]
fn ffmpeg_opus_stereo_plays_as_libopus_decodes_it() {
    let sent = noise(14, 2, 48_000 * 3, 12_000);
    judged("ff-opus", 2, || {
        let (played, counts) =
            play_opus_from_ffmpeg("ff-opus", &sent, &[], relay::Impairment::default());
        assert_eq!(counts.lost(), 0);
        assert_eq!(final_stat(&played.log, "fec"), 0, "{}", played.log);
        played
    });
}

/// The SNR (dB) of `recording` against `expected` over their aligned
/// overlap, and the frames compared.
fn snr_db(recording: &[i16], expected: &[i16], channels: u16) -> (f64, usize) {
    let al = align(recording, expected, channels, 0)
        .or_else(|| align(recording, expected, channels, 4000))
        .expect("the decode is not in the recording");
    let cmp = compare(recording, expected, channels, al, i32::MAX);
    let (mut sig, mut err) = (0.0, 0.0);
    let ch = usize::from(channels);
    let from_rec = al.recording_frame * ch;
    let from_exp = al.sent_frame * ch;
    let n = cmp.frames * ch;
    for i in 0..n {
        let (Some(&r), Some(&e)) = (recording.get(from_rec + i), expected.get(from_exp + i)) else {
            break;
        };
        sig += f64::from(e).powi(2);
        err += (f64::from(r) - f64::from(e)).powi(2);
    }
    (10.0 * (sig / err.max(1.0)).log10(), cmp.frames)
}

/// 5 % of ffmpeg's Opus packets lost on the way, FEC on (libopus's
/// `-fec 1 -packet_loss 10`, voice at 32 kbit/s where SILK carries it):
/// lost packets whose successor arrived and carries FEC are rebuilt from
/// it ("fec" in the statistics line), and the playback stays close to the
/// clean decode.
#[test]
fn ffmpeg_opus_with_fec_through_loss_recovers_lost_packets() {
    // A voice-like buzz, where SILK (and so FEC) is used.
    let sent: Vec<i16> = (0..48_000 * 4)
        .flat_map(|n| {
            let t = n as f64 / 48_000.0;
            let v: f64 = (1..=8)
                .map(|k| (2.0 * std::f64::consts::PI * 180.0 * k as f64 * t).sin() / k as f64)
                .sum();
            let v =
                (6000.0 * v * (0.7 + 0.3 * (2.0 * std::f64::consts::PI * 2.0 * t).sin())) as i16;
            [v, v]
        })
        .collect();
    once_more_if_stalled("ff-opus-fec", |stalled| {
        let impairment = relay::Impairment {
            seed: 7,
            loss: 0.05,
            ..relay::Impairment::default()
        };
        let (played, counts) = play_opus_from_ffmpeg(
            "ff-opus-fec",
            &sent,
            &[
                "-b:a",
                "32k",
                "-application",
                "voip",
                "-fec",
                "1",
                "-packet_loss",
                "10",
            ],
            impairment,
        );
        stalled.set(common::stood_still(played.stalled));
        let log = &played.log;
        let fec = final_stat(log, "fec");
        let (snr, frames) = snr_db(&played.recording, &played.expected, 2);
        println!(
            "Opus with FEC: {} of {} packets lost on the way, {fec} rebuilt from FEC; \
             {snr:.1} dB SNR against the clean decode over {frames} frames",
            counts.lost(),
            counts.received
        );
        assert!(counts.lost() >= 4, "{counts:?}");
        assert_eq!(final_stat(log, "underruns"), 0, "{log}");
        // A loss right before another loss cannot use FEC, nor one whose
        // next packet carries none: ffmpeg's libopus protects only frames
        // its voice detector finds active, 95 of this signal's 201 packets
        // (their LBRR flags, read from the same encoding to Ogg). The
        // receiver counts as FEC only what libopus rebuilt from it.
        assert!(
            fec * 3 >= counts.lost(),
            "fec {fec} of {} lost:\n{log}",
            counts.lost()
        );
        assert!(fec <= counts.lost());
        assert!(snr > 10.0, "SNR {snr:.1} dB:\n{log}");
        // Decoding, FEC and concealment allocate nothing on the realtime threads.
        assert_eq!(final_stat(log, "rt-allocs"), 0, "{log}");
    });
}

/// GStreamer's Opus: `opusenc ! rtpopuspay` (payload type 96), teed into
/// an Ogg file whose packets are the very ones sent; ffmpeg's libopus
/// decoder decodes that file for the reference, and netspeaker must play
/// exactly that. (GStreamer's `opusdec` is no reference: its right
/// channel differs from libopus's `opus_decode` of the same packets, tried.)
#[test]
fn gstreamer_opus_stereo_plays_as_libopus_decodes_it() {
    let sent = noise(23, 2, 48_000 * 3, 12_000);
    judged("gst-opus", 2, || {
        let _serial = serial();
        let dir = TestDir::new("gst-opus");
        let input = dir.file("signal.raw");
        write_s16le(&input, &sent);
        let reference = dir.file("reference.raw");
        let ogg = dir.file("sent.ogg");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let receiver = start_receiver(
            &dir,
            INTEROP_LATENCY_MS,
            48_000,
            2,
            &["--rtp-format", "96=OPUS/48000/2", "--listen", &listen],
        );
        let tail = format!(
            "opusenc bitrate=96000 ! tee name=t ! queue ! rtpopuspay ! \
             udpsink host=127.0.0.1 port={port} \
             t. ! queue ! oggmux ! filesink location={}",
            ogg.display()
        );
        let mut args = gst_pipeline(&input, 48_000, 2, "", port);
        // gst_pipeline ends in its own udpsink: replace it with the tee.
        args.truncate(args.len() - 4);
        args.extend(tail.split_whitespace().map(String::from));
        let out = Command::new("gst-launch-1.0")
            .args(&args)
            .stdout(Stdio::null())
            .output()
            .expect("run gst-launch-1.0");
        assert!(out.status.success(), "gst-launch-1.0: {out:?}");
        std::thread::sleep(Duration::from_millis(400));
        let (log, recording, stalled) = receiver.stop();
        let ogg_decoded = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
            .args(["-c:a", "libopus", "-i"])
            .arg(&ogg)
            .args(["-f", "s16le"])
            .arg(&reference)
            .output()
            .expect("run ffmpeg");
        assert!(ogg_decoded.status.success(), "ffmpeg: {ogg_decoded:?}");
        Played {
            log,
            recording,
            expected: read_s16le(&reference),
            stalled,
        }
    });
}
