//! The forwarding decision: what happens to one frame a guest sent (sans-IO).
//!
//! The switch is an L3 switch with proxy ARP/NDP: every guest sees every other guest's
//! addresses as on-link, resolves them through the switch, and the switch routes each unicast
//! frame by destination IP (longest prefix over the ports' host addresses and advertised
//! routes), rewriting the destination MAC to the chosen port's MAC. The TTL is not decremented:
//! like a bridge, the switch is not a hop.
//!
//! Every frame is validated against the sending port's configuration first: the Ethernet
//! source must be the port's MAC, and the IP source must pass a strict reverse-path check: the
//! same longest-prefix lookup that routes towards that address must select the sender (one of
//! its addresses, its EUI-64 link-local address, or an address it routes for that no other
//! port owns more specifically). IPv6 is classified on the upper layer behind its extension
//! headers ([`frame::walk_ipv6_ext`]), so control messages cannot hide behind one.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv6Addr};

use crate::fib::{Cidr, Fib};
use crate::frame::{
    self, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Fragment, IPPROTO_ICMPV6, L3,
    MAX_FRAME, Mac, ND_NEIGHBOR_SOLICIT,
};
use crate::port_file::PortConfig;

/// Identifies a port within one switch instance. Assigned by the main process.
pub type PortId = u32;

/// Why a frame was dropped. The names are the keys of the `drops` object in the stats JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a parseable Ethernet/IP/ARP frame.
    Malformed,
    /// Larger than [`MAX_FRAME`] without being a TSO segment, or a segment larger than
    /// [`frame::MAX_GSO_FRAME`].
    Oversize,
    /// Ethernet or ARP source MAC is not the port's MAC.
    SpoofMac,
    /// IP or ARP source address is not the port's: the route towards that address does not
    /// lead to the sender (strict reverse-path check).
    SpoofIp,
    /// No port serves the destination address.
    NoRoute,
    /// The route leads back to the sender.
    Loop,
    /// An EtherType the switch does not forward (VLAN tags, LLDP, ...).
    Unsupported,
    /// Link-local control traffic the switch answers or ignores itself (ARP replies,
    /// gratuitous ARP, DAD, MLD, router solicitations and advertisements, neighbour
    /// advertisements, redirects, wherever in the extension-header chain), and fragmented
    /// ICMPv6.
    Control,
    /// The ring towards the destination port was full (its child is not keeping up).
    RingFull,
    /// The destination port's child is not there (not started, or restarting).
    PortDown,
    /// The destination's egress queue was over its byte limit (fat-flow drop).
    Overflow,
    /// CoDel dropped it at the destination's egress.
    Codel,
    /// The destination guest had no usable receive buffer for it.
    NoBuffer,
    /// The virtio-net header (checksum and segmentation offload fields) is invalid or asks for
    /// an offload that was not negotiated ([`frame::check_offload`]).
    BadHeader,
}

impl DropReason {
    /// Every reason, in stats order.
    pub const ALL: [DropReason; 14] = [
        DropReason::Malformed,
        DropReason::Oversize,
        DropReason::SpoofMac,
        DropReason::SpoofIp,
        DropReason::NoRoute,
        DropReason::Loop,
        DropReason::Unsupported,
        DropReason::Control,
        DropReason::RingFull,
        DropReason::PortDown,
        DropReason::Overflow,
        DropReason::Codel,
        DropReason::NoBuffer,
        DropReason::BadHeader,
    ];

    /// The stats key.
    pub fn key(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Oversize => "oversize",
            DropReason::SpoofMac => "spoof_mac",
            DropReason::SpoofIp => "spoof_ip",
            DropReason::NoRoute => "no_route",
            DropReason::Loop => "loop",
            DropReason::Unsupported => "unsupported",
            DropReason::Control => "control",
            DropReason::RingFull => "ring_full",
            DropReason::PortDown => "port_down",
            DropReason::Overflow => "overflow",
            DropReason::Codel => "codel",
            DropReason::NoBuffer => "no_buffer",
            DropReason::BadHeader => "bad_header",
        }
    }

    /// Index into [`DropReason::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send to this port; the frame's destination MAC has been rewritten.
    Unicast(PortId),
    /// Send to every port with `receiveBroadcast`, except the sender.
    Broadcast,
    /// Deliver the reply built in the reply buffer back to the sender (proxy ARP/NDP).
    Reply,
    /// Drop it.
    Drop(DropReason),
}

