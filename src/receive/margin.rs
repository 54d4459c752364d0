//! Arrival margin of sync playout (`--sync-ms`, issue 13): how much later
//! each packet could have arrived and still been played on time, so that
//! an installer can choose MS from what the network leaves.
//!
//! Input: one margin per packet, ns (its first frame's read deadline less
//! its arrival; `receive::sync` works it out), with its arrival time.
//! Output: the margin that 99 % of the recent packets had at least (the
//! 1st percentile of margin: the 99th of lateness), once
//! [`MIN_PACKETS`] are in the window; negative when more than 1 % came
//! after their play time.
//!
//! Kept in a histogram of [`BIN_NS`] bins from [`LOW_NS`] up to a little
//! above the sync delay (a margin cannot exceed the sync delay but by the
//! clocks' disagreement), with an underflow and an overflow bin. The
//! window slides in two halves of [`HALF_NS`]: a packet goes into the
//! current half; when it is over the older half is cleared and becomes
//! the current one, so the figure covers the last 5-10 s and a change of
//! path shows within 10 s. Late, lost, duplicate and reordered packets
//! need nothing special: every arrival is one sample (a lost packet has
//! none). Bins are allocated in `new`; `record` and the percentile do not
//! allocate.

/// Histogram bin width, ns: the figure is given to this (it is rounded
/// down, so it errs on the safe side).
pub const BIN_NS: i64 = 500_000;
/// The lowest margin with a bin of its own: more than this late is
/// counted in the underflow bin, ns.
pub const LOW_NS: i64 = -500_000_000;
/// Above the sync delay, the range goes on this much (clocks of sender
/// and receiver out of step make a margin larger than the delay), ns.
pub const ABOVE_SYNC_NS: i64 = 500_000_000;
/// Each half of the sliding window, ns.
pub const HALF_NS: u64 = 5_000_000_000;
/// Nothing is reported before the window holds this many packets: with
/// fewer, the 1st percentile is the minimum of a handful.
pub const MIN_PACKETS: u32 = 50;
/// The share of packets allowed below the reported margin, per mille.
const BELOW_PER_MILLE: u32 = 10;
/// The percentile is recomputed after this many packets (and at each
/// turn of the window), not at each: the walk is over thousands of bins.
const RECOMPUTE_EVERY: u32 = 16;
/// Bins per block of the coarse histogram the percentile's walk takes
/// first, then the bins of the one block it ends in: a walk up to a
/// 150 ms margin passed 1300 bins, most of sync's cost per packet.
const BLOCK_BINS: usize = 64;

#[derive(Clone, Debug)]
pub struct ArrivalMargin {
    /// Bins of both halves: `[0, bins)` the first, `[bins, 2 bins)` the
    /// second. Bin 0 of a half is the underflow, the last its overflow.
    counts: Vec<u32>,
    bins: usize,
    /// The counts summed per [`BLOCK_BINS`], laid out like `counts`:
    /// `blocks` per half.
    block_counts: Vec<u32>,
    blocks: usize,
    /// Packets in each half.
    totals: [u32; 2],
    /// The half being filled, and when it started (arrival clock, ns).
    current: usize,
    started_ns: Option<u64>,
    since_recompute: u32,
    low_margin_ns: Option<i64>,
}

impl ArrivalMargin {
    /// A tracker for a sync delay of `sync_ms` (up to 5000 at 0.5 ms bins:
    /// 12 002 bins a half, 94 KiB in all).
    pub fn new(sync_ms: u32) -> ArrivalMargin {
        let high_ns = i64::from(sync_ms) * 1_000_000 + ABOVE_SYNC_NS;
        // Bins [LOW_NS, high_ns), and the underflow and overflow.
        let bins = ((high_ns - LOW_NS) / BIN_NS) as usize + 2;
        let blocks = bins.div_ceil(BLOCK_BINS);
        ArrivalMargin {
            counts: vec![0; 2 * bins],
            bins,
            block_counts: vec![0; 2 * blocks],
            blocks,
            totals: [0; 2],
            current: 0,
            started_ns: None,
            since_recompute: 0,
            low_margin_ns: None,
        }
    }

