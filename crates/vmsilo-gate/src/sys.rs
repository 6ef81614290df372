//! The gate's system-level operations: `fork`, closing inherited descriptors in a client
//! child, and `_exit`. The unsafe code is vmsilo-sys's, shared with vm-switch and
//! vmsilo-clipd; the gate has none of its own.
#![forbid(unsafe_code)]

pub use vmsilo_sys::{Forked, close_fds_except, fork};

/// Ends the process at once with `code`, without running destructors or exit handlers (a
/// forked child must never unwind into, or drop, the parent's objects it has a copy of).
/// Flushes stderr first.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    vmsilo_sys::exit_now(code)
}
