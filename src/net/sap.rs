//! SAP, the Session Announcement Protocol (RFC 2974): the datagram format
//! both ways. Input: one UDP datagram from a SAP port (9875). Output: a
//! [`SapPacket`] borrowing the datagram (announcement or deletion, the
//! originating source, the message id hash and the SDP text), or a
//! [`SapError`] naming why it is refused; each variant is one counter of
//! the listener. [`write()`] builds an announcement or a deletion, and
//! [`Listener`] holds the receiver's SAP sockets.
//!
//! Policy: version 1 only; IPv4 and IPv6 origins; the authentication data
//! is skipped (its length is honoured, it is not verified: nothing here
//! trusts an announcement beyond choosing a stream by name); encrypted
//! and compressed payloads are refused (RFC 2974 deprecates both, and no
//! sender of this field uses them); a payload type other than
//! `application/sdp` is refused; an SDP payload without the payload type
//! field (it starts with `v=0`, as RFC 2974 allows) is taken. Nothing
//! panics on input: every length is checked before it is used.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::sys::socket::sockopt;

use crate::net::socket::{self, Interface};

/// The SAP port (RFC 2974, section 3).
pub const SAP_PORT: u16 = 9875;
/// Where PulseAudio and PipeWire announce (their default, the SAP group
/// in the link-local block).
pub const SAP_GROUP_LINK_LOCAL: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 56);
/// RFC 2974's group for global-scope sessions (224.2.128.0-224.2.255.255).
pub const SAP_GROUP_GLOBAL: Ipv4Addr = Ipv4Addr::new(224, 2, 127, 254);
/// RFC 2974's group for the administrative scope 239.255.0.0/16: the
/// highest address of the scope.
pub const SAP_GROUP_ADMIN_LOCAL: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 255);

/// RFC 2974's IPv6 SAP group FF0X::2:7FFE in scope `scope` (2 link, 5 site,
/// 8 organisation, e global).
pub fn sap_group_v6(scope: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xff00 | u16::from(scope & 0xf), 0, 0, 0, 0, 0, 2, 0x7ffe)
}

/// The default destination of announcements.
pub fn default_address() -> SocketAddr {
    SocketAddr::from((SAP_GROUP_LINK_LOCAL, SAP_PORT))
}

const MIME_SDP: &str = "application/sdp";

/// A SAP datagram, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SapPacket<'a> {
    /// A deletion (message type 1) rather than an announcement.
    pub deletion: bool,
    /// The originating source field.
    pub origin: IpAddr,
    pub msg_id_hash: u16,
    /// Authentication data length in 32-bit words (skipped).
    pub auth_words: u8,
    /// The payload type field, when present (`application/sdp`).
    pub payload_type: Option<&'a str>,
    /// The SDP text.
    pub sdp: &'a str,
}

/// Why a datagram on the SAP port is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SapError {
    /// Shorter than its header, origin and authentication data claim.
    Truncated { len: usize },
    /// A SAP version other than 1.
    Version(u8),
    /// The E bit: the payload is encrypted (RFC 2974 deprecates it).
    Encrypted,
    /// The C bit: zlib-compressed payload (RFC 2974 deprecates it).
    Compressed,
    /// A payload type other than `application/sdp`.
    PayloadType,
    /// The payload type field has no terminating zero byte.
    Unterminated,
    /// The SDP text is not UTF-8.
    NotText,
}

impl fmt::Display for SapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SapError::Truncated { len } => write!(
                f,
                "SAP datagram of {len} bytes is shorter than its header says: ignored"
            ),
            SapError::Version(v) => write!(f, "SAP version {v} (only 1 exists): ignored"),
            SapError::Encrypted => write!(
                f,
                "encrypted SAP announcement: refused (RFC 2974 deprecates encryption); \
                 have the sender announce in the clear"
            ),
            SapError::Compressed => write!(
                f,
                "compressed SAP announcement: refused; have the sender announce uncompressed"
            ),
            SapError::PayloadType => {
                write!(f, "SAP payload is not application/sdp: ignored")
            }
            SapError::Unterminated => {
                write!(f, "SAP payload type without its terminating zero: ignored")
            }
            SapError::NotText => write!(f, "SAP payload is not UTF-8 text: ignored"),
        }
    }
}

