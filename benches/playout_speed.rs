//! What the receiver's own playout work costs per second of audio, apart
//! from ALSA, the sound server and the network thread: the real `Engine`
//! (jitter buffer, clock estimate, delay control, resampler) plus the
//! conversion to the device's S16, in simulated time, for a 48 kHz stereo
//! L16 stream in 20 ms packets played by a 48 kHz stereo device; the
//! sender's clock runs `ppm` fast against the device's (0: the same clock,
//! which is passed through bit-exact once the estimate is trusted). The
//! `opus` case is the same with the stream in Opus (RFC 7587, 48 kHz
//! stereo, what `netspeaker-send --codec opus` sends by default: 96 kbit/s
//! on the wire, 20 ms): the decoding (libopus) is in its count. Its
//! packets are encoded once, before the run, from 1 s of music-like
//! signal (four tones and a little noise). The `sync` cases run the same
//! stream in sync mode (`--sync-ms 100`): the sender's reports map its
//! media clock to the wall clock, the device reports its position, and
//! the delay loop steers every frame to its time (issue 13 asks sync to
//! cost at most 5 % more CPU than the adaptive mode). Measured (release,
//! this x86_64, median of 3, one session): sync 0.320 % of a core at
//! +1000 ppm against following's 0.345 %; at the same clock 0.040 %
//! against pass-through's 0.038 % (+5 %, 0.002 % of a core: within the
//! runs' spread), bit-exact 100 % of periods, since sync passes a stream
//! through inside its dead band (`receive::sync::passes_through`). Before
//! that band sync resampled always: 0.325 % against 0.034 %.
//!
//!     cargo bench --bench playout_speed                 # every case, time
//!     target/.../playout_speed 4 follow+                # one 4 s run, one case
//!
//! Each run first plays `SETTLE_S` simulated seconds (the clock estimate
//! becomes trusted, pass-through or following starts), then the measured
//! seconds. A number argument sets the measured seconds and makes it a
//! single run: under callgrind or qemu the difference between two such
//! runs of different length is the cost per second of audio in the steady
//! state (the settling cancels). A word picks the cases whose name contains
//! it (`pass5`, `pass10`, `follow+`, `follow-`, `opus5`, `sync0`, `sync+`). Prints, per case, the share of
//! measured periods that were bit-exact, and the CPU time (meaningless
//! under an emulator).
use netspeaker::audio::convert::{to_device, Layout};
use netspeaker::audio::format::{Encoding, StreamFormat};
use netspeaker::audio::opus::{Encoder, EncoderConfig};
use netspeaker::receive::engine::{Engine, PlayoutConfig, ResamplerBank};
use netspeaker::receive::sync::{Mapping, SyncConfig};
use netspeaker::rtp::packet::Packet;
use std::time::Instant;

const RATE: u32 = 48_000;
const CHANNELS: usize = 2;
const PTIME_FRAMES: usize = 960;
const SETTLE_S: u64 = 20;

struct Outcome {
    cpu_s: f64,
    passthrough_share: f64,
    drift_ppm: f64,
    /// Sync: alignments made and the last error, µs.
    sync: Option<(u64, f64)>,
}

/// The payloads a sender sends for 1 s of the signal: L16 (big-endian,
/// 20 ms each), or Opus packets of the default sender's settings.
fn payloads(encoding: Encoding) -> Vec<Vec<u8>> {
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let signal: Vec<i16> = (0..RATE as usize)
        .flat_map(|n| {
            let t = n as f64 / RATE as f64;
            let tone = |f: f64| (2.0 * std::f64::consts::PI * f * t).sin();
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let hiss = (noise % 200) as f64 - 100.0;
            let l = 3000.0 * tone(220.0) + 2000.0 * tone(660.0) + hiss;
            let r = 3000.0 * tone(330.0) + 2000.0 * tone(1100.0) + hiss;
            [l as i16, r as i16]
        })
        .collect();
    let frames = signal.chunks_exact(PTIME_FRAMES * CHANNELS);
    match encoding {
        Encoding::Opus => {
            let mut enc = Encoder::new(&EncoderConfig {
                // 96k on the wire less 16k of IPv4/UDP/RTP headers
                // (`send::codec_bitrate_bps`).
                bitrate_bps: netspeaker::send::codec_bitrate_bps(96_000, PTIME_FRAMES, false, 0),
                ..EncoderConfig::default()
            })
            .expect("Opus encoder");
            frames
                .map(|f| {
                    let mut out = [0u8; netspeaker::audio::opus::MAX_PACKET_BYTES];
                    let n = enc.encode(f, &mut out).expect("encode");
                    out[..n].to_vec()
                })
                .collect()
        }
        _ => frames
            .map(|f| f.iter().flat_map(|v| v.to_be_bytes()).collect())
            .collect(),
    }
}

