//! The vhost-user-net backend of one port: moves frames between the guest's virtqueues, the
//! forwarding decision, the rings to and from the other ports, and the egress scheduler.
//!
//! Threading: vhost-user-backend runs one worker thread (both queues in one mask) that calls
//! [`NetBackend::handle_event`] for virtqueue kicks and for the fds registered here: the
//! control channel, the DQL re-check timer and the eventfd of every incoming ring. All port
//! state sits behind one mutex taken by that worker and, briefly, by the vhost-user request
//! thread (features, memory). Lock order: port state, then a vring.
//!
//! Ingress (TX kick): pop TX chains, copy header and frame out of guest memory, stamp the
//! ingress time, decide (validate, route, proxy-answer) and push into the destination's ring
//! (or this port's own egress for proxy replies). TX completes immediately; nothing blocks.
//!
//! Egress: a ring event drains that incoming ring into FQ-CoDel; a ring event, RX kick or
//! timer then delivers while the guest has RX buffers and the DQL limit allows. CoDel's
//! sojourn is measured at the moment of delivery against the ingress timestamp.
//!
//! Layout: this file holds the port state, the queue plumbing and the vhost-user entry points;
//! [`tx`] the ingress path, [`rx`] the egress path, [`peers`] the wiring to the other ports
//! (control messages, rings). virtio-net headers are decoded and encoded in `crate::frame`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use crate::control::{self, Role, ToChild, ToMain};
use crate::dql::Dql;
use crate::egress::{Class, Egress, Step};
use crate::forward::{Decision, DropReason, PortId, Switch, flow_hash};
use crate::frame::{
    self, Gso, MAX_FRAME, MAX_GSO_FRAME, Offload, OffloadCaps, VNET_F_NEEDS_CSUM, VnetHdr,
};
use crate::port_file::PortConfig;
use crate::ring::{
    Consumer, Event, FLAG_NEEDS_CSUM, Popped, Producer, PushError, RingSpec, SlotMeta, SlotWriter,
};
use crate::sched::{DropCause, Packet, Params};
use crate::stats::{Counter, PortStats};

mod peers;
mod rx;
mod tx;

/// Virtqueue index of RX (switch → guest).
pub const RX_QUEUE: u16 = 0;
/// Virtqueue index of TX (guest → switch).
pub const TX_QUEUE: u16 = 1;
const NUM_QUEUES: usize = 2;
/// Event id of the control channel.
pub const EV_CONTROL: u16 = 3;
/// Event id of the DQL re-check timer.
pub const EV_TIMER: u16 = 4;
/// Event id of the first incoming ring; ring slot `n` uses `EV_RING_BASE + n`.
pub const EV_RING_BASE: u16 = 5;
/// Largest virtqueue size accepted (QEMU allows up to 1024; crosvm must be given
/// `max-queue-size=256` or up to this).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Frames handled per TX batch before rings are flushed.
const TX_BATCH: usize = 64;
/// Back-pressure: TX chains held (not completed) per destination whose ring is full, before
/// the port stops taking chains from the guest's TX queue altogether.
pub const HOLD_CAP: usize = 64;
/// Back-pressure: a held chain older than this is dropped as `ring_full` (a destination that
/// does not drain its ring, e.g. a hung child, cannot stall the sender for longer).
pub const HOLD_TIMEOUT_NS: u64 = 100_000_000;
/// Quiet time of a guest's TX queue after which the watchdog looks at it once more
/// ([`Port::tx_watchdog`]).
const TX_RESCUE_NS: u64 = 10_000_000;
/// Back-pressure: re-check of held chains while holding (in case the wakeup cannot come).
const HOLD_RECHECK_NS: u64 = 1_000_000;
/// With the `fuzzing` feature: iterations of the guest-driven loops allowed per event before
/// the backend panics, so that a loop a guest can keep going forever is reported by the fuzzer
/// instead of hanging it. Honest work per event is bounded by the queue sizes and the egress
/// backlog, far below this.
#[cfg(feature = "fuzzing")]
pub const FUZZ_STEP_LIMIT: u32 = 200_000;

