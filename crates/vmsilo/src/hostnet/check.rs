//! What `vmsilo check` says about the host where vmsilo sets it up itself (no NixOS module):
//! TAP interfaces, bridges, NAT and PCI passthrough that cannot work here. [`problems`] is
//! sans-IO over [`HostFacts`]; [`gather`] reads them (rtnetlink for links, which needs no
//! privilege; `/dev/net/tun`; `nft` in PATH; sysfs for PCI).

use std::collections::BTreeMap;
use std::path::Path;

use vmsilo_config::Config;
use vmsilo_config::pci::PciAddress;

use super::{LinkKind, vm_taps};

/// What one isolated PCI device looks like in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PciFact {
    /// `bus/pci/devices/<addr>` is missing.
    Absent,
    /// Present, without `iommu_group` (IOMMU off).
    NoIommuGroup,
    /// Present, in an IOMMU group.
    Ok,
}

/// The host facts the checks look at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// Links by name, `None` when they could not be listed.
    pub links: Option<BTreeMap<String, LinkKind>>,
    /// `/dev/net/tun` exists.
    pub tun: bool,
    /// `nft` is in PATH.
    pub nft: bool,
    /// The isolated devices.
    pub pci: BTreeMap<PciAddress, PciFact>,
    /// `bus/pci/drivers/vfio-pci` exists (the driver is loaded).
    pub vfio_pci: bool,
}

/// Every reason the configuration's TAPs, bridges, NAT or PCI devices cannot work on a host
/// with these facts, with the field it comes from.
pub fn problems(cfg: &Config, facts: &HostFacts) -> Vec<String> {
    let mut out = Vec::new();
    if !cfg.enable {
        return out;
    }
    let mut tun_said = false;
    for vm in &cfg.nixos_vms {
        for t in vm_taps(vm) {
            let at = format!("VM {:?}: network.interfaces.{}", vm.name, t.iface);
            if !facts.tun && !tun_said {
                tun_said = true;
                out.push(format!(
                    "{at}: /dev/net/tun is missing, so vmsilo-net.service cannot create TAPs: \
                     load the tun module (modprobe tun)"
                ));
            }
            if let (Some(bridge), Some(links)) = (&t.bridge, &facts.links) {
                match links.get(bridge) {
                    None => out.push(format!(
                        "{at}.tap.bridge: bridge {bridge:?} does not exist; create it (with \
                         the distribution's network configuration, before vmsilo-net.service \
                         starts) or remove the option"
                    )),
                    Some(LinkKind::Bridge) => {}
                    Some(k) => out.push(format!(
                        "{at}.tap.bridge: {bridge:?} is {}, not a bridge",
                        k.describe()
                    )),
                }
            }
        }
    }
    let nat = &cfg.host_networking.nat;
    if nat.enable {
        if !facts.nft {
            out.push(
                "hostNetworking.nat: nft is not installed, so vmsilo-net.service cannot set up \
                 NAT: install nftables (Debian: apt install nftables)"
                    .to_owned(),
            );
        }
        if let Some(links) = &facts.links
            && !links.contains_key(&nat.interface)
        {
            out.push(format!(
                "hostNetworking.nat.interface: {:?} does not exist on this host: VMs reach \
                 nothing through NAT until it does (check the name: ip link)",
                nat.interface
            ));
        }
    }
    for (n, addr) in cfg.isolated_pci_devices.iter().enumerate() {
        let at = format!("isolatedPciDevices[{n}]");
        match facts.pci.get(addr) {
            Some(PciFact::Absent) => out.push(format!(
                "{at}: PCI device {addr} does not exist on this host (lspci -D lists them)"
            )),
            Some(PciFact::NoIommuGroup) => out.push(format!(
                "{at}: PCI device {addr} has no IOMMU group, so it cannot be passed through: \
                 enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line, \
                 VT-d/AMD-Vi in the firmware)"
            )),
            Some(PciFact::Ok) | None => {}
        }
    }
    let used = cfg.nixos_vms.iter().any(|v| !v.pci_devices.is_empty());
    if used && !facts.vfio_pci {
        out.push(
            "isolatedPciDevices: the vfio-pci driver is not loaded, so VMs with pciDevices \
             cannot start: load it (modprobe vfio-pci) and list it in /etc/modules-load.d/"
                .to_owned(),
        );
    }
    out
}

