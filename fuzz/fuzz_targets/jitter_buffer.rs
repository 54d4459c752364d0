//! Fuzz target: arbitrary sequences of packets, reads and clock steps into
//! the jitter buffer. Packets are what the parser can produce (whole frames,
//! at most MAX_PAYLOAD) with arbitrary sequence numbers, timestamps, SSRCs,
//! formats (including ones the buffer was not sized for), marker bits and
//! headerless ones. It must never panic, never hold more than its capacity,
//! and every period asked for is filled exactly by a run of reads that each
//! return at least one and at most the asked-for frames (zeros unless Audio).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netspeaker::audio::format::{Encoding, StreamFormat};
use netspeaker::receive::jitter::{JitterBuffer, JitterConfig, ReadStatus};
use netspeaker::rtp::packet::{Packet, MAX_PAYLOAD};

const FORMATS: [StreamFormat; 5] = [
    StreamFormat {
        encoding: Encoding::Pcmu,
        rate: 8000,
        channels: 1,
    },
    StreamFormat {
        encoding: Encoding::L16,
        rate: 48_000,
        channels: 2,
    },
    StreamFormat {
        encoding: Encoding::S16Le,
        rate: 16_000,
        channels: 1,
    },
    // Beyond what the buffer is sized for: must be refused, not stored.
    StreamFormat {
        encoding: Encoding::L16,
        rate: 96_000,
        channels: 2,
    },
    StreamFormat {
        encoding: Encoding::Pcma,
        rate: 8000,
        channels: 3,
    },
];

/// Reads bytes off the input; zeros once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let max_delay_ms = 1 + u32::from(input.u8() % 200);
    let config = JitterConfig {
        capacity_ms: 200,
        target_delay_ms: u32::from(input.u8()) % (max_delay_ms + 1),
        max_delay_ms,
        stream_lost_ms: 1 + u32::from(input.u8()),
        max_rate: 48_000,
        max_channels: 2,
        // The Opus store changes how the ring is sized: both ways.
        opus: input.u8() % 2 == 1,
    };
    let Ok(mut jb) = JitterBuffer::new(&config) else {
        panic!("valid config refused: {config:?}");
    };
    let mut packet = Packet::empty(FORMATS[0]);
    let mut out = vec![0i16; 4096 * 2];
    let mut now_ns: u64 = 1_000_000_000;
    let (mut seq, mut ts) = (0u16, 0u32);

    while !input.0.is_empty() {
        match input.u8() % 4 {
            0 | 1 => {
                let flags = input.u8();
                let format = FORMATS[usize::from(flags % 5)];
                // Mostly in order, sometimes anywhere.
                if flags & 0x08 != 0 {
                    seq = input.u16();
                    ts = input.u32();
                } else {
                    seq = seq.wrapping_add(u16::from(input.u8() % 4));
                    ts = ts.wrapping_add(u32::from(input.u16() % 2048));
                }
                let frames = usize::from(input.u16()) % 1024 + 1;
                let len = (frames * format.bytes_per_frame()).min(MAX_PAYLOAD);
                let len = len - len % format.bytes_per_frame();
                packet.format = format;
                packet.seq = seq;
                packet.timestamp = ts;
                packet.ssrc = u32::from(flags >> 6);
                packet.marker = flags & 0x10 != 0;
                packet.sequential = flags & 0x20 != 0;
                packet.arrival_ns = now_ns;
                packet.payload.clear();
                let fill = input.u8();
                packet
                    .payload
                    .resize(len, fill)
                    .expect("len is at most MAX_PAYLOAD");
                now_ns += u64::from(input.u8()) * 100_000;
                let _ = jb.push(&packet);
            }
            2 => {
                let channels = jb.format().map_or(1, |f| usize::from(f.channels));
                let period = usize::from(input.u16()) % 4096 + 1;
                let mut filled = 0;
                while filled < period {
                    let wanted = period - filled;
                    let buf = &mut out[..wanted * channels];
                    let status = jb.read(buf, now_ns);
                    let n = status.frames();
                    assert!(n >= 1 && n <= wanted, "read {n} of {wanted} frames");
                    if !matches!(status, ReadStatus::Audio(_)) {
                        assert!(buf[..n * channels].iter().all(|&s| s == 0));
                    }
                    filled += n;
                }
                assert_eq!(filled, period);
                now_ns += period as u64 * 1_000_000_000 / 48_000;
            }
            _ => now_ns += u64::from(input.u16()) * 1_000_000,
        }
        assert!(
            jb.depth_frames() <= jb.capacity_frames(),
            "depth {} beyond capacity {}",
            jb.depth_frames(),
            jb.capacity_frames()
        );
    }
});
