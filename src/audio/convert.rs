//! Sample conversion, the one place both programs turn samples from one
//! representation into another. Input: `i16` stream samples, `f32`
//! samples (full scale ±1.0) or device bytes. Output: the same samples in
//! the other representation. Policy:
//!
//! - `i16` ↔ `f32` scales by 2^15: sample k is k / 32768, so every `i16`
//!   is exact in `f32` and comes back unchanged (−32768 is −1.0; +1.0 is
//!   one step above the largest `i16`, 32767).
//! - `f32` → an N-bit integer (`i16`, S16_LE, S24_LE, S24_3LE, S32_LE)
//!   multiplies by 2^(N−1), rounds half away from zero and clips to the
//!   integer's range, so +1.0 and above become the largest value, −1.0
//!   and below the smallest; NaN becomes 0 (silence, not a full-scale
//!   click). Scaling by a power of two is exact, so a 16-bit stream
//!   reaches every integer device format bit-exact (shifted left).
//! - `f32` → FLOAT_LE clips to ±1.0 and turns NaN into 0, for the same
//!   reason: some DACs play out-of-range floats as clicks.
//! - Device bytes → `f32` (capture) divides by 2^(N−1); nothing is
//!   clipped (a float device's headroom is kept), NaN becomes 0.
//!
//! Never allocates; converts as many samples as both buffers hold.

/// Scale between `i16` and `f32`: 2^15.
const SCALE_16: f32 = 32_768.0;
const SCALE_24: f32 = 8_388_608.0;
const SCALE_32: f64 = 2_147_483_648.0;

/// How samples are laid out in a device buffer (ALSA's format names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// S16_LE: 16 bits in 2 bytes.
    S16Le,
    /// S24_LE: 24 bits in the low 3 bytes of 4, sign-extended into the
    /// high byte (which devices ignore).
    S24Le,
    /// S24_3LE: 24 bits packed in 3 bytes.
    S24_3Le,
    /// S32_LE: 32 bits in 4 bytes.
    S32Le,
    /// FLOAT_LE: IEEE 754 single precision, full scale ±1.0.
    F32Le,
}

impl Layout {
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Layout::S16Le => 2,
            Layout::S24_3Le => 3,
            Layout::S24Le | Layout::S32Le | Layout::F32Le => 4,
        }
    }
}

/// One `i16` sample as `f32` (k / 32768, exact).
pub fn i16_to_f32(sample: i16) -> f32 {
    f32::from(sample) / SCALE_16
}

/// One `f32` sample as `i16`: × 32768, rounded half away from zero,
/// clipped to −32768..=32767; NaN is 0.
///
/// Every step is a plain float or integer operation on one lane, so a loop
/// of them vectorises (4 samples per SSE2 or NEON instruction): this
/// conversion runs on every sample the device plays. Equal to rounding
/// `f64::from(sample) * 32768` half away from zero for every `f32`
/// (checked exhaustively once; the tests hold the edges and a sweep).
#[inline(always)]
pub fn f32_to_i16(sample: f32) -> i16 {
    let x = (sample * SCALE_16).clamp(-SCALE_16, SCALE_16 - 1.0);
    let x = if x.is_nan() { 0.0 } else { x };
    // Truncated, then moved one step away from zero when the part cut
    // off is half a step or more (exact: both parts of an f32 below 2^15
    // are f32s). Not `as`: its saturation and NaN check do not vectorise.
    // SAFETY: x is a number (NaN was replaced) within i16's range (clamped),
    // so truncating it to an i32 is defined.
    let whole: i32 = unsafe { x.to_int_unchecked() };
    let cut = x - whole as f32;
    let away = i32::from(cut >= 0.5) - i32::from(cut <= -0.5);
    (whole + away) as i16
}

/// `x` moved half a step away from zero, to be truncated by `as`: rounding
/// half away from zero without `f64::round`, which is a library call on
/// the x86-64 baseline (no SSE4.1) and was half of the playout thread's
/// instructions. Exact: an `f32` times a power of two plus one half is
/// representable in an `f64`.
fn round_half_away(x: f64) -> f64 {
    x + 0.5f64.copysign(x)
}

