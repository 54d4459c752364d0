//! End to end on the defaults (issue #11): the receiver as users run it,
//! `netspeaker --device D --listen ADDR` and nothing else (a statistics
//! interval where a test reads the line mid-stream: it changes nothing in
//! the playout). The device opens once at its own preferred format (48 kHz
//! stereo here) and every stream is converted to it; clock following is
//! on; the delay is adaptive.
//!
//! The streams carry tone bursts (a 1 kHz sine from phase 0 every 0.5 s):
//! their onsets, located in the recording, give the receiver's timing to a
//! fraction of a frame, whatever conversion it did. A burst missing from
//! the recording is audio lost; a burst-to-burst spacing off by more than
//! 1 ms is audio skipped, stretched or repeated in between.
//!
//! Devices (TESTING.md): `paced` (file plugin over a private PulseAudio
//! null sink, which takes a second or more to start a stream: the slow-
//! opening device), `jplug` (plug over a file plugin over JACK's dummy
//! backend at 48 kHz: the stand-in for a 48 kHz-only DAC behind
//! `plughw`).

mod common;

use common::receiver::{
    free_port, send_rtp_reported, send_rtp_timed, RtpStream, RunningReceiver, Stats,
};
use common::{
    burst_count, burst_onsets, first_channel_f32, first_channel_s16, once_more_if_stalled,
    read_f32le, read_s16le, stood_still, stood_still_or_held_up, tone_bursts, AlsaConfig,
    GrowthWatch, JackServer, PulseServer, TestDir,
};
use netspeaker::audio::format::Encoding;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One paced test at a time: each runs a real-time sound server, the
/// receiver and a sender; several at once on 2 cores measure the machine.
static PACED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn paced_slot() -> std::sync::MutexGuard<'static, ()> {
    PACED.lock().unwrap_or_else(|e| e.into_inner())
}

fn dest(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The device's rate on the defaults (its preferred: 48 kHz where offered).
const DEVICE_RATE: u32 = 48_000;

/// Tone bursts: 50 ms of 1 kHz every 500 ms, the first 60 ms in (a paging
/// announcement's first syllable comes that early after the stream starts).
const FIRST_MS: u32 = 60;
const EVERY_MS: u32 = 500;
const BURST_MS: u32 = 50;
const BURST_AMPLITUDE: i16 = 12_000;

/// Burst-to-burst timing bar.
const SPACING_BAR_MS: f64 = 1.0;

fn paging_bursts(rate: u32, seconds: u32) -> Vec<i16> {
    tone_bursts(
        rate,
        (rate * seconds) as usize,
        FIRST_MS,
        EVERY_MS,
        BURST_MS,
        1000.0,
        BURST_AMPLITUDE,
    )
}

fn pcmu_8k() -> RtpStream {
    RtpStream {
        payload_type: 0,
        ssrc: 0x5a6e_0001,
        first_seq: 65_400, // wraps during the stream
        first_timestamp: 0x8000_0000,
        rate: 8000,
        channels: 1,
        ptime_ms: 20,
        encoding: Encoding::Pcmu,
    }
}

/// The burst onsets of a mono recording at the device rate, with the
/// spacings in ms; the threshold is a quarter of the burst's level, the
/// quiet span before an onset 10 ms (shorter than the 450 ms between
/// bursts, far longer than a sine's dip through zero).
fn onsets_and_spacings(mono: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let threshold = f32::from(BURST_AMPLITUDE) / 32_768.0 / 4.0;
    let onsets = burst_onsets(mono, threshold, DEVICE_RATE as usize / 100);
    let spacings = onsets
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0 / f64::from(DEVICE_RATE))
        .collect();
    (onsets, spacings)
}

/// The bursts found in a recording against those sent.
struct Bursts {
    want: usize,
    onsets: Vec<f64>,
    spacings: Vec<f64>,
    /// The largest |spacing − 500 ms|, in ms.
    worst: f64,
}

/// Finds the bursts and prints the figures (before anything is judged,
/// so that every run's figures are in its output).
fn measure_bursts(mono: &[f32], stream_rate: u32, seconds: u32) -> Bursts {
    let want = burst_count(
        stream_rate,
        (stream_rate * seconds) as usize,
        FIRST_MS,
        EVERY_MS,
    );
    let (onsets, spacings) = onsets_and_spacings(mono);
    let worst = spacings
        .iter()
        .map(|s| (s - f64::from(EVERY_MS)).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "{} of {want} bursts; spacing error worst {worst:.3} ms; spacings (ms): {:?}",
        onsets.len(),
        spacings
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
    );
    Bursts {
        want,
        onsets,
        spacings,
        worst,
    }
}

