//! Unit tests of the host networking planner: configuration + observed state + record in,
//! operations and record out.

use super::*;

fn cfg(text: &str) -> vmsilo_config::ValidConfig {
    vmsilo_config::load_str(text, vmsilo_config::Format::Toml).expect("valid")
}

const NAT: &str = r#"
enable = true
user = "alice"
hostNetworking.nat = { enable = true, interface = "eth0" }
[[nixosVms]]
name = "work"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.wan]
type = "tap"
tap.hostAddress = "10.0.0.254/24"
addresses = ["10.0.0.1/24"]
[[nixosVms]]
name = "lan"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.eth]
type = "tap"
tap.name = "lantap"
tap.bridge = "br0"
"#;

fn tap(index: u32, owner: u32) -> Link {
    Link {
        index,
        kind: LinkKind::Tap,
        owner: Some(owner),
        master: None,
        up: true,
        addresses: Vec::new(),
    }
}

fn bridge(index: u32) -> Link {
    Link {
        index,
        kind: LinkKind::Bridge,
        owner: None,
        master: None,
        up: true,
        addresses: Vec::new(),
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("cidr")
}

fn with_bridge() -> Observed {
    let mut obs = Observed::default();
    obs.links.insert("br0".into(), bridge(2));
    obs
}

/// What the kernel looks like after `ops` ran on `obs` (a tiny model of the kernel, to check
/// that a second `up` plans nothing new and `down` restores the start).
fn apply(obs: &Observed, ops: &[Op]) -> Observed {
    let mut o = obs.clone();
    let mut next = 100;
    for op in ops {
        match op {
            Op::CreateTap { name, uid } => {
                next += 1;
                let mut l = tap(next, *uid);
                l.up = false;
                o.links.insert(name.clone(), l);
            }
            Op::DeleteLink { name } => {
                o.links.remove(name);
            }
            Op::SetUp { link } => o.links.get_mut(link).expect("link").up = true,
            Op::SetDown { link } => o.links.get_mut(link).expect("link").up = false,
            Op::AddAddress { link, address } => {
                o.links
                    .get_mut(link)
                    .expect("link")
                    .addresses
                    .push(*address);
            }
            Op::DelAddress { link, address } => {
                o.links
                    .get_mut(link)
                    .expect("link")
                    .addresses
                    .retain(|a| a != address);
            }
            Op::SetMaster { link, bridge } => {
                let b = o.links[bridge].index;
                o.links.get_mut(link).expect("link").master = Some(b);
            }
            Op::NoMaster { link } => o.links.get_mut(link).expect("link").master = None,
            Op::SetForwarding(on) => o.ip_forward = *on,
            Op::Nft(_) => {}
        }
    }
    o
}

#[test]
fn test_desired_lists_taps_and_nat_networks() {
    let d = desired(&cfg(NAT), 1000);
    let names: Vec<&str> = d.taps.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["work-0", "lantap"]);
    let nat = d.nat.expect("nat");
    assert_eq!(nat.interface, "eth0");
    assert_eq!(nat.internal, vec![cidr("10.0.0.0/24")]);
    assert!(needed(&cfg(NAT)));
}

#[test]
fn test_up_on_a_bare_host_creates_taps_addresses_ports_forwarding_and_nat() {
    let d = desired(&cfg(NAT), 1000);
    let plan = plan_up(&d, &with_bridge(), &Record::default()).expect("plan");
    assert_eq!(
        plan.ops[..7],
        [
            Op::CreateTap {
                name: "work-0".into(),
                uid: 1000
            },
            Op::SetUp {
                link: "work-0".into()
            },
            Op::AddAddress {
                link: "work-0".into(),
                address: cidr("10.0.0.254/24")
            },
            Op::CreateTap {
                name: "lantap".into(),
                uid: 1000
            },
            Op::SetUp {
                link: "lantap".into()
            },
            Op::SetMaster {
                link: "lantap".into(),
                bridge: "br0".into()
            },
            Op::SetForwarding(true),
        ]
    );
    assert_eq!(plan.ops[7], Op::Nft(nft_up(d.nat.as_ref().expect("nat"))));
    assert_eq!(plan.ops.len(), 8);
    assert_eq!(
        plan.record.changes,
        vec![
            Change::CreatedTap {
                name: "work-0".into()
            },
            Change::AddedAddress {
                link: "work-0".into(),
                address: "10.0.0.254/24".into()
            },
            Change::CreatedTap {
                name: "lantap".into()
            },
            Change::SetMaster {
                link: "lantap".into(),
                bridge: "br0".into()
            },
            Change::EnabledForwarding,
            Change::NftTable,
        ]
    );
}

