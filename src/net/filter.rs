//! The source filter (`--allow`). Input: the source address of each
//! received datagram. Output: whether it may pass. Policy: an empty list
//! accepts every source; otherwise a source passes when any prefix holds
//! it. IPv4-mapped IPv6 sources (what a dual-stack `[::]` socket reports
//! for IPv4 senders) are judged as the IPv4 addresses they are.

use core::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why an `--allow` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Cidr { value: String, reason: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cidr { value, reason } => write!(
                f,
                "--allow '{value}': {reason}; use ADDRESS[/PREFIX], e.g. 192.168.1.0/24 or fd00::/8"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// An address prefix for `--allow`: `10.0.0.0/8`, `fd00::/8`, or a bare
/// address (a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this prefix; IPv4-mapped sources match IPv4
    /// rules.
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
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason| Error::Cidr {
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

/// The `--allow` list as the net thread asks it.
#[derive(Clone, Debug, Default)]
pub struct SourceFilter {
    allow: Vec<Cidr>,
}

impl SourceFilter {
    pub fn new(allow: &[Cidr]) -> Self {
        SourceFilter {
            allow: allow.to_vec(),
        }
    }

    /// Whether a datagram from `ip` may pass.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(matches!(e, Error::Cidr { .. }), "{bad}");
            assert!(e.to_string().contains("--allow"), "{e}");
        }
    }

    #[test]
    fn empty_list_allows_everyone_else_only_listed_prefixes() {
        let open = SourceFilter::new(&[]);
        assert!(open.allows("203.0.113.9".parse().unwrap()));
        let lan = SourceFilter::new(&[
            "192.168.1.0/24".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(lan.allows("192.168.1.20".parse().unwrap()));
        assert!(lan.allows("::ffff:192.168.1.20".parse().unwrap()));
        assert!(lan.allows("fd12::1".parse().unwrap()));
        assert!(!lan.allows("192.168.2.20".parse().unwrap()));
    }
}
