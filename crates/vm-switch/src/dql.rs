//! Dynamic queue limits (Linux `lib/dynamic_queue_limits.c`, the algorithm behind BQL), used
//! as a byte limit on what has been delivered into a guest's RX virtqueue but not yet
//! consumed by the guest.
//!
//! Everything above the limit stays in FQ-CoDel, where a sparse flow can overtake a bulk one;
//! what is already in the guest's ring cannot be reordered any more. The limit grows when the
//! guest ran dry while the switch held packets back (starvation), and shrinks by the smallest
//! slack seen over a hold time when the ring never ran dry. Time is passed in (ns) so the
//! simulation can run it on a virtual clock.

#![forbid(unsafe_code)]

/// DQL state. Counters are free-running byte counts.
#[derive(Debug, Clone)]
pub struct Dql {
    num_queued: u64,
    adj_limit: u64,
    last_obj_cnt: u64,
    limit: u64,
    num_completed: u64,
    prev_ovlimit: u64,
    prev_num_queued: u64,
    prev_last_obj_cnt: u64,
    lowest_slack: u64,
    slack_start_time: u64,
    min_limit: u64,
    max_limit: u64,
    slack_hold_time: u64,
    /// Consumption rate seen while the guest had work, bytes per ms (EWMA, 1/8); 0 until
    /// measured.
    rate_bpms: u64,
    /// When completions were last observed (ns), 0 before the first.
    last_completed_ns: u64,
}

/// How long an offload segment may overrun the limit and still go whole, in time at the
/// guest's measured consumption rate ([`Dql::fits_whole`]).
pub const WHOLE_OVERRUN_NS: u64 = 100_000;

/// [`Dql::plan_segment`]'s answer for an offload segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentPlan {
    /// Hand it to the guest whole now.
    Whole,
    /// Leave it at the head of its flow until the guest has consumed enough.
    Wait,
    /// Segment it in software into MSS-sized frames.
    Split,
}

/// How long the guest may take to consume an offload segment, at its measured rate, for the
/// segment to wait for room whole rather than be split ([`Dql::plan_segment`]). A sparse
/// packet that arrives just after it waits that long behind it at most; and DQL, which
/// learns a limit of about a segment plus what the guest consumes between two looks, stays
/// within a fraction of a millisecond of the guest's work.
pub const WHOLE_WAIT_NS: u64 = 250_000;

impl Dql {
    /// A limit that starts at `min_limit` and stays within `[min_limit, max_limit]`; slack is
    /// measured over `slack_hold_ns`.
    pub fn new(min_limit: u64, max_limit: u64, slack_hold_ns: u64) -> Self {
        Dql {
            num_queued: 0,
            adj_limit: min_limit,
            last_obj_cnt: 0,
            limit: min_limit,
            num_completed: 0,
            prev_ovlimit: 0,
            prev_num_queued: 0,
            prev_last_obj_cnt: 0,
            lowest_slack: u64::MAX,
            slack_start_time: 0,
            min_limit,
            max_limit: max_limit.max(min_limit),
            slack_hold_time: slack_hold_ns,
            rate_bpms: 0,
            last_completed_ns: 0,
        }
    }

    /// Records `count` bytes handed to the guest.
    pub fn queued(&mut self, count: u64) {
        self.last_obj_cnt = count;
        self.num_queued += count;
    }

    /// Bytes that may still be handed over before the limit is reached (may be negative).
    pub fn avail(&self) -> i64 {
        self.adj_limit as i64 - self.num_queued as i64
    }

    /// Bytes delivered and not yet consumed.
    pub fn in_flight(&self) -> u64 {
        self.num_queued - self.num_completed
    }

    /// The current limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether an offload segment of `len` bytes may go to the guest whole: when it fits what
    /// the limit allows now, or when the limit is not yet reached and the part beyond it
    /// takes the guest at most [`WHOLE_OVERRUN_NS`] to consume at its measured rate. So a
    /// fast guest gets its segments whole (splitting would cost it a per-frame path for every
    /// MSS), while a slow one never sees the limit overrun by more than a quarter millisecond
    /// of its own work, and DQL does not learn segment-sized bursts there. Otherwise the
    /// caller segments it in software and the frames go back to their flow. The backend and
    /// the bench's simulation both decide with this.
    pub fn fits_whole(&self, len: u64) -> bool {
        let avail = self.avail();
        if avail >= len as i64 {
            return true;
        }
        if avail <= 0 {
            return false;
        }
        let over = len - avail as u64;
        // over / rate (ms) <= WHOLE_OVERRUN_NS (ns)  <=>  over * 1e6 <= rate * WHOLE_OVERRUN_NS
        over.saturating_mul(1_000_000) <= self.rate_bpms.saturating_mul(WHOLE_OVERRUN_NS)
    }

