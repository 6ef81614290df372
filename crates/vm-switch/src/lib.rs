//! vm-switch: a vhost-user-net L3 switch between VMs.
//!
//! One main process watches a configuration directory of port files (`<vm>.port`) and forks
//! one sandboxed child per VM port. Each child is a vhost-user-net backend (rust-vmm
//! `vhost-user-backend`) serving `<vm>.sock` to the VM's frontend (crosvm or QEMU). Children
//! exchange frames through lock-free single-producer/single-consumer rings in `memfd` shared
//! memory, set up by the main process over a `SOCK_SEQPACKET` control channel.
//!
//! Queueing happens where the queue forms: at each destination's egress, an FQ-CoDel
//! scheduler with per-source fairness measures sojourn from the ingress timestamp to the
//! moment a frame is written into the guest's RX ring, and a DQL byte limit keeps the guest's
//! RX ring itself short.
//!
//! Layout: sans-IO cores ([`frame`], [`gso`], [`fib`], [`forward`], [`sched`], [`dql`], [`port_file`]),
//! the shared-memory ring ([`ring`]), the backend ([`backend`]) with the vhost-user relay
//! in front of it (crate `vhost-user-relay`, shared with the test hub), the process model ([`control`], [`child`], [`supervisor`]), the
//! sandbox ([`sandbox`], [`seccomp`]), statistics ([`stats`]) and logging ([`logger`]). All
//! `unsafe` code lives in [`sys`]. With the feature `testing`, `testing` provides an
//! in-process vhost-user frontend with a virtio-net driver for tests and benchmarks; with the
//! feature `fuzzing` (fuzz/ only), the backend takes frames for the guest directly and panics
//! when a loop the guest drives runs away, so the fuzzer reports a spin instead of hanging.
//!
//! Threading: the main process is single-threaded (it forks). A child runs the
//! `vhost-user-backend` request thread and one vring worker per frontend connection, plus the
//! relay's two threads; all port state is behind one mutex. Operator documentation:
//! `docs/vm-switch.md`.
//!
//! Trust: everything from a guest, a frontend, a peer child (through a ring) or a port file is
//! hostile and validated; the main process trusts only itself.

// Every other module also has `#![forbid(unsafe_code)]`; this catches a new one that forgets.
#![deny(unsafe_code)]

pub mod backend;
pub mod child;
pub mod control;
pub mod dql;
pub mod egress;
pub mod fib;
pub mod forward;
pub mod frame;
pub mod gso;
pub mod logger;
pub mod pool;
pub mod port_file;
pub mod ring;
pub mod sandbox;
pub mod sched;
pub mod seccomp;
pub mod stats;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
