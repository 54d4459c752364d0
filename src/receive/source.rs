//! Source validation and lock: which RTP sender the receiver plays. The
//! first stage of the playout chain, ahead of the jitter buffer.
//!
//! Input: packet slots in arrival order: audio, and RTCP BYEs (see
//! `rtp::packet::PacketKind`). Output: a [`Verdict`] per packet: play it
//! (it is the current source's), hold it, or switch to a new source, whose
//! held packets the caller then takes with [`SourceLock::take_held`] and
//! plays before the packet itself.
//!
//! Policy:
//! - Candidates. A packet from an SSRC other than the current source's is
//!   held, never played, until its source is validated: two packets in
//!   sequence (RFC 3550 appendix A.1 probation, `MIN_SEQUENTIAL`), that is
//!   sequence numbers one apart (either order), the same payload type and
//!   timestamps no more than one second apart in the same direction. A
//!   packet that breaks the run starts a new one (the held packet is
//!   dropped). Junk with a fresh random SSRC per packet never validates; a
//!   fixed SSRC with random sequence numbers and timestamps validates by
//!   chance about once in 2^16 × 2^18 packets.
//! - The first source. With no current source (a fresh receiver, or
//!   after the current one was lost or said BYE) a validated candidate
//!   takes over at once; its held first packet is played, so nothing of
//!   the stream is lost. Probation costs no time: the jitter buffer starts
//!   playing at its margin plus one packet, so it waits for the second
//!   packet anyway whenever the margin is above 0 (with `--latency-ms 0`
//!   a stream starts one packet later than without the lock).
//! - Strays. While the current source is alive (a packet within
//!   `stream_lost_ms`), candidates do not take over and the current
//!   stream plays on untouched. Packets from other sources are counted as
//!   `stray` when they are dropped: a candidate's held packet replaced, a
//!   candidate evicted from the table (`candidates`, least recently heard,
//!   unvalidated ones first), a waiting source's packets overflowing or
//!   expiring. Held packets are not counted until dropped.
//! - Restarts. A sender restarted (new SSRC, the old one silent since
//!   before the new one's first packet) takes over as soon as it is
//!   validated and the old source has been silent for `quiet_ms` or two of
//!   its packets' durations, whichever is longer: 60 ms at a 20 ms ptime,
//!   longer than a LAN's jitter, so a real stream with a gap never hands
//!   over to a source that began before the gap. A validated source that
//!   was already streaming alongside the current one (a second sender on
//!   the same port) is a competitor: it is reported once
//!   ([`Verdict::Contending`]) and waits, its latest `held_packets` kept,
//!   until the current source is lost or says BYE.
//! - RTCP BYE (RFC 3550 section 6.6) from the current source ends it at
//!   once: a waiting validated source takes over there and then, and the
//!   next one to validate does without waiting. A BYE naming a candidate
//!   drops it. The audio already buffered plays out.
//! - Late, reordered and duplicate packets of the current source pass
//!   untouched for the jitter buffer to place; a waiting source's are
//!   held in arrival order as they come.
//! - Headerless PCM (`Packet::sequential`) has no SSRC: every packet plays.
//!
//! Time is the packets' arrival times, so every rule runs in simulated
//! time. Everything is sized in `new`; nothing allocates afterwards.

use core::fmt;

use crate::receive::jitter::PushOutcome;
use crate::rtp::packet::{Packet, PacketKind};

/// Packets in sequence a new source must send before it may be played
/// (RFC 3550 appendix A.1's value). Two is enough: junk rarely repeats an
/// SSRC, and the timestamp check makes a chance pair from a repeated one
/// a one-in-2^34 event; each more would cost every restart one ptime.
pub const MIN_SEQUENTIAL: u16 = 2;

/// A validated source stays validated across a forward jump up to this
/// many sequence numbers, or a step back up to `MAX_MISORDER` (RFC 3550
/// appendix A.1's values); anything else puts it back on probation.
const MAX_DROPOUT: i32 = 3000;
const MAX_MISORDER: i32 = 100;

/// Options of the source lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// The current source is alive until it has sent nothing for this
    /// long (`PlayoutConfig::stream_lost_ms`), in milliseconds.
    pub stream_lost_ms: u32,
    /// Least silence of the current source, in milliseconds, after which
    /// a restarted sender takes over (two of the current source's packet
    /// durations when that is longer).
    pub quiet_ms: u32,
    /// New sources tracked at once. A flood of junk with random SSRCs
    /// fills the table; a real new sender must stay in it from one packet
    /// to its next, so this bounds the junk rate a restart survives: 16
    /// covers 15 junk packets per packet of the real stream.
    pub candidates: usize,
    /// Packets kept for a validated source that waits to take over.
    pub held_packets: usize,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            stream_lost_ms: 500,
            quiet_ms: 60,
            candidates: 16,
            held_packets: 16,
        }
    }
}

/// A `SourceConfig` that cannot be used; names the option and its range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceError {
    StreamLost(u32),
    /// `quiet_ms` must be from 1 to `stream_lost_ms`.
    Quiet {
        quiet_ms: u32,
        stream_lost_ms: u32,
    },
    Candidates(usize),
    HeldPackets(usize),
}

/// Largest tables accepted, so that a typo cannot ask for gigabytes.
const MAX_TABLE: usize = 256;

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::StreamLost(ms) => write!(
                f,
                "stream-lost timeout {ms} ms is out of range: use at least 1 ms"
            ),
            SourceError::Quiet {
                quiet_ms,
                stream_lost_ms,
            } => write!(
                f,
                "sender-restart silence {quiet_ms} ms must be from 1 ms to the stream-lost \
                 timeout ({stream_lost_ms} ms)"
            ),
            SourceError::Candidates(n) => write!(
                f,
                "{n} candidate sources is out of range: use 1 to {MAX_TABLE}"
            ),
            SourceError::HeldPackets(n) => write!(
                f,
                "{n} held packets is out of range: use {MIN_SEQUENTIAL} to {MAX_TABLE}"
            ),
        }
    }
}