#[derive(Debug, Clone)]
struct Port {
    id: PortId,
    mac: Mac,
    receive_broadcast: bool,
}

/// The forwarding table of one switch: every port's addresses and routes.
#[derive(Debug, Clone, Default)]
pub struct Switch {
    ports: Vec<Port>,
    fib: Fib<PortId>,
}

impl Switch {
    /// An empty switch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a port.
    pub fn upsert(&mut self, id: PortId, cfg: &PortConfig) {
        self.remove(id);
        let mut hosts: Vec<IpAddr> = cfg.addresses.iter().map(|c| c.addr).collect();
        hosts.push(IpAddr::V6(frame::link_local_from_mac(cfg.mac)));
        for h in &hosts {
            self.fib.insert(Cidr::host(*h), id);
        }
        for r in &cfg.routes {
            self.fib.insert(*r, id);
        }
        let pos = self
            .ports
            .iter()
            .position(|p| p.id > id)
            .unwrap_or(self.ports.len());
        self.ports.insert(
            pos,
            Port {
                id,
                mac: cfg.mac,
                receive_broadcast: cfg.receive_broadcast,
            },
        );
    }

    /// Removes a port.
    pub fn remove(&mut self, id: PortId) {
        self.ports.retain(|p| p.id != id);
        self.fib.remove_where(|v| *v == id);
    }

    /// Strict reverse-path check: `ip` is a source `src` may use only if the forwarding lookup
    /// for `ip` leads to `src`. A port that routes `0.0.0.0/0` may thus send from any address
    /// no other port owns more specifically, but never from a peer's address. Where prefixes of
    /// the same (longest) length tie, any of their ports passes, so the check does not depend
    /// on the order ports were added in.
    fn owns_source(&self, src: PortId, ip: IpAddr) -> bool {
        self.fib.longest_matches(ip).any(|p| p == src)
    }

    fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.iter().find(|p| p.id == id)
    }

    /// The MAC of a port.
    pub fn mac_of(&self, id: PortId) -> Option<Mac> {
        self.port(id).map(|p| p.mac)
    }

    /// Ports that receive a broadcast sent by `src`.
    pub fn broadcast_targets(&self, src: PortId) -> impl Iterator<Item = PortId> + '_ {
        self.ports
            .iter()
            .filter(move |p| p.receive_broadcast && p.id != src)
            .map(|p| p.id)
    }

    /// Decides what to do with `frame`, sent by port `src`. May rewrite the destination MAC of
    /// `frame`; a proxy reply is written into `reply`.
    pub fn decide(&self, src: PortId, frame: &mut [u8], reply: &mut Vec<u8>) -> Decision {
        self.decide_len(src, frame, reply, MAX_FRAME)
    }

    /// [`Switch::decide`] for a frame of up to `max_len` bytes: a TSO segment whose header
    /// [`frame::check_offload`] has validated may be up to [`frame::MAX_GSO_FRAME`]. The IP and
    /// TCP headers of a segment are checked like any frame's.
    pub fn decide_len(
        &self,
        src: PortId,
        frame: &mut [u8],
        reply: &mut Vec<u8>,
        max_len: usize,
    ) -> Decision {
        let len = frame.len();
        match self.decide_inner(src, frame, len, reply, max_len) {
            Ok(d) => d,
            Err(r) => Decision::Drop(r),
        }
    }

    /// [`Switch::decide_len`] for a frame of `len` bytes of which only the first bytes, `head`,
    /// were copied (see [`frame::parse_head`]). Returns the decision [`Switch::decide_len`]
    /// makes for the whole frame (rewriting the destination MAC in `head`), or `None` when that
    /// needs bytes beyond `head` or is anything but a plain unicast: the caller then decides
    /// on the whole frame. So a drop is always counted from the whole frame.
    pub fn decide_head(
        &self,
        src: PortId,
        head: &mut [u8],
        len: usize,
        max_len: usize,
    ) -> Option<PortId> {
        if head.len() > len {
            return None;
        }
        match self.decide_inner(src, head, len, &mut Vec::new(), max_len) {
            Ok(Decision::Unicast(to)) => Some(to),
            _ => None,
        }
    }

    fn decide_inner(
        &self,
        src: PortId,
        frame: &mut [u8],
        len: usize,
        reply: &mut Vec<u8>,
        max_len: usize,
    ) -> Result<Decision, DropReason> {
        if len > max_len.min(frame::MAX_GSO_FRAME) {
            return Err(DropReason::Oversize);
        }
        let port = self.port(src).ok_or(DropReason::PortDown)?;
        let eth = frame::parse_eth(frame).map_err(|_| DropReason::Malformed)?;
        if eth.src != port.mac {
            return Err(DropReason::SpoofMac);
        }
        if !matches!(
            eth.ethertype,
            ETHERTYPE_ARP | ETHERTYPE_IPV4 | ETHERTYPE_IPV6
        ) {
            return Err(DropReason::Unsupported);
        }
        let (_, l3) = frame::parse_head(frame, len).map_err(|_| DropReason::Malformed)?;
        let group = eth.dst[0] & 1 != 0;
        match l3 {
            L3::Arp(arp) => {
                if arp.sha != port.mac {
                    return Err(DropReason::SpoofMac);
                }
                if arp.op != 1 || arp.spa.is_unspecified() || arp.spa == arp.tpa {
                    // Replies, probes and gratuitous ARP: the switch knows all addresses.
                    return Err(DropReason::Control);
                }
                if !self.owns_source(src, IpAddr::V4(arp.spa)) {
                    return Err(DropReason::SpoofIp);
                }
                let target = self.route(src, IpAddr::V4(arp.tpa))?;
                let mac = self.mac_of(target).ok_or(DropReason::NoRoute)?;
                frame::build_arp_reply(reply, mac, arp.tpa, port.mac, arp.spa);
                Ok(Decision::Reply)
            }
            L3::Ipv4(ip) => {
                if !self.owns_source(src, IpAddr::V4(ip.src)) {
                    return Err(DropReason::SpoofIp);
                }
                if group || ip.dst.is_broadcast() || ip.dst.is_multicast() {
                    return Ok(Decision::Broadcast);
                }
                self.unicast(src, IpAddr::V4(ip.dst), frame)
            }
            L3::Ipv6(ip) => {
                if ip.src.is_unspecified() {
                    // Duplicate address detection and MLD before an address is assigned.
                    return Err(DropReason::Control);
                }
                if !self.owns_source(src, IpAddr::V6(ip.src)) {
                    return Err(DropReason::SpoofIp);
                }
                if ip.next_header == IPPROTO_ICMPV6 {
                    if ip.fragment != Fragment::Whole {
                        // ICMPv6 is never forwarded fragmented: with the first fragment
                        // dropped, no receiver can reassemble a control message whose type the
                        // switch did not see, whatever later fragments claim.
                        return Err(DropReason::Control);
                    }
                    let icmp = ip.icmp.ok_or(DropReason::Malformed)?;
                    match icmp.kind {
                        ND_NEIGHBOR_SOLICIT => {
                            let target = icmp.target.ok_or(DropReason::Malformed)?;
                            if ip.hop_limit != 255 || icmp.code != 0 {
                                return Err(DropReason::Malformed);
                            }
                            let to = self.route(src, IpAddr::V6(target))?;
                            let mac = self.mac_of(to).ok_or(DropReason::NoRoute)?;
                            frame::build_neighbor_advert(reply, mac, target, port.mac, ip.src);
                            return Ok(Decision::Reply);
                        }
                        // MLD (130-132, 143), router solicitation/advertisement (133, 134),
                        // neighbour advertisement (136), redirect (137).
                        130..=137 | 143 => return Err(DropReason::Control),
                        _ => {}
                    }
                }
                if group || ip.dst.is_multicast() {
                    return Ok(Decision::Broadcast);
                }
                self.unicast(src, IpAddr::V6(ip.dst), frame)
            }
            L3::Other(_) => Err(DropReason::Unsupported),
        }
    }

    fn route(&self, src: PortId, dst: IpAddr) -> Result<PortId, DropReason> {
        match self.fib.lookup(dst) {
            None => Err(DropReason::NoRoute),
            Some(p) if p == src => Err(DropReason::Loop),
            Some(p) => Ok(p),
        }
    }

    fn unicast(&self, src: PortId, dst: IpAddr, frame: &mut [u8]) -> Result<Decision, DropReason> {
        let to = self.route(src, dst)?;
        let mac = self.mac_of(to).ok_or(DropReason::NoRoute)?;
        frame[..6].copy_from_slice(&mac);
        Ok(Decision::Unicast(to))
    }
}

