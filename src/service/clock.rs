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
