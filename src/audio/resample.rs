//! Fractional resampler: rate conversion (stream rate → device rate, file
//! rate → stream rate) and clock-drift following in one stage.
//!
//! Input: interleaved `f32` frames at `in_rate`. Output: interleaved `f32`
//! frames at `out_rate`, where the ratio is `in_rate / out_rate` scaled by
//! `1 + drift_ppm·1e-6` (positive drift consumes input faster: the sender's
//! clock runs fast, so we must eat its surplus).
//!
//! Policy:
//! - Band-limited interpolation with a Kaiser-windowed sinc (Smith's
//!   "bandlimited interpolation"), the kernel tabulated at 256 phases
//!   between two input frames, laid out by phase (contiguous taps, and
//!   beside them the differences to the next phase's: an output frame
//!   blends the two into one row, then takes one dot product per channel
//!   with it), so any ratio, even one that changes every frame, is served
//!   from the same table.
//! - Converting (unequal rates): 16 zero crossings on each side, Kaiser
//!   β = 8.6 (≈ 86 dB stopband); the cutoff is 0.91 of the lower Nyquist
//!   frequency, which puts the end of the transition band just below it,
//!   so downsampling does not alias.
//! - Following drift at equal rates: the input's band is already the
//!   output's, so there is nothing to low-pass; the cutoff sits at Nyquist
//!   and the transition band straddles it (what lies above ≈ 0.8 of
//!   Nyquist, ultrasonic at 48 kHz, folds back onto itself, never into the
//!   band below). 16 zero crossings (32 taps), β = 10. Worst-case error of
//!   the interpolation over every fractional position, computed from the
//!   kernels: ≤ −98 dB up to 0.8 of Nyquist (19.2 kHz at 48 kHz), −53 dB
//!   at 20 kHz; the conversion kernel's at equal rates was −91 dB to
//!   15 kHz, −88 dB at 18 kHz, −37 dB at 19.2 kHz, −24 dB at 20 kHz. With
//!   12 zero crossings (24 taps) the same bars held to 15 kHz (−97 dB),
//!   but the shorter look-ahead tipped the playout simulation's sync
//!   give-up case into periodic starving (tests/playout_sim).
//! - Measured (tests below, against the ideal sine): 1 kHz tone SNR
//!   48000→44100 98.9 dB, 44100→48000 98.5 dB, 8000→48000 110.1 dB,
//!   48000→8000 112.1 dB; 15 kHz 91.6–92.3 dB; a 5 kHz tone at
//!   48000→8000 is rejected by 95.5 dB; following ±100 to ±5000 ppm at
//!   48 kHz, 1 kHz 112.0 dB, 15 kHz 103.0 dB. The tests hold them to
//!   90 dB.
//! - Layout for the vector unit: the history is planar (one contiguous run
//!   of frames per channel, deinterleaved once on the way in), each kernel
//!   row is padded on its oldest side with zero taps to a multiple of 4,
//!   and the dot products keep 8 independent partial sums, summed once at
//!   the end. That is a plain element-wise loop over fixed-size chunks,
//!   which the compiler turns into SSE2 (the x86_64 baseline; no
//!   `target-cpu` needed) or NEON multiply-adds (fused on aarch64). The
//!   kernels of the usual rates (equal, and upsampling to 48 kHz) get a
//!   copy of the loop with the row length fixed. The summation order is
//!   fixed, so block sizes still give bit-identical output
//!   (`blocks_equal_one_call`).
//!   While the cursor is free, the kernel steps it itself (`Walk`), so a
//!   whole period is one call with the row and the cursor in registers.
//!   On x86_64 CPUs with AVX that kernel runs eight lanes wide
//!   (`frames_fixed_avx`), on aarch64 written with NEON's intrinsics
//!   (`frames_fixed_neon`), both with the same bits.
//!   The cursor is fixed-point (`FRAC_BITS`), and the SIMD kernels check
//!   one bound per frame (`Kernel::last_first`).
//!   Cost, stereo 48 kHz output (benches/resample_speed): with drift 2.9 M
//!   instructions per second of audio on x86_64 with AVX (callgrind), 3.4 M
//!   on aarch64 (counted under qemu); 44.1 → 48 kHz 3.6 M and 3.7 M. Two
//!   dot products per channel with 40 taps took 19.6 M and 14.9 M, the
//!   interleaved two-accumulator loop before that 47 M and 31 M
//!   (benches/README.md). The products are four lanes wide on both
//!   (SSE2 needs the lane sum written with its own shuffles: `lane_sum`).
//! - The output timeline is aligned with the input: output frame k is the
//!   input signal at input position k·ratio, so the signal has no group
//!   delay of its own; what the stage holds back is the filter's look-ahead
//!   (`half` input frames), which `latency_frames` reports.
//! - Drift changes glide at most 5000 ppm per second of output, so a
//!   controller's step is a pitch glide, never a click.
//! - Everything is allocated in `new`; `process`, `input_needed` and
//!   `set_drift_ppm` do not allocate.
//!
//! Pass-through (equal rates, the clocks agree), and switching in and out
//! of it without a click:
//! - Pass-through holds while the rates are equal, the requested and the
//!   applied drift are both exactly 0 and the read position sits exactly
//!   on an input frame (fraction 0, no landing under way):
//!   `is_passthrough`. Frames are then copied: output == input, bit for
//!   bit, with no delay. The last `half + pad - 1` input frames are kept as
//!   planar history all the while (a copy of at most that many frames per
//!   call).
//! - Entering: a non-zero `set_drift_ppm` leaves pass-through at once. The
//!   next output frame is computed at the very position pass-through would
//!   have copied (the next input frame, fraction 0), from a history that is
//!   already full, so the stream neither jumps nor restarts from silence;
//!   the drift then glides up from 0. The filter's look-ahead (`half`
//!   frames) is taken from the input once: `input_needed` asks for that
//!   much more in the call where it happens, and `latency_frames` shows it.
//! - Leaving: after `set_drift_ppm(0.0)` the drift glides back to 0. The
//!   position then generally sits between two input frames (fraction f).
//!   The stage lands it on a frame: it moves the position by −f (f < ½)
//!   or 1 − f (f ≥ ½), in equal steps of at most 500 ppm per output frame
//!   (≤ 1000 frames: 21 ms at 48 kHz; a pitch offset of at most 0.9 cent,
//!   position-continuous), and the last of those steps sets the fraction to
//!   exactly 0 (the steps' truncation it absorbs is ≲ 3e-7 frame). From that frame on
//!   the stage passes through again: the frames still held as look-ahead
//!   are played first, straight from the history (bit-exact), then input is
//!   copied; `input_needed` asks for that much less once, and the latency
//!   returns to 0. A new non-zero drift during the landing cancels it.
//! - Unequal rates never pass through; drift there just glides.

use super::chunks;
use std::fmt;
use std::sync::Arc;

/// Zero crossings of the sinc on each side of the centre (conversions).
const ZERO_CROSSINGS: f64 = 16.0;
/// Kernel phases between two input frames. Blending two neighbouring
/// phases leaves an error near (π/256)²/8 ≈ 2e-5, below the window's own
/// ripple (the SNR tests below measure it).
const PHASES: usize = 1 << PHASE_BITS;
const PHASE_BITS: u32 = 8;
/// A position's fraction of a frame is fixed-point, in units of 2^-32
/// frame, and so is the step per output frame (`Step`): the cursor moves
/// by integer additions, which are exact, so a run of steps is one
/// multiplication (`input_needed`), the phase and the blend are shifts
/// and a mask, and block sizes still give the same positions. 2^-32
/// frame is 2e-4 ppm of a step, and a blend to 2^-24 of a phase is
/// exact in `f32`.
const FRAC_BITS: u32 = 32;
const ONE: u64 = 1 << FRAC_BITS;
/// A step per output frame in units of 2^-32 input frame (at most
/// `MAX_RATIO` frames and the drift: well within `u64`).
type Step = u64;
/// Kaiser window shape: trades main-lobe width for ≈ 86 dB side lobes.
const KAISER_BETA: f64 = 8.6;
/// Cutoff as a fraction of the lower Nyquist frequency: with 16 zero
/// crossings and β = 8.6 the transition band is ≈ ±8.6 % of the cutoff
/// wide, so 0.91 ends it just below Nyquist.
const ROLLOFF: f64 = 0.91;
/// Following drift at equal rates: no low-pass beyond the stream's own
/// band (cutoff at Nyquist), so the transition band may straddle Nyquist
/// (what lies above it folds back onto itself, above the audible band):
/// 32 taps do better than the conversion kernel's 40 everywhere below
/// 20 kHz at 48 kHz (see the module header).
const DRIFT_ZERO_CROSSINGS: f64 = 16.0;
const DRIFT_KAISER_BETA: f64 = 10.0;
/// The drift the stage accepts; the controller asks for at most ±2500.
pub const MAX_DRIFT_PPM: f64 = 5000.0;
/// How fast the applied drift follows a new request.
const DRIFT_SLEW_PPM_PER_S: f64 = 5000.0;
/// Rate ratios outside this range need more history than a speaker needs.
const MAX_RATIO: f64 = 32.0;

/// Why a resampler cannot be built.
#[derive(Debug, Clone, PartialEq)]
pub enum ResampleError {
    NoChannels,
    ZeroRate { in_rate: u32, out_rate: u32 },
    RatioOutOfRange { in_rate: u32, out_rate: u32 },
    ZeroMaxOutput,
}

impl fmt::Display for ResampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResampleError::NoChannels => {
                write!(f, "resampler: channel count is 0; give at least 1 channel")
            }
            ResampleError::ZeroRate { in_rate, out_rate } => write!(
                f,
                "resampler: sample rate {in_rate} → {out_rate} Hz has a zero rate; check the stream format and the device rate"
            ),
            ResampleError::RatioOutOfRange { in_rate, out_rate } => write!(
                f,
                "resampler: cannot convert {in_rate} → {out_rate} Hz (ratio beyond 1:{MAX_RATIO}); choose a device rate closer to the stream's"
            ),
            ResampleError::ZeroMaxOutput => write!(
                f,
                "resampler: output block size is 0 frames; check the period size"
            ),
        }
    }
}

impl std::error::Error for ResampleError {}