/// A flow hash over the fields that identify a transport flow (addresses, protocol, ports).
/// `perturb` is a per-instance random value so guests cannot aim collisions.
pub fn flow_hash(frame: &[u8], perturb: u64) -> u32 {
    let mut h = Hasher(perturb ^ 0x9e37_79b9_7f4a_7c15);
    match frame::parse(frame) {
        Ok((_, L3::Ipv4(ip))) => {
            h.add(u64::from(u32::from(ip.src)));
            h.add(u64::from(u32::from(ip.dst)));
            h.add(u64::from(ip.proto));
            h.add(u64::from(ip.ports.src) << 16 | u64::from(ip.ports.dst));
        }
        Ok((_, L3::Ipv6(ip))) => {
            let s = u128::from(ip.src);
            let d = u128::from(ip.dst);
            h.add(s as u64);
            h.add((s >> 64) as u64);
            h.add(d as u64);
            h.add((d >> 64) as u64);
            h.add(u64::from(ip.next_header));
            h.add(u64::from(ip.ports.src) << 16 | u64::from(ip.ports.dst));
        }
        _ => {
            if let Some(b) = frame.get(..ETH_HLEN) {
                for c in b.chunks(8) {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    h.add(u64::from_le_bytes(w));
                }
            }
        }
    }
    h.finish()
}

struct Hasher(u64);

impl Hasher {
    fn add(&mut self, v: u64) {
        self.0 =
            (self.0 ^ v).wrapping_mul(0x0100_0000_01b3_u64.wrapping_add(0xff51_afd7_ed55_8ccd));
        self.0 ^= self.0 >> 29;
    }
    fn finish(&self) -> u32 {
        let x = self.0.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        (x >> 32) as u32 ^ x as u32
    }
}