/// The worker's epoll handler type.
pub type Handler = VringEpollHandler<Arc<NetBackend>>;

/// Virtio feature bits offered to the frontend.
pub const OFFERED_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_F_VERSION_1);

/// Port parameters shared by all ports of a switch.
#[derive(Debug, Clone, Copy)]
pub struct PortParams {
    /// Egress scheduler parameters.
    pub sched: Params,
    /// Smallest DQL limit on the guest RX ring, bytes.
    pub dql_min: u64,
    /// Largest DQL limit, bytes.
    pub dql_max: u64,
    /// First re-check delay while DQL-limited, ns (doubles while the guest makes no progress).
    pub recheck_ns: u64,
}

impl Default for PortParams {
    fn default() -> Self {
        PortParams {
            sched: Params::default(),
            dql_min: 2 * 1514,
            dql_max: 512 * 1024,
            recheck_ns: 250_000,
        }
    }
}

/// A frame waiting at the egress.
#[derive(Debug)]
pub struct Frame {
    data: Vec<u8>,
    meta: SlotMeta,
    /// Scheduler source and flow hash it was queued under (to requeue its segments).
    source: u32,
    hash: u32,
}

impl Packet for Frame {
    fn size(&self) -> u32 {
        self.data.len() as u32
    }
    fn mem_size(&self) -> u32 {
        // Payload allocation plus bookkeeping, like skb->truesize.
        self.data.capacity() as u32 + 64
    }
    fn enqueued_at(&self) -> u64 {
        self.meta.ts_ns
    }
    fn mark_ce(&mut self) -> bool {
        frame::set_ce(&mut self.data)
    }
}

/// CLOCK_MONOTONIC in ns (the clock all children share for ingress timestamps).
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A port's log limiter on [`now_ns`]'s clock: a burst of 5 lines a second, so a guest cannot
/// flood the log.
type RateLimit = vmsilo_log::Limiter<Duration>;

fn rate_limit() -> RateLimit {
    RateLimit::new(5, Duration::from_secs(1))
}

/// The only way the per-frame paths (`tx.rs`, `rx.rs`) log: through a port's limiter, with the
/// number of lines it suppressed since the last one. Those modules deny
/// `clippy::disallowed_macros`, and `crates/vm-switch/clippy.toml` lists the raw log macros, so
/// an unlimited `warn!` in a path a guest drives per frame fails `cargo clippy -D warnings`.
fn log_limited(
    limit: &mut RateLimit,
    ts_ns: u64,
    level: log::Level,
    args: std::fmt::Arguments<'_>,
) {
    if let Some(suppressed) = limit.allow(Duration::from_nanos(ts_ns)) {
        if suppressed > 0 {
            log::log!(level, "{args} ({suppressed} similar lines suppressed)");
        } else {
            log::log!(level, "{args}");
        }
    }
}

#[derive(Debug)]
struct Peer {
    slot: u16,
    tx: Option<Producer>,
    rx: Option<Consumer>,
    /// TX chains for this peer that did not fit its ring, oldest first: not yet completed to
    /// the guest, so its TX queue fills up and its own queueing (qdisc, TSQ) sees the
    /// back-pressure, as with a tap.
    held: VecDeque<Held>,
}

/// A frame whose TX chain is held until the destination's ring has room.
#[derive(Debug)]
struct Held {
    head: u16,
    meta: SlotMeta,
    data: Vec<u8>,
}

/// What happened to a frame from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Forwarded or dropped: its chain can be completed.
    Done,
    /// A proxy reply was queued locally; the chain can be completed.
    Reply,
    /// Held for back-pressure: the chain is completed later.
    Held,
}

