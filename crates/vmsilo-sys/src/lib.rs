//! vmsilo-sys: the unsafe system-call wrappers that more than one vmsilo process needs, written
//! once, and the seccomp-building helpers the sandboxed processes share.
//!
//! - [`sys`]: every `unsafe` block of this crate, each with a `// SAFETY:` comment: [`fork`],
//!   [`exit_now`], [`close_fds_except`], [`owned_fd`].
//! - [`seccomp`] (feature `seccomp`): building and installing BPF programs with seccompiler.
//!   Each process's allow-list stays its own policy, in its own crate.
//!
//! What only one process needs (vm-switch's shared memory and mount API, the gate's...) stays
//! in that crate's own `sys.rs`.

pub mod sys;

#[cfg(feature = "seccomp")]
pub mod seccomp;

pub use sys::{Forked, close_fds_except, exit_now, fork, owned_fd};
