//! Network value types: CIDR prefixes and MAC addresses.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// An IP address with a prefix length, `10.0.0.1/24` or `fd00::1/64`.
///
/// As written by the user: host bits may be set (an interface address), see [`Cidr::network`]
/// for the prefix itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (0–32 for IPv4, 0–128 for IPv6).
    pub prefix: u8,
}

impl Cidr {
    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The same prefix with the host bits cleared (`10.0.0.1/24` → `10.0.0.0/24`).
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether the host bits are all zero (a network prefix rather than an address).
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(format!(
                "{s:?} is not an address with a prefix length, such as 10.0.0.1/24 or fd00::1/64"
            ));
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= max && !prefix.starts_with('+') => p,
            _ => {
                return Err(format!(
                    "{s:?}: prefix length {prefix:?} is not a number from 0 to {max}"
                ));
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A 48-bit Ethernet MAC address, written `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether the group (multicast) bit is set; such an address cannot be an interface's.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
    /// Whether the locally-administered bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("{s:?} is not a MAC address: expected six hex bytes such as 52:54:00:12:34:56")
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether `name` is usable as a Linux network interface name: 1 to 15 bytes (IFNAMSIZ − 1)
/// of letters, digits, `-` and `_` (a stricter set than the kernel's, so that the name is also
/// safe in kernel parameters, unit names and file names). Returns why not.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "{name:?} is {} bytes; interface names are at most 15 bytes (IFNAMSIZ)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{name:?} contains {c:?}: use letters, digits, '-' and '_' only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cidr_parse_display_network() {
        let c: Cidr = "10.0.0.1/24".parse().expect("valid");
        assert_eq!(c.to_string(), "10.0.0.1/24");
        assert_eq!(c.network().to_string(), "10.0.0.0/24");
        assert!(!c.is_network());
        let d: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(d.is_network());
        let v6: Cidr = "fd00::1/64".parse().expect("valid");
        assert_eq!(v6.network().to_string(), "fd00::/64");
        assert!(!v6.is_ipv4());
    }

    #[test]
    fn test_cidr_rejects_bad_input() {
        for s in [
            "10.0.0.1",
            "10.0.0.1/33",
            "10.0.0/24",
            "fd00::/129",
            "x/1",
            "10.0.0.1/+3",
            "",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
    }

    #[test]
    fn test_mac_parse_display() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().expect("valid");
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!(!m.is_multicast());
        for s in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
        }
    }

    #[test]
    fn test_check_ifname() {
        assert!(check_ifname("banking-0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        assert!(check_ifname("a234567890123456").is_err());
        assert!(check_ifname("wan,1").is_err());
        assert!(check_ifname("").is_err());
    }
}