#[test]
fn test_up_twice_is_up_once_and_down_restores_the_start() {
    let d = desired(&cfg(NAT), 1000);
    let start = with_bridge();
    let first = plan_up(&d, &start, &Record::default()).expect("plan");
    let after = apply(&start, &first.ops);
    let second = plan_up(&d, &after, &first.record).expect("plan");
    // Only the nftables table is rewritten (same content, one transaction).
    assert_eq!(
        second.ops,
        vec![Op::Nft(nft_up(d.nat.as_ref().expect("nat")))]
    );
    assert_eq!(second.record, first.record);
    let down = plan_down(&after, &second.record);
    assert_eq!(
        down.ops,
        vec![
            Op::Nft(nft_down()),
            Op::SetForwarding(false),
            Op::DeleteLink {
                name: "lantap".into()
            },
            Op::DeleteLink {
                name: "work-0".into()
            },
        ]
    );
    assert!(down.record.changes.is_empty());
    assert_eq!(apply(&after, &down.ops), start);
    // down twice: the second has nothing to do.
    assert!(
        plan_down(&apply(&after, &down.ops), &down.record)
            .ops
            .is_empty()
    );
}

#[test]
fn test_pre_existing_tap_bridge_and_forwarding_are_left_as_found() {
    let d = desired(&cfg(NAT), 1000);
    let mut start = with_bridge();
    start.ip_forward = true;
    let mut t = tap(7, 1000);
    t.up = false;
    start.links.insert("work-0".into(), t);
    let plan = plan_up(&d, &start, &Record::default()).expect("plan");
    assert!(!plan.ops.contains(&Op::SetForwarding(true)));
    assert!(
        !plan
            .ops
            .iter()
            .any(|o| matches!(o, Op::CreateTap { name, .. } if name == "work-0"))
    );
    let after = apply(&start, &plan.ops);
    let down = plan_down(&after, &plan.record);
    // The TAP vmsilo did not create stays: its address and state are undone, not the TAP.
    assert!(down.ops.contains(&Op::DelAddress {
        link: "work-0".into(),
        address: cidr("10.0.0.254/24")
    }));
    assert!(down.ops.contains(&Op::SetDown {
        link: "work-0".into()
    }));
    assert!(!down.ops.contains(&Op::DeleteLink {
        name: "work-0".into()
    }));
    assert!(!down.ops.contains(&Op::SetForwarding(false)));
    assert!(
        !down
            .ops
            .iter()
            .any(|o| matches!(o, Op::DeleteLink { name } if name == "br0"))
    );
    assert_eq!(apply(&after, &down.ops), start);
}

#[test]
fn test_missing_bridge_is_a_clear_error_and_nothing_is_planned() {
    let d = desired(&cfg(NAT), 1000);
    let errors = plan_up(&d, &Observed::default(), &Record::default()).expect_err("no bridge");
    assert_eq!(
        errors,
        vec![
            "VM \"lan\": network.interfaces.eth.tap.bridge: bridge \"br0\" does not exist; \
             create it or remove the option"
                .to_owned()
        ]
    );
}

#[test]
fn test_bridge_that_is_not_a_bridge_and_foreign_interfaces_are_errors() {
    let d = desired(&cfg(NAT), 1000);
    let mut obs = Observed::default();
    obs.links.insert(
        "br0".into(),
        Link {
            kind: LinkKind::Other(Some("veth".into())),
            ..bridge(2)
        },
    );
    obs.links.insert(
        "work-0".into(),
        Link {
            kind: LinkKind::Other(None),
            ..bridge(3)
        },
    );
    let errors = plan_up(&d, &obs, &Record::default()).expect_err("errors");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[1].contains("\"br0\" is a veth interface, not a bridge"),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("\"work-0\" exists and is a network device, not a TAP"),
        "{errors:?}"
    );
}

#[test]
fn test_tap_of_another_user_or_port_of_another_bridge_is_an_error() {
    let d = desired(&cfg(NAT), 1000);
    let mut obs = with_bridge();
    obs.links.insert("work-0".into(), tap(5, 1001));
    obs.links.insert("br9".into(), bridge(9));
    let mut lantap = tap(6, 1000);
    lantap.master = Some(9);
    obs.links.insert("lantap".into(), lantap);
    let errors = plan_up(&d, &obs, &Record::default()).expect_err("errors");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[1].contains("already a port of \"br9\""),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("owned by uid 1001, not by \"alice\" (uid 1000)"),
        "{errors:?}"
    );
}

