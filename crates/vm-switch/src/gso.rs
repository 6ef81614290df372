//! Software segmentation (GSO) of TCP segments and checksum completion, for destinations
//! whose guest did not negotiate the offload the sender used.
//!
//! Works on frames whose offload request [`frame::check_offload`] has validated (the caller
//! re-validates what comes out of a ring): the header offsets are known to be inside the
//! frame, so the code below indexes with checked slices only as a second line of defence.

#![forbid(unsafe_code)]

use crate::frame::{
    self, ETH_HLEN, ETHERTYPE_IPV4, Gso, IPPROTO_TCP, Offload, csum_add, csum_fold,
};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// One frame produced by [`segment`]: the bytes and, when the destination takes partial
/// checksums, where the TCP checksum is (`csum_start`, `csum_offset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The frame.
    pub data: Vec<u8>,
    /// The TCP checksum is partial (pseudo-header sum), to be finished by the receiver.
    pub csum: Option<(u16, u16)>,
}

/// Ones'-complement sum of the TCP/IP pseudo-header for an L4 length of `l4_len`.
fn pseudo_sum(frame: &[u8], v4: bool, l4_len: usize) -> u32 {
    let l3 = ETH_HLEN;
    let mut sum = 0;
    if v4 {
        sum = csum_add(sum, frame.get(l3 + 12..l3 + 20).unwrap_or(&[]));
        sum = csum_add(sum, &[0, IPPROTO_TCP]);
        sum = csum_add(sum, &(l4_len as u16).to_be_bytes());
    } else {
        sum = csum_add(sum, frame.get(l3 + 8..l3 + 40).unwrap_or(&[]));
        sum = csum_add(sum, &(l4_len as u32).to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, IPPROTO_TCP]);
    }
    sum
}

