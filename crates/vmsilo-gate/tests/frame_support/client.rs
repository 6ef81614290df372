//! A small scripted Wayland client built on wl-proxy (its `State` used as a client: objects
//! the test creates and sends requests for): enough xdg-shell and wl_shm to map toplevels,
//! subsurfaces and popups with solid-colour buffers, and to behave badly on purpose.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use vmsilo_gate::testing;
use wl_proxy::fixed::Fixed;
use wl_proxy::object::ConcreteObject;
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::wayland::wl_buffer::WlBuffer;
use wl_proxy::protocols::wayland::wl_callback::{WlCallback, WlCallbackHandler};
use wl_proxy::protocols::wayland::wl_compositor::WlCompositor;
use wl_proxy::protocols::wayland::wl_keyboard::{WlKeyboard, WlKeyboardHandler};
use wl_proxy::protocols::wayland::wl_pointer::{WlPointer, WlPointerButtonState, WlPointerHandler};
use wl_proxy::protocols::wayland::wl_seat::{WlSeat, WlSeatCapability, WlSeatHandler};
use wl_proxy::protocols::wayland::wl_shm::{WlShm, WlShmFormat};
use wl_proxy::protocols::wayland::wl_subcompositor::WlSubcompositor;
use wl_proxy::protocols::wayland::wl_surface::WlSurface;
use wl_proxy::protocols::xdg_shell::xdg_popup::{XdgPopup, XdgPopupHandler};
use wl_proxy::protocols::xdg_shell::xdg_positioner::XdgPositioner;
use wl_proxy::protocols::xdg_shell::xdg_surface::{XdgSurface, XdgSurfaceHandler};
use wl_proxy::protocols::xdg_shell::xdg_toplevel::{XdgToplevel, XdgToplevelHandler};
use wl_proxy::protocols::xdg_shell::xdg_wm_base::{XdgWmBase, XdgWmBaseHandler};
use wl_proxy::state::State;

use super::PATIENCE;

/// A connected client with the core globals bound: `vmsilo_gate::testing::TestClient` (the
/// connection, registry, globals and protocol error) plus what the frame tests map windows
/// with.
pub struct TestClient {
    base: testing::TestClient,
    pub state: Rc<State>,
    pub compositor: Rc<WlCompositor>,
    pub subcompositor: Rc<WlSubcompositor>,
    pub shm: Rc<WlShm>,
    pub wm_base: Rc<XdgWmBase>,
    /// The protocol error the client got, if any: (code, message).
    pub error: Rc<RefCell<Option<(u32, String)>>>,
}

struct Done(Rc<Cell<bool>>);

impl WlCallbackHandler for Done {
    fn handle_done(&mut self, _slf: &Rc<WlCallback>, _data: u32) {
        self.0.set(true);
    }
}

struct Pong;

impl XdgWmBaseHandler for Pong {
    fn handle_ping(&mut self, slf: &Rc<XdgWmBase>, serial: u32) {
        slf.send_pong(serial);
    }
}

impl TestClient {
    pub fn connect(socket: &Path) -> TestClient {
        let base = testing::TestClient::connect(socket)
            .unwrap_or_else(|e| panic!("connecting to the gate: {e}"));
        let state = base.state.clone();
        state.set_default_forward_to_client(false);
        let bind = |iface: ObjectInterface, max: u32| -> (u32, u32) {
            let (name, v) = base
                .global(iface)
                .unwrap_or_else(|| panic!("the gate offers no {}", iface.name()));
            (name, v.min(max))
        };
        let (n, v) = bind(ObjectInterface::WlCompositor, 4);
        let compositor = base.bind::<WlCompositor>(n, v);
        let (n, v) = bind(ObjectInterface::WlSubcompositor, 1);
        let subcompositor = base.bind::<WlSubcompositor>(n, v);
        let (n, v) = bind(ObjectInterface::WlShm, 1);
        let shm = base.bind::<WlShm>(n, v);
        let (n, v) = bind(ObjectInterface::XdgWmBase, 3);
        let wm_base = base.bind::<XdgWmBase>(n, v);
        wm_base.set_handler(Pong);
        let error = base.error.clone();
        let c = TestClient {
            base,
            state,
            compositor,
            subcompositor,
            shm,
            wm_base,
            error,
        };
        c.roundtrip();
        c
    }

