//! Destination specs as written on the command line: `198.51.100.7:443/tcp`,
//! `[2001:db8::7]:443/udp`, `203.0.113.0/24:*/tcp` (port `*` = any; protocol defaults to tcp),
//! `198.51.100.7:*/icmp` (ping; ICMP has no port).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo, IPv4 and IPv6 alike; its rules always have port 0.
    Icmp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => enforcer_common::IPPROTO_TCP,
            Self::Udp => enforcer_common::IPPROTO_UDP,
            Self::Icmp => enforcer_common::IPPROTO_ICMP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            enforcer_common::IPPROTO_TCP => Some(Self::Tcp),
            enforcer_common::IPPROTO_UDP => Some(Self::Udp),
            enforcer_common::IPPROTO_ICMP => Some(Self::Icmp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        })
    }
}

/// `::ffff:0:0`, where the kernel's 16-byte form puts IPv4 (`::ffff:0:0/96`).
pub const V4_MAPPED: u128 = 0xffff << 32;

/// An IP network: address with its host bits cleared, and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, SpecError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(SpecError::PrefixTooLong { prefix, max });
        }
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// IPv4 before IPv6, then address, then prefix length (as `Ord` orders), as integers.
    pub fn order(&self) -> (bool, u128, u8) {
        let addr = match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        (self.addr.is_ipv6(), addr, self.prefix)
    }

    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    /// The address in the kernel's 16-byte form (IPv4 as `::ffff:a.b.c.d`) and the prefix
    /// length counted over those 128 bits.
    pub fn normalized(&self) -> ([u8; 16], u8) {
        match self.addr {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), self.prefix + 96),
            IpAddr::V6(v6) => (v6.octets(), self.prefix),
        }
    }

    /// The prefixes (16-byte address, length over 128 bits) the kernel must hold for this
    /// network. The kernel sees IPv4 destinations as `::ffff:a.b.c.d` (docs/architecture.md,
    /// "Rule maps"), so an IPv6 network that contains `::ffff:0:0/96` would also match every
    /// IPv4 destination: it is split into the prefixes that cover it except that range. An
    /// IPv6 network inside that range can only ever match IPv4 traffic and yields nothing.
    /// A million rules go through this on every reload: it allocates nothing.
    pub fn kernel_prefixes(&self) -> impl Iterator<Item = ([u8; 16], u8)> + use<> {
        let (whole, split) = self.kernel_plan();
        // Below each level on the way down to the /96, the half without it.
        whole.into_iter().chain(split.map(|l| {
            let sibling = mask128(V4_MAPPED, l) ^ (1u128 << (128 - l));
            (sibling.to_be_bytes(), l as u8)
        }))
    }

    /// [`Net::kernel_prefixes`]: the network itself (unless it lies inside `::ffff:0:0/96`),
    /// or the levels whose sibling halves replace it.
    fn kernel_plan(&self) -> (Option<([u8; 16], u8)>, std::ops::Range<u32>) {
        let IpAddr::V6(v6) = self.addr else {
            return (Some(self.normalized()), 0..0);
        };
        let (addr, len) = (u128::from(v6), u32::from(self.prefix));
        let whole = Some((addr.to_be_bytes(), self.prefix));
        if len >= 96 {
            return if mask128(addr, 96) == V4_MAPPED {
                (None, 0..0)
            } else {
                (whole, 0..0)
            };
        }
        if mask128(V4_MAPPED, len) != addr {
            return (whole, 0..0);
        }
        (None, len + 1..97)
    }

    /// Whether `addr` is in the network, as the kernel decides: an IPv4 address (or its
    /// v4-mapped form) only in IPv4 networks, an IPv6 address only in IPv6 networks
    /// (see [`Net::kernel_prefixes`]).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.prefix) == self.addr
    }

    /// Whether the network lies inside `::ffff:0:0/96` (IPv4-mapped IPv6).
    pub fn is_v4_mapped(&self) -> bool {
        matches!(self.addr, IpAddr::V6(_)) && self.kernel_prefixes().next().is_none()
    }

    /// Inverse of [`Net::normalized`]: v4-mapped addresses are shown as IPv4.
    pub fn from_normalized(addr: [u8; 16], prefix: u8) -> Self {
        let v6 = Ipv6Addr::from(addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => Self {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            },
            _ => Self {
                addr: IpAddr::V6(v6),
                prefix,
            },
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

const fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// `bits` with all but the first `len` bits cleared.
pub(super) fn mask128(bits: u128, len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - len))
    }
}

/// One allowed destination: a network, a port (0 = any) and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowSpec {
    pub net: Net,
    pub port: u16,
    pub proto: Proto,
}

