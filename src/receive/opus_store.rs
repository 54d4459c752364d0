//! The jitter buffer's Opus side: received Opus payloads kept encoded
//! until the playout cursor reaches them, and the one decoder that turns
//! them into samples in stream order.
//!
//! Input: packets placed by the jitter buffer (`put`, by their extended
//! timestamp), whatever order they arrived in. Output: the samples of one
//! packet (`decode`), of a hole concealed by the decoder (`conceal`), or
//! of a hole rebuilt from the next packet's in-band FEC (`recover`), in
//! `scratch`. Decoding at read time, not at arrival, is what an Opus
//! decoder needs: its state follows the stream in order, a reordered
//! packet that arrives before its turn simply waits here, and a hole is
//! known to be a hole (and whether the packet after it is there) only when
//! the cursor reaches it. Late and duplicate packets never get here (the
//! jitter buffer drops them).
//!
//! Slots are indexed by `start / MIN_FRAME`: packets are at least 2.5 ms
//! long, so two packets in the ring's window never share a slot. A slot
//! is valid only while its start matches; `reset` forgets them all.
//! Everything is allocated in `new`.

use crate::audio::opus::{self, Decoder, OpusError, MAX_PACKET_FRAMES, MIN_FRAME};

/// Largest Opus payload stored (bytes), `audio::opus::MAX_PACKET_BYTES`;
/// longer packets are refused as unsupported.
pub const SLOT_BYTES: usize = opus::MAX_PACKET_BYTES;

#[derive(Clone, Copy)]
struct Slot {
    /// Extended timestamp of the packet's first frame; 0: empty.
    start: u64,
    frames: u32,
    len: u16,
    bytes: [u8; SLOT_BYTES],
}

const EMPTY_SLOT: Slot = Slot {
    start: 0,
    frames: 0,
    len: 0,
    bytes: [0; SLOT_BYTES],
};

/// What a decode produced: `frames` frames in `scratch` after the first
/// `head` (which are not played), the first of them at position `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub start: u64,
    pub frames: usize,
    pub head: usize,
}

pub struct OpusStore {
    slots: Vec<Slot>,
    decoder: Decoder,
    /// Interleaved output of the last decode (up to 120 ms of stereo).
    scratch: Vec<i16>,
}

impl OpusStore {
    /// A store for a ring of `ring_frames` frames at 48 kHz.
    pub fn new(ring_frames: usize) -> Result<OpusStore, OpusError> {
        // The ring's window plus one packet straddling the cursor.
        let count = ring_frames / MIN_FRAME + MAX_PACKET_FRAMES / MIN_FRAME + 1;
        Ok(OpusStore {
            slots: vec![EMPTY_SLOT; count],
            decoder: Decoder::new()?,
            scratch: vec![0; MAX_PACKET_FRAMES * 2],
        })
    }

    /// A new stream or a re-anchored one: no packet is stored, and the
    /// decoder starts afresh for `channels` (1 or 2).
    pub fn reset(&mut self, channels: u16) {
        for s in &mut self.slots {
            s.start = 0;
        }
        self.decoder.reset(channels);
    }

    fn index(&self, pos: u64) -> usize {
        ((pos / MIN_FRAME as u64) % self.slots.len().max(1) as u64) as usize
    }

    /// Keeps a packet of `frames` frames starting at `start`; `false` when
    /// it is longer than a slot or than 120 ms.
    pub fn put(&mut self, start: u64, frames: usize, payload: &[u8]) -> bool {
        if payload.len() > SLOT_BYTES || frames > MAX_PACKET_FRAMES || start == 0 {
            return false;
        }
        let i = self.index(start);
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        slot.start = start;
        slot.frames = frames as u32;
        slot.len = payload.len() as u16;
        if let Some(dst) = slot.bytes.get_mut(..payload.len()) {
            dst.copy_from_slice(payload);
        }
        true
    }

    /// The slot of the packet that starts exactly at `pos`.
    fn starting_at(&self, pos: u64) -> Option<usize> {
        let i = self.index(pos);
        self.slots
            .get(i)
            .filter(|s| s.start == pos && s.start != 0)
            .map(|_| i)
    }

    /// Frames of the packet that starts exactly at `pos`, if stored.
    pub fn frames_at(&self, pos: u64) -> Option<usize> {
        self.starting_at(pos)
            .and_then(|i| self.slots.get(i))
            .map(|s| s.frames as usize)
    }