/// `i16` samples to `f32`; returns the samples converted.
pub fn i16s_to_f32(input: &[i16], out: &mut [f32]) -> usize {
    let n = input.len().min(out.len());
    for (d, &s) in out.iter_mut().zip(input) {
        *d = i16_to_f32(s);
    }
    n
}

/// `f32` samples to `i16`; returns the samples converted.
pub fn f32s_to_i16(input: &[f32], out: &mut [i16]) -> usize {
    let n = input.len().min(out.len());
    for (d, &s) in out.iter_mut().zip(input) {
        *d = f32_to_i16(s);
    }
    n
}

fn f32_to_i24(sample: f32) -> i32 {
    round_half_away(f64::from(sample) * f64::from(SCALE_24))
        .clamp(-f64::from(SCALE_24), f64::from(SCALE_24) - 1.0) as i32
}

fn f32_to_i32(sample: f32) -> i32 {
    // In f64: i32::MAX is not an f32, and the clamp must not round up.
    round_half_away(f64::from(sample) * SCALE_32).clamp(-SCALE_32, SCALE_32 - 1.0) as i32
}

/// Interleaved `f32` samples to device bytes in `layout`; returns the
/// samples converted (as many as `out` has whole slots for).
pub fn to_device(layout: Layout, samples: &[f32], out: &mut [u8]) -> usize {
    let width = layout.bytes_per_sample();
    let n = samples.len().min(out.len() / width);
    let pairs = samples.iter().zip(out.chunks_exact_mut(width));
    match layout {
        Layout::S16Le => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                unsafe { to_s16_avx2(samples, out) };
                return n;
            }
            to_s16(samples, out);
        }
        Layout::S24Le => {
            for (&s, o) in pairs {
                o.copy_from_slice(&f32_to_i24(s).to_le_bytes());
            }
        }
        Layout::S24_3Le => {
            for (&s, o) in pairs {
                let b = f32_to_i24(s).to_le_bytes();
                o.copy_from_slice(&b[..3]);
            }
        }
        Layout::S32Le => {
            for (&s, o) in pairs {
                o.copy_from_slice(&f32_to_i32(s).to_le_bytes());
            }
        }
        Layout::F32Le => {
            for (&s, o) in pairs {
                let v = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    n
}

/// Interleaved `f32` samples to S16_LE bytes, as many as both hold.
#[inline(always)]
fn to_s16(samples: &[f32], out: &mut [u8]) {
    for (&s, o) in samples.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&f32_to_i16(s).to_le_bytes());
    }
}

/// `to_s16` compiled for AVX2: 8 samples per instruction instead of
/// SSE2's 4, on the conversion every sample the device plays goes through.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn to_s16_avx2(samples: &[f32], out: &mut [u8]) {
    to_s16(samples, out);
}

