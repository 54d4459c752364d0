//! Counters shared between threads and the periodic statistics line. The
//! playout thread publishes its figures with relaxed atomic stores once
//! per period (never a lock); the main thread reads them every
//! `--stats-interval` and on SIGUSR1 and prints one line.

use core::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

/// What the playout thread publishes. Counters only grow; gauges are the
/// latest value. Times are in microseconds so they fit integer atomics.
#[derive(Default, Debug)]
pub struct PlayoutStats {
    // Jitter buffer counters (RFC 3550 loss: expected − received).
    pub packets: AtomicU64,
    pub lost: AtomicU64,
    pub late: AtomicU64,
    pub reordered: AtomicU64,
    pub duplicates: AtomicU64,
    /// Packets from senders other than the one playing, dropped by the
    /// source lock.
    pub stray: AtomicU64,
    pub overflow: AtomicU64,
    pub new_streams: AtomicU64,
    pub stream_lost: AtomicU64,
    // Playout counters.
    pub concealed_frames: AtomicU64,
    /// Opus: lost packets rebuilt from the next packet's in-band FEC.
    pub fec_recovered: AtomicU64,
    pub stretched_frames: AtomicU64,
    pub underruns: AtomicU64,
    /// The jitter buffer ran dry (nothing had arrived to play).
    pub starved: AtomicU64,
    pub resumes: AtomicU64,
    pub device_errors: AtomicU64,
    pub reopens: AtomicU64,
    /// Periods written; also the watchdog heartbeat.
    pub periods: AtomicU64,
    // Gauges.
    pub stream_rate: AtomicU32,
    pub jitter_us: AtomicU64,
    pub depth_us: AtomicU64,
    pub target_us: AtomicU64,
    pub alsa_delay_us: AtomicI64,
    /// Estimated sender clock error, in millionths of a ppm.
    pub drift_uppm: AtomicI64,
    /// Its uncertainty, in millionths of a ppm; negative: not known yet.
    pub drift_uncertainty_uppm: AtomicI64,
    /// How the resampler serves the stream: 1 samples pass untouched
    /// (equal rates, clocks agree), 2 converted at the exact ratio of the
    /// rates (clocks agree), 0 resampled to follow a clock or correct the
    /// delay.
    pub passthrough: AtomicU32,
    /// Several streams: the one that owns the speaker, as its index + 1
    /// (0: none is live).
    pub speaker: AtomicU32,
    /// Each stream's own counters, in `--stream` order (the ones above
    /// are their sums).
    pub streams: [StreamCounters; crate::receive::priority::MAX_STREAMS],
    /// Sync playout (`--sync-ms`): 0 not configured, 1 in charge, else
    /// 1 + `Why::code` of why not.
    pub sync_state: AtomicU32,
    /// Its last error, ns (+: late).
    pub sync_error_ns: AtomicI64,
    /// Alignments made (starts, steps), and the frames they skipped and
    /// inserted (stream frames).
    pub sync_aligns: AtomicU64,
    pub sync_skipped_frames: AtomicU64,
    pub sync_inserted_frames: AtomicU64,
    /// The arrival margin 99 % of the recent packets had at least, µs
    /// (negative: more than 1 % came after their play time);
    /// `i64::MIN` while not known (fewer than 50 packets).
    pub sync_margin_us: AtomicI64,
    /// Packets whose head came after its play time (concealed), the rest
    /// played: not in `late`, which counts packets that came wholly late.
    pub sync_partly_late: AtomicU64,
    /// The device's clock against the monotonic one as sync has it,
    /// parts per billion (+: slow).
    pub sync_device_ppb: AtomicI64,
}

/// `sync_margin_us` while there is no margin to show.
pub const NO_MARGIN: i64 = i64::MIN;

/// One stream's counters, published by the playout thread with the sums.
#[derive(Default, Debug)]
pub struct StreamCounters {
    pub packets: AtomicU64,
    pub lost: AtomicU64,
    pub late: AtomicU64,
    pub stray: AtomicU64,
    pub concealed_frames: AtomicU64,
    /// The rate `concealed_frames` count in (0 before a stream).
    pub rate: AtomicU32,
}

/// One reading of a stream's counters: what the log names per stream
/// ("100 packets, 0 lost, ...": not the statistics line's "packets N",
/// which scripts read).
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct StreamFigures {
    pub packets: u64,
    pub lost: u64,
    pub late: u64,
    pub stray: u64,
    pub concealed_ms: u64,
}