/// Windowed-sinc fractional resampler with its own history.
#[derive(Debug, Clone)]
pub struct Resampler {
    channels: usize,
    in_rate: u32,
    out_rate: u32,
    /// in_rate / out_rate: input frames per output frame at 0 ppm.
    nominal_step: f64,
    /// The filter's look-ahead in input frames: an output frame at
    /// (ipos, frac) reads input up to frame `ipos + half`.
    half: usize,
    /// History behind the read position: an output frame reads input from
    /// frame `ipos - behind` on; `behind = taps - half - 1`.
    behind: usize,
    /// Row length: the kernel's `2·half` taps plus zero taps on the oldest
    /// side up to a multiple of `VECTOR`.
    taps: usize,
    /// The kernel laid out by phase: entry p (0..PHASES) holds the `taps`
    /// weights for an output position p/PHASES past an input frame, then
    /// the `taps` differences to phase p + 1's weights. An output frame
    /// blends the two into one row (once, for every channel) and takes
    /// one dot product per channel with it; nothing else is computed per
    /// tap at run time. Shared between resamplers of the same `design`.
    poly: Arc<[f32]>,
    /// What the table depends on.
    design: Design,
    /// Room for the blended row of a kernel too long to keep in registers
    /// (see `Resampler::render`).
    row: Vec<Lanes>,
    /// Input history, planar: channel c's frames are
    /// `buf[c·cap .. c·cap + buf_frames]`.
    buf: Vec<f32>,
    cap: usize,
    buf_frames: usize,
    /// Where the next output frame is read, and how the drift stands.
    cur: Cursor,
    target_ppm: f64,
    /// The position's advance per output frame once the drift has glided
    /// to `target_ppm`; kept with it so the common step needs no
    /// arithmetic on the drift.
    target_step: Step,
    /// The step at 0 ppm.
    nominal: Step,
    /// The most the applied step changes per output frame (the glide);
    /// at least 1.
    slew: i64,
    /// Tests: every row length through the general loop (`render::<0>`),
    /// the reference for the fixed-length one.
    #[cfg(test)]
    general_only: bool,
}

/// The read position and the state that moves it, apart from the history
/// so `input_needed` can run it ahead on a copy.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cursor {
    /// Position of the next output frame: frame index into the history plus
    /// a fraction in [0, 1). Kept apart so that the fraction's arithmetic
    /// does not depend on where the buffer happens to start (block sizes
    /// give bit-identical output).
    ipos: usize,
    /// In units of 2^-32 frame (see `FRAC_BITS`).
    frac: u32,
    /// The step applied (the drift after the glide).
    applied: Step,
    /// Output frames left in a landing (the glide back to pass-through):
    /// each moves the position by 1 frame + `land_delta` 2^-32 frames.
    land_left: u32,
    land_delta: i64,
}

/// The kernel's shape: what its table depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Design {
    /// Cutoff as a fraction of the input's Nyquist frequency.
    cutoff: f64,
    /// Zero crossings of the sinc on each side of the centre.
    zero_crossings: f64,
    kaiser_beta: f64,
    taps: usize,
}

/// One vector register of `f32`: SSE2 (the x86_64 baseline) or NEON. Rows
/// are padded to a multiple of it; a dot product keeps two vectors of
/// partial sums (8 independent lanes), summed once at the end.
const VECTOR: usize = 4;
/// The largest position change per output frame, beyond 1, while landing
/// on an input frame to pass through again (500 ppm).
const LAND_STEP: f64 = 500e-6;

/// `acc + w·v`, fused where the vector unit has it (NEON's `fmla`; the
/// x86_64 baseline has no FMA and `mul_add` would be a libm call there).
#[inline(always)]
fn mac(acc: f32, w: f32, v: f32) -> f32 {
    #[cfg(target_arch = "aarch64")]
    {
        w.mul_add(v, acc)
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        acc + w * v
    }
}

/// One vector register's worth of kernel weights.
type Lanes = [f32; VECTOR];

/// The kernel row between two phases: `row + blend·diff`, into `into`.
/// `row` and `diff` hold `VECTOR` weights per entry of `into`.
#[inline(always)]
fn blend_row(row: &[f32], diff: &[f32], blend: f32, into: &mut [Lanes]) {
    for ((o, w), d) in into
        .iter_mut()
        .zip(row.chunks_exact(VECTOR))
        .zip(diff.chunks_exact(VECTOR))
    {
        for l in 0..VECTOR {
            o[l] = mac(w[l], d[l], blend);
        }
    }
}

/// `row · history`: the even vectors into one set of partial sums, the
/// odd into another (independent chains for the pipeline), summed in a
/// fixed order. The element-wise body over fixed-size chunks is what the
/// compiler vectorises; `history` holds `VECTOR` frames per entry of
/// `row`, which has at least two.
#[inline(always)]
fn dot(row: &[Lanes], history: &[f32]) -> f32 {
    let mut terms = row.iter().zip(history.chunks_exact(VECTOR));
    let mut acc = [[0.0f32; VECTOR]; 2];
    for a in acc.iter_mut() {
        if let Some((w, v)) = terms.next() {
            for l in 0..VECTOR {
                a[l] = w[l] * v[l];
            }
        }
    }
    for (i, (w, v)) in terms.enumerate() {
        let a = &mut acc[i % 2];
        for l in 0..VECTOR {
            a[l] = mac(a[l], w[l], v[l]);
        }
    }
    let mut s = [0.0f32; VECTOR];
    for l in 0..VECTOR {
        s[l] = acc[0][l] + acc[1][l];
    }
    lane_sum(&s)
}

/// One output frame with the row length known (`V` vectors): the blended
/// row, then one dot product per channel of `out`, each channel's history
/// from frame `first`. Same arithmetic, in the same order,
/// as `blend_row` and `dot`, on fixed-size arrays, so that the compiler
/// unrolls it whole and keeps the row in registers.
#[inline(always)]
fn frame_fixed<const V: usize>(
    k: Kernel<'_, V>,
    w: &[Lanes; V],
    diff: &[Lanes; V],
    blend: f32,
    first: usize,
    out: &mut [f32],
) {
    let mut row = [[0.0f32; VECTOR]; V];
    for ((o, w), d) in row.iter_mut().zip(w).zip(diff) {
        for l in 0..VECTOR {
            o[l] = mac(w[l], d[l], blend);
        }
    }
    for (c, o) in out.iter_mut().enumerate() {
        let Some(history) = k
            .history(c, first)
            .and_then(|h| <&[Lanes; V]>::try_from(chunks::<VECTOR, f32>(h)).ok())
        else {
            continue;
        };
        *o = dot_fixed(&row, history);
    }
}

/// The cursor while it is free (see `Resampler::is_free`), as the kernels
/// step it between frames: the position, the step applied, and the glide
/// towards the target step (`glide` frames left: each but the last moves
/// the step by `slew`, the last sets `target`, as `Resampler::glide`
/// does frame by frame). Positions and steps in units of 2^-32 frame.
/// Stepping it inside the kernel loop keeps it in registers: planning
/// the frames into an array first cost about 30 instructions a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Walk {
    ipos: usize,
    frac: u32,
    applied: Step,
    target: Step,
    /// Towards `target`: ± the resampler's slew.
    slew: i64,
    glide: u64,
    /// The first history frame a row covers is `ipos - behind`.
    behind: usize,
}

impl Walk {
    /// Where this frame is read: the kernel phase, the blend towards the
    /// next one, and the first history frame the row covers (wrapped
    /// around, so past any bound, if the position were ever behind the
    /// history).
    #[inline(always)]
    fn place(&self) -> (usize, f32, usize) {
        let (phase, blend) = phase(self.frac);
        (phase, blend, self.ipos.wrapping_sub(self.behind))
    }

    /// On by one output frame.
    #[inline(always)]
    fn step(&mut self) {
        if self.glide != 0 {
            self.applied = if self.glide == 1 {
                self.target
            } else {
                // Strictly between the step and the target: no wrap.
                self.applied.wrapping_add_signed(self.slew)
            };
            self.glide -= 1;
        }
        let (whole, frac) = split(u64::from(self.frac) + self.applied);
        self.ipos += whole;
        self.frac = frac;
    }

    /// This walk `m` steps on, at once: integer steps add up exactly, so
    /// it is `step` m times.
    fn after(&self, m: u64) -> Walk {
        let (a, s, t) = (
            i128::from(self.applied),
            i128::from(self.slew),
            i128::from(self.target),
        );
        let (mi, g) = (i128::from(m), i128::from(self.glide));
        let (sum, applied, glide) = if m < self.glide {
            // Every step glides on.
            (mi * a + s * mi * (mi + 1) / 2, a + mi * s, self.glide - m)
        } else if self.glide == 0 {
            (mi * a, a, 0)
        } else {
            // g - 1 gliding steps, then the target's from the g-th on.
            let gliding = (g - 1) * a + s * (g - 1) * g / 2;
            (gliding + (mi - g + 1) * t, t, 0)
        };
        let (whole, frac) = split((i128::from(self.frac) + sum) as u64);
        Walk {
            ipos: self.ipos + whole,
            frac,
            applied: applied as u64,
            glide,
            ..*self
        }
    }
}

/// What the kernel reads, with the row length known (`V` vectors): the
/// table (row 2p: phase p's weights; row 2p + 1: the differences to
/// p + 1's) and the planar history (channel c from `buf[c·cap]`).
#[derive(Clone, Copy)]
struct Kernel<'a, const V: usize> {
    rows: &'a [[Lanes; V]],
    buf: &'a [f32],
    cap: usize,
}

impl<'a, const V: usize> Kernel<'a, V> {
    /// Phase `phase`'s weights and the differences to the next phase's.
    #[inline(always)]
    fn rows(&self, phase: usize) -> Option<(&'a [Lanes; V], &'a [Lanes; V])> {
        Some((self.rows.get(2 * phase)?, self.rows.get(2 * phase + 1)?))
    }

    /// Channel `c`'s history from frame `first`, one row long.
    #[inline(always)]
    fn history(&self, c: usize, first: usize) -> Option<&'a [f32]> {
        let from = c * self.cap + first;
        self.buf.get(from..from + V * VECTOR)
    }

    /// The last first history frame from which every one of `channels`
    /// channels holds a row, if the table holds every phase: a frame read
    /// from at most there reads in bounds, so the SIMD kernels check one
    /// number per frame instead of a slice per frame and channel (which
    /// was a tenth of their count).
    #[inline(always)]
    fn last_first(&self, channels: usize) -> Option<usize> {
        if self.rows.len() < 2 * PHASES {
            return None;
        }
        let used = channels.checked_sub(1)?.checked_mul(self.cap)?;
        self.buf.len().checked_sub(used)?.checked_sub(V * VECTOR)
    }

    /// `rows` without the check.
    ///
    /// Safety: `phase < PHASES` and `last_first` is `Some`.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    unsafe fn rows_unchecked(&self, phase: usize) -> (*const f32, *const f32) {
        let w = self.rows.as_ptr().add(2 * phase);
        (w.cast::<f32>(), w.add(1).cast::<f32>())
    }

    /// The start of `history` without the check.
    ///
    /// Safety: `first` at most `last_first(channels)` and `c < channels`.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    unsafe fn history_unchecked(&self, c: usize, first: usize) -> *const f32 {
        self.buf.as_ptr().add(c * self.cap + first)
    }
}

