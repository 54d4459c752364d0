//! The net stage: the UDP socket (unicast or multicast, IPv4 or IPv6), the
//! source filter, and the net thread's loop.
//!
//! Input: datagrams on the listening socket. Output: validated packet slots
//! pushed onto the `heapless::spsc` queue to the playout thread, and the
//! counters in [`NetCounters`] that the main thread reads.
//!
//! Policy: a datagram from a source outside `--allow`, a truncated or
//! oversized datagram, a malformed RTP header, an unknown payload type,
//! RTCP, or a payload that is not whole frames is counted, logged
//! rate-limited with its source, and dropped. A full queue drops the new
//! packet and counts it; the net thread never waits for the playout thread.
//! Order is not judged here: late, lost, duplicate and reordered packets
//! are passed on as they arrive, for the jitter buffer to place. After
//! `bind`, nothing allocates per packet.

pub mod send;

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use heapless::spsc::Producer;
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

use crate::rtp::packet::{Packet, MAX_DATAGRAM};
use crate::rtp::{InputMode, PacketParser, ParseError};
use crate::service::clock::monotonic_ns;
use crate::service::ratelimit::RateLimit;

/// How long one `recv` waits before the loop looks at the stop flag again;
/// bounds shutdown time.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(50);

/// Default receive buffer request: ~5 s of L16 48 kHz stereo, enough to
/// ride out a burst (Wi-Fi retries, a sender catching up) while the
/// playout thread is busy.
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 1 << 20;

/// An address prefix for `--allow`: `10.0.0.0/8`, `fd00::/8`, or a bare
/// address (a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this prefix. IPv4-mapped IPv6 sources (what a
    /// dual-stack `[::]` socket reports for IPv4 senders) match IPv4 rules.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_eq(u32::from(net).into(), u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_eq(u128::from(net), u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Whether the top `prefix` of `bits` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let host_bits = bits - u32::from(prefix).min(bits);
    (a ^ b).checked_shr(host_bits).unwrap_or(0) == 0
}

impl FromStr for Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::Cidr {
            value: s.to_string(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(bad(
                        "prefix length out of range (0-32 for IPv4, 0-128 for IPv6)",
                    ))
                }
            },
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Options of the net stage.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Address and UDP port to listen on (`--listen`); `[::]` listens on
    /// IPv6 and IPv4 both.
    pub listen: SocketAddr,
    /// Multicast group to join (`--group`).
    pub group: Option<IpAddr>,
    /// Interface to join the group on (`--interface`): a name (`eth0`) or
    /// one of its addresses; `None` lets the kernel pick by route.
    pub interface: Option<String>,
    /// Sources accepted (`--allow`); empty accepts every source.
    pub allow: Vec<Cidr>,
    /// Socket receive buffer to request, in bytes (the kernel may grant
    /// less; see `Receiver::recv_buffer_bytes`).
    pub recv_buffer_bytes: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5004)),
            group: None,
            interface: None,
            allow: Vec::new(),
            recv_buffer_bytes: DEFAULT_RECV_BUFFER_BYTES,
        }
    }
}

