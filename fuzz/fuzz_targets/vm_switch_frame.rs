//! Frame parser and forwarding decision of vm-switch on arbitrary guest frames, plus the
//! header edits done on the way (ECN marking, checksum completion) and the egress scheduler;
//! and the offload path: virtio-net header validation (`check_offload`) and software
//! segmentation (`gso::segment`) with their invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_switch::port_file::PortConfig;
use vm_switch::forward::{Decision, Switch, flow_hash};
use vm_switch::frame::{self, Gso, MAX_FRAME, MAX_GSO_FRAME, OffloadCaps, VnetHdr};
use vm_switch::gso;

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
    // Byte 0 bit 7 selects the offload mode: then bytes 1..13 are a virtio-net header and the
    // sender's negotiated offloads, and the rest the frame.
    if data.first().is_some_and(|b| b & 0x80 != 0) && data.len() >= 14 {
        offload(&sw, data);
        return;
    }
    let (ctl, rest) = data.split_at(data.len().min(4));
    let sender = 1 + u32::from(ctl.first().copied().unwrap_or(0) % 3);
    let mut f = rest.to_vec();
    if ctl.get(1).is_some_and(|b| b & 1 == 1) && f.len() >= 12 {
        f[6..12].copy_from_slice(&sw.mac_of(sender).expect("port exists"));
    }
    let _ = frame::parse(&f);
    heads_agree(&sw, sender, &f, None);
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

/// The TX fast path checks and decides on a copied head of a frame and its length
/// (`check_offload_head`, `decide_head`): whatever succeeds there must be what the whole frame
/// gets, with the same destination MAC rewritten into the head.
fn heads_agree(sw: &Switch, sender: u32, f: &[u8], offload: Option<(&VnetHdr, OffloadCaps)>) {
    let max = if offload.is_some() { MAX_GSO_FRAME } else { MAX_FRAME };
    let whole_check = offload.map(|(h, caps)| frame::check_offload(h, f, caps));
    let mut whole = f.to_vec();
    let decision = sw.decide_len(sender, &mut whole, &mut Vec::new(), max);
    for k in [0, 14, 20, 34, 40, 54, 60, 66, 74, 86, 100, 128, 200, 256] {
        let Some(head) = f.get(..k) else { break };
        if let (Some((h, caps)), Some(want)) = (offload, whole_check) {
            if let Ok(o) = frame::check_offload_head(h, head, f.len(), caps) {
                assert_eq!(Ok(o), want, "offload check on a {k}-byte head");
            }
        }
        let mut head = head.to_vec();
        if let Some(to) = sw.decide_head(sender, &mut head, f.len(), max) {
            assert_eq!(decision, Decision::Unicast(to), "decision on a {k}-byte head");
            assert_eq!(head, whole[..k], "rewritten head");
        }
    }
}

/// What the switch's decisions relied on: parse result (addresses, ports, ICMPv6 type).
fn summary(f: &[u8]) -> Option<(frame::EthHeader, frame::L3)> {
    frame::parse(f).ok()
}

fn sum_ok(f: &[u8], l4: usize, v4: bool) -> bool {
    let mut s = if v4 {
        frame::csum_add(frame::csum_add(0, &f[26..34]), &[0, 6])
    } else {
        frame::csum_add(0, &f[22..54])
    };
    s = if v4 {
        frame::csum_add(s, &((f.len() - l4) as u16).to_be_bytes())
    } else {
        frame::csum_add(
            frame::csum_add(s, &((f.len() - l4) as u32).to_be_bytes()),
            &[0, 0, 0, 6],
        )
    };
    frame::csum_fold(frame::csum_add(s, &f[l4..])) == 0
}

fn offload(sw: &Switch, data: &[u8]) {
    let sender = 1 + u32::from(data[0] % 3);
    let caps_bits = data[1];
    let caps = OffloadCaps {
        csum: caps_bits & 1 != 0,
        tso4: caps_bits & 2 != 0,
        tso6: caps_bits & 4 != 0,
        ecn: caps_bits & 8 != 0,
    };
    let mut hb = [0u8; 12];
    hb[..10].copy_from_slice(&data[2..12]);
    let h = VnetHdr::from_bytes(&hb);
    let mut f = data[12..].to_vec();
    if data[0] & 0x40 != 0 && f.len() >= 12 {
        f[6..12].copy_from_slice(&sw.mac_of(sender).expect("port exists"));
    }
    heads_agree(sw, sender, &f, Some((&h, caps)));
    let Ok(off) = frame::check_offload(&h, &f, caps) else {
        return;
    };
    // Whatever was accepted was negotiated, and stays accepted when re-checked by a receiver.
    assert!(off.csum.is_none() || caps.csum);
    assert!(off.gso != Gso::Tcp4 || caps.tso4);
    assert!(off.gso != Gso::Tcp6 || caps.tso6);
    assert!(!off.ecn || caps.ecn);
    assert_eq!(frame::check_offload(&off.to_vnet(), &f, OffloadCaps::ALL), Ok(off));
    if off.gso == Gso::None && f.len() > MAX_FRAME {
        return;
    }
    assert!(f.len() <= MAX_GSO_FRAME || off.gso == Gso::None);
    let before = summary(&f);
    let mut reply = Vec::new();
    let decision = sw.decide_len(sender, &mut f, &mut reply, MAX_GSO_FRAME);
    // Finishing the checksum never changes what the decision was based on.
    if let Some((start, offset)) = off.csum {
        let mut g = f.clone();
        assert!(frame::finish_partial_csum(
            &mut g,
            usize::from(start),
            usize::from(offset)
        ));
        assert_eq!(summary(&g).map(|s| s.1), before.map(|s| s.1), "checksum moved a header");
    }
    if off.gso == Gso::None {
        return;
    }
    let v4 = off.gso == Gso::Tcp4;
    let hl = usize::from(off.hdr_len);
    let l4 = usize::from(off.l4);
    for partial in [false, true] {
        let mut segs = Vec::new();
        assert!(gso::segment(&f, &off, partial, &mut segs), "validated segment splits");
        assert_eq!(segs.len(), (f.len() - hl).div_ceil(usize::from(off.gso_size)));
        let mut payload = Vec::new();
        for s in &mut segs {
            assert!(s.data.len() <= MAX_FRAME, "segment above the MTU");
            assert_eq!(s.csum.is_some(), partial);
            if let Some((start, offset)) = s.csum {
                assert!(frame::finish_partial_csum(
                    &mut s.data,
                    usize::from(start),
                    usize::from(offset)
                ));
            }
            assert!(sum_ok(&s.data, l4, v4), "segment checksum");
            if v4 {
                assert_eq!(frame::csum_fold(frame::csum_add(0, &s.data[14..l4])), 0);
            }
            // Each segment is the same flow to the same place.
            let mut reply = Vec::new();
            let mut d = s.data.clone();
            assert_eq!(sw.decide(sender, &mut d, &mut reply), decision);
            payload.extend_from_slice(&s.data[hl..]);
        }
        assert_eq!(payload, f[hl..], "payload reassembles");
    }
}
