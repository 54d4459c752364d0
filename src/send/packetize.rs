//! Packetizer. Input: one packet's worth of interleaved `i16` frames in the
//! stream's format. Output: one datagram — an RTP header written by
//! [`crate::rtp::RtpHeader::write`] (RFC 3550, version 2, no padding,
//! extension or CSRCs) followed by the encoded
//! payload, or the encoded payload alone for headerless PCM (`--raw`).
//! Policy: the sequence number grows by one and the timestamp by the
//! frames sent, both wrapping; the marker bit is set on the first packet
//! (one talkspurt), and again after a gap the caller reports with
//! `skip_frames` (the timestamp then skips the missing frames). A short packet (the end of a file) is sent as it
//! is, never padded, so the receiver gets exactly the source's frames.
//! Opus (RFC 7587) is the exception: the encoder (made in `new`) takes
//! whole frames only, so a short last packet is padded with silence, and
//! the payload is the encoder's packet for exactly one ptime.

use core::fmt;

use crate::audio::codec;
use crate::audio::format::{Encoding, StreamFormat};
use crate::audio::opus::{self, OpusError};
use crate::rtp::packet::MAX_PAYLOAD;
use crate::rtp::{is_payload_type, RtpHeader, HEADER_LEN};

/// How packets are framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// RTP with this payload type.
    Rtp { payload_type: u8 },
    /// Headerless PCM, as the tutorial's sender sends it.
    Raw,
}