/// State of the guest's RX ring for DQL accounting.
#[derive(Debug, Default)]
struct RxTrack {
    /// (used index after the frame, cumulative bytes after the frame).
    delivered: VecDeque<(u16, u64)>,
    /// Used index up to which the guest is known to have consumed.
    consumed_idx: u16,
    cum_delivered: u64,
    cum_completed: u64,
    /// Current re-check delay.
    backoff_ns: u64,
    /// Re-checks in a row that saw no consumption.
    idle_rechecks: u32,
    /// The RX ring was found full of posted buffers at this position (the device's next
    /// available index) that together hold only this many bytes: a larger frame is dropped
    /// without walking the whole ring again. Stale as soon as the position moves.
    full_ring: Option<(u16, usize)>,
    /// Used index as of the last interrupt decision ([`rx_needs_notification`]).
    notified_used: u16,
}

/// Negotiated per-connection settings.
#[derive(Debug, Clone, Copy, Default)]
struct Negotiated {
    hdr_len: usize,
    mrg_rxbuf: bool,
    guest_csum: bool,
    /// GUEST_TSO4 (segments are handed to the guest whole).
    guest_tso4: bool,
    /// GUEST_TSO6.
    guest_tso6: bool,
    /// GUEST_ECN (segments with CWR whole).
    guest_ecn: bool,
    event_idx: bool,
    /// What the guest may put into its TX headers (CSUM, HOST_TSO4/6, HOST_ECN).
    host: OffloadCaps,
}

impl Negotiated {
    /// Whether this guest takes the (validated) frame with offload `off` as it is.
    fn accepts(&self, off: &Offload) -> bool {
        let gso = match off.gso {
            Gso::None => true,
            Gso::Tcp4 => self.guest_tso4,
            Gso::Tcp6 => self.guest_tso6,
        };
        gso && (!off.ecn || self.guest_ecn) && (off.gso == Gso::None || self.guest_csum)
    }
}

struct Port {
    id: PortId,
    cfg: PortConfig,
    params: PortParams,
    switch: Switch,
    peers: BTreeMap<PortId, Peer>,
    slots: Vec<Option<PortId>>,
    egress: Egress<Frame, Offload>,
    dql: Dql,
    /// Frames taken from the scheduler that wait for RX buffers: one frame, or the frames
    /// software segmentation made of a segment.
    pending: VecDeque<Frame>,
    rx: RxTrack,
    neg: Negotiated,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    stats: Arc<PortStats>,
    control: Option<OwnedFd>,
    handler: Option<Arc<Handler>>,
    timer: TimerFd,
    timer_armed: bool,
    perturb: u64,
    reply: Vec<u8>,
    /// The TX frame being forwarded: its first [`tx::HEAD_COPY`] bytes, then (unless it goes
    /// straight into a ring) the rest.
    buf: Vec<u8>,
    /// Where the TX frame's bytes beyond `buf` are in guest memory (address, length).
    rest: Vec<(GuestAddress, usize)>,
    /// Where frames popped from the incoming rings land first.
    scratch: Vec<u8>,
    pool: crate::pool::BufPool,
    segs: Vec<crate::gso::Segment>,
    log_limit: RateLimit,
    /// Guest queues stopped for a driver error (index: RX_QUEUE, TX_QUEUE), until the guest
    /// resets the device (the frontend then stops the ring with GET_VRING_BASE) or the frontend
    /// reconnects.
    broken: [bool; NUM_QUEUES],
    fault_log: RateLimit,
    /// Iterations of guest-driven loops in the current event (see [`FUZZ_STEP_LIMIT`]).
    #[cfg(feature = "fuzzing")]
    steps: u32,
    exit_requested: bool,
    buffers_requested: bool,
    relay: Arc<RelaySlot>,
    /// Held TX chains to complete with the next used-ring update (a peer went away).
    released: Vec<u16>,
    /// TX processing is paused: a destination holds [`HOLD_CAP`] chains.
    tx_paused: bool,
    /// Last TX activity (a kick, or chains taken) not yet looked at by the watchdog.
    tx_active_at: Option<u64>,
}

/// Relay sockets delivered by the main process, waited for by the serving thread.
#[derive(Debug, Default)]
struct RelaySlot {
    sockets: Mutex<Vec<(OwnedFd, OwnedFd)>>,
    ready: std::sync::Condvar,
}

