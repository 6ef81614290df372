//! Balloon stall detection with ChromeOS `mm::Balloon` semantics, sampled at poll ticks.
//!
//! After an inflating target is sent, progress is checked from 5 s on: if the balloon grew by
//! less than 15 MiB/s over the last 4 s or more while still more than 1 MiB short of its target,
//! the balloon is stalled (the guest driver is "out of puff"). ChromeOS checks every 5 s against
//! a reference point that only moves at those checks, so a fast start (the guest's free memory)
//! followed by a stall (only anon left) passes the first check and is caught 5 s later; here
//! the check runs at every poll tick over a sliding window of at least 4 s, which catches it at
//! the first tick 5 s after the inflation started. The
//! reaction is to deflate by 128 MiB from where the balloon is and to block inflation for 10 s,
//! doubling the block on consecutive stalls up to a cap. A balloon that shrinks by itself (the
//! guest's deflate-on-OOM notifier handing pages back) counts as a stall too.
//!
//! Time is a caller-supplied millisecond counter, so the simulator and tests are deterministic.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

const MIB: u64 = 1 << 20;

/// Stall detection constants (defaults from ChromeOS VMMMS, `vm_tools/concierge/mm/balloon.cc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallParams {
    /// How often progress is checked after an inflation (`kBalloonStallDetectionInterval`).
    pub interval_ms: Millis,
    /// Never call a balloon stalled before this long since the reference point.
    pub threshold_ms: Millis,
    /// Inflation slower than this (MiB/s) is a stall (`kBalloonStallRateMBps`).
    pub rate_mib_s: i64,
    /// Deflate by this much on a stall (`kBalloonStallBackoffSize`).
    pub backoff_bytes: u64,
    /// Block inflation this long after a stall.
    pub block_ms: Millis,
    /// Upper bound of the doubled block after consecutive stalls.
    pub block_max_ms: Millis,
    /// "Reached the target" window (page granularity of the driver's batches).
    pub reached_window: u64,
}

impl Default for StallParams {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            threshold_ms: 4_000,
            rate_mib_s: 15,
            backoff_bytes: 128 * MIB,
            block_ms: 10_000,
            block_max_ms: 300_000,
            reached_window: MIB,
        }
    }
}

/// What [`StallTracker::observe`] concluded from a fresh balloon size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallEvent {
    /// Nothing to report.
    None,
    /// The inflation reached its target; checking stopped.
    Reached,
    /// The inflation is too slow: back off to `backoff_target`.
    Stalled {
        /// Measured inflation rate in MiB/s (integer, may be negative).
        rate_mib_s: i64,
        /// The balloon size to set now (128 MiB below the current size, at least 0).
        backoff_target: u64,
    },
    /// The balloon shrank by itself (guest deflate-on-OOM): back off to `backoff_target`.
    Shrank {
        /// Balloon size at the previous sample.
        from: u64,
        /// Balloon size now.
        to: u64,
        /// The balloon size to set now.
        backoff_target: u64,
    },
}

/// Per-VM stall state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StallTracker {
    /// The last target sent to the VMM.
    pub target_sent: Option<u64>,
    /// Balloon sizes seen since the inflation started (time, bytes), oldest first.
    pub history: VecDeque<(Millis, u64)>,
    /// Whether an inflation is being watched.
    pub checking: bool,
    /// Progress is checked from this time on.
    pub next_check_at: Millis,
    /// Inflation is blocked until this time.
    pub blocked_until: Millis,
    /// Stalls since the last inflation that reached its target.
    pub consecutive: u32,
    /// Stalls since the VM appeared.
    pub total: u32,
    /// When the last stall was detected.
    pub last_stall_at: Option<Millis>,
    /// Balloon size at the previous observation.
    pub last_actual: Option<u64>,
}

impl StallTracker {
    /// Whether inflation is blocked at `now`.
    pub fn inflate_blocked(&self, now: Millis) -> bool {
        now < self.blocked_until
    }

    /// Milliseconds of inflation block left at `now`.
    pub fn blocked_for(&self, now: Millis) -> Millis {
        self.blocked_until.saturating_sub(now)
    }

