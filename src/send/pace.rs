//! Pacer. Input: the monotonic clock. Output: when the next packet is due.
//! Policy: packet k is due at start + k · ptime, where ptime is computed
//! from whole frames at the stream's rate (no rounding error accumulates,
//! even where ptime is not a whole number of nanoseconds). A late wake-up
//! does not move the schedule: the packets that fell due meanwhile are sent
//! back to back, so the packets sent never drift from real time by more
//! than one packet, however long the stream runs.

/// Deadline arithmetic, pure: the clock is passed in.
#[derive(Debug, Clone)]
pub struct Pacer {
    start_ns: u64,
    rate: u64,
    frames_per_packet: u64,
    sent: u64,
}

impl Pacer {
    /// A schedule that starts (packet 0 due) at `start_ns` on the monotonic
    /// clock, for packets of `frames_per_packet` frames at `rate` frames/s.
    pub fn new(start_ns: u64, rate: u32, frames_per_packet: usize) -> Pacer {
        Pacer {
            start_ns,
            rate: u64::from(rate.max(1)),
            frames_per_packet: frames_per_packet as u64,
            sent: 0,
        }
    }

    /// When packet `k` is due.
    pub fn due_ns(&self, k: u64) -> u64 {
        let frames = u128::from(k) * u128::from(self.frames_per_packet);
        let offset = frames * 1_000_000_000 / u128::from(self.rate);
        self.start_ns
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// When the next packet (the first not yet sent) is due.
    pub fn next_deadline_ns(&self) -> u64 {
        self.due_ns(self.sent)
    }

    /// Whether the next packet is due at `now_ns`.
    pub fn is_due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_deadline_ns()
    }

    /// Records that the next packet was sent.
    pub fn mark_sent(&mut self) {
        self.sent += 1;
    }

    pub fn packets_sent(&self) -> u64 {
        self.sent
    }

    /// Packets due by `now_ns` since the start (packet 0 is due at the
    /// start itself).
    pub fn packets_due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = u128::from(now_ns - self.start_ns);
        let per_packet_num = u128::from(self.frames_per_packet) * 1_000_000_000;
        if per_packet_num == 0 {
            return 0;
        }
        // Smallest k with due_ns(k) > now, i.e. the count of k with
        // k·fpp·1e9/rate <= elapsed (floor division, like due_ns).
        let k = (elapsed * u128::from(self.rate) + u128::from(self.rate) - 1) / per_packet_num;
        let mut k = u64::try_from(k).unwrap_or(u64::MAX);
        while k > 0 && self.due_ns(k - 1) > now_ns {
            k -= 1;
        }
        while self.due_ns(k) <= now_ns {
            k += 1;
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small xorshift so the simulation is random but reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn deadlines_do_not_accumulate_rounding() {
        // 11025 Hz, 20 ms = 220.5 frames: 220 frames per packet is not a
        // whole number of microseconds (19954.648... us).
        let p = Pacer::new(1_000, 11_025, 220);
        assert_eq!(p.due_ns(0), 1_000);
        assert_eq!(p.due_ns(11_025), 1_000 + 220 * 1_000_000_000);
        let p = Pacer::new(0, 8000, 160);
        assert_eq!(p.due_ns(50 * 3600), 3600 * 1_000_000_000);
    }

    #[test]
    fn packets_due_matches_deadlines() {
        let p = Pacer::new(5_000, 44_100, 882);
        assert_eq!(p.packets_due(4_999), 0);
        assert_eq!(p.packets_due(5_000), 1);
        for k in [1u64, 2, 7, 1000, 123_457] {
            let due = p.due_ns(k);
            assert_eq!(p.packets_due(due - 1), k, "just before packet {k}");
            assert_eq!(p.packets_due(due), k + 1, "at packet {k}");
        }
    }

    /// An hour of packets with random late wake-ups (mostly small, now and
    /// then 50 ms to 2 s): each wake-up sends what is due, and the count
    /// sent never differs from real time by more than one packet.
    #[test]
    fn hour_with_late_wakeups_stays_within_one_packet() {
        let start = 1_000_000_000u64;
        let mut pacer = Pacer::new(start, 48_000, 960);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let hour = start + 3600 * 1_000_000_000;
        let mut now = start;
        let mut max_late_packets = 0u64;
        while now < hour {
            let lateness = match rng.next() % 1000 {
                0 => 50_000_000 + rng.next() % 1_950_000_000,
                1..=20 => rng.next() % 20_000_000,
                _ => rng.next() % 2_000_000,
            };
            now = pacer.next_deadline_ns() + lateness;
            let real = pacer.packets_due(now);
            max_late_packets = max_late_packets.max(real - pacer.packets_sent());
            while pacer.is_due(now) {
                pacer.mark_sent();
            }
            // Right after a wake-up, exactly what is due has gone out.
            assert_eq!(pacer.packets_sent(), real);
        }
        // Between wake-ups the count only lags by the packet being waited
        // for; at the end, one hour is 180 000 packets.
        let due = pacer.packets_due(hour);
        assert!(
            due.abs_diff(pacer.packets_sent()) <= 1,
            "{due} vs {}",
            pacer.packets_sent()
        );
        assert!((180_000..=180_001).contains(&due));
        // The simulation did produce multi-packet bursts.
        assert!(max_late_packets > 10, "{max_late_packets}");
    }

    #[test]
    fn real_clock_sleep_reaches_deadline() {
        let start = crate::service::clock::monotonic_ns();
        let mut pacer = Pacer::new(start, 8000, 160);
        while pacer.packets_sent() < 10 {
            crate::service::clock::sleep_until(pacer.next_deadline_ns());
            let now = crate::service::clock::monotonic_ns();
            // Never early: the sleep is against an absolute deadline.
            assert!(now >= pacer.next_deadline_ns());
            pacer.mark_sent();
        }
        assert!(crate::service::clock::monotonic_ns() - start >= 9 * 20_000_000);
    }
}
