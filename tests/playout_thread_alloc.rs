//! The realtime playout thread, run for real (`receive::playout::start`:
//! playout thread, device thread, a PulseAudio device behind the file
//! plugin), with the library's counting allocator and a real logger
//! installed, through the fault paths of issue #10: streams of three
//! formats one after another (8 kHz PCMU mono, 48 kHz L16 stereo, 44.1 kHz
//! L16 mono: each a new SSRC), the sound server killed mid-stream (device
//! lost) and started again (device reopened), and a SIGHUP-style release.
//! The playout thread must allocate nothing from its first period to the
//! last, and say everything through events, which the main thread logs.
//!
//! The device work runs in a child (the test binary re-executed, see
//! `common::run_child`) so that ALSA and PulseAudio see only this test's
//! configuration; the parent kills and restarts the sound server on a
//! fixed schedule.
//!
//! The same with two streams (`playout::start_streams`, priorities 1 and
//! 9): both change formats, the second comes and goes so that the speaker
//! changes hands across the device's loss, reopen and release, every
//! engine taking a new resampler bank at each open.

mod common;

use common::*;
use netspeaker::audio::codec;
use netspeaker::audio::format::{Encoding, StreamFormat};
use netspeaker::receive::engine::{Latency, PlayoutConfig};
use netspeaker::receive::playout::{self, Event, PacketQueue, StreamInput};
use netspeaker::receive::priority::ArbiterConfig;
use netspeaker::receive::stats::PlayoutStats;
use netspeaker::receive::sync::{Mapping, SyncConfig, SyncFeed};
use netspeaker::rtp::packet::Packet;
use netspeaker::service::alloc::{allocations, Counting, Watched};
use netspeaker::service::clock::{monotonic_ns, realtime_ns};
use netspeaker::service::notify::Heartbeat;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A logger that formats every record into a fresh `String`: any log call
/// on a watched thread would be counted as an allocation.
struct StringLogger;

impl log::Log for StringLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        eprintln!("{line}");
    }
    fn flush(&self) {}
}

static LOGGER: StringLogger = StringLogger;

/// When the sound server is killed and restarted, the device released
/// (SIGHUP) and the run ends. Sync mode's are later: sync takes charge
/// only once the device's rate is fitted, a second after it starts (the
/// server takes about 2 s to start it), and must have done so before the
/// kill to take charge again after it; the fitted rate survives the
/// reopen, so sync takes charge again 0.3 s after it.
struct Timeline {
    kill_at: Duration,
    restart_at: Duration,
    hup_at: Duration,
    run_for: Duration,
}

fn timeline(sync: bool) -> Timeline {
    let ms = Duration::from_millis;
    if sync {
        Timeline {
            kill_at: ms(4000),
            restart_at: ms(5000),
            hup_at: ms(8000),
            run_for: ms(9500),
        }
    } else {
        Timeline {
            kill_at: ms(2500),
            restart_at: ms(4000),
            hup_at: ms(6500),
            run_for: ms(8000),
        }
    }
}

fn formats() -> [(u8, StreamFormat); 3] {
    [
        (
            0,
            StreamFormat {
                encoding: Encoding::Pcmu,
                rate: 8000,
                channels: 1,
            },
        ),
        (
            96,
            StreamFormat {
                encoding: Encoding::L16,
                rate: 48_000,
                channels: 2,
            },
        ),
        (
            11,
            StreamFormat {
                encoding: Encoding::L16,
                rate: 44_100,
                channels: 1,
            },
        ),
    ]
}

#[test]
fn playout_thread_allocates_nothing_through_device_loss_reopen_and_format_changes() {
    run_case(
        "playout_thread_allocates_nothing_through_device_loss_reopen_and_format_changes",
        1,
    );
}

#[test]
fn two_streams_mixed_and_ducked_allocate_nothing_through_device_loss_and_reopen() {
    run_case(
        "two_streams_mixed_and_ducked_allocate_nothing_through_device_loss_and_reopen",
        2,
    );
}

