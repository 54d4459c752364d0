//! SRTP and SRTCP (RFC 3711) with the suites AES_CM_128_HMAC_SHA1_80 and
//! _32: one [`SrtpContext`] per direction, built at startup from the
//! master key and salt, then used in place on the packet buffer, without
//! allocation.
//!
//! Input (sender): an RTP packet in a buffer with room for the tag.
//! Output: the packet with its payload encrypted (AES-CM, IV from the
//! session salt, SSRC and packet index ROC‖SEQ) and the HMAC-SHA1 tag over
//! header, payload and ROC appended. Input (receiver): a datagram. Output:
//! the plain RTP packet (tag removed, payload decrypted) or an
//! [`SrtpError`]: a packet whose tag does not verify, one already received
//! and one older than the replay window are refused, and nothing of it is
//! believed: the receive state moves only after the tag verified. An SRTCP
//! packet (RTCP packet type on the shared port) is authenticated and
//! decrypted with the SRTCP keys; SRTCP gets no replay window, as the
//! receiver only counts RTCP and drops it.
//!
//! Packet index on receive (§3.3.1): from the highest index authenticated
//! for the SSRC, the rollover counter (ROC) is guessed as ROC−1, ROC or
//! ROC+1, whichever puts SEQ nearest. Late, duplicate and reordered packets
//! inside the window of [`REPLAY_WINDOW`] packets (§3.3.2) pass once each.
//! An SSRC not seen yet is tried with ROC 0 first (a stream that just
//! started); if that fails, each further packet of that SSRC tries the
//! next [`ROC_GUESSES_PER_PACKET`] ROCs, so a receiver that starts while a
//! long-running sender is past its first 65 536 packets still locks on.
//! [`STREAMS`] SSRCs are remembered; the one unused longest makes room.
//!
//! Key derivation (§4.3) uses a key derivation rate of 0: the session keys
//! are derived once from the master key with the AES-CM PRF, labels 0, 1,
//! 2 for SRTP and 3, 4, 5 for SRTCP. No MKI. Cipher and MAC come from the
//! RustCrypto crates `aes`, `ctr`, `hmac` and `sha1`; tags are compared in
//! constant time (`Mac::verify_truncated_left`).

pub mod key;

use core::fmt;

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub use key::{MasterKey, Suite, KEY_TEXT_LEN, MASTER_KEY_LEN, MASTER_SALT_LEN};

use crate::rtp::header::{RtpError, HEADER_LEN};

type HmacSha1 = Hmac<Sha1>;
type AesCtr = ctr::Ctr128BE<Aes128>;
type AesCtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

/// AES-CM keystream from `iv` under an already expanded key.
fn aes_cm(cipher: &Aes128, iv: [u8; 16]) -> AesCtr {
    AesCtr::from_core(AesCtrCore::inner_iv_init(cipher.clone(), &iv.into()))
}

/// Packets the replay window covers, behind the highest one received.
pub const REPLAY_WINDOW: u64 = 128;

/// SSRCs whose replay state is kept at once.
pub const STREAMS: usize = 8;

/// ROCs tried per packet of an SSRC whose ROC 0 failed.
pub const ROC_GUESSES_PER_PACKET: u32 = 16;

/// ROCs searched for an SSRC not seen yet before the search starts over
/// (2^16 wraps: years of packets at any ptime).
pub const ROC_SEARCH_LIMIT: u32 = 1 << 16;

/// The most bytes `protect` or `protect_rtcp` add to a packet (SRTCP:
/// E flag and index, then an 80-bit tag).
pub const MAX_OVERHEAD: usize = 4 + SRTCP_TAG_LEN;

const SRTCP_TAG_LEN: usize = 10;
const SRTCP_HEADER_LEN: usize = 8;
const AUTH_KEY_LEN: usize = 20;
const SESSION_SALT_LEN: usize = 14;

/// Why a packet was not protected or not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrtpError {
    /// Too short to hold a header and the authentication tag.
    TooShort { len: usize },
    /// The header cannot be delimited (version, CSRCs or extension).
    Header(RtpError),
    /// The tag does not match: another key or suite, no encryption at
    /// all, or a packet altered on the way.
    AuthFailed,
    /// Received before, or older than the replay window.
    Replayed,
    /// `protect`: the buffer has no room for the tag.
    BufferTooSmall { len: usize, need: usize },
}

