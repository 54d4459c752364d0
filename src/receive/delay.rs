//! Playout-delay estimator (`--latency auto`): how much delay the network
//! needs right now.
//!
//! Input: each received packet's arrival time (monotonic ns), its extended
//! RTP timestamp and the clock rate. Output: a target playout delay in ms,
//! clamped to [min, max].
//!
//! Policy, after WebRTC NetEQ's delay manager and GStreamer's
//! rtpjitterbuffer:
//! - Transit delay of a packet = arrival time − media time of its
//!   timestamp. Its absolute value is meaningless (unsynchronised clocks);
//!   what matters is how much later than the fastest recent packet it came:
//!   the relative delay = transit − min(transit over the last 2 s). The
//!   minimum is kept per 250 ms block in a ring of 8 blocks, so memory is
//!   fixed whatever the packet rate. Because the minimum is windowed, clock
//!   drift between sender and receiver cannot accumulate: at 1000 ppm it
//!   adds at most 2 ms (2 s × 1e-3).
//! - Relative delays go into a 1 ms histogram with exponential forgetting
//!   (time constant 10 s, NetEQ uses the same order of magnitude): a new
//!   jitter pattern takes over within a second, a single late packet (one
//!   of ~500 in the window at 50 packets/s) does not move the quantile.
//! - Recurring peaks (Wi-Fi power save, retransmission stalls: a few
//!   packets every few seconds held back 50–150 ms) are too rare for the
//!   quantile but would each cost a concealment. As in NetEQ's peak
//!   detector, the largest relative delay of each 1 s block is kept for the
//!   last 20 s; the second largest of them counts (a peak that came back at
//!   least once), so a single spike is ignored but a pattern is covered.
//! - The estimate is the larger of the 98 % quantile and the recurring
//!   peak, plus a 5 ms margin (for the ptime granularity of the buffer
//!   depth and the error of the quantile). The
//!   target follows it up at once, and down at most 5 ms per second, so a
//!   burst raises the delay immediately and a calm link brings it back
//!   down without the delay controller having to shrink audio quickly.
//! - Late, lost, duplicate and reordered packets need nothing special:
//!   each arrival is one sample of the network's delay; a reordered packet
//!   simply shows a larger relative delay. A timestamp that jumps by more
//!   than a plausible delay (new sender without reset, a clock step) starts
//!   the minimum afresh instead of filling the histogram with nonsense.
//! - Everything is allocated in `new`; `on_packet` and `target_ms` do not
//!   allocate.

use std::fmt;

/// Minimum of the transit delay is kept per block of this length...
const BLOCK_NS: u64 = 250_000_000;
/// ...over this many blocks (2 s): long enough to contain a packet that
/// saw an empty queue, short enough that drift does not add up.
const BLOCKS: usize = 8;
/// Peak of the relative delay kept per block of this length...
const PEAK_BLOCK_NS: u64 = 1_000_000_000;
/// ...over this many blocks (20 s): how long a peak pattern is remembered.
const PEAK_BLOCKS: usize = 20;
/// Histogram bin width.
const BIN_MS: f64 = 1.0;
/// Weights rescaled when they grow past this (growth replaces decaying
/// every bin on every packet).
const RESCALE_AT: f64 = 1e100;

/// Options of the estimator; every field in milliseconds unless named
/// otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayConfig {
    /// The target never goes below this (`--min-latency-ms`).
    pub min_ms: f64,
    /// Nor above this (`--max-latency-ms`).
    pub max_ms: f64,
    /// Where a new stream starts (clamped to [min, max]): cautious, since
    /// nothing is known of the network yet; the target then comes down at
    /// `fall_ms_per_s` as the measurements allow, or rises at once.
    pub initial_ms: f64,
    /// Fraction of packets the target must cover (0.5–0.9999).
    pub quantile: f64,
    /// Added to the quantile.
    pub margin_ms: f64,
    /// Time constant of the histogram's forgetting, in seconds.
    pub forget_s: f64,
    /// How fast the target may come down, ms per second.
    pub fall_ms_per_s: f64,
}

impl Default for DelayConfig {
    fn default() -> Self {
        DelayConfig {
            min_ms: 20.0,
            max_ms: 500.0,
            initial_ms: 40.0,
            quantile: 0.98,
            margin_ms: 5.0,
            forget_s: 10.0,
            fall_ms_per_s: 5.0,
        }
    }
}

/// A configuration the estimator cannot work with.
#[derive(Debug, Clone, PartialEq)]
pub enum DelayError {
    /// min or max not finite, negative, min > max, or max above 10 s.
    Range {
        min_ms: f64,
        max_ms: f64,
    },
    Quantile(f64),
    Margin(f64),
    Forget(f64),
    Fall(f64),
}