/// Device bytes in `layout` to interleaved `f32` samples; returns the
/// samples converted (whole samples only).
pub fn from_device(layout: Layout, bytes: &[u8], out: &mut [f32]) -> usize {
    let width = layout.bytes_per_sample();
    let n = out.len().min(bytes.len() / width);
    let pairs = out.iter_mut().zip(bytes.chunks_exact(width));
    match layout {
        Layout::S16Le => {
            for (d, b) in pairs {
                *d = i16_to_f32(i16::from_le_bytes([b[0], b[1]]));
            }
        }
        Layout::S24Le | Layout::S24_3Le => {
            for (d, b) in pairs {
                // The 24 bits shifted to the top of an i32 and back
                // sign-extend them; S24_LE's high byte is ignored.
                let v = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                *d = v as f32 / SCALE_24;
            }
        }
        Layout::S32Le => {
            for (d, b) in pairs {
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                *d = (f64::from(v) / SCALE_32) as f32;
            }
        }
        Layout::F32Le => {
            for (d, b) in pairs {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                *d = if v.is_nan() { 0.0 } else { v };
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Layout; 5] = [
        Layout::S16Le,
        Layout::S24Le,
        Layout::S24_3Le,
        Layout::S32Le,
        Layout::F32Le,
    ];

    fn bytes(layout: Layout, samples: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; samples.len() * layout.bytes_per_sample()];
        assert_eq!(to_device(layout, samples, &mut out), samples.len());
        out
    }

    #[test]
    fn every_i16_round_trips_through_f32_exactly() {
        for k in i16::MIN..=i16::MAX {
            let x = i16_to_f32(k);
            // Exact: k / 32768 with nothing rounded away.
            assert_eq!(f64::from(x) * 32768.0, f64::from(k));
            assert_eq!(f32_to_i16(x), k, "k = {k}");
        }
    }

    #[test]
    fn slices_convert_as_many_as_both_hold() {
        let mut f = [9.0f32; 2];
        assert_eq!(i16s_to_f32(&[16_384, -32_768, 1], &mut f), 2);
        assert_eq!(f, [0.5, -1.0]);
        let mut i = [7i16; 4];
        assert_eq!(f32s_to_i16(&[0.5, -1.0], &mut i), 2);
        assert_eq!(i, [16_384, -32_768, 7, 7]);
    }

    #[test]
    fn full_scale_and_beyond_clip_and_nan_is_silence() {
        assert_eq!(f32_to_i16(1.0), 32_767);
        assert_eq!(f32_to_i16(7.5), 32_767);
        assert_eq!(f32_to_i16(-1.0), -32_768);
        assert_eq!(f32_to_i16(-1.5), -32_768);
        assert_eq!(f32_to_i16(f32::INFINITY), 32_767);
        assert_eq!(f32_to_i16(f32::NAN), 0);
        assert_eq!(
            bytes(Layout::S16Le, &[1.0, 2.0, -3.0]),
            [0xff, 0x7f, 0xff, 0x7f, 0x00, 0x80]
        );
        assert_eq!(bytes(Layout::S24_3Le, &[1.0]), [0xff, 0xff, 0x7f]);
        assert_eq!(bytes(Layout::S24_3Le, &[-1.0]), [0x00, 0x00, 0x80]);
        assert_eq!(bytes(Layout::S24Le, &[1.0]), [0xff, 0xff, 0x7f, 0x00]);
        assert_eq!(bytes(Layout::S24Le, &[-1.0]), [0x00, 0x00, 0x80, 0xff]);
        assert_eq!(bytes(Layout::S32Le, &[1.0]), i32::MAX.to_le_bytes());
        assert_eq!(bytes(Layout::S32Le, &[-2.0]), i32::MIN.to_le_bytes());
        for layout in ALL {
            assert!(
                bytes(layout, &[f32::NAN]).iter().all(|&b| b == 0),
                "{layout:?}"
            );
        }
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        // Half a step of 16 bits each side of zero, and 1.5 steps.
        assert_eq!(f32_to_i16(0.5 / 32768.0), 1);
        assert_eq!(f32_to_i16(-0.5 / 32768.0), -1);
        assert_eq!(f32_to_i16(1.5 / 32768.0), 2);
        assert_eq!(f32_to_i16(0.49 / 32768.0), 0);
        assert_eq!(bytes(Layout::S24_3Le, &[0.5 / 8_388_608.0]), [1, 0, 0]);
    }

    #[test]
    fn i16_conversion_equals_rounding_in_f64() {
        // The vectorisable form against the plain one: every f32 around
        // each half step and whole step of 16 bits, and a sweep of all bit
        // patterns (infinities, NaNs, denormals, beyond full scale).
        let reference =
            |x: f32| round_half_away(f64::from(x) * 32768.0).clamp(-32768.0, 32767.0) as i16;
        let check = |x: f32| assert_eq!(f32_to_i16(x), reference(x), "{x:e}");
        for k in -65_540i32..=65_540 {
            let x = k as f32 / 65_536.0;
            check(x);
            check(f32::from_bits(x.to_bits().wrapping_add(1)));
            check(f32::from_bits(x.to_bits().wrapping_sub(1)));
        }
        for bits in (0..=u32::MAX).step_by(997) {
            check(f32::from_bits(bits));
        }
    }

    #[test]
    fn s16_blocks_equal_the_sample_conversion() {
        // to_device's S16 loop (AVX2 where the CPU has it, 8 at a time,
        // with a scalar tail) against f32_to_i16 one by one: ties, edges,
        // beyond full scale, NaN, at every block length up to 40.
        let mut values = vec![
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1.0,
            -1.0,
            0.0,
            -0.0,
        ];
        for k in -40i32..=40 {
            let x = k as f32 / 65_536.0 + 0.25;
            values.extend([x, -x, f32::from_bits(x.to_bits() + 1), 2.0 * x]);
        }
        for len in 0..=40 {
            for start in 0..values.len() - len {
                let x = &values[start..start + len];
                let want: Vec<u8> = x
                    .iter()
                    .flat_map(|&s| f32_to_i16(s).to_le_bytes())
                    .collect();
                assert_eq!(bytes(Layout::S16Le, x), want, "{x:?}");
            }
        }
    }

    #[test]
    fn each_device_layout_byte_for_byte() {
        // 0.25 and -0.5 in every layout, little-endian.
        let x = [0.25f32, -0.5];
        assert_eq!(bytes(Layout::S16Le, &x), [0x00, 0x20, 0x00, 0xc0]);
        assert_eq!(
            bytes(Layout::S24Le, &x),
            [0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0xc0, 0xff]
        );
        assert_eq!(
            bytes(Layout::S24_3Le, &x),
            [0x00, 0x00, 0x20, 0x00, 0x00, 0xc0]
        );
        assert_eq!(
            bytes(Layout::S32Le, &x),
            [0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0xc0]
        );
        assert_eq!(
            bytes(Layout::F32Le, &x),
            [0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x00, 0xbf]
        );
        assert_eq!(
            bytes(Layout::F32Le, &[1.5, -2.0]),
            [1.0f32.to_le_bytes(), (-1.0f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn every_16_bit_value_reaches_every_layout_exactly_and_back() {
        let samples: Vec<f32> = (i16::MIN..=i16::MAX).map(i16_to_f32).collect();
        for layout in ALL {
            let b = bytes(layout, &samples);
            for (k, chunk) in (i16::MIN..=i16::MAX).zip(b.chunks_exact(layout.bytes_per_sample())) {
                let k32 = i32::from(k);
                let want: Vec<u8> = match layout {
                    Layout::S16Le => k.to_le_bytes().to_vec(),
                    Layout::S24Le => (k32 << 8).to_le_bytes().to_vec(),
                    Layout::S24_3Le => (k32 << 8).to_le_bytes()[..3].to_vec(),
                    Layout::S32Le => (k32 << 16).to_le_bytes().to_vec(),
                    Layout::F32Le => i16_to_f32(k).to_le_bytes().to_vec(),
                };
                assert_eq!(chunk, &want[..], "{layout:?} k = {k}");
            }
            let mut back = vec![0.0f32; samples.len()];
            assert_eq!(from_device(layout, &b, &mut back), samples.len());
            assert_eq!(back, samples, "{layout:?} back");
        }
    }

    #[test]
    fn capture_bytes_sign_extend_and_keep_float_headroom() {
        let mut out = [0.0f32; 2];
        // S24_LE with a stray high byte: ignored.
        from_device(
            Layout::S24Le,
            &[0x00, 0x00, 0xc0, 0x12, 0x00, 0x00, 0x20, 0xee],
            &mut out,
        );
        assert_eq!(out, [-0.5, 0.25]);
        let mut f = Vec::new();
        f.extend_from_slice(&1.5f32.to_le_bytes());
        f.extend_from_slice(&f32::NAN.to_le_bytes());
        from_device(Layout::F32Le, &f, &mut out);
        assert_eq!(out, [1.5, 0.0]);
    }

    #[test]
    fn short_buffers_convert_whole_samples_only() {
        let mut out = [0u8; 5];
        assert_eq!(to_device(Layout::S16Le, &[0.5, 0.5, 0.5], &mut out), 2);
        assert_eq!(out[4], 0);
        let mut f = [0.0f32; 4];
        assert_eq!(from_device(Layout::S24_3Le, &[0; 7], &mut f), 2);
    }
}
