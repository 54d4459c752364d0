//! UDP sockets for both directions: the one place that creates them and
//! sets their options. Input: an address family, buffer sizes, a
//! multicast group or destination and an `--interface` value. Output: a
//! configured socket, or an [`Error`] that names the option and the value.
//!
//! Policy: `--interface` means the same to the receiver and the sender: an
//! interface name (`eth0`) or an address of a local interface, IPv4 or
//! IPv6, whatever the family of the group; it is resolved to the
//! interface's index before use, so an unknown name or a foreign address
//! is refused at startup with one message. Buffers are requested with the
//! privileged `*BUFFORCE` first and the plain option as the fallback, and
//! the size the kernel granted is read back. Options nix wraps go through
//! nix; the rest go through [`set_raw`], the module's only `unsafe`.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

/// Why a socket could not be created or configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `--interface` names neither an interface nor a local address.
    NoSuchInterface(String),
    Create(Errno),
    Option {
        option: &'static str,
        errno: Errno,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchInterface(i) => write!(
                f,
                "--interface {i}: no such interface or address here (see `ip addr`)"
            ),
            Error::Create(e) => write!(f, "cannot create a UDP socket: {e}"),
            Error::Option { option, errno } => {
                write!(f, "cannot set socket option {option}: {errno}")
            }
        }
    }
}

impl std::error::Error for Error {}

fn option_err(option: &'static str) -> impl Fn(Errno) -> Error {
    move |errno| Error::Option { option, errno }
}

/// A UDP socket of `addr`'s family, close-on-exec, not yet bound.
pub fn udp_for(addr: SocketAddr) -> Result<OwnedFd, Error> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    sock::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(Error::Create)
}

/// Binds `fd` to `addr`; the errno is the caller's to explain, since what
/// an address in use means differs between listening and sending.
pub fn bind(fd: &impl AsFd, addr: SocketAddr) -> Result<(), Errno> {
    sock::bind(fd.as_fd().as_raw_fd(), &SockaddrStorage::from(addr))
}

/// Lets several sockets on this host bind the same group and port (a test
/// monitor next to the speaker): each gets every datagram.
pub fn set_reuse_addr(fd: &OwnedFd) -> Result<(), Error> {
    sock::setsockopt(fd, sockopt::ReuseAddr, &true).map_err(option_err("SO_REUSEADDR"))
}

/// Makes an IPv6 wildcard socket take IPv4 as well, whatever the host's
/// `bindv6only` default; IPv4 peers then appear as IPv4-mapped addresses.
pub fn set_dual_stack(fd: &OwnedFd) -> Result<(), Error> {
    sock::setsockopt(fd, sockopt::Ipv6V6Only, &false).map_err(option_err("IPV6_V6ONLY"))
}

/// Which of the socket's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    Receive,
    Send,
}

/// Requests a buffer of `bytes` and returns what the kernel granted, as it
/// reports it (Linux reports twice the usable size, counting its
/// bookkeeping). Privileged, the `*BUFFORCE` option passes the sysctl cap
/// (`rmem_max`/`wmem_max`); unprivileged, the plain request is capped by
/// the kernel, which is still the best available.
pub fn set_buffer(fd: &OwnedFd, which: Buffer, bytes: usize) -> Result<usize, Error> {
    match which {
        Buffer::Receive => {
            if sock::setsockopt(fd, sockopt::RcvBufForce, &bytes).is_err() {
                sock::setsockopt(fd, sockopt::RcvBuf, &bytes).map_err(option_err("SO_RCVBUF"))?;
            }
            sock::getsockopt(fd, sockopt::RcvBuf).map_err(option_err("SO_RCVBUF"))
        }
        Buffer::Send => {
            if sock::setsockopt(fd, sockopt::SndBufForce, &bytes).is_err() {
                sock::setsockopt(fd, sockopt::SndBuf, &bytes).map_err(option_err("SO_SNDBUF"))?;
            }
            sock::getsockopt(fd, sockopt::SndBuf).map_err(option_err("SO_SNDBUF"))
        }
    }
}

