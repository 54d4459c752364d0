//! Following a SAP-announced session (`netspeaker --sap [NAME]`). Input:
//! SAP datagrams and the time. Output: [`Notice`]s — which session was
//! chosen, and later whether it was re-announced, deleted, timed out,
//! came back, or moved to another group, port or format — for the
//! binary to log and act on. Plain single-threaded code with the clock
//! passed in; the binary runs it on the main thread until a session is
//! chosen, then on a thread of its own ("sap"), never on the realtime
//! threads.
//!
//! Policy:
//! - Sessions are told apart by their SDP origin (username, session id,
//!   address), edits of one by its version (RFC 8866). A session heard
//!   neither again nor deleted is forgotten after ten of its announcement
//!   intervals (RFC 2974), at least 30 s and at most an hour.
//! - Choosing: NAME is a glob (`*`, `?`) on the `s=` name; without NAME
//!   every session matches. Exactly one match is chosen — with NAME at
//!   once, without after listening [`GATHER_NS`] longer for others. Several
//!   matches are named in a notice and waited out (until NAME is given or
//!   the others end).
//! - Following: a new version of the same stream (address, port, formats)
//!   changes nothing; a deletion or time-out stops the stream (the
//!   receiver keeps listening); the same session, or another that matches,
//!   announced afterwards is taken again — as is, if it is the same
//!   stream, else as a move, which the receiver follows by restarting its
//!   receive side. Another matching session while ours lives is named
//!   once and ignored.
//! - Refusals (malformed, encrypted, compressed, foreign payload, unusable
//!   SDP) are counted by reason and reported; never fatal.

use core::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::net::sap::{self, SapError};
use crate::rtp::sdp::{self, Origin, Session};

/// How long to keep listening for other sessions before choosing the only
/// one heard when no NAME was given (announcements of simultaneously
/// started senders arrive within it).
pub const GATHER_NS: u64 = 1_000_000_000;
/// Sessions remembered at most: a flood of distinct announcements costs
/// bounded memory; the one least recently heard (never the chosen one)
/// makes room.
pub const MAX_SESSIONS: usize = 256;
/// Shortest and longest time a session lives without announcements.
const MIN_LIFETIME_NS: u64 = 30_000_000_000;
const MAX_LIFETIME_NS: u64 = 3_600_000_000_000;

/// `*` matches any run of characters, `?` one character; the rest match
/// themselves (case-sensitive).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point (the last `*`).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

/// Why a datagram on the SAP port was refused: one counter each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Sap(SapError),
    Sdp(sdp::Error),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Sap(e) => write!(f, "{e}"),
            Refusal::Sdp(e) => write!(f, "announcement ignored: {e}"),
        }
    }
}

/// Refused datagrams by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    pub malformed: u64,
    pub encrypted: u64,
    pub compressed: u64,
    pub not_sdp: u64,
    pub unusable_sdp: u64,
}

impl Refusals {
    fn count(&mut self, r: &Refusal) {
        let c = match r {
            Refusal::Sap(SapError::Encrypted) => &mut self.encrypted,
            Refusal::Sap(SapError::Compressed) => &mut self.compressed,
            Refusal::Sap(SapError::PayloadType) => &mut self.not_sdp,
            Refusal::Sap(_) => &mut self.malformed,
            Refusal::Sdp(_) => &mut self.unusable_sdp,
        };
        *c += 1;
    }

    pub fn total(&self) -> u64 {
        self.malformed + self.encrypted + self.compressed + self.not_sdp + self.unusable_sdp
    }
}

impl fmt::Display for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} malformed, {} encrypted, {} compressed, {} not SDP, {} unusable SDP",
            self.malformed, self.encrypted, self.compressed, self.not_sdp, self.unusable_sdp
        )
    }
}

/// What the follower tells the binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Refused {
        from: SocketAddr,
        why: Refusal,
    },
    /// Several sessions match: their names; waiting.
    Several(Vec<String>),
    /// The session to play (at start-up).
    Chosen(Session),
    /// A new version of the chosen session, same stream.
    Reannounced(Session),
    /// The chosen session was deleted by its sender: the stream stops.
    Deleted(Session),
    /// The chosen session was not announced for its lifetime.
    Expired(Session),
    /// After a deletion or time-out, the session (or another matching
    /// one) is announced again with the same stream.
    Returned(Session),
    /// The followed session now streams elsewhere or in another format:
    /// the receive side must restart on it.
    Moved {
        from: Session,
        to: Session,
    },
    /// Another matching session while ours lives: ignored.
    Competing(Session),
}