impl std::error::Error for SourceError {}

/// What the source lock did with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The current source's (or headerless PCM): play it.
    Play,
    /// A new source takes over from `previous`: play its held packets
    /// (`take_held`) and then this packet, if it is audio.
    TakeOver { previous: Option<u32> },
    /// Held: a new source on probation, or one waiting to take over.
    Held,
    /// Held: `ssrc` has just been validated but `current` streams on, so
    /// it waits (a second sender on the port: worth one log line).
    Contending { ssrc: u32, current: u32 },
    /// An RTCP BYE ended the current source `ssrc`; nothing waited to
    /// take over.
    Ended { ssrc: u32 },
    /// An RTCP BYE for no source that is playing.
    Ignored,
}

/// What the playout engine did with one packet (`Engine::push`): the
/// source lock's verdict, and the jitter buffer's outcome where the
/// packet, or a new source's held packets, reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Played. On a take-over, the outcome of the new source's first
    /// packet (`NewStream`), whose held packets went before this one.
    Pushed(PushOutcome),
    /// Held by the source lock (a candidate, or a source waiting).
    Held,
    /// See `Verdict::Contending`.
    Contending { ssrc: u32, current: u32 },
    /// See `Verdict::Ended`.
    Ended { ssrc: u32 },
    /// An RTCP BYE for no source that is playing.
    Ignored,
}

/// Counters since `new`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMetrics {
    /// Packets from sources other than the one playing, dropped unplayed.
    pub stray: u64,
    /// New sources that passed probation.
    pub validated: u64,
    /// Sources that became the current one.
    pub takeovers: u64,
    /// BYEs that ended the current source.
    pub byes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Candidate {
    in_use: bool,
    ssrc: u32,
    validated: bool,
    payload_type: u8,
    /// Highest sequence number of the run, and its packet's timestamp.
    seq: u16,
    timestamp: u32,
    rate: u32,
    /// Arrival of the run's first packet.
    run_start_ns: u64,
    last_ns: u64,
    /// Duration of its latest packet.
    packet_ns: u64,
    /// Its latest packet waits in its slot (unless it owns the ring).
    holding: bool,
    /// Reported as contending.
    reported: bool,
}

#[derive(Clone, Copy, Debug)]
struct Current {
    ssrc: u32,
    last_ns: u64,
    packet_ns: u64,
    /// Said BYE.
    ended: bool,
}

/// Where `take_held` reads after a take-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Nothing,
    Slot(usize),
    Ring,
}

/// See the module documentation.
pub struct SourceLock {
    stream_lost_ns: u64,
    quiet_ns: u64,
    current: Option<Current>,
    candidates: Vec<Candidate>,
    /// One held packet per candidate (same index).
    slots: Vec<Packet>,
    /// The waiting validated source's packets, oldest at `ring_start`.
    ring: Vec<Packet>,
    ring_start: usize,
    ring_len: usize,
    ring_owner: Option<usize>,
    release: Release,
    metrics: SourceMetrics,
}

const NS_PER_MS: u64 = 1_000_000;

fn packet_ns(packet: &Packet) -> u64 {
    packet.frames() as u64 * 1_000_000_000 / u64::from(packet.format.rate.max(1))
}

impl SourceLock {
    /// Validates `config` and allocates the tables; nothing allocates later.
    pub fn new(config: &SourceConfig) -> Result<SourceLock, SourceError> {
        if config.stream_lost_ms == 0 {
            return Err(SourceError::StreamLost(config.stream_lost_ms));
        }
        if config.quiet_ms == 0 || config.quiet_ms > config.stream_lost_ms {
            return Err(SourceError::Quiet {
                quiet_ms: config.quiet_ms,
                stream_lost_ms: config.stream_lost_ms,
            });
        }
        if !(1..=MAX_TABLE).contains(&config.candidates) {
            return Err(SourceError::Candidates(config.candidates));
        }
        if !(MIN_SEQUENTIAL as usize..=MAX_TABLE).contains(&config.held_packets) {
            return Err(SourceError::HeldPackets(config.held_packets));
        }
        let empty = Packet::empty(crate::audio::format::StreamFormat::TUTORIAL);
        Ok(SourceLock {
            stream_lost_ns: u64::from(config.stream_lost_ms) * NS_PER_MS,
            quiet_ns: u64::from(config.quiet_ms) * NS_PER_MS,
            current: None,
            candidates: vec![Candidate::default(); config.candidates],
            slots: vec![empty.clone(); config.candidates],
            ring: vec![empty; config.held_packets],
            ring_start: 0,
            ring_len: 0,
            ring_owner: None,
            release: Release::Nothing,
            metrics: SourceMetrics::default(),
        })
    }

    pub fn metrics(&self) -> &SourceMetrics {
        &self.metrics
    }

    /// The SSRC being played, if any.
    pub fn current(&self) -> Option<u32> {
        self.current.map(|c| c.ssrc)
    }

    /// The source being played said BYE: its silence is its end, not a
    /// loss.
    pub fn current_ended(&self) -> bool {
        self.current.is_some_and(|c| c.ended)
    }

