//! End to end, issue 3: a test sender streams a known signal over loopback
//! to the real `netspeaker`, which plays it into a real ALSA device with no
//! sound card (TESTING.md): `paced` (file plugin over a private PulseAudio
//! null sink: real time, records exactly what was played) in read/write
//! access, `jplug` (JACK dummy backend, paced) in mmap access. The
//! receiver runs on its defaults (issue #11): adaptive delay, clock
//! following, the device opened once at its own format (48 kHz stereo) and
//! every stream converted to it. A 48 kHz stream on one clock passes
//! through: most of its last seconds are the sent samples, bit for bit. An
//! 8 kHz stream cannot be: it is a sum of tones, and each 20 ms of the
//! recording is fitted with them (any phase and level, and any playback
//! rate within ±5000 ppm: the ideal signal after any delay, an exact
//! conversion and the resampling that holds the delay); what is left must
//! be no more than what the 8 kHz stream itself leaves (G.711's noise),
//! within 1 dB, and the levels must hold within 0.5 dB
//! (`common::compare_tones`).

mod common;

use common::receiver::{free_port, send_raw, send_rtp_reported, RtpStream, RunningReceiver, Stats};
use common::{
    compare_tones, exact_seconds, exact_share_of_tail, f32_to_s16, first_channel_s16, multitone,
    noise, once_more_if_stalled, read_f32le, read_s16le, sender_held_up, stood_still,
    stood_still_or_held_up, to_f32, AlsaConfig, GrowthWatch, JackServer, PulseServer, TestDir,
};
use netspeaker::audio::format::Encoding;
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn dest(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The paced tests run one at a time: each has its own sound server, and
/// several real-time servers and receivers at once on a 2-core machine
/// measure the machine, not the receiver.
static PACED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn paced_slot() -> std::sync::MutexGuard<'static, ()> {
    PACED.lock().unwrap_or_else(|e| e.into_inner())
}

/// As `receiver_on_defaults`, with a 10 ms period and a 40 ms device
/// buffer: the PulseAudio ALSA plugin is itself the client of a
/// non-realtime server.
fn receiver_on_paced(
    dir: &TestDir,
    port: u16,
    extra: &[&str],
) -> (PulseServer, AlsaConfig, RunningReceiver) {
    let mut args = vec!["--period-ms", "10", "--buffer-periods", "4"];
    args.extend_from_slice(extra);
    receiver_on_defaults(dir, port, &args)
}

/// Starts a private PulseAudio server and the receiver on `paced` with its
/// defaults: `--device paced --listen ADDR`, no periodic statistics, and
/// `extra` (what the stream needs: a payload type, raw mode).
fn receiver_on_defaults(
    dir: &TestDir,
    port: u16,
    extra: &[&str],
) -> (PulseServer, AlsaConfig, RunningReceiver) {
    let pulse = PulseServer::start(&dir.path);
    let alsa = AlsaConfig::write(&dir.path);
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--device",
        "paced",
        "--listen",
        &listen,
        "--stats-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    let mut env = alsa.env();
    env.extend(pulse.env());
    let rx = RunningReceiver::start(&args, &env, dir.file("receiver.log"));
    (pulse, alsa, rx)
}

/// The 8 kHz streams: three tones, multiples of 50 Hz (whole cycles in a
/// 20 ms block), each at 5000 (peak 15000), long enough that the clock
/// estimate is trusted and the start's delay correction is over before
/// the judged last 3 s (the first seconds' timing is tests/defaults.rs's).
const TONES: [f64; 3] = [250.0, 650.0, 1000.0];
const TONE_AMPLITUDE: i16 = 5000;
const TONE_SECONDS: usize = 15;
const JUDGED_SECONDS: usize = 3;

