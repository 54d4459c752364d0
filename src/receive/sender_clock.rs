//! The sender's clock from its RTCP sender reports (RFC 3550 §6.4.1): per
//! SSRC, the mapping between RTP timestamps and the sender's wall clock,
//! and the rate of its media clock against that wall clock.
//!
//! Input: each sender report's SSRC, NTP timestamp and RTP timestamp (the
//! same instant on the sender's two clocks); a BYE forgets the source.
//! Output: per source the reports counted and, from two reports a second
//! or more apart, a [`Fit`]: the media clock's rate in frames per second
//! of the sender's wall clock (`ppm` against the nominal rate) and the
//! wall-clock time of any RTP timestamp near the reports. Sync playout
//! (`receive::sync`) stands on it; the statistics line shows it.
//!
//! Policy: a least-squares line through the last [`REPORTS`] reports
//! (about 16 s at netspeaker-send's 1 s, 40 s at the usual 2.5 s), RTP
//! timestamps unwrapped across 2^32.
//! A sender's reports pair its clocks with a jitter of the order of
//! 0.1 ms (the time between reading one and the other), which a line over
//! tens of seconds averages to a few ppm. A report more than
//! [`STEP_MS`] off the line drawn through the earlier ones (the sender's
//! wall clock was stepped, or its media clock restarted under the same
//! SSRC) starts the history over from it, counted in `restarts`; a report
//! older than the last (reordered on the way) is ignored. [`SOURCES`]
//! senders are followed at once; a new one takes the place of the one
//! heard from longest ago. Fixed arrays, f64 arithmetic: nothing
//! allocates, and the net thread runs it per report.

use crate::rtp::rtcp::{unix_ns_from_ntp, SenderReport};

/// Reports the line is fitted through.
pub const REPORTS: usize = 16;

/// Senders followed at once.
pub const SOURCES: usize = 4;

/// A report this far off the line through the earlier ones restarts the
/// history.
pub const STEP_MS: f64 = 20.0;

/// The shortest span of reports a fit is given for: shorter spans say
/// little about the rate.
const MIN_SPAN_NS: u64 = 1_000_000_000;

/// A line through a sender's reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Media clock frames per second of the sender's wall clock.
    pub rate_hz: f64,
    /// A point on the line: the mean of the reports.
    wall_ns: u64,
    rtp: i64,
    /// The last report's RTP timestamp, unwrapped, to unwrap others near it.
    last_rtp: i64,
    /// Reports the fit is through.
    pub reports: usize,
}

impl Fit {
    /// The media clock's deviation from `nominal` Hz, in ppm (+: faster).
    pub fn ppm(&self, nominal: u32) -> f64 {
        (self.rate_hz / f64::from(nominal.max(1)) - 1.0) * 1e6
    }

    /// The sender's wall-clock time (Unix ns) of RTP timestamp `rtp`,
    /// taken within 2^31 frames of the last report.
    pub fn wall_ns_of(&self, rtp: u32) -> u64 {
        let unwrapped = self.last_rtp + i64::from(rtp.wrapping_sub(self.last_rtp as u32) as i32);
        let seconds = (unwrapped - self.rtp) as f64 / self.rate_hz;
        (self.wall_ns as f64 + seconds * 1e9).max(0.0) as u64
    }
}

/// One sender's reports.
#[derive(Clone, Copy, Debug)]
pub struct SenderClock {
    pub ssrc: u32,
    /// Reports taken (all of them, not only those in the window).
    pub reports: u64,
    /// Times the history started over (see `STEP_MS`).
    pub restarts: u64,
    /// (wall clock Unix ns, unwrapped RTP timestamp), oldest first from
    /// `next` when full.
    points: [(u64, i64); REPORTS],
    len: usize,
    next: usize,
    last: (u64, i64),
    fit: Option<Fit>,
    /// When it was last heard from (the set's report count).
    used: u64,
}

impl SenderClock {
    fn new(ssrc: u32) -> SenderClock {
        SenderClock {
            ssrc,
            reports: 0,
            restarts: 0,
            points: [(0, 0); REPORTS],
            len: 0,
            next: 0,
            last: (0, 0),
            fit: None,
            used: 0,
        }
    }

    /// The line through the reports so far, once they span a second.
    pub fn fit(&self) -> Option<Fit> {
        self.fit
    }