impl fmt::Display for SrtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SrtpError::TooShort { len } => write!(
                f,
                "datagram of {len} bytes is too short for SRTP (header and tag); \
                 check that the sender encrypts"
            ),
            SrtpError::Header(e) => write!(f, "not an SRTP packet: {e}"),
            SrtpError::AuthFailed => write!(
                f,
                "SRTP authentication failed: the sender uses another key or suite \
                 (compare --srtp-key-file and --srtp-suite on both ends), or sends \
                 unencrypted RTP"
            ),
            SrtpError::Replayed => write!(
                f,
                "SRTP packet received before or older than the replay window: a replay, \
                 or a network that duplicates packets"
            ),
            SrtpError::BufferTooSmall { len, need } => write!(
                f,
                "SRTP: buffer of {len} bytes cannot hold the {need}-byte protected packet"
            ),
        }
    }
}

impl std::error::Error for SrtpError {}

/// The keys of one direction of SRTP or SRTCP, derived once.
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    /// Keyed once; cloned per packet so the key is not hashed again.
    mac: HmacSha1,
    salt: [u8; SESSION_SALT_LEN],
}

/// The AES-CM PRF of §4.3.3 with a key derivation rate of 0: the
/// keystream under the master key from IV = (master salt XOR label·2^48)
/// ·2^16, truncated to `out`.
fn prf(master: &Aes128, master_salt: &[u8; MASTER_SALT_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(master_salt);
    // key_id = label ‖ 48 zero bits, aligned to the salt's end.
    iv[7] ^= label;
    out.fill(0);
    aes_cm(master, iv).apply_keystream(out);
}

impl SessionKeys {
    /// Derives encryption key, authentication key and salt with the labels
    /// `first`, `first + 1`, `first + 2`.
    fn derive(master: &MasterKey, first: u8) -> SessionKeys {
        let prf_cipher = Aes128::new(master.key().into());
        let mut key = [0u8; 16];
        let mut auth = [0u8; AUTH_KEY_LEN];
        let mut salt = [0u8; SESSION_SALT_LEN];
        prf(&prf_cipher, master.salt(), first, &mut key);
        prf(&prf_cipher, master.salt(), first + 1, &mut auth);
        prf(&prf_cipher, master.salt(), first + 2, &mut salt);
        SessionKeys::new(&key, &auth, &salt)
    }

    fn new(key: &[u8; 16], auth: &[u8; AUTH_KEY_LEN], salt: &[u8; SESSION_SALT_LEN]) -> Self {
        // HMAC pads a key shorter than the hash's 64-byte block with zeros
        // (RFC 2104); doing it here gives the infallible constructor.
        let mut block = [0u8; 64];
        block[..AUTH_KEY_LEN].copy_from_slice(auth);
        SessionKeys {
            cipher: Aes128::new(key.into()),
            mac: <HmacSha1 as KeyInit>::new(&block.into()),
            salt: *salt,
        }
    }

    /// XORs `data` with the AES-CM keystream of §4.1.1 for this SSRC and
    /// packet index: IV = salt·2^16 XOR SSRC·2^64 XOR index·2^16.
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..SESSION_SALT_LEN].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= s;
        }
        aes_cm(&self.cipher, iv).apply_keystream(data);
    }
}

/// Replay state of one SSRC on receive.
#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    ssrc: u32,
    /// When it was last accepted (the context's packet count); 0: free.
    used: u64,
    /// Highest index authenticated: ROC·2^16 + SEQ (48 bits).
    highest: u64,
    /// Bit k: index `highest - k` was received.
    window: u128,
}

impl Stream {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= REPLAY_WINDOW || self.window & (1u128 << behind) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.window = if ahead >= REPLAY_WINDOW {
                0
            } else {
                self.window << ahead
            };
            self.window |= 1;
            self.highest = index;
        } else {
            self.window |= 1u128 << (self.highest - index);
        }
    }
}

