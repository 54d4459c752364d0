//! The channel map, one rule for both programs (the receiver maps the
//! stream to the device's channels, the sender the source to the
//! stream's). Input: interleaved frames of `from` channels. Output:
//! interleaved frames of `to` channels. Policy, output channel o:
//!
//! - equal counts: a copy, bit-exact;
//! - more outputs than inputs: input o mod `from`, so mono is played on
//!   every output and stereo on four is L R L R (as PulseAudio's remix
//!   feeds the rear pair from the front);
//! - fewer outputs than inputs: the mean of every input i with
//!   i mod `to` = o, so stereo to mono is (L + R) / 2 and 5.1 to stereo
//!   (WAV order FL FR FC LFE BL BR) is (FL + FC + BL) / 3,
//!   (FR + LFE + BR) / 3. A mean never clips.
//!
//! `i16` means are rounded half away from zero, as `audio::convert`
//! rounds. Never allocates; maps as many whole frames as both buffers
//! hold.

/// A sample type the map can average.
pub trait Sample: Copy {
    /// The mean of `frame[first]`, `frame[first + step]`, … to the end.
    fn mean(frame: &[Self], first: usize, step: usize) -> Self;
}

impl Sample for f32 {
    fn mean(frame: &[f32], first: usize, step: usize) -> f32 {
        let (sum, n) = frame
            .iter()
            .skip(first)
            .step_by(step)
            .fold((0.0f32, 0u32), |(sum, n), &s| (sum + s, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / n as f32
        }
    }
}

impl Sample for i16 {
    fn mean(frame: &[i16], first: usize, step: usize) -> i16 {
        let (sum, n) = frame
            .iter()
            .skip(first)
            .step_by(step)
            .fold((0i32, 0i32), |(sum, n), &s| (sum + i32::from(s), n + 1));
        if n == 0 {
            return 0;
        }
        // (sum ± n/2) / n in integers: half away from zero. A mean lies
        // within the inputs' range, so the cast cannot wrap.
        let half = if sum < 0 { -n } else { n };
        ((2 * sum + half) / (2 * n)) as i16
    }
}

/// Maps `from`-channel frames in `input` to `to`-channel frames in
/// `output`; returns the frames mapped (as many as both hold, 0 when a
/// count is 0).
pub fn map<T: Sample>(input: &[T], from: usize, output: &mut [T], to: usize) -> usize {
    if from == 0 || to == 0 {
        return 0;
    }
    let frames = (input.len() / from).min(output.len() / to);
    if from == to {
        // One copy for the block, not one call per frame.
        output[..frames * to].copy_from_slice(&input[..frames * from]);
        return frames;
    }
    let pairs = input
        .chunks_exact(from)
        .zip(output.chunks_exact_mut(to))
        .take(frames);
    if to > from {
        for (i, o) in pairs {
            for (c, s) in o.iter_mut().enumerate() {
                *s = i[c % from];
            }
        }
    } else {
        for (i, o) in pairs {
            for (c, s) in o.iter_mut().enumerate() {
                *s = T::mean(i, c, to);
            }
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped<T: Sample + Default>(input: &[T], from: usize, to: usize) -> Vec<T> {
        let mut out = vec![T::default(); input.len() / from * to];
        assert_eq!(map(input, from, &mut out, to), input.len() / from);
        out
    }

    #[test]
    fn mono_to_stereo_plays_on_both() {
        assert_eq!(mapped(&[1i16, 2, 3], 1, 2), [1, 1, 2, 2, 3, 3]);
        assert_eq!(mapped(&[0.25f32, -0.5], 1, 2), [0.25, 0.25, -0.5, -0.5]);
    }

    #[test]
    fn stereo_to_mono_is_the_mean() {
        assert_eq!(
            mapped(&[100i16, 300, -32768, -32768, 32767, -32768, 3, 0], 2, 1),
            [200, -32768, -1, 2]
        );
        assert_eq!(mapped(&[0.5f32, 0.25, -0.5, 0.0], 2, 1), [0.375, -0.25]);
    }

    #[test]
    fn stereo_to_four_repeats_the_pair() {
        assert_eq!(mapped(&[7i16, 8, 9, 10], 2, 4), [7, 8, 7, 8, 9, 10, 9, 10]);
        assert_eq!(mapped(&[0.5f32, -0.5], 2, 4), [0.5, -0.5, 0.5, -0.5]);
    }

    #[test]
    fn four_to_stereo_folds_rear_onto_front() {
        // FL FR RL RR: left = (FL + RL) / 2, right = (FR + RR) / 2.
        assert_eq!(mapped(&[100i16, 10, 300, 30], 4, 2), [200, 20]);
        assert_eq!(mapped(&[1.0f32, 0.0, 0.0, -1.0], 4, 2), [0.5, -0.5]);
    }

    #[test]
    fn three_to_stereo_folds_the_third_onto_left() {
        assert_eq!(mapped(&[10i16, 20, 30], 3, 2), [20, 20]);
        assert_eq!(mapped(&[0.5f32, 0.25, -0.5], 3, 2), [0.0, 0.25]);
    }

    #[test]
    fn surround_to_stereo_averages_three_each() {
        // FL FR FC LFE BL BR.
        assert_eq!(mapped(&[3i16, 6, 9, 12, 15, 18], 6, 2), [9, 12]);
        assert_eq!(
            mapped(&[0.75f32, 0.0, 0.0, 0.75, -0.75, 0.0], 6, 2),
            [0.0, 0.25]
        );
        // Full scale on every channel stays full scale, never beyond.
        assert_eq!(mapped(&[i16::MIN; 6], 6, 2), [i16::MIN; 2]);
        assert_eq!(mapped(&[i16::MAX; 6], 6, 2), [i16::MAX; 2]);
    }

    #[test]
    fn equal_counts_copy_bit_exact() {
        let x = [1i16, -2, 3, -4, 5, -6];
        assert_eq!(mapped(&x, 3, 3), x);
    }

    #[test]
    fn stops_at_the_smaller_buffer_and_zero_channels_map_nothing() {
        let mut out = [0i16; 2];
        assert_eq!(map(&[1i16, 2, 3, 4], 1, &mut out, 1), 2);
        assert_eq!(map(&[1i16, 2, 3], 2, &mut [0i16; 8], 2), 1);
        assert_eq!(map(&[1i16, 2], 0, &mut out, 2), 0);
        assert_eq!(map(&[1i16, 2], 2, &mut out, 0), 0);
    }

    #[test]
    fn i16_mean_rounds_half_away_from_zero() {
        assert_eq!(mapped(&[1i16, 2], 2, 1), [2]);
        assert_eq!(mapped(&[-1i16, -2], 2, 1), [-2]);
        assert_eq!(mapped(&[1i16, 0, 0], 3, 1), [0]);
        assert_eq!(mapped(&[2i16, 0, 0], 3, 1), [1]);
    }
}
