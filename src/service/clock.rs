//! The one clock every stage stamps and measures with: CLOCK_MONOTONIC in
//! nanoseconds (never jumps with NTP steps; the ALSA device and the packet
//! arrival times are compared on it).

/// Nanoseconds on the monotonic clock.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        // CLOCK_MONOTONIC cannot fail on Linux; 0 keeps the type total.
        Err(_) => 0,
    }
}

/// Nanoseconds since the Unix epoch on CLOCK_REALTIME: the wall clock
/// that NTP or PTP keeps in step across machines (RTCP sender reports
/// carry it). It can step; never measure intervals with it.
pub fn realtime_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME) {
        Ok(ts) => (ts.tv_sec().max(0) as u64) * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// Sleeps until `deadline_ns` on the monotonic clock. Returns early when a
/// signal interrupts the sleep, so the caller can check its stop flag.
pub fn sleep_until(deadline_ns: u64) {
    use nix::sys::time::TimeSpec;
    use nix::time::{clock_nanosleep, ClockId, ClockNanosleepFlags};
    let ts = TimeSpec::new(
        (deadline_ns / 1_000_000_000) as _,
        (deadline_ns % 1_000_000_000) as _,
    );
    // An absolute deadline: a wake-up that comes late does not shift the
    // next one. EINTR is the only error on Linux; the caller loops.
    let _ = clock_nanosleep(
        ClockId::CLOCK_MONOTONIC,
        ClockNanosleepFlags::TIMER_ABSTIME,
        &ts,
    );
}

/// The kernel's view of the wall clock's synchronisation (`adjtimex`),
/// as chrony, ntpd or linuxptp's phc2sys leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockState {
    /// A time service disciplines the clock; its estimated error and the
    /// bound on it, in microseconds.
    Synced {
        est_error_us: i64,
        max_error_us: i64,
    },
    /// No time service has set it synchronised (STA_UNSYNC), or the
    /// kernel flags a clock fault: CLOCK_REALTIME may be off by anything.
    Unsynchronised,
}

impl core::fmt::Display for ClockState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClockState::Synced { est_error_us, .. } => {
                write!(f, "clock synced ±{est_error_us} us")
            }
            ClockState::Unsynchronised => write!(f, "clock unsynchronised"),
        }
    }
}

/// `adjtimex`'s return value, status bits and error fields read as a
/// state. The kernel returns TIME_ERROR while STA_UNSYNC or a PPS fault
/// is set (kernel/time/ntp.c), and sets STA_UNSYNC itself once the
/// maximum error passes 16 s without an update; STA_CLOCKERR is a fault of
/// the clock hardware.
pub fn decode_clock_state(ret: i32, status: i32, esterror: i64, maxerror: i64) -> ClockState {
    use nix::libc::{STA_CLOCKERR, STA_UNSYNC, TIME_ERROR};
    if ret < 0 || ret == TIME_ERROR || status & (STA_UNSYNC | STA_CLOCKERR) != 0 {
        return ClockState::Unsynchronised;
    }
    ClockState::Synced {
        est_error_us: esterror.max(0),
        max_error_us: maxerror.max(0),
    }
}

/// Reads the kernel's clock state without changing anything (modes 0,
/// which needs no privilege). A system call: not for the realtime thread.
pub fn clock_state() -> ClockState {
    // SAFETY: timex is plain data; zeroed it asks for no adjustment
    // (modes 0), and adjtimex only writes into the struct it is given.
    let mut tx: nix::libc::timex = unsafe { core::mem::zeroed() };
    let ret = unsafe { nix::libc::adjtimex(&mut tx) };
    // c_long is 32 bits on armhf (32-bit Raspberry Pi OS), 64 here.
    #[allow(clippy::useless_conversion)]
    decode_clock_state(
        ret,
        tx.status,
        i64::from(tx.esterror),
        i64::from(tx.maxerror),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc::{STA_CLOCKERR, STA_NANO, STA_PLL, STA_UNSYNC, TIME_ERROR, TIME_OK};

    #[test]
    fn status_bits_decode() {
        // chrony synchronised: PLL on, TIME_OK, 120 us estimated error.
        assert_eq!(
            decode_clock_state(TIME_OK, STA_PLL | STA_NANO, 120, 4_500),
            ClockState::Synced {
                est_error_us: 120,
                max_error_us: 4_500
            }
        );
        // No time service: the boot default, STA_UNSYNC with TIME_ERROR.
        assert_eq!(
            decode_clock_state(TIME_ERROR, STA_UNSYNC, 1_600_000, 16_000_000),
            ClockState::Unsynchronised
        );
        // The bit alone, or a clock fault, is enough; so is TIME_ERROR or
        // a failed call.
        assert_eq!(
            decode_clock_state(TIME_OK, STA_UNSYNC, 0, 0),
            ClockState::Unsynchronised
        );
        assert_eq!(
            decode_clock_state(TIME_OK, STA_PLL | STA_CLOCKERR, 0, 0),
            ClockState::Unsynchronised
        );
        assert_eq!(
            decode_clock_state(TIME_ERROR, STA_PLL, 5, 5),
            ClockState::Unsynchronised
        );
        assert_eq!(decode_clock_state(-1, 0, 5, 5), ClockState::Unsynchronised);
        // Leap second states (TIME_INS = 1 … TIME_WAIT = 4) are synced.
        assert!(matches!(
            decode_clock_state(1, STA_PLL, 7, 9),
            ClockState::Synced { .. }
        ));
    }

    #[test]
    fn state_reads_as_the_line_says_it() {
        assert_eq!(
            ClockState::Synced {
                est_error_us: 250,
                max_error_us: 9_000
            }
            .to_string(),
            "clock synced ±250 us"
        );
        assert_eq!(
            ClockState::Unsynchronised.to_string(),
            "clock unsynchronised"
        );
        // This machine's own clock reads as one or the other, whatever it is.
        let _ = clock_state().to_string();
    }
}
