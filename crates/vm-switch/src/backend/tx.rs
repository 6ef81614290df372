//! TX (guest → switch): pops the guest's TX chains, copies header and frame out of guest
//! memory, decides (validate, route, proxy-answer) and pushes into the destination's ring or
//! holds the frame while that ring is full.

// Per-frame code: no raw log macros (clippy.toml); log through `log_limited`.
#![deny(clippy::disallowed_macros)]
#![forbid(unsafe_code)]

use super::*;

/// Bytes of a TX frame copied out of guest memory before anything is decided: enough for the
/// Ethernet, IP and TCP headers of a segment (with options, and a few IPv6 extension headers).
/// A frame whose checks need more is copied out whole ([`Port::forward_chain`]).
pub(super) const HEAD_COPY: usize = 256;

impl Port {
    /// Guest → switch.
    pub(super) fn process_tx(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(vring) = vrings.get(usize::from(TX_QUEUE)) else {
            return Ok(());
        };
        if !Self::ready(vring) || self.is_broken(TX_QUEUE) {
            return Ok(());
        }
        self.tx_active_at = Some(now_ns());
        self.arm_timer_in(TX_RESCUE_NS);
        self.retry_held(vrings)?;
        if self.tx_paused {
            return Ok(());
        }
        let mem = self.mem.memory();
        let hdr_len = self.neg.hdr_len;
        let mut used_any = false;
        let mut local_replies = false;
        let mut fault = None;
        'passes: loop {
            self.step();
            let mut n = 0;
            {
                let mut state = vring.get_mut();
                if let Err(source) = state.get_queue_mut().disable_notification(&*mem) {
                    fault = Some(QueueFault::Queue {
                        what: "its used ring is not writable",
                        source,
                    });
                    break;
                }
            }
            loop {
                self.step();
                let next = {
                    let mut state = vring.get_mut();
                    next_chain(state.get_queue_mut(), &mem)
                };
                let chain = match next {
                    Next::Chain(c) => c,
                    Next::Empty(_) => break,
                    Next::Broken(f) => {
                        fault = Some(f);
                        break 'passes;
                    }
                };
                let head = chain.head_index();
                let ts = now_ns();
                let mut hdr = [0u8; 12];
                let mut verdict: Result<(), DropReason> = Ok(());
                self.buf.clear();
                self.rest.clear();
                match read_chain(
                    &mem,
                    chain,
                    &mut hdr[..hdr_len],
                    &mut self.buf,
                    &mut self.rest,
                ) {
                    Ok(total) => {
                        if total < hdr_len {
                            verdict = Err(DropReason::Malformed);
                        } else if total - hdr_len > MAX_GSO_FRAME {
                            verdict = Err(DropReason::Oversize);
                        }
                        self.stats.add(Counter::FromGuestFrames, 1);
                        self.stats.add(
                            Counter::FromGuestBytes,
                            total.saturating_sub(hdr_len) as u64,
                        );
                    }
                    Err(()) => verdict = Err(DropReason::Malformed),
                }
                let fate = match verdict {
                    Ok(()) => self.forward_chain(&mem, &hdr, ts, head),
                    Err(r) => {
                        self.stats.count_drop(r, 1);
                        Fate::Done
                    }
                };
                if fate == Fate::Reply {
                    local_replies = true;
                }
                if fate != Fate::Held {
                    let added = {
                        let mut state = vring.get_mut();
                        state.get_queue_mut().add_used(&*mem, head, 0)
                    };
                    if let Err(source) = added {
                        fault = Some(QueueFault::Queue {
                            what: "its used ring is not writable",
                            source,
                        });
                        break 'passes;
                    }
                    used_any = true;
                }
                n += 1;
                if n % TX_BATCH == 0 {
                    self.flush_rings();
                }
                if self.tx_paused {
                    // A destination holds HOLD_CAP chains: leave the rest in the guest's
                    // queue (kicks stay off) until it drains; `retry_held` resumes.
                    break 'passes;
                }
            }
            // Re-enable kicks, then look again: a chain published in between would otherwise
            // wait for the next kick. Only chains that really are new start another pass; a
            // broken index is caught by `next_chain` above.
            let more = {
                let mut state = vring.get_mut();
                state.get_queue_mut().enable_notification(&*mem)
            };
            match more {
                Ok(true) => {}
                Ok(false) => break,
                Err(source) => {
                    fault = Some(QueueFault::Queue {
                        what: "its available index is unreadable",
                        source,
                    });
                    break;
                }
            }
        }
        self.flush_rings();
        if used_any {
            let mut state = vring.get_mut();
            if state
                .get_queue_mut()
                .needs_notification(&*mem)
                .is_ok_and(|n| n)
            {
                state.signal_used_queue()?;
            }
        }
        if let Some(f) = fault {
            self.stop_queue(TX_QUEUE, &f);
        }
        if local_replies {
            self.deliver(vrings)?;
        }
        Ok(())
    }

    /// Retries held chains; when TX was paused and no longer is, takes the chains the guest
    /// queued meanwhile (it does not kick again for them).
    pub(super) fn resume_tx(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        let was_paused = self.tx_paused;
        self.retry_held(vrings)?;
        if was_paused && !self.tx_paused {
            self.process_tx(vrings)?;
        }
        Ok(())
    }

    pub(super) fn flush_rings(&mut self) {
        for p in self.peers.values_mut() {
            if let Some(tx) = &mut p.tx {
                tx.notify();
            }
        }
    }

    /// Forwards the frame [`read_chain`] found: its head is in `self.buf`, the rest (if any) in
    /// guest memory at `self.rest`. A plain unicast frame whose checks pass on its head goes
    /// from guest memory straight into the destination's ring; everything else (other
    /// decisions, a full ring, a failed check) is copied out whole first and decided on
    /// again by [`Port::forward`], so what is dropped or held is decided on the whole frame.
    fn forward_chain(&mut self, mem: &GuestMemoryMmap, hdr: &[u8; 12], ts: u64, head: u16) -> Fate {
        if self.rest.is_empty() {
            return self.forward(hdr, ts, head);
        }
        if self.forward_direct(mem, hdr, ts) {
            return Fate::Done;
        }
        for &(addr, len) in &self.rest {
            if mem.write_all_volatile_to(addr, &mut self.buf, len).is_err() {
                self.stats.count_drop(DropReason::Malformed, 1);
                return Fate::Done;
            }
        }
        self.forward(hdr, ts, head)
    }

    /// The fast path of [`Port::forward_chain`]: checks the offload request and decides on the
    /// frame's head (`self.buf`, copied out of guest memory, so the guest cannot change what
    /// was checked) and its length. When that is a unicast to a peer whose ring has room, the
    /// frame goes into the ring as the checked head followed by the rest straight from guest
    /// memory; the rest is payload that no decision read. Returns false, changing nothing,
    /// when the frame must take the slow path.
    fn forward_direct(&mut self, mem: &GuestMemoryMmap, hdr: &[u8; 12], ts: u64) -> bool {
        let len = self.buf.len() + self.rest.iter().map(|&(_, l)| l).sum::<usize>();
        let vnet = VnetHdr::from_bytes(hdr);
        let Ok(off) = frame::check_offload_head(&vnet, &self.buf, len, self.neg.host) else {
            return false;
        };
        if off.gso == Gso::None && len > MAX_FRAME {
            return false;
        }
        let Some(dst_mac) = self.buf.first_chunk::<6>().copied() else {
            return false;
        };
        let Some(to) = self
            .switch
            .decide_head(self.id, &mut self.buf, len, MAX_GSO_FRAME)
        else {
            return false;
        };
        let meta = slot_meta(&off, ts);
        let pushed = match self.peers.get_mut(&to) {
            Some(Peer {
                tx: Some(tx), held, ..
            }) if held.is_empty() => {
                let (buf, rest) = (&self.buf, &self.rest);
                let fill = |w: &mut SlotWriter<'_>| {
                    w.write(buf)
                        && rest
                            .iter()
                            .all(|&(addr, l)| mem.write_all_volatile_to(addr, w, l).is_ok())
                };
                tx.offer_with(meta, len, fill).is_ok()
            }
            _ => false,
        };
        if pushed {
            self.stats.add(Counter::TxDirect, 1);
        } else {
            // The slow path decides again on the frame as the guest sent it.
            self.buf[..6].copy_from_slice(&dst_mac);
        }
        pushed
    }

    /// Forwards the frame in `self.buf`. Returns true when a reply was queued locally.
    pub(super) fn forward(&mut self, hdr: &[u8; 12], ts: u64, head: u16) -> Fate {
        // A legacy 10-byte header leaves the last two bytes zero: the same fields.
        let vnet = VnetHdr::from_bytes(hdr);
        let off = match frame::check_offload(&vnet, &self.buf, self.neg.host) {
            Ok(off) => off,
            Err(e) => {
                self.stats.count_drop(DropReason::BadHeader, 1);
                log_limited(
                    &mut self.log_limit,
                    ts,
                    log::Level::Debug,
                    format_args!("port {}: bad virtio-net header: {e}", self.cfg.name),
                );
                return Fate::Done;
            }
        };
        if off.gso == Gso::None && self.buf.len() > MAX_FRAME {
            self.stats.count_drop(DropReason::Oversize, 1);
            return Fate::Done;
        }
        let meta = slot_meta(&off, ts);
        let decision =
            self.switch
                .decide_len(self.id, &mut self.buf, &mut self.reply, MAX_GSO_FRAME);
        match decision {
            Decision::Unicast(to) => self.push_to(to, meta, Some(head)),
            Decision::Broadcast => {
                let targets: Vec<PortId> = self.switch.broadcast_targets(self.id).collect();
                for to in targets {
                    self.push_to(to, meta, None);
                }
                Fate::Done
            }
            Decision::Reply => {
                self.stats.add(Counter::ProxyReplies, 1);
                let data = self.reply.clone();
                let hash = flow_hash(&data, self.perturb);
                let stats = self.stats.clone();
                self.egress.enqueue(
                    0,
                    hash,
                    Frame {
                        data,
                        meta: SlotMeta {
                            ts_ns: ts,
                            ..SlotMeta::default()
                        },
                        source: 0,
                        hash,
                    },
                    &mut |_, c| stats.count_drop(cause_reason(c), 1),
                );
                Fate::Reply
            }
            Decision::Drop(r) => {
                self.stats.count_drop(r, 1);
                if matches!(r, DropReason::SpoofMac | DropReason::SpoofIp) {
                    log_limited(
                        &mut self.log_limit,
                        ts,
                        log::Level::Warn,
                        format_args!(
                            "port {}: dropped a frame with a spoofed source ({})",
                            self.cfg.name,
                            r.key()
                        ),
                    );
                }
                Fate::Done
            }
        }
    }

    /// Pushes `self.buf` into the ring to `to`. With `head` (a unicast frame), a full ring
    /// holds the frame and its TX chain instead of dropping it (back-pressure); frames for a
    /// peer that already holds some are held behind them, in order.
    pub(super) fn push_to(&mut self, to: PortId, meta: SlotMeta, head: Option<u16>) -> Fate {
        let Some(peer) = self.peers.get_mut(&to) else {
            self.stats.count_drop(DropReason::PortDown, 1);
            return Fate::Done;
        };
        let Some(tx) = &mut peer.tx else {
            self.stats.count_drop(DropReason::PortDown, 1);
            return Fate::Done;
        };
        let result = if peer.held.is_empty() {
            tx.offer(meta, &self.buf)
        } else {
            Err(PushError::Full)
        };
        match result {
            Ok(()) => {}
            Err(PushError::Full) => match head {
                Some(head) => {
                    let data = self.pool.detach(&mut self.buf);
                    peer.held.push_back(Held { head, meta, data });
                    self.stats.add(Counter::TxHeld, 1);
                    if peer.held.len() >= HOLD_CAP {
                        self.tx_paused = true;
                    }
                    self.arm_hold_timer();
                    return Fate::Held;
                }
                None => self.stats.count_drop(DropReason::RingFull, 1),
            },
            Err(PushError::TooBig) => self.stats.count_drop(DropReason::Oversize, 1),
            // Only `push_with` reads from a source that can fail.
            Err(PushError::Source) => self.stats.count_drop(DropReason::Malformed, 1),
            Err(PushError::Corrupt) => {
                self.stats.count_drop(DropReason::PortDown, 1);
                log_limited(
                    &mut self.log_limit,
                    now_ns(),
                    log::Level::Warn,
                    format_args!(
                        "port {}: ring to peer {to} is corrupt; dropping it",
                        self.cfg.name
                    ),
                );
                peer.tx = None;
                let n = self
                    .peers
                    .values()
                    .filter(|p| p.tx.is_some() && p.rx.is_some())
                    .count();
                self.stats.set(Counter::LinkedPeers, n as u64);
                if let Some(c) = &self.control {
                    let _ = control::send(
                        c.as_fd(),
                        &ToMain::PutBuffer {
                            peer: to,
                            role: Role::Tx,
                        },
                        &[],
                        true,
                    );
                }
            }
        }
        Fate::Done
    }

    /// Arms the timer for a re-check of held chains (unless it is armed already).
    pub(super) fn arm_hold_timer(&mut self) {
        self.arm_timer_in(HOLD_RECHECK_NS);
    }

    /// Arms the port's one-shot timer `ns` from now unless it is armed already (every timer
    /// event re-checks everything that waits for it).
    pub(super) fn arm_timer_in(&mut self, ns: u64) {
        if self.timer_armed {
            return;
        }
        let ts = TimeSpec::new((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64);
        if self
            .timer
            .set(Expiration::OneShot(ts), TimerSetTimeFlags::empty())
            .is_ok()
        {
            self.timer_armed = true;
        }
    }

    /// Pushes held frames whose destination ring has room again, drops those held longer than
    /// [`HOLD_TIMEOUT_NS`] (`ring_full`), completes their TX chains, and resumes TX processing
    /// when no destination holds [`HOLD_CAP`] chains any more.
    pub(super) fn retry_held(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        if self.released.is_empty() && self.peers.values().all(|p| p.held.is_empty()) {
            self.tx_paused = false;
            return Ok(());
        }
        let now = now_ns();
        let mut done = std::mem::take(&mut self.released);
        let mut still_held = false;
        let mut full = false;
        for peer in self.peers.values_mut() {
            while let Some(h) = peer.held.front() {
                let pushed = match &mut peer.tx {
                    Some(tx) => tx.offer(h.meta, &h.data),
                    None => Err(PushError::Corrupt),
                };
                match pushed {
                    Ok(()) => {}
                    Err(PushError::Full) if now.saturating_sub(h.meta.ts_ns) < HOLD_TIMEOUT_NS => {
                        break;
                    }
                    Err(PushError::Full) => self.stats.count_drop(DropReason::RingFull, 1),
                    Err(PushError::TooBig) => self.stats.count_drop(DropReason::Oversize, 1),
                    Err(PushError::Corrupt) => self.stats.count_drop(DropReason::PortDown, 1),
                    Err(PushError::Source) => self.stats.count_drop(DropReason::Malformed, 1),
                }
                if let Some(h) = peer.held.pop_front() {
                    done.push(h.head);
                    self.pool.give(h.data);
                }
            }
            if let Some(tx) = &mut peer.tx {
                tx.notify();
            }
            still_held |= !peer.held.is_empty();
            full |= peer.held.len() >= HOLD_CAP;
        }
        self.tx_paused = full;
        if still_held {
            self.arm_hold_timer();
        }
        if done.is_empty() {
            return Ok(());
        }
        let Some(vring) = vrings.get(usize::from(TX_QUEUE)) else {
            return Ok(());
        };
        if !Self::ready(vring) || self.is_broken(TX_QUEUE) {
            return Ok(());
        }
        let mem = self.mem.memory();
        let mut state = vring.get_mut();
        let q = state.get_queue_mut();
        for head in done {
            if let Err(source) = q.add_used(&*mem, head, 0) {
                drop(state);
                self.stop_queue(TX_QUEUE, &used_fault(source));
                return Ok(());
            }
        }
        if q.needs_notification(&*mem).is_ok_and(|n| n) {
            state.signal_used_queue()?;
        }
        Ok(())
    }

    /// The TX watchdog, run on the port timer: once the guest's TX queue has been quiet for
    /// [`TX_RESCUE_NS`] after activity, looks at it once more. Chains posted without a kick
    /// reaching us are taken (`tx_rescue_kicks`); otherwise the guest gets one interrupt
    /// (`tx_rescue_irqs`), spurious at worst, in case it waits for one to free buffers it
    /// transmitted (TCP cannot even retransmit a segment whose buffer is "still in host
    /// queue"). One look per quiet period, so an idle port costs nothing.
    pub(super) fn tx_watchdog(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(at) = self.tx_active_at else {
            return Ok(());
        };
        let quiet = now_ns().saturating_sub(at);
        if quiet < TX_RESCUE_NS {
            self.arm_timer_in(TX_RESCUE_NS - quiet);
            return Ok(());
        }
        self.tx_active_at = None;
        let Some(vring) = vrings.get(usize::from(TX_QUEUE)) else {
            return Ok(());
        };
        if !Self::ready(vring) || self.is_broken(TX_QUEUE) || self.tx_paused {
            return Ok(());
        }
        let pending = {
            let mem = self.mem.memory();
            let state = vring.get_ref();
            let q = state.get_queue();
            q.avail_idx(&*mem, Ordering::Acquire)
                .is_ok_and(|a| a.0 != q.next_avail())
        };
        if pending {
            self.stats.add(Counter::TxRescueKicks, 1);
            return self.process_tx(vrings);
        }
        self.stats.add(Counter::TxRescueIrqs, 1);
        vring.get_ref().signal_used_queue()
    }
}

