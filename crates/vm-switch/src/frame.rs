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
/// Largest Ethernet frame (header included) the switch forwards as one frame on the wire: a
/// 1500-byte MTU plus the header and room for one VLAN tag. Only a validated TSO segment
/// ([`check_offload`]) may be larger, up to [`MAX_GSO_FRAME`].
pub const MAX_FRAME: usize = 1518;
/// Largest TSO segment (Ethernet header included): an IPv6 fixed header with the largest
/// payload length, which is also more than the largest IPv4 datagram.
pub const MAX_GSO_FRAME: usize = ETH_HLEN + 40 + 65535;
/// Smallest `gso_size` accepted: Linux's `TCP_MIN_MSS`. It bounds how many frames software
/// segmentation makes of one segment (at most 745 for a 64 KiB one).
pub const MIN_GSO_SIZE: u16 = 88;
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

/// IPv6 extension header: Hop-by-Hop Options (only directly after the fixed header).
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 extension header: Routing.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 extension header: Fragment.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPsec Encapsulating Security Payload: the switch cannot see behind it and treats it as the
/// upper layer.
pub const IPPROTO_ESP: u8 = 50;
/// IPv6 extension header: IPsec Authentication Header.
pub const IPPROTO_AH: u8 = 51;
/// IPv6 "no next header".
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 extension header: Destination Options.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// The most extension headers [`walk_ipv6_ext`] follows before it gives up on a chain.
pub const MAX_EXT_HEADERS: usize = 8;

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
    /// The upper-layer protocol, behind any extension headers (never an extension header; see
    /// [`walk_ipv6_ext`]). In a [`Fragment::Later`] fragment this is only what the sender
    /// claims: a receiver takes the protocol of a reassembled datagram from its first fragment.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Whether, and which, fragment this is.
    pub fragment: Fragment,
    /// TCP/UDP ports when the upper layer is TCP or UDP and present in this packet.
    pub ports: Ports,
    /// The ICMPv6 message when the upper layer is ICMPv6 and present in this packet (always
    /// present then, except in a [`Fragment::Later`] fragment).
    pub icmp: Option<Icmp6>,
}

/// Where an IPv6 packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fragment {
    /// Not fragmented: no Fragment header, or an atomic fragment (offset 0, no more fragments,
    /// RFC 6946), which is a whole datagram.
    #[default]
    Whole,
    /// The first fragment (offset 0, more to come): it carries the whole header chain and the
    /// start of the upper-layer header.
    First,
    /// A later fragment (offset > 0): only upper-layer bytes, no header of its own.
    Later,
}

/// The end of an IPv6 extension-header chain, as found by [`walk_ipv6_ext`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol number: never one that [`is_extension_header`] accepts.
    pub proto: u8,
    /// Offset of the upper-layer header in the payload walked (at most its length).
    pub offset: usize,
    /// Whether the chain held a Fragment header, and which fragment it described.
    pub fragment: Fragment,
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
    parse_head(frame, frame.len())
}

/// [`parse`] for a frame of `len` bytes of which only the first bytes, `head`, were copied
/// (the TX path copies a segment's headers before its payload: see `backend/tx.rs`). Bytes of
/// `head` beyond `len` are ignored.
///
/// Every length a header claims is checked against `len`, every field is read from `head`.
/// The result is therefore either exactly what [`parse`] returns for the whole frame, or an
/// error: [`ParseError::Truncated`] also when a field the whole frame has lies beyond `head`.
/// A caller that gets an error must decide on the whole frame instead.
pub fn parse_head(head: &[u8], len: usize) -> Result<(EthHeader, L3), ParseError> {
    let head = head.get(..len).unwrap_or(head);
    let eth = parse_eth(head)?;
    let l3_len = len - ETH_HLEN;
    let p = &head[ETH_HLEN..];
    let l3 = match eth.ethertype {
        ETHERTYPE_ARP => L3::Arp(parse_arp(p)?),
        ETHERTYPE_IPV4 => L3::Ipv4(parse_ipv4(p, l3_len)?),
        ETHERTYPE_IPV6 => L3::Ipv6(parse_ipv6(p, l3_len)?),
        other => L3::Other(other),
    };
    Ok((eth, l3))
}

