//! Lock-free single-producer/single-consumer frame rings in shared memory, one per ordered
//! pair of ports (A→B is written only by A's child and read only by B's child).
//!
//! Layout of the memfd (all integers native-endian; the two sides are the same binary):
//!
//! | offset | what |
//! |---|---|
//! | 0 | magic `VMSWRING`, version, slot count, slot size (written by the main process, informative) |
//! | 64 | producer index (u32, free-running), written by the producer |
//! | 128 | consumer index (u32, free-running), written by the consumer |
//! | 192 | "consumer sleeping" flag (u32): the need-wakeup flag |
//! | 224 | "producer waiting" flag (u32): the producer found the ring full and wants to hear when the consumer has made room |
//! | 256 | `slots` slots of `slot_size` bytes: a 32-byte header (length, checksum-offload info, ingress timestamp) and the frame |
//!
//! A frame larger than one slot (a TSO segment) takes as many consecutive slots as its header
//! and bytes need; its bytes run on through the following slots and wrap from the end of the
//! slot area to its start. The producer publishes all of its slots with one index store.
//!
//! Indices live on separate cache lines. The producer publishes a slot with a `Release` store
//! of its index; the consumer reads it with `Acquire`, copies the frame out and then publishes
//! its own index. Wakeups: the consumer sets the sleeping flag, issues a full fence and checks
//! the ring again before it sleeps; the producer, after publishing, fences and clears the flag,
//! and writes the eventfd only if the flag was set. So a busy consumer costs the producer no
//! system calls, and an idle one is never missed.
//!
//! The other side is untrusted: every index and length read from the ring is checked against
//! the slot geometry this side was told by the main process (not the header in the ring), and
//! frames are copied out before they are parsed.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{Ordering, fence};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{VolatileMemoryError, VolatileSlice, WriteVolatile};

use crate::sys::SharedMem;

const MAGIC: u64 = u64::from_le_bytes(*b"VMSWRING");
const VERSION: u32 = 1;
const OFF_PROD: usize = 64;
const OFF_CONS: usize = 128;
const OFF_SLEEP: usize = 192;
const OFF_WAIT: usize = 224;
const OFF_SLOTS: usize = 256;
/// Bytes of the per-slot header.
pub const SLOT_HEADER: usize = 32;
/// Slot flag: the frame needs its L4 checksum finished (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const FLAG_NEEDS_CSUM: u32 = 1;

/// Ring geometry, agreed through the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingSpec {
    /// Number of slots (power of two).
    pub slots: u32,
    /// Bytes per slot, header included (multiple of 64).
    pub slot_size: u32,
}

/// Ring errors.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The geometry is out of range.
    #[error("invalid ring geometry: {0}")]
    Geometry(&'static str),
    /// Mapping the shared memory failed.
    #[error("could not map ring memory")]
    Map(#[source] std::io::Error),
    /// The peer wrote an index that cannot be right; the ring must be dropped.
    #[error("ring indices are corrupt (peer misbehaving)")]
    Corrupt,
}

impl RingSpec {
    /// The largest frame the ring holds (in consecutive slots), at most
    /// [`frame::MAX_GSO_FRAME`](crate::frame::MAX_GSO_FRAME).
    pub fn max_frame(&self) -> usize {
        (self.area() - SLOT_HEADER).min(crate::frame::MAX_GSO_FRAME)
    }

    /// Bytes of the slot area.
    fn area(&self) -> usize {
        self.slots as usize * self.slot_size as usize
    }

    /// Slots a frame of `len` bytes takes.
    fn slots_for(&self, len: usize) -> u32 {
        (SLOT_HEADER + len).div_ceil(self.slot_size as usize) as u32
    }

    /// Total bytes of the shared memory.
    pub fn bytes(&self) -> usize {
        OFF_SLOTS + self.slots as usize * self.slot_size as usize
    }

    /// Geometry for a ring of about `bytes` bytes with slots big enough for `max_frame`.
    pub fn for_size(bytes: u64, max_frame: usize) -> Self {
        let slot_size = (max_frame + SLOT_HEADER).div_ceil(64) * 64;
        let want = (bytes / slot_size as u64).clamp(2, 1 << 16) as u32;
        // Round down to a power of two.
        let slots = 1u32 << (31 - want.leading_zeros());
        RingSpec {
            slots,
            slot_size: slot_size as u32,
        }
    }

    /// Checks the geometry.
    pub fn validate(&self) -> Result<(), RingError> {
        if !self.slots.is_power_of_two() || !(2..=1 << 16).contains(&self.slots) {
            return Err(RingError::Geometry(
                "slot count must be a power of two in 2..=65536",
            ));
        }
        if !self.slot_size.is_multiple_of(64) || !(128..=16384).contains(&self.slot_size) {
            return Err(RingError::Geometry(
                "slot size must be a multiple of 64 in 128..=16384",
            ));
        }
        Ok(())
    }

    fn slot_offset(&self, index: u32) -> usize {
        OFF_SLOTS + (index & (self.slots - 1)) as usize * self.slot_size as usize
    }
}

/// Per-frame metadata carried in a slot header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotMeta {
    /// Ingress timestamp (CLOCK_MONOTONIC, ns).
    pub ts_ns: u64,
    /// [`FLAG_NEEDS_CSUM`] and friends.
    pub flags: u32,
    /// `csum_start` of the virtio-net header.
    pub csum_start: u16,
    /// `csum_offset` of the virtio-net header.
    pub csum_offset: u16,
    /// `gso_type` of the virtio-net header.
    pub gso_type: u8,
    /// `gso_size` of the virtio-net header.
    pub gso_size: u16,
}