    /// The start of the first stored packet that starts after `from` and
    /// before `end`: a packet whose timestamp says it overlaps the tail of
    /// the one before it (GStreamer stamps the second packet of a stream
    /// 648 frames after the first: the first packet's timestamp is that of
    /// its first sample after the encoder's 312-frame pre-skip).
    pub fn next_start_within(&self, from: u64, end: u64) -> Option<u64> {
        let first = from / MIN_FRAME as u64 + 1;
        let last = end.saturating_sub(1) / MIN_FRAME as u64;
        (first..=last).find_map(|k| {
            let pos = k * MIN_FRAME as u64;
            let i = self.index(pos);
            self.slots
                .get(i)
                .map(|s| s.start)
                .filter(|&s| s > from && s < end)
        })
    }

    /// The slot of the packet whose frames cover `pos`.
    fn covering(&self, pos: u64) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let here = self.index(pos);
        (0..=MAX_PACKET_FRAMES / MIN_FRAME)
            .map(|back| (here + n - back % n) % n)
            .find(|&i| {
                self.slots.get(i).is_some_and(|s| {
                    s.start != 0 && s.start <= pos && pos < s.start + u64::from(s.frames)
                })
            })
    }

    fn payload(&self, i: usize) -> &[u8] {
        self.slots
            .get(i)
            .and_then(|s| s.bytes.get(..s.len as usize))
            .unwrap_or(&[])
    }

    /// Decodes the stored packet whose frames cover `pos` into `scratch`.
    /// `None` when no packet covers `pos`; `Some(Err)` when it is corrupt.
    pub fn decode(&mut self, pos: u64) -> Option<Result<Decoded, OpusError>> {
        let i = self.covering(pos)?;
        let start = self.slots.get(i).map_or(0, |s| s.start);
        let payload = self
            .slots
            .get(i)
            .map_or(&[][..], |s| s.bytes.get(..s.len as usize).unwrap_or(&[]));
        let result = self
            .decoder
            .decode(payload, &mut self.scratch)
            .map(|frames| Decoded {
                start,
                frames,
                head: 0,
            });
        Some(result)
    }

    /// The decoder's concealment of `frames` missing frames at `pos` (a
    /// multiple of `MIN_FRAME`, at most 120 ms).
    pub fn conceal(&mut self, pos: u64, frames: usize) -> Result<Decoded, OpusError> {
        let ch = self.decoder.channels() as usize;
        let out = self
            .scratch
            .get_mut(..frames.min(MAX_PACKET_FRAMES) * ch)
            .unwrap_or(&mut []);
        let frames = self.decoder.conceal(out)?;
        Ok(Decoded {
            start: pos,
            frames,
            head: 0,
        })
    }

    /// Rebuilds the `frames` missing frames at `pos` from the in-band FEC
    /// of the stored packet that starts right after them. Returns whether
    /// that packet carries FEC (its LBRR flag) for all of them; if not,
    /// libopus conceals instead, and the frames count as concealed.
    pub fn recover(&mut self, pos: u64, frames: usize) -> Result<(Decoded, bool), OpusError> {
        let ch = self.decoder.channels() as usize;
        let next = self.starting_at(pos + frames as u64);
        let Some(i) = next else {
            return self.conceal(pos, frames).map(|d| (d, false));
        };
        let payload = self.payload(i);
        // libopus rebuilds from FEC only a whole frame of the next
        // packet's length; a shorter rest of a hole (the start of it was
        // already concealed while the buffer starved) it conceals.
        let whole = self.slots.get(i).map_or(0, |s| s.frames as usize) <= frames;
        let fec = whole && opus::carries_fec(payload);
        // Split borrows: the payload lives in `slots`, the output in `scratch`.
        let Some(slot) = self.slots.get(i) else {
            return self.conceal(pos, frames).map(|d| (d, false));
        };
        let payload = slot.bytes.get(..slot.len as usize).unwrap_or(&[]);
        let out = self
            .scratch
            .get_mut(..frames.min(MAX_PACKET_FRAMES) * ch)
            .unwrap_or(&mut []);
        let frames = self.decoder.recover(payload, out)?;
        Ok((
            Decoded {
                start: pos,
                frames,
                head: 0,
            },
            fec,
        ))
    }

    /// Interleaved samples of the last decode.
    pub fn scratch(&self) -> &[i16] {
        &self.scratch
    }

    pub fn channels(&self) -> u16 {
        self.decoder.channels()
    }
}