    /// Judges one packet; see the module documentation. After
    /// `Verdict::TakeOver`, take the new source's held packets with
    /// `take_held` before the next `push` (which drops what is left).
    pub fn push(&mut self, packet: &Packet) -> Verdict {
        self.drop_unreleased();
        if packet.kind == PacketKind::Bye {
            return self.bye(packet);
        }
        if packet.sequential {
            return Verdict::Play;
        }
        let now = packet.arrival_ns;
        if let Some(c) = self.current.as_mut().filter(|c| c.ssrc == packet.ssrc) {
            c.last_ns = c.last_ns.max(now);
            c.packet_ns = packet_ns(packet);
            self.expire(now);
            return Verdict::Play;
        }
        self.expire(now);
        let i = self.entry_for(packet.ssrc);
        let Some(&c) = self.candidates.get(i) else {
            return Verdict::Held;
        };
        if !c.in_use {
            self.start_run(i, packet);
            return Verdict::Held;
        }
        let d = i32::from(packet.seq.wrapping_sub(c.seq) as i16);
        if c.validated {
            if !(-MAX_MISORDER..=MAX_DROPOUT).contains(&d) {
                self.drop_held(i);
                self.start_run(i, packet);
                return Verdict::Held;
            }
        } else {
            let dts = packet.timestamp.wrapping_sub(c.timestamp) as i32;
            let rate = c.rate.max(1) as i32;
            let in_sequence = packet.payload_type == c.payload_type
                && ((d == 1 && (0..=rate).contains(&dts))
                    || (d == -1 && (-rate..=0).contains(&dts)));
            if !in_sequence {
                self.drop_held(i);
                self.start_run(i, packet);
                return Verdict::Held;
            }
            self.metrics.validated += 1;
        }
        if let Some(e) = self.candidates.get_mut(i) {
            e.validated = true;
            if d > 0 {
                e.seq = packet.seq;
                e.timestamp = packet.timestamp;
            }
            e.last_ns = e.last_ns.max(now);
            e.packet_ns = packet_ns(packet);
        }
        if self.may_take_over(i, now) {
            return self.take_over(i);
        }
        self.hold(i, packet);
        // Reported once per run, when it shows it is no restart.
        let restart = self.restart(i);
        match (self.current, self.candidates.get_mut(i)) {
            (Some(current), Some(c)) if !c.reported && !restart => {
                c.reported = true;
                Verdict::Contending {
                    ssrc: packet.ssrc,
                    current: current.ssrc,
                }
            }
            _ => Verdict::Held,
        }
    }

    /// After `Verdict::TakeOver`: copies the new source's next held packet
    /// (oldest first) into `out`; false when there are no more.
    pub fn take_held(&mut self, out: &mut Packet) -> bool {
        match self.release {
            Release::Nothing => false,
            Release::Slot(i) => {
                self.release = Release::Nothing;
                match self.slots.get(i) {
                    Some(p) => {
                        out.copy_from(p);
                        true
                    }
                    None => false,
                }
            }
            Release::Ring => match self.ring_pop() {
                Some(k) => {
                    if let Some(p) = self.ring.get(k) {
                        out.copy_from(p);
                    }
                    true
                }
                None => {
                    self.release = Release::Nothing;
                    false
                }
            },
        }
    }

