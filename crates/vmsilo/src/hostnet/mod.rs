//! Host networking on hosts without the NixOS module (sans-IO): what `vmsilo net up` and
//! `vmsilo net down` change, computed from the configuration, the observed kernel state and the
//! record of what an earlier `up` changed.
//!
//! The NixOS module does the same with `networking.interfaces`, `networking.bridges` and
//! `networking.nat`; elsewhere `vmsilo-net.service` runs `vmsilo net up` (ExecStart) and
//! `vmsilo net down` (ExecStop). Per TAP interface of every VM:
//! - a persistent TAP (`tap.name`, default `<vm>-<index>`) owned by the configured user, up;
//! - `tap.hostAddress` on it, or membership of the existing bridge `tap.bridge`;
//!
//! and with `hostNetworking.nat.enable`: IPv4 forwarding on, and masquerading of the IPv4
//! networks of the `hostAddress`es out of `hostNetworking.nat.interface`, in the nftables table
//! `inet vmsilo`, which vmsilo owns whole.
//!
//! [`plan_up`] is idempotent (the second `up` plans only the same nftables table again, one
//! transaction) and reconciles: what the record
//! says an earlier `up` changed and the configuration no longer asks for is undone first.
//! [`plan_down`] undoes exactly what the record lists, newest first, so a TAP, an address or
//! a bridge membership that existed before vmsilo, a pre-existing bridge, and forwarding that
//! was already on are left as they were. The thin I/O around these functions is in [`io`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;
use vmsilo_config::derive;
use vmsilo_config::net::Cidr;
use vmsilo_config::{Config, Vm};

pub mod check;
pub mod io;

/// The nftables table vmsilo owns (family `inet`).
pub const NFT_TABLE: &str = "vmsilo";

/// One TAP the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTap {
    /// The VM.
    pub vm: String,
    /// The guest-visible interface name (for messages: `network.interfaces.<iface>`).
    pub iface: String,
    /// The host TAP name.
    pub name: String,
    /// `tap.hostAddress`.
    pub host_address: Option<Cidr>,
    /// `tap.bridge`.
    pub bridge: Option<String>,
}

/// NAT as the configuration asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredNat {
    /// The external interface.
    pub interface: String,
    /// The IPv4 networks masqueraded (those of the IPv4 `hostAddress`es), sorted, unique.
    pub internal: Vec<Cidr>,
}

/// What the configuration asks of the host's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The configured user's uid, owner of the TAPs.
    pub uid: u32,
    /// The configured user's name (for messages).
    pub user: String,
    /// The TAPs.
    pub taps: Vec<DesiredTap>,
    /// NAT, when enabled.
    pub nat: Option<DesiredNat>,
}

/// The TAPs a VM needs, in interface order.
pub fn vm_taps(vm: &Vm) -> Vec<DesiredTap> {
    derive::interfaces(vm)
        .into_iter()
        .filter_map(|i| {
            i.tap_name.map(|name| DesiredTap {
                vm: vm.name.clone(),
                iface: i.name.to_owned(),
                name,
                host_address: i.iface.tap.host_address,
                bridge: i.iface.tap.bridge.clone(),
            })
        })
        .collect()
}

/// Whether the configuration asks anything of the host's network (TAPs or NAT).
pub fn needed(cfg: &Config) -> bool {
    cfg.enable
        && (cfg.host_networking.nat.enable || cfg.nixos_vms.iter().any(|v| !vm_taps(v).is_empty()))
}

/// What `cfg` asks of the host's network, with the configured user's uid.
pub fn desired(cfg: &Config, uid: u32) -> Desired {
    let taps: Vec<DesiredTap> = if cfg.enable {
        cfg.nixos_vms.iter().flat_map(vm_taps).collect()
    } else {
        Vec::new()
    };
    let nat = (cfg.enable && cfg.host_networking.nat.enable).then(|| {
        let internal: BTreeSet<Cidr> = taps
            .iter()
            .filter_map(|t| t.host_address)
            .filter(Cidr::is_ipv4)
            .map(|c| c.network())
            .collect();
        DesiredNat {
            interface: cfg.host_networking.nat.interface.clone(),
            internal: internal.into_iter().collect(),
        }
    });
    Desired {
        uid,
        user: cfg.user.clone(),
        taps,
        nat,
    }
}

/// What kind of interface a link is, as far as planning cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A TAP (tun driver in TAP mode).
    Tap,
    /// A TUN (tun driver in TUN mode).
    Tun,
    /// A bridge.
    Bridge,
    /// Anything else, with the kernel's kind if it has one (`veth`, `dummy`; none for a NIC).
    Other(Option<String>),
}

