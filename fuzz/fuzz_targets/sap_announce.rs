//! Fuzz target: arbitrary datagrams on the SAP port into `net::sap::parse`,
//! the SDP text into `rtp::sdp::parse`, and both into the receiver's
//! `receive::sap::Follower` (with a clock that moves by the input's
//! bytes). Nothing may panic; a parsed packet's SDP lies within the
//! datagram after its header, origin and authentication data; a parsed
//! session has a port, at least one playable format, each within the
//! rates and channels the receiver takes, and its payload map resolves
//! each of its payload types to that format. The first byte chooses
//! whether the rest is a datagram or bare SDP text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netspeaker::audio::format::{MAX_CHANNELS, MAX_RATE, MIN_RATE};
use netspeaker::net::sap;
use netspeaker::receive::sap::Follower;
use netspeaker::rtp::sdp::{self, Session};

fn check_session(s: &Session) {
    assert_ne!(s.port, 0);
    assert!(!s.formats.is_empty());
    let map = s.payload_map();
    for &(pt, f) in &s.formats {
        assert!(pt < 128);
        assert!((MIN_RATE..=MAX_RATE).contains(&f.rate));
        assert!((1..=MAX_CHANNELS).contains(&f.channels));
        // The first listing of a type wins in the map only if it is the
        // last set: every listed type maps to one of its listed formats.
        let got = map.get(pt);
        assert!(s.formats.iter().any(|&(p, g)| p == pt && Some(g) == got));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Ok(s) = sdp::parse(text) {
                check_session(&s);
            }
            let _ = sdp::origin_of(text);
            // As an announcement, and as a deletion.
            let mut f = Follower::new(None);
            let _ = f.hear(&sap::write(false, "10.0.0.1".parse().unwrap(), 1, text), "127.0.0.1:9875".parse().unwrap(), 0);
            let _ = f.hear(&sap::write(true, "10.0.0.1".parse().unwrap(), 1, text), "127.0.0.1:9875".parse().unwrap(), 1);
            let _ = f.tick(u64::MAX);
        }
        return;
    }
    if let Ok(p) = sap::parse(rest) {
        let start = rest.as_ptr() as usize;
        let at = p.sdp.as_ptr() as usize;
        let header = 4 + if p.origin.is_ipv6() { 16 } else { 4 } + 4 * usize::from(p.auth_words);
        assert!(at >= start + header && at + p.sdp.len() <= start + rest.len());
        if let Ok(s) = sdp::parse(p.sdp) {
            check_session(&s);
        }
    }
    // Datagrams one after another, split at zero bytes, with time moving.
    let mut f = Follower::new(if mode & 2 == 0 { None } else { Some("*a?".into()) });
    let mut now = 0u64;
    for (i, chunk) in rest.split(|&b| b == 0xff).enumerate() {
        now = now.saturating_add(u64::from(chunk.first().copied().unwrap_or(0)) << 28);
        let _ = f.hear(chunk, "127.0.0.1:9875".parse().unwrap(), now);
        if i % 3 == 0 {
            let _ = f.tick(now);
        }
    }
});
