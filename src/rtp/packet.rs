//! The packet slot: one received datagram after validation, as the net
//! thread hands it to the playout thread through a fixed `heapless::spsc`
//! queue. Fixed size, so moving packets between threads never allocates.
//! The payload stays encoded; the playout side decodes it, so that codecs
//! whose loss concealment lives in the decoder (Opus) fit later.
//!
//! A slot also carries an RTCP BYE that arrived on the RTP port (RFC 5761
//! mux): `kind` tells it apart, and its payload is the BYE's SSRC list, so
//! the playout side learns at once that a sender has left.

use crate::audio::format::{Encoding, StreamFormat};
use crate::audio::opus;

/// Largest payload a slot holds: 4 KiB covers L16 48 kHz stereo at 20 ms
/// ptime (3840 bytes, already beyond one Ethernet frame), and every G.711
/// ptime up to 512 ms; larger datagrams are dropped and counted. Slots are
/// copied through the packet queue, so their size is its memory.
pub const MAX_PAYLOAD: usize = 4096;

/// Largest datagram read from the socket (payload plus RTP header, CSRCs,
/// extension and padding). Anything longer is truncated by the kernel and
/// detected as such.
pub const MAX_DATAGRAM: usize = MAX_PAYLOAD + 1024;

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PacketKind {
    /// Audio: RTP or headerless PCM.
    #[default]
    Audio,
    /// An RTCP BYE (RFC 3550 section 6.6): `ssrc` is the first source it
    /// names, `payload` all of them (big-endian, 4 bytes each); the other
    /// fields carry nothing.
    Bye,
}

#[derive(Clone, Debug)]
pub struct Packet {
    /// Audio, or an RTCP BYE.
    pub kind: PacketKind,
    /// Arrival time on the monotonic clock, in nanoseconds.
    pub arrival_ns: u64,
    /// RTP synchronisation source; 0 for headerless PCM.
    pub ssrc: u32,
    /// RTP sequence number; for headerless PCM, the net thread's own count.
    pub seq: u16,
    /// RTP timestamp of the first frame, in `format.rate` units; for
    /// headerless PCM, frames counted by the net thread (see `sequential`).
    pub timestamp: u32,
    /// RTP marker bit: first packet of a talkspurt for audio.
    pub marker: bool,
    /// RTP payload type (the raw stream uses 255, which no RTP packet has).
    pub payload_type: u8,
    /// How to decode `payload`, resolved from the payload type.
    pub format: StreamFormat,
    /// Headerless PCM: `seq` and `timestamp` were made up by the receiver,
    /// not sent, so they carry no timing; the jitter buffer appends such
    /// packets in arrival order instead of placing them by timestamp.
    pub sequential: bool,
    /// The encoded payload, a whole number of frames (checked by the parser).
    pub payload: heapless::Vec<u8, MAX_PAYLOAD>,
}

/// Payload type given to headerless PCM packets.
pub const RAW_PAYLOAD_TYPE: u8 = 255;

impl Packet {
    pub fn empty(format: StreamFormat) -> Self {
        Packet {
            kind: PacketKind::Audio,
            arrival_ns: 0,
            ssrc: 0,
            seq: 0,
            timestamp: 0,
            marker: false,
            payload_type: RAW_PAYLOAD_TYPE,
            format,
            sequential: false,
            payload: heapless::Vec::new(),
        }
    }

    /// Frames of audio in the payload (for Opus, from its TOC byte; 0 for
    /// an empty or malformed Opus payload, which the parser refuses).
    pub fn frames(&self) -> usize {
        match self.format.encoding {
            Encoding::Opus => opus::packet_frames(&self.payload).unwrap_or(0),
            _ => self.payload.len() / self.format.bytes_per_frame().max(1),
        }
    }

    /// Copies `other` into this slot without building a temporary: the
    /// payload is copied up to its length, not the slot's capacity.
    pub fn copy_from(&mut self, other: &Packet) {
        self.kind = other.kind;
        self.arrival_ns = other.arrival_ns;
        self.ssrc = other.ssrc;
        self.seq = other.seq;
        self.timestamp = other.timestamp;
        self.marker = other.marker;
        self.payload_type = other.payload_type;
        self.format = other.format;
        self.sequential = other.sequential;
        self.payload.clear();
        // Both hold at most MAX_PAYLOAD bytes: this cannot fail.
        let _ = self.payload.extend_from_slice(&other.payload);
    }

    /// The sources an RTCP BYE names (nothing for an audio packet).
    pub fn bye_ssrcs(&self) -> impl Iterator<Item = u32> + '_ {
        let list = match self.kind {
            PacketKind::Bye => self.payload.as_slice(),
            PacketKind::Audio => &[],
        };
        list.chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok().map(u32::from_be_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_from_copies_every_field() {
        let mut a = Packet::empty(StreamFormat::TUTORIAL);
        a.kind = PacketKind::Bye;
        a.arrival_ns = 5;
        a.ssrc = 6;
        a.seq = 7;
        a.timestamp = 8;
        a.marker = true;
        a.payload_type = 9;
        a.sequential = true;
        a.payload
            .extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2])
            .unwrap();
        let mut b = Packet::empty(StreamFormat::TUTORIAL);
        b.payload.extend_from_slice(&[9; 100]).unwrap();
        b.copy_from(&a);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(b.bye_ssrcs().collect::<Vec<_>>(), [1, 2]);
        b.kind = PacketKind::Audio;
        assert_eq!(b.bye_ssrcs().count(), 0);
    }
}
