//! A UDP impairment relay for end-to-end tests (this kernel has no `tc
//! netem`). Input: datagrams sent to its loopback port. Output: the same
//! datagrams sent on to a destination port, impaired by a seeded policy:
//!
//! - loss: each datagram dropped with probability `loss`; and bursts: with
//!   probability `burst_chance` a datagram starts a run of `burst_len`
//!   dropped datagrams.
//! - delay and jitter: every datagram is held `delay_ms` plus a uniform
//!   draw in [0, `jitter_ms`]. A scheduler thread releases each one at its
//!   due time, so a jitter larger than the ptime reorders on its own.
//! - reordering: with probability `reorder`, a datagram is held
//!   `reorder_ms` longer (more than a ptime: it lands after its successor).
//! - duplication: with probability `duplicate`, a second copy follows
//!   `duplicate_ms` later.
//! - a 2x burst: datagrams arriving from `burst2x_at` on are held for
//!   `burst2x_hold`, then the backlog is released at twice real time until
//!   it has caught up (after another `burst2x_hold`): a Wi-Fi stall.
//!
//! The same seed gives the same decisions for the same datagram sequence
//! (a small xorshift PRNG of its own; no crates). It counts what it did
//! ([`RelayCounts`]).
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The impairment policy. `Default` forwards everything untouched.
#[derive(Clone, Debug, Default)]
pub struct Impairment {
    pub seed: u64,
    /// Probability of dropping one datagram (0..1).
    pub loss: f64,
    /// Probability that a datagram starts a burst of `burst_len` losses.
    pub burst_chance: f64,
    pub burst_len: u32,
    /// Fixed one-way delay, ms.
    pub delay_ms: f64,
    /// Extra delay drawn uniformly from [0, jitter_ms], ms.
    pub jitter_ms: f64,
    /// Probability that a datagram is held back by `reorder_ms`.
    pub reorder: f64,
    pub reorder_ms: f64,
    /// Probability that a datagram is sent twice, the copy `duplicate_ms`
    /// after the original.
    pub duplicate: f64,
    pub duplicate_ms: f64,
    /// Start of the 2x burst, from the first datagram; None for none.
    pub burst2x_at: Option<Duration>,
    pub burst2x_hold: Duration,
}

/// What the relay did, for the test's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    pub received: u64,
    /// Dropped by the random loss.
    pub lost_random: u64,
    /// Dropped inside loss bursts.
    pub lost_burst: u64,
    pub reordered: u64,
    pub duplicated: u64,
    /// Held by the 2x burst.
    pub held: u64,
    /// Datagrams (copies included) sent on.
    pub sent: u64,
}

impl RelayCounts {
    pub fn lost(&self) -> u64 {
        self.lost_random + self.lost_burst
    }
}

/// xorshift64*: small, seeded, good enough for test decisions.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        // Never zero (xorshift's fixed point); mix so seeds 1, 2, 3 differ
        // from the first draw on.
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// One decision: when (relative to arrival) each copy goes out; empty
/// when the datagram is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Fate {
    pub release_after: Vec<Duration>,
}

/// The pure policy, separate from sockets so it can be tested alone.
pub struct Policy {
    cfg: Impairment,
    rng: Prng,
    burst_left: u32,
    first: Option<Instant>,
    pub counts: RelayCounts,
}

fn ms(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0) / 1000.0)
}

impl Policy {
    pub fn new(cfg: Impairment) -> Policy {
        Policy {
            rng: Prng::new(cfg.seed),
            cfg,
            burst_left: 0,
            first: None,
            counts: RelayCounts::default(),
        }
    }

