//! Ethernet, ARP, IPv4 and IPv6 parsing and the few header edits the switch makes.
//!
//! Everything here works on plain byte slices copied out of guest memory or a shared ring, so
//! the bytes cannot change under the parser. Every read is bounds-checked: a truncated or
//! malformed frame yields an error, never a panic.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

/// A MAC address.
pub type Mac = [u8; 6];

/// Length of an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
/// Largest Ethernet frame (header included) the switch forwards: a 1500-byte MTU plus the
/// header and room for one VLAN tag. Guests are not offered TSO, so nothing larger is legal.
pub const MAX_FRAME: usize = 1518;
/// Smallest Ethernet frame the switch emits (replies are padded to it).
pub const MIN_FRAME: usize = 60;
/// The broadcast MAC address.
pub const BROADCAST_MAC: Mac = [0xff; 6];

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// ICMPv6 neighbour solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 neighbour advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame is shorter than its headers claim.
    #[error("frame truncated")]
    Truncated,
    /// A header field has a value the switch does not accept.
    #[error("invalid header field")]
    Invalid,
}

/// The Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthHeader {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// EtherType (no VLAN tags are parsed; a tagged frame shows 0x8100 here).
    pub ethertype: u16,
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 = request, 2 = reply.
    pub op: u16,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Layer-4 summary used for flow hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ports {
    /// Source port (TCP/UDP), 0 otherwise.
    pub src: u16,
    /// Destination port (TCP/UDP), 0 otherwise.
    pub dst: u16,
}

/// An IPv4 header summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// TCP/UDP ports when present in the first fragment.
    pub ports: Ports,
}

/// An IPv6 header summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header of the fixed header (extension headers are not walked).
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// TCP/UDP ports when the next header is TCP or UDP.
    pub ports: Ports,
    /// The ICMPv6 message when the next header is ICMPv6.
    pub icmp: Option<Icmp6>,
}

/// The parts of an ICMPv6 message the switch looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp6 {
    /// ICMPv6 type.
    pub kind: u8,
    /// ICMPv6 code.
    pub code: u8,
    /// Target address of a neighbour solicitation or advertisement.
    pub target: Option<Ipv6Addr>,
}

/// A parsed layer 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// ARP.
    Arp(Arp),
    /// IPv4.
    Ipv4(Ipv4),
    /// IPv6.
    Ipv6(Ipv6),
    /// Anything else, by EtherType.
    Other(u16),
}

