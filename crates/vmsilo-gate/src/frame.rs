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
//!
//! This module holds the connection's frame state, the gate's own globals and the window;
//! `tree` follows guest surfaces (buffer sizes, the subsurface state machine), `xdg` serves
//! the guest's xdg-shell objects, `input` keeps the frame's input events from the guest.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::rc::{Rc, Weak};

use vmsilo_log::Sampler;
use wl_proxy::client::Client;
use wl_proxy::fixed::Fixed;
use wl_proxy::object::{Object, ObjectCoreApi, ObjectRcUtils, ObjectUtils};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::keyboard_shortcuts_inhibit_unstable_v1::zwp_keyboard_shortcuts_inhibit_manager_v1::{
    ZwpKeyboardShortcutsInhibitManagerV1, ZwpKeyboardShortcutsInhibitManagerV1Handler,
};
use wl_proxy::protocols::keyboard_shortcuts_inhibit_unstable_v1::zwp_keyboard_shortcuts_inhibitor_v1::ZwpKeyboardShortcutsInhibitorV1;
use wl_proxy::protocols::text_input_unstable_v3::zwp_text_input_manager_v3::{
    ZwpTextInputManagerV3, ZwpTextInputManagerV3Handler,
};
use wl_proxy::protocols::text_input_unstable_v3::zwp_text_input_v3::{
    ZwpTextInputV3, ZwpTextInputV3Handler,
};
use wl_proxy::protocols::xdg_activation_v1::xdg_activation_token_v1::{
    XdgActivationTokenV1, XdgActivationTokenV1Handler,
};
use wl_proxy::protocols::xdg_activation_v1::xdg_activation_v1::{
    XdgActivationV1, XdgActivationV1Handler,
};
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
use wl_proxy::protocols::xdg_decoration_unstable_v1::zxdg_decoration_manager_v1::{
    ZxdgDecorationManagerV1, ZxdgDecorationManagerV1Handler,
};
use wl_proxy::protocols::xdg_decoration_unstable_v1::zxdg_toplevel_decoration_v1::{
    ZxdgToplevelDecorationV1, ZxdgToplevelDecorationV1Handler, ZxdgToplevelDecorationV1Mode,
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

mod input;
mod tree;
mod xdg;

use input::*;
use tree::*;
use xdg::*;
pub use xdg::{states_for_version, translate_point};

/// Most surfaces one guest surface tree may have before the client is cut off (the frame has
/// to walk the tree on every commit).
pub const MAX_TREE: usize = 256;
/// Most framed toplevels one client may have at once (each costs the gate and the
/// compositor six surfaces, 21 protocol objects and a label buffer of at most ~12 KiB).
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
    warnings: Sampler,
    /// One pixel in the VM colour and one transparent pixel, shared by every window's
    /// plain strips (scaled with wp_viewporter).
    pixels: RefCell<Option<(Rc<WlBuffer>, Rc<WlBuffer>)>>,
    /// The clipboard notice the label band shows after the VM name (see `notice.rs`).
    notice: RefCell<Option<String>>,
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
    /// The band's text: the VM label, and the clipboard notice while one shows.
    fn label(&self) -> String {
        crate::notice::label(&self.identity.label(), self.notice.borrow().as_deref())
    }

    /// Logs a warning, at most 20 times per connection and then every 10 000th time.
    fn warn(&self, msg: &str) {
        if let Some(n) = self.warnings.hit() {
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
        let tile = |px: u32, side: i32| -> std::io::Result<Rc<WlBuffer>> {
            let img = draw::Image {
                width: side,
                height: side,
                pixels: vec![px; side.unsigned_abs() as usize * side.unsigned_abs() as usize],
            };
            shm_buffer(shm, &img)?.ok_or_else(|| std::io::Error::other("empty pixel"))
        };
        // The colour is a COLOUR_TILE-pixel square, not one pixel: pixman (sway's and weston's
        // software renderers) scales with a 16.16 fixed-point transform, and a one-pixel
        // source stretched to a 700-pixel strip came out a few pixels short of the frame's
        // right edge. The transparent buffer under the guest may be one pixel.
        let p = (tile(self.identity.color.argb(), COLOUR_TILE)?, tile(0, 1)?);
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

/// The side of the square colour buffer the strips are scaled from (64 KiB): at most half a
/// pixel of rounding over an 8192-pixel strip under a 16.16 fixed-point scale.
const COLOUR_TILE: i32 = 128;

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

/// Sets the clipboard notice the label band of every window of `conn` shows after the VM
/// name (`None`: the name alone), and redraws the mapped windows' bands. The parent bounds
/// how often this happens (`notice::MIN_GAP`).
pub fn set_notice(conn: &Rc<Conn>, notice: Option<String>) {
    let Some(sh) = shared_for(conn) else {
        return;
    };
    if *sh.notice.borrow() == notice {
        return;
    }
    *sh.notice.borrow_mut() = notice;
    let windows: Vec<Rc<Window>> = {
        let mut w = sh.windows.borrow_mut();
        w.retain(|w| w.strong_count() > 0);
        w.iter().filter_map(Weak::upgrade).collect()
    };
    for w in windows {
        if let Err(e) = w.redraw_label() {
            sh.warn(&format!("could not redraw the label band: {e}"));
        }
    }
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
        warnings: Sampler::new(20, 10_000),
        pixels: RefCell::new(None),
        notice: RefCell::new(None),
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
    let sh = match shared_for(conn) {
        Some(sh) => sh,
        None => {
            // `start` was not called for this connection: start now (fail closed: the
            // client waits for the gate's globals rather than getting unframed windows).
            start(conn, obj.state());
            let Some(sh) = shared_for(conn) else {
                return;
            };
            sh
        }
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
        } else if let Some(o) = obj.try_downcast::<WlSeat>()
            && crate::clip::hook_for(&sh.conn).is_some()
        {
            // The global clipboard's chords are in the keyboard events, framed or not.
            o.set_handler(GuestSeat { sh });
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
        ObjectInterface::ZwpTextInputManagerV3 => {
            if let Some(o) = obj.try_downcast::<ZwpTextInputManagerV3>() {
                o.set_handler(GuestTextInputManager { sh });
            }
        }
        ObjectInterface::XdgActivationV1 => {
            if let Some(o) = obj.try_downcast::<XdgActivationV1>() {
                o.set_handler(GuestActivation { sh });
            }
        }
        ObjectInterface::ZwpKeyboardShortcutsInhibitManagerV1 => {
            if let Some(o) = obj.try_downcast::<ZwpKeyboardShortcutsInhibitManagerV1>() {
                o.set_handler(GuestShortcutsInhibit);
            }
        }
        ObjectInterface::ZxdgDecorationManagerV1 => {
            // The policy hides it; should it be offered anyway, the guest's decoration
            // objects are served here (its toplevels never reach the compositor).
            if let Some(o) = obj.try_downcast::<ZxdgDecorationManagerV1>() {
                o.set_handler(GuestDecorationManager { sh });
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
                // v6: preferred buffer scale/transform events on F (handed to the guest).
                g.compositor = Some(bind(slf, name, version, 6));
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
// The framed window.

/// Frame buffers of one window (one per distinct strip; the band is attached to both F and
/// the band subsurface, the side to left and right).
struct FrameBuffers {
    layout: Layout,
    /// Without wp_viewporter: band, side and bottom at full size.
    full: Option<[Option<Rc<WlBuffer>>; 3]>,
    /// With it: the label part of the band, and its width.
    label: Option<(i32, Rc<WlBuffer>)>,
    /// The text drawn in the band.
    text: String,
    /// Without wp_viewporter, after a notice changed the text: the band the fill strip
    /// shows (F keeps the band of `full`, hidden under the fill strip).
    fill: Option<Rc<WlBuffer>>,
}

impl FrameBuffers {
    fn destroy(self) {
        for b in self.full.into_iter().flatten().flatten() {
            b.send_destroy();
        }
        if let Some((_, b)) = self.label {
            b.send_destroy();
        }
        if let Some(b) = self.fill {
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
        win.f.set_handler(FrameSurface {
            guest: Rc::downgrade(surface),
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
        let l = self.layout().unwrap_or(Layout::EMPTY);
        layout::popup_offset(&l, self.geometry.get())
    }

    fn margin(&self) -> (i32, i32) {
        match self.layout() {
            Some(l) => layout::geometry_margin(&l, self.geometry.get()),
            None => (0, 0),
        }
    }

    fn ack(&self, serial: u32) {
        if self.destroyed.get() {
            return;
        }
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
        let label = self.sh.label();
        let (positions, sizes) = strip_geometry(&l);
        let old = self.buffers.borrow_mut().take();
        let new = match &self.viewport {
            Some(f_vp) => {
                let (colour, clear) = self.sh.pixels(&self.shm)?;
                let lw = draw::label_width(l.width, &label);
                let (label_buf, old) = match old {
                    Some(FrameBuffers {
                        label: Some((w, b)),
                        text,
                        ..
                    }) if w == lw && text == label => (Some((w, b)), None),
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
                    text: label,
                    fill: None,
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
                    text: label,
                    fill: None,
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

    /// Redraws the band's text (a clipboard notice came or went) without touching the rest
    /// of the frame: only the strip that shows the text is committed, desynchronised for
    /// that one commit so that it shows without a commit of F (which could apply a
    /// configure the guest acked but has not drawn yet).
    fn redraw_label(&self) -> std::io::Result<()> {
        if self.destroyed.get() || self.phase.get() != Phase::Mapped {
            return Ok(());
        }
        let label = self.sh.label();
        let mut buffers = self.buffers.borrow_mut();
        let Some(b) = buffers.as_mut() else {
            return Ok(());
        };
        if b.text == label {
            return Ok(());
        }
        let color = self.sh.identity.color;
        let (img, strip) = match self.viewport {
            Some(_) => (draw::label_strip(b.layout.width, color, &label), LABEL),
            None => (draw::band(b.layout.width, color, &label), FILL),
        };
        let buf = shm_buffer(&self.shm, &img)?;
        let (s, ss, _) = &self.strips[strip];
        ss.send_set_desync();
        s.send_attach(buf.as_ref(), 0, 0);
        s.send_damage(0, 0, i32::MAX, i32::MAX);
        s.send_commit();
        ss.send_set_sync();
        // The old buffer had memory of its own (see `relayout`).
        match self.viewport {
            Some(_) => {
                if let Some((_, old)) = b.label.take() {
                    old.send_destroy();
                }
                b.label = buf.map(|n| (img.width, n));
            }
            None => {
                if let Some(old) = std::mem::replace(&mut b.fill, buf) {
                    old.send_destroy();
                }
            }
        }
        b.text = label;
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

/// The frame's toplevel surface F: the preferred buffer scale and transform a compositor
/// tells the toplevel (wl_surface v6) are the guest's too.
struct FrameSurface {
    guest: Weak<WlSurface>,
}

impl WlSurfaceHandler for FrameSurface {
    fn handle_preferred_buffer_scale(&mut self, _slf: &Rc<WlSurface>, factor: i32) {
        if let Some(s) = self.guest.upgrade()
            && s.version() >= WlSurface::MSG__PREFERRED_BUFFER_SCALE__SINCE
        {
            s.send_preferred_buffer_scale(factor);
        }
    }

    fn handle_preferred_buffer_transform(
        &mut self,
        _slf: &Rc<WlSurface>,
        transform: WlOutputTransform,
    ) {
        if let Some(s) = self.guest.upgrade()
            && s.version() >= WlSurface::MSG__PREFERRED_BUFFER_TRANSFORM__SINCE
        {
            s.send_preferred_buffer_transform(transform);
        }
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