/// The recording (48 kHz stereo s16) against `reference` (the stream as
/// the device must have been given it, at `reference_rate`): see the
/// module's documentation.
fn assert_tones_kept(recording: &[i16], reference: &[i16], reference_rate: u32, log: &str) {
    let c = compare_tones(
        &first_channel_s16(recording, 2),
        48_000,
        &to_f32(reference),
        reference_rate,
        &TONES,
        TONE_AMPLITUDE,
        JUDGED_SECONDS,
    );
    eprintln!("{c:?}");
    assert_eq!(
        c.blocks,
        JUDGED_SECONDS * 50,
        "less than {JUDGED_SECONDS} s of the tones were played\n{log}"
    );
    // No worse than the stream itself (G.711: ~38 dB) by more than 1 dB;
    // a 16-bit stream leaves ~88 dB, which no 16-bit conversion keeps:
    // there the bar is the conversion test's 50 dB (below).
    let bar = (c.reference_snr_db - 1.0).min(50.0);
    assert!(
        c.played_snr_db >= bar,
        "played {:.1} dB against the tones (bar {bar:.1} dB), the stream itself {:.1} dB\n{log}",
        c.played_snr_db,
        c.reference_snr_db
    );
    assert!(
        c.level_error_db <= 0.5,
        "a tone's level changed by {:.2} dB\n{log}",
        c.level_error_db
    );
}

fn l16_stream(rate: u32, channels: u16) -> RtpStream {
    RtpStream {
        payload_type: 96,
        ssrc: 0x1234_5678,
        first_seq: 65_000,                  // wraps during the stream
        first_timestamp: u32::MAX - 20_000, // wraps too
        rate,
        channels,
        ptime_ms: 20,
        encoding: Encoding::L16,
    }
}

#[test]
fn rtp_l16_rw_paced_bit_exact_twenty_seconds_no_underrun() {
    let _slot = paced_slot();
    once_more_if_stalled("e2e-l16-rw", |stalled| {
        let dir = TestDir::new("e2e-l16-rw");
        let port = free_port();
        let (_pulse, alsa, mut rx) = receiver_on_paced(
            &dir,
            port,
            // The defaults, as users run it: adaptive delay, clock
            // following on. Sender and sound server share this machine's
            // clock, so the samples must pass through untouched.
            &["--rtp-format", "96=L16/48000/2", "--stats-interval", "1"],
        );
        let signal = noise(7, 2, 48_000 * 20, 20_000);
        let watch = GrowthWatch::file(&alsa.paced);
        let t0 = Instant::now();
        let report = send_rtp_reported(dest(port), &l16_stream(48_000, 2), &signal);
        let sent = report.sent;
        stalled.set(stood_still_or_held_up(
            watch.stall("e2e-l16-rw", t0, Instant::now()),
            report.max_late,
        ));
        assert_eq!(sent, 1000);
        std::thread::sleep(Duration::from_millis(300));
        let (code, took, stats) = rx.stop();
        assert_eq!(code, Some(0), "exit status");
        assert!(took < Duration::from_millis(200), "SIGTERM took {took:?}");
        let log = rx.log_text();
        assert_eq!(stats.get("underruns"), 0.0, "{log}");
        assert_eq!(stats.get("packets"), 1000.0, "{log}");
        assert_eq!(stats.get("lost"), 0.0, "{log}");
        assert_eq!(stats.get("rt-allocs"), 0.0, "{log}");
        // One clock: the estimate finds it, and the samples pass through
        // untouched once the start's delay correction is over.
        let drift = stats.get("drift");
        assert!(
            drift.abs() < 20.0,
            "drift estimate {drift} ppm on one clock\n{log}"
        );
        assert!(
            log.contains("bit-exact"),
            "the statistics line never said the samples pass through\n{log}"
        );
        let recording = read_s16le(&alsa.paced);
        // Once the clocks are known to agree the samples pass untouched;
        // a resampled correction of a few seconds may still come when the
        // adaptive target moves, so most of the seconds, not all, are
        // exact. Fewer would mean the receiver resamples a same-clock
        // stream (before clock following had a dead band: none). The
        // stream is 20 s: a start a packet (10 ms) above a target that
        // then came down 4 ms is undone at the 1000 ppm the delay may move
        // (tests/defaults.rs's burst timing), ≈ 11 s, seen in CI.
        let share = exact_share_of_tail(&recording, &signal, 2, 48_000, 6, &log);
        eprintln!(
            "e2e-l16-rw: {:.0} % of the last 6 s bit-exact",
            share * 100.0
        );
        assert!(
            share >= 0.66,
            "only {:.0} % of the last 6 s bit-exact\n{log}",
            share * 100.0
        );
    });
}