fn be16(b: &[u8], at: usize) -> Result<u16, ParseError> {
    let s = b.get(at..at + 2).ok_or(ParseError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn mac_at(b: &[u8], at: usize) -> Result<Mac, ParseError> {
    let s = b.get(at..at + 6).ok_or(ParseError::Truncated)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(s);
    Ok(m)
}

fn v4_at(b: &[u8], at: usize) -> Result<Ipv4Addr, ParseError> {
    let s = b.get(at..at + 4).ok_or(ParseError::Truncated)?;
    Ok(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

fn v6_at(b: &[u8], at: usize) -> Result<Ipv6Addr, ParseError> {
    let s = b.get(at..at + 16).ok_or(ParseError::Truncated)?;
    let mut a = [0u8; 16];
    a.copy_from_slice(s);
    Ok(Ipv6Addr::from(a))
}

/// Parses the Ethernet header.
pub fn parse_eth(frame: &[u8]) -> Result<EthHeader, ParseError> {
    Ok(EthHeader {
        dst: mac_at(frame, 0)?,
        src: mac_at(frame, 6)?,
        ethertype: be16(frame, 12)?,
    })
}

/// Parses the Ethernet header and the layer-3 header behind it.
pub fn parse(frame: &[u8]) -> Result<(EthHeader, L3), ParseError> {
    let eth = parse_eth(frame)?;
    let l3 = match eth.ethertype {
        ETHERTYPE_ARP => L3::Arp(parse_arp(&frame[ETH_HLEN..])?),
        ETHERTYPE_IPV4 => L3::Ipv4(parse_ipv4(&frame[ETH_HLEN..])?),
        ETHERTYPE_IPV6 => L3::Ipv6(parse_ipv6(&frame[ETH_HLEN..])?),
        other => L3::Other(other),
    };
    Ok((eth, l3))
}

fn parse_arp(p: &[u8]) -> Result<Arp, ParseError> {
    if p.len() < 28 {
        return Err(ParseError::Truncated);
    }
    // htype Ethernet, ptype IPv4, hlen 6, plen 4.
    if be16(p, 0)? != 1 || be16(p, 2)? != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return Err(ParseError::Invalid);
    }
    Ok(Arp {
        op: be16(p, 6)?,
        sha: mac_at(p, 8)?,
        spa: v4_at(p, 14)?,
        tha: mac_at(p, 18)?,
        tpa: v4_at(p, 24)?,
    })
}

fn ports_at(p: &[u8], at: usize) -> Ports {
    match (be16(p, at), be16(p, at + 2)) {
        (Ok(src), Ok(dst)) => Ports { src, dst },
        _ => Ports::default(),
    }
}

fn parse_ipv4(p: &[u8]) -> Result<Ipv4, ParseError> {
    let first = *p.first().ok_or(ParseError::Truncated)?;
    if first >> 4 != 4 {
        return Err(ParseError::Invalid);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return Err(ParseError::Invalid);
    }
    let total = usize::from(be16(p, 2)?);
    if total < ihl || total > p.len() {
        return Err(ParseError::Truncated);
    }
    let frag = be16(p, 6)?;
    let proto = p[9];
    let first_fragment = frag & 0x1fff == 0;
    let ports = if first_fragment && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        ports_at(&p[..total], ihl)
    } else {
        Ports::default()
    };
    Ok(Ipv4 {
        src: v4_at(p, 12)?,
        dst: v4_at(p, 16)?,
        proto,
        ports,
    })
}

fn parse_ipv6(p: &[u8]) -> Result<Ipv6, ParseError> {
    if p.len() < 40 {
        return Err(ParseError::Truncated);
    }
    if p[0] >> 4 != 6 {
        return Err(ParseError::Invalid);
    }
    let payload_len = usize::from(be16(p, 4)?);
    if 40 + payload_len > p.len() {
        return Err(ParseError::Truncated);
    }
    let payload = &p[40..40 + payload_len];
    let next_header = p[6];
    let hop_limit = p[7];
    let mut ports = Ports::default();
    let mut icmp = None;
    match next_header {
        IPPROTO_TCP | IPPROTO_UDP => ports = ports_at(payload, 0),
        IPPROTO_ICMPV6 => {
            let kind = *payload.first().ok_or(ParseError::Truncated)?;
            let code = *payload.get(1).ok_or(ParseError::Truncated)?;
            let target = if kind == ND_NEIGHBOR_SOLICIT || kind == ND_NEIGHBOR_ADVERT {
                Some(v6_at(payload, 8)?)
            } else {
                None
            };
            icmp = Some(Icmp6 { kind, code, target });
        }
        _ => {}
    }
    Ok(Ipv6 {
        src: v6_at(p, 8)?,
        dst: v6_at(p, 24)?,
        next_header,
        hop_limit,
        ports,
        icmp,
    })
}

/// Adds `data` to a running ones'-complement sum (RFC 1071).
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so the sum never overflows, whatever the length.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Folds a ones'-complement sum to 16 bits and complements it.
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Finishes a partial checksum the sender left for the device (`VIRTIO_NET_HDR_F_NEEDS_CSUM`):
/// sums everything from `start` (the field at `start + offset` already holds the pseudo-header
/// sum) and stores the result there. Returns false when the offsets fall outside the frame.
pub fn finish_partial_csum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(field) = start.checked_add(offset) else {
        return false;
    };
    if field.checked_add(2).is_none_or(|end| end > frame.len()) || start >= frame.len() {
        return false;
    }
    let sum = csum_add(0, &frame[start..]);
    let mut c = csum_fold(sum);
    if c == 0 {
        // A computed zero is sent as all-ones (zero means "no checksum" for UDP).
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Marks a frame Congestion Experienced if its IP header says ECN-capable transport.
/// Returns true when the frame is (now) marked CE, false when it is not ECN-capable or not IP.
/// The IPv4 header checksum is updated incrementally (RFC 1624).
pub fn set_ce(frame: &mut [u8]) -> bool {
    let Ok(ethertype) = be16(frame, 12) else {
        return false;
    };
    match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(hdr) = frame.get_mut(ETH_HLEN..ETH_HLEN + 20) else {
                return false;
            };
            if hdr[0] >> 4 != 4 {
                return false;
            }
            let tos = hdr[1];
            match tos & 3 {
                0 => false,
                3 => true,
                _ => {
                    let old = u16::from_be_bytes([hdr[0], hdr[1]]);
                    hdr[1] = tos | 3;
                    let new = u16::from_be_bytes([hdr[0], hdr[1]]);
                    let check = u16::from_be_bytes([hdr[10], hdr[11]]);
                    // HC' = ~(~HC + ~m + m')
                    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
                    let c = csum_fold(sum);
                    hdr[10..12].copy_from_slice(&c.to_be_bytes());
                    true
                }
            }
        }
        ETHERTYPE_IPV6 => {
            let Some(hdr) = frame.get_mut(ETH_HLEN..ETH_HLEN + 2) else {
                return false;
            };
            if hdr[0] >> 4 != 6 {
                return false;
            }
            // Traffic class = low nibble of byte 0 and high nibble of byte 1; ECN is its low
            // two bits, i.e. bits 4-5 of byte 1.
            match (hdr[1] >> 4) & 3 {
                0 => false,
                _ => {
                    hdr[1] |= 0x30;
                    true
                }
            }
        }
        _ => false,
    }
}

/// Writes an ARP reply telling `requester` that `ip` is at `answer_mac` into `out`
/// (cleared first). The frame is padded to the Ethernet minimum.
pub fn build_arp_reply(
    out: &mut Vec<u8>,
    answer_mac: Mac,
    ip: Ipv4Addr,
    requester_mac: Mac,
    requester_ip: Ipv4Addr,
) {
    out.clear();
    out.extend_from_slice(&requester_mac);
    out.extend_from_slice(&answer_mac);
    out.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    out.extend_from_slice(&[6, 4]);
    out.extend_from_slice(&2u16.to_be_bytes()); // reply
    out.extend_from_slice(&answer_mac);
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&requester_mac);
    out.extend_from_slice(&requester_ip.octets());
    out.resize(MIN_FRAME, 0);
}

