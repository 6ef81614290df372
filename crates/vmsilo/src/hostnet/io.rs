//! The I/O of host networking, kept thin: an rtnetlink socket (netlink-packet-route over a
//! blocking netlink-sys socket) to observe links and addresses and to carry out [`Op`]s, the
//! tun ioctls to create TAPs (`crate::sys`), `/proc/sys/net/ipv4/ip_forward`, and
//! `nft -j -f -` for the nftables batches. Nothing here decides anything.

use std::io::{self, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use vmsilo_config::net::Cidr;

use super::{Link, LinkKind, Observed, Op};

/// `/proc/sys/net/ipv4/ip_forward` (per network namespace).
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// `IFLA_TUN_OWNER` (linux/if_link.h).
const IFLA_TUN_OWNER: u16 = 1;
/// `IFLA_TUN_TYPE`: `IFF_TUN` (1) or `IFF_TAP` (2).
const IFLA_TUN_TYPE: u16 = 3;

/// A route netlink socket.
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens the socket (in this process's network namespace).
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends one request and collects the replies until the ACK or the end of the dump.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink message of length 0",
                    ));
                }
                offset += len;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every link and its addresses.
    pub fn links(&mut self) -> io::Result<std::collections::BTreeMap<String, Link>> {
        let mut links = std::collections::BTreeMap::new();
        let dump = NLM_F_REQUEST | NLM_F_DUMP;
        let replies = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), dump)?;
        for m in replies {
            if let RouteNetlinkMessage::NewLink(l) = m
                && let Some((name, link)) = parse_link(&l)
            {
                links.insert(name, link);
            }
        }
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            dump,
        )?;
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(addr) = addr
                && let Some(link) = links.values_mut().find(|l| l.index == a.header.index)
            {
                link.addresses.push(Cidr {
                    addr,
                    prefix: a.header.prefix_len,
                });
            }
        }
        Ok(links)
    }

    fn index(&mut self, name: &str) -> io::Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST | NLM_F_ACK)?;
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name}")))
    }

    fn set_link(&mut self, name: &str, edit: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(name)?;
        edit(&mut msg);
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_REQUEST | NLM_F_ACK)
            .map(drop)
    }

    fn address(&mut self, link: &str, cidr: Cidr, add: bool) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = self.index(link)?;
        msg.header.prefix_len = cidr.prefix;
        msg.header.family = match cidr.addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.attributes.push(AddressAttribute::Local(cidr.addr));
        msg.attributes.push(AddressAttribute::Address(cidr.addr));
        if let IpAddr::V4(a) = cidr.addr
            && cidr.prefix < 31
        {
            let brd = u32::from(a) | (u32::MAX >> cidr.prefix);
            msg.attributes.push(AddressAttribute::Broadcast(brd.into()));
        }
        if add {
            self.request(
                RouteNetlinkMessage::NewAddress(msg),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            self.request(
                RouteNetlinkMessage::DelAddress(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
        }
        .map(drop)
    }

    fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = self.index(name)?;
        self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_REQUEST | NLM_F_ACK)
            .map(drop)
    }
}

fn parse_link(l: &LinkMessage) -> Option<(String, Link)> {
    let mut name = None;
    let mut kind = LinkKind::Other(None);
    let mut owner = None;
    let mut master = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(m) if *m != 0 => master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
                        // The kernel sends the kind before the data, which says TUN or TAP.
                        LinkInfo::Kind(InfoKind::Tun) => kind = LinkKind::Tap,
                        LinkInfo::Kind(k) => kind = LinkKind::Other(Some(k.to_string())),
                        LinkInfo::Data(InfoData::Tun(nlas)) => {
                            for tun in nlas {
                                let InfoTun::Other(nla) = tun else {
                                    continue;
                                };
                                let mut v = vec![0u8; nla.value_len()];
                                nla.emit_value(&mut v);
                                match (nla.kind(), v.as_slice()) {
                                    (IFLA_TUN_OWNER, [a, b, c, d]) => {
                                        owner = Some(u32::from_ne_bytes([*a, *b, *c, *d]));
                                    }
                                    (IFLA_TUN_TYPE, [1]) => kind = LinkKind::Tun,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        name?,
        Link {
            index: l.header.index,
            kind,
            owner,
            master,
            up: l.header.flags.contains(LinkFlags::Up),
            addresses: Vec::new(),
        },
    ))
}

/// Reads the kernel state: links with their addresses, and `ip_forward`.
pub fn observe(rtnl: &mut Rtnl) -> Result<Observed, String> {
    let links = rtnl
        .links()
        .map_err(|e| format!("cannot list the network interfaces over rtnetlink: {e}"))?;
    let ip_forward = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| format!("cannot read {IP_FORWARD}: {e}"))?
        .trim()
        == "1";
    Ok(Observed { links, ip_forward })
}

/// Runs one nftables JSON batch with `nft -j -f -`.
pub fn nft(batch: &serde_json::Value) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run nft: {e}: install nftables (Debian: apt install nftables)")
        })?;
    // An nft that fails early may close its stdin before reading it all: its status and
    // stderr say why, not the broken pipe.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(batch.to_string().as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot wait for nft: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.trim().chars().take(2000).collect();
        return Err(format!("nft failed ({}): {err}", out.status));
    }
    match written {
        Some(Err(e)) => Err(format!("cannot write to nft: {e}")),
        _ => Ok(()),
    }
}

/// Carries out one operation.
pub fn apply(rtnl: &mut Rtnl, op: &Op) -> Result<(), String> {
    let res = match op {
        Op::CreateTap { name, uid } => crate::sys::create_persistent_tap(name, *uid),
        Op::DeleteLink { name } => rtnl.delete_link(name),
        Op::SetUp { link } => rtnl.set_link(link, |m| {
            m.header.flags |= LinkFlags::Up;
            m.header.change_mask |= LinkFlags::Up;
        }),
        Op::SetDown { link } => rtnl.set_link(link, |m| {
            m.header.flags.remove(LinkFlags::Up);
            m.header.change_mask |= LinkFlags::Up;
        }),
        Op::AddAddress { link, address } => rtnl.address(link, *address, true),
        Op::DelAddress { link, address } => rtnl.address(link, *address, false),
        Op::SetMaster { link, bridge } => match rtnl.index(bridge) {
            Ok(b) => rtnl.set_link(link, |m| m.attributes.push(LinkAttribute::Controller(b))),
            Err(e) => Err(e),
        },
        Op::NoMaster { link } => {
            rtnl.set_link(link, |m| m.attributes.push(LinkAttribute::Controller(0)))
        }
        Op::SetForwarding(on) => std::fs::write(IP_FORWARD, if *on { "1\n" } else { "0\n" }),
        Op::Nft(batch) => return nft(batch).map_err(|e| format!("cannot {op}: {e}")),
    };
    res.map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(nix::libc::EPERM) | Some(nix::libc::EACCES) => ": run as root (CAP_NET_ADMIN)",
            _ => "",
        };
        format!("cannot {op}: {e}{hint}")
    })
}
