//! Pitch search, shared by concealment (`receive::conceal`: the period to
//! repeat across a gap) and stretching (`receive::stretch`: a place where
//! the audio resembles itself, to cut or repeat). Input: a mono signal,
//! the lags to try and the length compared. Output: the lag at which the
//! signal is most similar to itself and that similarity (normalised
//! cross-correlation, −1 to 1; 0 for silence). Policy: the shortest lag
//! that is a local maximum within 90 % of the best wins (every multiple of
//! a period correlates as well; the shortest is the pitch the ear hears);
//! at high rates the search runs on a copy decimated to about 16 kHz, then
//! is refined at the full rate around the coarse result, which keeps a
//! 192 kHz search cheap. Never allocates: the caller owns the decimation
//! buffer.

use super::chunks;

/// The coarse search runs at about this rate.
const SEARCH_RATE: u32 = 16_000;

/// The decimation factor for a signal at `rate` (1 up to 31 999 Hz).
pub fn decimation(rate: u32) -> usize {
    (rate / SEARCH_RATE).max(1) as usize
}

/// Direction of a similarity search (see `find_period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// The last `len` samples against the `len` samples `lag` earlier.
    Back,
    /// The first `len` samples against the `len` samples `lag` later.
    Forward,
}

/// Normalised cross-correlation of `x[a..a+len]` and `x[b..b+len]`;
/// 0 when either is silent. Callers keep the ranges inside `x`.
pub fn ncc(x: &[f32], a: usize, b: usize, len: usize) -> f32 {
    let (Some(p), Some(q)) = (x.get(a..a + len), x.get(b..b + len)) else {
        return 0.0;
    };
    // Eight independent sums of each: the compiler keeps them in vector
    // lanes (one chain of additions would be one lane). A search scores
    // hundreds of lags, each over up to 12 ms.
    const LANES: usize = 8;
    let (mut pq8, mut pp8, mut qq8) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let (pc, qc) = (chunks::<LANES, f32>(p), chunks::<LANES, f32>(q));
    let whole = pc.len() * LANES;
    let (p_rest, q_rest) = (p.get(whole..).unwrap_or(&[]), q.get(whole..).unwrap_or(&[]));
    for (u, v) in pc.iter().zip(qc) {
        for k in 0..LANES {
            pq8[k] += u[k] * v[k];
            pp8[k] += u[k] * u[k];
            qq8[k] += v[k] * v[k];
        }
    }
    let (mut pq, mut pp, mut qq) = (
        pq8.iter().sum::<f32>(),
        pp8.iter().sum::<f32>(),
        qq8.iter().sum::<f32>(),
    );
    for (&u, &v) in p_rest.iter().zip(q_rest) {
        pq += u * v;
        pp += u * u;
        qq += v * v;
    }
    if pp <= 1e-9 || qq <= 1e-9 {
        return 0.0;
    }
    pq / (pp * qq).sqrt()
}

/// Scores of one `search_range` kept for its second pass: the coarse
/// search runs at about 16 kHz over lags of at most 20 ms (320); a
/// longer range scores its lags again.
const KEPT_SCORES: usize = 512;

/// How similar `x` is to itself at `lag` (see `Search`); `f32::MIN` when
/// `x` is too short.
fn score(x: &[f32], lag: usize, len: usize, dir: Search) -> f32 {
    let n = x.len();
    match dir {
        Search::Back if n >= len + lag => ncc(x, n - len, n - len - lag, len),
        Search::Forward if n >= len + lag => ncc(x, 0, lag, len),
        _ => f32::MIN,
    }
}