/// Sync mode (`--sync-ms`): each stream's sender clock published by
/// "the net thread" (here, the feeding loop) with every packet, so the
/// playout thread reads the seqlock while it is written; sync takes
/// charge, aligns at each stream start and after the device's reopen, and
/// steers, through the same faults.
#[test]
fn sync_mode_allocates_nothing_through_device_loss_reopen_and_format_changes() {
    run_case(
        "sync_mode_allocates_nothing_through_device_loss_reopen_and_format_changes",
        1,
    );
}

fn run_case(name: &str, streams: usize) {
    if in_child(name) {
        return child(streams, name.starts_with("sync"));
    }
    let dir = TestDir::new("playout-thread-alloc");
    let mut pulse = PulseServer::start(&dir.path);
    let alsa = AlsaConfig::write(&dir.path);
    let mut env = alsa.env();
    env.extend(pulse.env());
    let child = spawn_child(name, &env);
    let start = Instant::now();
    let timeline = timeline(name.starts_with("sync"));
    std::thread::sleep(timeline.kill_at);
    pulse.kill();
    std::thread::sleep(timeline.restart_at.saturating_sub(start.elapsed()));
    pulse.restart();
    let out = child.wait_with_output().expect("child");
    let stdout = child_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let get = |k: &str| -> u64 {
        child_value(&stdout, k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("child did not report {k}\n{stdout}\n{stderr}"))
    };
    // The faults really happened, and were said by the main thread.
    assert!(get("lost") >= 1, "the device was never lost\n{stderr}");
    assert!(
        get("opened") >= 2,
        "the device was not opened again after the server came back\n{stderr}"
    );
    assert!(
        get("streams") >= 3 * streams as u64,
        "three stream formats on each stream\n{stderr}"
    );
    assert!(get("periods") > 300, "the playout thread ran\n{stderr}");
    if name.starts_with("sync") {
        assert!(
            get("sync_in_charge") >= 2,
            "sync never took charge (or never again after the reopen)\n{stderr}"
        );
    }
    if streams > 1 {
        // The page took the speaker and gave it back twice.
        assert!(
            get("speaker_changes") >= 4,
            "the speaker did not change hands\n{stderr}"
        );
    }
    assert_eq!(
        get("playout_allocations"),
        0,
        "the playout thread allocated\n{stderr}"
    );
}

