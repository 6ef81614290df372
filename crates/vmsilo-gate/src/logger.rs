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
use vmsilo_log::Limiter;

/// Lines allowed per window.
pub const BURST: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

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
            Ok(mut l) => l.allow(Instant::now()),
            Err(_) => Some(0),
        };
        let Some(dropped) = verdict else {
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
    limiter: Mutex::new(Limiter::new(BURST, WINDOW)),
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