    /// A point of the mapping from RTP timestamps to the sender's wall
    /// clock, for sync playout: (wall-clock Unix ns, RTP timestamp, rate
    /// in Hz): the fitted line's centre and rate once the reports span a
    /// second, else the last report with no rate (the nominal one stands
    /// in); `None` before any report.
    pub fn anchor(&self) -> Option<(u64, u32, Option<f64>)> {
        if let Some(fit) = self.fit {
            return Some((fit.wall_ns, fit.rtp as u32, Some(fit.rate_hz)));
        }
        (self.len > 0).then_some((self.last.0, self.last.1 as u32, None))
    }

    fn restart(&mut self, point: (u64, i64)) {
        self.len = 0;
        self.next = 0;
        self.fit = None;
        self.push(point);
    }

    fn push(&mut self, point: (u64, i64)) {
        if let Some(p) = self.points.get_mut(self.next) {
            *p = point;
        }
        self.next = (self.next + 1) % REPORTS;
        self.len = (self.len + 1).min(REPORTS);
        self.last = point;
    }

    /// Takes one report: `wall_ns` on the sender's wall clock (Unix ns)
    /// and `rtp` on its media clock at the same instant.
    pub fn add(&mut self, wall_ns: u64, rtp: u32) {
        self.reports += 1;
        if self.len == 0 {
            self.push((wall_ns, i64::from(rtp)));
            return;
        }
        let (last_wall, last_rtp) = self.last;
        let unwrapped = last_rtp + i64::from(rtp.wrapping_sub(last_rtp as u32) as i32);
        if wall_ns <= last_wall && unwrapped <= last_rtp {
            // Reordered or repeated: the newer report already counted.
            return;
        }
        let point = (wall_ns, unwrapped);
        let off_line = match self.fit {
            Some(fit) => {
                let predicted = fit.wall_ns_of(rtp) as f64;
                (wall_ns as f64 - predicted).abs() > STEP_MS * 1e6
            }
            // Two points only: without a rate the step test needs a
            // guess; a wall clock that went back, or RTP that did, is one.
            None => wall_ns <= last_wall || unwrapped <= last_rtp,
        };
        if off_line {
            self.restarts += 1;
            self.restart(point);
            return;
        }
        self.push(point);
        self.fit = self.line();
    }

    /// Least squares of RTP on wall time, centred so f64 keeps its
    /// precision (Unix ns do not fit an f64's 53 bits exactly).
    fn line(&self) -> Option<Fit> {
        let points = self.points.get(..self.len)?;
        let (first_wall, _) = points.iter().min_by_key(|p| p.0)?;
        let (last_wall, _) = points.iter().max_by_key(|p| p.0)?;
        if last_wall - first_wall < MIN_SPAN_NS {
            return None;
        }
        let n = points.len() as f64;
        let (w0, r0) = points[0];
        let mean_x = points
            .iter()
            .map(|p| (p.0 as i128 - w0 as i128) as f64)
            .sum::<f64>()
            / n;
        let mean_y = points.iter().map(|p| (p.1 - r0) as f64).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for p in points {
            let x = (p.0 as i128 - w0 as i128) as f64 - mean_x;
            let y = (p.1 - r0) as f64 - mean_y;
            sxy += x * y;
            sxx += x * x;
        }
        if sxx <= 0.0 {
            return None;
        }
        let slope = sxy / sxx; // frames per ns
        Some(Fit {
            rate_hz: slope * 1e9,
            wall_ns: (w0 as f64 + mean_x).max(0.0) as u64,
            rtp: r0 + mean_y.round() as i64,
            last_rtp: self.last.1,
            reports: self.len,
        })
        .map(|mut f| {
            // `rtp` was rounded to a whole frame: move the wall anchor by
            // the rounding so the line stays where it was fitted.
            let frac = mean_y - mean_y.round();
            f.wall_ns = (f.wall_ns as f64 - frac / slope).max(0.0) as u64;
            f
        })
    }
}

/// The senders followed, by SSRC.
#[derive(Clone, Debug)]
pub struct SenderClocks {
    sources: [Option<SenderClock>; SOURCES],
    /// Every sender report taken.
    pub reports: u64,
}

impl Default for SenderClocks {
    fn default() -> Self {
        SenderClocks {
            sources: [None; SOURCES],
            reports: 0,
        }
    }
}

