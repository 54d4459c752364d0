//! Delay controller: holds the playout delay at its target while the
//! sender's clock runs at its own rate.
//!
//! Input, once per device period: the measured delay, the target delay and
//! the period, all in frames of `ControllerConfig::rate`. The playout
//! stage runs one controller per stream at the stream's rate and measures
//! the audio it holds before the device: jitter-buffer depth plus what the
//! stretcher and the resampler hold (the ALSA delay is not part of it; it
//! does not depend on the sender's clock). Its target is the level the
//! jitter margin sets: margin plus half a packet (`--latency-ms`, or the
//! adaptive margin of `delay`). Also, through `allow_stretch`, whether the
//! stretcher has the audio to shorten or lengthen now. Output: a
//! `Control`, holding the drift in ppm for `Resampler::set_drift_ppm` and
//! the number of frames the time-stretcher should remove (positive) or add
//! (negative) now.
//!
//! Policy:
//! - The measurement is noisy: packets land in ptime steps (a sawtooth of
//!   one ptime) and each carries its own jitter. It is smoothed by a
//!   one-pole low-pass with a 1 s time constant, which leaves < 0.1 ms of
//!   a 20 ms sawtooth while adding little lag to a loop that is ten times
//!   slower.
//! - Small errors are the clock's: a PI loop moves the resampling ratio.
//!   The plant is an integrator (1 ppm of ratio error moves the delay by
//!   1 µs per second), so with P = 300 ppm/ms and I = 22.5 ppm/(ms·s) the
//!   loop is critically damped at ω = 0.15 rad/s: a 1000 ppm clock step
//!   peaks at ≈ 2.5 ms of error and is gone in ≈ 30 s, and the ratio never
//!   moves fast enough to be heard. Output bounded to ±`max_ppm` (default
//!   2500 ppm; the playout stage passes the resampler's whole ±5000 ppm;
//!   a PC's and a Pi's crystals are within ±100 ppm each, USB and
//!   Bluetooth devices drift more). The error each term sees is clamped to
//!   the stretch threshold (4 ms) and the integrator to ±`max_ppm`, so it
//!   cannot wind up.
//! - Large errors (a new target, a burst that filled the buffer, the start)
//!   are not the clock's: above 4 ms the controller asks the stretcher to
//!   remove or add up to 5 % of each period until the error is under 1 ms;
//!   the integrator is frozen meanwhile so the clock estimate is not
//!   polluted. A 40 ms change of target takes ≈ 0.8 s and no jump. The
//!   stretch asked for is subtracted from the filter's state at once, since
//!   the stretcher applies it now and the filter would only see it later.
//! - Without room to stretch in the error's direction (`allow_stretch`),
//!   nothing is stretched: the proportional term alone may then use the
//!   whole ±`max_ppm` to close the error through the resampler; the
//!   integrator keeps its small clamp.
//! - The drift estimate (for the statistics line) is the integrator,
//!   smoothed over 20 s: on average it is the ratio that holds the delay,
//!   i.e. the sender's clock against the device's.
//! - No allocation at all; a non-finite input or a zero period repeats the
//!   last drift and asks for no stretch.

use std::fmt;

/// Options of the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// Device frames per second (the unit of the delays passed in).
    pub rate: u32,
    /// Bound of the resampler drift the controller asks for.
    pub max_ppm: f64,
    /// Bound of the proportional part: how fast the delay itself is moved
    /// when there is no room to stretch (ppm: µs per second).
    pub max_correction_ppm: f64,
    /// Time constant of the delay measurement's low-pass.
    pub filter_ms: f64,
    /// Proportional gain, ppm per ms of delay error.
    pub kp_ppm_per_ms: f64,
    /// Integral gain, ppm per ms of error per second.
    pub ki_ppm_per_ms_s: f64,
    /// Errors above this are stretched away...
    pub stretch_above_ms: f64,
    /// ...until they are below this.
    pub stretch_until_ms: f64,
    /// At most this fraction of a period is removed or added per period.
    pub max_stretch: f64,
    /// Time constant of the reported drift's smoothing.
    pub report_s: f64,
    /// Errors above this (ms) are not integrated: they are a jump of the
    /// reference, not a clock's drift (`stretch_above_ms` bounds it too;
    /// infinite: that bound alone).
    pub integrate_below_ms: f64,
    /// An error above `integrate_below_ms`, and within what the
    /// proportional term can balance (`max_correction_ppm` /
    /// `kp_ppm_per_ms`), that lasts this long (s) is not a jump, which the
    /// proportional term takes back sooner, but a wrong ratio held (a
    /// feed-forward off, or what the integral learnt from one): it is then
    /// integrated too. Infinite: never.
    pub integrate_held_after_s: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            rate: 48000,
            max_ppm: 2500.0,
            max_correction_ppm: 1000.0,
            filter_ms: 1000.0,
            kp_ppm_per_ms: 300.0,
            ki_ppm_per_ms_s: 22.5,
            stretch_above_ms: 4.0,
            stretch_until_ms: 1.0,
            max_stretch: 0.05,
            report_s: 20.0,
            integrate_below_ms: f64::INFINITY,
            integrate_held_after_s: f64::INFINITY,
        }
    }
}

