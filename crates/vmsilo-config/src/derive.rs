//! Values derived from the configuration rather than written in it: MAC addresses, TAP names,
//! vsock CIDs, the shared home, and the `vmsilo.*` kernel parameters the guest reads.
//!
//! Every function here is deterministic: the same configuration gives the same values on every
//! host and every run, so a plan can be recomputed at any time and still match a running VM.

use std::collections::{BTreeMap, BTreeSet};

use sha1::{Digest, Sha1};

use crate::model::{Interface, InterfaceType, OverlayType, SharedHome, Vm, Vmm};
use crate::net::MacAddr;

/// The uid and gid of the guest's desktop user (`user` in the NixOS guest). Shared homes map
/// this id to the host user's.
pub const GUEST_USER_ID: u32 = 1000;

/// Tag of the shared home directory in the guest.
pub const HOME_TAG: &str = "home";

/// The smallest CID a guest may have (0–2 are the hypervisor, local and host).
pub const MIN_CID: u32 = 3;
/// CIDs are drawn from `MIN_CID..MIN_CID + CID_SPAN` (below 2³¹, far from `VMADDR_CID_ANY`).
pub const CID_SPAN: u32 = 0x7fff_ffff - MIN_CID;

/// The vsock port a QEMU guest's waypipe stream connects to on the host (CID 2): the guest
/// agent passes each `waypipe server` connection there; vhost-device-vsock turns it into a
/// connection to `<vsock socket>_6000`, which leads to `waypipe client`. (The agent's own port
/// is 5000.) The guest learns it from the kernel parameter `vmsilo.waypipe=<port>`.
pub const WAYPIPE_VSOCK_PORT: u32 = 6000;

fn sha1(text: &str) -> [u8; 20] {
    let digest = Sha1::digest(text.as_bytes());
    let mut out = [0u8; 20];
    out.copy_from_slice(&digest);
    out
}

/// The MAC of interface `ifname` of VM `vm` when none is configured: the first six bytes of
/// `SHA1("<vm>-<ifname>")` with the locally-administered bit set and the multicast bit cleared.
pub fn derived_mac(vm: &str, ifname: &str) -> MacAddr {
    let h = sha1(&format!("{vm}-{ifname}"));
    let mut mac = [h[0], h[1], h[2], h[3], h[4], h[5]];
    mac[0] = (mac[0] | 0x02) & 0xfe;
    MacAddr(mac)
}

/// The interface's MAC: the configured one, else [`derived_mac`].
pub fn interface_mac(vm: &str, ifname: &str, iface: &Interface) -> MacAddr {
    iface.mac_address.unwrap_or_else(|| derived_mac(vm, ifname))
}

/// The default TAP name, `<vm>-<index>`, where `index` is the interface's position among the
/// VM's interfaces in name order (as Nix orders attribute names), counting from 0.
pub fn default_tap_name(vm: &str, index: usize) -> String {
    format!("{vm}-{index}")
}

/// One interface of a VM with its derived values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceInfo<'a> {
    /// Guest-visible name.
    pub name: &'a str,
    /// Position in name order.
    pub index: usize,
    /// The configuration.
    pub iface: &'a Interface,
    /// The MAC (configured or derived).
    pub mac: MacAddr,
    /// The host TAP name, for TAP interfaces.
    pub tap_name: Option<String>,
}

/// The VM's interfaces in name order, with MAC and TAP name resolved.
pub fn interfaces(vm: &Vm) -> Vec<IfaceInfo<'_>> {
    vm.network
        .interfaces
        .iter()
        .enumerate()
        .map(|(index, (name, iface))| IfaceInfo {
            name,
            index,
            iface,
            mac: interface_mac(&vm.name, name, iface),
            tap_name: (iface.kind == InterfaceType::Tap).then(|| {
                iface
                    .tap
                    .name
                    .clone()
                    .unwrap_or_else(|| default_tap_name(&vm.name, index))
            }),
        })
        .collect()
}

/// The CID a VM gets unless another VM already has it: derived from SHA1 of the name, so it does
/// not change when other VMs are added or removed (a running VM keeps matching the plan).
pub fn preferred_cid(name: &str) -> u32 {
    let h = sha1(name);
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    MIN_CID + n % CID_SPAN
}

/// A unique CID for each VM name. VMs are taken in name order; one whose preferred CID is taken
/// gets the next free one (wrapping within the range). Collisions are rare (2³¹ values).
pub fn assign_cids<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let sorted: BTreeSet<&str> = names.into_iter().collect();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in sorted {
        let mut cid = preferred_cid(name);
        while used.contains(&cid) {
            cid = if cid >= MIN_CID + CID_SPAN - 1 {
                MIN_CID
            } else {
                cid + 1
            };
        }
        used.insert(cid);
        out.insert(name.to_owned(), cid);
    }
    out
}

