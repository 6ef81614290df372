//! `vmsilo-guest`, the guest agent: runs commands the host sends over vsock and powers an idle
//! guest off. See `docs/guest-agent.md`.
//!
//! The library holds everything but the command line, so that component tests can drive the
//! agent over Unix sockets in-process. All `unsafe` code is in the private `sys` module.

#![deny(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod cmdline;
pub mod exec;
pub mod idle;
pub mod power;
pub mod session;
#[allow(unsafe_code)]
mod sys;
pub mod transport;
pub mod users;
pub mod waypipe;

pub use agent::{Agent, AgentConfig, Outcome, SessionMode};

/// Writes one log line to stderr (the console in the test guest, the journal under systemd).
pub fn log(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "vmsilo-guest: {msg}");
}