/// An interface as `--interface` named it, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// The value as the user gave it, for messages.
    pub value: String,
    pub index: u32,
    /// The IPv4 address it was named by, if so: IPv4 multicast then also
    /// uses that address as the source, as it always has.
    pub v4_address: Option<Ipv4Addr>,
}

impl Interface {
    /// Resolves a name (`eth0`) or an address of a local interface.
    pub fn resolve(value: &str) -> Result<Interface, Error> {
        let no_such = || Error::NoSuchInterface(value.to_string());
        let trimmed = value.trim_matches(|c| c == '[' || c == ']');
        let (index, v4_address) = match trimmed.parse::<IpAddr>() {
            Ok(addr) => {
                let index = index_of_address(addr).ok_or_else(no_such)?;
                let v4 = match addr {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                };
                (index, v4)
            }
            Err(_) => (
                nix::net::if_::if_nametoindex(value).map_err(|_| no_such())?,
                None,
            ),
        };
        Ok(Interface {
            value: value.to_string(),
            index,
            v4_address,
        })
    }

    /// The interface `value` names, found (by the link watcher) at
    /// `index`: as [`Interface::resolve`] would give once it is there.
    pub fn with_index(value: &str, index: u32) -> Interface {
        let v4_address = match value.trim_matches(|c| c == '[' || c == ']').parse() {
            Ok(IpAddr::V4(a)) => Some(a),
            _ => None,
        };
        Interface {
            value: value.to_string(),
            index,
            v4_address,
        }
    }

    /// `ip_mreqn` for IPv4 multicast: by index, so an interface without an
    /// IPv4 address can still be named, with the address if given.
    fn mreqn(&self, group: Ipv4Addr) -> libc::ip_mreqn {
        mreqn(
            group,
            self.v4_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.index,
        )
    }
}

fn mreqn(group: Ipv4Addr, address: Ipv4Addr, index: u32) -> libc::ip_mreqn {
    libc::ip_mreqn {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        imr_address: libc::in_addr {
            s_addr: u32::from_ne_bytes(address.octets()),
        },
        imr_ifindex: index as libc::c_int,
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

/// Joins `group` on `interface` (the kernel's choice by route if `None`).
/// The errno is returned as is: the receiver words the join failure.
pub fn join(socket: &UdpSocket, group: IpAddr, interface: Option<&Interface>) -> Result<(), Errno> {
    match group {
        IpAddr::V4(g) => {
            let req = match interface {
                Some(i) => i.mreqn(g),
                None => mreqn(g, Ipv4Addr::UNSPECIFIED, 0),
            };
            set_raw(socket, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &req)
        }
        IpAddr::V6(g) => socket
            .join_multicast_v6(&g, interface.map_or(0, |i| i.index))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0))),
    }
}

/// Leaves `group` on `interface`, joined there by [`join`].
pub fn leave(socket: &UdpSocket, group: IpAddr, interface: &Interface) -> Result<(), Errno> {
    match group {
        IpAddr::V4(g) => set_raw(
            socket,
            libc::IPPROTO_IP,
            libc::IP_DROP_MEMBERSHIP,
            &interface.mreqn(g),
        ),
        IpAddr::V6(g) => socket
            .leave_multicast_v6(&g, interface.index)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0))),
    }
}

/// Asks for the joined group only (`IP[V6]_MULTICAST_ALL` off): Linux
/// otherwise delivers every group any socket on this host joined on our
/// port. A filter, not a necessity (qemu's user mode refuses it), so the
/// caller decides what a refusal means.
pub fn only_joined_group(socket: &UdpSocket, group: IpAddr) -> Result<(), Errno> {
    let off: libc::c_int = 0;
    match group {
        IpAddr::V4(_) => set_raw(socket, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, &off),
        IpAddr::V6(_) => set_raw(socket, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_ALL, &off),
    }
}

/// How multicast leaves a sending socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulticastOut {
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// Whether this host's own sockets receive what is sent (a monitor or
    /// a speaker on the sending machine).
    pub loopback: bool,
    /// The outgoing interface; `None` follows the route.
    pub interface: Option<Interface>,
}

