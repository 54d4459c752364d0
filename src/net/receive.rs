//! The receiver's socket and the net thread's loop.
//!
//! Input: datagrams on the listening socket (unicast or multicast, IPv4 or
//! IPv6). Output: validated packet slots pushed onto the `heapless::spsc`
//! queue to the playout thread, the counters in [`NetCounters`] that the
//! main thread reads, and a [`NetEvent`] per dropped datagram on a second
//! preallocated queue, which the main thread drains and logs
//! ([`EventLog`]): the net thread itself never logs, since formatting a
//! line allocates and may block on the logger.
//!
//! With `--srtp-key-file` every datagram is authenticated and decrypted
//! ([`SrtpContext::unprotect`]) before anything else reads it: one whose
//! tag does not verify (another key, a plaintext sender, tampering) and
//! one already received (a replay) is counted, reported and dropped
//! before the parser sees it.
//!
//! Policy: a datagram from a source outside `--allow`, a truncated or
//! oversized datagram, a malformed RTP header, an unknown payload type,
//! RTCP other than a BYE, or a payload that is not whole frames is
//! counted, reported as an event with its source, and dropped. An RTCP BYE
//! is queued like a packet (a slot of kind `Bye`), so that the playout
//! side learns at once that a sender left. A full packet queue drops the new
//! packet and counts it; a full event queue counts the event as a
//! suppressed repeat, carried by the next event of its kind that fits. The
//! net thread never waits for another thread. Order is not judged here:
//! late, lost, duplicate and reordered packets are passed on as they
//! arrive, for the jitter buffer to place. After `bind`, nothing allocates
//! per packet.
//!
//! A group on `--interface` that is not there at `bind` is not joined
//! anywhere yet: [`Receiver::take_link_watch`] hands the `link` thread
//! ([`crate::net::link`]) what it needs to join it when the interface
//! appears and rejoin it as it changes, on a second descriptor of the same
//! socket; this loop neither knows nor waits.
//!
//! With several streams (`--stream`, [`run_streams`]) the one net thread
//! waits on every socket with `poll` and takes each datagram through the
//! same steps into the queue of the stream whose socket it came to.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use heapless::spsc::{Consumer, Producer};
use nix::errno::Errno;

use crate::net::filter::{Cidr, SourceFilter};
use crate::net::link::{LinkSocket, Watch};
use crate::net::socket::{self, Buffer, Interface};
use crate::receive::sender_clock::SenderClocks;
use crate::rtp::packet::{Packet, MAX_DATAGRAM};
use crate::rtp::rtcp;
use crate::rtp::srtp::{SrtpContext, SrtpError};
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

/// Slots of the event queue (one fewer usable). The main thread drains it
/// every 10 ms; a flood beyond this is carried as suppressed counts.
pub const EVENT_QUEUE_LEN: usize = 64;

/// The net thread's event queue; allocate once at startup and split.
pub type EventQueue = heapless::spsc::Queue<NetEvent, EVENT_QUEUE_LEN>;

/// Options of the net stage.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Address and UDP port to listen on (`--listen`); `[::]` listens on
    /// IPv6 and IPv4 both.
    pub listen: SocketAddr,
    /// Multicast group to join (`--group`); a multicast `listen` address
    /// is joined as well when this is `None`.
    pub group: Option<IpAddr>,
    /// Interface to join the group on (`--interface`): a name (`eth0`) or
    /// an address of a local interface, IPv4 or IPv6; `None` lets the
    /// kernel pick by route.
    pub interface: Option<String>,
    /// Sources accepted (`--allow`); empty accepts every source.
    pub allow: Vec<Cidr>,
    /// Socket receive buffer to request, in bytes (the kernel may grant
    /// less; see `Receiver::recv_buffer_bytes`).
    pub recv_buffer_bytes: usize,
    /// Also read RTCP on the listening port + 1 (RFC 3550 §11), for the
    /// senders' reports. A port + 1 that cannot be bound is warned about
    /// and done without: RTCP on the RTP port (RFC 5761) is read anyway.
    pub rtcp_next_port: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5004)),
            group: None,
            interface: None,
            allow: Vec::new(),
            recv_buffer_bytes: DEFAULT_RECV_BUFFER_BYTES,
            rtcp_next_port: false,
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
    /// Handed to the playout thread (audio, and RTCP BYEs).
    pub queued: AtomicU64,
    /// From a source outside `--allow`.
    pub filtered: AtomicU64,
    /// Bad RTP header, empty payload or not whole frames.
    pub malformed: AtomicU64,
    pub unknown_payload_type: AtomicU64,
    /// RTCP other than BYE.
    pub rtcp: AtomicU64,
    /// Longer than a packet slot or the receive buffer.
    pub too_large: AtomicU64,
    /// The playout thread's queue was full.
    pub queue_full: AtomicU64,
    /// `recv` failed (other than the periodic timeout).
    pub recv_errors: AtomicU64,
    /// SRTP: the authentication tag did not verify.
    pub auth_failed: AtomicU64,
    /// SRTP: received before, or older than the replay window.
    pub replayed: AtomicU64,
    /// RTCP sender reports taken (on either port).
    pub sender_reports: AtomicU64,
    /// The latest reporting sender's media clock rate against its wall
    /// clock, in µHz (frames per second · 10^6); 0 until known.
    pub sender_rate_uhz: AtomicU64,
    /// The latest reporting sender's mapping of RTP timestamps to its wall
    /// clock, for sync playout (`receive::sync`).
    pub sender_clock: std::sync::Arc<crate::receive::sync::SyncFeed>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why the socket could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    NotMulticast(IpAddr),
    FamilyMismatch {
        listen: SocketAddr,
        group: IpAddr,
    },
    /// Creating the socket, setting an option, or resolving `--interface`.
    Socket(socket::Error),
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
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NotMulticast(g) => write!(
                f,
                "--group {g} is not a multicast address (224.0.0.0/4 or ff00::/8)"
            ),
            NetError::FamilyMismatch { listen, group } => write!(
                f,
                "--group {group} and --listen {listen} are of different address families: \
                 listen on 0.0.0.0:PORT for an IPv4 group, [::]:PORT for an IPv6 group"
            ),
            NetError::Socket(e) => write!(f, "{e}"),
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
        }
    }
}

impl std::error::Error for NetError {}

impl From<socket::Error> for NetError {
    fn from(e: socket::Error) -> Self {
        NetError::Socket(e)
    }
}

/// The bound (and, for multicast, joined) socket.
#[derive(Debug)]
pub struct Receiver {
    socket: UdpSocket,
    /// Port + 1, non-blocking, drained on every pass of the loop.
    rtcp: Option<UdpSocket>,
    local: SocketAddr,
    filter: SourceFilter,
    recv_buffer_bytes: usize,
    watch: Option<Watch>,
    waiting: bool,
}