    /// Decides the fate of a datagram that arrived at `now`. Every draw is
    /// made for every datagram, whatever the outcome, so one impairment's
    /// setting does not shift another's random sequence.
    pub fn decide(&mut self, now: Instant) -> Fate {
        self.counts.received += 1;
        let first = *self.first.get_or_insert(now);
        let r_loss = self.rng.unit();
        let r_burst = self.rng.unit();
        let r_jitter = self.rng.unit();
        let r_reorder = self.rng.unit();
        let r_dup = self.rng.unit();
        if self.burst_left > 0 {
            self.burst_left -= 1;
            self.counts.lost_burst += 1;
            return Fate {
                release_after: Vec::new(),
            };
        }
        if self.cfg.burst_len > 0 && r_burst < self.cfg.burst_chance {
            self.burst_left = self.cfg.burst_len - 1;
            self.counts.lost_burst += 1;
            return Fate {
                release_after: Vec::new(),
            };
        }
        if r_loss < self.cfg.loss {
            self.counts.lost_random += 1;
            return Fate {
                release_after: Vec::new(),
            };
        }
        let mut after = ms(self.cfg.delay_ms + r_jitter * self.cfg.jitter_ms);
        if r_reorder < self.cfg.reorder {
            self.counts.reordered += 1;
            after += ms(self.cfg.reorder_ms);
        }
        if let Some(at) = self.cfg.burst2x_at {
            // Arrivals in [s, s + 2h) leave at s + h + (a − s)/2: nothing
            // for h, then twice real time until caught up at s + 2h.
            let hold = self.cfg.burst2x_hold;
            let since = now.duration_since(first);
            if since >= at && since < at + 2 * hold {
                let into = since - at;
                after += hold - into / 2;
                self.counts.held += 1;
            }
        }
        let mut release_after = vec![after];
        if r_dup < self.cfg.duplicate {
            self.counts.duplicated += 1;
            release_after.push(after + ms(self.cfg.duplicate_ms));
        }
        Fate { release_after }
    }
}

struct Pending {
    due: Instant,
    order: u64,
    /// Which arrival it is (index into the relay's arrival times).
    arrival: usize,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.order) == (o.due, o.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(o.due, o.order))
    }
}

type Schedule = Arc<(Mutex<BinaryHeap<Reverse<Pending>>>, Condvar)>;

/// The running relay: a receiving thread applies the policy, a scheduler
/// thread sends each datagram at its due time.
pub struct Relay {
    /// Where the sender should send.
    pub addr: SocketAddr,
    counts: Arc<Mutex<RelayCounts>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    schedule: Schedule,
    timing: Arc<Mutex<Timing>>,
}

/// When each datagram came in and went out, to tell the delay the policy
/// asked for from the delay this machine added on its own (a sender or a
/// relay thread scheduled late on a loaded host).
#[derive(Default)]
struct Timing {
    arrivals: Vec<Instant>,
    /// (arrival index, due, sent)
    departures: Vec<(usize, Instant, Instant)>,
}

