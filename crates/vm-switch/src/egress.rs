//! The guest end of a port's egress: what FQ-CoDel hands on next, given what DQL lets into the
//! guest's RX ring now. Shared by the backend and the bench's simulation, so the simulation
//! runs exactly the backend's rule.
//!
//! An offload segment the guest can take whole goes whole when DQL allows it
//! ([`Dql::plan_segment`]). When it does not fit yet but will once the guest has consumed a
//! little more, it waits beside the scheduler: other flows are served meanwhile, new (sparse)
//! ones first as always, and the packets of its own flow queue stay behind it, so nothing is
//! reordered. When the round-robin comes back to the waiting segment's flow queue, delivery
//! pauses until the segment goes (so flows behind it in the round wait at most that long,
//! well under a millisecond of the guest's work). Only a segment that could never fit whole
//! at the guest's pace is split. Splitting a
//! segment because room happened to be short (the usual case once DQL holds a bulk flow back:
//! room opens a buffer at a time) turned one segment into up to 44 frames for the guest to
//! take in one by one.

#![forbid(unsafe_code)]

use crate::dql::{Dql, SegmentPlan};
use crate::sched::{DropCause, FlowId, FqCodel, Packet, Params, SchedStats};

/// What the caller's classifier says about a packet just dequeued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class<T> {
    /// Goes to the guest as it is.
    Plain(T),
    /// An offload segment that the guest can take whole: whole, waiting or split as DQL
    /// allows.
    Segment(T),
    /// An offload segment the guest cannot take: split it.
    Split(T),
    /// Drop it (the classifier has counted why).
    Drop,
}

/// What to do next ([`Egress::next`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Step<P, T> {
    /// Hand this to the guest as it is (a segment: whole).
    Deliver(P, T),
    /// Segment this in software and put the frames back with [`Egress::requeue_front`].
    Split(P, T),
    /// A segment waits for the guest to consume more: look again once it has (or after a
    /// re-check delay).
    Wait,
    /// Nothing is queued.
    Empty,
}

/// The segment waiting for room.
#[derive(Debug)]
struct Waiting<P, T> {
    packet: P,
    info: T,
    flow: FlowId,
}

/// What became of offload segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    /// Segments that waited for room, then went whole or were split.
    pub waited: u64,
    /// Segments handed on to be split: the guest cannot take them ([`Class::Split`]), or not
    /// whole at its pace.
    pub split: u64,
}

/// FQ-CoDel plus at most one offload segment waiting for room to go whole.
#[derive(Debug)]
pub struct Egress<P, T> {
    fq: FqCodel<P>,
    waiting: Option<Waiting<P, T>>,
    counts: SegmentCounts,
}

impl<P: Packet, T> Egress<P, T> {
    /// An empty egress.
    pub fn new(params: Params) -> Self {
        Egress {
            fq: FqCodel::new(params),
            waiting: None,
            counts: SegmentCounts::default(),
        }
    }

    /// Queues a packet (see [`FqCodel::enqueue`]).
    pub fn enqueue(
        &mut self,
        source: u32,
        flow_hash: u32,
        p: P,
        drop: &mut dyn FnMut(P, DropCause),
    ) {
        self.fq.enqueue(source, flow_hash, p, drop);
    }

    /// Puts frames back at the head of their flow (see [`FqCodel::requeue_front`]).
    pub fn requeue_front(&mut self, source: u32, flow_hash: u32, packets: Vec<P>, refund: u32) {
        self.fq.requeue_front(source, flow_hash, packets, refund);
    }

    /// Whether nothing waits, in the scheduler or beside it.
    pub fn is_empty(&self) -> bool {
        self.fq.is_empty() && self.waiting.is_none()
    }

    /// Bytes waiting, in the scheduler and beside it.
    pub fn backlog_bytes(&self) -> u64 {
        self.fq.backlog_bytes()
            + self
                .waiting
                .as_ref()
                .map_or(0, |w| u64::from(w.packet.size()))
    }

    /// What became of the offload segments so far.
    pub fn counts(&self) -> SegmentCounts {
        self.counts
    }

