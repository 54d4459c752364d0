//! The clock estimator allocates nothing after `new`: a counting global
//! allocator counts the allocations made while it is fed a jittery stream
//! with loss, reordering, a timestamp wrap, a route change, a sender
//! reset, a device underrun and reopen, and garbage.

mod common;

use netspeaker::receive::clock::{ClockConfig, ClockEstimator};

#[global_allocator]
static GLOBAL: common::alloc::Counting = common::alloc::Counting;

struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_minute_of_everything_allocates_nothing() {
    let mut c = ClockEstimator::new(&ClockConfig::default()).unwrap();
    let mut rng = Lcg(1);
    common::alloc::reset();
    common::alloc::count_this_thread(true);
    let t0 = 1_000_000_000_000u64;
    let mut ts = u32::MAX - 48_000 * 20;
    let mut pending: Option<(u64, u32)> = None;
    let mut frames = 0u64;
    for k in 0..3000u64 {
        // 20 ms packets, sender 1000 ppm fast, 0–60 ms jitter, a 30 ms
        // route change at 30 s, pairs swapped now and then.
        let send_ns = (k as f64 * 0.02 / 1.001 * 1e9) as u64;
        let route_ns = if k >= 1500 { 30_000_000 } else { 0 };
        let arrival = t0 + send_ns + route_ns + (rng.uniform() * 60e6) as u64;
        if rng.uniform() >= 0.01 {
            if rng.uniform() < 0.1 {
                if let Some((a, t)) = pending.replace((arrival, ts)) {
                    c.on_packet(a, t, 48_000);
                }
            } else {
                c.on_packet(arrival, ts, 48_000);
                if let Some((a, t)) = pending.take() {
                    c.on_packet(a.max(arrival), t, 48_000);
                }
            }
        }
        ts = ts.wrapping_add(960);
        for i in 0..4u64 {
            let t = send_ns + i * 5_000_000;
            if k == 2000 && i == 0 {
                frames -= 480; // an underrun
            }
            frames += 240;
            c.on_device(t0 + t, frames, 48_000);
        }
        if k == 2500 {
            c.reset();
            c.reset_device();
            frames = 0;
        }
        let _ = (c.ratio_ppm(), c.sender_ppm(), c.device_ppm(), c.metrics());
    }
    for _ in 0..10_000 {
        let v = (rng.uniform() * u64::MAX as f64) as u64;
        c.on_packet(v, v as u32, (v >> 40) as u32 % 3);
        c.on_device(v, v.rotate_left(7), (v >> 20) as u32 % 3 * 24_000);
    }
    common::alloc::count_this_thread(false);
    assert!(c.metrics().packets > 2500);
    assert_eq!(common::alloc::take(), 0, "the estimator allocated");
}
