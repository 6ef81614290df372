//! A minimal stderr logger for the `log` facade: `vm-switch[pid]: LEVEL: message`.
//!
//! Under systemd, stderr goes to the journal, which adds timestamps itself.

#![forbid(unsafe_code)]

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Library crates log at info/debug about every vhost-user message; keep theirs at warn.
        if !record.target().starts_with("vm_switch") && record.level() > log::Level::Warn {
            return;
        }
        let line = format!(
            "vm-switch[{}]: {}: {}\n",
            std::process::id(),
            record.level().as_str().to_lowercase(),
            record.args()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger with `level` (idempotent: a second call only changes the level).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