impl StreamCounters {
    pub fn read(&self) -> StreamFigures {
        let rate = u64::from(self.rate.load(Relaxed).max(1));
        StreamFigures {
            packets: self.packets.load(Relaxed),
            lost: self.lost.load(Relaxed),
            late: self.late.load(Relaxed),
            stray: self.stray.load(Relaxed),
            concealed_ms: self.concealed_frames.load(Relaxed) * 1000 / rate,
        }
    }
}

impl fmt::Display for StreamFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets, {} lost, {} late, {} stray, {} ms concealed",
            self.packets, self.lost, self.late, self.stray, self.concealed_ms
        )
    }
}

/// Sync playout as the statistics line shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SyncLine {
    /// In charge: the last error in µs, the alignments made and the audio
    /// they skipped and inserted, ms.
    InCharge {
        error_us: f64,
        aligns: u64,
        skipped_ms: f64,
        inserted_ms: f64,
        /// The arrival margin 99 % of the recent packets had at least,
        /// ms; `None` until enough packets came.
        margin_ms: Option<f64>,
        /// Packets that came with their head played (concealed).
        partly_late: u64,
        /// The device's clock against the system's, ppm (+: slow).
        device_ppm: f64,
    },
    /// Configured but not in charge (adaptive playout), and why.
    Off(crate::receive::sync::Why),
}

impl PlayoutStats {
    /// The sync part of the line; `None` without `--sync-ms`.
    pub fn sync_line(&self) -> Option<SyncLine> {
        use crate::receive::sync::Why;
        let rate = f64::from(self.stream_rate.load(Relaxed).max(1));
        match self.sync_state.load(Relaxed) {
            0 => None,
            1 => Some(SyncLine::InCharge {
                error_us: self.sync_error_ns.load(Relaxed) as f64 / 1000.0,
                aligns: self.sync_aligns.load(Relaxed),
                skipped_ms: self.sync_skipped_frames.load(Relaxed) as f64 * 1000.0 / rate,
                inserted_ms: self.sync_inserted_frames.load(Relaxed) as f64 * 1000.0 / rate,
                margin_ms: match self.sync_margin_us.load(Relaxed) {
                    NO_MARGIN => None,
                    us => Some(us as f64 / 1000.0),
                },
                partly_late: self.sync_partly_late.load(Relaxed),
                device_ppm: self.sync_device_ppb.load(Relaxed) as f64 / 1000.0,
            }),
            code => Some(SyncLine::Off(
                Why::from_code(code - 1).unwrap_or(Why::NoStream),
            )),
        }
    }
}

/// One reading of every figure, in plain numbers: what the line prints.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct StatsLine {
    pub packets: u64,
    pub lost: u64,
    pub late: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub stray: u64,
    pub dropped_overflow: u64,
    pub dropped_filtered: u64,
    pub dropped_malformed: u64,
    /// SRTP packets that failed authentication or were replays (not in
    /// `dropped`, which counts what reached the net stage's checks of
    /// plain packets).
    pub auth_failed: u64,
    pub concealed_ms: u64,
    /// Opus: lost packets rebuilt from in-band FEC.
    pub fec: u64,
    pub stretched_ms: u64,
    pub underruns: u64,
    pub starved: u64,
    pub jitter_ms: f64,
    pub depth_ms: f64,
    pub target_ms: f64,
    pub alsa_delay_ms: f64,
    pub drift_ppm: f64,
    /// None until the clock estimate is known.
    pub drift_uncertainty_ppm: Option<f64>,
    pub passthrough: bool,
    pub converting: bool,
    /// Allocations the playout and net threads made after start-up (see
    /// `service::alloc`); anything but 0 is a bug.
    pub realtime_allocs: u64,
    /// Several streams: the one that owns the speaker ("none" while no
    /// stream plays); `None` with one stream, which always does.
    pub speaker: Option<String>,
    /// RTCP sender reports received.
    pub sender_reports: u64,
    /// The reporting sender's media clock against its wall clock, once
    /// its reports span a second.
    pub sender_ppm: Option<f64>,
    /// The kernel's synchronisation state of this machine's wall clock.
    pub clock: Option<crate::service::clock::ClockState>,
    /// Sync playout, with `--sync-ms`.
    pub sync: Option<SyncLine>,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl PlayoutStats {
    /// Fills the playout part of a line. Frame counts become milliseconds
    /// at the current stream rate.
    pub fn read_into(&self, line: &mut StatsLine) {
        line.packets = self.packets.load(Relaxed);
        line.lost = self.lost.load(Relaxed);
        line.late = self.late.load(Relaxed);
        line.reordered = self.reordered.load(Relaxed);
        line.duplicates = self.duplicates.load(Relaxed);
        line.stray = self.stray.load(Relaxed);
        line.dropped_overflow += self.overflow.load(Relaxed);
        let rate = self.stream_rate.load(Relaxed).max(1) as u64;
        line.concealed_ms = self.concealed_frames.load(Relaxed) * 1000 / rate;
        line.fec = self.fec_recovered.load(Relaxed);
        line.stretched_ms = self.stretched_frames.load(Relaxed) * 1000 / rate;
        line.underruns = self.underruns.load(Relaxed);
        line.starved = self.starved.load(Relaxed);
        line.jitter_ms = us_to_ms(self.jitter_us.load(Relaxed));
        line.depth_ms = us_to_ms(self.depth_us.load(Relaxed));
        line.target_ms = us_to_ms(self.target_us.load(Relaxed));
        line.alsa_delay_ms = self.alsa_delay_us.load(Relaxed) as f64 / 1000.0;
        line.drift_ppm = self.drift_uppm.load(Relaxed) as f64 / 1e6;
        let u = self.drift_uncertainty_uppm.load(Relaxed);
        line.drift_uncertainty_ppm = (u >= 0).then_some(u as f64 / 1e6);
        let mode = self.passthrough.load(Relaxed);
        line.passthrough = mode == 1;
        line.converting = mode == 2;
        line.sync = self.sync_line();
    }
}