struct Known {
    session: Session,
    last_heard_ns: u64,
    /// Time between its last two announcements.
    interval_ns: Option<u64>,
}

impl Known {
    fn lifetime_ns(&self) -> u64 {
        self.interval_ns.map_or(MAX_LIFETIME_NS, |i| {
            i.saturating_mul(10).clamp(MIN_LIFETIME_NS, MAX_LIFETIME_NS)
        })
    }
}

/// The sessions heard and the one followed.
pub struct Follower {
    pattern: Option<String>,
    known: Vec<Known>,
    chosen: Option<Session>,
    /// The chosen session was deleted or timed out.
    ended: bool,
    first_match_ns: Option<u64>,
    last_several: Vec<String>,
    competing_named: Vec<Origin>,
    refusals: Refusals,
}

impl Follower {
    /// `pattern`: the `--sap NAME` glob, `None` for any session.
    pub fn new(pattern: Option<String>) -> Follower {
        Follower {
            pattern,
            known: Vec::new(),
            chosen: None,
            ended: false,
            first_match_ns: None,
            last_several: Vec::new(),
            competing_named: Vec::new(),
            refusals: Refusals::default(),
        }
    }

    pub fn chosen(&self) -> Option<&Session> {
        self.chosen.as_ref()
    }

    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    fn matches(&self, name: &str) -> bool {
        self.pattern.as_deref().map_or(true, |p| glob(p, name))
    }

    /// Takes the session a previous run of this process was following
    /// (the receive side restarted on a move) as chosen and just heard.
    pub fn resume(&mut self, session: Session, now_ns: u64) {
        self.known.push(Known {
            session: session.clone(),
            last_heard_ns: now_ns,
            interval_ns: None,
        });
        self.chosen = Some(session);
    }

