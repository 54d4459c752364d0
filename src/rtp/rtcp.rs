//! RTCP on the RTP port (RFC 5761 mux): the one message the receiver acts
//! on is BYE (RFC 3550 section 6.6), a sender saying it has left.
//!
//! Input: a datagram that `header::parse` recognised as RTCP. Output: the
//! SSRC list of the first BYE with at least one source in the compound
//! packet, or `None`. Policy: the compound packet is walked by its length
//! fields and must be consistent to the last byte (every part version 2,
//! lengths ending exactly at the datagram's end, padding only on the last
//! part, a BYE whose count fits its length); anything else, and every
//! other RTCP type, yields `None`, and the caller drops it as today. Not
//! checked: that the compound starts with SR or RR (RFC 5506 reduced-size
//! RTCP need not).

/// RTCP packet type of BYE.
pub const BYE: u8 = 203;

/// Length of an RTCP part's header (version, count, type, length).
const RTCP_HEADER: usize = 4;

/// The SSRC list (4 bytes per source, big-endian) of the first BYE in a
/// well-formed compound RTCP packet, or `None`.
pub fn bye_sources(datagram: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    let mut found = None;
    while at < datagram.len() {
        let header = datagram.get(at..at + RTCP_HEADER)?;
        let (b0, packet_type) = (header[0], header[1]);
        let words = u16::from_be_bytes([header[2], header[3]]) as usize;
        if b0 >> 6 != 2 {
            return None;
        }
        let end = at + 4 * (words + 1);
        let part = datagram.get(at..end)?;
        let padded = b0 & 0x20 != 0;
        if padded && end != datagram.len() {
            return None;
        }
        if packet_type == BYE && found.is_none() {
            let count = (b0 & 0x1f) as usize;
            let list = part.get(RTCP_HEADER..RTCP_HEADER + 4 * count)?;
            if count > 0 {
                found = Some(list);
            }
        }
        at = end;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver report with no blocks, from SSRC `from`.
    fn rr(from: u32) -> Vec<u8> {
        let mut d = vec![0x80, 201, 0, 1];
        d.extend_from_slice(&from.to_be_bytes());
        d
    }

    /// A BYE for `ssrcs`, with an optional reason of `reason_words` words.
    fn bye(ssrcs: &[u32], reason_words: u16) -> Vec<u8> {
        let words = ssrcs.len() as u16 + reason_words;
        let mut d = vec![0x80 | ssrcs.len() as u8, BYE];
        d.extend_from_slice(&words.to_be_bytes());
        for s in ssrcs {
            d.extend_from_slice(&s.to_be_bytes());
        }
        for _ in 0..reason_words {
            d.extend_from_slice(&[3, b'b', b'y', b'e']);
        }
        d
    }

    fn list(ssrcs: &[u32]) -> Vec<u8> {
        ssrcs.iter().flat_map(|s| s.to_be_bytes()).collect()
    }

    #[test]
    fn bye_alone_and_in_a_compound() {
        assert_eq!(bye_sources(&bye(&[7], 0)), Some(&list(&[7])[..]));
        let mut d = rr(1);
        d.extend(bye(&[7, 8], 1));
        assert_eq!(bye_sources(&d), Some(&list(&[7, 8])[..]));
    }

    #[test]
    fn random_datagrams_never_panic_and_lists_are_whole_sources() {
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut found = 0;
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 48) as usize;
            let mut d: Vec<u8> = (0..len).map(|i| (rng >> (i % 8 * 8)) as u8).collect();
            // Bias towards the shapes the walk reads: version 2, BYE.
            if let Some(b) = d.get_mut(0) {
                *b = (*b & 0x3f) | 0x80;
            }
            if rng % 2 == 0 && len >= 8 {
                // One part of consistent length, a small count.
                let words = (len / 4 - 1) as u16;
                d.truncate(len / 4 * 4);
                d[0] = 0x80 | ((rng >> 40) as u8 % 4);
                d[1] = BYE;
                d[2..4].copy_from_slice(&words.to_be_bytes());
            }
            if let Some(list) = bye_sources(&d) {
                assert!(!list.is_empty() && list.len() % 4 == 0 && list.len() <= d.len());
                found += 1;
            }
        }
        assert!(found > 0, "the generator never made a BYE");
    }

    #[test]
    fn other_rtcp_and_inconsistent_compounds_are_not_byes() {
        let mut trailing = bye(&[7], 0);
        trailing.push(0);
        let mut short_list = bye(&[7, 8], 0);
        short_list[3] = 1; // length says one word: the count does not fit
        let mut version = bye(&[7], 0);
        version[0] &= 0x3f;
        let mut padded_first = rr(1);
        padded_first[0] |= 0x20;
        padded_first.extend(bye(&[7], 0));
        let mut cut = rr(1);
        cut.extend(bye(&[7], 0));
        cut.truncate(cut.len() - 1);
        for (name, d) in [
            ("receiver report", rr(1)),
            ("BYE without sources", bye(&[], 0)),
            ("byte after the last part", trailing),
            ("count beyond length", short_list),
            ("version 0", version),
            ("padding on a part not last", padded_first),
            ("truncated", cut),
            ("empty", vec![]),
            ("header only", vec![0x81, BYE]),
        ] {
            assert_eq!(bye_sources(&d), None, "{name}");
        }
    }
}