/// Output frames into `out` (`channels` samples each) from what `k`
/// reads, at the places `walk` steps through, while the first history
/// frame read is at most `last_first`; returns the frames made, and
/// `walk` has stepped once after each.
/// Out of line: inlined, the count was the same (x86_64: 11.52 against
/// 11.49 Mi instructions per second of audio following +1000 ppm;
/// aarch64, qemu: 8.44 against 8.45), and the kernel keeps a symbol of
/// its own in profiles.
#[inline(never)]
fn frames_fixed<const V: usize>(
    k: Kernel<'_, V>,
    walk: &mut Walk,
    last_first: usize,
    channels: usize,
    out: &mut [f32],
) -> usize {
    let Some(bound) = k.last_first(channels) else {
        return frames_body(k, walk, last_first, channels, out);
    };
    let last_first = last_first.min(bound);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked just above), and every read is
        // in bounds from at most `last_first` on.
        return unsafe { frames_fixed_avx(k, walk, last_first, channels, out) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: every read is in bounds from at most `last_first` on.
    return unsafe { frames_fixed_neon(k, walk, last_first, channels, out) };
    #[cfg(not(target_arch = "aarch64"))]
    frames_body(k, walk, last_first, channels, out)
}

/// `frames_fixed` on aarch64, written with NEON's intrinsics: the same
/// fused multiply-adds in the same order as `frame_fixed` (so the same
/// bits), with the blended row kept in registers. Built from plain Rust,
/// the row went to the stack and back for every channel around the
/// out-of-line lane sum, and inlining that sum made the count higher
/// (qemu, playout following +1000 ppm: 9.82 → 8.44 Mi instructions per
/// second of audio).
///
/// Safety: `last_first` at most `k.last_first(channels)`.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn frames_fixed_neon<const V: usize>(
    k: Kernel<'_, V>,
    walk: &mut Walk,
    last_first: usize,
    channels: usize,
    out: &mut [f32],
) -> usize {
    use std::arch::aarch64::{
        float32x4_t, vadd_f32, vaddq_f32, vcombine_f32, vdupq_n_f32, vfmaq_f32, vget_high_f32,
        vget_low_f32, vgetq_lane_f32, vld1q_f32, vmulq_f32, vpaddq_f32, vpadds_f32,
    };
    /// Vectors of the longest row served here.
    const MAX_V: usize = 9;
    if V > MAX_V || V < 2 {
        return frames_body(k, walk, last_first, channels, out);
    }
    // In registers while it steps (through `&mut` it was stored back
    // every frame).
    let mut at = *walk;
    let mut made = 0;
    for frame in out.chunks_exact_mut(channels) {
        let (phase, blend, first) = at.place();
        if first > last_first {
            break;
        }
        // SAFETY (every NEON operation below): NEON is part of the
        // aarch64 baseline; `phase < PHASES` (from a u32's top bits) and
        // `first` is at most `k.last_first(channels)` (the caller's
        // promise), so the rows and each channel's history hold V
        // vectors (4 f32 each) from these pointers, and each load reads
        // one of them.
        let (w, diff) = unsafe { k.rows_unchecked(phase) };
        let b = unsafe { vdupq_n_f32(blend) };
        let mut row = [unsafe { vdupq_n_f32(0.0) }; MAX_V];
        for (i, r) in row.iter_mut().enumerate().take(V) {
            *r = unsafe { vfmaq_f32(vld1q_f32(w.add(4 * i)), vld1q_f32(diff.add(4 * i)), b) };
        }
        // Channel c's four partial sums (`dot_fixed`'s `s`). A macro, not
        // a closure: through a closure the row went to the stack and the
        // loop was not unrolled (qemu: the resampler's count doubled).
        macro_rules! partial {
            ($c:expr) => {{
                let history = unsafe { k.history_unchecked($c, first) };
                let v = |i: usize| -> float32x4_t { unsafe { vld1q_f32(history.add(4 * i)) } };
                let mut acc = unsafe { [vmulq_f32(row[0], v(0)), vmulq_f32(row[1], v(1))] };
                for (i, r) in row.iter().enumerate().take(V).skip(2) {
                    acc[i % 2] = unsafe { vfmaq_f32(acc[i % 2], *r, v(i)) };
                }
                unsafe { vaddq_f32(acc[0], acc[1]) }
            }};
        }
        if let [left, right] = frame {
            // Stereo: both lane sums at once, in `lane_sum`'s order,
            // (s0 + s2) + (s1 + s3) for each.
            let (l, r) = (partial!(0), partial!(1));
            let sums = unsafe {
                let t = vaddq_f32(
                    vcombine_f32(vget_low_f32(l), vget_low_f32(r)),
                    vcombine_f32(vget_high_f32(l), vget_high_f32(r)),
                );
                vpaddq_f32(t, t)
            };
            unsafe {
                *left = vgetq_lane_f32(sums, 0);
                *right = vgetq_lane_f32(sums, 1);
            }
        } else {
            for (c, o) in frame.iter_mut().enumerate() {
                let s = partial!(c);
                *o = unsafe { vpadds_f32(vadd_f32(vget_low_f32(s), vget_high_f32(s))) };
            }
        }
        at.step();
        made += 1;
    }
    *walk = at;
    made
}

/// `frames_fixed` for x86_64 CPUs with AVX (all since 2011): the same
/// arithmetic in the same order, so the same bits (Rust never fuses a
/// multiply and an add on its own), eight lanes wide. Two neighbouring
/// vectors of the row side by side in one register are exactly
/// `dot_fixed`'s two sets of partial sums (even vectors, odd vectors),
/// so one chain of eight-lane sums is its two chains of four; an odd
/// last vector joins the even set, as there.
///
/// Safety: the CPU must have AVX, and `last_first` be at most
/// `k.last_first(channels)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn frames_fixed_avx<const V: usize>(
    k: Kernel<'_, V>,
    walk: &mut Walk,
    last_first: usize,
    channels: usize,
    out: &mut [f32],
) -> usize {
    use std::arch::x86_64::{
        __m128, __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps,
        _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm_add_ps,
        _mm_cvtss_f32, _mm_loadu_ps, _mm_movehl_ps, _mm_mul_ps, _mm_set1_ps, _mm_setzero_ps,
        _mm_shuffle_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
    };
    /// Register pairs of the longest row served here (9 vectors).
    const PAIRS: usize = 4;
    let pairs = V / 2;
    if pairs > PAIRS || pairs == 0 {
        return frames_body(k, walk, last_first, channels, out);
    }
    let odd = V % 2 == 1;
    // In registers while it steps (through `&mut` it was stored back
    // every frame).
    let mut at = *walk;
    let mut made = 0;
    for frame in out.chunks_exact_mut(channels) {
        let (phase, blend, first) = at.place();
        if first > last_first {
            break;
        }
        // SAFETY (every load below): `phase < PHASES` (from a u32's top
        // bits) and `first` is at most `k.last_first(channels)` (the
        // caller's promise), so the rows and each channel's history hold
        // 4·V floats from these pointers; pair j reads 8j..8j + 8 ≤
        // 8·(V/2), the odd last vector 8·(V/2)..4·V. AVX was checked by
        // the caller.
        let (w, diff) = unsafe { k.rows_unchecked(phase) };
        let mut row = [_mm256_setzero_ps(); PAIRS];
        let b = _mm256_set1_ps(blend);
        for (j, r) in row.iter_mut().take(pairs).enumerate() {
            *r = unsafe {
                _mm256_add_ps(
                    _mm256_loadu_ps(w.add(8 * j)),
                    _mm256_mul_ps(_mm256_loadu_ps(diff.add(8 * j)), b),
                )
            };
        }
        let last = if odd {
            unsafe {
                _mm_add_ps(
                    _mm_loadu_ps(w.add(8 * pairs)),
                    _mm_mul_ps(_mm_loadu_ps(diff.add(8 * pairs)), _mm_set1_ps(blend)),
                )
            }
        } else {
            _mm_setzero_ps()
        };
        // Channel c's four partial sums (`dot_fixed`'s `s`).
        let partial = |c: usize| -> __m128 {
            let h = unsafe { k.history_unchecked(c, first) };
            let product = |j: usize| -> __m256 {
                unsafe { _mm256_mul_ps(row[j], _mm256_loadu_ps(h.add(8 * j))) }
            };
            let mut acc = product(0);
            for j in 1..pairs {
                acc = _mm256_add_ps(acc, product(j));
            }
            let mut even = _mm256_castps256_ps128(acc);
            if odd {
                even = _mm_add_ps(even, unsafe {
                    _mm_mul_ps(last, _mm_loadu_ps(h.add(8 * pairs)))
                });
            }
            _mm_add_ps(even, _mm256_extractf128_ps(acc, 1))
        };
        if let [left, right] = frame {
            // Stereo: both lane sums at once, in `lane_sum`'s order,
            // (s0 + s2) + (s1 + s3) for each (10 instructions against 14).
            let (l, r) = (partial(0), partial(1));
            let pairs = _mm_add_ps(_mm_unpacklo_ps(l, r), _mm_unpackhi_ps(l, r));
            let sums = _mm_add_ps(pairs, _mm_movehl_ps(pairs, pairs));
            *left = _mm_cvtss_f32(sums);
            *right = _mm_cvtss_f32(_mm_shuffle_ps(sums, sums, 0b01));
        } else {
            for (c, o) in frame.iter_mut().enumerate() {
                *o = sum4(partial(c));
            }
        }
        at.step();
        made += 1;
    }
    *walk = at;
    made
}

