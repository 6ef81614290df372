//! vm-switch's virtqueue paths on a hostile driver: guest memory (vm-memory `GuestMemoryMmap`)
//! with an RX and a TX split virtqueue whose descriptor tables, available rings and buffers are
//! written by a small program decoded from the input, interleaved with kicks (the backend's
//! `handle_event`, which runs TX processing or RX delivery), frames arriving for the guest,
//! device resets and guest memory changes.
//!
//! Nothing a driver does may panic the backend or keep it busy: built with vm-switch's
//! `fuzzing` feature, the backend panics when a loop the guest drives runs more than
//! `FUZZ_STEP_LIMIT` iterations in one event, so a spin (issue 11, findings 2 and 3) is a
//! crash here instead of a hang. The program is bounded (at most `MAX_OPS` actions), so every
//! input runs a bounded number of events.
//!
//! Speed: the port (its scheduler, timer, stats page) and the guest memory are made once per
//! process and reset before every input (`reset_device`, as a frontend's reset does; memory
//! zeroed and restored to its full size); vrings are fresh for every input.
//!
//! Input: two bytes of queue sizes (log2, up to 256), one byte of negotiated features, then
//! actions, each an opcode byte and its operands (missing operand bytes read as zero).

#![no_main]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vm_switch::backend::{EV_TIMER, NetBackend, PortParams, RX_QUEUE, TX_QUEUE};
use vm_switch::port_file::PortConfig;
use vm_switch::control::{Role, ToChild};
use vm_switch::ring::{self, Consumer, Event, RingSpec};
use vm_switch::sched::Params;
use vm_switch::stats::PortStats;
use vmm_sys_util::epoll::EventSet;

/// Guest memory: 64 KiB at guest address 0.
const MEM: u64 = 0x1_0000;
/// Per queue: descriptor table, available ring, used ring (each fits a 256-entry queue).
const LAYOUT: [[u64; 3]; 2] = [[0x0000, 0x1000, 0x2000], [0x3000, 0x4000, 0x5000]];
/// Buffers live above the rings (descriptors may point anywhere, though).
const BUFS: u64 = 0x6000;
const MAX_OPS: usize = 512;
static ZEROES: [u8; MEM as usize] = [0; MEM as usize];

const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_EVENT_IDX: u64 = 1 << 29;
const F_VERSION_1: u64 = 1 << 32;

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn port(name: &str, mac: [u8; 6], addrs: &[&str]) -> PortConfig {
    PortConfig {
        name: name.into(),
        mac,
        addresses: addrs.iter().map(|a| a.parse().expect("valid")).collect(),
        receive_broadcast: true,
        routes: Vec::new(),
    }
}

fn memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).expect("anonymous memory")
}

/// The driver's side of one queue.
struct Driver {
    size: u16,
    /// Next available index the driver will publish.
    avail: u16,
}

fn setup_vring(vring: &VringRwLock, q: usize, size: u16, event_idx: bool) {
    let [desc, avail, used] = LAYOUT[q];
    vring.set_queue_size(size);
    vring.set_queue_event_idx(event_idx);
    vring
        .set_queue_info(desc, avail, used)
        .expect("aligned ring addresses");
    vring.set_queue_next_avail(0);
    vring.set_queue_next_used(0);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
}

/// What is made once per process.
struct Fixture {
    backend: Arc<NetBackend>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    full: GuestMemoryMmap,
    /// The peer's end of the ring to it.
    consumer: std::sync::Mutex<Consumer>,
}

fn fixture() -> Fixture {
    let full = memory(MEM);
    let mem = GuestMemoryAtomic::new(full.clone());
    let stats = Arc::new(PortStats::create("fuzz").expect("stats page"));
    let backend = NetBackend::new(
        1,
        port(
            "a",
            [0x52, 0x54, 0, 0, 0, 1],
            &["10.0.0.1/24", "fd00::1/64"],
        ),
        PortParams {
            // Few flow buckets: the scheduler has its own fuzz target; here it only holds
            // frames, and a reset would otherwise free and re-make 1024 buckets per input.
            sched: Params {
                flows_per_source: 8,
                ..Params::default()
            },
            ..PortParams::default()
        },
        stats,
        None,
    )
    .expect("backend");
    // A peer, so that ARP requests and neighbour solicitations for it get proxy replies (which
    // TX processing delivers straight into RX).
    backend.apply(
        ToChild::Peer {
            id: 2,
            config: port(
                "b",
                [0x52, 0x54, 0, 0, 0, 2],
                &["10.0.0.2/24", "fd00::2/64"],
            ),
        },
        Vec::new(),
    );
    // A ring to that peer, emptied before every input: TX frames for it take the fast path
    // (the checked head, then the rest straight from guest memory into the ring) or, when
    // the ring is full, are held (back-pressure).
    let spec = RingSpec {
        slots: 64,
        slot_size: 1600,
    };
    let ring = ring::create(spec, "fuzz-ring").expect("ring memory");
    let wake = Event::new().expect("eventfd");
    let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().expect("dup");
    backend.apply(
        ToChild::BufferReady {
            peer: 2,
            role: Role::Tx,
            spec,
        },
        vec![dup(ring.fd()), dup(wake.fd())],
    );
    let consumer = Consumer::new(dup(ring.fd()), spec, Event::from_fd(dup(wake.fd())))
        .expect("consumer");
    backend.update_memory(mem.clone()).expect("memory");
    Fixture {
        backend,
        mem,
        full,
        consumer: std::sync::Mutex::new(consumer),
    }
}

thread_local! {
    static FIXTURE: Fixture = fixture();
}

fuzz_target!(|data: &[u8]| FIXTURE.with(|fx| run(fx, data)));