/// The ports of a TCP/UDP header at `at` of `p`, in a packet that ends at `end` (`p` may stop
/// earlier): none when the packet is too short for them, an error when only `p` is.
fn ports_within(p: &[u8], at: usize, end: usize) -> Result<Ports, ParseError> {
    if at + 4 > end {
        return Ok(Ports::default());
    }
    Ok(Ports {
        src: be16(p, at)?,
        dst: be16(p, at + 2)?,
    })
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

/// The IPv4 header at the start of `p`, in a packet of `len` bytes (`p` may stop earlier).
fn parse_ipv4(p: &[u8], len: usize) -> Result<Ipv4, ParseError> {
    let first = *p.first().ok_or(ParseError::Truncated)?;
    if first >> 4 != 4 {
        return Err(ParseError::Invalid);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return Err(ParseError::Invalid);
    }
    let total = usize::from(be16(p, 2)?);
    if total < ihl || total > len {
        return Err(ParseError::Truncated);
    }
    let frag = be16(p, 6)?;
    let proto = *p.get(9).ok_or(ParseError::Truncated)?;
    let first_fragment = frag & 0x1fff == 0;
    let ports = if first_fragment && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        ports_within(p, ihl, total)?
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

/// Whether `proto` is an IPv6 extension header: one [`walk_ipv6_ext`] walks through (Hop-by-Hop,
/// Routing, Fragment, Destination Options, Authentication) or refuses (Mobility, HIP, Shim6 and
/// the experimental 253 and 254). ESP is not one here: nothing behind it can be read, so it is
/// an upper layer as far as the switch is concerned.
pub fn is_extension_header(proto: u8) -> bool {
    matches!(
        proto,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | 135
            | 139
            | 140
            | 253
            | 254
    )
}

/// Walks the IPv6 extension headers at the start of `payload` (the bytes after the fixed
/// header, cut to its payload length), where `first` is the fixed header's Next Header, and
/// returns the upper layer behind them.
///
/// The walk is strict, since a frame is only as safe as what the switch can classify:
/// * Hop-by-Hop, Routing, Destination Options and Authentication headers are skipped by their
///   length; each must fit in `payload`. Hop-by-Hop is only allowed first (RFC 8200 §4.1).
/// * At most [`MAX_EXT_HEADERS`] extension headers; a longer chain is an error.
/// * A Fragment header must be followed directly by the upper layer: no extension header may
///   come after it, so a later, overlapping fragment can never rewrite a Next Header field the
///   switch classified. Only one Fragment header is possible then. In a [`Fragment::Later`]
///   fragment the walk ends at the Fragment header, whose Next Header is returned as claimed.
/// * Mobility, HIP, Shim6 and the experimental headers are refused ([`ParseError::Invalid`]).
///
/// Never panics; the returned offset is at most `payload.len()`.
pub fn walk_ipv6_ext(first: u8, payload: &[u8]) -> Result<UpperLayer, ParseError> {
    let mut proto = first;
    let mut offset = 0usize;
    let mut fragment = Fragment::Whole;
    let mut count = 0usize;
    while is_extension_header(proto) {
        count += 1;
        if count > MAX_EXT_HEADERS {
            return Err(ParseError::Invalid);
        }
        let hdr = payload.get(offset..).ok_or(ParseError::Truncated)?;
        let next = *hdr.first().ok_or(ParseError::Truncated)?;
        let len_field = usize::from(*hdr.get(1).ok_or(ParseError::Truncated)?);
        let len = match proto {
            IPPROTO_HOPOPTS if offset != 0 => return Err(ParseError::Invalid),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => (len_field + 1) * 8,
            // RFC 4302: the length is in 4-octet units, minus 2.
            IPPROTO_AH => (len_field + 2) * 4,
            IPPROTO_FRAGMENT => {
                let off_flags = be16(hdr, 2)?;
                let frag_offset = off_flags >> 3;
                let more = off_flags & 1 != 0;
                fragment = match (frag_offset, more) {
                    (0, false) => Fragment::Whole,
                    (0, true) => Fragment::First,
                    _ => Fragment::Later,
                };
                if is_extension_header(next) {
                    // Nothing but the upper layer may follow a Fragment header (see above).
                    return Err(ParseError::Invalid);
                }
                8
            }
            _ => return Err(ParseError::Invalid),
        };
        if len > hdr.len() {
            return Err(ParseError::Truncated);
        }
        offset += len;
        proto = next;
    }
    Ok(UpperLayer {
        proto,
        offset,
        fragment,
    })
}

/// The IPv6 header at the start of `p`, in a packet of `len` bytes (`p` may stop earlier).
fn parse_ipv6(p: &[u8], len: usize) -> Result<Ipv6, ParseError> {
    if p.len() < 40 {
        return Err(ParseError::Truncated);
    }
    if p[0] >> 4 != 6 {
        return Err(ParseError::Invalid);
    }
    let payload_len = usize::from(be16(p, 4)?);
    if 40 + payload_len > len {
        return Err(ParseError::Truncated);
    }
    // What `p` holds of the payload; the walk fails (Truncated) if it needs more.
    let payload = &p[40..(40 + payload_len).min(p.len())];
    let hop_limit = p[7];
    let upper = walk_ipv6_ext(p[6], payload)?;
    let l4 = &payload[upper.offset..];
    let l4_len = payload_len - upper.offset;
    let mut ports = Ports::default();
    let mut icmp = None;
    if upper.fragment != Fragment::Later {
        match upper.proto {
            IPPROTO_TCP | IPPROTO_UDP => ports = ports_within(l4, 0, l4_len)?,
            IPPROTO_ICMPV6 => {
                // The whole 4-byte ICMPv6 header must be there, even in a first fragment.
                if l4.len() < 4 {
                    return Err(ParseError::Truncated);
                }
                let kind = l4[0];
                let code = l4[1];
                let target = if kind == ND_NEIGHBOR_SOLICIT || kind == ND_NEIGHBOR_ADVERT {
                    Some(v6_at(l4, 8)?)
                } else {
                    None
                };
                icmp = Some(Icmp6 { kind, code, target });
            }
            _ => {}
        }
    }
    Ok(Ipv6 {
        src: v6_at(p, 8)?,
        dst: v6_at(p, 24)?,
        next_header: upper.proto,
        hop_limit,
        fragment: upper.fragment,
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

/// `virtio_net_hdr.flags`: the L4 checksum is partial (`csum_start`/`csum_offset`).
pub const VNET_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the checksum was verified (device to driver only).
pub const VNET_F_DATA_VALID: u8 = 2;
/// `virtio_net_hdr.gso_type`: not a segment.
pub const VNET_GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: TCP over IPv4 segment.
pub const VNET_GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: UDP fragmentation offload (never offered).
pub const VNET_GSO_UDP: u8 = 3;
/// `virtio_net_hdr.gso_type`: TCP over IPv6 segment.
pub const VNET_GSO_TCPV6: u8 = 4;
/// `virtio_net_hdr.gso_type`: UDP segmentation offload (USO; not offered, see docs).
pub const VNET_GSO_UDP_L4: u8 = 5;
/// `virtio_net_hdr.gso_type` flag: the segment has TCP CWR set (ECN).
pub const VNET_GSO_ECN: u8 = 0x80;

/// The guest-controlled fields of a `virtio_net_hdr` (the first 10 bytes; `num_buffers` is
/// only meaningful from device to driver).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `flags` ([`VNET_F_NEEDS_CSUM`], [`VNET_F_DATA_VALID`]).
    pub flags: u8,
    /// `gso_type` ([`VNET_GSO_NONE`] ...; [`VNET_GSO_ECN`] may be or'ed in).
    pub gso_type: u8,
    /// `hdr_len`: a hint, the length of the headers (Linux: of the linear part).
    pub hdr_len: u16,
    /// `gso_size`: the MSS of a segment.
    pub gso_size: u16,
    /// `csum_start`: where the checksummed bytes start.
    pub csum_start: u16,
    /// `csum_offset`: where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header (little-endian, as in VIRTIO 1.0) from its first 10 bytes.
    pub fn from_bytes(b: &[u8; 12]) -> Self {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        }
    }

    /// Writes the header (and `num_buffers`) into `b`.
    pub fn to_bytes(&self, num_buffers: u16) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        b
    }
}

/// The offloads a sender negotiated (what it may put into a header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadCaps {
    /// `VIRTIO_NET_F_CSUM`: partial checksums.
    pub csum: bool,
    /// `VIRTIO_NET_F_HOST_TSO4`.
    pub tso4: bool,
    /// `VIRTIO_NET_F_HOST_TSO6`.
    pub tso6: bool,
    /// `VIRTIO_NET_F_HOST_ECN`: segments with CWR set.
    pub ecn: bool,
}

impl OffloadCaps {
    /// Everything vm-switch offers (used to re-check what a peer child put into a ring).
    pub const ALL: OffloadCaps = OffloadCaps {
        csum: true,
        tso4: true,
        tso6: true,
        ecn: true,
    };
}

/// Which kind of segment a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gso {
    /// One frame.
    None,
    /// A TCP/IPv4 segment.
    Tcp4,
    /// A TCP/IPv6 segment.
    Tcp6,
}