/// An eventfd received from or shared with another process.
#[derive(Debug)]
pub struct Event(OwnedFd);

impl Event {
    /// Creates a non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )?;
        Ok(Event(OwnedFd::from(fd)))
    }

    /// Wraps a received eventfd.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Event(fd)
    }

    /// The fd.
    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }

    /// Wakes the waiter.
    pub fn signal(&self) {
        let _ = nix::unistd::write(self.0.as_fd(), &1u64.to_ne_bytes());
    }

    /// Clears pending wakeups (non-blocking).
    pub fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(self.0.as_fd(), &mut b);
    }
}

fn map_checked(mem: OwnedFd, spec: RingSpec) -> Result<SharedMem, RingError> {
    spec.validate()?;
    SharedMem::map(mem, spec.bytes()).map_err(RingError::Map)
}

/// Creates the shared memory of a new ring (main process).
pub fn create(spec: RingSpec, name: &str) -> Result<SharedMem, RingError> {
    spec.validate()?;
    let mem = SharedMem::create(name, spec.bytes()).map_err(RingError::Map)?;
    if let Some(m) = mem.atomic_u64(0) {
        m.store(MAGIC, Ordering::Relaxed);
    }
    mem.write(8, &VERSION.to_ne_bytes());
    mem.write(12, &spec.slots.to_ne_bytes());
    mem.write(16, &spec.slot_size.to_ne_bytes());
    Ok(mem)
}

/// The writing end of a ring.
#[derive(Debug)]
pub struct Producer {
    mem: SharedMem,
    spec: RingSpec,
    prod: u32,
    cached_cons: u32,
    pending: bool,
    event: Event,
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// No free slot.
    Full,
    /// The frame does not fit a slot.
    TooBig,
    /// The consumer index is impossible; the ring should be dropped.
    Corrupt,
    /// The frame's bytes could not all be read from their source (see
    /// [`Producer::push_with`]); nothing was published.
    Source,
}

/// Writes one frame's bytes into the slots [`Producer::push_with`] reserved for it, running on
/// through the following slots and wrapping from the end of the slot area to its start. It
/// takes exactly the frame's length, no more.
///
/// Also a [`WriteVolatile`], so a TX chain is copied from guest memory straight into the
/// ring (`GuestMemory::write_all_volatile_to`), without a private copy in between.
#[derive(Debug)]
pub struct SlotWriter<'a> {
    mem: &'a SharedMem,
    /// Bytes of the slot area.
    area: usize,
    /// Where the next byte goes, as an offset into the slot area.
    pos: usize,
    /// Bytes of the frame not written yet.
    left: usize,
}

impl SlotWriter<'_> {
    /// How many of `want` bytes go in before the frame ends or the slot area wraps.
    fn room(&self, want: usize) -> usize {
        want.min(self.left).min(self.area - self.pos)
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.area {
            self.pos = 0;
        }
        self.left -= n;
    }

    /// Appends `data`. False when it does not fit the frame's length.
    pub fn write(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let n = self.room(data.len());
            if n == 0 || !self.mem.write(OFF_SLOTS + self.pos, &data[..n]) {
                return false;
            }
            self.advance(n);
            data = &data[n..];
        }
        true
    }
}