/// The slot metadata of a frame whose offload request is `off`, received at `ts`.
fn slot_meta(off: &Offload, ts: u64) -> SlotMeta {
    let v = off.to_vnet();
    SlotMeta {
        ts_ns: ts,
        flags: u32::from(v.flags),
        csum_start: v.csum_start,
        csum_offset: v.csum_offset,
        gso_type: v.gso_type,
        gso_size: v.gso_size,
    }
}

/// Reads a TX chain: the virtio-net header into `hdr`, the frame's first [`HEAD_COPY`] bytes
/// into `head`, and where the rest lies in guest memory into `rest` (the descriptors are read
/// once: the guest may rewrite them meanwhile, but not what was taken from them). Returns the
/// chain's readable length, header included. Nothing is recorded past [`MAX_GSO_FRAME`] bytes
/// of frame (the caller drops a longer chain as oversize, a shorter-than-header one as
/// malformed). `Err` when a descriptor within the head lies outside guest memory or the
/// lengths overflow; one in the rest fails when the rest is copied.
///
/// vm-memory appends to a vector without zeroing it first, which `io::Read` into a resized
/// vector cannot avoid: for a 64 KiB segment that `memset` was a quarter of the copy's cost.
fn read_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    hdr: &mut [u8],
    head: &mut Vec<u8>,
    rest: &mut Vec<(GuestAddress, usize)>,
) -> Result<usize, ()> {
    use vm_memory::Address as _;
    let mut total: usize = 0;
    let mut in_hdr = 0;
    for desc in chain.readable() {
        let mut addr = desc.addr();
        let mut len = desc.len() as usize;
        total = total.checked_add(len).ok_or(())?;
        if in_hdr < hdr.len() {
            let k = len.min(hdr.len() - in_hdr);
            mem.read_slice(&mut hdr[in_hdr..in_hdr + k], addr)
                .map_err(|_| ())?;
            in_hdr += k;
            addr = addr.checked_add(k as u64).ok_or(())?;
            len -= k;
        }
        if len == 0 || total > hdr.len() + MAX_GSO_FRAME {
            // Oversize: counted, not copied.
            continue;
        }
        let k = len.min(HEAD_COPY.saturating_sub(head.len()));
        if k > 0 {
            mem.write_all_volatile_to(addr, head, k).map_err(|_| ())?;
            addr = addr.checked_add(k as u64).ok_or(())?;
            len -= k;
        }
        if len > 0 {
            rest.push((addr, len));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};

    use crate::backend::test_queue::{AVAIL, DESC};

    const DATA: u64 = 0x4000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// A queue whose one available chain is `descs` (address, length, flags), chained in order.
    fn chain_of(descs: &[(u64, u32, u16)], mem_len: usize) -> (Queue, GuestMemoryMmap) {
        let (q, mem) = crate::backend::test_queue::queue(8, mem_len);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let d = SplitDescriptor::new(
                addr,
                len,
                if last { flags } else { flags | F_NEXT },
                if last { 0 } else { i as u16 + 1 },
            );
            mem.write_obj(RawDescriptor::from(d), GuestAddress(DESC + 16 * i as u64))
                .unwrap();
        }
        mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        (q, mem)
    }

    fn read(descs: &[(u64, u32, u16)], hdr_len: usize) -> (Result<usize, ()>, Vec<u8>, Vec<u8>) {
        let (mut q, mem) = chain_of(descs, 0x30000);
        let bytes: Vec<u8> = (0..0x20000u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
        let Next::Chain(chain) = next_chain(&mut q, &mem) else {
            panic!("no chain")
        };
        let mut hdr = vec![0u8; hdr_len];
        let mut frame = Vec::new();
        let mut rest = Vec::new();
        let r = read_chain(&mem, chain, &mut hdr, &mut frame, &mut rest);
        assert!(frame.len() <= HEAD_COPY);
        assert!(
            rest.is_empty() || frame.len() == HEAD_COPY,
            "rest only after a full head"
        );
        for (addr, len) in rest {
            mem.write_all_volatile_to(addr, &mut frame, len).unwrap();
        }
        (r, hdr, frame)
    }

    #[test]
    fn test_a_long_frame_is_read_as_a_head_and_where_the_rest_lies() {
        // A header, then a descriptor that crosses the end of the head, then one more.
        let (mut q, mem) = chain_of(
            &[
                (DATA, 12, 0),
                (DATA + 0x100, 300, 0),
                (DATA + 0x1000, 1000, 0),
            ],
            0x30000,
        );
        let bytes: Vec<u8> = (0..0x20000u32).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
        let Next::Chain(chain) = next_chain(&mut q, &mem) else {
            panic!("no chain")
        };
        let (mut hdr, mut head, mut rest) = ([0u8; 12], Vec::new(), Vec::new());
        assert_eq!(
            read_chain(&mem, chain, &mut hdr, &mut head, &mut rest),
            Ok(1312)
        );
        assert_eq!(head, pattern(DATA + 0x100, HEAD_COPY));
        assert_eq!(
            rest,
            vec![
                (
                    GuestAddress(DATA + 0x100 + HEAD_COPY as u64),
                    300 - HEAD_COPY
                ),
                (GuestAddress(DATA + 0x1000), 1000)
            ]
        );
        // The whole frame, as the slow path assembles it.
        let (_, _, frame) = read(
            &[
                (DATA, 12, 0),
                (DATA + 0x100, 300, 0),
                (DATA + 0x1000, 1000, 0),
            ],
            12,
        );
        let mut want = pattern(DATA + 0x100, 300);
        want.extend(pattern(DATA + 0x1000, 1000));
        assert_eq!(frame, want);
    }

    fn pattern(from: u64, len: usize) -> Vec<u8> {
        (from - DATA..from - DATA + len as u64)
            .map(|i| (i % 251) as u8)
            .collect()
    }

    #[test]
    fn test_header_split_over_descriptors_and_the_frame_after_it() {
        // 5 header bytes alone, then 7 more header bytes followed by 100 frame bytes, then
        // 50 frame bytes; a device-writable descriptor ends what the device reads.
        let (r, hdr, frame) = read(
            &[
                (DATA, 5, 0),
                (DATA + 0x100, 107, 0),
                (DATA + 0x1000, 50, 0),
                (DATA + 0x2000, 64, F_WRITE),
            ],
            12,
        );
        assert_eq!(r, Ok(162));
        let mut want_hdr = pattern(DATA, 5);
        want_hdr.extend(pattern(DATA + 0x100, 7));
        assert_eq!(hdr, want_hdr);
        let mut want = pattern(DATA + 0x107, 100);
        want.extend(pattern(DATA + 0x1000, 50));
        assert_eq!(frame, want);
    }

    #[test]
    fn test_a_short_chain_reports_its_length_and_an_oversize_one_is_not_copied() {
        let (r, _, frame) = read(&[(DATA, 8, 0)], 12);
        assert_eq!(
            r,
            Ok(8),
            "shorter than the header: the caller drops it as malformed"
        );
        assert!(frame.is_empty());
        let big = (MAX_GSO_FRAME + 13) as u32;
        let (r, _, frame) = read(&[(DATA, 12, 0), (DATA + 0x10, big - 12, 0)], 12);
        assert_eq!(
            r,
            Ok(big as usize),
            "the whole length, for the caller's oversize check"
        );
        assert!(frame.is_empty(), "an oversize frame is not copied");
    }

    #[test]
    fn test_a_descriptor_outside_guest_memory_is_an_error() {
        let (r, _, _) = read(&[(DATA, 12, 0), (0x10_0000, 64, 0)], 12);
        assert_eq!(r, Err(()));
        let (r, _, _) = read(&[(0x10_0000, 12, 0)], 12);
        assert_eq!(r, Err(()), "also inside the header");
        // Beyond the head, reading the rest fails (the frame is then dropped as malformed).
        let (mut q, mem) = chain_of(
            &[(DATA, 12 + HEAD_COPY as u32, 0), (0x10_0000, 64, 0)],
            0x30000,
        );
        let Next::Chain(chain) = next_chain(&mut q, &mem) else {
            panic!("no chain")
        };
        let (mut hdr, mut head, mut rest) = ([0u8; 12], Vec::new(), Vec::new());
        assert!(read_chain(&mem, chain, &mut hdr, &mut head, &mut rest).is_ok());
        let (addr, len) = rest[0];
        assert!(mem.write_all_volatile_to(addr, &mut head, len).is_err());
    }
}