    /// What to do with an offload segment of `len` bytes at the head of the egress:
    /// - [`SegmentPlan::Whole`] when [`Dql::fits_whole`];
    /// - [`SegmentPlan::Wait`] when it does not fit yet but will: it is within the limit, so
    ///   room for it opens as the guest consumes, and the guest takes at most
    ///   [`WHOLE_WAIT_NS`] to consume it at its measured rate. It may go as soon as `len` less
    ///   [`WHOLE_OVERRUN_NS`] of the guest's work is free, while the guest still has at least
    ///   that much work queued, so a guest seen in time does not run dry waiting for it;
    /// - [`SegmentPlan::Split`] otherwise: a slow guest, or a segment above the limit.
    ///
    /// Nothing goes in beyond what [`Dql::fits_whole`] allows either way, so waiting does not
    /// lengthen the RX ring; it only avoids cutting a segment because room happened to be
    /// short. See [`crate::egress`].
    pub fn plan_segment(&self, len: u64) -> SegmentPlan {
        if self.fits_whole(len) {
            SegmentPlan::Whole
        } else if len <= self.limit
            && len.saturating_mul(1_000_000) <= self.rate_bpms.saturating_mul(WHOLE_WAIT_NS)
        {
            SegmentPlan::Wait
        } else {
            SegmentPlan::Split
        }
    }

    /// Records that the guest consumed `count` more bytes, at time `now` (ns).
    pub fn completed(&mut self, count: u64, now: u64) {
        let num_queued = self.num_queued;
        let count = count.min(num_queued - self.num_completed);
        // The guest had work since the last observation: a sample of how fast it consumes
        // (low if it ran dry in between, which only makes fits_whole more careful).
        if self.last_completed_ns != 0 && now > self.last_completed_ns && self.in_flight() > 0 {
            let sample = count.saturating_mul(1_000_000) / (now - self.last_completed_ns);
            self.rate_bpms = if self.rate_bpms == 0 {
                sample
            } else {
                (self.rate_bpms * 7 + sample) / 8
            };
        }
        self.last_completed_ns = now;
        let completed = self.num_completed + count;
        let mut limit = self.limit;
        let mut ovlimit = (num_queued - self.num_completed).saturating_sub(limit);
        let inprogress = num_queued - completed;
        let prev_inprogress = self.prev_num_queued.saturating_sub(self.num_completed);
        let all_prev_completed = completed >= self.prev_num_queued;

        if (ovlimit > 0 && inprogress == 0) || (self.prev_ovlimit > 0 && all_prev_completed) {
            // Starved: grow by what was both queued and completed in the last interval, plus
            // the previous over-limit.
            limit += completed.saturating_sub(self.prev_num_queued) + self.prev_ovlimit;
            self.slack_start_time = now;
            self.lowest_slack = u64::MAX;
        } else if inprogress > 0 && prev_inprogress > 0 && !all_prev_completed {
            // Busy the whole interval: shrink by the lowest slack over the hold time.
            let slack =
                (limit + self.prev_ovlimit).saturating_sub(2 * (completed - self.num_completed));
            let slack_last_objs = if self.prev_ovlimit > 0 {
                self.prev_last_obj_cnt.saturating_sub(self.prev_ovlimit)
            } else {
                0
            };
            let slack = slack.max(slack_last_objs);
            self.lowest_slack = self.lowest_slack.min(slack);
            if now > self.slack_start_time + self.slack_hold_time {
                limit = limit.saturating_sub(self.lowest_slack);
                self.slack_start_time = now;
                self.lowest_slack = u64::MAX;
            }
        }
        let limit = limit.clamp(self.min_limit, self.max_limit);
        if limit != self.limit {
            self.limit = limit;
            ovlimit = 0;
        }
        self.adj_limit = limit + completed;
        self.prev_ovlimit = ovlimit;
        self.prev_last_obj_cnt = self.last_obj_cnt;
        self.num_completed = completed;
        self.prev_num_queued = num_queued;
    }

