//! Frame parser and forwarding decision of vm-switch on arbitrary guest frames, plus the
//! header edits done on the way (ECN marking, checksum completion) and the egress scheduler.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_switch::config::PortConfig;
use vm_switch::forward::{Decision, Switch, flow_hash};
use vm_switch::frame;

fn port(name: &str, mac: [u8; 6], addrs: &[&str], routes: &[&str], bcast: bool) -> PortConfig {
    PortConfig {
        name: name.into(),
        mac,
        addresses: addrs.iter().map(|a| a.parse().expect("valid")).collect(),
        receive_broadcast: bcast,
        routes: routes.iter().map(|a| a.parse().expect("valid")).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut sw = Switch::new();
    sw.upsert(
        1,
        &port(
            "a",
            [0x52, 0x54, 0, 0, 0, 1],
            &["10.0.0.1/24", "fd00::1/64"],
            &[],
            true,
        ),
    );
    sw.upsert(
        2,
        &port(
            "b",
            [0x52, 0x54, 0, 0, 0, 2],
            &["10.0.0.2/24", "fd00::2/64"],
            &[],
            true,
        ),
    );
    sw.upsert(
        3,
        &port(
            "r",
            [0x52, 0x54, 0, 0, 0, 3],
            &["10.0.0.3/24"],
            &["0.0.0.0/0", "::/0"],
            false,
        ),
    );
    // The first two bytes pick the sender and the checksum offsets; the rest is the frame,
    // with the sender's MAC patched in half of the cases so validation gets past the first check.
    let (ctl, rest) = data.split_at(data.len().min(4));
    let sender = 1 + u32::from(ctl.first().copied().unwrap_or(0) % 3);
    let mut f = rest.to_vec();
    if ctl.get(1).is_some_and(|b| b & 1 == 1) && f.len() >= 12 {
        f[6..12].copy_from_slice(&sw.mac_of(sender).expect("port exists"));
    }
    let _ = frame::parse(&f);
    let mut reply = Vec::new();
    match sw.decide(sender, &mut f, &mut reply) {
        Decision::Reply => assert!(frame::parse(&reply).is_ok(), "replies must parse"),
        Decision::Unicast(to) => assert_ne!(to, sender, "never back to the sender"),
        Decision::Broadcast => assert!(sw.broadcast_targets(sender).all(|p| p != sender)),
        Decision::Drop(_) => {}
    }
    let _ = flow_hash(&f, 42);
    let _ = frame::set_ce(&mut f);
    let start = usize::from(ctl.get(2).copied().unwrap_or(0));
    let off = usize::from(ctl.get(3).copied().unwrap_or(0));
    let _ = frame::finish_partial_csum(&mut f, start, off);
});