impl fmt::Display for DelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelayError::Range { min_ms, max_ms } => write!(
                f,
                "latency range {min_ms}..{max_ms} ms is not usable: --min-latency-ms must be >= 0 and <= --max-latency-ms, and --max-latency-ms at most 10000"
            ),
            DelayError::Quantile(q) => {
                write!(f, "delay quantile {q} must be between 0.5 and 0.9999")
            }
            DelayError::Margin(m) => write!(f, "delay margin {m} ms must be from 0 to 1000"),
            DelayError::Forget(s) => {
                write!(f, "delay forgetting time {s} s must be from 0.1 to 600")
            }
            DelayError::Fall(r) => write!(f, "delay fall rate {r} ms/s must be above 0"),
        }
    }
}

impl std::error::Error for DelayError {}

/// Adaptive target playout delay from packet arrival jitter.
#[derive(Debug, Clone)]
pub struct DelayEstimator {
    cfg: DelayConfig,
    /// Weighted counts of relative delays, bin i = [i, i+1) ms; the last
    /// bin takes everything beyond.
    hist: Vec<f64>,
    total: f64,
    /// Arrival time the weights are relative to.
    weight_origin_ns: u64,
    /// The first packet: transit delays are taken relative to it so that
    /// large timestamps lose no precision.
    origin: Option<(u64, u64)>,
    block_min: [f64; BLOCKS],
    /// Index of the current block since the origin.
    block: u64,
    peak_max: [f64; PEAK_BLOCKS],
    peak_block: u64,
    last_ns: u64,
    target_ms: f64,
    /// The last quantile + margin, before clamping and the fall limit.
    estimate_ms: f64,
}

impl DelayEstimator {
    pub fn new(cfg: &DelayConfig) -> Result<DelayEstimator, DelayError> {
        let ok_range = cfg.min_ms.is_finite()
            && cfg.max_ms.is_finite()
            && cfg.min_ms >= 0.0
            && cfg.min_ms <= cfg.max_ms
            && cfg.max_ms <= 10_000.0;
        if !ok_range {
            return Err(DelayError::Range {
                min_ms: cfg.min_ms,
                max_ms: cfg.max_ms,
            });
        }
        if !(0.5..=0.9999).contains(&cfg.quantile) {
            return Err(DelayError::Quantile(cfg.quantile));
        }
        if !(0.0..=1000.0).contains(&cfg.margin_ms) {
            return Err(DelayError::Margin(cfg.margin_ms));
        }
        if !(0.1..=600.0).contains(&cfg.forget_s) {
            return Err(DelayError::Forget(cfg.forget_s));
        }
        if !(cfg.fall_ms_per_s > 0.0 && cfg.fall_ms_per_s.is_finite()) {
            return Err(DelayError::Fall(cfg.fall_ms_per_s));
        }
        let bins = (cfg.max_ms / BIN_MS).ceil() as usize + 1;
        let mut e = DelayEstimator {
            cfg: cfg.clone(),
            hist: vec![0.0; bins],
            total: 0.0,
            weight_origin_ns: 0,
            origin: None,
            block_min: [f64::INFINITY; BLOCKS],
            block: 0,
            peak_max: [0.0; PEAK_BLOCKS],
            peak_block: 0,
            last_ns: 0,
            target_ms: cfg.min_ms,
            estimate_ms: 0.0,
        };
        e.reset();
        Ok(e)
    }

    /// Forgets everything (new sender, new stream): the target goes back to
    /// the minimum until packets show jitter.
    pub fn reset(&mut self) {
        self.hist.fill(0.0);
        self.total = 0.0;
        self.origin = None;
        self.block_min = [f64::INFINITY; BLOCKS];
        self.block = 0;
        self.peak_max = [0.0; PEAK_BLOCKS];
        self.peak_block = 0;
        self.target_ms = self.cfg.initial_ms.clamp(self.cfg.min_ms, self.cfg.max_ms);
        self.estimate_ms = 0.0;
    }

    /// The target playout delay now, in ms.
    pub fn target_ms(&self) -> f64 {
        self.target_ms
    }

    /// The jitter estimate (quantile + margin) before clamping and the
    /// fall limit; for the statistics line.
    pub fn estimate_ms(&self) -> f64 {
        self.estimate_ms
    }

