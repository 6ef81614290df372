//! A message-level relay between a vhost-user frontend (QEMU) and a `vhost-user-backend`
//! daemon, which delays the `SET_VRING_ENABLE` messages QEMU 7.2 sends before `SET_FEATURES`.
//!
//! Why: QEMU 7.2's virtio-net calls `vhost_set_vring_enable()` when the guest acks its
//! features (`virtio_net_set_queue_pairs` → `peer_attach`), before `vhost_net_start` sends
//! `SET_FEATURES`. The vhost-user spec allows `SET_VRING_ENABLE` only after
//! `VHOST_USER_F_PROTOCOL_FEATURES` was acked, and `vhost-user-backend` 0.24 enforces that:
//! it answers "inactive feature: 1073741824" and drops the connection (QEMU then prints
//! "Failed to set msg fds."). Offering no protocol features doesn't help either: QEMU 7.2
//! then fails `vhost_net_start` with EINVAL ("unable to start vhost net: 22") because it
//! replays the remembered enable state. So the relay holds the early messages back and sends
//! the last state of each ring right after `SET_FEATURES`, which is the state QEMU believes
//! the rings are in. Without `REPLY_ACK` QEMU expects no answer to them.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// vhost-user header: request (u32), flags (u32), payload size (u32), little endian.
const HDR: usize = 12;
/// Largest payload relayed (the biggest QEMU sends, SET_MEM_TABLE with 8 regions or a config
/// space, is a few hundred bytes).
const MAX_PAYLOAD: usize = 64 << 10;
/// Most file descriptors one message carries (SET_MEM_TABLE: one per region, at most 8).
const MAX_FDS: usize = 32;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;

struct Msg {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
}

impl Msg {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // Our copies of the passed descriptors; the receiver got its own.
        for fd in self.fds.drain(..) {
            let _ = nix::unistd::close(fd);
        }
    }
}

fn recv_msg(sock: &UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = [0u8; HDR];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut msg = Msg {
        bytes: Vec::new(),
        fds: Vec::new(),
    };
    let n = {
        let mut iov = [IoSliceMut::new(&mut hdr)];
        let r = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in r.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                msg.fds.extend(fds);
            }
        }
        r.bytes
    };
    if n == 0 {
        return Ok(None);
    }
    let mut s = sock;
    s.read_exact(&mut hdr[n..])?;
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user message with a {size}-byte payload"),
        ));
    }
    msg.bytes = Vec::with_capacity(HDR + size);
    msg.bytes.extend_from_slice(&hdr);
    msg.bytes.resize(HDR + size, 0);
    s.read_exact(&mut msg.bytes[HDR..])?;
    Ok(Some(msg))
}

fn send_msg(sock: &UnixStream, msg: &Msg) -> io::Result<()> {
    let rights = [ControlMessage::ScmRights(&msg.fds)];
    let cmsgs: &[ControlMessage<'_>] = if msg.fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&msg.bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    let mut s = sock;
    s.write_all(&msg.bytes[n..])
}

/// Copies messages from `from` to `to` until either side closes. With `filter` (the
/// frontend-to-backend direction), `SET_VRING_ENABLE`s before the first `SET_FEATURES` are
/// held back, and the last one per ring is sent right after `SET_FEATURES`: QEMU 7.2 does not
/// repeat them, and a backend that acked `VHOST_USER_F_PROTOCOL_FEATURES` keeps its rings
/// disabled until told otherwise.
fn pump(from: &UnixStream, to: &UnixStream, filter: bool) {
    let mut features_set = !filter;
    let mut held: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while let Ok(Some(msg)) = recv_msg(from) {
        let request = msg.request();
        if !features_set && request == SET_VRING_ENABLE && msg.bytes.len() >= HDR + 8 {
            let ring = u32::from_le_bytes([
                msg.bytes[HDR],
                msg.bytes[HDR + 1],
                msg.bytes[HDR + 2],
                msg.bytes[HDR + 3],
            ]);
            held.insert(ring, msg.bytes.clone());
            continue;
        }
        if send_msg(to, &msg).is_err() {
            break;
        }
        if !features_set && request == SET_FEATURES {
            features_set = true;
            let replay = std::mem::take(&mut held).into_values().map(|bytes| Msg {
                bytes,
                fds: Vec::new(),
            });
            if replay.into_iter().any(|m| send_msg(to, &m).is_err()) {
                break;
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A running relay; [`Relay::stop`] closes both connections and joins its threads.
pub(crate) struct Relay {
    streams: [UnixStream; 2],
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    pub(crate) fn start(frontend: UnixStream, backend: UnixStream) -> io::Result<Relay> {
        let streams = [frontend.try_clone()?, backend.try_clone()?];
        let (f2, b2) = (frontend.try_clone()?, backend.try_clone()?);
        let down = std::thread::Builder::new()
            .name("vu-relay-in".into())
            .spawn(move || pump(&frontend, &backend, true))?;
        let up = std::thread::Builder::new()
            .name("vu-relay-out".into())
            .spawn(move || pump(&b2, &f2, false))?;
        Ok(Relay {
            streams,
            threads: vec![down, up],
        })
    }

    pub(crate) fn stop(mut self) {
        for s in &self.streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
