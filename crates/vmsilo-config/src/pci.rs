//! PCI addresses in BDF form: `[DDDD:]BB:DD.F`.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A PCI device address. Parsed from `01:00.0` or `0000:01:00.0`; always displayed with the
/// domain (`0000:01:00.0`), which is how sysfs names devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI domain (segment), 0 on most machines.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0–31.
    pub device: u8,
    /// Function number, 0–7.
    pub function: u8,
}

impl PciAddress {
    /// The device's sysfs directory, which is what crosvm's `--vfio` takes.
    pub fn sysfs_path(&self) -> String {
        format!("/sys/bus/pci/devices/{self}")
    }
}

impl FromStr for PciAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not a PCI address: {why}; expected [DDDD:]BB:DD.F such as 01:00.0 or 0000:01:00.0"
            )
        };
        let hex = |part: &str, digits: usize, what: &str| -> Result<u32, String> {
            if part.len() != digits || !part.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(&format!("the {what} must be {digits} hex digits")));
            }
            u32::from_str_radix(part, 16).map_err(|_| bad(what))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (domain, bus, rest) = match parts.as_slice() {
            [bus, rest] => (0, *bus, *rest),
            [domain, bus, rest] => (hex(domain, 4, "domain")?, *bus, *rest),
            _ => return Err(bad("wrong number of ':'")),
        };
        let bus = hex(bus, 2, "bus")?;
        let Some((device, function)) = rest.split_once('.') else {
            return Err(bad("missing '.' before the function"));
        };
        let device = hex(device, 2, "device")?;
        let function = hex(function, 1, "function")?;
        if device > 0x1f {
            return Err(bad("the device number is at most 1f"));
        }
        if function > 7 {
            return Err(bad("the function number is at most 7"));
        }
        Ok(PciAddress {
            domain: u16::try_from(domain).map_err(|_| bad("domain"))?,
            bus: u8::try_from(bus).map_err(|_| bad("bus"))?,
            device: u8::try_from(device).map_err(|_| bad("device"))?,
            function: u8::try_from(function).map_err(|_| bad("function"))?,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pci_address_short_and_long_forms() {
        let a: PciAddress = "01:00.0".parse().expect("valid");
        let b: PciAddress = "0000:01:00.0".parse().expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "0000:01:00.0");
        assert_eq!(a.sysfs_path(), "/sys/bus/pci/devices/0000:01:00.0");
        let c: PciAddress = "10ab:FF:1f.7".parse().expect("valid");
        assert_eq!(c.to_string(), "10ab:ff:1f.7");
    }

    #[test]
    fn test_pci_address_rejects_bad_forms() {
        for s in [
            "1:00.0",
            "01:00",
            "01:20.0",
            "01:00.8",
            "0:01:00.0",
            "01.00.0",
            "gg:00.0",
            "",
            "0000:01:00.0.1",
        ] {
            assert!(s.parse::<PciAddress>().is_err(), "{s}");
        }
    }
}