    /// One datagram from the SAP port.
    pub fn hear(&mut self, datagram: &[u8], from: SocketAddr, now_ns: u64) -> Vec<Notice> {
        let mut notices = Vec::new();
        let refuse = |why: Refusal, this: &mut Follower, notices: &mut Vec<Notice>| {
            this.refusals.count(&why);
            notices.push(Notice::Refused { from, why });
        };
        let packet = match sap::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                refuse(Refusal::Sap(e), self, &mut notices);
                return notices;
            }
        };
        if packet.deletion {
            // The deletion names the session by its origin; the full SDP
            // may or may not follow.
            if let Some(origin) = sdp::origin_of(packet.sdp) {
                self.delete(&origin, &mut notices);
            }
            return notices;
        }
        let session = match sdp::parse(packet.sdp) {
            Ok(s) => s,
            Err(e) => {
                refuse(Refusal::Sdp(e), self, &mut notices);
                return notices;
            }
        };
        self.announce(session, now_ns, &mut notices);
        self.tick_into(now_ns, &mut notices);
        notices
    }

    /// Time passing: sessions expire; at start-up, a choice may be due.
    pub fn tick(&mut self, now_ns: u64) -> Vec<Notice> {
        let mut notices = Vec::new();
        self.tick_into(now_ns, &mut notices);
        notices
    }

    fn announce(&mut self, session: Session, now_ns: u64, notices: &mut Vec<Notice>) {
        let matches = self.matches(&session.name);
        match self
            .known
            .iter_mut()
            .find(|k| k.session.origin.same_session(&session.origin))
        {
            Some(k) => {
                k.interval_ns = Some(now_ns.saturating_sub(k.last_heard_ns));
                k.last_heard_ns = now_ns;
                k.session = session.clone();
            }
            None => {
                if self.known.len() >= MAX_SESSIONS {
                    self.evict_oldest();
                }
                self.known.push(Known {
                    session: session.clone(),
                    last_heard_ns: now_ns,
                    interval_ns: None,
                });
            }
        }
        if matches && self.first_match_ns.is_none() {
            self.first_match_ns = Some(now_ns);
        }
        let Some(chosen) = self.chosen.clone() else {
            return;
        };
        let ours = chosen.origin.same_session(&session.origin);
        if ours && !self.ended {
            if session.origin.version != chosen.origin.version {
                self.follow(chosen, session, notices, false);
            }
        } else if matches && (ours || self.ended) {
            self.ended = false;
            self.follow(chosen, session, notices, true);
        } else if matches && !self.competing_named.contains(&session.origin) {
            self.competing_named.push(session.origin.clone());
            notices.push(Notice::Competing(session));
        }
    }

    fn evict_oldest(&mut self) {
        let chosen = self.chosen.as_ref().map(|c| &c.origin);
        let oldest = self
            .known
            .iter()
            .enumerate()
            .filter(|(_, k)| chosen.map_or(true, |c| !c.same_session(&k.session.origin)))
            .min_by_key(|(_, k)| k.last_heard_ns)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            let gone = self.known.swap_remove(i).session.origin;
            self.competing_named.retain(|o| !o.same_session(&gone));
        }
    }

    fn follow(&mut self, old: Session, new: Session, notices: &mut Vec<Notice>, returned: bool) {
        self.chosen = Some(new.clone());
        notices.push(if !old.same_stream(&new) {
            Notice::Moved { from: old, to: new }
        } else if returned {
            Notice::Returned(new)
        } else {
            Notice::Reannounced(new)
        });
    }

    fn delete(&mut self, origin: &Origin, notices: &mut Vec<Notice>) {
        self.known
            .retain(|k| !k.session.origin.same_session(origin));
        self.competing_named.retain(|o| !o.same_session(origin));
        if let Some(c) = &self.chosen {
            if !self.ended && c.origin.same_session(origin) {
                self.ended = true;
                notices.push(Notice::Deleted(c.clone()));
            }
        }
    }

    fn tick_into(&mut self, now_ns: u64, notices: &mut Vec<Notice>) {
        let expired: Vec<Origin> = self
            .known
            .iter()
            .filter(|k| now_ns.saturating_sub(k.last_heard_ns) > k.lifetime_ns())
            .map(|k| k.session.origin.clone())
            .collect();
        for origin in expired {
            self.known
                .retain(|k| !k.session.origin.same_session(&origin));
            self.competing_named.retain(|o| !o.same_session(&origin));
            if let Some(c) = &self.chosen {
                if !self.ended && c.origin.same_session(&origin) {
                    self.ended = true;
                    notices.push(Notice::Expired(c.clone()));
                }
            }
        }
        if self.chosen.is_some() {
            return;
        }
        let matching: Vec<&Session> = self
            .known
            .iter()
            .map(|k| &k.session)
            .filter(|s| self.matches(&s.name))
            .collect();
        match matching.as_slice() {
            [] => {}
            [only] => {
                let gathered = self
                    .first_match_ns
                    .is_some_and(|t| now_ns.saturating_sub(t) >= GATHER_NS);
                if self.pattern.is_some() || gathered {
                    let s = (*only).clone();
                    self.chosen = Some(s.clone());
                    notices.push(Notice::Chosen(s));
                }
            }
            several => {
                let mut names: Vec<String> = several.iter().map(|s| s.name.clone()).collect();
                names.sort();
                if names != self.last_several {
                    self.last_several = names.clone();
                    notices.push(Notice::Several(names));
                }
            }
        }
    }
}

