//! The IPv6 extension-header walker of vm-switch (`frame::walk_ipv6_ext`) on arbitrary chains,
//! the IPv6 parser around it and the forwarding decision on the result.
//!
//! Input: one control byte (bit 0: multicast or unicast destination), the Next Header of the
//! fixed header, then the payload (the chain and whatever follows it).

#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use vm_switch::port_file::PortConfig;
use vm_switch::forward::{Decision, Switch};
use vm_switch::frame::{self, Fragment, IPPROTO_ICMPV6, L3, MAX_EXT_HEADERS};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

fn port(name: &str, mac: [u8; 6], addrs: &[&str], routes: &[&str]) -> PortConfig {
    PortConfig {
        name: name.into(),
        mac,
        addresses: addrs.iter().map(|a| a.parse().expect("valid")).collect(),
        receive_broadcast: true,
        routes: routes.iter().map(|a| a.parse().expect("valid")).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [ctl, first, payload @ ..] = data else {
        return;
    };
    let (ctl, first) = (*ctl, *first);
    let walked = frame::walk_ipv6_ext(first, payload);
    match walked {
        Ok(up) => {
            assert!(up.offset <= payload.len(), "offset past the payload");
            assert!(
                !frame::is_extension_header(up.proto),
                "chain ends on an extension header"
            );
            // Every header is a multiple of 4 bytes long (8 but for AH), at most 2048.
            assert_eq!(up.offset % 4, 0);
            assert!(up.offset <= MAX_EXT_HEADERS * 2048);
            if !frame::is_extension_header(first) {
                assert_eq!((up.proto, up.offset), (first, 0));
                assert_eq!(up.fragment, Fragment::Whole);
            }
            // The walk reads nothing past the chain: more bytes behind it change nothing.
            let mut longer = payload.to_vec();
            longer.extend_from_slice(&[0xff; 16]);
            assert_eq!(frame::walk_ipv6_ext(first, &longer), Ok(up));
        }
        Err(_) => assert!(
            frame::is_extension_header(first),
            "only a chain can be refused"
        ),
    }

    // The same bytes as the payload of an IPv6 packet from port 1.
    if payload.len() > usize::from(u16::MAX) {
        return;
    }
    let dst: Ipv6Addr = if ctl & 1 == 0 {
        "ff02::1".parse().expect("valid")
    } else {
        "fd00::2".parse().expect("valid")
    };
    let dst_mac = if ctl & 1 == 0 {
        [0x33, 0x33, 0, 0, 0, 1]
    } else {
        MAC_B
    };
    let mut f = frame::build_ipv6(
        (MAC_A, dst_mac),
        (frame::link_local_from_mac(MAC_A), dst),
        255,
        &[],
        (first, payload),
    );
    let ip = match frame::parse(&f) {
        Ok((_, L3::Ipv6(ip))) => ip,
        Ok((_, other)) => panic!("an IPv6 frame parsed as {other:?}"),
        Err(_) => return,
    };
    let up = walked.expect("parse succeeded where the walk failed");
    assert_eq!(ip.next_header, up.proto);
    assert_eq!(ip.fragment, up.fragment);
    if ip.fragment == Fragment::Later {
        assert_eq!(ip.icmp, None);
    } else {
        assert_eq!(ip.icmp.is_some(), ip.next_header == IPPROTO_ICMPV6);
    }

    // Whatever the chain, no control message and no ICMPv6 fragment is forwarded.
    let mut sw = Switch::new();
    sw.upsert(1, &port("a", MAC_A, &["fd00::1/64"], &[]));
    sw.upsert(2, &port("b", MAC_B, &["fd00::2/64"], &["::/0"]));
    let decision = sw.decide(1, &mut f, &mut Vec::new());
    if matches!(decision, Decision::Unicast(_) | Decision::Broadcast)
        && ip.next_header == IPPROTO_ICMPV6
    {
        assert_eq!(ip.fragment, Fragment::Whole, "fragmented ICMPv6 forwarded");
        let kind = ip.icmp.expect("whole ICMPv6 has a header").kind;
        assert!(
            !matches!(kind, 130..=137 | 143),
            "ICMPv6 type {kind} forwarded"
        );
    }
});