impl LinkKind {
    fn describe(&self) -> String {
        match self {
            LinkKind::Tap => "a TAP".into(),
            LinkKind::Tun => "a TUN device".into(),
            LinkKind::Bridge => "a bridge".into(),
            LinkKind::Other(Some(k)) => format!("a {k} interface"),
            LinkKind::Other(None) => "a network device".into(),
        }
    }
}

/// One observed network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Kind.
    pub kind: LinkKind,
    /// For TUN/TAP devices: the owner uid, if one is set.
    pub owner: Option<u32>,
    /// The index of the link's controller (bridge), if any.
    pub master: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Its addresses.
    pub addresses: Vec<Cidr>,
}

/// The kernel state planning looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Interfaces by name.
    pub links: BTreeMap<String, Link>,
    /// `net.ipv4.ip_forward`.
    pub ip_forward: bool,
}

impl Observed {
    fn name_of(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|(_, l)| l.index == index)
            .map(|(n, _)| n.as_str())
    }
}

/// One change `up` made, kept in the record so that `down` (or a later `up` whose
/// configuration no longer asks for it) undoes exactly that.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "change")]
pub enum Change {
    /// Created this TAP (deleting it undoes the rest of its changes too).
    CreatedTap {
        /// The TAP.
        name: String,
    },
    /// Brought a link that existed before up.
    SetUp {
        /// The link.
        link: String,
    },
    /// Added an address to a link.
    AddedAddress {
        /// The link.
        link: String,
        /// The address.
        address: String,
    },
    /// Made a link a port of a bridge.
    SetMaster {
        /// The link.
        link: String,
        /// The bridge.
        bridge: String,
    },
    /// Turned `net.ipv4.ip_forward` on (it was off).
    EnabledForwarding,
    /// Wrote the nftables table `inet vmsilo`.
    NftTable,
}

/// Version of the record file.
pub const RECORD_VERSION: u32 = 1;

/// What `up` changed, in order (`<run>/net.json`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The changes, oldest first.
    pub changes: Vec<Change>,
}

impl Record {
    fn created(&self, name: &str) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c, Change::CreatedTap { name: n } if n == name))
    }
}

/// One operation on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a persistent TAP owned by `uid`.
    CreateTap {
        /// Its name.
        name: String,
        /// Its owner.
        uid: u32,
    },
    /// Delete a link.
    DeleteLink {
        /// Its name.
        name: String,
    },
    /// Bring a link up.
    SetUp {
        /// The link.
        link: String,
    },
    /// Bring a link down.
    SetDown {
        /// The link.
        link: String,
    },
    /// Add an address.
    AddAddress {
        /// The link.
        link: String,
        /// The address.
        address: Cidr,
    },
    /// Remove an address.
    DelAddress {
        /// The link.
        link: String,
        /// The address.
        address: Cidr,
    },
    /// Make a link a port of a bridge.
    SetMaster {
        /// The link.
        link: String,
        /// The bridge.
        bridge: String,
    },
    /// Take a link out of its bridge.
    NoMaster {
        /// The link.
        link: String,
    },
    /// Set `net.ipv4.ip_forward`.
    SetForwarding(bool),
    /// Run an nftables JSON batch (`nft -j -f -`).
    Nft(serde_json::Value),
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::CreateTap { name, uid } => write!(f, "create TAP {name} owned by uid {uid}"),
            Op::DeleteLink { name } => write!(f, "delete {name}"),
            Op::SetUp { link } => write!(f, "bring {link} up"),
            Op::SetDown { link } => write!(f, "bring {link} down"),
            Op::AddAddress { link, address } => write!(f, "add {address} to {link}"),
            Op::DelAddress { link, address } => write!(f, "remove {address} from {link}"),
            Op::SetMaster { link, bridge } => write!(f, "add {link} to bridge {bridge}"),
            Op::NoMaster { link } => write!(f, "take {link} out of its bridge"),
            Op::SetForwarding(on) => {
                write!(f, "set net.ipv4.ip_forward = {}", u8::from(*on))
            }
            Op::Nft(v) => write!(f, "nft -j -f - <<< {v}"),
        }
    }
}

/// What to do, and the record once done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The operations, in order.
    pub ops: Vec<Op>,
    /// The record to keep once they all succeeded.
    pub record: Record,
}