impl AllowSpec {
    /// The order of (network, port, protocol number) as plain integers: a million specs are
    /// sorted and searched on every reload, and comparing fields one by one (an enum, then
    /// octets) took most of that time. Host rules come out in the order of their kernel
    /// keys (`RuleKey`'s), so the desired rules need no second sort.
    fn order(&self) -> ((bool, u128, u8), u32) {
        (
            self.net.order(),
            u32::from(self.port) << 8 | u32::from(self.proto.number()),
        )
    }
}

/// IPv4 before IPv6, then by address, prefix length, port and protocol number.
impl Ord for AllowSpec {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

impl PartialOrd for AllowSpec {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for AllowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let net = self.net.to_string();
        let net = if self.net.addr.is_ipv6() {
            format!("[{net}]")
        } else {
            net
        };
        if self.port == 0 {
            write!(f, "{net}:*/{}", self.proto)
        } else {
            write!(f, "{net}:{}/{}", self.port, self.proto)
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("expected ADDR[/LEN]:PORT[/tcp|udp|icmp] (IPv6 in brackets, PORT may be *)")]
    Shape,
    #[error("{0:?} is not an IP address")]
    Addr(String),
    #[error("{0:?} is not a prefix length")]
    PrefixLen(String),
    #[error("prefix length {prefix} is longer than {max}")]
    PrefixTooLong { prefix: u8, max: u8 },
    #[error("{0:?} is not a port (1-65535 or *)")]
    Port(String),
    #[error("{0:?} is not a protocol (tcp, udp or icmp)")]
    Proto(String),
    #[error("ICMP has no ports: write ADDR:*/icmp")]
    IcmpPort,
    #[error(
        "{0} is IPv4-mapped IPv6, which only IPv4 traffic uses and an IPv6 rule never \
         matches: write the IPv4 address"
    )]
    V4Mapped(String),
}

/// Parses `ADDR` or `ADDR/LEN` (no brackets).
pub fn parse_cidr(s: &str) -> Result<Net, SpecError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = IpAddr::from_str(addr).map_err(|_| SpecError::Addr(addr.to_owned()))?;
    let prefix = match len {
        Some(l) => l
            .parse::<u8>()
            .map_err(|_| SpecError::PrefixLen(l.to_owned()))?,
        None => max_prefix(addr),
    };
    Net::new(addr, prefix)
}

