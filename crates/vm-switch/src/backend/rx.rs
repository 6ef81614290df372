//! RX (switch → guest): drains the incoming rings into FQ-CoDel, tracks RX completions for
//! DQL, and delivers frames into the guest's RX buffers with the negotiated virtio-net header.

// Per-frame code: no raw log macros (clippy.toml); log through `log_limited`.
#![deny(clippy::disallowed_macros)]
#![forbid(unsafe_code)]

use super::*;

impl Port {
    /// Moves everything from the incoming ring in `slot` (the one whose event fired) into the
    /// egress scheduler. The other rings are left alone: each was armed when it was last
    /// drained, so its producer signals its own event for anything new. Looking at every ring
    /// on every wake-up cost one `read` of an idle eventfd per other peer.
    pub(super) fn drain_ring(&mut self, connected: bool, slot: u16) {
        let now = now_ns();
        let stats = self.stats.clone();
        let Some(&Some(id)) = self.slots.get(usize::from(slot)) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(rx) = &mut peer.rx else { return };
        let mut corrupt = false;
        rx.event().drain();
        let source = u32::from(slot) + 1;
        loop {
            match rx.pop(&mut self.scratch) {
                Ok(Some(Popped::Frame(mut meta))) => {
                    if !connected {
                        stats.count_drop(DropReason::PortDown, 1);
                        continue;
                    }
                    // A peer child is not trusted either: its offload request is checked
                    // again (against everything vm-switch offers) before the frame counts.
                    if frame::check_offload(&slot_vnet(&meta), &self.scratch, OffloadCaps::ALL)
                        .is_err()
                    {
                        stats.count_drop(DropReason::BadHeader, 1);
                        continue;
                    }
                    // A peer cannot make its frames look younger than now.
                    meta.ts_ns = meta.ts_ns.min(now);
                    let data = self.pool.detach(&mut self.scratch);
                    let hash = flow_hash(&data, self.perturb);
                    self.egress.enqueue(
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
                Ok(Some(Popped::BadSlot)) => stats.count_drop(DropReason::Malformed, 1),
                Ok(None) => {
                    if rx.take_producer_wait() {
                        // The sender holds frames for this ring: tell it there is room
                        // (through the eventfd of the opposite ring, which it watches).
                        // Without a ring back to it, it re-checks on its timer.
                        if let Some(tx) = &peer.tx {
                            tx.wake_consumer();
                        }
                    }
                    if rx.arm() {
                        break;
                    }
                }
                Err(_) => {
                    corrupt = true;
                    break;
                }
            }
        }
        if corrupt {
            log_limited(
                &mut self.log_limit,
                now_ns(),
                log::Level::Warn,
                format_args!(
                    "port {}: ring from peer {id} is corrupt; dropping it",
                    self.cfg.name
                ),
            );
            if let Some(rx) = self.peers.get_mut(&id).and_then(|p| p.rx.take()) {
                self.unregister(&rx, slot);
            }
            if let Some(c) = &self.control {
                let _ = control::send(
                    c.as_fd(),
                    &ToMain::PutBuffer {
                        peer: id,
                        role: Role::Rx,
                    },
                    &[],
                    true,
                );
            }
        }
        self.stats.set(Counter::Backlog, self.backlog_bytes());
        self.update_linked();
    }

    /// Updates DQL from what the guest has consumed of the RX ring.
    pub(super) fn update_completions(&mut self, vring: &VringRwLock) {
        let mem = self.mem.memory();
        let state = vring.get_ref();
        let q = state.get_queue();
        let next_used = q.next_used();
        let window = next_used.wrapping_sub(self.rx.consumed_idx);
        let in_window = |idx: u16, consumed: u16| {
            idx.wrapping_sub(consumed) <= next_used.wrapping_sub(consumed)
        };
        let mut consumed = self.rx.consumed_idx;
        if window == 0 {
            return;
        }
        // The driver's used_event (EVENT_IDX) is its last_used_idx when it re-enabled
        // interrupts, i.e. how far it has consumed.
        if self.neg.event_idx
            && let Some(ue) = used_event(q, &mem)
            && in_window(ue, consumed)
            && ue.wrapping_sub(consumed) > 0
        {
            consumed = ue;
        }
        // Buffers the guest re-posted were consumed first: a lower bound.
        if let Ok(avail) = q.avail_idx(&*mem, Ordering::Acquire) {
            let posted = avail.0.wrapping_sub(q.next_avail());
            if posted <= q.size() {
                let lb = next_used.wrapping_add(posted).wrapping_sub(q.size());
                if in_window(lb, consumed) && lb.wrapping_sub(consumed) > 0 {
                    consumed = lb;
                }
            }
        }
        drop(state);
        if consumed == self.rx.consumed_idx {
            return;
        }
        let mut done = self.rx.cum_completed;
        while let Some(&(idx, cum)) = self.rx.delivered.front() {
            // Entry fully consumed when its end index is within (old consumed, consumed].
            let d = idx.wrapping_sub(self.rx.consumed_idx);
            if d == 0 || d > consumed.wrapping_sub(self.rx.consumed_idx) {
                break;
            }
            done = cum;
            self.rx.delivered.pop_front();
        }
        self.rx.consumed_idx = consumed;
        if done > self.rx.cum_completed {
            self.dql.completed(done - self.rx.cum_completed, now_ns());
            self.rx.cum_completed = done;
            self.rx.backoff_ns = self.params.recheck_ns;
            self.rx.idle_rechecks = 0;
            self.stats.set(Counter::DqlLimit, self.dql.limit());
        }
    }

    pub(super) fn arm_timer(&mut self) {
        if self.timer_armed {
            return;
        }
        let ns = self.rx.backoff_ns;
        let ts = TimeSpec::new((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64);
        if self
            .timer
            .set(Expiration::OneShot(ts), TimerSetTimeFlags::empty())
            .is_ok()
        {
            self.timer_armed = true;
        }
        // Back off once the guest has made no progress for a while (a stalled guest costs
        // almost no CPU); a slow but live guest keeps the short re-check, so a sparse packet
        // waiting behind the limit is not delayed by a long timer.
        self.rx.idle_rechecks = self.rx.idle_rechecks.saturating_add(1);
        if self.rx.idle_rechecks > 40 {
            self.rx.backoff_ns = (self.rx.backoff_ns * 2).min(100_000_000);
        }
    }

    /// Switch → guest: delivers from the egress scheduler into the RX ring.
    pub(super) fn deliver(&mut self, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(vring) = vrings.get(usize::from(RX_QUEUE)) else {
            return Ok(());
        };
        if !Self::ready(vring) || self.is_broken(RX_QUEUE) {
            return Ok(());
        }
        self.update_completions(vring);
        let mem = self.mem.memory();
        let mut delivered_any = false;
        let stats = self.stats.clone();
        let mut fault = None;
        loop {
            self.step();
            if self.pending.is_empty() && self.egress.is_empty() {
                break;
            }
            if self.dql.avail() <= 0 {
                self.arm_timer();
                break;
            }
            let now = now_ns();
            let (frame, split) = match self.pending.pop_front() {
                Some(f) => (f, None),
                None => {
                    let neg = &self.neg;
                    let next = self.egress.next(
                        &self.dql,
                        now,
                        &mut |f: &Frame| classify(f, neg, &stats),
                        &mut |_, c| stats.count_drop(cause_reason(c), 1),
                    );
                    match next {
                        Step::Deliver(f, _) => (f, None),
                        Step::Split(f, off) => (f, Some(off)),
                        Step::Wait => {
                            // A segment waits for room to go whole (`egress`): look again
                            // when the guest has consumed more.
                            self.arm_timer();
                            break;
                        }
                        Step::Empty => break,
                    }
                }
            };
            if let Some(off) = split {
                // Segment in software: for a guest without the offload, and for one with it
                // when the segment could not go whole at the guest's pace
                // (`Dql::plan_segment`: so DQL never learns segment-sized bursts and the RX
                // ring stays short while the guest is slow). The frames go back to the head
                // of their flow in the scheduler, so other flows can be served between them.
                self.segs.clear();
                if !crate::gso::segment(&frame.data, &off, self.neg.guest_csum, &mut self.segs) {
                    stats.count_drop(DropReason::BadHeader, 1);
                    continue;
                }
                let frames = self
                    .segs
                    .drain(..)
                    .map(|seg| {
                        let mut meta = SlotMeta {
                            ts_ns: frame.meta.ts_ns,
                            ..SlotMeta::default()
                        };
                        if let Some((start, offset)) = seg.csum {
                            meta.flags = u32::from(VNET_F_NEEDS_CSUM);
                            meta.csum_start = start;
                            meta.csum_offset = offset;
                        }
                        Frame {
                            data: seg.data,
                            meta,
                            source: frame.source,
                            hash: frame.hash,
                        }
                    })
                    .collect();
                self.egress.requeue_front(
                    frame.source,
                    frame.hash,
                    frames,
                    frame.data.len() as u32,
                );
                self.pool.give(frame.data);
                continue;
            }
            if let Some((at, cap)) = self.rx.full_ring
                && self.neg.hdr_len + frame.data.len() > cap
                && vring.get_ref().get_queue().next_avail() == at
            {
                stats.count_drop(DropReason::NoBuffer, 1);
                continue;
            }
            match self.write_frame(vring, &mem, frame) {
                WriteResult::Written(used_end, data) => {
                    let bytes = data.len() as u64;
                    self.pool.give(data);
                    delivered_any = true;
                    self.rx.full_ring = None;
                    self.dql.queued(bytes);
                    self.rx.cum_delivered += bytes;
                    self.rx
                        .delivered
                        .push_back((used_end, self.rx.cum_delivered));
                    stats.add(Counter::ToGuestFrames, 1);
                    stats.add(Counter::ToGuestBytes, bytes);
                }
                WriteResult::NoBuffers { frame, avail, cap } => {
                    // Every buffer the guest has posted (`avail`) together is too small for
                    // this frame. Wait for the guest to post more: ask for a kick at the next
                    // buffer, then look once more so one posted in between is not missed.
                    // Retrying without new buffers would spin (the ring never changes).
                    let (full, moved) = {
                        let mut state = vring.get_mut();
                        let q = state.get_queue_mut();
                        let full = avail.wrapping_sub(q.next_avail()) >= q.size();
                        let moved = if full {
                            self.rx.full_ring = Some((q.next_avail(), cap));
                            Ok(false)
                        } else {
                            wait_for_buffers(q, &mem, avail)
                        };
                        (full, moved)
                    };
                    if full {
                        // A whole ring of buffers does not hold it: it can never be delivered.
                        stats.count_drop(DropReason::NoBuffer, 1);
                        continue;
                    }
                    match moved {
                        Ok(true) => self.pending.push_front(frame),
                        Ok(false) => {
                            self.pending.push_front(frame);
                            break;
                        }
                        Err(f) => {
                            stats.count_drop(DropReason::PortDown, 1);
                            fault = Some(f);
                            break;
                        }
                    }
                }
                WriteResult::Dropped(reason) => stats.count_drop(reason, 1),
                WriteResult::Broken(frame, f) => {
                    drop(frame);
                    stats.count_drop(DropReason::PortDown, 1);
                    fault = Some(f);
                    break;
                }
            }
        }
        if delivered_any {
            let state = vring.get_ref();
            let q = state.get_queue();
            let used = q.next_used();
            let old = std::mem::replace(&mut self.rx.notified_used, used);
            if rx_needs_notification(q, &mem, old, used) {
                state.signal_used_queue()?;
            }
        }
        if let Some(f) = fault {
            self.stop_queue(RX_QUEUE, &f);
        }
        let s = self.egress.stats();
        stats.set(Counter::CodelMarks, s.codel_marks);
        stats.max(Counter::MaxSojournNs, s.max_sojourn_ns);
        stats.set(Counter::Backlog, self.backlog_bytes());
        let c = self.egress.counts();
        stats.set(Counter::SegmentsWaited, c.waited);
        stats.set(Counter::SegmentsSplit, c.split);
        Ok(())
    }

    pub(super) fn write_frame(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemoryMmap,
        mut frame: Frame,
    ) -> WriteResult {
        // The offload request was validated when the frame left the scheduler, and segments
        // reach here only for a guest that accepts them.
        let mut vnet = VnetHdr::default();
        if frame.meta.gso_type != 0 {
            vnet.gso_type = frame.meta.gso_type;
            vnet.gso_size = frame.meta.gso_size;
            match frame::check_offload(&slot_vnet(&frame.meta), &frame.data, OffloadCaps::ALL) {
                Ok(off) => vnet.hdr_len = off.hdr_len,
                Err(_) => return WriteResult::Dropped(DropReason::BadHeader),
            }
        }
        if frame.meta.flags & FLAG_NEEDS_CSUM != 0 {
            if self.neg.guest_csum {
                vnet.flags = VNET_F_NEEDS_CSUM;
                vnet.csum_start = frame.meta.csum_start;
                vnet.csum_offset = frame.meta.csum_offset;
            } else if !frame::finish_partial_csum(
                &mut frame.data,
                usize::from(frame.meta.csum_start),
                usize::from(frame.meta.csum_offset),
            ) {
                return WriteResult::Dropped(DropReason::Malformed);
            }
        }
        let hdr_len = self.neg.hdr_len;
        let total = hdr_len + frame.data.len();
        let mut writers = Vec::new();
        let mut cap = 0usize;
        let mut state = vring.get_mut();
        let q = state.get_queue_mut();
        let avail = loop {
            if cap >= total {
                break None;
            }
            self.step();
            let chain = match next_chain(q, mem) {
                Next::Chain(c) => c,
                Next::Empty(avail) => break Some(avail),
                Next::Broken(f) => return WriteResult::Broken(frame, f),
            };
            let head = chain.head_index();
            match chain.writer(mem) {
                Ok(w) => {
                    cap += w.available_bytes();
                    writers.push((head, Some(w)));
                }
                Err(_) => writers.push((head, None)),
            }
            if !self.neg.mrg_rxbuf {
                break None;
            }
        };
        if cap < total {
            if !self.neg.mrg_rxbuf && !writers.is_empty() {
                // One buffer per frame and this one is too small: the guest set up its ring
                // in a way we cannot use for this frame. Return the buffer empty.
                for (head, _) in &writers {
                    if let Err(source) = q.add_used(mem, *head, 0) {
                        return WriteResult::Broken(frame, used_fault(source));
                    }
                }
                return WriteResult::Dropped(DropReason::NoBuffer);
            }
            for _ in 0..writers.len() {
                q.go_to_previous_position();
            }
            // Every available buffer was taken (mergeable) or none was there.
            let avail = avail.unwrap_or_else(|| q.next_avail());
            return WriteResult::NoBuffers { frame, avail, cap };
        }
        if writers.len() > usize::from(u16::MAX) {
            return WriteResult::Dropped(DropReason::NoBuffer);
        }
        let hdr = vnet.to_bytes(writers.len() as u16);
        let mut parts: [&[u8]; 2] = [&hdr[..hdr_len], &frame.data];
        let mut used = Vec::with_capacity(writers.len());
        for (head, w) in writers.iter_mut() {
            let mut written = 0usize;
            if let Some(w) = w {
                for part in parts.iter_mut() {
                    while !part.is_empty() {
                        match w.write(part) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                written += n;
                                *part = &part[n..];
                            }
                        }
                    }
                    if !part.is_empty() {
                        break;
                    }
                }
            }
            used.push((*head, written as u32));
        }
        if let Err(f) = publish_used(q, mem, &used) {
            return WriteResult::Broken(frame, f);
        }
        let used_end = q.next_used();
        WriteResult::Written(used_end, frame.data)
    }
}

/// Puts the used elements of one frame (`used`: head, bytes written; one per buffer) into the
/// used ring and publishes them together: the driver reads `num_buffers` from the first
/// buffer's header and then takes that many used elements at once, so it must never see the
/// used index point inside a frame (Linux drops the frame as "buffers missing" and counts a
/// length error). The elements before the last are written without moving the used index;
/// `add_used` of the last one then publishes all of them with one release store.
fn publish_used(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    used: &[(u16, u32)],
) -> Result<(), QueueFault> {
    let Some((&(last_head, last_len), rest)) = used.split_last() else {
        return Ok(());
    };
    let start = q.next_used();
    let size = q.size();
    for (i, &(head, len)) in rest.iter().enumerate() {
        if head >= size {
            return Err(used_fault(virtio_queue::Error::InvalidDescriptorIndex));
        }
        // Used ring: flags (2), idx (2), then `size` elements of id (4) and len (4).
        let slot = u64::from(start.wrapping_add(i as u16) % size);
        let addr = q
            .used_ring()
            .checked_add(4 + 8 * slot)
            .ok_or_else(|| used_fault(virtio_queue::Error::AddressOverflow))?;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&elem, GuestAddress(addr))
            .map_err(|e| used_fault(virtio_queue::Error::GuestMemory(e)))?;
    }
    q.set_next_used(start.wrapping_add(rest.len() as u16));
    q.add_used(mem, last_head, last_len).map_err(used_fault)
}

