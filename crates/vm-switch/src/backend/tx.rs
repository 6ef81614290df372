//! TX (guest → switch): pops the guest's TX chains, copies header and frame out of guest
//! memory, decides (validate, route, proxy-answer) and pushes into the destination's ring or
//! holds the frame while that ring is full.

// Per-frame code: no raw log macros (clippy.toml); log through `log_limited`.
#![deny(clippy::disallowed_macros)]
#![forbid(unsafe_code)]

use super::*;

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
                match chain.reader(&*mem) {
                    Ok(mut r) => {
                        let total = r.available_bytes();
                        if total < hdr_len {
                            verdict = Err(DropReason::Malformed);
                        } else if total - hdr_len > MAX_GSO_FRAME {
                            verdict = Err(DropReason::Oversize);
                        } else if r.read_exact(&mut hdr[..hdr_len]).is_err() {
                            verdict = Err(DropReason::Malformed);
                        } else {
                            self.buf.resize(total - hdr_len, 0);
                            if r.read_exact(&mut self.buf).is_err() {
                                verdict = Err(DropReason::Malformed);
                            }
                        }
                        self.stats.add(Counter::FromGuestFrames, 1);
                        self.stats.add(
                            Counter::FromGuestBytes,
                            total.saturating_sub(hdr_len) as u64,
                        );
                    }
                    Err(_) => verdict = Err(DropReason::Malformed),
                }
                let fate = match verdict {
                    Ok(()) => self.forward(&hdr, ts, head),
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
        let mut meta = SlotMeta {
            ts_ns: ts,
            ..SlotMeta::default()
        };
        let v = off.to_vnet();
        meta.flags = u32::from(v.flags);
        meta.csum_start = v.csum_start;
        meta.csum_offset = v.csum_offset;
        meta.gso_type = v.gso_type;
        meta.gso_size = v.gso_size;
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
            match tx.push(meta, &self.buf) {
                Err(PushError::Full) if tx.want_space(self.buf.len()) => tx.push(meta, &self.buf),
                r => r,
            }
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
                    Some(tx) => match tx.push(h.meta, &h.data) {
                        Err(PushError::Full) if tx.want_space(h.data.len()) => {
                            tx.push(h.meta, &h.data)
                        }
                        r => r,
                    },
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