    fn bye(&mut self, packet: &Packet) -> Verdict {
        let mut ended = None;
        for ssrc in packet.bye_ssrcs() {
            match self.current.as_mut() {
                Some(c) if c.ssrc == ssrc => {
                    if !c.ended {
                        c.ended = true;
                        self.metrics.byes += 1;
                        ended = Some(ssrc);
                    }
                }
                _ => {
                    if let Some(i) = self.find(ssrc) {
                        self.drop_held(i);
                        if let Some(e) = self.candidates.get_mut(i) {
                            e.in_use = false;
                        }
                    }
                }
            }
        }
        let Some(ssrc) = ended else {
            return Verdict::Ignored;
        };
        // Whoever waits takes over now: the source holding the ring, else
        // the validated one heard last (with its latest packet held).
        self.expire(packet.arrival_ns);
        let heir = self.ring_owner.filter(|_| self.ring_len > 0).or_else(|| {
            self.candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.in_use && c.validated && c.holding)
                .max_by_key(|(_, c)| c.last_ns)
                .map(|(i, _)| i)
        });
        match heir {
            Some(i) => self.take_over(i),
            None => Verdict::Ended { ssrc },
        }
    }

    fn may_take_over(&self, i: usize, now: u64) -> bool {
        let Some(c) = self.current else {
            return true;
        };
        let silent = now.saturating_sub(c.last_ns);
        c.ended
            || silent >= self.stream_lost_ns
            || (self.restart(i) && silent >= self.quiet_ns.max(2 * c.packet_ns))
    }

    /// Whether candidate `i` began after the current source's last packet
    /// (within one of its packets, for a last packet the network delayed):
    /// a restarted sender rather than a second one.
    fn restart(&self, i: usize) -> bool {
        match (self.candidates.get(i), self.current) {
            (Some(v), Some(c)) => v.run_start_ns.saturating_add(c.packet_ns) >= c.last_ns,
            _ => true,
        }
    }

    fn take_over(&mut self, i: usize) -> Verdict {
        let Some(v) = self.candidates.get_mut(i) else {
            return Verdict::Held;
        };
        v.in_use = false;
        let previous = self.current.map(|c| c.ssrc);
        self.current = Some(Current {
            ssrc: v.ssrc,
            last_ns: v.last_ns,
            packet_ns: v.packet_ns,
            ended: false,
        });
        self.release = if self.ring_owner == Some(i) {
            self.ring_owner = None;
            Release::Ring
        } else if v.holding {
            Release::Slot(i)
        } else {
            Release::Nothing
        };
        v.holding = false;
        self.metrics.takeovers += 1;
        Verdict::TakeOver { previous }
    }

    /// Keeps a validated source's packet while it waits.
    fn hold(&mut self, i: usize, packet: &Packet) {
        if self.ring_owner.is_none() {
            self.ring_owner = Some(i);
            self.ring_start = 0;
            self.ring_len = 0;
            let held = self.candidates.get(i).is_some_and(|c| c.holding);
            if held {
                if let (Some(p), Some(r)) = (self.slots.get(i), self.ring.get_mut(0)) {
                    r.copy_from(p);
                    self.ring_len = 1;
                }
            }
            if let Some(c) = self.candidates.get_mut(i) {
                c.holding = false;
            }
        }
        if self.ring_owner == Some(i) {
            self.ring_push(packet);
        } else {
            self.hold_in_slot(i, packet);
        }
    }

    fn ring_push(&mut self, packet: &Packet) {
        let n = self.ring.len();
        if self.ring_len == n {
            self.ring_pop();
            self.metrics.stray += 1;
        }
        let k = (self.ring_start + self.ring_len) % n;
        if let Some(r) = self.ring.get_mut(k) {
            r.copy_from(packet);
            self.ring_len += 1;
        }
    }

    /// Index of the oldest packet in the ring, which it leaves.
    fn ring_pop(&mut self) -> Option<usize> {
        if self.ring_len == 0 {
            return None;
        }
        let k = self.ring_start;
        self.ring_start = (self.ring_start + 1) % self.ring.len();
        self.ring_len -= 1;
        Some(k)
    }

    fn hold_in_slot(&mut self, i: usize, packet: &Packet) {
        let (Some(c), Some(slot)) = (self.candidates.get_mut(i), self.slots.get_mut(i)) else {
            return;
        };
        if c.holding {
            self.metrics.stray += 1;
        }
        slot.copy_from(packet);
        c.holding = true;
    }

    /// Starts a probation run on `packet` in entry `i` (held packets of
    /// the entry must have been dropped).
    fn start_run(&mut self, i: usize, packet: &Packet) {
        if let Some(c) = self.candidates.get_mut(i) {
            *c = Candidate {
                in_use: true,
                ssrc: packet.ssrc,
                validated: false,
                payload_type: packet.payload_type,
                seq: packet.seq,
                timestamp: packet.timestamp,
                rate: packet.format.rate,
                run_start_ns: packet.arrival_ns,
                last_ns: packet.arrival_ns,
                packet_ns: packet_ns(packet),
                holding: false,
                reported: false,
            };
        }
        self.hold_in_slot(i, packet);
    }

    /// Drops what entry `i` holds, counting it as stray.
    fn drop_held(&mut self, i: usize) {
        if let Some(c) = self.candidates.get_mut(i) {
            if c.holding {
                c.holding = false;
                self.metrics.stray += 1;
            }
        }
        if self.ring_owner == Some(i) {
            self.metrics.stray += self.ring_len as u64;
            self.ring_len = 0;
            self.ring_owner = None;
        }
    }

    /// A take-over's held packets the caller did not take are dropped.
    fn drop_unreleased(&mut self) {
        match self.release {
            Release::Nothing => {}
            Release::Slot(_) => self.metrics.stray += 1,
            Release::Ring => {
                self.metrics.stray += self.ring_len as u64;
                self.ring_len = 0;
            }
        }
        self.release = Release::Nothing;
    }

    /// Sources silent for the stream-lost timeout are forgotten, and what
    /// they held is counted as stray (16 comparisons: cheap per packet).
    fn expire(&mut self, now: u64) {
        for i in 0..self.candidates.len() {
            let stale = self
                .candidates
                .get(i)
                .is_some_and(|c| c.in_use && now.saturating_sub(c.last_ns) >= self.stream_lost_ns);
            if stale {
                self.drop_held(i);
                if let Some(c) = self.candidates.get_mut(i) {
                    c.in_use = false;
                }
            }
        }
    }

    fn find(&self, ssrc: u32) -> Option<usize> {
        self.candidates
            .iter()
            .position(|c| c.in_use && c.ssrc == ssrc)
    }

    /// The entry of `ssrc`: its own, a free one, or the least recently
    /// heard (unvalidated ones first), emptied.
    fn entry_for(&mut self, ssrc: u32) -> usize {
        if let Some(i) = self.find(ssrc) {
            return i;
        }
        if let Some(i) = self.candidates.iter().position(|c| !c.in_use) {
            return i;
        }
        let victim = self
            .candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (c.validated, c.last_ns))
            .map_or(0, |(i, _)| i);
        self.drop_held(victim);
        if let Some(c) = self.candidates.get_mut(victim) {
            c.in_use = false;
        }
        victim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::{Encoding, StreamFormat};

    const PCMU: StreamFormat = StreamFormat {
        encoding: Encoding::Pcmu,
        rate: 8000,
        channels: 1,
    };
    const MS: u64 = 1_000_000;

    /// Packet `k` of a 20 ms PCMU stream from `ssrc`, arriving at `at_ms`.
    fn pkt(ssrc: u32, seq: u16, at_ms: u64) -> Packet {
        let mut p = Packet::empty(PCMU);
        p.ssrc = ssrc;
        p.seq = seq;
        p.timestamp = u32::from(seq).wrapping_mul(160);
        p.payload_type = 0;
        p.arrival_ns = at_ms * MS;
        p.payload.extend_from_slice(&[seq as u8; 160]).unwrap();
        p
    }

    fn bye(ssrcs: &[u32], at_ms: u64) -> Packet {
        let mut p = Packet::empty(PCMU);
        p.kind = PacketKind::Bye;
        p.arrival_ns = at_ms * MS;
        for s in ssrcs {
            p.payload.extend_from_slice(&s.to_be_bytes()).unwrap();
        }
        p
    }

    fn lock() -> SourceLock {
        SourceLock::new(&SourceConfig::default()).unwrap()
    }

    fn held(lock: &mut SourceLock) -> Vec<(u32, u16)> {
        let mut out = Packet::empty(PCMU);
        let mut v = Vec::new();
        while lock.take_held(&mut out) {
            v.push((out.ssrc, out.seq));
        }
        v
    }

    /// Starts source `ssrc` at `t_ms` with seq 0 and 1, returning the time
    /// of its second packet.
    fn started(lock: &mut SourceLock, ssrc: u32, t_ms: u64) -> u64 {
        assert_eq!(lock.push(&pkt(ssrc, 0, t_ms)), Verdict::Held);
        assert!(matches!(
            lock.push(&pkt(ssrc, 1, t_ms + 20)),
            Verdict::TakeOver { .. }
        ));
        assert_eq!(held(lock), [(ssrc, 0)]);
        t_ms + 20
    }

    #[test]
    fn first_source_takes_over_at_its_second_packet_with_its_first_kept() {
        let mut l = lock();
        assert_eq!(l.push(&pkt(1, 100, 0)), Verdict::Held);
        assert_eq!(l.current(), None);
        assert_eq!(
            l.push(&pkt(1, 101, 20)),
            Verdict::TakeOver { previous: None }
        );
        assert_eq!(held(&mut l), [(1, 100)]);
        assert_eq!(l.push(&pkt(1, 102, 40)), Verdict::Play);
        assert_eq!(l.metrics().stray, 0);
    }

    #[test]
    fn probation_needs_sequence_payload_type_and_timestamps() {
        let base = pkt(1, 10, 0);
        let mut gap = pkt(1, 12, 20);
        gap.timestamp = base.timestamp + 320;
        let mut pt = pkt(1, 11, 20);
        pt.payload_type = 8;
        let mut ts_jump = pkt(1, 11, 20);
        ts_jump.timestamp = base.timestamp + 8001;
        let mut ts_back = pkt(1, 11, 20);
        ts_back.timestamp = base.timestamp.wrapping_sub(160);
        let mut swapped = pkt(1, 9, 20);
        swapped.timestamp = base.timestamp - 160;
        for (name, second, validates) in [
            ("next", pkt(1, 11, 20), true),
            ("reordered pair", swapped, true),
            ("gap", gap, false),
            ("payload type", pt, false),
            ("timestamp jump", ts_jump, false),
            ("timestamp backwards", ts_back, false),
            ("same seq", pkt(1, 10, 20), false),
        ] {
            let mut l = lock();
            l.push(&base);
            let v = l.push(&second);
            assert_eq!(matches!(v, Verdict::TakeOver { .. }), validates, "{name}");
            if !validates {
                // The run starts again on the second packet: the first is
                // dropped, counted stray.
                assert_eq!((v, l.metrics().stray), (Verdict::Held, 1), "{name}");
            }
        }
    }

    #[test]
    fn one_packet_stray_before_the_real_sender_does_not_lock() {
        let mut l = lock();
        assert_eq!(l.push(&pkt(0xbad, 4711, 0)), Verdict::Held);
        assert_eq!(l.push(&pkt(1, 0, 5)), Verdict::Held);
        assert_eq!(l.push(&pkt(1, 1, 25)), Verdict::TakeOver { previous: None });
        assert_eq!(held(&mut l), [(1, 0)]);
        assert_eq!(l.current(), Some(1));
        assert_eq!(l.push(&pkt(1, 2, 45)), Verdict::Play);
    }

    #[test]
    fn strays_while_current_alive_are_held_then_counted() {
        let mut l = lock();
        let mut t = started(&mut l, 1, 0);
        let mut junk = 0u64;
        let mut rng = 0x1234_5678u32;
        for k in 2..200u16 {
            t += 20;
            assert_eq!(l.push(&pkt(1, k, t)), Verdict::Play);
            for _ in 0..10 {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                assert_eq!(l.push(&pkt(rng, rng as u16, t + 1)), Verdict::Held);
                junk += 1;
            }
        }
        assert_eq!(l.current(), Some(1));
        // All but those still held (one per table entry) were counted.
        assert_eq!(l.metrics().stray, junk - 16);
        assert_eq!(l.metrics().takeovers, 1);
    }

    #[test]
    fn restart_after_silence_takes_over_once_validated() {
        let mut l = lock();
        let mut t = started(&mut l, 1, 0);
        for k in 2..50u16 {
            t += 20;
            l.push(&pkt(1, k, t));
        }
        // The old sender stops at t; the new one starts 100 ms later.
        assert_eq!(l.push(&pkt(2, 7000, t + 100)), Verdict::Held);
        assert_eq!(
            l.push(&pkt(2, 7001, t + 120)),
            Verdict::TakeOver { previous: Some(1) }
        );
        assert_eq!(held(&mut l), [(2, 7000)]);
    }

    #[test]
    fn immediate_restart_waits_for_the_quiet_time_and_keeps_every_packet() {
        let mut l = lock();
        let mut t = started(&mut l, 1, 0);
        for k in 2..50u16 {
            t += 20;
            l.push(&pkt(1, k, t));
        }
        // The new sender's packets come 20, 40, 60 ms after the old one's
        // last: it takes over at 60 ms of silence (3 ptimes).
        assert_eq!(l.push(&pkt(2, 0, t + 20)), Verdict::Held);
        assert_eq!(l.push(&pkt(2, 1, t + 40)), Verdict::Held);
        assert_eq!(
            l.push(&pkt(2, 2, t + 60)),
            Verdict::TakeOver { previous: Some(1) }
        );
        assert_eq!(held(&mut l), [(2, 0), (2, 1)]);
        assert_eq!(l.metrics().stray, 0);
    }

    #[test]
    fn competing_sender_waits_until_the_current_one_is_lost() {
        let mut l = lock();
        let mut t = started(&mut l, 1, 0);
        // Sender 2 streams alongside, 10 ms out of phase.
        let mut s2 = 0u16;
        let mut verdicts = Vec::new();
        for k in 2..30u16 {
            t += 20;
            assert_eq!(l.push(&pkt(1, k, t)), Verdict::Play);
            verdicts.push(l.push(&pkt(2, s2, t + 10)));
            s2 += 1;
        }
        // Validated at its second packet, reported once it is clear that
        // sender 1 streams on (its third): no restart, a competitor.
        let contending = Verdict::Contending {
            ssrc: 2,
            current: 1,
        };
        assert_eq!(verdicts[..3], [Verdict::Held, Verdict::Held, contending]);
        assert!(verdicts[3..].iter().all(|v| *v == Verdict::Held));
        // Sender 1 pauses 100 ms: sender 2 began before, it waits.
        for _ in 0..5 {
            t += 20;
            assert_eq!(l.push(&pkt(2, s2, t + 10)), Verdict::Held);
            s2 += 1;
        }
        t += 20;
        assert_eq!(l.push(&pkt(1, 30, t)), Verdict::Play);
        // Sender 1 stops for good: sender 2 takes over after 500 ms,
        // with its latest 16 packets (the older ones counted stray).
        let last1 = t;
        let verdict = loop {
            t += 20;
            let v = l.push(&pkt(2, s2, t + 10));
            s2 += 1;
            if v != Verdict::Held {
                break v;
            }
        };
        assert_eq!(verdict, Verdict::TakeOver { previous: Some(1) });
        assert!(t + 10 - last1 >= 500, "{}", t + 10 - last1);
        assert!(t + 10 - last1 < 520, "{}", t + 10 - last1);
        let h = held(&mut l);
        assert_eq!(h.len(), 16);
        assert_eq!(h.last(), Some(&(2, s2 - 2)));
        assert_eq!(l.metrics().stray, u64::from(s2) - 1 - 16);
    }

    #[test]
    fn bye_ends_the_current_source_at_once() {
        // Nothing waiting: the BYE is reported, and the next source takes
        // over as soon as it is validated, without the quiet time.
        let mut l = lock();
        let t = started(&mut l, 1, 0);
        assert!(!l.current_ended());
        assert_eq!(l.push(&bye(&[9, 1], t + 1)), Verdict::Ended { ssrc: 1 });
        assert!(l.current_ended());
        assert_eq!(l.push(&bye(&[1], t + 2)), Verdict::Ignored);
        assert_eq!(l.push(&pkt(2, 0, t + 5)), Verdict::Held);
        assert_eq!(
            l.push(&pkt(2, 1, t + 25)),
            Verdict::TakeOver { previous: Some(1) }
        );
        assert_eq!(held(&mut l), [(2, 0)]);
        assert_eq!(l.metrics().byes, 1);

        // A validated sender waiting takes over at the BYE itself.
        let mut l = lock();
        let mut t = started(&mut l, 1, 0);
        let mut s2 = 0;
        for k in 2..6u16 {
            t += 20;
            l.push(&pkt(1, k, t));
            l.push(&pkt(2, s2, t + 10));
            s2 += 1;
        }
        assert_eq!(
            l.push(&bye(&[1], t + 11)),
            Verdict::TakeOver { previous: Some(1) }
        );
        assert_eq!(held(&mut l), [(2, 0), (2, 1), (2, 2), (2, 3)]);
        assert_eq!(l.push(&pkt(2, s2, t + 30)), Verdict::Play);
    }

    #[test]
    fn bye_for_a_candidate_drops_it() {
        let mut l = lock();
        let t = started(&mut l, 1, 0);
        l.push(&pkt(2, 0, t + 1));
        assert_eq!(l.push(&bye(&[2], t + 2)), Verdict::Ignored);
        assert_eq!(l.metrics().stray, 1);
        // Its next packet starts probation afresh.
        assert_eq!(l.push(&pkt(2, 1, t + 21)), Verdict::Held);
    }

    #[test]
    fn headerless_packets_play_untouched() {
        let mut l = lock();
        let mut p = pkt(0, 0, 0);
        p.sequential = true;
        for k in 0..5 {
            p.seq = k;
            assert_eq!(l.push(&p), Verdict::Play);
        }
        assert_eq!(l.current(), None);
    }

    #[test]
    fn untaken_held_packets_are_counted_at_the_next_push() {
        let mut l = lock();
        l.push(&pkt(1, 0, 0));
        assert!(matches!(l.push(&pkt(1, 1, 20)), Verdict::TakeOver { .. }));
        assert_eq!(l.push(&pkt(1, 2, 40)), Verdict::Play);
        assert_eq!(l.metrics().stray, 1);
    }

    /// The whole playout engine in simulated time: packets are pushed at
    /// their arrival, one 5 ms period is rendered per tick at 8 kHz mono
    /// (a fixed delay, no clock following: the audio passes bit-exact),
    /// and the output is kept to find every packet's audio in.
    mod engine_sim {
        use super::*;
        use crate::audio::codec;
        use crate::audio::convert::i16_to_f32;
        use crate::receive::engine::{Engine, Latency, PlayoutConfig, ResamplerBank};

        const PERIOD: usize = 40;
        const PERIOD_NS: u64 = 5 * MS;

        pub struct Sim {
            pub engine: Engine,
            pub out: Vec<f32>,
            pub now: u64,
            rng: u64,
        }

        impl Sim {
            pub fn new(latency_ms: u32) -> Sim {
                let config = PlayoutConfig {
                    latency: Latency::Fixed { ms: latency_ms },
                    clock_follow: false,
                    max_rate: 8000,
                    max_channels: 1,
                    stream_formats: vec![(8000, 1)],
                    ..PlayoutConfig::default()
                };
                let mut engine = Engine::new(&config).unwrap();
                let bank = ResamplerBank::new(&config.stream_formats, 8000, &config).unwrap();
                engine.attach_device(1, Some(bank));
                Sim {
                    engine,
                    out: Vec::new(),
                    now: 0,
                    rng: 0x9e37_79b9_7f4a_7c15,
                }
            }

            pub fn rand(&mut self) -> u64 {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                self.rng
            }

            /// Plays `packets` (sorted by arrival) and renders until `end_ms`.
            pub fn run(&mut self, packets: &[Packet], end_ms: u64) {
                let mut next = 0;
                let mut period = [0.0f32; PERIOD];
                while self.now < end_ms * MS {
                    self.now += PERIOD_NS;
                    while let Some(p) = packets.get(next).filter(|p| p.arrival_ns <= self.now) {
                        self.engine.push(p);
                        next += 1;
                    }
                    self.engine.render(&mut period, self.now);
                    self.out.extend_from_slice(&period);
                }
            }

            /// Where packet `p`'s audio starts in the output, if it is there
            /// whole, searching from `from`.
            pub fn find(&self, p: &Packet, from: usize) -> Option<usize> {
                let want = decoded(p);
                let first = want.first()?;
                (from..self.out.len().saturating_sub(want.len() - 1)).find(|&i| {
                    self.out.get(i) == Some(first)
                        && self.out.get(i..i + want.len()) == Some(&want[..])
                })
            }

            /// How many of `stream` (one sender's packets in order) play
            /// whole, each right after the one before it (aligned on its
            /// first that plays).
            pub fn intact(&self, stream: &[Packet]) -> usize {
                let Some((k0, at)) = stream
                    .iter()
                    .enumerate()
                    .find_map(|(k, p)| self.find(p, 0).map(|at| (k, at)))
                else {
                    return 0;
                };
                stream[k0..]
                    .iter()
                    .enumerate()
                    .filter(|(j, p)| {
                        let want = decoded(p);
                        let i = at + j * 160;
                        self.out.get(i..i + want.len()) == Some(&want[..])
                    })
                    .count()
            }

            /// When (ns) the output sample `i` was rendered.
            pub fn rendered_at(&self, i: usize) -> u64 {
                (i / PERIOD + 1) as u64 * PERIOD_NS
            }
        }

        pub fn decoded(p: &Packet) -> Vec<f32> {
            let mut s = vec![0i16; p.payload.len()];
            codec::decode(p.format.encoding, &p.payload, &mut s);
            s.into_iter().map(i16_to_f32).collect()
        }

        /// `n` 20 ms PCMU packets of noise from `ssrc`, the first sent at
        /// `t0_ms`, each arriving up to 4 ms late.
        pub fn stream(sim: &mut Sim, ssrc: u32, seq0: u16, t0_ms: u64, n: usize) -> Vec<Packet> {
            (0..n)
                .map(|k| {
                    let mut p = Packet::empty(PCMU);
                    p.ssrc = ssrc;
                    p.seq = seq0.wrapping_add(k as u16);
                    p.timestamp = (ssrc ^ 0x5555).wrapping_add(k as u32 * 160);
                    p.payload_type = 0;
                    p.marker = k == 0;
                    p.arrival_ns = (t0_ms + 20 * k as u64) * MS + sim.rand() % (4 * MS);
                    for _ in 0..160 {
                        // Never the code of silence, so every packet is audible.
                        let b = (sim.rand() as u8) | 0x01;
                        p.payload.push(b & 0x7f).unwrap();
                    }
                    p
                })
                .collect()
        }

        /// RTP-looking junk, `per_20ms` packets per 20 ms over
        /// [`t0_ms`, `t1_ms`): random SSRC, sequence number, timestamp,
        /// PCMU or PCMA, 1 to 400 bytes.
        pub fn junk(sim: &mut Sim, per_20ms: u64, t0_ms: u64, t1_ms: u64) -> Vec<Packet> {
            let n = (t1_ms - t0_ms) / 20 * per_20ms;
            (0..n)
                .map(|k| {
                    let pcma = sim.rand() % 2 == 0;
                    let mut p = Packet::empty(StreamFormat {
                        encoding: if pcma { Encoding::Pcma } else { Encoding::Pcmu },
                        ..PCMU
                    });
                    p.payload_type = if pcma { 8 } else { 0 };
                    p.ssrc = sim.rand() as u32;
                    p.seq = sim.rand() as u16;
                    p.timestamp = sim.rand() as u32;
                    p.marker = sim.rand() % 2 == 0;
                    p.arrival_ns = t0_ms * MS + k * 20 * MS / per_20ms + sim.rand() % MS;
                    let len = 1 + sim.rand() % 400;
                    for _ in 0..len {
                        let b = sim.rand() as u8;
                        p.payload.push(b).unwrap();
                    }
                    p
                })
                .collect()
        }

        pub fn merged(parts: &[&[Packet]]) -> Vec<Packet> {
            let mut all: Vec<Packet> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
            all.sort_by_key(|p| p.arrival_ns);
            all
        }
    }

    use engine_sim::{junk, merged, stream, Sim};

    #[test]
    fn stray_flood_ten_times_the_rate_leaves_the_stream_intact() {
        let mut sim = Sim::new(40);
        let real = stream(&mut sim, 0xa11ce, 100, 50, 250);
        // The flood starts before the stream and outlasts it.
        let flood = junk(&mut sim, 10, 0, 5200);
        sim.run(&merged(&[&real, &flood]), 5400);
        let intact = sim.intact(&real);
        let m = sim.engine.jitter().metrics();
        let held = (SourceConfig::default().candidates) as u64;
        eprintln!(
            "flood: {intact}/{} real packets intact, {} junk, stray {}, new streams {}",
            real.len(),
            flood.len(),
            sim.engine.source().metrics().stray,
            m.new_streams
        );
        assert!(
            intact * 100 >= real.len() * 95,
            "{intact} of {}",
            real.len()
        );
        assert_eq!(intact, real.len());
        assert_eq!((m.new_streams, m.resyncs, m.packets), (1, 0, 250));
        assert!(sim.engine.source().metrics().stray + held >= flood.len() as u64);
    }

    #[test]
    fn real_stream_gap_of_100_ms_in_a_flood_plays_on() {
        let mut sim = Sim::new(40);
        let mut real = stream(&mut sim, 0xa11ce, 100, 50, 150);
        // Five packets (100 ms) never sent mid-stream.
        real.drain(70..75);
        let flood = junk(&mut sim, 10, 0, 3200);
        sim.run(&merged(&[&real, &flood]), 3400);
        let m = sim.engine.jitter().metrics();
        assert_eq!((m.new_streams, m.resyncs), (1, 0));
        assert_eq!(sim.engine.source().current(), Some(0xa11ce));
        // The stream plays on at its place (the first packet after the gap
        // is merged with the concealment that stood in for the gap).
        let before = sim.find(&real[69], 0).expect("played before the gap");
        assert_eq!(sim.find(&real[71], 0), Some(before + 160 * 7));
        assert_eq!(sim.intact(&real[71..]), real.len() - 71);
    }

    /// A sender restart: the old sender's last packet, then `gap_ms` of
    /// silence, then a new SSRC, under a flood, at a 10 ms margin (the
    /// default adaptive latency's start); returns (ms from the new
    /// sender's first packet until its first sample is rendered, new
    /// streams).
    fn restart(gap_ms: u64, flood: bool, bye: bool) -> (f64, u64) {
        let mut sim = Sim::new(10);
        let old = stream(&mut sim, 1, 500, 50, 100);
        let t_new = 50 + 100 * 20 + gap_ms;
        let new = stream(&mut sim, 2, 9000, t_new, 100);
        let junk = if flood {
            junk(&mut sim, 10, 0, t_new + 2200)
        } else {
            Vec::new()
        };
        let mut goodbye = Vec::new();
        if bye {
            let mut b = Packet::empty(PCMU);
            b.kind = PacketKind::Bye;
            b.arrival_ns = old.last().unwrap().arrival_ns + MS;
            b.payload.extend_from_slice(&1u32.to_be_bytes()).unwrap();
            goodbye.push(b);
        }
        sim.run(&merged(&[&old, &new, &junk, &goodbye]), t_new + 2200);
        // The new sender's first packet plays right before its second: bit
        // for bit after silence; merged over its first period (5 ms) into
        // what sounded before: the old sender's concealment, still fading
        // when the new one follows at once, or its buffered tail, which a
        // take-over at a BYE cuts.
        let second = sim.find(&new[1], 0).expect("the new sender plays");
        let first = second - 160;
        let want = engine_sim::decoded(&new[0]);
        let merged_frames = if bye || gap_ms < 60 { 40 } else { 0 };
        assert_eq!(
            sim.out.get(first + merged_frames..second),
            want.get(merged_frames..),
            "the new sender's first packet"
        );
        assert_eq!(
            sim.intact(&new[1..]),
            new.len() - 1,
            "every later packet of the new sender"
        );
        let old_intact = sim.intact(&old);
        if bye {
            assert!(old_intact + 2 >= old.len(), "{old_intact}");
        } else {
            assert_eq!(old_intact, old.len(), "every packet of the old sender");
        }
        let heard_ms = (sim.rendered_at(first) - new[0].arrival_ns) as f64 / 1e6;
        (heard_ms, sim.engine.jitter().metrics().new_streams)
    }

    #[test]
    fn restart_after_100_ms_silence_plays_within_100_ms_in_a_flood() {
        let (heard, streams) = restart(100, true, false);
        eprintln!("restart after 100 ms, flood: heard {heard:.1} ms after the first packet");
        assert!(heard <= 100.0, "{heard} ms");
        assert_eq!(streams, 2);
        let (quiet, _) = restart(100, false, false);
        assert_eq!(heard, quiet, "the flood changes nothing");
    }

    #[test]
    fn immediate_restart_loses_no_frame_and_plays_within_100_ms() {
        let (heard, streams) = restart(0, true, false);
        eprintln!("immediate restart, flood: heard {heard:.1} ms after the first packet");
        assert!(heard <= 100.0, "{heard} ms");
        assert_eq!(streams, 2);
    }

    #[test]
    fn rtcp_bye_hands_over_without_the_quiet_time() {
        let (with_bye, _) = restart(0, true, true);
        let (without, _) = restart(0, true, false);
        eprintln!(
            "immediate restart: heard after {with_bye:.1} ms with BYE, {without:.1} ms without"
        );
        // Without the BYE the new sender waits for 60 ms of silence (its
        // third packet); with it, it plays at its second.
        assert!(with_bye + 15.0 <= without, "{with_bye} vs {without}");
    }

    #[test]
    fn one_packet_stray_before_the_real_sender_never_plays() {
        let mut sim = Sim::new(40);
        let mut stray = stream(&mut sim, 0xbad, 7, 0, 1);
        stray[0].payload.truncate(100);
        let real = stream(&mut sim, 0xa11ce, 100, 10, 50);
        sim.run(&merged(&[&stray, &real]), 1200);
        assert_eq!(sim.intact(&real), real.len());
        let first = sim.find(&real[0], 0).unwrap();
        assert!(
            sim.out[..first].iter().all(|&x| x == 0.0),
            "only silence before"
        );
        assert_eq!(sim.engine.jitter().metrics().new_streams, 1);
        // Counted once it went quiet for the stream-lost timeout.
        assert_eq!(sim.engine.source().metrics().stray, 1);
    }

    #[test]
    fn config_out_of_range_is_refused_with_the_option_named() {
        let d = SourceConfig::default();
        for (config, want) in [
            (
                SourceConfig {
                    stream_lost_ms: 0,
                    ..d.clone()
                },
                "stream-lost",
            ),
            (
                SourceConfig {
                    quiet_ms: 501,
                    ..d.clone()
                },
                "restart silence",
            ),
            (
                SourceConfig {
                    candidates: 0,
                    ..d.clone()
                },
                "candidate",
            ),
            (
                SourceConfig {
                    held_packets: 1,
                    ..d.clone()
                },
                "held packets",
            ),
        ] {
            let e = SourceLock::new(&config).err().expect("refused");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