#[test]
fn rtp_l16_mmap_on_jack_bit_exact() {
    let _slot = paced_slot();
    once_more_if_stalled("e2e-l16-mmap", |stalled| {
        let dir = TestDir::new("e2e-l16-mmap");
        let jack = JackServer::start(&format!("ns-e2e-{}", std::process::id()), 48_000, 256);
        let alsa = AlsaConfig::write(&dir.path);
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut env = alsa.env();
        env.extend(jack.env());
        let mut rx = RunningReceiver::start(
            &[
                "--device",
                "jplug",
                "--access",
                "mmap",
                "--listen",
                &listen,
                "--rtp-format",
                "96=L16/48000/2",
                "--stats-interval",
                "0",
            ],
            &env,
            dir.file("receiver.log"),
        );
        assert!(rx.log_text().contains("open: mmap "), "{}", rx.log_text());
        // 20 s: the clock estimate is trusted after ~6 s; from then on a
        // same-rate stream on one clock passes through untouched. It opens
        // with 1 s of silence, where what the start holds above the
        // target (the source lock's probation: a packet) is skipped; on
        // sound from the first frame that excess is glided back at 1 ms/s
        // (resampled, not exact) for 10-15 s, and CI once saw no exact
        // second in 19 (tests/defaults.rs times that glide).
        let mut signal = vec![0i16; 48_000 * 2];
        signal.extend(noise(11, 2, 48_000 * 19, 20_000));
        let watch = GrowthWatch::file(&alsa.jfile);
        let t0 = Instant::now();
        let report = send_rtp_reported(dest(port), &l16_stream(48_000, 2), &signal);
        stalled.set(stood_still_or_held_up(
            watch.stall("e2e-l16-mmap", t0, Instant::now()),
            report.max_late,
        ));
        std::thread::sleep(Duration::from_millis(300));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        eprintln!(
            "e2e-l16-mmap: drift {} ppm (±{}), underruns {}",
            stats.get("drift"),
            stats.get("drift-uncertainty"),
            stats.get("underruns")
        );
        assert_eq!(stats.get("underruns"), 0.0, "{log}");
        // jfile records the float frames plug converted to; exact for 16 bits.
        let recording = f32_to_s16(&read_f32le(&alsa.jfile));
        let (exact, judged) = exact_seconds(&recording, &signal, 2, 48_000, None, &log);
        eprintln!("e2e-l16-mmap: {exact} of {judged} s bit-exact");
        // The subject here is the mmap path: the frames it writes into the
        // ring are the stream's, untouched, whenever the resampler passes
        // through. JACK's dummy backend keeps time with sleeps and wanders
        // by milliseconds under load, so the delay is corrected (resampled)
        // now and then, in any second of the stream (judged over the last
        // 6 s of 15, a third exact failed 1 of 4 runs at load 0.6): three
        // exact seconds anywhere, as tests/e2e's rw case on the paced
        // PulseAudio device asks two thirds of its tail.
        assert!(
            exact >= 3,
            "only {exact} of the {judged} s played bit-exact\n{log}"
        );
    });
}

fn g711_round_trip(encoding: Encoding, samples: &[i16]) -> Vec<i16> {
    let mut bytes = vec![0u8; samples.len()];
    netspeaker::audio::codec::encode(encoding, samples, &mut bytes);
    let mut out = vec![0i16; samples.len()];
    netspeaker::audio::codec::decode(encoding, &bytes, &mut out);
    out
}

fn g711_case(encoding: Encoding, payload_type: u8, name: &str) {
    let _slot = paced_slot();
    once_more_if_stalled(name, |stalled| {
        let dir = TestDir::new(name);
        let port = free_port();
        let (_pulse, alsa, mut rx) = receiver_on_defaults(&dir, port, &[]);
        let signal = multitone(8000, 8000 * TONE_SECONDS, &TONES, TONE_AMPLITUDE);
        let stream = RtpStream {
            payload_type,
            encoding,
            rate: 8000,
            channels: 1,
            ..l16_stream(8000, 1)
        };
        let watch = GrowthWatch::file(&alsa.paced);
        let t0 = Instant::now();
        let report = send_rtp_reported(dest(port), &stream, &signal);
        stalled.set(stood_still_or_held_up(
            watch.stall(name, t0, Instant::now()),
            report.max_late,
        ));
        std::thread::sleep(Duration::from_millis(300));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        assert_eq!(stats.get("underruns"), 0.0, "{log}");
        assert!(log.contains("S16_LE 48000 Hz 2 ch"), "{log}");
        assert_tones_kept(
            &read_s16le(&alsa.paced),
            &g711_round_trip(encoding, &signal),
            8000,
            &log,
        );
    });
}

