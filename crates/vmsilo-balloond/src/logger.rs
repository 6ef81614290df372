//! A tiny stderr logger for the `log` facade, and a per-VM log rate limiter.
//!
//! Lines look like `warn: VM "banking": ...`. Under systemd (`JOURNAL_STREAM` set) each line is
//! prefixed with its syslog priority (`<4>`), so the journal records the right level.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::stall::Millis;

struct StderrLogger {
    level: LevelFilter,
    journal: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let (prio, name) = match record.level() {
            Level::Error => (3, "error"),
            Level::Warn => (4, "warn"),
            Level::Info => (6, "info"),
            Level::Debug => (7, "debug"),
            Level::Trace => (7, "trace"),
        };
        let line = if self.journal {
            format!("<{prio}>{name}: {}\n", record.args())
        } else {
            format!("vmsilo-balloond: {name}: {}\n", record.args())
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Parses a `--log-level` value.
pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "{text:?} is not a log level: expected off, error, warn, info, debug or trace"
        )),
    }
}

/// Installs the logger. Calling it twice keeps the first logger.
pub fn init(level: LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level, journal }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Allows `burst` lines per `window_ms`; counts what it suppresses so the next allowed line can
/// say how many were dropped.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    window_ms: Millis,
    burst: u32,
    window_start: Millis,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// `burst` lines per `window_ms`.
    pub fn new(burst: u32, window_ms: Millis) -> Self {
        Self {
            window_ms,
            burst,
            window_start: 0,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`. `Some(n)`: yes, and `n` lines were suppressed
    /// since the last one logged.
    pub fn allow(&mut self, now: Millis) -> Option<u64> {
        if now.saturating_sub(self.window_start) >= self.window_ms {
            self.window_start = now;
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimiter {
    /// 10 lines a minute.
    fn default() -> Self {
        Self::new(10, 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rate_limiter_bursts_then_counts_suppressed() {
        let mut r = RateLimiter::new(2, 1000);
        assert_eq!(r.allow(0), Some(0));
        assert_eq!(r.allow(10), Some(0));
        assert_eq!(r.allow(20), None);
        assert_eq!(r.allow(30), None);
        assert_eq!(r.allow(1000), Some(2));
        assert_eq!(r.allow(1001), Some(0));
        assert_eq!(r.allow(1002), None);
    }

    #[test]
    fn test_parse_level() {
        assert_eq!(parse_level("INFO"), Ok(LevelFilter::Info));
        assert_eq!(parse_level("off"), Ok(LevelFilter::Off));
        assert!(parse_level("loud").unwrap_err().contains("\"loud\""));
    }
}