/// The host directory shared as the guest's home, if any: `/shared/<vm>` for `true`.
pub fn shared_home_dir(vm: &Vm) -> Option<String> {
    match &vm.shared_home {
        SharedHome::Default => Some(format!("/shared/{}", vm.name)),
        SharedHome::Path(p) => Some(p.clone()),
        SharedHome::Disabled => None,
    }
}

/// The guest device of the qcow2 overlay: the second virtio disk, after the root disk.
pub const OVERLAY_DEVICE: &str = "/dev/vdb";

/// The kernel parameters vmsilo adds for the guest, followed by the VM's own `kernelParams`:
///
/// - per interface (name order): `vmsilo.ifname=<name>,<mac>`, then `vmsilo.addr=<name>,<cidr>`
///   for each IPv4 and IPv6 address, `vmsilo.route=<name>,<dest>,<gateway>` for each IPv4 and
///   IPv6 route, and `vmsilo.dhcp=<name>` when DHCP is on;
/// - `vmsilo.nameserver=<ip>` per nameserver;
/// - `vmsilo.autoshutdown=<seconds>` when auto-shutdown is enabled;
/// - `vmsilo.overlay=tmpfs` or `vmsilo.overlay=qcow2,/dev/vdb`.
///
/// The VMM adds its own (`root=`, `console=`); see [`kernel_cmdline`].
pub fn kernel_params(vm: &Vm) -> Vec<String> {
    let mut p = Vec::new();
    for i in interfaces(vm) {
        p.push(format!("vmsilo.ifname={},{}", i.name, i.mac));
        for a in i.iface.addresses.iter().chain(&i.iface.v6_addresses) {
            p.push(format!("vmsilo.addr={},{a}", i.name));
        }
        for (dest, r) in i.iface.routes.iter().chain(&i.iface.v6_routes) {
            p.push(format!("vmsilo.route={},{dest},{}", i.name, r.via));
        }
        if i.iface.dhcp {
            p.push(format!("vmsilo.dhcp={}", i.name));
        }
    }
    for ns in &vm.network.nameservers {
        p.push(format!("vmsilo.nameserver={ns}"));
    }
    if vm.auto_shutdown.enable {
        p.push(format!("vmsilo.autoshutdown={}", vm.auto_shutdown.after));
    }
    p.push(match vm.root_overlay.kind {
        OverlayType::Tmpfs => "vmsilo.overlay=tmpfs".to_owned(),
        OverlayType::Qcow2 => format!("vmsilo.overlay=qcow2,{OVERLAY_DEVICE}"),
    });
    p.extend(vm.kernel_params.iter().cloned());
    p
}

/// The whole kernel command line the guest sees for this VM (vmsilo's parameters plus what the
/// VMM adds), for the 2048-byte limit.
pub fn kernel_cmdline(vm: &Vm) -> Vec<String> {
    let mut p = vec![
        "root=/dev/vda".to_owned(),
        if vm.root_disk_readonly { "ro" } else { "rw" }.to_owned(),
        "console=ttyS0".to_owned(),
    ];
    if vm.vmm == Vmm::Qemu {
        p.push("panic=-1".to_owned());
    }
    p.extend(kernel_params(vm));
    if vm.vmm == Vmm::Qemu && vm.gpu.enabled {
        // The guest agent wraps commands in `waypipe server` and carries its stream here.
        p.push(format!("vmsilo.waypipe={WAYPIPE_VSOCK_PORT}"));
    }
    p
}

/// The x86 kernel command line limit: 2048 bytes including the terminating NUL.
pub const CMDLINE_MAX: usize = 2047;

