//! A minimal virtio-net *driver* with a real vhost-user frontend, for tests and benchmarks
//! (feature `testing`): it connects to a vhost-user socket with rust-vmm's `Frontend`, shares
//! memfd-backed "guest memory", lays out split virtqueues in it, and sends and receives
//! Ethernet frames the way a guest's virtio-net driver does (single-descriptor buffers,
//! kicks through eventfds, interrupts through call eventfds, EVENT_IDX if negotiated).

#![forbid(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Buffer bytes per descriptor.
pub const BUF: u64 = 2048;
const MEM: u64 = 8 << 20;

/// Driver options.
#[derive(Debug, Clone, Copy)]
pub struct GuestOptions {
    /// Queue size.
    pub queue_size: u16,
    /// Negotiate EVENT_IDX.
    pub event_idx: bool,
    /// Negotiate MRG_RXBUF.
    pub mrg_rxbuf: bool,
    /// Post a full ring of RX buffers when connecting (otherwise see
    /// [`TestGuest::post_rx_buffers`]).
    pub post_rx: bool,
    /// Negotiate the receive offloads (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN); without them
    /// vm-switch segments and checksums in software for this guest.
    pub rx_offloads: bool,
}

impl Default for GuestOptions {
    fn default() -> Self {
        GuestOptions {
            queue_size: 256,
            event_idx: true,
            mrg_rxbuf: true,
            post_rx: true,
            rx_offloads: true,
        }
    }
}

struct Vq {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    next_avail: u16,
    last_used: u16,
    free: Vec<u16>,
    kick: EventFd,
    call: EventFd,
    /// Descriptors chained behind each head (TX frames larger than one buffer).
    chains: Vec<Vec<u16>>,
}

impl Vq {
    fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).div_ceil(4096) * 4096;
        let bufs = (used + 6 + 8 * n).div_ceil(4096) * 4096;
        Vq {
            size,
            desc,
            avail,
            used,
            bufs,
            next_avail: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            kick: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            call: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            chains: vec![Vec::new(); usize::from(size)],
        }
    }

    fn end(&self) -> u64 {
        self.bufs + u64::from(self.size) * BUF
    }
}

/// One test guest: a vhost-user frontend plus a virtio-net driver.
pub struct TestGuest {
    frontend: Frontend,
    mem: GuestMemoryMmap,
    host_base: u64,
    rx: Vq,
    tx: Vq,
    hdr_len: usize,
    event_idx: bool,
    mrg: bool,
    /// Negotiated virtio features.
    pub features: u64,
    _file: File,
}

impl std::fmt::Debug for TestGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGuest")
            .field("features", &self.features)
            .finish()
    }
}

type Res<T> = Result<T, String>;

fn e<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |err| format!("{what}: {err}")
}

