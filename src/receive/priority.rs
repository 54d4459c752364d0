//! Paging priorities: which of several streams owns the speaker, and the
//! gain every stream is mixed at. Plain single-threaded code, fed the
//! streams' audio arrivals and a clock; the playout thread asks it once
//! per period. Tested in simulated time.
//!
//! Input: `on_audio(stream, now)` for every audio packet a stream's
//! source lock admitted (strays, BYEs and held candidates do not count:
//! they play nothing). Output: the owner (`owner()`), a change of owner
//! as a value of `update`, and per stream a gain ramp (`mix_into`).
//!
//! Policy: a stream is *live* from its first admitted packet until it has
//! been quiet (no packet) for `hold_ms`. The live stream of the highest
//! priority owns the speaker at once (a page's first packet takes it);
//! among equal priorities the owner keeps it, and a new owner among equals
//! is the one live the longest. Every other stream is ducked by
//! `duck` (or muted); with no live stream nothing is ducked. A gain that
//! changes while its stream sounds moves linearly over `ramp_ms` (no
//! click); a stream that was not live takes its gain at once, so the first
//! frame of a page is heard at full level and music that starts under a
//! page starts ducked.

use core::fmt;

/// Most streams a receiver takes (`--stream` given this many times).
pub const MAX_STREAMS: usize = 8;

/// What a lower-priority stream is turned down to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Duck {
    /// Down by this many dB (negative or zero).
    Db(f32),
    /// Silent.
    Mute,
}

impl Duck {
    /// The linear gain.
    pub fn gain(self) -> f32 {
        match self {
            Duck::Db(db) => libm::powf(10.0, db / 20.0),
            Duck::Mute => 0.0,
        }
    }
}

