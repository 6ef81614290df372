//! A tiny stderr logger for the `log` facade, and the daemon's log rate limiter.
//!
//! Lines look like `warn: VM "banking": ...`. Under systemd (`JOURNAL_STREAM` set) each line is
//! prefixed with its syslog priority (`<4>`), so the journal records the right level.

use std::io::Write;
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};

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

/// balloond's log limiter, per VM and for host-wide trouble: [`vmsilo_log::Limiter`] on the
/// daemon's clock (a [`Duration`] since it started, so the simulator's clock works too).
pub type RateLimiter = vmsilo_log::Limiter<Duration>;

/// 10 lines a minute.
pub fn rate_limiter() -> RateLimiter {
    RateLimiter::new(10, Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_level() {
        assert_eq!(parse_level("INFO"), Ok(LevelFilter::Info));
        assert_eq!(parse_level("off"), Ok(LevelFilter::Off));
        assert!(parse_level("loud").unwrap_err().contains("\"loud\""));
    }
}