fn search_range(x: &[f32], lo: usize, hi: usize, len: usize, dir: Search) -> (usize, f32) {
    // The smallest lag that is a local maximum close to the best one wins:
    // on a periodic signal every multiple of the period correlates as well,
    // and the shortest is the one the ear calls the pitch.
    let mut kept = [0f32; KEPT_SCORES];
    let keep = hi.saturating_sub(lo) < KEPT_SCORES;
    let mut best = (lo, f32::MIN);
    for lag in lo..=hi {
        let s = score(x, lag, len, dir);
        if keep {
            kept[lag - lo] = s;
        }
        if s > best.1 {
            best = (lag, s);
        }
    }
    if best.1 <= 0.0 {
        return best;
    }
    // Each lag's score once: a stretch during a catch-up searches every
    // few periods, and the second pass scored each lag it walked again.
    let at = |lag: usize| {
        if keep {
            kept[lag - lo]
        } else {
            score(x, lag, len, dir)
        }
    };
    let mut prev = f32::MIN;
    let mut cur = at(lo);
    for lag in lo..=hi {
        let next = if lag < hi { at(lag + 1) } else { f32::MIN };
        if cur >= prev && cur >= next && cur >= 0.9 * best.1 {
            return (lag, cur);
        }
        prev = cur;
        cur = next;
    }
    best
}

