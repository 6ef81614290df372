//! vm-switch port files, `<vm-switch>/<net>/<vm>.port`: the agreement between their writer (the
//! vmsilo runtime) and their reader (vm-switch), written once.
//!
//! The format is TOML with the field names of the vmsilo interface options:
//!
//! ```toml
//! name = "banking"                 # VM name; must equal the file name without ".port"
//! mac = "52:54:00:12:34:56"         # the guest interface's MAC (unicast)
//! addresses = ["10.0.0.2/24"]      # IPv4 addresses with prefix (may be empty)
//! v6Addresses = ["fd00::2/64"]     # IPv6 addresses with prefix (may be empty)
//! receiveBroadcast = false         # deliver broadcast/multicast to this port
//! routes = ["0.0.0.0/0"]           # prefixes this VM routes for (v4 or v6)
//! ```
//!
//! Unknown keys are errors, so a typo cannot silently change behaviour. [`PortFile`] is the
//! file's shape (strings as written); vm-switch validates it into its own port description
//! (MAC, addresses and routes parsed, the name checked against the file name).
//!
//! The TOML text itself ([`PortFile::to_toml`], [`PortFile::from_toml`]) needs the
//! `port-file` feature; the guest agent, which uses this crate for its wire protocol, does not
//! enable it.

use serde::{Deserialize, Serialize};

/// File name suffix of port files.
pub const PORT_SUFFIX: &str = ".port";
/// Largest port file a reader accepts.
pub const MAX_PORT_FILE: u64 = 64 * 1024;

/// One port file, fields as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortFile {
    /// The VM's name; equals the file name without [`PORT_SUFFIX`].
    pub name: String,
    /// The guest interface's MAC, `52:54:00:12:34:56`.
    pub mac: String,
    /// IPv4 addresses with their prefixes, `10.0.0.2/24`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// IPv6 addresses with their prefixes, `fd00::2/64`.
    #[serde(default)]
    pub v6_addresses: Vec<String>,
    /// Whether broadcast and multicast frames are delivered to this port.
    #[serde(default)]
    pub receive_broadcast: bool,
    /// Prefixes this VM routes for (v4 or v6).
    #[serde(default)]
    pub routes: Vec<String>,
}

#[cfg(feature = "port-file")]
impl PortFile {
    /// The file's text.
    pub fn to_toml(&self) -> String {
        // Strings, string lists and a bool: serialising cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Parses a file's text; the error is TOML's message (what is wrong, where).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }
}

#[cfg(all(test, feature = "port-file"))]
mod tests {
    use super::*;

    #[test]
    fn test_port_file_text_is_the_documented_format() {
        let f = PortFile {
            name: "banking".into(),
            mac: "52:54:00:12:34:56".into(),
            addresses: vec!["10.0.0.2/24".into()],
            v6_addresses: vec!["fd00::2/64".into()],
            receive_broadcast: true,
            routes: vec!["0.0.0.0/0".into()],
        };
        let text = f.to_toml();
        assert_eq!(
            text,
            "name = \"banking\"\nmac = \"52:54:00:12:34:56\"\naddresses = [\"10.0.0.2/24\"]\n\
             v6Addresses = [\"fd00::2/64\"]\nreceiveBroadcast = true\nroutes = [\"0.0.0.0/0\"]\n"
        );
        assert_eq!(PortFile::from_toml(&text), Ok(f));
    }

    #[test]
    fn test_port_file_defaults_and_unknown_keys() {
        let f = PortFile::from_toml("name = \"a\"\nmac = \"02:00:00:00:00:01\"\n").unwrap();
        assert!(f.addresses.is_empty() && f.v6_addresses.is_empty() && f.routes.is_empty());
        assert!(!f.receive_broadcast);
        let err = PortFile::from_toml("name = \"a\"\nmac = \"x\"\nrecieveBroadcast = true\n")
            .unwrap_err();
        assert!(err.contains("recieveBroadcast"), "{err}");
        assert!(
            PortFile::from_toml("name = \"a\"\n").is_err(),
            "mac is required"
        );
    }
}
