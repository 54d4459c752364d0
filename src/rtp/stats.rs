//! RFC 3550 receiver statistics for one RTP source (section 6.4.1 and
//! appendix A.1, A.3, A.8): the extended highest sequence number, the
//! cumulative and fractional loss, and the interarrival jitter; what a
//! receiver report carries.
//!
//! Input: the sequence number, extended RTP timestamp, arrival time and
//! clock rate of each received packet. Output: the figures above, and for
//! the caller's own policy whether a packet is a duplicate or arrived out
//! of order.
//!
//! Policy: sequence numbers are extended across wrap by their signed
//! distance from the highest seen, so a packet up to 32767 behind is late
//! or reordered, not a new cycle. A duplicate (within the last
//! `SEQ_WINDOW` numbers) is reported and not counted as received, so it
//! cannot hide a loss. A reordered packet counts as received and moves
//! nothing back; a lost one that arrives late stops counting as lost.
//! [`ReceiverStats::restart`] begins a new run (a new stream, a resync):
//! the loss of the old run is kept, the sequence anchors afresh, and the
//! jitter estimate carries on from its last value.

/// How far back duplicates are recognised, in sequence numbers.
pub const SEQ_WINDOW: u64 = 1024;

/// Extended sequence numbers are kept this far from 0 so a packet from
/// before the first one (reordered across the start) stays positive; a
/// multiple of 2^16, so the low 16 bits are the packet's own number.
const SEQ_ORIGIN: u64 = 1 << 40;

const NS_PER_S: u128 = 1_000_000_000;

/// What one packet's sequence number is, against what came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqStatus {
    /// Newer than every packet so far (possibly after a gap).
    InOrder,
    /// Older than the highest so far, not seen before.
    Reordered,
    /// Already received.
    Duplicate,
}

/// The statistics of one source; see the module documentation.
#[derive(Clone, Debug)]
pub struct ReceiverStats {
    /// Highest extended sequence number of the current run, and its raw
    /// form (the reference extension works from).
    max_ext: u64,
    max_raw: u16,
    /// Extended sequence number of the run's first packet.
    base: u64,
    /// Packets received in the run, duplicates excluded.
    received: u64,
    /// Loss of finished runs.
    lost_closed: u64,
    /// Bitmap of the last `SEQ_WINDOW` sequence numbers received.
    seen: [u64; (SEQ_WINDOW / 64) as usize],
    /// Expected and received at the last `fraction_lost` (A.3).
    expected_prior: u64,
    received_prior: u64,
    /// Whether a run has started (before the first packet nothing is
    /// expected).
    started: bool,
    prev_transit: Option<i64>,
    /// In timestamp units of the current stream.
    jitter: f64,
}

impl Default for ReceiverStats {
    fn default() -> Self {
        ReceiverStats {
            max_ext: SEQ_ORIGIN - 1,
            max_raw: 0,
            base: SEQ_ORIGIN,
            received: 0,
            lost_closed: 0,
            seen: [0; (SEQ_WINDOW / 64) as usize],
            expected_prior: 0,
            received_prior: 0,
            started: false,
            prev_transit: None,
            jitter: 0.0,
        }
    }
}

impl ReceiverStats {
    /// Starts a new run whose first packet has sequence number `seq`:
    /// keeps the loss counted so far and the jitter estimate.
    pub fn restart(&mut self, seq: u16) {
        self.lost_closed += self.run_lost();
        self.max_ext = SEQ_ORIGIN + u64::from(seq) - 1;
        self.max_raw = seq.wrapping_sub(1);
        self.base = SEQ_ORIGIN + u64::from(seq);
        self.received = 0;
        self.seen = [0; (SEQ_WINDOW / 64) as usize];
        self.expected_prior = 0;
        self.received_prior = 0;
        self.prev_transit = None;
        self.started = true;
    }

    /// The extended form of `seq`: its signed distance from the highest
    /// sequence number so far, added to that one's extended form.
    pub fn extend(&self, seq: u16) -> u64 {
        let delta = i64::from(seq.wrapping_sub(self.max_raw) as i16);
        self.max_ext.saturating_add_signed(delta)
    }

