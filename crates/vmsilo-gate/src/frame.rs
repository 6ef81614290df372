//! The gate-owned toplevel that wraps each guest toplevel: the frame in the VM's colour with
//! its label band, the guest's surface a subsurface inside it; and the identity rewrite of
//! titles and app_ids.
//!
//! The connection code calls [`start`] once per client before its first request is read, and
//! [`on_bind`] for every global the client binds after the policy allowed it and the bind was
//! forwarded. Everything else happens in the handlers installed here.
//!
//! Structure of one framed window (all upstream, on the client's own compositor connection):
//!
//! ```text
//! F  (gate wl_surface, xdg_surface XF, xdg_toplevel TF; buffer: one clear pixel scaled
//!     to the frame size with wp_viewporter, or the band without it)
//! ├── S      guest toplevel surface, desync subsurface at (BORDER, BAND) (+ offset, below)
//! │   └── …  the guest's own subsurfaces (they stay in S's subtree)
//! ├── band   gate subsurface at (0, 0)              ┐ created after S, so stacked above
//! ├── left   gate subsurface at (0, BAND)           │ S and S's whole subtree: nothing
//! ├── right  gate subsurface at (w − BORDER, BAND)  │ the guest draws can cover them
//! └── bottom gate subsurface at (0, h − BORDER)     ┘
//! ```
//!
//! The frame encloses the union of S's subtree: a guest subsurface outside S's rectangle
//! grows the frame (S moves inside F) instead of being drawn outside it. The guest's `X`/`T`
//! (xdg_surface/xdg_toplevel) are served by the gate and never reach the compositor; their
//! requests are translated onto XF/TF, and XF/TF events onto X/T. See `docs/gate.md`,
//! "The frame".

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};

use wl_proxy::client::Client;
use wl_proxy::fixed::Fixed;
use wl_proxy::object::{Object, ObjectCoreApi, ObjectRcUtils, ObjectUtils};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::linux_dmabuf_v1::zwp_linux_buffer_params_v1::{
    ZwpLinuxBufferParamsV1, ZwpLinuxBufferParamsV1Flags, ZwpLinuxBufferParamsV1Handler,
};
use wl_proxy::protocols::linux_dmabuf_v1::zwp_linux_dmabuf_v1::{
    ZwpLinuxDmabufV1, ZwpLinuxDmabufV1Handler,
};
use wl_proxy::protocols::single_pixel_buffer_v1::wp_single_pixel_buffer_manager_v1::{
    WpSinglePixelBufferManagerV1, WpSinglePixelBufferManagerV1Handler,
};
use wl_proxy::protocols::viewporter::wp_viewport::{WpViewport, WpViewportHandler};
use wl_proxy::protocols::viewporter::wp_viewporter::{WpViewporter, WpViewporterHandler};
use wl_proxy::protocols::wayland::wl_buffer::{WlBuffer, WlBufferHandler};
use wl_proxy::protocols::wayland::wl_callback::{WlCallback, WlCallbackHandler};
use wl_proxy::protocols::wayland::wl_compositor::{WlCompositor, WlCompositorHandler};
use wl_proxy::protocols::wayland::wl_keyboard::{WlKeyboard, WlKeyboardHandler};
use wl_proxy::protocols::wayland::wl_output::{WlOutput, WlOutputTransform};
use wl_proxy::protocols::wayland::wl_pointer::{
    WlPointer, WlPointerAxis, WlPointerAxisRelativeDirection, WlPointerAxisSource,
    WlPointerButtonState, WlPointerHandler,
};
use wl_proxy::protocols::wayland::wl_registry::{WlRegistry, WlRegistryHandler};
use wl_proxy::protocols::wayland::wl_seat::{WlSeat, WlSeatHandler};
use wl_proxy::protocols::wayland::wl_shm::{WlShm, WlShmFormat, WlShmHandler};
use wl_proxy::protocols::wayland::wl_shm_pool::{WlShmPool, WlShmPoolHandler};
use wl_proxy::protocols::wayland::wl_subcompositor::{WlSubcompositor, WlSubcompositorHandler};
use wl_proxy::protocols::wayland::wl_subsurface::{WlSubsurface, WlSubsurfaceHandler};
use wl_proxy::protocols::wayland::wl_surface::{WlSurface, WlSurfaceHandler};
use wl_proxy::protocols::wayland::wl_touch::{WlTouch, WlTouchHandler};
use wl_proxy::protocols::xdg_decoration_unstable_v1::zxdg_decoration_manager_v1::ZxdgDecorationManagerV1;
use wl_proxy::protocols::xdg_decoration_unstable_v1::zxdg_toplevel_decoration_v1::{
    ZxdgToplevelDecorationV1, ZxdgToplevelDecorationV1Mode,
};
use wl_proxy::protocols::xdg_shell::xdg_popup::{XdgPopup, XdgPopupHandler};
use wl_proxy::protocols::xdg_shell::xdg_positioner::{
    XdgPositioner, XdgPositionerAnchor, XdgPositionerConstraintAdjustment, XdgPositionerGravity,
    XdgPositionerHandler,
};
use wl_proxy::protocols::xdg_shell::xdg_surface::{XdgSurface, XdgSurfaceHandler};
use wl_proxy::protocols::xdg_shell::xdg_toplevel::{
    XdgToplevel, XdgToplevelHandler, XdgToplevelResizeEdge,
};
use wl_proxy::protocols::xdg_shell::xdg_wm_base::{XdgWmBase, XdgWmBaseHandler};
use wl_proxy::state::State;

use crate::conn::Conn;
use crate::draw;
use crate::identity::Identity;
use crate::layout::{self, BAND, BORDER, Extents, Layout};

/// Most surfaces one guest surface tree may have before the client is cut off (the frame has
/// to walk the tree on every commit).
pub const MAX_TREE: usize = 256;
/// Most framed toplevels one client may have at once (each costs the gate and the
/// compositor eight surfaces and a label buffer).
pub const MAX_WINDOWS: usize = 1024;
/// Deepest subsurface nesting the gate follows.
const MAX_DEPTH: usize = 32;
/// Configure serials remembered per window (acks of others are dropped).
const MAX_SERIALS: usize = 32;
/// Left mouse button (linux/input-event-codes.h BTN_LEFT).
const BTN_LEFT: u32 = 0x110;

thread_local! {
    /// The frame state of each connection in this process (one in the gate's per-client
    /// processes; several in tests).
    static SHARED: RefCell<Vec<(Weak<Conn>, Rc<Shared>)>> = const { RefCell::new(Vec::new()) };
}

/// Per-connection frame state.
struct Shared {
    identity: Rc<Identity>,
    frame: bool,
    conn: Weak<Conn>,
    globals: RefCell<Globals>,
    ready: Cell<bool>,
    suspended: RefCell<Option<Rc<Client>>>,
    windows: RefCell<Vec<Weak<Window>>>,
    warnings: Cell<u64>,
    /// One pixel in the VM colour and one transparent pixel, shared by every window's
    /// plain strips (scaled with wp_viewporter).
    pixels: RefCell<Option<(Rc<WlBuffer>, Rc<WlBuffer>)>>,
}

/// The gate's own globals, bound on its own registry (server-side only).
#[derive(Default)]
struct Globals {
    compositor: Option<Rc<WlCompositor>>,
    subcompositor: Option<Rc<WlSubcompositor>>,
    shm: Option<Rc<WlShm>>,
    wm_base: Option<Rc<XdgWmBase>>,
    viewporter: Option<Rc<WpViewporter>>,
    decoration: Option<Rc<ZxdgDecorationManagerV1>>,
}

impl Shared {
    /// Logs a warning, at most 20 times per connection and then every 10 000th time.
    fn warn(&self, msg: &str) {
        let n = self.warnings.get() + 1;
        self.warnings.set(n);
        if n <= 20 || n.is_multiple_of(10_000) {
            log::warn!(
                "vmsilo-gate frame ({}): {msg} (warning {n})",
                self.identity.vm
            );
        }
    }

    /// Cuts the client off: a protocol error naming what it did, no more of its requests
    /// are read, and the connection code ends it (`Conn::cut_off`).
    fn cut_off(&self, client: Option<Rc<Client>>, msg: &str) {
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        if conn.cut_off.replace(true) {
            return;
        }
        log::warn!(
            "vmsilo-gate frame ({}): cutting the client off: {msg}",
            self.identity.vm
        );
        if let Some(client) = client {
            let display = client.display().clone();
            display.send_error(display.clone(), 3, msg);
            client.set_suspended(true);
        }
    }

    /// The shared colour and clear pixels (created on first use).
    fn pixels(&self, shm: &Rc<WlShm>) -> std::io::Result<(Rc<WlBuffer>, Rc<WlBuffer>)> {
        if let Some(p) = self.pixels.borrow().as_ref() {
            return Ok(p.clone());
        }
        let one = |px: u32| -> std::io::Result<Rc<WlBuffer>> {
            let img = draw::Image {
                width: 1,
                height: 1,
                pixels: vec![px],
            };
            shm_buffer(shm, &img)?.ok_or_else(|| std::io::Error::other("empty pixel"))
        };
        let p = (one(self.identity.color.argb())?, one(0)?);
        *self.pixels.borrow_mut() = Some(p.clone());
        Ok(p)
    }

    /// The window whose gate surface `surface` is, and whether it is the band.
    fn window_of_gate_surface(&self, surface: &Rc<WlSurface>) -> Option<(Rc<Window>, bool)> {
        let mut windows = self.windows.borrow_mut();
        windows.retain(|w| w.strong_count() > 0);
        for w in windows.iter().filter_map(Weak::upgrade) {
            if Rc::ptr_eq(&w.f, surface) {
                // F is the band only when it shows the band (no viewporter).
                let band = w.viewport.is_none();
                return Some((w, band));
            }
            if let Some(i) = w.strips.iter().position(|(s, _, _)| Rc::ptr_eq(s, surface)) {
                return Some((w.clone(), i == FILL || i == LABEL));
            }
        }
        None
    }
}

