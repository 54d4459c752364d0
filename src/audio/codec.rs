//! Payload codecs: L16 (big-endian), s16le, G.711 mu-law (PCMU) and A-law
//! (PCMA), decoding a payload to interleaved `i16` samples and encoding
//! them back (the sender). Stateless, sample by sample; never allocates.
//! The G.711 conversions follow ITU-T G.711 as the widely used reference
//! implementation by Sun Microsystems does (segment search, bias 0x84): a
//! 16-bit sample is cut to 14 bits (mu-law) or 13 (A-law) by dropping the
//! low bits. The tests hold every code and every 16-bit value against
//! sox (`testdata/README`).

use crate::audio::format::Encoding;

/// Decodes `payload` into `out`, returning the number of samples written:
/// the smaller of what the payload holds and what `out` has room for. A
/// trailing partial sample is ignored (the parser has already rejected
/// payloads that are not whole frames). Opus has state and is decoded by
/// `audio::opus` instead: here it decodes nothing.
pub fn decode(encoding: Encoding, payload: &[u8], out: &mut [i16]) -> usize {
    match encoding {
        Encoding::L16 => decode_pairs(payload, out, i16::from_be_bytes),
        Encoding::S16Le => decode_pairs(payload, out, i16::from_le_bytes),
        Encoding::Pcmu => decode_bytes(payload, out, ulaw_to_linear),
        Encoding::Pcma => decode_bytes(payload, out, alaw_to_linear),
        Encoding::Opus => 0,
    }
}

/// Encodes `samples` into `out`, returning the number of bytes written
/// (whole samples only, as many as fit). Opus: see `audio::opus::Encoder`
/// (nothing is written here).
pub fn encode(encoding: Encoding, samples: &[i16], out: &mut [u8]) -> usize {
    match encoding {
        Encoding::L16 => encode_pairs(samples, out, i16::to_be_bytes),
        Encoding::S16Le => encode_pairs(samples, out, i16::to_le_bytes),
        Encoding::Pcmu => encode_bytes(samples, out, linear_to_ulaw),
        Encoding::Pcma => encode_bytes(samples, out, linear_to_alaw),
        Encoding::Opus => 0,
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

    // Expected values from sox, an outside codec (testdata/make.sh says
    // how they were made): the decoded value of every code, and the code
    // of every 16-bit value as runs of (first value, code).
    const ULAW_DECODED: &[u8; 512] = include_bytes!("testdata/ulaw_decode.s16le");
    const ALAW_DECODED: &[u8; 512] = include_bytes!("testdata/alaw_decode.s16le");
    const ULAW_ENCODED: &[u8] = include_bytes!("testdata/ulaw_encode.runs");
    const ALAW_ENCODED: &[u8] = include_bytes!("testdata/alaw_encode.runs");

    fn check_decoder(reference: &[u8; 512], decode: fn(u8) -> i16, law: &str) {
        for (code, b) in (0..=255u8).zip(reference.chunks_exact(2)) {
            let want = i16::from_le_bytes([b[0], b[1]]);
            assert_eq!(decode(code), want, "{law} code {code:#04x}");
        }
    }

    /// Expands the runs into the code of every value -32768..=32767.
    fn expand_runs(runs: &[u8]) -> Vec<u8> {
        assert_eq!(runs.len() % 3, 0);
        let records: Vec<(i32, u8)> = runs
            .chunks_exact(3)
            .map(|r| (i32::from(i16::from_le_bytes([r[0], r[1]])), r[2]))
            .collect();
        assert_eq!(records[0].0, -32768, "the runs start at the lowest value");
        let mut codes = Vec::with_capacity(65_536);
        for (k, &(start, code)) in records.iter().enumerate() {
            let end = records.get(k + 1).map_or(32_768, |r| r.0);
            assert!(end > start, "runs in order");
            codes.extend(std::iter::repeat(code).take((end - start) as usize));
        }
        assert_eq!(codes.len(), 65_536);
        codes
    }

    /// G.711 codes 14-bit (mu-law) or 13-bit (A-law) samples; a 16-bit
    /// sample is first cut to that width. We cut by dropping the low bits
    /// (floor), as Sun's and the ITU-T G.191 reference coders do; sox
    /// rounds instead, so the two differ only off the coarse grid. Every
    /// value must therefore encode as sox encodes the grid value below it,
    /// which on the grid is sox's own code.
    fn check_encoder(runs: &[u8], encode: fn(i16) -> u8, dropped_bits: u32, law: &str) {
        let sox = expand_runs(runs);
        let sox_code = |s: i16| sox[(i32::from(s) + 32_768) as usize];
        let wrong: Vec<(i16, u8, u8)> = (i16::MIN..=i16::MAX)
            .map(|s| {
                let grid = (s >> dropped_bits) << dropped_bits;
                (s, encode(s), sox_code(grid))
            })
            .filter(|&(_, got, want)| got != want)
            .collect();
        assert!(
            wrong.is_empty(),
            "{law}: {} of 65536 values encoded unlike sox, first (value, ours, sox): {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(8)]
        );
        // Most values lie on the grid's steps, where sox agrees exactly.
        let exact = (i16::MIN..=i16::MAX)
            .filter(|&s| encode(s) == sox_code(s))
            .count();
        assert!(exact > 64_000, "{law}: only {exact} values agree exactly");
    }

    #[test]
    fn ulaw_every_code_decodes_as_sox_does() {
        check_decoder(ULAW_DECODED, ulaw_to_linear, "mu-law");
    }

    #[test]
    fn alaw_every_code_decodes_as_sox_does() {
        check_decoder(ALAW_DECODED, alaw_to_linear, "A-law");
    }

    #[test]
    fn ulaw_every_sample_encodes_as_sox_does() {
        check_encoder(ULAW_ENCODED, linear_to_ulaw, 2, "mu-law");
    }

    #[test]
    fn alaw_every_sample_encodes_as_sox_does() {
        check_encoder(ALAW_ENCODED, linear_to_alaw, 3, "A-law");
    }

    #[test]
    fn g711_decoded_codes_encode_back() {
        // All codes but mu-law's negative zero 0x7F, which decodes to 0
        // and so encodes as positive zero 0xFF.
        for c in 0..=255u8 {
            if c != 0x7F {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), c, "ulaw {c:#x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "alaw {c:#x}");
        }
        assert_eq!(linear_to_ulaw(ulaw_to_linear(0x7F)), 0xFF);
    }

    #[test]
    fn decode_stops_at_output_capacity() {
        let mut out = [0i16; 1];
        assert_eq!(decode(Encoding::Pcmu, &[0xFF, 0xFF, 0xFF], &mut out), 1);
        assert_eq!(decode(Encoding::L16, &[1, 2, 3], &mut out), 1);
    }
}
