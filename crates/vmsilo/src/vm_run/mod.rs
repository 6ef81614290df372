//! The vm-run data path (the command path): `vm-run <vm> <command>` on the host to the guest
//! agent in the VM (`docs/vm-run.md`).
//!
//! ```text
//! vm-run ──► <run>/<vm>-command.socket ──► vmsilo command-service <vm> (socket-activated)
//!              status frames ◄──────────── starts the VM if needed, waits for the agent
//!              Ready ◄─────────────────── then splices the connection to the guest:
//!              agent protocol ◄─────────► AF_VSOCK (crosvm) or hybrid vsock (QEMU) ─► vmsilo-guest
//! ```
//!
//! - [`wire`]: the status frames the service sends before the splice;
//! - [`guest`]: reaching the agent's vsock port;
//! - [`splice`]: copying a connection both ways without half-closing toward the guest;
//! - [`service`]: the command service (accept loop, starting the VM, waiting for the agent);
//! - [`client`]: vm-run's side of the status exchange and its progress line.
//!
//! After `Ready` the connection carries the agent protocol (`vmsilo_proto`) unchanged, end to
//! end: the service never interprets it, so nothing a guest sends is parsed by the service.

pub mod client;
pub mod guest;
pub mod service;
pub mod splice;
pub mod wire;