fn shared_for(conn: &Rc<Conn>) -> Option<Rc<Shared>> {
    SHARED.with(|s| {
        s.borrow()
            .iter()
            .find(|(c, _)| c.upgrade().is_some_and(|c| Rc::ptr_eq(&c, conn)))
            .map(|(_, sh)| sh.clone())
    })
}

/// The guest surface a gate frame surface wraps (for events the compositor sends about the
/// frame that the guest must see about its own surface: keyboard focus, text input, drag
/// and drop). `None` if `surface` is not a gate frame surface.
pub fn guest_surface_for(surface: &Rc<WlSurface>) -> Option<Rc<WlSurface>> {
    SHARED.with(|s| {
        for (_, sh) in s.borrow().iter() {
            if let Some((w, _)) = sh.window_of_gate_surface(surface) {
                return Some(w.guest_surface.clone());
            }
        }
        None
    })
}

/// Whether `surface` is one of the gate's own frame surfaces (never shown to the guest).
pub fn is_gate_surface(surface: &Rc<WlSurface>) -> bool {
    SHARED.with(|s| {
        s.borrow()
            .iter()
            .any(|(_, sh)| sh.window_of_gate_surface(surface).is_some())
    })
}

/// Prepares the frame machinery for one client connection: binds the gate's own globals on
/// a registry of its own on the compositor connection of `state`. The client is suspended
/// at its first bind until the gate's registry round trip has completed, so that no guest
/// toplevel can arrive before the gate can frame it.
pub fn start(conn: &Rc<Conn>, state: &Rc<State>) {
    let sh = Rc::new(Shared {
        identity: conn.identity.clone(),
        frame: conn.frame,
        conn: Rc::downgrade(conn),
        globals: RefCell::new(Globals::default()),
        ready: Cell::new(false),
        suspended: RefCell::new(None),
        windows: RefCell::new(Vec::new()),
        warnings: Cell::new(0),
        pixels: RefCell::new(None),
    });
    SHARED.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|(c, _)| c.strong_count() > 0);
        s.push((Rc::downgrade(conn), sh.clone()));
    });
    let display = state.display();
    let registry = display.new_send_get_registry();
    registry.set_forward_to_client(false);
    registry.set_handler(GateRegistry {
        sh: Rc::downgrade(&sh),
    });
    let sync = display.new_send_sync();
    sync.set_forward_to_client(false);
    sync.set_handler(GateReady {
        sh: Rc::downgrade(&sh),
    });
}

