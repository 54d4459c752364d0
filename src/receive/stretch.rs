//! Time-stretching, so the playout delay can move to a new target without
//! gaps or clicks. Input: interleaved f32 frames (after concealment).
//! Output: the same audio with a requested number of frames removed
//! (`request(+n)`, shortens the delay) or added (`request(-n)`, lengthens
//! it), pitch unchanged.
//!
//! Policy (NetEQ "accelerate" / "preemptive expand", a WSOLA variant): a
//! request is carried out in steps, each removing or inserting one segment
//! of R frames, R the lag (2.5–12 ms) at which the audio is most similar to
//! itself (for voiced audio a pitch period), with a cross-fade between the
//! two similar segments so the waveform never jumps. After each step the
//! audio passes unchanged for 11·R frames, so the rate never changes by
//! more than about 8 %. Where the audio is not similar to itself at any lag
//! (a transient, noise), the step waits a little for a better place. With
//! nothing pending it is an exact pass-through with no added latency;
//! while a request is pending it holds up to about 45 ms of look-ahead
//! (`buffered()`), which the delay estimate must count. Given less than it
//! asks for, it steps when it has a search window in hand and lets the
//! request go rather than produce a short period. Nothing allocates after
//! `new`.

use core::fmt;

use crate::audio::channels;
use crate::audio::pitch::{self, find_period, ncc, Search};

/// Segment lengths searched (400 Hz down to 83 Hz).
const MIN_LAG_US: u32 = 2_500;
const MAX_LAG_US: u32 = 12_000;
/// Frames passed unchanged after a step of R frames, in units of R:
/// R / (2R + 11R) ≈ 7.7 % rate change at most.
const COOLDOWN_PER_LAG: usize = 11;
/// Catching up audio held while the device was away: R / (2R + 3R) = 20 %
/// faster, as NetEQ's "accelerate" does for a full buffer; still a
/// pitch-preserving cut at a similar place, so speech stays intelligible.
const CATCH_UP_COOLDOWN_PER_LAG: usize = 3;
/// The fastest a stream is consumed, catching up: each step takes 2R + 3R
/// frames of input and gives 4R, so the device's real time takes 1.25
/// times as much audio.
pub const CATCH_UP_SPEED: f64 =
    (2 + CATCH_UP_COOLDOWN_PER_LAG) as f64 / (1 + CATCH_UP_COOLDOWN_PER_LAG) as f64;
/// Similarity required to stretch at a place; below it the step waits
/// `MAX_LAG/2` frames, at most `MAX_WAITS` times in a row.
const SIMILAR_ENOUGH: f32 = 0.5;
const MAX_WAITS: u32 = 8;
/// Mean square below which audio counts as silence (any place is good).
const SILENCE_POWER: f32 = 1e-7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StretchError {
    /// The configured maximum channel count is outside 1..=8.
    Channels(usize),
    /// The configured maximum rate is outside 8000..=192000 Hz.
    Rate(u32),
    /// The configured block size is 0 or above one second.
    Block(usize),
}

impl fmt::Display for StretchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StretchError::Channels(c) => write!(
                f,
                "time-stretch: {c} channels is not supported; use 1 to 8 channels"
            ),
            StretchError::Rate(r) => write!(
                f,
                "time-stretch: sample rate {r} Hz is not supported; use 8000 to 192000 Hz"
            ),
            StretchError::Block(b) => write!(
                f,
                "time-stretch: block of {b} frames is not supported; use 1 frame to 1 s \
                 (check --period-ms)"
            ),
        }
    }
}

impl std::error::Error for StretchError {}

/// Counters for the statistics line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StretchMetrics {
    /// Frames removed from the stream (delay shortened).
    pub removed_frames: u64,
    /// Frames added to the stream (delay lengthened).
    pub inserted_frames: u64,
    /// Steps (segments removed or inserted).
    pub steps: u64,
}

/// Pitch-preserving time-stretcher with an exact pass-through.
pub struct Stretcher {
    max_channels: usize,
    max_rate: u32,
    max_block: usize,
    channels: usize,
    rate: u32,
    min_lag: usize,
    max_lag: usize,
    /// Look-ahead a step needs: two segments of the longest lag.
    window: usize,
    /// Frames held (interleaved), `len` valid; the first `ready` are final.
    buf: Vec<f32>,
    len: usize,
    ready: usize,
    cap: usize,
    /// Frames still to pass unchanged before the next step.
    skip: usize,
    /// Frames passed unchanged after a step, in units of its length:
    /// `COOLDOWN_PER_LAG`, or `CATCH_UP_COOLDOWN_PER_LAG` while a backlog
    /// is caught up.
    cooldown_per_lag: usize,
    waits: u32,
    pending: isize,
    mono: Vec<f32>,
    deci: Vec<f32>,
    fade: Vec<f32>,
    metrics: StretchMetrics,
}