/// Every burst is in the recording and every spacing is 500 ms ± 1 ms.
fn assert_bursts(b: &Bursts, log: &str) {
    assert_eq!(
        b.onsets.len(),
        b.want,
        "bursts in the recording: {} of {} (onsets at frames {:?})\n{log}",
        b.onsets.len(),
        b.want,
        b.onsets
    );
    assert!(
        b.worst <= SPACING_BAR_MS,
        "a burst-to-burst spacing is off by {:.3} ms (bar {SPACING_BAR_MS} ms): {:?}\n{log}",
        b.worst,
        b.spacings
    );
}

fn figures(stats: &Stats) -> String {
    [
        "packets",
        "lost",
        "overflow",
        "concealed",
        "stretched",
        "underruns",
        "starved",
        "buffer",
        "target",
        "delay",
        "drift",
        "drift-uncertainty",
        "bit-exact",
    ]
    .iter()
    .map(|k| format!("{k} {}", stats.get(k)))
    .collect::<Vec<_>>()
    .join(", ")
}

/// A receiver on the defaults playing into `paced` (a private PulseAudio
/// server): `--device paced --listen ADDR` and `extra`.
fn receiver_on_paced(
    dir: &TestDir,
    port: u16,
    extra: &[&str],
) -> (PulseServer, AlsaConfig, RunningReceiver) {
    let pulse = PulseServer::start(&dir.path);
    let alsa = AlsaConfig::write(&dir.path);
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--device", "paced", "--listen", &listen];
    args.extend_from_slice(extra);
    let mut env = alsa.env();
    env.extend(pulse.env());
    // Returns once the log says the device is open.
    let rx = RunningReceiver::start(&args, &env, dir.file("receiver.log"));
    (pulse, alsa, rx)
}

/// Issue #11's paging case: a 5 s PCMU announcement starts right after
/// the receiver reported its device open, on a PulseAudio sink (which
/// starts its stream a second or more after the open). Every burst, the
/// first (60 ms in) included, must be played, at its own spacing, and
/// nothing dropped as overflow.
#[test]
fn paging_pcmu_start_kept_on_a_slow_opening_device() {
    let _slot = paced_slot();
    once_more_if_stalled("dflt-paging", |stalled| {
        let dir = TestDir::new("dflt-paging");
        let port = free_port();
        let (_pulse, alsa, mut rx) = receiver_on_paced(&dir, port, &[]);
        let signal = paging_bursts(8000, 5);
        let watch = GrowthWatch::file(&alsa.paced);
        let t0 = Instant::now();
        let report = send_rtp_reported(dest(port), &pcmu_8k(), &signal);
        let sent = report.sent;
        eprintln!(
            "dflt-paging: the sender's latest packet left {:?} late",
            report.max_late
        );
        // The adaptive delay and the device buffer still hold the end.
        std::thread::sleep(Duration::from_millis(600));
        stalled.set(stood_still_or_held_up(
            watch.stall("dflt-paging", t0, Instant::now()),
            report.max_late,
        ));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        eprintln!("dflt-paging: sent {sent}; {}", figures(&stats));
        let recording = read_s16le(&alsa.paced);
        let bursts = measure_bursts(&first_channel_s16(&recording, 2), 8000, 5);
        assert_eq!(sent, 250);
        assert_eq!(stats.get("packets"), 250.0, "{log}");
        assert_eq!(stats.get("overflow"), 0.0, "dropped as overflow\n{log}");
        assert!(
            log.contains("S16_LE 48000 Hz 2 ch"),
            "the device opened at its own format\n{log}"
        );
        assert_bursts(&bursts, &log);
    });
}

