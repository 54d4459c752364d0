//! Format conversion. Input: interleaved `i16` frames at the source's rate
//! and channel count, pulled from a source as needed. Output: whole packets
//! of frames at the stream's rate and channel count. Policy: channels are
//! mapped first (to mono: the average of all channels; from mono: the one
//! channel on every output; otherwise output channel c takes input channel
//! c, wrapping round when there are more outputs, so 5.1 → stereo keeps
//! front left/right as WAV orders them); then the rate is converted (when
//! the rates differ). All buffers are sized in `new`; nothing allocates
//! afterwards.

use core::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Rate conversion is not available in this build.
    Rate {
        from: u32,
        to: u32,
    },
    Channels {
        from: u16,
        to: u16,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rate { from, to } => write!(
                f,
                "cannot convert {from} Hz to {to} Hz: give --rate {from}, or convert the file \
                 first (sox IN -r {to} OUT.wav)"
            ),
            Error::Channels { from, to } => {
                write!(f, "cannot convert {from} channels to {to}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Maps `from`-channel frames in `input` to `to`-channel frames in
/// `output`; returns the frames converted (as many as both hold).
pub fn map_channels(input: &[i16], from: usize, output: &mut [i16], to: usize) -> usize {
    if from == 0 || to == 0 {
        return 0;
    }
    let frames = (input.len() / from).min(output.len() / to);
    let pairs = input
        .chunks_exact(from)
        .zip(output.chunks_exact_mut(to))
        .take(frames);
    if from == to {
        for (i, o) in pairs {
            o.copy_from_slice(i);
        }
    } else if to == 1 {
        for (i, o) in pairs {
            let sum: i32 = i.iter().map(|&s| i32::from(s)).sum();
            o[0] = (sum / from as i32) as i16;
        }
    } else {
        for (i, o) in pairs {
            for (c, s) in o.iter_mut().enumerate() {
                *s = i[c % from];
            }
        }
    }
    frames
}

/// Source format → stream format, pulling source frames on demand.
pub struct Converter {
    from_channels: usize,
    to_channels: usize,
    /// Source frames read but not yet mapped, in source channels.
    raw: Vec<i16>,
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
        if from_rate != to_rate {
            return Err(Error::Rate {
                from: from_rate,
                to: to_rate,
            });
        }
        Ok(Converter {
            from_channels: usize::from(from_channels),
            to_channels: usize::from(to_channels),
            raw: vec![0; max_frames.max(1) * usize::from(from_channels)],
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
        let want = (out.len() / self.to_channels).min(self.raw.len() / self.from_channels);
        let mut done = 0;
        while done < want {
            let n = pull(&mut self.raw[..(want - done) * self.from_channels])?;
            if n == 0 {
                break;
            }
            let n = n.min(want - done);
            done += map_channels(
                &self.raw[..n * self.from_channels],
                self.from_channels,
                &mut out[done * self.to_channels..want * self.to_channels],
                self.to_channels,
            );
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_to_mono_averages() {
        let mut out = [0i16; 3];
        let n = map_channels(&[100, 300, -32768, -32768, 32767, -32768], 2, &mut out, 1);
        assert_eq!(n, 3);
        assert_eq!(out, [200, -32768, 0]);
    }

    #[test]
    fn mono_to_stereo_duplicates() {
        let mut out = [0i16; 6];
        assert_eq!(map_channels(&[1, 2, 3], 1, &mut out, 2), 3);
        assert_eq!(out, [1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn surround_to_stereo_keeps_front_pair_and_stereo_to_quad_wraps() {
        let mut out = [0i16; 2];
        assert_eq!(map_channels(&[1, 2, 3, 4, 5, 6], 6, &mut out, 2), 1);
        assert_eq!(out, [1, 2]);
        let mut out = [0i16; 4];
        assert_eq!(map_channels(&[7, 8], 2, &mut out, 4), 1);
        assert_eq!(out, [7, 8, 7, 8]);
    }

    #[test]
    fn map_stops_at_smaller_buffer() {
        let mut out = [0i16; 2];
        assert_eq!(map_channels(&[1, 2, 3, 4], 1, &mut out, 1), 2);
        assert_eq!(map_channels(&[1, 2, 3], 2, &mut [0i16; 8], 2), 1);
    }

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
}