/// Everything the packetizer needs, fixed at startup.
#[derive(Clone, Copy, Debug)]
pub struct PacketizerConfig {
    /// Encoding, rate and channels of the stream on the wire.
    pub format: StreamFormat,
    pub framing: Framing,
    /// Frames per packet: the ptime in frames at the stream's rate.
    pub frames_per_packet: usize,
    /// RTP synchronisation source (random, RFC 3550 §8).
    pub ssrc: u32,
    /// Sequence number of the first packet (random, RFC 3550 §5.1).
    pub first_seq: u16,
    /// RTP timestamp of the first packet (random, RFC 3550 §5.1).
    pub first_timestamp: u32,
    /// Opus encoder settings (bitrate, FEC, loss); used when the format is
    /// Opus (its channels and frame length come from the format and ptime).
    pub opus: opus::EncoderConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A packet of `bytes` payload would not fit the receiver's packet slot.
    TooLarge { bytes: usize },
    /// Zero frames per packet.
    Empty,
    /// The payload type is not a 7-bit RTP payload type.
    PayloadType(u8),
    /// The Opus encoder refused its settings.
    Opus(OpusError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { bytes } => write!(
                f,
                "a packet would carry {bytes} bytes of audio, more than the {MAX_PAYLOAD} a receiver \
                 accepts: lower --ptime, --rate or --channels"
            ),
            Error::Empty => write!(f, "--ptime gives less than one frame per packet: raise it"),
            Error::Opus(e) => write!(f, "{e}"),
            Error::PayloadType(pt) => {
                write!(f, "payload type {pt} is not an RTP payload type (0 to 127)")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Turns frames into datagrams; keeps the RTP sequence and timestamp.
#[derive(Debug)]
pub struct Packetizer {
    config: PacketizerConfig,
    seq: u16,
    timestamp: u32,
    first: bool,
    /// Opus: the encoder, and one frame of samples to pad a short packet.
    opus: Option<(opus::Encoder, Vec<i16>)>,
}

impl Packetizer {
    pub fn new(config: &PacketizerConfig) -> Result<Packetizer, Error> {
        if config.frames_per_packet == 0 {
            return Err(Error::Empty);
        }
        let bytes = config.frames_per_packet * config.format.bytes_per_frame();
        let encoder = if config.format.encoding == Encoding::Opus {
            let settings = opus::EncoderConfig {
                channels: config.format.channels,
                frame_frames: config.frames_per_packet,
                ..config.opus
            };
            let encoder = opus::Encoder::new(&settings).map_err(Error::Opus)?;
            let pad = vec![0; config.frames_per_packet * usize::from(config.format.channels)];
            Some((encoder, pad))
        } else {
            None
        };
        if bytes > MAX_PAYLOAD {
            return Err(Error::TooLarge { bytes });
        }
        if let Framing::Rtp { payload_type } = config.framing {
            if !is_payload_type(payload_type) {
                return Err(Error::PayloadType(payload_type));
            }
        }
        Ok(Packetizer {
            config: *config,
            seq: config.first_seq,
            timestamp: config.first_timestamp,
            first: true,
            opus: encoder,
        })
    }

    /// The largest datagram `packetize` writes: size the output buffer so.
    pub fn max_datagram_len(&self) -> usize {
        let payload = match self.opus {
            Some(_) => opus::MAX_PACKET_BYTES,
            None => self.config.frames_per_packet * self.config.format.bytes_per_frame(),
        };
        self.header_len() + payload
    }

    /// The RTP timestamp the next packet carries.
    pub fn next_timestamp(&self) -> u32 {
        self.timestamp
    }

    pub fn frames_per_packet(&self) -> usize {
        self.config.frames_per_packet
    }

    fn header_len(&self) -> usize {
        match self.config.framing {
            Framing::Rtp { .. } => HEADER_LEN,
            Framing::Raw => 0,
        }
    }

    /// Moves the timestamp on by `frames` that will not be sent (the
    /// source was away) and marks the next packet as the start of a new
    /// talkspurt, as RFC 3551 §4.1 has it for audio after a silence.
    pub fn skip_frames(&mut self, frames: u32) {
        self.timestamp = self.timestamp.wrapping_add(frames);
        self.first = true;
    }

    /// Writes the next datagram for `samples` (interleaved, whole frames,
    /// at most `frames_per_packet`; extra samples are ignored) into `out`
    /// and returns its length. `out` shorter than `max_datagram_len()`
    /// gets a truncated payload, so callers size it once at startup.
    pub fn packetize(&mut self, samples: &[i16], out: &mut [u8]) -> usize {
        let channels = usize::from(self.config.format.channels.max(1));
        let frames = (samples.len() / channels).min(self.config.frames_per_packet);
        let samples = &samples[..frames * channels];
        let header = match self.config.framing {
            Framing::Rtp { payload_type } => {
                let fields = RtpHeader {
                    marker: self.first,
                    payload_type,
                    sequence: self.seq,
                    timestamp: self.timestamp,
                    ssrc: self.config.ssrc,
                    ..RtpHeader::default()
                };
                // `new` checked the payload type, so only a buffer too
                // short for the header fails here.
                match fields.write(out) {
                    Ok(n) => n,
                    Err(_) => return 0,
                }
            }
            Framing::Raw => 0,
        };
        let encoding = match (self.config.framing, self.config.format.encoding) {
            // RTP carries L16 in network byte order whatever the caller said.
            (Framing::Rtp { .. }, Encoding::S16Le) => Encoding::L16,
            (_, e) => e,
        };
        let (written, frames) = match self.opus.as_mut() {
            Some((encoder, pad)) => {
                // Whole frames only: a short last packet is padded.
                let input = if frames < self.config.frames_per_packet {
                    pad.fill(0);
                    if let Some(dst) = pad.get_mut(..samples.len()) {
                        dst.copy_from_slice(samples);
                    }
                    &pad[..]
                } else {
                    samples
                };
                let room = out.len().min(header + opus::MAX_PACKET_BYTES);
                // Sizes are fixed at start-up, so encoding cannot fail;
                // if it did, the packet goes out empty (a DTX keep-alive).
                let n = out
                    .get_mut(header..room)
                    .map_or(0, |dst| encoder.encode(input, dst).unwrap_or(0));
                (n, self.config.frames_per_packet)
            }
            None => (codec::encode(encoding, samples, &mut out[header..]), frames),
        };
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        // RTP timestamps count sampling instants, i.e. frames (RFC 3551 §4.1).
        self.timestamp = self.timestamp.wrapping_add(frames as u32);
        header + written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(encoding: Encoding, rate: u32, channels: u16, framing: Framing) -> PacketizerConfig {
        let format = StreamFormat {
            encoding,
            rate,
            channels,
        };
        PacketizerConfig {
            format,
            framing,
            frames_per_packet: format.frames_for_ms(20),
            ssrc: 0xDEAD_BEEF,
            first_seq: 65_534,
            first_timestamp: u32::MAX - 100,
            opus: opus::EncoderConfig::default(),
        }
    }

    fn ramp(n: usize) -> Vec<i16> {
        (0..n).map(|i| (i as i16).wrapping_mul(257)).collect()
    }

    #[test]
    fn sizes_per_ptime_and_codec() {
        let cases = [
            (
                Encoding::L16,
                48_000,
                2,
                Framing::Rtp { payload_type: 96 },
                12 + 960 * 4,
            ),
            (
                Encoding::L16,
                44_100,
                1,
                Framing::Rtp { payload_type: 96 },
                12 + 882 * 2,
            ),
            (
                Encoding::Pcmu,
                8000,
                1,
                Framing::Rtp { payload_type: 0 },
                12 + 160,
            ),
            (
                Encoding::Pcma,
                8000,
                1,
                Framing::Rtp { payload_type: 8 },
                12 + 160,
            ),
            (Encoding::S16Le, 8000, 1, Framing::Raw, 320),
        ];
        for (enc, rate, ch, framing, len) in cases {
            let c = config(enc, rate, ch, framing);
            let mut p = Packetizer::new(&c).unwrap();
            assert_eq!(p.max_datagram_len(), len, "{enc:?} {rate} {ch}");
            let mut out = vec![0u8; len];
            let samples = ramp(c.frames_per_packet * usize::from(ch));
            assert_eq!(p.packetize(&samples, &mut out), len);
        }
    }

    #[test]
    fn rtp_header_fields() {
        let c = config(Encoding::Pcmu, 8000, 1, Framing::Rtp { payload_type: 0 });
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = [0u8; 172];
        let samples = ramp(160);
        p.packetize(&samples, &mut out);
        assert_eq!(out[0], 0x80);
        assert_eq!(out[1], 0x80); // marker + PT 0
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 65_534);
        assert_eq!(
            u32::from_be_bytes([out[4], out[5], out[6], out[7]]),
            u32::MAX - 100
        );
        assert_eq!(
            u32::from_be_bytes([out[8], out[9], out[10], out[11]]),
            0xDEAD_BEEF
        );
        for (i, &s) in samples.iter().enumerate() {
            assert_eq!(out[12 + i], codec::linear_to_ulaw(s));
        }
    }

    #[test]
    fn seq_and_timestamp_wrap_marker_only_first() {
        let c = config(Encoding::L16, 8000, 2, Framing::Rtp { payload_type: 97 });
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = vec![0u8; p.max_datagram_len()];
        let samples = ramp(320);
        let mut seqs = Vec::new();
        let mut stamps = Vec::new();
        for k in 0..4 {
            p.packetize(&samples, &mut out);
            assert_eq!(out[1] & 0x80 != 0, k == 0, "marker on packet {k}");
            assert_eq!(out[1] & 0x7F, 97);
            seqs.push(u16::from_be_bytes([out[2], out[3]]));
            stamps.push(u32::from_be_bytes([out[4], out[5], out[6], out[7]]));
        }
        assert_eq!(seqs, [65_534, 65_535, 0, 1]);
        let first = u32::MAX - 100;
        assert_eq!(
            stamps,
            [
                first,
                first.wrapping_add(160),
                first.wrapping_add(320),
                first.wrapping_add(480)
            ]
        );
        assert!(stamps[1] < stamps[0], "the timestamp wrapped");
    }

    #[test]
    fn short_last_packet_advances_by_its_frames() {
        let c = config(Encoding::L16, 8000, 1, Framing::Rtp { payload_type: 96 });
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = vec![0u8; p.max_datagram_len()];
        assert_eq!(p.packetize(&ramp(50), &mut out), 12 + 100);
        p.packetize(&ramp(160), &mut out);
        let ts = u32::from_be_bytes([out[4], out[5], out[6], out[7]]);
        assert_eq!(ts, (u32::MAX - 100).wrapping_add(50));
    }

    #[test]
    fn skipped_frames_move_timestamp_and_mark_next() {
        let c = config(Encoding::Pcmu, 8000, 1, Framing::Rtp { payload_type: 0 });
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = [0u8; 172];
        let samples = ramp(160);
        p.packetize(&samples, &mut out);
        p.packetize(&samples, &mut out);
        assert_eq!(out[1] & 0x80, 0);
        p.skip_frames(8000);
        p.packetize(&samples, &mut out);
        assert_eq!(out[1] & 0x80, 0x80, "marker after the gap");
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 0, "seq does not skip");
        let ts = u32::from_be_bytes([out[4], out[5], out[6], out[7]]);
        assert_eq!(ts, (u32::MAX - 100).wrapping_add(320 + 8000));
        p.packetize(&samples, &mut out);
        assert_eq!(out[1] & 0x80, 0);
    }

    /// What we write, the receiver's parser reads back field for field.
    #[test]
    fn header_round_trips_through_rtp_parser() {
        let c = config(Encoding::L16, 48_000, 2, Framing::Rtp { payload_type: 96 });
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = vec![0u8; p.max_datagram_len()];
        let samples = ramp(960 * 2);
        for k in 0..3u16 {
            let len = p.packetize(&samples, &mut out);
            let (h, payload) = crate::rtp::parse(&out[..len]).unwrap();
            assert_eq!(h.marker, k == 0);
            assert_eq!(h.payload_type, 96);
            assert_eq!(h.sequence, 65_534u16.wrapping_add(k));
            assert_eq!(
                h.timestamp,
                (u32::MAX - 100).wrapping_add(960 * u32::from(k))
            );
            assert_eq!(h.ssrc, 0xDEAD_BEEF);
            assert_eq!((h.csrc_count, h.padding, h.extension), (0, false, false));
            assert_eq!(payload.len(), 960 * 4);
        }
    }

    #[test]
    fn raw_is_s16le_without_header() {
        let c = config(Encoding::S16Le, 8000, 1, Framing::Raw);
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = [0u8; 320];
        let samples = ramp(160);
        assert_eq!(p.packetize(&samples, &mut out), 320);
        for (i, &s) in samples.iter().enumerate() {
            assert_eq!([out[2 * i], out[2 * i + 1]], s.to_le_bytes());
        }
    }

    #[test]
    fn rtp_l16_is_big_endian() {
        let c = config(Encoding::L16, 8000, 1, Framing::Rtp { payload_type: 96 });
        let mut p = Packetizer::new(&c).unwrap();
        let mut out = [0u8; 12 + 320];
        p.packetize(&[0x1234, -2], &mut out);
        assert_eq!(&out[12..16], &[0x12, 0x34, 0xFF, 0xFE]);
    }

    #[test]
    fn too_large_refused() {
        let mut c = config(Encoding::L16, 192_000, 8, Framing::Rtp { payload_type: 96 });
        c.frames_per_packet = 192 * 40;
        assert!(matches!(Packetizer::new(&c), Err(Error::TooLarge { .. })));
        c.frames_per_packet = 0;
        assert_eq!(Packetizer::new(&c).unwrap_err(), Error::Empty);
    }

    #[test]
    fn opus_packets_are_one_encoded_frame_each_and_pad_the_last() {
        let c = config(Encoding::Opus, 48_000, 2, Framing::Rtp { payload_type: 97 });
        let mut p = Packetizer::new(&c).unwrap();
        assert_eq!(p.max_datagram_len(), 12 + opus::MAX_PACKET_BYTES);
        let mut out = vec![0u8; p.max_datagram_len()];
        let frame: Vec<i16> = (0..960 * 2)
            .map(|i| ((i as f64 * 0.05).sin() * 8000.0) as i16)
            .collect();
        let mut stamps = Vec::new();
        for k in 0..3 {
            let samples = if k == 2 { &frame[..500] } else { &frame[..] };
            let n = p.packetize(samples, &mut out);
            // 96 kbit/s, 20 ms: about 240 bytes.
            assert!((100..=400).contains(&(n - 12)), "{n}");
            assert_eq!(opus::packet_frames(&out[12..n]), Some(960));
            stamps.push(u32::from_be_bytes([out[4], out[5], out[6], out[7]]));
        }
        assert_eq!(stamps[1].wrapping_sub(stamps[0]), 960);
        assert_eq!(stamps[2].wrapping_sub(stamps[1]), 960);
    }

    #[test]
    fn opus_refuses_a_frame_length_it_cannot_encode() {
        let mut c = config(Encoding::Opus, 48_000, 2, Framing::Rtp { payload_type: 97 });
        c.frames_per_packet = 1000;
        assert!(matches!(Packetizer::new(&c), Err(Error::Opus(_))));
    }
}
