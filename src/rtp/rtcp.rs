//! RTCP (RFC 3550 section 6): the sender's reports and the parts of them
//! a receiver reads.
//!
//! Writing (sender): a compound packet that starts with a sender report
//! (§6.4.1, no report blocks: netspeaker-send receives nothing) followed
//! by an SDES chunk with the CNAME (§6.5.1), as §6.1 requires of every
//! compound; at the end the same with a BYE (§6.6) appended. The NTP
//! timestamp is CLOCK_REALTIME in the 64-bit NTP format (§4), and the RTP
//! timestamp is the media clock's reading at that same instant, which the
//! caller computes; the counts are the RTP packets and payload octets sent
//! so far, wrapping at 2^32 as §6.4.1 lets them.
//!
//! Reading (receiver): a datagram recognised as RTCP is walked by its
//! length fields and must be consistent to the last byte (every part
//! version 2, lengths ending exactly at the datagram's end, padding only
//! on the last part); anything else yields `None`, and the caller drops
//! it. From a consistent compound, [`bye_sources`] returns the SSRC list
//! of the first BYE with at least one source, and [`sender_report`] the
//! sender info of the first SR. Not checked: that the compound starts
//! with SR or RR (RFC 5506 reduced-size RTCP need not).

/// RTCP packet types (RFC 3550 §12.1).
pub const SR: u8 = 200;
pub const RR: u8 = 201;
pub const SDES: u8 = 202;
/// RTCP packet type of BYE.
pub const BYE: u8 = 203;

/// SDES item type of the canonical name.
const CNAME: u8 = 1;

/// Length of an RTCP part's header (version, count, type, length).
const RTCP_HEADER: usize = 4;

/// Header, SSRC and the 20-byte sender info.
const SR_LEN: usize = 28;

/// The longest CNAME an SDES item holds (its length is one octet).
pub const MAX_CNAME: usize = 255;

/// The longest compound [`write_report`] writes: SR, SDES with the longest
/// CNAME (padded), BYE with one source.
pub const MAX_REPORT_LEN: usize = SR_LEN + 8 + (2 + MAX_CNAME + 1 + 3) + 8;

/// Seconds from the NTP era (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

/// The sender info of an SR (§6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall clock, 64-bit NTP format: seconds since 1900 and a binary
    /// fraction.
    pub ntp: u64,
    /// The media clock at the same instant as `ntp`.
    pub rtp_timestamp: u32,
    pub packets: u32,
    /// Payload octets (headers and padding not counted).
    pub octets: u32,
}

/// A sender report's source and sender info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    pub info: SenderInfo,
}

