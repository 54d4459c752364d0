//! Link watching: follows the interface `--interface` names through the
//! kernel's rtnetlink events (no polling), so that the receiver waits for
//! an interface that is not there yet (Wi-Fi or a DHCP address that comes
//! late at boot, a USB adapter plugged in later) and joins its multicast
//! group on it when it appears, and rejoins after the interface went down
//! and up, changed its address, or went away and came back.
//!
//! Input: rtnetlink datagrams (`RTM_NEWLINK`/`RTM_DELLINK`,
//! `RTM_NEWADDR`/`RTM_DELADDR`) from a socket subscribed to the link, IPv4
//! address and IPv6 address groups. Output: [`Change`]s of the one
//! interface the user named, by name or by an address it owns
//! ([`Tracker`]); in [`Watch::run`] (the `link` thread) the group joined
//! on it accordingly, and a [`LinkEvent`] per change for the main thread
//! to log (this thread does not log).
//!
//! Policy: every message and attribute is bounds-checked; a truncated or
//! malformed message ends the walk of its datagram ([`Messages`]), never a
//! panic, and datagrams not sent by the kernel are ignored. Events lost to
//! a full socket buffer (`ENOBUFS`) are recovered by looking the interface
//! up afresh. An interface that appears (or returns with a new index),
//! comes up, or gains or loses an address has the group rejoined: left,
//! then joined, so the kernel sends a fresh IGMP/MLD report and a Wi-Fi
//! access point or a snooping switch forwards the group again at once. One
//! that goes down is only reported (the kernel keeps the membership); one
//! that goes away has the group left, and the next appearance joins it.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self as sock, sockopt, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::net::socket::{self, Interface};

// From <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>,
// <linux/if.h>: kernel ABI, stable.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HDRLEN: usize = 16;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
/// `struct ifaddrmsg`: family, prefix length, flags, scope, index.
const IFADDRMSG_LEN: usize = 8;
/// `struct rtattr`: length, type.
const RTA_HDRLEN: usize = 4;
/// The nested and byte-order flags of an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `IFNAMSIZ`, with the terminating NUL.
const IFNAMSIZ: usize = 16;

/// How long one netlink `recv` waits before the thread looks at the stop
/// flag again.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// Socket buffer for bursts of events (an interface coming up announces
/// itself and several addresses at once).
const RECV_BUFFER_BYTES: usize = 256 * 1024;
/// The read buffer: larger than any one rtnetlink datagram the kernel
/// sends for these groups (it sizes them to a page, or 8 KiB).
const READ_BUFFER_BYTES: usize = 32 * 1024;
/// Addresses remembered per interface to tell a new address from the
/// kernel refreshing a known one (IPv6 lifetimes at every router
/// advertisement); beyond it every announcement counts as new.
const MAX_ADDRESSES: usize = 32;

/// Why the rtnetlink socket could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    Open(Errno),
    Subscribe(Errno),
    Receive(Errno),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open(e) => write!(
                f,
                "cannot open a netlink socket to follow --interface ({e}); a service \
                 sandbox must allow AF_NETLINK (RestrictAddressFamilies=)"
            ),
            Error::Subscribe(e) => write!(
                f,
                "cannot subscribe to the kernel's interface events to follow --interface ({e})"
            ),
            Error::Receive(e) => write!(f, "reading the kernel's interface events failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// An rtnetlink socket subscribed to link and address events.
#[derive(Debug)]
pub struct LinkSocket {
    fd: OwnedFd,
}

/// What one read of the [`LinkSocket`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A datagram of this many bytes from the kernel.
    Datagram(usize),
    /// Nothing within the receive timeout, or a datagram not from the
    /// kernel (ignored).
    Nothing,
    /// The kernel dropped events because our buffer was full: the state
    /// must be looked up afresh.
    Overrun,
}