impl std::error::Error for SapError {}

/// Parses one datagram; see the module comment for what is refused.
pub fn parse(datagram: &[u8]) -> Result<SapPacket<'_>, SapError> {
    let truncated = SapError::Truncated {
        len: datagram.len(),
    };
    let [flags, auth_words, hash_hi, hash_lo, rest @ ..] = datagram else {
        return Err(truncated);
    };
    let version = flags >> 5;
    if version != 1 {
        return Err(SapError::Version(version));
    }
    let ipv6 = flags & 0x10 != 0;
    let deletion = flags & 0x04 != 0;
    if flags & 0x02 != 0 {
        return Err(SapError::Encrypted);
    }
    if flags & 0x01 != 0 {
        return Err(SapError::Compressed);
    }
    let (origin, rest) = if ipv6 {
        let Some((a, rest)) = rest.split_first_chunk::<16>() else {
            return Err(truncated);
        };
        (IpAddr::V6(Ipv6Addr::from(*a)), rest)
    } else {
        let Some((a, rest)) = rest.split_first_chunk::<4>() else {
            return Err(truncated);
        };
        (IpAddr::V4(Ipv4Addr::from(*a)), rest)
    };
    let auth_len = usize::from(*auth_words) * 4;
    let Some(payload) = rest.get(auth_len..) else {
        return Err(truncated);
    };
    let (payload_type, sdp) = if payload.starts_with(b"v=0") {
        (None, payload)
    } else {
        let Some(zero) = payload.iter().position(|&b| b == 0) else {
            return Err(SapError::Unterminated);
        };
        let mime = std::str::from_utf8(&payload[..zero]).map_err(|_| SapError::PayloadType)?;
        if !mime.eq_ignore_ascii_case(MIME_SDP) {
            return Err(SapError::PayloadType);
        }
        (Some(mime), &payload[zero + 1..])
    };
    let sdp = std::str::from_utf8(sdp).map_err(|_| SapError::NotText)?;
    Ok(SapPacket {
        deletion,
        origin,
        msg_id_hash: u16::from_be_bytes([*hash_hi, *hash_lo]),
        auth_words: *auth_words,
        payload_type,
        sdp,
    })
}

/// An announcement or (with `deletion`) a deletion of `sdp` from
/// `origin`, with the payload type field and no authentication.
pub fn write(deletion: bool, origin: IpAddr, msg_id_hash: u16, sdp: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + MIME_SDP.len() + 1 + sdp.len());
    let mut flags = 1 << 5;
    if origin.is_ipv6() {
        flags |= 0x10;
    }
    if deletion {
        flags |= 0x04;
    }
    out.extend_from_slice(&[flags, 0]);
    out.extend_from_slice(&msg_id_hash.to_be_bytes());
    match origin {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
    out.extend_from_slice(MIME_SDP.as_bytes());
    out.push(0);
    out.extend_from_slice(sdp.as_bytes());
    out
}

/// A message id hash for `sdp` (RFC 2974: it changes whenever the
/// description does; 0 means "no hash", so it is never 0). FNV-1a folded
/// to 16 bits.
pub fn msg_id_hash(sdp: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in sdp.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = ((h >> 16) ^ (h & 0xffff)) as u16;
    folded.max(1)
}

/// The receiver's SAP sockets: IPv4 on port 9875 joined to the three
/// IPv4 SAP groups, and where this host has IPv6, an IPv6 socket joined to
/// FF0X::2:7FFE in link, site and organisation scope. A group that cannot
/// be joined (no route, no such scope) is skipped with a debug line; no
/// group at all is an error.
pub struct Listener {
    sockets: Vec<UdpSocket>,
    /// The groups joined, for the "waiting" line.
    pub groups: Vec<IpAddr>,
}

/// Why the SAP listener could not start.
#[derive(Debug)]
pub enum ListenError {
    Socket(socket::Error),
    /// Binding port 9875 failed.
    Bind(Errno),
    /// Not one SAP group could be joined.
    NoGroup(Errno),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Socket(e) => write!(f, "SAP listener: {e}"),
            ListenError::Bind(e) => write!(f, "SAP listener: cannot bind port {SAP_PORT}: {e}"),
            ListenError::NoGroup(e) => write!(
                f,
                "SAP listener: cannot join any SAP group ({e}): check that the interface is up \
                 and has a multicast route (ip route show 224.0.0.0/4), or name it with \
                 --interface"
            ),
        }
    }
}