/// Counters of the net thread, read by the main thread for the statistics
/// line. `datagrams` and `bytes` count everything received; every datagram
/// then lands in exactly one of `queued` or a drop counter.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub datagrams: AtomicU64,
    pub bytes: AtomicU64,
    /// Handed to the playout thread.
    pub queued: AtomicU64,
    /// From a source outside `--allow`.
    pub filtered: AtomicU64,
    /// Bad RTP header, empty payload or not whole frames.
    pub malformed: AtomicU64,
    pub unknown_payload_type: AtomicU64,
    pub rtcp: AtomicU64,
    /// Longer than a packet slot or the receive buffer.
    pub too_large: AtomicU64,
    /// The playout thread's queue was full.
    pub queue_full: AtomicU64,
    /// `recv` failed (other than the periodic timeout).
    pub recv_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why the socket could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    Cidr {
        value: String,
        reason: &'static str,
    },
    NotMulticast(IpAddr),
    FamilyMismatch {
        listen: SocketAddr,
        group: IpAddr,
    },
    NoSuchInterface(String),
    Socket(Errno),
    AddressInUse(SocketAddr),
    Permission(SocketAddr),
    AddressNotAvailable(SocketAddr),
    Bind {
        addr: SocketAddr,
        errno: Errno,
    },
    Join {
        group: IpAddr,
        interface: Option<String>,
        errno: Errno,
    },
    SocketOption {
        option: &'static str,
        errno: Errno,
    },
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Cidr { value, reason } => write!(
                f,
                "--allow '{value}': {reason}; use ADDRESS[/PREFIX], e.g. 192.168.1.0/24 or fd00::/8"
            ),
            NetError::NotMulticast(g) => write!(
                f,
                "--group {g} is not a multicast address (224.0.0.0/4 or ff00::/8)"
            ),
            NetError::FamilyMismatch { listen, group } => write!(
                f,
                "--group {group} and --listen {listen} are of different address families: \
                 listen on 0.0.0.0:PORT for an IPv4 group, [::]:PORT for an IPv6 group"
            ),
            NetError::NoSuchInterface(i) => write!(
                f,
                "--interface {i}: no such interface or address here (see `ip addr`)"
            ),
            NetError::Socket(e) => write!(f, "cannot create a UDP socket: {e}"),
            NetError::AddressInUse(a) => write!(
                f,
                "cannot listen on {a}: another netspeaker or program is bound to that port \
                 (see `ss -ulpn`); stop it or choose another --listen port"
            ),
            NetError::Permission(a) => write!(
                f,
                "cannot listen on {a}: permission denied; ports below 1024 need \
                 CAP_NET_BIND_SERVICE, or use a port such as 5004"
            ),
            NetError::AddressNotAvailable(a) => write!(
                f,
                "cannot listen on {a}: the address is not configured on this host; \
                 use one of its addresses (see `ip addr`) or 0.0.0.0 / [::]"
            ),
            NetError::Bind { addr, errno } => write!(f, "cannot listen on {addr}: {errno}"),
            NetError::Join {
                group,
                interface,
                errno,
            } => write!(
                f,
                "cannot join multicast group {group} on {}: {errno}; check that the interface \
                 is up, has multicast enabled and a route for the group",
                interface.as_deref().unwrap_or("the default interface")
            ),
            NetError::SocketOption { option, errno } => {
                write!(f, "cannot set socket option {option}: {errno}")
            }
        }
    }
}

impl std::error::Error for NetError {}

/// The bound (and, for multicast, joined) socket.
#[derive(Debug)]
pub struct Receiver {
    socket: UdpSocket,
    local: SocketAddr,
    allow: Vec<Cidr>,
    recv_buffer_bytes: usize,
}

