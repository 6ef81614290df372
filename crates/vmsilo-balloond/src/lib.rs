//! vmsilo-balloond: balances free memory between the host and every running VM by moving
//! virtio-balloons, with ChromeOS's BalanceAvailable policy, and backs off from balloons that
//! stall.
//!
//! Layout:
//! - [`policy`], [`stall`], [`balancer`]: the sans-IO policy core (BalanceAvailable, stall
//!   detection, the per-tick engine with its explained decisions). The daemon and the simulator
//!   run exactly this code.
//! - [`host`]: `/proc/meminfo` and PSI readings.
//! - [`stats`]: the guest statistics every VMM client produces.
//! - `fake` and `sim` (cargo feature `sim`, off in the shipped binary): in-process fake VMM
//!   peers for the tests and the policy simulator behind `cargo xtask bench balloond`.
//!
//! Threading model and trust: see `docs/vmsilo-balloond.md`. Everything a guest reports is
//! treated as hostile: no value it sends can panic or overflow the daemon.

#![forbid(unsafe_code)]

pub mod balancer;
pub mod cli;
pub mod daemon;
pub mod discovery;
#[cfg(feature = "sim")]
pub mod fake;
pub mod host;
pub mod logger;
pub mod policy;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stall;
pub mod stats;
pub mod status;
pub mod vmm;