/// Writes a solicited neighbour advertisement telling `requester` that `target` is at
/// `answer_mac` into `out` (cleared first).
pub fn build_neighbor_advert(
    out: &mut Vec<u8>,
    answer_mac: Mac,
    target: Ipv6Addr,
    requester_mac: Mac,
    requester_ip: Ipv6Addr,
) {
    const ICMP_LEN: usize = 32;
    out.clear();
    out.extend_from_slice(&requester_mac);
    out.extend_from_slice(&answer_mac);
    out.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    // IPv6 header.
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(ICMP_LEN as u16).to_be_bytes());
    out.push(IPPROTO_ICMPV6);
    out.push(255);
    out.extend_from_slice(&target.octets());
    out.extend_from_slice(&requester_ip.octets());
    // ICMPv6 neighbour advertisement: Solicited + Override.
    let icmp_start = out.len();
    out.extend_from_slice(&[ND_NEIGHBOR_ADVERT, 0, 0, 0]);
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&target.octets());
    // Option 2: target link-layer address, length 1 (8 bytes).
    out.extend_from_slice(&[2, 1]);
    out.extend_from_slice(&answer_mac);
    let mut sum = csum_add(0, &target.octets());
    sum = csum_add(sum, &requester_ip.octets());
    sum = csum_add(sum, &(ICMP_LEN as u32).to_be_bytes());
    sum = csum_add(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
    sum = csum_add(sum, &out[icmp_start..]);
    let c = csum_fold(sum);
    out[icmp_start + 2..icmp_start + 4].copy_from_slice(&c.to_be_bytes());
}

