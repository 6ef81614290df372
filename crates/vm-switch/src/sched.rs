//! FQ-CoDel (RFC 8290, CoDel per RFC 8289) at a destination port's egress, with fairness
//! between sources first and between flows of a source second (CAKE's "dual-srchost" idea).
//!
//! Sans-IO: the caller passes "now" (nanoseconds of `CLOCK_MONOTONIC`, or a virtual clock in
//! tests and the simulation) and gets packets and drops back. Packets carry the time they
//! entered the switch (the ingress timestamp taken when the sender's TX descriptor was
//! popped), so CoDel's sojourn covers the whole path through the switch: the sender's
//! processing, the shared ring, this queue and any wait for guest receive buffers.
//!
//! Two-level DRR++: sources (the sending ports, plus the port itself for proxy replies) are
//! served by a deficit round robin with the new/old list rule of RFC 8290 §4.2, so a source
//! that sends little (a sparse flow from another VM) is served ahead of backlogged sources;
//! inside a source, flows (hash of addresses, protocol and ports) are served the same way,
//! each with its own CoDel state. On overflow of the byte limit the fattest flow of the
//! fattest source loses packets from its head, in batches (RFC 8290 §4.1, Linux
//! `fq_codel_drop`).

#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// What the scheduler needs from a packet.
pub trait Packet {
    /// Bytes on the wire (for DRR and the "backlog ≤ MTU" rule).
    fn size(&self) -> u32;
    /// Bytes of memory the packet holds (for the byte limit).
    fn mem_size(&self) -> u32;
    /// Ingress timestamp, nanoseconds.
    fn enqueued_at(&self) -> u64;
    /// Marks the packet Congestion Experienced if it is ECN-capable; returns whether it is
    /// now marked.
    fn mark_ce(&mut self) -> bool;
}

/// One flow queue of the scheduler: a source and the bucket its flow hash maps to. Packets of
/// one flow queue leave in the order they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowId {
    /// The source it was queued under.
    pub source: u32,
    /// The flow bucket within the source.
    pub bucket: u32,
}

/// Scheduler parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// CoDel target, ns.
    pub target_ns: u64,
    /// CoDel interval, ns.
    pub interval_ns: u64,
    /// DRR quantum in bytes, for flows and for sources.
    pub quantum: u32,
    /// Byte limit of everything queued (memory size of packets).
    pub limit_bytes: u64,
    /// Largest packet; CoDel does not drop while the backlog is at most this.
    pub mtu: u32,
    /// Mark ECN-capable packets instead of dropping them.
    pub ecn: bool,
    /// Flow buckets per source.
    pub flows_per_source: usize,
    /// Packets dropped at most per overflow batch.
    pub drop_batch: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            target_ns: 5_000_000,
            interval_ns: 100_000_000,
            quantum: 1514,
            limit_bytes: 2 << 20,
            mtu: 1514,
            ecn: true,
            flows_per_source: 1024,
            drop_batch: 64,
        }
    }
}

/// Why the scheduler gave a packet back instead of delivering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// CoDel decided to drop it.
    Codel,
    /// The byte limit was exceeded and it was in the fattest flow.
    Overflow,
}

/// Counters kept by the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Packets dropped by CoDel.
    pub codel_drops: u64,
    /// Packets marked CE by CoDel.
    pub codel_marks: u64,
    /// Packets dropped on overflow.
    pub overflow_drops: u64,
    /// Largest sojourn of a delivered packet, ns.
    pub max_sojourn_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    None,
    New,
    Old,
}

#[derive(Debug, Default, Clone, Copy)]
struct Codel {
    count: u32,
    lastcount: u32,
    dropping: bool,
    first_above_time: u64,
    drop_next: u64,
}

#[derive(Debug)]
struct Flow<P> {
    queue: VecDeque<P>,
    backlog: u64,
    deficit: i64,
    list: List,
    codel: Codel,
}

impl<P> Flow<P> {
    fn new() -> Self {
        Flow {
            queue: VecDeque::new(),
            backlog: 0,
            deficit: 0,
            list: List::None,
            codel: Codel::default(),
        }
    }
}

#[derive(Debug)]
struct Source<P> {
    flows: Vec<Flow<P>>,
    new_flows: VecDeque<u32>,
    old_flows: VecDeque<u32>,
    backlog: u64,
    deficit: i64,
    list: List,
}

