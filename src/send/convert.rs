//! Format conversion. Input: interleaved `i16` frames at the source's rate
//! and channel count, pulled from a source as needed. Output: whole packets
//! of frames at the stream's rate and channel count. Policy: channels are
//! mapped first, by the rule the receiver uses too (`audio::channels`:
//! from mono, the one channel on every output; more outputs, the inputs
//! repeated round; fewer, each output the mean of the inputs folded onto
//! it, so stereo → mono is (L + R) / 2); then the rate is converted (when
//! the rates differ, with `crate::audio::resample::Resampler`, samples
//! turned to `f32` and back by `audio::convert`; at the end of the source
//! its look-ahead is flushed with silence and the output cut at the
//! source's length converted to the stream rate). All buffers are sized in
//! `new`; nothing allocates afterwards.

use core::fmt;

use crate::audio::channels;
use crate::audio::convert::{f32s_to_i16, i16s_to_f32};
use crate::audio::format::MAX_CHANNELS;
use crate::audio::resample::{ResampleError, Resampler};

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The resampler refused the rates.
    Rate {
        from: u32,
        to: u32,
        err: ResampleError,
    },
    Channels {
        from: u16,
        to: u16,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rate { from, to, err } => write!(
                f,
                "cannot convert {from} Hz to {to} Hz ({err}): give --rate {from}, or convert \
                 the file first (sox IN -r {to} OUT.wav)"
            ),
            Error::Channels { from, to } => write!(
                f,
                "cannot convert {from} channels to {to}: both counts must be 1 to \
                 {MAX_CHANNELS} (check --channels and the source's channel count)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The rate step, present only when the rates differ (equal rates stay
/// bit-exact `i16` all the way).
struct RateStep {
    resampler: Resampler,
    /// Mapped source frames waiting for the resampler (stream channels).
    pending: Vec<f32>,
    pending_frames: usize,
    /// Resampler output before conversion back to `i16`.
    out: Vec<f32>,
    /// Channel-mapped `i16` scratch.
    mapped: Vec<i16>,
    from_rate: u64,
    to_rate: u64,
    /// Source frames taken in, stream frames given out: at the end of the
    /// source the output stops at in · to / from frames.
    in_total: u64,
    out_total: u64,
    /// The source has ended; the filter's look-ahead is flushed with
    /// silence.
    ended: bool,
}

/// Source format → stream format, pulling source frames on demand.
pub struct Converter {
    from_channels: usize,
    to_channels: usize,
    /// Source frames read but not yet mapped, in source channels.
    raw: Vec<i16>,
    rate: Option<RateStep>,
}

impl Converter {
    /// `max_frames`: the most stream frames asked for per `fill`.
    pub fn new(
        from_rate: u32,
        from_channels: u16,
        to_rate: u32,
        to_channels: u16,
        max_frames: usize,
    ) -> Result<Converter, Error> {
        if from_channels == 0 || to_channels == 0 {
            return Err(Error::Channels {
                from: from_channels,
                to: to_channels,
            });
        }
        let max_frames = max_frames.max(1);
        let from_ch = usize::from(from_channels);
        let to_ch = usize::from(to_channels);
        let (raw_frames, rate) = if from_rate == to_rate {
            (max_frames, None)
        } else {
            let resampler =
                Resampler::new(to_ch, from_rate, to_rate, max_frames).map_err(|err| {
                    Error::Rate {
                        from: from_rate,
                        to: to_rate,
                        err,
                    }
                })?;
            // The first call needs the most: a block plus the look-ahead.
            let cap = resampler.input_needed(max_frames) + 8;
            (
                cap,
                Some(RateStep {
                    resampler,
                    pending: vec![0.0; cap * to_ch],
                    pending_frames: 0,
                    out: vec![0.0; max_frames * to_ch],
                    mapped: vec![0; cap * to_ch],
                    from_rate: u64::from(from_rate),
                    to_rate: u64::from(to_rate),
                    in_total: 0,
                    out_total: 0,
                    ended: false,
                }),
            )
        };
        Ok(Converter {
            from_channels: from_ch,
            to_channels: to_ch,
            raw: vec![0; raw_frames * from_ch],
            rate,
        })
    }

    /// Fills `out` (stream channels) with as many frames as it holds,
    /// pulling source frames from `pull` (which fills a slice of source
    /// frames and returns how many it read, 0 at the end). Returns the
    /// frames written: fewer than asked only at the end of the source.
    pub fn fill<E>(
        &mut self,
        out: &mut [i16],
        mut pull: impl FnMut(&mut [i16]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let from_ch = self.from_channels;
        let to_ch = self.to_channels;
        let Some(rs) = self.rate.as_mut() else {
            let want = (out.len() / to_ch).min(self.raw.len() / from_ch);
            let mut done = 0;
            while done < want {
                let n = pull(&mut self.raw[..(want - done) * from_ch])?;
                if n == 0 {
                    break;
                }
                let n = n.min(want - done);
                done += channels::map(
                    &self.raw[..n * from_ch],
                    from_ch,
                    &mut out[done * to_ch..want * to_ch],
                    to_ch,
                );
            }
            return Ok(done);
        };
        let want = (out.len() / to_ch).min(rs.out.len() / to_ch);
        let cap = rs.pending.len() / to_ch;
        let mut done = 0;
        while done < want {
            let mut left = want - done;
            let need = rs.resampler.input_needed(left).min(cap);
            while rs.pending_frames < need && !rs.ended {
                let room = need - rs.pending_frames;
                let n = pull(&mut self.raw[..room * from_ch])?.min(room);
                if n == 0 {
                    rs.ended = true;
                    break;
                }
                rs.in_total += n as u64;
                let m = channels::map(&self.raw[..n * from_ch], from_ch, &mut rs.mapped, to_ch);
                let at = rs.pending_frames * to_ch;
                i16s_to_f32(&rs.mapped[..m * to_ch], &mut rs.pending[at..at + m * to_ch]);
                rs.pending_frames += m;
            }
            if rs.ended {
                let limit = rs.in_total * rs.to_rate / rs.from_rate;
                left = left.min(usize::try_from(limit.saturating_sub(rs.out_total)).unwrap_or(0));
                if left == 0 {
                    break;
                }
                // Silence after the end lets the look-ahead's last frames
                // out; the limit cuts what lies beyond the end.
                let need = rs.resampler.input_needed(left).min(cap);
                if rs.pending_frames < need {
                    rs.pending[rs.pending_frames * to_ch..need * to_ch].fill(0.0);
                    rs.pending_frames = need;
                }
            }
            let (consumed, produced) = rs.resampler.process(
                &rs.pending[..rs.pending_frames * to_ch],
                &mut rs.out[..left * to_ch],
            );
            rs.pending
                .copy_within(consumed * to_ch..rs.pending_frames * to_ch, 0);
            rs.pending_frames -= consumed;
            f32s_to_i16(
                &rs.out[..produced * to_ch],
                &mut out[done * to_ch..(done + produced) * to_ch],
            );
            done += produced;
            rs.out_total += produced as u64;
            if consumed == 0 && produced == 0 {
                break;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_pulls_in_pieces_until_end() {
        let src: Vec<i16> = (0..10).collect();
        let mut pos = 0;
        let mut c = Converter::new(8000, 1, 8000, 2, 4).unwrap();
        let mut pull = |buf: &mut [i16]| -> Result<usize, ()> {
            // A source that returns at most 3 frames at a time.
            let n = buf.len().min(3).min(src.len() - pos);
            buf[..n].copy_from_slice(&src[pos..pos + n]);
            pos += n;
            Ok(n)
        };
        let mut out = [0i16; 8];
        assert_eq!(c.fill(&mut out, &mut pull), Ok(4));
        assert_eq!(out, [0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(c.fill(&mut out, &mut pull), Ok(4));
        assert_eq!(c.fill(&mut out, &mut pull), Ok(2));
        assert_eq!(&out[..4], &[8, 8, 9, 9]);
        assert_eq!(c.fill(&mut out, &mut pull), Ok(0));
    }

    #[test]
    fn fill_passes_source_errors() {
        let mut c = Converter::new(8000, 2, 8000, 1, 4).unwrap();
        let mut out = [0i16; 4];
        assert_eq!(c.fill(&mut out, |_| Err::<usize, _>("gone")), Err("gone"));
    }

    fn sine(rate: u32, channels: usize, frames: usize, hz: f64) -> Vec<i16> {
        (0..frames)
            .flat_map(|k| {
                let v = (2.0 * std::f64::consts::PI * hz * k as f64 / f64::from(rate)).sin();
                std::iter::repeat((v * 16_000.0).round() as i16).take(channels)
            })
            .collect()
    }

    /// Runs a whole signal through a converter in packets of `block`.
    fn convert_all(
        c: &mut Converter,
        src: &[i16],
        from_ch: usize,
        to_ch: usize,
        block: usize,
    ) -> Vec<i16> {
        let mut pos = 0;
        let mut out = vec![0i16; block * to_ch];
        let mut all = Vec::new();
        loop {
            let n = c
                .fill(&mut out, |buf: &mut [i16]| -> Result<usize, ()> {
                    let n = (buf.len() / from_ch).min((src.len() - pos) / from_ch);
                    buf[..n * from_ch].copy_from_slice(&src[pos..pos + n * from_ch]);
                    pos += n * from_ch;
                    Ok(n)
                })
                .unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&out[..n * to_ch]);
        }
        all
    }

    /// Worst deviation from the ideal tone, away from the edges.
    fn worst_error(got: &[i16], ideal: &[i16], skip: usize) -> i32 {
        got.iter()
            .zip(ideal)
            .skip(skip)
            .take(got.len().saturating_sub(2 * skip))
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap()
    }

    #[test]
    fn resample_44100_to_48000_keeps_length_and_tone() {
        let src = sine(44_100, 1, 44_100, 1000.0);
        let mut c = Converter::new(44_100, 1, 48_000, 1, 960).unwrap();
        let got = convert_all(&mut c, &src, 1, 1, 960);
        assert_eq!(got.len(), 48_000);
        let ideal = sine(48_000, 1, 48_000, 1000.0);
        // 16000 peak; a few LSB of error is > 70 dB below it.
        let e = worst_error(&got, &ideal, 100);
        assert!(e <= 4, "worst error {e}");
    }

    #[test]
    fn resample_stereo_48000_to_mono_8000() {
        let src = sine(48_000, 2, 24_000, 440.0);
        let mut c = Converter::new(48_000, 2, 8000, 1, 160).unwrap();
        let got = convert_all(&mut c, &src, 2, 1, 160);
        assert_eq!(got.len(), 4000);
        let ideal = sine(8000, 1, 4000, 440.0);
        let e = worst_error(&got, &ideal, 50);
        assert!(e <= 4, "worst error {e}");
    }

    #[test]
    fn resample_end_is_flushed_not_lost() {
        // A tone that runs to the very end: the last output frames are
        // the tone too (the look-ahead was flushed), not silence.
        let src = sine(8000, 1, 1000, 300.0);
        let mut c = Converter::new(8000, 1, 16_000, 2, 320).unwrap();
        let got = convert_all(&mut c, &src, 1, 2, 320);
        assert_eq!(got.len(), 2000 * 2);
        let ideal = sine(16_000, 2, 2000, 300.0);
        let tail_err = got[3800..3980]
            .iter()
            .zip(&ideal[3800..3980])
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .max()
            .unwrap();
        assert!(tail_err < 400, "tail error {tail_err}");
    }

    #[test]
    fn equal_rates_stay_bit_exact() {
        let src: Vec<i16> = (0..1000)
            .map(|i| (i * 61 % 65_536 - 32_768) as i16)
            .collect();
        let mut c = Converter::new(22_050, 1, 22_050, 1, 441).unwrap();
        assert_eq!(convert_all(&mut c, &src, 1, 1, 441), src);
    }

    #[test]
    fn zero_channels_refused_with_the_range() {
        let err = Converter::new(8000, 0, 8000, 1, 160).err().unwrap();
        assert_eq!(err, Error::Channels { from: 0, to: 1 });
        assert!(err.to_string().contains("1 to 8"), "{err}");
    }

    #[test]
    fn impossible_ratio_refused() {
        assert!(matches!(
            Converter::new(8000, 1, 192_000 * 2, 1, 160),
            Err(Error::Rate { .. })
        ));
    }
}