/// A validated offload request: what [`check_offload`] found in the header and the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// The L4 checksum is partial: (`csum_start`, `csum_offset`), checked to be the TCP or UDP
    /// checksum field of this frame.
    pub csum: Option<(u16, u16)>,
    /// Segment kind.
    pub gso: Gso,
    /// MSS of a segment (0 for [`Gso::None`]).
    pub gso_size: u16,
    /// The segment has CWR set ([`VNET_GSO_ECN`]).
    pub ecn: bool,
    /// Offset of the L4 header (valid when `csum` is set).
    pub l4: u16,
    /// Length of all headers (Ethernet, IP, TCP) of a segment; 0 for [`Gso::None`].
    pub hdr_len: u16,
}

impl Offload {
    /// The header to hand to a guest that accepts this frame as it is.
    pub fn to_vnet(&self) -> VnetHdr {
        let mut h = VnetHdr::default();
        if let Some((start, offset)) = self.csum {
            h.flags = VNET_F_NEEDS_CSUM;
            h.csum_start = start;
            h.csum_offset = offset;
        }
        h.gso_type = match self.gso {
            Gso::None => VNET_GSO_NONE,
            Gso::Tcp4 => VNET_GSO_TCPV4,
            Gso::Tcp6 => VNET_GSO_TCPV6,
        };
        if self.ecn {
            h.gso_type |= VNET_GSO_ECN;
        }
        h.gso_size = self.gso_size;
        h.hdr_len = self.hdr_len;
        h
    }
}