/// A configuration the controller cannot run with.
#[derive(Debug, Clone, PartialEq)]
pub enum ControllerError {
    Rate(u32),
    /// Names the field and its refused value.
    Value {
        field: &'static str,
        value: f64,
    },
}

impl fmt::Display for ControllerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControllerError::Rate(r) => {
                write!(f, "delay controller: device rate {r} Hz must be above 0")
            }
            ControllerError::Value { field, value } => write!(
                f,
                "delay controller: {field} = {value} is out of range (finite, positive; stretch_until_ms below stretch_above_ms; max_stretch at most 0.5)"
            ),
        }
    }
}

impl std::error::Error for ControllerError {}

/// What the playout thread applies this period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Control {
    /// For `Resampler::set_drift_ppm`: + consumes input faster.
    pub drift_ppm: f64,
    /// Frames the time-stretcher should remove (+) or add (−) now.
    pub stretch_frames: isize,
}

/// PI loop on the resampling ratio plus stretch requests for large errors.
#[derive(Debug, Clone)]
pub struct DelayController {
    cfg: ControllerConfig,
    /// Low-passed measured delay, frames; None before the first update.
    filtered: Option<f64>,
    /// Integrator, ppm.
    integral: f64,
    stretching: bool,
    reported: f64,
    last: Control,
    /// Coefficients cached for the last period size (exp is not free).
    coef_period: usize,
    filter_alpha: f64,
    report_alpha: f64,
    may_shorten: bool,
    may_lengthen: bool,
    /// The clock estimate's ratio, applied as is; the loop's integral then
    /// only holds what the estimate gets wrong.
    feed_forward_ppm: f64,
    /// False while the caller passes audio through untouched: the error is
    /// let grow on purpose, and must not wind the integral up.
    integrating: bool,
    /// How long the error has been above `integrate_below_ms`, s.
    held_s: f64,
}