impl Receiver {
    pub fn bind(config: &NetConfig) -> Result<Receiver, NetError> {
        let mut listen = config.listen;
        // `--listen GROUP:PORT` names the group too: bound to the group's
        // address, the socket takes only that group's datagrams.
        let group = config
            .group
            .or(Some(listen.ip()).filter(IpAddr::is_multicast));
        if let Some(group) = group {
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
        // A group on a named interface is followed through the kernel's
        // link events (subscribed before the look-up, so a change between
        // the two is not missed): an interface not there yet is waited
        // for. Without netlink, one not there fails the start, as before.
        let link = match (group, config.interface.as_deref()) {
            (Some(_), Some(_)) => match LinkSocket::open() {
                Ok(l) => Some(l),
                Err(e) => {
                    // Startup, on the main thread: logging is fine here.
                    log::warn!("net: {e}; interface changes will not be followed");
                    None
                }
            },
            _ => None,
        };
        let interface = match (group, config.interface.as_deref()) {
            (Some(_), Some(i)) => match Interface::resolve(i) {
                Ok(found) => Some(found),
                Err(_) if link.is_some() => None,
                Err(e) => return Err(e.into()),
            },
            _ => None,
        };
        let fd = socket::udp_for(listen)?;
        if group.is_some() {
            socket::set_reuse_addr(&fd)?;
        }
        let recv_buffer_bytes = socket::set_buffer(&fd, Buffer::Receive, config.recv_buffer_bytes)?;
        if listen.is_ipv6() && listen.ip().is_unspecified() {
            socket::set_dual_stack(&fd)?;
        }
        socket::bind(&fd, listen).map_err(|errno| match errno {
            Errno::EADDRINUSE => NetError::AddressInUse(listen),
            Errno::EACCES | Errno::EPERM => NetError::Permission(listen),
            Errno::EADDRNOTAVAIL => NetError::AddressNotAvailable(listen),
            errno => NetError::Bind {
                addr: listen,
                errno,
            },
        })?;

        let socket = UdpSocket::from(fd);
        let mut joined = None;
        if let Some(group) = group {
            let named = config.interface.is_some();
            // Not there: not joined at all (joining without an interface
            // would take whichever the route picks); the watch joins it
            // when it appears.
            let result = match (named, &interface) {
                (true, None) => Ok(()),
                _ => socket::join(&socket, group, interface.as_ref()),
            };
            match result {
                Ok(()) => joined = interface,
                // Gone since the look-up: likewise.
                Err(Errno::ENODEV | Errno::EADDRNOTAVAIL) if named && link.is_some() => {}
                Err(Errno::ENODEV | Errno::EADDRNOTAVAIL) if named => {
                    return Err(NetError::Socket(socket::Error::NoSuchInterface(
                        config.interface.clone().unwrap_or_default(),
                    )))
                }
                Err(errno) => {
                    return Err(NetError::Join {
                        group,
                        interface: config.interface.clone(),
                        errno,
                    })
                }
            }
            if let Err(errno) = socket::only_joined_group(&socket, group) {
                // Startup, on the main thread: logging is fine here. Other
                // groups on our port then reach the filter and the parser.
                log::debug!(
                    "net: cannot restrict the socket to the joined group ({errno}); continuing"
                );
            }
        }
        socket
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|e| socket::Error::Option {
                option: "SO_RCVTIMEO",
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
        let local = socket.local_addr().unwrap_or(listen);
        let waiting = link.is_some() && joined.is_none();
        let watch = match (link, group, config.interface.as_deref()) {
            (Some(link), Some(group), Some(value)) => {
                // A second descriptor of the same socket: memberships
                // belong to the socket, so the link thread joins for the
                // net thread without ever touching it.
                let dup = socket.try_clone().map_err(|e| socket::Error::Option {
                    option: "F_DUPFD_CLOEXEC",
                    errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                })?;
                Some(Watch::new(link, dup, group, value, joined))
            }
            _ => None,
        };
        let rtcp = if config.rtcp_next_port {
            bind_rtcp(listen, local, group.is_some())
        } else {
            None
        };
        Ok(Receiver {
            socket,
            rtcp,
            local,
            filter: SourceFilter::new(&config.allow),
            recv_buffer_bytes,
            watch,
            waiting,
        })
    }

    /// Whether the group waits for its `--interface` to appear (it was
    /// not there at start-up): the link thread joins it then.
    pub fn waiting_for_interface(&self) -> bool {
        self.waiting
    }

    /// The link watch that keeps the group joined on `--interface` as it
    /// comes and goes, for the `link` thread ([`Watch::run`]); `None` for
    /// unicast, without `--interface`, or once taken.
    pub fn take_link_watch(&mut self) -> Option<Watch> {
        self.watch.take()
    }

    /// The RTCP socket's address (port + 1), when one is bound.
    pub fn rtcp_addr(&self) -> Option<SocketAddr> {
        self.rtcp.as_ref().and_then(|s| s.local_addr().ok())
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
}

/// Binds the RTCP socket on the RTP socket's address and port + 1. On a
/// group it shares the group's membership, which is the host's: the
/// kernel delivers the group's datagrams for port + 1 to it without a
/// join of its own. Failing is no reason not to play: warned, and `None`.
fn bind_rtcp(listen: SocketAddr, local: SocketAddr, group: bool) -> Option<UdpSocket> {
    let port = local.port().checked_add(1).filter(|_| local.port() != 0)?;
    let addr = SocketAddr::new(listen.ip(), port);
    let bound = (|| {
        let fd = socket::udp_for(addr).map_err(|e| e.to_string())?;
        if group {
            socket::set_reuse_addr(&fd).map_err(|e| e.to_string())?;
        }
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket::set_dual_stack(&fd).map_err(|e| e.to_string())?;
        }
        socket::bind(&fd, addr).map_err(|e| e.to_string())?;
        let s = UdpSocket::from(fd);
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok::<_, String>(s)
    })();
    match bound {
        Ok(s) => Some(s),
        Err(e) => {
            // Startup, on the main thread: logging is fine here.
            log::warn!(
                "net: cannot listen for RTCP on {addr} ({e}): sender reports are read only \
                 on the RTP port (rtcp-mux); free the port or ignore this without --sync-ms"
            );
            None
        }
    }
}

/// Why the net thread dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Its source is outside `--allow`.
    Filtered,
    /// Longer than `MAX_DATAGRAM` (truncated by the kernel).
    TooLarge,
    /// The playout thread's queue was full.
    QueueFull,
    /// The parser refused it.
    Parse(ParseError),
    /// SRTP refused it (authentication, replay, too short for a tag).
    Srtp(SrtpError),
    /// Not a consistent compound RTCP packet, on the RTCP port.
    BadRtcp,
}

/// What the net thread reports to the main thread instead of logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetEvent {
    Dropped {
        reason: DropReason,
        source: SocketAddr,
        /// Earlier events of the same kind that did not fit the queue.
        suppressed: u32,
    },
    /// `recv` on the socket bound to `local` failed (not a timeout).
    RecvFailed {
        local: SocketAddr,
        errno: Errno,
        suppressed: u32,
    },
}

