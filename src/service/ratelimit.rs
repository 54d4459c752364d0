//! Rate limiting for log lines about bad input and per-packet events: at
//! most `burst` lines per `interval`, and a count of what was suppressed so
//! the next line that gets through can say so. Plain data, clock passed in.

/// Allows `burst` events per window of `interval_ns`; counts the rest.
#[derive(Debug, Clone)]
pub struct RateLimit {
    interval_ns: u64,
    burst: u32,
    window_start_ns: u64,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(interval_ns: u64, burst: u32) -> Self {
        RateLimit {
            interval_ns,
            burst,
            window_start_ns: 0,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// One line every 10 s after a burst of 5: the default for bad input.
    pub const fn default_for_input() -> Self {
        Self::new(10_000_000_000, 5)
    }

    /// Returns `Some(suppressed_since_last)` when the event may be logged
    /// now, `None` when it must be dropped (and is counted).
    pub fn check(&mut self, now_ns: u64) -> Option<u64> {
        if self.in_window == 0 || now_ns.saturating_sub(self.window_start_ns) >= self.interval_ns {
            self.window_start_ns = now_ns;
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            let s = self.suppressed;
            self.suppressed = 0;
            Some(s)
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppressed_then_reports_count() {
        let mut rl = RateLimit::new(1000, 2);
        assert_eq!(rl.check(0), Some(0));
        assert_eq!(rl.check(10), Some(0));
        assert_eq!(rl.check(20), None);
        assert_eq!(rl.check(30), None);
        assert_eq!(rl.check(1000), Some(2));
    }
}