impl Receiver {
    pub fn bind(config: &NetConfig) -> Result<Receiver, NetError> {
        let mut listen = config.listen;
        if let Some(group) = config.group {
            if !group.is_multicast() {
                return Err(NetError::NotMulticast(group));
            }
            if group.is_ipv4() != listen.is_ipv4() {
                // The default listen address is IPv4; an IPv6 group only
                // needs the matching wildcard, which is what was meant.
                if !listen.ip().is_unspecified() {
                    return Err(NetError::FamilyMismatch { listen, group });
                }
                let any = match group {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                listen = SocketAddr::new(any, listen.port());
            }
        }
        let family = if listen.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd: OwnedFd = sock::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
            .map_err(NetError::Socket)?;
        let opt_err = |option| move |errno| NetError::SocketOption { option, errno };

        if config.group.is_some() {
            // Several receivers of one group on one host (e.g. a test
            // monitor next to the speaker) each get every datagram.
            sock::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(opt_err("SO_REUSEADDR"))?;
        }
        // SO_RCVBUFFORCE passes rmem_max when privileged; unprivileged, the
        // plain request is capped by the kernel, which is still the best
        // available.
        if sock::setsockopt(&fd, sockopt::RcvBufForce, &config.recv_buffer_bytes).is_err() {
            sock::setsockopt(&fd, sockopt::RcvBuf, &config.recv_buffer_bytes)
                .map_err(opt_err("SO_RCVBUF"))?;
        }
        let recv_buffer_bytes =
            sock::getsockopt(&fd, sockopt::RcvBuf).map_err(opt_err("SO_RCVBUF"))?;
        if listen.is_ipv6() && listen.ip().is_unspecified() {
            // `[::]` means both families, whatever the host's bindv6only
            // default; IPv4 senders then appear as IPv4-mapped addresses.
            sock::setsockopt(&fd, sockopt::Ipv6V6Only, &false).map_err(opt_err("IPV6_V6ONLY"))?;
        }

        sock::bind(fd.as_raw_fd(), &SockaddrStorage::from(listen)).map_err(
            |errno| match errno {
                Errno::EADDRINUSE => NetError::AddressInUse(listen),
                Errno::EACCES | Errno::EPERM => NetError::Permission(listen),
                Errno::EADDRNOTAVAIL => NetError::AddressNotAvailable(listen),
                errno => NetError::Bind {
                    addr: listen,
                    errno,
                },
            },
        )?;

        let socket = UdpSocket::from(fd);
        if let Some(group) = config.group {
            join(&socket, group, config.interface.as_deref())?;
        }
        socket
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|e| NetError::SocketOption {
                option: "SO_RCVTIMEO",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        let local = socket.local_addr().unwrap_or(listen);
        Ok(Receiver {
            socket,
            local,
            allow: config.allow.clone(),
            recv_buffer_bytes,
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The receive buffer the kernel granted, as it reports it (Linux
    /// reports twice the usable size, counting its bookkeeping).
    pub fn recv_buffer_bytes(&self) -> usize {
        self.recv_buffer_bytes
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// Joins `group` on `interface` (a name or one of its addresses).
fn join(socket: &UdpSocket, group: IpAddr, interface: Option<&str>) -> Result<(), NetError> {
    let join_err = |errno| NetError::Join {
        group,
        interface: interface.map(str::to_string),
        errno,
    };
    let no_such = || NetError::NoSuchInterface(interface.unwrap_or_default().to_string());
    match group {
        IpAddr::V4(g) => {
            let (address, index) = match interface {
                None => (Ipv4Addr::UNSPECIFIED, 0),
                Some(i) => match i.parse::<Ipv4Addr>() {
                    Ok(a) => (a, 0),
                    Err(_) => (
                        Ipv4Addr::UNSPECIFIED,
                        nix::net::if_::if_nametoindex(i).map_err(|_| no_such())?,
                    ),
                },
            };
            join_v4(socket, g, address, index).map_err(|e| match e {
                Errno::ENODEV | Errno::EADDRNOTAVAIL if interface.is_some() => no_such(),
                e => join_err(e),
            })?;
            // Linux otherwise delivers every group any socket on this host
            // joined on our port; we want the one we were told to play.
            only_joined_group(socket, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL);
            Ok(())
        }
        IpAddr::V6(g) => {
            let index = match interface {
                None => 0,
                Some(i) => match i.parse::<IpAddr>() {
                    Ok(a) => index_of_address(a).ok_or_else(no_such)?,
                    Err(_) => nix::net::if_::if_nametoindex(i).map_err(|_| no_such())?,
                },
            };
            socket
                .join_multicast_v6(&g, index)
                .map_err(|e| join_err(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
            only_joined_group(socket, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_ALL);
            Ok(())
        }
    }
}

/// Asks for the joined group only (`IP[V6]_MULTICAST_ALL` off). A filter,
/// not a necessity: a kernel or emulator without the option (qemu's user
/// mode) still delivers our group, with other groups on the same port as
/// well, which the source filter and the parser then see. So a refusal is
/// noted, not fatal.
fn only_joined_group(socket: &UdpSocket, level: libc::c_int, option: libc::c_int) {
    if let Err(errno) = set_int(socket, level, option, 0) {
        log::debug!("net: cannot restrict the socket to the joined group ({errno}); continuing");
    }
}

/// The index of the interface that has address `addr`.
fn index_of_address(addr: IpAddr) -> Option<u32> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        let Some(a) = ifa.address else { continue };
        let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::V4(v4.ip()),
            (_, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => continue,
        };
        if ip == addr {
            return nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).ok();
        }
    }
    None
}

/// IP_ADD_MEMBERSHIP with `ip_mreqn`, which (unlike std's `ip_mreq`) can
/// name the interface by index, so an interface without an IPv4 address
/// can still be chosen by name.
fn join_v4(
    socket: &UdpSocket,
    group: Ipv4Addr,
    address: Ipv4Addr,
    index: u32,
) -> Result<(), Errno> {
    let mreq = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        imr_address: libc::in_addr {
            s_addr: u32::from_ne_bytes(address.octets()),
        },
        imr_ifindex: index as libc::c_int,
    };
    // SAFETY: `mreq` is an initialised ip_mreqn that lives across the call,
    // and the length passed is its size; the fd is owned by `socket`.
    let r = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            (&mreq as *const libc::ip_mreqn).cast(),
            core::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

fn set_int(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: `value` is an initialised c_int that lives across the call,
    // and the length passed is its size; the fd is owned by `socket`.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// One rate limiter per kind of dropped datagram, so a flood of one kind
/// does not hide the first report of another.
struct DropLog {
    filtered: RateLimit,
    malformed: RateLimit,
    unknown_payload_type: RateLimit,
    rtcp: RateLimit,
    too_large: RateLimit,
    queue_full: RateLimit,
    recv_error: RateLimit,
}

impl DropLog {
    fn new() -> Self {
        let rl = RateLimit::default_for_input;
        DropLog {
            filtered: rl(),
            malformed: rl(),
            unknown_payload_type: rl(),
            rtcp: rl(),
            too_large: rl(),
            queue_full: rl(),
            recv_error: rl(),
        }
    }
}

/// The net thread's body: receives, filters, parses and enqueues until
/// `stop` is set (seen within `RECV_TIMEOUT`). Never returns early on bad
/// input or a failing `recv`.
pub fn run(
    receiver: &Receiver,
    parser: &mut PacketParser,
    queue: &mut Producer<'_, Packet>,
    counters: &NetCounters,
    stop: &AtomicBool,
) {
    // One byte more than the largest datagram we accept: a datagram that
    // fills the buffer was longer and has been truncated by the kernel.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let slot_format = match parser.mode() {
        InputMode::Raw(f) => *f,
        InputMode::Rtp(_) => crate::audio::format::StreamFormat::TUTORIAL,
    };
    let mut slot = Packet::empty(slot_format);
    let mut log = DropLog::new();

    while !stop.load(Ordering::Relaxed) {
        let (len, source) = match receiver.socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                use std::io::ErrorKind;
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) {
                    continue;
                }
                bump(&counters.recv_errors);
                if let Some(s) = log.recv_error.check(monotonic_ns()) {
                    log::warn!(
                        "net: receive on {} failed: {e} ({s} similar suppressed)",
                        receiver.local
                    );
                }
                // A persistent error must not spin a core; the pause is
                // short against the jitter buffer's depth.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let now = monotonic_ns();
        bump(&counters.datagrams);
        counters.bytes.fetch_add(len as u64, Ordering::Relaxed);

        if !receiver.allowed(source.ip()) {
            bump(&counters.filtered);
            if let Some(s) = log.filtered.check(now) {
                log::warn!(
                    "net: dropped datagram from {source}: source not in --allow ({s} similar suppressed)"
                );
            }
            continue;
        }
        let Some(datagram) = buf.get(..len).filter(|_| len <= MAX_DATAGRAM) else {
            bump(&counters.too_large);
            if let Some(s) = log.too_large.check(now) {
                log::warn!(
                    "net: dropped datagram from {source}: longer than {MAX_DATAGRAM} bytes; \
                     lower the sender's packet time (ptime) ({s} similar suppressed)"
                );
            }
            continue;
        };
        match parser.parse_into(datagram, now, &mut slot) {
            Ok(()) => match queue.enqueue(slot.clone()) {
                Ok(()) => bump(&counters.queued),
                Err(_) => {
                    bump(&counters.queue_full);
                    if let Some(s) = log.queue_full.check(now) {
                        log::warn!(
                            "net: dropped packet from {source}: playout queue full, the sender \
                             sends faster than real time or playout is stalled ({s} similar suppressed)"
                        );
                    }
                }
            },
            Err(e) => {
                let (counter, limit) = match e {
                    ParseError::Malformed(_)
                    | ParseError::NotWholeFrames { .. }
                    | ParseError::Empty => (&counters.malformed, &mut log.malformed),
                    ParseError::UnknownPayloadType(_) => (
                        &counters.unknown_payload_type,
                        &mut log.unknown_payload_type,
                    ),
                    ParseError::Rtcp => (&counters.rtcp, &mut log.rtcp),
                    ParseError::TooLarge(_) => (&counters.too_large, &mut log.too_large),
                };
                bump(counter);
                if let Some(s) = limit.check(now) {
                    // RTCP next to RTP is normal for VoIP senders: worth a
                    // note when debugging, not a warning.
                    let level = if e == ParseError::Rtcp {
                        log::Level::Debug
                    } else {
                        log::Level::Warn
                    };
                    log::log!(
                        level,
                        "net: dropped datagram from {source}: {e} ({s} similar suppressed)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::{PayloadMap, StreamFormat};
    use crate::rtp::RtpHeader;
    use heapless::spsc::Queue;
    use std::time::Instant;

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.1.2.3".parse().unwrap()),
            "IPv4-mapped source"
        );
        assert!(!c.contains("fd00::1".parse().unwrap()));

        let c: Cidr = "fd00::/8".parse().unwrap();
        assert!(c.contains("fdab::1".parse().unwrap()));
        assert!(!c.contains("fe80::1".parse().unwrap()));
        assert!(!c.contains("10.0.0.1".parse().unwrap()));

        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.168.1.7/32");
        assert!(host.contains("192.168.1.7".parse().unwrap()));
        assert!(!host.contains("192.168.1.8".parse().unwrap()));
        let host6: Cidr = "::1".parse().unwrap();
        assert_eq!(host6.to_string(), "::1/128");
        assert!(!host6.contains("::2".parse().unwrap()));

        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        let odd: Cidr = "192.168.1.0/23".parse().unwrap();
        assert!(odd.contains("192.168.0.200".parse().unwrap()));
        assert!(!odd.contains("192.168.2.1".parse().unwrap()));
    }

    #[test]
    fn cidr_errors() {
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/x",
            "",
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(matches!(e, NetError::Cidr { .. }), "{bad}");
            assert!(e.to_string().contains("--allow"), "{e}");
        }
    }

    fn loopback(ip: &str) -> NetConfig {
        NetConfig {
            listen: SocketAddr::new(ip.parse().unwrap(), 0),
            ..NetConfig::default()
        }
    }

    fn rtp_parser() -> PacketParser {
        PacketParser::new(InputMode::Rtp(PayloadMap::default()))
    }

    /// A PCMU packet (payload type 0) of 160 bytes whose payload carries
    /// `seq` so arrival can be checked packet by packet.
    fn pcmu(seq: u16) -> Vec<u8> {
        let mut d = vec![0u8; 12 + 160];
        RtpHeader {
            payload_type: 0,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 7,
            ..RtpHeader::default()
        }
        .write(&mut d)
        .unwrap();
        d[12..14].copy_from_slice(&seq.to_be_bytes());
        d
    }

    fn wait_for(counter: &AtomicU64, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} datagrams"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Runs the net loop on `receiver` in a thread while `body` sends, then
    /// stops it and returns what reached the queue.
    fn with_running<const N: usize>(
        receiver: &Receiver,
        parser: &mut PacketParser,
        counters: &NetCounters,
        body: impl FnOnce(),
    ) -> Vec<Packet> {
        let mut queue: Box<Queue<Packet, N>> = Box::default();
        let (mut producer, mut consumer) = queue.split();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| run(receiver, parser, &mut producer, counters, &stop));
            body();
            stop.store(true, Ordering::Relaxed);
        });
        let mut got = Vec::new();
        while let Some(p) = consumer.dequeue() {
            got.push(p);
        }
        got
    }

    fn receive_on(ip: &str) {
        let receiver = Receiver::bind(&loopback(ip)).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let got = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
            let tx = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).unwrap();
            for seq in 0..5 {
                tx.send_to(&pcmu(seq), to).unwrap();
            }
            wait_for(&counters.datagrams, 5);
        });
        let seqs: Vec<u16> = got.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert!(got
            .iter()
            .all(|p| p.frames() == 160 && p.ssrc == 7 && p.arrival_ns > 0));
        assert_eq!(counters.queued.load(Ordering::Relaxed), 5);
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 5 * 172);
    }

    #[test]
    fn loopback_ipv4_receive() {
        receive_on("127.0.0.1");
    }

    #[test]
    fn loopback_ipv6_receive() {
        receive_on("::1");
    }

    #[test]
    fn recv_buffer_granted_is_reported() {
        let requested = DEFAULT_RECV_BUFFER_BYTES;
        let r = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        // Privileged, SO_RCVBUFFORCE grants the request; otherwise the
        // kernel caps it at rmem_max. Either way it reports at least that.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let floor = if nix::unistd::geteuid().is_root() {
            requested
        } else {
            requested.min(rmem_max)
        };
        assert!(
            r.recv_buffer_bytes() >= floor,
            "{} < {floor}",
            r.recv_buffer_bytes()
        );
        let small = Receiver::bind(&NetConfig {
            recv_buffer_bytes: 64 * 1024,
            ..loopback("127.0.0.1")
        })
        .unwrap();
        assert!(small.recv_buffer_bytes() >= 64 * 1024);
        assert!(small.recv_buffer_bytes() < r.recv_buffer_bytes() || floor <= 128 * 1024);
    }

