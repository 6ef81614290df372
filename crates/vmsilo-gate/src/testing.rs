//! Test support (feature `testing`): an in-process fake compositor built on wl-proxy that
//! offers chosen globals and records every request it handles as a trace, a small Wayland test
//! client on wl-proxy, and a handle on a real `vmsilo-gate` process.
//!
//! The fake answers `wl_display.sync`, lists its globals on every registry and records
//! `bind`s, the requests of the security-context manager and context (and accepts clients on
//! the `listen_fd` it is given), `wl_compositor.create_surface`/`create_region` and any
//! `wl_data_device_manager` request. Trace lines are `c<N> <what>`, N counting connections
//! from 1. It also keeps the pixels of every `wl_shm` buffer committed on a surface
//! ([`FakeCompositor::commits`]: what the gate draws, such as its label band), and answers an
//! xdg_toplevel's initial commit with a configure, so that windows map.
#![forbid(unsafe_code)]
#![allow(missing_docs)]

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use wl_proxy::baseline::Baseline;
use wl_proxy::object::{ConcreteObject, Object, ObjectCoreApi};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::security_context_v1::wp_security_context_manager_v1::{
    WpSecurityContextManagerV1, WpSecurityContextManagerV1Handler,
};
use wl_proxy::protocols::security_context_v1::wp_security_context_v1::{
    WpSecurityContextV1, WpSecurityContextV1Handler,
};
use wl_proxy::protocols::wayland::wl_buffer::WlBuffer;
use wl_proxy::protocols::wayland::wl_callback::WlCallback;
use wl_proxy::protocols::wayland::wl_compositor::{WlCompositor, WlCompositorHandler};
use wl_proxy::protocols::wayland::wl_data_device::{WlDataDevice, WlDataDeviceHandler};
use wl_proxy::protocols::wayland::wl_data_device_manager::{
    WlDataDeviceManager, WlDataDeviceManagerHandler,
};
use wl_proxy::protocols::wayland::wl_data_offer::{WlDataOffer, WlDataOfferHandler};
use wl_proxy::protocols::wayland::wl_data_source::WlDataSource;
use wl_proxy::protocols::wayland::wl_display::{WlDisplay, WlDisplayHandler};
use wl_proxy::protocols::wayland::wl_keyboard::{
    WlKeyboard, WlKeyboardKeyState, WlKeyboardKeymapFormat,
};
use wl_proxy::protocols::wayland::wl_output::WlOutput;
use wl_proxy::protocols::wayland::wl_region::WlRegion;
use wl_proxy::protocols::wayland::wl_registry::{WlRegistry, WlRegistryHandler};
use wl_proxy::protocols::wayland::wl_seat::{WlSeat, WlSeatHandler};
use wl_proxy::protocols::wayland::wl_shm::{WlShm, WlShmFormat, WlShmHandler};
use wl_proxy::protocols::wayland::wl_shm_pool::{WlShmPool, WlShmPoolHandler};
use wl_proxy::protocols::wayland::wl_surface::{WlSurface, WlSurfaceHandler};
use wl_proxy::protocols::xdg_shell::xdg_surface::{XdgSurface, XdgSurfaceHandler};
use wl_proxy::protocols::xdg_shell::xdg_toplevel::XdgToplevel;
use wl_proxy::protocols::xdg_shell::xdg_wm_base::{XdgWmBase, XdgWmBaseHandler};
use wl_proxy::state::{State, StateHandler};

use crate::secctx::{Done, Globals};

/// The shared trace.
pub type Trace = Arc<Mutex<Vec<String>>>;

/// A `wl_shm` buffer the fake saw committed on a surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The connection (as in the trace: `c<N>`).
    pub conn: u32,
    /// The surface (its wl-proxy unique id in the fake).
    pub surface: u64,
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// ARGB8888 pixels, row-major.
    pub pixels: Vec<u32>,
}

/// The committed buffers, oldest first (at most [`MAX_COMMITS`]; the oldest are dropped).
pub type Commits = Arc<Mutex<std::collections::VecDeque<Committed>>>;

/// Most committed buffers the fake keeps.
pub const MAX_COMMITS: usize = 4096;
/// Largest buffer (in pixels) whose content the fake keeps.
const MAX_KEPT_PIXELS: i64 = 1 << 22;