    /// Binds `iface` (at most version `max`) if the gate offers it.
    pub fn bind_optional<P: ConcreteObject>(&self, max: u32) -> Option<Rc<P>> {
        let (name, v) = self.base.global(P::INTERFACE)?;
        Some(self.base.bind::<P>(name, v.min(max)))
    }

    /// Binds the seat and its pointer; the log records what the client saw.
    pub fn pointer(&self) -> Rc<PointerLog> {
        let seat = self.seat();
        let caps = Rc::new(Cell::new(0));
        seat.set_handler(SeatCaps(caps.clone()));
        assert!(
            self.dispatch_until(|| caps.get() & WlSeatCapability::POINTER.0 != 0),
            "the seat never got a pointer"
        );
        let p = seat.new_send_get_pointer();
        let log = Rc::new(PointerLog::default());
        p.set_handler(PointerLogHandler(log.clone()));
        self.roundtrip();
        log
    }

    /// Binds the seat and its keyboard; the log records which surface has keyboard focus.
    pub fn keyboard(&self) -> Rc<KeyboardLog> {
        let seat = self.seat();
        let caps = Rc::new(Cell::new(0));
        seat.set_handler(SeatCaps(caps.clone()));
        assert!(
            self.dispatch_until(|| caps.get() & WlSeatCapability::KEYBOARD.0 != 0),
            "the seat never got a keyboard"
        );
        let kb = seat.new_send_get_keyboard();
        let log = Rc::new(KeyboardLog::default());
        kb.set_handler(KeyboardLogHandler(log.clone()));
        self.roundtrip();
        log
    }

    /// The seat, bound (at most version 5); its handler is the caller's to set before the
    /// next dispatch.
    fn seat(&self) -> Rc<WlSeat> {
        let (name, v) = self
            .base
            .global(ObjectInterface::WlSeat)
            .expect("the gate offers no wl_seat");
        self.base.bind::<WlSeat>(name, v.min(5))
    }

    /// A wl_display.sync round trip; panics after the test kit's timeout or on a protocol
    /// error.
    pub fn roundtrip(&self) {
        if let Err(e) = self.base.roundtrip() {
            panic!("round trip through the gate: {e}");
        }
        if let Some(e) = self.error.borrow().as_ref() {
            panic!("the client got protocol error {}: {}", e.0, e.1);
        }
    }