/// One run: settle, then `seconds` of audio at `ppm`, `period_ms` periods.
fn once(encoding: Encoding, ppm: f64, period_ms: u64, seconds: f64, sync: bool) -> Outcome {
    let config = PlayoutConfig {
        period_ms: period_ms as u32,
        max_rate: RATE,
        max_channels: CHANNELS as u16,
        stream_formats: vec![(RATE, CHANNELS as u16)],
        opus: encoding == Encoding::Opus,
        sync: sync.then_some(SyncConfig {
            sync_ms: 100,
            trust_clock: true,
        }),
        ..PlayoutConfig::default()
    };
    // Sync: CLOCK_REALTIME less CLOCK_MONOTONIC; the sender's wall clock
    // is the true time, its media clock `ppm` fast, packet k sent (and
    // its first frame captured) at k × the packet interval.
    let realtime_offset: i64 = 1_764_000_000_000_000_000;
    let mapping = Mapping {
        ssrc: 7,
        wall_ns: realtime_offset as u64,
        rtp: 0,
        rate_hz: f64::from(RATE) * (1.0 + ppm * 1e-6),
    };
    // The device's ring when a period is written: 4 periods.
    let queue = 4 * (RATE as u64 * period_ms / 1000);
    let mut engine = Engine::new(&config).expect("engine");
    let bank = ResamplerBank::new(&config.stream_formats, RATE, &config).expect("bank");
    let _ = engine.attach_device(CHANNELS as u16, Some(bank));
    let format = StreamFormat {
        encoding,
        rate: RATE,
        channels: CHANNELS as u16,
    };
    let period_frames = RATE as usize * period_ms as usize / 1000;
    let mut out = vec![0.0f32; period_frames * CHANNELS];
    let mut device = vec![0u8; period_frames * CHANNELS * 2];
    // One second of signal, encoded once: packets cycle through it.
    let payloads = payloads(encoding);
    let mut slot = Packet::empty(format);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let interval_ns = 20_000_000.0 / (1.0 + ppm * 1e-6);
    let period_ns = period_ms * 1_000_000;
    let settle_ticks = SETTLE_S * 1000 / period_ms;
    let ticks = settle_ticks + (seconds * 1000.0 / period_ms as f64) as u64;
    let mut k = 0u64;
    let mut passthrough = 0u64;
    let mut start = Instant::now();
    for tick in 1..=ticks {
        if tick == settle_ticks + 1 {
            start = Instant::now();
        }
        let now = tick * period_ns;
        loop {
            let sent = (k as f64 * interval_ns) as u64;
            // Up to 1 ms of arrival jitter, as on loopback.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let arrival = sent + rng % 1_000_000;
            if arrival > now {
                break;
            }
            slot.arrival_ns = arrival;
            slot.ssrc = 7;
            slot.seq = k as u16;
            slot.timestamp = (k as usize * PTIME_FRAMES) as u32;
            slot.marker = k == 0;
            slot.payload_type = 96;
            slot.payload.clear();
            let payload = &payloads[k as usize % payloads.len()];
            let _ = slot.payload.extend_from_slice(payload);
            engine.push(std::hint::black_box(&slot));
            k += 1;
        }
        if sync {
            engine.set_sender_mapping(Some(mapping), true);
        }
        engine.render(&mut out, now);
        to_device(Layout::S16Le, &out, &mut device);
        std::hint::black_box(&device);
        engine.device_position(now, tick * period_frames as u64);
        if sync {
            let written = queue + tick * period_frames as u64;
            engine.sync_device_status(now, written, queue as i64, 0, RATE, realtime_offset);
        }
        if tick > settle_ticks && engine.metrics().passthrough {
            passthrough += 1;
        }
    }
    Outcome {
        cpu_s: start.elapsed().as_secs_f64(),
        passthrough_share: passthrough as f64 / (ticks - settle_ticks).max(1) as f64,
        drift_ppm: engine.metrics().drift_ppm,
        sync: engine
            .sync_metrics()
            .map(|m| (m.aligns, m.error_ns.unwrap_or(f64::NAN) / 1e3)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args.iter().find_map(|a| a.parse::<f64>().ok());
    let only = args
        .iter()
        .find(|a| !a.starts_with('-') && a.parse::<f64>().is_err());
    let cases: [(&str, Encoding, f64, u64, bool); 7] = [
        ("pass5: 0 ppm, 5 ms periods", Encoding::L16, 0.0, 5, false),
        (
            "follow+: +1000 ppm, 5 ms periods",
            Encoding::L16,
            1000.0,
            5,
            false,
        ),
        (
            "follow-: -1000 ppm, 5 ms periods",
            Encoding::L16,
            -1000.0,
            5,
            false,
        ),
        (
            "pass10: 0 ppm, 10 ms periods",
            Encoding::L16,
            0.0,
            10,
            false,
        ),
        (
            "opus5: Opus, 0 ppm, 5 ms periods",
            Encoding::Opus,
            0.0,
            5,
            false,
        ),
        (
            "sync0: sync, 0 ppm, 5 ms periods",
            Encoding::L16,
            0.0,
            5,
            true,
        ),
        (
            "sync+: sync, +1000 ppm, 5 ms periods",
            Encoding::L16,
            1000.0,
            5,
            true,
        ),
    ];
    for (name, encoding, ppm, period_ms, sync) in cases {
        if only.is_some_and(|w| !name.contains(w.as_str())) {
            continue;
        }
        let secs = seconds.unwrap_or(20.0);
        let o = once(encoding, ppm, period_ms, secs, sync);
        println!(
            "{name:<36} {secs} s: bit-exact {:.0} % of periods, drift estimate {:+.1} ppm, {:.4} s CPU ({:.3} % of one core)",
            o.passthrough_share * 100.0,
            o.drift_ppm,
            o.cpu_s,
            o.cpu_s / secs * 100.0
        );
        if let Some((aligns, error_us)) = o.sync {
            println!(
                "{:<36} sync aligned {aligns} time(s), last error {error_us:+.1} us",
                ""
            );
        }
    }
}