/// Whether the driver wants an interrupt for the used elements published since `old` (up to
/// `used`): with EVENT_IDX when its `used_event` lies in that window, as Linux's
/// `vring_need_event`; always without. Computed here, not by `Queue::needs_notification`,
/// because [`publish_used`] moves the used index past elements `add_used` never counted.
fn rx_needs_notification(q: &Queue, mem: &GuestMemoryMmap, old: u16, used: u16) -> bool {
    if !q.event_idx_enabled() {
        return true;
    }
    // The used elements and index are visible before the driver's used_event is read.
    std::sync::atomic::fence(Ordering::SeqCst);
    let Some(event) = used_event(q, mem) else {
        return true;
    };
    used.wrapping_sub(event).wrapping_sub(1) < used.wrapping_sub(old)
}

/// The driver's `used_event` (EVENT_IDX: the entry after the available ring), `None` when it
/// is outside guest memory.
fn used_event(q: &Queue, mem: &GuestMemoryMmap) -> Option<u16> {
    let addr = q.avail_ring().checked_add(4 + 2 * u64::from(q.size()))?;
    mem.load::<u16>(GuestAddress(addr), Ordering::Acquire)
        .ok()
        .map(u16::from_le)
}

/// How a frame leaving the egress goes to a guest that negotiated `neg`: as it is, as an
/// offload segment it takes whole (as DQL allows), or segmented in software; a header that
/// fails the checks drops it (counted as `bad_header`).
fn classify(frame: &Frame, neg: &Negotiated, stats: &PortStats) -> Class<Offload> {
    match frame::check_offload(&slot_vnet(&frame.meta), &frame.data, OffloadCaps::ALL) {
        Err(_) => {
            stats.count_drop(DropReason::BadHeader, 1);
            Class::Drop
        }
        Ok(off) if off.gso == Gso::None => Class::Plain(off),
        Ok(off) if !neg.accepts(&off) => Class::Split(off),
        Ok(off) => Class::Segment(off),
    }
}

