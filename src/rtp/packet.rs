//! The packet slot: one received datagram after validation, as the net
//! thread hands it to the playout thread through a fixed `heapless::spsc`
//! queue. Fixed size, so moving packets between threads never allocates.
//! The payload stays encoded; the playout side decodes it, so that codecs
//! whose loss concealment lives in the decoder (Opus) fit later.

use crate::audio::format::StreamFormat;

/// Largest payload a slot holds: 4 KiB covers L16 48 kHz stereo at 20 ms
/// ptime (3840 bytes, already beyond one Ethernet frame), and every G.711
/// ptime up to 512 ms; larger datagrams are dropped and counted. Slots are
/// copied through the packet queue, so their size is its memory.
pub const MAX_PAYLOAD: usize = 4096;

/// Largest datagram read from the socket (payload plus RTP header, CSRCs,
/// extension and padding). Anything longer is truncated by the kernel and
/// detected as such.
pub const MAX_DATAGRAM: usize = MAX_PAYLOAD + 1024;

#[derive(Clone, Debug)]
pub struct Packet {
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

    /// Frames of audio in the payload.
    pub fn frames(&self) -> usize {
        self.payload.len() / self.format.bytes_per_frame().max(1)
    }
}