impl fmt::Display for StatsLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "packets {} lost {} late {} reordered {} duplicates {} stray {} \
             dropped {} (overflow {} filtered {} malformed {}) auth-failed {} \
             concealed {} ms fec {} stretched {} ms underruns {} starved {} jitter {:.1} ms \
             buffer {:.1}/{:.1} ms alsa {:.1} ms delay {:.1} ms drift {:+.1} ppm ",
            self.packets,
            self.lost,
            self.late,
            self.reordered,
            self.duplicates,
            self.stray,
            self.dropped_overflow + self.dropped_filtered + self.dropped_malformed,
            self.dropped_overflow,
            self.dropped_filtered,
            self.dropped_malformed,
            self.auth_failed,
            self.concealed_ms,
            self.fec,
            self.stretched_ms,
            self.underruns,
            self.starved,
            self.jitter_ms,
            self.depth_ms,
            self.target_ms,
            self.alsa_delay_ms,
            self.depth_ms + self.alsa_delay_ms,
            self.drift_ppm,
        )?;
        match self.drift_uncertainty_ppm {
            Some(u) => write!(f, "(±{u:.1}) ")?,
            None => write!(f, "(unknown) ")?,
        }
        write!(
            f,
            "{} rt-allocs {}",
            if self.passthrough {
                "bit-exact"
            } else if self.converting {
                "converted"
            } else {
                "resampled"
            },
            self.realtime_allocs
        )?;
        match (self.sender_reports, self.sender_ppm) {
            (0, _) => write!(f, " no sender reports")?,
            (n, Some(ppm)) => write!(f, " sr {n} sender-clock {ppm:+.1} ppm")?,
            (n, None) => write!(f, " sr {n} sender-clock unknown")?,
        }
        if let Some(c) = self.clock {
            write!(f, " {c}")?;
        }
        match self.sync {
            Some(SyncLine::InCharge {
                error_us,
                aligns,
                skipped_ms,
                inserted_ms,
                margin_ms,
                partly_late,
                device_ppm,
            }) => {
                write!(
                    f,
                    " sync {error_us:+.0} us (aligned {aligns}: skipped {skipped_ms:.1} ms inserted {inserted_ms:.1} ms) device-clock {device_ppm:+.1} ppm"
                )?;
                if let Some(m) = margin_ms {
                    write!(f, " margin {m:.1} ms")?;
                }
                write!(f, " partly-late {partly_late}")?;
            }
            Some(SyncLine::Off(why)) => write!(f, " sync off: {}", why.short())?,
            None => {}
        }
        match &self.speaker {
            Some(name) => write!(f, " speaker {name}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_own_figures_in_milliseconds_of_its_rate() {
        let c = StreamCounters::default();
        c.packets.store(250, Relaxed);
        c.lost.store(2, Relaxed);
        c.late.store(1, Relaxed);
        c.stray.store(7, Relaxed);
        c.concealed_frames.store(320, Relaxed);
        c.rate.store(8000, Relaxed);
        assert_eq!(
            c.read().to_string(),
            "250 packets, 2 lost, 1 late, 7 stray, 40 ms concealed"
        );
        // Before a stream: no rate, no division by zero.
        assert_eq!(
            StreamCounters::default().read().to_string(),
            "0 packets, 0 lost, 0 late, 0 stray, 0 ms concealed"
        );
    }

    #[test]
    fn line_names_the_stream_that_owns_the_speaker() {
        let one = StatsLine::default().to_string();
        assert!(one.ends_with("rt-allocs 0 no sender reports"), "{one}");
        let several = StatsLine {
            speaker: Some("page".into()),
            ..StatsLine::default()
        }
        .to_string();
        assert!(
            several.ends_with("rt-allocs 0 no sender reports speaker page"),
            "{several}"
        );
    }

    #[test]
    fn line_shows_every_figure() {
        let s = PlayoutStats::default();
        s.packets.store(500, Relaxed);
        s.lost.store(3, Relaxed);
        s.duplicates.store(4, Relaxed);
        s.stray.store(9, Relaxed);
        s.overflow.store(7, Relaxed);
        s.stream_rate.store(8000, Relaxed);
        s.concealed_frames.store(480, Relaxed);
        s.depth_us.store(12_500, Relaxed);
        s.target_us.store(10_000, Relaxed);
        s.alsa_delay_us.store(10_000, Relaxed);
        s.drift_uppm.store(-1_234_000_000, Relaxed);
        let mut line = StatsLine {
            dropped_filtered: 2,
            dropped_malformed: 1,
            auth_failed: 4,
            ..Default::default()
        };
        s.read_into(&mut line);
        let text = line.to_string();
        assert!(text.starts_with("packets 500 lost 3 "), "{text}");
        assert!(text.contains(" duplicates 4 stray 9 dropped "), "{text}");
        assert!(
            text.contains("dropped 10 (overflow 7 filtered 2 malformed 1) auth-failed 4 "),
            "{text}"
        );
        assert!(text.contains("concealed 60 ms"), "{text}");
        assert!(
            text.contains("buffer 12.5/10.0 ms alsa 10.0 ms delay 22.5 ms"),
            "{text}"
        );
        assert!(
            text.contains("drift -1234.0 ppm (±0.0) resampled"),
            "{text}"
        );
        s.drift_uncertainty_uppm.store(-1, Relaxed);
        s.passthrough.store(1, Relaxed);
        let mut line = StatsLine::default();
        s.read_into(&mut line);
        let text = line.to_string();
        assert!(
            text.contains("ppm (unknown) bit-exact rt-allocs 0 no sender reports"),
            "{text}"
        );
    }

    #[test]
    fn sync_part_shows_the_margin_once_known() {
        use crate::receive::sync::Why;
        let s = PlayoutStats::default();
        s.stream_rate.store(48_000, Relaxed);
        s.sync_state.store(1, Relaxed);
        s.sync_error_ns.store(3_400, Relaxed);
        s.sync_aligns.store(1, Relaxed);
        s.sync_skipped_frames.store(480, Relaxed);
        s.sync_margin_us.store(NO_MARGIN, Relaxed);
        s.sync_partly_late.store(2, Relaxed);
        s.sync_device_ppb.store(-12_500, Relaxed);
        let mut line = StatsLine::default();
        s.read_into(&mut line);
        assert!(
            line.to_string().ends_with(
                " sync +3 us (aligned 1: skipped 10.0 ms inserted 0.0 ms) device-clock -12.5 ppm partly-late 2"
            ),
            "{line}"
        );
        s.sync_margin_us.store(42_150, Relaxed);
        s.read_into(&mut line);
        assert!(
            line.to_string()
                .ends_with(" ppm margin 42.1 ms partly-late 2"),
            "{line}"
        );
        s.sync_margin_us.store(-7_500, Relaxed);
        s.read_into(&mut line);
        assert!(
            line.to_string().ends_with(" margin -7.5 ms partly-late 2"),
            "late packets: a negative margin\n{line}"
        );
        // Not in charge: no margin, whatever was last published.
        s.sync_state.store(1 + Why::NoReports.code(), Relaxed);
        s.read_into(&mut line);
        assert!(
            line.to_string().ends_with(" sync off: no sender reports"),
            "{line}"
        );
    }

    #[test]
    fn sender_reports_and_the_clock_state_end_the_line() {
        use crate::service::clock::ClockState;
        let mut line = StatsLine {
            sender_reports: 12,
            sender_ppm: Some(-3.25),
            clock: Some(ClockState::Synced {
                est_error_us: 180,
                max_error_us: 5000,
            }),
            ..Default::default()
        };
        assert!(
            line.to_string()
                .ends_with("rt-allocs 0 sr 12 sender-clock -3.2 ppm clock synced ±180 us"),
            "{line}"
        );
        line.sender_ppm = None;
        line.clock = Some(ClockState::Unsynchronised);
        assert!(
            line.to_string()
                .ends_with("rt-allocs 0 sr 12 sender-clock unknown clock unsynchronised"),
            "{line}"
        );
    }
}
