//! RTP (RFC 3550) and headerless PCM datagrams → packet slots.
//!
//! Input: one UDP datagram as received, and its arrival time. Output: a
//! filled [`Packet`] slot (header fields, resolved stream format, payload
//! still encoded), or a [`ParseError`] naming why the datagram was dropped;
//! each variant maps onto one of the net stage's counters.
//!
//! Policy: the header is validated completely (version 2, CSRC list, header
//! extension skipped, padding removed) and anything truncated or
//! inconsistent is rejected, never guessed at; RTCP sharing the port
//! (RFC 5761) is recognised and reported as such, except a BYE, which
//! `parse_bye_into` turns into a slot of its own kind so the playout side
//! can let the leaving source go at once. This stage does not
//! judge order: late, lost, duplicate and reordered packets pass through
//! untouched with their sequence number and timestamp, for the jitter
//! buffer to place. Headerless PCM has no header to tell order, so the
//! parser numbers datagrams in arrival order and marks them `sequential`.
//!
//! With a key, [`srtp`] authenticates and decrypts each datagram in the
//! net thread before it reaches this parser, and protects each packet the
//! sender's packetizer wrote.

pub mod header;
pub mod packet;
pub mod rtcp;
pub mod sdp;
pub mod srtp;
pub mod stats;

use core::fmt;

pub use header::{is_payload_type, parse, RtpError, RtpHeader, HEADER_LEN};

use crate::audio::format::{Encoding, PayloadMap, StreamFormat};
use crate::rtp::packet::{Packet, PacketKind, MAX_PAYLOAD, RAW_PAYLOAD_TYPE};

/// What the socket carries: RTP with a payload-type table, or headerless
/// PCM of one fixed format.
// Built once at startup and moved into the parser: the size difference
// between the variants costs nothing, a Box would cost an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum InputMode {
    Rtp(PayloadMap),
    Raw(StreamFormat),
}