/// The kernel in plain Rust, every read checked: x86_64 without AVX
/// (SSE2), 32-bit ARM, and the reference the AVX and NEON kernels are
/// tested against.
#[inline(always)]
fn frames_body<const V: usize>(
    k: Kernel<'_, V>,
    walk: &mut Walk,
    last_first: usize,
    channels: usize,
    out: &mut [f32],
) -> usize {
    // In registers while it steps (through `&mut` it was stored back
    // every frame).
    let mut at = *walk;
    let mut made = 0;
    for frame in out.chunks_exact_mut(channels) {
        let (phase, blend, first) = at.place();
        if first > last_first {
            break;
        }
        if let Some((w, diff)) = k.rows(phase) {
            frame_fixed(k, w, diff, blend, first, frame);
        }
        at.step();
        made += 1;
    }
    *walk = at;
    made
}

/// `dot` on fixed-size arrays (see `frame_fixed`).
#[inline(always)]
fn dot_fixed<const V: usize>(row: &[Lanes; V], history: &[Lanes; V]) -> f32 {
    let mut acc = [[0.0f32; VECTOR]; 2];
    for (i, (w, v)) in row.iter().zip(history).enumerate() {
        let a = &mut acc[i % 2];
        for l in 0..VECTOR {
            a[l] = if i < 2 {
                w[l] * v[l]
            } else {
                mac(a[l], w[l], v[l])
            };
        }
    }
    let mut s = [0.0f32; VECTOR];
    for l in 0..VECTOR {
        s[l] = acc[0][l] + acc[1][l];
    }
    lane_sum(&s)
}

/// The four partial sums of a dot product added up, `(s0 + s2) + (s1 +
/// s3)`. Written in plain Rust and inlined, this last step made the
/// compiler build every product of two-lane vectors, half of every SSE2
/// register idle (72 instructions for a 32-tap dot product, against 37
/// plus an out-of-line sum); SSE2's own shuffles keep the products four
/// lanes wide (playout following +1000 ppm: 12.56 → 11.49 Mi
/// instructions per second of audio against the out-of-line sum).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lane_sum(s: &[f32; VECTOR]) -> f32 {
    use std::arch::x86_64::_mm_loadu_ps;
    // SAFETY: SSE2 is part of the x86_64 baseline; the load reads the 4 f32 of `s`.
    sum4(unsafe { _mm_loadu_ps(s.as_ptr()) })
}

/// `lane_sum` of a register.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sum4(v: std::arch::x86_64::__m128) -> f32 {
    use std::arch::x86_64::{_mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps};
    // SAFETY: SSE2 is part of the x86_64 baseline (register operations only).
    unsafe {
        let pair = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 0b01)))
    }
}
/// Elsewhere out of line. It serves the general loop and the plain-Rust
/// kernel there (aarch64's fixed rows have NEON's kernel,
/// `frames_fixed_neon`); before that kernel, NEON's own pairwise add
/// inlined here made aarch64's count 7 % higher (qemu: 10.48 against
/// 9.82, following +1000 ppm).
#[cfg(not(target_arch = "x86_64"))]
#[inline(never)]
fn lane_sum(s: &[f32; VECTOR]) -> f32 {
    (s[0] + s[2]) + (s[1] + s[3])
}

/// The kernel phase at fraction `frac` (2^-32 frames) of a frame, and
/// how far towards the next phase the position lies (the row blend): the
/// fraction's top `PHASE_BITS` and the rest, exactly.
#[inline(always)]
fn phase(frac: u32) -> (usize, f32) {
    const BLEND_BITS: u32 = FRAC_BITS - PHASE_BITS;
    let blend = (frac & ((1 << BLEND_BITS) - 1)) as f32 * (1.0 / (1u32 << BLEND_BITS) as f32);
    ((frac >> BLEND_BITS) as usize, blend)
}

/// A position `frac + step` (2^-32 frames) split into whole frames and
/// the fraction.
#[inline(always)]
fn split(f: u64) -> (usize, u32) {
    ((f >> FRAC_BITS) as usize, f as u32)
}

/// `x` frames in units of 2^-32 frame, rounded (x ≥ 0 and far below
/// 2^32 frames).
fn fixed(x: f64) -> u64 {
    (x * ONE as f64).round() as u64
}

/// The cursor one output frame on at a steady `step` (see
/// `Resampler::steady_step`).
#[inline(always)]
fn advance(c: Cursor, step: Step) -> Cursor {
    let (whole, frac) = split(u64::from(c.frac) + step);
    Cursor {
        ipos: c.ipos + whole,
        frac,
        applied: c.applied,
        land_left: 0,
        land_delta: 0,
    }
}