impl WriteVolatile for SlotWriter<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let n = self.room(buf.len());
        if n == 0 {
            // Past the frame's length: `write_all_volatile` turns this into an error.
            return Ok(0);
        }
        let dst = self
            .mem
            .volatile_slice(OFF_SLOTS + self.pos, n)
            .ok_or(VolatileMemoryError::OutOfBounds { addr: self.pos })?;
        buf.subslice(0, n)?.copy_to_volatile_slice(dst);
        self.advance(n);
        Ok(n)
    }
}

impl Producer {
    /// Maps the ring `mem` (geometry `spec`) for writing; `event` wakes the consumer.
    pub fn new(mem: OwnedFd, spec: RingSpec, event: Event) -> Result<Self, RingError> {
        let mem = map_checked(mem, spec)?;
        let prod = mem
            .atomic_u32(OFF_PROD)
            .map(|a| a.load(Ordering::Acquire))
            .ok_or(RingError::Corrupt)?;
        let cached_cons = mem
            .atomic_u32(OFF_CONS)
            .map(|a| a.load(Ordering::Acquire))
            .ok_or(RingError::Corrupt)?;
        if prod.wrapping_sub(cached_cons) > spec.slots {
            return Err(RingError::Corrupt);
        }
        Ok(Producer {
            mem,
            spec,
            prod,
            cached_cons,
            pending: false,
            event,
        })
    }

    /// Writes one frame. Does not wake the consumer: call [`Producer::notify`] after a batch.
    pub fn push(&mut self, meta: SlotMeta, frame: &[u8]) -> Result<(), PushError> {
        self.push_with(meta, frame.len(), |w| w.write(frame))
    }

