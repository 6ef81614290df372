//! A vhost-user message relay between a frontend (QEMU, crosvm) and a `vhost-user-backend`
//! daemon, which defers `SET_VRING_ENABLE` messages that arrive before `SET_FEATURES`.
//!
//! Why: QEMU 7.2's virtio-net enables the rings when the guest acks its features
//! (`virtio_net_set_queue_pairs` → `peer_attach` → `vhost_set_vring_enable`), before
//! `vhost_net_start` sends `SET_FEATURES`. The vhost-user spec only allows `SET_VRING_ENABLE`
//! once `VHOST_USER_F_PROTOCOL_FEATURES` has been acked, and rust-vmm's backend enforces it
//! by dropping the connection. crosvm sends them in the spec's order, so for crosvm the relay
//! is a plain pass-through.
//!
//! The relay keeps the last early enable state of each ring (acknowledging it itself when the
//! frontend asked for a reply) and forwards those states right after `SET_FEATURES`. Every
//! other message, with its file descriptors, passes unchanged in both directions.
//!
//! Users: vm-switch's port children, whose daemon end is a connection the main process
//! created (the sandboxed child cannot create sockets), and the test hub of `vmsilo-testkit`.
//!
//! [`Filter::SoundNoCapture`] also makes the relay a virtio-sound capture filter
//! (`vmsilo sound-filter`, used for VMs with `sound.capture = false`): the backend never sees
//! the capture ring (`rxq`, ring 3), so no recorded sample can reach guest memory whatever the
//! guest driver asks for on the control queue, and the device configuration the frontend reads
//! (`GET_CONFIG`) announces no jacks, one stream and one channel map, so a well-behaved driver
//! creates a playback-only PCM. The stream and channel-map counts rely on vhost-device-sound's
//! layout (0.3: stream 0 and channel map 0 are the output ones, 1 the input ones).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

const HDR: usize = 12;

/// Takes ownership of file descriptors the kernel just installed in this process (received
/// with `SCM_RIGHTS`, by the `recvmsg` call that just returned them). Negative entries are
/// skipped.
pub fn adopt_fds(raw: &[RawFd]) -> Vec<OwnedFd> {
    raw.iter()
        .filter(|fd| **fd >= 0)
        .map(|fd| vmsilo_sys::owned_fd(*fd))
        .collect()
}
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;
const SET_FEATURES: u32 = 2;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const SET_VRING_ERR: u32 = 14;
const SET_VRING_ENABLE: u32 = 18;
const GET_CONFIG: u32 = 24;
/// virtio-sound's capture ring (`rxq`).
const SOUND_RX_RING: u32 = 3;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Ring indices below this are held back before `SET_FEATURES`.
const MAX_HELD_RINGS: u32 = 64;

struct Msg {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn word(&self, at: usize) -> u32 {
        self.bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn request(&self) -> u32 {
        self.word(0)
    }
    fn flags(&self) -> u32 {
        self.word(4)
    }
}

fn bad(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_owned())
}

/// Reads one vhost-user message; `Ok(None)` on a clean end of stream.
fn recv_msg(sock: &UnixStream) -> io::Result<Option<Msg>> {
    let mut hdr = [0u8; HDR];
    let mut got = 0;
    let mut fds = Vec::new();
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    while got < HDR {
        let mut iov = [IoSliceMut::new(&mut hdr[got..])];
        let r = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let msg = match r {
            Ok(m) => m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut raw = Vec::new();
        if let Ok(it) = msg.cmsgs() {
            for c in it {
                if let ControlMessageOwned::ScmRights(v) = c {
                    raw.extend(v);
                }
            }
        }
        let n = msg.bytes;
        fds.extend(adopt_fds(&raw));
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(bad("truncated vhost-user header"))
            };
        }
        got += n;
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(bad("vhost-user payload too large"));
    }
    let mut bytes = hdr.to_vec();
    bytes.resize(HDR + size, 0);
    let mut s = sock;
    s.read_exact(&mut bytes[HDR..])?;
    Ok(Some(Msg { bytes, fds }))
}

