//! RTCP sender reports of netspeaker-send. Input: each RTP packet sent
//! (its payload size), the monotonic clock, the wall clock and the media
//! clock's reading at the same instant. Output: SR + SDES CNAME compounds
//! (RFC 3550 §6.4.1, §6.5) when one is due, and SR + SDES + BYE at the end
//! (§6.6), written by [`crate::rtp::rtcp::write_report`].
//!
//! Policy: the first report goes out with the first packet, so a receiver
//! can map timestamps to the sender's wall clock at once; then one every
//! [`INTERVAL_NS`] randomised to 0.5-1.5 times that (§6.3.1 randomises so
//! that senders started together do not report in step; a single sender
//! is far below the 5 % RTCP bandwidth share: a report of about 110 bytes
//! a second on the wire is 1.4 % of the smallest stream, 64 kbit/s PCMU,
//! so the fixed base stands in for §6.3's computation, as ffmpeg's and
//! GStreamer's senders do in practice). One a second, not the usual
//! 2.5-5 s: a receiver that joins a running stream in sync mode
//! (`--sync-ms`) can place it only once a report has come, within 1.5 s. The counts wrap at 2^32 (§6.4.1).
//! The schedule is pure: the clocks are passed in, and the randomisation
//! is a seeded xorshift, so tests run in simulated time.

use crate::rtp::rtcp::{self, SenderInfo, MAX_CNAME};

/// The mean interval between reports.
pub const INTERVAL_NS: u64 = 1_000_000_000;

/// Report schedule and the counts a report carries.
#[derive(Debug, Clone)]
pub struct Reporter {
    ssrc: u32,
    cname: Vec<u8>,
    packets: u32,
    octets: u32,
    /// When the next report is due (monotonic); `None`: none sent yet.
    next_ns: Option<u64>,
    rng: u64,
}

impl Reporter {
    /// `cname` is cut to the 255 bytes an SDES item holds; `seed` drives
    /// the interval's randomisation (0 is replaced: xorshift needs a bit).
    pub fn new(ssrc: u32, cname: &str, seed: u64) -> Reporter {
        let bytes = cname.as_bytes();
        Reporter {
            ssrc,
            cname: bytes[..bytes.len().min(MAX_CNAME)].to_vec(),
            packets: 0,
            octets: 0,
            next_ns: None,
            rng: seed | 1,
        }
    }

    /// Counts one RTP packet sent with `payload_octets` of payload.
    pub fn count(&mut self, payload_octets: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_octets as u32);
    }

    /// Whether a report is due at `now_ns` (always before the first).
    pub fn is_due(&self, now_ns: u64) -> bool {
        match self.next_ns {
            Some(due) => now_ns >= due,
            None => true,
        }
    }

    /// 0.5 to 1.5 times `INTERVAL_NS`, uniformly.
    fn interval_ns(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        INTERVAL_NS / 2 + self.rng % INTERVAL_NS
    }

    /// Writes a report into `out` (at least `rtcp::MAX_REPORT_LEN` bytes)
    /// stamped `unix_ns` on the wall clock and `rtp_timestamp` on the
    /// media clock, and schedules the next one from `now_ns`; with `bye`,
    /// the BYE follows. Returns the compound's length.
    pub fn write(
        &mut self,
        out: &mut [u8],
        now_ns: u64,
        unix_ns: u64,
        rtp_timestamp: u32,
        bye: bool,
    ) -> Option<usize> {
        let info = SenderInfo {
            ntp: rtcp::ntp_from_unix_ns(unix_ns),
            rtp_timestamp,
            packets: self.packets,
            octets: self.octets,
        };
        let len = rtcp::write_report(out, self.ssrc, &info, &self.cname, bye)?;
        let interval = self.interval_ns();
        self.next_ns = Some(now_ns.saturating_add(interval));
        Some(len)
    }
}