fn frames_for(rate: u32, us: u32) -> usize {
    ((rate as u64 * us as u64) / 1_000_000).max(1) as usize
}

impl Stretcher {
    /// Sizes every buffer for up to `max_channels` at `max_rate`, fed and
    /// drained at most `max_block_frames` at a time.
    pub fn new(
        max_channels: usize,
        max_rate: u32,
        max_block_frames: usize,
    ) -> Result<Stretcher, StretchError> {
        if !(1..=crate::audio::format::MAX_CHANNELS as usize).contains(&max_channels) {
            return Err(StretchError::Channels(max_channels));
        }
        if !(crate::audio::format::MIN_RATE..=crate::audio::format::MAX_RATE).contains(&max_rate) {
            return Err(StretchError::Rate(max_rate));
        }
        if max_block_frames == 0 || max_block_frames > max_rate as usize {
            return Err(StretchError::Block(max_block_frames));
        }
        let max_lag = frames_for(max_rate, MAX_LAG_US);
        let window = 2 * max_lag;
        let cap = Self::need(max_block_frames, window, max_lag) + max_lag + 16;
        let mut s = Stretcher {
            max_channels,
            max_rate,
            max_block: max_block_frames,
            channels: 1,
            rate: max_rate,
            min_lag: 1,
            max_lag,
            window,
            buf: vec![0.0; cap * max_channels],
            len: 0,
            ready: 0,
            cap,
            skip: 0,
            cooldown_per_lag: COOLDOWN_PER_LAG,
            waits: 0,
            pending: 0,
            mono: vec![0.0; window],
            deci: vec![0.0; window],
            fade: vec![0.0; max_lag * max_channels],
            metrics: StretchMetrics::default(),
        };
        s.set_format(max_channels, max_rate);
        Ok(s)
    }

    /// Input to hold so that `n` frames can be produced while stretching:
    /// the output, one look-ahead window, one segment, and what steps in
    /// that span may remove (one per 13 frames at most, with margin).
    fn need(n: usize, window: usize, max_lag: usize) -> usize {
        n + window + max_lag + (n + window) / 8
    }

    /// A new stream: drops held audio and any pending request. Values above
    /// the maxima given to `new` are clamped.
    pub fn set_format(&mut self, channels: usize, rate: u32) {
        self.channels = channels.clamp(1, self.max_channels);
        self.rate = rate.clamp(crate::audio::format::MIN_RATE, self.max_rate);
        self.min_lag = frames_for(self.rate, MIN_LAG_US);
        self.max_lag = frames_for(self.rate, MAX_LAG_US);
        self.window = 2 * self.max_lag;
        self.len = 0;
        self.ready = 0;
        self.let_go();
    }

    /// Drops the pending request with its cooldown and waits: the next
    /// request starts afresh.
    fn let_go(&mut self) {
        self.pending = 0;
        self.skip = 0;
        self.waits = 0;
    }

    /// Remove (positive) or add (negative) this many frames, spread over
    /// time; adds to what is still pending.
    pub fn request(&mut self, frames: isize) {
        self.pending = self.pending.saturating_add(frames);
    }

    /// Input beyond `output_frames` that stretching holds as look-ahead
    /// (the caller lets a stretch start only when that much has arrived).
    pub fn look_ahead(&self, output_frames: usize) -> usize {
        Self::need(output_frames, self.window, self.max_lag) - output_frames
    }

    /// Input a cut needs in hand to make its first step and still
    /// produce `output_frames`: the output and one search window. Less
    /// than `look_ahead`, which also holds the next step's window: a cut
    /// started with only this much takes the rest as it arrives, and lets
    /// go if it does not come in time (see `process`).
    pub fn first_step_input(&self, output_frames: usize) -> usize {
        output_frames + self.window
    }

    /// Catching up a backlog (`true`): steps come closer together, up to
    /// 20 % faster than real time instead of 8 %.
    pub fn set_catch_up(&mut self, fast: bool) {
        self.cooldown_per_lag = if fast {
            CATCH_UP_COOLDOWN_PER_LAG
        } else {
            COOLDOWN_PER_LAG
        };
    }