fn send_msg(sock: &UnixStream, msg: &Msg) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let mut sent = 0;
    let mut first = true;
    while sent < msg.bytes.len() {
        let iov = [IoSlice::new(&msg.bytes[sent..])];
        let c: &[ControlMessage<'_>] = if first { cmsgs } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, c, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => {
                sent += n;
                first = false;
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What the relay changes on the way, beyond the early-enable fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    /// Nothing else: a pass-through.
    #[default]
    None,
    /// A virtio-sound device without capture: the capture ring is withheld from the backend
    /// and the configuration read by the frontend shows only the playback stream.
    SoundNoCapture,
}

/// A running relay. Dropping or [`Relay::stop`] closes both connections and joins the threads.
#[derive(Debug)]
pub struct Relay {
    frontend: UnixStream,
    daemon: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Relays between `frontend` (QEMU or crosvm) and `daemon` (the backend's connection).
    pub fn start(frontend: UnixStream, daemon: UnixStream) -> io::Result<Relay> {
        Relay::start_filtered(frontend, daemon, Filter::None)
    }

    /// [`Relay::start`] with a [`Filter`].
    pub fn start_filtered(
        frontend: UnixStream,
        daemon: UnixStream,
        filter: Filter,
    ) -> io::Result<Relay> {
        let state = Arc::new(Mutex::new(EnableState {
            filter,
            ..EnableState::default()
        }));
        let (f1, d1) = (frontend.try_clone()?, daemon.try_clone()?);
        let (f2, d2) = (frontend.try_clone()?, daemon.try_clone()?);
        let down = std::thread::Builder::new()
            .name("vu-relay-down".into())
            .spawn(move || {
                let _ = forward_requests(&f1, &d1, &state);
                let _ = f1.shutdown(Shutdown::Both);
                let _ = d1.shutdown(Shutdown::Both);
            })?;
        let up = std::thread::Builder::new()
            .name("vu-relay-up".into())
            .spawn(move || {
                while let Ok(Some(mut m)) = recv_msg(&d2) {
                    if filter == Filter::SoundNoCapture {
                        hide_capture_in_config(&mut m);
                    }
                    if send_msg(&f2, &m).is_err() {
                        break;
                    }
                }
                let _ = f2.shutdown(Shutdown::Both);
                let _ = d2.shutdown(Shutdown::Both);
            })?;
        Ok(Relay {
            frontend,
            daemon,
            threads: vec![down, up],
        })
    }

    /// Waits until either side closes its connection (the relay then closes the other).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Closes both connections and waits for the relay threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.frontend.shutdown(Shutdown::Both);
        let _ = self.daemon.shutdown(Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[derive(Default)]
struct EnableState {
    filter: Filter,
    features_sent: bool,
    held: BTreeMap<u32, Msg>,
    /// The last `SET_VRING_BASE` of a withheld ring, returned by `GET_VRING_BASE`.
    withheld_base: u32,
}

/// The ring a ring message is about: the state's or address's index, or for the descriptor
/// messages (`KICK`, `CALL`, `ERR`) the low byte of their u64.
fn ring_of(m: &Msg) -> Option<u32> {
    match m.request() {
        SET_VRING_NUM | SET_VRING_ADDR | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
            Some(m.word(HDR))
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => Some(m.word(HDR) & 0xff),
        _ => None,
    }
}

fn reply(request: u32, payload: &[u8]) -> Msg {
    let mut b = Vec::with_capacity(HDR + payload.len());
    b.extend_from_slice(&request.to_le_bytes());
    b.extend_from_slice(&(1u32 | FLAG_REPLY).to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    Msg {
        bytes: b,
        fds: Vec::new(),
    }
}

/// Answers a message about the withheld capture ring in the backend's place: the backend
/// never learns the ring's memory, descriptors or state. Its file descriptors are dropped.
fn answer_withheld(frontend: &UnixStream, m: &Msg, st: &mut EnableState) -> io::Result<()> {
    match m.request() {
        GET_VRING_BASE => {
            let mut p = [0u8; 8];
            p[..4].copy_from_slice(&SOUND_RX_RING.to_le_bytes());
            p[4..].copy_from_slice(&st.withheld_base.to_le_bytes());
            send_msg(frontend, &reply(GET_VRING_BASE, &p))
        }
        r => {
            if r == SET_VRING_BASE {
                st.withheld_base = m.word(HDR + 4);
            }
            if m.flags() & FLAG_NEED_REPLY != 0 {
                send_msg(frontend, &reply(r, &0u64.to_le_bytes()))?;
            }
            Ok(())
        }
    }
}

/// In a `GET_CONFIG` reply (`VhostUserConfig`: offset, size, flags, then the bytes of
/// `virtio_snd_config` from `offset`), sets `jacks` to 0 and `streams` and `chmaps` to at
/// most 1. Bytes outside those fields are left alone; a short or odd reply passes unchanged.
fn hide_capture_in_config(m: &mut Msg) {
    if m.request() != GET_CONFIG || m.flags() & FLAG_REPLY == 0 {
        return;
    }
    let offset = m.word(HDR) as usize;
    let size = m.word(HDR + 4) as usize;
    let data = HDR + 12;
    if m.bytes.len() < data + size {
        return;
    }
    // (field offset in virtio_snd_config, largest value shown)
    for (field, max) in [(0usize, 0u32), (4, 1), (8, 1)] {
        if field < offset || field + 4 > offset + size {
            continue;
        }
        let at = data + field - offset;
        let v = m.word(at);
        m.bytes[at..at + 4].copy_from_slice(&v.min(max).to_le_bytes());
    }
}

fn forward_requests(
    frontend: &UnixStream,
    daemon: &UnixStream,
    state: &Mutex<EnableState>,
) -> io::Result<()> {
    while let Some(mut m) = recv_msg(frontend)? {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if st.filter == Filter::SoundNoCapture && ring_of(&m) == Some(SOUND_RX_RING) {
            answer_withheld(frontend, &m, &mut st)?;
            continue;
        }
        // Only plausible ring indices are held (a net device has a handful of rings), so a
        // misbehaving frontend cannot grow the map; anything else goes to the daemon, which
        // rejects it.
        if m.request() == SET_VRING_ENABLE && !st.features_sent && m.word(HDR) < MAX_HELD_RINGS {
            if m.flags() & FLAG_NEED_REPLY != 0 {
                // Acknowledge it ourselves (u64 0 = success) and forward it without the flag.
                let mut ack = Vec::with_capacity(HDR + 8);
                ack.extend_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                ack.extend_from_slice(&(1u32 | FLAG_REPLY).to_le_bytes());
                ack.extend_from_slice(&8u32.to_le_bytes());
                ack.extend_from_slice(&0u64.to_le_bytes());
                send_msg(
                    frontend,
                    &Msg {
                        bytes: ack,
                        fds: Vec::new(),
                    },
                )?;
                let flags = m.flags() & !FLAG_NEED_REPLY;
                m.bytes[4..8].copy_from_slice(&flags.to_le_bytes());
            }
            let index = m.word(HDR);
            st.held.insert(index, m);
            continue;
        }
        let is_features = m.request() == SET_FEATURES;
        send_msg(daemon, &m)?;
        if is_features {
            st.features_sent = true;
            let held = std::mem::take(&mut st.held);
            for (_, h) in held {
                send_msg(daemon, &h)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&req.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn read_msg(s: &UnixStream) -> Vec<u8> {
        recv_msg(s).unwrap().unwrap().bytes
    }

    #[test]
    fn test_relay_holds_early_enable_until_after_set_features() {
        use std::io::Write;
        let (mut qemu, f) = UnixStream::pair().unwrap();
        let (d, backend) = UnixStream::pair().unwrap();
        let relay = Relay::start(f, d).unwrap();
        let enable = msg(SET_VRING_ENABLE, 1, &[0, 0, 0, 0, 1, 0, 0, 0]);
        qemu.write_all(&enable).unwrap();
        qemu.write_all(&msg(SET_FEATURES, 1, &[0; 8])).unwrap();
        qemu.write_all(&msg(3, 1, &[])).unwrap();
        assert_eq!(
            read_msg(&backend)[0],
            SET_FEATURES as u8,
            "SET_FEATURES first"
        );
        assert_eq!(read_msg(&backend), enable, "then the held enable");
        assert_eq!(read_msg(&backend)[0], 3, "then the rest in order");
        // After SET_FEATURES, enables pass straight through.
        qemu.write_all(&enable).unwrap();
        assert_eq!(read_msg(&backend), enable);
        // Replies flow back.
        let reply = msg(1, 5, &[7; 8]);
        (&backend).write_all(&reply).unwrap();
        assert_eq!(read_msg(&qemu), reply);
        relay.stop();
    }

    #[test]
    fn test_relay_acks_early_enable_that_needs_a_reply() {
        use std::io::Write;
        let (mut qemu, f) = UnixStream::pair().unwrap();
        let (d, backend) = UnixStream::pair().unwrap();
        let _relay = Relay::start(f, d).unwrap();
        qemu.write_all(&msg(
            SET_VRING_ENABLE,
            1 | FLAG_NEED_REPLY,
            &[1, 0, 0, 0, 1, 0, 0, 0],
        ))
        .unwrap();
        let ack = read_msg(&qemu);
        assert_eq!(ack, msg(SET_VRING_ENABLE, 1 | FLAG_REPLY, &[0; 8]));
        qemu.write_all(&msg(SET_FEATURES, 1, &[0; 8])).unwrap();
        read_msg(&backend);
        let fwd = read_msg(&backend);
        assert_eq!(
            u32::from_le_bytes([fwd[4], fwd[5], fwd[6], fwd[7]]),
            1,
            "NEED_REPLY cleared"
        );
    }

    #[test]
    fn test_relay_rejects_oversized_payload() {
        use std::io::Write;
        let (mut qemu, f) = UnixStream::pair().unwrap();
        let (d, backend) = UnixStream::pair().unwrap();
        let _relay = Relay::start(f, d).unwrap();
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&1u32.to_le_bytes());
        hdr.extend_from_slice(&1u32.to_le_bytes());
        hdr.extend_from_slice(&u32::MAX.to_le_bytes());
        qemu.write_all(&hdr).unwrap();
        // The relay gives up on the connection: both ends see EOF.
        assert!(recv_msg(&backend).unwrap().is_none());
    }

    #[test]
    fn test_sound_filter_withholds_the_capture_ring_and_answers_for_it() {
        use std::io::Write;
        let (mut qemu, f) = UnixStream::pair().unwrap();
        let (d, backend) = UnixStream::pair().unwrap();
        let _relay = Relay::start_filtered(f, d, Filter::SoundNoCapture).unwrap();
        let ring = |r: u32, extra: &[u8]| {
            let mut p = r.to_le_bytes().to_vec();
            p.extend_from_slice(extra);
            p
        };
        // Ring 3 (capture): none of these may reach the backend.
        qemu.write_all(&msg(SET_VRING_NUM, 1, &ring(3, &[0, 1, 0, 0])))
            .unwrap();
        qemu.write_all(&msg(SET_VRING_ADDR, 1, &ring(3, &[0; 36])))
            .unwrap();
        qemu.write_all(&msg(SET_VRING_BASE, 1, &ring(3, &[42, 0, 0, 0])))
            .unwrap();
        qemu.write_all(&msg(SET_VRING_KICK, 1, &[3, 1, 0, 0, 0, 0, 0, 0]))
            .unwrap();
        qemu.write_all(&msg(
            SET_VRING_CALL,
            1 | FLAG_NEED_REPLY,
            &[3, 1, 0, 0, 0, 0, 0, 0],
        ))
        .unwrap();
        assert_eq!(
            read_msg(&qemu),
            msg(SET_VRING_CALL, 1 | FLAG_REPLY, &[0; 8]),
            "acked by the filter"
        );
        qemu.write_all(&msg(SET_VRING_ENABLE, 1, &ring(3, &[1, 0, 0, 0])))
            .unwrap();
        qemu.write_all(&msg(GET_VRING_BASE, 1, &ring(3, &[0; 4])))
            .unwrap();
        assert_eq!(
            read_msg(&qemu),
            msg(GET_VRING_BASE, 1 | FLAG_REPLY, &ring(3, &[42, 0, 0, 0])),
            "the base the frontend set"
        );
        // Ring 2 (playback) passes: it is the first thing the backend sees.
        let tx = msg(SET_VRING_NUM, 1, &ring(2, &[0, 1, 0, 0]));
        qemu.write_all(&tx).unwrap();
        assert_eq!(read_msg(&backend), tx);
    }

    #[test]
    fn test_sound_filter_shows_only_the_playback_stream_in_the_config() {
        use std::io::Write;
        let (qemu, f) = UnixStream::pair().unwrap();
        let (d, mut backend) = UnixStream::pair().unwrap();
        let _relay = Relay::start_filtered(f, d, Filter::SoundNoCapture).unwrap();
        let config = |offset: u32, fields: &[u32]| {
            let mut p = offset.to_le_bytes().to_vec();
            p.extend_from_slice(&((fields.len() * 4) as u32).to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            for f in fields {
                p.extend_from_slice(&f.to_le_bytes());
            }
            p
        };
        // jacks, streams, chmaps, controls as vhost-device-sound reports them.
        backend
            .write_all(&msg(GET_CONFIG, 1 | FLAG_REPLY, &config(0, &[0, 2, 2, 0])))
            .unwrap();
        assert_eq!(
            read_msg(&qemu),
            msg(GET_CONFIG, 1 | FLAG_REPLY, &config(0, &[0, 1, 1, 0]))
        );
        // A read of `streams` alone, at its offset.
        backend
            .write_all(&msg(GET_CONFIG, 1 | FLAG_REPLY, &config(4, &[2])))
            .unwrap();
        assert_eq!(
            read_msg(&qemu),
            msg(GET_CONFIG, 1 | FLAG_REPLY, &config(4, &[1]))
        );
        // A truncated reply passes unchanged, without a panic.
        let short = msg(GET_CONFIG, 1 | FLAG_REPLY, &[0, 0, 0, 0, 16, 0, 0, 0]);
        backend.write_all(&short).unwrap();
        assert_eq!(read_msg(&qemu), short);
    }

    #[test]
    fn test_plain_relay_passes_the_capture_ring() {
        use std::io::Write;
        let (mut qemu, f) = UnixStream::pair().unwrap();
        let (d, backend) = UnixStream::pair().unwrap();
        let _relay = Relay::start(f, d).unwrap();
        let rx = msg(SET_VRING_NUM, 1, &[3, 0, 0, 0, 0, 1, 0, 0]);
        qemu.write_all(&rx).unwrap();
        assert_eq!(read_msg(&backend), rx);
    }
}
