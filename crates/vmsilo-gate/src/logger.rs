//! A small stderr logger for the `log` facade (`vmsilo-gate[pid]: level: message`) that
//! rate-limits: per process at most [`BURST`] lines per [`WINDOW`], then one line saying how
//! many were dropped. Guests can make the gate log (refused binds, malformed messages), so
//! nothing they do may flood the journal. Each client has its own process, hence its own
//! budget; the parent's budget covers refused connections.
#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};

/// Lines allowed per window.
pub const BURST: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A token bucket in whole windows: pure, so it is testable.
#[derive(Debug, Default)]
pub struct Limiter {
    window_start: Option<Instant>,
    used: u32,
    dropped: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Print it; if `dropped` > 0, first say that many lines were dropped.
    Print {
        /// Lines dropped since the last printed one.
        dropped: u64,
    },
    /// Drop it.
    Drop,
}

impl Limiter {
    /// Decides about one line at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let fresh = match self.window_start {
            Some(start) => now.saturating_duration_since(start) >= WINDOW,
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < BURST {
            self.used += 1;
            Verdict::Print {
                dropped: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Verdict::Drop
        }
    }
}

struct StderrLogger {
    limiter: Mutex<Limiter>,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let verdict = match self.limiter.lock() {
            Ok(mut l) => l.check(Instant::now()),
            Err(_) => Verdict::Print { dropped: 0 },
        };
        let Verdict::Print { dropped } = verdict else {
            return;
        };
        let pid = std::process::id();
        let mut line = String::new();
        if dropped > 0 {
            line.push_str(&format!(
                "vmsilo-gate[{pid}]: warn: {dropped} log lines dropped (rate limit)\n"
            ));
        }
        // Messages (ours and wl-proxy's) can carry guest-chosen strings: interface names,
        // protocol error texts. Escaped here, the one place every log line passes.
        let text = record.args().to_string();
        line.push_str(&format!(
            "vmsilo-gate[{pid}]: {}: {}\n",
            record.level().as_str().to_lowercase(),
            vmsilo_proto::text::escape(&text)
        ));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger {
    limiter: Mutex::new(Limiter {
        window_start: None,
        used: 0,
        dropped: 0,
    }),
};

/// Installs the logger with `level` (idempotent).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Logs a warning about something a guest did (rate-limited like every line; `what` names the
/// kind for grepping).
pub fn warn_limited(what: &str, msg: &str) {
    log::warn!("{what}: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_limiter_allows_a_burst_then_counts_drops() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.check(t0), Verdict::Print { dropped: 0 });
        }
        for _ in 0..5 {
            assert_eq!(l.check(t0 + Duration::from_secs(1)), Verdict::Drop);
        }
        assert_eq!(l.check(t0 + WINDOW), Verdict::Print { dropped: 5 });
        assert_eq!(l.check(t0 + WINDOW), Verdict::Print { dropped: 0 });
    }
}