/// Shared totals updated while popping packets.
struct Totals {
    mem: u64,
    bytes: u64,
    packets: usize,
}

impl<P: Packet> Source<P> {
    fn new(flows: usize) -> Self {
        Source {
            flows: (0..flows.max(1)).map(|_| Flow::new()).collect(),
            new_flows: VecDeque::new(),
            old_flows: VecDeque::new(),
            backlog: 0,
            deficit: 0,
            list: List::None,
        }
    }

    fn pop(&mut self, idx: usize, t: &mut Totals) -> Option<P> {
        let p = self.flows[idx].queue.pop_front()?;
        let mem = u64::from(p.mem_size());
        self.flows[idx].backlog -= mem;
        self.backlog -= mem;
        t.mem -= mem;
        t.bytes -= u64::from(p.size());
        t.packets -= 1;
        Some(p)
    }

    fn should_drop(
        codel: &mut Codel,
        p: Option<&P>,
        params: &Params,
        now: u64,
        backlog: u64,
    ) -> bool {
        let Some(p) = p else {
            codel.first_above_time = 0;
            return false;
        };
        let sojourn = now.saturating_sub(p.enqueued_at());
        if sojourn < params.target_ns || backlog <= u64::from(params.mtu) {
            codel.first_above_time = 0;
            return false;
        }
        if codel.first_above_time == 0 {
            codel.first_above_time = now.saturating_add(params.interval_ns);
            return false;
        }
        now >= codel.first_above_time
    }

    fn control_law(t: u64, interval: u64, count: u32) -> u64 {
        t.saturating_add((interval as f64 / f64::from(count.max(1)).sqrt()) as u64)
    }

    /// CoDel dequeue for one flow (Linux `codel_dequeue`).
    fn codel_dequeue(
        &mut self,
        idx: usize,
        params: &Params,
        now: u64,
        t: &mut Totals,
        stats: &mut SchedStats,
        drop: &mut dyn FnMut(P, DropCause),
    ) -> Option<P> {
        let Some(mut p) = self.pop(idx, t) else {
            self.flows[idx].codel.dropping = false;
            return None;
        };
        let mut codel = self.flows[idx].codel;
        let drop_now = Self::should_drop(&mut codel, Some(&p), params, now, t.bytes);
        if codel.dropping {
            if !drop_now {
                codel.dropping = false;
            } else {
                while codel.dropping && now >= codel.drop_next {
                    codel.count = codel.count.saturating_add(1);
                    if params.ecn && p.mark_ce() {
                        stats.codel_marks += 1;
                        codel.drop_next =
                            Self::control_law(codel.drop_next, params.interval_ns, codel.count);
                        break;
                    }
                    stats.codel_drops += 1;
                    drop(p, DropCause::Codel);
                    match self.pop(idx, t) {
                        None => {
                            codel.dropping = false;
                            self.flows[idx].codel = codel;
                            return None;
                        }
                        Some(next) => p = next,
                    }
                    if !Self::should_drop(&mut codel, Some(&p), params, now, t.bytes) {
                        codel.dropping = false;
                    } else {
                        codel.drop_next =
                            Self::control_law(codel.drop_next, params.interval_ns, codel.count);
                    }
                }
            }
        } else if drop_now {
            let mut current = Some(p);
            if params.ecn && current.as_mut().is_some_and(|p| p.mark_ce()) {
                stats.codel_marks += 1;
            } else {
                stats.codel_drops += 1;
                if let Some(old) = current.take() {
                    drop(old, DropCause::Codel);
                }
                current = self.pop(idx, t);
                Self::should_drop(&mut codel, current.as_ref(), params, now, t.bytes);
            }
            codel.dropping = true;
            let delta = codel.count.wrapping_sub(codel.lastcount);
            codel.count = if delta > 1
                && now.wrapping_sub(codel.drop_next) < params.interval_ns.saturating_mul(16)
            {
                delta
            } else {
                1
            };
            codel.lastcount = codel.count;
            codel.drop_next = Self::control_law(now, params.interval_ns, codel.count);
            self.flows[idx].codel = codel;
            let p = current?;
            return Some(p);
        }
        self.flows[idx].codel = codel;
        Some(p)
    }