/// Finds the lag in `min_lag..=max_lag` at which `x` is most similar to
/// itself over `len` samples (see `Search`), searching coarsely on a copy
/// decimated by `d` (written into `deci`), then at full rate around the
/// coarse result. Returns (lag, normalised correlation); the correlation is
/// ≤ 0 when nothing matched.
pub fn find_period(
    x: &[f32],
    deci: &mut [f32],
    d: usize,
    min_lag: usize,
    max_lag: usize,
    len: usize,
    dir: Search,
) -> (usize, f32) {
    let d = d.max(1);
    let min_lag = min_lag.max(1);
    let max_lag = max_lag.max(min_lag);
    if d == 1 {
        return search_range(x, min_lag, max_lag, len, dir);
    }
    let m = (x.len() / d).min(deci.len());
    // Align the decimated copy with the end searched from.
    let start = match dir {
        Search::Back => x.len() - m * d,
        Search::Forward => 0,
    };
    for (i, v) in deci[..m].iter_mut().enumerate() {
        let from = start + i * d;
        let s: f32 = x.get(from..from + d).map_or(0.0, |c| c.iter().sum());
        *v = s / d as f32;
    }
    let lo = min_lag.div_ceil(d).max(1);
    let hi = (max_lag / d).max(lo);
    let (coarse, _) = search_range(&deci[..m], lo, hi, len / d, dir);
    let lo = (coarse.saturating_sub(1) * d).max(min_lag);
    let hi = ((coarse + 1) * d).min(max_lag).max(lo);
    let mut best = (lo, f32::MIN);
    for lag in lo..=hi {
        let s = score(x, lag, len, dir);
        if s > best.1 {
            best = (lag, s);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pulses every `period` samples with a little ringing, `n` long.
    fn pulses(period: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|k| match k % period {
                0 => 0.8,
                1 => -0.3,
                _ => 0.0,
            })
            .collect()
    }

    fn tone(rate: u32, hz: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|k| {
                let ph = 2.0 * core::f32::consts::PI * hz * k as f32 / rate as f32;
                0.5 * ph.sin() + 0.25 * (2.0 * ph).sin()
            })
            .collect()
    }

    #[test]
    fn ncc_of_a_copy_is_one_of_its_negation_minus_one_of_silence_zero() {
        let mut x = tone(8000, 200.0, 120);
        assert!((ncc(&x, 0, 40, 40) - 1.0).abs() < 1e-5);
        for k in 0..40 {
            x[40 + k] = -x[k];
        }
        assert!((ncc(&x, 0, 40, 40) + 1.0).abs() < 1e-5);
        assert_eq!(ncc(&[0.0; 20], 0, 10, 10), 0.0);
        // A range outside the signal scores nothing rather than panicking.
        assert_eq!(ncc(&x, 100, 0, 40), 0.0);
    }

    /// `search_range` as it was written first: every lag scored in each
    /// of two passes.
    fn search_twice(x: &[f32], lo: usize, hi: usize, len: usize, dir: Search) -> (usize, f32) {
        let mut best = (lo, f32::MIN);
        for lag in lo..=hi {
            let s = score(x, lag, len, dir);
            if s > best.1 {
                best = (lag, s);
            }
        }
        if best.1 <= 0.0 {
            return best;
        }
        let mut prev = f32::MIN;
        for lag in lo..=hi {
            let cur = score(x, lag, len, dir);
            let next = if lag < hi {
                score(x, lag + 1, len, dir)
            } else {
                f32::MIN
            };
            if cur >= prev && cur >= next && cur >= 0.9 * best.1 {
                return (lag, cur);
            }
            prev = cur;
        }
        best
    }

    #[test]
    fn search_scoring_once_equals_scoring_twice() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for case in 0..60usize {
            // Tones, pulses and noise mixed; ranges short, long and past
            // the kept scores (600 lags), from both ends.
            let n = 1600 + 37 * case;
            let mut x = tone(8000, 90.0 + 13.0 * case as f32, n);
            let p = pulses(23 + case, n);
            for (v, q) in x.iter_mut().zip(&p) {
                *v = *v * (case % 3) as f32 + q + noise() * (case % 4) as f32 * 0.3;
            }
            let (lo, hi, len) = match case % 3 {
                0 => (5, 40, 60),
                1 => (20, 300, 200),
                _ => (10, 610, 300),
            };
            for dir in [Search::Back, Search::Forward] {
                assert_eq!(
                    search_range(&x, lo, hi, len, dir),
                    search_twice(&x, lo, hi, len, dir),
                    "case {case} {dir:?}"
                );
            }
        }
    }

    #[test]
    fn pulse_train_period_found_backwards_and_forwards() {
        for p in [27usize, 64, 80, 111] {
            let x = pulses(p, 600);
            let mut deci = [0.0; 600];
            let back = find_period(&x, &mut deci, 1, 20, 120, 80, Search::Back);
            let fwd = find_period(&x, &mut deci, 1, 20, 120, 80, Search::Forward);
            assert_eq!(back.0, p, "back");
            assert_eq!(fwd.0, p, "forward");
            assert!(back.1 > 0.99 && fwd.1 > 0.99);
        }
    }

    #[test]
    fn shortest_period_wins_over_its_multiples() {
        // 100 Hz at 8 kHz: lags 80 and 160 match equally; 80 is the pitch.
        let x = tone(8000, 100.0, 800);
        let mut deci = [0.0; 800];
        let (lag, score) = find_period(&x, &mut deci, 1, 20, 200, 80, Search::Back);
        assert_eq!(lag, 80);
        assert!(score > 0.99);
    }

    #[test]
    fn decimated_search_finds_the_full_rate_period() {
        // 200 Hz at 192 kHz: a period of 960 samples, searched at 16 kHz
        // (decimation 12) and refined to the exact sample.
        let rate = 192_000;
        let x = tone(rate, 200.0, 7680);
        let d = decimation(rate);
        assert_eq!(d, 12);
        let mut deci = vec![0.0; x.len()];
        let (lag, score) = find_period(&x, &mut deci, d, 480, 2880, 1920, Search::Back);
        assert_eq!(lag, 960);
        assert!(score > 0.99);
        assert_eq!(decimation(8000), 1);
        assert_eq!(decimation(48_000), 3);
    }

    #[test]
    fn noise_has_no_clear_period_and_silence_none() {
        let mut s = 12_345u64;
        let x: Vec<f32> = (0..800)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect();
        let mut deci = [0.0; 800];
        let (_, score) = find_period(&x, &mut deci, 1, 20, 120, 80, Search::Back);
        assert!(score < 0.5, "noise scored {score}");
        let (_, score) = find_period(&[0.0; 800], &mut deci, 2, 20, 120, 80, Search::Back);
        assert!(score <= 0.0);
    }

    #[test]
    fn short_signal_and_odd_limits_do_not_panic() {
        let mut deci = [0.0; 4];
        let x = pulses(5, 30);
        let _ = find_period(&x, &mut deci, 3, 0, 0, 100, Search::Back);
        let _ = find_period(&x, &mut deci, 0, 50, 10, 10, Search::Forward);
        let _ = find_period(&[], &mut deci, 2, 1, 5, 3, Search::Back);
    }
}