    /// Forgets every packet (a new stream, sync standing down).
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.block_counts.fill(0);
        self.totals = [0; 2];
        self.started_ns = None;
        self.since_recompute = 0;
        self.low_margin_ns = None;
    }

    /// One packet's margin, `margin_ns` (+: it came that much before its
    /// deadline), arrived at `at_ns`.
    pub fn record(&mut self, margin_ns: f64, at_ns: u64) {
        self.turn(at_ns);
        let bin = if margin_ns.is_nan() {
            return;
        } else if margin_ns < LOW_NS as f64 {
            0
        } else {
            // Bin 1 starts at LOW_NS; the cast saturates a huge margin,
            // which the min puts in the overflow.
            ((((margin_ns - LOW_NS as f64) / BIN_NS as f64).floor() as usize).saturating_add(1))
                .min(self.bins - 1)
        };
        let at = self.current * self.bins + bin;
        if let Some(c) = self.counts.get_mut(at) {
            *c = c.saturating_add(1);
            let block = self.current * self.blocks + bin / BLOCK_BINS;
            if let Some(b) = self.block_counts.get_mut(block) {
                *b = b.saturating_add(1);
            }
            self.totals[self.current] = self.totals[self.current].saturating_add(1);
        }
        self.since_recompute += 1;
        if self.since_recompute >= RECOMPUTE_EVERY || self.low_margin_ns.is_none() {
            self.recompute();
        }
    }

    /// Moves the window on to `at_ns`: a half that is over makes way for a
    /// new one; after a pause longer than the window, nothing is kept.
    fn turn(&mut self, at_ns: u64) {
        let Some(started) = self.started_ns else {
            self.started_ns = Some(at_ns);
            return;
        };
        let age = at_ns.saturating_sub(started);
        if age < HALF_NS {
            return;
        }
        if age >= 2 * HALF_NS {
            self.reset();
            self.started_ns = Some(at_ns);
            return;
        }
        self.current = 1 - self.current;
        let half = self.current * self.bins..(self.current + 1) * self.bins;
        if let Some(bins) = self.counts.get_mut(half) {
            bins.fill(0);
        }
        let half = self.current * self.blocks..(self.current + 1) * self.blocks;
        if let Some(blocks) = self.block_counts.get_mut(half) {
            blocks.fill(0);
        }
        self.totals[self.current] = 0;
        self.started_ns = Some(started + HALF_NS);
        self.recompute();
    }

    fn recompute(&mut self) {
        self.since_recompute = 0;
        let total = self.totals[0].saturating_add(self.totals[1]);
        if total < MIN_PACKETS {
            self.low_margin_ns = None;
            return;
        }
        // The lowest bin with more than 1 % of the packets at or below it:
        // 99 % had at least its lower edge.
        let allowed = (u64::from(total) * u64::from(BELOW_PER_MILLE) / 1000) as u32;
        let (first, second) = self.counts.split_at(self.bins);
        let (first_blocks, second_blocks) = self.block_counts.split_at(self.blocks);
        let mut seen = 0u32;
        for (block, (a, b)) in first_blocks.iter().zip(second_blocks).enumerate() {
            let in_block = a.saturating_add(*b);
            if seen.saturating_add(in_block) <= allowed {
                seen = seen.saturating_add(in_block);
                continue;
            }
            let bins = block * BLOCK_BINS..((block + 1) * BLOCK_BINS).min(self.bins);
            for bin in bins {
                let (a, b) = (first.get(bin), second.get(bin));
                seen = seen.saturating_add(a.zip(b).map_or(0, |(a, b)| a.saturating_add(*b)));
                if seen > allowed {
                    // The underflow reports its upper edge, LOW_NS: "at
                    // least that late".
                    let edge = LOW_NS + (bin.max(1) as i64 - 1) * BIN_NS;
                    self.low_margin_ns = Some(edge);
                    return;
                }
            }
        }
        self.low_margin_ns = None;
    }

    /// The margin 99 % of the window's packets had at least, ns; `None`
    /// before [`MIN_PACKETS`].
    pub fn low_margin_ns(&self) -> Option<i64> {
        self.low_margin_ns
    }

    /// Packets in the window.
    pub fn packets(&self) -> u32 {
        self.totals[0].saturating_add(self.totals[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;

    /// Packets every 20 ms from `from_ns`, margins from `margin_ms(k)`.
    fn feed(m: &mut ArrivalMargin, from_ns: u64, n: u64, margin_ms: impl Fn(u64) -> f64) -> u64 {
        for k in 0..n {
            m.record(margin_ms(k) * MS, from_ns + k * 20_000_000);
        }
        from_ns + n * 20_000_000
    }

    /// The percentile by a walk over every bin, as before the blocks.
    fn flat_walk(m: &ArrivalMargin) -> Option<i64> {
        let total = m.totals[0] + m.totals[1];
        if total < MIN_PACKETS {
            return None;
        }
        let allowed = (u64::from(total) * u64::from(BELOW_PER_MILLE) / 1000) as u32;
        let mut seen = 0;
        for bin in 0..m.bins {
            seen += m.counts[bin] + m.counts[m.bins + bin];
            if seen > allowed {
                return Some(LOW_NS + (bin.max(1) as i64 - 1) * BIN_NS);
            }
        }
        None
    }

    #[test]
    fn block_walk_equals_the_walk_over_every_bin() {
        // Spreads from narrow to wider than the range, across both halves
        // and a turn of the window, every packet checked.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for spread_ms in [0.3, 4.0, 60.0, 900.0] {
            let mut m = ArrivalMargin::new(150);
            for k in 0..3_000u64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let u = (rng >> 11) as f64 / (1u64 << 53) as f64;
                let margin_ms = 120.0 - spread_ms * u * u;
                m.record(margin_ms * 1e6, k * 5_000_000);
                m.recompute();
                assert_eq!(
                    m.low_margin_ns(),
                    flat_walk(&m),
                    "spread {spread_ms} ms, packet {k}"
                );
            }
        }
    }

    #[test]
    fn nothing_before_fifty_packets() {
        let mut m = ArrivalMargin::new(100);
        feed(&mut m, 0, 49, |_| 40.0);
        assert_eq!(m.low_margin_ns(), None);
        m.record(40.0 * MS, 49 * 20_000_000);
        assert_eq!(m.low_margin_ns(), Some(40_000_000));
    }

    #[test]
    fn first_percentile_of_a_uniform_spread() {
        // Margins 0.0, 0.1, ..., 99.9 ms, shuffled by a stride: the 1st
        // percentile is 1 ms (10 of 1000 packets below it), given to the
        // bin's lower edge.
        let mut m = ArrivalMargin::new(100);
        feed(&mut m, 0, 1000, |k| ((k * 377) % 1000) as f64 / 10.0);
        let got = m.low_margin_ns().unwrap();
        assert!((500_000..=1_000_000).contains(&got), "{got}");
    }

    #[test]
    fn one_packet_in_two_hundred_late_does_not_move_it_one_in_fifty_does() {
        let mut m = ArrivalMargin::new(100);
        // 1 in 200 held back 80 ms (margin -20 ms), the rest at 60 ms.
        feed(
            &mut m,
            0,
            400,
            |k| if k % 200 == 150 { -20.0 } else { 60.0 },
        );
        assert_eq!(m.low_margin_ns(), Some(60_000_000));
        let mut m = ArrivalMargin::new(100);
        feed(&mut m, 0, 400, |k| if k % 50 == 7 { -20.0 } else { 60.0 });
        assert_eq!(m.low_margin_ns(), Some(-20_000_000), "late: negative");
    }

    #[test]
    fn beyond_the_range_reports_its_edges() {
        let mut m = ArrivalMargin::new(100);
        feed(&mut m, 0, 100, |_| -900.0);
        assert_eq!(m.low_margin_ns(), Some(LOW_NS));
        let mut m = ArrivalMargin::new(100);
        feed(&mut m, 0, 100, |_| 5000.0);
        assert_eq!(m.low_margin_ns(), Some(100_000_000 + ABOVE_SYNC_NS));
        m.record(f64::NAN, 2_000_000_000);
        m.record(f64::INFINITY, 2_000_000_000);
        m.record(f64::NEG_INFINITY, 2_000_000_000);
    }

    #[test]
    fn window_forgets_a_bad_spell_within_ten_seconds() {
        let mut m = ArrivalMargin::new(100);
        // 4 s of a congested path (margin 5 ms), then a clean one (50 ms).
        let t = feed(&mut m, 0, 200, |_| 5.0);
        let t = feed(&mut m, t, 150, |_| 50.0);
        assert_eq!(m.low_margin_ns(), Some(5_000_000), "7 s: still seen");
        feed(&mut m, t, 200, |_| 50.0);
        assert_eq!(m.low_margin_ns(), Some(50_000_000), "11 s: forgotten");
    }

    #[test]
    fn a_pause_longer_than_the_window_starts_afresh() {
        let mut m = ArrivalMargin::new(100);
        feed(&mut m, 0, 100, |_| 5.0);
        assert!(m.low_margin_ns().is_some());
        m.record(50.0 * MS, 30_000_000_000);
        assert_eq!(m.packets(), 1);
        assert_eq!(m.low_margin_ns(), None);
    }
}