/// Why a datagram was dropped; each variant is one counter of the net
/// stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not a valid RTP packet (never holds `RtpError::Rtcp`, which is
    /// reported as `Rtcp`).
    Malformed(RtpError),
    UnknownPayloadType(u8),
    /// RTCP on the RTP port: ignored, counted apart from malformed input.
    Rtcp,
    /// Payload longer than a packet slot holds (`MAX_PAYLOAD`).
    TooLarge(usize),
    NotWholeFrames {
        len: usize,
        frame_bytes: usize,
    },
    /// No audio in the datagram.
    Empty,
    /// An Opus payload whose TOC byte is malformed or says more than 120 ms.
    BadOpus(usize),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Malformed(e) => write!(
                f,
                "malformed RTP packet: {e}; check that the sender sends RTP to this port"
            ),
            ParseError::UnknownPayloadType(pt) => write!(
                f,
                "payload type {pt} is not mapped: add --rtp-format {pt}=ENCODING/RATE/CHANNELS \
                 as the sender announces it (e.g. --rtp-format {pt}=L16/48000/2)"
            ),
            ParseError::Rtcp => write!(f, "RTCP packet on the RTP port: ignored"),
            ParseError::TooLarge(len) => write!(
                f,
                "payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte packet limit: \
                 lower the sender's packet time (ptime)"
            ),
            ParseError::NotWholeFrames { len, frame_bytes } => write!(
                f,
                "payload of {len} bytes is not a whole number of {frame_bytes}-byte frames: \
                 check that --raw / --rtp-format match the sender's format and channels"
            ),
            ParseError::Empty => write!(f, "packet without audio payload: check the sender"),
            ParseError::BadOpus(len) => write!(
                f,
                "Opus payload of {len} bytes is malformed (RFC 6716 TOC): check that the \
                 payload type mapped to OPUS carries Opus"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

impl From<RtpError> for ParseError {
    fn from(e: RtpError) -> Self {
        match e {
            RtpError::Rtcp { .. } => ParseError::Rtcp,
            e => ParseError::Malformed(e),
        }
    }
}

/// Turns datagrams into packet slots. Keeps the counters that number
/// headerless PCM datagrams; holds no buffers of its own.
#[derive(Clone, Debug)]
pub struct PacketParser {
    mode: InputMode,
    raw_seq: u16,
    raw_timestamp: u32,
}

impl PacketParser {
    pub fn new(mode: InputMode) -> Self {
        PacketParser {
            mode,
            raw_seq: 0,
            raw_timestamp: 0,
        }
    }

    pub fn mode(&self) -> &InputMode {
        &self.mode
    }

    /// Validates `datagram` and fills `out` (every field is overwritten on
    /// success; on error `out` holds no meaningful packet).
    pub fn parse_into(
        &mut self,
        datagram: &[u8],
        arrival_ns: u64,
        out: &mut Packet,
    ) -> Result<(), ParseError> {
        match &self.mode {
            InputMode::Rtp(map) => {
                let (header, payload) = parse(datagram)?;
                let format = map
                    .get(header.payload_type)
                    .ok_or(ParseError::UnknownPayloadType(header.payload_type))?;
                fill_payload(out, payload, format)?;
                out.kind = PacketKind::Audio;
                out.arrival_ns = arrival_ns;
                out.ssrc = header.ssrc;
                out.seq = header.sequence;
                out.timestamp = header.timestamp;
                out.marker = header.marker;
                out.payload_type = header.payload_type;
                out.format = format;
                out.sequential = false;
                Ok(())
            }
            InputMode::Raw(format) => {
                let format = *format;
                let frames = fill_payload(out, datagram, format)?;
                out.kind = PacketKind::Audio;
                out.arrival_ns = arrival_ns;
                out.ssrc = 0;
                out.seq = self.raw_seq;
                out.timestamp = self.raw_timestamp;
                out.marker = false;
                out.payload_type = RAW_PAYLOAD_TYPE;
                out.format = format;
                out.sequential = true;
                self.raw_seq = self.raw_seq.wrapping_add(1);
                // Timestamps wrap like RTP's; frames ≤ MAX_PAYLOAD fits u32.
                self.raw_timestamp = self.raw_timestamp.wrapping_add(frames as u32);
                Ok(())
            }
        }
    }
}

impl PacketParser {
    /// An RTCP datagram on the RTP port (one that `parse_into` refused as
    /// `ParseError::Rtcp`): if it carries a BYE, fills `out` as a
    /// `PacketKind::Bye` slot (its SSRC list as payload) and returns Ok;
    /// any other RTCP, or an inconsistent compound, stays
    /// `Err(ParseError::Rtcp)`. Headerless PCM has no RTCP: always Err.
    pub fn parse_bye_into(
        &self,
        datagram: &[u8],
        arrival_ns: u64,
        out: &mut Packet,
    ) -> Result<(), ParseError> {
        if !matches!(self.mode, InputMode::Rtp(_)) {
            return Err(ParseError::Rtcp);
        }
        let list = rtcp::bye_sources(datagram).ok_or(ParseError::Rtcp)?;
        out.payload.clear();
        out.payload
            .extend_from_slice(list)
            .map_err(|_| ParseError::Rtcp)?;
        out.kind = PacketKind::Bye;
        out.arrival_ns = arrival_ns;
        let first = out.bye_ssrcs().next().unwrap_or(0);
        out.ssrc = first;
        out.seq = 0;
        out.timestamp = 0;
        out.marker = false;
        out.payload_type = rtcp::BYE;
        out.sequential = false;
        Ok(())
    }
}

/// Checks the payload and copies it into the slot; returns its frames.
fn fill_payload(
    out: &mut Packet,
    payload: &[u8],
    format: StreamFormat,
) -> Result<usize, ParseError> {
    let len = payload.len();
    let opus = format.encoding == Encoding::Opus;
    // An empty Opus payload is a DTX keep-alive (no frames): the stream
    // is alive, nothing is played.
    if len == 0 && !opus {
        return Err(ParseError::Empty);
    }
    if len > MAX_PAYLOAD {
        return Err(ParseError::TooLarge(len));
    }
    let frames = if opus {
        crate::audio::opus::packet_frames(payload).ok_or(ParseError::BadOpus(len))?
    } else {
        format.whole_frames(len).ok_or(ParseError::NotWholeFrames {
            len,
            frame_bytes: format.bytes_per_frame(),
        })?
    };
    out.payload.clear();
    out.payload
        .extend_from_slice(payload)
        .map_err(|_| ParseError::TooLarge(len))?;
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::Encoding;

    const L16_STEREO_48K: StreamFormat = StreamFormat {
        encoding: Encoding::L16,
        rate: 48_000,
        channels: 2,
    };

    /// Builds an RTP datagram byte by byte, independently of `write`.
    fn datagram(
        b0_flags: u8,
        pt: u8,
        csrcs: &[u32],
        ext_words: Option<u16>,
        payload: &[u8],
        pad: u8,
    ) -> Vec<u8> {
        let mut d = vec![0x80 | b0_flags | csrcs.len() as u8, pt];
        d.extend_from_slice(&0x1234u16.to_be_bytes());
        d.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        d.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        for c in csrcs {
            d.extend_from_slice(&c.to_be_bytes());
        }
        if let Some(w) = ext_words {
            d.extend_from_slice(&0xbedeu16.to_be_bytes());
            d.extend_from_slice(&w.to_be_bytes());
            d.extend(std::iter::repeat(0xee).take(4 * w as usize));
        }
        d.extend_from_slice(payload);
        if pad > 0 {
            d.extend(std::iter::repeat(0).take(pad as usize - 1));
            d.push(pad);
        }
        d
    }

    fn rtp_parser() -> PacketParser {
        let mut map = PayloadMap::default();
        map.set(96, L16_STEREO_48K);
        PacketParser::new(InputMode::Rtp(map))
    }

    fn slot() -> Packet {
        Packet::empty(StreamFormat::TUTORIAL)
    }

    #[test]
    fn malformed_packets_table() {
        let mut cases: Vec<(&str, Vec<u8>, ParseError)> = vec![(
            "empty",
            vec![],
            ParseError::Malformed(RtpError::TooShort { len: 0 }),
        )];
        for n in 1..12 {
            let mut d = datagram(0, 0, &[], None, &[], 0);
            d.truncate(n);
            cases.push((
                "truncated header",
                d,
                ParseError::Malformed(RtpError::TooShort { len: n }),
            ));
        }
        for v in [0u8, 1, 3] {
            let mut d = datagram(0, 0, &[], None, &[0; 160], 0);
            d[0] = (d[0] & 0x3f) | (v << 6);
            cases.push(("version", d, ParseError::Malformed(RtpError::Version(v))));
        }
        let mut d = datagram(0, 0, &[1, 2], None, &[], 0);
        d[0] |= 0x0f; // 15 CSRCs announced, 2 present
        let len = d.len();
        cases.push((
            "csrc count beyond length",
            d,
            ParseError::Malformed(RtpError::CsrcTruncated {
                csrc_count: 15,
                len,
            }),
        ));
        let mut d = datagram(0x10, 0, &[], Some(1), &[], 0);
        d[15] = 9; // extension claims 9 words, 1 present
        let len = d.len();
        cases.push((
            "extension length beyond",
            d,
            ParseError::Malformed(RtpError::ExtensionTruncated { words: 9, len }),
        ));
        let mut d = datagram(0x10, 0, &[], None, &[], 0);
        d.extend_from_slice(&[0xbe, 0xde]); // extension header cut in half
        cases.push((
            "extension header truncated",
            d,
            ParseError::Malformed(RtpError::ExtensionTruncated { words: 0, len: 14 }),
        ));
        let mut d = datagram(0x20, 0, &[], None, &[1; 160], 0);
        d.push(0);
        cases.push(("padding 0", d, ParseError::Malformed(RtpError::PaddingZero)));
        let mut d = datagram(0x20, 0, &[], None, &[1; 10], 0);
        d.push(200);
        cases.push((
            "padding > length",
            d,
            ParseError::Malformed(RtpError::PaddingTooLong {
                pad: 200,
                available: 11,
            }),
        ));
        cases.push((
            "padding bit, no byte after header",
            datagram(0x20, 0, &[], None, &[], 0),
            ParseError::Malformed(RtpError::PaddingTooLong {
                pad: 0,
                available: 0,
            }),
        ));
        cases.push((
            "padding eating the whole payload",
            datagram(0x20, 0, &[], None, &[], 8),
            ParseError::Empty,
        ));
        cases.push((
            "no payload",
            datagram(0, 0, &[], None, &[], 0),
            ParseError::Empty,
        ));
        cases.push((
            "odd L16 payload",
            datagram(0, 96, &[], None, &[0; 161], 0),
            ParseError::NotWholeFrames {
                len: 161,
                frame_bytes: 4,
            },
        ));
        cases.push((
            "oversize",
            datagram(0, 96, &[], None, &vec![0; MAX_PAYLOAD + 4], 0),
            ParseError::TooLarge(MAX_PAYLOAD + 4),
        ));
        cases.push((
            "unknown payload type",
            datagram(0, 97, &[], None, &[0; 160], 0),
            ParseError::UnknownPayloadType(97),
        ));
        cases.push((
            "reserved payload type 72 with marker reads as RTCP",
            datagram(0, 200, &[], None, &[0; 160], 0),
            ParseError::Rtcp,
        ));

        let mut p = rtp_parser();
        for (name, d, want) in cases {
            let mut out = slot();
            assert_eq!(p.parse_into(&d, 0, &mut out), Err(want), "case {name}");
        }
    }

    #[test]
    fn valid_with_csrcs_extension_and_padding() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1920).collect();
        let d = datagram(0x30, 0x80 | 96, &[7, 8, 9], Some(2), &payload, 3);
        let (h, p) = parse(&d).unwrap();
        assert_eq!(p, &payload[..]);
        assert_eq!(
            h,
            RtpHeader {
                marker: true,
                payload_type: 96,
                sequence: 0x1234,
                timestamp: 0xdead_beef,
                ssrc: 0x0102_0304,
                csrc_count: 3,
                padding: true,
                extension: true,
            }
        );
        let mut out = slot();
        rtp_parser().parse_into(&d, 42, &mut out).unwrap();
        assert_eq!(out.payload.as_slice(), &payload[..]);
        assert_eq!(out.format, L16_STEREO_48K);
        assert_eq!(out.frames(), 480);
        assert_eq!(out.arrival_ns, 42);
        assert!(out.marker && !out.sequential);
        assert_eq!(
            (out.seq, out.timestamp, out.ssrc),
            (0x1234, 0xdead_beef, 0x0102_0304)
        );
    }

    #[test]
    fn empty_extension_and_full_csrc_list() {
        let csrcs: Vec<u32> = (1..=15).collect();
        let d = datagram(0x10, 0, &csrcs, Some(0), &[0xff; 160], 0);
        let (h, p) = parse(&d).unwrap();
        assert_eq!((h.csrc_count, p.len()), (15, 160));
        assert!(p.iter().all(|&b| b == 0xff));
    }

    #[test]
    fn seq_and_timestamp_extremes() {
        let mut p = rtp_parser();
        for (seq, ts, ssrc) in [
            (0u16, 0u32, 0u32),
            (u16::MAX, u32::MAX, u32::MAX),
            (0x8000, 0x8000_0000, 1),
        ] {
            let h = RtpHeader {
                marker: false,
                payload_type: 8,
                sequence: seq,
                timestamp: ts,
                ssrc,
                ..RtpHeader::default()
            };
            let mut d = [0u8; HEADER_LEN + 160];
            h.write(&mut d).unwrap();
            let mut out = slot();
            p.parse_into(&d, 1, &mut out).unwrap();
            assert_eq!((out.seq, out.timestamp, out.ssrc), (seq, ts, ssrc));
            assert_eq!(out.format.encoding, Encoding::Pcma);
        }
    }

    #[test]
    fn rtcp_recognised_not_malformed() {
        for pt in 200..=204u8 {
            // A minimal RTCP receiver report: V=2, RC=0, length 1 word.
            let d = [0x80, pt, 0, 1, 1, 2, 3, 4];
            assert_eq!(parse(&d), Err(RtpError::Rtcp { packet_type: pt }));
            assert_eq!(
                rtp_parser().parse_into(&d, 0, &mut slot()),
                Err(ParseError::Rtcp)
            );
        }
        // Just outside the RTCP range stays RTP (PT 77 with marker = 205).
        let d = datagram(0, 205, &[], None, &[0; 8], 0);
        assert_eq!(parse(&d).map(|(h, _)| h.payload_type), Ok(77));
    }

    #[test]
    fn bye_becomes_a_slot_of_its_own_kind() {
        // A receiver report, then a BYE for two sources with a reason.
        let mut d = vec![0x80, 201, 0, 1, 0, 0, 0, 9];
        d.extend_from_slice(&[0x82, 203, 0, 3, 0, 0, 0, 7, 0, 0, 0, 8, 2, b'o', b'k', 0]);
        let mut p = rtp_parser();
        assert_eq!(p.parse_into(&d, 0, &mut slot()), Err(ParseError::Rtcp));
        let mut out = slot();
        p.parse_bye_into(&d, 77, &mut out).unwrap();
        assert_eq!(out.kind, PacketKind::Bye);
        assert_eq!((out.ssrc, out.arrival_ns), (7, 77));
        assert_eq!(out.bye_ssrcs().collect::<Vec<_>>(), [7, 8]);
        // The slot turns back into audio with the next RTP packet.
        let rtp = datagram(0, 96, &[], None, &[0; 8], 0);
        let mut q = rtp_parser();
        q.parse_into(&rtp, 1, &mut out).unwrap();
        assert_eq!(out.kind, PacketKind::Audio);
        // Other RTCP stays refused; headerless PCM never has RTCP.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 9];
        assert_eq!(p.parse_bye_into(&rr, 0, &mut out), Err(ParseError::Rtcp));
        let raw = PacketParser::new(InputMode::Raw(StreamFormat::TUTORIAL));
        assert_eq!(raw.parse_bye_into(&d, 0, &mut out), Err(ParseError::Rtcp));
    }

    #[test]
    fn raw_mode_counts_seq_and_frames() {
        let mut p = PacketParser::new(InputMode::Raw(StreamFormat::TUTORIAL));
        let mut out = slot();
        let mut want_ts = 0u32;
        for i in 0..3u16 {
            let d: Vec<u8> = (0..320).map(|b| (b as u8) ^ (i as u8)).collect();
            p.parse_into(&d, 1000 + i as u64, &mut out).unwrap();
            assert_eq!(out.seq, i);
            assert_eq!(out.timestamp, want_ts);
            assert!(out.sequential);
            assert_eq!(out.payload_type, RAW_PAYLOAD_TYPE);
            assert_eq!(out.payload.as_slice(), &d[..]);
            assert_eq!(out.arrival_ns, 1000 + i as u64);
            want_ts += 160;
        }
        // A bad datagram in between does not advance the count.
        assert_eq!(
            p.parse_into(&[0; 321], 0, &mut out),
            Err(ParseError::NotWholeFrames {
                len: 321,
                frame_bytes: 2
            })
        );
        assert_eq!(p.parse_into(&[], 0, &mut out), Err(ParseError::Empty));
        assert_eq!(
            p.parse_into(&vec![0; MAX_PAYLOAD + 2], 0, &mut out),
            Err(ParseError::TooLarge(MAX_PAYLOAD + 2))
        );
        p.parse_into(&[0; 2], 0, &mut out).unwrap();
        assert_eq!((out.seq, out.timestamp), (3, want_ts));
        assert_eq!(out.frames(), 1);
    }

    #[test]
    fn raw_mode_seq_wrap() {
        let mut p = PacketParser::new(InputMode::Raw(StreamFormat::TUTORIAL));
        p.raw_seq = u16::MAX;
        p.raw_timestamp = u32::MAX - 100;
        let mut out = slot();
        p.parse_into(&[0; 320], 0, &mut out).unwrap();
        assert_eq!((out.seq, out.timestamp), (u16::MAX, u32::MAX - 100));
        p.parse_into(&[0; 320], 0, &mut out).unwrap();
        assert_eq!((out.seq, out.timestamp), (0, 59));
    }

    #[test]
    fn error_messages_tell_the_operator_what_to_do() {
        let m = ParseError::UnknownPayloadType(97).to_string();
        assert!(m.contains("--rtp-format 97="), "{m}");
        let m = ParseError::NotWholeFrames {
            len: 321,
            frame_bytes: 2,
        }
        .to_string();
        assert!(m.contains("321") && m.contains("--raw"), "{m}");
        let m = ParseError::Malformed(RtpError::Version(0)).to_string();
        assert!(m.contains("--raw"), "{m}");
    }
}
