//! The daemon's stderr logger (`vmsilo_log::stderr`) and its log rate limiter.
//!
//! Lines look like `warn: VM "banking": ...`. Under systemd (`JOURNAL_STREAM` set) each line is
//! prefixed with its syslog priority (`<4>`), so the journal records the right level.

use std::time::Duration;

use log::LevelFilter;
use vmsilo_log::stderr::Logger;

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

/// Installs the logger (`vmsilo_log::stderr`). Calling it twice keeps the first logger.
pub fn init(level: LevelFilter) {
    if Logger::new("vmsilo-balloond").journal_priority().install() {
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