/// The address the receive side listens on for `session`: the group and
/// port when it is multicast, else our own port on every address.
pub fn listen_for(session: &Session) -> (SocketAddr, Option<IpAddr>) {
    let any: IpAddr = match session.address {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let group = Some(session.address).filter(|a| a.is_multicast());
    (SocketAddr::new(any, session.port), group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn from() -> SocketAddr {
        "127.0.0.1:9875".parse().unwrap()
    }

    fn sdp(name: &str, id: u64, version: u64, group: &str, port: u16, map: &str) -> String {
        format!(
            "v=0\no=- {id} {version} IN IP4 10.0.0.{id}\ns={name}\nc=IN IP4 {group}/1\nt=0 0\n\
             m=audio {port} RTP/AVP 127\na=rtpmap:127 {map}\n"
        )
    }

    fn announce(text: &str) -> Vec<u8> {
        sap::write(false, "10.0.0.1".parse().unwrap(), 1, text)
    }

    fn delete(text: &str) -> Vec<u8> {
        sap::write(true, "10.0.0.1".parse().unwrap(), 1, text)
    }

    #[test]
    fn glob_star_and_question_mark() {
        assert!(glob("hall", "hall"));
        assert!(!glob("hall", "hall2"));
        assert!(glob("PulseAudio*", "PulseAudio RTP Stream on vm"));
        assert!(glob("*on vm", "PulseAudio RTP Stream on vm"));
        assert!(glob("*RTP*vm", "PulseAudio RTP Stream on vm"));
        assert!(glob("h?ll", "hall"));
        assert!(!glob("h?ll", "hll"));
        assert!(glob("*", ""));
        assert!(!glob("?", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("küche*", "küche 1"));
    }

    #[test]
    fn named_session_chosen_at_once_others_ignored() {
        let mut f = Follower::new(Some("hall*".into()));
        let n = f.hear(
            &announce(&sdp("door", 1, 1, "239.0.0.1", 5004, "L16/48000/2")),
            from(),
            0,
        );
        assert!(n.is_empty(), "{n:?}");
        let n = f.hear(
            &announce(&sdp("hall 2", 2, 1, "239.0.0.2", 5006, "L16/48000/2")),
            from(),
            S,
        );
        let [Notice::Chosen(s)] = n.as_slice() else {
            panic!("{n:?}")
        };
        assert_eq!((s.name.as_str(), s.port), ("hall 2", 5006));
        assert_eq!(
            listen_for(s),
            (
                "0.0.0.0:5006".parse().unwrap(),
                Some("239.0.0.2".parse().unwrap())
            )
        );
    }

    #[test]
    fn without_name_the_only_session_is_chosen_after_gathering() {
        let mut f = Follower::new(None);
        let text = sdp("desk", 1, 1, "239.0.0.1", 5004, "L16/48000/2");
        assert!(f.hear(&announce(&text), from(), 0).is_empty());
        assert!(f.tick(GATHER_NS / 2).is_empty());
        let n = f.tick(GATHER_NS);
        assert!(
            matches!(n.as_slice(), [Notice::Chosen(s)] if s.name == "desk"),
            "{n:?}"
        );
    }

    #[test]
    fn several_without_name_are_named_and_waited_out() {
        let mut f = Follower::new(None);
        let a = sdp("desk", 1, 1, "239.0.0.1", 5004, "L16/48000/2");
        let b = sdp("attic", 2, 1, "239.0.0.2", 5004, "L16/48000/2");
        f.hear(&announce(&a), from(), 0);
        let n = f.hear(&announce(&b), from(), S / 10);
        assert_eq!(
            n,
            vec![Notice::Several(vec!["attic".into(), "desk".into()])]
        );
        // Said once, not at every announcement.
        assert!(f.hear(&announce(&b), from(), 5 * S).is_empty());
        // One leaves: the other is chosen.
        f.hear(&delete(&b), from(), 6 * S);
        let n = f.tick(6 * S);
        assert!(
            matches!(n.as_slice(), [Notice::Chosen(s)] if s.name == "desk"),
            "{n:?}"
        );
    }

    #[test]
    fn reannouncement_deletion_return_and_move() {
        let mut f = Follower::new(Some("hall".into()));
        let v1 = sdp("hall", 1, 1, "239.0.0.1", 5004, "L16/48000/2");
        f.hear(&announce(&v1), from(), 0);
        // The same announcement again: nothing to say.
        assert!(f.hear(&announce(&v1), from(), 5 * S).is_empty());
        // A new version of the same stream.
        let v2 = v1.replace(" 1 1 IN", " 1 2 IN");
        let n = f.hear(&announce(&v2), from(), 10 * S);
        assert!(matches!(n.as_slice(), [Notice::Reannounced(s)] if s.origin.version == 2));
        // Deleted: the stream stops.
        let n = f.hear(&delete(&v2), from(), 11 * S);
        assert!(
            matches!(n.as_slice(), [Notice::Deleted(s)] if s.name == "hall"),
            "{n:?}"
        );
        // A restarted sender (new session id, same stream) is taken again.
        let back = sdp("hall", 7, 0, "239.0.0.1", 5004, "L16/48000/2");
        let n = f.hear(&announce(&back), from(), 20 * S);
        assert!(matches!(n.as_slice(), [Notice::Returned(s)] if s.origin.session_id == 7));
        // A new version on another port: the receive side must move.
        let moved = sdp("hall", 7, 1, "239.0.0.1", 5008, "L16/48000/2");
        let n = f.hear(&announce(&moved), from(), 25 * S);
        assert!(
            matches!(n.as_slice(), [Notice::Moved { from, to }] if from.port == 5004 && to.port == 5008),
            "{n:?}"
        );
        // A format change is a move too.
        let mono = sdp("hall", 7, 2, "239.0.0.1", 5008, "L16/48000/1");
        assert!(matches!(
            f.hear(&announce(&mono), from(), 30 * S).as_slice(),
            [Notice::Moved { .. }]
        ));
    }

    #[test]
    fn a_second_matching_session_while_playing_is_named_once() {
        let mut f = Follower::new(Some("h*".into()));
        f.hear(
            &announce(&sdp("hall", 1, 1, "239.0.0.1", 5004, "PCMU/8000")),
            from(),
            0,
        );
        let other = sdp("hub", 2, 1, "239.0.0.2", 5004, "PCMU/8000");
        let n = f.hear(&announce(&other), from(), S);
        assert!(matches!(n.as_slice(), [Notice::Competing(s)] if s.name == "hub"));
        assert!(f.hear(&announce(&other), from(), 6 * S).is_empty());
        assert_eq!(f.chosen().map(|s| s.name.as_str()), Some("hall"));
    }

    #[test]
    fn a_flood_of_sessions_stays_bounded_and_keeps_the_chosen_one() {
        let mut f = Follower::new(Some("*".into()));
        f.hear(
            &announce(&sdp("hall", 1, 1, "239.0.0.1", 5004, "PCMU/8000")),
            from(),
            0,
        );
        for id in 2..2000u64 {
            let text = sdp("junk", id, 1, "239.0.0.2", 5004, "PCMU/8000");
            f.hear(&announce(&text), from(), id * 1000);
        }
        assert_eq!(f.known.len(), MAX_SESSIONS);
        assert!(f.competing_named.len() < MAX_SESSIONS);
        assert!(f.known.iter().any(|k| k.session.name == "hall"));
        assert_eq!(f.chosen().map(|s| s.name.as_str()), Some("hall"));
    }

    #[test]
    fn silent_session_expires_after_ten_intervals() {
        let mut f = Follower::new(Some("hall".into()));
        let v = sdp("hall", 1, 1, "239.0.0.1", 5004, "PCMU/8000");
        f.hear(&announce(&v), from(), 0);
        f.hear(&announce(&v), from(), 5 * S);
        // Ten 5 s intervals: 50 s after the last announcement.
        assert!(f.tick(54 * S).is_empty());
        let n = f.tick(56 * S);
        assert!(matches!(n.as_slice(), [Notice::Expired(_)]), "{n:?}");
        assert!(f.tick(100 * S).is_empty());
    }

    #[test]
    fn junk_counted_by_reason_never_fatal() {
        let mut f = Follower::new(None);
        let good = announce(&sdp("hall", 1, 1, "239.0.0.1", 5004, "PCMU/8000"));
        let mut encrypted = good.clone();
        encrypted[0] |= 0x02;
        let mut compressed = good.clone();
        compressed[0] |= 0x01;
        let opus = announce(&sdp("x", 3, 1, "239.0.0.1", 5004, "opus/48000/2"));
        for junk in [&[0x80u8, 1, 2][..], &encrypted, &compressed, &opus, b""] {
            let n = f.hear(junk, from(), 0);
            assert!(matches!(n.as_slice(), [Notice::Refused { .. }]), "{n:?}");
        }
        assert_eq!(
            f.refusals(),
            Refusals {
                malformed: 2,
                encrypted: 1,
                compressed: 1,
                not_sdp: 0,
                unusable_sdp: 1
            }
        );
        assert_eq!(f.refusals().total(), 5);
        // The good one still works after all that.
        let n = f.hear(&good, from(), 0);
        assert!(n.is_empty());
        assert!(matches!(f.tick(GATHER_NS).as_slice(), [Notice::Chosen(_)]));
    }

    #[test]
    fn pipewire_capture_is_chosen_and_its_deletion_ends_it() {
        let mut f = Follower::new(Some("PipeWire*".into()));
        let n = f.hear(
            include_bytes!("../rtp/testdata/pipewire_announce.sap"),
            from(),
            0,
        );
        assert!(
            matches!(n.as_slice(), [Notice::Chosen(s)] if s.port == 46000),
            "{n:?}"
        );
        let n = f.hear(
            include_bytes!("../rtp/testdata/pipewire_delete.sap"),
            from(),
            S,
        );
        assert!(matches!(n.as_slice(), [Notice::Deleted(_)]), "{n:?}");
    }

    #[test]
    fn pulseaudio_capture_is_chosen_and_its_deletion_ends_it() {
        let mut f = Follower::new(Some("PulseAudio*".into()));
        let n = f.hear(
            include_bytes!("../rtp/testdata/pulseaudio_announce.sap"),
            from(),
            0,
        );
        assert!(
            matches!(n.as_slice(), [Notice::Chosen(s)] if s.port == 46000),
            "{n:?}"
        );
        let n = f.hear(
            include_bytes!("../rtp/testdata/pulseaudio_delete.sap"),
            from(),
            S,
        );
        assert!(matches!(n.as_slice(), [Notice::Deleted(_)]), "{n:?}");
    }
}
