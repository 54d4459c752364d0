//! Fuzz target: SRTP/SRTCP unprotect on arbitrary bytes and on genuine
//! packets with arbitrary damage. Nothing may panic. Arbitrary bytes are
//! never accepted (an 80-bit tag cannot be guessed). A genuine packet,
//! built from the input (header fields, CSRCs, extension, payload) and
//! protected by a sender context, comes back exactly once as the packet
//! that was protected, then counts as a replay; the same packet with one
//! byte changed or cut short is refused, and does not disturb the
//! receiver: the genuine packet still passes afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netspeaker::rtp::srtp::{MasterKey, SrtpContext, SrtpError, Suite, MAX_OVERHEAD};

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, rest) = data.split_at(n);
    *data = rest;
    head
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fuzz_target!(|input: &[u8]| {
    let key = MasterKey::new([0x2b; 16], [0xf0; 14]);
    let mut data = input;
    let mode = byte(&mut data);
    let suite = if mode & 1 == 0 {
        Suite::AesCm128HmacSha1_80
    } else {
        Suite::AesCm128HmacSha1_32
    };
    let mut rx = SrtpContext::new(&key, suite);

    if mode & 2 == 0 {
        // Arbitrary bytes: never accepted with the 80-bit tag, never a
        // panic with either.
        let mut buf = data.to_vec();
        let r = rx.unprotect(&mut buf);
        if suite == Suite::AesCm128HmacSha1_80 {
            assert!(r.is_err(), "forged datagram accepted: {data:02x?}");
        }
        if let Ok(n) = r {
            assert!(n <= data.len());
        }
        return;
    }

    // A genuine RTP packet from the input's bytes.
    let csrc_count = byte(&mut data) & 0x0f;
    let extension_words = if mode & 4 != 0 {
        Some(u16::from(byte(&mut data) & 0x07))
    } else {
        None
    };
    let seq = u16::from_be_bytes([byte(&mut data), byte(&mut data)]);
    let ssrc = u32::from_be_bytes([
        byte(&mut data),
        byte(&mut data),
        byte(&mut data),
        byte(&mut data),
    ]);
    let damage_at = usize::from(byte(&mut data));
    let damage = byte(&mut data);
    let payload = take(&mut data, 1500);
    let mut plain = vec![
        0x80 | csrc_count | if extension_words.is_some() { 0x10 } else { 0 },
        0,
    ];
    plain.extend_from_slice(&seq.to_be_bytes());
    plain.extend_from_slice(&[0, 0, 0, 0]);
    plain.extend_from_slice(&ssrc.to_be_bytes());
    plain.extend(std::iter::repeat(0xcc).take(4 * usize::from(csrc_count)));
    if let Some(words) = extension_words {
        plain.extend_from_slice(&[0xbe, 0xde]);
        plain.extend_from_slice(&words.to_be_bytes());
        plain.extend(std::iter::repeat(0xee).take(4 * usize::from(words)));
    }
    plain.extend_from_slice(payload);

    let mut tx = SrtpContext::new(&key, suite);
    let mut wire = plain.clone();
    wire.resize(plain.len() + MAX_OVERHEAD, 0);
    let n = tx
        .protect(&mut wire, plain.len())
        .expect("protect a well-formed packet");
    assert_eq!(n, plain.len() + suite.rtp_tag_len());
    wire.truncate(n);

    // Damaged first: refused, and the receiver is not moved by it.
    if damage != 0 || mode & 8 != 0 {
        let mut bad = wire.clone();
        if mode & 8 != 0 {
            bad.truncate(damage_at % bad.len());
        } else {
            let at = damage_at % bad.len();
            bad[at] ^= damage;
        }
        assert!(rx.unprotect(&mut bad).is_err(), "damaged packet accepted");
    }
    let mut got = wire.clone();
    let n = rx.unprotect(&mut got).expect("the genuine packet passes");
    assert_eq!(&got[..n], &plain[..]);
    let mut again = wire.clone();
    assert_eq!(rx.unprotect(&mut again), Err(SrtpError::Replayed));
});
