//! The RTP fixed header (RFC 3550 section 5.1): parse and write, for the
//! receiver and the sender.
//!
//! Input (parse): one datagram. Output: the header fields and the payload
//! slice with CSRCs, header extension and padding removed, or an
//! [`RtpError`] naming the inconsistency. Input (write): header fields.
//! Output: the 12 bytes of a version-2 header without CSRCs, extension or
//! padding, which is all the sender emits.
//!
//! Policy: nothing truncated or inconsistent is guessed at; RTCP sharing
//! the port (RFC 5761) is recognised by its packet type and reported as
//! such. Order (sequence, timestamp) is not judged here.

use core::fmt;

/// Length of the fixed RTP header.
pub const HEADER_LEN: usize = 12;

/// Whether `pt` is an RTP payload type: it must fit the header's 7 bits.
/// The one check both directions use (the packetizer at startup, `write`
/// per packet).
pub const fn is_payload_type(pt: u8) -> bool {
    pt <= 0x7f
}

/// The fields of an RTP header that the receiver and sender use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// CSRCs present in the datagram (skipped; a mixer's contributors).
    pub csrc_count: u8,
    pub padding: bool,
    pub extension: bool,
}

/// Why a datagram is not a usable RTP packet (or, for `Rtcp`, not an RTP
/// packet at all), and why a header could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    TooShort { len: usize },
    /// Version field is not 2.
    Version(u8),
    /// The CSRC count runs past the end of the datagram.
    CsrcTruncated { csrc_count: u8, len: usize },
    /// The header extension (or its own 4-byte header) runs past the end.
    ExtensionTruncated { words: u16, len: usize },
    /// Padding bit set but the pad count (last byte) is 0.
    PaddingZero,
    /// Pad count larger than what follows the header.
    PaddingTooLong { pad: u8, available: usize },
    /// An RTCP packet multiplexed on the RTP port (RFC 5761); its packet
    /// type (200 SR .. 204 APP).
    Rtcp { packet_type: u8 },
    /// `RtpHeader::write`: the output buffer cannot hold the header.
    BufferTooSmall { len: usize },
    /// `RtpHeader::write`: payload type does not fit in 7 bits.
    PayloadTypeRange(u8),
}

impl fmt::Display for RtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RtpError::TooShort { len } => write!(
                f,
                "datagram of {len} bytes is shorter than an RTP header (12 bytes)"
            ),
            RtpError::Version(v) => write!(
                f,
                "RTP version {v}, expected 2 (is the sender sending headerless PCM? then use --raw)"
            ),
            RtpError::CsrcTruncated { csrc_count, len } => write!(
                f,
                "{csrc_count} CSRCs announced but the datagram has only {len} bytes"
            ),
            RtpError::ExtensionTruncated { words, len } => write!(
                f,
                "header extension of {words} words runs past the end of the {len}-byte datagram"
            ),
            RtpError::PaddingZero => write!(f, "padding bit set but the pad count is 0"),
            RtpError::PaddingTooLong { pad, available } => write!(
                f,
                "pad count {pad} exceeds the {available} bytes after the header"
            ),
            RtpError::Rtcp { packet_type } => write!(
                f,
                "RTCP packet (type {packet_type}) on the RTP port; it is ignored"
            ),
            RtpError::BufferTooSmall { len } => {
                write!(f, "buffer of {len} bytes cannot hold a 12-byte RTP header")
            }
            RtpError::PayloadTypeRange(pt) => {
                write!(f, "payload type {pt} does not fit RTP's 7 bits (0 to 127)")
            }
        }
    }
}

impl std::error::Error for RtpError {}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses an RTP datagram: the header and the payload (CSRCs, extension
/// and padding removed). The payload may be empty (e.g. all padding).
pub fn parse(datagram: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    let len = datagram.len();
    let (Some(&b0), Some(&b1)) = (datagram.first(), datagram.get(1)) else {
        return Err(RtpError::TooShort { len });
    };
    let version = b0 >> 6;
    // RFC 5761: RTCP packet types 200..=204 occupy the byte where RTP has
    // marker + payload type; RTP payload types 72..=76 are reserved for it.
    if version == 2 && (200..=204).contains(&b1) {
        return Err(RtpError::Rtcp { packet_type: b1 });
    }
    if len < HEADER_LEN {
        return Err(RtpError::TooShort { len });
    }
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = b0 & 0x20 != 0;
    let extension = b0 & 0x10 != 0;
    let csrc_count = b0 & 0x0f;
    let (Some(sequence), Some(timestamp), Some(ssrc)) =
        (be16(datagram, 2), be32(datagram, 4), be32(datagram, 8))
    else {
        return Err(RtpError::TooShort { len });
    };
    let mut start = HEADER_LEN + 4 * csrc_count as usize;
    if start > len {
        return Err(RtpError::CsrcTruncated { csrc_count, len });
    }
    if extension {
        let words =
            be16(datagram, start + 2).ok_or(RtpError::ExtensionTruncated { words: 0, len })?;
        start += 4 + 4 * words as usize;
        if start > len {
            return Err(RtpError::ExtensionTruncated { words, len });
        }
    }
    let mut end = len;
    if padding {
        let available = len - start;
        let pad = match datagram.last() {
            Some(&p) if start < len => p,
            _ => return Err(RtpError::PaddingTooLong { pad: 0, available }),
        };
        if pad == 0 {
            return Err(RtpError::PaddingZero);
        }
        if pad as usize > available {
            return Err(RtpError::PaddingTooLong { pad, available });
        }
        end -= pad as usize;
    }
    let payload = datagram.get(start..end).unwrap_or(&[]);
    Ok((
        RtpHeader {
            marker: b1 & 0x80 != 0,
            payload_type: b1 & 0x7f,
            sequence,
            timestamp,
            ssrc,
            csrc_count,
            padding,
            extension,
        },
        payload,
    ))
}

impl RtpHeader {
    /// Writes the 12-byte fixed header (version 2; the CSRC count, padding
    /// and extension flags are written as clear, since none follow) and
    /// returns its length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        if !is_payload_type(self.payload_type) {
            return Err(RtpError::PayloadTypeRange(self.payload_type));
        }
        let len = out.len();
        let Some(h) = out.get_mut(..HEADER_LEN) else {
            return Err(RtpError::BufferTooSmall { len });
        };
        h[0] = 2 << 6;
        h[1] = (u8::from(self.marker) << 7) | self.payload_type;
        h[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        h[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_parse_round_trip() {
        let h = RtpHeader {
            marker: true,
            payload_type: 11,
            sequence: 65_000,
            timestamp: 123_456_789,
            ssrc: 0xcafe_f00d,
            ..RtpHeader::default()
        };
        let mut d = [0u8; HEADER_LEN + 4];
        assert_eq!(h.write(&mut d), Ok(HEADER_LEN));
        d[HEADER_LEN..].copy_from_slice(&[1, 2, 3, 4]);
        let (back, payload) = parse(&d).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, &[1, 2, 3, 4]);
    }

    #[test]
    fn write_rejects_small_buffer_and_wide_payload_type() {
        let h = RtpHeader::default();
        assert_eq!(
            h.write(&mut [0; 11]),
            Err(RtpError::BufferTooSmall { len: 11 })
        );
        let wide = RtpHeader {
            payload_type: 128,
            ..h
        };
        assert_eq!(
            wide.write(&mut [0; 12]),
            Err(RtpError::PayloadTypeRange(128))
        );
    }
}