    /// Drops what is still pending (held frames still play).
    pub fn cancel(&mut self) {
        self.pending = 0;
    }

    /// Frames still to remove (+) or add (−).
    pub fn pending(&self) -> isize {
        self.pending
    }

    /// Frames held inside (look-ahead while stretching): part of the delay.
    pub fn buffered(&self) -> usize {
        self.len
    }

    pub fn metrics(&self) -> &StretchMetrics {
        &self.metrics
    }

    /// Input frames to pass to `process` so it can produce
    /// `output_frames` (at most `max_block_frames`) in one call.
    pub fn input_needed(&self, output_frames: usize) -> usize {
        let output_frames = output_frames.min(self.max_block);
        if self.pending == 0 {
            output_frames.saturating_sub(self.len)
        } else {
            Self::need(output_frames, self.window, self.max_lag).saturating_sub(self.len)
        }
    }

    /// Consumes interleaved input and produces interleaved output; returns
    /// (frames consumed, frames produced). Input not consumed (the call was
    /// given more than `input_needed`) must be passed again.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) -> (usize, usize) {
        let ch = self.channels;
        let in_frames = input.len() / ch;
        let out_frames = output.len() / ch;
        if self.pending == 0 && self.len == 0 {
            let n = in_frames.min(out_frames);
            output[..n * ch].copy_from_slice(&input[..n * ch]);
            return (n, n);
        }
        // Room for one inserted segment stays free.
        let room = (self.cap - self.max_lag).saturating_sub(self.len);
        let take = in_frames.min(room);
        self.buf[self.len * ch..(self.len + take) * ch].copy_from_slice(&input[..take * ch]);
        self.len += take;
        self.advance();
        if self.pending != 0 && self.ready < out_frames {
            // Short of the window its next step compares (the caller had
            // less audio to give than `input_needed`): the stretch lets go
            // rather than stall the output. What it holds plays; a new
            // request starts from there.
            self.let_go();
            self.advance();
        }
        let n = self.ready.min(out_frames);
        output[..n * ch].copy_from_slice(&self.buf[..n * ch]);
        self.buf.copy_within(n * ch..self.len * ch, 0);
        self.len -= n;
        self.ready -= n;
        (take, n)
    }

    /// Marks frames final, carrying out steps where a request is pending.
    fn advance(&mut self) {
        loop {
            if self.pending == 0 {
                self.ready = self.len;
                return;
            }
            if self.skip > 0 {
                let a = self.skip.min(self.len - self.ready);
                self.ready += a;
                self.skip -= a;
                if self.skip > 0 {
                    return;
                }
                continue;
            }
            if self.len - self.ready < self.window || self.len + self.max_lag > self.cap {
                return;
            }
            self.step();
        }
    }

    /// One step at `ready`: remove or insert one segment.
    fn step(&mut self) {
        let ch = self.channels;
        let p = self.ready;
        let want = self.pending.unsigned_abs();
        let hi = self.max_lag.min(want);
        let lo = self.min_lag.min(hi);
        let w = self.window;
        // The search compares the mix of all channels (their mean).
        channels::map(&self.buf[p * ch..(p + w) * ch], ch, &mut self.mono[..w], 1);
        let power = self.mono[..w].iter().map(|m| m * m).sum::<f32>() / w as f32;
        let d = pitch::decimation(self.rate);
        let len = self.max_lag;
        let (r, score) = if lo == hi {
            (lo, ncc(&self.mono[..w], 0, lo, len))
        } else {
            find_period(
                &self.mono[..w],
                &mut self.deci,
                d,
                lo,
                hi,
                len,
                Search::Forward,
            )
        };
        if power > SILENCE_POWER && score < SIMILAR_ENOUGH && self.waits < MAX_WAITS {
            self.waits += 1;
            self.skip = self.max_lag / 2;
            return;
        }
        self.waits = 0;
        // Cross-fade length: the segment itself, but not shorter than the
        // shortest lag, so a small remainder is still blended smoothly.
        let l = r.max(self.min_lag);
        if self.pending > 0 {
            // x[0..l) fades into x[r..r+l); x[l..l+r) is dropped.
            for k in 0..l {
                let g = (k + 1) as f32 / (l + 1) as f32;
                for c in 0..ch {
                    let a = self.buf[(p + k) * ch + c];
                    let b = self.buf[(p + r + k) * ch + c];
                    self.buf[(p + k) * ch + c] = (1.0 - g) * a + g * b;
                }
            }
            self.buf
                .copy_within((p + l + r) * ch..self.len * ch, (p + l) * ch);
            self.len -= r;
            self.ready = p + l;
            self.pending -= r as isize;
            self.metrics.removed_frames += r as u64;
        } else {
            // x[0..r), then x[r..r+l) fading into x[0..l), then x[l..].
            for k in 0..l {
                let g = (k + 1) as f32 / (l + 1) as f32;
                for c in 0..ch {
                    let a = self.buf[(p + r + k) * ch + c];
                    let b = self.buf[(p + k) * ch + c];
                    self.fade[k * ch + c] = (1.0 - g) * a + g * b;
                }
            }
            self.buf
                .copy_within((p + l) * ch..self.len * ch, (p + l + r) * ch);
            self.buf[(p + r) * ch..(p + r + l) * ch].copy_from_slice(&self.fade[..l * ch]);
            self.len += r;
            self.ready = p + r + l;
            self.pending += r as isize;
            self.metrics.inserted_frames += r as u64;
        }
        self.metrics.steps += 1;
        self.skip = self.cooldown_per_lag * r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::f32::consts::PI;

    fn voiced(rate: u32, f0: f32, vib: f32, frames: usize) -> Vec<f32> {
        let mut phase = 0f32;
        (0..frames)
            .map(|n| {
                let t = n as f32 / rate as f32;
                let f = f0 * (1.0 + vib * (2.0 * PI * 5.0 * t).sin());
                phase += 2.0 * PI * f / rate as f32;
                (1..=5)
                    .map(|k| 0.4 / k as f32 * (k as f32 * phase).sin())
                    .sum()
            })
            .collect()
    }

    fn max_step(x: &[f32], ch: usize, c: usize) -> f32 {
        let v: Vec<f32> = x.iter().skip(c).step_by(ch).copied().collect();
        v.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    /// Plays `sig` through `st` one period at a time as the playout thread
    /// does, then drains what is held. Returns the output.
    fn drive(st: &mut Stretcher, sig: &[f32], ch: usize, period: usize) -> Vec<f32> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut buf = vec![0.0; period * ch];
        loop {
            let need = st.input_needed(period);
            let end = (pos + need * ch).min(sig.len());
            let (used, made) = st.process(&sig[pos..end], &mut buf);
            pos += used * ch;
            out.extend_from_slice(&buf[..made * ch]);
            if pos >= sig.len() && made == 0 {
                return out;
            }
        }
    }

    /// Frequency of the strongest component between `lo` and `hi` Hz.
    fn dominant(x: &[f32], rate: u32, lo: f32, hi: f32) -> f32 {
        let mut best = (lo, 0f32);
        let mut f = lo;
        while f <= hi {
            let (mut re, mut im) = (0f32, 0f32);
            for (n, &v) in x.iter().enumerate() {
                let a = 2.0 * PI * f * n as f32 / rate as f32;
                re += v * a.cos();
                im += v * a.sin();
            }
            let p = re * re + im * im;
            if p > best.1 {
                best = (f, p);
            }
            f += 0.5;
        }
        best.0
    }

    #[test]
    fn a_cut_fed_from_a_shallow_buffer_never_leaves_a_period_short() {
        // A cut started with only its first step's input in hand, then
        // given what arrives (a 20 ms packet every 20 ms, 5 ms periods),
        // never all that `input_needed` asks: each period is produced
        // whole, and the cut still removes audio.
        let (rate, period, packet) = (48_000u32, 240usize, 960usize);
        let mut st = Stretcher::new(2, rate, 960).unwrap();
        st.set_format(1, rate);
        let sig = voiced(rate, 180.0, 0.02, rate as usize * 2);
        let mut arrived = st.first_step_input(period);
        let mut pos = 0;
        let mut out = vec![0.0; period];
        st.request(2400);
        for tick in 0..300 {
            if tick % 4 == 0 {
                arrived = (arrived + packet).min(sig.len());
            }
            let take = st.input_needed(period).min(arrived - pos);
            let (used, made) = st.process(&sig[pos..pos + take], &mut out);
            pos += used;
            assert_eq!(made, period, "period {tick} short");
        }
        assert!(st.metrics().removed_frames > 0, "{:?}", st.metrics());
    }

    #[test]
    fn pass_through_is_bit_exact() {
        let mut st = Stretcher::new(2, 48000, 1024).unwrap();
        let mut s = 7u64;
        let sig: Vec<f32> = (0..48000 * 2)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect();
        for period in [1, 37, 480, 1024] {
            st.set_format(2, 48000);
            let out = drive(&mut st, &sig, 2, period);
            assert_eq!(out, sig, "period {period}");
            assert_eq!(st.buffered(), 0);
        }
    }

    #[test]
    fn requested_frames_removed_exactly() {
        for &(rate, ch, req) in &[(8000, 1, 400isize), (48000, 2, 2400), (16000, 1, 1)] {
            let mut st = Stretcher::new(2, rate, 960).unwrap();
            st.set_format(ch, rate);
            let frames = rate as usize * 2;
            let tone = voiced(rate, 180.0, 0.02, frames);
            let sig: Vec<f32> = tone.iter().flat_map(|&v| vec![v; ch]).collect();
            st.request(req);
            let out = drive(&mut st, &sig, ch, rate as usize / 100);
            assert_eq!(st.pending(), 0);
            assert_eq!(out.len() / ch, frames - req as usize);
            assert_eq!(st.metrics().removed_frames, req as u64);
            // Done stretching, the tail is the input again, bit-exact.
            let tail = rate as usize / 10 * ch;
            assert_eq!(out[out.len() - tail..], sig[sig.len() - tail..]);
        }
    }

    #[test]
    fn requested_frames_inserted_exactly() {
        for &(rate, ch, req) in &[(8000, 1, 400isize), (48000, 2, 2400), (16000, 1, 3)] {
            let mut st = Stretcher::new(2, rate, 960).unwrap();
            st.set_format(ch, rate);
            let frames = rate as usize * 2;
            let tone = voiced(rate, 130.0, 0.02, frames);
            let sig: Vec<f32> = tone.iter().flat_map(|&v| vec![v; ch]).collect();
            st.request(-req);
            let out = drive(&mut st, &sig, ch, rate as usize / 100);
            assert_eq!(st.pending(), 0);
            assert_eq!(out.len() / ch, frames + req as usize);
            assert_eq!(st.metrics().inserted_frames, req as u64);
            let tail = rate as usize / 10 * ch;
            assert_eq!(out[out.len() - tail..], sig[sig.len() - tail..]);
        }
    }

    #[test]
    fn stretching_does_not_click() {
        let rate = 16000;
        let sig = voiced(rate, 155.0, 0.04, rate as usize * 3);
        let bound = max_step(&sig, 1, 0) * 1.15;
        for req in [2400isize, -2400] {
            let mut st = Stretcher::new(1, rate, 320).unwrap();
            st.request(req);
            let out = drive(&mut st, &sig, 1, 160);
            assert_eq!(st.pending(), 0);
            let step = max_step(&out, 1, 0);
            assert!(step <= bound, "request {req}: step {step} > {bound}");
        }
    }

    #[test]
    fn pitch_preserved_at_five_percent() {
        let rate = 16000;
        let frames = rate as usize * 2;
        let sig = voiced(rate, 440.0, 0.0, frames);
        let before = dominant(&sig[..rate as usize], rate, 400.0, 480.0);
        for req in [frames as isize / 20, -(frames as isize) / 20] {
            let mut st = Stretcher::new(1, rate, 320).unwrap();
            st.request(req);
            let out = drive(&mut st, &sig, 1, 160);
            assert_eq!(st.pending(), 0, "request {req} not done in time");
            // The first second, where the stretching happens.
            let after = dominant(&out[..rate as usize], rate, 400.0, 480.0);
            assert!(
                (after - before).abs() <= 3.0,
                "request {req}: {before} Hz became {after} Hz"
            );
        }
    }

    #[test]
    fn set_format_drops_request_and_held_audio() {
        let mut st = Stretcher::new(2, 48000, 480).unwrap();
        st.request(100);
        let sig = voiced(48000, 200.0, 0.0, 4800);
        let mut out = vec![0.0; 480];
        let n = st.input_needed(480);
        st.process(&sig[..n], &mut out);
        assert!(st.buffered() > 0);
        st.set_format(1, 16000);
        assert_eq!((st.pending(), st.buffered()), (0, 0));
        let (used, made) = st.process(&sig[..160], &mut out[..160]);
        assert_eq!((used, made), (160, 160));
        assert_eq!(out[..160], sig[..160]);
    }

    #[test]
    fn bad_limits_refused() {
        assert_eq!(
            Stretcher::new(0, 8000, 80).err(),
            Some(StretchError::Channels(0))
        );
        assert_eq!(
            Stretcher::new(1, 1000, 80).err(),
            Some(StretchError::Rate(1000))
        );
        assert_eq!(
            Stretcher::new(1, 8000, 0).err(),
            Some(StretchError::Block(0))
        );
    }
}
