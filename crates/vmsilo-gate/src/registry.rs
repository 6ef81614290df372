//! Global filtering and bind checks: the guest sees only the globals the policy offers, at the
//! capped version, and a bind to anything else is a protocol error for that client only.
//!
//! Client-side global names are the gate's own (numbered from 1 per registry), so a client
//! cannot guess the compositor's name of a hidden global. `wl_data_device_manager` is a
//! synthetic global served by [`crate::datadev`]; the compositor's own one is hidden.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::rc::Rc;

use wl_proxy::object::{Object, ObjectCoreApi, ObjectRcUtils};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManager;
use wl_proxy::protocols::wayland::wl_display::{WlDisplay, WlDisplayHandler};
use wl_proxy::protocols::wayland::wl_registry::{WlRegistry, WlRegistryHandler};
use wl_proxy::protocols::wayland::wl_seat::WlSeat;

use crate::conn::Conn;
use crate::datadev::DataDev;
use crate::frame;

/// `wl_display.error` code `invalid_object`.
const INVALID_OBJECT: u32 = 0;

/// The `wl_display` handler of one guest client: installs a [`Registry`] on every registry.
pub struct Display {
    conn: Rc<Conn>,
    datadev: Rc<DataDev>,
}

impl Display {
    /// A display handler for the client of `conn`.
    pub fn new(conn: Rc<Conn>, datadev: Rc<DataDev>) -> Self {
        Self { conn, datadev }
    }
}

impl WlDisplayHandler for Display {
    fn handle_get_registry(&mut self, slf: &Rc<WlDisplay>, registry: &Rc<WlRegistry>) {
        slf.send_get_registry(registry);
        let mut reg = Registry {
            conn: self.conn.clone(),
            datadev: self.datadev.clone(),
            globals: HashMap::new(),
            server_to_client: HashMap::new(),
            next_name: 1,
        };
        if let Some(version) = self
            .conn
            .policy
            .offered(ObjectInterface::WlDataDeviceManager.name(), u32::MAX)
        {
            let name = reg.take_name();
            reg.globals.insert(
                name,
                Global {
                    target: Target::Local,
                    interface: ObjectInterface::WlDataDeviceManager,
                    version,
                },
            );
            registry.send_global(name, ObjectInterface::WlDataDeviceManager, version);
        }
        registry.set_handler(reg);
    }
}

/// Where a client-visible global lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The compositor's global with this name.
    Server(u32),
    /// Served by the gate.
    Local,
}

#[derive(Debug, Clone, Copy)]
struct Global {
    target: Target,
    interface: ObjectInterface,
    version: u32,
}

/// The handler of one guest `wl_registry`.
pub struct Registry {
    conn: Rc<Conn>,
    datadev: Rc<DataDev>,
    /// Client-visible name → global.
    globals: HashMap<u32, Global>,
    /// Compositor name → client-visible name, for offered globals only.
    server_to_client: HashMap<u32, u32>,
    next_name: u32,
}

impl Registry {
    fn take_name(&mut self) -> u32 {
        let n = self.next_name;
        self.next_name = self.next_name.saturating_add(1);
        n
    }

    fn refuse(&self, slf: &Rc<WlRegistry>, msg: String) {
        crate::logger::warn_limited(
            "bind",
            &format!("VM {:?}: client cut off: {msg}", self.conn.identity.vm),
        );
        if let Some(client) = slf.client() {
            let obj: Rc<dyn Object> = slf.clone();
            client.display().send_error(obj, INVALID_OBJECT, &msg);
            client.set_suspended(true);
        }
        self.conn.cut_off.set(true);
    }
}

impl WlRegistryHandler for Registry {
    fn handle_global(
        &mut self,
        slf: &Rc<WlRegistry>,
        name: u32,
        interface: ObjectInterface,
        version: u32,
    ) {
        if interface == ObjectInterface::WlDataDeviceManager {
            return;
        }
        let Some(offered) = self.conn.policy.offered(interface.name(), version) else {
            return;
        };
        if self.server_to_client.contains_key(&name) {
            return;
        }
        let cname = self.take_name();
        self.server_to_client.insert(name, cname);
        self.globals.insert(
            cname,
            Global {
                target: Target::Server(name),
                interface,
                version: offered,
            },
        );
        slf.send_global(cname, interface, offered);
    }

    fn handle_global_remove(&mut self, slf: &Rc<WlRegistry>, name: u32) {
        if let Some(cname) = self.server_to_client.remove(&name) {
            slf.send_global_remove(cname);
        }
    }

    fn handle_bind(&mut self, slf: &Rc<WlRegistry>, name: u32, id: Rc<dyn Object>) {
        if self.conn.cut_off.get() {
            return;
        }
        let interface = id.interface();
        let version = id.version();
        let Some(global) = self.globals.get(&name).copied() else {
            self.refuse(
                slf,
                format!(
                    "invalid global {} ({name}): the gate never offered it",
                    interface.name()
                ),
            );
            return;
        };
        if global.interface != interface {
            self.refuse(
                slf,
                format!(
                    "invalid interface for global {name}: have {}, wanted {}",
                    global.interface.name(),
                    interface.name()
                ),
            );
            return;
        }
        if version == 0 || version > global.version {
            self.refuse(
                slf,
                format!(
                    "invalid version for global {} ({name}): have {}, wanted {version}",
                    interface.name(),
                    global.version
                ),
            );
            return;
        }
        match global.target {
            Target::Server(server_name) => {
                slf.send_bind(server_name, id.clone());
                // The clipboard follows keyboard focus: from the first wl_seat on, the client
                // gets the selection only while focused. The gate's seat handler reports
                // focus; it is installed before the frame's hook, which may replace it and then
                // reports focus itself (datadev::keyboard_focus from its wl_keyboard handler).
                if let Some(seat) = id.try_downcast::<WlSeat>() {
                    seat.set_handler(crate::datadev::Seat::new(self.datadev.clone()));
                    self.datadev.track_focus();
                }
                frame::on_bind(&self.conn, interface, &id);
            }
            Target::Local => {
                if let Some(manager) = id.try_downcast::<WlDataDeviceManager>() {
                    self.datadev.serve_manager(&manager);
                }
            }
        }
    }
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}