/// Reads the facts for `cfg` (sysfs under `sys`).
pub fn gather(cfg: &Config, sys: &Path) -> HostFacts {
    let links = super::io::Rtnl::open()
        .and_then(|mut r| r.links())
        .ok()
        .map(|l| l.into_iter().map(|(n, l)| (n, l.kind)).collect());
    let pci = cfg
        .isolated_pci_devices
        .iter()
        .map(|a| {
            let dev = sys.join("bus/pci/devices").join(a.to_string());
            let fact = if std::fs::symlink_metadata(&dev).is_err() {
                PciFact::Absent
            } else if std::fs::symlink_metadata(dev.join("iommu_group")).is_err() {
                PciFact::NoIommuGroup
            } else {
                PciFact::Ok
            };
            (*a, fact)
        })
        .collect();
    HostFacts {
        links,
        tun: Path::new("/dev/net/tun").exists(),
        nft: crate::runtime::checks::find_program("nft").is_some(),
        pci,
        vfio_pci: sys.join("bus/pci/drivers/vfio-pci").is_dir(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
enable = true
user = "alice"
hostNetworking.nat = { enable = true, interface = "eth0" }
isolatedPciDevices = ["01:00.0", "02:00.0"]
[[nixosVms]]
name = "work"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
pciDevices = [{ path = "01:00.0" }]
[nixosVms.network.interfaces.wan]
type = "tap"
tap.bridge = "br0"
"#;

    fn cfg() -> vmsilo_config::ValidConfig {
        vmsilo_config::load_str(CFG, vmsilo_config::Format::Toml).expect("valid")
    }

    fn good() -> HostFacts {
        let a: PciAddress = "01:00.0".parse().expect("pci");
        let b: PciAddress = "02:00.0".parse().expect("pci");
        HostFacts {
            links: Some(BTreeMap::from([
                ("br0".to_owned(), LinkKind::Bridge),
                ("eth0".to_owned(), LinkKind::Other(None)),
            ])),
            tun: true,
            nft: true,
            pci: BTreeMap::from([(a, PciFact::Ok), (b, PciFact::Ok)]),
            vfio_pci: true,
        }
    }

    #[test]
    fn test_a_ready_host_has_no_problems() {
        assert_eq!(problems(&cfg(), &good()), Vec::<String>::new());
    }

    #[test]
    fn test_every_missing_piece_is_named_with_its_option() {
        let a: PciAddress = "01:00.0".parse().expect("pci");
        let b: PciAddress = "02:00.0".parse().expect("pci");
        let facts = HostFacts {
            links: Some(BTreeMap::new()),
            tun: false,
            nft: false,
            pci: BTreeMap::from([(a, PciFact::NoIommuGroup), (b, PciFact::Absent)]),
            vfio_pci: false,
        };
        let p = problems(&cfg(), &facts);
        assert_eq!(p.len(), 7, "{p:#?}");
        assert!(
            p[0].starts_with("VM \"work\": network.interfaces.wan: /dev/net/tun"),
            "{p:#?}"
        );
        assert!(
            p[1].starts_with(
                "VM \"work\": network.interfaces.wan.tap.bridge: bridge \"br0\" does not exist"
            ),
            "{p:#?}"
        );
        assert!(p[2].contains("nft is not installed"), "{p:#?}");
        assert!(
            p[3].starts_with("hostNetworking.nat.interface: \"eth0\""),
            "{p:#?}"
        );
        assert!(p[4].starts_with("isolatedPciDevices[0]: PCI device 0000:01:00.0 has no IOMMU"));
        assert!(p[5].starts_with("isolatedPciDevices[1]: PCI device 0000:02:00.0 does not exist"));
        assert!(p[6].contains("modprobe vfio-pci"), "{p:#?}");
    }

    #[test]
    fn test_unknown_links_are_not_guessed_at() {
        let facts = HostFacts {
            links: None,
            ..good()
        };
        assert!(problems(&cfg(), &facts).is_empty());
    }
}