    /// Whether `seq` is the very next sequence number after the highest
    /// so far: no packet is missing between them.
    pub fn follows(&self, seq: u16) -> bool {
        self.started && self.extend(seq) == self.max_ext + 1
    }

    /// Classifies `seq` without recording it.
    pub fn status(&self, seq: u16) -> SeqStatus {
        let ext = self.extend(seq);
        if ext > self.max_ext {
            SeqStatus::InOrder
        } else if self.seen(ext) {
            SeqStatus::Duplicate
        } else {
            SeqStatus::Reordered
        }
    }

    fn seen(&self, ext: u64) -> bool {
        if ext + SEQ_WINDOW <= self.max_ext || ext > self.max_ext {
            return false;
        }
        let (word, bit) = seq_bit(ext);
        self.seen.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Records a received packet; a duplicate changes nothing. Returns its
    /// status. Starts the first run if none has started.
    pub fn record(&mut self, seq: u16) -> SeqStatus {
        if !self.started {
            self.restart(seq);
        }
        let status = self.status(seq);
        if status == SeqStatus::Duplicate {
            return status;
        }
        let ext = self.extend(seq);
        if ext > self.max_ext {
            if ext - self.max_ext >= SEQ_WINDOW {
                self.seen = [0; (SEQ_WINDOW / 64) as usize];
            } else {
                for e in self.max_ext + 1..=ext {
                    let (word, bit) = seq_bit(e);
                    if let Some(w) = self.seen.get_mut(word) {
                        *w &= !bit;
                    }
                }
            }
            self.max_ext = ext;
            self.max_raw = seq;
        }
        self.received += 1;
        if ext + SEQ_WINDOW > self.max_ext {
            let (word, bit) = seq_bit(ext);
            if let Some(w) = self.seen.get_mut(word) {
                *w |= bit;
            }
        }
        status
    }

    /// RFC 3550 section 6.4.1 and A.8: J += (|D| - J) / 16, with D the
    /// difference of successive transit times (arrival minus RTP
    /// timestamp, both in timestamp units of `rate` Hz). `ext_timestamp`
    /// is the caller's extended timestamp, so wrap does not disturb D.
    pub fn update_jitter(&mut self, arrival_ns: u64, ext_timestamp: u64, rate: u32) {
        let arrival = (u128::from(arrival_ns) * u128::from(rate) / NS_PER_S) as i64;
        let transit = arrival.wrapping_sub(ext_timestamp as i64);
        if let Some(prev) = self.prev_transit {
            let d = transit.wrapping_sub(prev).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.prev_transit = Some(transit);
    }

    /// Keeps the jitter meaningful when the stream's clock rate changes.
    pub fn rescale_jitter(&mut self, old_rate: u32, new_rate: u32) {
        if old_rate != 0 && old_rate != new_rate {
            self.jitter = self.jitter * f64::from(new_rate) / f64::from(old_rate);
        }
    }

    /// Interarrival jitter, in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The extended highest sequence number received, as a receiver
    /// report carries it: cycles in the high 16 bits, the number below.
    pub fn extended_highest(&self) -> u32 {
        (self.max_ext - SEQ_ORIGIN) as u32
    }

    fn run_expected(&self) -> u64 {
        (self.max_ext + 1).saturating_sub(self.base)
    }

    fn run_lost(&self) -> u64 {
        self.run_expected().saturating_sub(self.received)
    }

    /// Cumulative packets lost (expected minus received) over every run.
    /// Never negative: duplicates are not counted as received.
    pub fn cumulative_lost(&self) -> u64 {
        self.lost_closed + self.run_lost()
    }

    /// The fraction lost since the previous call (A.3), in 1/256: what a
    /// receiver report sends for each interval.
    pub fn fraction_lost(&mut self) -> u8 {
        let expected = self.run_expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        }
    }
}

fn seq_bit(ext: u64) -> (usize, u64) {
    let i = ext % SEQ_WINDOW;
    ((i / 64) as usize, 1u64 << (i % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u16]) -> (ReceiverStats, Vec<SeqStatus>) {
        let mut s = ReceiverStats::default();
        let statuses = seqs.iter().map(|&q| s.record(q)).collect();
        (s, statuses)
    }

    #[test]
    fn in_order_stream_loses_nothing() {
        let (mut s, st) = run(&[100, 101, 102, 103]);
        assert!(st.iter().all(|&x| x == SeqStatus::InOrder));
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.extended_highest(), 103);
        assert_eq!(s.fraction_lost(), 0);
    }

