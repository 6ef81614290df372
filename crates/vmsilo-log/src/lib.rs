//! Rate limiting for log lines that something outside the process can trigger (a guest, a
//! peer, a noisy host): one owner for the rule "nothing a guest does may flood the log".
//!
//! - [`Limiter`]: at most `burst` lines per `window`, then silence; it counts what it
//!   suppressed and hands the count to the next line it allows, so that line can say how many
//!   were dropped. Sans-IO: the caller passes the time ([`Moment`]: an [`Instant`], or a
//!   [`Duration`] since any fixed origin, such as a simulated clock).
//! - [`Sampler`]: no clock at all; of a stream of like events it lets the first few through,
//!   then every n-th, and numbers them, so a line can say "(k so far)".
//!
//! - [`stderr`] (feature `stderr`, adds the `log` crate): the one stderr logger of the daemons
//!   that use the `log` facade (vmsilo-balloond, vmsilo-gate, vm-switch): `name[pid]: level:
//!   message` lines, optionally rate-limited by a [`Limiter`] with a notice of what was dropped,
//!   guest text escaped, syslog priorities under systemd.
//!
//! Without features: std only, so the smallest programs (the guest agent) can use it.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[cfg(feature = "stderr")]
pub mod stderr;

/// A point in time a [`Limiter`] can measure windows from.
pub trait Moment: Copy {
    /// How long after `earlier` this is; zero if it is not after it.
    fn since(self, earlier: Self) -> Duration;
}

impl Moment for Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// A time as the distance from an origin the caller keeps fixed (a monotonic clock reading, a
/// simulated clock).
impl Moment for Duration {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_sub(earlier)
    }
}

/// At most `burst` lines per `window`; counts the lines it suppresses.
///
/// A window opens at the first line after the previous window has run out (the first window
/// at the first line ever), so a quiet process gets a full burst whenever it speaks again.
#[derive(Debug, Clone)]
pub struct Limiter<T = Instant> {
    burst: u32,
    window: Duration,
    window_start: Option<T>,
    used: u32,
    suppressed: u64,
}

impl<T: Moment> Limiter<T> {
    /// `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now`. `Some(n)`: yes, and `n` lines were suppressed
    /// since the last one allowed (say so when `n > 0`); `None`: suppress it (it is counted).
    pub fn allow(&mut self, now: T) -> Option<u64> {
        let fresh = match self.window_start {
            Some(start) => now.since(start) >= self.window,
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }

    /// Lines suppressed since the last one allowed.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

/// Of a stream of like events, the first `first` and then every `every`-th are logged;
/// thread-safe (`&self`), no clock.
#[derive(Debug)]
pub struct Sampler {
    first: u64,
    every: u64,
    count: AtomicU64,
}

impl Sampler {
    /// Logs events 1..=`first`, then every `every`-th (`every` = 0 is taken as 1).
    pub const fn new(first: u64, every: u64) -> Self {
        Self {
            first,
            every: if every == 0 { 1 } else { every },
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event. `Some(k)`: log it, it is the `k`-th (from 1); `None`: stay quiet.
    pub fn hit(&self) -> Option<u64> {
        let k = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (k <= self.first || k.is_multiple_of(self.every)).then_some(k)
    }

    /// Events counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn test_limiter_bursts_then_counts_suppressed() {
        let mut r = Limiter::new(2, ms(1000));
        assert_eq!(r.allow(ms(0)), Some(0));
        assert_eq!(r.allow(ms(10)), Some(0));
        assert_eq!(r.allow(ms(20)), None);
        assert_eq!(r.allow(ms(30)), None);
        assert_eq!(r.suppressed(), 2);
        assert_eq!(r.allow(ms(1000)), Some(2));
        assert_eq!(r.allow(ms(1001)), Some(0));
        assert_eq!(r.allow(ms(1002)), None);
    }

    #[test]
    fn test_limiter_on_instants_allows_a_burst_then_counts_drops() {
        const BURST: u32 = 20;
        const WINDOW: Duration = Duration::from_secs(10);
        let mut l = Limiter::new(BURST, WINDOW);
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.allow(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.allow(t0 + WINDOW), Some(5));
        assert_eq!(l.allow(t0 + WINDOW), Some(0));
    }

    #[test]
    fn test_limiter_opens_its_first_window_at_the_first_line() {
        let mut l = Limiter::new(1, ms(1000));
        assert_eq!(l.allow(ms(5000)), Some(0));
        assert_eq!(l.allow(ms(5999)), None);
        assert_eq!(l.allow(ms(6000)), Some(1));
    }

    #[test]
    fn test_limiter_with_a_clock_going_backwards_stays_in_its_window() {
        let mut l = Limiter::new(1, ms(1000));
        assert_eq!(l.allow(ms(5000)), Some(0));
        assert_eq!(l.allow(ms(1)), None);
    }

    #[test]
    fn test_limiter_with_no_burst_suppresses_everything() {
        let mut l = Limiter::new(0, ms(1000));
        assert_eq!(l.allow(ms(0)), None);
        assert_eq!(l.allow(ms(5000)), None);
        assert_eq!(l.suppressed(), 2);
    }

    #[test]
    fn test_sampler_allows_the_first_five_then_every_hundredth() {
        let s = Sampler::new(5, 100);
        let allowed: Vec<u64> = (0..250).filter_map(|_| s.hit()).collect();
        assert_eq!(allowed, [1, 2, 3, 4, 5, 100, 200]);
        assert_eq!(s.count(), 250);
    }

    #[test]
    fn test_sampler_is_shared_between_threads() {
        let s = Sampler::new(0, 10);
        let allowed = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..25).filter(|_| s.hit().is_some()).count()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).sum::<usize>()
        });
        assert_eq!(allowed, 10);
        assert_eq!(s.count(), 100);
    }
}