    /// DRR++ over this source's flows.
    fn dequeue(
        &mut self,
        params: &Params,
        now: u64,
        t: &mut Totals,
        stats: &mut SchedStats,
        drop: &mut dyn FnMut(P, DropCause),
    ) -> Option<(P, usize)> {
        loop {
            let (idx, from_new) = if let Some(&i) = self.new_flows.front() {
                (i as usize, true)
            } else if let Some(&i) = self.old_flows.front() {
                (i as usize, false)
            } else {
                return None;
            };
            if self.flows[idx].deficit <= 0 {
                self.flows[idx].deficit += i64::from(params.quantum);
                self.pop_list(from_new);
                self.old_flows.push_back(idx as u32);
                self.flows[idx].list = List::Old;
                continue;
            }
            match self.codel_dequeue(idx, params, now, t, stats, drop) {
                Some(p) => {
                    self.flows[idx].deficit -= i64::from(p.size());
                    return Some((p, idx));
                }
                None => {
                    self.pop_list(from_new);
                    if from_new && !self.old_flows.is_empty() {
                        self.old_flows.push_back(idx as u32);
                        self.flows[idx].list = List::Old;
                    } else {
                        self.flows[idx].list = List::None;
                    }
                }
            }
        }
    }

    fn pop_list(&mut self, from_new: bool) {
        if from_new {
            self.new_flows.pop_front();
        } else {
            self.old_flows.pop_front();
        }
    }
}

/// The egress scheduler of one port.
#[derive(Debug)]
pub struct FqCodel<P> {
    params: Params,
    sources: Vec<Option<Source<P>>>,
    new_sources: VecDeque<u32>,
    old_sources: VecDeque<u32>,
    mem: u64,
    bytes: u64,
    packets: usize,
    stats: SchedStats,
}