/// Length of a command line made of `params` joined by spaces.
pub fn cmdline_len<S: AsRef<str>>(params: &[S]) -> usize {
    let text: usize = params.iter().map(|s| s.as_ref().len()).sum();
    text + params.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Format, parse_str};

    fn vm_of(toml: &str) -> Vm {
        let cfg = parse_str(&format!("user = \"u\"\n{toml}"), Format::Toml).expect("parses");
        cfg.nixos_vms.into_iter().next().expect("one VM")
    }

    #[test]
    fn test_derived_mac_is_sha1_prefix_local_unicast() {
        // python3: hashlib.sha1(b"banking-wan").hexdigest()[:12] == "3fe20c269e86"
        assert_eq!(
            derived_mac("banking", "wan").to_string(),
            "3e:e2:0c:26:9e:86"
        );
        // "shopping-wan" → 47cae1ad6889: bit 1 already set, bit 0 cleared.
        assert_eq!(
            derived_mac("shopping", "wan").to_string(),
            "46:ca:e1:ad:68:89"
        );
        let m = derived_mac("a", "b");
        assert!(m.is_local());
        assert!(!m.is_multicast());
    }

    #[test]
    fn test_configured_mac_wins() {
        let vm = vm_of(
            "[[nixosVms]]\nname = \"v\"\n[nixosVms.network.interfaces.wan]\ntype = \"tap\"\nmacAddress = \"52:54:00:00:00:01\"\n",
        );
        assert_eq!(interfaces(&vm)[0].mac.to_string(), "52:54:00:00:00:01");
    }

    #[test]
    fn test_tap_names_follow_name_order() {
        let vm = vm_of(
            "[[nixosVms]]\nname = \"v\"\n\
             [nixosVms.network.interfaces.zeta]\ntype = \"tap\"\n\
             [nixosVms.network.interfaces.alpha]\ntype = \"tap\"\n\
             [nixosVms.network.interfaces.mid]\ntype = \"tap\"\ntap.name = \"custom0\"\n",
        );
        let names: Vec<(&str, Option<String>)> = interfaces(&vm)
            .into_iter()
            .map(|i| (i.name, i.tap_name))
            .collect();
        assert_eq!(
            names,
            [
                ("alpha", Some("v-0".to_owned())),
                ("mid", Some("custom0".to_owned())),
                ("zeta", Some("v-2".to_owned())),
            ]
        );
        assert_eq!(default_tap_name("banking", 0), "banking-0");
    }

    #[test]
    fn test_vm_switch_interfaces_have_no_tap_name() {
        let vm = vm_of(
            "[[nixosVms]]\nname = \"v\"\n[nixosVms.network.interfaces.lan]\nvmNetwork.name = \"n\"\n",
        );
        assert_eq!(interfaces(&vm)[0].tap_name, None);
    }

    #[test]
    fn test_cids_are_stable_unique_and_at_least_3() {
        // python3: 3 + int.from_bytes(sha1(b"banking").digest()[:4], "big") % (0x7fffffff - 3)
        assert_eq!(preferred_cid("banking"), 751_741_429);
        let a = assign_cids(["banking", "shopping", "personal"]);
        let b = assign_cids(["personal", "banking"]);
        assert_eq!(a["banking"], b["banking"]);
        assert_eq!(a["personal"], b["personal"]);
        assert!(a.values().all(|c| *c >= MIN_CID && *c < MIN_CID + CID_SPAN));
        let distinct: BTreeSet<u32> = a.values().copied().collect();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn test_cid_collisions_probe_to_the_next_free_value() {
        // Same name twice collapses; distinct names never share a CID even if forced together.
        let many: Vec<String> = (0..2000).map(|i| format!("vm{i}")).collect();
        let cids = assign_cids(many.iter().map(String::as_str));
        let distinct: BTreeSet<u32> = cids.values().copied().collect();
        assert_eq!(distinct.len(), 2000);
    }

    #[test]
    fn test_shared_home_dir() {
        let mut vm = vm_of("[[nixosVms]]\nname = \"v\"\n");
        assert_eq!(shared_home_dir(&vm).as_deref(), Some("/shared/v"));
        vm.shared_home = SharedHome::Path("/home/u/vm".into());
        assert_eq!(shared_home_dir(&vm).as_deref(), Some("/home/u/vm"));
        vm.shared_home = SharedHome::Disabled;
        assert_eq!(shared_home_dir(&vm), None);
    }

    #[test]
    fn test_kernel_params_for_interfaces_dns_autoshutdown_overlay() {
        let vm = vm_of(
            r#"[[nixosVms]]
name = "banking"
kernelParams = ["quiet"]
autoShutdown = { enable = true, after = 120 }
network.nameservers = ["1.1.1.1", "2606:4700:4700::1111"]
[nixosVms.network.interfaces.wan]
type = "tap"
addresses = ["10.0.0.1/24"]
v6Addresses = ["fd00::1/64"]
routes."0.0.0.0/0".via = "10.0.0.254"
v6Routes."::/0".via = "fd00::fe"
dhcp = true
"#,
        );
        assert_eq!(
            kernel_params(&vm),
            [
                "vmsilo.ifname=wan,3e:e2:0c:26:9e:86",
                "vmsilo.addr=wan,10.0.0.1/24",
                "vmsilo.addr=wan,fd00::1/64",
                "vmsilo.route=wan,0.0.0.0/0,10.0.0.254",
                "vmsilo.route=wan,::/0,fd00::fe",
                "vmsilo.dhcp=wan",
                "vmsilo.nameserver=1.1.1.1",
                "vmsilo.nameserver=2606:4700:4700::1111",
                "vmsilo.autoshutdown=120",
                "vmsilo.overlay=qcow2,/dev/vdb",
                "quiet",
            ]
        );
    }

    #[test]
    fn test_kernel_params_tmpfs_overlay_no_autoshutdown() {
        let vm = vm_of("[[nixosVms]]\nname = \"v\"\nrootOverlay.type = \"tmpfs\"\n");
        assert_eq!(kernel_params(&vm), ["vmsilo.overlay=tmpfs"]);
    }

    #[test]
    fn test_cmdline_len() {
        assert_eq!(cmdline_len(&["ab", "c"]), 4);
        assert_eq!(cmdline_len::<&str>(&[]), 0);
    }
}