/// The vhost-user-net backend of one port.
pub struct NetBackend {
    port: Mutex<Port>,
    relay: Arc<RelaySlot>,
}

impl std::fmt::Debug for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend").finish_non_exhaustive()
    }
}

fn ev_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl NetBackend {
    /// A backend for port `id` with configuration `cfg`. `control` is the child's end of the
    /// control channel (None in tests that wire peers by hand).
    pub fn new(
        id: PortId,
        cfg: PortConfig,
        params: PortParams,
        stats: Arc<PortStats>,
        control: Option<OwnedFd>,
    ) -> io::Result<Arc<Self>> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let mut switch = Switch::new();
        switch.upsert(id, &cfg);
        let relay = Arc::new(RelaySlot::default());
        let mut perturb = [0u8; 8];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut perturb));
        let port = Port {
            id,
            cfg,
            params,
            switch,
            peers: BTreeMap::new(),
            slots: Vec::new(),
            egress: Egress::new(params.sched),
            dql: Dql::new(params.dql_min, params.dql_max, 1_000_000_000),
            pending: VecDeque::new(),
            rx: RxTrack {
                backoff_ns: params.recheck_ns,
                ..RxTrack::default()
            },
            neg: Negotiated {
                hdr_len: 10,
                ..Negotiated::default()
            },
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            stats,
            control,
            handler: None,
            timer,
            timer_armed: false,
            perturb: u64::from_ne_bytes(perturb) ^ u64::from(id).wrapping_mul(0x9e37_79b9),
            reply: Vec::with_capacity(128),
            buf: Vec::with_capacity(crate::pool::BIG),
            rest: Vec::new(),
            scratch: Vec::with_capacity(crate::pool::BIG),
            pool: crate::pool::BufPool::default(),
            segs: Vec::new(),
            log_limit: rate_limit(),
            broken: [false; NUM_QUEUES],
            fault_log: rate_limit(),
            #[cfg(feature = "fuzzing")]
            steps: 0,
            exit_requested: false,
            buffers_requested: false,
            relay: relay.clone(),
            released: Vec::new(),
            tx_paused: false,
            tx_active_at: None,
        };
        port.stats.set(Counter::DqlLimit, port.dql.limit());
        Ok(Arc::new(NetBackend {
            port: Mutex::new(port),
            relay,
        }))
    }

    /// Waits (up to `timeout`) for the sockets of the next frontend's relay, and asks the main
    /// process for the ones after.
    pub fn take_relay(&self, timeout: std::time::Duration) -> io::Result<(OwnedFd, OwnedFd)> {
        {
            let p = self.lock();
            if let Some(c) = &p.control {
                control::send(c.as_fd(), &ToMain::GetRelay, &[], false).map_err(ev_err)?;
            }
        }
        let mut slot = self.relay.sockets.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + timeout;
        while slot.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the main process sent no relay sockets",
                ));
            }
            slot = self
                .relay
                .ready
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(slot.remove(0))
    }

    fn lock(&self) -> MutexGuard<'_, Port> {
        // A panic while holding the lock is a bug; keep serving rather than poisoning forever.
        self.port.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the control channel, the timer and every incoming ring with a new daemon's
    /// worker, and asks the main process for rings the first time.
    pub fn attach(&self, handler: Arc<Handler>) -> io::Result<()> {
        let mut p = self.lock();
        if let Some(c) = &p.control {
            handler.register_listener(c.as_raw_fd(), EventSet::IN, u64::from(EV_CONTROL))?;
        }
        handler.register_listener(
            p.timer.as_fd().as_raw_fd(),
            EventSet::IN,
            u64::from(EV_TIMER),
        )?;
        for peer in p.peers.values() {
            if let Some(rx) = &peer.rx {
                handler.register_listener(
                    rx.event().fd().as_raw_fd(),
                    EventSet::IN,
                    u64::from(EV_RING_BASE + peer.slot),
                )?;
            }
        }
        p.handler = Some(handler);
        if !p.buffers_requested
            && let Some(c) = &p.control
        {
            control::send(c.as_fd(), &ToMain::GetBuffer { peer: None }, &[], false)
                .map_err(ev_err)?;
            p.buffers_requested = true;
        }
        Ok(())
    }

    /// Marks a frontend connected (after accept).
    pub fn connected(&self) {
        let p = self.lock();
        p.stats.add(Counter::Connects, 1);
        p.stats.set(Counter::Connected, 1);
    }

    /// Forgets the daemon's worker and all per-connection state after the frontend went away;
    /// queued frames for the guest are dropped.
    pub fn detach(&self) {
        let mut p = self.lock();
        p.handler = None;
        p.reset_connection();
        p.stats.set(Counter::Connected, 0);
    }

    /// Whether the main process asked the child to exit (control channel closed).
    pub fn exit_requested(&self) -> bool {
        self.lock().exit_requested
    }

    /// Applies a control message (used by the worker, and by tests wiring ports by hand).
    pub fn apply(&self, msg: ToChild, fds: Vec<OwnedFd>) {
        self.lock().apply(msg, fds);
    }

    /// Fuzzing entry point: queues `data` at this port's egress as if peer `source` (1..) had
    /// sent it, with a partial checksum to finish at (`start`, `offset`) if given.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn fuzz_enqueue(&self, source: u32, data: Vec<u8>, csum: Option<(u16, u16)>) {
        let mut p = self.lock();
        let mut meta = SlotMeta {
            ts_ns: now_ns(),
            ..SlotMeta::default()
        };
        if let Some((start, offset)) = csum {
            meta.flags |= FLAG_NEEDS_CSUM;
            meta.csum_start = start;
            meta.csum_offset = offset;
        }
        let hash = flow_hash(&data, p.perturb);
        let stats = p.stats.clone();
        p.egress.enqueue(
            source,
            hash,
            Frame {
                data,
                meta,
                source,
                hash,
            },
            &mut |_, c| stats.count_drop(cause_reason(c), 1),
        );
    }
}