/// The kinds rate-limited separately, so a flood of one kind does not
/// hide the first report of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Filtered,
    Malformed,
    UnknownPayloadType,
    Rtcp,
    TooLarge,
    QueueFull,
    RecvError,
    AuthFailed,
    Replayed,
}

const KINDS: usize = 9;

impl NetEvent {
    fn kind(&self) -> Kind {
        match self {
            NetEvent::RecvFailed { .. } => Kind::RecvError,
            NetEvent::Dropped { reason, .. } => match reason {
                DropReason::Filtered => Kind::Filtered,
                DropReason::TooLarge | DropReason::Parse(ParseError::TooLarge(_)) => Kind::TooLarge,
                DropReason::QueueFull => Kind::QueueFull,
                DropReason::Parse(ParseError::UnknownPayloadType(_)) => Kind::UnknownPayloadType,
                DropReason::Parse(ParseError::Rtcp) => Kind::Rtcp,
                DropReason::Parse(
                    ParseError::Malformed(_)
                    | ParseError::NotWholeFrames { .. }
                    | ParseError::Empty
                    | ParseError::BadOpus(_),
                ) => Kind::Malformed,
                DropReason::BadRtcp => Kind::Malformed,
                DropReason::Srtp(SrtpError::AuthFailed) => Kind::AuthFailed,
                DropReason::Srtp(SrtpError::Replayed) => Kind::Replayed,
                DropReason::Srtp(
                    SrtpError::TooShort { .. }
                    | SrtpError::Header(_)
                    | SrtpError::BufferTooSmall { .. },
                ) => Kind::Malformed,
            },
        }
    }

    fn suppressed(&self) -> u32 {
        match self {
            NetEvent::Dropped { suppressed, .. } | NetEvent::RecvFailed { suppressed, .. } => {
                *suppressed
            }
        }
    }

    fn with_suppressed(self, n: u32) -> Self {
        match self {
            NetEvent::Dropped { reason, source, .. } => NetEvent::Dropped {
                reason,
                source,
                suppressed: n,
            },
            NetEvent::RecvFailed { local, errno, .. } => NetEvent::RecvFailed {
                local,
                errno,
                suppressed: n,
            },
        }
    }
}

impl fmt::Display for NetEvent {
    /// The log line, without the count of suppressed repeats.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NetEvent::RecvFailed { local, errno, .. } => {
                write!(
                    f,
                    "net: receive on {local} failed: {}",
                    std::io::Error::from(errno)
                )
            }
            NetEvent::Dropped { reason, source, .. } => match reason {
                DropReason::Filtered => write!(
                    f,
                    "net: dropped datagram from {source}: source not in --allow"
                ),
                DropReason::TooLarge => write!(
                    f,
                    "net: dropped datagram from {source}: longer than {MAX_DATAGRAM} bytes; \
                     lower the sender's packet time (ptime)"
                ),
                DropReason::QueueFull => write!(
                    f,
                    "net: dropped packet from {source}: playout queue full, the sender \
                     sends faster than real time or playout is stalled"
                ),
                DropReason::Parse(e) => write!(f, "net: dropped datagram from {source}: {e}"),
                DropReason::Srtp(e) => write!(f, "net: dropped datagram from {source}: {e}"),
                DropReason::BadRtcp => write!(
                    f,
                    "net: dropped datagram from {source} on the RTCP port: not a well-formed \
                     RTCP compound packet (RFC 3550 section 6.1); check what the sender sends \
                     to this port"
                ),
            },
        }
    }
}

/// The net thread's side of the event queue: pushes without waiting and
/// counts, per kind, what did not fit.
struct EventSender<'q, 'p> {
    queue: &'q mut Producer<'p, NetEvent>,
    pending: [u32; KINDS],
}

impl EventSender<'_, '_> {
    fn send(&mut self, event: NetEvent) {
        let k = event.kind() as usize;
        let Some(pending) = self.pending.get_mut(k) else {
            return;
        };
        match self.queue.enqueue(event.with_suppressed(*pending)) {
            Ok(()) => *pending = 0,
            Err(_) => *pending = pending.saturating_add(1),
        }
    }
}

/// The main thread's side: logs drained events, rate-limited per kind,
/// with the repeats suppressed on either side.
#[derive(Debug, Clone)]
pub struct EventLog {
    limits: [RateLimit; KINDS],
    /// Repeats carried by events this side suppressed, owed to the next
    /// line of their kind.
    carried: [u64; KINDS],
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            limits: core::array::from_fn(|_| RateLimit::default_for_input()),
            carried: [0; KINDS],
        }
    }
}

impl EventLog {
    /// Whether `event` may be logged at `now_ns`, and if so how many
    /// repeats of its kind went unlogged before it.
    fn admit(&mut self, event: &NetEvent, now_ns: u64) -> Option<u64> {
        let k = event.kind() as usize;
        let (limit, carried) = (self.limits.get_mut(k)?, self.carried.get_mut(k)?);
        let Some(s) = limit.check(now_ns) else {
            *carried += u64::from(event.suppressed());
            return None;
        };
        let suppressed = s + *carried + u64::from(event.suppressed());
        *carried = 0;
        Some(suppressed)
    }