impl LinkSocket {
    /// Opens and subscribes. Subscribe before looking the interface up,
    /// so that a change between the two is not missed.
    pub fn open() -> Result<LinkSocket, Error> {
        let fd = sock::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(Error::Open)?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        sock::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(Error::Subscribe)?;
        // Best effort: a smaller buffer only makes an overrun likelier,
        // and an overrun is recovered.
        if sock::setsockopt(&fd, sockopt::RcvBufForce, &RECV_BUFFER_BYTES).is_err() {
            let _ = sock::setsockopt(&fd, sockopt::RcvBuf, &RECV_BUFFER_BYTES);
        }
        let timeout = nix::sys::time::TimeVal::new(0, RECV_TIMEOUT.as_micros() as _);
        sock::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(Error::Subscribe)?;
        Ok(LinkSocket { fd })
    }

    /// Reads one datagram into `buf`, waiting at most the receive timeout.
    pub fn recv(&self, buf: &mut [u8]) -> Result<Received, Error> {
        match sock::recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), buf) {
            // Port id 0 is the kernel; anyone else (only a privileged
            // process may send to these groups) is not believed.
            Ok((n, Some(from))) if from.pid() == 0 => Ok(Received::Datagram(n)),
            Ok(_) => Ok(Received::Nothing),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(Received::Nothing),
            Err(Errno::ENOBUFS) => Ok(Received::Overrun),
            Err(e) => Err(Error::Receive(e)),
        }
    }
}

/// An interface name as the kernel sent it (at most 15 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IfName {
    bytes: [u8; IFNAMSIZ],
    len: usize,
}