/// A Unix time in nanoseconds as a 64-bit NTP timestamp.
pub fn ntp_from_unix_ns(unix_ns: u64) -> u64 {
    let secs = unix_ns / 1_000_000_000 + NTP_UNIX_OFFSET_S;
    let frac = ((unix_ns % 1_000_000_000) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// A 64-bit NTP timestamp as Unix nanoseconds (0 for times before 1970;
/// era 0 only, which lasts until 2036 and is what senders write now).
pub fn unix_ns_from_ntp(ntp: u64) -> u64 {
    let secs = (ntp >> 32).saturating_sub(NTP_UNIX_OFFSET_S);
    let frac = ((ntp & 0xffff_ffff) * 1_000_000_000 + (1 << 31)) >> 32;
    if ntp >> 32 < NTP_UNIX_OFFSET_S {
        return 0;
    }
    secs * 1_000_000_000 + frac
}

/// Writes SR + SDES(CNAME) (+ BYE with `bye`) for `ssrc` into `out`;
/// returns its length, or `None` when `out` is too short (it needs at most
/// [`MAX_REPORT_LEN`]) or `cname` is longer than [`MAX_CNAME`].
pub fn write_report(
    out: &mut [u8],
    ssrc: u32,
    info: &SenderInfo,
    cname: &[u8],
    bye: bool,
) -> Option<usize> {
    if cname.len() > MAX_CNAME {
        return None;
    }
    // SDES chunk: SSRC, CNAME item, then at least one null octet ending
    // the item list, padded to a 32-bit boundary (§6.5).
    let chunk = 4 + 2 + cname.len();
    let chunk_padded = (chunk + 4) & !3;
    let sdes_len = RTCP_HEADER + chunk_padded;
    let len = SR_LEN + sdes_len + if bye { 8 } else { 0 };
    let out = out.get_mut(..len)?;
    out.fill(0);
    out[0] = 0x80;
    out[1] = SR;
    out[2..4].copy_from_slice(&((SR_LEN / 4 - 1) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&info.ntp.to_be_bytes());
    out[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
    out[20..24].copy_from_slice(&info.packets.to_be_bytes());
    out[24..28].copy_from_slice(&info.octets.to_be_bytes());
    let s = &mut out[SR_LEN..SR_LEN + sdes_len];
    s[0] = 0x81;
    s[1] = SDES;
    s[2..4].copy_from_slice(&((sdes_len / 4 - 1) as u16).to_be_bytes());
    s[4..8].copy_from_slice(&ssrc.to_be_bytes());
    s[8] = CNAME;
    s[9] = cname.len() as u8;
    s[10..10 + cname.len()].copy_from_slice(cname);
    if bye {
        let b = &mut out[SR_LEN + sdes_len..];
        b[0] = 0x81;
        b[1] = BYE;
        b[2..4].copy_from_slice(&1u16.to_be_bytes());
        b[4..8].copy_from_slice(&ssrc.to_be_bytes());
    }
    Some(len)
}

/// Calls `part(b0, packet_type, part)` for each part of a consistent
/// compound; `None` (and no calls past the flaw) if it is not one.
fn walk<'a>(datagram: &'a [u8], mut part: impl FnMut(u8, u8, &'a [u8])) -> Option<()> {
    if datagram.is_empty() {
        return None;
    }
    let mut at = 0;
    while at < datagram.len() {
        let header = datagram.get(at..at + RTCP_HEADER)?;
        let (b0, packet_type) = (header[0], header[1]);
        let words = u16::from_be_bytes([header[2], header[3]]) as usize;
        if b0 >> 6 != 2 {
            return None;
        }
        let end = at + 4 * (words + 1);
        let this = datagram.get(at..end)?;
        if b0 & 0x20 != 0 && end != datagram.len() {
            return None;
        }
        part(b0, packet_type, this);
        at = end;
    }
    Some(())
}

/// Whether `datagram` is a well-formed compound RTCP packet: every part
/// version 2 with a packet type in RTCP's range (192-223, which RFC 5761
/// §4 keeps free of RTP payload types: SR, RR, SDES, BYE, APP and the
/// feedback and XR types of later RFCs), lengths ending exactly at the
/// end.
pub fn is_compound(datagram: &[u8]) -> bool {
    let mut types_ok = true;
    walk(datagram, |_, packet_type, _| {
        types_ok &= (192..=223).contains(&packet_type);
    })
    .is_some()
        && types_ok
}

/// The SSRC list (4 bytes per source, big-endian) of the first BYE in a
/// well-formed compound RTCP packet, or `None`.
pub fn bye_sources(datagram: &[u8]) -> Option<&[u8]> {
    let mut found = None;
    let mut bad = false;
    walk(datagram, |b0, packet_type, part| {
        if packet_type == BYE && found.is_none() && !bad {
            let count = (b0 & 0x1f) as usize;
            match part.get(RTCP_HEADER..RTCP_HEADER + 4 * count) {
                Some(list) if count > 0 => found = Some(list),
                Some(_) => {}
                None => bad = true,
            }
        }
    })?;
    if bad {
        return None;
    }
    found
}

/// The first sender report of a well-formed compound RTCP packet, or
/// `None`. An SR whose length cannot hold its report blocks is a flaw of
/// the whole compound.
pub fn sender_report(datagram: &[u8]) -> Option<SenderReport> {
    let mut found = None;
    let mut bad = false;
    walk(datagram, |b0, packet_type, part| {
        if packet_type != SR || found.is_some() || bad {
            return;
        }
        let blocks = (b0 & 0x1f) as usize;
        if part.len() < SR_LEN + 24 * blocks {
            bad = true;
            return;
        }
        let be32 =
            |at: usize| u32::from_be_bytes([part[at], part[at + 1], part[at + 2], part[at + 3]]);
        found = Some(SenderReport {
            ssrc: be32(4),
            info: SenderInfo {
                ntp: (u64::from(be32(8)) << 32) | u64::from(be32(12)),
                rtp_timestamp: be32(16),
                packets: be32(20),
                octets: be32(24),
            },
        });
    })?;
    if bad {
        return None;
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

    fn info() -> SenderInfo {
        SenderInfo {
            ntp: 0xe9a1_b2c3_8000_0000,
            rtp_timestamp: 0x1234_5678,
            packets: 51,
            octets: 16_320,
        }
    }

    #[test]
    fn report_layout_is_rfc_3550() {
        let mut out = [0xaau8; MAX_REPORT_LEN];
        let len = write_report(&mut out, 0xdead_beef, &info(), b"ns@10.0.0.2", false).unwrap();
        // SR: V=2, RC=0, PT=200, length 6 words, SSRC, NTP, RTP, counts.
        assert_eq!(out[..4], [0x80, 200, 0, 6]);
        assert_eq!(out[4..8], 0xdead_beefu32.to_be_bytes());
        assert_eq!(out[8..16], info().ntp.to_be_bytes());
        assert_eq!(out[16..20], 0x1234_5678u32.to_be_bytes());
        assert_eq!(out[20..24], 51u32.to_be_bytes());
        assert_eq!(out[24..28], 16_320u32.to_be_bytes());
        // SDES: SC=1, PT=202; chunk = SSRC, CNAME(1) len 11, text, null
        // end item, padded to 4: 4 + 2 + 11 + 1 = 18 -> 20 bytes.
        assert_eq!(out[28..32], [0x81, 202, 0, 5]);
        assert_eq!(out[32..36], 0xdead_beefu32.to_be_bytes());
        assert_eq!(out[36..38], [1, 11]);
        assert_eq!(&out[38..49], b"ns@10.0.0.2");
        assert_eq!(out[49..52], [0, 0, 0]);
        assert_eq!(len, 52);
        assert_eq!(
            sender_report(&out[..len]).map(|r| (r.ssrc, r.info)),
            Some((0xdead_beef, info()))
        );
        assert_eq!(bye_sources(&out[..len]), None);

        let len = write_report(&mut out, 7, &info(), b"abcd", true).unwrap();
        // A CNAME of 4: 4 + 2 + 4 = 10, the null octet and padding: 12,
        // 16 with the header, length field 3.
        assert_eq!(out[28..32], [0x81, 202, 0, 3]);
        assert_eq!(out[44..52], [0x81, 203, 0, 1, 0, 0, 0, 7]);
        assert_eq!(len, 52);
        assert_eq!(bye_sources(&out[..len]), Some(&list(&[7])[..]));
        assert_eq!(sender_report(&out[..len]).unwrap().ssrc, 7);
    }

    #[test]
    fn every_cname_length_pads_with_at_least_one_null() {
        let mut out = [0u8; MAX_REPORT_LEN];
        for n in 0..=MAX_CNAME {
            let cname = vec![b'x'; n];
            let len = write_report(&mut out, 1, &info(), &cname, true).unwrap();
            assert_eq!(len % 4, 0);
            assert!(len <= MAX_REPORT_LEN);
            let sdes_end = len - 8;
            assert_eq!(out[38 + n], 0, "null item after a CNAME of {n}");
            assert!(out[38 + n..sdes_end].iter().all(|&b| b == 0));
            assert!(sdes_end - (38 + n) <= 4);
            assert!(sender_report(&out[..len]).is_some());
        }
        assert_eq!(
            write_report(&mut out, 1, &info(), &[b'x'; 256], false),
            None
        );
        assert_eq!(write_report(&mut out[..39], 1, &info(), b"x", false), None);
    }

    #[test]
    fn ntp_conversion_round_trips_and_matches_the_epoch() {
        // 1970-01-01 is NTP second 2 208 988 800; half a second is 2^31.
        assert_eq!(ntp_from_unix_ns(0), 2_208_988_800u64 << 32);
        assert_eq!(
            ntp_from_unix_ns(500_000_000),
            (2_208_988_800u64 << 32) | (1 << 31)
        );
        for ns in [0u64, 1, 999_999_999, 1_764_585_600_123_456_789] {
            let back = unix_ns_from_ntp(ntp_from_unix_ns(ns));
            assert!(back.abs_diff(ns) <= 1, "{ns} -> {back}");
        }
        assert_eq!(unix_ns_from_ntp(5 << 32), 0);
    }

    #[test]
    fn sender_report_with_blocks_and_flaws() {
        let mut out = [0u8; MAX_REPORT_LEN];
        let len = write_report(&mut out, 9, &info(), b"c", false).unwrap();
        let good = out[..len].to_vec();
        // An RR first, then the SR: still found.
        let mut after_rr = rr(1);
        after_rr.extend_from_slice(&good);
        assert_eq!(sender_report(&after_rr).unwrap().ssrc, 9);
        // An SR with one report block (24 bytes) is read past its blocks.
        let mut with_block = good[..SR_LEN].to_vec();
        with_block[0] = 0x81;
        with_block[3] = 12;
        with_block.extend_from_slice(&[0u8; 24]);
        assert_eq!(sender_report(&with_block).unwrap().info, info());
        // Claims one block but has no room for it.
        let mut short = good[..SR_LEN].to_vec();
        short[0] = 0x81;
        assert_eq!(sender_report(&short), None);
        // Truncated, trailing byte, an SR too short for its sender info.
        assert_eq!(sender_report(&good[..len - 1]), None);
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(sender_report(&trailing), None);
        assert_eq!(sender_report(&[0x80, 200, 0, 1, 0, 0, 0, 9]), None);
        assert_eq!(sender_report(&rr(3)), None);
    }

    #[test]
    fn compounds_are_told_from_other_datagrams() {
        let mut out = [0u8; MAX_REPORT_LEN];
        let len = write_report(&mut out, 9, &info(), b"c", true).unwrap();
        assert!(is_compound(&out[..len]));
        assert!(is_compound(&rr(4)));
        // An RTP packet (PT 96, version 2) and an RTCP part with a type
        // outside 192-223, a cut compound, nothing at all.
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(!is_compound(&rtp));
        let mut odd = rr(4);
        odd[1] = 190;
        assert!(!is_compound(&odd));
        assert!(!is_compound(&out[..len - 2]));
        assert!(!is_compound(&[]));
    }

    #[test]
    fn random_datagrams_never_panic_the_sr_reader() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut found = 0;
        for _ in 0..200_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 64) as usize;
            let mut d: Vec<u8> = (0..len).map(|i| (rng >> (i % 8 * 8)) as u8).collect();
            if len >= 28 && rng % 2 == 0 {
                d.truncate(len / 4 * 4);
                d[0] = 0x80 | ((rng >> 40) as u8 % 3);
                d[1] = SR;
                let words = (d.len() / 4 - 1) as u16;
                d[2..4].copy_from_slice(&words.to_be_bytes());
            }
            if let Some(r) = sender_report(&d) {
                assert_eq!(r.ssrc.to_be_bytes(), d[4..8]);
                found += 1;
            }
        }
        assert!(found > 0, "the generator never made an SR");
    }
}