    /// Logs `event` at `now_ns` unless its kind is over its rate.
    pub fn log(&mut self, event: &NetEvent, now_ns: u64) {
        let Some(suppressed) = self.admit(event, now_ns) else {
            return;
        };
        let k = event.kind();
        // RTCP next to RTP is normal for VoIP senders: worth a note when
        // debugging, not a warning.
        let level = if k == Kind::Rtcp {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        log::log!(level, "{event} ({suppressed} similar suppressed)");
    }

    /// Drains every event the net thread has queued and logs it.
    pub fn drain(&mut self, events: &mut Consumer<'_, NetEvent>, now_ns: u64) {
        while let Some(event) = events.dequeue() {
            self.log(&event, now_ns);
        }
    }
}

/// The net thread's body for plain RTP or raw PCM: [`run_with_srtp`]
/// without a key.
pub fn run(
    receiver: &Receiver,
    parser: &mut PacketParser,
    queue: &mut Producer<'_, Packet>,
    events: &mut Producer<'_, NetEvent>,
    counters: &NetCounters,
    stop: &AtomicBool,
) {
    run_with_srtp(receiver, None, parser, queue, events, counters, stop)
}

/// RTCP datagrams taken from port + 1 per pass of the loop at most, so a
/// flood there cannot hold up the audio on the RTP port.
const RTCP_PER_PASS: usize = 16;

/// One stream as the net thread works with it: its socket(s), key,
/// parser, queue to the playout thread, counters, the packet slot and
/// the clocks of its senders. Events go through the thread's one
/// `EventSender`, passed to each call.
struct Net<'a, 'q> {
    receiver: &'a Receiver,
    srtp: Option<&'a mut SrtpContext>,
    parser: &'a mut PacketParser,
    queue: &'a mut Producer<'q, Packet>,
    counters: &'a NetCounters,
    slot: &'a mut Packet,
    clocks: &'a mut SenderClocks,
}

/// A stream's packet slot and its senders' clocks (~6 kB), which the net
/// thread works in. Kept with the stream, built at start-up for the
/// streams there are: in the net thread's own frame, room for the most
/// streams there may be (8) was ~50 kB of stack, all of it resident
/// (stack probes touch every page of a large frame).
pub struct NetScratch {
    slot: Packet,
    clocks: SenderClocks,
}

impl Default for NetScratch {
    fn default() -> Self {
        NetScratch {
            slot: Packet::empty(crate::audio::format::StreamFormat::TUTORIAL),
            clocks: SenderClocks::default(),
        }
    }
}

impl<'a, 'q> Net<'a, 'q> {
    fn new(
        receiver: &'a Receiver,
        srtp: Option<&'a mut SrtpContext>,
        parser: &'a mut PacketParser,
        queue: &'a mut Producer<'q, Packet>,
        counters: &'a NetCounters,
        scratch: &'a mut NetScratch,
    ) -> Self {
        scratch.slot.format = slot_format(parser);
        Net {
            receiver,
            srtp,
            parser,
            queue,
            counters,
            slot: &mut scratch.slot,
            clocks: &mut scratch.clocks,
        }
    }

    fn reject(
        &self,
        events: &mut EventSender,
        reason: DropReason,
        counter: &AtomicU64,
        source: SocketAddr,
    ) {
        bump(counter);
        events.send(NetEvent::Dropped {
            reason,
            source,
            suppressed: 0,
        });
    }

    fn recv_failed(&self, events: &mut EventSender, local: SocketAddr, e: &std::io::Error) {
        bump(&self.counters.recv_errors);
        events.send(NetEvent::RecvFailed {
            local,
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            suppressed: 0,
        });
    }

    /// Filters, authenticates and decrypts one datagram; the plain packet,
    /// or `None` when it was dropped (and counted).
    fn admit<'b>(
        &mut self,
        events: &mut EventSender,
        buf: &'b mut [u8],
        len: usize,
        source: SocketAddr,
    ) -> Option<&'b [u8]> {
        let counters = self.counters;
        bump(&counters.datagrams);
        counters.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if !self.receiver.filter.allows(source.ip()) {
            self.reject(events, DropReason::Filtered, &counters.filtered, source);
            return None;
        }
        let Some(datagram) = buf.get_mut(..len).filter(|_| len <= MAX_DATAGRAM) else {
            self.reject(events, DropReason::TooLarge, &counters.too_large, source);
            return None;
        };
        // Authenticated before anything reads it; the parser gets the
        // plain packet without its tag.
        match self.srtp.as_deref_mut().map(|c| c.unprotect(datagram)) {
            None => Some(datagram),
            Some(Ok(plain)) => Some(datagram.get(..plain).unwrap_or_default()),
            Some(Err(e)) => {
                let counter = match e {
                    SrtpError::AuthFailed => &counters.auth_failed,
                    SrtpError::Replayed => &counters.replayed,
                    SrtpError::TooShort { .. }
                    | SrtpError::Header(_)
                    | SrtpError::BufferTooSmall { .. } => &counters.malformed,
                };
                self.reject(events, DropReason::Srtp(e), counter, source);
                None
            }
        }
    }

    fn enqueue(&mut self, events: &mut EventSender, source: SocketAddr) {
        match self.queue.enqueue(self.slot.clone()) {
            Ok(()) => bump(&self.counters.queued),
            Err(_) => self.reject(
                events,
                DropReason::QueueFull,
                &self.counters.queue_full,
                source,
            ),
        }
    }

    /// An RTCP compound: a sender report feeds the sender's clock, a BYE
    /// goes on to the playout side (which lets the source go) and ends
    /// the sender's clock; anything else is counted as RTCP and dropped.
    fn take_rtcp(
        &mut self,
        events: &mut EventSender,
        datagram: &[u8],
        now: u64,
        source: SocketAddr,
    ) {
        let mut used = false;
        if let Some(sr) = rtcp::sender_report(datagram) {
            self.clocks.on_report(&sr);
            used = true;
        }
        if self.parser.parse_bye_into(datagram, now, self.slot).is_ok() {
            for ssrc in self.slot.bye_ssrcs() {
                self.clocks.on_bye(ssrc);
            }
            self.enqueue(events, source);
            used = true;
        }
        if used {
            self.publish_clock();
        } else {
            self.reject(
                events,
                DropReason::Parse(ParseError::Rtcp),
                &self.counters.rtcp,
                source,
            );
        }
    }

    fn publish_clock(&self) {
        let c = self.counters;
        c.sender_reports
            .store(self.clocks.reports, Ordering::Relaxed);
        let uhz = self
            .clocks
            .latest()
            .and_then(|s| s.fit())
            .map_or(0, |f| (f.rate_hz * 1e6).round().max(0.0) as u64);
        c.sender_rate_uhz.store(uhz, Ordering::Relaxed);
        c.sender_clock.store(
            self.clocks
                .latest()
                .and_then(crate::receive::sync::Mapping::of),
        );
    }

    /// A datagram on the RTP port: audio, or RTCP muxed beside it.
    fn take(
        &mut self,
        events: &mut EventSender,
        buf: &mut [u8],
        len: usize,
        source: SocketAddr,
        now: u64,
    ) {
        let Some(datagram) = self.admit(events, buf, len, source) else {
            return;
        };
        match self.parser.parse_into(datagram, now, self.slot) {
            Ok(()) => self.enqueue(events, source),
            Err(ParseError::Rtcp) => self.take_rtcp(events, datagram, now, source),
            Err(e) => {
                let c = self.counters;
                let counter = match e {
                    ParseError::Malformed(_)
                    | ParseError::NotWholeFrames { .. }
                    | ParseError::Empty
                    | ParseError::BadOpus(_) => &c.malformed,
                    ParseError::UnknownPayloadType(_) => &c.unknown_payload_type,
                    ParseError::Rtcp => &c.rtcp,
                    ParseError::TooLarge(_) => &c.too_large,
                };
                self.reject(events, DropReason::Parse(e), counter, source);
            }
        }
    }

    /// A datagram on the RTCP port: only a consistent compound is read.
    fn take_on_rtcp_port(
        &mut self,
        events: &mut EventSender,
        buf: &mut [u8],
        len: usize,
        source: SocketAddr,
        now: u64,
    ) {
        let Some(datagram) = self.admit(events, buf, len, source) else {
            return;
        };
        if rtcp::is_compound(datagram) {
            self.take_rtcp(events, datagram, now, source);
        } else {
            self.reject(
                events,
                DropReason::BadRtcp,
                &self.counters.malformed,
                source,
            );
        }
    }

    /// Takes what waits on the RTCP port (port + 1) without waiting, at
    /// most `RTCP_PER_PASS` datagrams.
    fn drain_rtcp_port(&mut self, events: &mut EventSender, buf: &mut [u8]) {
        let receiver = self.receiver;
        let Some(rtcp_socket) = receiver.rtcp.as_ref() else {
            return;
        };
        for _ in 0..RTCP_PER_PASS {
            match rtcp_socket.recv_from(buf) {
                Ok((len, source)) => {
                    self.take_on_rtcp_port(events, buf, len, source, monotonic_ns())
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let local = rtcp_socket.local_addr().unwrap_or(receiver.local);
                    self.recv_failed(events, local, &e);
                    break;
                }
            }
        }
    }

    /// Receives one datagram on the RTP port (waiting at most the socket's
    /// timeout) and takes it.
    fn receive_one(&mut self, events: &mut EventSender, buf: &mut [u8]) {
        let (len, source) = match self.receiver.socket.recv_from(buf) {
            Ok(r) => r,
            Err(e) => {
                use std::io::ErrorKind;
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) {
                    return;
                }
                self.recv_failed(events, self.receiver.local, &e);
                // A persistent error must not spin a core; the pause is
                // short against the jitter buffer's depth.
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        let now = monotonic_ns();
        self.take(events, buf, len, source, now);
    }
}