impl Timing {
    /// The worst delay, beyond the policy's, of the datagrams sent in
    /// [from, to]: how late each arrived against the sender's steady pace
    /// (the median gap between arrivals, anchored at the earliest arrival
    /// so far) plus how late the scheduler sent it after its due time.
    fn host_delay(&self, from: Instant, to: Instant) -> Duration {
        let a = &self.arrivals;
        if a.len() < 3 {
            return Duration::ZERO;
        }
        let mut gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        gaps.sort_by(f64::total_cmp);
        let gap = gaps[gaps.len() / 2];
        let mut anchor = f64::INFINITY;
        let arrival_late: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let paced = (*t - a[0]).as_secs_f64() - i as f64 * gap;
                anchor = anchor.min(paced);
                paced - anchor
            })
            .collect();
        self.departures
            .iter()
            .filter(|(_, _, sent)| (from..=to).contains(sent))
            .map(|&(i, due, sent)| {
                Duration::from_secs_f64(arrival_late.get(i).copied().unwrap_or(0.0))
                    + sent.saturating_duration_since(due)
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

impl Relay {
    /// Binds 127.0.0.1:0 and forwards to `to` (a loopback address).
    pub fn start(to: SocketAddr, cfg: Impairment) -> Relay {
        assert!(to.ip().is_loopback(), "the relay only sends to loopback");
        let inbound = UdpSocket::bind("127.0.0.1:0").expect("relay socket");
        inbound
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("relay timeout");
        let addr = inbound.local_addr().expect("relay address");
        let outbound = inbound.try_clone().expect("relay socket clone");
        let counts = Arc::new(Mutex::new(RelayCounts::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let schedule: Schedule = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
        let timing = Arc::new(Mutex::new(Timing::default()));

        let rx = {
            let (counts, stop, schedule) = (counts.clone(), stop.clone(), schedule.clone());
            let timing = timing.clone();
            std::thread::Builder::new()
                .name("relay-rx".into())
                .spawn(move || {
                    let mut policy = Policy::new(cfg);
                    let mut buf = [0u8; 65536];
                    let mut order = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let n = match inbound.recv(&mut buf) {
                            Ok(n) => n,
                            Err(_) => continue,
                        };
                        let now = Instant::now();
                        let fate = policy.decide(now);
                        let arrival = {
                            let mut t = timing.lock().expect("relay timing");
                            t.arrivals.push(now);
                            t.arrivals.len() - 1
                        };
                        {
                            let (heap, cv) = &*schedule;
                            let mut heap = heap.lock().expect("relay schedule");
                            for after in fate.release_after {
                                order += 1;
                                heap.push(Reverse(Pending {
                                    due: now + after,
                                    order,
                                    arrival,
                                    data: buf[..n].to_vec(),
                                }));
                            }
                            cv.notify_one();
                        }
                        *counts.lock().expect("relay counts") = policy.counts;
                    }
                })
                .expect("relay thread")
        };
        let tx = {
            let (sent, stop, schedule) = (sent.clone(), stop.clone(), schedule.clone());
            let timing = timing.clone();
            std::thread::Builder::new()
                .name("relay-tx".into())
                .spawn(move || {
                    let (heap, cv) = &*schedule;
                    let mut guard = heap.lock().expect("relay schedule");
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        match guard.peek() {
                            Some(Reverse(p)) if p.due <= now => {
                                let Some(Reverse(p)) = guard.pop() else {
                                    continue;
                                };
                                let _ = outbound.send_to(&p.data, to);
                                sent.fetch_add(1, Ordering::Relaxed);
                                let at = Instant::now();
                                timing
                                    .lock()
                                    .expect("relay timing")
                                    .departures
                                    .push((p.arrival, p.due, at));
                            }
                            Some(Reverse(p)) => {
                                let wait = p.due - now;
                                guard = cv.wait_timeout(guard, wait).expect("relay wait").0;
                            }
                            None => {
                                guard = cv
                                    .wait_timeout(guard, Duration::from_millis(20))
                                    .expect("relay wait")
                                    .0;
                            }
                        }
                    }
                })
                .expect("relay thread")
        };
        Relay {
            addr,
            counts,
            sent,
            stop,
            threads: vec![rx, tx],
            schedule,
            timing,
        }
    }

    /// The worst delay this machine added, beyond the impairment asked
    /// for, to a datagram sent in [from, to]: evidence from outside the
    /// receiver that the link was worse than the condition under test.
    pub fn host_delay(&self, from: Instant, to: Instant) -> Duration {
        self.timing
            .lock()
            .expect("relay timing")
            .host_delay(from, to)
    }

    pub fn counts(&self) -> RelayCounts {
        RelayCounts {
            sent: self.sent.load(Ordering::Relaxed),
            ..*self.counts.lock().expect("relay counts")
        }
    }

    /// Stops both threads (datagrams still scheduled are discarded).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.schedule.1.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fates(cfg: Impairment, n: usize, ptime: Duration) -> (Vec<Fate>, RelayCounts) {
        let mut p = Policy::new(cfg);
        let t0 = Instant::now();
        let v = (0..n).map(|k| p.decide(t0 + ptime * k as u32)).collect();
        (v, p.counts)
    }

    const PTIME: Duration = Duration::from_millis(20);

    #[test]
    fn host_delay_is_lateness_against_the_senders_pace_plus_the_schedulers() {
        let t0 = Instant::now();
        let ms = |m: u64| Duration::from_millis(m);
        let mut t = Timing::default();
        // Arrivals every 20 ms, the 5th 7 ms late (and the next on time).
        for i in 0..50u64 {
            t.arrivals
                .push(t0 + ms(20 * i + if i == 5 { 7 } else { 0 }));
        }
        // Each sent 10 ms after it arrived (the policy's delay) and due
        // then, except the 30th, sent 3 ms after its due time.
        for (i, &a) in t.arrivals.clone().iter().enumerate() {
            let due = a + ms(10);
            let sent = due + if i == 30 { ms(3) } else { ms(0) };
            t.departures.push((i, due, sent));
        }
        let end = t0 + ms(2000);
        let d = t.host_delay(t0, end);
        assert!((d.as_secs_f64() - 0.007).abs() < 1e-6, "{d:?}");
        // Only the datagrams sent inside the window count.
        let d = t.host_delay(t0 + ms(300), end);
        assert!((d.as_secs_f64() - 0.003).abs() < 1e-6, "{d:?}");
        let d = t.host_delay(t0 + ms(700), end);
        assert_eq!(d, Duration::ZERO);
    }

    #[test]
    fn same_seed_same_fates_other_seed_differs() {
        let cfg = Impairment {
            seed: 7,
            loss: 0.1,
            jitter_ms: 30.0,
            duplicate: 0.05,
            ..Default::default()
        };
        let (a, _) = fates(cfg.clone(), 500, PTIME);
        let (b, _) = fates(cfg.clone(), 500, PTIME);
        let (c, _) = fates(Impairment { seed: 8, ..cfg }, 500, PTIME);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn random_loss_rate_near_setting() {
        let (f, c) = fates(
            Impairment {
                seed: 1,
                loss: 0.05,
                ..Default::default()
            },
            20_000,
            PTIME,
        );
        let dropped = f.iter().filter(|f| f.release_after.is_empty()).count() as u64;
        assert_eq!(dropped, c.lost_random);
        assert!((800..1200).contains(&dropped), "{dropped} of 20000");
    }

    #[test]
    fn bursts_are_runs_of_burst_len() {
        let (f, c) = fates(
            Impairment {
                seed: 3,
                burst_chance: 0.01,
                burst_len: 5,
                ..Default::default()
            },
            10_000,
            PTIME,
        );
        let mut runs = Vec::new();
        let mut run = 0;
        for x in &f {
            if x.release_after.is_empty() {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        assert!(!runs.is_empty());
        // Back-to-back bursts merge into multiples of 5, never less.
        assert!(runs.iter().all(|r| r % 5 == 0), "{runs:?}");
        assert_eq!(runs.iter().sum::<u64>(), c.lost_burst);
    }

    #[test]
    fn jitter_stays_within_bounds_and_reorders() {
        let (f, _) = fates(
            Impairment {
                seed: 4,
                delay_ms: 5.0,
                jitter_ms: 50.0,
                ..Default::default()
            },
            2000,
            PTIME,
        );
        let mut release: Vec<Duration> = Vec::new();
        for (k, x) in f.iter().enumerate() {
            let d = x.release_after[0];
            assert!(d >= ms(5.0) && d <= ms(55.0), "{d:?}");
            release.push(PTIME * k as u32 + d);
        }
        let inversions = release.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 100, "{inversions} reorderings of 2000");
    }

    #[test]
    fn duplicates_follow_the_original() {
        let (f, c) = fates(
            Impairment {
                seed: 5,
                duplicate: 0.05,
                duplicate_ms: 3.0,
                ..Default::default()
            },
            4000,
            PTIME,
        );
        let dups = f.iter().filter(|x| x.release_after.len() == 2).count() as u64;
        assert_eq!(dups, c.duplicated);
        assert!((120..280).contains(&dups), "{dups} of 4000");
        for x in f.iter().filter(|x| x.release_after.len() == 2) {
            assert_eq!(x.release_after[1] - x.release_after[0], ms(3.0));
        }
    }

    #[test]
    fn burst2x_holds_then_releases_at_twice_real_time() {
        let hold = Duration::from_millis(400);
        let (f, c) = fates(
            Impairment {
                seed: 6,
                burst2x_at: Some(Duration::from_secs(1)),
                burst2x_hold: hold,
                ..Default::default()
            },
            150,
            PTIME,
        );
        let release: Vec<Duration> = f
            .iter()
            .enumerate()
            .map(|(k, x)| PTIME * k as u32 + x.release_after[0])
            .collect();
        // Packets 50..90 arrive in [1.0 s, 1.8 s): held.
        assert_eq!(c.held, 40);
        assert_eq!(release[49], PTIME * 49);
        assert_eq!(release[50], Duration::from_millis(1400));
        // Released every 10 ms (twice real time) until caught up.
        assert_eq!(release[51] - release[50], Duration::from_millis(10));
        assert_eq!(release[89], Duration::from_millis(1790));
        assert_eq!(release[90], PTIME * 90);
        assert!(release.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn relay_forwards_over_loopback_with_counts() {
        let sink = UdpSocket::bind("127.0.0.1:0").expect("sink");
        sink.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let relay = Relay::start(
            sink.local_addr().expect("addr"),
            Impairment {
                seed: 9,
                duplicate: 1.0,
                delay_ms: 30.0,
                ..Default::default()
            },
        );
        let src = UdpSocket::bind("127.0.0.1:0").expect("src");
        let t0 = Instant::now();
        src.send_to(b"hello", relay.addr).expect("send");
        let mut buf = [0u8; 16];
        let n = sink.recv(&mut buf).expect("first copy");
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert_eq!(&buf[..n], b"hello");
        let n = sink.recv(&mut buf).expect("second copy");
        assert_eq!(&buf[..n], b"hello");
        // The count follows the send by a moment.
        let deadline = Instant::now() + Duration::from_secs(1);
        while relay.counts().sent < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let c = relay.counts();
        assert_eq!((c.received, c.duplicated, c.sent), (1, 1, 2));
    }
}
