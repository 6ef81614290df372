//! Guest surfaces as the frame sees them: buffer sizes from every buffer factory, and a
//! mirror of the compositor's surface/subsurface state machine (pending, cached, shown).

use super::*;

/// The size of a guest buffer, recorded when it is created.
pub(super) struct BufferSize(i32, i32);

impl WlBufferHandler for BufferSize {}

pub(super) fn buffer_size(buffer: &Rc<WlBuffer>) -> Option<(i32, i32)> {
    buffer
        .try_get_handler_ref::<BufferSize>()
        .ok()
        .map(|s| (s.0, s.1))
}

pub(super) struct GuestShm;

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

pub(super) struct GuestPool;

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

pub(super) struct GuestDmabuf;

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

pub(super) struct GuestParams {
    pub(super) size: (i32, i32),
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

pub(super) struct GuestSinglePixel;

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
pub(super) struct SurfState {
    pub(super) buffer: Option<(i32, i32)>,
    pub(super) scale: i32,
    pub(super) transform: u32,
    pub(super) viewport: Option<(i32, i32)>,
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
pub(super) struct SurfInfo {
    /// Pending attach: `Some(None)` = null buffer, `Some(Some(size))` = buffer of that size.
    pub(super) pending_buffer: Cell<Option<Option<(i32, i32)>>>,
    pub(super) pending_scale: Cell<Option<i32>>,
    pub(super) pending_transform: Cell<Option<u32>>,
    pub(super) pending_viewport: Cell<Option<Option<(i32, i32)>>>,
    /// Committed but cached (a synchronized subsurface waiting for its parent).
    pub(super) cached: Cell<Option<SurfState>>,
    /// Applied: what the compositor shows.
    pub(super) current: Cell<SurfState>,
    /// Parent when this is a guest subsurface.
    pub(super) parent: RefCell<Weak<SurfInfo>>,
    /// Whether this subsurface is in synchronized mode (the default for a new one).
    pub(super) sync: Cell<bool>,
    /// Position: set but not committed by the parent, committed by a parent whose state is
    /// cached, and applied.
    pub(super) pending_pos: Cell<Option<(i32, i32)>>,
    pub(super) cached_pos: Cell<Option<(i32, i32)>>,
    pub(super) pos: Cell<(i32, i32)>,
    pub(super) children: RefCell<Vec<Weak<SurfInfo>>>,
    /// The window when this is a wrapped toplevel surface.
    pub(super) window: RefCell<Weak<Window>>,
    /// The surface has been given an xdg role by the guest.
    pub(super) has_xdg: Cell<bool>,
}

impl SurfInfo {
    pub(super) fn new() -> Rc<SurfInfo> {
        Rc::new(SurfInfo::default())
    }

    /// The surface's own logical size, as shown.
    pub(super) fn size(&self) -> (i32, i32) {
        let c = self.current.get();
        layout::surface_size(c.buffer, c.scale, c.transform, c.viewport)
    }

    /// The window this surface's tree belongs to, if any.
    pub(super) fn window(self: &Rc<Self>) -> Option<Rc<Window>> {
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
    pub(super) fn effectively_sync(self: &Rc<Self>) -> bool {
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
    pub(super) fn commit(self: &Rc<Self>) {
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
    pub(super) fn apply(&self, depth: usize) {
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
    pub(super) fn extents(&self, budget: &mut usize, depth: usize) -> Option<Extents> {
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

pub(super) fn info_of(surface: &Rc<WlSurface>) -> Option<Rc<SurfInfo>> {
    surface
        .try_get_handler_ref::<GuestSurface>()
        .ok()
        .map(|h| h.info.clone())
}

pub(super) struct GuestCompositor {
    pub(super) sh: Rc<Shared>,
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

pub(super) struct GuestSurface {
    pub(super) sh: Rc<Shared>,
    pub(super) info: Rc<SurfInfo>,
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

pub(super) fn detach_from_parent(info: &Rc<SurfInfo>) {
    let parent = std::mem::take(&mut *info.parent.borrow_mut());
    if let Some(p) = parent.upgrade() {
        p.children
            .borrow_mut()
            .retain(|c| c.upgrade().is_some_and(|c| !Rc::ptr_eq(&c, info)));
    }
}

pub(super) struct GuestSubcompositor {
    pub(super) sh: Rc<Shared>,
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

pub(super) struct GuestSubsurface {
    pub(super) info: Rc<SurfInfo>,
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

pub(super) struct GuestViewporter;

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

pub(super) struct GuestViewport {
    pub(super) info: Rc<SurfInfo>,
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
