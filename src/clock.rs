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
