//! RX (switch → guest): drains the incoming rings into FQ-CoDel, tracks RX completions for
//! DQL, and delivers frames into the guest's RX buffers with the negotiated virtio-net header.

// Per-frame code: no raw log macros (clippy.toml); log through `log_limited`.
#![deny(clippy::disallowed_macros)]
#![forbid(unsafe_code)]

use super::*;

impl Port {
    /// Moves everything from the incoming rings into the egress scheduler.
    pub(super) fn drain_rings(&mut self, connected: bool) {
        let now = now_ns();
        let stats = self.stats.clone();
        let mut corrupt = Vec::new();
        for (&id, peer) in self.peers.iter_mut() {
            let Some(rx) = &mut peer.rx else { continue };
            rx.event().drain();
            let source = u32::from(peer.slot) + 1;
            loop {
                let mut data = Vec::new();
                match rx.pop(&mut data) {
                    Ok(Some(Popped::Frame(mut meta))) => {
                        if !connected {
                            stats.count_drop(DropReason::PortDown, 1);
                            continue;
                        }
                        // A peer child is not trusted either: its offload request is checked
                        // again (against everything vm-switch offers) before the frame counts.
                        if frame::check_offload(&slot_vnet(&meta), &data, OffloadCaps::ALL).is_err()
                        {
                            stats.count_drop(DropReason::BadHeader, 1);
                            continue;
                        }
                        // A peer cannot make its frames look younger than now.
                        meta.ts_ns = meta.ts_ns.min(now);
                        data.shrink_to_fit();
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
                        corrupt.push(id);
                        break;
                    }
                }
            }
        }
        for id in corrupt {
            log_limited(
                &mut self.log_limit,
                now_ns(),
                log::Level::Warn,
                format_args!(
                    "port {}: ring from peer {id} is corrupt; dropping it",
                    self.cfg.name
                ),
            );
            if let Some(peer) = self.peers.get_mut(&id)
                && let Some(rx) = peer.rx.take()
            {
                let slot = peer.slot;
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
        if self.neg.event_idx {
            let addr = q.avail_ring().checked_add(4 + 2 * u64::from(q.size()));
            if let Some(addr) = addr
                && let Ok(raw) = mem.load::<u16>(GuestAddress(addr), Ordering::Acquire)
            {
                let ue = u16::from_le(raw);
                if in_window(ue, consumed) && ue.wrapping_sub(consumed) > 0 {
                    consumed = ue;
                }
            }
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
            let frame = match self.pending.pop_front() {
                Some(f) => f,
                None => match self
                    .egress
                    .dequeue(now, &mut |_, c| stats.count_drop(cause_reason(c), 1))
                {
                    Some(f) => f,
                    None => break,
                },
            };
            let off = match frame::check_offload(
                &slot_vnet(&frame.meta),
                &frame.data,
                OffloadCaps::ALL,
            ) {
                Ok(off) => off,
                Err(_) => {
                    stats.count_drop(DropReason::BadHeader, 1);
                    continue;
                }
            };
            if off.gso != Gso::None
                && (!self.neg.accepts(&off) || frame.data.len() as i64 > self.dql.avail())
            {
                // Segment in software: for a guest without the offload, and for one with it
                // whenever the whole segment does not fit what DQL allows now (so DQL never
                // learns segment-sized bursts and the RX ring stays short while the guest is
                // slow). The frames go back to the head of their flow in the scheduler, so
                // other flows can be served between them.
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
                WriteResult::Written(bytes, used_end) => {
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
            self.stop_queue(RX_QUEUE, &f);
        }
        let s = self.egress.stats();
        stats.set(Counter::CodelMarks, s.codel_marks);
        stats.max(Counter::MaxSojournNs, s.max_sojourn_ns);
        stats.set(Counter::Backlog, self.backlog_bytes());
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
            if let Err(source) = q.add_used(mem, *head, written as u32) {
                return WriteResult::Broken(frame, used_fault(source));
            }
        }
        let used_end = q.next_used();
        WriteResult::Written(frame.data.len() as u64, used_end)
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
