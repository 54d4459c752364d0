//! Destination socket. Input: encoded datagrams. Output: UDP to one
//! address, unicast or multicast, IPv4 or IPv6. Policy: the socket is
//! connected, so the kernel reports ICMP errors; an unreachable network or
//! host, or a refused port (no receiver yet), is transient: the datagram is
//! dropped and counted, a rate-limited warning says so, and sending goes on
//! (the receiver may come up later). The same holds at startup: when no
//! route leads to the destination yet (a Pi booting before its network is
//! up), connecting is retried with every packet. Any other error is fatal.
//! The socket itself, and `--interface` (a name or an address of a local
//! interface, IPv4 or IPv6), come from [`crate::net::socket`], as the
//! receiver's do.

use core::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::net::socket::{self, Interface, MulticastOut};
use crate::service::clock::monotonic_ns;
use crate::service::ratelimit::RateLimit;

#[derive(Debug)]
pub enum Error {
    /// Not `HOST:PORT`, `HOST` or `[V6ADDR]:PORT`, or the name did not resolve.
    Address {
        value: String,
        err: Option<io::Error>,
    },
    /// `--interface` could not be resolved, or a multicast option was
    /// refused.
    Net {
        addr: SocketAddr,
        err: socket::Error,
    },
    Socket {
        addr: SocketAddr,
        what: &'static str,
        err: io::Error,
    },
    Send {
        addr: SocketAddr,
        err: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Address { value, err: None } => write!(
                f,
                "destination '{value}' is not HOST:PORT (IPv6 as [ADDR]:PORT)"
            ),
            Error::Address {
                value,
                err: Some(e),
            } => write!(f, "cannot resolve destination '{value}': {e}"),
            // Worded as the receiver words it: the option is the subject.
            Error::Net {
                err: err @ socket::Error::NoSuchInterface(_),
                ..
            } => write!(f, "{err}"),
            Error::Net { addr, err } => write!(f, "socket for {addr}: {err}"),
            Error::Socket { addr, what, err } => {
                write!(f, "socket for {addr}: cannot {what}: {err}")
            }
            Error::Send { addr, err } => write!(f, "sending to {addr} failed: {err}"),
        }
    }
}

impl std::error::Error for Error {}

/// Parses a destination: `HOST:PORT`, `[V6]:PORT`, or a bare host or
/// address, which gets `default_port`. Names are resolved (at startup).
pub fn parse_dest(value: &str, default_port: u16) -> Result<SocketAddr, Error> {
    if let Ok(a) = value.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = value
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let resolved = match value.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port.parse::<u16>().map_err(|_| Error::Address {
                value: value.to_string(),
                err: None,
            })?;
            (host, port).to_socket_addrs()
        }
        Some(_) => {
            return Err(Error::Address {
                value: value.to_string(),
                err: None,
            })
        }
        None => (value, default_port).to_socket_addrs(),
    };
    match resolved {
        Ok(mut addrs) => addrs.next().ok_or(Error::Address {
            value: value.to_string(),
            err: None,
        }),
        Err(e) => Err(Error::Address {
            value: value.to_string(),
            err: Some(e),
        }),
    }
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct DestConfig {
    pub addr: SocketAddr,
    /// Multicast TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// Outgoing interface for multicast: a name (`eth0`) or an address of
    /// a local interface, IPv4 or IPv6.
    pub interface: Option<String>,
}

/// What became of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    Sent,
    /// Dropped for a transient reason (unreachable, refused); counted.
    Dropped,
}

pub struct Dest {
    socket: UdpSocket,
    addr: SocketAddr,
    /// False while connect() fails for a transient reason (no route yet,
    /// e.g. at boot before the network is up); retried on every send.
    connected: bool,
    limit: RateLimit,
    dropped: u64,
    /// Drops are logged at debug level only (see `quiet_drops`).
    quiet: bool,
}