#[test]
fn rtp_pcmu_plays_as_its_g711_round_trip() {
    g711_case(Encoding::Pcmu, 0, "e2e-pcmu");
}

#[test]
fn rtp_pcma_plays_as_its_g711_round_trip() {
    g711_case(Encoding::Pcma, 8, "e2e-pcma");
}

#[test]
fn raw_s16le_at_real_time_plays_clean_and_malformed_input_counted() {
    let _slot = paced_slot();
    once_more_if_stalled("e2e-raw", |stalled| {
        let dir = TestDir::new("e2e-raw");
        let port = free_port();
        let (_pulse, alsa, mut rx) = receiver_on_defaults(&dir, port, &["--raw", "s16le:8000:1"]);
        let signal = multitone(8000, 8000 * TONE_SECONDS, &TONES, TONE_AMPLITUDE);
        let watch = GrowthWatch::file(&alsa.paced);
        let t0 = Instant::now();
        // Garbage from another source while the stream plays: odd sizes are
        // not whole frames and must be dropped and counted, the stream intact.
        let junk = std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..200u32 {
                let len = 1 + 2 * (i as usize % 50);
                sock.send_to(&vec![0x55; len], dest(port)).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let sent = send_raw(dest(port), &signal, 320, Duration::from_millis(20));
        junk.join().unwrap();
        stalled.set(stood_still(watch.stall("e2e-raw", t0, Instant::now())));
        std::thread::sleep(Duration::from_millis(300));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        assert_eq!(stats.get("malformed"), 200.0, "{log}");
        assert_eq!(stats.get("packets"), sent as f64, "{log}");
        assert!(
            log.contains("not a whole number of") || log.contains("whole"),
            "malformed input is logged\n{log}"
        );
        assert!(
            log.matches("from 127.0.0.1").count() < 40,
            "bad-input lines are rate-limited\n{log}"
        );
        assert_tones_kept(&read_s16le(&alsa.paced), &signal, 8000, &log);
    });
}

#[test]
fn device_lost_and_back_without_restarting_the_receiver() {
    let _slot = paced_slot();
    once_more_if_stalled("e2e-device-loss", |stalled| {
        let dir = TestDir::new("e2e-device-loss");
        let port = free_port();
        let (mut pulse, alsa, mut rx) = receiver_on_defaults(
            &dir,
            port,
            &["--rtp-format", "96=L16/48000/2", "--stats-interval", "1"],
        );
        // 30 s: what was held while the server was away (the loss, then its
        // new stream's start: up to the 3 s the jitter buffer keeps) is
        // caught up at up to 20 % faster, some 15 s, before the judged last
        // second. With 22 s a CI run still stretched in that second (2.9 s
        // stretched, 20 ms over target at the stop: a splice at 3.4 dB); with
        // 26 s another (3.1 s stretched, a splice at 3.0 dB; quiet runs here
        // stretch 2.5-2.7 s). The per-second lines show where it ends.
        let signal: Vec<i16> = multitone(48_000, 48_000 * 30, &TONES, TONE_AMPLITUDE)
            .into_iter()
            .flat_map(|v| [v, v])
            .collect();
        let sender = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                send_rtp_reported(dest(port), &l16_stream(48_000, 2), &signal)
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        pulse.kill();
        assert!(
            rx.wait_for_log("reopening", Duration::from_secs(3)),
            "device loss not noticed\n{}",
            rx.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
        pulse.restart();
        let opened_before = rx.log_text().matches("open:").count();
        let mut reopened = false;
        for _ in 0..100 {
            if rx.log_text().matches("open:").count() > opened_before {
                reopened = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            reopened,
            "device not reopened within 5 s of the server's return\n{}",
            rx.log_text()
        );
        let report = sender.join().unwrap();
        // The sound server's standstill is this test's subject; the host
        // holding up the test's own sender is what tells of a stall.
        eprintln!(
            "e2e-device-loss: the sender's latest packet left {:?} late",
            report.max_late
        );
        stalled.set(sender_held_up(report.max_late));
        std::thread::sleep(Duration::from_millis(300));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0), "the receiver kept running");
        let log = rx.log_text();
        // How much of the stream was still held when the receiver stopped,
        // 300 ms after the stream's end: what the loss left as extra delay.
        eprintln!(
            "e2e-device-loss: at the stop, buffer {} ms over a target of {} ms, \
             underruns {}, stretched {} ms",
            stats.get("buffer"),
            stats.get("target"),
            stats.get("underruns"),
            stats.get("stretched")
        );
        assert!(
            stats.get("packets") + stats.get("dropped") >= 1495.0,
            "packets kept being received and counted\n{log}"
        );
        // Issue #10: the realtime threads allocated nothing, through the loss
        // of the device and its reopening.
        assert_eq!(stats.get("rt-allocs"), 0.0, "{log}");
        // The file plugin starts a new recording when the device is reopened.
        // Its last second before the end of the stream must be the signal:
        // playback resumed, and nothing is lost, repeated or clicks in it.
        // Each 20 ms fitted with the tones, at any playback rate within
        // ±5000 ppm (a resampled correction of the delay still under way after
        // the catch-up is inaudible; against fixed frequencies 1000 ppm left
        // 35-40 dB): a lost or repeated piece or a click leaves 0-15 dB, clean
        // playing ~85 dB. Bar: 30 dB.
        let recording = first_channel_s16(&read_s16le(&alsa.paced), 2);
        let fits = common::tail_fits(&recording, 48_000, &TONES, TONE_AMPLITUDE, 1);
        let snr: Vec<f64> = fits.iter().map(|f| f.snr_db).collect();
        let worst = snr.iter().copied().fold(f64::INFINITY, f64::min);
        eprintln!(
            "e2e-device-loss: last second after the restart: median {:.1} dB, worst {worst:.1} dB",
            common::median(&snr)
        );
        assert_eq!(
            fits.len(),
            50,
            "less than a second played after the restart\n{log}"
        );
        assert!(
            worst >= 30.0,
            "the last second played after the restart is not the clean signal: \
             worst 20 ms at {worst:.1} dB\n{log}"
        );
    });
}

/// The device is opened once, at its own format, and streams of every
/// format are converted to it: no reopen when a stream of another rate or
/// channel count starts (the old behaviour, reopening the device at the
/// stream's format, cost a PulseAudio stream start of a second or more at
/// every change). Three senders one after the other: 8 kHz mono PCMU,
/// 44.1 kHz mono L16 (static payload type 11), 48 kHz stereo L16; each a
/// tone of its own, each heard.
#[test]
fn one_device_format_for_streams_of_any_format() {
    let _slot = paced_slot();
    once_more_if_stalled("e2e-one-format", |stalled| {
        let dir = TestDir::new("e2e-one-format");
        let port = free_port();
        let (_pulse, alsa, mut rx) =
            receiver_on_defaults(&dir, port, &["--rtp-format", "96=L16/48000/2"]);
        let streams = [
            (
                RtpStream {
                    payload_type: 0,
                    encoding: Encoding::Pcmu,
                    ssrc: 0x0000_0801,
                    ..l16_stream(8000, 1)
                },
                500.0,
            ),
            (
                RtpStream {
                    payload_type: 11,
                    ssrc: 0x0004_4101,
                    first_seq: 7,
                    first_timestamp: 1234,
                    ..l16_stream(44_100, 1)
                },
                1000.0,
            ),
            (
                RtpStream {
                    ssrc: 0x0004_8002,
                    first_seq: 30_000,
                    first_timestamp: 99,
                    ..l16_stream(48_000, 2)
                },
                1500.0,
            ),
        ];
        let mut max_late = Duration::ZERO;
        for (stream, freq) in &streams {
            let tone = common::sine(
                stream.rate,
                stream.channels,
                *freq,
                stream.rate as usize * 2,
                10_000,
            );
            max_late = max_late.max(send_rtp_reported(dest(port), stream, &tone).max_late);
            std::thread::sleep(Duration::from_millis(200));
        }
        // The sound server stands still at its start (and after an
        // underrun, which is judged): the host holding up the test's own
        // sender is what tells of a stall.
        eprintln!("e2e-one-format: the sender's latest packet left {max_late:?} late");
        stalled.set(sender_held_up(max_late));
        std::thread::sleep(Duration::from_millis(300));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        assert_eq!(
            log.matches(" open: ").count(),
            1,
            "the device opened once\n{log}"
        );
        assert!(log.contains("S16_LE 48000 Hz 2 ch"), "{log}");
        assert!(!log.contains("reopening"), "the device was reopened\n{log}");
        assert_eq!(log.matches("new sender").count(), 2, "{log}");
        assert_eq!(stats.get("underruns"), 0.0, "{log}");
        // Each stream heard: 100 ms blocks at its tone's level (RMS within
        // 3 dB) and pitch (zero crossings within 3 %: the tones are 50 %
        // apart), at least 1.5 s of its 2 s. Not the tone's purity: the start
        // of a stream is played up to 0.5 % fast (tests/defaults.rs).
        let recording = first_channel_s16(&read_s16le(&alsa.paced), 2);
        let rms = 10_000.0 / 32_768.0 / std::f64::consts::SQRT_2;
        for (stream, freq) in &streams {
            let blocks = recording
                .chunks_exact(4800)
                .filter(|b| {
                    let r = (b.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 4800.0).sqrt();
                    let crossings = b
                        .windows(2)
                        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
                        .count();
                    let pitch = crossings as f64 / 2.0 / 0.1;
                    (r / rms - 1.0).abs() < 0.41 && (pitch / freq - 1.0).abs() < 0.03
                })
                .count();
            eprintln!(
                "e2e-one-format: {freq} Hz ({} Hz, {} ch): {} ms heard",
                stream.rate,
                stream.channels,
                blocks * 100
            );
            assert!(
                blocks >= 15,
                "the {} Hz {}-channel stream's tone was heard for {} ms of 2000\n{log}",
                stream.rate,
                stream.channels,
                blocks * 100
            );
        }
    });
}

#[test]
fn signals_stats_now_and_reopen() {
    let _slot = paced_slot();
    let dir = TestDir::new("e2e-signals");
    let port = free_port();
    let (_pulse, _alsa, mut rx) = receiver_on_defaults(&dir, port, &[]);
    rx.signal(Signal::SIGUSR1);
    assert!(
        rx.wait_for_log("packets 0 ", Duration::from_secs(2)),
        "SIGUSR1 prints the statistics line\n{}",
        rx.log_text()
    );
    rx.signal(Signal::SIGHUP);
    let mut reopened = false;
    for _ in 0..100 {
        if rx.log_text().matches("open:").count() >= 2 {
            reopened = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reopened, "SIGHUP reopens the device\n{}", rx.log_text());
    let (code, took, stats) = rx.stop();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_millis(200), "SIGTERM took {took:?}");
    assert_eq!(stats.get("packets"), 0.0);
}

#[test]
fn options_help_and_bad_values() {
    let exe = env!("CARGO_BIN_EXE_netspeaker");
    let help = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--listen",
        "--group",
        "--interface",
        "--allow",
        "--rtp-format",
        "--raw",
        "--latency",
        "--latency-ms",
        "--device",
        "--access",
        "--period-ms",
        "--buffer-periods",
        "--rt-priority",
        "--stats-interval",
        "--syslog",
        "--verbose",
        "--quiet",
        "--sap",
    ] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
    assert!(text.contains("[default: 0.0.0.0:5004"), "defaults shown");
    for bad in [
        vec!["--listen", "nowhere"],
        vec!["--raw", "s16le:8000"],
        vec!["--rtp-format", "95=L16/48000/2"],
        vec!["--access", "dma"],
        vec!["--period-ms", "0"],
        vec!["--group", "10.0.0.1"],
        vec!["--allow", "10.0.0.0/99"],
        vec!["--frobnicate"],
        vec!["--latency"],
        vec!["--sap", "hall", "--group", "239.1.1.1"],
        vec!["--sap", "--raw", "s16le:8000:1"],
        vec!["--sap=hall", "--listen", "0.0.0.0:5004"],
        vec!["--sync-ms", "100", "--clock-follow", "off"],
        vec!["--sync-trust-clock"],
        vec!["--sync-ms", "100", "--raw", "s16le:8000:1"],
    ] {
        let out = std::process::Command::new(exe).args(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one clear line for {bad:?}: {err}");
        assert!(err.starts_with("netspeaker: "), "{err}");
    }
}

#[test]
fn stats_line_parses() {
    let s = Stats::parse("info netspeaker: stopping: packets 10 lost 1 late 0 reordered 2 duplicates 0 dropped 3 (overflow 1 filtered 1 malformed 1) concealed 20 ms stretched 0 ms underruns 0 jitter 0.4 ms buffer 12.0/10.0 ms alsa 9.5 ms delay 21.5 ms drift +3.2 ppm").unwrap();
    assert_eq!(s.get("packets"), 10.0);
    assert_eq!(s.get("malformed"), 1.0);
    assert_eq!(s.get("buffer"), 12.0);
    assert_eq!(s.get("target"), 10.0);
    assert_eq!(s.get("drift"), 3.2);
}

#[test]
fn without_realtime_privilege_it_says_so_once_and_plays_on() {
    let dir = TestDir::new("e2e-noprivilege");
    let alsa = AlsaConfig::write(&dir.path);
    // The test dir must be reachable for the unprivileged user.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&dir.path)
        .status();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = dir.file("receiver.log");
    let file = std::fs::File::create(&log).unwrap();
    // As the user nobody: SCHED_FIFO and mlockall are refused.
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_netspeaker"))
        .args([
            "--device",
            "capture",
            "--listen",
            &listen,
            "--raw",
            "s16le:8000:1",
        ])
        .envs(alsa.env())
        .stderr(file)
        .spawn()
        .expect("setpriv (util-linux)");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut seen = false;
    for _ in 0..100 {
        if text().contains("open:") {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..10 {
        sock.send_to(&[0u8; 320], dest(port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let out = text();
    assert!(seen, "device not opened\n{out}");
    assert_eq!(status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("cannot use realtime priority").count(),
        1,
        "{out}"
    );
    assert_eq!(out.matches("cannot lock memory").count(), 1, "{out}");
    assert!(out.contains("stream started"), "it plays on\n{out}");
}

/// A device that refuses the stream's format (TESTING.md: the bare JACK
/// device takes only FLOAT_LE at the server's rate, two channels, like a
/// USB DAC or HDMI output that only does 48 kHz): the receiver converts in
/// the playout thread. An 8 kHz mono 1 kHz tone must come out of the
/// device as a clean 1 kHz tone at 48 kHz on both channels.
#[test]
fn device_that_refuses_the_format_gets_it_converted() {
    let _slot = paced_slot();
    let dir = TestDir::new("e2e-convert");
    let jack = JackServer::start(&format!("ns-e2e-conv-{}", std::process::id()), 48_000, 256);
    let alsa = AlsaConfig::write(&dir.path);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = alsa.env();
    env.extend(jack.env());
    let mut rx = RunningReceiver::start(
        &[
            "--device",
            "jfile",
            "--listen",
            &listen,
            "--raw",
            "s16le:8000:1",
            // The defaults: the conversion as users get it (clock
            // following on, adaptive delay).
            "--stats-interval",
            "1",
        ],
        &env,
        dir.file("receiver.log"),
    );
    let log = rx.log_text();
    assert!(
        log.contains("FLOAT_LE 48000 Hz 2 ch"),
        "the device negotiated its own format\n{log}"
    );
    // 14 s, judged on the last second. The stream opens with 1 s of
    // silence, as a paging call's does: what the start holds above the
    // target (up to a packet and the source lock's probation) is skipped
    // in it, so the ratio is the exact one from the start. A start on
    // sound is glided back at 1 ms/s instead, up to 30 s for 20 ms
    // packets (tests/defaults.rs times that glide).
    let mut tone = vec![0i16; 8000];
    tone.extend(common::sine(8000, 1, 1000.0, 8000 * 13, 12_000));
    send_raw(dest(port), &tone, 320, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, stats) = rx.stop();
    assert_eq!(code, Some(0));
    let notes = jack.missed_cycle_notes();
    eprintln!("convert: jackd noted {notes:?}");
    let log = rx.log_text();
    assert!(stats.get("packets") >= 690.0, "{log}");
    // Converting at the exact ratio, not resampling for good. A cycle the
    // JACK server or a client misses (jackd notes it; on this 2-core
    // machine other tests' realtime threads can hold up the JACK plugin's
    // thread in the receiver) moves the device's position by a period,
    // 5.3 ms, beyond the 3 ms at which the delay is corrected: it is
    // resampled back at 1 ms/s, 5-6 s, then the ratio is the exact one
    // again. So: every second converts, but for at most one correction of
    // up to 7 s per miss jackd noted. (CI once: converted 10 s, then
    // resampled the last 4, with nothing starved or stretched; here, a
    // client miss gave 5 s resampled, and quiet runs 14 of 14 converted.)
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" packets ") && !l.contains("stopping"))
        .collect();
    let resampled_runs: Vec<usize> = lines
        .split(|l| !l.contains(" resampled "))
        .map(<[&str]>::len)
        .filter(|&n| n > 0)
        .collect();
    eprintln!(
        "convert: {} statistics lines, resampled runs {resampled_runs:?} s, jackd noted {} miss(es)",
        lines.len(),
        notes.len()
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" converted ") || l.contains(" resampled "))
            && resampled_runs.len() <= notes.len()
            && resampled_runs.iter().all(|&n| n <= 7),
        "not converting at the exact ratio: resampled for {resampled_runs:?} s with {} miss(es) \
         noted by jackd {notes:?}\n{log}",
        notes.len()
    );
    let recording = read_f32le(&alsa.jfile);
    let frames = recording.len() / 2;
    assert!(
        frames > 48_000 * 2,
        "too little recorded ({frames} frames)\n{log}"
    );
    // The loud stretch of the recording, left and right.
    let left: Vec<f32> = recording.chunks_exact(2).map(|f| f[0]).collect();
    let right: Vec<f32> = recording.chunks_exact(2).map(|f| f[1]).collect();
    assert_eq!(left, right, "mono is played on both channels");
    let end = left
        .iter()
        .rposition(|v| v.abs() > 0.2)
        .expect("the tone is there");
    // The last second before the stream's end (and its fade).
    let window = &left[end - 4800 - 48_000..end - 4800];
    // Frequency by zero crossings over one second: 2000 for 1 kHz.
    let crossings = window
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    assert!(
        (1990..=2010).contains(&crossings),
        "{crossings} zero crossings in 1 s: not a 1 kHz tone\n{log}"
    );
    // Level: 12000/32768 peak, kept by the conversion (±3 %).
    let peak = window.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let want = 12_000.0 / 32_768.0;
    assert!(
        (peak - want).abs() < want * 0.03,
        "peak {peak} instead of {want}\n{log}"
    );
    // Clean: in each 20 ms block the tone against a fitted ideal sine
    // leaves a small residual. The sine's frequency is fitted too, within
    // ±1 Hz: while the delay is corrected (up to 1000 ppm, after a cycle
    // the JACK server missed) the tone is 1000 ± 1 Hz, just as clean, and a
    // fixed 1000 Hz fit would count the drift of its phase as noise (39 dB
    // at a few hundred ppm, in a CI run).
    let snr_at = |block: &[f32], freq: f64| {
        let (mut sc, mut cc) = (0.0f64, 0.0f64);
        for (i, v) in block.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0;
            sc += *v as f64 * ph.sin();
            cc += *v as f64 * ph.cos();
        }
        let n = block.len() as f64;
        let (a, b) = (2.0 * sc / n, 2.0 * cc / n);
        let (mut noise, mut power) = (0.0f64, 0.0f64);
        for (i, v) in block.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0;
            let fit = a * ph.sin() + b * ph.cos();
            noise += (*v as f64 - fit).powi(2);
            power += fit * fit;
        }
        10.0 * (power / noise.max(1e-30)).log10()
    };
    let mut snrs: Vec<f64> = window
        .chunks_exact(960)
        .map(|block| {
            (-20..=20)
                .map(|k| snr_at(block, 1000.0 + f64::from(k) * 0.05))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    snrs.sort_by(f64::total_cmp);
    let snr = snrs[snrs.len() / 2];
    eprintln!("convert: median SNR of the last second {snr:.1} dB");
    assert!(snr > 50.0, "SNR {snr:.1} dB after conversion\n{log}");
}