    #[test]
    fn dual_stack_listen_takes_ipv4_and_filters_mapped_sources() {
        let receiver = Receiver::bind(&NetConfig {
            allow: vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()],
            ..loopback("::")
        })
        .unwrap();
        let port = receiver.local_addr().port();
        let counters = NetCounters::default();
        let got = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
            let allowed = UdpSocket::bind("127.0.0.2:0").unwrap();
            let denied = UdpSocket::bind("127.0.0.3:0").unwrap();
            let v6 = UdpSocket::bind("[::1]:0").unwrap();
            allowed.send_to(&pcmu(0), ("127.0.0.1", port)).unwrap();
            denied.send_to(&pcmu(1), ("127.0.0.1", port)).unwrap();
            v6.send_to(&pcmu(2), ("::1", port)).unwrap();
            wait_for(&counters.datagrams, 3);
        });
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(counters.filtered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn allow_filter_drops_and_counts_other_sources() {
        let receiver = Receiver::bind(&NetConfig {
            allow: vec!["127.0.0.2/32".parse().unwrap()],
            ..loopback("127.0.0.1")
        })
        .unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let got = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
            let allowed = UdpSocket::bind("127.0.0.2:0").unwrap();
            let denied = UdpSocket::bind("127.0.0.3:0").unwrap();
            for seq in 0..6 {
                let tx = if seq % 2 == 0 { &allowed } else { &denied };
                tx.send_to(&pcmu(seq), to).unwrap();
            }
            wait_for(&counters.datagrams, 6);
        });
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 2, 4]);
        assert_eq!(counters.filtered.load(Ordering::Relaxed), 3);
        assert_eq!(counters.queued.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn flood_of_bad_input_keeps_every_valid_packet() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let mut parser = rtp_parser();
        let mut queue: Box<Queue<Packet, 64>> = Box::default();
        let (mut producer, mut consumer) = queue.split();
        let stop = AtomicBool::new(false);
        let mut got = Vec::new();
        let rounds = 200u16;
        std::thread::scope(|s| {
            s.spawn(|| run(&receiver, &mut parser, &mut producer, &counters, &stop));
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut unknown = pcmu(0);
            unknown[1] = 97;
            let rtcp = [0x81u8, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
            let oversize = vec![0x80u8; MAX_DATAGRAM + 100];
            let mut sent = 0;
            for seq in 0..rounds {
                let mut bad_version = pcmu(seq);
                bad_version[0] = 0x40;
                for d in [
                    &pcmu(seq)[..],
                    &[0x80, 0, 1][..],
                    &bad_version[..],
                    &unknown[..],
                    &rtcp[..],
                    &oversize[..],
                ] {
                    tx.send_to(d, to).unwrap();
                }
                sent += 6;
                // Keep the socket buffer from overflowing (which would be
                // the kernel's drop, not ours) and drain the queue.
                if seq % 10 == 9 {
                    wait_for(&counters.datagrams, sent);
                }
                while let Some(p) = consumer.dequeue() {
                    got.push(p.seq);
                }
            }
            wait_for(&counters.datagrams, sent);
            stop.store(true, Ordering::Relaxed);
        });
        while let Some(p) = consumer.dequeue() {
            got.push(p.seq);
        }
        let n = u64::from(rounds);
        assert_eq!(got, (0..rounds).collect::<Vec<_>>());
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(c(&counters.queued), n);
        assert_eq!(c(&counters.malformed), 2 * n);
        assert_eq!(c(&counters.unknown_payload_type), n);
        assert_eq!(c(&counters.rtcp), n);
        assert_eq!(c(&counters.too_large), n);
        assert_eq!(c(&counters.queue_full), 0);
        assert_eq!(c(&counters.filtered), 0);
        assert_eq!(c(&counters.datagrams), 6 * n);
    }

    #[test]
    fn queue_full_drops_and_counts() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        // Capacity 3, never drained while running.
        let got = with_running::<4>(&receiver, &mut rtp_parser(), &counters, || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            for seq in 0..5 {
                tx.send_to(&pcmu(seq), to).unwrap();
            }
            wait_for(&counters.datagrams, 5);
        });
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(counters.queued.load(Ordering::Relaxed), 3);
        assert_eq!(counters.queue_full.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn raw_tutorial_stream_received() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let mut parser = PacketParser::new(InputMode::Raw(StreamFormat::TUTORIAL));
        let got = with_running::<8>(&receiver, &mut parser, &counters, || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..4u8 {
                tx.send_to(&[i; 320], to).unwrap();
            }
            wait_for(&counters.datagrams, 4);
        });
        assert_eq!(got.len(), 4);
        for (i, p) in got.iter().enumerate() {
            assert!(p.sequential);
            assert_eq!(p.timestamp, 160 * i as u32);
            assert!(p.payload.iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn stop_flag_honoured_within_200ms() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let counters = NetCounters::default();
        let mut parser = rtp_parser();
        let mut queue: Box<Queue<Packet, 4>> = Box::default();
        let (mut producer, _consumer) = queue.split();
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                run(&receiver, &mut parser, &mut producer, &counters, &stop);
                let _ = tx.send(Instant::now());
            });
            // Let the loop settle into a blocking recv with no traffic.
            std::thread::sleep(Duration::from_millis(120));
            let stopped_at = Instant::now();
            stop.store(true, Ordering::Relaxed);
            let returned_at = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let took = returned_at - stopped_at;
            assert!(took < Duration::from_millis(200), "stop took {took:?}");
        });
    }

    #[test]
    fn bind_errors_name_the_cause() {
        let first = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let e = Receiver::bind(&NetConfig {
            listen: first.local_addr(),
            ..NetConfig::default()
        })
        .unwrap_err();
        assert_eq!(e, NetError::AddressInUse(first.local_addr()));
        assert!(
            e.to_string().contains("another netspeaker or program"),
            "{e}"
        );

        let e = Receiver::bind(&NetConfig {
            group: Some("10.0.0.1".parse().unwrap()),
            ..loopback("0.0.0.0")
        })
        .unwrap_err();
        assert_eq!(e, NetError::NotMulticast("10.0.0.1".parse().unwrap()));

        let e = Receiver::bind(&NetConfig {
            group: Some("ff15::77".parse().unwrap()),
            ..loopback("127.0.0.1")
        })
        .unwrap_err();
        assert!(matches!(e, NetError::FamilyMismatch { .. }), "{e}");

        let e = Receiver::bind(&loopback("192.0.2.1")).unwrap_err();
        assert_eq!(
            e,
            NetError::AddressNotAvailable("192.0.2.1:0".parse().unwrap())
        );
    }

    /// Runs `f` on a thread of its own in a fresh network namespace with a
    /// multicast-capable loopback, so no multicast leaves the machine.
    fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET) needs root or CAP_SYS_ADMIN");
                for args in [
                    &["link", "set", "lo", "up"][..],
                    &["link", "set", "lo", "multicast", "on"],
                    &["route", "add", "224.0.0.0/4", "dev", "lo"],
                ] {
                    let st = std::process::Command::new("ip")
                        .args(args)
                        .status()
                        .unwrap();
                    assert!(st.success(), "ip {args:?}");
                }
                f()
            })
            .join()
            .unwrap()
        })
    }

    #[test]
    fn multicast_join_and_receive_in_private_netns() {
        in_private_netns(|| {
            let group: IpAddr = "239.255.77.1".parse().unwrap();
            for interface in ["127.0.0.1", "lo"] {
                let receiver = Receiver::bind(&NetConfig {
                    listen: "0.0.0.0:0".parse().unwrap(),
                    group: Some(group),
                    interface: Some(interface.to_string()),
                    ..NetConfig::default()
                })
                .unwrap();
                let to = SocketAddr::new(group, receiver.local_addr().port());
                let counters = NetCounters::default();
                let got = with_running::<8>(&receiver, &mut rtp_parser(), &counters, || {
                    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                    for seq in 0..3 {
                        tx.send_to(&pcmu(seq), to).unwrap();
                    }
                    wait_for(&counters.datagrams, 3);
                });
                assert_eq!(
                    got.iter().map(|p| p.seq).collect::<Vec<_>>(),
                    [0, 1, 2],
                    "{interface}"
                );
            }
            let e = Receiver::bind(&NetConfig {
                listen: "0.0.0.0:0".parse().unwrap(),
                group: Some(group),
                interface: Some("nosuch0".to_string()),
                ..NetConfig::default()
            })
            .unwrap_err();
            assert_eq!(e, NetError::NoSuchInterface("nosuch0".to_string()));
        });
    }
}
