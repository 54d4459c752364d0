//! The playout path allocates nothing after start-up (issue 7): a counting
//! global allocator counts the allocations made while the real playout
//! `Engine` (jitter buffer, concealment, time-stretching, resampling with
//! drift following, the adaptive delay estimator and controller) is fed a
//! steady stream with loss, reordering, duplicates, a jittery arrival, a
//! sender restart (new SSRC and timestamps) and a talkspurt gap, and
//! renders one device period at a time. The warm-up (the first stream's
//! set-up) is excluded; everything after it must allocate nothing.

mod common;

use netspeaker::audio::format::{Encoding, StreamFormat};
use netspeaker::receive::engine::{Engine, Latency, PlayoutConfig, ResamplerBank};
use netspeaker::rtp::packet::Packet;

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;

const RATE: u32 = 48_000;
const PTIME_FRAMES: usize = 960; // 20 ms
const PERIOD_FRAMES: usize = 240; // 5 ms

fn format() -> StreamFormat {
    StreamFormat {
        encoding: Encoding::L16,
        rate: RATE,
        channels: 2,
    }
}

/// A 20 ms L16 stereo packet of a 440 Hz tone at timestamp `ts`.
fn packet(ssrc: u32, seq: u16, ts: u32, arrival_ns: u64, marker: bool, out: &mut Packet) {
    out.arrival_ns = arrival_ns;
    out.ssrc = ssrc;
    out.seq = seq;
    out.timestamp = ts;
    out.marker = marker;
    out.payload_type = 96;
    out.format = format();
    out.sequential = false;
    out.payload.clear();
    for i in 0..PTIME_FRAMES {
        let t = ts.wrapping_add(i as u32) as f64 / RATE as f64;
        let v = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
        for _ in 0..2 {
            let _ = out.payload.extend_from_slice(&v.to_be_bytes());
        }
    }
}

#[test]
fn steady_stream_with_loss_reordering_and_ssrc_change_allocates_nothing() {
    let config = PlayoutConfig {
        latency: Latency::Auto {
            min_ms: 10,
            max_ms: 200,
        },
        max_rate: RATE,
        max_channels: 2,
        stream_formats: vec![(RATE, 2)],
        ..PlayoutConfig::default()
    };
    let mut engine = Engine::new(&config).expect("engine");
    let bank = ResamplerBank::new(&config.stream_formats, RATE, &config).expect("bank");
    engine.attach_device(2, Some(bank));
    let mut out = vec![0.0f32; PERIOD_FRAMES * 2];
    let mut slot = Packet::empty(format());
    let mut held = Packet::empty(format());
    let period_ns = 5_000_000u64;
    let mut now = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // 60 s of playout: packet k is sent at k·20 ms and arrives with up to
    // 8 ms of jitter; about 3 % are lost, 3 % held back one packet
    // (reordered), 2 % duplicated; at 20 s the sender restarts with a new
    // SSRC, sequence and timestamp; at 40 s a 200 ms talkspurt gap.
    let mut k: u64 = 0;
    let mut ssrc = 0x1111_1111u32;
    let mut seq0 = 100u16;
    let mut ts0 = 5_000u32;
    let mut k0 = 0u64;
    let mut holding = false;
    let mut counting_from_tick = None;
    for tick in 0..12_000u64 {
        now += period_ns;
        // Packets due by now.
        while k * 20_000_000 + 8_000_000 <= now {
            let t_send = k * 20_000_000;
            let arrival = t_send + next_rand() % 8_000_000;
            if k == 1000 {
                ssrc = 0x2222_2222;
                seq0 = 60_000;
                ts0 = u32::MAX - 100_000;
                k0 = k;
            }
            let n = k - k0;
            let seq = seq0.wrapping_add(n as u16);
            let ts = ts0.wrapping_add((n as usize * PTIME_FRAMES) as u32);
            let in_gap = (2000..2010).contains(&k);
            let marker = k == 2010 || n == 0;
            k += 1;
            if in_gap {
                continue;
            }
            let r = next_rand() % 100;
            packet(ssrc, seq, ts, arrival, marker, &mut slot);
            if r < 3 {
                continue; // lost
            }
            if r < 6 && !holding {
                core::mem::swap(&mut slot, &mut held);
                holding = true;
                continue;
            }
            engine.push(&slot);
            if r < 8 {
                engine.push(&slot); // duplicate
            }
            if holding {
                engine.push(&held);
                holding = false;
            }
        }
        engine.render(&mut out, now);
        // Warm-up: the first stream's set-up (resampler built for it) is
        // start-up, not the audio path.
        if tick == 400 {
            counting_from_tick = Some(tick);
            common::alloc::count_this_thread(true);
        }
    }
    common::alloc::count_this_thread(false);
    assert!(counting_from_tick.is_some());
    let m = engine.jitter().metrics();
    // The stream really went through every policy while counted.
    assert!(m.lost > 50, "{m:?}");
    assert!(m.reordered > 20, "{m:?}");
    assert!(m.duplicates > 20, "{m:?}");
    assert!(m.new_streams >= 2, "{m:?}");
    assert!(engine.metrics().concealed_frames > 0);
    assert_eq!(
        common::alloc::allocations(),
        0,
        "allocations on the playout path after start-up"
    );
}
