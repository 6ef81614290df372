//! Port files, `<config-dir>/<vm>.port`, one per VM port, written by the vmsilo runtime: read
//! and validated into a [`PortConfig`]. The file's shape and TOML text ([`PortFile`]) are
//! `vmsilo-proto`'s, shared with the runtime that writes them; see `vmsilo_proto::port_file`
//! for the format.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
pub use vmsilo_proto::port_file::{MAX_PORT_FILE, PORT_SUFFIX, PortFile};

use crate::fib::Cidr;
use crate::frame::{Mac, format_mac, parse_mac};

/// File name suffix of the vhost-user sockets.
pub const SOCK_SUFFIX: &str = ".sock";

/// Why a port file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PortConfigError {
    /// The file could not be read.
    #[error("could not read port file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PORT_FILE`].
    #[error("port file {0} is larger than 64 KiB")]
    TooLarge(String),
    /// The TOML did not parse or a field is invalid.
    #[error("port file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A validated port description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PortFile", into = "PortFile")]
pub struct PortConfig {
    /// The VM's name.
    pub name: String,
    /// The guest interface's MAC.
    pub mac: Mac,
    /// IPv4 and IPv6 addresses with their prefixes.
    pub addresses: Vec<Cidr>,
    /// Whether broadcast and multicast frames are delivered to this port.
    pub receive_broadcast: bool,
    /// Prefixes this VM routes for.
    pub routes: Vec<Cidr>,
}

/// Whether `name` is usable as a VM name in a file name: 1-64 characters from
/// `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl TryFrom<PortFile> for PortConfig {
    type Error = String;
    fn try_from(f: PortFile) -> Result<Self, String> {
        if !valid_vm_name(&f.name) {
            return Err(format!(
                "name {:?} is not a valid VM name (1-64 characters from A-Z a-z 0-9 _ . -)",
                f.name
            ));
        }
        let mac = parse_mac(&f.mac)
            .ok_or_else(|| format!("mac {:?} is not a MAC such as 52:54:00:12:34:56", f.mac))?;
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(format!("mac {} must be a unicast, non-zero MAC", f.mac));
        }
        let mut addresses = Vec::new();
        for a in &f.addresses {
            let c: Cidr = a.parse().map_err(|e| format!("addresses: {e}"))?;
            if !c.addr.is_ipv4() {
                return Err(format!("addresses: {a:?} is IPv6; put it in v6Addresses"));
            }
            addresses.push(c);
        }
        for a in &f.v6_addresses {
            let c: Cidr = a.parse().map_err(|e| format!("v6Addresses: {e}"))?;
            if c.addr.is_ipv4() {
                return Err(format!("v6Addresses: {a:?} is IPv4; put it in addresses"));
            }
            addresses.push(c);
        }
        for c in &addresses {
            if c.addr.is_unspecified() || c.addr.is_multicast() || is_v4_broadcast(c.addr) {
                return Err(format!("address {c} cannot be assigned to a VM"));
            }
        }
        let mut routes = Vec::new();
        for r in &f.routes {
            routes.push(r.parse().map_err(|e| format!("routes: {e}"))?);
        }
        Ok(PortConfig {
            name: f.name,
            mac,
            addresses,
            receive_broadcast: f.receive_broadcast,
            routes,
        })
    }
}

fn is_v4_broadcast(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.is_broadcast())
}

impl From<PortConfig> for PortFile {
    fn from(c: PortConfig) -> Self {
        PortFile {
            name: c.name,
            mac: format_mac(c.mac),
            addresses: c
                .addresses
                .iter()
                .filter(|a| a.addr.is_ipv4())
                .map(ToString::to_string)
                .collect(),
            v6_addresses: c
                .addresses
                .iter()
                .filter(|a| a.addr.is_ipv6())
                .map(ToString::to_string)
                .collect(),
            receive_broadcast: c.receive_broadcast,
            routes: c.routes.iter().map(ToString::to_string).collect(),
        }
    }
}