    /// Forgets everything in flight (the guest's ring was reset).
    pub fn reset(&mut self) {
        *self = Dql::new(self.min_limit, self.max_limit, self.slack_hold_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn test_dql_starts_at_min_and_blocks_over_limit() {
        let mut d = Dql::new(3000, 100_000, 1000 * MS);
        assert_eq!(d.avail(), 3000);
        d.queued(1500);
        d.queued(1500);
        assert_eq!(d.avail(), 0);
        assert_eq!(d.in_flight(), 3000);
    }

    #[test]
    fn test_dql_grows_when_consumer_starves() {
        let mut d = Dql::new(3000, 100_000, 1000 * MS);
        let mut now = 0;
        // The consumer takes everything between checks while we keep the queue over the
        // limit: each completion finds the queue empty.
        for _ in 0..10 {
            while d.avail() > 0 {
                d.queued(1500);
            }
            d.queued(1500); // one over the limit, as when a batch overshoots
            now += MS;
            d.completed(d.in_flight(), now);
        }
        assert!(d.limit() > 3000, "limit {}", d.limit());
    }

    #[test]
    fn test_dql_shrinks_back_when_consumer_always_has_slack() {
        let mut d = Dql::new(3000, 1_000_000, 10 * MS);
        let mut now = 0;
        for _ in 0..20 {
            while d.avail() > 0 {
                d.queued(1500);
            }
            d.queued(1500);
            now += MS;
            d.completed(d.in_flight(), now);
        }
        let grown = d.limit();
        // Now the consumer completes only a small part each time: the queue never empties.
        for _ in 0..500 {
            while d.avail() > 0 {
                d.queued(1500);
            }
            now += MS;
            d.completed(1500, now);
        }
        assert!(d.limit() < grown, "grown {grown}, now {}", d.limit());
        assert!(d.limit() >= 3000);
    }

    #[test]
    fn test_dql_completed_more_than_queued_is_clamped() {
        let mut d = Dql::new(3000, 100_000, MS);
        d.queued(100);
        d.completed(10_000, 1);
        assert_eq!(d.in_flight(), 0);
    }

    /// 40 KB of room under a 200 KB limit (100 KB in flight), after the guest consumed at
    /// `bpms` bytes/ms.
    fn at_rate(bpms: u64) -> Dql {
        let mut d = Dql::new(200_000, 200_000, 1000 * MS);
        d.queued(bpms + 100_000);
        d.completed(0, MS); // first observation: no rate yet
        d.completed(bpms, 2 * MS); // one ms of consumption
        d.queued(60_000);
        assert_eq!(d.avail(), 40_000);
        d
    }

    #[test]
    fn test_dql_segment_goes_whole_when_it_fits() {
        let d = at_rate(0);
        assert!(d.fits_whole(40_000));
        assert!(!d.fits_whole(40_001), "no measured rate: no overrun");
    }

    #[test]
    fn test_dql_segment_overruns_the_limit_only_by_a_fraction_of_a_millisecond_of_work() {
        // 300 KB/ms (2.4 Gbit/s): 100 us of work is 30 KB, so a 64 KiB segment with 40 KB of
        // room goes whole (24 KB over), one needing 31 KB more does not.
        let fast = at_rate(300_000);
        assert!(fast.fits_whole(65_536));
        assert!(!fast.fits_whole(71_000));
        // 6 KB/ms (50 Mbit/s): 100 us is 600 bytes.
        let slow = at_rate(6_000);
        assert!(slow.fits_whole(40_600));
        assert!(!slow.fits_whole(40_601));
        assert!(!slow.fits_whole(65_536));
    }

    #[test]
    fn test_dql_a_segment_waits_when_it_will_fit_soon_and_is_split_when_it_never_will() {
        // 300 KB/ms (2.4 Gbit/s), 40 KB of room under 200 KB: 71 KB overruns by more than
        // 100 us of work (30 KB), but it is within the limit and 237 us of work: wait.
        let fast = at_rate(300_000);
        assert_eq!(fast.plan_segment(40_000), SegmentPlan::Whole);
        assert_eq!(fast.plan_segment(65_536), SegmentPlan::Whole);
        assert_eq!(fast.plan_segment(71_000), SegmentPlan::Wait);
        assert_eq!(fast.plan_segment(75_000), SegmentPlan::Wait);
        // 76 KB would take the guest more than 250 us: split rather than wait for it.
        assert_eq!(fast.plan_segment(76_000), SegmentPlan::Split);
        // 6 KB/ms (50 Mbit/s): a 64 KiB segment is 11 ms of work. Never wait for it.
        let slow = at_rate(6_000);
        assert_eq!(slow.plan_segment(65_536), SegmentPlan::Split);
        assert_eq!(slow.plan_segment(1_500), SegmentPlan::Whole);
        // Larger than the limit: it could never fit, however fast the guest.
        let mut d = Dql::new(60_000, 60_000, 1000 * MS);
        d.queued(400_000 + 50_000);
        d.completed(0, MS);
        d.completed(400_000, 2 * MS);
        assert_eq!(d.plan_segment(60_001), SegmentPlan::Split);
        assert_eq!(d.plan_segment(59_000), SegmentPlan::Wait);
        // No measured rate yet: nothing waits.
        assert_eq!(at_rate(0).plan_segment(40_001), SegmentPlan::Split);
    }

    #[test]
    fn test_dql_never_overruns_a_full_limit() {
        let mut d = at_rate(300_000);
        d.queued(40_000);
        assert_eq!(d.avail(), 0);
        assert!(!d.fits_whole(1));
    }
}