    /// Feeds a fresh balloon size. Call once per tick, before deciding on a new target.
    pub fn observe(&mut self, p: &StallParams, now: Millis, actual: u64) -> StallEvent {
        let last = self.last_actual.replace(actual);
        // A drop the daemon did not ask for: deflate-on-OOM (or a guest driver reset).
        if let Some(last) = last
            && actual.saturating_add(p.reached_window) <= last
        {
            let explained = self
                .target_sent
                .is_some_and(|t| t < last && actual.saturating_add(p.reached_window) >= t);
            if !explained {
                let backoff_target = self.stall(p, now, actual);
                return StallEvent::Shrank {
                    from: last,
                    to: actual,
                    backoff_target,
                };
            }
        }
        if !self.checking {
            return StallEvent::None;
        }
        self.history.push_back((now, actual));
        // Keep what the window needs: the newest sample at least `threshold` old, and later ones.
        let horizon = now.saturating_sub(p.threshold_ms);
        while self.history.len() > 2 && self.history.get(1).is_some_and(|&(t, _)| t <= horizon) {
            self.history.pop_front();
        }
        if now < self.next_check_at {
            return StallEvent::None;
        }
        let target = self.target_sent.unwrap_or(0);
        if actual.saturating_add(p.reached_window) >= target {
            self.checking = false;
            self.consecutive = 0;
            self.history.clear();
            return StallEvent::Reached;
        }
        let Some(&(ref_time, ref_size)) = self.history.front() else {
            return StallEvent::None;
        };
        let elapsed = now.saturating_sub(ref_time);
        if elapsed < p.threshold_ms {
            return StallEvent::None;
        }
        let grown = i128::from(actual) - i128::from(ref_size);
        let rate =
            i64::try_from(grown * 1000 / i128::from(elapsed.max(1)) / i128::from(MIB)).unwrap_or(0);
        if rate < p.rate_mib_s {
            let backoff_target = self.stall(p, now, actual);
            return StallEvent::Stalled {
                rate_mib_s: rate,
                backoff_target,
            };
        }
        StallEvent::None
    }

    fn stall(&mut self, p: &StallParams, now: Millis, actual: u64) -> u64 {
        self.checking = false;
        self.history.clear();
        self.consecutive = self.consecutive.saturating_add(1);
        self.total = self.total.saturating_add(1);
        self.last_stall_at = Some(now);
        let doublings = self.consecutive.saturating_sub(1).min(30);
        let block = p
            .block_ms
            .saturating_mul(1u64 << doublings)
            .min(p.block_max_ms.max(p.block_ms));
        self.blocked_until = now.saturating_add(block);
        actual.saturating_sub(p.backoff_bytes)
    }

    /// Records that `target` was sent while the balloon was at `actual`.
    pub fn on_send(&mut self, p: &StallParams, now: Millis, actual: u64, target: u64) {
        let previous = self.target_sent.replace(target);
        if target <= actual {
            // A deflation (or no change): nothing to watch.
            self.checking = false;
            self.history.clear();
            return;
        }
        let reached_previous =
            previous.is_none_or(|prev| actual.saturating_add(p.reached_window) >= prev);
        if !self.checking || reached_previous {
            // A new inflation: a new reference point (ChromeOS: when the balloon had reached
            // the previous target; inflations stacked on a running one keep the old one).
            self.history.clear();
            self.history.push_back((now, actual));
            self.checking = true;
            self.next_check_at = now.saturating_add(p.interval_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = MIB;

    #[test]
    fn test_healthy_inflation_is_reached_not_stalled() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        assert_eq!(t.observe(&p, 0, 0), StallEvent::None);
        t.on_send(&p, 0, 0, 1000 * M);
        assert_eq!(t.observe(&p, 2000, 600 * M), StallEvent::None);
        assert_eq!(t.observe(&p, 4000, 900 * M), StallEvent::None);
        assert_eq!(t.observe(&p, 6000, 1000 * M), StallEvent::Reached);
        assert_eq!(t.total, 0);
        assert!(!t.inflate_blocked(6000));
    }

    #[test]
    fn test_slow_inflation_stalls_at_the_first_check_after_5s() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        t.observe(&p, 0, 0);
        t.on_send(&p, 0, 0, 2048 * M);
        // 5 MiB/s: the Out-of-puff regime.
        assert_eq!(t.observe(&p, 2000, 10 * M), StallEvent::None);
        assert_eq!(t.observe(&p, 4000, 20 * M), StallEvent::None);
        assert_eq!(
            t.observe(&p, 6000, 30 * M),
            StallEvent::Stalled {
                rate_mib_s: 5,
                backoff_target: 0
            }
        );
        assert!(t.inflate_blocked(6000));
        assert!(t.inflate_blocked(15_999));
        assert!(!t.inflate_blocked(16_000));
    }

    #[test]
    fn test_fast_start_then_stuck_is_caught_at_the_first_check() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        t.observe(&p, 0, 0);
        t.on_send(&p, 0, 0, 4096 * M);
        // 600 MiB of free memory goes at once, then nothing: ChromeOS's whole-window rate
        // (100 MiB/s) would pass; the sliding window sees the last 4 s.
        assert_eq!(t.observe(&p, 2000, 600 * M), StallEvent::None);
        assert_eq!(t.observe(&p, 4000, 601 * M), StallEvent::None);
        assert!(matches!(
            t.observe(&p, 6000, 602 * M),
            StallEvent::Stalled {
                backoff_target,
                ..
            } if backoff_target == 474 * M
        ));
    }