impl PortConfig {
    /// Parses the text of a port file; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, PortConfigError> {
        let invalid = |message: String| PortConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        PortFile::from_toml(text)
            .map_err(invalid)
            .and_then(|f| PortConfig::try_from(f).map_err(invalid))
    }

    /// Reads and validates `<dir>/<vm>.port`, checking that `name` matches the file name.
    pub fn load(path: &Path) -> Result<Self, PortConfigError> {
        Self::load_as(path, &path.display().to_string())
    }

    /// [`PortConfig::load`], naming the file `shown` in errors (the host's path of a file the
    /// sandboxed main process reads under `/config`).
    pub fn load_as(path: &Path, shown: &str) -> Result<Self, PortConfigError> {
        let shown = shown.to_owned();
        let meta = std::fs::metadata(path).map_err(|source| PortConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        if meta.len() > MAX_PORT_FILE {
            return Err(PortConfigError::TooLarge(shown));
        }
        let text = std::fs::read_to_string(path).map_err(|source| PortConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let cfg = Self::parse(&text, &shown)?;
        let stem = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(PORT_SUFFIX));
        if stem != Some(cfg.name.as_str()) {
            return Err(PortConfigError::Invalid {
                path: shown,
                message: format!(
                    "name {:?} does not match the file name; the runtime writes <name>.port",
                    cfg.name
                ),
            });
        }
        Ok(cfg)
    }

    /// Renders the port file text (what the runtime writes).
    pub fn to_toml(&self) -> String {
        PortFile::from(self.clone()).to_toml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "banking"
mac = "52:54:00:12:34:56"
addresses = ["10.0.0.2/24"]
v6Addresses = ["fd00::2/64"]
receiveBroadcast = true
routes = ["192.168.1.0/24", "::/0"]
"#;

    #[test]
    fn test_port_config_parse_reads_all_fields() {
        let c = PortConfig::parse(GOOD, "banking.port").unwrap();
        assert_eq!(c.name, "banking");
        assert_eq!(c.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(c.addresses.len(), 2);
        assert!(c.receive_broadcast);
        assert_eq!(c.routes.len(), 2);
    }

    #[test]
    fn test_port_config_roundtrips_through_toml() {
        let c = PortConfig::parse(GOOD, "x").unwrap();
        let again = PortConfig::parse(&c.to_toml(), "x").unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn test_port_config_minimal_file_defaults() {
        let c = PortConfig::parse("name = \"a\"\nmac = \"02:00:00:00:00:01\"\n", "a.port").unwrap();
        assert!(c.addresses.is_empty());
        assert!(!c.receive_broadcast);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn test_port_config_rejects_unknown_key_and_bad_values() {
        let bad = [
            "name = \"a\"\nmac = \"02:00:00:00:00:01\"\nrecieveBroadcast = true\n",
            "name = \"a\"\nmac = \"03:00:00:00:00:01\"\n",
            "name = \"a\"\nmac = \"00:00:00:00:00:00\"\n",
            "name = \"a\"\nmac = \"nope\"\n",
            "name = \"../x\"\nmac = \"02:00:00:00:00:01\"\n",
            "name = \"a\"\nmac = \"02:00:00:00:00:01\"\naddresses = [\"fd00::1/64\"]\n",
            "name = \"a\"\nmac = \"02:00:00:00:00:01\"\nv6Addresses = [\"10.0.0.1/24\"]\n",
            "name = \"a\"\nmac = \"02:00:00:00:00:01\"\naddresses = [\"10.0.0.1\"]\n",
            "name = \"a\"\nmac = \"02:00:00:00:00:01\"\naddresses = [\"255.255.255.255/32\"]\n",
            "name = \"a\"\nmac = \"02:00:00:00:00:01\"\nroutes = [\"x/1\"]\n",
            "not toml at all [",
        ];
        for text in bad {
            assert!(
                PortConfig::parse(text, "a.port").is_err(),
                "accepted: {text}"
            );
        }
    }

    #[test]
    fn test_port_config_load_requires_matching_file_name() {
        let dir = std::env::temp_dir().join(format!("vm-switch-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("other.port");
        std::fs::write(&path, GOOD).unwrap();
        let err = PortConfig::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("does not match the file name"),
            "{err}"
        );
        let path = dir.join("banking.port");
        std::fs::write(&path, GOOD).unwrap();
        assert!(PortConfig::load(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_valid_vm_name() {
        assert!(valid_vm_name("sys-net_1.a"));
        assert!(!valid_vm_name(""));
        assert!(!valid_vm_name(".hidden"));
        assert!(!valid_vm_name("a/b"));
        assert!(!valid_vm_name(&"x".repeat(65)));
    }
}