fn child(stream_count: usize, sync: bool) {
    log::set_logger(&LOGGER).expect("logger");
    log::set_max_level(log::LevelFilter::Trace);
    let config = PlayoutConfig {
        device: "paced".into(),
        latency: Latency::Fixed { ms: 40 },
        period_ms: 10,
        buffer_periods: 4,
        rt_priority: 0,
        lock_memory: false,
        max_rate: 48_000,
        max_channels: 2,
        stream_formats: formats()
            .iter()
            .map(|(_, f)| (f.rate, f.channels))
            .collect(),
        sync: sync.then_some(SyncConfig {
            sync_ms: 100,
            trust_clock: true,
        }),
        ..PlayoutConfig::default()
    };
    let stats = Arc::new(PlayoutStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reopen = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut inputs = Vec::new();
    let mut feeds = Vec::new();
    for s in 0..stream_count {
        let packets: &'static mut PacketQueue = Box::leak(Box::new(PacketQueue::new()));
        let (packet_tx, packet_rx) = packets.split();
        senders.push(packet_tx);
        let feed = Arc::new(SyncFeed::default());
        feeds.push(Arc::clone(&feed));
        inputs.push(StreamInput {
            config: config.clone(),
            priority: if s == 0 { 1 } else { 9 },
            packets: packet_rx,
            sender_clock: feed,
        });
    }
    let mut playout = playout::start_streams(
        &config,
        inputs,
        &ArbiterConfig {
            hold_ms: 300,
            ..ArbiterConfig::default()
        },
        playout::Shared {
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            reopen: Arc::clone(&reopen),
            heartbeat: Arc::new(Heartbeat::new()),
        },
    )
    .expect("start playout");

    let start = Instant::now();
    let start_wall = realtime_ns();
    let (mut sync_in_charge, mut was_in_charge) = (0u64, false);
    let (mut lost, mut opened, mut streams, mut speaker_changes) = (0u64, 0u64, 0u64, 0u64);
    let mut sent = 0u64;
    let mut samples = vec![0i16; 48_000 / 50 * 2];
    let mut hup_sent = false;
    // The second stream (the page; only the two-stream case, on the
    // timeline without sync) talks in three spurts: across the device's
    // loss (2.5 s), across a format change (5 s) and after the release
    // (6.5 s), with more than the hold between them.
    let page_talks =
        |k: u64| (100..200).contains(&k) || (240..300).contains(&k) || (330..380).contains(&k);
    let timeline = timeline(sync);
    while start.elapsed() < timeline.run_for {
        // One 20 ms packet per 20 ms; the format changes every ~2.5 s.
        let due = start.elapsed().as_millis() as u64 / 20;
        while sent <= due {
            let k = sent;
            let segment = (k / 125) as usize % 3;
            let (pt, format) = formats()[segment];
            let frames = format.rate as usize / 50;
            let ch = format.channels as usize;
            for (s, packet_tx) in senders.iter_mut().enumerate() {
                if s > 0 && !page_talks(k) {
                    continue;
                }
                let hz = 440.0 * (s + 1) as f64;
                for (i, v) in samples[..frames * ch].iter_mut().enumerate() {
                    let t = (k as usize * frames + i / ch) as f64 / format.rate as f64;
                    *v = (8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16;
                }
                let mut p = Packet::empty(format);
                p.ssrc = 0x1000 + 0x100 * s as u32 + segment as u32;
                p.seq = k as u16;
                p.timestamp = (k as u32).wrapping_mul(frames as u32);
                p.payload_type = pt;
                p.arrival_ns = monotonic_ns();
                p.marker = k % 125 == 0;
                let mut bytes = [0u8; 4096];
                let n = codec::encode(format.encoding, &samples[..frames * ch], &mut bytes);
                let _ = p.payload.extend_from_slice(&bytes[..n]);
                if sync {
                    // As a sender report would map it: packet k was
                    // captured k · 20 ms after the start.
                    feeds[s].store(Some(Mapping {
                        ssrc: p.ssrc,
                        wall_ns: start_wall + k * 20_000_000,
                        rtp: p.timestamp,
                        rate_hz: 0.0,
                    }));
                }
                let _ = packet_tx.enqueue(p);
            }
            sent += 1;
        }
        if !hup_sent && start.elapsed() > timeline.hup_at {
            // A released device (SIGHUP) goes through the same close/open.
            reopen.store(true, Relaxed);
            hup_sent = true;
        }
        let in_charge = stats.sync_state.load(Relaxed) == 1;
        if in_charge && !was_in_charge {
            sync_in_charge += 1;
        }
        was_in_charge = in_charge;
        while let Some(event) = playout.events.dequeue() {
            match &event {
                Event::DeviceLost(_) => lost += 1,
                Event::DeviceOpened { .. } => opened += 1,
                Event::StreamStarted { .. } | Event::NewStream { .. } => streams += 1,
                Event::Speaker { .. } => speaker_changes += 1,
                _ => {}
            }
            log::info!("event: {event:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !playout.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    report("sync_in_charge", sync_in_charge);
    report("lost", lost);
    report("opened", opened);
    report("streams", streams);
    report("speaker_changes", speaker_changes);
    report("periods", stats.periods.load(Relaxed));
    report("playout_allocations", allocations(Watched::Playout));
}