impl Port {
    /// Forgets every held TX chain (the TX queue was reset or stopped: its heads mean nothing
    /// any more), counting the frames as `port_down`.
    fn drop_held(&mut self) {
        let mut n = 0;
        for p in self.peers.values_mut() {
            n += p.held.len() as u64;
            p.held.clear();
        }
        self.released.clear();
        self.tx_paused = false;
        self.stats.count_drop(DropReason::PortDown, n);
    }

    fn reset_connection(&mut self) {
        self.drop_held();
        let stats = self.stats.clone();
        self.egress
            .clear(&mut |_, _| stats.count_drop(DropReason::PortDown, 1));
        self.drop_pending();
        self.reset_rx();
        self.broken = [false; NUM_QUEUES];
        self.stats.set(Counter::Backlog, 0);
        self.timer_armed = false;
        let _ = self.timer.unset();
    }

    /// Stops guest queue `index` for a driver error: it is not touched again until the guest
    /// resets the device (or the frontend reconnects). vhost-user gives a backend no way to
    /// set DEVICE_NEEDS_RESET itself, so the queue simply goes quiet; a stopped RX queue drops
    /// what waits for the guest. Logged once per stop, and rate-limited.
    fn stop_queue(&mut self, index: u16, fault: &QueueFault) {
        let Some(b) = self.broken.get_mut(usize::from(index)) else {
            return;
        };
        if *b {
            return;
        }
        *b = true;
        self.stats.add(Counter::QueueErrors, 1);
        if index == TX_QUEUE {
            self.drop_held();
        }
        if index == RX_QUEUE {
            let stats = self.stats.clone();
            self.egress
                .clear(&mut |_, _| stats.count_drop(DropReason::PortDown, 1));
            self.drop_pending();
            self.stats.set(Counter::Backlog, 0);
        }
        if self
            .fault_log
            .allow(Duration::from_nanos(now_ns()))
            .is_some()
        {
            warn!(
                "port {}: the guest broke its {} queue: {fault}; the queue is stopped until the \
                 guest resets the device (a buggy or hostile driver; counted in queue_errors)",
                self.cfg.name,
                queue_name(index)
            );
        }
    }