impl TestGuest {
    /// Connects to `socket` (retrying for up to 10 s while it does not exist yet) and brings
    /// the device up like a guest driver would.
    pub fn connect(socket: &Path, opts: GuestOptions) -> Res<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frontend = loop {
            match Frontend::connect(socket, 2) {
                Ok(f) => break f,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(format!("connect {}: {err}", socket.display())),
            }
        };
        let memfd =
            nix::sys::memfd::memfd_create("test-guest", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(e("memfd"))?;
        let file = File::from(memfd);
        file.set_len(MEM).map_err(e("ftruncate"))?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM as usize,
            Some(FileOffset::new(file.try_clone().map_err(e("dup"))?, 0)),
        )])
        .map_err(e("guest memory"))?;
        let host_base = mem
            .get_host_address(GuestAddress(0))
            .map_err(e("host address"))? as u64;

        let offered = frontend.get_features().map_err(e("GET_FEATURES"))?;
        let mut want = offered;
        if !opts.event_idx {
            want &= !(1 << VIRTIO_RING_F_EVENT_IDX);
        }
        if !opts.mrg_rxbuf {
            want &= !(1 << VIRTIO_NET_F_MRG_RXBUF);
        }
        if !opts.rx_offloads {
            want &= !((1 << VIRTIO_NET_F_GUEST_CSUM)
                | (1 << VIRTIO_NET_F_GUEST_TSO4)
                | (1 << VIRTIO_NET_F_GUEST_TSO6)
                | (1 << VIRTIO_NET_F_GUEST_ECN));
        }
        let proto = frontend
            .get_protocol_features()
            .map_err(e("GET_PROTOCOL_FEATURES"))?;
        frontend
            .set_protocol_features(
                proto
                    & (VhostUserProtocolFeatures::MQ
                        | VhostUserProtocolFeatures::CONFIG
                        | VhostUserProtocolFeatures::REPLY_ACK),
            )
            .map_err(e("SET_PROTOCOL_FEATURES"))?;
        frontend.set_owner().map_err(e("SET_OWNER"))?;
        frontend.set_features(want).map_err(e("SET_FEATURES"))?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: host_base,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        frontend
            .set_mem_table(&[region])
            .map_err(e("SET_MEM_TABLE"))?;
        let rx = Vq::new(0, opts.queue_size);
        let tx = Vq::new(rx.end(), opts.queue_size);
        for (i, q) in [(0usize, &rx), (1, &tx)] {
            frontend
                .set_vring_num(i, q.size)
                .map_err(e("SET_VRING_NUM"))?;
            frontend.set_vring_base(i, 0).map_err(e("SET_VRING_BASE"))?;
            let cfg = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host_base + q.desc,
                used_ring_addr: host_base + q.used,
                avail_ring_addr: host_base + q.avail,
                log_addr: None,
            };
            frontend
                .set_vring_addr(i, &cfg)
                .map_err(e("SET_VRING_ADDR"))?;
            frontend
                .set_vring_call(i, &q.call)
                .map_err(e("SET_VRING_CALL"))?;
            frontend
                .set_vring_kick(i, &q.kick)
                .map_err(e("SET_VRING_KICK"))?;
        }
        let mrg = want & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let version_1 = want & (1 << 32) != 0;
        let mut g = TestGuest {
            frontend,
            mem,
            host_base,
            rx,
            tx,
            hdr_len: if version_1 || mrg { 12 } else { 10 },
            event_idx: want & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
            mrg,
            features: want,
            _file: file,
        };
        // Post every RX buffer, then enable the rings.
        if opts.post_rx {
            let n = g.rx.size;
            for _ in 0..n {
                g.post_rx();
            }
        }
        g.publish_rx();
        if want & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            g.frontend
                .set_vring_enable(0, true)
                .map_err(e("SET_VRING_ENABLE"))?;
            g.frontend
                .set_vring_enable(1, true)
                .map_err(e("SET_VRING_ENABLE"))?;
        }
        g.rx.kick.write(1).map_err(e("kick"))?;
        Ok(g)
    }

    /// Reads `size` bytes of device config space at `offset` (what crosvm does for the MAC).
    pub fn config(&mut self, offset: u32, size: u32) -> Res<Vec<u8>> {
        let buf = vec![0u8; size as usize];
        let (_, data) = self
            .frontend
            .get_config(offset, size, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(e("GET_CONFIG"))?;
        Ok(data)
    }

    fn w16(&self, addr: u64, v: u16) {
        let _ = self
            .mem
            .store(v.to_le(), GuestAddress(addr), Ordering::Release);
    }

    fn r16(&self, addr: u64) -> u16 {
        u16::from_le(
            self.mem
                .load(GuestAddress(addr), Ordering::Acquire)
                .unwrap_or(0),
        )
    }

    fn write_desc(&self, q_desc: u64, id: u16, addr: u64, len: u32, flags: u16) {
        let base = q_desc + 16 * u64::from(id);
        let _ = self.mem.write_obj(addr.to_le(), GuestAddress(base));
        let _ = self.mem.write_obj(len.to_le(), GuestAddress(base + 8));
        let _ = self.mem.write_obj(flags.to_le(), GuestAddress(base + 12));
        let _ = self.mem.write_obj(0u16, GuestAddress(base + 14));
    }

    fn post_rx(&mut self) {
        self.post_rx_len(BUF as u32);
    }

    fn post_rx_len(&mut self, len: u32) {
        let Some(id) = self.rx.free.pop() else { return };
        let addr = self.rx.bufs + u64::from(id) * BUF;
        let len = len.min(BUF as u32);
        self.write_desc(self.rx.desc, id, addr, len, 2 /* WRITE */);
        let slot = u64::from(self.rx.next_avail % self.rx.size);
        self.w16(self.rx.avail + 4 + 2 * slot, id);
        self.rx.next_avail = self.rx.next_avail.wrapping_add(1);
    }

    fn publish_rx(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.w16(self.rx.avail + 2, self.rx.next_avail);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    fn reclaim_tx(&mut self) {
        let used_idx = self.r16(self.tx.used + 2);
        while self.tx.last_used != used_idx {
            let slot = u64::from(self.tx.last_used % self.tx.size);
            let id = self.r16(self.tx.used + 4 + 8 * slot);
            if id < self.tx.size {
                self.tx.free.push(id);
                let rest = std::mem::take(&mut self.tx.chains[usize::from(id)]);
                self.tx.free.extend(rest);
            }
            self.tx.last_used = self.tx.last_used.wrapping_add(1);
        }
    }

    /// Posts `n` RX buffers of `len` bytes each (at most [`BUF`]), publishes them and kicks
    /// the way Linux's virtio-net does: with EVENT_IDX only when the device asked for a kick
    /// at this point (`avail_event`), otherwise unless the device suppressed kicks.
    pub fn post_rx_buffers(&mut self, n: u16, len: u32) {
        let old = self.rx.next_avail;
        for _ in 0..n {
            self.post_rx_len(len);
        }
        self.publish_rx();
        let new = self.rx.next_avail;
        let kick = if self.event_idx {
            let event = self.r16(self.rx.used + 4 + 8 * u64::from(self.rx.size));
            // vring_need_event(event, new, old)
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.r16(self.rx.used) & 1 == 0 // VRING_USED_F_NO_NOTIFY
        };
        if kick {
            let _ = self.rx.kick.write(1);
        }
    }

    /// A hostile driver: publishes `idx` as the TX available index (whatever the ring holds)
    /// and kicks.
    pub fn publish_tx_avail_idx(&mut self, idx: u16) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.w16(self.tx.avail + 2, idx);
        std::sync::atomic::fence(Ordering::SeqCst);
        let _ = self.tx.kick.write(1);
    }

    /// The TX available index the driver has published so far (what the device has seen).
    pub fn tx_avail_idx(&self) -> u16 {
        self.tx.next_avail
    }

    /// The queue size.
    pub fn queue_size(&self) -> u16 {
        self.tx.size
    }

    /// Queues one frame with virtio-net header `hdr` (its first `hdr_len` bytes are used) on
    /// TX without kicking, in a chain of as many buffers as it needs (a TSO segment). Returns
    /// false when the TX ring has not enough free descriptors.
    pub fn queue_frame_hdr(&mut self, hdr: [u8; 12], frame: &[u8]) -> bool {
        self.reclaim_tx();
        let mut bytes = hdr[..self.hdr_len].to_vec();
        bytes.extend_from_slice(frame);
        let need = bytes.len().div_ceil(BUF as usize);
        if self.tx.free.len() < need || need == 0 {
            return false;
        }
        let ids: Vec<u16> = (0..need).filter_map(|_| self.tx.free.pop()).collect();
        for (i, (chunk, &id)) in bytes.chunks(BUF as usize).zip(&ids).enumerate() {
            let addr = self.tx.bufs + u64::from(id) * BUF;
            let _ = self.mem.write_slice(chunk, GuestAddress(addr));
            let last = i + 1 == ids.len();
            self.write_desc(
                self.tx.desc,
                id,
                addr,
                chunk.len() as u32,
                if last {
                    0
                } else {
                    1 /* NEXT */
                },
            );
            if !last {
                let _ = self.mem.write_obj(
                    ids[i + 1].to_le(),
                    GuestAddress(self.tx.desc + 16 * u64::from(id) + 14),
                );
            }
        }
        let head = ids[0];
        self.tx.chains[usize::from(head)] = ids[1..].to_vec();
        let slot = u64::from(self.tx.next_avail % self.tx.size);
        self.w16(self.tx.avail + 4 + 2 * slot, head);
        self.tx.next_avail = self.tx.next_avail.wrapping_add(1);
        true
    }

    /// Queues one frame on TX without kicking. Returns false when the TX ring is full.
    pub fn queue_frame(&mut self, frame: &[u8]) -> bool {
        self.reclaim_tx();
        let Some(id) = self.tx.free.pop() else {
            return false;
        };
        let addr = self.tx.bufs + u64::from(id) * BUF;
        let hdr = [0u8; 12];
        let _ = self
            .mem
            .write_slice(&hdr[..self.hdr_len], GuestAddress(addr));
        let len = frame.len().min(BUF as usize - self.hdr_len);
        let _ = self
            .mem
            .write_slice(&frame[..len], GuestAddress(addr + self.hdr_len as u64));
        self.write_desc(self.tx.desc, id, addr, (self.hdr_len + len) as u32, 0);
        let slot = u64::from(self.tx.next_avail % self.tx.size);
        self.w16(self.tx.avail + 4 + 2 * slot, id);
        self.tx.next_avail = self.tx.next_avail.wrapping_add(1);
        true
    }

    /// Publishes queued TX frames without kicking: a driver whose kick was lost on the way.
    pub fn publish_tx_without_kick(&mut self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.w16(self.tx.avail + 2, self.tx.next_avail);
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Publishes queued TX frames and kicks.
    pub fn kick_tx(&mut self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.w16(self.tx.avail + 2, self.tx.next_avail);
        std::sync::atomic::fence(Ordering::SeqCst);
        let _ = self.tx.kick.write(1);
    }

    /// Sends one frame (waits for TX space for up to 1 s).
    pub fn send(&mut self, frame: &[u8]) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.queue_frame(frame) {
            if Instant::now() > deadline {
                return Err("TX ring stays full".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.kick_tx();
        Ok(())
    }

    /// Takes every frame currently in the RX used ring (no waiting), re-posting buffers.
    pub fn poll_frames(&mut self, out: &mut Vec<Vec<u8>>) -> usize {
        self.poll_inner(out, None)
    }

    /// [`TestGuest::poll_frames`], also collecting each frame's virtio-net header (12 bytes,
    /// the last two zero with a 10-byte header).
    pub fn poll_frames_hdr(&mut self, out: &mut Vec<Vec<u8>>, hdrs: &mut Vec<[u8; 12]>) -> usize {
        self.poll_inner(out, Some(hdrs))
    }

    fn poll_inner(
        &mut self,
        out: &mut Vec<Vec<u8>>,
        mut hdrs: Option<&mut Vec<[u8; 12]>>,
    ) -> usize {
        let mut n = 0;
        loop {
            let used_idx = self.r16(self.rx.used + 2);
            if self.rx.last_used == used_idx {
                break;
            }
            std::sync::atomic::fence(Ordering::Acquire);
            let mut frame = Vec::new();
            let mut remaining = 1u16;
            let mut first = true;
            while remaining > 0 && self.rx.last_used != used_idx {
                let slot = u64::from(self.rx.last_used % self.rx.size);
                let id = self.r16(self.rx.used + 4 + 8 * slot);
                let len: u32 = self
                    .mem
                    .read_obj::<u32>(GuestAddress(self.rx.used + 4 + 8 * slot + 4))
                    .map(u32::from_le)
                    .unwrap_or(0);
                self.rx.last_used = self.rx.last_used.wrapping_add(1);
                if id >= self.rx.size {
                    break;
                }
                let addr = self.rx.bufs + u64::from(id) * BUF;
                let len = (len as usize).min(BUF as usize);
                let mut data = vec![0u8; len];
                let _ = self.mem.read_slice(&mut data, GuestAddress(addr));
                if first {
                    if self.mrg && data.len() >= 12 {
                        remaining = u16::from_le_bytes([data[10], data[11]]).max(1);
                    }
                    if let Some(h) = hdrs.as_deref_mut() {
                        let mut b = [0u8; 12];
                        let k = self.hdr_len.min(data.len());
                        b[..k].copy_from_slice(&data[..k]);
                        h.push(b);
                    }
                    frame.extend_from_slice(data.get(self.hdr_len..).unwrap_or(&[]));
                    first = false;
                } else {
                    frame.extend_from_slice(&data);
                }
                remaining -= 1;
                self.rx.free.push(id);
            }
            out.push(frame);
            n += 1;
        }
        if n > 0 {
            while !self.rx.free.is_empty() {
                self.post_rx();
            }
            self.publish_rx();
            if self.event_idx {
                // Interrupt me at the next used entry.
                let ue = self.rx.avail + 4 + 2 * u64::from(self.rx.size);
                self.w16(ue, self.rx.last_used);
            }
            let _ = self.rx.kick.write(1);
        } else if self.event_idx {
            let ue = self.rx.avail + 4 + 2 * u64::from(self.rx.size);
            self.w16(ue, self.rx.last_used);
        }
        n
    }

    /// Waits up to `timeout` for at least one frame; returns what arrived.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            if self.poll_frames(&mut out) > 0 {
                return out;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            let ms = left.as_millis().min(50) as i32;
            crate::sys::wait_readable(self.rx.call.as_raw_fd(), ms);
            let _ = self.rx.call.read();
        }
    }

    /// Waits for a frame matching `pred` (others are discarded).
    pub fn recv_matching(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            for f in self.recv_timeout(left) {
                if pred(&f) {
                    return Some(f);
                }
            }
        }
    }

    /// Connects a bare vhost-user frontend to `socket` and asks for the device features, the
    /// first thing a VMM does. Fails when the backend closes the connection.
    pub fn probe_features(socket: &Path) -> Res<u64> {
        let frontend = Frontend::connect(socket, 2)
            .map_err(|err| format!("connect {}: {err}", socket.display()))?;
        frontend.get_features().map_err(e("GET_FEATURES"))
    }

    /// The host address of guest memory (for debugging).
    pub fn host_base(&self) -> u64 {
        self.host_base
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses): index 0 is field 3 of proc(5) (`state`), 1 the parent pid, 11 and 12
/// `utime` and `stime`. `None` when the process is gone.
pub fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// A TCP segment as a Linux guest with TSO sends it (for tests and the bench): Ethernet
/// `src_mac` → `dst_mac`, IPv4 (valid header checksum, id 0x1234, ECT(0)) or IPv6 between
/// `src` and `dst`, 12 bytes of TCP options, `payload_len` bytes of a known pattern, and the
/// TCP checksum left partial. Returns the frame and its virtio-net header (12 bytes, with
/// `gso_size` the MSS of a 1500-byte MTU); with `payload_len` ≤ the MSS the header is a plain
/// NEEDS_CSUM one.
pub fn tcp_segment(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    payload_len: usize,
) -> (Vec<u8>, [u8; 12]) {
    use crate::frame::{self, VnetHdr};
    use std::net::IpAddr;
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    let tcp_len = 32 + payload_len;
    let v4 = src.is_ipv4();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&frame::ETHERTYPE_IPV4.to_be_bytes());
            f.extend_from_slice(&[0x45, 0x02]);
            f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, frame::IPPROTO_TCP, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            let c = frame::csum_fold(frame::csum_add(0, &f[14..34]));
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&frame::ETHERTYPE_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0x20, 0, 0]);
            f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            f.extend_from_slice(&[frame::IPPROTO_TCP, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("tcp_segment: mixed address families"),
    }
    let l4 = f.len();
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&5201u16.to_be_bytes());
    f.extend_from_slice(&1000u32.to_be_bytes());
    f.extend_from_slice(&7u32.to_be_bytes());
    f.extend_from_slice(&[0x80, 0x18, 0x01, 0xf5, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    f.extend((0..payload_len).map(|i| (i * 7 + i / 251) as u8));
    let mut sum = if v4 {
        let s = frame::csum_add(0, &f[26..34]);
        frame::csum_add(s, &[0, frame::IPPROTO_TCP])
    } else {
        let s = frame::csum_add(0, &f[22..54]);
        frame::csum_add(s, &[0, 0, 0, frame::IPPROTO_TCP])
    };
    sum = frame::csum_add(sum, &(tcp_len as u32).to_be_bytes());
    f[l4 + 16..l4 + 18].copy_from_slice(&(!frame::csum_fold(sum)).to_be_bytes());
    let mss: u16 = if v4 { 1448 } else { 1428 };
    let gso = payload_len > usize::from(mss);
    let h = VnetHdr {
        flags: frame::VNET_F_NEEDS_CSUM,
        gso_type: match (gso, v4) {
            (false, _) => frame::VNET_GSO_NONE,
            (true, true) => frame::VNET_GSO_TCPV4,
            (true, false) => frame::VNET_GSO_TCPV6,
        },
        hdr_len: if gso { (l4 + 32) as u16 } else { 0 },
        gso_size: if gso { mss } else { 0 },
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (f, h.to_bytes(0))
}

/// Whether the IPv4 header checksum (if IPv4) and the TCP checksum of `f` verify.
pub fn tcp_checksums_ok(f: &[u8]) -> bool {
    use crate::frame::{self, csum_add, csum_fold};
    if f.len() < 54 {
        return false;
    }
    let v4 = u16::from_be_bytes([f[12], f[13]]) == frame::ETHERTYPE_IPV4;
    let (sum, l4) = if v4 {
        let ihl = usize::from(f[14] & 15) * 4;
        if csum_fold(csum_add(0, &f[14..14 + ihl])) != 0 {
            return false;
        }
        let l4 = 14 + ihl;
        let s = csum_add(0, &f[26..34]);
        let s = csum_add(s, &[0, frame::IPPROTO_TCP]);
        (csum_add(s, &((f.len() - l4) as u16).to_be_bytes()), l4)
    } else {
        let s = csum_add(0, &f[22..54]);
        let s = csum_add(s, &((f.len() - 54) as u32).to_be_bytes());
        (csum_add(s, &[0, 0, 0, frame::IPPROTO_TCP]), 54)
    };
    csum_fold(csum_add(sum, &f[l4..])) == 0
}