/// Called for every global a client binds (after the policy allowed it and the bind was
/// forwarded), so that the frame can install its handlers on `obj`.
pub fn on_bind(conn: &Rc<Conn>, interface: ObjectInterface, obj: &Rc<dyn Object>) {
    let Some(sh) = shared_for(conn) else {
        return;
    };
    if !sh.ready.get()
        && let Some(client) = obj.client()
    {
        let mut s = sh.suspended.borrow_mut();
        if s.is_none() {
            client.set_suspended(true);
            *s = Some(client);
        }
    }
    if !sh.frame {
        if let Some(o) = obj.try_downcast::<XdgWmBase>() {
            o.set_handler(GuestWmBase { sh });
        }
        return;
    }
    match interface {
        ObjectInterface::WlCompositor => {
            if let Some(o) = obj.try_downcast::<WlCompositor>() {
                o.set_handler(GuestCompositor { sh });
            }
        }
        ObjectInterface::WlSubcompositor => {
            if let Some(o) = obj.try_downcast::<WlSubcompositor>() {
                o.set_handler(GuestSubcompositor { sh });
            }
        }
        ObjectInterface::WlShm => {
            if let Some(o) = obj.try_downcast::<WlShm>() {
                o.set_handler(GuestShm);
            }
        }
        ObjectInterface::XdgWmBase => {
            if let Some(o) = obj.try_downcast::<XdgWmBase>() {
                o.set_handler(GuestWmBase { sh });
            }
        }
        ObjectInterface::WpViewporter => {
            if let Some(o) = obj.try_downcast::<WpViewporter>() {
                o.set_handler(GuestViewporter);
            }
        }
        ObjectInterface::ZwpLinuxDmabufV1 => {
            if let Some(o) = obj.try_downcast::<ZwpLinuxDmabufV1>() {
                o.set_handler(GuestDmabuf);
            }
        }
        ObjectInterface::WpSinglePixelBufferManagerV1 => {
            if let Some(o) = obj.try_downcast::<WpSinglePixelBufferManagerV1>() {
                o.set_handler(GuestSinglePixel);
            }
        }
        ObjectInterface::WlSeat => {
            if let Some(o) = obj.try_downcast::<WlSeat>() {
                o.set_handler(GuestSeat { sh });
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// The gate's own registry.

struct GateRegistry {
    sh: Weak<Shared>,
}

fn bind<P: Object + wl_proxy::object::ConcreteObject>(
    registry: &Rc<WlRegistry>,
    name: u32,
    version: u32,
    max: u32,
) -> Rc<P> {
    let obj: Rc<P> = registry.state().create_object::<P>(version.min(max));
    obj.set_forward_to_client(false);
    registry.send_bind(name, obj.clone());
    obj
}

impl WlRegistryHandler for GateRegistry {
    fn handle_global(
        &mut self,
        slf: &Rc<WlRegistry>,
        name: u32,
        interface: ObjectInterface,
        version: u32,
    ) {
        let Some(sh) = self.sh.upgrade() else {
            return;
        };
        let mut g = sh.globals.borrow_mut();
        match interface {
            ObjectInterface::WlCompositor if g.compositor.is_none() => {
                g.compositor = Some(bind(slf, name, version, 4));
            }
            ObjectInterface::WlSubcompositor if g.subcompositor.is_none() => {
                g.subcompositor = Some(bind(slf, name, version, 1));
            }
            ObjectInterface::WlShm if g.shm.is_none() => {
                g.shm = Some(bind(slf, name, version, 1));
            }
            ObjectInterface::XdgWmBase if g.wm_base.is_none() => {
                let wm: Rc<XdgWmBase> = bind(slf, name, version, 7);
                wm.set_handler(GateWmBase);
                g.wm_base = Some(wm);
            }
            ObjectInterface::WpViewporter if g.viewporter.is_none() => {
                g.viewporter = Some(bind(slf, name, version, 1));
            }
            ObjectInterface::ZxdgDecorationManagerV1 if g.decoration.is_none() => {
                g.decoration = Some(bind(slf, name, version, 1));
            }
            _ => {}
        }
    }

    fn handle_global_remove(&mut self, _slf: &Rc<WlRegistry>, _name: u32) {}
}

struct GateReady {
    sh: Weak<Shared>,
}

impl WlCallbackHandler for GateReady {
    fn handle_done(&mut self, _slf: &Rc<WlCallback>, _data: u32) {
        let Some(sh) = self.sh.upgrade() else {
            return;
        };
        sh.ready.set(true);
        if let Some(client) = sh.suspended.borrow_mut().take()
            && !sh.conn.upgrade().is_some_and(|c| c.cut_off.get())
        {
            client.set_suspended(false);
        }
    }
}

struct GateWmBase;

impl XdgWmBaseHandler for GateWmBase {
    fn handle_ping(&mut self, slf: &Rc<XdgWmBase>, serial: u32) {
        slf.send_pong(serial);
    }
}

// ---------------------------------------------------------------------------------------
// Buffer sizes.

/// The size of a guest buffer, recorded when it is created.
struct BufferSize(i32, i32);

impl WlBufferHandler for BufferSize {}

fn buffer_size(buffer: &Rc<WlBuffer>) -> Option<(i32, i32)> {
    buffer
        .try_get_handler_ref::<BufferSize>()
        .ok()
        .map(|s| (s.0, s.1))
}

struct GuestShm;

impl WlShmHandler for GuestShm {
    fn handle_create_pool(
        &mut self,
        slf: &Rc<WlShm>,
        id: &Rc<WlShmPool>,
        fd: &Rc<OwnedFd>,
        size: i32,
    ) {
        slf.send_create_pool(id, fd, size);
        id.set_handler(GuestPool);
    }
}

struct GuestPool;

impl WlShmPoolHandler for GuestPool {
    fn handle_create_buffer(
        &mut self,
        slf: &Rc<WlShmPool>,
        id: &Rc<WlBuffer>,
        offset: i32,
        width: i32,
        height: i32,
        stride: i32,
        format: WlShmFormat,
    ) {
        slf.send_create_buffer(id, offset, width, height, stride, format);
        id.set_handler(BufferSize(width, height));
    }
}

struct GuestDmabuf;

impl ZwpLinuxDmabufV1Handler for GuestDmabuf {
    fn handle_create_params(
        &mut self,
        slf: &Rc<ZwpLinuxDmabufV1>,
        params_id: &Rc<ZwpLinuxBufferParamsV1>,
    ) {
        slf.send_create_params(params_id);
        params_id.set_handler(GuestParams { size: (0, 0) });
    }
}

struct GuestParams {
    size: (i32, i32),
}

impl ZwpLinuxBufferParamsV1Handler for GuestParams {
    fn handle_create(
        &mut self,
        slf: &Rc<ZwpLinuxBufferParamsV1>,
        width: i32,
        height: i32,
        format: u32,
        flags: ZwpLinuxBufferParamsV1Flags,
    ) {
        self.size = (width, height);
        slf.send_create(width, height, format, flags);
    }

    fn handle_created(&mut self, slf: &Rc<ZwpLinuxBufferParamsV1>, buffer: &Rc<WlBuffer>) {
        buffer.set_handler(BufferSize(self.size.0, self.size.1));
        slf.send_created(buffer);
    }

    fn handle_create_immed(
        &mut self,
        slf: &Rc<ZwpLinuxBufferParamsV1>,
        buffer_id: &Rc<WlBuffer>,
        width: i32,
        height: i32,
        format: u32,
        flags: ZwpLinuxBufferParamsV1Flags,
    ) {
        slf.send_create_immed(buffer_id, width, height, format, flags);
        buffer_id.set_handler(BufferSize(width, height));
    }
}

struct GuestSinglePixel;

impl WpSinglePixelBufferManagerV1Handler for GuestSinglePixel {
    fn handle_create_u32_rgba_buffer(
        &mut self,
        slf: &Rc<WpSinglePixelBufferManagerV1>,
        id: &Rc<WlBuffer>,
        r: u32,
        g: u32,
        b: u32,
        a: u32,
    ) {
        slf.send_create_u32_rgba_buffer(id, r, g, b, a);
        id.set_handler(BufferSize(1, 1));
    }
}

// ---------------------------------------------------------------------------------------
// Guest surfaces and their trees.

/// The part of a guest surface's state that decides its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SurfState {
    buffer: Option<(i32, i32)>,
    scale: i32,
    transform: u32,
    viewport: Option<(i32, i32)>,
}

impl Default for SurfState {
    fn default() -> Self {
        Self {
            buffer: None,
            scale: 1,
            transform: 0,
            viewport: None,
        }
    }
}

/// What the gate knows about one guest surface. It mirrors the compositor's state machine
/// for the parts that decide sizes and positions: pending state, the cache of a
/// synchronized subsurface (applied when its parent's state is applied) and the state the
/// compositor shows. The frame is computed from the shown state only, so a guest cannot
/// shrink the frame with a commit the compositor has not applied.
#[derive(Default)]
struct SurfInfo {
    /// Pending attach: `Some(None)` = null buffer, `Some(Some(size))` = buffer of that size.
    pending_buffer: Cell<Option<Option<(i32, i32)>>>,
    pending_scale: Cell<Option<i32>>,
    pending_transform: Cell<Option<u32>>,
    pending_viewport: Cell<Option<Option<(i32, i32)>>>,
    /// Committed but cached (a synchronized subsurface waiting for its parent).
    cached: Cell<Option<SurfState>>,
    /// Applied: what the compositor shows.
    current: Cell<SurfState>,
    /// Parent when this is a guest subsurface.
    parent: RefCell<Weak<SurfInfo>>,
    /// Whether this subsurface is in synchronized mode (the default for a new one).
    sync: Cell<bool>,
    /// Position: set but not committed by the parent, committed by a parent whose state is
    /// cached, and applied.
    pending_pos: Cell<Option<(i32, i32)>>,
    cached_pos: Cell<Option<(i32, i32)>>,
    pos: Cell<(i32, i32)>,
    children: RefCell<Vec<Weak<SurfInfo>>>,
    /// The window when this is a wrapped toplevel surface.
    window: RefCell<Weak<Window>>,
    /// The surface has been given an xdg role by the guest.
    has_xdg: Cell<bool>,
}

impl SurfInfo {
    fn new() -> Rc<SurfInfo> {
        Rc::new(SurfInfo::default())
    }

    /// The surface's own logical size, as shown.
    fn size(&self) -> (i32, i32) {
        let c = self.current.get();
        layout::surface_size(c.buffer, c.scale, c.transform, c.viewport)
    }

    /// The window this surface's tree belongs to, if any.
    fn window(self: &Rc<Self>) -> Option<Rc<Window>> {
        let mut cur = self.clone();
        for _ in 0..MAX_DEPTH {
            if let Some(w) = cur.window.borrow().upgrade() {
                return Some(w);
            }
            let parent = cur.parent.borrow().upgrade()?;
            cur = parent;
        }
        None
    }

    /// Whether a commit of this surface is cached: it or an ancestor subsurface is in
    /// synchronized mode. A wrapped toplevel surface is the gate's desync subsurface.
    fn effectively_sync(self: &Rc<Self>) -> bool {
        let mut cur = self.clone();
        for _ in 0..MAX_DEPTH {
            if cur.window.borrow().upgrade().is_some() {
                return false;
            }
            let Some(parent) = cur.parent.borrow().upgrade() else {
                return false;
            };
            if cur.sync.get() {
                return true;
            }
            cur = parent;
        }
        true
    }

    /// `wl_surface.commit`: pending state onto the cache (or the shown state), then cached
    /// when synchronized, applied otherwise (with the caches of synchronized children).
    fn commit(self: &Rc<Self>) {
        let mut st = self.cached.get().unwrap_or(self.current.get());
        if let Some(b) = self.pending_buffer.take() {
            st.buffer = b;
        }
        if let Some(s) = self.pending_scale.take() {
            st.scale = s;
        }
        if let Some(t) = self.pending_transform.take() {
            st.transform = t;
        }
        if let Some(v) = self.pending_viewport.take() {
            st.viewport = v;
        }
        let sync = self.effectively_sync();
        // The children's positions are part of this surface's state.
        for c in self.children.borrow().iter().filter_map(Weak::upgrade) {
            if let Some(p) = c.pending_pos.take() {
                c.cached_pos.set(Some(p));
            }
        }
        self.cached.set(Some(st));
        if !sync {
            self.apply(0);
        }
    }

    /// Applies the cached state, and that of synchronized children (recursively).
    fn apply(&self, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(st) = self.cached.take() {
            self.current.set(st);
        }
        for c in self.children.borrow().iter().filter_map(Weak::upgrade) {
            if let Some(p) = c.cached_pos.take() {
                c.pos.set(p);
            }
            if c.sync.get() {
                c.apply(depth + 1);
            }
        }
    }

    /// The union of this surface's tree as shown, relative to its origin; `None` when the
    /// tree is larger than [`MAX_TREE`] surfaces or deeper than `MAX_DEPTH`.
    fn extents(&self, budget: &mut usize, depth: usize) -> Option<Extents> {
        if *budget == 0 || depth > MAX_DEPTH {
            return None;
        }
        *budget -= 1;
        let (w, h) = self.size();
        let mut ext = Extents::at(0, 0, w, h);
        let children = self.children.borrow();
        for c in children.iter().filter_map(Weak::upgrade) {
            // A subsurface shows only with a buffer (and its children only through it).
            if c.current.get().buffer.is_none() {
                continue;
            }
            let (x, y) = c.pos.get();
            let ce = c.extents(budget, depth + 1)?;
            ext = ext.union(ce.translate(x, y));
        }
        Some(ext)
    }
}

fn info_of(surface: &Rc<WlSurface>) -> Option<Rc<SurfInfo>> {
    surface
        .try_get_handler_ref::<GuestSurface>()
        .ok()
        .map(|h| h.info.clone())
}

struct GuestCompositor {
    sh: Rc<Shared>,
}

impl WlCompositorHandler for GuestCompositor {
    fn handle_create_surface(&mut self, slf: &Rc<WlCompositor>, id: &Rc<WlSurface>) {
        slf.send_create_surface(id);
        id.set_handler(GuestSurface {
            sh: self.sh.clone(),
            info: SurfInfo::new(),
        });
    }
}

struct GuestSurface {
    sh: Rc<Shared>,
    info: Rc<SurfInfo>,
}

impl WlSurfaceHandler for GuestSurface {
    fn handle_attach(
        &mut self,
        slf: &Rc<WlSurface>,
        buffer: Option<&Rc<WlBuffer>>,
        x: i32,
        y: i32,
    ) {
        let size = match buffer {
            None => None,
            Some(b) => match buffer_size(b) {
                Some(s) => Some(s),
                None => {
                    self.sh.cut_off(
                        slf.client(),
                        "vmsilo-gate: a buffer of unknown size was attached (the frame must \
                         know every buffer's size)",
                    );
                    return;
                }
            },
        };
        self.info.pending_buffer.set(Some(size));
        // Offsets move a surface relative to its position: inside a framed tree that could
        // move content out of the frame, so they are dropped there.
        let (x, y) = if self.info.window().is_some() {
            (0, 0)
        } else {
            (x, y)
        };
        slf.send_attach(buffer, x, y);
    }

    fn handle_offset(&mut self, slf: &Rc<WlSurface>, x: i32, y: i32) {
        if self.info.window().is_none() {
            slf.send_offset(x, y);
        }
    }

    fn handle_set_buffer_scale(&mut self, slf: &Rc<WlSurface>, scale: i32) {
        self.info.pending_scale.set(Some(scale));
        slf.send_set_buffer_scale(scale);
    }

    fn handle_set_buffer_transform(&mut self, slf: &Rc<WlSurface>, transform: WlOutputTransform) {
        self.info.pending_transform.set(Some(transform.0));
        slf.send_set_buffer_transform(transform);
    }

    fn handle_commit(&mut self, slf: &Rc<WlSurface>) {
        self.info.commit();
        slf.send_commit();
        if let Some(win) = self.info.window() {
            win.on_tree_commit(slf.client());
        }
    }

    fn handle_destroy(&mut self, slf: &Rc<WlSurface>) {
        slf.send_destroy();
        detach_from_parent(&self.info);
        slf.unset_handler();
    }
}

fn detach_from_parent(info: &Rc<SurfInfo>) {
    let parent = std::mem::take(&mut *info.parent.borrow_mut());
    if let Some(p) = parent.upgrade() {
        p.children
            .borrow_mut()
            .retain(|c| c.upgrade().is_some_and(|c| !Rc::ptr_eq(&c, info)));
    }
}

struct GuestSubcompositor {
    sh: Rc<Shared>,
}

impl WlSubcompositorHandler for GuestSubcompositor {
    fn handle_get_subsurface(
        &mut self,
        slf: &Rc<WlSubcompositor>,
        id: &Rc<WlSubsurface>,
        surface: &Rc<WlSurface>,
        parent: &Rc<WlSurface>,
    ) {
        slf.send_get_subsurface(id, surface, parent);
        let (Some(child), Some(par)) = (info_of(surface), info_of(parent)) else {
            return;
        };
        if child.window.borrow().upgrade().is_some() || child.has_xdg.get() {
            // The compositor rejects this (the surface has a role); nothing to track.
            return;
        }
        {
            let mut children = par.children.borrow_mut();
            children.retain(|c| c.strong_count() > 0);
            if children.len() >= MAX_TREE {
                drop(children);
                self.sh.cut_off(
                    slf.client(),
                    "vmsilo-gate: too many subsurfaces on one surface",
                );
                return;
            }
            children.push(Rc::downgrade(&child));
        }
        *child.parent.borrow_mut() = Rc::downgrade(&par);
        child.pos.set((0, 0));
        child.pending_pos.set(None);
        child.cached_pos.set(None);
        child.sync.set(true);
        id.set_handler(GuestSubsurface { info: child });
    }
}

struct GuestSubsurface {
    info: Rc<SurfInfo>,
}

impl WlSubsurfaceHandler for GuestSubsurface {
    fn handle_set_position(&mut self, slf: &Rc<WlSubsurface>, x: i32, y: i32) {
        // Applied with the parent's state (see SurfInfo::commit/apply).
        self.info.pending_pos.set(Some((x, y)));
        slf.send_set_position(x, y);
    }

    fn handle_set_sync(&mut self, slf: &Rc<WlSubsurface>) {
        self.info.sync.set(true);
        slf.send_set_sync();
    }

    fn handle_set_desync(&mut self, slf: &Rc<WlSubsurface>) {
        self.info.sync.set(false);
        slf.send_set_desync();
        // weston and wlroots apply a cached state at once when the subsurface becomes
        // effectively desynchronized: so does the mirror, and the frame follows.
        if !self.info.effectively_sync() && self.info.cached.get().is_some() {
            self.info.apply(0);
            if let Some(win) = self.info.window() {
                win.on_tree_commit(slf.client());
            }
        }
    }

    fn handle_destroy(&mut self, slf: &Rc<WlSubsurface>) {
        slf.send_destroy();
        detach_from_parent(&self.info);
        slf.unset_handler();
    }
}

struct GuestViewporter;

impl WpViewporterHandler for GuestViewporter {
    fn handle_get_viewport(
        &mut self,
        slf: &Rc<WpViewporter>,
        id: &Rc<WpViewport>,
        surface: &Rc<WlSurface>,
    ) {
        slf.send_get_viewport(id, surface);
        if let Some(info) = info_of(surface) {
            id.set_handler(GuestViewport { info });
        }
    }
}

struct GuestViewport {
    info: Rc<SurfInfo>,
}

impl WpViewportHandler for GuestViewport {
    fn handle_set_destination(&mut self, slf: &Rc<WpViewport>, width: i32, height: i32) {
        let v = (width > 0 && height > 0).then_some((width, height));
        self.info.pending_viewport.set(Some(v));
        slf.send_set_destination(width, height);
    }

    fn handle_destroy(&mut self, slf: &Rc<WpViewport>) {
        self.info.pending_viewport.set(Some(None));
        slf.send_destroy();
        slf.unset_handler();
    }
}

// ---------------------------------------------------------------------------------------
// xdg_wm_base, positioners.

struct GuestWmBase {
    sh: Rc<Shared>,
}

impl XdgWmBaseHandler for GuestWmBase {
    fn handle_get_xdg_surface(
        &mut self,
        slf: &Rc<XdgWmBase>,
        id: &Rc<XdgSurface>,
        surface: &Rc<WlSurface>,
    ) {
        if !self.sh.frame {
            slf.send_get_xdg_surface(id, surface);
            id.set_handler(PlainXdgSurface {
                sh: self.sh.clone(),
            });
            return;
        }
        let info = info_of(surface);
        if let Some(info) = &info
            && (info.has_xdg.replace(true) || info.parent.borrow().upgrade().is_some())
        {
            self.sh.cut_off(
                slf.client(),
                "vmsilo-gate: xdg_wm_base.get_xdg_surface on a surface that already has \
                     a role",
            );
            return;
        }
        id.set_handler(GuestXdgSurface {
            sh: self.sh.clone(),
            wm_base: slf.clone(),
            surface: surface.clone(),
            info,
            role: Role::None,
            geometry: None,
        });
    }

    fn handle_create_positioner(&mut self, _slf: &Rc<XdgWmBase>, id: &Rc<XdgPositioner>) {
        if !self.sh.frame {
            _slf.send_create_positioner(id);
            return;
        }
        id.set_handler(GuestPositioner::default());
    }
}

/// A guest positioner: recorded, replayed onto a gate positioner at get_popup/reposition
/// time (with the anchor rectangle moved into frame coordinates).
#[derive(Default, Clone)]
struct GuestPositioner {
    size: Option<(i32, i32)>,
    anchor_rect: Option<(i32, i32, i32, i32)>,
    anchor: Option<u32>,
    gravity: Option<u32>,
    constraint: Option<u32>,
    offset: Option<(i32, i32)>,
    reactive: bool,
    parent_size: Option<(i32, i32)>,
    parent_configure: Option<u32>,
}

impl XdgPositionerHandler for GuestPositioner {
    fn handle_destroy(&mut self, slf: &Rc<XdgPositioner>) {
        slf.delete_id();
        slf.unset_handler();
    }
    fn handle_set_size(&mut self, _slf: &Rc<XdgPositioner>, w: i32, h: i32) {
        self.size = Some((w, h));
    }
    fn handle_set_anchor_rect(&mut self, _slf: &Rc<XdgPositioner>, x: i32, y: i32, w: i32, h: i32) {
        self.anchor_rect = Some((x, y, w, h));
    }
    fn handle_set_anchor(&mut self, _slf: &Rc<XdgPositioner>, anchor: XdgPositionerAnchor) {
        self.anchor = Some(anchor.0);
    }
    fn handle_set_gravity(&mut self, _slf: &Rc<XdgPositioner>, gravity: XdgPositionerGravity) {
        self.gravity = Some(gravity.0);
    }
    fn handle_set_constraint_adjustment(
        &mut self,
        _slf: &Rc<XdgPositioner>,
        c: XdgPositionerConstraintAdjustment,
    ) {
        self.constraint = Some(c.0);
    }
    fn handle_set_offset(&mut self, _slf: &Rc<XdgPositioner>, x: i32, y: i32) {
        self.offset = Some((x, y));
    }
    fn handle_set_reactive(&mut self, _slf: &Rc<XdgPositioner>) {
        self.reactive = true;
    }
    fn handle_set_parent_size(&mut self, _slf: &Rc<XdgPositioner>, w: i32, h: i32) {
        self.parent_size = Some((w, h));
    }
    fn handle_set_parent_configure(&mut self, _slf: &Rc<XdgPositioner>, serial: u32) {
        self.parent_configure = Some(serial);
    }
}

impl GuestPositioner {
    /// A positioner on the compositor with this one's state, the anchor rectangle moved by
    /// `offset` (guest window geometry → frame window geometry) and the parent size grown
    /// by the frame when the parent is framed.
    fn replay(
        &self,
        wm_base: &Rc<XdgWmBase>,
        offset: (i32, i32),
        framed: bool,
    ) -> Rc<XdgPositioner> {
        let p = wm_base.new_send_create_positioner();
        p.set_forward_to_client(false);
        if let Some((w, h)) = self.size {
            p.send_set_size(w, h);
        }
        if let Some((x, y, w, h)) = self.anchor_rect {
            let (x, y) = translate_point((x, y), offset);
            p.send_set_anchor_rect(x, y, w, h);
        }
        if let Some(a) = self.anchor {
            p.send_set_anchor(XdgPositionerAnchor(a));
        }
        if let Some(g) = self.gravity {
            p.send_set_gravity(XdgPositionerGravity(g));
        }
        if let Some(c) = self.constraint {
            p.send_set_constraint_adjustment(XdgPositionerConstraintAdjustment(c));
        }
        if let Some((x, y)) = self.offset {
            p.send_set_offset(x, y);
        }
        if self.reactive {
            p.send_set_reactive();
        }
        if let Some((w, h)) = self.parent_size {
            let (w, h) = if framed {
                layout::outer_limit(w, h, (0, 0))
            } else {
                (w, h)
            };
            p.send_set_parent_size(w, h);
        }
        if let Some(s) = self.parent_configure {
            p.send_set_parent_configure(s);
        }
        p
    }
}

/// A point in guest window-geometry coordinates moved into frame coordinates (saturating).
pub fn translate_point(p: (i32, i32), offset: (i32, i32)) -> (i32, i32) {
    (p.0.saturating_add(offset.0), p.1.saturating_add(offset.1))
}

// ---------------------------------------------------------------------------------------
// Guest xdg_surface.

enum Role {
    /// No role yet: nothing forwarded.
    None,
    /// A framed toplevel.
    Toplevel(Rc<Window>),
    /// A popup: the xdg_surface was forwarded and is a plain proxied object now.
    Forwarded,
}

struct GuestXdgSurface {
    sh: Rc<Shared>,
    wm_base: Rc<XdgWmBase>,
    surface: Rc<WlSurface>,
    info: Option<Rc<SurfInfo>>,
    role: Role,
    geometry: Option<(i32, i32, i32, i32)>,
}

impl GuestXdgSurface {
    /// The framed window, if this is a framed toplevel's xdg_surface.
    fn window(&self) -> Option<Rc<Window>> {
        match &self.role {
            Role::Toplevel(w) => Some(w.clone()),
            _ => None,
        }
    }
}

impl XdgSurfaceHandler for GuestXdgSurface {
    fn handle_get_toplevel(&mut self, slf: &Rc<XdgSurface>, id: &Rc<XdgToplevel>) {
        if !matches!(self.role, Role::None) {
            self.sh.cut_off(
                slf.client(),
                "vmsilo-gate: xdg_surface.get_toplevel on an xdg_surface that has a role",
            );
            return;
        }
        let Some(info) = self.info.clone() else {
            self.sh
                .cut_off(slf.client(), "vmsilo-gate: toplevel on an unknown surface");
            return;
        };
        let live = {
            let mut w = self.sh.windows.borrow_mut();
            w.retain(|w| w.strong_count() > 0);
            w.len()
        };
        if live >= MAX_WINDOWS {
            self.sh.cut_off(
                slf.client(),
                "vmsilo-gate: too many toplevels on one connection",
            );
            return;
        }
        let Some(win) = Window::create(&self.sh, &self.surface, &info, slf, id) else {
            self.sh.cut_off(
                slf.client(),
                "vmsilo-gate: the compositor lacks wl_compositor, wl_subcompositor, wl_shm or \
                 xdg_wm_base; the gate cannot frame windows",
            );
            return;
        };
        win.geometry.set(self.geometry);
        id.set_handler(GuestToplevel { win: win.clone() });
        self.role = Role::Toplevel(win);
    }

    fn handle_get_popup(
        &mut self,
        slf: &Rc<XdgSurface>,
        id: &Rc<XdgPopup>,
        parent: Option<&Rc<XdgSurface>>,
        positioner: &Rc<XdgPositioner>,
    ) {
        if !matches!(self.role, Role::None) {
            self.sh.cut_off(
                slf.client(),
                "vmsilo-gate: xdg_surface.get_popup on an xdg_surface that has a role",
            );
            return;
        }
        let Ok(pos) = positioner
            .try_get_handler_ref::<GuestPositioner>()
            .map(|p| p.clone())
        else {
            self.sh.cut_off(
                slf.client(),
                "vmsilo-gate: get_popup with an unknown positioner",
            );
            return;
        };
        // The parent: a framed toplevel's popups hang off the frame's xdg_surface; other
        // parents (popups) are forwarded objects already.
        let parent_win = parent.and_then(|p| {
            p.try_get_handler_ref::<GuestXdgSurface>()
                .ok()
                .and_then(|h| h.window())
        });
        let (up_parent, offset) = match (&parent_win, parent) {
            (Some(w), _) => (Some(w.xf.clone()), w.popup_offset()),
            (None, Some(p)) => (Some(p.clone()), (0, 0)),
            (None, None) => (None, (0, 0)),
        };
        // Forward the xdg_surface now, with the state recorded so far.
        self.wm_base.send_get_xdg_surface(slf, &self.surface);
        if let Some((x, y, w, h)) = self.geometry {
            slf.send_set_window_geometry(x, y, w, h);
        }
        let up_pos = pos.replay(&self.wm_base, offset, parent_win.is_some());
        slf.send_get_popup(id, up_parent.as_ref(), &up_pos);
        up_pos.send_destroy();
        id.set_handler(GuestPopup {
            wm_base: self.wm_base.clone(),
            parent: parent_win.as_ref().map(Rc::downgrade),
            offset,
        });
        self.role = Role::Forwarded;
    }

    fn handle_set_window_geometry(
        &mut self,
        slf: &Rc<XdgSurface>,
        x: i32,
        y: i32,
        width: i32,
        height: i32,
    ) {
        match &self.role {
            Role::Forwarded => slf.send_set_window_geometry(x, y, width, height),
            Role::Toplevel(w) => {
                if width > 0 && height > 0 {
                    w.geometry.set(Some((x, y, width, height)));
                }
            }
            Role::None => {
                if width > 0 && height > 0 {
                    self.geometry = Some((x, y, width, height));
                }
            }
        }
    }

    fn handle_ack_configure(&mut self, slf: &Rc<XdgSurface>, serial: u32) {
        match &self.role {
            Role::Forwarded => slf.send_ack_configure(serial),
            Role::Toplevel(w) => w.ack(serial),
            Role::None => {}
        }
    }

    fn handle_destroy(&mut self, slf: &Rc<XdgSurface>) {
        if let Some(info) = &self.info {
            info.has_xdg.set(false);
        }
        match std::mem::replace(&mut self.role, Role::None) {
            Role::Forwarded => slf.send_destroy(),
            Role::Toplevel(w) => {
                w.destroy();
                slf.delete_id();
            }
            Role::None => slf.delete_id(),
        }
        slf.unset_handler();
    }
}

struct GuestPopup {
    wm_base: Rc<XdgWmBase>,
    /// The framed toplevel this popup hangs off, if any (positions are translated).
    parent: Option<Weak<Window>>,
    offset: (i32, i32),
}

impl GuestPopup {
    fn offset(&mut self) -> (i32, i32) {
        if let Some(w) = self.parent.as_ref().and_then(Weak::upgrade) {
            self.offset = w.popup_offset();
        }
        self.offset
    }
}

impl XdgPopupHandler for GuestPopup {
    fn handle_configure(&mut self, slf: &Rc<XdgPopup>, x: i32, y: i32, width: i32, height: i32) {
        let (ox, oy) = self.offset;
        slf.send_configure(x.saturating_sub(ox), y.saturating_sub(oy), width, height);
    }

    fn handle_reposition(
        &mut self,
        slf: &Rc<XdgPopup>,
        positioner: &Rc<XdgPositioner>,
        token: u32,
    ) {
        let Ok(pos) = positioner
            .try_get_handler_ref::<GuestPositioner>()
            .map(|p| p.clone())
        else {
            return;
        };
        let offset = self.offset();
        let up = pos.replay(&self.wm_base, offset, self.parent.is_some());
        slf.send_reposition(&up, token);
        up.send_destroy();
    }
}

// ---------------------------------------------------------------------------------------
// The framed window.

/// Frame buffers of one window (one per distinct strip; the band is attached to both F and
/// the band subsurface, the side to left and right).
struct FrameBuffers {
    layout: Layout,
    /// Without wp_viewporter: band, side and bottom at full size.
    full: Option<[Option<Rc<WlBuffer>>; 3]>,
    /// With it: the label part of the band, and its width.
    label: Option<(i32, Rc<WlBuffer>)>,
}

impl FrameBuffers {
    fn destroy(self) {
        for b in self.full.into_iter().flatten().flatten() {
            b.send_destroy();
        }
        if let Some((_, b)) = self.label {
            b.send_destroy();
        }
    }
}

/// Indices of the frame's strip surfaces, bottom to top: the band's plain fill, the label
/// (above the fill), the left, right and bottom ring.
const FILL: usize = 0;
const LABEL: usize = 1;
const LEFT: usize = 2;
const RIGHT: usize = 3;
const BOTTOM: usize = 4;

/// A point or a size.
type Xy = (i32, i32);

/// A strip's surface, its subsurface and (with wp_viewporter) its viewport.
type Strip = (Rc<WlSurface>, Rc<WlSubsurface>, Option<Rc<WpViewport>>);

/// Positions and (scaled) sizes of the strips for `l`; the label keeps its buffer's size.
fn strip_geometry(l: &Layout) -> ([Xy; 5], [Xy; 5]) {
    let mut pos = [(0, 0); 5];
    let mut size = [(0, 0); 5];
    pos[FILL] = (0, 0);
    size[FILL] = (l.width, BAND);
    pos[LABEL] = (0, 0);
    pos[LEFT] = (0, BAND);
    size[LEFT] = (BORDER, l.content_h);
    pos[RIGHT] = (l.width - BORDER, BAND);
    size[RIGHT] = (BORDER, l.content_h);
    pos[BOTTOM] = (0, l.height - BORDER);
    size[BOTTOM] = (l.width, BORDER);
    (pos, size)
}

/// Window lifecycle as the compositor sees F.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// F has not had its initial (bufferless) commit.
    Fresh,
    /// Initial commit done, waiting for the guest to ack a configure.
    Configuring,
    /// A configure was acked: the next guest commit with content maps F.
    Acked,
    /// F is mapped.
    Mapped,
}

struct Window {
    sh: Rc<Shared>,
    guest_surface: Rc<WlSurface>,
    info: Rc<SurfInfo>,
    guest_xdg: Weak<XdgSurface>,
    guest_toplevel: Weak<XdgToplevel>,
    f: Rc<WlSurface>,
    xf: Rc<XdgSurface>,
    tf: Rc<XdgToplevel>,
    decoration: Option<Rc<ZxdgToplevelDecorationV1>>,
    /// F's viewport, when the compositor has wp_viewporter: F then shows one transparent
    /// pixel scaled to the whole frame, so that F's own size is the frame's (compositors
    /// clip window geometry to the surface tree's bounds at commit time, before the strips'
    /// state is applied). Without it, F shows the band.
    viewport: Option<Rc<WpViewport>>,
    sub_s: Rc<WlSubsurface>,
    /// See [`FILL`] etc.; each with a viewport when the compositor has wp_viewporter.
    strips: [Strip; 5],
    shm: Rc<WlShm>,
    geometry: Cell<Option<(i32, i32, i32, i32)>>,
    phase: Cell<Phase>,
    /// An ack was forwarded and F has not been committed since.
    ack_pending: Cell<bool>,
    serials: RefCell<Vec<u32>>,
    last_configure: RefCell<Option<(i32, i32, Vec<u8>)>>,
    buffers: RefCell<Option<FrameBuffers>>,
    destroyed: Cell<bool>,
}

impl Window {
    fn create(
        sh: &Rc<Shared>,
        surface: &Rc<WlSurface>,
        info: &Rc<SurfInfo>,
        x: &Rc<XdgSurface>,
        t: &Rc<XdgToplevel>,
    ) -> Option<Rc<Window>> {
        let g = sh.globals.borrow();
        let (comp, sub, shm, wm) = (
            g.compositor.clone()?,
            g.subcompositor.clone()?,
            g.shm.clone()?,
            g.wm_base.clone()?,
        );
        let f = comp.new_send_create_surface();
        f.set_forward_to_client(false);
        let xf = wm.new_send_get_xdg_surface(&f);
        xf.set_forward_to_client(false);
        let tf = xf.new_send_get_toplevel();
        tf.set_forward_to_client(false);
        let viewport = g.viewporter.as_ref().map(|v| {
            let vp = v.new_send_get_viewport(&f);
            vp.set_forward_to_client(false);
            vp
        });
        let decoration = g.decoration.as_ref().map(|m| {
            let d = m.new_send_get_toplevel_decoration(&tf);
            d.set_forward_to_client(false);
            d.send_set_mode(ZxdgToplevelDecorationV1Mode::SERVER_SIDE);
            d
        });
        // An untitled window is still labelled.
        tf.send_set_title(&sh.identity.title(""));
        tf.send_set_app_id(&sh.identity.app_id(""));
        let sub_s = sub.new_send_get_subsurface(surface, &f);
        sub_s.set_forward_to_client(false);
        sub_s.send_set_position(BORDER, BAND);
        sub_s.send_set_desync();
        // Created after S, so stacked above S and its whole subtree.
        let strips = std::array::from_fn(|_| {
            let s = comp.new_send_create_surface();
            s.set_forward_to_client(false);
            let ss = sub.new_send_get_subsurface(&s, &f);
            ss.set_forward_to_client(false);
            let vp = g.viewporter.as_ref().map(|v| {
                let vp = v.new_send_get_viewport(&s);
                vp.set_forward_to_client(false);
                vp
            });
            (s, ss, vp)
        });
        let win = Rc::new(Window {
            sh: sh.clone(),
            guest_surface: surface.clone(),
            info: info.clone(),
            guest_xdg: Rc::downgrade(x),
            guest_toplevel: Rc::downgrade(t),
            f,
            xf,
            tf,
            decoration,
            viewport,
            sub_s,
            strips,
            shm,
            geometry: Cell::new(None),
            phase: Cell::new(Phase::Fresh),
            ack_pending: Cell::new(false),
            serials: RefCell::new(Vec::new()),
            last_configure: RefCell::new(None),
            buffers: RefCell::new(None),
            destroyed: Cell::new(false),
        });
        win.xf.set_handler(FrameXdgSurface {
            win: Rc::downgrade(&win),
        });
        win.tf.set_handler(FrameToplevel {
            win: Rc::downgrade(&win),
        });
        *info.window.borrow_mut() = Rc::downgrade(&win);
        sh.windows.borrow_mut().push(Rc::downgrade(&win));
        Some(win)
    }

    fn layout(&self) -> Option<Layout> {
        self.buffers.borrow().as_ref().map(|b| b.layout)
    }

    /// Guest window-geometry coordinates → frame coordinates.
    fn popup_offset(&self) -> (i32, i32) {
        let l = self.layout().unwrap_or_else(|| {
            Layout::for_extents(Extents::at(0, 0, 0, 0)).expect("empty layout exists")
        });
        layout::popup_offset(&l, self.geometry.get())
    }

    fn margin(&self) -> (i32, i32) {
        match self.layout() {
            Some(l) => layout::geometry_margin(&l, self.geometry.get()),
            None => (0, 0),
        }
    }

    fn ack(&self, serial: u32) {
        let mut serials = self.serials.borrow_mut();
        let Some(i) = serials.iter().position(|&s| s == serial) else {
            self.sh
                .warn("guest acked a configure serial the gate never sent; dropped");
            return;
        };
        serials.drain(..=i);
        drop(serials);
        self.xf.send_ack_configure(serial);
        self.ack_pending.set(true);
        if self.phase.get() == Phase::Configuring {
            self.phase.set(Phase::Acked);
        }
    }

    /// A surface of the guest's tree was committed.
    fn on_tree_commit(self: &Rc<Self>, client: Option<Rc<Client>>) {
        if self.destroyed.get() {
            return;
        }
        match self.phase.get() {
            Phase::Fresh => {
                // The guest's initial commit: F makes its own, bufferless, to get a configure.
                self.f.send_commit();
                self.phase.set(Phase::Configuring);
                return;
            }
            Phase::Configuring => return,
            Phase::Acked | Phase::Mapped => {}
        }
        if self.info.current.get().buffer.is_none() {
            if self.phase.get() == Phase::Mapped {
                // The guest unmapped its toplevel: unmap the frame; the next guest commit is
                // an initial commit again.
                self.f.send_attach(None, 0, 0);
                self.f.send_commit();
                self.ack_pending.set(false);
                if let Some(b) = self.buffers.borrow_mut().take() {
                    b.destroy();
                }
                self.phase.set(Phase::Fresh);
            }
            return;
        }
        let mut budget = MAX_TREE;
        let Some(ext) = self.info.extents(&mut budget, 0) else {
            self.sh.cut_off(
                client,
                "vmsilo-gate: the window's surface tree is too large or too deep",
            );
            return;
        };
        let Some(l) = Layout::for_extents(ext) else {
            self.sh.cut_off(
                client,
                "vmsilo-gate: the window's content is larger than 16384 pixels",
            );
            return;
        };
        if self.phase.get() == Phase::Mapped && self.layout() == Some(l) {
            if self.ack_pending.replace(false) {
                self.f.send_commit();
            }
            return;
        }
        if let Err(e) = self.relayout(l) {
            self.sh.cut_off(
                client,
                &format!("vmsilo-gate: could not draw the frame: {e}"),
            );
            return;
        }
        self.ack_pending.set(false);
        self.phase.set(Phase::Mapped);
    }

    /// Draws and commits the frame for `l`.
    fn relayout(&self, l: Layout) -> std::io::Result<()> {
        let color = self.sh.identity.color;
        let label = self.sh.identity.label();
        let (positions, sizes) = strip_geometry(&l);
        let old = self.buffers.borrow_mut().take();
        let new = match &self.viewport {
            Some(f_vp) => {
                let (colour, clear) = self.sh.pixels(&self.shm)?;
                let lw = draw::label_width(l.width, &label);
                let (label_buf, old) = match old {
                    Some(FrameBuffers {
                        label: Some((w, b)),
                        ..
                    }) if w == lw => (Some((w, b)), None),
                    o => {
                        let img = draw::label_strip(l.width, color, &label);
                        (shm_buffer(&self.shm, &img)?.map(|b| (lw, b)), o)
                    }
                };
                if let Some(o) = old {
                    o.destroy();
                }
                for (i, (s, ss, vp)) in self.strips.iter().enumerate() {
                    let (x, y) = positions[i];
                    ss.send_set_position(x, y);
                    if i == LABEL {
                        s.send_attach(label_buf.as_ref().map(|(_, b)| b), 0, 0);
                    } else if let (Some(vp), (w, h)) = (vp, sizes[i]) {
                        if w > 0 && h > 0 {
                            s.send_attach(Some(&colour), 0, 0);
                            vp.send_set_destination(w, h);
                        } else {
                            s.send_attach(None, 0, 0);
                        }
                    }
                    s.send_damage(0, 0, i32::MAX, i32::MAX);
                    s.send_commit();
                }
                self.f.send_attach(Some(&clear), 0, 0);
                f_vp.send_set_destination(l.width, l.height);
                FrameBuffers {
                    layout: l,
                    full: None,
                    label: label_buf,
                }
            }
            None => {
                let strips = draw::strips(&l, color, &label);
                let band = shm_buffer(&self.shm, &strips.band)?;
                let side = shm_buffer(&self.shm, &strips.side)?;
                let bottom = shm_buffer(&self.shm, &strips.bottom)?;
                let bufs = [&band, &None, &side, &side, &bottom];
                for (i, (s, ss, _)) in self.strips.iter().enumerate() {
                    let (x, y) = positions[i];
                    ss.send_set_position(x, y);
                    s.send_attach(bufs[i].as_ref(), 0, 0);
                    s.send_damage(0, 0, i32::MAX, i32::MAX);
                    s.send_commit();
                }
                self.f.send_attach(band.as_ref(), 0, 0);
                // The old buffers had memory of their own: destroying them now is safe even
                // if the compositor still shows them until this commit applies.
                if let Some(o) = old {
                    o.destroy();
                }
                FrameBuffers {
                    layout: l,
                    full: Some([band, side, bottom]),
                    label: None,
                }
            }
        };
        self.sub_s.send_set_position(l.surface_x, l.surface_y);
        self.xf.send_set_window_geometry(0, 0, l.width, l.height);
        self.f.send_damage(0, 0, i32::MAX, i32::MAX);
        self.f.send_commit();
        *self.buffers.borrow_mut() = Some(new);
        Ok(())
    }

    fn destroy(&self) {
        if self.destroyed.replace(true) {
            return;
        }
        if let Some(d) = &self.decoration {
            d.send_destroy();
        }
        self.tf.send_destroy();
        self.xf.send_destroy();
        self.sub_s.send_destroy();
        for (s, ss, vp) in &self.strips {
            if let Some(vp) = vp {
                vp.send_destroy();
            }
            ss.send_destroy();
            s.send_destroy();
        }
        if let Some(vp) = &self.viewport {
            vp.send_destroy();
        }
        self.f.send_destroy();
        if let Some(b) = self.buffers.borrow_mut().take() {
            b.destroy();
        }
        self.tf.unset_handler();
        self.xf.unset_handler();
        *self.info.window.borrow_mut() = Weak::new();
    }
}

/// A `wl_shm` ARGB8888 buffer with `img` in a memfd of its own; `None` for an empty image.
fn shm_buffer(shm: &Rc<WlShm>, img: &draw::Image) -> std::io::Result<Option<Rc<WlBuffer>>> {
    if img.width <= 0 || img.height <= 0 {
        return Ok(None);
    }
    let bytes = img.to_le_bytes();
    let len = i32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let fd =
        nix::sys::memfd::memfd_create(c"vmsilo-gate-frame", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(std::io::Error::from)?;
    let mut file = File::from(fd);
    file.write_all(&bytes)?;
    let fd = Rc::new(OwnedFd::from(file));
    let pool = shm.new_send_create_pool(&fd, len);
    pool.set_forward_to_client(false);
    let buf = pool.new_send_create_buffer(
        0,
        img.width,
        img.height,
        img.width * 4,
        WlShmFormat::ARGB8888,
    );
    buf.set_forward_to_client(false);
    pool.send_destroy();
    Ok(Some(buf))
}

/// Configure states the guest's toplevel version knows (xdg_toplevel.state since-versions:
/// 1–4 v1, tiled 5–8 v2, suspended 9 v6, constrained 10–13 v7).
pub fn states_for_version(states: &[u8], version: u32) -> Vec<u8> {
    let since = |s: u32| match s {
        1..=4 => 1,
        5..=8 => 2,
        9 => 6,
        10..=13 => 7,
        _ => u32::MAX,
    };
    states
        .chunks_exact(4)
        .filter(|c| since(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])) <= version)
        .flatten()
        .copied()
        .collect()
}

struct FrameXdgSurface {
    win: Weak<Window>,
}

impl XdgSurfaceHandler for FrameXdgSurface {
    fn handle_configure(&mut self, _slf: &Rc<XdgSurface>, serial: u32) {
        let Some(win) = self.win.upgrade() else {
            return;
        };
        {
            let mut s = win.serials.borrow_mut();
            if s.len() >= MAX_SERIALS {
                s.remove(0);
            }
            s.push(serial);
        }
        let (Some(x), Some(t)) = (win.guest_xdg.upgrade(), win.guest_toplevel.upgrade()) else {
            return;
        };
        // The toplevel's configure precedes its xdg_surface's when the toplevel state changed;
        // otherwise (e.g. a decoration-only configure) the last one still holds.
        let (w, h, states) = win
            .last_configure
            .borrow()
            .clone()
            .unwrap_or((0, 0, Vec::new()));
        let (iw, ih) = layout::inner_size(w, h, win.margin());
        t.send_configure(iw, ih, &states_for_version(&states, t.version()));
        x.send_configure(serial);
    }
}

struct FrameToplevel {
    win: Weak<Window>,
}

impl XdgToplevelHandler for FrameToplevel {
    fn handle_configure(&mut self, _slf: &Rc<XdgToplevel>, width: i32, height: i32, states: &[u8]) {
        if let Some(win) = self.win.upgrade() {
            *win.last_configure.borrow_mut() = Some((width, height, states.to_vec()));
        }
    }

    fn handle_close(&mut self, _slf: &Rc<XdgToplevel>) {
        if let Some(t) = self.win.upgrade().and_then(|w| w.guest_toplevel.upgrade()) {
            t.send_close();
        }
    }

    fn handle_configure_bounds(&mut self, _slf: &Rc<XdgToplevel>, width: i32, height: i32) {
        let Some(win) = self.win.upgrade() else {
            return;
        };
        if let Some(t) = win.guest_toplevel.upgrade()
            && t.version() >= XdgToplevel::MSG__CONFIGURE_BOUNDS__SINCE
        {
            let (w, h) = layout::inner_size(width, height, win.margin());
            t.send_configure_bounds(w, h);
        }
    }

    fn handle_wm_capabilities(&mut self, _slf: &Rc<XdgToplevel>, capabilities: &[u8]) {
        if let Some(t) = self.win.upgrade().and_then(|w| w.guest_toplevel.upgrade())
            && t.version() >= XdgToplevel::MSG__WM_CAPABILITIES__SINCE
        {
            t.send_wm_capabilities(capabilities);
        }
    }
}

/// The guest's toplevel, served by the gate: requests go to the frame's toplevel TF, with
/// titles and app_ids rewritten and sizes grown by the frame.
struct GuestToplevel {
    win: Rc<Window>,
}

impl XdgToplevelHandler for GuestToplevel {
    fn handle_destroy(&mut self, slf: &Rc<XdgToplevel>) {
        self.win.destroy();
        slf.delete_id();
        slf.unset_handler();
    }

    fn handle_set_parent(&mut self, _slf: &Rc<XdgToplevel>, parent: Option<&Rc<XdgToplevel>>) {
        let p = parent.and_then(|p| {
            p.try_get_handler_ref::<GuestToplevel>()
                .ok()
                .map(|h| h.win.tf.clone())
        });
        self.win.tf.send_set_parent(p.as_ref());
    }

    fn handle_set_title(&mut self, _slf: &Rc<XdgToplevel>, title: &str) {
        self.win
            .tf
            .send_set_title(&self.win.sh.identity.title(title));
    }

    fn handle_set_app_id(&mut self, _slf: &Rc<XdgToplevel>, app_id: &str) {
        self.win
            .tf
            .send_set_app_id(&self.win.sh.identity.app_id(app_id));
    }

    fn handle_show_window_menu(
        &mut self,
        _slf: &Rc<XdgToplevel>,
        seat: &Rc<WlSeat>,
        serial: u32,
        x: i32,
        y: i32,
    ) {
        let (x, y) = translate_point((x, y), self.win.popup_offset());
        self.win.tf.send_show_window_menu(seat, serial, x, y);
    }

    fn handle_move(&mut self, _slf: &Rc<XdgToplevel>, seat: &Rc<WlSeat>, serial: u32) {
        self.win.tf.send_move(seat, serial);
    }

    fn handle_resize(
        &mut self,
        _slf: &Rc<XdgToplevel>,
        seat: &Rc<WlSeat>,
        serial: u32,
        edges: XdgToplevelResizeEdge,
    ) {
        self.win.tf.send_resize(seat, serial, edges);
    }

    fn handle_set_max_size(&mut self, _slf: &Rc<XdgToplevel>, width: i32, height: i32) {
        let (w, h) = layout::outer_limit(width, height, self.win.margin());
        self.win.tf.send_set_max_size(w, h);
    }

    fn handle_set_min_size(&mut self, _slf: &Rc<XdgToplevel>, width: i32, height: i32) {
        let (w, h) = layout::outer_limit(width, height, self.win.margin());
        self.win.tf.send_set_min_size(w, h);
    }

    fn handle_set_maximized(&mut self, _slf: &Rc<XdgToplevel>) {
        self.win.tf.send_set_maximized();
    }

    fn handle_unset_maximized(&mut self, _slf: &Rc<XdgToplevel>) {
        self.win.tf.send_unset_maximized();
    }

    fn handle_set_fullscreen(&mut self, _slf: &Rc<XdgToplevel>, output: Option<&Rc<WlOutput>>) {
        self.win.tf.send_set_fullscreen(output);
    }

    fn handle_unset_fullscreen(&mut self, _slf: &Rc<XdgToplevel>) {
        self.win.tf.send_unset_fullscreen();
    }

    fn handle_set_minimized(&mut self, _slf: &Rc<XdgToplevel>) {
        self.win.tf.send_set_minimized();
    }
}

// ---------------------------------------------------------------------------------------
// --no-frame: the guest's own xdg objects are forwarded, only the identity is rewritten.

struct PlainXdgSurface {
    sh: Rc<Shared>,
}

impl XdgSurfaceHandler for PlainXdgSurface {
    fn handle_get_toplevel(&mut self, slf: &Rc<XdgSurface>, id: &Rc<XdgToplevel>) {
        slf.send_get_toplevel(id);
        id.send_set_title(&self.sh.identity.title(""));
        id.send_set_app_id(&self.sh.identity.app_id(""));
        id.set_handler(PlainToplevel {
            sh: self.sh.clone(),
        });
    }
}

struct PlainToplevel {
    sh: Rc<Shared>,
}

impl XdgToplevelHandler for PlainToplevel {
    fn handle_set_title(&mut self, slf: &Rc<XdgToplevel>, title: &str) {
        slf.send_set_title(&self.sh.identity.title(title));
    }

    fn handle_set_app_id(&mut self, slf: &Rc<XdgToplevel>, app_id: &str) {
        slf.send_set_app_id(&self.sh.identity.app_id(app_id));
    }
}

// ---------------------------------------------------------------------------------------
// Input: events about the gate's surfaces are the gate's. Keyboard focus on the frame is
// focus on the guest surface; pointer and touch on the frame never reach the guest; a left
// press on the band moves the window.

struct GuestSeat {
    sh: Rc<Shared>,
}

impl WlSeatHandler for GuestSeat {
    fn handle_get_pointer(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlPointer>) {
        slf.send_get_pointer(id);
        id.set_handler(GuestPointer {
            sh: self.sh.clone(),
            seat: slf.clone(),
            on_frame: None,
        });
    }

    fn handle_get_keyboard(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlKeyboard>) {
        slf.send_get_keyboard(id);
        id.set_handler(GuestKeyboard {
            sh: self.sh.clone(),
        });
    }

    fn handle_get_touch(&mut self, slf: &Rc<WlSeat>, id: &Rc<WlTouch>) {
        slf.send_get_touch(id);
        id.set_handler(GuestTouch {
            sh: self.sh.clone(),
            frame_points: Vec::new(),
        });
    }
}

struct GuestKeyboard {
    sh: Rc<Shared>,
}

impl GuestKeyboard {
    /// The surface the guest is told about: its own for the frame's, none for other gate
    /// surfaces.
    fn target(&self, surface: &Rc<WlSurface>) -> Option<Rc<WlSurface>> {
        match self.sh.window_of_gate_surface(surface) {
            Some((w, _)) => Some(w.guest_surface.clone()),
            None => surface.client().is_some().then(|| surface.clone()),
        }
    }
}

impl WlKeyboardHandler for GuestKeyboard {
    fn handle_enter(
        &mut self,
        slf: &Rc<WlKeyboard>,
        serial: u32,
        surface: &Rc<WlSurface>,
        keys: &[u8],
    ) {
        if let Some(s) = self.target(surface) {
            slf.send_enter(serial, &s, keys);
        }
    }

    fn handle_leave(&mut self, slf: &Rc<WlKeyboard>, serial: u32, surface: &Rc<WlSurface>) {
        if let Some(s) = self.target(surface) {
            slf.send_leave(serial, &s);
        }
    }
}

struct GuestPointer {
    sh: Rc<Shared>,
    seat: Rc<WlSeat>,
    /// The window whose frame the pointer is on, and whether on the band.
    on_frame: Option<(Weak<Window>, bool)>,
}

impl WlPointerHandler for GuestPointer {
    fn handle_enter(
        &mut self,
        slf: &Rc<WlPointer>,
        serial: u32,
        surface: &Rc<WlSurface>,
        x: Fixed,
        y: Fixed,
    ) {
        if let Some((w, band)) = self.sh.window_of_gate_surface(surface) {
            self.on_frame = Some((Rc::downgrade(&w), band));
            return;
        }
        self.on_frame = None;
        if surface.client().is_some() {
            slf.send_enter(serial, surface, x, y);
        }
    }

    fn handle_leave(&mut self, slf: &Rc<WlPointer>, serial: u32, surface: &Rc<WlSurface>) {
        if self.sh.window_of_gate_surface(surface).is_some() {
            self.on_frame = None;
            return;
        }
        if surface.client().is_some() {
            slf.send_leave(serial, surface);
        }
    }

    fn handle_motion(&mut self, slf: &Rc<WlPointer>, time: u32, x: Fixed, y: Fixed) {
        if self.on_frame.is_none() {
            slf.send_motion(time, x, y);
        }
    }

    fn handle_button(
        &mut self,
        slf: &Rc<WlPointer>,
        serial: u32,
        time: u32,
        button: u32,
        state: WlPointerButtonState,
    ) {
        match &self.on_frame {
            None => slf.send_button(serial, time, button, state),
            Some((w, band)) => {
                if *band
                    && button == BTN_LEFT
                    && state == WlPointerButtonState::PRESSED
                    && let Some(w) = w.upgrade()
                {
                    w.tf.send_move(&self.seat, serial);
                }
            }
        }
    }

    fn handle_axis(&mut self, slf: &Rc<WlPointer>, time: u32, axis: WlPointerAxis, value: Fixed) {
        if self.on_frame.is_none() {
            slf.send_axis(time, axis, value);
        }
    }

    fn handle_frame(&mut self, slf: &Rc<WlPointer>) {
        if self.on_frame.is_none() {
            slf.send_frame();
        }
    }

    fn handle_axis_source(&mut self, slf: &Rc<WlPointer>, s: WlPointerAxisSource) {
        if self.on_frame.is_none() {
            slf.send_axis_source(s);
        }
    }

    fn handle_axis_stop(&mut self, slf: &Rc<WlPointer>, time: u32, axis: WlPointerAxis) {
        if self.on_frame.is_none() {
            slf.send_axis_stop(time, axis);
        }
    }

    fn handle_axis_discrete(&mut self, slf: &Rc<WlPointer>, axis: WlPointerAxis, d: i32) {
        if self.on_frame.is_none() {
            slf.send_axis_discrete(axis, d);
        }
    }

    fn handle_axis_value120(&mut self, slf: &Rc<WlPointer>, axis: WlPointerAxis, v: i32) {
        if self.on_frame.is_none() {
            slf.send_axis_value120(axis, v);
        }
    }

    fn handle_axis_relative_direction(
        &mut self,
        slf: &Rc<WlPointer>,
        axis: WlPointerAxis,
        d: WlPointerAxisRelativeDirection,
    ) {
        if self.on_frame.is_none() {
            slf.send_axis_relative_direction(axis, d);
        }
    }
}

struct GuestTouch {
    sh: Rc<Shared>,
    /// Touch points that went down on a frame (bounded: a touch screen has few).
    frame_points: Vec<i32>,
}

impl WlTouchHandler for GuestTouch {
    fn handle_down(
        &mut self,
        slf: &Rc<WlTouch>,
        serial: u32,
        time: u32,
        surface: &Rc<WlSurface>,
        id: i32,
        x: Fixed,
        y: Fixed,
    ) {
        if self.sh.window_of_gate_surface(surface).is_some() {
            if self.frame_points.len() < 64 {
                self.frame_points.push(id);
            }
            return;
        }
        if surface.client().is_some() {
            slf.send_down(serial, time, surface, id, x, y);
        }
    }

    fn handle_up(&mut self, slf: &Rc<WlTouch>, serial: u32, time: u32, id: i32) {
        if let Some(i) = self.frame_points.iter().position(|&p| p == id) {
            self.frame_points.swap_remove(i);
            return;
        }
        slf.send_up(serial, time, id);
    }

    fn handle_motion(&mut self, slf: &Rc<WlTouch>, time: u32, id: i32, x: Fixed, y: Fixed) {
        if !self.frame_points.contains(&id) {
            slf.send_motion(time, id, x, y);
        }
    }

    fn handle_shape(&mut self, slf: &Rc<WlTouch>, id: i32, major: Fixed, minor: Fixed) {
        if !self.frame_points.contains(&id) {
            slf.send_shape(id, major, minor);
        }
    }

    fn handle_orientation(&mut self, slf: &Rc<WlTouch>, id: i32, orientation: Fixed) {
        if !self.frame_points.contains(&id) {
            slf.send_orientation(id, orientation);
        }
    }

    fn handle_cancel(&mut self, slf: &Rc<WlTouch>) {
        self.frame_points.clear();
        slf.send_cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_states_are_filtered_by_the_guest_version() {
        let st = |v: &[u32]| v.iter().flat_map(|s| s.to_ne_bytes()).collect::<Vec<u8>>();
        let all = st(&[1, 2, 5, 9, 10, 99]);
        assert_eq!(states_for_version(&all, 1), st(&[1, 2]));
        assert_eq!(states_for_version(&all, 2), st(&[1, 2, 5]));
        assert_eq!(states_for_version(&all, 6), st(&[1, 2, 5, 9]));
        assert_eq!(states_for_version(&all, 7), st(&[1, 2, 5, 9, 10]));
        // a ragged array (not a multiple of 4) drops the tail, never panics
        assert_eq!(states_for_version(&[1, 0, 0, 0, 7], 1), st(&[1]));
    }

    /// A root surface (standing in for a wrapped toplevel: never synchronized) with a child.
    fn tree() -> (Rc<SurfInfo>, Rc<SurfInfo>) {
        let root = SurfInfo::new();
        let child = SurfInfo::new();
        *child.parent.borrow_mut() = Rc::downgrade(&root);
        child.sync.set(true);
        root.children.borrow_mut().push(Rc::downgrade(&child));
        root.pending_buffer.set(Some(Some((200, 100))));
        root.commit();
        (root, child)
    }

    fn ext(root: &SurfInfo) -> Option<Extents> {
        root.extents(&mut MAX_TREE.clone(), 0)
    }

    #[test]
    fn test_sync_child_state_shows_only_with_the_parent_commit() {
        let (root, child) = tree();
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 200, 100)));
        child.pending_pos.set(Some((250, -50)));
        child.pending_buffer.set(Some(Some((150, 150))));
        child.commit();
        // cached: neither the buffer nor the position shows yet
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 200, 100)));
        root.commit();
        assert_eq!(
            ext(&root),
            Some(Extents::at(0, -50, 400, 150)),
            "the parent's commit applies the child's cache and its position"
        );
        // A shrink the compositor has not applied (the parent never commits) does not
        // shrink the frame: the child still shows at its old size.
        child.pending_buffer.set(Some(Some((1, 1))));
        child.commit();
        child.pending_pos.set(Some((0, 0)));
        assert_eq!(ext(&root), Some(Extents::at(0, -50, 400, 150)));
        root.commit();
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 200, 100)));
    }

    #[test]
    fn test_desync_child_applies_at_once_and_unmapped_children_do_not_count() {
        let (root, child) = tree();
        child.sync.set(false);
        child.pending_pos.set(Some((300, 0)));
        root.commit();
        child.pending_buffer.set(Some(Some((10, 10))));
        child.commit();
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 310, 100)));
        child.pending_buffer.set(Some(None));
        child.commit();
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 200, 100)));
        // A grandchild of a desync child in sync mode waits for the child.
        let grand = SurfInfo::new();
        *grand.parent.borrow_mut() = Rc::downgrade(&child);
        grand.sync.set(true);
        child.children.borrow_mut().push(Rc::downgrade(&grand));
        child.pending_buffer.set(Some(Some((10, 10))));
        child.commit();
        grand.pending_buffer.set(Some(Some((500, 10))));
        grand.commit();
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 310, 100)));
        child.commit();
        assert_eq!(ext(&root), Some(Extents::at(0, 0, 800, 100)));
        assert!(grand.effectively_sync() && !child.effectively_sync());
    }

    #[test]
    fn test_huge_or_deep_trees_have_no_extents() {
        let root = SurfInfo::new();
        let mut keep = Vec::new();
        for _ in 0..MAX_TREE {
            let c = SurfInfo::new();
            c.current.set(SurfState {
                buffer: Some((1, 1)),
                ..SurfState::default()
            });
            *c.parent.borrow_mut() = Rc::downgrade(&root);
            root.children.borrow_mut().push(Rc::downgrade(&c));
            keep.push(c);
        }
        assert_eq!(
            ext(&root),
            None,
            "MAX_TREE children plus the root is one too many"
        );
        let root = SurfInfo::new();
        let mut cur = root.clone();
        for _ in 0..MAX_DEPTH + 2 {
            let c = SurfInfo::new();
            c.current.set(SurfState {
                buffer: Some((1, 1)),
                ..SurfState::default()
            });
            *c.parent.borrow_mut() = Rc::downgrade(&cur);
            cur.children.borrow_mut().push(Rc::downgrade(&c));
            keep.push(c.clone());
            cur = c;
        }
        assert_eq!(ext(&root), None);
        // window() and effectively_sync() stop at the depth limit instead of looping
        assert!(cur.window().is_none());
        assert!(cur.effectively_sync());
    }

    #[test]
    fn test_translate_point_saturates() {
        assert_eq!(translate_point((10, 20), (4, 24)), (14, 44));
        assert_eq!(
            translate_point((i32::MAX, i32::MIN), (4, -24)),
            (i32::MAX, i32::MIN)
        );
    }
}
