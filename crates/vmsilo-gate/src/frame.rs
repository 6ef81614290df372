//! The gate-owned toplevel that wraps each guest toplevel: the frame in the VM's colour with
//! its label band, the guest's surface a subsurface inside it.
//!
//! (Skeleton: the seam between the connection code and the frame. The connection code calls
//! [`start`] once per client before its first request is read, and [`on_bind`] for every
//! global the client binds after the policy allowed it.)

use std::rc::Rc;

use wl_proxy::object::Object;
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::state::State;

use crate::conn::Conn;

/// Prepares the frame machinery for one client connection (binds the gate's own globals on
/// the compositor connection of `state`).
pub fn start(conn: &Rc<Conn>, state: &Rc<State>) {
    let _ = (conn, state);
}

/// Called for every global a client binds (after the policy allowed it and the bind was
/// forwarded), so that the frame can install its handlers on `obj`.
pub fn on_bind(conn: &Rc<Conn>, interface: ObjectInterface, obj: &Rc<dyn Object>) {
    let _ = (conn, interface, obj);
}
