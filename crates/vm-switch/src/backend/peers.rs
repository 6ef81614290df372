//! Peer wiring: control messages from the main process (a peer port added, changed or gone,
//! this port's own configuration), the shared-memory rings to and from each peer, and the
//! registration of their eventfds with the worker.

#![forbid(unsafe_code)]

use super::*;

impl Port {
    pub(super) fn apply(&mut self, msg: ToChild, fds: Vec<OwnedFd>) {
        match msg {
            ToChild::Peer { id, config } => {
                if id == self.id {
                    self.cfg = config.clone();
                }
                self.switch.upsert(id, &config);
                if id != self.id && !self.peers.contains_key(&id) {
                    let slot = match self.slots.iter().position(Option::is_none) {
                        Some(s) => s,
                        None => {
                            self.slots.push(None);
                            self.slots.len() - 1
                        }
                    };
                    self.slots[slot] = Some(id);
                    self.peers.insert(
                        id,
                        Peer {
                            slot: slot as u16,
                            tx: None,
                            rx: None,
                            held: VecDeque::new(),
                        },
                    );
                }
                debug!(
                    "port {}: peer {} ({}) known",
                    self.cfg.name, id, config.name
                );
            }
            ToChild::PeerGone { id } => self.remove_peer(id),
            ToChild::BufferReady { peer, role, spec } => self.add_ring(peer, role, spec, fds),
            ToChild::RelaySockets => {
                let mut fds = fds.into_iter();
                if let (Some(l), Some(c)) = (fds.next(), fds.next()) {
                    let mut slot = self.relay.sockets.lock().unwrap_or_else(|e| e.into_inner());
                    slot.push((l, c));
                    self.relay.ready.notify_all();
                }
            }
        }
    }

    pub(super) fn update_linked(&self) {
        let n = self
            .peers
            .values()
            .filter(|p| p.tx.is_some() && p.rx.is_some())
            .count();
        self.stats.set(Counter::LinkedPeers, n as u64);
    }

    pub(super) fn remove_peer(&mut self, id: PortId) {
        self.switch.remove(id);
        if let Some(peer) = self.peers.remove(&id) {
            self.stats
                .count_drop(DropReason::PortDown, peer.held.len() as u64);
            self.released.extend(peer.held.iter().map(|h| h.head));
            if peer.held.len() >= HOLD_CAP {
                self.tx_paused = false;
            }
            if let Some(rx) = &peer.rx {
                self.unregister(rx, peer.slot);
            }
            if let Some(s) = self.slots.get_mut(peer.slot as usize) {
                *s = None;
            }
            let stats = self.stats.clone();
            self.egress
                .remove_source(u32::from(peer.slot) + 1, &mut |_, _| {
                    stats.count_drop(DropReason::PortDown, 1)
                });
        }
        self.update_linked();
    }

    pub(super) fn unregister(&self, rx: &Consumer, slot: u16) {
        if let Some(h) = &self.handler {
            let _ = h.unregister_listener(
                rx.event().fd().as_raw_fd(),
                EventSet::IN,
                u64::from(EV_RING_BASE + slot),
            );
        }
    }

    pub(super) fn add_ring(&mut self, peer: PortId, role: Role, spec: RingSpec, fds: Vec<OwnedFd>) {
        let Some(p) = self.peers.get(&peer) else {
            warn!(
                "port {}: ring for unknown peer {peer} ignored",
                self.cfg.name
            );
            return;
        };
        let slot = p.slot;
        let mut fds = fds.into_iter();
        let (Some(mem), Some(ev)) = (fds.next(), fds.next()) else {
            warn!("port {}: ring message without fds ignored", self.cfg.name);
            return;
        };
        match role {
            Role::Tx => match Producer::new(mem, spec, Event::from_fd(ev)) {
                Ok(tx) => {
                    if let Some(p) = self.peers.get_mut(&peer) {
                        p.tx = Some(tx);
                    }
                }
                Err(e) => warn!("port {}: ring to peer {peer}: {e}", self.cfg.name),
            },
            Role::Rx => match Consumer::new(mem, spec, Event::from_fd(ev)) {
                Ok(rx) => {
                    if let Some(h) = &self.handler
                        && let Err(e) = h.register_listener(
                            rx.event().fd().as_raw_fd(),
                            EventSet::IN,
                            u64::from(EV_RING_BASE + slot),
                        )
                    {
                        warn!(
                            "port {}: could not watch ring from {peer}: {e}",
                            self.cfg.name
                        );
                    }
                    if let Some(p) = self.peers.get_mut(&peer) {
                        if let Some(old) = p.rx.take()
                            && let Some(h) = &self.handler
                        {
                            {
                                let _ = h.unregister_listener(
                                    old.event().fd().as_raw_fd(),
                                    EventSet::IN,
                                    u64::from(EV_RING_BASE + slot),
                                );
                                let _ = h.register_listener(
                                    rx.event().fd().as_raw_fd(),
                                    EventSet::IN,
                                    u64::from(EV_RING_BASE + slot),
                                );
                            }
                        }
                        p.rx = Some(rx);
                    }
                }
                Err(e) => warn!("port {}: ring from peer {peer}: {e}", self.cfg.name),
            },
        }
        self.update_linked();
    }

    pub(super) fn handle_control(&mut self) {
        let Some(c) = self
            .control
            .as_ref()
            .map(|c| c.as_fd().try_clone_to_owned())
        else {
            return;
        };
        let Ok(c) = c else { return };
        loop {
            match control::recv::<ToChild>(c.as_fd(), true) {
                Ok(Some((msg, fds))) => self.apply(msg, fds),
                Ok(None) => {
                    info!(
                        "port {}: main process closed the control channel; exiting",
                        self.cfg.name
                    );
                    self.exit_requested = true;
                    if let Some(h) = &self.handler {
                        let _ = h.unregister_listener(
                            c.as_raw_fd(),
                            EventSet::IN,
                            u64::from(EV_CONTROL),
                        );
                    }
                    // The main process is gone or wants us gone: nothing else can set up rings.
                    std::process::exit(0);
                }
                Err(control::ControlError::Io { source, .. })
                    if source.kind() == io::ErrorKind::WouldBlock =>
                {
                    return;
                }
                Err(e) => {
                    warn!("port {}: control channel: {e}", self.cfg.name);
                    return;
                }
            }
        }
    }
}