/// Sets TTL/hop limit, loopback and the outgoing interface for a
/// destination of `dest`'s family.
pub fn set_multicast_out(
    socket: &UdpSocket,
    dest: SocketAddr,
    out: &MulticastOut,
) -> Result<(), Error> {
    let io_errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
    if dest.is_ipv4() {
        sock::setsockopt(socket, sockopt::IpMulticastTtl, &out.ttl)
            .map_err(option_err("IP_MULTICAST_TTL"))?;
        sock::setsockopt(socket, sockopt::IpMulticastLoop, &out.loopback)
            .map_err(option_err("IP_MULTICAST_LOOP"))?;
        if let Some(i) = &out.interface {
            let req = i.mreqn(Ipv4Addr::UNSPECIFIED);
            set_raw(socket, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &req)
                .map_err(option_err("IP_MULTICAST_IF"))?;
        }
    } else {
        sock::setsockopt(
            socket,
            sockopt::Ipv6MulticastHops,
            &libc::c_int::from(out.ttl),
        )
        .map_err(option_err("IPV6_MULTICAST_HOPS"))?;
        socket
            .set_multicast_loop_v6(out.loopback)
            .map_err(|e| Error::Option {
                option: "IPV6_MULTICAST_LOOP",
                errno: io_errno(e),
            })?;
        if let Some(i) = &out.interface {
            let index = i.index as libc::c_int;
            set_raw(socket, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)
                .map_err(option_err("IPV6_MULTICAST_IF"))?;
        }
    }
    Ok(())
}

/// `setsockopt` for the options nix does not wrap (`ip_mreqn` joins, the
/// multicast interface, `IP[V6]_MULTICAST_ALL`). `T` must be the plain C
/// type the option expects; every caller passes an `ip_mreqn` or a
/// `c_int`.
fn set_raw<T: Copy>(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> Result<(), Errno> {
    // SAFETY: `value` is an initialised `T` borrowed across the call and
    // the length passed is exactly its size, so the kernel reads only
    // memory we own; the descriptor is borrowed from a live socket.
    let r = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            core::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_by_name_or_local_address_v4_and_v6() {
        let lo = Interface::resolve("lo").unwrap();
        assert!(lo.index > 0);
        assert_eq!(lo.v4_address, None);
        let by_v4 = Interface::resolve("127.0.0.1").unwrap();
        assert_eq!(
            (by_v4.index, by_v4.v4_address),
            (lo.index, Some(Ipv4Addr::LOCALHOST))
        );
        // Hosts without IPv6 have no ::1; where it exists it is on lo.
        if let Ok(by_v6) = Interface::resolve("::1") {
            assert_eq!((by_v6.index, by_v6.v4_address), (lo.index, None));
        }
    }

    #[test]
    fn unknown_interface_or_foreign_address_refused_alike() {
        for value in ["nosuch0", "192.0.2.1", "2001:db8::1"] {
            let e = Interface::resolve(value).unwrap_err();
            assert_eq!(e, Error::NoSuchInterface(value.to_string()));
            assert!(e.to_string().contains("see `ip addr`"), "{e}");
        }
    }

    #[test]
    fn buffers_granted_are_read_back() {
        let fd = udp_for("127.0.0.1:0".parse().unwrap()).unwrap();
        let small = set_buffer(&fd, Buffer::Send, 64 * 1024).unwrap();
        assert!(small >= 64 * 1024, "{small}");
        let rcv = set_buffer(&fd, Buffer::Receive, 32 * 1024).unwrap();
        assert!(rcv >= 32 * 1024, "{rcv}");
    }

    #[test]
    fn multicast_out_options_read_back() {
        let fd = udp_for("0.0.0.0:0".parse().unwrap()).unwrap();
        let s = UdpSocket::from(fd);
        let out = MulticastOut {
            ttl: 7,
            loopback: false,
            interface: Some(Interface::resolve("lo").unwrap()),
        };
        set_multicast_out(&s, "239.255.77.1:5004".parse().unwrap(), &out).unwrap();
        assert_eq!(s.multicast_ttl_v4().unwrap(), 7);
        assert!(!s.multicast_loop_v4().unwrap());
    }
}
