//! Fuzz target: arbitrary datagrams into the RTP header parser and the
//! packet parser, checked against an oracle written here from RFC 3550
//! section 5.1 (and RFC 5761 for RTCP on the RTP port) alone: it reads the
//! byte layout itself (version, padding, extension, CC, marker, PT, seq,
//! timestamp, SSRC, CSRC list, extension length, padding count) and never
//! calls the code under test to decide what is right. Raw mode (the
//! tutorial's s16le 8 kHz mono, and a 6-byte-frame format so frame checks
//! are not only about even lengths) is checked against the datagram
//! itself. Nothing may panic; an accepted payload lies within the datagram
//! and is a non-empty whole number of frames within MAX_PAYLOAD.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netspeaker::audio::format::{Encoding, PayloadMap, StreamFormat};
use netspeaker::rtp::packet::{Packet, MAX_PAYLOAD, RAW_PAYLOAD_TYPE};
use netspeaker::rtp::{self, InputMode, PacketParser, ParseError, RtpError};

/// What RFC 3550 says a datagram holds, read byte by byte.
#[derive(Debug)]
struct Layout {
    version: u8,
    padding: bool,
    extension: bool,
    csrc_count: u8,
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    csrcs: Vec<u32>,
    /// Length of the extension in 32-bit words (its 4-byte header apart).
    extension_words: Option<u16>,
    /// The last octet when P is set: how many octets of padding, itself
    /// included.
    pad_count: u8,
    /// Where the payload starts and ends in the datagram.
    payload: core::ops::Range<usize>,
}

/// Big-endian word of `n` octets at `at`, or None past the end.
fn word(d: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for i in 0..n {
        v = (v << 8) | u32::from(*d.get(at.checked_add(i)?)?);
    }
    Some(v)
}

/// The oracle: the layout, or the error the RFC's rules call for.
fn read_layout(d: &[u8]) -> Result<Layout, RtpError> {
    let len = d.len();
    // RFC 5761 section 4: on a shared port, a second octet of 200..=204
    // under version 2 is an RTCP packet type, whatever the length.
    if len >= 2 && d[0] >> 6 == 2 && (200..=204).contains(&d[1]) {
        return Err(RtpError::Rtcp { packet_type: d[1] });
    }
    // The fixed header: 12 octets.
    if len < 12 {
        return Err(RtpError::TooShort { len });
    }
    let first = d[0];
    let version = first >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = (first >> 5) & 1 == 1;
    let extension = (first >> 4) & 1 == 1;
    let csrc_count = first % 16;
    let marker = d[1] >= 128;
    let payload_type = d[1] % 128;
    let sequence = word(d, 2, 2).unwrap_or(0) as u16;
    let timestamp = word(d, 4, 4).unwrap_or(0);
    let ssrc = word(d, 8, 4).unwrap_or(0);
    // CC 32-bit CSRC identifiers follow the fixed header.
    let mut csrcs = Vec::new();
    for i in 0..usize::from(csrc_count) {
        match word(d, 12 + 4 * i, 4) {
            Some(c) => csrcs.push(c),
            None => return Err(RtpError::CsrcTruncated { csrc_count, len }),
        }
    }
    let mut at = 12 + 4 * usize::from(csrc_count);
    // X: a 16-bit profile field, a 16-bit length in words, then the words.
    let mut extension_words = None;
    if extension {
        let Some(words) = word(d, at + 2, 2) else {
            return Err(RtpError::ExtensionTruncated { words: 0, len });
        };
        let words = words as u16;
        at += 4 + 4 * usize::from(words);
        if at > len {
            return Err(RtpError::ExtensionTruncated { words, len });
        }
        extension_words = Some(words);
    }
    // P: the last octet counts the padding octets, itself included; it
    // must be at least 1 and may not reach into the header.
    let mut end = len;
    let mut pad_count = 0;
    if padding {
        let available = len - at;
        if available == 0 {
            return Err(RtpError::PaddingTooLong { pad: 0, available });
        }
        pad_count = d[len - 1];
        if pad_count == 0 {
            return Err(RtpError::PaddingZero);
        }
        if usize::from(pad_count) > available {
            return Err(RtpError::PaddingTooLong {
                pad: pad_count,
                available,
            });
        }
        end = len - usize::from(pad_count);
    }
    Ok(Layout {
        version,
        padding,
        extension,
        csrc_count,
        marker,
        payload_type,
        sequence,
        timestamp,
        ssrc,
        csrcs,
        extension_words,
        pad_count,
        payload: at..end,
    })
}

/// Where `inner` lies within `outer`, if it does.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<core::ops::Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

fn check_slot(slot: &Packet) {
    let len = slot.payload.len();
    let bpf = slot.format.bytes_per_frame();
    assert!(len > 0 && len <= MAX_PAYLOAD, "payload length {len}");
    assert!(
        bpf > 0 && len % bpf == 0,
        "{len} bytes is not whole {bpf}-byte frames"
    );
}