impl IfName {
    /// From an `IFLA_IFNAME` attribute: the bytes up to the first NUL.
    fn from_attribute(value: &[u8]) -> Option<IfName> {
        let len = value.iter().position(|&b| b == 0).unwrap_or(value.len());
        let name = value.get(..len)?;
        let mut bytes = [0; IFNAMSIZ];
        bytes.get_mut(..len)?.copy_from_slice(name);
        (len > 0 && len < IFNAMSIZ).then_some(IfName { bytes, len })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    pub fn is(&self, name: &str) -> bool {
        self.as_bytes() == name.as_bytes()
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// One rtnetlink message we act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMessage {
    /// `RTM_NEWLINK` (`removed: false`) or `RTM_DELLINK`.
    Link {
        index: u32,
        name: Option<IfName>,
        /// Administratively up and with a carrier (`IFF_UP | IFF_RUNNING`):
        /// for Wi-Fi, associated.
        running: bool,
        removed: bool,
    },
    /// `RTM_NEWADDR` (`removed: false`) or `RTM_DELADDR`: the interface's
    /// own address (`IFA_LOCAL` where given, else `IFA_ADDRESS`).
    Address {
        index: u32,
        address: IpAddr,
        removed: bool,
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(bytes.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// `n` rounded up to netlink's 4-byte alignment, saturating.
fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The messages of one rtnetlink datagram that concern links and
/// addresses, in order. Others (done, error, routes) are skipped; a
/// header whose length runs past the datagram or is shorter than a header
/// ends the walk.
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(datagram: &'a [u8]) -> Messages<'a> {
        Messages { rest: datagram }
    }
}

impl Iterator for Messages<'_> {
    type Item = LinkMessage;

    fn next(&mut self) -> Option<LinkMessage> {
        loop {
            let len = u32_at(self.rest, 0)? as usize;
            let kind = u16_at(self.rest, 4)?;
            let Some(body) = self.rest.get(NLMSG_HDRLEN..len) else {
                self.rest = &[];
                return None;
            };
            self.rest = self.rest.get(align4(len)..).unwrap_or_default();
            if let Some(m) = parse_message(kind, body) {
                return Some(m);
            }
        }
    }
}

/// The attributes (`rtattr`) of a message: (type, value) pairs; a
/// malformed one ends the walk.
struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let len = usize::from(u16_at(self.rest, 0)?);
        let kind = u16_at(self.rest, 2)? & NLA_TYPE_MASK;
        let Some(value) = self.rest.get(RTA_HDRLEN..len) else {
            self.rest = &[];
            return None;
        };
        self.rest = self.rest.get(align4(len)..).unwrap_or_default();
        Some((kind, value))
    }
}

fn ip_of(family: u8, value: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => {
            let b: [u8; 4] = value.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        AF_INET6 => {
            let b: [u8; 16] = value.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn parse_message(kind: u16, body: &[u8]) -> Option<LinkMessage> {
    match kind {
        RTM_NEWLINK | RTM_DELLINK => {
            let index = u32_at(body, 4)?;
            let flags = u32_at(body, 8)?;
            let attributes = Attributes {
                rest: body.get(IFINFOMSG_LEN..)?,
            };
            let name = attributes
                .filter(|&(t, _)| t == IFLA_IFNAME)
                .find_map(|(_, v)| IfName::from_attribute(v));
            Some(LinkMessage::Link {
                index,
                name,
                running: flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING,
                removed: kind == RTM_DELLINK,
            })
        }
        RTM_NEWADDR | RTM_DELADDR => {
            let family = *body.first()?;
            let index = u32_at(body, 4)?;
            let attributes = Attributes {
                rest: body.get(IFADDRMSG_LEN..)?,
            };
            let (mut address, mut local) = (None, None);
            for (t, v) in attributes {
                match t {
                    IFA_ADDRESS => address = ip_of(family, v),
                    IFA_LOCAL => local = ip_of(family, v),
                    _ => {}
                }
            }
            Some(LinkMessage::Address {
                index,
                address: local.or(address)?,
                removed: kind == RTM_DELADDR,
            })
        }
        _ => None,
    }
}

/// The interface `--interface` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Name(String),
    /// The interface that owns this address, whichever it is.
    Address(IpAddr),
}

impl Target {
    /// Read as [`Interface::resolve`] does: an address (IPv6 possibly in
    /// brackets), else a name.
    pub fn parse(value: &str) -> Target {
        match value
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            Ok(a) => Target::Address(a),
            Err(_) => Target::Name(value.to_string()),
        }
    }
}

/// What happened to the followed interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// It is there now, at this index (it was absent, or came back or
    /// moved to another index).
    Appeared {
        index: u32,
    },
    /// Up with a carrier again after being down.
    Up {
        index: u32,
    },
    Down {
        index: u32,
    },
    /// It gained or lost an address.
    AddressChanged {
        index: u32,
    },
    /// It was removed, renamed, or (named by address) lost that address.
    Gone {
        index: u32,
    },
}

/// Follows one interface through [`LinkMessage`]s. Pure: no sockets, so
/// every sequence of events is tested directly.
#[derive(Clone, Debug)]
pub struct Tracker {
    target: Target,
    index: Option<u32>,
    /// Unknown until a link message for `index` says.
    running: Option<bool>,
    /// The interface's known addresses (name targets), to tell a new one
    /// from a refresh.
    addresses: Vec<IpAddr>,
}

impl Tracker {
    /// `index`: where the interface is now, if it is there; `addresses`:
    /// its addresses now.
    pub fn new(target: Target, index: Option<u32>, addresses: &[IpAddr]) -> Tracker {
        Tracker {
            target,
            index,
            running: None,
            addresses: addresses.iter().take(MAX_ADDRESSES).copied().collect(),
        }
    }

    /// The interface's index, while it is there.
    pub fn index(&self) -> Option<u32> {
        self.index
    }

    fn gone(&mut self, index: u32) -> Option<Change> {
        self.index = None;
        self.running = None;
        self.addresses.clear();
        Some(Change::Gone { index })
    }

    fn appeared(&mut self, index: u32, running: Option<bool>) -> Option<Change> {
        self.index = Some(index);
        self.running = running;
        self.addresses.clear();
        Some(Change::Appeared { index })
    }

    /// The change `message` makes to the followed interface, if any.
    pub fn update(&mut self, message: &LinkMessage) -> Option<Change> {
        match *message {
            LinkMessage::Link {
                index,
                name,
                running,
                removed,
            } if Some(index) == self.index => {
                let renamed = match (&self.target, name) {
                    (Target::Name(n), Some(now)) => !now.is(n),
                    _ => false,
                };
                if removed || renamed {
                    return self.gone(index);
                }
                match (self.running.replace(running), running) {
                    (Some(false), true) => Some(Change::Up { index }),
                    (Some(true) | None, false) => Some(Change::Down { index }),
                    _ => None,
                }
            }
            LinkMessage::Link {
                index,
                name: Some(name),
                running,
                removed: false,
            } => match &self.target {
                Target::Name(n) if name.is(n) => self.appeared(index, Some(running)),
                _ => None,
            },
            LinkMessage::Link { .. } => None,
            LinkMessage::Address {
                index,
                address,
                removed,
            } => match &self.target {
                Target::Address(a) if *a == address => {
                    if removed {
                        if Some(index) == self.index {
                            return self.gone(index);
                        }
                        None
                    } else if Some(index) != self.index {
                        self.appeared(index, None)
                    } else {
                        None
                    }
                }
                Target::Name(_) if Some(index) == self.index => {
                    let known = self.addresses.iter().position(|&a| a == address);
                    match (known, removed) {
                        (Some(at), true) => {
                            self.addresses.swap_remove(at);
                        }
                        (None, false) if self.addresses.len() < MAX_ADDRESSES => {
                            self.addresses.push(address);
                        }
                        // A refresh of a known address.
                        (Some(_), false) => return None,
                        // Unknown but removed, or past the limit: a change.
                        _ => {}
                    }
                    Some(Change::AddressChanged { index })
                }
                _ => None,
            },
        }
    }

    /// After lost events: the interface's index as just looked up (and
    /// its addresses), compared with what was known.
    pub fn resync(&mut self, found: Option<u32>, addresses: &[IpAddr]) -> Option<Change> {
        let change = match (self.index, found) {
            (Some(old), None) => self.gone(old),
            (None, Some(new)) => self.appeared(new, None),
            (Some(old), Some(new)) if old != new => self.appeared(new, None),
            // Same index: something may have changed unseen; rejoining
            // is harmless.
            (Some(_), Some(index)) => Some(Change::AddressChanged { index }),
            (None, None) => None,
        };
        self.addresses = addresses.iter().take(MAX_ADDRESSES).copied().collect();
        change
    }
}

/// What the `link` thread reports to the main thread, which logs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The group was (re)joined on the interface, because of `why`.
    Joined {
        group: IpAddr,
        interface: String,
        index: u32,
        why: Change,
    },
    Down {
        interface: String,
    },
    Gone {
        interface: String,
    },
    JoinFailed {
        group: IpAddr,
        interface: String,
        errno: Errno,
    },
    /// Events were lost (a full netlink buffer); the interface was looked
    /// up again.
    Resynced {
        interface: String,
    },
    ReceiveFailed(Error),
}

impl LinkEvent {
    /// The level the main thread logs it at.
    pub fn level(&self) -> log::Level {
        match self {
            // A join after waiting, and the rejoin that ends a "down"
            // warning, are news; a rejoin for an address is routine.
            LinkEvent::Joined {
                why: Change::Appeared { .. } | Change::Up { .. },
                ..
            } => log::Level::Info,
            LinkEvent::Joined { .. } | LinkEvent::Resynced { .. } => log::Level::Debug,
            // The interface is being removed (its addresses go first):
            // "went away" follows.
            LinkEvent::JoinFailed {
                errno: Errno::ENODEV,
                ..
            } => log::Level::Debug,
            _ => log::Level::Warn,
        }
    }
}

impl fmt::Display for LinkEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEvent::Joined {
                group,
                interface,
                index,
                why,
            } => {
                let (verb, why) = match why {
                    Change::Appeared { .. } => ("joined", "it appeared"),
                    Change::Up { .. } => ("rejoined", "it came up"),
                    Change::AddressChanged { .. } => ("rejoined", "its addresses changed"),
                    Change::Down { .. } | Change::Gone { .. } => ("rejoined", "it changed"),
                };
                write!(
                    f,
                    "net: {verb} multicast group {group} on interface {interface} \
                     (index {index}): {why}"
                )
            }
            LinkEvent::Down { interface } => write!(
                f,
                "net: interface {interface} is down or has no carrier: no stream until it \
                 comes back (check the cable or the Wi-Fi connection)"
            ),
            LinkEvent::Gone { interface } => write!(
                f,
                "net: interface {interface} went away: waiting for it to come back \
                 (see `ip addr`)"
            ),
            LinkEvent::JoinFailed {
                group,
                interface,
                errno,
            } => write!(
                f,
                "net: cannot join multicast group {group} on {interface}: {errno}; \
                 retried at its next change: check that it has multicast enabled"
            ),
            LinkEvent::Resynced { interface } => write!(
                f,
                "net: missed interface events (netlink buffer full): looked {interface} up again"
            ),
            LinkEvent::ReceiveFailed(e) => write!(f, "net: {e}; retrying in 1 s"),
        }
    }
}