/// Why a virtio-net header was refused (all counted as `bad_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `flags` has a bit other than NEEDS_CSUM (DATA_VALID is device-to-driver only).
    #[error("flags {0:#x} has bits a driver must not set")]
    Flags(u8),
    /// `gso_type` is unknown or was not negotiated (UFO, USO, ECN without HOST_ECN, ...).
    #[error("gso_type {0:#x} not negotiated")]
    GsoType(u8),
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM, or a segment without NEEDS_CSUM.
    #[error("checksum offload not negotiated, or a segment without a partial checksum")]
    Csum,
    /// `csum_start`/`csum_offset` are not the TCP or UDP checksum field of the frame.
    #[error("csum_start/csum_offset do not point at the TCP/UDP checksum field")]
    CsumPlace,
    /// `hdr_len` is larger than the frame.
    #[error("hdr_len larger than the frame")]
    HdrLen,
    /// A segment that is not a whole, unfragmented TCP packet of the IP version `gso_type`
    /// names, with lengths that add up (IPv6: without extension headers).
    #[error("a segment that is not a plain TCP packet of its gso_type")]
    Segment,
    /// `gso_size` below [`MIN_GSO_SIZE`], or making frames larger than [`MAX_FRAME`], or a
    /// segment without payload.
    #[error("gso_size out of range")]
    GsoSize,
}

/// Where the L4 header of an IP frame of `len` bytes whose first bytes are `head` is:
/// (offset, protocol, fragmented, end of the IP packet). `None` also when a field lies beyond
/// `head`.
fn locate_l4(head: &[u8], len: usize) -> Option<(usize, u8, bool, usize, u16)> {
    let ethertype = be16(head, 12).ok()?;
    let p = head.get(ETH_HLEN..)?;
    let l3_len = len.checked_sub(ETH_HLEN)?;
    match ethertype {
        ETHERTYPE_IPV4 => {
            let first = *p.first()?;
            if first >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(be16(p, 2).ok()?);
            if ihl < 20 || total < ihl || total > l3_len {
                return None;
            }
            let frag = be16(p, 6).ok()?;
            let fragmented = frag & 0x3fff != 0;
            Some((ETH_HLEN + ihl, *p.get(9)?, fragmented, ETH_HLEN + total, 4))
        }
        ETHERTYPE_IPV6 => {
            if p.len() < 40 || p[0] >> 4 != 6 {
                return None;
            }
            let payload_len = usize::from(be16(p, 4).ok()?);
            if 40 + payload_len > l3_len {
                return None;
            }
            let payload = &p[40..(40 + payload_len).min(p.len())];
            let upper = walk_ipv6_ext(p[6], payload).ok()?;
            Some((
                ETH_HLEN + 40 + upper.offset,
                upper.proto,
                upper.fragment != Fragment::Whole,
                ETH_HLEN + 40 + payload_len,
                6,
            ))
        }
        _ => None,
    }
}