fn bessel_i0(x: f64) -> f64 {
    // Power series; converges fast for the β used here (terms < 1e-17
    // relative after ~30).
    let mut sum = 1.0;
    let mut term = 1.0;
    let half_x = x / 2.0;
    for k in 1..64 {
        let f = half_x / k as f64;
        term *= f * f;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

fn prototype(x: f64, design: &Design) -> f64 {
    let nz = design.zero_crossings;
    if x.abs() >= nz {
        return 0.0;
    }
    let sinc = if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        libm::sin(px) / px
    };
    let r = x / nz;
    let beta = design.kaiser_beta;
    let window = bessel_i0(beta * (1.0 - r * r).sqrt()) / bessel_i0(beta);
    sinc * window
}

/// The kernel table of `design` (see `Resampler::poly`).
fn kernel(design: &Design, behind: usize) -> Arc<[f32]> {
    let taps = design.taps;
    let cutoff = design.cutoff;
    // Tap k is input frame ipos - behind + k; its distance from the
    // output position, scaled to the kernel's time. The padding taps
    // (k < taps - 2·half) are ≥ half frames away, where the prototype is 0.
    let weight = |p: usize, k: usize| {
        let t = behind as f64 - k as f64 + p as f64 / PHASES as f64;
        cutoff * prototype(t * cutoff, design)
    };
    // Each phase's row: `taps` weights, then their differences to the next
    // phase's. Collected straight into the shared slice it is kept in: a
    // Vec turned into one would be copied, and the copy's first home left
    // in the device thread's heap (issue 11: resident memory). `current`
    // holds the phase's weights; each difference computes the next
    // phase's weight and leaves it there, so every weight is worked out
    // once.
    let row = 2 * taps;
    let mut current: Vec<f64> = (0..taps).map(|k| weight(0, k)).collect();
    (0..PHASES * row)
        .map(|i| {
            let (p, k) = (i / row, i % row);
            if k < taps {
                current[k] as f32
            } else {
                let k = k - taps;
                let next = weight(p + 1, k);
                let d = next - current[k];
                current[k] = next;
                d as f32
            }
        })
        .collect()
}

impl Resampler {
    /// Builds a resampler that produces at most `max_output_frames` per
    /// `process` call; all buffers are allocated here.
    pub fn new(
        channels: usize,
        in_rate: u32,
        out_rate: u32,
        max_output_frames: usize,
    ) -> Result<Resampler, ResampleError> {
        Resampler::sharing(channels, in_rate, out_rate, max_output_frames, &[])
    }

    /// `new`, taking the kernel table from one of `others` where it is the
    /// same (every conversion that does not lower the cutoff, i.e.
    /// upsampling, has the same table, and so has every pair of equal
    /// rates): a bank of resamplers for several stream formats then holds
    /// one table per kind (64 kB at equal rates, 72 kB upsampling) instead
    /// of one each.
    pub fn sharing(
        channels: usize,
        in_rate: u32,
        out_rate: u32,
        max_output_frames: usize,
        others: &[&Resampler],
    ) -> Result<Resampler, ResampleError> {
        if channels == 0 {
            return Err(ResampleError::NoChannels);
        }
        if in_rate == 0 || out_rate == 0 {
            return Err(ResampleError::ZeroRate { in_rate, out_rate });
        }
        let nominal_step = in_rate as f64 / out_rate as f64;
        if !(1.0 / MAX_RATIO..=MAX_RATIO).contains(&nominal_step) {
            return Err(ResampleError::RatioOutOfRange { in_rate, out_rate });
        }
        if max_output_frames == 0 {
            return Err(ResampleError::ZeroMaxOutput);
        }
        let (cutoff, zero_crossings, kaiser_beta) = if in_rate == out_rate {
            (1.0, DRIFT_ZERO_CROSSINGS, DRIFT_KAISER_BETA)
        } else {
            let cutoff = ROLLOFF * (out_rate as f64 / in_rate as f64).min(1.0);
            (cutoff, ZERO_CROSSINGS, KAISER_BETA)
        };
        let half = (zero_crossings / cutoff).ceil() as usize;
        let taps = (2 * half).div_ceil(VECTOR) * VECTOR;
        let behind = taps - half - 1;
        let design = Design {
            cutoff,
            zero_crossings,
            kaiser_beta,
            taps,
        };
        let shared = others
            .iter()
            .find(|o| o.design == design)
            .map(|o| Arc::clone(&o.poly));
        let poly = shared.unwrap_or_else(|| kernel(&design, behind));
        // Input for a full output block at the fastest drift, plus the
        // kernel's reach and rounding slack.
        let max_step = nominal_step * (1.0 + MAX_DRIFT_PPM * 1e-6);
        let max_input = (max_output_frames as f64 * max_step).ceil() as usize + 2;
        let cap = max_input + taps + 4;
        let mut r = Resampler {
            channels,
            in_rate,
            out_rate,
            nominal_step,
            half,
            behind,
            taps,
            design,
            poly,
            row: vec![[0.0; VECTOR]; taps / VECTOR],
            buf: vec![0.0; cap * channels],
            cap,
            buf_frames: 0,
            cur: Cursor {
                ipos: 0,
                frac: 0,
                applied: fixed(nominal_step),
                land_left: 0,
                land_delta: 0,
            },
            target_ppm: 0.0,
            target_step: fixed(nominal_step),
            nominal: fixed(nominal_step),
            // At least one unit, so that a glide always ends on its target
            // (`glide` steps by it, `walk` divides by it); 447 at equal 48 kHz rates.
            slew: fixed(nominal_step * DRIFT_SLEW_PPM_PER_S * 1e-6 / out_rate as f64).max(1) as i64,
            #[cfg(test)]
            general_only: false,
        };
        r.reset();
        Ok(r)
    }

    /// Forgets the history and the drift: the next input frame is treated
    /// as the start of a new stream (and equal rates pass through again).
    pub fn reset(&mut self) {
        // The history starts as silence, so the first output frame sits
        // exactly on the first input frame.
        self.buf.fill(0.0);
        self.buf_frames = self.behind;
        self.cur = Cursor {
            ipos: self.behind,
            frac: 0,
            applied: self.nominal,
            land_left: 0,
            land_delta: 0,
        };
        self.target_ppm = 0.0;
        self.target_step = self.step_at(0.0);
    }

    /// Fine adjustment of the ratio; clamped to ±`MAX_DRIFT_PPM`, glides
    /// there at a bounded rate. A non-finite value is ignored. At equal
    /// rates, 0 returns to pass-through (see the module header) and any
    /// other value leaves it.
    pub fn set_drift_ppm(&mut self, ppm: f64) {
        if !ppm.is_finite() {
            return;
        }
        self.target_ppm = ppm.clamp(-MAX_DRIFT_PPM, MAX_DRIFT_PPM);
        self.target_step = self.step_at(self.target_ppm);
    }

    /// Sets the drift at once, without the glide, keeping the history and
    /// the position: for a jump of the timeline (sync's alignment), where
    /// a ratio left thousands of ppm off would take a second to glide
    /// back, and dropping the history (`reset`) would splice the output.
    pub fn set_drift_ppm_now(&mut self, ppm: f64) {
        if !ppm.is_finite() {
            return;
        }
        self.set_drift_ppm(ppm);
        self.cur.applied = self.target_step;
    }

    /// The position's advance per output frame at `ppm` of drift.
    fn step_at(&self, ppm: f64) -> Step {
        fixed(self.nominal_step * (1.0 + ppm * 1e-6))
    }

    /// The drift currently applied (after the glide).
    pub fn drift_ppm(&self) -> f64 {
        if self.cur.applied == self.target_step {
            return self.target_ppm;
        }
        (self.cur.applied as f64 / self.nominal as f64 - 1.0) * 1e6
    }

    /// True while frames are copied untouched: equal rates, no drift asked
    /// or applied, the position on an input frame.
    pub fn is_passthrough(&self) -> bool {
        self.passes(&self.cur)
    }

    fn passes(&self, c: &Cursor) -> bool {
        self.in_rate == self.out_rate
            && self.target_ppm == 0.0
            && c.applied == self.nominal
            && c.frac == 0
            && c.land_left == 0
    }

    /// The step after one more output frame of glide (the drift moves at
    /// most `DRIFT_SLEW_PPM_PER_S`).
    fn glide(&self, applied: Step) -> Step {
        let d = self.target_step as i64 - applied as i64;
        if d > self.slew {
            applied + self.slew as u64
        } else if d < -self.slew {
            applied - self.slew as u64
        } else {
            self.target_step
        }
    }

    /// The position's advance per output frame while following a steady
    /// drift or converting (no glide, no landing under way, none can
    /// start, no pass-through): then `advance` moves the cursor, and
    /// `step` would give the same.
    #[inline(always)]
    fn steady_step(&self, c: &Cursor) -> Option<Step> {
        (self.is_free(c) && c.applied == self.target_step).then_some(self.target_step)
    }

    /// True while no landing is under way and none can start (following
    /// a clock, converting a rate): then a `Walk` moves the position as
    /// `step` would.
    #[inline(always)]
    fn is_free(&self, c: &Cursor) -> bool {
        c.land_left == 0 && (self.target_ppm != 0.0 || self.in_rate != self.out_rate)
    }

    /// The cursor as a `Walk` (see `is_free`).
    #[inline(always)]
    fn walk(&self, c: &Cursor) -> Walk {
        let d = self.target_step.abs_diff(c.applied);
        Walk {
            ipos: c.ipos,
            frac: c.frac,
            applied: c.applied,
            target: self.target_step,
            slew: if self.target_step > c.applied {
                self.slew
            } else {
                -self.slew
            },
            // Frames until a glide of `slew` a frame ends on the target.
            glide: d.div_ceil(self.slew as u64),
            behind: self.behind,
        }
    }

    /// Moves the cursor on by one output frame.
    #[inline]
    fn step(&self, c: Cursor) -> Cursor {
        if let Some(step) = self.steady_step(&c) {
            return advance(c, step);
        }
        let applied = self.glide(c.applied);
        if c.land_left > 0 && self.target_ppm == 0.0 {
            // Never below 1 - LAND_STEP frames: a delta is at most that.
            let f = (i64::from(c.frac) + ONE as i64 + c.land_delta).max(0) as u64;
            if c.land_left == 1 {
                // The last step of a landing ends on a frame: f is within
                // the deltas' truncation of 1 (landing down) or 2 (landing
                // up).
                return Cursor {
                    ipos: c.ipos + split(f + ONE / 2).0,
                    frac: 0,
                    applied,
                    land_left: 0,
                    land_delta: 0,
                };
            }
            let (whole, frac) = split(f);
            return Cursor {
                ipos: c.ipos + whole,
                frac,
                applied,
                land_left: c.land_left - 1,
                land_delta: c.land_delta,
            };
        }
        let (whole, frac) = split(u64::from(c.frac) + applied);
        let mut next = Cursor {
            ipos: c.ipos + whole,
            frac,
            applied,
            land_left: 0,
            land_delta: 0,
        };
        if self.in_rate == self.out_rate
            && self.target_ppm == 0.0
            && applied == self.nominal
            && next.frac != 0
        {
            // Back at 0 ppm between two frames: land on the nearer one.
            let distance = if u64::from(next.frac) < ONE / 2 {
                -i64::from(next.frac)
            } else {
                ONE as i64 - i64::from(next.frac)
            };
            let frames = (distance.unsigned_abs() as f64 / ONE as f64 / LAND_STEP)
                .ceil()
                .max(1.0);
            next.land_left = frames as u32;
            next.land_delta = distance / i64::from(next.land_left);
        }
        next
    }

    /// Input frames `process` must be given now to produce exactly
    /// `output_frames` (it may produce them with fewer only when 0).
    pub fn input_needed(&self, output_frames: usize) -> usize {
        let mut c = self.cur;
        let mut need = self.buf_frames;
        if self.is_free(&c) {
            // The position only moves on: the block's last frame is what
            // needs the most input.
            if output_frames == 0 {
                return 0;
            }
            let last = self.walk(&c).after(output_frames as u64 - 1);
            return (last.ipos + self.half + 1).max(need) - need;
        }
        for i in 0..output_frames {
            if self.passes(&c) {
                // The rest are copied: frames ipos, ipos + 1, …
                need = need.max(c.ipos + (output_frames - i));
                break;
            }
            need = need.max(c.ipos + self.half + 1);
            c = self.step(c);
        }
        need - self.buf_frames
    }

    /// Converts interleaved `input` into interleaved `output`; returns
    /// (frames consumed, frames produced). Consumes as much input as its
    /// history has room for and produces as much as that input allows, up
    /// to `output`'s size; a trailing partial frame in either slice is
    /// ignored.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) -> (usize, usize) {
        if self.is_passthrough() {
            return self.pass(input, output);
        }
        let ch = self.channels;
        let cap = self.cap;
        let out_frames = output.len() / ch;
        let consumed = (input.len() / ch).min(cap - self.buf_frames);
        self.append(&input[..consumed * ch]);

        // The kernels the usual conversions use get their own copy of the
        // loop, with the row length known, so the compiler unrolls the
        // dot products and keeps the blended row in registers: equal rates
        // (drift), and upsampling (44.1 and 8 → 48 kHz).
        let vectors = self.taps / VECTOR;
        #[cfg(test)]
        let vectors = if self.general_only { 0 } else { vectors };
        let produced = match vectors {
            8 => self.render::<8>(output),
            9 => self.render::<9>(output),
            _ => self.render::<0>(output),
        };
        self.compact();
        if produced < out_frames && self.is_passthrough() {
            // Landed: the rest of the block passes through.
            let (c, p) = self.pass(&input[consumed * ch..], &mut output[produced * ch..]);
            return (consumed + c, produced + p);
        }
        (consumed, produced)
    }

    /// Computes output frames from the history until `output` is full, the
    /// history runs out, or the position lands (pass-through resumes);
    /// returns the frames produced. `VECTORS`: the row length in vectors
    /// if known at compile time (`self.taps / VECTOR`), else 0.
    #[inline(always)]
    fn render<const VECTORS: usize>(&mut self, output: &mut [f32]) -> usize {
        if VECTORS > 0 {
            return self.render_fixed::<VECTORS>(output);
        }
        let ch = self.channels;
        let out_frames = output.len() / ch;
        let taps = self.taps;
        let mut row = std::mem::take(&mut self.row);
        let mut produced = 0;
        while produced < out_frames && self.cur.ipos + self.half < self.buf_frames {
            let steady = self.steady_step(&self.cur);
            if steady.is_none() && self.is_passthrough() {
                break;
            }
            let (p, blend) = phase(self.cur.frac);
            let (w, diff) = self.poly[p * 2 * taps..(p + 1) * 2 * taps].split_at(taps);
            blend_row(w, diff, blend, &mut row);
            let first = self.cur.ipos - self.behind;
            let frame = &mut output[produced * ch..(produced + 1) * ch];
            for (c, o) in frame.iter_mut().enumerate() {
                let from = c * self.cap + first;
                *o = dot(&row, &self.buf[from..from + taps]);
            }
            produced += 1;
            self.cur = match steady {
                Some(step) => advance(self.cur, step),
                None => self.step(self.cur),
            };
        }
        self.row = row;
        produced
    }

    /// `render` with the row length known (`V` vectors): the kernel table
    /// taken as whole rows, the frames computed by `frames_fixed`, which,
    /// while the cursor is free (see `is_free`; following a clock,
    /// converting a rate: nearly every frame), steps it itself.
    #[inline(always)]
    fn render_fixed<const V: usize>(&mut self, output: &mut [f32]) -> usize {
        let ch = self.channels;
        let out_frames = output.len() / ch;
        let k = Kernel {
            rows: chunks::<V, Lanes>(chunks::<VECTOR, f32>(&self.poly)),
            buf: &self.buf,
            cap: self.cap,
        };
        // A frame at position p reads history up to frame p + half, which
        // must be in: from at most this first frame.
        let Some(last_first) = self.buf_frames.checked_sub(self.half + 1 + self.behind) else {
            return 0;
        };
        let mut produced = 0;
        while produced < out_frames && self.cur.ipos + self.half < self.buf_frames {
            if self.is_free(&self.cur) {
                let mut walk = self.walk(&self.cur);
                let out = &mut output[produced * ch..];
                produced += frames_fixed(k, &mut walk, last_first, ch, out);
                self.cur = Cursor {
                    ipos: walk.ipos,
                    frac: walk.frac,
                    applied: walk.applied,
                    land_left: 0,
                    land_delta: 0,
                };
                break;
            }
            if self.is_passthrough() {
                break;
            }
            // One frame: `step` moves the cursor (a landing).
            let mut walk = self.walk(&self.cur);
            let out = &mut output[produced * ch..(produced + 1) * ch];
            if frames_fixed(k, &mut walk, last_first, ch, out) == 0 {
                break;
            }
            produced += 1;
            self.cur = self.step(self.cur);
        }
        produced
    }

    /// Appends interleaved frames to the planar history (room checked by
    /// the caller).
    fn append(&mut self, input: &[f32]) {
        let ch = self.channels;
        let frames = input.len() / ch;
        let start = self.buf_frames;
        if ch == 2 {
            // Stereo, the usual stream: both channels in one pass, which
            // the compiler turns into vector shuffles (a strided read per
            // channel stays scalar).
            let (left, right) = self.buf.split_at_mut(self.cap);
            let pairs = left[start..start + frames]
                .iter_mut()
                .zip(&mut right[start..start + frames]);
            for ((l, r), f) in pairs.zip(input.chunks_exact(2)) {
                *l = f[0];
                *r = f[1];
            }
            self.buf_frames += frames;
            return;
        }
        for c in 0..ch {
            let dst = &mut self.buf[c * self.cap + start..c * self.cap + start + frames];
            for (d, s) in dst.iter_mut().zip(input[c..].iter().step_by(ch)) {
                *d = *s;
            }
        }
        self.buf_frames += frames;
    }

    /// Drops history the next output frame no longer reaches.
    fn compact(&mut self) {
        let keep_from = self.cur.ipos - self.behind;
        if keep_from == 0 {
            return;
        }
        for c in 0..self.channels {
            let base = c * self.cap;
            self.buf
                .copy_within(base + keep_from..base + self.buf_frames, base);
        }
        self.buf_frames -= keep_from;
        self.cur.ipos -= keep_from;
    }

    /// Pass-through: first the frames still held as look-ahead (after a
    /// landing), then input copied as it is; the last `behind` frames stay
    /// as history so that leaving pass-through continues seamlessly.
    fn pass(&mut self, input: &[f32], output: &mut [f32]) -> (usize, usize) {
        let ch = self.channels;
        let cap = self.cap;
        let out_frames = output.len() / ch;
        let pending = self.buf_frames - self.cur.ipos;
        let from_history = pending.min(out_frames);
        let ipos = self.cur.ipos;
        for c in 0..ch {
            let src = &self.buf[c * cap + ipos..c * cap + ipos + from_history];
            for (o, s) in output[c..].iter_mut().step_by(ch).zip(src) {
                *o = *s;
            }
        }
        self.cur.ipos += from_history;
        let direct = (out_frames - from_history).min(input.len() / ch);
        if direct == 0 {
            self.compact();
            return (0, from_history);
        }
        // Here the history is played out: ipos == buf_frames.
        let n = direct * ch;
        output[from_history * ch..from_history * ch + n].copy_from_slice(&input[..n]);
        let behind = self.behind;
        if direct >= behind {
            self.buf_frames = 0;
            self.append(&input[n - behind * ch..n]);
        } else {
            self.cur.ipos = self.buf_frames + direct;
            self.compact();
            // compact keeps `behind - direct` old frames; the new follow.
            self.cur.ipos -= direct;
            self.append(&input[..n]);
        }
        self.cur.ipos = self.buf_frames;
        (direct, from_history + direct)
    }

    /// Input held inside (taken but not yet played), in output frames:
    /// the filter's look-ahead, 0 in pass-through.
    pub fn latency_frames(&self) -> f64 {
        let held =
            self.buf_frames as f64 - self.cur.ipos as f64 - f64::from(self.cur.frac) / ONE as f64;
        (held / (self.cur.applied as f64 / ONE as f64)).max(0.0)
    }

    pub fn channels(&self) -> usize {
        self.channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator for block sizes.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    fn sine(rate: u32, freq: f64, frames: usize, amp: f64) -> Vec<f32> {
        (0..frames)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32
            })
            .collect()
    }

    /// Runs interleaved `input` through in periods of `period` output
    /// frames, feeding exactly `input_needed`, as the playout thread does.
    fn run_periods(r: &mut Resampler, input: &[f32], period: usize) -> Vec<f32> {
        let ch = r.channels();
        let mut out = Vec::new();
        let mut block = vec![0.0; period * ch];
        let mut pos = 0;
        loop {
            let need = r.input_needed(period);
            if (pos + need) * ch > input.len() {
                break;
            }
            let (c, p) = r.process(&input[pos * ch..(pos + need) * ch], &mut block);
            assert_eq!(c, need);
            assert_eq!(p, period, "input_needed must be exact");
            pos += c;
            out.extend_from_slice(&block[..p * ch]);
        }
        out
    }

    fn interleave(left: &[f32], right: &[f32]) -> Vec<f32> {
        left.iter().zip(right).flat_map(|(&l, &r)| [l, r]).collect()
    }

    /// SNR (dB) of `out` against the ideal sine at the output rate, skipping
    /// the start-up transient (history of silence).
    fn snr_db(out: &[f32], out_rate: u32, freq: f64, amp: f64, skip: usize) -> f64 {
        let ideal = sine(out_rate, freq, out.len(), amp);
        let (mut sig, mut err) = (0.0f64, 0.0f64);
        for i in skip..out.len() {
            sig += (ideal[i] as f64).powi(2);
            err += (out[i] as f64 - ideal[i] as f64).powi(2);
        }
        10.0 * (sig / err).log10()
    }

    fn tone_snr(in_rate: u32, out_rate: u32, freq: f64) -> f64 {
        let mut r = Resampler::new(1, in_rate, out_rate, 256).unwrap();
        let input = sine(in_rate, freq, in_rate as usize, 0.5);
        let out = run_periods(&mut r, &input, 256);
        assert!(out.len() > out_rate as usize * 9 / 10);
        let skip = (2 * r.half) * out_rate as usize / in_rate as usize + 8;
        let snr = snr_db(&out, out_rate, freq, 0.5, skip);
        eprintln!("{in_rate} -> {out_rate} Hz, {freq} Hz tone: SNR {snr:.1} dB");
        snr
    }

    #[test]
    fn tone_48000_to_44100() {
        let snr = tone_snr(48000, 44100, 1000.0);
        assert!(snr > 90.0, "SNR {snr:.1} dB");
        let snr = tone_snr(48000, 44100, 15000.0);
        assert!(snr > 90.0, "SNR {snr:.1} dB at 15 kHz");
    }

    #[test]
    fn tone_44100_to_48000() {
        let snr = tone_snr(44100, 48000, 1000.0);
        assert!(snr > 90.0, "SNR {snr:.1} dB");
        let snr = tone_snr(44100, 48000, 15000.0);
        assert!(snr > 90.0, "SNR {snr:.1} dB at 15 kHz");
    }

    #[test]
    fn tone_8000_to_48000() {
        let snr = tone_snr(8000, 48000, 1000.0);
        assert!(snr > 90.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn tone_48000_to_8000() {
        let snr = tone_snr(48000, 8000, 1000.0);
        assert!(snr > 90.0, "SNR {snr:.1} dB");
    }

    /// SNR (dB) of a `freq` tone followed at `ppm` of drift, equal rates:
    /// output frame k is the input at position k·(1 + ppm·1e-6).
    fn drift_snr(rate: u32, freq: f64, ppm: f64) -> f64 {
        let mut r = Resampler::new(1, rate, rate, 256).unwrap();
        r.set_drift_ppm_now(ppm);
        let input = sine(rate, freq, rate as usize, 0.5);
        let out = run_periods(&mut r, &input, 256);
        assert!(out.len() > rate as usize * 9 / 10);
        let skip = 2 * r.half + 8;
        let step = 1.0 + ppm * 1e-6;
        let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
        let (mut sig, mut err) = (0.0f64, 0.0f64);
        for (k, &o) in out.iter().enumerate().skip(skip) {
            let ideal = 0.5 * (w * k as f64 * step).sin();
            sig += ideal * ideal;
            err += (o as f64 - ideal).powi(2);
        }
        let snr = 10.0 * (sig / err).log10();
        eprintln!("{rate} Hz at {ppm:+} ppm, {freq} Hz tone: SNR {snr:.1} dB");
        snr
    }

    #[test]
    fn drift_tones() {
        // Following a clock at equal rates holds the conversions' bars:
        // every position between two frames is visited.
        for ppm in [100.0, 1000.0, -1000.0, MAX_DRIFT_PPM, -MAX_DRIFT_PPM] {
            for freq in [1000.0, 15000.0] {
                let snr = drift_snr(48000, freq, ppm);
                assert!(snr > 90.0, "{ppm} ppm, {freq} Hz: SNR {snr:.1} dB");
            }
        }
        let snr = drift_snr(8000, 2500.0, 1000.0);
        assert!(snr > 90.0, "8 kHz, 2.5 kHz tone: SNR {snr:.1} dB");
    }

    #[test]
    fn downsampling_rejects_alias() {
        // 5 kHz cannot exist at 8 kHz; without the low-pass it would fold
        // to 3 kHz at full level.
        let mut r = Resampler::new(1, 48000, 8000, 160).unwrap();
        let input = sine(48000, 5000.0, 48000, 0.5);
        let out = run_periods(&mut r, &input, 160);
        let skip = 2 * r.half / 6 + 8;
        let tail = &out[skip..];
        let rms =
            (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
        let input_rms = 0.5 / 2f64.sqrt();
        let rejection = 20.0 * (input_rms / rms).log10();
        eprintln!("5 kHz at 48000 -> 8000 Hz rejected by {rejection:.1} dB");
        assert!(rejection > 90.0, "alias rejected by only {rejection:.1} dB");
    }

    #[test]
    fn equal_rates_bit_transparent() {
        let mut r = Resampler::new(2, 48000, 48000, 64).unwrap();
        let input: Vec<f32> = (0..2000)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut out = vec![0.0; 128];
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + 128).min(input.len());
            assert_eq!(r.input_needed(64), 64);
            let (c, p) = r.process(&input[pos..end], &mut out);
            assert_eq!(c, p);
            got.extend_from_slice(&out[..p * 2]);
            pos += c * 2;
        }
        assert_eq!(got, input);
        assert_eq!(r.latency_frames(), 0.0);
    }

    #[test]
    fn drift_engage_is_seamless() {
        // A tone passed through, then drift engaged and released: the
        // output must stay one continuous sine. A jump in position (the
        // look-ahead repeated or skipped, a block of silence) shows as a
        // step between neighbouring frames larger than the sine's slope.
        let rate = 48000;
        let (freq, amp) = (440.0, 0.5);
        let input = sine(rate, freq, rate as usize * 2, amp);
        let mut r = Resampler::new(1, rate, rate, 480).unwrap();
        let mut out = Vec::new();
        let mut block = vec![0.0; 480];
        let mut pos = 0;
        let mut periods = 0;
        while pos + 2000 < input.len() {
            match periods {
                50 => r.set_drift_ppm(2500.0),
                100 => r.set_drift_ppm(0.0),
                _ => {}
            }
            let need = r.input_needed(480);
            let (c, p) = r.process(&input[pos..pos + need], &mut block);
            assert_eq!(p, 480);
            pos += c;
            out.extend_from_slice(&block[..p]);
            periods += 1;
        }
        assert!(periods > 150);
        let slope = amp * 2.0 * std::f64::consts::PI * freq / rate as f64;
        for (i, w) in out.windows(2).enumerate() {
            let d = (w[1] - w[0]).abs() as f64;
            assert!(d <= slope * 1.01, "step of {d} at frame {i}");
        }
        for chunk in out.chunks(rate as usize / 100) {
            let peak = chunk.iter().fold(0.0f32, |m, &s| m.max(s.abs()));
            assert!(peak > 0.49, "level dropped to {peak}");
        }
        assert!(r.is_passthrough());
    }

    #[test]
    fn drift_stretch_returns_to_bit_exact() {
        // Two tones passed through, drift asked for 100 ms (the glide
        // reaches ±500 ppm) and released: before the stretch the output is
        // the input bit for bit; after it (glide down, landing) it is the
        // input again, shifted by whole frames; and nowhere, entering or
        // leaving, does the signal jump. A jump shows in the second
        // difference, which for a sine is at most amp·ω² (ω per frame); the
        // allowance on top (1e-4, −74 dB re 0.5) is a few times the
        // filter's own error (≈ −90 dB) and the landing's 500 ppm bend.
        let rate = 48000u32;
        let period = 480;
        let tones = [(1000.0, 0.5), (440.0, 0.3)];
        let frames_in = rate as usize * 2;
        let input = interleave(
            &sine(rate, tones[0].0, frames_in, tones[0].1),
            &sine(rate, tones[1].0, frames_in, tones[1].1),
        );
        for ppm in [2500.0, -2500.0] {
            let mut r = Resampler::new(2, rate, rate, period).unwrap();
            let mut out = Vec::new();
            let mut block = vec![0.0; period * 2];
            let mut pos = 0;
            let mut passing = Vec::new();
            while pos + 2 * period < frames_in {
                match passing.len() {
                    50 => r.set_drift_ppm(ppm),
                    60 => r.set_drift_ppm(0.0),
                    _ => {}
                }
                let need = r.input_needed(period);
                let (c, p) = r.process(&input[pos * 2..(pos + need) * 2], &mut block);
                assert_eq!(
                    (c, p),
                    (need, period),
                    "{ppm} ppm: input_needed must be exact"
                );
                pos += c;
                out.extend_from_slice(&block);
                passing.push(r.is_passthrough());
            }
            let frames = out.len() / 2;
            assert!(passing[49] && !passing[50], "{ppm} ppm: drift must engage");
            assert!(r.is_passthrough(), "{ppm} ppm: must pass through again");
            assert_eq!(r.latency_frames(), 0.0);
            assert_eq!(out[..50 * period * 2], input[..50 * period * 2]);
            // Output frame k is input frame k + shift from the landing on.
            let shift = pos as isize - frames as isize;
            assert!(shift != 0 && shift.abs() <= 4, "{ppm} ppm: shift {shift}");
            let exact = |k: usize| {
                let i = (k as isize + shift) as usize;
                out[2 * k..2 * k + 2] == input[2 * i..2 * i + 2]
            };
            let last_diff = (0..frames).rev().find(|&k| !exact(k)).unwrap();
            // 100 ms of glide back to 0 after period 60, ≤ 1000 frames of
            // landing, a period's slack.
            let stretch_end = 60 * period + 4800 + 1000 + period;
            assert!(
                (50 * period..stretch_end).contains(&last_diff),
                "{ppm} ppm: last inexact frame {last_diff}"
            );
            assert!(frames > stretch_end + rate as usize / 2);
            for (c, (freq, amp)) in tones.into_iter().enumerate() {
                let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
                let bound = amp * w * w * 1.01 + 1e-4;
                for k in 1..frames - 1 {
                    let d2 = out[2 * (k + 1) + c] as f64 - 2.0 * out[2 * k + c] as f64
                        + out[2 * (k - 1) + c] as f64;
                    assert!(
                        d2.abs() <= bound,
                        "{ppm} ppm: jump {d2} at frame {k} ch {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn landing_cancelled_by_new_drift() {
        // Drift released, then asked again while the position is landing:
        // the landing gives way to the glide, and the second release still
        // ends in bit-exact pass-through.
        let rate = 8000u32;
        let period = 80;
        let input: Vec<f32> = sine(rate, 300.0, rate as usize * 3, 0.5);
        let mut r = Resampler::new(1, rate, rate, period).unwrap();
        let mut out = Vec::new();
        let mut block = vec![0.0; period];
        let mut pos = 0;
        let mut periods = 0;
        let mut saw_landing = false;
        while pos + 2 * period < input.len() {
            match periods {
                10 => r.set_drift_ppm(-3000.0),
                30 => r.set_drift_ppm(0.0),
                _ => {}
            }
            if periods > 30 && r.cur.land_left > 0 && !saw_landing {
                saw_landing = true;
                r.set_drift_ppm(1000.0);
            } else if saw_landing && r.drift_ppm() > 900.0 {
                r.set_drift_ppm(0.0);
            }
            let need = r.input_needed(period);
            let (c, p) = r.process(&input[pos..pos + need], &mut block);
            assert_eq!((c, p), (need, period));
            pos += c;
            out.extend_from_slice(&block);
            periods += 1;
        }
        assert!(saw_landing);
        assert!(r.is_passthrough());
        let shift = pos as isize - out.len() as isize;
        let tail = out.len() - rate as usize / 2;
        for (k, &o) in out.iter().enumerate().skip(tail) {
            assert_eq!(o, input[(k as isize + shift) as usize], "frame {k}");
        }
    }

    #[test]
    fn fixed_row_loop_equals_the_general_one() {
        // The kernels the usual conversions use (32 and 36 taps) run a
        // loop of their own (`render_fixed`); bit for bit it must give what
        // the general loop gives, through glides up and down, a steady
        // drift, the landing back on a frame and pass-through.
        let rate = 48000u32;
        let period = 240;
        let frames = rate as usize * 2;
        let input = interleave(
            &sine(rate, 1000.0, frames, 0.5),
            &sine(rate, 440.0, frames, 0.3),
        );
        let drifts = [(10, 1000.0), (40, 1003.5), (45, -800.0), (80, 0.0)];
        for (in_rate, out_rate) in [(48000, 48000), (44100, 48000), (8000, 48000)] {
            let mut fixed = Resampler::new(2, in_rate, out_rate, period).unwrap();
            let mut general = Resampler::new(2, in_rate, out_rate, period).unwrap();
            assert!(
                matches!(fixed.taps / VECTOR, 8 | 9),
                "{in_rate}: a fixed row"
            );
            general.general_only = true;
            let mut outs = [Vec::new(), Vec::new()];
            for (r, out) in [&mut fixed, &mut general].into_iter().zip(&mut outs) {
                let mut block = vec![0.0; period * 2];
                let mut pos = 0;
                for n in 0.. {
                    if let Some(&(_, ppm)) = drifts.iter().find(|(at, _)| *at == n) {
                        r.set_drift_ppm(ppm);
                    }
                    let need = r.input_needed(period);
                    if (pos + need) * 2 > input.len() {
                        break;
                    }
                    let (c, p) = r.process(&input[pos * 2..(pos + need) * 2], &mut block);
                    assert_eq!((c, p), (need, period), "{in_rate}: input_needed exact");
                    pos += c;
                    out.extend_from_slice(&block);
                }
            }
            assert!(outs[0].len() > rate as usize, "{in_rate}");
            assert!(
                outs[0] == outs[1],
                "{in_rate} -> {out_rate}: the loops differ"
            );
            if in_rate == out_rate {
                assert!(fixed.is_passthrough(), "landed");
            }
        }
    }

    /// A walk over many phases, blends and history windows: a step of
    /// 17.37 frames gliding from 17.3 (the glide's last frames and the
    /// steady step both in it).
    fn test_walk(behind: usize) -> Walk {
        let target = fixed(17.37);
        let applied = fixed(17.3);
        let slew = (target - applied).div_ceil(20) as i64;
        Walk {
            ipos: behind,
            frac: 0x1234_5678,
            applied,
            target,
            slew,
            glide: (target - applied).div_ceil(slew as u64),
            behind,
        }
    }

    /// The kernel's build for this CPU (`fast`) against the baseline
    /// `frames_body`, for a walk over many phases, blends and history
    /// windows: bit for bit, the same frames made and the same walk.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn kernel_equals_baseline<const V: usize>(
        in_rate: u32,
        name: &str,
        fast: impl Fn(Kernel<'_, V>, &mut Walk, usize, &mut [f32]) -> usize,
    ) {
        let r = Resampler::new(2, in_rate, 48000, 240).unwrap();
        assert_eq!(r.taps / VECTOR, V, "{in_rate}");
        let cap = 600;
        let mut buf = sine(48000, 1000.0, cap, 0.5);
        buf.extend(sine(48000, 440.0, cap, 0.3));
        let k = Kernel {
            rows: chunks::<V, Lanes>(chunks::<VECTOR, f32>(&r.poly)),
            buf: &buf,
            cap,
        };
        let frames = 32;
        let last_first = k.last_first(2).unwrap();
        let start = test_walk(r.behind);
        assert!(
            start.after(frames as u64 - 1).place().2 <= last_first,
            "{in_rate}: the walk stays in bounds"
        );
        let (mut baseline, mut built) = (vec![0.0; frames * 2], vec![0.0; frames * 2]);
        let (mut a, mut b) = (start, start);
        assert_eq!(frames_body(k, &mut a, last_first, 2, &mut baseline), frames);
        assert_eq!(fast(k, &mut b, last_first, &mut built), frames, "{in_rate}");
        assert_eq!(a, b, "{in_rate}: the {name} build walks the same");
        assert_eq!(
            a,
            start.after(frames as u64),
            "{in_rate}: the walk's closed form"
        );
        assert!(
            baseline.iter().all(|s| *s != 0.0),
            "{in_rate}: every frame computed"
        );
        assert_eq!(
            baseline.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            built.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            "{in_rate}: the {name} build differs"
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx_kernel_equals_the_baseline_one() {
        // On a CPU with AVX the fixed-row kernel runs its AVX build (see
        // `frames_fixed_avx`): bit for bit what the SSE2 build gives.
        if !std::arch::is_x86_feature_detected!("avx") {
            eprintln!("this CPU has no AVX: only the baseline build ever runs");
            return;
        }
        fn avx<const V: usize>(in_rate: u32) {
            kernel_equals_baseline::<V>(in_rate, "AVX", |k, walk, last_first, out| {
                // SAFETY: the CPU has AVX (checked above); `last_first` is
                // `k.last_first(2)` (see `kernel_equals_baseline`).
                unsafe { frames_fixed_avx(k, walk, last_first, 2, out) }
            });
        }
        avx::<8>(48000);
        avx::<9>(44100);
    }

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn neon_kernel_equals_the_baseline_one() {
        // aarch64 runs the fixed-row kernel written with NEON's
        // intrinsics (see `frames_fixed_neon`): bit for bit the plain one.
        // SAFETY: `last_first` is `k.last_first(2)` (see
        // `kernel_equals_baseline`).
        kernel_equals_baseline::<8>(48000, "NEON", |k, walk, last_first, out| unsafe {
            frames_fixed_neon(k, walk, last_first, 2, out)
        });
        kernel_equals_baseline::<9>(44100, "NEON", |k, walk, last_first, out| unsafe {
            frames_fixed_neon(k, walk, last_first, 2, out)
        });
    }

    #[test]
    fn walk_after_is_its_steps() {
        // `input_needed` and the kernels' bound rest on `after(m)` being
        // `step` m times, through a glide up, down, and none.
        for (from, to) in [
            (1.0, 1.001),
            (1.001, 0.999),
            (0.91875, 0.91875),
            (6.0, 5.97),
        ] {
            let mut w = test_walk(31);
            w.applied = fixed(from);
            w.target = fixed(to);
            let d = w.target.abs_diff(w.applied);
            // A glide of about 1000 frames, and its end, within the run.
            let slew = d.div_ceil(1000).max(1);
            w.slew = if w.target > w.applied {
                slew as i64
            } else {
                -(slew as i64)
            };
            w.glide = d.div_ceil(slew);
            let start = w;
            for m in 0..3000u64 {
                assert_eq!(start.after(m), w, "{from} -> {to}: {m} steps");
                w.step();
            }
            assert_eq!(w.applied, w.target);
        }
    }

    #[test]
    fn kernel_stops_at_its_last_first_frame() {
        // The kernels read without checks up to `last_first`, and stop
        // there: a walk that would read past the history makes only the
        // frames before.
        let r = Resampler::new(2, 48000, 48000, 240).unwrap();
        let cap = 100;
        let buf = vec![0.25f32; 2 * cap];
        let k = Kernel::<8> {
            rows: chunks::<8, Lanes>(chunks::<VECTOR, f32>(&r.poly)),
            buf: &buf,
            cap,
        };
        assert_eq!(k.last_first(2), Some(cap - 8 * VECTOR));
        assert_eq!(k.last_first(1), Some(2 * cap - 8 * VECTOR));
        assert_eq!(k.last_first(3), None);
        let mut walk = Walk {
            ipos: r.behind,
            frac: 0,
            applied: ONE,
            target: ONE,
            slew: 0,
            glide: 0,
            behind: r.behind,
        };
        let mut out = [7.0f32; 2 * 80];
        let made = frames_fixed(k, &mut walk, k.last_first(2).unwrap(), 2, &mut out);
        assert_eq!(made, cap - 8 * VECTOR + 1);
        assert_eq!(walk.ipos, r.behind + made);
        assert!(out[..2 * made].iter().all(|s| *s != 7.0));
        assert!(out[2 * made..].iter().all(|s| *s == 7.0));
        // A position behind the history wraps past any bound: nothing read.
        let mut behind = Walk { ipos: 0, ..walk };
        assert_eq!(frames_fixed(k, &mut behind, 60, 2, &mut out), 0);
    }

    #[test]
    fn stereo_channels_match_mono() {
        // The planar history keeps channels apart: each channel of a
        // stereo conversion is the mono conversion of that channel.
        let left = sine(44100, 997.0, 20000, 0.7);
        let right = sine(44100, 3001.0, 20000, 0.4);
        let convert = |ch: usize, input: &[f32]| {
            let mut r = Resampler::new(ch, 44100, 48000, 256).unwrap();
            r.set_drift_ppm(-700.0);
            run_periods(&mut r, input, 256)
        };
        let both = convert(2, &interleave(&left, &right));
        let (l, r) = (convert(1, &left), convert(1, &right));
        assert_eq!(both.len(), 2 * l.len());
        assert!(l.len() > 20000);
        assert_eq!(both, interleave(&l, &r));
    }

    #[test]
    fn kernel_shared_where_it_is_the_same() {
        let a = Resampler::new(2, 48000, 48000, 480).unwrap();
        let b = Resampler::sharing(1, 8000, 48000, 480, &[&a]).unwrap();
        let c = Resampler::sharing(2, 48000, 44100, 480, &[&a, &b]).unwrap();
        let d = Resampler::sharing(2, 44100, 48000, 480, &[&a, &b, &c]).unwrap();
        let e = Resampler::sharing(1, 8000, 8000, 480, &[&a, &b, &c, &d]).unwrap();
        // Upsampling shares the conversion kernel, equal rates the drift
        // kernel; downsampling has its own.
        assert!(Arc::ptr_eq(&b.poly, &d.poly));
        assert!(Arc::ptr_eq(&a.poly, &e.poly));
        assert!(!Arc::ptr_eq(&a.poly, &b.poly));
        assert!(!Arc::ptr_eq(&a.poly, &c.poly));
        assert!(!Arc::ptr_eq(&b.poly, &c.poly));
        // A shared table is the one the resampler would have built.
        assert_eq!(*b.poly, *Resampler::new(1, 44100, 48000, 480).unwrap().poly);
    }

    #[test]
    fn blocks_equal_one_call() {
        let input = sine(44100, 997.0, 20000, 0.7);
        let mut whole = Resampler::new(1, 44100, 48000, 30000).unwrap();
        let mut big = vec![0.0; 30000];
        let (c, n) = whole.process(&input, &mut big);
        assert_eq!(c, input.len());

        let mut r = Resampler::new(1, 44100, 48000, 700).unwrap();
        let mut rng = Lcg(42);
        let mut got = Vec::new();
        let mut block = vec![0.0; 700];
        let mut pos = 0;
        while pos < input.len() {
            let want_in = 1 + (rng.next() % 500) as usize;
            let want_out = 1 + (rng.next() % 700) as usize;
            let end = (pos + want_in).min(input.len());
            let (c, p) = r.process(&input[pos..end], &mut block[..want_out]);
            pos += c;
            got.extend_from_slice(&block[..p]);
        }
        // Drain what the last inputs still allow.
        loop {
            let (_, p) = r.process(&[], &mut block);
            if p == 0 {
                break;
            }
            got.extend_from_slice(&block[..p]);
        }
        assert_eq!(got.len(), n);
        assert_eq!(got, big[..n]);
    }

    #[test]
    fn drift_ratio_honoured() {
        for ppm in [1000.0, -1000.0] {
            let (in_rate, out_rate) = (48000u32, 44100u32);
            let period = 441;
            let mut r = Resampler::new(1, in_rate, out_rate, period).unwrap();
            r.set_drift_ppm(ppm);
            let silence = vec![0.0f32; 2 * period];
            let mut block = vec![0.0; period];
            let mut consumed = 0usize;
            let mut produced = 0usize;
            let mut step = |r: &mut Resampler, consumed: &mut usize, produced: &mut usize| {
                let need = r.input_needed(period);
                let (c, p) = r.process(&silence[..need], &mut block);
                *consumed += c;
                *produced += p;
            };
            // Let the glide finish (1000 ppm at 5000 ppm/s: 0.2 s).
            for _ in 0..100 {
                step(&mut r, &mut consumed, &mut produced);
            }
            assert_eq!(r.drift_ppm(), ppm);
            let (c0, p0) = (consumed, produced);
            while produced - p0 < 60 * out_rate as usize {
                step(&mut r, &mut consumed, &mut produced);
            }
            let expected =
                (produced - p0) as f64 * (1.0 + ppm * 1e-6) * in_rate as f64 / out_rate as f64;
            let err = (consumed - c0) as f64 - expected;
            assert!(err.abs() <= 1.0, "{ppm} ppm: off by {err} frames");
        }
    }

    #[test]
    fn reset_restores_passthrough() {
        let mut r = Resampler::new(1, 8000, 8000, 160).unwrap();
        r.set_drift_ppm(-300.0);
        assert!(r.input_needed(160) > 160);
        r.reset();
        assert_eq!(r.input_needed(160), 160);
        let input: Vec<f32> = (0..160).map(|i| i as f32).collect();
        let mut out = vec![0.0; 160];
        assert_eq!(r.process(&input, &mut out), (160, 160));
        assert_eq!(out, input);
    }

    #[test]
    fn bad_parameters_refused() {
        assert_eq!(
            Resampler::new(0, 8000, 8000, 10).unwrap_err(),
            ResampleError::NoChannels
        );
        assert!(matches!(
            Resampler::new(1, 0, 8000, 10),
            Err(ResampleError::ZeroRate { .. })
        ));
        assert!(matches!(
            Resampler::new(1, 8000, 384000, 10),
            Err(ResampleError::RatioOutOfRange { .. })
        ));
        assert_eq!(
            Resampler::new(1, 8000, 8000, 0).unwrap_err(),
            ResampleError::ZeroMaxOutput
        );
    }

    #[test]
    fn non_finite_drift_ignored() {
        let mut r = Resampler::new(1, 8000, 8000, 160).unwrap();
        r.set_drift_ppm(f64::NAN);
        assert_eq!(r.input_needed(160), 160);
    }
}