fuzz_target!(|data: &[u8]| {
    let oracle = read_layout(data);

    // The header parser against the oracle.
    match (rtp::parse(data), &oracle) {
        (Ok((h, payload)), Ok(l)) => {
            assert_eq!(l.version, 2);
            assert_eq!(
                (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc),
                (l.marker, l.payload_type, l.sequence, l.timestamp, l.ssrc)
            );
            assert_eq!(
                (h.padding, h.extension, h.csrc_count),
                (l.padding, l.extension, l.csrc_count)
            );
            assert_eq!(l.csrcs.len(), usize::from(h.csrc_count));
            assert_eq!(l.extension_words.is_some(), h.extension);
            assert_eq!(l.pad_count > 0, h.padding);
            // The payload is a slice of the datagram, exactly where the
            // layout puts it.
            assert_eq!(offset_in(data, payload), Some(l.payload.clone()));
        }
        (Err(e), Err(want)) => assert_eq!(&e, want),
        (got, want) => panic!("parse gave {got:?}, RFC 3550 layout gives {want:?}"),
    }

    let mut map = PayloadMap::default();
    map.set(
        96,
        StreamFormat {
            encoding: Encoding::L16,
            rate: 48_000,
            channels: 2,
        },
    );
    map.set(
        97,
        StreamFormat {
            encoding: Encoding::Pcma,
            rate: 16_000,
            channels: 3,
        },
    );
    let mut slot = Packet::empty(StreamFormat::TUTORIAL);

    // The packet parser in RTP mode: what the layout and the payload-type
    // table say it must accept, and nothing else.
    let mut rtp_parser = PacketParser::new(InputMode::Rtp(map.clone()));
    let got = rtp_parser.parse_into(data, 1, &mut slot);
    let want = match &oracle {
        Err(RtpError::Rtcp { .. }) => Err(ParseError::Rtcp),
        Err(e) => Err(ParseError::Malformed(*e)),
        Ok(l) => match map.get(l.payload_type) {
            None => Err(ParseError::UnknownPayloadType(l.payload_type)),
            Some(format) => {
                let n = l.payload.len();
                let bpf = format.bytes_per_frame();
                if n == 0 {
                    Err(ParseError::Empty)
                } else if n > MAX_PAYLOAD {
                    Err(ParseError::TooLarge(n))
                } else if bpf == 0 || n % bpf != 0 {
                    Err(ParseError::NotWholeFrames {
                        len: n,
                        frame_bytes: bpf,
                    })
                } else {
                    Ok(())
                }
            }
        },
    };
    assert_eq!(got, want, "packet parser against the RFC 3550 layout");
    if let (Ok(()), Ok(l)) = (got, &oracle) {
        check_slot(&slot);
        assert_eq!(slot.payload.as_slice(), &data[l.payload.clone()]);
        assert_eq!(
            (slot.seq, slot.timestamp, slot.ssrc, slot.marker),
            (l.sequence, l.timestamp, l.ssrc, l.marker)
        );
        assert_eq!(slot.payload_type, l.payload_type);
        assert_eq!(Some(slot.format), map.get(l.payload_type));
        assert_eq!(slot.arrival_ns, 1);
        assert!(!slot.sequential);
    }

    let tutorial = StreamFormat::TUTORIAL;
    let six = StreamFormat {
        encoding: Encoding::S16Le,
        rate: 8000,
        channels: 3,
    };
    for format in [tutorial, six] {
        let mut raw = PacketParser::new(InputMode::Raw(format));
        let bpf = format.bytes_per_frame();
        let acceptable = !data.is_empty() && data.len() <= MAX_PAYLOAD && data.len() % bpf == 0;
        // Twice, so the parser's own numbering is exercised.
        for round in 0..2u16 {
            let accepted = raw.parse_into(data, 2, &mut slot).is_ok();
            assert_eq!(accepted, acceptable, "raw {} bytes", data.len());
            if accepted {
                check_slot(&slot);
                assert_eq!(slot.payload.as_slice(), data);
                assert!(slot.sequential);
                assert_eq!(slot.payload_type, RAW_PAYLOAD_TYPE);
                assert_eq!(slot.seq, round);
                let frames = (data.len() / bpf) as u32;
                assert_eq!(slot.timestamp, u32::from(round) * frames);
            }
        }
    }

    // A header written for the sender reads back, by the oracle, as the
    // fields it was written from.
    if let Ok(l) = &oracle {
        let fields = rtp::RtpHeader {
            marker: l.marker,
            payload_type: l.payload_type,
            sequence: l.sequence,
            timestamp: l.timestamp,
            ssrc: l.ssrc,
            ..rtp::RtpHeader::default()
        };
        let mut out = [0u8; rtp::HEADER_LEN];
        assert_eq!(fields.write(&mut out), Ok(rtp::HEADER_LEN));
        let back = read_layout(&out);
        // Marker + PT 72..=76 is RTCP's byte on a shared port (RFC 5761).
        if l.marker && (72..=76).contains(&l.payload_type) {
            assert!(matches!(back, Err(RtpError::Rtcp { .. })), "{back:?}");
        } else {
            let b = back.expect("a written header is valid");
            assert_eq!(
                (b.marker, b.payload_type, b.sequence, b.timestamp, b.ssrc),
                (l.marker, l.payload_type, l.sequence, l.timestamp, l.ssrc)
            );
            assert!(!b.padding && !b.extension && b.csrc_count == 0);
            assert_eq!(b.payload, rtp::HEADER_LEN..rtp::HEADER_LEN);
        }
    }
});