impl SenderClocks {
    /// Takes a sender report.
    pub fn on_report(&mut self, sr: &SenderReport) {
        self.reports += 1;
        let stamp = self.reports;
        let at = match self.position(sr.ssrc) {
            Some(i) => i,
            None => {
                // A free place, or the one heard from longest ago.
                let i = self
                    .sources
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.map_or(0, |s| s.used))
                    .map_or(0, |(i, _)| i);
                if let Some(slot) = self.sources.get_mut(i) {
                    *slot = Some(SenderClock::new(sr.ssrc));
                }
                i
            }
        };
        if let Some(Some(clock)) = self.sources.get_mut(at) {
            clock.used = stamp;
            clock.add(unix_ns_from_ntp(sr.info.ntp), sr.info.rtp_timestamp);
        }
    }

    /// A BYE: the source has left; its reports no longer hold.
    pub fn on_bye(&mut self, ssrc: u32) {
        if let Some(i) = self.position(ssrc) {
            if let Some(slot) = self.sources.get_mut(i) {
                *slot = None;
            }
        }
    }

    pub fn get(&self, ssrc: u32) -> Option<&SenderClock> {
        self.sources.iter().flatten().find(|s| s.ssrc == ssrc)
    }

    /// The source reported most recently.
    pub fn latest(&self) -> Option<&SenderClock> {
        self.sources.iter().flatten().max_by_key(|s| s.used)
    }

    fn position(&self, ssrc: u32) -> Option<usize> {
        self.sources
            .iter()
            .position(|s| s.is_some_and(|s| s.ssrc == ssrc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::rtcp::{ntp_from_unix_ns, SenderInfo};

    /// xorshift in [0, 1).
    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sr(ssrc: u32, wall_ns: u64, rtp: u32) -> SenderReport {
        SenderReport {
            ssrc,
            info: SenderInfo {
                ntp: ntp_from_unix_ns(wall_ns),
                rtp_timestamp: rtp,
                packets: 0,
                octets: 0,
            },
        }
    }

    /// A simulated sender: media clock at `rate` · (1 + ppm), reports at
    /// 1.25-3.75 s intervals whose clock pairing is off by up to
    /// ±`pair_jitter_ns`; RTP starts just below the 2^32 wrap.
    struct Sim {
        rate: f64,
        ppm: f64,
        t0: u64,
        rtp0: u32,
        rng: u64,
        pair_jitter_ns: f64,
        t: u64,
    }

    impl Sim {
        fn rtp_at(&self, wall_ns: u64) -> u32 {
            let s = (wall_ns - self.t0) as f64 / 1e9;
            let frames = (s * self.rate * (1.0 + self.ppm * 1e-6)).floor() as u64;
            self.rtp0.wrapping_add(frames as u32)
        }

        fn next(&mut self) -> (u64, u32) {
            self.t += (1.25e9 + 2.5e9 * uniform(&mut self.rng)) as u64;
            let jitter = (uniform(&mut self.rng) * 2.0 - 1.0) * self.pair_jitter_ns;
            let rtp = self.rtp_at((self.t as f64 + jitter) as u64);
            (self.t, rtp)
        }
    }

    fn sim(ppm: f64, pair_jitter_ns: f64, seed: u64) -> Sim {
        let t0 = 1_764_585_600_000_000_000;
        Sim {
            rate: 48_000.0,
            ppm,
            t0,
            rtp0: u32::MAX - 100_000,
            rng: seed,
            pair_jitter_ns,
            t: t0,
        }
    }

    #[test]
    fn exact_reports_give_the_rate_and_the_mapping() {
        for ppm in [-1000.0, -37.5, 0.0, 250.0, 1000.0] {
            let mut s = sim(ppm, 0.0, 7);
            let mut clocks = SenderClocks::default();
            for _ in 0..30 {
                let (t, rtp) = s.next();
                clocks.on_report(&sr(9, t, rtp));
            }
            let c = clocks.get(9).unwrap();
            assert_eq!((c.reports, c.restarts), (30, 0));
            let fit = c.fit().unwrap();
            assert_eq!(fit.reports, REPORTS);
            // RTP timestamps are whole frames: 1/48000 s over the
            // window's ~40 s is 0.5 ppm of quantisation.
            assert!(
                (fit.ppm(48_000) - ppm).abs() < 0.6,
                "{ppm}: {}",
                fit.ppm(48_000)
            );
            // Any timestamp of the last minute maps to its wall time.
            for back_s in [0u64, 10, 40, 60] {
                let wall = s.t - back_s * 1_000_000_000;
                let got = fit.wall_ns_of(s.rtp_at(wall));
                assert!(
                    got.abs_diff(wall) < 30_000,
                    "{ppm} ppm, {back_s} s back: {}",
                    got.abs_diff(wall)
                );
            }
        }
    }

    #[test]
    fn jittered_reports_fit_within_a_few_ppm_and_0_1_ms() {
        for seed in 1..20u64 {
            let ppm = (seed as f64 - 10.0) * 20.0;
            // Pairing off by up to ±0.1 ms, as a sender reading its two
            // clocks at slightly different moments.
            let mut s = sim(ppm, 100_000.0, seed * 7919);
            let mut clocks = SenderClocks::default();
            for _ in 0..REPORTS {
                let (t, rtp) = s.next();
                clocks.on_report(&sr(1, t, rtp));
            }
            let fit = clocks.get(1).unwrap().fit().unwrap();
            assert!(
                (fit.ppm(48_000) - ppm).abs() < 4.0,
                "seed {seed}: {} against {ppm}",
                fit.ppm(48_000)
            );
            let got = fit.wall_ns_of(s.rtp_at(s.t));
            assert!(
                got.abs_diff(s.t) < 100_000,
                "seed {seed}: {} ns off",
                got.abs_diff(s.t)
            );
        }
    }

    #[test]
    fn no_fit_before_a_second_of_reports() {
        let mut c = SenderClock::new(1);
        c.add(10_000_000_000, 0);
        assert!(c.fit().is_none());
        c.add(10_500_000_000, 24_000);
        assert!(c.fit().is_none());
        c.add(11_000_000_000, 48_000);
        let fit = c.fit().unwrap();
        assert!(fit.ppm(48_000).abs() < 1e-6);
    }

    #[test]
    fn stepped_wall_clock_restarts_the_history() {
        let mut s = sim(10.0, 0.0, 3);
        let mut clocks = SenderClocks::default();
        for _ in 0..10 {
            let (t, rtp) = s.next();
            clocks.on_report(&sr(4, t, rtp));
        }
        // The sender's NTP steps its clock 0.5 s back.
        let (t, rtp) = s.next();
        clocks.on_report(&sr(4, t - 500_000_000, rtp));
        let c = clocks.get(4).unwrap();
        assert_eq!(c.restarts, 1);
        assert!(c.fit().is_none(), "one report after the step");
        for _ in 0..3 {
            let (t, rtp) = s.next();
            clocks.on_report(&sr(4, t - 500_000_000, rtp));
        }
        let fit = clocks.get(4).unwrap().fit().unwrap();
        // Four reports over ~7 s: a frame of quantisation is ~3 ppm.
        assert!((fit.ppm(48_000) - 10.0).abs() < 3.0, "{}", fit.ppm(48_000));
        assert_eq!(fit.reports, 4);
        // A report from before the last (reordered) is ignored.
        let before = *clocks.get(4).unwrap();
        clocks.on_report(&sr(4, t, rtp));
        assert_eq!(clocks.get(4).unwrap().restarts, before.restarts);
        assert_eq!(clocks.get(4).unwrap().fit(), before.fit());
    }

    #[test]
    fn sources_are_kept_apart_and_bye_forgets_one() {
        let mut a = sim(100.0, 0.0, 11);
        let mut b = sim(-100.0, 0.0, 12);
        let mut clocks = SenderClocks::default();
        for _ in 0..8 {
            let (t, rtp) = a.next();
            clocks.on_report(&sr(0xa, t, rtp));
            let (t, rtp) = b.next();
            clocks.on_report(&sr(0xb, t, rtp));
        }
        assert!((clocks.get(0xa).unwrap().fit().unwrap().ppm(48_000) - 100.0).abs() < 1.2);
        assert!((clocks.get(0xb).unwrap().fit().unwrap().ppm(48_000) + 100.0).abs() < 1.2);
        assert_eq!(clocks.latest().unwrap().ssrc, 0xb);
        clocks.on_bye(0xb);
        assert!(clocks.get(0xb).is_none());
        assert_eq!(clocks.reports, 16);
        // More senders than places: the one heard from longest ago goes.
        for ssrc in 1..=SOURCES as u32 {
            clocks.on_report(&sr(ssrc, 1_000_000_000, 0));
        }
        assert!(clocks.get(0xa).is_none());
        assert!((1..=SOURCES as u32).all(|s| clocks.get(s).is_some()));
    }
}
