//! vm-switch's stderr logger (`vmsilo_log::stderr`): `vm-switch[pid]: LEVEL: message`.
//!
//! Under systemd, stderr goes to the journal, which adds timestamps itself.

#![forbid(unsafe_code)]

use log::{Level, LevelFilter};
use vmsilo_log::stderr::Logger;

/// Installs the logger with `level` (idempotent: a second call only changes the level).
pub fn init(level: LevelFilter) {
    // Library crates log at info/debug about every vhost-user message; keep theirs at warn.
    let _ = Logger::new("vm-switch")
        .with_pid()
        .foreign_max("vm_switch", Level::Warn)
        .install();
    log::set_max_level(level);
}
