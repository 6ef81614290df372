//! The per-connection context: what every handler of one guest client needs to know.

use std::cell::Cell;
use std::rc::Rc;

use crate::identity::Identity;
use crate::policy::Policy;

/// Limits on what one guest client may hold (each client has its own process; these are
/// checked by the handlers and the dispatch loop, the process also has rlimits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Objects the client may have alive at once.
    pub max_objects: usize,
    /// File descriptors the client may have in flight (received, not yet passed on).
    pub max_fds: usize,
    /// Bytes the gate queues towards the client before it is cut off.
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_objects: 20_000,
            max_fds: 256,
            max_pending_bytes: 8 << 20,
        }
    }
}

/// Shared, read-mostly state of one proxied guest client.
#[derive(Debug)]
pub struct Conn {
    /// Who the client is (from the host configuration, never from the guest).
    pub identity: Rc<Identity>,
    /// Which globals it may see and bind.
    pub policy: Rc<Policy>,
    /// Per-client limits.
    pub limits: Limits,
    /// Whether guest toplevels are wrapped in the gate's frame.
    pub frame: bool,
    /// Set once the client has been cut off (a protocol error was sent).
    pub cut_off: Cell<bool>,
}

impl Conn {
    /// A context for one client (not cut off).
    pub fn new(identity: Rc<Identity>, policy: Rc<Policy>, limits: Limits, frame: bool) -> Self {
        Self {
            identity,
            policy,
            limits,
            frame,
            cut_off: Cell::new(false),
        }
    }
}