/// The addresses of interface `index` now (empty if it cannot be read).
pub fn addresses_of(index: u32) -> Vec<IpAddr> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter(|ifa| nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).ok() == Some(index))
        .filter_map(|ifa| {
            let a = ifa.address?;
            match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
                (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
                _ => None,
            }
        })
        .collect()
}

/// The `link` thread's state: the netlink socket, the followed interface
/// and the receiver's socket (a duplicate of its descriptor: memberships
/// belong to the socket, so joining here is joining for the net thread,
/// which never waits for this).
#[derive(Debug)]
pub struct Watch {
    link: LinkSocket,
    tracker: Tracker,
    socket: UdpSocket,
    group: IpAddr,
    /// `--interface` as given.
    value: String,
    joined: Option<Interface>,
}

impl Watch {
    /// `joined`: the interface the group is joined on now, if any.
    pub fn new(
        link: LinkSocket,
        socket: UdpSocket,
        group: IpAddr,
        value: &str,
        joined: Option<Interface>,
    ) -> Watch {
        let index = joined.as_ref().map(|i| i.index);
        let addresses = index.map(addresses_of).unwrap_or_default();
        Watch {
            link,
            tracker: Tracker::new(Target::parse(value), index, &addresses),
            socket,
            group,
            value: value.to_string(),
            joined,
        }
    }