impl Dest {
    pub fn open(config: &DestConfig) -> Result<Dest, Error> {
        let addr = config.addr;
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let net_err = |err| Error::Net { addr, err };
        let socket = UdpSocket::from(socket::udp_for(bind).map_err(net_err)?);
        socket::bind(&socket, bind).map_err(|errno| Error::Socket {
            addr,
            what: "bind",
            err: io::Error::from(errno),
        })?;
        if addr.ip().is_multicast() {
            let interface = match &config.interface {
                Some(i) => Some(Interface::resolve(i).map_err(net_err)?),
                None => None,
            };
            let out = MulticastOut {
                ttl: config.ttl,
                loopback: true,
                interface,
            };
            socket::set_multicast_out(&socket, addr, &out).map_err(net_err)?;
        } else if let Some(iface) = &config.interface {
            // Unicast follows the routing table; say so rather than
            // silently ignoring the option.
            log::warn!("--interface {iface} applies to multicast only; {addr} is unicast");
        }
        let connected = match socket.connect(addr) {
            Ok(()) => true,
            Err(e) if is_transient(&e) => false,
            Err(err) => {
                return Err(Error::Socket {
                    addr,
                    what: "connect",
                    err,
                })
            }
        };
        Ok(Dest {
            socket,
            addr,
            connected,
            limit: RateLimit::default_for_input(),
            dropped: 0,
            quiet: false,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address packets leave from (the SDP origin).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Log drops at debug level only: for RTCP to port+1, which many
    /// receivers (ffplay, older netspeakers) do not listen on, so every
    /// report is refused; that is no fault worth a warning.
    pub fn quiet_drops(&mut self) {
        self.quiet = true;
    }

    /// Datagrams dropped for transient reasons so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn send(&mut self, datagram: &[u8]) -> Result<SendStatus, Error> {
        loop {
            let sent = if self.connected {
                self.socket.send(datagram)
            } else {
                match self.socket.connect(self.addr) {
                    Ok(()) => {
                        self.connected = true;
                        log::info!("{} is reachable now", self.addr);
                        self.socket.send(datagram)
                    }
                    Err(e) => Err(e),
                }
            };
            match sent {
                Ok(_) => return Ok(SendStatus::Sent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_transient(&e) => {
                    self.dropped += 1;
                    // The count of dropped datagrams already says what the
                    // suppressed lines would have.
                    if self.quiet {
                        log::debug!("{}: {e} ({} dropped so far)", self.addr, self.dropped);
                    } else if self.limit.check(monotonic_ns()).is_some() {
                        log::warn!(
                            "{}: {e}; still sending ({} dropped so far): check the address, \
                             route or firewall, or whether the receiver runs",
                            self.addr,
                            self.dropped
                        );
                    }
                    return Ok(SendStatus::Dropped);
                }
                Err(err) => {
                    return Err(Error::Send {
                        addr: self.addr,
                        err,
                    })
                }
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    use nix::libc;
    matches!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ECONNREFUSED | libc::ENOBUFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_forms() {
        assert_eq!(
            parse_dest("127.0.0.1:6000", 5004).unwrap(),
            "127.0.0.1:6000".parse().unwrap()
        );
        assert_eq!(
            parse_dest("127.0.0.1", 5005).unwrap(),
            "127.0.0.1:5005".parse().unwrap()
        );
        assert_eq!(
            parse_dest("[::1]:7000", 5004).unwrap(),
            "[::1]:7000".parse().unwrap()
        );
        assert_eq!(
            parse_dest("::1", 5004).unwrap(),
            "[::1]:5004".parse().unwrap()
        );
        assert_eq!(parse_dest("localhost:6001", 5004).unwrap().port(), 6001);
        assert!(matches!(
            parse_dest("127.0.0.1:99999", 5004),
            Err(Error::Address { .. })
        ));
        assert!(parse_dest("no.such.host.invalid", 5004).is_err());
    }

    #[test]
    fn sends_to_loopback_and_refused_port_is_transient() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = rx.local_addr().unwrap();
        let mut d = Dest::open(&DestConfig {
            addr,
            ttl: 1,
            interface: None,
        })
        .unwrap();
        assert_eq!(d.send(b"hello").unwrap(), SendStatus::Sent);
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
        drop(rx);
        // The first send to a closed port draws an ICMP port unreachable;
        // the next one reports it as ECONNREFUSED: dropped, not fatal.
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(d.send(b"x").unwrap());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(statuses.contains(&SendStatus::Dropped), "{statuses:?}");
        assert!(d.dropped() >= 1);
    }

    #[test]
    fn multicast_interface_by_name_or_address_of_either_family() {
        let open = |addr: &str, interface: &str| {
            Dest::open(&DestConfig {
                addr: addr.parse().unwrap(),
                ttl: 1,
                interface: Some(interface.into()),
            })
        };
        for interface in ["lo", "127.0.0.1"] {
            open("239.255.77.1:5004", interface).unwrap();
        }
        // Hosts without IPv6 have neither ::1 nor an IPv6 socket.
        if UdpSocket::bind("[::1]:0").is_ok() {
            for interface in ["lo", "::1", "127.0.0.1"] {
                open("[ff02::1234]:5004", interface).unwrap();
            }
        }
        for interface in ["no-such-if0", "192.0.2.1", "2001:db8::1"] {
            let e = open("239.255.77.1:5004", interface).err().unwrap();
            // The receiver's words for the same mistake.
            assert_eq!(
                e.to_string(),
                crate::net::NetError::Socket(socket::Error::NoSuchInterface(interface.into()))
                    .to_string()
            );
        }
    }
}