    /// One received packet. `rtp_timestamp` is extended (no wrap); `rate`
    /// is the RTP clock rate.
    pub fn on_packet(&mut self, arrival_ns: u64, rtp_timestamp: u64, rate: u32) {
        if rate == 0 {
            return;
        }
        let Some((a0, t0)) = self.origin else {
            self.start(arrival_ns, rtp_timestamp);
            return;
        };
        // A clock that went backwards (it cannot, monotonic) or a packet
        // stamped before the origin: start over rather than guess.
        if arrival_ns < a0 || arrival_ns < self.last_ns {
            self.start(arrival_ns, rtp_timestamp);
            return;
        }
        let media_ms = (rtp_timestamp as i128 - t0 as i128) as f64 * 1000.0 / rate as f64;
        let transit_ms = (arrival_ns - a0) as f64 / 1e6 - media_ms;

        self.advance_blocks(arrival_ns - a0);
        let slot = (self.block % BLOCKS as u64) as usize;
        if transit_ms < self.block_min[slot] {
            self.block_min[slot] = transit_ms;
        }
        let fastest = self.block_min.iter().fold(f64::INFINITY, |m, &v| m.min(v));
        let relative_ms = transit_ms - fastest;
        if relative_ms > self.resync_ms() {
            // Timestamps no longer describe the same stream.
            self.start(arrival_ns, rtp_timestamp);
            return;
        }
        self.note_peak(arrival_ns - a0, relative_ms);
        self.add(arrival_ns, relative_ms);
        self.update_target(arrival_ns);
        self.last_ns = arrival_ns;
    }

    fn resync_ms(&self) -> f64 {
        (4.0 * self.cfg.max_ms).max(2000.0)
    }

    fn start(&mut self, arrival_ns: u64, rtp_timestamp: u64) {
        self.origin = Some((arrival_ns, rtp_timestamp));
        self.block_min = [f64::INFINITY; BLOCKS];
        self.block_min[0] = 0.0;
        self.block = 0;
        self.peak_max = [0.0; PEAK_BLOCKS];
        self.peak_block = 0;
        self.last_ns = arrival_ns;
        if self.total == 0.0 {
            self.weight_origin_ns = arrival_ns;
        }
    }

    fn advance_blocks(&mut self, since_origin_ns: u64) {
        let block = since_origin_ns / BLOCK_NS;
        if block <= self.block {
            return;
        }
        let skipped = (block - self.block).min(BLOCKS as u64);
        for k in 1..=skipped {
            let slot = ((self.block + k) % BLOCKS as u64) as usize;
            self.block_min[slot] = f64::INFINITY;
        }
        self.block = block;
    }

    fn note_peak(&mut self, since_origin_ns: u64, relative_ms: f64) {
        let block = since_origin_ns / PEAK_BLOCK_NS;
        if block > self.peak_block {
            let skipped = (block - self.peak_block).min(PEAK_BLOCKS as u64);
            for k in 1..=skipped {
                let slot = ((self.peak_block + k) % PEAK_BLOCKS as u64) as usize;
                self.peak_max[slot] = 0.0;
            }
            self.peak_block = block;
        }
        let slot = (self.peak_block % PEAK_BLOCKS as u64) as usize;
        if relative_ms > self.peak_max[slot] {
            self.peak_max[slot] = relative_ms;
        }
    }

    /// The second largest block peak: a peak that recurred.
    fn recurring_peak_ms(&self) -> f64 {
        let (mut first, mut second) = (0.0f64, 0.0f64);
        for &p in &self.peak_max {
            if p > first {
                second = first;
                first = p;
            } else if p > second {
                second = p;
            }
        }
        second
    }

    fn add(&mut self, arrival_ns: u64, relative_ms: f64) {
        let age_s = arrival_ns.saturating_sub(self.weight_origin_ns) as f64 / 1e9;
        let mut w = libm::exp(age_s / self.cfg.forget_s);
        if w > RESCALE_AT {
            for b in self.hist.iter_mut() {
                *b /= w;
            }
            self.total /= w;
            self.weight_origin_ns = arrival_ns;
            w = 1.0;
        }
        let last = self.hist.len() - 1;
        let bin = ((relative_ms.max(0.0) / BIN_MS) as usize).min(last);
        self.hist[bin] += w;
        self.total += w;
    }

    fn quantile_ms(&self) -> f64 {
        let want = self.cfg.quantile * self.total;
        let mut sum = 0.0;
        for (i, &b) in self.hist.iter().enumerate() {
            sum += b;
            if sum >= want {
                // Upper edge of the bin: the conservative side.
                return (i + 1) as f64 * BIN_MS;
            }
        }
        self.hist.len() as f64 * BIN_MS
    }