    /// The scheduler's counters.
    pub fn stats(&self) -> SchedStats {
        self.fq.stats()
    }

    /// Drops everything from `source` (the source port went away), the waiting segment too
    /// if it is that source's (as [`DropCause::Overflow`], like the scheduler's).
    pub fn remove_source(&mut self, source: u32, drop: &mut dyn FnMut(P, DropCause)) {
        if self
            .waiting
            .as_ref()
            .is_some_and(|w| w.flow.source == source)
            && let Some(w) = self.waiting.take()
        {
            drop(w.packet, DropCause::Overflow);
        }
        self.fq.remove_source(source, drop);
    }

    /// Drops everything.
    pub fn clear(&mut self, drop: &mut dyn FnMut(P, DropCause)) {
        if let Some(w) = self.waiting.take() {
            drop(w.packet, DropCause::Overflow);
        }
        self.fq.clear(drop);
    }

    /// The next thing to do for a guest whose DQL state is `dql`. `classify` is asked once
    /// about each packet dequeued (not again about a segment that waited). Packets CoDel
    /// drops go to `drop`; packets classified [`Class::Drop`] are dropped here. Work is
    /// bounded by what is queued: each packet is dequeued at most once per call, and the call
    /// returns at the first packet to hand on or to wait.
    pub fn next(
        &mut self,
        dql: &Dql,
        now: u64,
        classify: &mut dyn FnMut(&P) -> Class<T>,
        drop: &mut dyn FnMut(P, DropCause),
    ) -> Step<P, T> {
        let ready = self
            .waiting
            .as_ref()
            .map(|w| dql.plan_segment(u64::from(w.packet.size())));
        if let Some(plan @ (SegmentPlan::Whole | SegmentPlan::Split)) = ready
            && let Some(w) = self.waiting.take()
        {
            if plan == SegmentPlan::Whole {
                return Step::Deliver(w.packet, w.info);
            }
            self.counts.split += 1;
            return Step::Split(w.packet, w.info);
        }
        loop {
            let Some((p, flow)) = self.fq.dequeue_flow(now, drop) else {
                return if self.waiting.is_some() {
                    Step::Wait
                } else {
                    Step::Empty
                };
            };
            if self.waiting.as_ref().is_some_and(|w| w.flow == flow) {
                // Its flow queue's next packet stays behind the waiting segment.
                let size = p.size();
                self.fq.requeue_front_at(flow, vec![p], size);
                return Step::Wait;
            }
            let info = match classify(&p) {
                Class::Plain(info) => return Step::Deliver(p, info),
                Class::Split(info) => {
                    self.counts.split += 1;
                    return Step::Split(p, info);
                }
                Class::Drop => continue,
                Class::Segment(info) => info,
            };
            match dql.plan_segment(u64::from(p.size())) {
                SegmentPlan::Whole => return Step::Deliver(p, info),
                SegmentPlan::Split => {
                    self.counts.split += 1;
                    return Step::Split(p, info);
                }
                SegmentPlan::Wait if self.waiting.is_none() => {
                    self.counts.waited += 1;
                    self.waiting = Some(Waiting {
                        packet: p,
                        info,
                        flow,
                    });
                }
                SegmentPlan::Wait => {
                    // A second segment that must wait goes back to the head of its flow.
                    let size = p.size();
                    self.fq.requeue_front_at(flow, vec![p], size);
                    return Step::Wait;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::tests::P;

    const MS: u64 = 1_000_000;
    const SEG: u32 = 65_536;

    fn p(size: u32, tag: u32) -> P {
        P {
            size,
            ts: 0,
            ect: false,
            ce: false,
            tag,
        }
    }

    /// Frames above an MTU are segments the guest takes whole.
    fn classify(p: &P) -> Class<u32> {
        if p.size > 1514 {
            Class::Segment(p.tag)
        } else {
            Class::Plain(p.tag)
        }
    }

    fn no_drop(_: P, _: DropCause) {
        panic!("unexpected drop");
    }

    /// A 200 KB limit with 190 KB in flight (10 KB of room), for a guest that consumes
    /// `bpms` bytes/ms. Returns the DQL state and the time of its last observation.
    fn busy_guest(bpms: u64) -> (Dql, u64) {
        let mut d = Dql::new(200_000, 200_000, 1000 * MS);
        d.queued(190_000 + bpms);
        d.completed(0, MS);
        d.completed(bpms, 2 * MS);
        assert_eq!(d.avail(), 10_000);
        (d, 2 * MS)
    }

    /// The guest consumes `bytes` more over `ns`, at the rate it had.
    fn consume(d: &mut Dql, now: &mut u64, bytes: u64, ns: u64) {
        *now += ns;
        d.completed(bytes, *now);
    }

    fn next(e: &mut Egress<P, u32>, d: &Dql) -> Step<P, u32> {
        e.next(d, 0, &mut classify, &mut no_drop)
    }

    fn tag(s: Step<P, u32>) -> Option<(u32, u32)> {
        match s {
            Step::Deliver(p, t) => {
                assert_eq!(p.tag, t, "the classifier's info comes with its packet");
                Some((p.tag, p.size))
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn test_a_segment_waits_whole_while_other_flows_pass_and_its_own_stays_behind() {
        // 400 KB/ms (3.2 Gbit/s): 64 KiB is 164 us of the guest's work, 100 us is 40 KB.
        let (mut d, mut now) = busy_guest(400_000);
        let mut e: Egress<P, u32> = Egress::new(Params::default());
        e.enqueue(1, 7, p(SEG, 1), &mut no_drop);
        e.enqueue(1, 7, p(1514, 2), &mut no_drop);
        e.enqueue(2, 9, p(100, 3), &mut no_drop);
        // 54 KB over the limit: more than 100 us of work, so not now, but it will fit.
        assert_eq!(d.plan_segment(u64::from(SEG)), SegmentPlan::Wait);
        // Another source's packet goes meanwhile; the segment's own flow does not.
        assert_eq!(tag(next(&mut e, &d)), Some((3, 100)));
        assert_eq!(next(&mut e, &d), Step::Wait);
        assert_eq!(next(&mut e, &d), Step::Wait, "still not, and nothing lost");
        assert!(!e.is_empty());
        assert_eq!(e.backlog_bytes(), u64::from(SEG) + 1514);
        // A new sparse flow arriving while it waits (a new source here) is served first too.
        e.enqueue(3, 11, p(90, 4), &mut no_drop);
        assert_eq!(tag(next(&mut e, &d)), Some((4, 90)));
        // The guest consumes 20 KB more: 30 KB of room, 34 KB over, within 100 us.
        consume(&mut d, &mut now, 20_000, 50_000);
        assert_eq!(tag(next(&mut e, &d)), Some((1, SEG)), "whole");
        assert_eq!(
            tag(next(&mut e, &d)),
            Some((2, 1514)),
            "then its flow, in order"
        );
        assert_eq!(next(&mut e, &d), Step::Empty);
        assert_eq!(
            e.counts(),
            SegmentCounts {
                waited: 1,
                split: 0
            }
        );
    }

    #[test]
    fn test_a_segment_that_can_never_go_whole_at_the_guest_s_pace_is_split() {
        // Larger than the limit.
        let (d, _) = busy_guest(400_000);
        let mut e: Egress<P, u32> = Egress::new(Params::default());
        e.enqueue(1, 7, p(200_001, 1), &mut no_drop);
        assert!(matches!(next(&mut e, &d), Step::Split(p, 1) if p.tag == 1));
        // A slow guest (50 Mbit/s): a 64 KiB segment is 10 ms of its work.
        let (d, _) = busy_guest(6_000);
        e.enqueue(1, 7, p(SEG, 2), &mut no_drop);
        assert!(matches!(next(&mut e, &d), Step::Split(p, 2) if p.tag == 2));
        // A plain frame and a segment that fits go as they are.
        e.enqueue(1, 7, p(1514, 3), &mut no_drop);
        e.enqueue(1, 7, p(9_000, 4), &mut no_drop);
        assert_eq!(tag(next(&mut e, &d)), Some((3, 1514)));
        assert_eq!(tag(next(&mut e, &d)), Some((4, 9_000)));
        assert_eq!(
            e.counts(),
            SegmentCounts {
                waited: 0,
                split: 2
            }
        );
    }

    #[test]
    fn test_a_waiting_segment_is_split_when_the_limit_shrinks_below_it() {
        let (d, _) = busy_guest(400_000);
        let mut e: Egress<P, u32> = Egress::new(Params::default());
        e.enqueue(1, 7, p(SEG, 1), &mut no_drop);
        assert_eq!(next(&mut e, &d), Step::Wait);
        // A limit of 60 KB can never hold it whole.
        let mut small = Dql::new(60_000, 60_000, 1000 * MS);
        small.queued(50_000);
        assert!(matches!(next(&mut e, &small), Step::Split(p, 1) if p.tag == 1));
        assert!(e.is_empty());
        assert_eq!(
            e.counts(),
            SegmentCounts {
                waited: 1,
                split: 1
            }
        );
    }

    #[test]
    fn test_a_second_segment_that_must_wait_goes_back_and_keeps_its_place() {
        let (mut d, mut now) = busy_guest(400_000);
        let mut e: Egress<P, u32> = Egress::new(Params::default());
        e.enqueue(1, 7, p(SEG, 1), &mut no_drop);
        e.enqueue(2, 9, p(SEG, 2), &mut no_drop);
        e.enqueue(2, 9, p(1514, 3), &mut no_drop);
        assert_eq!(next(&mut e, &d), Step::Wait);
        assert_eq!(next(&mut e, &d), Step::Wait);
        assert_eq!(e.backlog_bytes(), 2 * u64::from(SEG) + 1514);
        consume(&mut d, &mut now, 20_000, 50_000);
        assert_eq!(tag(next(&mut e, &d)), Some((1, SEG)));
        d.queued(u64::from(SEG));
        // Room again for the second one (the guest drained what it had).
        consume(&mut d, &mut now, 200_000, 500_000);
        assert_eq!(tag(next(&mut e, &d)), Some((2, SEG)));
        assert_eq!(tag(next(&mut e, &d)), Some((3, 1514)), "its flow, in order");
        assert_eq!(next(&mut e, &d), Step::Empty);
    }

    #[test]
    fn test_the_waiting_segment_goes_with_its_source_or_a_clear() {
        let (d, _) = busy_guest(400_000);
        let mut e: Egress<P, u32> = Egress::new(Params::default());
        e.enqueue(1, 7, p(SEG, 1), &mut no_drop);
        e.enqueue(2, 9, p(100, 2), &mut no_drop);
        assert_eq!(tag(next(&mut e, &d)), Some((2, 100)));
        assert_eq!(next(&mut e, &d), Step::Wait);
        let mut dropped = Vec::new();
        e.remove_source(2, &mut |p, _| dropped.push(p.tag));
        assert!(dropped.is_empty(), "another source's removal keeps it");
        e.remove_source(1, &mut |p, _| dropped.push(p.tag));
        assert_eq!(dropped, [1]);
        assert!(e.is_empty());
        assert_eq!(next(&mut e, &d), Step::Empty);
        e.enqueue(1, 7, p(SEG, 3), &mut no_drop);
        assert_eq!(next(&mut e, &d), Step::Wait);
        e.clear(&mut |p, _| dropped.push(p.tag));
        assert_eq!(dropped, [1, 3]);
        assert_eq!(e.backlog_bytes(), 0);
    }

    #[test]
    fn test_a_packet_the_classifier_rejects_is_dropped_and_the_next_one_served() {
        let (d, _) = busy_guest(400_000);
        let mut e: Egress<P, u32> = Egress::new(Params::default());
        e.enqueue(1, 7, p(100, 1), &mut no_drop);
        e.enqueue(1, 7, p(100, 2), &mut no_drop);
        let mut asked = Vec::new();
        let step = e.next(
            &d,
            0,
            &mut |p: &P| {
                asked.push(p.tag);
                if p.tag == 1 {
                    Class::Drop
                } else {
                    Class::Plain(p.tag)
                }
            },
            &mut no_drop,
        );
        assert_eq!(tag(step), Some((2, 100)));
        assert_eq!(asked, [1, 2]);
        assert!(e.is_empty());
    }
}
