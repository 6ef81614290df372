//! The guest's xdg-shell objects, served by the gate: xdg_wm_base, positioners (recorded and
//! replayed), xdg_surface, popups (forwarded with translated positions), the toplevel (onto
//! the frame's toplevel, identity rewritten); the frame's own xdg events back to the guest;
//! and the `--no-frame` path, which only rewrites titles and app_ids.

use super::*;

pub(super) struct GuestWmBase {
    pub(super) sh: Rc<Shared>,
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
pub(super) struct GuestPositioner {
    pub(super) size: Option<(i32, i32)>,
    pub(super) anchor_rect: Option<(i32, i32, i32, i32)>,
    pub(super) anchor: Option<u32>,
    pub(super) gravity: Option<u32>,
    pub(super) constraint: Option<u32>,
    pub(super) offset: Option<(i32, i32)>,
    pub(super) reactive: bool,
    pub(super) parent_size: Option<(i32, i32)>,
    pub(super) parent_configure: Option<u32>,
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
    pub(super) fn replay(
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

pub(super) enum Role {
    /// No role yet: nothing forwarded.
    None,
    /// A framed toplevel.
    Toplevel(Rc<Window>),
    /// A popup: the xdg_surface was forwarded and is a plain proxied object now.
    Forwarded,
}

pub(super) struct GuestXdgSurface {
    pub(super) sh: Rc<Shared>,
    pub(super) wm_base: Rc<XdgWmBase>,
    pub(super) surface: Rc<WlSurface>,
    pub(super) info: Option<Rc<SurfInfo>>,
    pub(super) role: Role,
    pub(super) geometry: Option<(i32, i32, i32, i32)>,
}

impl GuestXdgSurface {
    /// The framed window, if this is a framed toplevel's xdg_surface.
    pub(super) fn window(&self) -> Option<Rc<Window>> {
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
                if !w.destroyed.get() {
                    // xdg-shell's defunct_role_object: the role object must go first. Going
                    // on would leave the guest a toplevel the gate no longer serves.
                    self.sh.cut_off(
                        slf.client(),
                        "vmsilo-gate: xdg_surface destroyed before its xdg_toplevel",
                    );
                }
                w.destroy();
                slf.delete_id();
            }
            Role::None => slf.delete_id(),
        }
        slf.unset_handler();
    }
}

pub(super) struct GuestPopup {
    pub(super) wm_base: Rc<XdgWmBase>,
    /// The framed toplevel this popup hangs off, if any (positions are translated).
    pub(super) parent: Option<Weak<Window>>,
    pub(super) offset: (i32, i32),
}

impl GuestPopup {
    pub(super) fn offset(&mut self) -> (i32, i32) {
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

pub(super) struct FrameXdgSurface {
    pub(super) win: Weak<Window>,
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

pub(super) struct FrameToplevel {
    pub(super) win: Weak<Window>,
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
pub(super) struct GuestToplevel {
    pub(super) win: Rc<Window>,
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
                .filter(|h| !h.win.destroyed.get())
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

pub(super) struct PlainXdgSurface {
    pub(super) sh: Rc<Shared>,
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

pub(super) struct PlainToplevel {
    pub(super) sh: Rc<Shared>,
}

impl XdgToplevelHandler for PlainToplevel {
    fn handle_set_title(&mut self, slf: &Rc<XdgToplevel>, title: &str) {
        slf.send_set_title(&self.sh.identity.title(title));
    }

    fn handle_set_app_id(&mut self, slf: &Rc<XdgToplevel>, app_id: &str) {
        slf.send_set_app_id(&self.sh.identity.app_id(app_id));
    }
}

/// The guest's xdg-decoration manager, if the policy offers it: served by the gate. The
/// guest is told "server side" when the compositor decorates the frame's toplevel (the
/// gate asked it to), "client side" otherwise; either way the frame stays the gate's.
pub(super) struct GuestDecorationManager {
    pub(super) sh: Rc<Shared>,
}

impl ZxdgDecorationManagerV1Handler for GuestDecorationManager {
    fn handle_get_toplevel_decoration(
        &mut self,
        _slf: &Rc<ZxdgDecorationManagerV1>,
        id: &Rc<ZxdgToplevelDecorationV1>,
        _toplevel: &Rc<XdgToplevel>,
    ) {
        let mode = if self.sh.globals.borrow().decoration.is_some() {
            ZxdgToplevelDecorationV1Mode::SERVER_SIDE
        } else {
            ZxdgToplevelDecorationV1Mode::CLIENT_SIDE
        };
        id.send_configure(mode);
        id.set_handler(GuestDecoration { mode });
    }
}

pub(super) struct GuestDecoration {
    mode: ZxdgToplevelDecorationV1Mode,
}

impl ZxdgToplevelDecorationV1Handler for GuestDecoration {
    fn handle_destroy(&mut self, slf: &Rc<ZxdgToplevelDecorationV1>) {
        slf.delete_id();
        slf.unset_handler();
    }

    fn handle_set_mode(
        &mut self,
        slf: &Rc<ZxdgToplevelDecorationV1>,
        _mode: ZxdgToplevelDecorationV1Mode,
    ) {
        slf.send_configure(self.mode);
    }

    fn handle_unset_mode(&mut self, slf: &Rc<ZxdgToplevelDecorationV1>) {
        slf.send_configure(self.mode);
    }
}