/// The nftables batch that (re)writes the table `inet vmsilo`: created if missing, emptied,
/// then one NAT chain masquerading `internal` out of `interface`. One transaction.
pub fn nft_up(nat: &DesiredNat) -> serde_json::Value {
    let table = json!({"family": "inet", "name": NFT_TABLE});
    let mut cmds = vec![
        json!({"add": {"table": table}}),
        json!({"flush": {"table": table}}),
        json!({"add": {"chain": {
            "family": "inet", "table": NFT_TABLE, "name": "postrouting",
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"
        }}}),
    ];
    if !nat.internal.is_empty() {
        let prefixes: Vec<serde_json::Value> = nat
            .internal
            .iter()
            .map(|c| json!({"prefix": {"addr": c.addr.to_string(), "len": c.prefix}}))
            .collect();
        cmds.push(json!({"add": {"rule": {
            "family": "inet", "table": NFT_TABLE, "chain": "postrouting",
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                           "right": nat.interface}},
                {"match": {"op": "==",
                           "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"set": prefixes}}},
                {"masquerade": null}
            ]
        }}}));
    }
    json!({"nftables": cmds})
}

/// The nftables batch that deletes the table `inet vmsilo` whether or not it exists (adding
/// an existing table is a no-op, so the delete never fails for a missing one).
pub fn nft_down() -> serde_json::Value {
    let table = json!({"family": "inet", "name": NFT_TABLE});
    json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
}

fn at(t: &DesiredTap, field: &str) -> String {
    format!("VM {:?}: network.interfaces.{}.{field}", t.vm, t.iface)
}

