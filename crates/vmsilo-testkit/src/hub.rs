//! A minimal vhost-user-net backend: an L2 hub that copies every frame one port's guest sends
//! to all other ports. For tests that need guests on one network before vm-switch exists, and
//! as a reference peer.
//!
//! Built on rust-vmm's `vhost-user-backend`. Features: `VIRTIO_F_VERSION_1` and
//! `VHOST_USER_F_PROTOCOL_FEATURES` (no protocol feature flags); no offloads, no mergeable RX
//! buffers, no EVENT_IDX. Each port has a bounded queue of frames waiting for RX buffers (tail
//! drop beyond [`PENDING_LIMIT`]) and an eventfd that wakes the port's worker.
//!
//! QEMU 7.2's virtio-net sends `SET_VRING_ENABLE` before `SET_FEATURES`, which
//! `vhost-user-backend` rejects (it drops the connection); each connection therefore passes
//! through the relay vm-switch uses too (crate `vhost-user-relay`), which delays those
//! messages until after `SET_FEATURES`. Any
//! vhost-user-net backend built on `vhost-user-backend` needs the same with QEMU 7.2.
//! Each port serves one frontend at a time and accepts a new one after a disconnect.
//!
//! ```no_run
//! # fn main() -> Result<(), vmsilo_testkit::Error> {
//! use vmsilo_testkit::{ImageSpec, QemuBuilder, ScratchDir, hub::VhostNetHub};
//! let dir = ScratchDir::new("hub")?;
//! let hub = VhostNetHub::start(dir.path(), 2)?; // create the hub before the guests
//! let image = ImageSpec::new().build()?;
//! let a = QemuBuilder::new(&image).name("a").vhost_user_net(hub.socket(0), "52:54:00:00:00:01").spawn()?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringState, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::{Error, Result, io_err};
use vhost_user_relay::Relay;

/// Frames queued per port while its guest has no RX buffers; more are dropped.
pub const PENDING_LIMIT: usize = 256;
/// Largest frame forwarded (a 64 KiB GSO frame plus Ethernet header); longer ones are dropped.
const MAX_FRAME: usize = 65_550;
const NUM_QUEUES: usize = 2;
const RX: u16 = 0;
const TX: u16 = 1;
/// Epoll data of a port's "frames pending" eventfd; ids up to NUM_QUEUES are reserved.
const PENDING_EVENT: u16 = NUM_QUEUES as u16 + 1;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

#[derive(Debug)]
struct PortShared {
    pending: Mutex<VecDeque<Vec<u8>>>,
    wake: EventFd,
}

#[derive(Debug)]
struct Shared {
    ports: Vec<PortShared>,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// One port's backend instance for one frontend connection.
struct HubPort {
    index: usize,
    shared: Arc<Shared>,
    mem: Mutex<Option<Mem>>,
    acked: AtomicU64,
}

impl HubPort {
    fn hdr_len(&self) -> usize {
        let acked = self.acked.load(Ordering::Relaxed);
        if acked & (1 << VIRTIO_F_VERSION_1) != 0 || acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        }
    }