fn slot_format(parser: &PacketParser) -> crate::audio::format::StreamFormat {
    match parser.mode() {
        InputMode::Raw(f) => *f,
        InputMode::Rtp(_) => crate::audio::format::StreamFormat::TUTORIAL,
    }
}

/// The net thread's body: receives, filters, authenticates and decrypts
/// (with `srtp`), parses and enqueues until `stop` is set (seen within
/// `RECV_TIMEOUT`). RTCP on port + 1 is read without waiting on every
/// pass (a pass ends at each datagram on the RTP port or its timeout, so
/// a report waits at most `RECV_TIMEOUT`; it carries its own time). Never
/// returns early on bad input or a failing `recv`, never logs and never
/// allocates.
pub fn run_with_srtp(
    receiver: &Receiver,
    srtp: Option<&mut SrtpContext>,
    parser: &mut PacketParser,
    queue: &mut Producer<'_, Packet>,
    events: &mut Producer<'_, NetEvent>,
    counters: &NetCounters,
    stop: &AtomicBool,
) {
    // One byte more than the largest datagram we accept: a datagram that
    // fills the buffer was longer and has been truncated by the kernel.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut events = EventSender {
        queue: events,
        pending: [0; KINDS],
    };
    let mut scratch = NetScratch::default();
    let mut net = Net::new(receiver, srtp, parser, queue, counters, &mut scratch);
    while !stop.load(Ordering::Relaxed) {
        net.drain_rtcp_port(&mut events, &mut buf);
        net.receive_one(&mut events, &mut buf);
    }
}

/// One of several streams the net thread serves (`--stream`): its socket,
/// key, parser, queue to the playout thread and counters.
pub struct NetStream {
    pub receiver: Receiver,
    pub srtp: Option<SrtpContext>,
    pub parser: PacketParser,
    pub queue: Producer<'static, Packet>,
    pub counters: std::sync::Arc<NetCounters>,
    pub scratch: NetScratch,
}