    /// Bytes waiting for the guest: the egress plus frames waiting for RX buffers.
    fn backlog_bytes(&self) -> u64 {
        self.egress.backlog_bytes()
            + self
                .pending
                .iter()
                .map(|f| f.data.len() as u64)
                .sum::<u64>()
    }

    /// Drops the frames taken from the egress that wait for RX buffers, counted as
    /// `port_down`.
    fn drop_pending(&mut self) {
        let n = self.pending.len() as u64;
        self.pending.clear();
        self.stats.count_drop(DropReason::PortDown, n);
    }

    fn is_broken(&self, index: u16) -> bool {
        self.broken.get(usize::from(index)).copied().unwrap_or(true)
    }

    /// Counts one iteration of a loop the guest drives (see [`FUZZ_STEP_LIMIT`]).
    #[inline]
    fn step(&mut self) {
        #[cfg(feature = "fuzzing")]
        {
            self.steps += 1;
            assert!(
                self.steps <= FUZZ_STEP_LIMIT,
                "a guest-driven loop ran {} iterations in one event",
                self.steps
            );
        }
    }

    fn reset_rx(&mut self) {
        self.dql.reset();
        self.rx = RxTrack {
            backoff_ns: self.params.recheck_ns,
            ..RxTrack::default()
        };
    }

    fn ready(vring: &VringRwLock) -> bool {
        let s = vring.get_ref();
        s.get_queue().ready() && s.is_enabled()
    }
}

fn used_fault(source: virtio_queue::Error) -> QueueFault {
    QueueFault::Queue {
        what: "its used ring is not writable",
        source,
    }
}

/// Asks the guest for a kick when it posts a buffer beyond `avail` (the available index up to
/// which everything posted was already found too small), then checks whether it did so in the
/// meantime. With EVENT_IDX the kick threshold (`avail_event`) must be `avail` itself, not the
/// device's position, which the guest has already passed and would never kick for again.
/// Returns whether the available index has moved past `avail`.
fn wait_for_buffers(q: &mut Queue, mem: &GuestMemoryMmap, avail: u16) -> Result<bool, QueueFault> {
    q.enable_notification(mem)
        .map_err(|source| QueueFault::Queue {
            what: "its rings are not in guest memory",
            source,
        })?;
    if q.event_idx_enabled() {
        let addr = q
            .used_ring()
            .checked_add(4 + 8 * u64::from(q.size()))
            .map(GuestAddress);
        let stored = addr.map(|a| mem.store(avail.to_le(), a, Ordering::Release));
        if !matches!(stored, Some(Ok(()))) {
            return Err(QueueFault::Queue {
                what: "its avail_event field is not writable",
                source: virtio_queue::Error::AddressOverflow,
            });
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }
    match q.avail_idx(mem, Ordering::Acquire) {
        Ok(now) => Ok(now.0 != avail),
        Err(source) => Err(QueueFault::Queue {
            what: "its available index is unreadable",
            source,
        }),
    }
}

enum WriteResult {
    /// Delivered: the used index after the frame, and the frame's bytes (their length is what
    /// was delivered; the buffer goes back to the pool).
    Written(u16, Vec<u8>),
    /// Not enough buffers: those up to available index `avail` hold only `cap` bytes.
    NoBuffers {
        frame: Frame,
        avail: u16,
        cap: usize,
    },
    Dropped(DropReason),
    Broken(Frame, QueueFault),
}

/// The time slice the datapath thread asks for ([`crate::sys::request_slice`]): the kernel's
/// minimum. A wake-up of the worker takes about 55 us of work, and on a host whose cores are
/// busy with vCPU threads it otherwise waited for the running thread's default slice: perf
/// sched measured an average wake-up delay of 120 us for the workers under bulk TCP between
/// two QEMU/TCG guests, against 30 us for QEMU's threads, and 77 us with this slice.
const DATAPATH_SLICE_NS: u64 = 100_000;

thread_local! {
    static SLICE_REQUESTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Asks once per thread for [`DATAPATH_SLICE_NS`]; a refusal only costs latency.
fn request_datapath_slice() {
    SLICE_REQUESTED.with(|done| {
        if !done.replace(true)
            && let Err(e) = crate::sys::request_slice(DATAPATH_SLICE_NS)
        {
            log::debug!("could not ask for a short scheduler slice: {e}");
        }
    });
}

/// Why a guest queue was stopped: the driver broke the virtqueue protocol, so the device cannot
/// tell which buffers are really available (virtio's DEVICE_NEEDS_RESET condition).
#[derive(Debug, thiserror::Error)]
enum QueueFault {
    /// The available index is further ahead than the queue has entries.
    #[error(
        "its available index {avail} is {} entries ahead of the device's {next}, more than the queue size {size}",
        avail.wrapping_sub(*next)
    )]
    AvailIndex { avail: u16, next: u16, size: u16 },
    /// An available ring entry names a descriptor outside the table.
    #[error("descriptor head {head} is outside the queue of {size} entries")]
    Head { head: u16, size: u16 },
    /// The rings are not (or no longer) in guest memory.
    #[error("{what}: {source}")]
    Queue {
        what: &'static str,
        #[source]
        source: virtio_queue::Error,
    },
    /// The available ring entry could not be read.
    #[error(
        "its available ring entry {slot} is not in guest memory (or the available index moved back)"
    )]
    AvailRing { slot: u16 },
}

