//! `vmsilo-guest`, the guest agent: runs commands the host sends over vsock and powers an idle
//! guest off. See `docs/guest-agent.md`.
//!
//! The library holds everything but the command line, so that component tests can drive the
//! agent over Unix sockets in-process.

pub mod agent;
pub mod cli;
pub mod cmdline;
pub mod exec;
pub mod idle;
pub mod power;
pub mod session;
mod sys;
pub mod transport;
pub mod users;

pub use agent::{Agent, AgentConfig, Outcome, SessionMode};

/// Writes one log line to stderr (the console in the test guest, the journal under systemd).
pub fn log(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "vmsilo-guest: {msg}");
}
