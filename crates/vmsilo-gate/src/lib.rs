//! vmsilo-gate: the per-VM Wayland proxy between a VM's guest applications and the user's
//! compositor.
//!
//! One gate runs per VM, as the configured user. Every guest Wayland client (a crosvm
//! cross-domain context, or a `waypipe client` connection for QEMU VMs) is one stream
//! connection on the gate's socket; the gate serves it from a process of its own with its own
//! compositor connection, so that anything a client does wrong ends that client only.
//!
//! Layout:
//! - [`policy`]: sans-IO: the classified allowlist of globals, version caps, overrides (the
//!   `vmsilo-gate-policy` crate, shared with the configuration compiler).
//! - [`identity`]: sans-IO: the VM's name and colour, title and app_id prefixes, sanitising.
//! - [`draw`]: sans-IO: the frame and label band pixels.
//! - [`layout`]: sans-IO: frame geometry and the size/position translation guest ↔ frame.
//! - [`conn`]: the per-connection context shared by the handlers.
//! - [`registry`]: global filtering and bind checks.
//! - [`datadev`]: the VM's own `wl_data_device_manager`, served by the gate.
//! - [`clip`]: the global clipboard's chords (keysyms via libxkbcommon) and pasted content.
//! - [`clipd`]: the parent's link to vmsilo-clipd (copies and pastes of the global clipboard).
//! - [`frame`]: the gate-owned toplevel that wraps each guest toplevel.
//! - [`server`]: the listening socket, one process per client, limits.
//! - [`sandbox`]: seccomp and resource limits.
//! - [`sys`]: the unsafe system calls, with `// SAFETY:` comments.
//! - [`secctx`]: the gate's own compositor connection and the VM's security context.
//! - [`cli`]: flags, startup order, exit codes; [`logger`]: rate-limited stderr logging.

pub mod cli;
pub mod clip;
pub mod clipd;
pub mod conn;
pub mod datadev;
pub mod draw;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod identity;
pub mod layout;
pub mod logger;
pub mod notice;
pub mod policy;
pub mod registry;
pub mod sandbox;
pub mod secctx;
pub mod server;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