    /// Writes one frame of `len` bytes, which `fill` writes into the reserved slots through a
    /// [`SlotWriter`]. Only when `fill` returns true having written all `len` bytes is the
    /// frame published; otherwise nothing is ([`PushError::Source`]), and the bytes written
    /// stay unused room. Does not wake the consumer: call [`Producer::notify`] after a batch.
    pub fn push_with(
        &mut self,
        meta: SlotMeta,
        len: usize,
        fill: impl FnOnce(&mut SlotWriter<'_>) -> bool,
    ) -> Result<(), PushError> {
        if len > self.spec.max_frame() {
            return Err(PushError::TooBig);
        }
        let need = self.spec.slots_for(len);
        if self.prod.wrapping_sub(self.cached_cons) + need > self.spec.slots {
            let cons = self
                .mem
                .atomic_u32(OFF_CONS)
                .map(|a| a.load(Ordering::Acquire))
                .ok_or(PushError::Corrupt)?;
            let used = self.prod.wrapping_sub(cons);
            if used > self.spec.slots {
                return Err(PushError::Corrupt);
            }
            self.cached_cons = cons;
            if used + need > self.spec.slots {
                return Err(PushError::Full);
            }
        }
        let off = self.spec.slot_offset(self.prod);
        let mut hdr = [0u8; SLOT_HEADER];
        hdr[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        hdr[4..8].copy_from_slice(&meta.flags.to_ne_bytes());
        hdr[8..10].copy_from_slice(&meta.csum_start.to_ne_bytes());
        hdr[10..12].copy_from_slice(&meta.csum_offset.to_ne_bytes());
        hdr[12] = meta.gso_type;
        hdr[14..16].copy_from_slice(&meta.gso_size.to_ne_bytes());
        hdr[16..24].copy_from_slice(&meta.ts_ns.to_ne_bytes());
        self.mem.write(off, &hdr);
        // The bytes run on from the header and wrap at the end of the slot area.
        let mut w = SlotWriter {
            mem: &self.mem,
            area: self.spec.area(),
            pos: off - OFF_SLOTS + SLOT_HEADER,
            left: len,
        };
        if !fill(&mut w) || w.left != 0 {
            return Err(PushError::Source);
        }
        self.prod = self.prod.wrapping_add(need);
        if let Some(p) = self.mem.atomic_u32(OFF_PROD) {
            p.store(self.prod, Ordering::Release);
        }
        self.pending = true;
        Ok(())
    }

    /// [`Producer::push_with`] for a sender that waits when the ring is full (back-pressure):
    /// on [`PushError::Full`] it asks the consumer to report when it has made room
    /// (`want_space`) and tries once more, for room made in between. So a
    /// [`PushError::Full`] from here means the consumer will say when there is room.
    pub fn offer_with(
        &mut self,
        meta: SlotMeta,
        len: usize,
        fill: impl Fn(&mut SlotWriter<'_>) -> bool,
    ) -> Result<(), PushError> {
        match self.push_with(meta, len, &fill) {
            Err(PushError::Full) if self.want_space(len) => self.push_with(meta, len, fill),
            r => r,
        }
    }

    /// [`Producer::offer_with`] for a frame in a buffer.
    pub fn offer(&mut self, meta: SlotMeta, frame: &[u8]) -> Result<(), PushError> {
        self.offer_with(meta, frame.len(), |w| w.write(frame))
    }

    /// After [`PushError::Full`]: asks the consumer to report when it has made room (see
    /// [`Consumer::take_producer_wait`]), then looks again. Returns true when there is room
    /// for `len` bytes already (the caller retries at once), false when it must wait.
    fn want_space(&mut self, len: usize) -> bool {
        let Some(flag) = self.mem.atomic_u32(OFF_WAIT) else {
            return false;
        };
        flag.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let Some(cons) = self
            .mem
            .atomic_u32(OFF_CONS)
            .map(|a| a.load(Ordering::SeqCst))
        else {
            return false;
        };
        let used = self.prod.wrapping_sub(cons);
        if used <= self.spec.slots {
            self.cached_cons = cons;
        }
        used.saturating_add(self.spec.slots_for(len)) <= self.spec.slots
    }

    /// Wakes the consumer's owner through the eventfd (used by the consumer side of the
    /// opposite ring to say that it made room, see [`Consumer::take_producer_wait`]).
    pub fn wake_consumer(&self) {
        self.event.signal();
    }

    /// Wakes the consumer if it sleeps and something was pushed since the last call.
    pub fn notify(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        fence(Ordering::SeqCst);
        if let Some(flag) = self.mem.atomic_u32(OFF_SLEEP)
            && flag.swap(0, Ordering::SeqCst) != 0
        {
            self.event.signal();
        }
    }

    /// Frames written and not yet consumed (as far as the consumer says).
    pub fn queued(&self) -> u32 {
        let cons = self
            .mem
            .atomic_u32(OFF_CONS)
            .map_or(self.prod, |a| a.load(Ordering::Acquire));
        self.prod.wrapping_sub(cons).min(self.spec.slots)
    }
}

/// The reading end of a ring.
#[derive(Debug)]
pub struct Consumer {
    mem: SharedMem,
    spec: RingSpec,
    cons: u32,
    event: Event,
}

/// One frame popped from a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Popped {
    /// A frame of this metadata was copied into the buffer.
    Frame(SlotMeta),
    /// The slot held an impossible length; it was skipped.
    BadSlot,
}

impl Consumer {
    /// Maps the ring `mem` (geometry `spec`) for reading; `event` is what the producer
    /// signals.
    pub fn new(mem: OwnedFd, spec: RingSpec, event: Event) -> Result<Self, RingError> {
        let mem = map_checked(mem, spec)?;
        let cons = mem
            .atomic_u32(OFF_CONS)
            .map(|a| a.load(Ordering::Acquire))
            .ok_or(RingError::Corrupt)?;
        let mut c = Consumer {
            mem,
            spec,
            cons,
            event,
        };
        // A new consumer is idle: ask to be woken for the first frame. If frames are
        // already there, its eventfd is signalled so the owner drains them.
        if !c.arm() {
            c.event.signal();
        }
        Ok(c)
    }

    /// The eventfd the producer signals.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Copies the next frame into `buf` (replacing what it held). `Ok(None)` when empty.
    pub fn pop(&mut self, buf: &mut Vec<u8>) -> Result<Option<Popped>, RingError> {
        let prod = self
            .mem
            .atomic_u32(OFF_PROD)
            .map(|a| a.load(Ordering::Acquire))
            .ok_or(RingError::Corrupt)?;
        let avail = prod.wrapping_sub(self.cons);
        if avail == 0 {
            return Ok(None);
        }
        if avail > self.spec.slots {
            return Err(RingError::Corrupt);
        }
        let off = self.spec.slot_offset(self.cons);
        let mut hdr = [0u8; SLOT_HEADER];
        self.mem.read(off, &mut hdr);
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let mut taken = 1;
        let result = if len == 0 || len > self.spec.max_frame() {
            Popped::BadSlot
        } else {
            taken = self.spec.slots_for(len);
            if taken > avail {
                // A correct producer publishes all slots of a frame at once.
                return Err(RingError::Corrupt);
            }
            buf.clear();
            let start = off - OFF_SLOTS + SLOT_HEADER;
            let first = len.min(self.spec.area() - start);
            if !(self.mem.read_append(OFF_SLOTS + start, first, buf)
                && self.mem.read_append(OFF_SLOTS, len - first, buf))
            {
                // The geometry was checked when the ring was mapped: only a bug gets here.
                return Err(RingError::Corrupt);
            }
            Popped::Frame(SlotMeta {
                flags: u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                csum_start: u16::from_ne_bytes([hdr[8], hdr[9]]),
                csum_offset: u16::from_ne_bytes([hdr[10], hdr[11]]),
                gso_type: hdr[12],
                gso_size: u16::from_ne_bytes([hdr[14], hdr[15]]),
                ts_ns: u64::from_ne_bytes([
                    hdr[16], hdr[17], hdr[18], hdr[19], hdr[20], hdr[21], hdr[22], hdr[23],
                ]),
            })
        };
        self.cons = self.cons.wrapping_add(taken);
        if let Some(c) = self.mem.atomic_u32(OFF_CONS) {
            c.store(self.cons, Ordering::Release);
        }
        Ok(Some(result))
    }

    /// Whether the producer waits for room (it found the ring full); clears the flag. Call
    /// after popping: the caller then tells the producer's child (see [`Producer::offer_with`]).
    pub fn take_producer_wait(&self) -> bool {
        // Pairs with the producer's fence between setting the flag and reading our index.
        fence(Ordering::SeqCst);
        self.mem
            .atomic_u32(OFF_WAIT)
            .is_some_and(|f| f.load(Ordering::Relaxed) != 0 && f.swap(0, Ordering::SeqCst) != 0)
    }

    /// Prepares to sleep: sets the need-wakeup flag and re-checks. Returns true when the ring
    /// is empty and the caller may wait for the eventfd; false when frames arrived meanwhile
    /// (the flag is cleared again and the caller should keep popping).
    pub fn arm(&mut self) -> bool {
        let (Some(flag), Some(prod)) = (
            self.mem.atomic_u32(OFF_SLEEP),
            self.mem.atomic_u32(OFF_PROD),
        ) else {
            return true;
        };
        flag.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if prod.load(Ordering::SeqCst) != self.cons {
            flag.store(0, Ordering::SeqCst);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(spec: RingSpec) -> (Producer, Consumer, Event) {
        let mem = create(spec, "ring").unwrap();
        let ev = Event::new().unwrap();
        let p = Producer::new(
            mem.fd().try_clone().unwrap(),
            spec,
            Event::from_fd(ev.fd().try_clone().unwrap()),
        )
        .unwrap();
        let c = Consumer::new(
            mem.fd().try_clone().unwrap(),
            spec,
            Event::from_fd(ev.fd().try_clone().unwrap()),
        )
        .unwrap();
        (p, c, ev)
    }

    fn readable(ev: &Event) -> bool {
        let mut b = [0u8; 8];
        nix::unistd::read(ev.fd().as_fd(), &mut b).is_ok()
    }

    const SPEC: RingSpec = RingSpec {
        slots: 4,
        slot_size: 128,
    };

    #[test]
    fn test_ring_push_pop_roundtrip_keeps_order_and_meta() {
        let (mut p, mut c, _) = pair(SPEC);
        let meta = SlotMeta {
            ts_ns: 42,
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..SlotMeta::default()
        };
        p.push(meta, b"first").unwrap();
        p.push(SlotMeta::default(), b"second").unwrap();
        let mut buf = Vec::new();
        assert_eq!(c.pop(&mut buf).unwrap(), Some(Popped::Frame(meta)));
        assert_eq!(buf, b"first");
        assert!(matches!(c.pop(&mut buf).unwrap(), Some(Popped::Frame(_))));
        assert_eq!(buf, b"second");
        assert_eq!(c.pop(&mut buf).unwrap(), None);
    }

    #[test]
    fn test_ring_full_then_space_after_pop() {
        let (mut p, mut c, _) = pair(SPEC);
        for _ in 0..4 {
            p.push(SlotMeta::default(), b"x").unwrap();
        }
        assert_eq!(p.push(SlotMeta::default(), b"x"), Err(PushError::Full));
        let mut buf = Vec::new();
        c.pop(&mut buf).unwrap();
        p.push(SlotMeta::default(), b"y").unwrap();
        assert_eq!(p.queued(), 4);
    }

    /// `push_with` as the TX fast path uses it: a head written from a buffer, the rest
    /// straight from (guest) memory through `WriteVolatile`, across the end of the slot area;
    /// a fill that fails or writes too little publishes nothing, and the ring stays usable.
    #[test]
    fn test_ring_push_with_copies_from_memory_across_the_wrap_or_publishes_nothing() {
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let (mut p, mut c, _) = pair(SPEC);
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let bytes: Vec<u8> = (0..0x1000u32).map(|i| (i % 253) as u8).collect();
        mem.write_slice(&bytes, GuestAddress(0)).unwrap();
        let mut buf = Vec::new();
        // Move the indices so that the next frame (3 slots) runs over the end of the area.
        for _ in 0..3 {
            p.push(SlotMeta::default(), b"x").unwrap();
            c.pop(&mut buf).unwrap();
        }
        let len = 300;
        let fill = |w: &mut SlotWriter<'_>| {
            w.write(b"head")
                && mem
                    .write_all_volatile_to(GuestAddress(0x100), w, 200)
                    .is_ok()
                && mem
                    .write_all_volatile_to(GuestAddress(0x800), w, 96)
                    .is_ok()
        };
        p.push_with(SlotMeta::default(), len, fill).unwrap();
        assert!(matches!(c.pop(&mut buf).unwrap(), Some(Popped::Frame(_))));
        let mut want = b"head".to_vec();
        want.extend_from_slice(&bytes[0x100..0x100 + 200]);
        want.extend_from_slice(&bytes[0x800..0x800 + 96]);
        assert_eq!(buf, want);

        // A source outside memory, a fill short of the length, a fill beyond it.
        let bad = |w: &mut SlotWriter<'_>| {
            w.write(b"head")
                && mem
                    .write_all_volatile_to(GuestAddress(0xf00), w, 296)
                    .is_ok()
        };
        assert_eq!(
            p.push_with(SlotMeta::default(), len, bad),
            Err(PushError::Source)
        );
        assert_eq!(
            p.push_with(SlotMeta::default(), len, |w| w.write(b"short")),
            Err(PushError::Source)
        );
        assert_eq!(
            p.push_with(SlotMeta::default(), 4, |w| w.write(b"longer")),
            Err(PushError::Source)
        );
        assert_eq!(c.pop(&mut buf).unwrap(), None, "nothing was published");
        assert_eq!(p.queued(), 0);
        p.push(SlotMeta::default(), b"after").unwrap();
        assert!(matches!(c.pop(&mut buf).unwrap(), Some(Popped::Frame(_))));
        assert_eq!(buf, b"after");
    }

    #[test]
    fn test_ring_rejects_frame_larger_than_ring() {
        let (mut p, _, _) = pair(SPEC);
        assert_eq!(
            p.push(SlotMeta::default(), &[0u8; 4 * 128 - 31]),
            Err(PushError::TooBig)
        );
        p.push(SlotMeta::default(), &[0u8; 4 * 128 - 32]).unwrap();
        assert_eq!(p.push(SlotMeta::default(), &[0u8; 1]), Err(PushError::Full));
    }

    #[test]
    fn test_ring_multi_slot_frames_wrap_and_keep_bytes() {
        let spec = RingSpec {
            slots: 8,
            slot_size: 128,
        };
        let (mut p, mut c, _) = pair(spec);
        let mut buf = Vec::new();
        let mut queued = std::collections::VecDeque::new();
        for i in 0u32..2000 {
            let len = 1 + (i as usize * 37) % 700;
            let data: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
            let meta = SlotMeta {
                ts_ns: u64::from(i),
                gso_type: 1,
                gso_size: 1448,
                ..Default::default()
            };
            loop {
                match p.push(meta, &data) {
                    Ok(()) => break,
                    Err(PushError::Full) => {
                        let Some(Popped::Frame(m)) = c.pop(&mut buf).unwrap() else {
                            panic!("full ring pops a frame")
                        };
                        let (ts, want) = queued.pop_front().unwrap();
                        assert_eq!(m.ts_ns, ts);
                        assert_eq!((m.gso_type, m.gso_size), (1, 1448));
                        assert_eq!(buf, want);
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
            queued.push_back((u64::from(i), data));
        }
    }

    #[test]
    fn test_ring_wakeup_only_when_consumer_sleeps() {
        let (mut p, mut c, ev) = pair(SPEC);
        // A new consumer sleeps: the first frame wakes it.
        p.push(SlotMeta::default(), b"a").unwrap();
        p.notify();
        assert!(readable(&ev), "idle consumer must be woken");
        // Busy consumer (it has not re-armed): no system call for the next frame.
        let mut buf = Vec::new();
        c.pop(&mut buf).unwrap();
        p.push(SlotMeta::default(), b"b").unwrap();
        p.notify();
        assert!(!readable(&ev), "busy consumer: no wakeup expected");
        c.pop(&mut buf).unwrap();
        assert!(c.arm(), "empty ring: may sleep");
        p.push(SlotMeta::default(), b"c").unwrap();
        p.notify();
        assert!(readable(&ev), "sleeping consumer must be woken");
    }

    #[test]
    fn test_ring_arm_refuses_sleep_when_data_arrived() {
        let (mut p, mut c, _) = pair(SPEC);
        p.push(SlotMeta::default(), b"a").unwrap();
        assert!(!c.arm());
    }

    #[test]
    fn test_ring_hostile_producer_index_is_detected() {
        let mem = create(SPEC, "ring").unwrap();
        let ev = Event::new().unwrap();
        let mut c = Consumer::new(
            mem.fd().try_clone().unwrap(),
            SPEC,
            Event::from_fd(ev.fd().try_clone().unwrap()),
        )
        .unwrap();
        mem.atomic_u32(OFF_PROD)
            .unwrap()
            .store(1000, Ordering::Release);
        assert!(matches!(c.pop(&mut Vec::new()), Err(RingError::Corrupt)));
    }

    #[test]
    fn test_ring_hostile_slot_length_is_skipped() {
        let mem = create(SPEC, "ring").unwrap();
        let ev = Event::new().unwrap();
        let mut c = Consumer::new(
            mem.fd().try_clone().unwrap(),
            SPEC,
            Event::from_fd(ev.fd().try_clone().unwrap()),
        )
        .unwrap();
        mem.write(OFF_SLOTS, &u32::MAX.to_ne_bytes());
        mem.atomic_u32(OFF_PROD)
            .unwrap()
            .store(1, Ordering::Release);
        let mut buf = Vec::new();
        assert_eq!(c.pop(&mut buf).unwrap(), Some(Popped::BadSlot));
        assert_eq!(c.pop(&mut buf).unwrap(), None);
    }

    #[test]
    fn test_ring_hostile_consumer_index_makes_producer_report_corrupt() {
        let (mut p, _, _) = pair(SPEC);
        for _ in 0..4 {
            p.push(SlotMeta::default(), b"x").unwrap();
        }
        p.mem
            .atomic_u32(OFF_CONS)
            .unwrap()
            .store(0xdead_0000, Ordering::Release);
        assert_eq!(p.push(SlotMeta::default(), b"x"), Err(PushError::Corrupt));
    }

    #[test]
    fn test_ring_spec_for_size() {
        let s = RingSpec::for_size(256 * 1024, 1518);
        assert_eq!(s.slot_size, 1600);
        assert_eq!(s.slots, 128);
        s.validate().unwrap();
        assert!(
            RingSpec {
                slots: 3,
                slot_size: 128
            }
            .validate()
            .is_err()
        );
        assert!(
            RingSpec {
                slots: 4,
                slot_size: 100
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn test_ring_wraps_many_times() {
        let (mut p, mut c, _) = pair(SPEC);
        let mut buf = Vec::new();
        for i in 0u32..1000 {
            p.push(
                SlotMeta {
                    ts_ns: u64::from(i),
                    ..Default::default()
                },
                &i.to_ne_bytes(),
            )
            .unwrap();
            let Some(Popped::Frame(m)) = c.pop(&mut buf).unwrap() else {
                panic!()
            };
            assert_eq!(m.ts_ns, u64::from(i));
            assert_eq!(buf, i.to_ne_bytes());
        }
    }
}
