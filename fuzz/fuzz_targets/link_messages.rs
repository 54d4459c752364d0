//! Fuzz target: arbitrary bytes as an rtnetlink datagram into the link
//! watcher's parser and its tracker. Nothing may panic or loop; a message
//! yielded never claims more messages than a 16-byte header each allows;
//! a name is 1-15 bytes without NUL; and the tracker's idea of where the
//! interface is changes only with a reported appearance or departure.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netspeaker::net::link::{Change, LinkMessage, Messages, Target, Tracker};

fuzz_target!(|data: &[u8]| {
    let mut trackers = [
        Tracker::new(Target::parse("wlan0"), None, &[]),
        Tracker::new(Target::parse("10.0.0.1"), Some(3), &[]),
        Tracker::new(Target::parse("fd00::1"), None, &[]),
    ];
    let mut count = 0;
    for message in Messages::new(data) {
        count += 1;
        assert!(count <= data.len() / 16, "more messages than headers");
        if let LinkMessage::Link {
            name: Some(name), ..
        } = message
        {
            let bytes = name.as_bytes();
            assert!((1..16).contains(&bytes.len()) && !bytes.contains(&0));
        }
        for t in &mut trackers {
            let before = t.index();
            let change = t.update(&message);
            match change {
                Some(Change::Appeared { index }) => assert_eq!(t.index(), Some(index)),
                Some(Change::Gone { index }) => {
                    assert_eq!(before, Some(index));
                    assert_eq!(t.index(), None);
                }
                _ => assert_eq!(t.index(), before),
            }
        }
    }
});