    #[test]
    fn seq_wrap_counts_a_cycle() {
        let (s, st) = run(&[65_534, 65_535, 0, 1]);
        assert!(st.iter().all(|&x| x == SeqStatus::InOrder), "{st:?}");
        assert_eq!(s.extended_highest(), (1 << 16) + 1);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn loss_across_wrap() {
        // 65535 and 1 are lost.
        let (mut s, _) = run(&[65_533, 65_534, 0, 2]);
        assert_eq!(s.cumulative_lost(), 2);
        // 6 expected, 4 received: 2/6 of 256.
        assert_eq!(s.fraction_lost(), (2 * 256 / 6) as u8);
        // Nothing since: the next interval is clean.
        assert_eq!(s.fraction_lost(), 0);
    }

    #[test]
    fn reorder_counts_received_and_keeps_highest() {
        let (s, st) = run(&[10, 12, 11, 13]);
        assert_eq!(
            st,
            [
                SeqStatus::InOrder,
                SeqStatus::InOrder,
                SeqStatus::Reordered,
                SeqStatus::InOrder
            ]
        );
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.extended_highest(), 13);
    }

    #[test]
    fn reordered_across_wrap_is_not_a_new_cycle() {
        let (s, st) = run(&[65_535, 1, 0]);
        assert_eq!(st[2], SeqStatus::Reordered);
        assert_eq!(s.extended_highest(), (1 << 16) + 1);
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn duplicate_is_not_counted_and_hides_no_loss() {
        // 6 is lost; 5 arrives twice.
        let (s, st) = run(&[4, 5, 5, 7]);
        assert_eq!(st[2], SeqStatus::Duplicate);
        assert_eq!(s.cumulative_lost(), 1);
        let (s, st) = run(&[4, 5, 7, 4]);
        assert_eq!(st[3], SeqStatus::Duplicate);
        assert_eq!(s.cumulative_lost(), 1);
    }

    #[test]
    fn restart_keeps_old_loss_and_anchors_anew() {
        let (mut s, _) = run(&[1, 3]);
        assert_eq!(s.cumulative_lost(), 1);
        s.restart(40_000);
        assert_eq!(s.record(40_000), SeqStatus::InOrder);
        assert_eq!(s.record(40_002), SeqStatus::InOrder);
        assert_eq!(s.cumulative_lost(), 2);
        assert_eq!(s.extended_highest(), 40_002);
    }

    #[test]
    fn jitter_on_a_known_arrival_pattern() {
        // 8 kHz, 20 ms packets arriving at 0, 21, 40 and 62 ms: arrival in
        // timestamp units 0, 168, 320, 496; transit 0, 8, 0, 16; D = 8,
        // 8, 16; J = 0.5, then 0.5 + 7.5/16 = 0.96875, then
        // 0.96875 + (16 - 0.96875)/16.
        let mut s = ReceiverStats::default();
        for (k, ms) in [0u64, 21, 40, 62].into_iter().enumerate() {
            s.record(k as u16);
            s.update_jitter(ms * 1_000_000, k as u64 * 160, 8000);
        }
        assert_eq!(s.jitter(), 0.96875 + (16.0 - 0.96875) / 16.0);
        s.rescale_jitter(8000, 16_000);
        assert_eq!(s.jitter(), 2.0 * (0.96875 + (16.0 - 0.96875) / 16.0));
    }

    #[test]
    fn steady_arrivals_have_no_jitter() {
        let mut s = ReceiverStats::default();
        for k in 0..50u64 {
            s.update_jitter(1_000_000_000 + k * 20_000_000, k * 960, 48_000);
        }
        assert_eq!(s.jitter(), 0.0);
    }
}
