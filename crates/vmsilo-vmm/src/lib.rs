//! Typed clients for the VMMs' control sockets: QEMU's QMP ([`qmp`]) and crosvm's control
//! socket ([`crosvm`]), written once for the balloon daemon, the runtime and the test kit.
//!
//! Everything a VMM sends back is untrusted (a VMM process serves a hostile guest and may be
//! compromised by it): every read is bounded in size, every request has a timeout (connect,
//! send, receive), and every failure is a typed [`VmmError`] that names the socket and the
//! request. Nothing here panics on a peer's bytes.

#![forbid(unsafe_code)]

pub mod crosvm;
mod error;
pub mod qmp;
mod socket;
mod stats;

pub use error::{VmmError, excerpt};
pub use stats::GuestStats;