/// Returns the IPv6 solicited-node address for `a` (used in tests and by the fuzz target).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::frame::tests::{
        AH, DSTOPTS, HBH, ROUTING, arp_request, frag, neighbor_advert_msg, neighbor_solicit,
        redirect, router_advert, tcp_msg, udp_msg, udp4, udp6, v6_ext,
    };
    use crate::frame::{
        BROADCAST_MAC, ETHERTYPE_ARP, IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT,
        IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, MAX_EXT_HEADERS,
    };

    const A: Mac = [0x52, 0x54, 0, 0, 0, 1];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 2];
    const C: Mac = [0x52, 0x54, 0, 0, 0, 3];

    fn cfg(name: &str, mac: Mac, addrs: &[&str], routes: &[&str], bcast: bool) -> PortConfig {
        PortConfig {
            name: name.into(),
            mac,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            receive_broadcast: bcast,
            routes: routes.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn switch() -> Switch {
        let mut s = Switch::new();
        s.upsert(1, &cfg("a", A, &["10.0.0.1/24", "fd00::1/64"], &[], false));
        s.upsert(2, &cfg("b", B, &["10.0.0.2/24", "fd00::2/64"], &[], true));
        s.upsert(
            3,
            &cfg(
                "c",
                C,
                &["10.0.0.3/24"],
                &["0.0.0.0/0", "192.168.1.0/24"],
                true,
            ),
        );
        s
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn test_decide_unicast_routes_by_ip_and_rewrites_dst_mac() {
        let s = switch();
        let mut f = udp4(A, [0x02, 0, 0, 0, 0, 9], v4("10.0.0.1"), v4("10.0.0.2"), 0);
        let mut r = Vec::new();
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Unicast(2));
        assert_eq!(&f[..6], &B);
    }

    #[test]
    fn test_decide_prefers_host_address_over_default_route() {
        let s = switch();
        let mut r = Vec::new();
        let mut f = udp4(A, B, v4("10.0.0.1"), v4("10.0.0.2"), 0);
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Unicast(2));
        let mut f = udp4(A, C, v4("10.0.0.1"), v4("8.8.8.8"), 0);
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Unicast(3));
        let mut f = udp4(A, C, v4("10.0.0.1"), v4("192.168.1.7"), 0);
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Unicast(3));
    }

    #[test]
    fn test_decide_router_port_may_source_routed_addresses() {
        let s = switch();
        let mut r = Vec::new();
        let mut f = udp4(C, A, v4("8.8.8.8"), v4("10.0.0.1"), 0);
        assert_eq!(s.decide(3, &mut f, &mut r), Decision::Unicast(1));
    }

    #[test]
    fn test_decide_spoofed_source_mac_is_dropped() {
        let s = switch();
        let mut f = udp4(B, B, v4("10.0.0.1"), v4("10.0.0.2"), 0);
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::SpoofMac)
        );
    }

    #[test]
    fn test_decide_spoofed_source_ip_is_dropped() {
        let s = switch();
        let mut f = udp4(A, B, v4("10.0.0.2"), v4("10.0.0.3"), 0);
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::SpoofIp)
        );
        let mut f = udp6(A, B, v6("fd00::99"), v6("fd00::2"), 0);
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::SpoofIp)
        );
    }

    #[test]
    fn test_decide_no_route_and_loop() {
        let s = switch();
        let mut f = udp6(A, B, v6("fd00::1"), v6("fd00::77"), 0);
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::NoRoute)
        );
        let mut f = udp4(A, A, v4("10.0.0.1"), v4("10.0.0.1"), 0);
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::Loop)
        );
    }

    #[test]
    fn test_decide_arp_request_gets_proxy_reply_with_target_port_mac() {
        let s = switch();
        let mut f = arp_request(A, v4("10.0.0.1"), v4("10.0.0.2"));
        let mut r = Vec::new();
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Reply);
        let (eth, l3) = frame::parse(&r).unwrap();
        assert_eq!(eth.dst, A);
        assert_eq!(eth.src, B);
        assert_eq!(eth.ethertype, ETHERTYPE_ARP);
        let L3::Arp(arp) = l3 else { panic!() };
        assert_eq!(arp.op, 2);
        assert_eq!(arp.sha, B);
        assert_eq!(arp.spa, v4("10.0.0.2"));
        assert_eq!(arp.tha, A);
        assert_eq!(arp.tpa, v4("10.0.0.1"));
    }

    #[test]
    fn test_decide_arp_for_routed_address_answers_with_router_mac() {
        let s = switch();
        let mut f = arp_request(A, v4("10.0.0.1"), v4("192.168.1.1"));
        let mut r = Vec::new();
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Reply);
        assert_eq!(&r[6..12], &C);
    }

    #[test]
    fn test_decide_arp_spoofed_sender_is_dropped_and_gratuitous_ignored() {
        let s = switch();
        let mut f = arp_request(A, v4("10.0.0.2"), v4("10.0.0.3"));
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::SpoofIp)
        );
        let mut f = arp_request(A, v4("10.0.0.1"), v4("10.0.0.1"));
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::Control)
        );
    }

    #[test]
    fn test_decide_neighbor_solicit_gets_proxy_advert() {
        let s = switch();
        let mut f = neighbor_solicit(A, v6("fd00::1"), v6("fd00::2"));
        let mut r = Vec::new();
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Reply);
        let (eth, l3) = frame::parse(&r).unwrap();
        assert_eq!(eth.src, B);
        let L3::Ipv6(ip) = l3 else { panic!() };
        assert_eq!(ip.src, v6("fd00::2"));
        assert_eq!(ip.dst, v6("fd00::1"));
        assert_eq!(ip.icmp.unwrap().target, Some(v6("fd00::2")));
    }

    #[test]
    fn test_decide_neighbor_solicit_for_link_local_of_peer() {
        let s = switch();
        let ll_a = frame::link_local_from_mac(A);
        let ll_b = frame::link_local_from_mac(B);
        let mut f = neighbor_solicit(A, ll_a, ll_b);
        let mut r = Vec::new();
        assert_eq!(s.decide(1, &mut f, &mut r), Decision::Reply);
        assert_eq!(&r[6..12], &B);
    }

    #[test]
    fn test_decide_dad_is_control() {
        let s = switch();
        let mut f = neighbor_solicit(A, Ipv6Addr::UNSPECIFIED, v6("fd00::1"));
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::Control)
        );
    }

    #[test]
    fn test_decide_broadcast_and_targets_exclude_sender() {
        let s = switch();
        let mut f = udp4(A, BROADCAST_MAC, v4("10.0.0.1"), v4("255.255.255.255"), 0);
        assert_eq!(s.decide(1, &mut f, &mut Vec::new()), Decision::Broadcast);
        assert_eq!(s.broadcast_targets(1).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(s.broadcast_targets(2).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn test_decide_unsupported_ethertype_and_oversize() {
        let s = switch();
        let mut f = udp4(A, B, v4("10.0.0.1"), v4("10.0.0.2"), 0);
        f[12] = 0x81;
        f[13] = 0x00;
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::Unsupported)
        );
        let mut big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            s.decide(1, &mut big, &mut Vec::new()),
            Decision::Drop(DropReason::Oversize)
        );
    }

    #[test]
    fn test_decide_after_remove_peer_has_no_route() {
        let mut s = switch();
        s.remove(2);
        let mut f = udp6(A, B, v6("fd00::1"), v6("fd00::2"), 0);
        assert_eq!(
            s.decide(1, &mut f, &mut Vec::new()),
            Decision::Drop(DropReason::NoRoute)
        );
    }

    /// `a` and `b` as in [`switch`]; `r` routes everything (`0.0.0.0/0`, `::/0`) and
    /// `192.168.1.0/24`, which `n` routes too (a tie of equal prefixes).
    fn router_switch() -> Switch {
        let mut s = Switch::new();
        s.upsert(1, &cfg("a", A, &["10.0.0.1/24", "fd00::1/64"], &[], true));
        s.upsert(2, &cfg("b", B, &["10.0.0.2/24", "fd00::2/64"], &[], true));
        s.upsert(
            3,
            &cfg(
                "r",
                C,
                &["10.0.0.3/24", "fd00::3/64"],
                &["0.0.0.0/0", "::/0", "192.168.1.0/24"],
                true,
            ),
        );
        s.upsert(
            4,
            &cfg(
                "n",
                [0x52, 0x54, 0, 0, 0, 4],
                &["10.0.0.4/24"],
                &["192.168.1.0/24"],
                true,
            ),
        );
        s
    }

    #[test]
    fn test_decide_default_route_port_cannot_source_a_peer_address() {
        let s = router_switch();
        let mut r = Vec::new();
        let spoofs = [
            udp4(C, B, v4("10.0.0.1"), v4("10.0.0.2"), 0),
            udp4(C, BROADCAST_MAC, v4("10.0.0.1"), v4("10.0.0.255"), 0),
            udp6(C, B, v6("fd00::1"), v6("fd00::2"), 0),
            udp6(C, B, frame::link_local_from_mac(A), v6("fd00::2"), 0),
            arp_request(C, v4("10.0.0.1"), v4("10.0.0.2")),
        ];
        for mut f in spoofs {
            assert_eq!(
                s.decide(3, &mut f, &mut r),
                Decision::Drop(DropReason::SpoofIp),
                "{f:02x?}"
            );
        }
    }

    #[test]
    fn test_decide_default_route_port_may_source_its_own_and_routed_addresses() {
        let s = router_switch();
        let mut r = Vec::new();
        for src in ["10.0.0.3", "8.8.8.8", "10.0.0.77", "192.168.1.5"] {
            let mut f = udp4(C, B, v4(src), v4("10.0.0.2"), 0);
            assert_eq!(s.decide(3, &mut f, &mut r), Decision::Unicast(2), "{src}");
        }
        for src in ["fd00::3", "2001:db8::1"] {
            let mut f = udp6(C, B, v6(src), v6("fd00::2"), 0);
            assert_eq!(s.decide(3, &mut f, &mut r), Decision::Unicast(2), "{src}");
        }
        let mut f = udp6(C, B, frame::link_local_from_mac(C), v6("fd00::2"), 0);
        assert_eq!(s.decide(3, &mut f, &mut r), Decision::Unicast(2));
        // The other port that routes 192.168.1.0/24 too may source it, but not the default.
        let n = [0x52, 0x54, 0, 0, 0, 4];
        let mut f = udp4(n, B, v4("192.168.1.6"), v4("10.0.0.2"), 0);
        assert_eq!(s.decide(4, &mut f, &mut r), Decision::Unicast(2));
        let mut f = udp4(n, B, v4("8.8.8.8"), v4("10.0.0.2"), 0);
        assert_eq!(
            s.decide(4, &mut f, &mut r),
            Decision::Drop(DropReason::SpoofIp)
        );
    }

    fn decide_v6_ext(
        dst_mac: Mac,
        src: &str,
        dst: &str,
        ext: &[(u8, &[u8])],
        upper: (u8, &[u8]),
    ) -> Decision {
        let s = router_switch();
        let mut f = v6_ext(dst_mac, src, dst, ext, upper);
        s.decide(1, &mut f, &mut Vec::new())
    }

    const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

    #[test]
    fn test_decide_drops_router_advert_behind_extension_headers() {
        let ra = router_advert();
        let ll = frame::link_local_from_mac(A).to_string();
        let chains: [&[(u8, &[u8])]; 3] = [
            &[(IPPROTO_HOPOPTS, &HBH)],
            &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_ROUTING, &ROUTING)],
            &[(IPPROTO_HOPOPTS, &HBH), (IPPROTO_AH, &AH)],
        ];
        for chain in chains {
            assert_eq!(
                decide_v6_ext(ALL_NODES_MAC, &ll, "ff02::1", chain, (IPPROTO_ICMPV6, &ra)),
                Decision::Drop(DropReason::Control),
                "{chain:?}"
            );
        }
    }

    #[test]
    fn test_decide_drops_neighbor_advert_and_redirect_behind_extension_headers() {
        let na = neighbor_advert_msg(v6("fd00::2"));
        let rd = redirect(v6("fd00::1"), v6("fd00::2"));
        for msg in [&na, &rd] {
            for (dst_mac, dst) in [(B, "fd00::2"), (ALL_NODES_MAC, "ff02::1")] {
                for chain in [
                    &[(IPPROTO_HOPOPTS, &HBH as &[u8])] as &[(u8, &[u8])],
                    &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_ROUTING, &ROUTING)],
                ] {
                    assert_eq!(
                        decide_v6_ext(dst_mac, "fd00::1", dst, chain, (IPPROTO_ICMPV6, msg)),
                        Decision::Drop(DropReason::Control),
                        "type {} to {dst} behind {chain:?}",
                        msg[0]
                    );
                }
            }
        }
    }

    #[test]
    fn test_decide_drops_fragmented_icmpv6() {
        let ra = router_advert();
        let echo = [
            128u8, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 0,
        ];
        for (f, msg) in [
            (frag(0, true), &ra[..]),
            (frag(1, true), &ra[..]),
            (frag(185, false), &echo[..]),
            (frag(0, true), &echo[..]),
        ] {
            assert_eq!(
                decide_v6_ext(
                    B,
                    "fd00::1",
                    "fd00::2",
                    &[(IPPROTO_FRAGMENT, &f)],
                    (IPPROTO_ICMPV6, msg)
                ),
                Decision::Drop(DropReason::Control),
                "{f:?}"
            );
        }
        // An atomic fragment is a whole datagram: classified like one.
        assert_eq!(
            decide_v6_ext(
                B,
                "fd00::1",
                "fd00::2",
                &[(IPPROTO_FRAGMENT, &frag(0, false))],
                (IPPROTO_ICMPV6, &echo)
            ),
            Decision::Unicast(2)
        );
    }

    #[test]
    fn test_decide_drops_truncated_or_unwalkable_chains_as_malformed() {
        let ra = router_advert();
        let mut long_hbh = HBH;
        long_hbh[1] = 5;
        for chain in [
            &[(IPPROTO_HOPOPTS, &long_hbh as &[u8])] as &[(u8, &[u8])],
            &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_HOPOPTS, &HBH)],
            &[
                (IPPROTO_FRAGMENT, &frag(0, true)),
                (IPPROTO_DSTOPTS, &DSTOPTS),
            ],
            &[(135, &DSTOPTS)],
            &[(IPPROTO_DSTOPTS, &DSTOPTS as &[u8]); MAX_EXT_HEADERS + 1],
        ] {
            assert_eq!(
                decide_v6_ext(
                    ALL_NODES_MAC,
                    "fd00::1",
                    "ff02::1",
                    chain,
                    (IPPROTO_ICMPV6, &ra)
                ),
                Decision::Drop(DropReason::Malformed),
                "{chain:?}"
            );
        }
        // The ICMPv6 header itself cut short behind the chain.
        assert_eq!(
            decide_v6_ext(
                ALL_NODES_MAC,
                "fd00::1",
                "ff02::1",
                &[(IPPROTO_HOPOPTS, &HBH)],
                (IPPROTO_ICMPV6, &ra[..2])
            ),
            Decision::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn test_decide_forwards_tcp_udp_and_echo_behind_hop_by_hop() {
        let udp = udp_msg();
        let tcp = tcp_msg();
        let echo = [128u8, 0, 0, 0, 0, 1, 0, 1];
        for upper in [
            (IPPROTO_UDP, &udp[..]),
            (IPPROTO_TCP, &tcp[..]),
            (IPPROTO_ICMPV6, &echo[..]),
        ] {
            assert_eq!(
                decide_v6_ext(B, "fd00::1", "fd00::2", &[(IPPROTO_HOPOPTS, &HBH)], upper),
                Decision::Unicast(2),
                "{upper:?}"
            );
        }
        // Fragmented UDP, first and later fragments, still flows.
        for f in [frag(0, true), frag(3, false)] {
            assert_eq!(
                decide_v6_ext(
                    B,
                    "fd00::1",
                    "fd00::2",
                    &[(IPPROTO_FRAGMENT, &f)],
                    (IPPROTO_UDP, &udp)
                ),
                Decision::Unicast(2)
            );
        }
    }

    #[test]
    fn test_flow_hash_separates_ports_and_is_stable() {
        let f1 = udp4(A, B, v4("10.0.0.1"), v4("10.0.0.2"), 0);
        let mut f2 = f1.clone();
        f2[36] ^= 1; // destination port
        assert_eq!(flow_hash(&f1, 7), flow_hash(&f1, 7));
        assert_ne!(flow_hash(&f1, 7), flow_hash(&f2, 7));
        assert_ne!(flow_hash(&f1, 7), flow_hash(&f1, 8));
    }

    /// The TX fast path decides on a frame's copied head and its length
    /// (`Switch::decide_head`): it may only say "unicast to p" when the whole frame gets that
    /// decision, with the same destination MAC rewritten into the head. Checked for every head
    /// length on unicast, broadcast, spoofed, control and extension-header frames, and on
    /// copies with any one byte of their first 80 changed.
    #[test]
    fn test_decide_on_a_head_agrees_with_the_whole_frame() {
        let s = router_switch();
        let udp = udp_msg();
        let tcp = tcp_msg();
        let mut base = vec![
            udp4(A, B, v4("10.0.0.1"), v4("10.0.0.2"), 0),
            udp4(A, B, v4("10.0.0.1"), v4("192.168.1.7"), 0),
            udp4(A, BROADCAST_MAC, v4("10.0.0.1"), v4("10.0.0.255"), 0),
            udp6(A, B, v6("fd00::1"), v6("fd00::2"), 0),
            arp_request(A, v4("10.0.0.1"), v4("10.0.0.2")),
            neighbor_solicit(A, v6("fd00::1"), v6("fd00::2")),
            v6_ext(
                B,
                "fd00::1",
                "fd00::2",
                &[(IPPROTO_HOPOPTS, &HBH)],
                (IPPROTO_TCP, &tcp),
            ),
            v6_ext(
                B,
                "fd00::1",
                "fd00::2",
                &[
                    (IPPROTO_DSTOPTS, &DSTOPTS),
                    (IPPROTO_ROUTING, &ROUTING),
                    (IPPROTO_AH, &AH),
                ],
                (IPPROTO_UDP, &udp),
            ),
            v6_ext(
                B,
                "fd00::1",
                "fd00::2",
                &[(IPPROTO_FRAGMENT, &frag(0, true))],
                (IPPROTO_UDP, &udp),
            ),
        ];
        let n = base.len();
        for i in 0..n {
            for at in 0..80.min(base[i].len()) {
                for x in [0x01u8, 0x10, 0x80, 0xff] {
                    let mut g = base[i].clone();
                    g[at] ^= x;
                    base.push(g);
                }
            }
        }
        let mut unicast = 0;
        for f in &base {
            let mut whole = f.clone();
            let want = s.decide_len(1, &mut whole, &mut Vec::new(), MAX_FRAME);
            for k in 0..=f.len() {
                let mut head = f[..k].to_vec();
                match s.decide_head(1, &mut head, f.len(), MAX_FRAME) {
                    Some(to) => {
                        assert_eq!(want, Decision::Unicast(to), "{k} bytes of {f:02x?}");
                        assert_eq!(head, whole[..k], "the rewritten head");
                    }
                    None => assert!(
                        k < f.len() || !matches!(want, Decision::Unicast(_)),
                        "the whole frame as head decides like the frame"
                    ),
                }
            }
            if matches!(want, Decision::Unicast(_)) {
                unicast += 1;
            }
        }
        assert!(
            unicast > 100,
            "unicast frames among the variants ({unicast})"
        );
    }

    #[test]
    fn test_solicited_node() {
        assert_eq!(solicited_node(v6("fd00::1:2:3")), v6("ff02::1:ff02:3"));
    }
}