    /// Acts on a change; returns what to report.
    fn apply(&mut self, change: Change) -> Option<LinkEvent> {
        let interface = self.value.clone();
        match change {
            Change::Down { .. } => Some(LinkEvent::Down { interface }),
            Change::Gone { .. } => {
                self.leave();
                Some(LinkEvent::Gone { interface })
            }
            Change::Appeared { index }
            | Change::Up { index }
            | Change::AddressChanged { index } => {
                self.leave();
                let next = Interface::with_index(&self.value, index);
                match socket::join(&self.socket, self.group, Some(&next)) {
                    Ok(()) => {
                        self.joined = Some(next);
                        Some(LinkEvent::Joined {
                            group: self.group,
                            interface,
                            index,
                            why: change,
                        })
                    }
                    Err(errno) => Some(LinkEvent::JoinFailed {
                        group: self.group,
                        interface,
                        errno,
                    }),
                }
            }
        }
    }

    /// Leaves the group where it is joined; an interface already gone
    /// took the membership's use with it, so a refusal changes nothing.
    fn leave(&mut self) {
        if let Some(old) = self.joined.take() {
            let _ = socket::leave(&self.socket, self.group, &old);
        }
    }

    /// The thread's body: reads events until `stop` is set (seen within
    /// 100 ms) and rejoins the group as the interface changes, sending a
    /// [`LinkEvent`] per change to `events`.
    pub fn run(mut self, events: &Sender<LinkEvent>, stop: &AtomicBool) {
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        while !stop.load(Ordering::Relaxed) {
            let n = match self.link.recv(&mut buf) {
                Ok(Received::Datagram(n)) => n,
                Ok(Received::Nothing) => continue,
                Ok(Received::Overrun) => {
                    let _ = events.send(LinkEvent::Resynced {
                        interface: self.value.clone(),
                    });
                    let found = Interface::resolve(&self.value).ok().map(|i| i.index);
                    let addresses = found.map(addresses_of).unwrap_or_default();
                    if let Some(e) = self
                        .tracker
                        .resync(found, &addresses)
                        .and_then(|c| self.apply(c))
                    {
                        let _ = events.send(e);
                    }
                    continue;
                }
                Err(e) => {
                    let _ = events.send(LinkEvent::ReceiveFailed(e));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let datagram = buf.get(..n).unwrap_or_default();
            for message in Messages::new(datagram) {
                if let Some(e) = self.tracker.update(&message).and_then(|c| self.apply(c)) {
                    let _ = events.send(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rtnetlink message: header, fixed part, attributes.
    fn message(kind: u16, fixed: &[u8], attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = fixed.to_vec();
        for (t, v) in attributes {
            let len = (RTA_HDRLEN + v.len()) as u16;
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    fn link(kind: u16, index: u32, name: &str, flags: u32) -> Vec<u8> {
        let mut fixed = vec![0u8, 0, 1, 0];
        fixed.extend_from_slice(&index.to_ne_bytes());
        fixed.extend_from_slice(&flags.to_ne_bytes());
        fixed.extend_from_slice(&0u32.to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        message(kind, &fixed, &[(1, &[1, 2, 3, 4, 5, 6]), (IFLA_IFNAME, &n)])
    }

    fn addr(kind: u16, index: u32, a: IpAddr) -> Vec<u8> {
        let (family, bytes) = match a {
            IpAddr::V4(v4) => (AF_INET, v4.octets().to_vec()),
            IpAddr::V6(v6) => (AF_INET6, v6.octets().to_vec()),
        };
        let mut fixed = vec![family, 24, 0, 0];
        fixed.extend_from_slice(&index.to_ne_bytes());
        let attrs: &[(u16, &[u8])] = match a {
            IpAddr::V4(_) => &[(IFA_ADDRESS, &bytes), (IFA_LOCAL, &bytes)],
            IpAddr::V6(_) => &[(IFA_ADDRESS, &bytes)],
        };
        message(kind, &fixed, attrs)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const RUNNING: u32 = IFF_UP | IFF_RUNNING;

    #[test]
    fn link_and_address_messages_parsed_in_one_datagram() {
        let mut d = link(RTM_NEWLINK, 7, "veth-a", RUNNING);
        d.extend(message(3, &[0; 4], &[])); // NLMSG_DONE: skipped
        d.extend(addr(RTM_NEWADDR, 7, ip("10.77.0.1")));
        d.extend(addr(RTM_DELADDR, 7, ip("fd00::1")));
        d.extend(link(RTM_DELLINK, 7, "veth-a", 0));
        let got: Vec<_> = Messages::new(&d).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        match got[0] {
            LinkMessage::Link {
                index: 7,
                name: Some(n),
                running: true,
                removed: false,
            } => assert!(n.is("veth-a")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            got[1],
            LinkMessage::Address {
                index: 7,
                address: ip("10.77.0.1"),
                removed: false
            }
        );
        assert_eq!(
            got[2],
            LinkMessage::Address {
                index: 7,
                address: ip("fd00::1"),
                removed: true
            }
        );
        assert!(matches!(
            got[3],
            LinkMessage::Link {
                removed: true,
                running: false,
                ..
            }
        ));
    }

    #[test]
    fn malformed_messages_never_panic_and_end_the_walk() {
        let good = link(RTM_NEWLINK, 3, "wlan0", RUNNING);
        // A header claiming more than the datagram holds.
        let mut long = good.clone();
        long[..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert_eq!(Messages::new(&long).count(), 0);
        // A header shorter than a header (would loop forever if trusted).
        let mut zero = good.clone();
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(Messages::new(&zero).count(), 0);
        // An attribute running past its message: the name is not taken.
        let mut bad_attr = good.clone();
        let at = NLMSG_HDRLEN + IFINFOMSG_LEN + 12; // the name attribute
        bad_attr[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        match Messages::new(&bad_attr).next() {
            Some(LinkMessage::Link { name: None, .. }) => {}
            other => panic!("{other:?}"),
        }
        // An over-long name and an address of the wrong size are refused.
        let mut fixed = vec![0u8; IFINFOMSG_LEN];
        fixed[4] = 9;
        let long_name = message(RTM_NEWLINK, &fixed, &[(IFLA_IFNAME, &[b'x'; 20])]);
        assert!(matches!(
            Messages::new(&long_name).next(),
            Some(LinkMessage::Link { name: None, .. })
        ));
        let short_addr = message(
            RTM_NEWADDR,
            &[AF_INET, 24, 0, 0, 9, 0, 0, 0],
            &[(IFA_LOCAL, &[10, 0, 0])],
        );
        assert_eq!(Messages::new(&short_addr).count(), 0);
        // A fixed part cut short.
        let stub = message(RTM_NEWLINK, &[0; 6], &[]);
        assert_eq!(Messages::new(&stub).count(), 0);
        // Every truncation and every single-byte corruption of a real
        // datagram, and seeded random bytes: no panic.
        let mut d = good.clone();
        d.extend(addr(RTM_NEWADDR, 3, ip("fd00::5")));
        for cut in 0..d.len() {
            let _ = Messages::new(&d[..cut]).count();
        }
        for i in 0..d.len() {
            for v in [0u8, 1, 3, 0x7f, 0x80, 0xff] {
                let mut c = d.clone();
                c[i] = v;
                let _ = Messages::new(&c).count();
            }
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (seed % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Messages::new(&bytes).count();
        }
    }

    fn updates(tracker: &mut Tracker, datagram: &[u8]) -> Vec<Change> {
        Messages::new(datagram)
            .filter_map(|m| tracker.update(&m))
            .collect()
    }

    #[test]
    fn named_interface_appears_goes_down_up_and_away() {
        let mut t = Tracker::new(Target::parse("veth-a"), None, &[]);
        // Another interface is of no interest.
        assert!(updates(&mut t, &link(RTM_NEWLINK, 4, "eth0", RUNNING)).is_empty());
        assert_eq!(
            updates(&mut t, &link(RTM_NEWLINK, 9, "veth-a", 0)),
            [Change::Appeared { index: 9 }]
        );
        // Repeated announcements of the same state change nothing.
        assert!(updates(&mut t, &link(RTM_NEWLINK, 9, "veth-a", 0)).is_empty());
        assert_eq!(
            updates(&mut t, &link(RTM_NEWLINK, 9, "veth-a", RUNNING)),
            [Change::Up { index: 9 }]
        );
        assert_eq!(
            updates(&mut t, &link(RTM_NEWLINK, 9, "veth-a", IFF_UP)),
            [Change::Down { index: 9 }]
        );
        assert_eq!(
            updates(&mut t, &link(RTM_DELLINK, 9, "veth-a", 0)),
            [Change::Gone { index: 9 }]
        );
        assert_eq!(t.index(), None);
        // Recreated at another index.
        assert_eq!(
            updates(&mut t, &link(RTM_NEWLINK, 12, "veth-a", RUNNING)),
            [Change::Appeared { index: 12 }]
        );
        // Renamed away.
        assert_eq!(
            updates(&mut t, &link(RTM_NEWLINK, 12, "wlan9", RUNNING)),
            [Change::Gone { index: 12 }]
        );
    }

    #[test]
    fn address_change_on_named_interface_but_not_a_refresh() {
        let mut t = Tracker::new(Target::parse("wlan0"), Some(3), &[ip("fe80::1")]);
        // IPv6 lifetime refresh of a known address: nothing.
        assert!(updates(&mut t, &addr(RTM_NEWADDR, 3, ip("fe80::1"))).is_empty());
        assert_eq!(
            updates(&mut t, &addr(RTM_NEWADDR, 3, ip("192.168.1.50"))),
            [Change::AddressChanged { index: 3 }]
        );
        assert!(updates(&mut t, &addr(RTM_NEWADDR, 3, ip("192.168.1.50"))).is_empty());
        assert_eq!(
            updates(&mut t, &addr(RTM_DELADDR, 3, ip("192.168.1.50"))),
            [Change::AddressChanged { index: 3 }]
        );
        // Another interface's addresses: nothing.
        assert!(updates(&mut t, &addr(RTM_NEWADDR, 4, ip("10.0.0.1"))).is_empty());
    }

    #[test]
    fn interface_named_by_address_follows_the_address() {
        let mut t = Tracker::new(Target::parse("192.168.1.50"), None, &[]);
        assert!(updates(&mut t, &addr(RTM_NEWADDR, 3, ip("192.168.1.51"))).is_empty());
        assert_eq!(
            updates(&mut t, &addr(RTM_NEWADDR, 3, ip("192.168.1.50"))),
            [Change::Appeared { index: 3 }]
        );
        assert_eq!(
            updates(&mut t, &link(RTM_NEWLINK, 3, "wlan0", IFF_UP)),
            [Change::Down { index: 3 }]
        );
        // DHCP gave the address up, then back.
        assert_eq!(
            updates(&mut t, &addr(RTM_DELADDR, 3, ip("192.168.1.50"))),
            [Change::Gone { index: 3 }]
        );
        assert_eq!(
            updates(&mut t, &addr(RTM_NEWADDR, 5, ip("192.168.1.50"))),
            [Change::Appeared { index: 5 }]
        );
        // IPv6 in brackets is an address too.
        assert_eq!(Target::parse("[fd00::b]"), Target::Address(ip("fd00::b")));
    }

    #[test]
    fn resync_after_lost_events() {
        let mut t = Tracker::new(Target::parse("wlan0"), Some(3), &[]);
        assert_eq!(
            t.resync(Some(3), &[]),
            Some(Change::AddressChanged { index: 3 })
        );
        assert_eq!(t.resync(Some(8), &[]), Some(Change::Appeared { index: 8 }));
        assert_eq!(t.resync(None, &[]), Some(Change::Gone { index: 8 }));
        assert_eq!(t.resync(None, &[]), None);
    }

    #[test]
    fn link_socket_sees_an_interface_created_in_a_private_netns() {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET) needs root or CAP_SYS_ADMIN");
                let link = LinkSocket::open().unwrap();
                let mut t = Tracker::new(Target::parse("dum-link"), None, &[]);
                let run = |args: &[&str]| {
                    let st = std::process::Command::new("ip")
                        .args(args)
                        .status()
                        .unwrap();
                    assert!(st.success(), "ip {args:?}");
                };
                run(&[
                    "link", "add", "dum-link", "type", "veth", "peer", "name", "dum-peer",
                ]);
                run(&["addr", "add", "10.99.0.1/24", "dev", "dum-link"]);
                let mut buf = vec![0u8; READ_BUFFER_BYTES];
                let mut seen = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while seen.len() < 2 && std::time::Instant::now() < deadline {
                    if let Received::Datagram(n) = link.recv(&mut buf).unwrap() {
                        seen.extend(updates(&mut t, &buf[..n]));
                    }
                }
                assert!(
                    matches!(
                        seen[..],
                        [Change::Appeared { .. }, Change::AddressChanged { .. }]
                    ),
                    "{seen:?}"
                );
            })
            .join()
            .unwrap()
        })
    }
}