impl std::error::Error for ListenError {}

impl Listener {
    pub fn open(interface: Option<&Interface>) -> Result<Listener, ListenError> {
        let mut sockets = Vec::new();
        let mut groups = Vec::new();
        let mut last_err = Errno::ENODEV;
        let v4: Vec<IpAddr> = [
            SAP_GROUP_LINK_LOCAL,
            SAP_GROUP_GLOBAL,
            SAP_GROUP_ADMIN_LOCAL,
        ]
        .into_iter()
        .map(IpAddr::V4)
        .collect();
        let v6: Vec<IpAddr> = [2, 5, 8]
            .into_iter()
            .map(|s| IpAddr::V6(sap_group_v6(s)))
            .collect();
        let wildcards: [SocketAddr; 2] = [
            (Ipv4Addr::UNSPECIFIED, SAP_PORT).into(),
            (Ipv6Addr::UNSPECIFIED, SAP_PORT).into(),
        ];
        for (any, wanted) in wildcards.into_iter().zip([v4, v6]) {
            let fd = socket::udp_for(any);
            let fd = match (fd, any.is_ipv6()) {
                (Ok(fd), _) => fd,
                // A host without IPv6 listens on IPv4 only.
                (Err(_), true) => continue,
                (Err(e), false) => return Err(ListenError::Socket(e)),
            };
            // PulseAudio, another listener or a second netspeaker may
            // hold the port too: each gets every announcement.
            socket::set_reuse_addr(&fd).map_err(ListenError::Socket)?;
            if any.is_ipv6() {
                // IPv6 only: IPv4 announcements come to the IPv4 socket.
                let _ = nix::sys::socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true);
            }
            match socket::bind(&fd, any) {
                Ok(()) => {}
                Err(_) if any.is_ipv6() => continue,
                Err(e) => return Err(ListenError::Bind(e)),
            }
            let sock = UdpSocket::from(fd);
            let mut joined = false;
            for group in wanted {
                match socket::join(&sock, group, interface) {
                    Ok(()) => {
                        joined = true;
                        groups.push(group);
                    }
                    Err(e) => {
                        log::debug!("sap: cannot join {group}: {e}; skipped");
                        last_err = e;
                    }
                }
            }
            if joined {
                sockets.push(sock);
            }
        }
        if sockets.is_empty() {
            return Err(ListenError::NoGroup(last_err));
        }
        Ok(Listener { sockets, groups })
    }

    /// Waits up to `timeout` for a datagram on any socket; `Ok(None)` when
    /// none came. `buf` receives it; returns its length and sender.
    pub fn recv(
        &self,
        buf: &mut [u8],
        timeout: std::time::Duration,
    ) -> std::io::Result<Option<(usize, SocketAddr)>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds: Vec<PollFd<'_>> = self
            .sockets
            .iter()
            .map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(std::io::Error::from(e)),
        }
        let ready = fds
            .iter()
            .position(|f| f.revents().is_some_and(|r| !r.is_empty()));
        let Some(sock) = ready.and_then(|i| self.sockets.get(i)) else {
            return Ok(None);
        };
        match sock.recv_from(buf) {
            Ok((n, from)) => Ok(Some((n, from))),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulseaudio_announcement_and_deletion() {
        let a = parse(include_bytes!("../rtp/testdata/pulseaudio_announce.sap")).unwrap();
        assert!(!a.deletion);
        assert_eq!(a.origin, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(a.msg_id_hash, 0x5bf6);
        assert_eq!(a.auth_words, 0);
        assert_eq!(a.payload_type, Some("application/sdp"));
        assert!(
            a.sdp.starts_with("v=0\no=root 4005091516 0 IN IP4"),
            "{}",
            a.sdp
        );
        let d = parse(include_bytes!("../rtp/testdata/pulseaudio_delete.sap")).unwrap();
        assert!(d.deletion);
        assert_eq!(d.msg_id_hash, a.msg_id_hash);
        assert_eq!(d.sdp, a.sdp);
    }

    #[test]
    fn written_announcement_and_deletion_parse_back_v4_and_v6() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=hall\r\n";
        for origin in ["10.0.0.2", "fd00::2"] {
            let origin: IpAddr = origin.parse().unwrap();
            for deletion in [false, true] {
                let bytes = write(deletion, origin, 0xbeef, sdp);
                let p = parse(&bytes).unwrap();
                assert_eq!(
                    (p.deletion, p.origin, p.msg_id_hash, p.sdp),
                    (deletion, origin, 0xbeef, sdp)
                );
            }
        }
        // PulseAudio's flags byte for an IPv4 announcement.
        assert_eq!(write(false, "10.0.0.2".parse().unwrap(), 1, sdp)[0], 0x20);
    }

    #[test]
    fn sdp_without_payload_type_field_is_taken() {
        let mut bytes = vec![0x20, 0, 0, 7, 10, 0, 0, 1];
        bytes.extend_from_slice(b"v=0\ns=x\n");
        let p = parse(&bytes).unwrap();
        assert_eq!((p.payload_type, p.sdp), (None, "v=0\ns=x\n"));
    }

    #[test]
    fn authentication_data_is_skipped() {
        let mut bytes = vec![0x20, 2, 0, 7, 10, 0, 0, 1];
        bytes.extend_from_slice(&[0xaa; 8]);
        bytes.extend_from_slice(b"application/sdp\0v=0\n");
        assert_eq!(parse(&bytes).unwrap().sdp, "v=0\n");
        // Authentication data longer than the datagram.
        bytes[1] = 200;
        assert!(matches!(parse(&bytes), Err(SapError::Truncated { .. })));
    }

    #[test]
    fn encrypted_compressed_and_foreign_packets_refused_with_reason() {
        let good = write(false, "10.0.0.1".parse().unwrap(), 3, "v=0\n");
        let with_flags = |or: u8| {
            let mut b = good.clone();
            b[0] |= or;
            b
        };
        assert_eq!(parse(&with_flags(0x02)), Err(SapError::Encrypted));
        assert_eq!(parse(&with_flags(0x01)), Err(SapError::Compressed));
        let mut v2 = good.clone();
        v2[0] = 0x40;
        assert_eq!(parse(&v2), Err(SapError::Version(2)));
        // RTP (version 2 in the top bits) on the SAP port.
        assert_eq!(
            parse(&[0x80, 0, 0, 1, 0, 0, 0, 0]),
            Err(SapError::Version(4))
        );
        let mut other = vec![0x20, 0, 0, 1, 10, 0, 0, 1];
        other.extend_from_slice(b"text/plain\0hello");
        assert_eq!(parse(&other), Err(SapError::PayloadType));
        let mut open = vec![0x20, 0, 0, 1, 10, 0, 0, 1];
        open.extend_from_slice(b"application/sdp");
        assert_eq!(parse(&open), Err(SapError::Unterminated));
        let mut binary = vec![0x20, 0, 0, 1, 10, 0, 0, 1];
        binary.extend_from_slice(b"v=0\xff\xfe");
        assert_eq!(parse(&binary), Err(SapError::NotText));
        assert!(SapError::Encrypted.to_string().contains("refused"));
    }

    #[test]
    fn every_truncation_refused_never_panics() {
        let full = write(true, "fd00::1".parse().unwrap(), 9, "v=0\r\ns=x\r\n");
        for cut in 0..full.len() {
            let _ = parse(&full[..cut]);
        }
        for cut in 0..20 {
            assert!(matches!(
                parse(&full[..cut]),
                Err(SapError::Truncated { .. })
            ));
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn hash_changes_with_the_description_and_is_never_zero() {
        assert_ne!(msg_id_hash("v=0\no=- 1 1"), msg_id_hash("v=0\no=- 1 2"));
        assert_ne!(msg_id_hash(""), 0);
    }

    #[test]
    fn ipv6_groups() {
        assert_eq!(sap_group_v6(2), "ff02::2:7ffe".parse::<Ipv6Addr>().unwrap());
        assert_eq!(sap_group_v6(5), "ff05::2:7ffe".parse::<Ipv6Addr>().unwrap());
    }
}
