//! End to end, issue 14 (several streams and paging priorities): music
//! (priority 1, a 400 Hz tone) and a page (priority 9, a 1000 Hz tone
//! whose first 20 ms are a 1500 Hz marker) from two paced RTP senders to
//! two `--stream` ports of the real `netspeaker` on its defaults (duck
//! −30 dB, hold 1000 ms), playing into JACK's dummy backend behind a file
//! plugin (paced by a timer, records what was played). The
//! recording is cut in 10 ms blocks and each tone's level measured in
//! each (the tones have whole cycles per block, so the projections are
//! exact and do not leak into each other).
//!
//! Judged: the page's marker, its first packet, is heard at full level (not
//! lost, not faded in) and recorded no later than a stream that starts
//! alone, within 50 ms of its first packet, the device's buffer
//! included; the music is at least 25 dB down while the page
//! plays, and back to within 3 dB of its level within hold + 100 ms of
//! the page's end (and not before the hold); no allocation on the
//! realtime threads (`rt-allocs 0`); the log and the statistics line
//! name the stream that owns the speaker.

mod common;

use common::receiver::{free_port, send_rtp_timed, RtpStream, RunningReceiver, Stats};
use common::{
    once_more_if_stalled, sine, AlsaConfig, GrowthWatch, JackServer, PulseServer, TestDir,
};
use netspeaker::audio::format::Encoding;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const RATE: u32 = 8000;
const MUSIC_HZ: f64 = 400.0;
const PAGE_HZ: f64 = 1000.0;
const MARKER_HZ: f64 = 1500.0;
const AMPLITUDE: i16 = 8000;
const MUSIC_SECONDS: usize = 8;
const PAGE_AT: Duration = Duration::from_millis(3000);
const PAGE_MS: usize = 2000;
const HOLD_MS: f64 = 1000.0;
/// 10 ms at the device's rate (48 kHz): whole cycles of every tone.
const BLOCK: usize = 480;
const DEVICE_RATE: f64 = 48_000.0;
/// The recording's frames: FLOAT_LE stereo (JACK's format behind `jplug`).
const FRAME_BYTES: u64 = 8;

fn stream(ssrc: u32) -> RtpStream {
    RtpStream {
        payload_type: 96,
        ssrc,
        first_seq: 1000,
        first_timestamp: 5000,
        rate: RATE,
        channels: 1,
        ptime_ms: 20,
        encoding: Encoding::L16,
    }
}

/// The level (amplitude, full scale 1.0) of `freq` in each block.
fn levels(mono: &[f32], freq: f64) -> Vec<f64> {
    let w = 2.0 * std::f64::consts::PI * freq / DEVICE_RATE;
    mono.chunks_exact(BLOCK)
        .map(|b| {
            let (mut s, mut c) = (0.0f64, 0.0f64);
            for (i, v) in b.iter().enumerate() {
                s += f64::from(*v) * (w * i as f64).sin();
                c += f64::from(*v) * (w * i as f64).cos();
            }
            2.0 * s.hypot(c) / b.len() as f64
        })
        .collect()
}

/// The frame where `freq` sets in at full level `full` near `block`
/// (found there by `levels`): a window of one block slid a frame at a
/// time holds the tone for as many frames as it overlaps it, so its level
/// passes half of `full` when it is half over the onset. Every tone has
/// whole cycles in the window, so the others stay out of the projection;
/// to a few frames.
fn onset(mono: &[f32], freq: f64, block: usize, full: f64) -> usize {
    let w = 2.0 * std::f64::consts::PI * freq / DEVICE_RATE;
    let (sin, cos): (Vec<f64>, Vec<f64>) = (0..BLOCK)
        .map(|i| ((w * i as f64).sin(), (w * i as f64).cos()))
        .unzip();
    let level = |start: usize| {
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for (i, v) in mono[start..start + BLOCK].iter().enumerate() {
            s += f64::from(*v) * sin[i];
            c += f64::from(*v) * cos[i];
        }
        2.0 * s.hypot(c) / BLOCK as f64
    };
    let from = block.saturating_sub(2) * BLOCK;
    let to = ((block + 1) * BLOCK).min(mono.len().saturating_sub(BLOCK));
    (from..=to)
        .find(|&start| level(start) > full / 2.0)
        .map_or(block * BLOCK, |start| start + BLOCK / 2)
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.max(1e-12).log10()
}