/// Validates the virtio-net header `h` a guest (negotiated `caps`) sent with `frame`.
///
/// Every field is checked against the frame, so nothing the header says can make the switch
/// (or a receiving guest) touch bytes the forwarding decision relied on:
/// * `flags`: only NEEDS_CSUM, and only with VIRTIO_NET_F_CSUM.
/// * NEEDS_CSUM: the frame is an unfragmented IPv4/IPv6 TCP or UDP packet, `csum_start` is its
///   L4 header and `csum_offset` its checksum field (16 or 6), inside the IP packet. So the
///   two bytes a checksum is written to never overlap an address, a port or an ICMPv6 type.
/// * `gso_type`: NONE, or TCPV4/TCPV6 when HOST_TSO4/6 was negotiated, with the ECN flag only
///   when HOST_ECN was; never UDP (UFO) or UDP_L4 (USO).
/// * A segment: NEEDS_CSUM set, a TCP packet of the version `gso_type` names, not fragmented,
///   IP lengths equal to the frame's, IPv6 without extension headers, TCP header inside the
///   frame, some payload, and `gso_size` in [`MIN_GSO_SIZE`]`..` with headers + `gso_size` ≤
///   [`MAX_FRAME`].
/// * `hdr_len`: at most the frame's length. It is only a hint (Linux puts the length of its
///   linear part there); the switch computes the header length itself and never uses it.
///
/// Never panics.
pub fn check_offload(h: &VnetHdr, frame: &[u8], caps: OffloadCaps) -> Result<Offload, HeaderError> {
    check_offload_head(h, frame, frame.len(), caps)
}