    /// Dispatches until `cond` holds (bounded); false on timeout, error or disconnect.
    pub fn dispatch_until(&self, mut cond: impl FnMut() -> bool) -> bool {
        let t0 = Instant::now();
        while !cond() {
            if t0.elapsed() > PATIENCE || self.error.borrow().is_some() {
                return false;
            }
            if self
                .state
                .dispatch(Some(Duration::from_millis(50)))
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Whether the connection is still up: a round trip completes without an error.
    pub fn alive(&self) -> bool {
        let done = Rc::new(Cell::new(false));
        let cb = self.state.display().new_send_sync();
        cb.set_handler(Done(done.clone()));
        self.dispatch_until(|| done.get())
    }

    /// A `w`×`h` buffer of one ARGB colour.
    pub fn buffer(&self, w: i32, h: i32, argb: u32) -> Rc<WlBuffer> {
        let fd =
            nix::sys::memfd::memfd_create(c"test-buffer", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .unwrap();
        let mut f = File::from(fd);
        let px: Vec<u8> = std::iter::repeat_n(argb.to_le_bytes(), (w * h) as usize)
            .flatten()
            .collect();
        f.write_all(&px).unwrap();
        let fd = Rc::new(OwnedFd::from(f));
        let pool = self.shm.new_send_create_pool(&fd, w * h * 4);
        let b = pool.new_send_create_buffer(0, w, h, w * 4, WlShmFormat::ARGB8888);
        pool.send_destroy();
        b
    }

    /// Creates a toplevel, does the initial commit and waits for (and acks) the first
    /// configure; nothing is attached yet.
    pub fn toplevel(&self, title: Option<&str>, app_id: Option<&str>) -> Toplevel {
        self.toplevel_with(title, app_id, |_| {})
    }

    /// [`Self::toplevel`], with `setup` run on the toplevel before the initial commit.
    pub fn toplevel_with(
        &self,
        title: Option<&str>,
        app_id: Option<&str>,
        setup: impl FnOnce(&Rc<XdgToplevel>),
    ) -> Toplevel {
        let surface = self.compositor.new_send_create_surface();
        let xdg = self.wm_base.new_send_get_xdg_surface(&surface);
        let ev = Rc::new(XdgEvents::default());
        xdg.set_handler(XdgEventsHandler(ev.clone()));
        let toplevel = xdg.new_send_get_toplevel();
        toplevel.set_handler(XdgEventsHandler(ev.clone()));
        if let Some(t) = title {
            toplevel.send_set_title(t);
        }
        if let Some(a) = app_id {
            toplevel.send_set_app_id(a);
        }
        setup(&toplevel);
        surface.send_commit();
        assert!(
            self.dispatch_until(|| ev.serial.get().is_some()),
            "no configure for the new toplevel ({:?})",
            self.error.borrow()
        );
        xdg.send_ack_configure(ev.serial.take().unwrap());
        Toplevel {
            surface,
            xdg,
            toplevel,
            ev,
        }
    }

    /// A popup of `parent` (its xdg_surface), `w`×`h`, anchored at the point (`x`, `y`) of
    /// the parent's window geometry, growing right and down; mapped with `argb`.
    pub fn popup(
        &self,
        parent: &Rc<XdgSurface>,
        x: i32,
        y: i32,
        w: i32,
        h: i32,
        argb: u32,
    ) -> Popup {
        let positioner: Rc<XdgPositioner> = self.wm_base.new_send_create_positioner();
        positioner.send_set_size(w, h);
        positioner.send_set_anchor_rect(x, y, 1, 1);
        positioner.send_set_anchor(
            wl_proxy::protocols::xdg_shell::xdg_positioner::XdgPositionerAnchor::TOP_LEFT,
        );
        positioner.send_set_gravity(
            wl_proxy::protocols::xdg_shell::xdg_positioner::XdgPositionerGravity::BOTTOM_RIGHT,
        );
        let surface = self.compositor.new_send_create_surface();
        let xdg = self.wm_base.new_send_get_xdg_surface(&surface);
        let ev = Rc::new(XdgEvents::default());
        xdg.set_handler(XdgEventsHandler(ev.clone()));
        let popup = xdg.new_send_get_popup(Some(parent), &positioner);
        popup.set_handler(XdgEventsHandler(ev.clone()));
        positioner.send_destroy();
        surface.send_commit();
        assert!(
            self.dispatch_until(|| ev.serial.get().is_some()),
            "no configure for the popup ({:?})",
            self.error.borrow()
        );
        xdg.send_ack_configure(ev.serial.take().unwrap());
        surface.send_attach(Some(&self.buffer(w, h, argb)), 0, 0);
        surface.send_commit();
        self.roundtrip();
        Popup {
            surface,
            xdg,
            popup,
            ev,
        }
    }
}

/// What the client's xdg objects received.
#[derive(Default)]
pub struct XdgEvents {
    pub serial: Cell<Option<u32>>,
    pub size: Cell<Option<(i32, i32)>>,
    pub popup_pos: Cell<Option<(i32, i32, i32, i32)>>,
    pub closed: Cell<bool>,
}

struct XdgEventsHandler(Rc<XdgEvents>);

impl XdgSurfaceHandler for XdgEventsHandler {
    fn handle_configure(&mut self, _slf: &Rc<XdgSurface>, serial: u32) {
        self.0.serial.set(Some(serial));
    }
}

impl XdgToplevelHandler for XdgEventsHandler {
    fn handle_configure(
        &mut self,
        _slf: &Rc<XdgToplevel>,
        width: i32,
        height: i32,
        _states: &[u8],
    ) {
        self.0.size.set(Some((width, height)));
    }

    fn handle_close(&mut self, _slf: &Rc<XdgToplevel>) {
        self.0.closed.set(true);
    }
}

impl XdgPopupHandler for XdgEventsHandler {
    fn handle_configure(&mut self, _slf: &Rc<XdgPopup>, x: i32, y: i32, w: i32, h: i32) {
        self.0.popup_pos.set(Some((x, y, w, h)));
    }
}

/// Keyboard focus as the client saw it.
#[derive(Default)]
pub struct KeyboardLog {
    pub focus: RefCell<Option<Rc<WlSurface>>>,
    pub enters: Cell<u32>,
    /// Keys pressed (evdev codes), in order.
    pub keys: RefCell<Vec<u32>>,
}

/// Pointer events as the client saw them.
#[derive(Default)]
pub struct PointerLog {
    /// Surface entered and the surface-local position.
    pub enters: RefCell<Vec<(Rc<WlSurface>, f64, f64)>>,
    pub leaves: Cell<u32>,
    pub motions: RefCell<Vec<(f64, f64)>>,
    pub buttons: Cell<u32>,
}

struct PointerLogHandler(Rc<PointerLog>);

impl WlPointerHandler for PointerLogHandler {
    fn handle_enter(
        &mut self,
        _slf: &Rc<WlPointer>,
        _serial: u32,
        surface: &Rc<WlSurface>,
        x: Fixed,
        y: Fixed,
    ) {
        self.0
            .enters
            .borrow_mut()
            .push((surface.clone(), x.to_f64(), y.to_f64()));
    }
    fn handle_leave(&mut self, _slf: &Rc<WlPointer>, _serial: u32, _surface: &Rc<WlSurface>) {
        self.0.leaves.set(self.0.leaves.get() + 1);
    }
    fn handle_motion(&mut self, _slf: &Rc<WlPointer>, _time: u32, x: Fixed, y: Fixed) {
        self.0.motions.borrow_mut().push((x.to_f64(), y.to_f64()));
    }
    fn handle_button(
        &mut self,
        _slf: &Rc<WlPointer>,
        _serial: u32,
        _time: u32,
        _button: u32,
        _state: WlPointerButtonState,
    ) {
        self.0.buttons.set(self.0.buttons.get() + 1);
    }
}

struct SeatCaps(Rc<Cell<u32>>);

impl WlSeatHandler for SeatCaps {
    fn handle_capabilities(&mut self, _slf: &Rc<WlSeat>, capabilities: WlSeatCapability) {
        self.0.set(capabilities.0);
    }
}

struct KeyboardLogHandler(Rc<KeyboardLog>);

impl WlKeyboardHandler for KeyboardLogHandler {
    fn handle_enter(
        &mut self,
        _slf: &Rc<WlKeyboard>,
        _serial: u32,
        surface: &Rc<WlSurface>,
        _keys: &[u8],
    ) {
        self.0.enters.set(self.0.enters.get() + 1);
        *self.0.focus.borrow_mut() = Some(surface.clone());
    }

    fn handle_leave(&mut self, _slf: &Rc<WlKeyboard>, _serial: u32, _surface: &Rc<WlSurface>) {
        *self.0.focus.borrow_mut() = None;
    }

    fn handle_key(
        &mut self,
        _slf: &Rc<WlKeyboard>,
        _serial: u32,
        _time: u32,
        key: u32,
        state: wl_proxy::protocols::wayland::wl_keyboard::WlKeyboardKeyState,
    ) {
        if state == wl_proxy::protocols::wayland::wl_keyboard::WlKeyboardKeyState::PRESSED {
            self.0.keys.borrow_mut().push(key);
        }
    }

    fn handle_keymap(
        &mut self,
        _slf: &Rc<WlKeyboard>,
        _format: wl_proxy::protocols::wayland::wl_keyboard::WlKeyboardKeymapFormat,
        _fd: &Rc<OwnedFd>,
        _size: u32,
    ) {
    }
}

pub struct Toplevel {
    pub surface: Rc<WlSurface>,
    pub xdg: Rc<XdgSurface>,
    pub toplevel: Rc<XdgToplevel>,
    pub ev: Rc<XdgEvents>,
}

impl Toplevel {
    /// Destroys the toplevel in the protocol's order: role, xdg_surface, surface.
    pub fn destroy(self) {
        self.toplevel.send_destroy();
        self.xdg.send_destroy();
        self.surface.send_destroy();
    }
}

pub struct Popup {
    pub surface: Rc<WlSurface>,
    pub xdg: Rc<XdgSurface>,
    pub popup: Rc<XdgPopup>,
    pub ev: Rc<XdgEvents>,
}

impl Popup {
    pub fn destroy(self) {
        self.popup.send_destroy();
        self.xdg.send_destroy();
        self.surface.send_destroy();
    }
}