/// The net thread's body for several streams: one thread waits on every
/// socket at once (`poll`: each stream's RTP socket and its RTCP socket),
/// and takes each datagram through the same steps as [`run_with_srtp`]
/// into its own stream's queue. A stream's flood cannot starve another:
/// every ready socket gets one datagram per round. Sees `stop` within
/// `RECV_TIMEOUT`; allocates nothing.
pub fn run_streams(
    streams: &mut [NetStream],
    events: &mut Producer<'_, NetEvent>,
    stop: &AtomicBool,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    const MAX: usize = crate::receive::priority::MAX_STREAMS;
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut events = EventSender {
        queue: events,
        pending: [0; KINDS],
    };
    // More streams than MAX are refused at start-up; any beyond are not
    // served rather than indexed out of bounds.
    let mut nets: heapless::Vec<Net<'_, 'static>, MAX> = heapless::Vec::new();
    for s in streams.iter_mut() {
        let _ = nets.push(Net::new(
            &s.receiver,
            s.srtp.as_mut(),
            &mut s.parser,
            &mut s.queue,
            &s.counters,
            &mut s.scratch,
        ));
    }
    let timeout =
        PollTimeout::try_from(RECV_TIMEOUT.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    while !stop.load(Ordering::Relaxed) {
        // Per stream: its RTP socket ready, its RTCP socket ready.
        let mut ready = [(false, false); MAX];
        {
            let mut fds: heapless::Vec<PollFd<'_>, { 2 * MAX }> = heapless::Vec::new();
            let mut owner: heapless::Vec<(usize, bool), { 2 * MAX }> = heapless::Vec::new();
            for (i, n) in nets.iter().enumerate() {
                let _ = fds.push(PollFd::new(n.receiver.socket.as_fd(), PollFlags::POLLIN));
                let _ = owner.push((i, false));
                if let Some(r) = n.receiver.rtcp.as_ref() {
                    let _ = fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
                    let _ = owner.push((i, true));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => {
                    for (fd, &(i, is_rtcp)) in fds.iter().zip(owner.iter()) {
                        let hit = fd.revents().is_some_and(|e| !e.is_empty());
                        if let Some(r) = ready.get_mut(i) {
                            if is_rtcp {
                                r.1 |= hit;
                            } else {
                                r.0 |= hit;
                            }
                        }
                    }
                }
                // A signal: look at the stop flag and wait again.
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    // Not expected for sockets we own; never spin.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        for (net, &(rtp, rtcp)) in nets.iter_mut().zip(ready.iter()) {
            if rtcp {
                net.drain_rtcp_port(&mut events, &mut buf);
            }
            if rtp {
                net.receive_one(&mut events, &mut buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::{PayloadMap, StreamFormat};
    use crate::net::link::{Change, LinkEvent};
    use crate::rtp::RtpHeader;
    use heapless::spsc::Queue;
    use std::time::Instant;

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
    ) -> (Vec<Packet>, Vec<NetEvent>) {
        let mut queue: Box<Queue<Packet, N>> = Box::default();
        let (mut producer, mut consumer) = queue.split();
        let mut event_queue: Box<EventQueue> = Box::default();
        let (mut event_tx, mut event_rx) = event_queue.split();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                run(
                    receiver,
                    parser,
                    &mut producer,
                    &mut event_tx,
                    counters,
                    &stop,
                )
            });
            body();
            stop.store(true, Ordering::Relaxed);
        });
        let mut got = Vec::new();
        while let Some(p) = consumer.dequeue() {
            got.push(p);
        }
        let mut events = Vec::new();
        while let Some(e) = event_rx.dequeue() {
            events.push(e);
        }
        (got, events)
    }

    #[test]
    fn several_streams_served_by_one_thread_each_into_its_own_queue() {
        // Queues that live as long as the test process, as the receiver's
        // do (their producers are 'static).
        let a_queue: &'static mut Queue<Packet, 16> = Box::leak(Box::default());
        let b_queue: &'static mut Queue<Packet, 16> = Box::leak(Box::default());
        let (a_tx, mut a_rx) = a_queue.split();
        let (b_tx, mut b_rx) = b_queue.split();
        let stream = |queue| NetStream {
            receiver: Receiver::bind(&loopback("127.0.0.1")).unwrap(),
            srtp: None,
            parser: rtp_parser(),
            queue,
            counters: Default::default(),
            scratch: NetScratch::default(),
        };
        let mut streams = [stream(a_tx), stream(b_tx)];
        let (a_to, b_to) = (
            streams[0].receiver.local_addr(),
            streams[1].receiver.local_addr(),
        );
        let (a_counters, b_counters) = (
            std::sync::Arc::clone(&streams[0].counters),
            std::sync::Arc::clone(&streams[1].counters),
        );
        let mut event_queue: Box<EventQueue> = Box::default();
        let (mut event_tx, _event_rx) = event_queue.split();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| run_streams(&mut streams, &mut event_tx, &stop));
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            for seq in 0..4 {
                tx.send_to(&pcmu(seq), a_to).unwrap();
                tx.send_to(&pcmu(100 + seq), b_to).unwrap();
            }
            tx.send_to(b"junk", b_to).unwrap();
            wait_for(&a_counters.datagrams, 4);
            wait_for(&b_counters.datagrams, 5);
            stop.store(true, Ordering::Relaxed);
        });
        let drain = |rx: &mut heapless::spsc::Consumer<'static, Packet>| {
            let mut seqs = Vec::new();
            while let Some(p) = rx.dequeue() {
                seqs.push(p.seq);
            }
            seqs
        };
        assert_eq!(drain(&mut a_rx), [0, 1, 2, 3]);
        assert_eq!(drain(&mut b_rx), [100, 101, 102, 103]);
        // Counted against the stream it came to.
        assert_eq!(a_counters.malformed.load(Ordering::Relaxed), 0);
        assert_eq!(b_counters.malformed.load(Ordering::Relaxed), 1);
    }

    fn receive_on(ip: &str) {
        let receiver = Receiver::bind(&loopback(ip)).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let (got, _events) = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
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
    fn rtcp_bye_is_queued_other_rtcp_dropped() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        // A receiver report alone, then RR + BYE for SSRC 7 (RFC 5761 mux).
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 9];
        let mut rr_bye = rr.to_vec();
        rr_bye.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 7]);
        let (got, _events) = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            tx.send_to(&pcmu(1), to).unwrap();
            tx.send_to(&rr, to).unwrap();
            tx.send_to(&rr_bye, to).unwrap();
            tx.send_to(&pcmu(2), to).unwrap();
            wait_for(&counters.datagrams, 4);
        });
        use crate::rtp::packet::PacketKind;
        let kinds: Vec<(PacketKind, u32)> = got.iter().map(|p| (p.kind, p.ssrc)).collect();
        assert_eq!(
            kinds,
            [
                (PacketKind::Audio, 7),
                (PacketKind::Bye, 7),
                (PacketKind::Audio, 7)
            ]
        );
        assert_eq!(counters.queued.load(Ordering::Relaxed), 3);
        assert_eq!(counters.rtcp.load(Ordering::Relaxed), 1);
    }

    /// A receiver on a free loopback port P with RTCP on P + 1.
    fn bind_with_rtcp() -> Receiver {
        for _ in 0..100 {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = probe.local_addr().unwrap().port();
            drop(probe);
            if port == u16::MAX {
                continue;
            }
            let config = NetConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                rtcp_next_port: true,
                ..NetConfig::default()
            };
            if let Ok(r) = Receiver::bind(&config) {
                if r.rtcp_addr().is_some() {
                    return r;
                }
            }
        }
        panic!("no free port pair");
    }

    fn report(ssrc: u32, unix_s: u64, rtp: u32, bye: bool) -> Vec<u8> {
        let mut out = [0u8; rtcp::MAX_REPORT_LEN];
        let info = rtcp::SenderInfo {
            ntp: rtcp::ntp_from_unix_ns(unix_s * 1_000_000_000),
            rtp_timestamp: rtp,
            packets: 1,
            octets: 160,
        };
        let len = rtcp::write_report(&mut out, ssrc, &info, b"test@host", bye).unwrap();
        out[..len].to_vec()
    }

    #[test]
    fn sender_reports_read_on_both_ports_and_bad_rtcp_counted() {
        let receiver = bind_with_rtcp();
        let port = receiver.local_addr().port();
        assert_eq!(receiver.rtcp_addr().unwrap().port(), port + 1);
        let counters = NetCounters::default();
        let rate_uhz = AtomicU64::new(0);
        let (got, events) = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let rtcp_port = ("127.0.0.1", port + 1);
            // An 8 kHz sender 100 ppm fast: 8000.8 frames a wall second.
            tx.send_to(&report(7, 1_800_000_000, 1000, false), rtcp_port)
                .unwrap();
            tx.send_to(&report(7, 1_800_000_010, 1000 + 80_008, false), rtcp_port)
                .unwrap();
            // Read in order: the RTP port is read first on each pass.
            wait_for(&counters.sender_reports, 2);
            // On the RTP port (rtcp-mux), then RTP itself, on port + 1:
            // not RTCP; a cut compound; then the BYE.
            tx.send_to(
                &report(7, 1_800_000_020, 1000 + 160_016, false),
                ("127.0.0.1", port),
            )
            .unwrap();
            wait_for(&counters.sender_reports, 3);
            tx.send_to(&pcmu(1), rtcp_port).unwrap();
            let cut = report(7, 1_800_000_030, 0, false);
            tx.send_to(&cut[..cut.len() - 4], rtcp_port).unwrap();
            wait_for(&counters.malformed, 2);
            rate_uhz.store(
                counters.sender_rate_uhz.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            tx.send_to(&report(7, 1_800_000_040, 0, true), rtcp_port)
                .unwrap();
            wait_for(&counters.queued, 1);
        });
        assert_eq!(counters.sender_reports.load(Ordering::Relaxed), 4);
        assert_eq!(rate_uhz.load(Ordering::Relaxed), 8_000_800_000);
        // The BYE went to the playout side and ended the sender's clock.
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, crate::rtp::packet::PacketKind::Bye);
        assert_eq!(counters.sender_rate_uhz.load(Ordering::Relaxed), 0);
        // Neither the reports nor the BYE were counted as dropped RTCP.
        assert_eq!(counters.rtcp.load(Ordering::Relaxed), 0);
        assert_eq!(counters.malformed.load(Ordering::Relaxed), 2);
        let bad = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    NetEvent::Dropped {
                        reason: DropReason::BadRtcp,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(bad, 2);
        assert!(events[0]
            .to_string()
            .contains("on the RTCP port: not a well-formed"));
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
        let (got, _events) = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
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
        let (got, events) = with_running::<16>(&receiver, &mut rtp_parser(), &counters, || {
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
        assert_eq!(events.len(), 3);
        for e in events {
            assert!(
                matches!(e, NetEvent::Dropped { reason: DropReason::Filtered, source, suppressed: 0 }
                    if source.ip() == "127.0.0.3".parse::<IpAddr>().unwrap()),
                "{e:?}"
            );
        }
    }

    #[test]
    fn full_event_queue_carries_suppressed_repeats() {
        let mut queue: heapless::spsc::Queue<NetEvent, 3> = heapless::spsc::Queue::new();
        let (mut tx, mut rx) = queue.split();
        let mut sender = EventSender {
            queue: &mut tx,
            pending: [0; KINDS],
        };
        let source: SocketAddr = "192.0.2.7:5004".parse().unwrap();
        let filtered = NetEvent::Dropped {
            reason: DropReason::Filtered,
            source,
            suppressed: 0,
        };
        let rtcp = NetEvent::Dropped {
            reason: DropReason::Parse(ParseError::Rtcp),
            source,
            suppressed: 0,
        };
        // Two fit; three more filtered and one RTCP do not.
        for e in [filtered, filtered, filtered, filtered, filtered, rtcp] {
            sender.send(e);
        }
        assert_eq!(rx.dequeue(), Some(filtered));
        assert_eq!(rx.dequeue(), Some(filtered));
        assert_eq!(rx.dequeue(), None);
        sender.send(filtered);
        sender.send(rtcp);
        assert_eq!(rx.dequeue().map(|e| e.suppressed()), Some(3));
        assert_eq!(rx.dequeue(), Some(rtcp.with_suppressed(1)));
    }

    #[test]
    fn event_log_rate_limits_per_kind_and_counts_all_repeats() {
        let mut log = EventLog::default();
        let source: SocketAddr = "192.0.2.7:5004".parse().unwrap();
        let malformed = NetEvent::Dropped {
            reason: DropReason::Parse(ParseError::Empty),
            source,
            suppressed: 2,
        };
        let full = NetEvent::Dropped {
            reason: DropReason::QueueFull,
            source,
            suppressed: 0,
        };
        // A burst of five lines, then silence for the rest of the window.
        let admitted: Vec<_> = (0..8).map(|_| log.admit(&malformed, 1_000)).collect();
        assert_eq!(&admitted[..5], &[Some(2); 5]);
        assert_eq!(&admitted[5..], &[None; 3]);
        // Another kind is not held back by the flood.
        assert_eq!(log.admit(&full, 1_000), Some(0));
        // The next window's first line owes the three held lines and the
        // repeats they carried: 3 + 3 * 2, plus its own 2.
        assert_eq!(log.admit(&malformed, 11_000_000_000), Some(3 + 6 + 2));
        assert_eq!(
            malformed.to_string(),
            "net: dropped datagram from 192.0.2.7:5004: packet without audio payload: check the sender"
        );
    }

    #[test]
    fn flood_of_bad_input_keeps_every_valid_packet() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let mut parser = rtp_parser();
        let mut queue: Box<Queue<Packet, 64>> = Box::default();
        let (mut producer, mut consumer) = queue.split();
        // Never drained while running: the flood must overflow it and be
        // carried as suppressed counts.
        let mut event_queue: Box<EventQueue> = Box::default();
        let (mut event_tx, mut event_rx) = event_queue.split();
        let stop = AtomicBool::new(false);
        let mut got = Vec::new();
        let rounds = 200u16;
        std::thread::scope(|s| {
            s.spawn(|| {
                run(
                    &receiver,
                    &mut parser,
                    &mut producer,
                    &mut event_tx,
                    &counters,
                    &stop,
                )
            });
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
        let mut queued_events = 0;
        while let Some(e) = event_rx.dequeue() {
            assert!(matches!(e, NetEvent::Dropped { .. }), "{e:?}");
            queued_events += 1;
        }
        assert_eq!(queued_events, EVENT_QUEUE_LEN - 1);
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
    fn srtp_receiver_takes_only_authentic_packets_once() {
        use crate::rtp::srtp::{MasterKey, Suite};
        let key = MasterKey::new([7; 16], [9; 14]);
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        let mut rx = SrtpContext::new(&key, Suite::default());
        let mut queue: Box<Queue<Packet, 32>> = Box::default();
        let (mut producer, mut consumer) = queue.split();
        let mut event_queue: Box<EventQueue> = Box::default();
        let (mut event_tx, mut event_rx) = event_queue.split();
        let stop = AtomicBool::new(false);
        let mut parser = rtp_parser();
        std::thread::scope(|s| {
            s.spawn(|| {
                run_with_srtp(
                    &receiver,
                    Some(&mut rx),
                    &mut parser,
                    &mut producer,
                    &mut event_tx,
                    &counters,
                    &stop,
                )
            });
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut sender = SrtpContext::new(&key, Suite::default());
            let mut stranger =
                SrtpContext::new(&MasterKey::new([8; 16], [9; 14]), Suite::default());
            let protect = |ctx: &mut SrtpContext, seq| {
                let mut d = pcmu(seq);
                let len = d.len();
                d.resize(len + 10, 0);
                ctx.protect(&mut d, len).unwrap();
                d
            };
            let genuine: Vec<_> = (0..4).map(|seq| protect(&mut sender, seq)).collect();
            for d in &genuine {
                tx.send_to(d, to).unwrap();
            }
            tx.send_to(&pcmu(4), to).unwrap(); // plaintext
            tx.send_to(&protect(&mut stranger, 5), to).unwrap(); // other key
            tx.send_to(&genuine[1], to).unwrap(); // replay
            tx.send_to(&[0x80, 0, 0, 9], to).unwrap(); // no room for a tag
            wait_for(&counters.datagrams, 8);
            stop.store(true, Ordering::Relaxed);
        });
        let mut got = Vec::new();
        while let Some(p) = consumer.dequeue() {
            got.push(p);
        }
        assert_eq!(got.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
        for p in &got {
            // Decrypted, and the tag is not taken for audio.
            assert_eq!(p.payload.len(), 160);
            assert_eq!(p.payload[..2], p.seq.to_be_bytes());
            assert!(p.payload[2..].iter().all(|&b| b == 0));
        }
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(c(&counters.auth_failed), 2);
        assert_eq!(c(&counters.replayed), 1);
        assert_eq!(c(&counters.malformed), 1);
        assert_eq!(c(&counters.queued), 4);
        let mut kinds = Vec::new();
        while let Some(e) = event_rx.dequeue() {
            if let NetEvent::Dropped {
                reason: DropReason::Srtp(e),
                ..
            } = e
            {
                kinds.push(e);
            }
        }
        assert_eq!(
            kinds,
            [
                SrtpError::AuthFailed,
                SrtpError::AuthFailed,
                SrtpError::Replayed,
                SrtpError::TooShort { len: 4 }
            ]
        );
        let line = NetEvent::Dropped {
            reason: DropReason::Srtp(SrtpError::AuthFailed),
            source: to,
            suppressed: 0,
        }
        .to_string();
        assert!(
            line.contains("another key") && line.contains("unencrypted"),
            "{line}"
        );
    }

    #[test]
    fn queue_full_drops_and_counts() {
        let receiver = Receiver::bind(&loopback("127.0.0.1")).unwrap();
        let to = receiver.local_addr();
        let counters = NetCounters::default();
        // Capacity 3, never drained while running.
        let (got, _events) = with_running::<4>(&receiver, &mut rtp_parser(), &counters, || {
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
        let (got, _events) = with_running::<8>(&receiver, &mut parser, &counters, || {
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
        let mut event_queue: Box<EventQueue> = Box::default();
        let (mut event_tx, _event_rx) = event_queue.split();
        let stop = AtomicBool::new(false);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                run(
                    &receiver,
                    &mut parser,
                    &mut producer,
                    &mut event_tx,
                    &counters,
                    &stop,
                );
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
                let (got, _events) =
                    with_running::<8>(&receiver, &mut rtp_parser(), &counters, || {
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
        });
    }

    #[test]
    fn listen_on_a_group_address_joins_the_group() {
        in_private_netns(|| {
            let receiver = Receiver::bind(&NetConfig {
                listen: "239.255.77.3:0".parse().unwrap(),
                interface: Some("lo".to_string()),
                ..NetConfig::default()
            })
            .unwrap();
            let to = receiver.local_addr();
            assert_eq!(to.ip(), "239.255.77.3".parse::<IpAddr>().unwrap());
            let counters = NetCounters::default();
            let (got, _events) = with_running::<8>(&receiver, &mut rtp_parser(), &counters, || {
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                for seq in 0..3 {
                    tx.send_to(&pcmu(seq), to).unwrap();
                }
                wait_for(&counters.datagrams, 3);
            });
            assert_eq!(got.len(), 3);
            assert!(igmp_joined("lo", "239.255.77.3".parse().unwrap()));
        });
    }

    /// Whether this thread's network namespace has `group` joined on
    /// `device` (the kernel's /proc/net/igmp, as the thread sees it).
    fn igmp_joined(device: &str, group: Ipv4Addr) -> bool {
        let text = std::fs::read_to_string("/proc/thread-self/net/igmp").unwrap();
        let hex = format!("{:08X}", u32::from_ne_bytes(group.octets()));
        let mut current = String::new();
        for line in text.lines() {
            if !line.starts_with('\t') {
                current = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
            } else if current == device && line.contains(&hex) {
                return true;
            }
        }
        false
    }

    #[test]
    fn group_on_absent_interface_waits_and_joins_when_it_appears() {
        in_private_netns(|| {
            let group: Ipv4Addr = "239.255.77.2".parse().unwrap();
            let mut receiver = Receiver::bind(&NetConfig {
                listen: "0.0.0.0:0".parse().unwrap(),
                group: Some(IpAddr::V4(group)),
                interface: Some("late0".to_string()),
                ..NetConfig::default()
            })
            .unwrap();
            assert!(receiver.waiting_for_interface());
            // Not joined where the route points (lo here) meanwhile.
            assert!(!igmp_joined("lo", group));
            let watch = receiver.take_link_watch().unwrap();
            let stop = AtomicBool::new(false);
            let (tx, rx) = std::sync::mpsc::channel();
            let ip = |args: &str| {
                let args: Vec<&str> = args.split(' ').collect();
                let st = std::process::Command::new("ip")
                    .args(&args)
                    .status()
                    .unwrap();
                assert!(st.success(), "ip {args:?}");
            };
            let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
            // A failed assertion below must end the watch too, or the
            // scope waits for it forever instead of failing.
            struct StopOnDrop<'a>(&'a AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            std::thread::scope(|s| {
                s.spawn(|| watch.run(&tx, &stop));
                let _stop = StopOnDrop(&stop);
                ip("link add late0 type veth peer name late1");
                assert!(
                    matches!(next(), LinkEvent::Joined { index, why: Change::Appeared { .. }, .. } if index > 0)
                );
                assert!(igmp_joined("late0", group));
                ip("link del late0");
                assert!(matches!(next(), LinkEvent::Gone { .. }));
                ip("link add late0 type veth peer name late1");
                assert!(matches!(next(), LinkEvent::Joined { .. }));
                assert!(igmp_joined("late0", group));
                stop.store(true, Ordering::Relaxed);
            });
            // Present at start-up: joined at once, nothing to wait for.
            let receiver = Receiver::bind(&NetConfig {
                listen: "0.0.0.0:0".parse().unwrap(),
                group: Some(IpAddr::V4(group)),
                interface: Some("lo".to_string()),
                ..NetConfig::default()
            })
            .unwrap();
            assert!(!receiver.waiting_for_interface());
        });
    }
}