/// The operations that bring the host to `desired`, or every reason it cannot (nothing is
/// changed then). `record` is what earlier `up`s changed.
pub fn plan_up(desired: &Desired, obs: &Observed, record: &Record) -> Result<Plan, Vec<String>> {
    let mut errors = Vec::new();
    let mut ops = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    let keep_or_add = |changes: &mut Vec<Change>, c: Change| {
        if !changes.contains(&c) {
            changes.push(c);
        }
    };
    for t in &desired.taps {
        let existing = obs.links.get(&t.name);
        let ours = record.created(&t.name);
        match existing {
            None => {
                ops.push(Op::CreateTap {
                    name: t.name.clone(),
                    uid: desired.uid,
                });
                ops.push(Op::SetUp {
                    link: t.name.clone(),
                });
                keep_or_add(
                    &mut changes,
                    Change::CreatedTap {
                        name: t.name.clone(),
                    },
                );
            }
            Some(l) => {
                if l.kind != LinkKind::Tap {
                    errors.push(format!(
                        "{}: {:?} exists and is {}, not a TAP: choose another tap.name, or \
                         remove that interface",
                        at(t, "tap.name"),
                        t.name,
                        l.kind.describe()
                    ));
                    continue;
                }
                if l.owner != Some(desired.uid) {
                    let who = l
                        .owner
                        .map(|u| format!("uid {u}"))
                        .unwrap_or_else(|| "no user".into());
                    errors.push(format!(
                        "{}: the TAP {:?} exists and is owned by {who}, not by {:?} (uid {}): \
                         delete it (ip link delete {}) so that vmsilo creates it, or choose \
                         another tap.name",
                        at(t, "tap.name"),
                        t.name,
                        desired.user,
                        desired.uid,
                        t.name
                    ));
                    continue;
                }
                if ours {
                    keep_or_add(
                        &mut changes,
                        Change::CreatedTap {
                            name: t.name.clone(),
                        },
                    );
                }
                let set_up = Change::SetUp {
                    link: t.name.clone(),
                };
                if !l.up {
                    ops.push(Op::SetUp {
                        link: t.name.clone(),
                    });
                    if !ours {
                        keep_or_add(&mut changes, set_up);
                    }
                } else if record.changes.contains(&set_up) {
                    keep_or_add(&mut changes, set_up);
                }
            }
        }
        if let Some(addr) = t.host_address {
            let present = existing.is_some_and(|l| l.addresses.contains(&addr));
            let c = Change::AddedAddress {
                link: t.name.clone(),
                address: addr.to_string(),
            };
            if !present {
                ops.push(Op::AddAddress {
                    link: t.name.clone(),
                    address: addr,
                });
                keep_or_add(&mut changes, c);
            } else if record.changes.contains(&c) {
                keep_or_add(&mut changes, c);
            }
        }
        if let Some(bridge) = &t.bridge {
            let Some(b) = obs.links.get(bridge) else {
                errors.push(format!(
                    "{}: bridge {bridge:?} does not exist; create it or remove the option",
                    at(t, "tap.bridge")
                ));
                continue;
            };
            if b.kind != LinkKind::Bridge {
                errors.push(format!(
                    "{}: {bridge:?} is {}, not a bridge; name a bridge or remove the option",
                    at(t, "tap.bridge"),
                    b.kind.describe()
                ));
                continue;
            }
            let c = Change::SetMaster {
                link: t.name.clone(),
                bridge: bridge.clone(),
            };
            match existing.and_then(|l| l.master) {
                Some(m) if m == b.index => {
                    if record.changes.contains(&c) {
                        keep_or_add(&mut changes, c);
                    }
                }
                Some(m) => {
                    let other = obs.name_of(m).unwrap_or("another bridge");
                    errors.push(format!(
                        "{}: the TAP {:?} is already a port of {other:?}: take it out \
                         (ip link set {} nomaster) or choose another tap.name",
                        at(t, "tap.bridge"),
                        t.name,
                        t.name
                    ));
                    continue;
                }
                None => {
                    ops.push(Op::SetMaster {
                        link: t.name.clone(),
                        bridge: bridge.clone(),
                    });
                    keep_or_add(&mut changes, c);
                }
            }
        }
    }
    if let Some(nat) = &desired.nat {
        if !obs.ip_forward {
            ops.push(Op::SetForwarding(true));
            keep_or_add(&mut changes, Change::EnabledForwarding);
        } else if record.changes.contains(&Change::EnabledForwarding) {
            keep_or_add(&mut changes, Change::EnabledForwarding);
        }
        ops.push(Op::Nft(nft_up(nat)));
        keep_or_add(&mut changes, Change::NftTable);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // What earlier runs changed and this configuration no longer asks for goes first (an
    // address moving from one TAP to another must leave the first before joining the second).
    let stale: Vec<Change> = record
        .changes
        .iter()
        .filter(|c| !changes.contains(c))
        .cloned()
        .collect();
    let mut all = undo(&stale, obs);
    all.extend(ops);
    Ok(Plan {
        ops: all,
        record: Record {
            version: RECORD_VERSION,
            changes,
        },
    })
}

/// The operations undoing `changes` (newest first), skipping what is already gone: changes on
/// a TAP that is deleted go with it.
fn undo(changes: &[Change], obs: &Observed) -> Vec<Op> {
    let deleted: BTreeSet<&str> = changes
        .iter()
        .filter_map(|c| match c {
            Change::CreatedTap { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let live = |link: &str| obs.links.contains_key(link) && !deleted.contains(link);
    let mut ops = Vec::new();
    for c in changes.iter().rev() {
        match c {
            Change::CreatedTap { name } => {
                if obs.links.get(name).is_some_and(|l| l.kind == LinkKind::Tap) {
                    ops.push(Op::DeleteLink { name: name.clone() });
                }
            }
            Change::SetUp { link } => {
                if live(link) {
                    ops.push(Op::SetDown { link: link.clone() });
                }
            }
            Change::AddedAddress { link, address } => {
                if let Ok(a) = address.parse::<Cidr>()
                    && live(link)
                    && obs.links[link].addresses.contains(&a)
                {
                    ops.push(Op::DelAddress {
                        link: link.clone(),
                        address: a,
                    });
                }
            }
            Change::SetMaster { link, bridge } => {
                let in_bridge = obs.links.get(bridge).map(|b| b.index);
                if live(link) && in_bridge.is_some() && obs.links[link].master == in_bridge {
                    ops.push(Op::NoMaster { link: link.clone() });
                }
            }
            Change::EnabledForwarding => {
                if obs.ip_forward {
                    ops.push(Op::SetForwarding(false));
                }
            }
            Change::NftTable => ops.push(Op::Nft(nft_down())),
        }
    }
    ops
}

/// The operations undoing everything `record` lists; the record is empty afterwards.
pub fn plan_down(obs: &Observed, record: &Record) -> Plan {
    Plan {
        ops: undo(&record.changes, obs),
        record: Record {
            version: RECORD_VERSION,
            changes: Vec::new(),
        },
    }
}

/// The inverse of one operation, for rolling back a failed `up`: `None` for what needs none
/// (the nftables batch is one transaction and comes last, so nothing after it can fail; a
/// deleted link cannot be brought back).
pub fn inverse(op: &Op, was_forwarding: bool) -> Option<Op> {
    Some(match op {
        Op::CreateTap { name, .. } => Op::DeleteLink { name: name.clone() },
        Op::SetUp { link } => Op::SetDown { link: link.clone() },
        Op::AddAddress { link, address } => Op::DelAddress {
            link: link.clone(),
            address: *address,
        },
        Op::SetMaster { link, .. } => Op::NoMaster { link: link.clone() },
        Op::SetForwarding(_) => Op::SetForwarding(was_forwarding),
        Op::Nft(_)
        | Op::DeleteLink { .. }
        | Op::SetDown { .. }
        | Op::DelAddress { .. }
        | Op::NoMaster { .. } => return None,
    })
}

#[cfg(test)]
mod tests;