impl FromStr for AllowSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let s = s.trim();
        let (net, rest) = if let Some(inner) = s.strip_prefix('[') {
            let (net, rest) = inner.split_once(']').ok_or(SpecError::Shape)?;
            let net = parse_cidr(net)?;
            if !net.addr.is_ipv6() {
                return Err(SpecError::Shape);
            }
            if net.is_v4_mapped() {
                return Err(SpecError::V4Mapped(net.to_string()));
            }
            (net, rest.strip_prefix(':').ok_or(SpecError::Shape)?)
        } else {
            let (net, rest) = s.split_once(':').ok_or(SpecError::Shape)?;
            let net = parse_cidr(net)?;
            if net.addr.is_ipv6() {
                return Err(SpecError::Shape);
            }
            (net, rest)
        };
        let (port, proto) = match rest.split_once('/') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let port = match port {
            "*" => 0,
            p => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(SpecError::Port(p.to_owned())),
            },
        };
        let proto = match proto.map(str::to_ascii_lowercase).as_deref() {
            None | Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some("icmp") if port != 0 => return Err(SpecError::IcmpPort),
            Some("icmp") => Proto::Icmp,
            Some(other) => return Err(SpecError::Proto(other.to_owned())),
        };
        Ok(Self { net, port, proto })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> AllowSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn order_is_network_then_port_then_protocol() {
        let specs: Vec<AllowSpec> = [
            "[::1]:80/tcp",
            "10.0.0.1:443/udp",
            "10.0.0.0/8:443/tcp",
            "10.0.0.1:443/tcp",
            "9.255.255.255:1/tcp",
            "[::a00:1]:1/tcp",
            "10.0.0.1:*/icmp",
            "10.0.0.1:80/tcp",
            "0.0.0.0/0:*/tcp",
            "[2001:db8::]:1/udp",
        ]
        .into_iter()
        .map(spec)
        .collect();
        let mut fast = specs.clone();
        fast.sort();
        let mut fieldwise = specs;
        fieldwise.sort_by_key(|a| (a.net, a.port, a.proto.number()));
        assert_eq!(fast, fieldwise);
    }

    #[test]
    fn icmp_has_no_port() {
        let a = spec("198.51.100.0/24:*/icmp");
        assert_eq!((a.port, a.proto), (0, Proto::Icmp));
        assert_eq!(a.to_string(), "198.51.100.0/24:*/icmp");
        assert_eq!(
            "198.51.100.7:7/icmp".parse::<AllowSpec>(),
            Err(SpecError::IcmpPort)
        );
    }

    #[test]
    fn parses_the_usual_forms() {
        let a = spec("198.51.100.7:443/tcp");
        assert_eq!(
            a.net,
            Net::new("198.51.100.7".parse().unwrap(), 32).unwrap()
        );
        assert_eq!((a.port, a.proto), (443, Proto::Tcp));
        let b = spec("[2001:db8::7]:53/udp");
        assert_eq!(b.net.prefix, 128);
        assert_eq!((b.port, b.proto), (53, Proto::Udp));
        let c = spec("203.0.113.0/24:*/UDP");
        assert_eq!(c.net.prefix, 24);
        assert_eq!((c.port, c.proto), (0, Proto::Udp));
        let d = spec("[fd00::/8]:8080");
        assert_eq!((d.net.prefix, d.proto), (8, Proto::Tcp));
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(
            spec("10.1.2.3/8:1").net.addr,
            "10.0.0.0".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "198.51.100.7:443/tcp",
            "[2001:db8::7]:53/udp",
            "203.0.113.0/24:*/udp",
            "[fd00::/8]:*/tcp",
        ] {
            assert_eq!(spec(s).to_string(), s);
            assert_eq!(spec(&spec(s).to_string()), spec(s));
        }
    }

    #[test]
    fn rejects_bad_specs() {
        for (s, want) in [
            ("198.51.100.7", SpecError::Shape),
            ("2001:db8::7:443", SpecError::Addr("2001".into())),
            ("[198.51.100.7]:443", SpecError::Shape),
            ("[2001:db8::7:443", SpecError::Shape),
            ("1.2.3.4:0", SpecError::Port("0".into())),
            ("1.2.3.4:65536", SpecError::Port("65536".into())),
            ("1.2.3.4:80/sctp", SpecError::Proto("sctp".into())),
            (
                "1.2.3.4/33:80",
                SpecError::PrefixTooLong {
                    prefix: 33,
                    max: 32,
                },
            ),
            ("1.2.3.4/x:80", SpecError::PrefixLen("x".into())),
            ("host.example:80", SpecError::Addr("host.example".into())),
        ] {
            assert_eq!(s.parse::<AllowSpec>(), Err(want), "{s}");
        }
    }

    #[test]
    fn an_ipv6_network_never_covers_ipv4() {
        // A piece overlaps ::ffff:0:0/96 when one of the two contains the other.
        let mapped = V4_MAPPED;
        let overlaps = |(addr, len): &([u8; 16], u8)| {
            let (a, l) = (u128::from_be_bytes(*addr), u32::from(*len));
            mask128(mapped, l.min(96)) == mask128(a, l.min(96))
        };
        for s in [
            "::/0",
            "::/64",
            "::/95",
            "::/96",
            "::ffff:0:0/96",
            "::ffff:c612:1/128",
        ] {
            let net = parse_cidr(s).unwrap();
            let pieces: Vec<_> = net.kernel_prefixes().collect();
            assert!(!pieces.iter().any(overlaps), "{s}: {pieces:?}");
        }
        // ::/0 becomes 96 prefixes that together cover everything but ::ffff:0:0/96.
        let all: Vec<_> = parse_cidr("::/0").unwrap().kernel_prefixes().collect();
        assert_eq!(all.len(), 96);
        let total: u128 = all
            .iter()
            .map(|(_, l)| 1u128 << (127 - u32::from(*l)))
            .sum();
        assert_eq!(
            total,
            (1u128 << 127) - (1u128 << 31),
            "halved sizes: 2^128 - 2^32"
        );
        for s in ["fd00::/8", "2001:db8::1/128", "::1/128"] {
            let net = parse_cidr(s).unwrap();
            assert_eq!(
                net.kernel_prefixes().collect::<Vec<_>>(),
                vec![net.normalized()],
                "{s}"
            );
        }
        let v4 = parse_cidr("0.0.0.0/0").unwrap();
        assert_eq!(
            v4.kernel_prefixes().collect::<Vec<_>>(),
            vec![v4.normalized()]
        );
        assert!(parse_cidr("::ffff:198.18.0.1").unwrap().is_v4_mapped());
        assert_eq!(
            "[::ffff:198.18.0.1]:80".parse::<AllowSpec>(),
            Err(SpecError::V4Mapped("::ffff:198.18.0.1".into()))
        );
    }

    #[test]
    fn normalizes_v4_to_mapped() {
        let n = spec("203.0.113.0/24:1").net;
        let (addr, prefix) = n.normalized();
        assert_eq!(prefix, 120);
        assert_eq!(&addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(Net::from_normalized(addr, prefix), n);
        let v6 = spec("[2001:db8::/32]:1").net;
        let (a6, p6) = v6.normalized();
        assert_eq!(Net::from_normalized(a6, p6), v6);
    }
}