impl fmt::Display for Duck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Duck::Db(db) => write!(f, "ducked {db:+.0} dB"),
            Duck::Mute => f.write_str("muted"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ArbiterConfig {
    /// `--duck-db`: what the streams that do not own the speaker get.
    pub duck: Duck,
    /// `--hold-ms`: quiet time after which a stream is no longer live
    /// and gives the speaker back.
    pub hold_ms: u32,
    /// Length of a gain change on a sounding stream.
    pub ramp_ms: u32,
}

impl Default for ArbiterConfig {
    fn default() -> Self {
        ArbiterConfig {
            duck: Duck::Db(-30.0),
            hold_ms: 1000,
            ramp_ms: 20,
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum PriorityError {
    NoStreams,
    TooManyStreams(usize),
    DuckAboveZero(f32),
    HoldOutOfRange(u32),
    RampOutOfRange(u32),
}

impl fmt::Display for PriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PriorityError::NoStreams => f.write_str("no stream to play: give --listen or --stream"),
            PriorityError::TooManyStreams(n) => write!(
                f,
                "{n} streams given; at most {MAX_STREAMS} --stream options are taken"
            ),
            PriorityError::DuckAboveZero(db) => write!(
                f,
                "--duck-db {db}: ducking turns a stream down, give 0 or less (or off to mute)"
            ),
            PriorityError::HoldOutOfRange(ms) => {
                write!(f, "--hold-ms {ms}: give 0 to 600000 milliseconds")
            }
            PriorityError::RampOutOfRange(ms) => {
                write!(f, "gain ramp of {ms} ms: must be 1 to 1000 ms")
            }
        }
    }
}

impl std::error::Error for PriorityError {}

/// The speaker went from one stream to another (`None`: no live stream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerChange {
    pub from: Option<usize>,
    pub to: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Lane {
    priority: u8,
    /// Arrival of the last admitted audio packet.
    last_audio_ns: Option<u64>,
    /// When the current live run began.
    live_since_ns: u64,
    live: bool,
    /// Not live before this update: nothing of it has sounded yet.
    fresh: bool,
    /// The gain now, and where it is going.
    gain: f32,
    target: f32,
}

/// The arbitration between streams, and their gains.
pub struct Arbiter {
    lanes: heapless::Vec<Lane, MAX_STREAMS>,
    owner: Option<usize>,
    duck_gain: f32,
    hold_ns: u64,
    ramp_ms: u32,
}

impl Arbiter {
    /// `priorities`: one per stream, in stream order (higher wins).
    pub fn new(config: &ArbiterConfig, priorities: &[u8]) -> Result<Arbiter, PriorityError> {
        if priorities.is_empty() {
            return Err(PriorityError::NoStreams);
        }
        if let Duck::Db(db) = config.duck {
            // NaN is refused too.
            if db.is_nan() || db > 0.0 {
                return Err(PriorityError::DuckAboveZero(db));
            }
        }
        if config.hold_ms > 600_000 {
            return Err(PriorityError::HoldOutOfRange(config.hold_ms));
        }
        if !(1..=1000).contains(&config.ramp_ms) {
            return Err(PriorityError::RampOutOfRange(config.ramp_ms));
        }
        let mut lanes = heapless::Vec::new();
        for &priority in priorities {
            lanes
                .push(Lane {
                    priority,
                    gain: 1.0,
                    target: 1.0,
                    ..Lane::default()
                })
                .map_err(|_| PriorityError::TooManyStreams(priorities.len()))?;
        }
        Ok(Arbiter {
            lanes,
            owner: None,
            duck_gain: config.duck.gain(),
            hold_ns: config.hold_ms as u64 * 1_000_000,
            ramp_ms: config.ramp_ms,
        })
    }

    pub fn streams(&self) -> usize {
        self.lanes.len()
    }

    /// The stream that owns the speaker, if any is live.
    pub fn owner(&self) -> Option<usize> {
        self.owner
    }

    /// An audio packet of `stream` was admitted, arrived at `now_ns`.
    pub fn on_audio(&mut self, stream: usize, now_ns: u64) {
        if let Some(lane) = self.lanes.get_mut(stream) {
            lane.last_audio_ns = Some(lane.last_audio_ns.map_or(now_ns, |t| t.max(now_ns)));
        }
    }

    /// Recomputes who is live and who owns the speaker at `now_ns`; call
    /// after the period's packets were fed, before mixing.
    pub fn update(&mut self, now_ns: u64) -> Option<OwnerChange> {
        let hold = self.hold_ns;
        for lane in self.lanes.iter_mut() {
            let live = lane
                .last_audio_ns
                .is_some_and(|t| now_ns.saturating_sub(t) < hold.max(1));
            lane.fresh = live && !lane.live;
            if lane.fresh {
                lane.live_since_ns = now_ns;
            }
            lane.live = live;
        }
        let current = self
            .owner
            .filter(|&i| self.lanes.get(i).is_some_and(|l| l.live));
        let mut best: Option<usize> = current;
        for (i, lane) in self.lanes.iter().enumerate() {
            if !lane.live {
                continue;
            }
            best = match best.and_then(|b| self.lanes.get(b).map(|l| (b, l))) {
                None => Some(i),
                Some((b, l)) => {
                    let wins = lane.priority > l.priority
                        || (lane.priority == l.priority
                            && Some(b) != current
                            && lane.live_since_ns < l.live_since_ns);
                    Some(if wins { i } else { b })
                }
            };
        }
        let change = (best != self.owner).then_some(OwnerChange {
            from: self.owner,
            to: best,
        });
        self.owner = best;
        let duck = self.duck_gain;
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            lane.target = match best {
                Some(o) if o != i => duck,
                _ => 1.0,
            };
            // Nothing of it sounds yet: no ramp to hear.
            if !lane.live || lane.fresh {
                lane.gain = lane.target;
            }
        }
        change
    }

    /// The gain `stream` is heading for.
    pub fn target_gain(&self, stream: usize) -> f32 {
        self.lanes.get(stream).map_or(0.0, |l| l.target)
    }

    /// The gain `stream` is at now.
    pub fn gain(&self, stream: usize) -> f32 {
        self.lanes.get(stream).map_or(0.0, |l| l.gain)
    }

    /// Adds `input` (interleaved, `channels` per frame, at `rate`) times
    /// the stream's gain into `out`, moving the gain toward its target by
    /// one ramp step per frame.
    pub fn mix_into(
        &mut self,
        stream: usize,
        input: &[f32],
        out: &mut [f32],
        channels: usize,
        rate: u32,
    ) {
        let Some(lane) = self.lanes.get_mut(stream) else {
            return;
        };
        let ch = channels.max(1);
        let step = 1.0 / (self.ramp_ms as f32 * rate.max(1) as f32 / 1000.0).max(1.0);
        let (mut gain, target) = (lane.gain, lane.target);
        for (o, i) in out.chunks_exact_mut(ch).zip(input.chunks_exact(ch)) {
            if gain != target {
                gain = if gain < target {
                    (gain + step).min(target)
                } else {
                    (gain - step).max(target)
                };
            }
            if gain == 1.0 {
                // Exactly the stream's samples: a lone stream stays
                // bit-exact through the mix.
                for (o, i) in o.iter_mut().zip(i) {
                    *o += *i;
                }
            } else {
                for (o, i) in o.iter_mut().zip(i) {
                    *o += *i * gain;
                }
            }
        }
        lane.gain = gain;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const RATE: u32 = 48_000;

    fn arbiter(priorities: &[u8]) -> Arbiter {
        Arbiter::new(&ArbiterConfig::default(), priorities).expect("arbiter")
    }

    /// Feeds 20 ms packets of `streams` from `from_ms` to `to_ms` and
    /// updates every 5 ms; returns the owner changes with their times.
    fn run(
        a: &mut Arbiter,
        from_ms: u64,
        to_ms: u64,
        sending: impl Fn(u64) -> Vec<usize>,
    ) -> Vec<(u64, OwnerChange)> {
        let mut changes = Vec::new();
        let mut t = from_ms;
        while t < to_ms {
            if t % 20 == 0 {
                for s in sending(t) {
                    a.on_audio(s, t * MS);
                }
            }
            if let Some(c) = a.update(t * MS) {
                changes.push((t, c));
            }
            t += 5;
        }
        changes
    }

    /// One 5 ms period of a constant 1.0 signal through the mix: the
    /// last frame's level.
    fn period_level(a: &mut Arbiter, stream: usize) -> f32 {
        let frames = RATE as usize / 200;
        let input = vec![1.0f32; frames * 2];
        let mut out = vec![0.0f32; frames * 2];
        a.mix_into(stream, &input, &mut out, 2, RATE);
        out[out.len() - 1]
    }

    #[test]
    fn page_takes_the_speaker_at_its_first_packet() {
        let mut a = arbiter(&[1, 9]);
        let music_only = run(&mut a, 0, 1000, |_| vec![0]);
        assert_eq!(
            music_only,
            vec![(
                0,
                OwnerChange {
                    from: None,
                    to: Some(0)
                }
            )]
        );
        // The page's first packet at 1000 ms: owner in the same update.
        a.on_audio(1, 1000 * MS);
        assert_eq!(
            a.update(1000 * MS),
            Some(OwnerChange {
                from: Some(0),
                to: Some(1)
            })
        );
        // Not live before: full level from its first frame, no ramp in.
        assert_eq!(a.gain(1), 1.0);
        assert_eq!(period_level(&mut a, 1), 1.0);
        // Music ramps down over 20 ms to -30 dB.
        let duck = 10f32.powf(-1.5);
        assert!((a.target_gain(0) - duck).abs() < 1e-6);
        let levels: Vec<f32> = (0..5).map(|_| period_level(&mut a, 0)).collect();
        assert!(levels[0] < 1.0 && levels[0] > 0.7, "{levels:?}");
        assert!(levels[2] > duck, "not down before 20 ms: {levels:?}");
        assert!((levels[3] - duck).abs() < 1e-6, "down at 20 ms: {levels:?}");
        assert!((levels[4] - duck).abs() < 1e-6);
    }

    #[test]
    fn music_comes_back_after_hold_of_quiet() {
        let mut a = arbiter(&[1, 9]);
        // Music throughout; the page from 1000 to 3000 ms (last packet at
        // 2980 ms).
        let changes = run(&mut a, 0, 6000, |t| {
            let mut s = vec![0];
            if (1000..3000).contains(&t) {
                s.push(1);
            }
            s
        });
        let back = OwnerChange {
            from: Some(1),
            to: Some(0),
        };
        let at = changes.iter().find(|(_, c)| *c == back).map(|(t, _)| *t);
        // Quiet for hold (1000 ms) after the last packet at 2980 ms.
        assert_eq!(at, Some(3980));
        assert_eq!(changes.len(), 3, "{changes:?}");
        // It comes back ramped: 20 ms from -30 dB to full.
        assert_eq!(a.target_gain(0), 1.0);
        assert_eq!(a.gain(0), 1.0, "a live stream ramps in mix_into only");
    }

    #[test]
    fn ducked_music_ramps_back_up_over_20_ms() {
        let mut a = arbiter(&[1, 9]);
        run(
            &mut a,
            0,
            2000,
            |t| if t < 1000 { vec![0, 1] } else { vec![0] },
        );
        // The page was last heard at 980 ms: at 1975 still held.
        assert_eq!(a.owner(), Some(0), "the page released at 1980 ms");
        let mut a = arbiter(&[1, 9]);
        run(&mut a, 0, 1000, |_| vec![0, 1]);
        for _ in 0..10 {
            period_level(&mut a, 0);
        }
        assert!(a.gain(0) < 0.04);
        run(&mut a, 1000, 1985, |_| vec![0]);
        assert_eq!(a.owner(), Some(0));
        let up: Vec<f32> = (0..5).map(|_| period_level(&mut a, 0)).collect();
        assert!(up[0] < 0.5, "{up:?}");
        assert!(up[2] < 1.0, "{up:?}");
        assert_eq!(up[3], 1.0, "{up:?}");
    }

    #[test]
    fn equal_priority_keeps_the_stream_already_playing() {
        let mut a = arbiter(&[5, 5]);
        run(&mut a, 0, 500, |_| vec![1]);
        assert_eq!(a.owner(), Some(1));
        let changes = run(&mut a, 500, 2000, |_| vec![0, 1]);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(a.owner(), Some(1));
        // The newcomer is ducked, and started ducked (it was not live).
        assert!(a.gain(0) < 0.04);
        // The owner stops: the other equal one takes over after the hold.
        let changes = run(&mut a, 2000, 3100, |_| vec![0]);
        assert_eq!(
            changes,
            vec![(
                2980,
                OwnerChange {
                    from: Some(1),
                    to: Some(0)
                }
            )]
        );
    }

    #[test]
    fn among_equals_a_new_owner_is_the_one_live_longest() {
        let mut a = arbiter(&[5, 5, 9]);
        run(&mut a, 0, 100, |_| vec![2]);
        run(&mut a, 100, 200, |_| vec![2, 1]);
        run(&mut a, 200, 300, |_| vec![2, 1, 0]);
        assert_eq!(a.owner(), Some(2));
        run(&mut a, 300, 1400, |_| vec![1, 0]);
        assert_eq!(a.owner(), Some(1), "stream 1 was live first");
    }

    #[test]
    fn lower_priority_never_takes_over_a_live_higher_one() {
        let mut a = arbiter(&[9, 1]);
        run(&mut a, 0, 500, |_| vec![0]);
        let changes = run(&mut a, 500, 3000, |_| vec![0, 1]);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(a.owner(), Some(0));
    }

    #[test]
    fn everything_quiet_frees_the_speaker_and_nothing_is_ducked() {
        let mut a = arbiter(&[1, 9]);
        let changes = run(
            &mut a,
            0,
            2000,
            |t| if t < 500 { vec![0, 1] } else { vec![] },
        );
        assert_eq!(
            changes.last(),
            Some(&(
                1480,
                OwnerChange {
                    from: Some(1),
                    to: None
                }
            ))
        );
        assert_eq!((a.target_gain(0), a.target_gain(1)), (1.0, 1.0));
        assert_eq!((a.gain(0), a.gain(1)), (1.0, 1.0));
    }

    #[test]
    fn mute_silences_the_others() {
        let mut a = Arbiter::new(
            &ArbiterConfig {
                duck: Duck::Mute,
                ..ArbiterConfig::default()
            },
            &[1, 9],
        )
        .expect("arbiter");
        run(&mut a, 0, 100, |_| vec![0, 1]);
        for _ in 0..5 {
            period_level(&mut a, 0);
        }
        assert_eq!(period_level(&mut a, 0), 0.0);
        assert_eq!(period_level(&mut a, 1), 1.0);
    }

    #[test]
    fn a_lone_stream_is_mixed_bit_exact() {
        let mut a = arbiter(&[0]);
        run(&mut a, 0, 100, |_| vec![0]);
        let input: Vec<f32> = (0..480).map(|i| (i as f32 * 0.37).sin() * 0.9).collect();
        let mut out = vec![0.0f32; 480];
        a.mix_into(0, &input, &mut out, 2, RATE);
        assert_eq!(out, input);
    }

    #[test]
    fn out_of_range_settings_and_streams_are_refused() {
        let c = ArbiterConfig::default();
        assert_eq!(Arbiter::new(&c, &[]).err(), Some(PriorityError::NoStreams));
        assert_eq!(
            Arbiter::new(&c, &[0; MAX_STREAMS + 1]).err(),
            Some(PriorityError::TooManyStreams(MAX_STREAMS + 1))
        );
        let up = ArbiterConfig {
            duck: Duck::Db(6.0),
            ..c.clone()
        };
        let e = Arbiter::new(&up, &[0]).err().expect("refused");
        assert!(e.to_string().contains("--duck-db 6"), "{e}");
        let nan = ArbiterConfig {
            duck: Duck::Db(f32::NAN),
            ..c.clone()
        };
        assert!(Arbiter::new(&nan, &[0]).is_err());
        let hold = ArbiterConfig {
            hold_ms: 700_000,
            ..c
        };
        assert!(Arbiter::new(&hold, &[0])
            .err()
            .expect("refused")
            .to_string()
            .contains("--hold-ms"));
    }

    #[test]
    fn unknown_stream_index_is_ignored() {
        let mut a = arbiter(&[1]);
        a.on_audio(7, 0);
        assert_eq!(a.update(0), None);
        let mut out = [0.0f32; 4];
        a.mix_into(7, &[1.0; 4], &mut out, 2, RATE);
        assert_eq!(out, [0.0; 4]);
    }
}