    fn mem(&self) -> Option<Mem> {
        self.mem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes every frame the guest sent and queues it for the other ports.
    fn process_tx(&self, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = self.mem() else { return Ok(()) };
        let mem = mem.memory();
        let hdr_len = self.hdr_len();
        let mut frames = Vec::new();
        let mut state = vring.get_mut();
        if !state.is_enabled() {
            return Ok(());
        }
        while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            match chain.reader(&*mem) {
                Ok(mut reader) => {
                    let total = reader.available_bytes();
                    if total > hdr_len && total - hdr_len <= MAX_FRAME {
                        let mut buf = vec![0u8; total];
                        if reader.read_exact(&mut buf).is_ok() {
                            buf.drain(..hdr_len);
                            frames.push(buf);
                        } else {
                            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            state
                .add_used(head, 0)
                .map_err(|e| io::Error::other(format!("TX add_used: {e:?}")))?;
        }
        signal_if_needed(&mut state)?;
        drop(state);

        for frame in frames {
            for (j, port) in self.shared.ports.iter().enumerate() {
                if j == self.index {
                    continue;
                }
                let mut q = port.pending.lock().unwrap_or_else(PoisonError::into_inner);
                if q.len() >= PENDING_LIMIT {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                q.push_back(frame.clone());
                drop(q);
                let _ = port.wake.write(1);
            }
        }
        Ok(())
    }

    /// Delivers queued frames into the guest's RX buffers while it has some.
    fn process_rx(&self, vring: &VringRwLock) -> io::Result<()> {
        let Some(mem) = self.mem() else { return Ok(()) };
        let mem = mem.memory();
        let hdr_len = self.hdr_len();
        let port = &self.shared.ports[self.index];
        let mut state = vring.get_mut();
        if !state.is_enabled() {
            return Ok(());
        }
        let mut delivered = false;
        loop {
            let Some(frame) = port
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
            else {
                break;
            };
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(&*mem) else {
                // No buffers: keep the frame; the guest kicks RX when it adds some.
                port.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_front(frame);
                break;
            };
            let head = chain.head_index();
            let written = chain.writer(&*mem).ok().and_then(|mut w| {
                if w.available_bytes() < hdr_len + frame.len() {
                    return None;
                }
                let mut hdr = [0u8; 12];
                // virtio_net_hdr_v1.num_buffers = 1 (only meaningful with 12-byte headers).
                hdr[10] = 1;
                w.write_all(&hdr[..hdr_len]).ok()?;
                w.write_all(&frame).ok()?;
                Some(w.bytes_written())
            });
            match written {
                Some(n) => {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    state
                        .add_used(head, n)
                        .map_err(|e| io::Error::other(format!("RX add_used: {e:?}")))?;
                    self.shared.forwarded.fetch_add(1, Ordering::Relaxed);
                    delivered = true;
                }
                None => {
                    // Buffer too small or unwritable: give it back unused, drop the frame.
                    state.get_queue_mut().go_to_previous_position();
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        if delivered {
            signal_if_needed(&mut state)?;
        }
        Ok(())
    }
}

fn signal_if_needed(state: &mut VringState<Mem>) -> io::Result<()> {
    match state.needs_notification() {
        Ok(false) => Ok(()),
        // Signal when unsure: a spurious interrupt is harmless, a lost one stalls the guest.
        Ok(true) | Err(_) => state.signal_used_queue(),
    }
}

impl VhostUserBackend for HubPort {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }

    fn set_event_idx(&self, _enabled: bool) {}

    /// Without an exit event the worker thread never leaves its epoll loop, and dropping the
    /// daemon (which joins the workers) hangs.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        let (Some(rx), Some(tx)) = (vrings.get(RX as usize), vrings.get(TX as usize)) else {
            return Ok(());
        };
        match device_event {
            RX => self.process_rx(rx),
            TX => self.process_tx(tx),
            PENDING_EVENT => {
                let _ = self.shared.ports[self.index].wake.read();
                self.process_rx(rx)
            }
            _ => Ok(()),
        }
    }
}

struct PortHandle {
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
    connection: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
}

/// A running hub: `ports` vhost-user-net sockets, served until dropped.
///
/// Drop it after the guests using it (declare it before them), or QEMU sees its backend go.
pub struct VhostNetHub {
    shared: Arc<Shared>,
    ports: Vec<PortHandle>,
}

impl std::fmt::Debug for VhostNetHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNetHub")
            .field(
                "sockets",
                &self.ports.iter().map(|p| &p.socket).collect::<Vec<_>>(),
            )
            .field("forwarded", &self.forwarded())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl VhostNetHub {
    /// Starts a hub with `ports` sockets `dir/hub-<i>.sock`, listening when this returns.
    /// `dir` also holds one internal socket per port (`hub-<i>.backend`).
    pub fn start(dir: &Path, ports: usize) -> Result<Self> {
        if ports < 2 {
            return Err(Error::Usage("a hub needs at least 2 ports".into()));
        }
        let shared = Arc::new(Shared {
            ports: (0..ports)
                .map(|_| {
                    Ok(PortShared {
                        pending: Mutex::new(VecDeque::new()),
                        wake: EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd"))?,
                    })
                })
                .collect::<Result<_>>()?,
            stop: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let mut handles = Vec::new();
        for index in 0..ports {
            let socket = dir.join(format!("hub-{index}.sock"));
            let inner_path = dir.join(format!("hub-{index}.backend"));
            let bind = |p: &Path| {
                let _ = std::fs::remove_file(p);
                UnixListener::bind(p).map_err(io_err(format!("listening on {}", p.display())))
            };
            let public = bind(&socket)?;
            let inner = bind(&inner_path)?;
            let connection = Arc::new(Mutex::new(None));
            let port = Port {
                index,
                public,
                inner,
                inner_path,
                shared: Arc::clone(&shared),
                connection: Arc::clone(&connection),
            };
            let thread = std::thread::Builder::new()
                .name(format!("hub-port{index}"))
                .spawn(move || port.serve())
                .map_err(io_err("starting a hub thread"))?;
            handles.push(PortHandle {
                socket,
                thread: Some(thread),
                connection,
            });
        }
        Ok(VhostNetHub {
            shared,
            ports: handles,
        })
    }

    /// The vhost-user socket of port `index`.
    ///
    /// # Panics
    /// If `index` is not below the number of ports.
    pub fn socket(&self, index: usize) -> &Path {
        &self.ports[index].socket
    }

    /// Frames delivered into a guest's RX queue so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Frames dropped so far (queue full, too long, malformed, RX buffer too small).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// One port's serving thread: accepts a frontend, connects a fresh daemon through the relay,
/// serves until either side goes, repeats.
struct Port {
    index: usize,
    public: UnixListener,
    inner: UnixListener,
    inner_path: PathBuf,
    shared: Arc<Shared>,
    connection: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
}

impl Port {
    fn serve(self) {
        let index = self.index;
        while !self.shared.stop.load(Ordering::Acquire) {
            let frontend = match self.public.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("vmsilo-testkit hub port {index}: accept: {e}");
                    return;
                }
            };
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.serve_one(frontend) {
                eprintln!("vmsilo-testkit hub port {index}: {e}");
            }
        }
    }

    fn serve_one(&self, frontend: UnixStream) -> std::result::Result<(), String> {
        let index = self.index;
        let backend = Arc::new(HubPort {
            index,
            shared: Arc::clone(&self.shared),
            mem: Mutex::new(None),
            acked: AtomicU64::new(0),
        });
        let mut daemon = VhostUserDaemon::new(
            format!("hub-port{index}"),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("creating the vhost-user daemon: {e}"))?;
        for handler in daemon.get_epoll_handlers().iter().take(1) {
            handler
                .register_listener(
                    self.shared.ports[index].wake.as_raw_fd(),
                    EventSet::IN,
                    u64::from(PENDING_EVENT),
                )
                .map_err(|e| format!("registering the wake eventfd: {e}"))?;
        }
        // The daemon connects to our inner listener; the relay joins the two connections.
        let inner = self.inner_path.to_string_lossy().into_owned();
        daemon
            .start_client(&inner)
            .map_err(|e| format!("connecting the daemon to {inner}: {e}"))?;
        let (to_daemon, _) = self
            .inner
            .accept()
            .map_err(|e| format!("accepting the daemon on {inner}: {e}"))?;
        let relay = Relay::start(frontend, to_daemon).map_err(|e| format!("relay: {e}"))?;
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = daemon.shutdown_handle();
        if self.shared.stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
        }
        let result = daemon.wait();
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        relay.stop();
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(format!("frontend connection ended: {e}")),
        }
    }
}

impl Drop for VhostNetHub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for port in &mut self.ports {
            if let Some(h) = port
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                h.shutdown();
            }
            // Wake a thread blocked in accept(); it sees `stop` and ends.
            let _ = UnixStream::connect(&port.socket);
            if let Some(t) = port.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_file(&port.socket);
            let _ = std::fs::remove_file(port.socket.with_extension("backend"));
        }
    }
}