impl DelayController {
    pub fn new(cfg: &ControllerConfig) -> Result<DelayController, ControllerError> {
        if cfg.rate == 0 {
            return Err(ControllerError::Rate(cfg.rate));
        }
        let positive = [
            ("max_ppm", cfg.max_ppm),
            ("max_correction_ppm", cfg.max_correction_ppm),
            ("filter_ms", cfg.filter_ms),
            ("kp_ppm_per_ms", cfg.kp_ppm_per_ms),
            ("ki_ppm_per_ms_s", cfg.ki_ppm_per_ms_s),
            ("stretch_above_ms", cfg.stretch_above_ms),
            ("stretch_until_ms", cfg.stretch_until_ms),
            ("max_stretch", cfg.max_stretch),
            ("report_s", cfg.report_s),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(ControllerError::Value { field, value });
            }
        }
        for (field, value) in [
            ("integrate_below_ms", cfg.integrate_below_ms),
            ("integrate_held_after_s", cfg.integrate_held_after_s),
        ] {
            if value.is_nan() || value <= 0.0 {
                return Err(ControllerError::Value { field, value });
            }
        }
        if cfg.stretch_until_ms >= cfg.stretch_above_ms {
            return Err(ControllerError::Value {
                field: "stretch_until_ms",
                value: cfg.stretch_until_ms,
            });
        }
        if cfg.max_stretch > 0.5 {
            return Err(ControllerError::Value {
                field: "max_stretch",
                value: cfg.max_stretch,
            });
        }
        Ok(DelayController {
            cfg: cfg.clone(),
            filtered: None,
            integral: 0.0,
            stretching: false,
            reported: 0.0,
            last: Control {
                drift_ppm: 0.0,
                stretch_frames: 0,
            },
            coef_period: 0,
            filter_alpha: 0.0,
            report_alpha: 0.0,
            may_shorten: true,
            feed_forward_ppm: 0.0,
            integrating: true,
            may_lengthen: true,
            held_s: 0.0,
        })
    }

    /// Starts over (new stream): the clock estimate is dropped too, since a
    /// new sender has its own clock.
    pub fn reset(&mut self) {
        self.filtered = None;
        self.integral = 0.0;
        self.held_s = 0.0;
        self.stretching = false;
        self.reported = 0.0;
        self.last = Control {
            drift_ppm: 0.0,
            stretch_frames: 0,
        };
    }

    /// The sender's clock against the device's, in ppm (+: sender fast).
    pub fn drift_ppm(&self) -> f64 {
        self.reported
    }

    /// The smoothed delay the loop acts on, in frames (0 before the first
    /// update).
    pub fn filtered_delay_frames(&self) -> f64 {
        self.filtered.unwrap_or(0.0)
    }

    /// The separately estimated clock ratio (`receive::clock`), added to the
    /// loop's output; 0 without an estimate. Non-finite values are ignored.
    pub fn set_feed_forward_ppm(&mut self, ppm: f64) {
        if ppm.is_finite() {
            self.feed_forward_ppm = ppm.clamp(-self.cfg.max_ppm, self.cfg.max_ppm);
        }
    }

    /// The loop's integral: the ratio correction it has learnt beyond the
    /// feed-forward, ppm.
    pub fn integral_ppm(&self) -> f64 {
        self.integral
    }

    /// Forgets the ratio the integral learnt (a feed-forward estimate has
    /// taken its place).
    pub fn clear_integral(&mut self) {
        self.integral = 0.0;
    }

    /// Whether the integral follows the error (see `integrating`).
    pub fn set_integrating(&mut self, on: bool) {
        self.integrating = on;
    }

    /// The smoothed delay error the loop acts on, in ms (0 before the
    /// first update).
    pub fn error_ms(&self, target_delay_frames: f64) -> f64 {
        match self.filtered {
            Some(f) => (f - target_delay_frames) * 1000.0 / self.cfg.rate as f64,
            None => 0.0,
        }
    }

    /// One device period: returns what to apply during the next one.
    /// Whether the stretcher may shorten (remove) or lengthen (insert)
    /// now: it needs audio buffered beyond the jitter margin to look ahead
    /// into. Both are allowed until told otherwise.
    pub fn allow_stretch(&mut self, shorten: bool, lengthen: bool) {
        self.may_shorten = shorten;
        self.may_lengthen = lengthen;
    }

    pub fn update(
        &mut self,
        measured_delay_frames: f64,
        target_delay_frames: f64,
        period_frames: usize,
    ) -> Control {
        if !measured_delay_frames.is_finite()
            || !target_delay_frames.is_finite()
            || period_frames == 0
        {
            self.last.stretch_frames = 0;
            return self.last;
        }
        let rate = self.cfg.rate as f64;
        let dt_s = period_frames as f64 / rate;
        if period_frames != self.coef_period {
            self.coef_period = period_frames;
            self.filter_alpha = 1.0 - libm::exp(-dt_s * 1000.0 / self.cfg.filter_ms);
            self.report_alpha = 1.0 - libm::exp(-dt_s / self.cfg.report_s);
        }
        let filtered = match self.filtered {
            // Starting from the target, not from the first measurement: at a
            // stream's start the level sits a whole packet above the mean
            // it saws around, an error the filter would take a time
            // constant to forget and the loop would chase meanwhile.
            None => {
                target_delay_frames
                    + self.filter_alpha * (measured_delay_frames - target_delay_frames)
            }
            Some(f) => f + self.filter_alpha * (measured_delay_frames - f),
        };
        let frames_per_ms = rate / 1000.0;
        let error_ms = (filtered - target_delay_frames) / frames_per_ms;

        let room = if error_ms > 0.0 {
            self.may_shorten
        } else {
            self.may_lengthen
        };
        if !room {
            // The stretcher has no look-ahead to work with: the resampler
            // alone moves the delay (slowly, within its ppm bound).
            self.stretching = false;
        } else if error_ms.abs() > self.cfg.stretch_above_ms {
            self.stretching = true;
        } else if error_ms.abs() < self.cfg.stretch_until_ms {
            self.stretching = false;
        }
        let mut stretch_frames = 0isize;
        if self.stretching {
            let excess = (error_ms.abs() - self.cfg.stretch_until_ms) * frames_per_ms;
            let most = self.cfg.max_stretch * period_frames as f64;
            let n = excess.min(most).floor() as isize;
            stretch_frames = if error_ms > 0.0 { n } else { -n };
            if n == 0 {
                self.stretching = false;
            }
        }
        // The stretcher removes these frames now; the filter would take a
        // time constant to notice.
        self.filtered = Some(filtered - stretch_frames as f64);

        let limit = self.cfg.stretch_above_ms;
        let e = error_ms.clamp(-limit, limit);
        // Only errors a clock could have made are integrated: a larger one
        // is a new target or a start (the level sits a packet high, the
        // adaptive target comes down), which the proportional term takes
        // back; winding it into the integral would chase it for seconds
        // after it is gone. But an error held above the band for longer
        // than the proportional term takes to remove a jump is what the
        // ratio gets wrong: left out, a feed-forward 1000 ppm off held
        // sync 0.23 ms off for as long as it was (the proportional term's
        // 4000 ppm/ms against it). Only an error the proportional term can
        // balance counts: beyond its reach it is saturated, slewing a
        // large error off at its bound (as is a stretch), and an integral
        // wound up meanwhile would overshoot.
        let band = limit.min(self.cfg.integrate_below_ms);
        let reach = self.cfg.max_correction_ppm / self.cfg.kp_ppm_per_ms;
        if !self.stretching && error_ms.abs() > band && error_ms.abs() <= reach {
            self.held_s += dt_s;
        } else {
            self.held_s = 0.0;
        }
        if !self.stretching
            && self.integrating
            && (error_ms.abs() <= band || self.held_s >= self.cfg.integrate_held_after_s)
        {
            self.integral = (self.integral + self.cfg.ki_ppm_per_ms_s * e * dt_s)
                .clamp(-self.cfg.max_ppm, self.cfg.max_ppm);
        }
        // Without room to stretch, the resampler alone must close a large
        // error: let the proportional term use the whole ppm range
        // (2500 ppm is a 4-cent pitch glide) rather than the stretch
        // threshold's share of it. The integrator keeps the small clamp so
        // a target change does not wind it up as if it were drift.
        let p_error = if room {
            e
        } else {
            let wide = self.cfg.max_ppm / self.cfg.kp_ppm_per_ms.max(f64::MIN_POSITIVE);
            error_ms.clamp(-wide, wide)
        };
        // The delay is moved at most `max_correction_ppm` beyond the
        // clock's own rate: a pitch glide nobody hears, and the timing of
        // what plays stays within 1 ms per half second.
        let correction = (self.cfg.kp_ppm_per_ms * p_error)
            .clamp(-self.cfg.max_correction_ppm, self.cfg.max_correction_ppm);
        let ppm = (self.feed_forward_ppm + correction + self.integral)
            .clamp(-self.cfg.max_ppm, self.cfg.max_ppm);
        self.reported +=
            self.report_alpha * (self.feed_forward_ppm + self.integral - self.reported);
        self.last = Control {
            drift_ppm: ppm,
            stretch_frames,
        };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Lcg;

    const RATE: u32 = 48000;
    /// Frames the ALSA device holds (its delay), constant in this model.
    const ALSA_DELAY: f64 = 240.0;

    /// The receive chain in simulated time, in device frames. The sender's
    /// clock runs at (1 + ε) against the device's; it sends one packet of
    /// `ptime` frames (of its own clock) per ptime, which arrives after a
    /// seeded jitter, in order. The receiver, each device period, consumes
    /// from the jitter buffer what the resampler would: period·(1 + ppm)
    /// input frames on average (the applied ppm glides at the resampler's
    /// 5000 ppm/s), plus what the stretcher removes.
    struct Chain {
        ctl: DelayController,
        rng: Lcg,
        epsilon_ppm: f64,
        ptime: u64,
        period: usize,
        jitter_ms: f64,
        /// Frames received so far, and the next packet's arrival time (s).
        arrived: f64,
        next_packet: u64,
        next_arrival_s: f64,
        last_arrival_s: f64,
        /// Input frames consumed (fractional: the resampler's average).
        consumed: f64,
        applied_ppm: f64,
        tick: u64,
        playing: bool,
        underruns: u64,
        /// Frames removed or added by the stretcher, both counted.
        stretched: u64,
        max_depth: f64,
        min_depth: f64,
        /// Running sum of the measured delay over the current second.
        second_sum: f64,
        second_n: u64,
    }

    impl Chain {
        fn new(epsilon_ppm: f64, ptime: u64, period: usize, jitter_ms: f64, seed: u64) -> Chain {
            let mut c = Chain {
                ctl: DelayController::new(&ControllerConfig::default()).unwrap(),
                rng: Lcg(seed),
                epsilon_ppm,
                ptime,
                period,
                jitter_ms,
                arrived: 0.0,
                next_packet: 0,
                next_arrival_s: 0.0,
                last_arrival_s: 0.0,
                consumed: 0.0,
                applied_ppm: 0.0,
                tick: 0,
                playing: false,
                underruns: 0,
                stretched: 0,
                max_depth: 0.0,
                min_depth: f64::INFINITY,
                second_sum: 0.0,
                second_n: 0,
            };
            c.schedule();
            c
        }

        fn schedule(&mut self) {
            let send_s = (self.next_packet * self.ptime) as f64
                / RATE as f64
                / (1.0 + self.epsilon_ppm * 1e-6);
            let a = send_s + 0.002 + self.rng.uniform() * self.jitter_ms / 1000.0;
            self.next_arrival_s = a.max(self.last_arrival_s);
        }

        fn depth(&self) -> f64 {
            self.arrived - self.consumed
        }

        /// One device period at target `target_ms`. Returns the measured
        /// delay in ms when a second's mean is complete.
        fn step(&mut self, target_ms: f64) -> Option<f64> {
            let now_s = (self.tick * self.period as u64) as f64 / RATE as f64;
            self.tick += 1;
            while self.next_arrival_s <= now_s {
                self.arrived += self.ptime as f64;
                self.last_arrival_s = self.next_arrival_s;
                self.next_packet += 1;
                self.schedule();
            }
            let target = target_ms * RATE as f64 / 1000.0;
            if !self.playing {
                // Prebuffer to the target, as the jitter buffer does.
                if self.depth() + ALSA_DELAY < target {
                    return None;
                }
                self.playing = true;
            }
            let need = self.period as f64 * (1.0 + self.applied_ppm * 1e-6);
            if self.depth() < need {
                self.underruns += 1;
                // Concealment plays instead; nothing is consumed.
            } else {
                self.consumed += need;
            }
            self.min_depth = self.min_depth.min(self.depth());
            self.max_depth = self.max_depth.max(self.depth());
            let measured = self.depth() + ALSA_DELAY;
            let c = self.ctl.update(measured, target, self.period);
            // The stretcher: removing frames consumes input without output.
            self.consumed += c.stretch_frames as f64;
            self.stretched += c.stretch_frames.unsigned_abs() as u64;
            let slew = 5000.0 * self.period as f64 / RATE as f64;
            self.applied_ppm += (c.drift_ppm - self.applied_ppm).clamp(-slew, slew);

            self.second_sum += measured;
            self.second_n += 1;
            if self.second_n * self.period as u64 >= RATE as u64 {
                let mean = self.second_sum / self.second_n as f64 * 1000.0 / RATE as f64;
                self.second_sum = 0.0;
                self.second_n = 0;
                return Some(mean);
            }
            None
        }
    }

    fn hold_for_a_day(epsilon_ppm: f64, seed: u64) {
        // 20 ms packets, 5 ms periods, 0–5 ms jitter, 40 ms target. The
        // jitter is kept at 5 ms because the 1 s mean of the measurement
        // itself carries jitter/√12/√50 of noise: at 0–10 ms that alone
        // (σ 0.4 ms, 86400 draws) would touch ±2 ms, controller or not.
        let mut chain = Chain::new(epsilon_ppm, 960, 240, 5.0, seed);
        let target_ms = 40.0;
        let mut seconds = 0u64;
        let mut worst = 0.0f64;
        let mut worst_drift = 0.0f64;
        while seconds < 24 * 3600 {
            if let Some(mean_ms) = chain.step(target_ms) {
                seconds += 1;
                if seconds > 30 {
                    worst = worst.max((mean_ms - target_ms).abs());
                }
                if seconds > 120 {
                    worst_drift = worst_drift.max((chain.ctl.drift_ppm() - epsilon_ppm).abs());
                }
            }
        }
        eprintln!(
            "{epsilon_ppm} ppm, 24 h: worst delay error {worst:.2} ms, worst drift error {worst_drift:.1} ppm, depth {:.0}..{:.0} frames",
            chain.min_depth, chain.max_depth
        );
        assert_eq!(chain.underruns, 0);
        assert!(worst <= 2.0, "delay off target by {worst:.2} ms");
        assert!(
            worst_drift <= 20.0,
            "drift estimate off by {worst_drift:.1} ppm"
        );
        // Overflow: a jitter buffer sized at twice the target never fills.
        assert!(chain.max_depth < 2.0 * target_ms * RATE as f64 / 1000.0);
    }

    #[test]
    fn sender_fast_1000ppm_for_24h() {
        hold_for_a_day(1000.0, 11);
    }

    #[test]
    fn sender_slow_1000ppm_for_24h() {
        hold_for_a_day(-1000.0, 12);
    }

    #[test]
    fn target_steps_reached_by_stretching() {
        // 10 ms packets, 5 ms periods, 0–4 ms jitter; sender 500 ppm fast.
        let mut chain = Chain::new(500.0, 480, 240, 4.0, 13);
        let mut seconds = 0u64;
        let plan = [(0u64, 20.0), (60, 60.0), (120, 20.0)];
        let target_at = |s: u64| plan.iter().rev().find(|p| s >= p.0).map_or(20.0, |p| p.1);
        while seconds < 180 {
            let target = target_at(seconds);
            if let Some(mean_ms) = chain.step(target) {
                seconds += 1;
                // A few seconds after each step the delay is there.
                let since_step = plan
                    .iter()
                    .map(|p| seconds.wrapping_sub(p.0))
                    .min()
                    .unwrap_or(0);
                if seconds > 30 && since_step > 3 {
                    assert!(
                        (mean_ms - target).abs() <= 2.0,
                        "at {seconds} s: {mean_ms:.2} ms for target {target}"
                    );
                }
            }
        }
        assert_eq!(chain.underruns, 0);
        // The 2 × 40 ms were mostly stretched, not resampled.
        let stretched = chain.stretched;
        assert!(
            stretched as f64 > 1.5 * 40.0 * 48.0,
            "only {stretched} frames stretched"
        );
    }

    #[test]
    fn stretch_bounded_per_period() {
        let cfg = ControllerConfig::default();
        let mut c = DelayController::new(&cfg).unwrap();
        // 80 ms too much: once the filtered error is past the threshold,
        // the most a period may lose, and the P term at its clamp (the
        // integrator is frozen while stretching).
        let most = (cfg.max_stretch * 240.0) as isize;
        let mut first = None;
        for _ in 0..400 {
            let ctl = c.update(4800.0, 960.0, 240);
            assert!(ctl.stretch_frames <= most, "{ctl:?}");
            if ctl.stretch_frames > 0 {
                first.get_or_insert(ctl);
            }
        }
        let first = first.expect("stretching began");
        assert_eq!(first.stretch_frames, most);
        // The P term at its clamp, plus what the integral took in before
        // the error passed the threshold.
        let p = (cfg.kp_ppm_per_ms * cfg.stretch_above_ms).min(cfg.max_correction_ppm);
        assert!((p..p + 10.0).contains(&first.drift_ppm), "{first:?}");
        let grow = c.update(0.0, 960.0, 240);
        assert!(grow.stretch_frames <= 12 && grow.stretch_frames >= -12);
    }

    #[test]
    fn small_error_no_stretch() {
        let mut c = DelayController::new(&ControllerConfig::default()).unwrap();
        for _ in 0..1000 {
            let ctl = c.update(960.0 + 96.0, 960.0, 240);
            assert_eq!(ctl.stretch_frames, 0);
            assert!(ctl.drift_ppm > 0.0, "2 ms too much delay: consume faster");
        }
    }

    #[test]
    fn non_finite_measurement_ignored() {
        let mut c = DelayController::new(&ControllerConfig::default()).unwrap();
        let a = c.update(1000.0, 960.0, 240);
        let b = c.update(f64::NAN, 960.0, 240);
        assert_eq!(b.drift_ppm, a.drift_ppm);
        assert_eq!(b.stretch_frames, 0);
        assert_eq!(c.update(1000.0, 960.0, 0).stretch_frames, 0);
    }

    #[test]
    fn bad_config_refused() {
        let d = ControllerConfig::default;
        assert!(DelayController::new(&ControllerConfig { rate: 0, ..d() }).is_err());
        assert!(DelayController::new(&ControllerConfig {
            max_ppm: -1.0,
            ..d()
        })
        .is_err());
        assert!(DelayController::new(&ControllerConfig {
            stretch_until_ms: 5.0,
            ..d()
        })
        .is_err());
        assert!(DelayController::new(&ControllerConfig {
            max_stretch: 0.9,
            ..d()
        })
        .is_err());
        assert!(DelayController::new(&d()).is_ok());
    }
}