/// [`check_offload`] for a frame of `len` bytes of which only the first bytes, `head`, were
/// copied (see [`parse_head`]): the result is exactly [`check_offload`]'s for the whole frame,
/// or an error, also when a header field lies beyond `head`. Bytes of `head` beyond `len` are
/// ignored.
pub fn check_offload_head(
    h: &VnetHdr,
    head: &[u8],
    len: usize,
    caps: OffloadCaps,
) -> Result<Offload, HeaderError> {
    let frame = head.get(..len).unwrap_or(head);
    if h.flags & !VNET_F_NEEDS_CSUM != 0 {
        return Err(HeaderError::Flags(h.flags));
    }
    let ecn = h.gso_type & VNET_GSO_ECN != 0;
    let gso = match h.gso_type & !VNET_GSO_ECN {
        VNET_GSO_NONE if !ecn => Gso::None,
        VNET_GSO_TCPV4 if caps.tso4 && (!ecn || caps.ecn) => Gso::Tcp4,
        VNET_GSO_TCPV6 if caps.tso6 && (!ecn || caps.ecn) => Gso::Tcp6,
        _ => return Err(HeaderError::GsoType(h.gso_type)),
    };
    if usize::from(h.hdr_len) > len {
        return Err(HeaderError::HdrLen);
    }
    let needs_csum = h.flags & VNET_F_NEEDS_CSUM != 0;
    if needs_csum && !caps.csum {
        return Err(HeaderError::Csum);
    }
    let mut off = Offload {
        csum: None,
        gso,
        gso_size: 0,
        ecn,
        l4: 0,
        hdr_len: 0,
    };
    if needs_csum {
        let (l4, proto, fragmented, end, _) =
            locate_l4(frame, len).ok_or(HeaderError::CsumPlace)?;
        let field = match proto {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            _ => return Err(HeaderError::CsumPlace),
        };
        if fragmented
            || usize::from(h.csum_start) != l4
            || h.csum_offset != field
            || l4 + usize::from(field) + 2 > end
        {
            return Err(HeaderError::CsumPlace);
        }
        off.csum = Some((h.csum_start, h.csum_offset));
        off.l4 = h.csum_start;
    }
    if gso == Gso::None {
        return Ok(off);
    }
    if !needs_csum {
        return Err(HeaderError::Csum);
    }
    let (l4, proto, fragmented, end, version) =
        locate_l4(frame, len).ok_or(HeaderError::Segment)?;
    let want = if gso == Gso::Tcp4 { 4 } else { 6 };
    if proto != IPPROTO_TCP
        || fragmented
        || version != want
        || end != len
        || (version == 6 && l4 != ETH_HLEN + 40)
    {
        return Err(HeaderError::Segment);
    }
    let doff = usize::from(frame.get(l4 + 12).ok_or(HeaderError::Segment)? >> 4) * 4;
    let headers = l4 + doff;
    if doff < 20 || headers >= len {
        return Err(HeaderError::Segment);
    }
    if h.gso_size < MIN_GSO_SIZE || headers + usize::from(h.gso_size) > MAX_FRAME {
        return Err(HeaderError::GsoSize);
    }
    off.gso_size = h.gso_size;
    off.hdr_len = headers as u16;
    Ok(off)
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

/// Builds an Ethernet + IPv6 frame with the extension headers `ext`, each given as its type and
/// its bytes (whose first byte, the Next Header, is filled in here), then the upper layer
/// `upper` (protocol, bytes). Checksums are left as given. For tests, fuzz seeds and benchmarks.
pub fn build_ipv6(
    macs: (Mac, Mac),
    addrs: (Ipv6Addr, Ipv6Addr),
    hop_limit: u8,
    ext: &[(u8, &[u8])],
    upper: (u8, &[u8]),
) -> Vec<u8> {
    let (src_mac, dst_mac) = macs;
    let (src, dst) = addrs;
    let (proto, body) = upper;
    let payload_len = ext.iter().map(|(_, h)| h.len()).sum::<usize>() + body.len();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload_len as u16).to_be_bytes());
    f.push(ext.first().map_or(proto, |(t, _)| *t));
    f.push(hop_limit);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    for (i, (_, h)) in ext.iter().enumerate() {
        let start = f.len();
        f.extend_from_slice(h);
        if let Some(nh) = f.get_mut(start) {
            *nh = ext.get(i + 1).map_or(proto, |(t, _)| *t);
        }
    }
    f.extend_from_slice(body);
    f
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

    /// An extension-header chain for [`build_ipv6`].
    pub(crate) type Chain<'a> = &'a [(u8, &'a [u8])];

    /// Hop-by-Hop options: one PadN option filling 8 bytes.
    pub(crate) const HBH: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
    /// Destination options: the same padding.
    pub(crate) const DSTOPTS: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
    /// Routing header of the experimental type 253 with no segments left (receivers skip it).
    pub(crate) const ROUTING: [u8; 8] = [0, 0, 253, 0, 0, 0, 0, 0];
    /// Authentication header with a 12-byte ICV (payload length 4: 24 bytes).
    pub(crate) const AH: [u8; 24] = [
        0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// A Fragment header at `offset` (8-byte units), with the M flag `more`.
    pub(crate) fn frag(offset: u16, more: bool) -> [u8; 8] {
        let v = (offset << 3) | u16::from(more);
        let [hi, lo] = v.to_be_bytes();
        [0, 0, hi, lo, 0, 0, 0x12, 0x34]
    }

    /// ICMPv6 router advertisement (no options).
    pub(crate) fn router_advert() -> Vec<u8> {
        vec![134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    /// ICMPv6 neighbour advertisement (Override) for `target`.
    pub(crate) fn neighbor_advert_msg(target: Ipv6Addr) -> Vec<u8> {
        let mut m = vec![ND_NEIGHBOR_ADVERT, 0, 0, 0, 0x20, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m
    }

    /// ICMPv6 redirect: `dst` is better reached through `target`.
    pub(crate) fn redirect(target: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut m = vec![137, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&target.octets());
        m.extend_from_slice(&dst.octets());
        m
    }

    /// A UDP header and 10 bytes of payload, ports 1 → 2.
    pub(crate) fn udp_msg() -> Vec<u8> {
        let mut m = vec![0, 1, 0, 2, 0, 18, 0, 0];
        m.extend_from_slice(&[0xcd; 10]);
        m
    }

    /// A TCP header (SYN), ports 3 → 4.
    pub(crate) fn tcp_msg() -> Vec<u8> {
        let mut m = vec![0, 3, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff];
        m.extend_from_slice(&[0, 0, 0, 0]);
        m
    }

    /// Ethernet + IPv6 (hop limit 255) with extension headers, from `MAC_A` to `dst_mac`.
    pub(crate) fn v6_ext(
        dst_mac: Mac,
        src: &str,
        dst: &str,
        ext: &[(u8, &[u8])],
        upper: (u8, &[u8]),
    ) -> Vec<u8> {
        build_ipv6(
            (MAC_A, dst_mac),
            (src.parse().unwrap(), dst.parse().unwrap()),
            255,
            ext,
            upper,
        )
    }

    fn ipv6_of(f: &[u8]) -> Result<Ipv6, ParseError> {
        match parse(f)?.1 {
            L3::Ipv6(ip) => Ok(ip),
            other => panic!("not IPv6: {other:?}"),
        }
    }

    #[test]
    fn test_ipv6_router_advert_behind_hop_by_hop_is_classified_as_icmpv6() {
        let ra = router_advert();
        let f = v6_ext(
            MAC_B,
            "fe80::1",
            "ff02::1",
            &[(IPPROTO_HOPOPTS, &HBH)],
            (IPPROTO_ICMPV6, &ra),
        );
        let ip = ipv6_of(&f).unwrap();
        assert_eq!(ip.next_header, IPPROTO_ICMPV6);
        assert_eq!(ip.fragment, Fragment::Whole);
        assert_eq!(ip.icmp.map(|i| i.kind), Some(134));
    }

    #[test]
    fn test_ipv6_icmpv6_behind_dstopts_routing_and_ah_is_classified() {
        let ra = router_advert();
        let target: Ipv6Addr = "fd00::2".parse().unwrap();
        let na = neighbor_advert_msg(target);
        let rd = redirect(target, "fd00::9".parse().unwrap());
        let chains: [&[(u8, &[u8])]; 4] = [
            &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_ROUTING, &ROUTING)],
            &[
                (IPPROTO_HOPOPTS, &HBH),
                (IPPROTO_DSTOPTS, &DSTOPTS),
                (IPPROTO_ROUTING, &ROUTING),
                (IPPROTO_AH, &AH),
                (IPPROTO_DSTOPTS, &DSTOPTS),
            ],
            &[(IPPROTO_AH, &AH)],
            &[(IPPROTO_FRAGMENT, &frag(0, false))],
        ];
        for chain in chains {
            for (msg, kind) in [(&ra, 134), (&na, ND_NEIGHBOR_ADVERT), (&rd, 137)] {
                let f = v6_ext(MAC_B, "fd00::1", "ff02::1", chain, (IPPROTO_ICMPV6, msg));
                let ip = ipv6_of(&f).unwrap_or_else(|e| panic!("{chain:?}: {e}"));
                assert_eq!(ip.next_header, IPPROTO_ICMPV6, "{chain:?}");
                assert_eq!(ip.fragment, Fragment::Whole, "atomic fragment is whole");
                assert_eq!(ip.icmp.map(|i| i.kind), Some(kind), "{chain:?}");
            }
        }
        let f = v6_ext(
            MAC_B,
            "fd00::1",
            "fd00::2",
            &[(IPPROTO_HOPOPTS, &HBH)],
            (IPPROTO_ICMPV6, &na),
        );
        assert_eq!(ipv6_of(&f).unwrap().icmp.unwrap().target, Some(target));
    }

    #[test]
    fn test_ipv6_udp_and_tcp_behind_hop_by_hop_read_the_upper_layer_ports() {
        let udp = udp_msg();
        let f = v6_ext(
            MAC_B,
            "fd00::1",
            "fd00::2",
            &[(IPPROTO_HOPOPTS, &HBH)],
            (IPPROTO_UDP, &udp),
        );
        let ip = ipv6_of(&f).unwrap();
        assert_eq!(ip.next_header, IPPROTO_UDP);
        assert_eq!(ip.ports, Ports { src: 1, dst: 2 });
        let tcp = tcp_msg();
        let f = v6_ext(
            MAC_B,
            "fd00::1",
            "fd00::2",
            &[(IPPROTO_HOPOPTS, &HBH), (IPPROTO_DSTOPTS, &DSTOPTS)],
            (IPPROTO_TCP, &tcp),
        );
        let ip = ipv6_of(&f).unwrap();
        assert_eq!(ip.next_header, IPPROTO_TCP);
        assert_eq!(ip.ports, Ports { src: 3, dst: 4 });
    }

    #[test]
    fn test_ipv6_fragments_are_told_apart() {
        let ra = router_advert();
        let first = v6_ext(
            MAC_B,
            "fd00::1",
            "fd00::2",
            &[(IPPROTO_HOPOPTS, &HBH), (IPPROTO_FRAGMENT, &frag(0, true))],
            (IPPROTO_ICMPV6, &ra),
        );
        let ip = ipv6_of(&first).unwrap();
        assert_eq!(ip.fragment, Fragment::First);
        assert_eq!(ip.next_header, IPPROTO_ICMPV6);
        assert_eq!(ip.icmp.map(|i| i.kind), Some(134));
        // A later fragment has no header of its own: its bytes are not read as one.
        let later = v6_ext(
            MAC_B,
            "fd00::1",
            "fd00::2",
            &[(IPPROTO_FRAGMENT, &frag(2, false))],
            (IPPROTO_ICMPV6, &ra),
        );
        let ip = ipv6_of(&later).unwrap();
        assert_eq!(ip.fragment, Fragment::Later);
        assert_eq!(ip.next_header, IPPROTO_ICMPV6);
        assert_eq!(ip.icmp, None);
        let udp = udp_msg();
        let later = v6_ext(
            MAC_B,
            "fd00::1",
            "fd00::2",
            &[(IPPROTO_FRAGMENT, &frag(1, true))],
            (IPPROTO_UDP, &udp),
        );
        let ip = ipv6_of(&later).unwrap();
        assert_eq!(ip.ports, Ports::default(), "no ports in a later fragment");
    }

    #[test]
    fn test_ipv6_chains_that_cannot_be_classified_are_errors() {
        let ra = router_advert();
        let bad: [(Chain, ParseError); 7] = [
            // Hop-by-Hop anywhere but first.
            (
                &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_HOPOPTS, &HBH)],
                ParseError::Invalid,
            ),
            // An extension header behind a Fragment header.
            (
                &[
                    (IPPROTO_FRAGMENT, &frag(0, true)),
                    (IPPROTO_DSTOPTS, &DSTOPTS),
                ],
                ParseError::Invalid,
            ),
            (
                &[
                    (IPPROTO_FRAGMENT, &frag(3, false)),
                    (IPPROTO_DSTOPTS, &DSTOPTS),
                ],
                ParseError::Invalid,
            ),
            (
                &[
                    (IPPROTO_FRAGMENT, &frag(0, false)),
                    (IPPROTO_FRAGMENT, &frag(0, false)),
                ],
                ParseError::Invalid,
            ),
            // Headers the switch does not walk: Mobility, experimental.
            (&[(135, &DSTOPTS)], ParseError::Invalid),
            (&[(253, &DSTOPTS)], ParseError::Invalid),
            // More than MAX_EXT_HEADERS.
            (
                &[(IPPROTO_DSTOPTS, &DSTOPTS as &[u8]); MAX_EXT_HEADERS + 1],
                ParseError::Invalid,
            ),
        ];
        for (chain, want) in bad {
            let f = v6_ext(MAC_B, "fd00::1", "ff02::1", chain, (IPPROTO_ICMPV6, &ra));
            assert_eq!(ipv6_of(&f), Err(want), "{chain:?}");
        }
        let f = v6_ext(
            MAC_B,
            "fd00::1",
            "ff02::1",
            &[(IPPROTO_DSTOPTS, &DSTOPTS as &[u8]); MAX_EXT_HEADERS],
            (IPPROTO_ICMPV6, &ra),
        );
        assert!(ipv6_of(&f).is_ok(), "{MAX_EXT_HEADERS} headers are fine");
    }

    #[test]
    fn test_ipv6_truncated_chains_are_errors() {
        // A header whose length runs past the payload.
        let mut long_hbh = HBH;
        long_hbh[1] = 3;
        let f = v6_ext(
            MAC_B,
            "fd00::1",
            "ff02::1",
            &[(IPPROTO_HOPOPTS, &long_hbh)],
            (IPPROTO_ICMPV6, &router_advert()),
        );
        assert_eq!(ipv6_of(&f), Err(ParseError::Truncated));
        // Every cut of a full chain, with the payload length saying so: never classified.
        let ra = router_advert();
        let full = v6_ext(
            MAC_B,
            "fd00::1",
            "ff02::1",
            &[
                (IPPROTO_HOPOPTS, &HBH),
                (IPPROTO_ROUTING, &ROUTING),
                (IPPROTO_AH, &AH),
                (IPPROTO_FRAGMENT, &frag(0, true)),
            ],
            (IPPROTO_ICMPV6, &ra),
        );
        let upper_at = ETH_HLEN + 40 + 8 + 8 + 24 + 8;
        for len in ETH_HLEN + 40..upper_at + 4 {
            let mut f = full[..len].to_vec();
            let payload = (len - ETH_HLEN - 40) as u16;
            f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload.to_be_bytes());
            assert_eq!(ipv6_of(&f), Err(ParseError::Truncated), "cut at {len}");
        }
        let mut f = full[..upper_at + 4].to_vec();
        let payload = (upper_at + 4 - ETH_HLEN - 40) as u16;
        f[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&payload.to_be_bytes());
        assert_eq!(ipv6_of(&f).unwrap().icmp.map(|i| i.kind), Some(134));
    }

    #[test]
    fn test_walk_ipv6_ext_offsets_stay_within_the_payload() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&HBH);
        payload.extend_from_slice(&AH);
        payload[0] = IPPROTO_AH;
        payload[8] = IPPROTO_UDP;
        let up = walk_ipv6_ext(IPPROTO_HOPOPTS, &payload).unwrap();
        assert_eq!(
            up,
            UpperLayer {
                proto: IPPROTO_UDP,
                offset: 32,
                fragment: Fragment::Whole
            }
        );
        assert!(walk_ipv6_ext(IPPROTO_HOPOPTS, &payload[..31]).is_err());
        assert_eq!(walk_ipv6_ext(IPPROTO_TCP, &[]).unwrap().offset, 0);
        assert!(walk_ipv6_ext(IPPROTO_HOPOPTS, &[]).is_err());
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