/// The paging stream of the test above, sent as soon as the receiver
/// listens: the device (a PulseAudio stream, a second or more to start)
/// is still opening. The receiver holds the audio (its jitter buffer keeps
/// at least 2 s while no device is ready), so the announcement is not
/// cut: every burst, the first included, at its spacing, no overflow.
#[test]
fn paging_pcmu_sent_while_the_device_still_opens() {
    let _slot = paced_slot();
    once_more_if_stalled("dflt-paging-early", |stalled| {
        let dir = TestDir::new("dflt-paging-early");
        let port = free_port();
        let pulse = PulseServer::start(&dir.path);
        let alsa = AlsaConfig::write(&dir.path);
        let listen = format!("127.0.0.1:{port}");
        let mut env = alsa.env();
        env.extend(pulse.env());
        let mut rx = RunningReceiver::start_until(
            "listening on",
            &["--device", "paced", "--listen", &listen],
            &env,
            dir.file("receiver.log"),
        );
        let signal = paging_bursts(8000, 5);
        let watch = GrowthWatch::file(&alsa.paced);
        let sender = {
            let signal = signal.clone();
            std::thread::spawn(move || send_rtp_reported(dest(port), &pcmu_8k(), &signal))
        };
        // The standstill is judged from the device's open on: before it,
        // the recording cannot grow.
        let t0 = Instant::now();
        let open = rx.wait_for_log(" open: ", Duration::from_secs(10));
        let opened = Instant::now();
        eprintln!(
            "dflt-paging-early: device reported open {} ms after the stream's start",
            opened.duration_since(t0).as_millis()
        );
        let report = sender.join().expect("sender");
        // What was held while the device opened is still being caught up
        // when the last packet arrives (20 % faster: about 1 s of a 2 s
        // backlog is left after 5 s): let it play out.
        std::thread::sleep(Duration::from_millis(2500));
        stalled.set(stood_still_or_held_up(
            watch.stall("dflt-paging-early", opened, Instant::now()),
            report.max_late,
        ));
        assert!(open, "the device never opened\n{}", rx.log_text());
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        eprintln!(
            "dflt-paging-early: sender {:?} late at worst; sent {}; {}",
            report.max_late,
            report.sent,
            figures(&stats)
        );
        let recording = read_s16le(&alsa.paced);
        let bursts = measure_bursts(&first_channel_s16(&recording, 2), 8000, 5);
        let open_line = log.find(" open: ");
        let stream_line = log.find("stream started");
        eprintln!(
            "dflt-paging-early: the stream started {} the device was reported open",
            match (stream_line, open_line) {
                (Some(s), Some(o)) if s < o => "before",
                _ => "after",
            }
        );
        assert_eq!(stats.get("packets"), 250.0, "{log}");
        assert_eq!(stats.get("overflow"), 0.0, "dropped as overflow\n{log}");
        // Every burst, the first included; held audio is caught up by
        // playing it faster (pitch kept), at most 20 % faster and never
        // slower: each spacing 400 to 501 ms.
        assert_eq!(
            bursts.onsets.len(),
            bursts.want,
            "bursts in the recording (onsets at frames {:?})\n{log}",
            bursts.onsets
        );
        assert!(
            bursts.spacings.iter().all(|s| (399.0..=501.0).contains(s)),
            "spacings while catching up: {:?}\n{log}",
            bursts.spacings
        );
    });
}