#[test]
fn test_up_after_a_configuration_change_undoes_what_is_no_longer_asked_first() {
    let old = desired(&cfg(NAT), 1000);
    let start = with_bridge();
    let first = plan_up(&old, &start, &Record::default()).expect("plan");
    let after = apply(&start, &first.ops);
    // NAT off, the work VM's TAP address moves to 10.0.1.254/24.
    let text = NAT
        .replace(
            "hostNetworking.nat = { enable = true, interface = \"eth0\" }",
            "",
        )
        .replace("10.0.0.254/24", "10.0.1.254/24")
        .replace("10.0.0.1/24", "10.0.1.1/24");
    let new = desired(&cfg(&text), 1000);
    let plan = plan_up(&new, &after, &first.record).expect("plan");
    assert_eq!(
        plan.ops,
        vec![
            Op::Nft(nft_down()),
            Op::SetForwarding(false),
            Op::DelAddress {
                link: "work-0".into(),
                address: cidr("10.0.0.254/24")
            },
            Op::AddAddress {
                link: "work-0".into(),
                address: cidr("10.0.1.254/24")
            },
        ]
    );
    assert!(plan.record.changes.contains(&Change::CreatedTap {
        name: "work-0".into()
    }));
    assert!(!plan.record.changes.contains(&Change::NftTable));
}

#[test]
fn test_removed_vm_tap_is_deleted_by_the_next_up() {
    let d = desired(&cfg(NAT), 1000);
    let start = with_bridge();
    let first = plan_up(&d, &start, &Record::default()).expect("plan");
    let after = apply(&start, &first.ops);
    let mut fewer = d.clone();
    fewer.taps.retain(|t| t.vm != "lan");
    let plan = plan_up(&fewer, &after, &first.record).expect("plan");
    // The deleted TAP takes its bridge membership with it: one operation.
    assert_eq!(
        plan.ops[0],
        Op::DeleteLink {
            name: "lantap".into()
        }
    );
    assert!(!plan.ops.iter().any(|o| matches!(o, Op::NoMaster { .. })));
}

#[test]
fn test_nft_batch_masquerades_the_internal_networks_out_of_the_interface() {
    let nat = DesiredNat {
        interface: "eth0".into(),
        internal: vec![cidr("10.0.0.0/24"), cidr("10.0.1.0/24")],
    };
    let v = nft_up(&nat);
    let cmds = v["nftables"].as_array().expect("array");
    assert_eq!(
        cmds[0],
        json!({"add": {"table": {"family": "inet", "name": "vmsilo"}}})
    );
    assert_eq!(
        cmds[1],
        json!({"flush": {"table": {"family": "inet", "name": "vmsilo"}}})
    );
    assert_eq!(cmds[2]["add"]["chain"]["hook"], "postrouting");
    let expr = &cmds[3]["add"]["rule"]["expr"];
    assert_eq!(expr[0]["match"]["right"], "eth0");
    assert_eq!(
        expr[1]["match"]["right"]["set"][1],
        json!({"prefix": {"addr": "10.0.1.0", "len": 24}})
    );
    assert_eq!(expr[2], json!({"masquerade": null}));
    let down = nft_down();
    assert_eq!(down["nftables"][1]["delete"]["table"]["name"], "vmsilo");
}

#[test]
fn test_record_round_trips_as_json() {
    let r = Record {
        version: RECORD_VERSION,
        changes: vec![
            Change::CreatedTap { name: "a-0".into() },
            Change::AddedAddress {
                link: "a-0".into(),
                address: "10.0.0.254/24".into(),
            },
            Change::EnabledForwarding,
        ],
    };
    let text = serde_json::to_string(&r).expect("json");
    assert!(text.contains("\"change\":\"createdTap\""), "{text}");
    assert_eq!(serde_json::from_str::<Record>(&text).expect("parse"), r);
}

#[test]
fn test_inverse_undoes_each_creating_operation() {
    assert_eq!(
        inverse(
            &Op::CreateTap {
                name: "t".into(),
                uid: 1
            },
            false
        ),
        Some(Op::DeleteLink { name: "t".into() })
    );
    assert_eq!(
        inverse(&Op::SetForwarding(true), false),
        Some(Op::SetForwarding(false))
    );
    assert_eq!(inverse(&Op::DeleteLink { name: "t".into() }, false), None);
}