/// The virtio-net header fields a ring slot carries.
fn slot_vnet(meta: &SlotMeta) -> VnetHdr {
    VnetHdr {
        // Flags beyond a byte are impossible from an honest peer: make them fail validation.
        flags: u8::try_from(meta.flags).unwrap_or(u8::MAX),
        gso_type: meta.gso_type,
        hdr_len: 0,
        gso_size: meta.gso_size,
        csum_start: meta.csum_start,
        csum_offset: meta.csum_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::test_queue::{AVAIL, USED};

    const SIZE: u16 = 8;

    fn queue() -> (Queue, GuestMemoryMmap) {
        crate::backend::test_queue::queue(SIZE, 0x10000)
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap()
    }

    fn used_elem(mem: &GuestMemoryMmap, slot: u64) -> (u32, u32) {
        let a = GuestAddress(USED + 4 + 8 * slot);
        (
            mem.read_obj(a).unwrap(),
            mem.read_obj(GuestAddress(a.0 + 4)).unwrap(),
        )
    }

    #[test]
    fn test_a_frame_s_used_elements_are_published_in_order_with_one_index_move() {
        let (mut q, mem) = queue();
        // Start next to the end of the ring, so the frame's elements wrap.
        q.set_next_used(6);
        mem.write_obj(6u16, GuestAddress(USED + 2)).unwrap();
        publish_used(&mut q, &mem, &[(3, 4096), (5, 4096), (1, 100)]).unwrap();
        assert_eq!(q.next_used(), 9);
        assert_eq!(used_idx(&mem), 9);
        assert_eq!(used_elem(&mem, 6), (3, 4096));
        assert_eq!(used_elem(&mem, 7), (5, 4096));
        assert_eq!(used_elem(&mem, 0), (1, 100));
    }

    #[test]
    fn test_a_frame_is_never_published_in_part() {
        // The last element is refused (head out of range): the used index must not have
        // moved for the elements before it, or the driver would see a frame whose
        // num_buffers names buffers that never come.
        let (mut q, mem) = queue();
        assert!(publish_used(&mut q, &mem, &[(0, 4096), (1, 4096), (SIZE, 10)]).is_err());
        assert_eq!(used_idx(&mem), 0);
        let (mut q, mem) = queue();
        assert!(publish_used(&mut q, &mem, &[(0, 4096), (SIZE, 4096), (1, 10)]).is_err());
        assert_eq!(used_idx(&mem), 0);
    }

    #[test]
    fn test_rx_interrupt_follows_the_driver_s_used_event() {
        let (mut q, mem) = queue();
        q.set_event_idx(true);
        let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE));
        // The driver wants an interrupt once element 4 (index 5) is used.
        mem.write_obj(4u16, used_event).unwrap();
        assert!(!rx_needs_notification(&q, &mem, 0, 4));
        assert!(rx_needs_notification(&q, &mem, 4, 5));
        assert!(
            rx_needs_notification(&q, &mem, 2, 9),
            "a frame spanning the event"
        );
        assert!(!rx_needs_notification(&q, &mem, 5, 9), "already past it");
        // Across the wrap of the 16-bit indices.
        mem.write_obj(u16::MAX, used_event).unwrap();
        assert!(rx_needs_notification(&q, &mem, u16::MAX - 2, 1));
        assert!(!rx_needs_notification(&q, &mem, u16::MAX - 3, u16::MAX));
        // Without EVENT_IDX every batch interrupts.
        q.set_event_idx(false);
        assert!(rx_needs_notification(&q, &mem, 4, 5));
    }
}