/// A fake compositor running in a thread of the test process.
#[derive(Debug)]
pub struct FakeCompositor {
    path: PathBuf,
    trace: Trace,
    commits: Commits,
    keys: Arc<Mutex<Vec<KeyCmd>>>,
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Ctx {
    trace: Trace,
    globals: Vec<(ObjectInterface, u32)>,
    flood: usize,
    clients: Cell<u32>,
    extra: RefCell<Vec<Rc<OwnedFd>>>,
    /// Keyboards by connection (for [`KeyCmd`]s).
    keyboards: RefCell<Vec<(u32, Rc<WlKeyboard>)>>,
    /// The last surface each client created (keyboard focus goes there).
    surfaces: RefCell<std::collections::HashMap<u32, Rc<WlSurface>>>,
    commits: Commits,
    /// `wl_shm` buffers by unique id: (pool fd, offset, width, height, stride).
    buffers: RefCell<std::collections::HashMap<u64, ShmBuf>>,
    /// xdg_surfaces by their wl_surface's unique id, and whether they were configured.
    xdg: RefCell<std::collections::HashMap<u64, XdgRole>>,
    serial: Cell<u32>,
}

#[derive(Clone)]
struct ShmBuf {
    fd: Rc<OwnedFd>,
    offset: i32,
    width: i32,
    height: i32,
    stride: i32,
}

struct XdgRole {
    xdg: Rc<XdgSurface>,
    toplevel: Option<Rc<XdgToplevel>>,
    configured: bool,
}

/// Keyboard events the threaded fake sends to connection `conn`'s keyboards (see
/// [`FakeCompositor::keyboard`]); the trace has `c<N> get_keyboard` for each.
#[derive(Debug, Clone)]
pub enum KeyCmd {
    /// `wl_keyboard.keymap` (XKB v1 text, sent in a memfd).
    Keymap { conn: u32, text: String },
    /// `wl_keyboard.enter` on the connection's last surface.
    Enter { conn: u32 },
    /// `wl_keyboard.modifiers` (depressed mask).
    Modifiers { conn: u32, depressed: u32 },
    /// `wl_keyboard.key` (evdev code).
    Key { conn: u32, key: u32, pressed: bool },
}

impl Ctx {
    fn log(&self, s: String) {
        if let Ok(mut t) = self.trace.lock() {
            t.push(s);
        }
    }
}

impl FakeCompositor {
    /// Starts a fake listening at `dir/fake-compositor` offering `globals`.
    pub fn start(dir: &Path, globals: &[(ObjectInterface, u32)]) -> FakeCompositor {
        Self::start_flooding(dir, globals, 0)
    }

    /// Like [`Self::start`], but every `wl_output` bind is answered with `flood`
    /// `wl_output.scale` events (12 bytes each) and a `done`.
    pub fn start_flooding(
        dir: &Path,
        globals: &[(ObjectInterface, u32)],
        flood: usize,
    ) -> FakeCompositor {
        let path = dir.join("fake-compositor");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the fake compositor's socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let trace: Trace = Arc::default();
        let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let globals = globals.to_vec();
        let t = trace.clone();
        let keys: Arc<Mutex<Vec<KeyCmd>>> = Arc::default();
        let k = keys.clone();
        let commits: Commits = Arc::default();
        let c = commits.clone();
        let thread = std::thread::spawn(move || {
            let server = FakeServer::with_commits(globals, flood, t, c);
            run_fake(server, listener, stop_r, k)
        });
        FakeCompositor {
            path,
            trace,
            commits,
            keys,
            stop: Some(stop_w),
            thread: Some(thread),
        }
    }