/// What [`next_chain`] found.
enum Next<'m> {
    Chain(DescriptorChain<&'m GuestMemoryMmap>),
    /// Nothing available up to this available index.
    Empty(u16),
    Broken(QueueFault),
}

/// Takes the next available chain, telling an empty queue from a broken one (which
/// `pop_descriptor_chain` does not: it returns `None` for both and logs at error level).
fn next_chain<'m>(q: &mut Queue, mem: &'m GuestMemoryMmap) -> Next<'m> {
    let next = q.next_avail();
    let size = q.size();
    let avail = match q.avail_idx(mem, Ordering::Acquire) {
        Ok(i) => i.0,
        Err(source) => {
            return Next::Broken(QueueFault::Queue {
                what: "its available index is unreadable",
                source,
            });
        }
    };
    if avail == next {
        return Next::Empty(avail);
    }
    if avail.wrapping_sub(next) > size {
        return Next::Broken(QueueFault::AvailIndex { avail, next, size });
    }
    // `iter` reads the index again; a guest that changed it in between is caught there.
    let chain = match q.iter(mem) {
        Ok(mut it) => it.next(),
        Err(virtio_queue::Error::InvalidAvailRingIndex) => {
            return Next::Broken(QueueFault::AvailIndex {
                avail: q.avail_idx(mem, Ordering::Acquire).map_or(avail, |i| i.0),
                next,
                size,
            });
        }
        Err(source) => {
            return Next::Broken(QueueFault::Queue {
                what: "its available ring is unusable",
                source,
            });
        }
    };
    match chain {
        Some(c) if c.head_index() >= size => Next::Broken(QueueFault::Head {
            head: c.head_index(),
            size,
        }),
        Some(c) => Next::Chain(c),
        // The index was published but the entry cannot be read, or the guest moved the index
        // back (it may only move forward).
        None => Next::Broken(QueueFault::AvailRing {
            slot: next % size.max(1),
        }),
    }
}

fn queue_name(index: u16) -> &'static str {
    if index == RX_QUEUE { "RX" } else { "TX" }
}