    fn update_target(&mut self, arrival_ns: u64) {
        let dt_s = arrival_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.estimate_ms = self.quantile_ms().max(self.recurring_peak_ms()) + self.cfg.margin_ms;
        let wanted = self.estimate_ms.clamp(self.cfg.min_ms, self.cfg.max_ms);
        if wanted >= self.target_ms {
            self.target_ms = wanted;
        } else {
            let fallen = self.target_ms - self.cfg.fall_ms_per_s * dt_s;
            self.target_ms = fallen.max(wanted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::Lcg;

    const RATE: u32 = 8000;
    const PTIME_NS: u64 = 20_000_000;
    const SAMPLES: u64 = 160;

    fn cfg() -> DelayConfig {
        DelayConfig {
            min_ms: 10.0,
            max_ms: 400.0,
            ..DelayConfig::default()
        }
    }

    /// Feeds `seconds` of 20 ms packets; `extra_ms(i, rng)` is the network
    /// delay of packet i above the 3 ms base; the sender's clock runs at
    /// (1 + ppm·1e-6). Returns the fraction of packets (after the first
    /// `settle` seconds) that arrived later than the target at the time.
    fn run(
        e: &mut DelayEstimator,
        seconds: u64,
        ppm: f64,
        seed: u64,
        settle: u64,
        mut extra_ms: impl FnMut(u64, &mut Lcg) -> f64,
    ) -> f64 {
        let mut rng = Lcg(seed);
        let ts0 = 0xfff0_0000u64;
        let n = seconds * 1_000_000_000 / PTIME_NS;
        let mut arrivals: Vec<(u64, u64, f64)> = (0..n)
            .map(|i| {
                let send_ns = (i * PTIME_NS) as f64 / (1.0 + ppm * 1e-6);
                let extra = extra_ms(i, &mut rng);
                let arrival = 1_000_000_000.0 + send_ns + (3.0 + extra) * 1e6;
                (arrival as u64, ts0 + i * SAMPLES, extra)
            })
            .collect();
        arrivals.sort_by_key(|a| a.0);
        let mut late = 0usize;
        let mut counted = 0usize;
        for (arrival, ts, extra) in arrivals {
            if arrival > 1_000_000_000 + settle * 1_000_000_000 {
                counted += 1;
                if extra > e.target_ms() {
                    late += 1;
                }
            }
            e.on_packet(arrival, ts, RATE);
        }
        late as f64 / counted.max(1) as f64
    }

    #[test]
    fn clean_link_stays_at_min() {
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        let late = run(&mut e, 60, 0.0, 1, 5, |_, r| r.uniform() * 0.3);
        assert_eq!(e.target_ms(), 10.0);
        assert!(e.estimate_ms() <= 7.0, "estimate {}", e.estimate_ms());
        assert_eq!(late, 0.0);
    }

    #[test]
    fn uniform_jitter_40ms() {
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        let late = run(&mut e, 60, 0.0, 2, 5, |_, r| r.uniform() * 40.0);
        let t = e.target_ms();
        eprintln!(
            "uniform 0-40 ms: target {t:.1} ms, late {:.2} %",
            late * 100.0
        );
        assert!((40.0..=48.0).contains(&t), "target {t}");
        assert!(late < 0.005, "late fraction {late}");
    }

    #[test]
    fn jitter_onset_raises_target_fast() {
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        run(&mut e, 20, 0.0, 3, 0, |_, r| r.uniform() * 0.3);
        assert_eq!(e.target_ms(), 10.0);
        // Continue the same stream 1 s later with jitter: the timestamps
        // keep counting, the arrivals too.
        let mut rng = Lcg(4);
        let base_ns = 1_000_000_000u64;
        let start = 20 * 50;
        for i in start..start + 100 {
            let arrival = base_ns + i * PTIME_NS + ((3.0 + rng.uniform() * 60.0) * 1e6) as u64;
            e.on_packet(arrival, 0xfff0_0000 + i * SAMPLES, RATE);
        }
        assert!(
            e.target_ms() >= 50.0,
            "after 1 s of 60 ms jitter: {}",
            e.target_ms()
        );
    }

    #[test]
    fn single_spike_decays() {
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        // A 200 ms stall at t = 20 s: the queued packets arrive together
        // when it clears. Then a clean link again.
        let stall = |i: u64, r: &mut Lcg| {
            let t_ms = (i * 20) as f64;
            let jitter = r.uniform() * 2.0;
            if (20_000.0..20_200.0).contains(&t_ms) {
                20_200.0 - t_ms + jitter
            } else {
                jitter
            }
        };
        let mut just_after = e.clone();
        run(&mut just_after, 21, 0.0, 5, 0, stall);
        let peak = just_after.target_ms();
        run(&mut e, 120, 0.0, 5, 0, stall);
        assert!(peak > 20.0, "the stall must raise the target, got {peak}");
        assert_eq!(
            e.target_ms(),
            10.0,
            "100 s later the target must be back at min"
        );
    }

    #[test]
    fn wifi_bursts_covered() {
        // Wi-Fi: small jitter, and every ~3 s a power-save or
        // retransmission stall of 60–120 ms after which queued packets
        // arrive back to back.
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        let mut stall_end = 0.0f64;
        let mut next_stall = 3000.0f64;
        let late = run(&mut e, 120, 0.0, 6, 10, |i, r| {
            let t_ms = (i * 20) as f64;
            if t_ms >= next_stall {
                stall_end = t_ms + 60.0 + r.uniform() * 60.0;
                next_stall = t_ms + 2000.0 + r.uniform() * 2000.0;
            }
            let jitter = r.uniform() * 4.0;
            if t_ms < stall_end {
                stall_end - t_ms + jitter
            } else {
                jitter
            }
        });
        let t = e.target_ms();
        eprintln!("wifi: target {t:.1} ms, late {:.2} %", late * 100.0);
        assert!(late < 0.005, "late fraction {late}");
        assert!((60.0..=135.0).contains(&t), "target {t}");
    }

    #[test]
    fn sender_drift_does_not_inflate() {
        for ppm in [1000.0, -1000.0] {
            let mut e = DelayEstimator::new(&cfg()).unwrap();
            run(&mut e, 600, ppm, 7, 0, |_, r| r.uniform() * 20.0);
            let mut reference = DelayEstimator::new(&cfg()).unwrap();
            run(&mut reference, 600, 0.0, 7, 0, |_, r| r.uniform() * 20.0);
            let d = e.target_ms() - reference.target_ms();
            assert!(d.abs() <= 3.0, "{ppm} ppm moved the target by {d} ms");
        }
    }

    #[test]
    fn clamped_to_max() {
        let mut e = DelayEstimator::new(&DelayConfig {
            min_ms: 10.0,
            max_ms: 30.0,
            ..DelayConfig::default()
        })
        .unwrap();
        run(&mut e, 30, 0.0, 8, 0, |_, r| r.uniform() * 100.0);
        assert_eq!(e.target_ms(), 30.0);
    }

    #[test]
    fn sender_restart_resyncs() {
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        run(&mut e, 10, 0.0, 9, 0, |_, r| r.uniform() * 0.5);
        // New timestamps far behind (new random base), no reset call.
        let base = 1_000_000_000u64 + 10_000_000_000;
        for i in 0..500u64 {
            e.on_packet(base + i * PTIME_NS, 1000 + i * SAMPLES, RATE);
        }
        assert_eq!(e.target_ms(), 10.0);
    }

    #[test]
    fn reset_returns_to_initial() {
        let mut e = DelayEstimator::new(&cfg()).unwrap();
        run(&mut e, 20, 0.0, 10, 0, |_, r| r.uniform() * 80.0);
        assert!(e.target_ms() > 50.0);
        e.reset();
        assert_eq!(e.target_ms(), cfg().initial_ms.clamp(10.0, 500.0));
    }

    #[test]
    fn new_stream_starts_cautious_and_comes_down_on_a_clean_link() {
        let mut e = DelayEstimator::new(&DelayConfig {
            initial_ms: 40.0,
            ..cfg()
        })
        .unwrap();
        assert_eq!(e.target_ms(), 40.0);
        run(&mut e, 2, 0.0, 11, 0, |_, _| 0.0);
        assert!(
            e.target_ms() < 40.0 && e.target_ms() > 20.0,
            "{}",
            e.target_ms()
        );
        run(&mut e, 10, 0.0, 12, 0, |_, _| 0.0);
        assert_eq!(e.target_ms(), 10.0);
    }

    #[test]
    fn bad_config_refused() {
        let bad = |c: DelayConfig| DelayEstimator::new(&c).is_err();
        let d = DelayConfig::default;
        assert!(bad(DelayConfig {
            min_ms: 50.0,
            max_ms: 20.0,
            ..d()
        }));
        assert!(bad(DelayConfig {
            min_ms: f64::NAN,
            ..d()
        }));
        assert!(bad(DelayConfig {
            quantile: 1.0,
            ..d()
        }));
        assert!(bad(DelayConfig {
            margin_ms: -1.0,
            ..d()
        }));
        assert!(bad(DelayConfig {
            forget_s: 0.0,
            ..d()
        }));
        assert!(bad(DelayConfig {
            fall_ms_per_s: 0.0,
            ..d()
        }));
        assert!(!bad(d()));
    }
}