/// Splits the validated TCP segment `frame` (`off.gso` is not [`Gso::None`]) into frames of at
/// most `off.gso_size` payload bytes, as a NIC's TSO would: each frame gets the headers with
/// the IP length (and IPv4 id + n, header checksum) and TCP sequence number fixed up; FIN and
/// PSH only on the last frame, CWR only on the first. With `partial_csum` the TCP checksum is
/// left partial (pseudo-header sum, [`Segment::csum`] set) for a receiver with GUEST_CSUM;
/// otherwise it is computed in full. Frames are appended to `out`. Returns false (and appends
/// nothing) when the frame does not match `off`.
pub fn segment(frame: &[u8], off: &Offload, partial_csum: bool, out: &mut Vec<Segment>) -> bool {
    let v4 = match off.gso {
        Gso::Tcp4 => true,
        Gso::Tcp6 => false,
        Gso::None => return false,
    };
    let l4 = usize::from(off.l4);
    let hdr_len = usize::from(off.hdr_len);
    let mss = usize::from(off.gso_size);
    if mss == 0 || hdr_len <= l4 || hdr_len >= frame.len() || l4 < ETH_HLEN + 20 {
        return false;
    }
    if v4 != (frame::parse_eth(frame).map(|e| e.ethertype) == Ok(ETHERTYPE_IPV4)) {
        return false;
    }
    let headers = &frame[..hdr_len];
    let payload = &frame[hdr_len..];
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let flags0 = frame[l4 + 13];
    let id0 = u16::from_be_bytes([frame[ETH_HLEN + 4], frame[ETH_HLEN + 5]]);
    let count = payload.len().div_ceil(mss);
    out.reserve(count);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let mut seg = Vec::with_capacity(hdr_len + chunk.len());
        seg.extend_from_slice(headers);
        seg.extend_from_slice(chunk);
        let l3_len = seg.len() - ETH_HLEN;
        if v4 {
            let ip = &mut seg[ETH_HLEN..l4];
            ip[2..4].copy_from_slice(&(l3_len as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = csum_fold(csum_add(0, ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[ETH_HLEN + 4..ETH_HLEN + 6].copy_from_slice(&((l3_len - 40) as u16).to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 != count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            flags &= !TCP_CWR;
        }
        seg[l4 + 13] = flags;
        let l4_len = seg.len() - l4;
        let pseudo = pseudo_sum(&seg, v4, l4_len);
        // The partial form: the pseudo-header sum, folded but not complemented.
        seg[l4 + 16..l4 + 18].copy_from_slice(&(!csum_fold(pseudo)).to_be_bytes());
        let csum = if partial_csum {
            Some((off.l4, 16))
        } else {
            frame::finish_partial_csum(&mut seg, l4, 16);
            None
        };
        out.push(Segment { data: seg, csum });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{
        ETHERTYPE_IPV6, OffloadCaps, VNET_F_NEEDS_CSUM, VNET_GSO_ECN, VNET_GSO_TCPV4,
        VNET_GSO_TCPV6, VnetHdr, check_offload, check_offload_head, parse, parse_head,
    };
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    /// Independent RFC 1071 checksum: 64-bit accumulation of 16-bit words, folded once at the
    /// end (the code under test folds as it goes).
    fn ref_sum(parts: &[&[u8]]) -> u16 {
        let mut bytes = Vec::new();
        for p in parts {
            bytes.extend_from_slice(p);
        }
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut acc: u64 = 0;
        for w in bytes.chunks(2) {
            acc += u64::from(w[0]) << 8 | u64::from(w[1]);
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// Whether the frame's IPv4 header checksum (if any) and TCP checksum verify.
    fn verify(f: &[u8]) -> bool {
        let v4 = u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE_IPV4;
        if v4 {
            let ihl = usize::from(f[14] & 15) * 4;
            if ref_sum(&[&f[14..14 + ihl]]) != 0xffff {
                return false;
            }
            let l4 = 14 + ihl;
            let len = (f.len() - l4) as u16;
            ref_sum(&[&f[26..34], &[0, 6], &len.to_be_bytes(), &f[l4..]]) == 0xffff
        } else {
            let len = (f.len() - 54) as u32;
            ref_sum(&[&f[22..54], &len.to_be_bytes(), &[0, 0, 0, 6], &f[54..]]) == 0xffff
        }
    }

    /// A TCP segment as a Linux guest with TSO sends it: valid IPv4 header checksum, partial
    /// TCP checksum (pseudo-header sum over the whole segment), 12 bytes of TCP options.
    fn tcp_segment(v4: bool, payload_len: usize, flags: u8) -> (Vec<u8>, VnetHdr) {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        let tcp_len = 32 + payload_len;
        if v4 {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            f.extend_from_slice(&[0x45, 0x02]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
            f.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 1).octets());
            f.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 2).octets());
            let c = csum_fold(csum_add(0, &f[14..34]));
            f[24..26].copy_from_slice(&c.to_be_bytes());
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[IPPROTO_TCP, 64]);
            f.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
            f.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        }
        let l4 = f.len();
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&0xffff_fff0u32.to_be_bytes()); // seq: wraps inside the segment
        f.extend_from_slice(&7u32.to_be_bytes());
        f.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend((0..payload_len).map(|i| (i * 7 + i / 251) as u8));
        let pseudo = pseudo_sum(&f, v4, tcp_len);
        f[l4 + 16..l4 + 18].copy_from_slice(&(!csum_fold(pseudo)).to_be_bytes());
        let h = VnetHdr {
            flags: VNET_F_NEEDS_CSUM,
            gso_type: if v4 { VNET_GSO_TCPV4 } else { VNET_GSO_TCPV6 },
            hdr_len: (l4 + 32) as u16,
            gso_size: if v4 { 1448 } else { 1428 },
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        (f, h)
    }

    fn check_64k(v4: bool) {
        let payload_len = if v4 { 65535 - 20 - 32 } else { 65535 - 32 };
        let (f, h) = tcp_segment(v4, payload_len, 0x18 | TCP_FIN | TCP_CWR);
        let mut h = h;
        h.gso_type |= VNET_GSO_ECN;
        let off = check_offload(&h, &f, OffloadCaps::ALL).expect("valid segment");
        let mss = usize::from(h.gso_size);
        let mut out = Vec::new();
        assert!(segment(&f, &off, false, &mut out));
        assert_eq!(out.len(), payload_len.div_ceil(mss));
        let l4 = usize::from(off.l4);
        let mut payload = Vec::new();
        for (i, s) in out.iter().enumerate() {
            assert!(
                s.data.len() <= 1514,
                "segment {i} is {} bytes",
                s.data.len()
            );
            assert!(verify(&s.data), "checksums of segment {i}");
            assert_eq!(s.csum, None);
            let seq = u32::from_be_bytes(s.data[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add((i * mss) as u32));
            let fl = s.data[l4 + 13];
            let last = i + 1 == out.len();
            assert_eq!(fl & TCP_FIN != 0, last, "FIN only on the last");
            assert_eq!(fl & TCP_PSH != 0, last, "PSH only on the last");
            assert_eq!(fl & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert_eq!(fl & 0x10, 0x10, "ACK everywhere");
            if v4 {
                let id = u16::from_be_bytes([s.data[18], s.data[19]]);
                assert_eq!(id, 0x1234u16.wrapping_add(i as u16));
                let tot = u16::from_be_bytes([s.data[16], s.data[17]]);
                assert_eq!(usize::from(tot), s.data.len() - 14);
            } else {
                let pl = u16::from_be_bytes([s.data[18], s.data[19]]);
                assert_eq!(usize::from(pl), s.data.len() - 54);
            }
            // Headers other than the fixed-up fields are the original ones.
            assert_eq!(s.data[..12], f[..12]);
            assert_eq!(s.data[l4..l4 + 4], f[l4..l4 + 4]);
            assert_eq!(s.data[l4 + 20..l4 + 32], f[l4 + 20..l4 + 32]);
            payload.extend_from_slice(&s.data[l4 + 32..]);
        }
        assert_eq!(payload, f[l4 + 32..], "reassembled payload");

        // Partial form: finishing each one in software gives the same frames.
        let mut partial = Vec::new();
        assert!(segment(&f, &off, true, &mut partial));
        for (p, full) in partial.iter_mut().zip(&out) {
            let (start, offset) = p.csum.expect("partial");
            assert!(frame::finish_partial_csum(
                &mut p.data,
                usize::from(start),
                usize::from(offset)
            ));
            assert_eq!(p.data, full.data);
        }
    }

    #[test]
    fn test_gso_64k_tcpv4_segments_verify_and_reassemble() {
        check_64k(true);
    }

    #[test]
    fn test_gso_64k_tcpv6_segments_verify_and_reassemble() {
        check_64k(false);
    }

    #[test]
    fn test_gso_small_segment_is_one_frame() {
        let (f, h) = tcp_segment(true, 100, 0x18);
        let off = check_offload(&h, &f, OffloadCaps::ALL).unwrap();
        let mut out = Vec::new();
        assert!(segment(&f, &off, false, &mut out));
        assert_eq!(out.len(), 1);
        assert!(verify(&out[0].data));
        assert_eq!(out[0].data.len(), f.len());
    }

    #[test]
    fn test_check_offload_refuses_bad_headers() {
        let (f, h) = tcp_segment(true, 4000, 0x18);
        let caps = OffloadCaps::ALL;
        assert!(check_offload(&h, &f, caps).is_ok());
        let bad = |m: &dyn Fn(&mut VnetHdr)| {
            let mut x = h;
            m(&mut x);
            check_offload(&x, &f, caps).is_err()
        };
        assert!(bad(&|x| x.flags = 2), "DATA_VALID from a driver");
        assert!(bad(&|x| x.flags = 0), "segment without NEEDS_CSUM");
        assert!(
            bad(&|x| x.gso_type = VNET_GSO_TCPV6),
            "v6 type on a v4 frame"
        );
        assert!(bad(&|x| x.gso_type = 3), "UFO");
        assert!(bad(&|x| x.gso_type = 5), "USO");
        assert!(bad(&|x| x.gso_type = 0x80), "ECN flag alone");
        assert!(bad(&|x| x.gso_size = 0));
        assert!(bad(&|x| x.gso_size = 87), "below TCP_MIN_MSS");
        assert!(bad(&|x| x.gso_size = 1500), "frames above the MTU");
        assert!(bad(&|x| x.csum_start = 14), "checksum into the IP header");
        assert!(bad(&|x| x.csum_start = 34 + 2), "checksum across the ports");
        assert!(bad(&|x| x.csum_offset = 0));
        assert!(bad(&|x| x.csum_offset = 6), "UDP offset on TCP");
        assert!(bad(&|x| x.hdr_len = u16::MAX));
        // Not negotiated.
        let no_tso = OffloadCaps {
            tso4: false,
            ..caps
        };
        assert!(check_offload(&h, &f, no_tso).is_err());
        let no_ecn = OffloadCaps { ecn: false, ..caps };
        let mut e = h;
        e.gso_type |= VNET_GSO_ECN;
        assert!(check_offload(&e, &f, no_ecn).is_err());
        assert!(check_offload(&e, &f, caps).is_ok());
        let no_csum = OffloadCaps {
            csum: false,
            ..caps
        };
        let mut c = h;
        c.gso_type = 0;
        assert!(check_offload(&c, &f, no_csum).is_err());
        assert!(
            check_offload(&c, &f, caps).is_ok(),
            "plain partial checksum"
        );
        // A frame whose IP length disagrees with the frame, or is fragmented.
        let mut short = f.clone();
        short.push(0);
        assert!(check_offload(&h, &short, caps).is_err());
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        assert!(check_offload(&h, &frag, caps).is_err());
        // A header that is all zero is a plain frame.
        assert!(check_offload(&VnetHdr::default(), &f, caps).is_ok());
    }

    /// The TX fast path checks a segment on its copied head and its length
    /// (`check_offload_head`, `parse_head`): that must give what the whole frame gives, or an
    /// error, never a different success. Checked for every head length up to beyond the
    /// headers, on TCP segments over IPv4 and IPv6 and on copies with any one header byte
    /// changed (lengths, versions, offsets, protocol, ports), with and without offload.
    #[test]
    fn test_checks_on_a_head_agree_with_the_whole_frame() {
        let caps = OffloadCaps::ALL;
        let mut checked_ok = 0;
        for v4 in [true, false] {
            let (f, h) = tcp_segment(v4, 3000, 0x18);
            let mut frames = vec![f.clone()];
            for i in 0..100 {
                for x in [0x01u8, 0x0f, 0x40, 0x80, 0xff] {
                    let mut g = f.clone();
                    g[i] ^= x;
                    frames.push(g);
                }
            }
            for g in &frames {
                for hdr in [h, VnetHdr::default()] {
                    let whole = check_offload(&hdr, g, caps);
                    let parsed = parse(g);
                    for k in 0..=160 {
                        let head = &g[..k];
                        if let Ok(o) = check_offload_head(&hdr, head, g.len(), caps) {
                            assert_eq!(Ok(o), whole, "offload check on {k} bytes");
                            checked_ok += 1;
                        }
                        if let Ok(p) = parse_head(head, g.len()) {
                            assert_eq!(Ok(p), parsed, "parse on {k} bytes");
                        }
                    }
                    // A head holding all headers decides: the fast path is taken.
                    if whole.is_ok() {
                        assert_eq!(check_offload_head(&hdr, &g[..128], g.len(), caps), whole);
                    }
                    if parsed.is_ok() {
                        assert_eq!(parse_head(&g[..128], g.len()), parsed);
                    }
                    assert_eq!(check_offload_head(&hdr, g, g.len(), caps), whole);
                }
            }
        }
        assert!(checked_ok > 1000, "heads were accepted ({checked_ok})");
    }
}