fn cause_reason(c: DropCause) -> DropReason {
    match c {
        DropCause::Codel => DropReason::Codel,
        DropCause::Overflow => DropReason::Overflow,
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        let mut p = self.lock();
        let version_1 = features & (1 << VIRTIO_F_VERSION_1) != 0;
        let mrg = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        p.neg.mrg_rxbuf = mrg;
        p.neg.hdr_len = if version_1 || mrg { 12 } else { 10 };
        let has = |bit: u32| features & (1 << bit) != 0;
        p.neg.guest_csum = has(VIRTIO_NET_F_GUEST_CSUM);
        p.neg.guest_tso4 = has(VIRTIO_NET_F_GUEST_TSO4);
        p.neg.guest_tso6 = has(VIRTIO_NET_F_GUEST_TSO6);
        p.neg.guest_ecn = has(VIRTIO_NET_F_GUEST_ECN);
        p.neg.host = OffloadCaps {
            csum: has(VIRTIO_NET_F_CSUM),
            tso4: has(VIRTIO_NET_F_HOST_TSO4),
            tso6: has(VIRTIO_NET_F_HOST_TSO6),
            ecn: has(VIRTIO_NET_F_HOST_ECN),
        };
        p.reset_rx();
        info!(
            "port {}: features negotiated: {features:#x} (header {} bytes, mergeable {mrg})",
            p.cfg.name, p.neg.hdr_len
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // No MQ: QEMU then enables the rings only after SET_FEATURES (with MQ it sends
        // SET_VRING_ENABLE first, which rust-vmm rejects), and crosvm's default of three
        // queues is harmless because a guest without CTRL_VQ never sets up the third.
        // CONFIG: crosvm reads the device config space (the MAC) through GET_CONFIG even when
        // it was not negotiated; QEMU emulates the config space itself and drops this bit.
        VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.lock().neg.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config: mac[6], status le16, max_virtqueue_pairs le16, mtu le16.
        let p = self.lock();
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&p.cfg.mac);
        cfg[6..8].copy_from_slice(&1u16.to_le_bytes()); // VIRTIO_NET_S_LINK_UP
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        cfg[10..12].copy_from_slice(&1500u16.to_le_bytes());
        let mut out = vec![0u8; size as usize];
        for (i, b) in out.iter_mut().enumerate() {
            if let Some(v) = (offset as usize).checked_add(i).and_then(|j| cfg.get(j)) {
                *b = *v;
            }
        }
        out
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.lock().mem = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![0b11]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let mut p = self.lock();
        // The frontend stops a ring when the guest resets the device: a queue stopped for a
        // driver error may be used again once it is set up anew.
        if let Some(b) = p.broken.get_mut(queue_index as usize) {
            *b = false;
        }
        if queue_index == u32::from(TX_QUEUE) {
            p.drop_held();
        }
        if queue_index == u32::from(RX_QUEUE) {
            p.reset_rx();
            p.drop_pending();
        }
        Ok(())
    }

    fn reset_device(&self) {
        self.lock().reset_connection();
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        request_datapath_slice();
        let mut p = self.lock();
        #[cfg(feature = "fuzzing")]
        {
            p.steps = 0;
        }
        let connected =
            vrings.get(usize::from(RX_QUEUE)).is_some_and(Port::ready) && !p.is_broken(RX_QUEUE);
        match device_event {
            RX_QUEUE => p.deliver(vrings)?,
            TX_QUEUE => p.process_tx(vrings)?,
            EV_CONTROL => p.handle_control(),
            EV_TIMER => {
                let mut b = [0u8; 8];
                let _ = nix::unistd::read(p.timer.as_fd(), &mut b);
                p.timer_armed = false;
                p.deliver(vrings)?;
                p.resume_tx(vrings)?;
                p.tx_watchdog(vrings)?;
            }
            ev if ev >= EV_RING_BASE => {
                p.drain_ring(connected, ev - EV_RING_BASE);
                p.deliver(vrings)?;
                p.resume_tx(vrings)?;
            }
            other => debug!("port {}: unexpected event {other}", p.cfg.name),
        }
        Ok(())
    }
}

/// A split virtqueue laid out at fixed guest addresses, for the RX and TX unit tests.
#[cfg(test)]
mod test_queue {
    use super::*;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    /// A ready queue of `size` entries at [`DESC`], [`AVAIL`] and [`USED`], in `mem_len` bytes
    /// of guest memory from address 0.
    pub fn queue(size: u16, mem_len: usize) -> (Queue, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_len)]).unwrap();
        let mut q = Queue::new(size).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        (q, mem)
    }
}