/// The index of a packet with `seq`, given the highest index so far
/// (RFC 3711 Appendix A); None if it would lie before index 0.
fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = highest >> 16;
    let s_l = highest & 0xffff;
    let seq = u64::from(seq);
    let v = if s_l < 0x8000 {
        if seq > s_l + 0x8000 {
            roc.checked_sub(1)?
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    Some((v << 16) | seq)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Length of the RTP header with its CSRCs and extension: where the
/// encrypted payload starts.
fn header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    let len = packet.len();
    let b0 = *packet.first().ok_or(SrtpError::TooShort { len })?;
    if len < HEADER_LEN {
        return Err(SrtpError::TooShort { len });
    }
    if b0 >> 6 != 2 {
        return Err(SrtpError::Header(RtpError::Version(b0 >> 6)));
    }
    let csrc_count = b0 & 0x0f;
    let mut n = HEADER_LEN + 4 * usize::from(csrc_count);
    if n > len {
        return Err(SrtpError::Header(RtpError::CsrcTruncated {
            csrc_count,
            len,
        }));
    }
    if b0 & 0x10 != 0 {
        let words = be16(packet, n + 2).ok_or(SrtpError::Header(RtpError::ExtensionTruncated {
            words: 0,
            len,
        }))?;
        n += 4 + 4 * usize::from(words);
        if n > len {
            return Err(SrtpError::Header(RtpError::ExtensionTruncated {
                words,
                len,
            }));
        }
    }
    Ok(n)
}

/// Whether a datagram is RTCP on the RTP port (RFC 5761, the packet types
/// the RTP parser recognises).
fn is_rtcp(packet: &[u8]) -> bool {
    matches!(packet, [b0, b1, ..] if b0 >> 6 == 2 && (200..=204).contains(b1))
}

/// The SRTP (and SRTCP) state of one direction: session keys, the
/// sender's rollover counter and SRTCP index, the receiver's replay state
/// per SSRC. Sized at construction; nothing allocates afterwards.
#[derive(Clone)]
pub struct SrtpContext {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// Sender: SSRC and highest index protected.
    sent: Option<(u32, u64)>,
    /// Sender: SRTCP index of the last packet protected.
    rtcp_index: u32,
    streams: [Stream; STREAMS],
    /// Packets accepted so far; stamps `Stream::used`.
    accepted: u64,
    /// The SSRC whose ROC is being searched, and the next ROC to try.
    search: Option<(u32, u32)>,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    pub fn new(master: &MasterKey, suite: Suite) -> SrtpContext {
        SrtpContext {
            suite,
            rtp: SessionKeys::derive(master, 0),
            rtcp: SessionKeys::derive(master, 3),
            sent: None,
            rtcp_index: 0,
            streams: [Stream::default(); STREAMS],
            accepted: 0,
            search: None,
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Bytes `protect` adds to an RTP packet (the tag).
    pub fn overhead(&self) -> usize {
        self.suite.rtp_tag_len()
    }

    /// Encrypts the RTP packet `buf[..len]` in place and appends its tag;
    /// returns the new length. `buf` needs `overhead()` bytes beyond `len`.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let need = len.saturating_add(tag_len);
        if buf.len() < need {
            return Err(SrtpError::BufferTooSmall {
                len: buf.len(),
                need,
            });
        }
        let (packet, rest) = buf.split_at_mut(len);
        let start = header_len(packet)?;
        let (Some(seq), Some(ssrc)) = (be16(packet, 2), be32(packet, 8)) else {
            return Err(SrtpError::TooShort { len });
        };
        // The sender's own packets go forward, so the receiver's estimate
        // also tells when SEQ wrapped and the ROC moves on.
        let index = match self.sent {
            Some((s, highest)) if s == ssrc => {
                estimate_index(highest, seq).unwrap_or(u64::from(seq))
            }
            _ => u64::from(seq),
        };
        let highest = match self.sent {
            Some((s, h)) if s == ssrc => h.max(index),
            _ => index,
        };
        self.sent = Some((ssrc, highest));
        if let Some(payload) = packet.get_mut(start..) {
            self.rtp.apply_keystream(ssrc, index, payload);
        }
        let mut mac = self.rtp.mac.clone();
        mac.update(packet);
        mac.update(&((index >> 16) as u32).to_be_bytes());
        let full = mac.finalize().into_bytes();
        if let (Some(out), Some(tag)) = (rest.get_mut(..tag_len), full.get(..tag_len)) {
            out.copy_from_slice(tag);
        }
        Ok(need)
    }

    /// Encrypts the RTCP compound packet `buf[..len]` in place and appends
    /// the E flag, its SRTCP index and the tag; returns the new length.
    /// `buf` needs `MAX_OVERHEAD` bytes beyond `len`.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let need = len.saturating_add(MAX_OVERHEAD);
        if buf.len() < need {
            return Err(SrtpError::BufferTooSmall {
                len: buf.len(),
                need,
            });
        }
        let Some(ssrc) = be32(buf, 4).filter(|_| len >= SRTCP_HEADER_LEN) else {
            return Err(SrtpError::TooShort { len });
        };
        self.rtcp_index = (self.rtcp_index + 1) & 0x7fff_ffff;
        let index = self.rtcp_index;
        self.rtcp
            .apply_keystream(ssrc, u64::from(index), &mut buf[SRTCP_HEADER_LEN..len]);
        buf[len..len + 4].copy_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let mut mac = self.rtcp.mac.clone();
        mac.update(&buf[..len + 4]);
        let full = mac.finalize().into_bytes();
        buf[len + 4..need].copy_from_slice(&full[..SRTCP_TAG_LEN]);
        Ok(need)
    }

    /// Authenticates and decrypts the datagram in place (SRTP, or SRTCP
    /// when it carries an RTCP packet type); returns the length of the
    /// plain packet at its start. On error the datagram may have been
    /// neither decrypted nor left whole; drop it.
    pub fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        if is_rtcp(packet) {
            return self.unprotect_rtcp(packet);
        }
        let len = packet.len();
        let tag_len = self.suite.rtp_tag_len();
        let body_len = len
            .checked_sub(tag_len)
            .filter(|&n| n >= HEADER_LEN)
            .ok_or(SrtpError::TooShort { len })?;
        let (body, tag) = packet.split_at_mut(body_len);
        let start = header_len(body)?;
        let (Some(seq), Some(ssrc)) = (be16(body, 2), be32(body, 8)) else {
            return Err(SrtpError::TooShort { len });
        };
        let mut mac = self.rtp.mac.clone();
        mac.update(body);
        let known = self
            .streams
            .iter()
            .position(|s| s.used != 0 && s.ssrc == ssrc);
        let index = match known.and_then(|i| self.streams.get(i)) {
            Some(stream) => {
                let index = estimate_index(stream.highest, seq).ok_or(SrtpError::Replayed)?;
                stream.check(index)?;
                mac.update(&((index >> 16) as u32).to_be_bytes());
                mac.verify_truncated_left(tag)
                    .map_err(|_| SrtpError::AuthFailed)?;
                index
            }
            None => {
                let roc = self.search_roc(&mac, ssrc, tag)?;
                (u64::from(roc) << 16) | u64::from(seq)
            }
        };
        if let Some(payload) = body.get_mut(start..) {
            self.rtp.apply_keystream(ssrc, index, payload);
        }
        self.accepted += 1;
        let slot = known.unwrap_or_else(|| self.free_slot());
        if let Some(stream) = self.streams.get_mut(slot) {
            if known.is_none() {
                *stream = Stream {
                    ssrc,
                    used: 0,
                    highest: index,
                    window: 0,
                };
            }
            stream.accept(index);
            stream.used = self.accepted;
        }
        Ok(body_len)
    }

    /// The ROC under which the packet of an SSRC not seen yet verifies:
    /// 0, or the next guesses of the search for this SSRC.
    fn search_roc(&mut self, mac: &HmacSha1, ssrc: u32, tag: &[u8]) -> Result<u32, SrtpError> {
        let verifies = |roc: u32| {
            let mut m = mac.clone();
            m.update(&roc.to_be_bytes());
            m.verify_truncated_left(tag).is_ok()
        };
        if verifies(0) {
            self.search = None;
            return Ok(0);
        }
        let from = match self.search {
            Some((s, next)) if s == ssrc => next,
            _ => 1,
        };
        let to = from
            .saturating_add(ROC_GUESSES_PER_PACKET)
            .min(ROC_SEARCH_LIMIT);
        if let Some(roc) = (from..to).find(|&r| verifies(r)) {
            self.search = None;
            return Ok(roc);
        }
        self.search = Some((ssrc, if to >= ROC_SEARCH_LIMIT { 1 } else { to }));
        Err(SrtpError::AuthFailed)
    }

    /// A free stream slot, or the one unused longest.
    fn free_slot(&self) -> usize {
        self.streams
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.used)
            .map_or(0, |(i, _)| i)
    }

    fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let len = packet.len();
        let body_len = len
            .checked_sub(SRTCP_TAG_LEN)
            .filter(|&n| n >= SRTCP_HEADER_LEN + 4)
            .ok_or(SrtpError::TooShort { len })?;
        let (body, tag) = packet.split_at_mut(body_len);
        let mut mac = self.rtcp.mac.clone();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| SrtpError::AuthFailed)?;
        let plain_len = body_len - 4;
        let (Some(ssrc), Some(e_index)) = (be32(body, 4), be32(body, plain_len)) else {
            return Err(SrtpError::TooShort { len });
        };
        if e_index & 0x8000_0000 != 0 {
            if let Some(encrypted) = body.get_mut(SRTCP_HEADER_LEN..plain_len) {
                self.rtcp
                    .apply_keystream(ssrc, u64::from(e_index & 0x7fff_ffff), encrypted);
            }
        }
        Ok(plain_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The master key and salt of RFC 3711 B.3 (and of libsrtp's driver).
    fn rfc_master() -> MasterKey {
        let b = hex("E1F97A0D3E018BE0D64FA32C06DE4139 0EC675AD498AFEEBB6960B3AABE6");
        MasterKey::new(b[..16].try_into().unwrap(), b[16..].try_into().unwrap())
    }

    fn master(seed: u8) -> MasterKey {
        MasterKey::new([seed; 16], [seed ^ 0x5a; 14])
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let m = rfc_master();
        let prf_cipher = Aes128::new(m.key().into());
        let mut key = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; 14];
        prf(&prf_cipher, m.salt(), 0, &mut key);
        prf(&prf_cipher, m.salt(), 1, &mut auth);
        prf(&prf_cipher, m.salt(), 2, &mut salt);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let keys = SessionKeys::new(
            &hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap(),
            &[0; 20],
            &hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap(),
        );
        // SSRC 0, ROC 0, SEQ 0: the keystream segment of 0xFF02 blocks.
        let mut stream = vec![0u8; 0xff02 * 16];
        keys.apply_keystream(0, 0, &mut stream);
        let block = |i: usize| stream[i * 16..(i + 1) * 16].to_vec();
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xfeff), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xff00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xff01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }

    /// libsrtp's reference packets (its test driver's `srtp_validate`)
    /// under the B.3 master key: SRTP and SRTCP, both ways.
    #[test]
    fn libsrtp_reference_packets_both_ways() {
        let plain = hex("800f1234 decafbad cafebabe abababab abababab abababab abababab");
        let protected = hex(
            "800f1234 decafbad cafebabe 4e55dc4c e79978d8 8ca4d215 949d2402 b78d6acc 99ea179b 8dbb",
        );
        let mut tx = SrtpContext::new(&rfc_master(), Suite::AesCm128HmacSha1_80);
        let mut buf = plain.clone();
        buf.resize(plain.len() + 10, 0);
        assert_eq!(tx.protect(&mut buf, plain.len()), Ok(protected.len()));
        assert_eq!(buf, protected);
        let mut rx = SrtpContext::new(&rfc_master(), Suite::AesCm128HmacSha1_80);
        let mut got = protected.clone();
        assert_eq!(rx.unprotect(&mut got), Ok(plain.len()));
        assert_eq!(got[..plain.len()], plain[..]);

        let rtcp = hex("81c8000b cafebabe abababab abababab abababab abababab");
        let srtcp = hex(
            "81c8000b cafebabe 7128035b e487b9bd bef89041 f977a5a8 80000001 993e08cd 54d6c123 0798",
        );
        let mut buf = rtcp.clone();
        buf.resize(rtcp.len() + MAX_OVERHEAD, 0);
        assert_eq!(tx.protect_rtcp(&mut buf, rtcp.len()), Ok(srtcp.len()));
        assert_eq!(buf, srtcp);
        let mut got = srtcp.clone();
        assert_eq!(rx.unprotect(&mut got), Ok(rtcp.len()));
        assert_eq!(got[..rtcp.len()], rtcp[..]);
        got = srtcp.clone();
        got[10] ^= 1;
        assert_eq!(rx.unprotect(&mut got), Err(SrtpError::AuthFailed));
    }

    /// An RTP packet of `payload_len` bytes, payload derived from `seq`.
    fn rtp(ssrc: u32, seq: u16, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; HEADER_LEN + payload_len];
        RtpHeader {
            payload_type: 0,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc,
            ..RtpHeader::default()
        }
        .write(&mut p)
        .unwrap();
        for (i, b) in p[HEADER_LEN..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_add(seq as u8);
        }
        p
    }

    fn protect(tx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + tx.overhead(), 0);
        let n = tx.protect(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect(rx: &mut SrtpContext, wire: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = wire.to_vec();
        let n = rx.unprotect(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn round_trip_both_suites_hides_payload_keeps_header() {
        for suite in Suite::ALL {
            let mut tx = SrtpContext::new(&master(1), suite);
            let mut rx = SrtpContext::new(&master(1), suite);
            for seq in [100u16, 101, 102] {
                let plain = rtp(9, seq, 160);
                let wire = protect(&mut tx, &plain);
                assert_eq!(wire.len(), plain.len() + suite.rtp_tag_len());
                assert_eq!(wire[..HEADER_LEN], plain[..HEADER_LEN]);
                assert_ne!(wire[HEADER_LEN..plain.len()], plain[HEADER_LEN..]);
                assert_eq!(unprotect(&mut rx, &wire), Ok(plain), "{suite}");
            }
        }
    }

    #[test]
    fn wrong_key_suite_or_tampering_fails_authentication() {
        let mut tx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let wire = protect(&mut tx, &rtp(9, 5, 160));
        let mut other = SrtpContext::new(&master(2), Suite::AesCm128HmacSha1_80);
        assert_eq!(unprotect(&mut other, &wire), Err(SrtpError::AuthFailed));
        let mut short_tag = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_32);
        assert_eq!(unprotect(&mut short_tag, &wire), Err(SrtpError::AuthFailed));
        let mut rx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        for at in [1, 3, 9, 20, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            assert_eq!(unprotect(&mut rx, &bad), Err(SrtpError::AuthFailed), "{at}");
        }
        // None of that moved the receiver: the genuine packet still passes.
        assert!(unprotect(&mut rx, &wire).is_ok());
    }

    #[test]
    fn plaintext_rtp_to_keyed_receiver_fails() {
        let mut rx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        for seq in 0..50 {
            assert_eq!(
                unprotect(&mut rx, &rtp(9, seq, 160)),
                Err(SrtpError::AuthFailed)
            );
        }
        assert_eq!(
            unprotect(&mut rx, &[0x80, 0, 0, 1, 0, 0]),
            Err(SrtpError::TooShort { len: 6 })
        );
        assert_eq!(
            unprotect(&mut rx, &[0x40; 40]),
            Err(SrtpError::Header(RtpError::Version(1)))
        );
    }

    #[test]
    fn replayed_packet_dropped_once_accepted() {
        let mut tx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let mut rx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let wires: Vec<_> = (0..5).map(|s| protect(&mut tx, &rtp(9, s, 40))).collect();
        for w in &wires {
            assert!(unprotect(&mut rx, w).is_ok());
        }
        for w in &wires {
            assert_eq!(unprotect(&mut rx, w), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn late_reordered_within_window_pass_once_older_dropped() {
        let mut tx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let mut rx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let first = 65_400u16;
        let wires: Vec<_> = (0..300u16)
            .map(|k| protect(&mut tx, &rtp(9, first.wrapping_add(k), 40)))
            .collect();
        // 0 arrives, then 1..=200 with 100 held back, then 100 (late by
        // 100 < window), then 1 (late by 199: outside the window).
        assert!(unprotect(&mut rx, &wires[0]).is_ok());
        for (k, w) in wires.iter().enumerate().take(201).skip(2) {
            if k != 100 {
                assert!(unprotect(&mut rx, w).is_ok(), "{k}");
            }
        }
        assert!(unprotect(&mut rx, &wires[100]).is_ok());
        assert_eq!(unprotect(&mut rx, &wires[100]), Err(SrtpError::Replayed));
        assert_eq!(unprotect(&mut rx, &wires[1]), Err(SrtpError::Replayed));
        // Sequence numbers wrapped at 65535 in between; the ROC followed.
        for w in &wires[201..] {
            assert!(unprotect(&mut rx, w).is_ok());
        }
    }

    #[test]
    fn seq_wrap_moves_roc_on_both_sides() {
        let mut tx = SrtpContext::new(&master(3), Suite::AesCm128HmacSha1_32);
        let mut rx = SrtpContext::new(&master(3), Suite::AesCm128HmacSha1_32);
        let mut seq = 65_530u16;
        for k in 0..140_000u32 {
            let plain = rtp(77, seq, 8);
            let wire = protect(&mut tx, &plain);
            // Every 7th packet lost: ROC estimation must not need them all.
            if k % 7 != 3 {
                assert_eq!(unprotect(&mut rx, &wire), Ok(plain), "{k}");
            }
            seq = seq.wrapping_add(1);
        }
        // 65 530 + 140 000 crosses 65 536 three times: ROC 3.
        assert_eq!(tx.sent.map(|(_, i)| i >> 16), Some(3));
    }

    #[test]
    fn receiver_started_late_finds_the_roc() {
        let mut tx = SrtpContext::new(&master(4), Suite::AesCm128HmacSha1_80);
        let mut seq = 0u16;
        // Run the sender through three wraps (ROC 3) before anyone listens.
        for _ in 0..3 * 65_536 + 10 {
            let _ = protect(&mut tx, &rtp(5, seq, 4));
            seq = seq.wrapping_add(1);
        }
        let mut rx = SrtpContext::new(&master(4), Suite::AesCm128HmacSha1_80);
        let plain = rtp(5, seq, 4);
        let wire = protect(&mut tx, &plain);
        // ROC 0 and the first guesses (1..=16) include 3: found at once.
        assert_eq!(unprotect(&mut rx, &wire), Ok(plain));
        let next = rtp(5, seq.wrapping_add(1), 4);
        assert_eq!(unprotect(&mut rx, &protect(&mut tx, &next)), Ok(next));
    }

    #[test]
    fn roc_search_spreads_over_packets() {
        let mut rx = SrtpContext::new(&master(6), Suite::AesCm128HmacSha1_80);
        let mut tx = SrtpContext::new(&master(6), Suite::AesCm128HmacSha1_80);
        // A sender at ROC 40 (forced: its state says so).
        tx.sent = Some((8, 40 << 16));
        let mut results = Vec::new();
        for seq in 1..=4u16 {
            let wire = protect(&mut tx, &rtp(8, seq, 4));
            results.push(unprotect(&mut rx, &wire).is_ok());
        }
        // 1..=16 and 17..=32 fail, 33..=48 holds 40.
        assert_eq!(results, [false, false, true, true]);
    }

    #[test]
    fn several_ssrcs_keep_their_own_replay_state() {
        let mut tx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let mut rx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let a = protect(&mut tx, &rtp(1, 10, 20));
        let mut tx2 = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let b = protect(&mut tx2, &rtp(2, 10, 20));
        assert!(unprotect(&mut rx, &a).is_ok());
        assert!(unprotect(&mut rx, &b).is_ok());
        assert_eq!(unprotect(&mut rx, &a), Err(SrtpError::Replayed));
        assert_eq!(unprotect(&mut rx, &b), Err(SrtpError::Replayed));
    }

    #[test]
    fn csrcs_and_extension_stay_in_the_clear() {
        let mut plain = vec![0u8; 12 + 8 + 8 + 16];
        plain[0] = 0x80 | 0x10 | 2; // X, CC = 2
        plain[2..4].copy_from_slice(&7u16.to_be_bytes());
        plain[8..12].copy_from_slice(&3u32.to_be_bytes());
        plain[12..20].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        plain[20..24].copy_from_slice(&[0xbe, 0xde, 0, 1]);
        plain[24..28].copy_from_slice(&[9, 9, 9, 9]);
        plain[28..].fill(0x55);
        let mut tx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let wire = protect(&mut tx, &plain);
        assert_eq!(wire[..28], plain[..28]);
        assert_ne!(wire[28..44], plain[28..]);
        let mut rx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        assert_eq!(unprotect(&mut rx, &wire), Ok(plain));
    }

    #[test]
    fn protect_needs_room_for_the_tag() {
        let mut tx = SrtpContext::new(&master(1), Suite::AesCm128HmacSha1_80);
        let mut buf = rtp(1, 1, 20);
        let len = buf.len();
        assert_eq!(
            tx.protect(&mut buf, len),
            Err(SrtpError::BufferTooSmall {
                len,
                need: len + 10
            })
        );
        assert_eq!(
            tx.protect(&mut buf, usize::MAX),
            Err(SrtpError::BufferTooSmall {
                len,
                need: usize::MAX
            })
        );
        assert_eq!(
            tx.protect_rtcp(&mut buf, len),
            Err(SrtpError::BufferTooSmall {
                len,
                need: len + MAX_OVERHEAD
            })
        );
    }
}
