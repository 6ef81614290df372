//! Prefixes and the longest-prefix-match forwarding table.

#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 prefix such as `10.0.0.0/24` or `fd00::2/64`.
///
/// The address keeps the host bits as written (a port's `10.0.0.2/24` is both "my address is
/// 10.0.0.2" and "my subnet is /24"); [`Cidr::contains`] ignores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address as written.
    pub addr: IpAddr,
    /// Prefix length (0..=32 or 0..=128).
    pub prefix: u8,
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address with a prefix length such as 10.0.0.2/24 or fd00::2/64")]
pub struct CidrError(pub String);

impl Cidr {
    /// A host prefix (/32 or /128) for one address.
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// Whether `ip` is inside this prefix (same family, same leading `prefix` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let (a, width) = Self::bits(self.addr);
        let (b, _) = Self::bits(ip);
        let host_bits = u32::from(width - self.prefix);
        if host_bits >= 128 {
            return true;
        }
        (a >> host_bits) == (b >> host_bits)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A longest-prefix-match table from prefixes to values.
///
/// Kept as a vector sorted by prefix length, longest first, so the first match is the longest.
/// A switch has tens of ports with a handful of prefixes each, for which a linear scan over a
/// contiguous vector beats a trie.
#[derive(Debug, Clone, Default)]
pub struct Fib<T> {
    entries: Vec<(Cidr, T)>,
}

impl<T: Copy> Fib<T> {
    /// An empty table.
    pub fn new() -> Self {
        Fib {
            entries: Vec::new(),
        }
    }

    /// Adds a prefix. Among equal prefixes the first inserted wins.
    pub fn insert(&mut self, cidr: Cidr, value: T) {
        let pos = self
            .entries
            .iter()
            .position(|(c, _)| c.prefix < cidr.prefix)
            .unwrap_or(self.entries.len());
        self.entries.insert(pos, (cidr, value));
    }

    /// Removes every entry whose value satisfies `f`.
    pub fn remove_where(&mut self, mut f: impl FnMut(&T) -> bool) {
        self.entries.retain(|(_, v)| !f(v));
    }

    /// The value of the longest prefix containing `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<T> {
        self.entries
            .iter()
            .find(|(c, _)| c.contains(ip))
            .map(|(_, v)| *v)
    }

    /// The values of every entry of the longest prefix length containing `ip` (several only
    /// when equal prefixes, or different ones of the same length, tie).
    pub fn longest_matches(&self, ip: IpAddr) -> impl Iterator<Item = T> + '_ {
        let mut matches = self.entries.iter().filter(move |(c, _)| c.contains(ip));
        let first = matches.next();
        let len = first.map(|(c, _)| c.prefix);
        first
            .into_iter()
            .chain(matches.take_while(move |(c, _)| Some(c.prefix) == len))
            .map(|(_, v)| *v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn test_cidr_parse_rejects_bad_prefixes() {
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("fd00::1/129".parse::<Cidr>().is_err());
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        assert!("10.0.0/24".parse::<Cidr>().is_err());
        assert_eq!(c("10.0.0.2/24").to_string(), "10.0.0.2/24");
    }

    #[test]
    fn test_cidr_contains_ignores_host_bits_and_family() {
        assert!(c("10.0.0.2/24").contains(ip("10.0.0.200")));
        assert!(!c("10.0.0.2/24").contains(ip("10.0.1.1")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!c("0.0.0.0/0").contains(ip("fd00::1")));
        assert!(c("::/0").contains(ip("fd00::1")));
        assert!(c("fd00::/64").contains(ip("fd00::1234")));
        assert!(!c("fd00::/64").contains(ip("fd00:0:0:1::1")));
    }

    #[test]
    fn test_fib_lookup_prefers_longest_prefix() {
        let mut fib = Fib::new();
        fib.insert(c("0.0.0.0/0"), 1u32);
        fib.insert(c("10.0.0.3/32"), 3);
        fib.insert(c("10.0.0.0/24"), 2);
        assert_eq!(fib.lookup(ip("10.0.0.3")), Some(3));
        assert_eq!(fib.lookup(ip("10.0.0.4")), Some(2));
        assert_eq!(fib.lookup(ip("1.1.1.1")), Some(1));
        assert_eq!(fib.lookup(ip("fd00::1")), None);
    }

    #[test]
    fn test_fib_longest_matches_lists_only_the_longest_ties() {
        let mut fib = Fib::new();
        fib.insert(c("0.0.0.0/0"), 1u32);
        fib.insert(c("0.0.0.0/0"), 2);
        fib.insert(c("10.0.0.3/32"), 3);
        fib.insert(c("10.0.0.0/24"), 4);
        let all = |s| fib.longest_matches(ip(s)).collect::<Vec<_>>();
        assert_eq!(all("10.0.0.3"), vec![3]);
        assert_eq!(all("10.0.0.4"), vec![4]);
        assert_eq!(all("1.1.1.1"), vec![1, 2]);
        assert_eq!(all("fd00::1"), Vec::<u32>::new());
    }

    #[test]
    fn test_fib_remove_where_drops_a_ports_entries() {
        let mut fib = Fib::new();
        fib.insert(c("10.0.0.2/32"), 2u32);
        fib.insert(c("10.0.0.3/32"), 3);
        fib.remove_where(|v| *v == 2);
        assert_eq!(fib.lookup(ip("10.0.0.2")), None);
        assert_eq!(fib.lookup(ip("10.0.0.3")), Some(3));
        assert_eq!(fib.len(), 1);
    }
}