/// Issue #11's ffmpeg case, as the issue ran it: a 5 s 1 kHz sine from
/// ffmpeg's lavfi source as PCMU in 40 ms packets (125), real time (-re),
/// into the receiver on the defaults right after its device reported open.
/// Every packet must be received and played: none dropped as overflow, no
/// loss, and 5 s of tone in the recording (less than half a packet short).
#[test]
fn ffmpeg_pcmu_every_packet_played_on_a_slow_opening_device() {
    let _slot = paced_slot();
    once_more_if_stalled("dflt-ffmpeg", |stalled| {
        let dir = TestDir::new("dflt-ffmpeg");
        let port = free_port();
        let (_pulse, alsa, mut rx) = receiver_on_paced(&dir, port, &[]);
        let watch = GrowthWatch::file(&alsa.paced);
        let t0 = Instant::now();
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
            .args(["-f", "lavfi", "-i"])
            .arg("sine=frequency=1000:sample_rate=8000:samples_per_frame=320")
            .args(["-t", "5", "-c:a", "pcm_mulaw", "-f", "rtp"])
            .arg(format!("rtp://127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .output()
            .expect("run ffmpeg (apt-get install ffmpeg)");
        assert!(out.status.success(), "ffmpeg: {out:?}");
        std::thread::sleep(Duration::from_millis(600));
        stalled.set(stood_still(watch.stall("dflt-ffmpeg", t0, Instant::now())));
        let (code, _, stats) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        eprintln!("dflt-ffmpeg: {}", figures(&stats));
        assert_eq!(stats.get("packets"), 125.0, "every packet received\n{log}");
        assert_eq!(stats.get("overflow"), 0.0, "dropped as overflow\n{log}");
        assert_eq!(stats.get("lost"), 0.0, "{log}");
        // The tone's length in the recording: first to last sample above a
        // tenth of its level (ffmpeg's sine is at 1/8 of full scale).
        let mono = first_channel_s16(&read_s16le(&alsa.paced), 2);
        let loud = |v: &f32| v.abs() > 0.0125;
        let (first, last) = (mono.iter().position(loud), mono.iter().rposition(loud));
        let (Some(first), Some(last)) = (first, last) else {
            panic!("no tone in the recording\n{log}");
        };
        let played_ms = (last - first) as f64 * 1000.0 / f64::from(DEVICE_RATE);
        eprintln!("dflt-ffmpeg: {played_ms:.1} ms of tone in the recording");
        assert!(
            played_ms >= 5000.0 - 20.0,
            "only {played_ms:.1} ms of the 5000 ms tone were played\n{log}"
        );
    });
}

/// The usual Pi set-up: a DAC that takes only 48 kHz behind `plughw`.
/// Stand-in: `jplug`, a plug over JACK's dummy backend at 48 kHz (ALSA
/// converts format and, for any other rate, the rate). An 8 kHz PCMU
/// stream on a clean link for 25 s, on the defaults: no time-stretching,
/// the jitter buffer never ran dry but at the stream's end, every burst
/// in place to 1 ms.
#[test]
fn pcmu_8k_through_a_rate_converting_plug_plays_clean() {
    let _slot = paced_slot();
    once_more_if_stalled("dflt-plug", |stalled| {
        let dir = TestDir::new("dflt-plug");
        let jack = JackServer::start(&format!("ns-dflt-{}", std::process::id()), 48_000, 256);
        let alsa = AlsaConfig::write(&dir.path);
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut env = alsa.env();
        env.extend(jack.env());
        let mut rx = RunningReceiver::start(
            &["--device", "jplug", "--listen", &listen],
            &env,
            dir.file("receiver.log"),
        );
        let seconds = 25;
        let signal = paging_bursts(8000, seconds);
        let watch = GrowthWatch::file(&alsa.jfile);
        let t0 = Instant::now();
        let report = send_rtp_reported(dest(port), &pcmu_8k(), &signal);
        let sent = report.sent;
        eprintln!(
            "dflt-plug: the sender's latest packet left {:?} late",
            report.max_late
        );
        std::thread::sleep(Duration::from_millis(600));
        stalled.set(stood_still_or_held_up(
            watch.stall("dflt-plug", t0, Instant::now()),
            report.max_late,
        ));
        let (code, _, stats) = rx.stop();
        drop(jack);
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        eprintln!("dflt-plug: sent {sent}; {}", figures(&stats));
        let recording = first_channel_f32(&read_f32le(&alsa.jfile), 2);
        let bursts = measure_bursts(&recording, 8000, seconds);
        assert!(log.contains("48000 Hz 2 ch"), "{log}");
        assert_eq!(stats.get("packets"), sent as f64, "{log}");
        assert_eq!(stats.get("overflow"), 0.0, "{log}");
        assert_eq!(stats.get("underruns"), 0.0, "{log}");
        assert_eq!(
            stats.get("stretched"),
            0.0,
            "time-stretched on a clean link\n{log}"
        );
        assert!(
            stats.get("starved") <= 1.0,
            "the jitter buffer ran dry mid-stream\n{log}"
        );
        assert_bursts(&bursts, &log);
    });
}

/// A 30 s PCMU stream from a sender whose clock runs `ppm` fast (packets
/// of 20 ms of timestamps every 20 ms / (1 + ppm·1e-6) of real time) into
/// the receiver on the defaults (paced device). The statistics line 20 s
/// after the start must show the drift within ±20 ppm of `ppm`, and the
/// delay must hold its target: no overflow, no starving until the end,
/// the buffer's excess over the target no more at the end than at the
/// start.
fn drift_case(name: &str, ppm: f64) {
    let _slot = paced_slot();
    once_more_if_stalled(name, |stalled| {
        let dir = TestDir::new(name);
        let port = free_port();
        let (_pulse, alsa, mut rx) = receiver_on_paced(&dir, port, &["--stats-interval", "1"]);
        let seconds = 30;
        let signal = paging_bursts(8000, seconds);
        let interval = Duration::from_nanos((20_000_000.0 / (1.0 + ppm * 1e-6)).round() as u64);
        let watch = GrowthWatch::file(&alsa.paced);
        let t0 = Instant::now();
        let sender = {
            let signal = signal.clone();
            std::thread::spawn(move || send_rtp_timed(dest(port), &pcmu_8k(), &signal, interval))
        };
        // One reading of the statistics line per second of the stream, and
        // more in between on demand (SIGUSR1), at times that fall on every
        // phase of the packets' 20 ms saw, for the buffer's mean level.
        let mut readings: Vec<(u32, Stats)> = Vec::new();
        let mut levels: Vec<(f64, f64)> = Vec::new();
        let pid = nix::unistd::Pid::from_raw(rx.pid() as i32);
        for s in 1..=seconds {
            let at = t0 + Duration::from_millis(u64::from(s) * 1000 + 100);
            while let Some(wait) = at.checked_duration_since(Instant::now()) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
                std::thread::sleep(wait.min(Duration::from_millis(37)));
                if let Some(st) = Stats::last_in(&rx.log_text()) {
                    levels.push((
                        t0.elapsed().as_secs_f64(),
                        st.get("buffer") - st.get("target"),
                    ));
                }
            }
            if let Some(stats) = Stats::last_in(&rx.log_text()) {
                readings.push((s, stats));
            }
        }
        let report = sender.join().expect("sender");
        let sent = report.sent;
        eprintln!(
            "{name}: the sender's latest packet left {:?} late",
            report.max_late
        );
        std::thread::sleep(Duration::from_millis(600));
        stalled.set(stood_still_or_held_up(
            watch.stall(name, t0, Instant::now()),
            report.max_late,
        ));
        let (code, _, last) = rx.stop();
        assert_eq!(code, Some(0));
        let log = rx.log_text();
        for (s, st) in &readings {
            eprintln!("{name} {s:2} s: {}", figures(st));
        }
        eprintln!("{name} end: sent {sent}; {}", figures(&last));
        let at = |s: u32| {
            readings
                .iter()
                .find(|(t, _)| *t == s)
                .map(|(_, st)| st.clone())
                .unwrap_or_else(|| panic!("no statistics line at {s} s\n{log}"))
        };
        let at20 = at(20);
        let drift = at20.get("drift");
        assert!(
            (drift - ppm).abs() <= 20.0,
            "drift {drift} ppm 20 s in, the sender's clock is {ppm:+} ppm\n{log}"
        );
        assert!(
            at20.get("drift-uncertainty").is_finite(),
            "the estimate is not known 20 s in\n{log}"
        );
        assert_eq!(last.get("packets"), sent as f64, "{log}");
        assert_eq!(last.get("overflow"), 0.0, "{log}");
        assert_eq!(last.get("underruns"), 0.0, "{log}");
        // Starving mid-stream: the count before the end (29 s) equals the
        // count 2 s in, and the stream's end adds at most one.
        let (early, late) = (at(2).get("starved"), at(seconds - 1).get("starved"));
        assert_eq!(early, late, "the jitter buffer ran dry mid-stream\n{log}");
        assert!(last.get("starved") <= early + 1.0, "{log}");
        // The delay holds its target: the buffer's excess over the target,
        // averaged over 5 s twice, stays within the correction band
        // (unfollowed, +1000 ppm adds 12 ms in those 12 s).
        let excess = |from: u32, to: u32| {
            let v: Vec<f64> = levels
                .iter()
                .filter(|(t, _)| (f64::from(from)..f64::from(to)).contains(t))
                .map(|&(_, e)| e)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        // From 12 s, once the start's own correction (the adaptive target
        // coming down from its cautious first value, taken back at 1 ms/s)
        // is over: what moves the delay now is the clock, and following
        // must hold it.
        let (start, end) = (excess(12, 17), excess(24, 29));
        eprintln!("{name}: buffer over target {start:.1} ms (12-17 s), {end:.1} ms (24-29 s)");
        // The policy lets the delay sit within 3 ms of its target (it
        // passes, or converts at the exact ratio, until then), measured
        // with what the stretcher and resampler hold; these readings of
        // the line's buffer level, averaged over 5 s of the packets' saw,
        // sat up to 1.8 ms beyond that (-4.2 and -4.8 ms at 0 ppm, steady
        // from 12 to 29 s: the delay held, not drifting). Unfollowed,
        // +1000 ppm moves it 12 ms in those 12 s. Bar: 5 ms.
        assert!(
            start.abs() < 5.0 && end.abs() < 5.0,
            "the delay left its target: buffer over target {start:.1} ms at 12-17 s, \
             {end:.1} ms at 24-29 s\n{log}"
        );
        let recording = read_s16le(&alsa.paced);
        let mono = first_channel_s16(&recording, 2);
        let (onsets, _) = onsets_and_spacings(&mono);
        assert_eq!(
            onsets.len(),
            burst_count(8000, signal.len(), FIRST_MS, EVERY_MS),
            "bursts in the recording\n{log}"
        );
    });
}

#[test]
fn drift_estimate_end_to_end_at_zero_ppm() {
    drift_case("dflt-drift-0", 0.0);
}

#[test]
fn drift_estimate_end_to_end_at_plus_1000_ppm() {
    drift_case("dflt-drift-1000", 1000.0);
}
