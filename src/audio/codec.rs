//! Payload codecs: L16 (big-endian), s16le, G.711 mu-law (PCMU) and A-law
//! (PCMA), decoding a payload to interleaved `i16` samples and encoding
//! them back (the sender). Stateless, sample by sample; never allocates.
//! The G.711 conversions follow ITU-T G.711 as the widely used reference
//! implementation by Sun Microsystems does (segment search, bias 0x84).

use crate::audio::format::Encoding;

/// Decodes `payload` into `out`, returning the number of samples written:
/// the smaller of what the payload holds and what `out` has room for. A
/// trailing partial sample is ignored (the parser has already rejected
/// payloads that are not whole frames).
pub fn decode(encoding: Encoding, payload: &[u8], out: &mut [i16]) -> usize {
    match encoding {
        Encoding::L16 => decode_pairs(payload, out, i16::from_be_bytes),
        Encoding::S16Le => decode_pairs(payload, out, i16::from_le_bytes),
        Encoding::Pcmu => decode_bytes(payload, out, ulaw_to_linear),
        Encoding::Pcma => decode_bytes(payload, out, alaw_to_linear),
    }
}

/// Encodes `samples` into `out`, returning the number of bytes written
/// (whole samples only, as many as fit).
pub fn encode(encoding: Encoding, samples: &[i16], out: &mut [u8]) -> usize {
    match encoding {
        Encoding::L16 => encode_pairs(samples, out, i16::to_be_bytes),
        Encoding::S16Le => encode_pairs(samples, out, i16::to_le_bytes),
        Encoding::Pcmu => encode_bytes(samples, out, linear_to_ulaw),
        Encoding::Pcma => encode_bytes(samples, out, linear_to_alaw),
    }
}

fn decode_pairs(payload: &[u8], out: &mut [i16], f: fn([u8; 2]) -> i16) -> usize {
    let mut n = 0;
    for (dst, src) in out.iter_mut().zip(payload.chunks_exact(2)) {
        *dst = f([src[0], src[1]]);
        n += 1;
    }
    n
}

fn decode_bytes(payload: &[u8], out: &mut [i16], f: fn(u8) -> i16) -> usize {
    let mut n = 0;
    for (dst, &src) in out.iter_mut().zip(payload) {
        *dst = f(src);
        n += 1;
    }
    n
}

fn encode_pairs(samples: &[i16], out: &mut [u8], f: fn(i16) -> [u8; 2]) -> usize {
    let mut n = 0;
    for (dst, &s) in out.chunks_exact_mut(2).zip(samples) {
        dst.copy_from_slice(&f(s));
        n += 2;
    }
    n
}

fn encode_bytes(samples: &[i16], out: &mut [u8], f: fn(i16) -> u8) -> usize {
    let mut n = 0;
    for (dst, &s) in out.iter_mut().zip(samples) {
        *dst = f(s);
        n += 1;
    }
    n
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;
const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

fn segment(value: i32, table: &[i32; 8]) -> u8 {
    table.iter().position(|&end| value <= end).unwrap_or(8) as u8
}

/// G.711 mu-law byte → 16-bit linear sample.
pub fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let mantissa = ((u & 0x0F) as i32) << 3;
    let exponent = ((u & 0x70) >> 4) as i32;
    let magnitude = ((mantissa + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// 16-bit linear sample → G.711 mu-law byte.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    // mu-law works on 14-bit magnitudes.
    let mut v = (sample as i32) >> 2;
    let mask: u8 = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    v = v.min(ULAW_CLIP) + (ULAW_BIAS >> 2);
    let seg = segment(v, &SEG_UEND);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let uval = (seg << 4) | ((v >> (seg + 1)) & 0x0F) as u8;
    uval ^ mask
}

/// G.711 A-law byte → 16-bit linear sample.
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// 16-bit linear sample → G.711 A-law byte.
pub fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13-bit magnitudes.
    let mut v = (sample as i32) >> 3;
    let mask: u8 = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &SEG_AEND);
    if seg >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if seg < 2 { 1 } else { seg };
    let aval = (seg << 4) | ((v >> shift) & 0x0F) as u8;
    aval ^ mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l16_is_big_endian_and_s16le_little() {
        let mut out = [0i16; 2];
        assert_eq!(
            decode(Encoding::L16, &[0x12, 0x34, 0xFF, 0xFE], &mut out),
            2
        );
        assert_eq!(out, [0x1234, -2]);
        assert_eq!(
            decode(Encoding::S16Le, &[0x34, 0x12, 0xFE, 0xFF], &mut out),
            2
        );
        assert_eq!(out, [0x1234, -2]);
        let mut bytes = [0u8; 4];
        assert_eq!(encode(Encoding::L16, &[0x1234, -2], &mut bytes), 4);
        assert_eq!(bytes, [0x12, 0x34, 0xFF, 0xFE]);
    }

    #[test]
    fn g711_reference_points() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_alaw(0), 0xD5);
        // Encoding a decoded value gives the code back (both laws, all codes
        // but mu-law's negative zero 0x7F, which decodes to 0 = 0xFF).
        for c in 0..=255u8 {
            if c != 0x7F {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), c, "ulaw {c:#x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "alaw {c:#x}");
        }
    }

    #[test]
    fn decode_stops_at_output_capacity() {
        let mut out = [0i16; 1];
        assert_eq!(decode(Encoding::Pcmu, &[0xFF, 0xFF, 0xFF], &mut out), 1);
        assert_eq!(decode(Encoding::L16, &[1, 2, 3], &mut out), 1);
    }
}