fn run(fx: &Fixture, data: &[u8]) {
    let mut input = Input { data };
    let sizes = [1u16 << (input.u8() % 9), 1u16 << (input.u8() % 9)];
    let f = input.u8();
    let mut features = F_CSUM;
    for (bit, feature) in [
        (0, F_MRG_RXBUF),
        (1, F_EVENT_IDX),
        (2, F_VERSION_1),
        (3, F_GUEST_CSUM),
    ] {
        if f & (1 << bit) != 0 {
            features |= feature;
        }
    }
    let event_idx = features & F_EVENT_IDX != 0;

    let backend = &fx.backend;
    let mem = &fx.mem;
    // Back to a fresh connection: nothing queued, no stopped queue, zeroed memory of full size,
    // an empty ring to the peer.
    backend.reset_device();
    {
        let mut consumer = fx.consumer.lock().expect("consumer");
        let mut frame = Vec::new();
        while let Ok(Some(_)) = consumer.pop(&mut frame) {}
    }
    fx.full
        .write_slice(&ZEROES, GuestAddress(0))
        .expect("zero guest memory");
    mem.lock().expect("memory lock").replace(fx.full.clone());
    backend.acked_features(features);
    backend.set_event_idx(event_idx);
    let vrings: Vec<VringRwLock> = (0..2)
        .map(|q| {
            let v = VringRwLock::new(mem.clone(), 1024).expect("vring");
            setup_vring(&v, q, sizes[q], event_idx);
            v
        })
        .collect();
    let mut drivers = sizes.map(|size| Driver { size, avail: 0 });
    let event = |ev: u16| {
        backend
            .handle_event(ev, EventSet::IN, &vrings, 0)
            .expect("events of a connected port do not fail");
    };

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let q = usize::from(op >> 7);
        let m = mem.memory();
        let [desc_table, avail_ring, _] = LAYOUT[q];
        let d = &mut drivers[q];
        match op & 0x7f {
            // Write a descriptor: index, buffer offset, length, flags, next.
            0..=19 => {
                let idx = u64::from(input.u16() % d.size);
                let addr = BUFS + u64::from(input.u16());
                let len = u32::from(input.u16());
                let flags = u16::from(input.u8() & 0x7);
                let next = input.u16();
                let at = desc_table + 16 * idx;
                let _ = m.write_obj(addr.to_le(), GuestAddress(at));
                let _ = m.write_obj(len.to_le(), GuestAddress(at + 8));
                let _ = m.write_obj(flags.to_le(), GuestAddress(at + 12));
                let _ = m.write_obj(next.to_le(), GuestAddress(at + 14));
            }
            // Put a chain head into the next available slot (any head, even out of range).
            20..=39 => {
                let head = input.u16();
                let head = if head & 0x8000 == 0 {
                    head % d.size
                } else {
                    head
                };
                let slot = u64::from(d.avail % d.size);
                let _ = m.store(
                    head.to_le(),
                    GuestAddress(avail_ring + 4 + 2 * slot),
                    Ordering::Release,
                );
                d.avail = d.avail.wrapping_add(1);
            }
            // Publish the available index (as a driver does), then kick.
            40..=59 => {
                let _ = m.store(
                    d.avail.to_le(),
                    GuestAddress(avail_ring + 2),
                    Ordering::Release,
                );
                event(if q == 0 { RX_QUEUE } else { TX_QUEUE });
            }
            // Publish any available index (a broken or hostile driver), then kick.
            60..=64 => {
                d.avail = input.u16();
                let _ = m.store(
                    d.avail.to_le(),
                    GuestAddress(avail_ring + 2),
                    Ordering::Release,
                );
                event(if q == 0 { RX_QUEUE } else { TX_QUEUE });
            }
            // A kick without publishing anything.
            65..=69 => event(if q == 0 { RX_QUEUE } else { TX_QUEUE }),
            // Write bytes anywhere in guest memory: buffer contents (frames for TX), ring flags,
            // used_event, the used ring itself.
            70..=84 => {
                let at = u64::from(input.u16()) % MEM;
                let n = usize::from(input.u8());
                let bytes = input.bytes(n).to_vec();
                let _ = m.write_slice(&bytes, GuestAddress(at));
            }
            // A frame from a peer for the guest (optionally with a partial checksum), then the
            // egress runs (as on a ring event).
            85..=99 => {
                let len = usize::from(input.u16() % 1600);
                let csum = match input.u8() {
                    c if c & 1 != 0 => Some((input.u16(), input.u16())),
                    _ => None,
                };
                let seed = input.bytes(64).to_vec();
                let frame: Vec<u8> = if seed.is_empty() {
                    vec![0; len]
                } else {
                    seed.iter().copied().cycle().take(len).collect()
                };
                backend.fuzz_enqueue(1, frame, csum);
                event(EV_TIMER);
            }
            // The egress re-checks (DQL timer).
            100..=104 => event(EV_TIMER),
            // The guest resets the device: the frontend stops the ring (GET_VRING_BASE) and sets
            // it up again.
            105..=109 => {
                let _ = backend.stop_vring(q as u32);
                vrings[q].set_queue_ready(false);
                setup_vring(&vrings[q], q, d.size, event_idx);
                d.avail = 0;
                let _ = m.store(0u16, GuestAddress(avail_ring + 2), Ordering::Release);
            }
            // The frontend changes the memory table: guest memory shrinks (rings may end up
            // outside it) or comes back whole, zeroed.
            110..=112 => {
                let size = u64::from(input.u8() % 17) * 0x1000;
                drop(m);
                if size > 0 {
                    mem.lock().expect("memory lock").replace(memory(size));
                }
            }
            _ => {}
        }
    }
}