impl<P: Packet> FqCodel<P> {
    /// An empty scheduler.
    pub fn new(params: Params) -> Self {
        FqCodel {
            params,
            sources: Vec::new(),
            new_sources: VecDeque::new(),
            old_sources: VecDeque::new(),
            mem: 0,
            bytes: 0,
            packets: 0,
            stats: SchedStats::default(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Counters.
    pub fn stats(&self) -> SchedStats {
        self.stats
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.packets
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }

    /// Wire bytes queued.
    pub fn backlog_bytes(&self) -> u64 {
        self.bytes
    }

    /// Memory bytes queued (what the limit applies to).
    pub fn mem_bytes(&self) -> u64 {
        self.mem
    }

    /// Wire bytes queued from one source.
    pub fn source_backlog(&self, source: u32) -> u64 {
        self.sources
            .get(source as usize)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.backlog)
    }

    fn totals(&self) -> Totals {
        Totals {
            mem: self.mem,
            bytes: self.bytes,
            packets: self.packets,
        }
    }

    fn set_totals(&mut self, t: Totals) {
        self.mem = t.mem;
        self.bytes = t.bytes;
        self.packets = t.packets;
    }

    /// Queues `p` from `source` in the flow `flow_hash` selects. Packets dropped to stay under
    /// the byte limit (possibly `p` itself) are handed to `drop`.
    pub fn enqueue(
        &mut self,
        source: u32,
        flow_hash: u32,
        p: P,
        drop: &mut dyn FnMut(P, DropCause),
    ) {
        let s = source as usize;
        if self.sources.len() <= s {
            self.sources.resize_with(s + 1, || None);
        }
        let flows = self.params.flows_per_source;
        let src = self.sources[s].get_or_insert_with(|| Source::new(flows));
        let idx = ((u64::from(flow_hash) * src.flows.len() as u64) >> 32) as usize;
        let mem = u64::from(p.mem_size());
        let size = u64::from(p.size());
        let flow = &mut src.flows[idx];
        flow.queue.push_back(p);
        flow.backlog += mem;
        if flow.list == List::None {
            flow.list = List::New;
            flow.deficit = i64::from(self.params.quantum);
            src.new_flows.push_back(idx as u32);
        }
        src.backlog += mem;
        if src.list == List::None {
            src.list = List::New;
            src.deficit = i64::from(self.params.quantum);
            self.new_sources.push_back(source);
        }
        self.mem += mem;
        self.bytes += size;
        self.packets += 1;
        while self.mem > self.params.limit_bytes {
            if !self.drop_fattest(drop) {
                break;
            }
        }
    }

    /// Puts `packets` back at the head of the flow `flow_hash` of `source`, in order, ahead of
    /// what that flow still holds: the frames software segmentation made of a segment just
    /// dequeued from there (`refund` bytes, its size), so that they are scheduled one by one
    /// and other flows can go between them. The segment's deficit charge is refunded (the
    /// frames are charged as they go). No byte-limit drops here: the segment was within it.
    pub fn requeue_front(&mut self, source: u32, flow_hash: u32, packets: Vec<P>, refund: u32) {
        let bucket = ((u64::from(flow_hash) * self.params.flows_per_source as u64) >> 32) as u32;
        self.requeue_front_at(FlowId { source, bucket }, packets, refund);
    }

    /// [`FqCodel::requeue_front`] for the flow queue a packet came from
    /// ([`FqCodel::dequeue_flow`]).
    pub fn requeue_front_at(&mut self, flow: FlowId, packets: Vec<P>, refund: u32) {
        let source = flow.source;
        let s = source as usize;
        if self.sources.len() <= s {
            self.sources.resize_with(s + 1, || None);
        }
        let flows = self.params.flows_per_source;
        let quantum = i64::from(self.params.quantum);
        let src = self.sources[s].get_or_insert_with(|| Source::new(flows));
        let idx = (flow.bucket as usize).min(src.flows.len().saturating_sub(1));
        let flow = &mut src.flows[idx];
        for p in packets.into_iter().rev() {
            let mem = u64::from(p.mem_size());
            flow.backlog += mem;
            src.backlog += mem;
            self.mem += mem;
            self.bytes += u64::from(p.size());
            self.packets += 1;
            flow.queue.push_front(p);
        }
        flow.deficit = (flow.deficit + i64::from(refund)).min(quantum);
        if flow.list == List::None {
            flow.list = List::New;
            src.new_flows.push_back(idx as u32);
        }
        src.deficit = (src.deficit + i64::from(refund)).min(quantum);
        if src.list == List::None {
            src.list = List::New;
            self.new_sources.push_back(source);
        }
    }

    /// Drops a batch from the head of the fattest flow of the fattest source. Returns false
    /// when nothing could be dropped.
    fn drop_fattest(&mut self, drop: &mut dyn FnMut(P, DropCause)) -> bool {
        let Some(s) = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.backlog)))
            .max_by_key(|(_, b)| *b)
            .filter(|(_, b)| *b > 0)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let mut t = self.totals();
        let batch = self.params.drop_batch.max(1);
        let Some(src) = self.sources[s].as_mut() else {
            return false;
        };
        let Some(idx) = src
            .flows
            .iter()
            .enumerate()
            .max_by_key(|(_, f)| f.backlog)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let threshold = src.flows[idx].backlog / 2;
        let mut dropped_mem = 0u64;
        let mut n = 0u32;
        while (n as usize) < batch && dropped_mem < threshold.max(1) {
            let Some(p) = src.pop(idx, &mut t) else { break };
            dropped_mem += u64::from(p.mem_size());
            n += 1;
            drop(p, DropCause::Overflow);
        }
        src.flows[idx].codel.count = src.flows[idx].codel.count.saturating_add(n);
        self.stats.overflow_drops += u64::from(n);
        self.set_totals(t);
        n > 0
    }

    /// Takes the next packet to deliver at time `now` (ns). Packets CoDel drops on the way
    /// are handed to `drop`.
    pub fn dequeue(&mut self, now: u64, drop: &mut dyn FnMut(P, DropCause)) -> Option<P> {
        self.dequeue_flow(now, drop).map(|(p, _)| p)
    }

    /// [`FqCodel::dequeue`], also saying which flow queue the packet came from.
    pub fn dequeue_flow(
        &mut self,
        now: u64,
        drop: &mut dyn FnMut(P, DropCause),
    ) -> Option<(P, FlowId)> {
        let params = self.params;
        let mut t = self.totals();
        let result = loop {
            let (sid, from_new) = if let Some(&s) = self.new_sources.front() {
                (s as usize, true)
            } else if let Some(&s) = self.old_sources.front() {
                (s as usize, false)
            } else {
                break None;
            };
            let Some(src) = self.sources.get_mut(sid).and_then(|s| s.as_mut()) else {
                // A removed source: forget the list entry.
                if from_new {
                    self.new_sources.pop_front();
                } else {
                    self.old_sources.pop_front();
                }
                continue;
            };
            if src.deficit <= 0 {
                src.deficit += i64::from(params.quantum);
                src.list = List::Old;
                if from_new {
                    self.new_sources.pop_front();
                } else {
                    self.old_sources.pop_front();
                }
                self.old_sources.push_back(sid as u32);
                continue;
            }
            match src.dequeue(&params, now, &mut t, &mut self.stats, drop) {
                Some((p, bucket)) => {
                    src.deficit -= i64::from(p.size());
                    let flow = FlowId {
                        source: sid as u32,
                        bucket: bucket as u32,
                    };
                    break Some((p, flow));
                }
                None => {
                    if from_new {
                        self.new_sources.pop_front();
                    } else {
                        self.old_sources.pop_front();
                    }
                    if from_new && !self.old_sources.is_empty() {
                        src.list = List::Old;
                        self.old_sources.push_back(sid as u32);
                    } else {
                        src.list = List::None;
                    }
                }
            }
        };
        self.set_totals(t);
        if let Some((p, _)) = &result {
            let sojourn = now.saturating_sub(p.enqueued_at());
            self.stats.max_sojourn_ns = self.stats.max_sojourn_ns.max(sojourn);
        }
        result
    }

    /// Drops everything queued from `source` (the source port went away).
    pub fn remove_source(&mut self, source: u32, drop: &mut dyn FnMut(P, DropCause)) {
        let Some(slot) = self.sources.get_mut(source as usize) else {
            return;
        };
        let Some(src) = slot.take() else { return };
        for flow in src.flows {
            for p in flow.queue {
                self.mem -= u64::from(p.mem_size());
                self.bytes -= u64::from(p.size());
                self.packets -= 1;
                drop(p, DropCause::Overflow);
            }
        }
        self.new_sources.retain(|s| *s != source);
        self.old_sources.retain(|s| *s != source);
    }

    /// Drops everything.
    pub fn clear(&mut self, drop: &mut dyn FnMut(P, DropCause)) {
        for s in 0..self.sources.len() {
            self.remove_source(s as u32, drop);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct P {
        pub size: u32,
        pub ts: u64,
        pub ect: bool,
        pub ce: bool,
        pub tag: u32,
    }

    impl Packet for P {
        fn size(&self) -> u32 {
            self.size
        }
        fn mem_size(&self) -> u32 {
            self.size
        }
        fn enqueued_at(&self) -> u64 {
            self.ts
        }
        fn mark_ce(&mut self) -> bool {
            if self.ect {
                self.ce = true;
            }
            self.ect
        }
    }

    fn p(size: u32, ts: u64, tag: u32) -> P {
        P {
            size,
            ts,
            ect: false,
            ce: false,
            tag,
        }
    }

    fn no_drop(_: P, _: DropCause) {
        panic!("unexpected drop");
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn test_fq_codel_single_flow_is_fifo() {
        let mut q = FqCodel::new(Params::default());
        for i in 0..5 {
            q.enqueue(0, 1, p(100, 0, i), &mut no_drop);
        }
        let order: Vec<u32> = (0..5)
            .map(|_| q.dequeue(0, &mut no_drop).unwrap().tag)
            .collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert!(q.dequeue(0, &mut no_drop).is_none());
        assert!(q.is_empty());
        assert_eq!(q.mem_bytes(), 0);
    }

    #[test]
    fn test_fq_codel_sparse_flow_overtakes_bulk_backlog() {
        let mut q = FqCodel::new(Params::default());
        for i in 0..100 {
            q.enqueue(0, 0x1000_0000, p(1500, 0, i), &mut no_drop);
        }
        // Serve a bit so the bulk flow moves to the old list.
        for _ in 0..3 {
            q.dequeue(0, &mut no_drop).unwrap();
        }
        q.enqueue(0, 0x9000_0000, p(100, 0, 999), &mut no_drop);
        assert_eq!(q.dequeue(0, &mut no_drop).unwrap().tag, 999);
    }

    #[test]
    fn test_fq_codel_sparse_source_overtakes_bulk_source() {
        let mut q = FqCodel::new(Params::default());
        for i in 0..100 {
            q.enqueue(1, 5, p(1500, 0, i), &mut no_drop);
        }
        for _ in 0..3 {
            q.dequeue(0, &mut no_drop).unwrap();
        }
        q.enqueue(2, 5, p(100, 0, 999), &mut no_drop);
        assert_eq!(q.dequeue(0, &mut no_drop).unwrap().tag, 999);
    }

    #[test]
    fn test_fq_codel_sources_share_bytes_fairly_whatever_their_flow_count() {
        let mut q = FqCodel::new(Params::default());
        // Source 1: 8 flows; source 2: one flow. Both backlogged.
        for i in 0..400u32 {
            q.enqueue(
                1,
                i.wrapping_mul(0x1357_9bdf) % 8 * 0x2000_0000,
                p(1000, 0, 1),
                &mut no_drop,
            );
            q.enqueue(2, 7, p(1000, 0, 2), &mut no_drop);
        }
        let mut bytes = [0u64; 3];
        for _ in 0..400 {
            let pk = q.dequeue(0, &mut no_drop).unwrap();
            bytes[pk.tag as usize] += u64::from(pk.size);
        }
        let share = bytes[1] as f64 / (bytes[1] + bytes[2]) as f64;
        assert!((0.45..=0.55).contains(&share), "source 1 share {share}");
    }

    #[test]
    fn test_fq_codel_flows_share_bytes_fairly_within_a_source() {
        let mut q = FqCodel::new(Params::default());
        for _ in 0..300 {
            q.enqueue(1, 0x1000_0000, p(1500, 0, 1), &mut no_drop);
            q.enqueue(1, 0x1000_0000, p(1500, 0, 1), &mut no_drop);
            q.enqueue(1, 0xa000_0000, p(300, 0, 2), &mut no_drop);
        }
        let mut bytes = [0u64; 3];
        for _ in 0..300 {
            let pk = q.dequeue(0, &mut no_drop).unwrap();
            bytes[pk.tag as usize] += u64::from(pk.size);
        }
        let share = bytes[1] as f64 / (bytes[1] + bytes[2]) as f64;
        assert!((0.4..=0.6).contains(&share), "flow 1 share {share}");
    }

    #[test]
    fn test_fq_codel_overflow_drops_from_fattest_flow_head() {
        let params = Params {
            limit_bytes: 10_000,
            ..Params::default()
        };
        let mut q = FqCodel::new(params);
        let mut dropped = Vec::new();
        for i in 0..9 {
            q.enqueue(1, 1, p(1000, 0, i), &mut |pk, c| dropped.push((pk.tag, c)));
        }
        q.enqueue(2, 2, p(1000, 0, 100), &mut |pk, c| {
            dropped.push((pk.tag, c))
        });
        assert!(dropped.is_empty());
        q.enqueue(2, 2, p(1000, 0, 101), &mut |pk, c| {
            dropped.push((pk.tag, c))
        });
        // The fat flow (source 1) loses from its head; source 2 keeps its packets.
        assert!(!dropped.is_empty());
        assert!(
            dropped
                .iter()
                .all(|(tag, c)| *tag < 9 && *c == DropCause::Overflow)
        );
        assert_eq!(dropped[0].0, 0);
        assert!(q.mem_bytes() <= 10_000);
        assert_eq!(q.source_backlog(2), 2000);
        assert_eq!(q.stats().overflow_drops, dropped.len() as u64);
    }

    #[test]
    fn test_codel_does_not_drop_below_target() {
        let mut q = FqCodel::new(Params::default());
        for i in 0..1000u64 {
            for _ in 0..4 {
                q.enqueue(0, 1, p(1500, i * 10 * MS, 0), &mut no_drop);
            }
            // Each packet waits 4 ms < 5 ms target, with a backlog above one MTU.
            for _ in 0..4 {
                q.dequeue(i * 10 * MS + 4 * MS, &mut no_drop).unwrap();
            }
        }
        assert_eq!(q.stats().codel_drops, 0);
    }

    #[test]
    fn test_codel_drops_after_an_interval_above_target() {
        let mut q = FqCodel::new(Params::default());
        let mut drops = 0u64;
        // Arrivals at 2x the service rate: the standing queue grows past target.
        let mut t = 0u64;
        for i in 0..1000u64 {
            let mut count = |_: P, c: DropCause| {
                assert_eq!(c, DropCause::Codel);
                drops += 1;
            };
            q.enqueue(0, 1, p(1500, t, 0), &mut count);
            q.enqueue(0, 1, p(1500, t, 0), &mut count);
            t = i * MS;
            let _ = q.dequeue(t, &mut count);
        }
        assert!(drops > 0);
        assert_eq!(q.stats().codel_drops, drops);
        assert!(q.stats().max_sojourn_ns > 5 * MS);
    }

    #[test]
    fn test_codel_with_extreme_interval_and_clock_does_not_overflow() {
        // The control law and the re-entry window must saturate, not panic (release builds
        // keep overflow checks), whatever interval the command line passed.
        for interval_ns in [u64::MAX, u64::MAX / 3] {
            let mut q = FqCodel::new(Params {
                target_ns: 1,
                interval_ns,
                ..Params::default()
            });
            let mut t = u64::MAX - 4000 * MS;
            for _ in 0..2000u64 {
                q.enqueue(0, 1, p(1500, t, 0), &mut |_, _| {});
                q.enqueue(0, 1, p(1500, t, 0), &mut |_, _| {});
                t += MS;
                let _ = q.dequeue(t, &mut |_, _| {});
            }
            assert!(q.stats().max_sojourn_ns > 0);
        }
    }

    #[test]
    fn test_codel_marks_ecn_capable_instead_of_dropping() {
        let mut q = FqCodel::new(Params::default());
        let mut t = 0u64;
        let mut marked = 0;
        for i in 0..1000u64 {
            let mut pk = p(1500, t, 0);
            pk.ect = true;
            q.enqueue(0, 1, pk.clone(), &mut no_drop);
            q.enqueue(0, 1, pk, &mut no_drop);
            t = i * MS;
            if q.dequeue(t, &mut no_drop).unwrap().ce {
                marked += 1;
            }
        }
        assert!(marked > 0);
        assert_eq!(q.stats().codel_drops, 0);
        assert_eq!(q.stats().codel_marks, marked);
    }

    #[test]
    fn test_remove_source_drops_its_packets_only() {
        let mut q = FqCodel::new(Params::default());
        q.enqueue(1, 1, p(100, 0, 1), &mut no_drop);
        q.enqueue(2, 1, p(100, 0, 2), &mut no_drop);
        let mut n = 0;
        q.remove_source(1, &mut |_, _| n += 1);
        assert_eq!(n, 1);
        assert_eq!(q.dequeue(0, &mut no_drop).unwrap().tag, 2);
        assert!(q.dequeue(0, &mut no_drop).is_none());
    }

    #[test]
    fn test_fq_codel_requeued_frames_go_first_in_their_flow_and_let_sparse_flows_in() {
        let mut q = FqCodel::new(Params::default());
        // A bulk flow with a "segment" (tag 1) and a later packet (tag 2).
        q.enqueue(1, 0x1000_0000, p(30000, 0, 1), &mut no_drop);
        q.enqueue(1, 0x1000_0000, p(1500, 0, 2), &mut no_drop);
        let seg = q.dequeue(1, &mut no_drop).expect("segment");
        assert_eq!(seg.tag, 1);
        // Software segmentation: 20 frames, back at the head of the flow.
        let frames: Vec<P> = (0..20).map(|i| p(1500, 0, 100 + i)).collect();
        q.requeue_front(1, 0x1000_0000, frames, 30000);
        assert_eq!(q.len(), 21);
        // A sparse packet from another source arrives.
        q.enqueue(2, 0x9000_0000, p(100, 0, 7), &mut no_drop);
        let order: Vec<u32> = std::iter::from_fn(|| q.dequeue(2, &mut no_drop))
            .map(|p| p.tag)
            .collect();
        let sparse_at = order
            .iter()
            .position(|&t| t == 7)
            .expect("sparse delivered");
        assert!(
            sparse_at <= 2,
            "the sparse packet goes between the frames: {order:?}"
        );
        let bulk: Vec<u32> = order.into_iter().filter(|&t| t != 7).collect();
        let mut want: Vec<u32> = (100..120).collect();
        want.push(2);
        assert_eq!(
            bulk, want,
            "frames in order, before the flow's later packet"
        );
        assert_eq!(q.backlog_bytes(), 0);
    }
}