/// The media clock's reading at `now_ns` for a packet with `timestamp`
/// due at `due_ns` on the same clock, at `rate` frames/s: a paced file's
/// sample leaves at its deadline, so the clock reads the timestamp plus
/// the frames of the time since (minus, when early). Returns the whole
/// frame and how long ago, in ns, the clock passed it: a report stamps
/// its wall clock that much earlier, so the pair is exact instead of up
/// to a frame apart (125 µs at 8 kHz, 50 ppm over a report interval).
pub fn media_clock_at(timestamp: u32, due_ns: u64, now_ns: u64, rate: u32) -> (u32, u64) {
    let ahead = i128::from(now_ns) - i128::from(due_ns);
    let rate = i128::from(rate.max(1));
    let scaled = ahead * rate;
    let frames = scaled.div_euclid(1_000_000_000);
    let since_ns = scaled.rem_euclid(1_000_000_000) / rate;
    (
        timestamp.wrapping_add(frames as i64 as u32),
        since_ns as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::rtcp::{sender_report, MAX_REPORT_LEN};

    #[test]
    fn first_report_at_once_then_every_0_5_to_1_5_s() {
        let mut r = Reporter::new(5, "ns@host", 42);
        let mut out = [0u8; MAX_REPORT_LEN];
        assert!(r.is_due(1_000));
        let mut now = 1_000u64;
        let mut sent_at = Vec::new();
        // 10 minutes in 20 ms packets, simulated.
        for _ in 0..30_000 {
            r.count(160);
            if r.is_due(now) {
                let len = r.write(&mut out, now, 0, 0, false).unwrap();
                assert!(sender_report(&out[..len]).is_some());
                sent_at.push(now);
            }
            now += 20_000_000;
        }
        assert_eq!(sent_at[0], 1_000);
        let gaps: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter()
                .all(|&g| (500_000_000..=1_520_000_000).contains(&g)),
            "{gaps:?}"
        );
        let mean = gaps.iter().sum::<u64>() / gaps.len() as u64;
        assert!(mean.abs_diff(INTERVAL_NS) < 80_000_000, "mean {mean}");
        // Randomised: not all the same, and both halves of the range used.
        assert!(gaps.iter().any(|&g| g < 800_000_000) && gaps.iter().any(|&g| g > 1_200_000_000));
    }

    #[test]
    fn counts_and_clocks_land_in_the_report() {
        let mut r = Reporter::new(0xabcd, "me@there", 1);
        for _ in 0..3 {
            r.count(320);
        }
        let mut out = [0u8; MAX_REPORT_LEN];
        let unix_ns = 1_764_585_600_500_000_000;
        let len = r.write(&mut out, 7, unix_ns, 0xffff_fff0, true).unwrap();
        let sr = sender_report(&out[..len]).unwrap();
        assert_eq!(sr.ssrc, 0xabcd);
        assert_eq!(sr.info.packets, 3);
        assert_eq!(sr.info.octets, 960);
        assert_eq!(sr.info.rtp_timestamp, 0xffff_fff0);
        assert_eq!(sr.info.ntp, rtcp::ntp_from_unix_ns(unix_ns));
        assert_eq!(
            rtcp::bye_sources(&out[..len]),
            Some(&0xabcdu32.to_be_bytes()[..])
        );
    }

    #[test]
    fn counts_wrap_at_2_32() {
        let mut r = Reporter::new(1, "x", 1);
        r.packets = u32::MAX;
        r.octets = u32::MAX - 10;
        r.count(20);
        assert_eq!((r.packets, r.octets), (0, 9));
    }

    #[test]
    fn media_clock_follows_the_deadline() {
        // 20 ms after the deadline at 48 kHz: 960 frames on, across a wrap.
        assert_eq!(
            media_clock_at(u32::MAX - 100, 1_000_000_000, 1_020_000_000, 48_000),
            (859, 0)
        );
        // Early by 1 ms at 8 kHz: 8 frames back.
        assert_eq!(media_clock_at(1000, 5_000_000, 4_000_000, 8000), (992, 0));
        // 1.1 frames on at 8 kHz (137.5 us): frame 1, passed 12.5 us ago.
        assert_eq!(media_clock_at(0, 0, 137_500, 8000), (1, 12_500));
        // 0.5 frame early: frame -1 (wrapped), passed 62.5 us ago.
        assert_eq!(media_clock_at(0, 62_500, 0, 8000), (u32::MAX, 62_500));
    }
}