/// The modified EUI-64 link-local address Linux derives from a MAC (`addr_gen_mode` 0).
pub fn link_local_from_mac(mac: Mac) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MAC_A: Mac = [0x52, 0x54, 0, 0, 0, 1];
    pub(crate) const MAC_B: Mac = [0x52, 0x54, 0, 0, 0, 2];

    /// Builds an Ethernet + IPv4 + UDP frame with a valid IPv4 header checksum.
    pub(crate) fn udp4(
        src_mac: Mac,
        dst_mac: Mac,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        tos: u8,
    ) -> Vec<u8> {
        let payload = [0xabu8; 18];
        let total = 20 + 8 + payload.len();
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f.extend_from_slice(&[0x45, tos]);
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        let c = csum_fold(csum_add(0, &f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&1234u16.to_be_bytes());
        f.extend_from_slice(&5678u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&payload);
        f
    }

    pub(crate) fn udp6(
        src_mac: Mac,
        dst_mac: Mac,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        tc: u8,
    ) -> Vec<u8> {
        let payload = [0xcdu8; 10];
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60 | (tc >> 4), tc << 4, 0, 0]);
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[IPPROTO_UDP, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&2u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&payload);
        f
    }

    pub(crate) fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&BROADCAST_MAC);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa.octets());
        f
    }

    pub(crate) fn neighbor_solicit(sha: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let t = target.octets();
        let dst = Ipv6Addr::from([
            0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
        ]);
        let mut f = Vec::new();
        f.extend_from_slice(&[0x33, 0x33, 0xff, t[13], t[14], t[15]]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, IPPROTO_ICMPV6, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        let start = f.len();
        f.extend_from_slice(&[ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&t);
        f.extend_from_slice(&[1, 1]);
        f.extend_from_slice(&sha);
        let mut sum = csum_add(0, &src.octets());
        sum = csum_add(sum, &dst.octets());
        sum = csum_add(sum, &32u32.to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
        sum = csum_add(sum, &f[start..]);
        let c = csum_fold(sum);
        f[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn test_parse_udp4_reads_addresses_and_ports() {
        let f = udp4(
            MAC_A,
            MAC_B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            0,
        );
        let (eth, l3) = parse(&f).unwrap();
        assert_eq!(eth.src, MAC_A);
        assert_eq!(eth.dst, MAC_B);
        let L3::Ipv4(ip) = l3 else {
            panic!("not ipv4: {l3:?}")
        };
        assert_eq!(ip.src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip.dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            ip.ports,
            Ports {
                src: 1234,
                dst: 5678
            }
        );
    }

    #[test]
    fn test_parse_truncated_ipv4_is_an_error_not_a_panic() {
        let f = udp4(
            MAC_A,
            MAC_B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            0,
        );
        for len in 0..f.len() - 18 {
            assert!(parse(&f[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn test_parse_ipv6_neighbor_solicit_reads_target() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let target: Ipv6Addr = "fd00::2".parse().unwrap();
        let f = neighbor_solicit(MAC_A, src, target);
        let (_, l3) = parse(&f).unwrap();
        let L3::Ipv6(ip) = l3 else { panic!() };
        assert_eq!(ip.hop_limit, 255);
        assert_eq!(
            ip.icmp,
            Some(Icmp6 {
                kind: ND_NEIGHBOR_SOLICIT,
                code: 0,
                target: Some(target)
            })
        );
    }

    #[test]
    fn test_set_ce_ipv4_ect0_marks_and_keeps_checksum_valid() {
        let mut f = udp4(
            MAC_A,
            MAC_B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            2,
        );
        assert!(set_ce(&mut f));
        assert_eq!(f[15] & 3, 3);
        assert_eq!(
            csum_fold(csum_add(0, &f[14..34])),
            0,
            "header checksum must verify"
        );
    }

    #[test]
    fn test_set_ce_not_ect_leaves_frame_unchanged() {
        let mut f = udp4(
            MAC_A,
            MAC_B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            0,
        );
        let before = f.clone();
        assert!(!set_ce(&mut f));
        assert_eq!(f, before);
    }

    #[test]
    fn test_set_ce_ipv6_ect1_marks() {
        let mut f = udp6(
            MAC_A,
            MAC_B,
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            1,
        );
        assert!(set_ce(&mut f));
        assert_eq!((f[15] >> 4) & 3, 3);
    }

    #[test]
    fn test_neighbor_advert_checksum_verifies() {
        let mut f = Vec::new();
        let target: Ipv6Addr = "fd00::2".parse().unwrap();
        let req: Ipv6Addr = "fd00::1".parse().unwrap();
        build_neighbor_advert(&mut f, MAC_B, target, MAC_A, req);
        let mut sum = csum_add(0, &target.octets());
        sum = csum_add(sum, &req.octets());
        sum = csum_add(sum, &32u32.to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
        sum = csum_add(sum, &f[54..]);
        assert_eq!(csum_fold(sum), 0);
        let (_, l3) = parse(&f).unwrap();
        let L3::Ipv6(ip) = l3 else { panic!() };
        assert_eq!(ip.icmp.unwrap().kind, ND_NEIGHBOR_ADVERT);
    }

    #[test]
    fn test_finish_partial_csum_matches_full_udp_checksum() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let mut f = udp4(MAC_A, MAC_B, src, dst, 0);
        let udp_len = (f.len() - 34) as u16;
        // What a guest with CSUM offload leaves: pseudo-header sum, not complemented.
        let mut pseudo = csum_add(0, &src.octets());
        pseudo = csum_add(pseudo, &dst.octets());
        pseudo = csum_add(pseudo, &[0, IPPROTO_UDP]);
        pseudo = csum_add(pseudo, &udp_len.to_be_bytes());
        let folded = !csum_fold(pseudo);
        f[40..42].copy_from_slice(&folded.to_be_bytes());
        assert!(finish_partial_csum(&mut f, 34, 6));
        // Verify: pseudo header + UDP segment sums to 0xffff.
        let mut v = csum_add(0, &src.octets());
        v = csum_add(v, &dst.octets());
        v = csum_add(v, &[0, IPPROTO_UDP]);
        v = csum_add(v, &udp_len.to_be_bytes());
        v = csum_add(v, &f[34..]);
        assert_eq!(csum_fold(v), 0);
    }

    #[test]
    fn test_finish_partial_csum_rejects_out_of_range_offsets() {
        let mut f = vec![0u8; 60];
        assert!(!finish_partial_csum(&mut f, 59, 6));
        assert!(!finish_partial_csum(&mut f, usize::MAX, 6));
        assert!(!finish_partial_csum(&mut f, 10, usize::MAX));
    }

    #[test]
    fn test_link_local_from_mac_is_eui64() {
        let ll = link_local_from_mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(ll, "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn test_parse_mac_roundtrip_and_rejects_garbage() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            format_mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            "52:54:00:12:34:56"
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("5:54:00:12:34:56"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }
}
