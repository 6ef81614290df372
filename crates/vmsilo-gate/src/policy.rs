//! The classified allowlist of globals a guest client may see and bind: the
//! `vmsilo-gate-policy` crate (its own crate so that the configuration compiler, which does not
//! depend on wl-proxy, validates `--allow`/`--deny` with the same table).
#![forbid(unsafe_code)]

pub use vmsilo_gate_policy::*;