    /// The socket the gate connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `wl_shm` buffers committed on surfaces so far, oldest first.
    pub fn commits(&self) -> Vec<Committed> {
        self.commits
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A copy of the trace so far.
    pub fn trace(&self) -> Vec<String> {
        self.trace.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits (up to `timeout`) until a trace line satisfies `pred`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.trace().iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl FakeCompositor {
    /// Queues keyboard events (sent by the fake's thread within its next loop, ≤ 100 ms).
    pub fn keyboard(&self, cmds: &[KeyCmd]) {
        if let Ok(mut k) = self.keys.lock() {
            k.extend_from_slice(cmds);
        }
    }
}

impl Drop for FakeCompositor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The fake compositor's protocol side, without threads or sockets of its own: clients are
/// added as connected fds, [`FakeServer::dispatch`] handles what is pending. The threaded
/// [`FakeCompositor`] and the fuzz target both drive one.
pub struct FakeServer {
    state: Rc<State>,
    ctx: Rc<Ctx>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer").finish_non_exhaustive()
    }
}

impl FakeServer {
    /// A fake offering `globals` (see [`FakeCompositor::start_flooding`] for `flood`),
    /// recording into `trace`.
    pub fn new(globals: Vec<(ObjectInterface, u32)>, flood: usize, trace: Trace) -> FakeServer {
        Self::with_commits(globals, flood, trace, Commits::default())
    }

    /// Like [`Self::new`], keeping committed buffers in `commits`.
    pub fn with_commits(
        globals: Vec<(ObjectInterface, u32)>,
        flood: usize,
        trace: Trace,
        commits: Commits,
    ) -> FakeServer {
        let state = State::builder(Baseline::ALL_OF_THEM)
            .without_server()
            .with_logging(false)
            .build()
            .expect("fake compositor state");
        state.set_default_forward_to_server(false);
        let ctx = Rc::new(Ctx {
            trace,
            globals,
            flood,
            clients: Cell::new(0),
            extra: RefCell::new(Vec::new()),
            keyboards: RefCell::new(Vec::new()),
            surfaces: RefCell::default(),
            commits,
            buffers: RefCell::default(),
            xdg: RefCell::default(),
            serial: Cell::new(100),
        });
        FakeServer { state, ctx }
    }

    /// Serves a connected client socket; `via` is appended to its "connected" trace line.
    pub fn add_client(&self, fd: OwnedFd, via: &str) {
        let n = self.ctx.clients.get() + 1;
        self.ctx.clients.set(n);
        self.ctx.log(format!("c{n} connected{via}"));
        if let Ok(client) = self.state.add_client(&Rc::new(fd)) {
            client.display().set_handler(FakeDisplay {
                ctx: self.ctx.clone(),
                n,
            });
        }
    }

    /// The fd to poll for readiness.
    pub fn poll_fd(&self) -> Rc<OwnedFd> {
        self.state.poll_fd().clone()
    }

    /// Flushes (call before sleeping).
    pub fn before_poll(&self) {
        let _ = self.state.before_poll();
    }

    /// Accepts on security-context listeners and handles pending messages without waiting;
    /// `true` if anything was handled.
    pub fn dispatch(&self) -> bool {
        let extra: Vec<Rc<OwnedFd>> = self.ctx.extra.borrow().clone();
        for e in &extra {
            while let Ok(fd) = nix::sys::socket::accept4(
                e.as_fd(),
                nix::sys::socket::SockFlag::SOCK_NONBLOCK
                    | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            ) {
                self.add_client(fd, " via security context");
            }
        }
        self.state.dispatch_available().unwrap_or(false)
    }

    /// Sends keyboard events.
    pub fn key_events(&self, cmds: Vec<KeyCmd>) {
        let kbs = |conn: u32| -> Vec<Rc<WlKeyboard>> {
            self.ctx
                .keyboards
                .borrow()
                .iter()
                .filter(|(n, _)| *n == conn)
                .map(|(_, k)| k.clone())
                .collect()
        };
        for c in cmds {
            match c {
                KeyCmd::Keymap { conn, text } => {
                    let mut bytes = text.into_bytes();
                    bytes.push(0);
                    let Ok(fd) = nix::sys::memfd::memfd_create(
                        c"fake-keymap",
                        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                    ) else {
                        continue;
                    };
                    let mut f = std::fs::File::from(fd);
                    if f.write_all(&bytes).is_err() {
                        continue;
                    }
                    let fd = Rc::new(OwnedFd::from(f));
                    for k in kbs(conn) {
                        k.send_keymap(WlKeyboardKeymapFormat::XKB_V1, &fd, bytes.len() as u32);
                    }
                }
                KeyCmd::Enter { conn } => {
                    let surface = self.ctx.surfaces.borrow().get(&conn).cloned();
                    if let Some(s) = surface {
                        for k in kbs(conn) {
                            k.send_enter(1, &s, &[]);
                        }
                    }
                }
                KeyCmd::Modifiers { conn, depressed } => {
                    for k in kbs(conn) {
                        k.send_modifiers(2, depressed, 0, 0, 0);
                    }
                }
                KeyCmd::Key { conn, key, pressed } => {
                    let state = if pressed {
                        WlKeyboardKeyState::PRESSED
                    } else {
                        WlKeyboardKeyState::RELEASED
                    };
                    for k in kbs(conn) {
                        k.send_key(3, 0, key, state);
                    }
                }
            }
        }
    }

    fn listeners(&self) -> Vec<Rc<OwnedFd>> {
        self.ctx.extra.borrow().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.state.destroy();
    }
}

fn run_fake(
    server: FakeServer,
    listener: UnixListener,
    stop: OwnedFd,
    keys: Arc<Mutex<Vec<KeyCmd>>>,
) {
    loop {
        server.before_poll();
        let extra = server.listeners();
        let state_fd = server.poll_fd();
        let (l_ready, stop_ready) = {
            let mut fds = vec![
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(state_fd.as_fd(), PollFlags::POLLIN),
            ];
            for e in &extra {
                fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            let r = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (r(&fds[0]), r(&fds[1]))
        };
        if stop_ready {
            return;
        }
        if l_ready {
            while let Ok((s, _)) = listener.accept() {
                server.add_client(OwnedFd::from(s), "");
            }
        }
        server.dispatch();
        let cmds: Vec<KeyCmd> = keys
            .lock()
            .map(|mut k| k.drain(..).collect())
            .unwrap_or_default();
        if !cmds.is_empty() {
            server.key_events(cmds);
        }
    }
}

struct FakeDisplay {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WlDisplayHandler for FakeDisplay {
    fn handle_sync(&mut self, _slf: &Rc<WlDisplay>, callback: &Rc<WlCallback>) {
        callback.send_done(0);
        callback.delete_id();
    }

    fn handle_get_registry(&mut self, _slf: &Rc<WlDisplay>, registry: &Rc<WlRegistry>) {
        registry.set_handler(FakeRegistry {
            ctx: self.ctx.clone(),
            n: self.n,
        });
        for (i, (iface, version)) in self.ctx.globals.iter().enumerate() {
            registry.send_global(100 + i as u32, *iface, *version);
        }
    }
}

struct FakeRegistry {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WlRegistryHandler for FakeRegistry {
    fn handle_bind(&mut self, _slf: &Rc<WlRegistry>, name: u32, id: Rc<dyn Object>) {
        let n = self.n;
        let ok = self
            .ctx
            .globals
            .get(name.wrapping_sub(100) as usize)
            .is_some_and(|g| g.0 == id.interface() && id.version() <= g.1);
        self.ctx.log(format!(
            "c{n} bind {} v{}{}",
            id.interface().name(),
            id.version(),
            if ok { "" } else { " (INVALID)" }
        ));
        let ctx = self.ctx.clone();
        if let Some(m) = downcast::<WpSecurityContextManagerV1>(&id) {
            m.set_handler(FakeSecMgr { ctx, n });
        } else if let Some(c) = downcast::<WlCompositor>(&id) {
            c.set_handler(FakeCompositorH { ctx, n });
        } else if let Some(shm) = downcast::<WlShm>(&id) {
            shm.set_handler(FakeShm { ctx });
            shm.send_format(WlShmFormat::ARGB8888);
            shm.send_format(WlShmFormat::XRGB8888);
        } else if let Some(wm) = downcast::<XdgWmBase>(&id) {
            wm.set_handler(FakeWmBase { ctx });
        } else if let Some(d) = downcast::<WlDataDeviceManager>(&id) {
            d.set_handler(FakeDdm { ctx, n });
        } else if let Some(s) = downcast::<WlSeat>(&id) {
            s.set_handler(FakeSeat { ctx, n });
            s.send_capabilities(wl_proxy::protocols::wayland::wl_seat::WlSeatCapability(3));
        } else if let Some(o) = downcast::<WlOutput>(&id) {
            for _ in 0..self.ctx.flood {
                o.send_scale(1);
            }
            if self.ctx.flood > 0 {
                o.send_done();
            }
        }
    }
}

fn downcast<T: ConcreteObject>(o: &Rc<dyn Object>) -> Option<Rc<T>> {
    use wl_proxy::object::ObjectRcUtils;
    o.try_downcast::<T>()
}

struct FakeSecMgr {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WpSecurityContextManagerV1Handler for FakeSecMgr {
    fn handle_destroy(&mut self, slf: &Rc<WpSecurityContextManagerV1>) {
        self.ctx.log(format!("c{} manager.destroy", self.n));
        slf.delete_id();
    }

    fn handle_create_listener(
        &mut self,
        _slf: &Rc<WpSecurityContextManagerV1>,
        id: &Rc<WpSecurityContextV1>,
        listen_fd: &Rc<OwnedFd>,
        _close_fd: &Rc<OwnedFd>,
    ) {
        self.ctx.log(format!("c{} create_listener", self.n));
        let _ = nix::fcntl::fcntl(
            listen_fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        self.ctx.extra.borrow_mut().push(listen_fd.clone());
        id.set_handler(FakeSecCtx {
            ctx: self.ctx.clone(),
            n: self.n,
        });
    }
}

struct FakeSecCtx {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WpSecurityContextV1Handler for FakeSecCtx {
    fn handle_destroy(&mut self, slf: &Rc<WpSecurityContextV1>) {
        self.ctx.log(format!("c{} context.destroy", self.n));
        slf.delete_id();
    }
    fn handle_set_sandbox_engine(&mut self, _slf: &Rc<WpSecurityContextV1>, name: &str) {
        self.ctx
            .log(format!("c{} set_sandbox_engine {name}", self.n));
    }
    fn handle_set_app_id(&mut self, _slf: &Rc<WpSecurityContextV1>, app_id: &str) {
        self.ctx.log(format!("c{} set_app_id {app_id}", self.n));
    }
    fn handle_set_instance_id(&mut self, _slf: &Rc<WpSecurityContextV1>, instance_id: &str) {
        self.ctx
            .log(format!("c{} set_instance_id {instance_id}", self.n));
    }
    fn handle_commit(&mut self, _slf: &Rc<WpSecurityContextV1>) {
        self.ctx.log(format!("c{} commit", self.n));
    }
}

struct FakeCompositorH {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WlCompositorHandler for FakeCompositorH {
    fn handle_create_surface(&mut self, _slf: &Rc<WlCompositor>, id: &Rc<WlSurface>) {
        self.ctx.log(format!("c{} create_surface", self.n));
        self.ctx.surfaces.borrow_mut().insert(self.n, id.clone());
        id.set_handler(FakeSurface {
            ctx: self.ctx.clone(),
            n: self.n,
            pending: None,
        });
    }
    fn handle_create_region(&mut self, _slf: &Rc<WlCompositor>, _id: &Rc<WlRegion>) {
        self.ctx.log(format!("c{} create_region", self.n));
    }
}

struct FakeShm {
    ctx: Rc<Ctx>,
}

impl WlShmHandler for FakeShm {
    fn handle_create_pool(
        &mut self,
        _slf: &Rc<WlShm>,
        id: &Rc<WlShmPool>,
        fd: &Rc<OwnedFd>,
        _size: i32,
    ) {
        id.set_handler(FakePool {
            ctx: self.ctx.clone(),
            fd: fd.clone(),
        });
    }
}

struct FakePool {
    ctx: Rc<Ctx>,
    fd: Rc<OwnedFd>,
}

impl WlShmPoolHandler for FakePool {
    fn handle_create_buffer(
        &mut self,
        _slf: &Rc<WlShmPool>,
        id: &Rc<WlBuffer>,
        offset: i32,
        width: i32,
        height: i32,
        stride: i32,
        _format: WlShmFormat,
    ) {
        let mut b = self.ctx.buffers.borrow_mut();
        if b.len() < 100_000 {
            b.insert(
                id.unique_id(),
                ShmBuf {
                    fd: self.fd.clone(),
                    offset,
                    width,
                    height,
                    stride,
                },
            );
        }
    }
}

/// Keeps the pixels of each committed `wl_shm` buffer, and configures an xdg_toplevel at its
/// initial (bufferless) commit.
struct FakeSurface {
    ctx: Rc<Ctx>,
    n: u32,
    pending: Option<Option<u64>>,
}

impl WlSurfaceHandler for FakeSurface {
    fn handle_attach(
        &mut self,
        _slf: &Rc<WlSurface>,
        buffer: Option<&Rc<WlBuffer>>,
        _x: i32,
        _y: i32,
    ) {
        self.pending = Some(buffer.map(|b| b.unique_id()));
    }

    fn handle_commit(&mut self, slf: &Rc<WlSurface>) {
        let attached = self.pending.take();
        if let Some(Some(id)) = attached {
            let buf = self.ctx.buffers.borrow().get(&id).cloned();
            if let Some(b) = buf
                && let Some(pixels) = read_shm(&b)
                && let Ok(mut c) = self.ctx.commits.lock()
            {
                if c.len() >= MAX_COMMITS {
                    c.pop_front();
                }
                c.push_back(Committed {
                    conn: self.n,
                    surface: slf.unique_id(),
                    width: b.width,
                    height: b.height,
                    pixels,
                });
            }
        }
        let mut xdg = self.ctx.xdg.borrow_mut();
        if let Some(role) = xdg.get_mut(&slf.unique_id())
            && !role.configured
            && let Some(t) = &role.toplevel
        {
            role.configured = true;
            let serial = self.ctx.serial.get() + 1;
            self.ctx.serial.set(serial);
            t.send_configure(0, 0, &[]);
            role.xdg.send_configure(serial);
        }
    }
}

/// The pixels of an ARGB/XRGB8888 buffer (`None` when it does not fit its pool's fd).
fn read_shm(b: &ShmBuf) -> Option<Vec<u32>> {
    let (w, h) = (i64::from(b.width), i64::from(b.height));
    if w <= 0 || h <= 0 || w * h > MAX_KEPT_PIXELS || i64::from(b.stride) < w * 4 {
        return None;
    }
    let len = usize::try_from(i64::from(b.stride) * h).ok()?;
    let mut bytes = vec![0u8; len];
    let n = nix::sys::uio::pread(b.fd.as_fd(), &mut bytes, i64::from(b.offset)).ok()?;
    if n < len {
        return None;
    }
    let mut px = Vec::with_capacity((w * h) as usize);
    for row in bytes.chunks_exact(b.stride as usize) {
        for p in row[..(w as usize) * 4].chunks_exact(4) {
            px.push(u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
        }
    }
    Some(px)
}

struct FakeWmBase {
    ctx: Rc<Ctx>,
}

impl XdgWmBaseHandler for FakeWmBase {
    fn handle_get_xdg_surface(
        &mut self,
        _slf: &Rc<XdgWmBase>,
        id: &Rc<XdgSurface>,
        surface: &Rc<WlSurface>,
    ) {
        id.set_handler(FakeXdgSurface {
            ctx: self.ctx.clone(),
            surface: surface.unique_id(),
        });
        let mut xdg = self.ctx.xdg.borrow_mut();
        if xdg.len() < 100_000 {
            xdg.insert(
                surface.unique_id(),
                XdgRole {
                    xdg: id.clone(),
                    toplevel: None,
                    configured: false,
                },
            );
        }
    }
}

struct FakeXdgSurface {
    ctx: Rc<Ctx>,
    surface: u64,
}

impl XdgSurfaceHandler for FakeXdgSurface {
    fn handle_get_toplevel(&mut self, _slf: &Rc<XdgSurface>, id: &Rc<XdgToplevel>) {
        if let Some(role) = self.ctx.xdg.borrow_mut().get_mut(&self.surface) {
            role.toplevel = Some(id.clone());
        }
    }
}

/// Gives a new keyboard focus on the client's last surface at once (if it has one), and
/// remembers the keyboard for [`KeyCmd`]s.
struct FakeSeat {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WlSeatHandler for FakeSeat {
    fn handle_get_keyboard(&mut self, _slf: &Rc<WlSeat>, id: &Rc<WlKeyboard>) {
        self.ctx.log(format!("c{} get_keyboard", self.n));
        {
            let mut k = self.ctx.keyboards.borrow_mut();
            if k.len() < 1024 {
                k.push((self.n, id.clone()));
            }
        }
        let surface = self.ctx.surfaces.borrow().get(&self.n).cloned();
        if let Some(surface) = surface {
            id.send_enter(1, &surface, &[]);
        }
    }
}

struct FakeDdm {
    ctx: Rc<Ctx>,
    n: u32,
}

impl WlDataDeviceManagerHandler for FakeDdm {
    fn handle_create_data_source(
        &mut self,
        _slf: &Rc<WlDataDeviceManager>,
        _id: &Rc<WlDataSource>,
    ) {
        self.ctx.log(format!(
            "c{} wl_data_device_manager.create_data_source",
            self.n
        ));
    }
    fn handle_get_data_device(
        &mut self,
        _slf: &Rc<WlDataDeviceManager>,
        _id: &Rc<WlDataDevice>,
        _seat: &Rc<WlSeat>,
    ) {
        self.ctx.log(format!(
            "c{} wl_data_device_manager.get_data_device",
            self.n
        ));
    }
}

/// The globals the component tests' fake offers: allowed ones and ones the gate must hide.
pub fn standard_globals() -> Vec<(ObjectInterface, u32)> {
    vec![
        (ObjectInterface::WlCompositor, 6),
        (ObjectInterface::WlSubcompositor, 1),
        (ObjectInterface::WlShm, 1),
        (ObjectInterface::WlSeat, 7),
        (ObjectInterface::WlOutput, 4),
        (ObjectInterface::XdgWmBase, 6),
        (ObjectInterface::WlDataDeviceManager, 3),
        (ObjectInterface::WpViewporter, 1),
        (ObjectInterface::ZwlrScreencopyManagerV1, 3),
        (ObjectInterface::ZwpVirtualKeyboardManagerV1, 1),
        (ObjectInterface::ZwlrLayerShellV1, 4),
        (ObjectInterface::ZwlrDataControlManagerV1, 2),
        (ObjectInterface::ExtDataControlManagerV1, 1),
        (ObjectInterface::ZxdgDecorationManagerV1, 1),
        (ObjectInterface::ZwpTabletManagerV2, 1),
    ]
}

/// A Wayland client on wl-proxy, for tests.
pub struct TestClient {
    pub state: Rc<State>,
    pub registry: Rc<WlRegistry>,
    pub globals: Rc<RefCell<Vec<(u32, ObjectInterface, u32)>>>,
    pub error: Rc<RefCell<Option<(u32, String)>>>,
}

impl std::fmt::Debug for TestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestClient").finish_non_exhaustive()
    }
}

struct Errors(Rc<RefCell<Option<(u32, String)>>>);

impl StateHandler for Errors {
    fn display_error(
        self: Box<Self>,
        _object: Option<&Rc<dyn Object>>,
        _server_id: u32,
        error: u32,
        msg: &str,
    ) {
        *self.0.borrow_mut() = Some((error, msg.to_string()));
    }
}

/// The timeout of test roundtrips (a failure guard, not a timing assertion).
pub const TIMEOUT: Duration = Duration::from_secs(30);

impl TestClient {
    /// Connects to `path`, gets the registry and waits for the globals.
    pub fn connect(path: &Path) -> Result<TestClient, String> {
        let s =
            UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
        let state = State::builder(Baseline::ALL_OF_THEM)
            .with_server_fd(&Rc::new(OwnedFd::from(s)))
            .with_logging(false)
            .build()
            .map_err(|e| e.to_string())?;
        let error = Rc::new(RefCell::new(None));
        state.set_handler(Errors(error.clone()));
        let globals = Rc::new(RefCell::new(Vec::new()));
        let registry = state.display().new_send_get_registry();
        registry.set_handler(Globals(globals.clone()));
        let c = TestClient {
            state,
            registry,
            globals,
            error,
        };
        c.roundtrip()?;
        Ok(c)
    }

    /// A `wl_display.sync` roundtrip; `Err` if the connection failed (with the protocol
    /// error, if one came).
    pub fn roundtrip(&self) -> Result<(), String> {
        let done = Rc::new(Cell::new(false));
        let cb = self.state.display().new_send_sync();
        cb.set_handler(Done(done.clone()));
        self.dispatch_until(|| done.get())
    }

    /// Dispatches until `cond` holds (bounded by [`TIMEOUT`]).
    pub fn dispatch_until(&self, cond: impl Fn() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        while !cond() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out".into());
            }
            if let Err(e) = self
                .state
                .dispatch(Some(left.min(Duration::from_millis(100))))
            {
                return Err(match &*self.error.borrow() {
                    Some((code, msg)) => format!("protocol error {code}: {msg}"),
                    None => format!("connection failed: {e}"),
                });
            }
        }
        Ok(())
    }

    /// One non-blocking dispatch (errors ignored).
    pub fn pump(&self) {
        let _ = self.state.dispatch(Some(Duration::from_millis(5)));
    }

    /// The offered global of `interface`, if any: (name, version).
    pub fn global(&self, interface: ObjectInterface) -> Option<(u32, u32)> {
        self.globals
            .borrow()
            .iter()
            .find(|g| g.1 == interface)
            .map(|g| (g.0, g.2))
    }

    /// Binds global `name` as `P` at `version` (no checks: tests send bad binds on purpose).
    pub fn bind<P: ConcreteObject>(&self, name: u32, version: u32) -> Rc<P> {
        let obj = self.state.create_object::<P>(version);
        let dynobj: Rc<dyn Object> = obj.clone();
        self.registry.send_bind(name, dynobj);
        obj
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.state.destroy();
    }
}

/// A running `vmsilo-gate` process.
#[derive(Debug)]
pub struct Gate {
    pub child: Child,
    pub listen: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Gate {
    /// Starts `exe` with `args` (plus `--listen`), waits (bounded) for "listening on".
    pub fn start(exe: &Path, listen: &Path, args: &[&str]) -> Result<Gate, String> {
        let mut cmd = Command::new(exe);
        cmd.arg("--listen").arg(listen).args(args);
        Self::start_command(cmd, listen)
    }

    /// Starts a prepared command (e.g. the gate under `setpriv`) that listens on `listen`,
    /// waits (bounded) for "listening on".
    pub fn start_command(mut cmd: Command, listen: &Path) -> Result<Gate, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let ready = line.contains("listening on");
                if let Ok(mut l) = l.lock() {
                    l.push(line);
                }
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let mut gate = Gate {
            child,
            listen: listen.to_path_buf(),
            stderr: lines,
        };
        if rx.recv_timeout(TIMEOUT).is_err() {
            let _ = gate.child.kill();
            let _ = gate.child.wait();
            return Err(format!("the gate did not start: {:?}", gate.log()));
        }
        Ok(gate)
    }

    /// Its stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (up to [`TIMEOUT`]) for a stderr line satisfying `pred`.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.log().iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().expect("wait for the gate")
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes raw bytes to a new connection (for malformed-message tests) and returns the
/// stream.
pub fn raw_connect(path: &Path, bytes: &[u8]) -> std::io::Result<UnixStream> {
    use std::io::Write;
    let mut s = UnixStream::connect(path)?;
    s.write_all(bytes)?;
    Ok(s)
}

/// Reads until EOF or `TIMEOUT`; `true` on EOF (the peer closed).
pub fn wait_eof(s: &UnixStream) -> bool {
    use std::io::Read;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 4096];
    let mut s = s;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir (short: socket paths must fit 108 bytes).
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vg-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create the test directory");
        TempDir(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `cond` holds, polling every 50 ms; panics naming `what` after [`TIMEOUT`].
pub fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One long-lived virtual keyboard on a compositor's seat (sway:
/// `zwp_virtual_keyboard_manager_v1`), driven by the test. Unlike `wtype`, which uploads a
/// keymap per call and loses the first key, the keymap is uploaded once, at creation. The
/// compositor delivers its keys to the focused window, as a real keyboard's.
pub struct VirtualKeyboard {
    state: Rc<State>,
    kb: Rc<wl_proxy::protocols::virtual_keyboard_unstable_v1::zwp_virtual_keyboard_v1::ZwpVirtualKeyboardV1>,
    time: Cell<u32>,
}

impl std::fmt::Debug for VirtualKeyboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualKeyboard").finish_non_exhaustive()
    }
}

/// A round trip on a client `state` (bounded by [`TIMEOUT`]).
pub fn client_roundtrip(state: &Rc<State>) -> Result<(), String> {
    use wl_proxy::protocols::wayland::wl_callback::WlCallbackHandler;
    struct Done(Rc<Cell<bool>>);
    impl WlCallbackHandler for Done {
        fn handle_done(&mut self, _: &Rc<WlCallback>, _: u32) {
            self.0.set(true);
        }
    }
    let done = Rc::new(Cell::new(false));
    state
        .display()
        .new_send_sync()
        .set_handler(Done(done.clone()));
    let t0 = Instant::now();
    while !done.get() {
        if t0.elapsed() > TIMEOUT {
            return Err("the compositor did not answer a round trip".into());
        }
        state
            .dispatch(Some(Duration::from_millis(50)))
            .map_err(|e| format!("the compositor connection failed: {e}"))?;
    }
    Ok(())
}

impl VirtualKeyboard {
    /// Connects to the compositor at `socket`, creates the keyboard and uploads `keymap`
    /// (XKB v1 text).
    pub fn connect(socket: &Path, keymap: &str) -> Result<VirtualKeyboard, String> {
        use wl_proxy::protocols::virtual_keyboard_unstable_v1::zwp_virtual_keyboard_manager_v1::ZwpVirtualKeyboardManagerV1;
        struct Globals(Rc<RefCell<Vec<(u32, ObjectInterface, u32)>>>);
        impl WlRegistryHandler for Globals {
            fn handle_global(&mut self, _: &Rc<WlRegistry>, name: u32, i: ObjectInterface, v: u32) {
                self.0.borrow_mut().push((name, i, v));
            }
        }
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let state = State::builder(Baseline::ALL_OF_THEM)
            .with_server_fd(&Rc::new(OwnedFd::from(stream)))
            .build()
            .map_err(|e| format!("client state: {e}"))?;
        state.set_default_forward_to_client(false);
        let registry = state.display().new_send_get_registry();
        let globals = Rc::new(RefCell::new(Vec::new()));
        registry.set_handler(Globals(globals.clone()));
        client_roundtrip(&state)?;
        let find = |iface: ObjectInterface| {
            globals
                .borrow()
                .iter()
                .find(|(_, i, _)| *i == iface)
                .map(|&(n, _, v)| (n, v))
                .ok_or_else(|| format!("the compositor offers no {}", iface.name()))
        };
        let (n, _) = find(ZwpVirtualKeyboardManagerV1::INTERFACE)?;
        let mgr = state.create_object::<ZwpVirtualKeyboardManagerV1>(1);
        registry.send_bind(n, mgr.clone());
        let (n, v) = find(WlSeat::INTERFACE)?;
        let seat = state.create_object::<WlSeat>(v.min(5));
        registry.send_bind(n, seat.clone());
        let kb = mgr.new_send_create_virtual_keyboard(&seat);
        let mut bytes = keymap.as_bytes().to_vec();
        bytes.push(0);
        let fd =
            nix::sys::memfd::memfd_create(c"vkb-keymap", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| format!("memfd: {e}"))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(&bytes).map_err(|e| format!("keymap: {e}"))?;
        kb.send_keymap(1, &Rc::new(OwnedFd::from(f)), bytes.len() as u32);
        client_roundtrip(&state)?;
        Ok(VirtualKeyboard {
            state,
            kb,
            time: Cell::new(1),
        })
    }

    fn tick(&self) -> u32 {
        let t = self.time.get() + 10;
        self.time.set(t);
        t
    }

    fn sync(&self) {
        if let Err(e) = client_roundtrip(&self.state) {
            panic!("virtual keyboard: {e}");
        }
    }

    /// Sets the depressed modifiers (XKB mask: 1 shift, 4 control).
    pub fn modifiers(&self, depressed: u32) {
        self.kb.send_modifiers(depressed, 0, 0, 0);
        self.sync();
    }

    /// Presses and releases `key` (an evdev code).
    pub fn tap(&self, key: u32) {
        let t = self.tick();
        self.kb.send_key(t, key, 1);
        let t = self.tick();
        self.kb.send_key(t, key, 0);
        self.sync();
    }

    /// Modifiers down, `key` tapped, modifiers up.
    pub fn chord(&self, depressed: u32, key: u32) {
        self.modifiers(depressed);
        self.tap(key);
        self.modifiers(0);
    }
}

/// The US keymap (XKB v1 text) compiled from the system's XKB data.
pub fn us_keymap() -> Result<String, String> {
    use xkbcommon::xkb;
    let ctx = xkb::Context::new(xkb::CONTEXT_NO_FLAGS);
    xkb::Keymap::new_from_names(&ctx, "evdev", "pc105", "us", "", None, 0)
        .map(|k| k.get_as_string(xkb::KEYMAP_FORMAT_TEXT_V1))
        .ok_or_else(|| "the system's XKB data does not compile a US keymap".into())
}

/// What a test client's `wl_data_device` has seen: the current selection's offer, the MIME
/// types of the newest offer, and how many `selection` events came.
#[derive(Debug, Default)]
pub struct Selection {
    /// The current selection (`None` after a `selection(null)`).
    pub offer: Option<Rc<WlDataOffer>>,
    /// The MIME types the newest offer announced.
    pub mimes: Vec<String>,
    /// How many `selection` events the device received.
    pub events: u32,
}

/// A data-device (and data-offer) handler of test clients that records into a shared
/// [`Selection`].
#[derive(Debug)]
pub struct SelectionRecorder(pub Rc<RefCell<Selection>>);

impl WlDataDeviceHandler for SelectionRecorder {
    fn handle_data_offer(&mut self, _slf: &Rc<WlDataDevice>, id: &Rc<WlDataOffer>) {
        self.0.borrow_mut().mimes.clear();
        id.set_handler(SelectionRecorder(self.0.clone()));
    }
    fn handle_selection(&mut self, _slf: &Rc<WlDataDevice>, id: Option<&Rc<WlDataOffer>>) {
        let mut s = self.0.borrow_mut();
        s.offer = id.cloned();
        s.events += 1;
    }
}

impl WlDataOfferHandler for SelectionRecorder {
    fn handle_offer(&mut self, _slf: &Rc<WlDataOffer>, mime_type: &str) {
        self.0.borrow_mut().mimes.push(mime_type.to_string());
    }
}