    #[test]
    fn test_steady_progress_keeps_checking_every_tick() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        t.observe(&p, 0, 0);
        t.on_send(&p, 0, 0, 4096 * M);
        for i in 1..=10u64 {
            // 40 MiB/s.
            assert_eq!(
                t.observe(&p, i * 2000, i * 80 * M),
                StallEvent::None,
                "tick {i}"
            );
        }
        assert!(t.checking);
        assert!(t.history.len() <= 4, "{:?}", t.history);
    }

    #[test]
    fn test_consecutive_stalls_double_the_block_up_to_the_cap() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        let mut now = 0;
        let mut blocks = Vec::new();
        t.observe(&p, now, 500 * M);
        for _ in 0..7 {
            let actual = t.last_actual.unwrap();
            t.on_send(&p, now, actual, actual + 1000 * M);
            now += 6000;
            match t.observe(&p, now, actual) {
                StallEvent::Stalled { backoff_target, .. } => {
                    blocks.push(t.blocked_for(now));
                    t.on_send(&p, now, actual, backoff_target);
                    now += t.blocked_for(now);
                    t.observe(&p, now, backoff_target);
                }
                other => panic!("expected a stall, got {other:?}"),
            }
        }
        assert_eq!(
            blocks,
            [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        // A successful inflation resets the doubling.
        let actual = t.last_actual.unwrap();
        t.on_send(&p, now, actual, actual + 10 * M);
        now += 6000;
        assert_eq!(t.observe(&p, now, actual + 10 * M), StallEvent::Reached);
        assert_eq!(t.consecutive, 0);
    }

    #[test]
    fn test_spontaneous_shrink_is_a_stall() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        t.observe(&p, 0, 0);
        t.on_send(&p, 0, 0, 1000 * M);
        t.observe(&p, 2000, 1000 * M);
        // deflate-on-OOM hands back 1 MiB.
        assert_eq!(
            t.observe(&p, 4000, 999 * M),
            StallEvent::Shrank {
                from: 1000 * M,
                to: 999 * M,
                backoff_target: 871 * M
            }
        );
        assert!(t.inflate_blocked(4000));
    }

    #[test]
    fn test_requested_deflation_is_not_a_shrink() {
        let p = StallParams::default();
        let mut t = StallTracker::default();
        t.observe(&p, 0, 1000 * M);
        t.on_send(&p, 0, 1000 * M, 200 * M);
        assert_eq!(t.observe(&p, 2000, 500 * M), StallEvent::None);
        assert_eq!(t.observe(&p, 4000, 200 * M), StallEvent::None);
        // ... but going below the requested size is.
        assert!(matches!(
            t.observe(&p, 6000, 150 * M),
            StallEvent::Shrank { .. }
        ));
    }

    #[test]
    fn test_shrink_without_any_request_is_a_stall() {
        // Daemon restarted with balloons inflated; the guest then OOMs.
        let p = StallParams::default();
        let mut t = StallTracker::default();
        t.observe(&p, 0, 2048 * M);
        assert!(matches!(
            t.observe(&p, 2000, 2040 * M),
            StallEvent::Shrank { .. }
        ));
    }
}