#[test]
fn page_takes_the_speaker_music_ducked_and_back_after_hold() {
    once_more_if_stalled("priorities", run);
}

/// A receiver on two `--stream`s (ports `ports`) into JACK's dummy
/// backend behind `jplug`, started and taking audio at the device's pace.
struct Rig {
    dir: TestDir,
    _jack: JackServer,
    rx: RunningReceiver,
    recorded: std::path::PathBuf,
    watch: GrowthWatch,
    ports: (u16, u16),
}

/// `streams`: (priority, name) of the two streams; `extra`: more options.
fn start_rig(label: &str, streams: [(u8, &str); 2], extra: &[&str]) -> Rig {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = TestDir::new(label);
    // JACK's dummy backend: paced by a timer, and unlike a PulseAudio
    // stream it does not stand still for two seconds to restart after an
    // underrun on a loaded machine. `jplug` converts to its float format.
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let jack = JackServer::start(&format!("nsprio{}x{n}", std::process::id()), 48_000, 256);
    let alsa = AlsaConfig::write(&dir.path);
    let ports = (free_port(), free_port());
    let specs: Vec<String> = [ports.0, ports.1]
        .iter()
        .zip(streams)
        .map(|(port, (priority, name))| {
            format!("127.0.0.1:{port},priority={priority},name={name},rtp-format=96=L16/8000/1")
        })
        .collect();
    let mut env = alsa.env();
    env.extend(jack.env());
    let mut args = vec![
        "--device",
        "jplug",
        "--stats-interval",
        "1",
        "--stream",
        &specs[0],
        "--stream",
        &specs[1],
    ];
    args.extend(extra);
    let rx = RunningReceiver::start(&args, &env, dir.file("receiver.log"));
    let recorded = alsa.jfile.clone();
    let watch = GrowthWatch::file(&recorded);
    // The sound server may take a while (up to two seconds here) to
    // really take audio after the receiver saw its stream start: the
    // senders start once the recording grows at the device's pace (a
    // quarter second of audio in each of the last 300 ms).
    let size = || std::fs::metadata(&recorded).map_or(0, |m| m.len());
    let waited = Instant::now();
    let mut history: Vec<(Instant, u64)> = Vec::new();
    while waited.elapsed() < Duration::from_secs(10) {
        let now = Instant::now();
        history.push((now, size()));
        let paced = history
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= Duration::from_millis(300))
            .filter(|(t, _)| now.duration_since(*t) >= Duration::from_millis(250))
            .is_some_and(|(_, before)| size() >= before + FRAME_BYTES * 12_000);
        if paced && waited.elapsed() >= Duration::from_millis(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Rig {
        dir,
        _jack: jack,
        rx,
        recorded,
        watch,
        ports,
    }
}

fn run(stalled: &std::cell::Cell<Option<String>>) {
    let Rig {
        dir: _dir,
        _jack,
        mut rx,
        recorded,
        watch,
        ports: (music_port, page_port),
    } = start_rig("priorities", [(1, "music"), (9, "page")], &[]);

    let music = sine(RATE, 1, MUSIC_HZ, RATE as usize * MUSIC_SECONDS, AMPLITUDE);
    let marker_frames = RATE as usize / 50;
    let mut page = sine(RATE, 1, MARKER_HZ, marker_frames, AMPLITUDE);
    page.extend(sine(
        RATE,
        1,
        PAGE_HZ,
        RATE as usize * PAGE_MS / 1000 - marker_frames,
        AMPLITUDE,
    ));
    let music_to = SocketAddr::from(([127, 0, 0, 1], music_port));
    let page_to = SocketAddr::from(([127, 0, 0, 1], page_port));
    let started = Instant::now();
    let (page_sent_at, music_report, page_report) = std::thread::scope(|s| {
        let music_thread = s
            .spawn(|| send_rtp_timed(music_to, &stream(0x1111), &music, Duration::from_millis(20)));
        std::thread::sleep(PAGE_AT);
        let page_sent_at = Instant::now();
        let page_report =
            send_rtp_timed(page_to, &stream(0x9999), &page, Duration::from_millis(20));
        (
            page_sent_at,
            music_thread.join().expect("music sender"),
            page_report,
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    stalled.set(common::stood_still(watch.stall(
        "priorities",
        started,
        Instant::now(),
    )));
    let growth = watch.samples();
    let (_, _, stats) = rx.stop();
    let log = rx.log_text();
    eprintln!(
        "senders: music {} packets (latest {:?} late), page {} packets (latest {:?} late)",
        music_report.sent, music_report.max_late, page_report.sent, page_report.max_late
    );

    let recording = common::read_f32le(&recorded);
    let mono: Vec<f32> = common::first_channel_f32(&recording, 2);
    let (music_lv, page_lv, marker_lv) = (
        levels(&mono, MUSIC_HZ),
        levels(&mono, PAGE_HZ),
        levels(&mono, MARKER_HZ),
    );
    let full = f64::from(AMPLITUDE) / 32768.0;

    // The marker: the page's first packet, heard whole and at full level.
    let marker_at = marker_lv
        .iter()
        .position(|&l| l > full / 2.0)
        .unwrap_or_else(|| panic!("the page's first 20 ms were never heard\n{log}"));
    let marker_blocks: f64 = marker_lv
        [marker_at.saturating_sub(1)..(marker_at + 3).min(marker_lv.len())]
        .iter()
        .map(|l| l / full)
        .sum();
    let marker_peak = marker_lv[marker_at..(marker_at + 3).min(marker_lv.len())]
        .iter()
        .cloned()
        .fold(0.0, f64::max);
    eprintln!(
        "page marker at block {marker_at}: peak {:.2} dB of full, {marker_blocks:.2} blocks' worth (2 sent)",
        db(marker_peak / full)
    );
    assert!(
        marker_peak >= full * 0.9,
        "the page's first packet played at {:.1} dB, not full level (faded in or ducked)\n{log}",
        db(marker_peak / full)
    );
    assert!(
        marker_blocks >= 1.8,
        "only {marker_blocks:.2} of the page's first 20 ms (2 blocks) were heard\n{log}"
    );

    // Where the page's tone ends: the last block at over half its level.
    let page_end = page_lv
        .iter()
        .rposition(|&l| l > full / 2.0)
        .unwrap_or_else(|| panic!("the page was never heard\n{log}"));
    let page_blocks = page_end + 1 - marker_at;
    eprintln!(
        "page heard from block {marker_at} to {page_end}: {} ms (sent {PAGE_MS} ms)",
        page_blocks * 10
    );
    assert!(
        page_blocks * 10 >= PAGE_MS - 10,
        "the page played {} ms of {PAGE_MS} ms\n{log}",
        page_blocks * 10
    );

    // The music's own level: the second before the page.
    let before = &music_lv[marker_at.saturating_sub(110)..marker_at.saturating_sub(10)];
    let mut sorted = before.to_vec();
    sorted.sort_by(f64::total_cmp);
    let music_level = sorted[sorted.len() / 2];
    assert!(
        music_level > full * 0.8,
        "the music was not playing before the page: {:.1} dB of full\n{log}",
        db(music_level / full)
    );

    // Ducked while the page plays: from the end of the 20 ms ramp (plus
    // a block for where it falls) to the page's end.
    // A splice of the page's own time-stretching (a sender late on a
    // loaded machine moves its delay target) is a click across the
    // spectrum that lands at 400 Hz too: judged on the 95th percentile of
    // the blocks (a few clicks spared, a music ducked late or not at all
    // not), the loudest reported.
    let mut during = music_lv[marker_at + 3..page_end].to_vec();
    during.sort_by(f64::total_cmp);
    let loudest = during.last().copied().unwrap_or(f64::INFINITY);
    let p95 = during
        .get(during.len() * 95 / 100)
        .copied()
        .unwrap_or(f64::INFINITY);
    let ducked_db = db(p95 / music_level);
    eprintln!(
        "music during the page: {ducked_db:.1} dB against its level (95th percentile of 10 ms \
         blocks; loudest {:.1} dB)",
        db(loudest / music_level)
    );
    assert!(
        ducked_db <= -25.0,
        "the music was only {ducked_db:.1} dB down during the page (bar -25 dB)\n{log}"
    );

    // Back: the first block after the page at within 3 dB of its level.
    let back = music_lv[page_end..]
        .iter()
        .position(|&l| l >= music_level * 10f64.powf(-3.0 / 20.0))
        .unwrap_or_else(|| panic!("the music never came back after the page\n{log}"));
    let back_ms = back as f64 * 10.0;
    eprintln!("music back {back_ms:.0} ms after the page's end (hold {HOLD_MS} ms)");
    assert!(
        back_ms <= HOLD_MS + 100.0,
        "the music came back {back_ms:.0} ms after the page (bar hold + 100 ms)\n{log}"
    );
    // The hold counts from the page's last packet, which played its
    // delay (jitter target plus the device's buffer) later: not back
    // before the hold less that delay. On a loaded machine the target
    // rises and the music came back 890 ms after the page's last sound
    // (3 of 28 runs under 900); a hold cut short or not kept at all
    // comes back far earlier.
    assert!(
        back_ms >= HOLD_MS - 200.0,
        "the music came back {back_ms:.0} ms after the page, before the hold of {HOLD_MS} ms\n{log}"
    );

    // When each stream's first frame was played, against its first
    // packet. The file plugin records behind the receiver in chunks and
    // the watch samples every 10 ms, so each sample (t, frames) says at
    // least `frames` were played by t; the device takes frames at its
    // steady rate, so frame F went at T0 + F / rate with T0 the least of
    // t − frames / rate over the samples (tight to a millisecond or two
    // with hundreds of samples). The first frame is found to a few
    // frames (`onset`), not judged from its 10 ms block's end (which
    // added 5 to 15 ms to every figure).
    let since_start = |t: &Instant| t.saturating_duration_since(started).as_secs_f64();
    // T0 from the samples of the second around each first packet only:
    // a standstill elsewhere in the run does not move it.
    let t0_near = |at: f64| {
        growth
            .iter()
            .filter(|(t, bytes)| *bytes > 0 && (since_start(t) - at).abs() < 1.0)
            .map(|(t, bytes)| since_start(t) - (bytes / FRAME_BYTES) as f64 / DEVICE_RATE)
            .fold(f64::INFINITY, f64::min)
    };
    let played_ms =
        |frame: usize, sent: f64| (t0_near(sent) + frame as f64 / DEVICE_RATE - sent) * 1000.0;
    let music_on = music_lv
        .iter()
        .position(|&l| l > full / 2.0)
        .unwrap_or_else(|| panic!("the music was never heard\n{log}"));
    // The music sender's first packet left as its thread started.
    let music_latency_ms = played_ms(onset(&mono, MUSIC_HZ, music_on, full), 0.0);
    let page_latency_ms = played_ms(
        onset(&mono, MARKER_HZ, marker_at, full),
        since_start(&page_sent_at),
    );
    eprintln!(
        "first frame recorded after its first packet: page {page_latency_ms:.1} ms, music (alone \
         on an idle speaker) {music_latency_ms:.1} ms; the device's delay {:.1} ms on the last \
         statistics line",
        stats.get("alsa")
    );
    // The music playing costs the page nothing: it starts as fast as a
    // stream alone does (one packet for the source lock's probation and
    // the jitter margin, then the device's buffer).
    // Below zero the recording stood still around the page (the sound
    // server stalled): the figure means nothing, and the run fails (and
    // is run once more, see `once_more_if_stalled`).
    assert!(
        (0.0..=music_latency_ms + 10.0).contains(&page_latency_ms),
        "the page started {page_latency_ms:.1} ms after its first packet, a stream alone \
         {music_latency_ms:.1} ms\n{log}"
    );
    // Within 50 ms of its first packet, the device's buffer included.
    // Where the time goes on the defaults: the source lock's probation
    // waits for the second packet (20 ms at this ptime; a lone stray
    // packet never plays), the playout thread takes the pair at its next
    // period (0-5 ms) and renders the first frame at once (engine test
    // `a_page_starts_in_the_first_period_after_its_second_packet_...`),
    // then the device's buffer (4 periods of 5 ms; 21.3 ms reported by
    // JACK here): 41-46 ms. Measured 42.0-46.6 ms in 15 of 17 runs on a
    // 2-core machine at load 2.5-6 (other test suites running); 52.9
    // and 55.8 ms in two (one with a 17 ms standstill of the recording,
    // under the stall bar): a margin of 4-8 ms that a loaded machine can
    // eat. The real cure would be to rewind the device's buffer when a
    // page takes the speaker (not done).
    assert!(
        page_latency_ms <= 50.0,
        "the page's first frame was recorded {page_latency_ms:.1} ms after its first packet \
         (bar 50 ms)\n{log}"
    );

    // Zero allocation on the realtime threads, and the speaker named.
    assert_eq!(
        stats.get("rt-allocs"),
        0.0,
        "the realtime threads allocated\n{log}"
    );
    assert!(
        log.contains(
            "speaker: page (priority 9) owns the speaker (taking it from music (priority 1))"
        ),
        "the log does not say the page took the speaker from the music\n{log}"
    );
    assert!(
        log.contains(
            "speaker: music (priority 1) owns the speaker (taking it from page (priority 9))"
        ),
        "the log does not say the music got the speaker back\n{log}"
    );
    // Lines about one stream say which.
    assert!(
        log.contains("stream page (priority 9): stream started: SSRC 00009999"),
        "the page's start is not named\n{log}"
    );
    // The last line sums the streams; each one's own figures follow it.
    for (stream, sent) in [
        ("music (priority 1)", music_report.sent),
        ("page (priority 9)", page_report.sent),
    ] {
        // (Late and lost are left out: a sender late on a loaded
        // machine makes late packets.)
        let own = format!("stopping: stream {stream}: {sent} packets, ");
        assert!(
            log.lines()
                .any(|l| l.contains(&own) && l.contains(", 0 stray, ")),
            "no '{own}... 0 stray'\n{log}"
        );
    }
    let lines: Vec<&str> = log.lines().filter(|l| Stats::parse(l).is_some()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("speaker page (priority 9)")),
        "no statistics line names the page as the speaker's owner\n{log}"
    );
    assert!(
        lines.last().is_some_and(|l| l.contains(" speaker ")),
        "the final statistics line names no speaker\n{log}"
    );
    assert!(
        !log.contains("PANIC") && !log.contains("panicked"),
        "the receiver panicked\n{log}"
    );
}

/// Sends `first` (a tone) to the rig's first stream and, `second_at`
/// later, `second` to its second; stops the receiver 700 ms after both
/// ended. Returns the log and the recording's first channel.
fn play_two(
    rig: &mut Rig,
    first: &[i16],
    second: &[i16],
    second_at: Duration,
) -> (String, Vec<f32>) {
    let first_to = SocketAddr::from(([127, 0, 0, 1], rig.ports.0));
    let second_to = SocketAddr::from(([127, 0, 0, 1], rig.ports.1));
    std::thread::scope(|s| {
        let first_thread =
            s.spawn(|| send_rtp_timed(first_to, &stream(0x1111), first, Duration::from_millis(20)));
        std::thread::sleep(second_at);
        let b = send_rtp_timed(
            second_to,
            &stream(0x2222),
            second,
            Duration::from_millis(20),
        );
        let a = first_thread.join().expect("first sender");
        eprintln!(
            "senders late by at most {:?} and {:?}",
            a.max_late, b.max_late
        );
    });
    std::thread::sleep(Duration::from_millis(700));
    let (_, _, stats) = rig.rx.stop();
    let log = rig.rx.log_text();
    assert_eq!(
        stats.get("rt-allocs"),
        0.0,
        "the realtime threads allocated\n{log}"
    );
    assert!(
        !log.contains("PANIC") && !log.contains("panicked"),
        "the receiver panicked\n{log}"
    );
    let recording = common::read_f32le(&rig.recorded);
    (log, common::first_channel_f32(&recording, 2))
}

/// The `p`th percentile of `blocks`.
fn percentile(blocks: &[f64], p: usize) -> f64 {
    let mut sorted = blocks.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(at).copied().unwrap_or(f64::INFINITY)
}

/// `--duck-db off`: the music is muted, not ducked, while the page plays,
/// and comes back after the hold.
#[test]
fn duck_off_mutes_the_music_under_a_page() {
    let mut rig = start_rig(
        "priorities-mute",
        [(1, "music"), (9, "page")],
        &["--duck-db", "off"],
    );
    let music = sine(RATE, 1, MUSIC_HZ, RATE as usize * 5, AMPLITUDE);
    let page = sine(RATE, 1, PAGE_HZ, RATE as usize * 2, AMPLITUDE);
    let (log, mono) = play_two(&mut rig, &music, &page, Duration::from_millis(1500));
    let (music_lv, page_lv) = (levels(&mono, MUSIC_HZ), levels(&mono, PAGE_HZ));
    let full = f64::from(AMPLITUDE) / 32768.0;
    let page_on = page_lv
        .iter()
        .position(|&l| l > full / 2.0)
        .unwrap_or_else(|| panic!("the page was never heard\n{log}"));
    let page_end = page_lv
        .iter()
        .rposition(|&l| l > full / 2.0)
        .unwrap_or(page_on);
    let music_level = percentile(&music_lv[page_on.saturating_sub(60)..page_on - 10], 50);
    assert!(
        music_level > full * 0.8,
        "the music was not playing before the page: {:.1} dB of full\n{log}",
        db(music_level / full)
    );
    // From the end of the 20 ms ramp (and a block) to the page's end;
    // the 95th percentile, as in the ducking test (splices of the page's
    // own stretching are clicks across the spectrum). Muted music is
    // gone; what is left at 400 Hz is the page's own spread (-52.5 dB
    // measured), far below music ducked by the default 30 dB.
    let during = &music_lv[page_on + 3..page_end];
    let (p95, loudest) = (percentile(during, 95), percentile(during, 100));
    eprintln!(
        "music under the page with --duck-db off: {:.1} dB against its level (95th percentile; \
         loudest {:.1} dB), {} ms of page",
        db(p95 / music_level),
        db(loudest / music_level),
        (page_end + 1 - page_on) * 10
    );
    assert!(
        db(p95 / music_level) <= -45.0,
        "the music was only {:.1} dB down under the page with --duck-db off (bar -45 dB)\n{log}",
        db(p95 / music_level)
    );
    let back = music_lv[page_end..]
        .iter()
        .position(|&l| l >= music_level * 10f64.powf(-3.0 / 20.0))
        .unwrap_or_else(|| panic!("the music never came back after the page\n{log}"));
    eprintln!("music back {} ms after the page's end", back * 10);
    assert!(
        back as f64 * 10.0 <= HOLD_MS + 100.0,
        "the music came back {} ms after the page\n{log}",
        back * 10
    );
    assert!(
        log.contains(
            "speaker: page (priority 9) owns the speaker (taking it from music (priority 1))"
        ),
        "{log}"
    );
}

/// Equal priorities: the stream already playing keeps the speaker; the
/// one that starts beside it is ducked and never takes it.
#[test]
fn equal_priorities_the_stream_already_playing_keeps_the_speaker() {
    let mut rig = start_rig("priorities-equal", [(5, "first"), (5, "second")], &[]);
    let first = sine(RATE, 1, MUSIC_HZ, RATE as usize * 5, AMPLITUDE);
    let second = sine(RATE, 1, PAGE_HZ, RATE as usize * 2, AMPLITUDE);
    let (log, mono) = play_two(&mut rig, &first, &second, Duration::from_millis(1500));
    let (first_lv, second_lv) = (levels(&mono, MUSIC_HZ), levels(&mono, PAGE_HZ));
    let full = f64::from(AMPLITUDE) / 32768.0;
    let first_on = first_lv
        .iter()
        .position(|&l| l > full / 2.0)
        .unwrap_or_else(|| panic!("the first stream was never heard\n{log}"));
    // The second stream's 2 s, 1.5 s after the first's start (both take
    // the same time to start), less 100 ms at either end.
    let overlap = first_on + 160..first_on + 340;
    let first_during = percentile(&first_lv[overlap.clone()], 5);
    let second_during = percentile(&second_lv[overlap.clone()], 50);
    let second_loudest = percentile(&second_lv[overlap], 100);
    eprintln!(
        "while both play: the first at {:.1} dB of full (5th percentile), the second at {:.1} dB \
         (median; loudest {:.1} dB)",
        db(first_during / full),
        db(second_during / full),
        db(second_loudest / full)
    );
    assert!(
        first_during >= full * 0.9,
        "the first stream lost its level when the second started: {:.1} dB\n{log}",
        db(first_during / full)
    );
    // Heard ducked (-30 dB on the defaults), not at full level.
    assert!(
        (-35.0..=-25.0).contains(&db(second_during / full)),
        "the second stream played at {:.1} dB of full, not ducked by 30 dB\n{log}",
        db(second_during / full)
    );
    assert!(
        log.contains("speaker: first (priority 5) owns the speaker"),
        "{log}"
    );
    assert!(
        !log.contains("speaker: second (priority 5) owns the speaker"),
        "the second stream took the speaker from the one playing\n{log}"
    );
    assert!(
        log.contains("stream second (priority 5): stream started"),
        "{log}"
    );
}

#[test]
fn stream_options_documented_and_bad_ones_refused_with_one_clear_line() {
    let exe = env!("CARGO_BIN_EXE_netspeaker");
    let help = std::process::Command::new(exe)
        .arg("--help")
        .output()
        .expect("netspeaker --help");
    let text = String::from_utf8_lossy(&help.stdout);
    for opt in ["--stream ADDR:PORT", "priority=", "--duck-db", "--hold-ms"] {
        assert!(text.contains(opt), "--help lacks {opt}");
    }
    let s = "127.0.0.1:5004";
    let cases: &[(&[&str], &str)] = &[
        (&["--stream", "nowhere"], "'nowhere' is not ADDR:PORT"),
        (&["--stream", "127.0.0.1:5004,priority=12"], "from 0 to 9"),
        (&["--stream", "127.0.0.1:5004,loud=1"], "unknown key 'loud'"),
        (
            &["--stream", "127.0.0.1:5004,group=10.1.1.1"],
            "not a multicast",
        ),
        (
            &["--stream", "127.0.0.1:5004,rtp-format=96=L16/1/2"],
            "rtp-format '96=L16/1/2'",
        ),
        (
            &["--stream", s, "--listen", "127.0.0.1:5006"],
            "--listen does not go with --stream",
        ),
        (
            &["--stream", s, "--group", "239.1.1.1"],
            "--group does not go with --stream",
        ),
        (
            &["--stream", s, "--raw", "s16le:8000:1"],
            "--raw does not go with --stream",
        ),
        (
            &["--stream", s, "--stream", "0.0.0.0:5004,priority=9"],
            "would receive the same datagrams",
        ),
        (
            &[
                "--stream",
                "127.0.0.1:5004,name=a",
                "--stream",
                "127.0.0.1:5006,name=a",
            ],
            "two --stream are named 'a'",
        ),
        (&["--stream", s, "--sap"], "--sap takes the group"),
        (&["--stream", s, "--duck-db", "6"], "--duck-db: '6'"),
        (&["--stream", s, "--duck-db", "quiet"], "or off (to mute)"),
        (&["--stream", s, "--hold-ms", "-5"], "--hold-ms"),
    ];
    for (args, says) in cases {
        let out = std::process::Command::new(exe)
            .args(*args)
            .output()
            .expect("netspeaker");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one clear line for {args:?}: {err}");
        assert!(
            err.starts_with("netspeaker: ") && err.contains(says),
            "{args:?}: '{err}' does not say '{says}'"
        );
    }
    let nine: Vec<String> = (0..9)
        .flat_map(|i| ["--stream".to_string(), format!("127.0.0.1:{}", 6000 + i)])
        .collect();
    let out = std::process::Command::new(exe)
        .args(&nine)
        .output()
        .expect("netspeaker");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 8 streams"));
}

/// A stream's own `srtp-key-file=`: the page's port takes only SRTP with
/// its key (a plaintext sender to it is refused and counted), while the
/// music's port beside it takes plain RTP; the page, sent with the key by
/// `netspeaker-send`, takes the speaker.
#[test]
fn a_keyed_stream_takes_only_its_srtp_sender_beside_a_plain_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("priorities-srtp");
    let pulse = PulseServer::start(&dir.path);
    let alsa = AlsaConfig::write(&dir.path);
    let key = dir.file("page.key");
    std::fs::write(&key, "bmV0c3BlYWtlciBzcnRwIHRlc3Qga2V5IDAwMDEh\n").expect("key file");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (music_port, page_port) = (free_port(), free_port());
    let music_spec = format!("127.0.0.1:{music_port},priority=1,name=music");
    let page_spec = format!(
        "127.0.0.1:{page_port},priority=9,name=page,srtp-key-file={},rtp-format=96=L16/8000/1",
        key.display()
    );
    let mut env = alsa.env();
    env.extend(pulse.env());
    let mut rx = RunningReceiver::start(
        &[
            "--device",
            "paced",
            "--stats-interval",
            "1",
            "--stream",
            &music_spec,
            "--stream",
            &page_spec,
        ],
        &env,
        dir.file("receiver.log"),
    );
    let music_to = SocketAddr::from(([127, 0, 0, 1], music_port));
    let page_to = SocketAddr::from(([127, 0, 0, 1], page_port));
    let pcmu = RtpStream {
        payload_type: 0,
        encoding: Encoding::Pcmu,
        ..stream(0x1111)
    };
    let tone = sine(RATE, 1, MUSIC_HZ, RATE as usize, AMPLITUDE);
    // One second of plain RTP to each port at once: the music plays, the
    // page's port refuses all of it.
    let (music_sent, plain_sent) = std::thread::scope(|s| {
        let music = s.spawn(|| send_rtp_timed(music_to, &pcmu, &tone, Duration::from_millis(20)));
        let plain = send_rtp_timed(
            page_to,
            &RtpStream {
                ssrc: 0x0bad,
                ..pcmu
            },
            &tone,
            Duration::from_millis(20),
        );
        (music.join().expect("music sender").sent, plain.sent)
    });
    // Then the page, with the key.
    let wav = dir.file("page.wav");
    rig_write_wav(&wav, &sine(RATE, 1, PAGE_HZ, RATE as usize, AMPLITUDE));
    let sender = std::process::Command::new(env!("CARGO_BIN_EXE_netspeaker-send"))
        .args(["--srtp-key-file"])
        .arg(&key)
        .arg(&wav)
        .arg(page_to.to_string())
        .output()
        .expect("netspeaker-send");
    assert!(
        sender.status.success(),
        "netspeaker-send: {}",
        String::from_utf8_lossy(&sender.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, _, stats) = rx.stop();
    let log = rx.log_text();
    eprintln!(
        "music {music_sent} packets, plaintext to the keyed port {plain_sent}; auth-failed {}",
        stats.get("auth-failed")
    );
    assert_eq!(
        stats.get("auth-failed"),
        plain_sent as f64,
        "every plaintext packet to the keyed port is refused and counted\n{log}"
    );
    assert_eq!(
        log.matches("stream page (priority 9): stream started")
            .count(),
        1,
        "the page's stream started once, from its keyed sender only\n{log}"
    );
    assert!(
        log.contains("stream music (priority 1): stream started"),
        "the plain stream beside it played\n{log}"
    );
    assert!(
        log.contains("speaker: page (priority 9) owns the speaker"),
        "the keyed page took the speaker\n{log}"
    );
    assert_eq!(stats.get("rt-allocs"), 0.0, "{log}");
}

/// A 16-bit PCM WAV file, as the sender reads it.
fn rig_write_wav(path: &std::path::Path, samples: &[i16]) {
    std::fs::write(path, netspeaker::send::wav::write_wav(RATE, 1, samples)).expect("write wav");
}
