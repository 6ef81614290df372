//! The gate's stderr logger (`vmsilo_log::stderr`: `vmsilo-gate[pid]: level: message`), which
//! rate-limits: per process at most [`BURST`] lines per [`WINDOW`], then one line saying how
//! many were dropped. Guests can make the gate log (refused binds, malformed messages), so
//! nothing they do may flood the journal. Each client has its own process, hence its own
//! budget; the parent's budget covers refused connections.
#![forbid(unsafe_code)]

use std::time::Duration;

use log::LevelFilter;
use vmsilo_log::stderr::Logger;

/// Lines allowed per window.
pub const BURST: u32 = 20;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Installs the logger with `level` (idempotent: a second call only changes the level).
/// Messages (ours and wl-proxy's) can carry guest-chosen strings: interface names, protocol
/// error texts; they are escaped in the logger, the one place every line passes.
pub fn init(level: LevelFilter) {
    let _ = Logger::new("vmsilo-gate")
        .with_pid()
        .escaping(vmsilo_proto::text::escape)
        .rate_limited(BURST, WINDOW)
        .install();
    log::set_max_level(level);
}

/// Logs a warning about something a guest did (rate-limited like every line; `what` names the
/// kind for grepping).
pub fn warn_limited(what: &str, msg: &str) {
    log::warn!("{what}: {msg}");
}
