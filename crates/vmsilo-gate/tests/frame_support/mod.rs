//! Support for the frame tests: the test kit's headless weston and sway
//! (`vmsilo_testkit::wayland`) with the shorthands these tests use, a minimal gate driver that
//! wires `frame::start`/`frame::on_bind` the way the connection code does, and screenshots as
//! 0xRRGGBB pixels.
#![allow(dead_code)]

pub mod client;
pub mod sway;

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmsilo_gate::conn::{Conn, Limits};
use vmsilo_gate::draw;
use vmsilo_gate::frame;
use vmsilo_gate::identity::{Identity, Rgb};
use vmsilo_gate::layout::Layout;
use vmsilo_gate::policy::Policy;
use vmsilo_testkit::wayland::{self, Compositor, Image, ProtoTrace, WestonOptions};
use wl_proxy::baseline::Baseline;
use wl_proxy::client::ClientHandler;
use wl_proxy::global_mapper::GlobalMapper;
use wl_proxy::object::{Object, ObjectCoreApi};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::wayland::wl_display::{WlDisplay, WlDisplayHandler};
use wl_proxy::protocols::wayland::wl_registry::{WlRegistry, WlRegistryHandler};
use wl_proxy::state::State;

/// The test VM.
pub const VM: &str = "banking";
/// Its colour, #2ecc71.
pub const COLOR: Rgb = Rgb {
    r: 0x2e,
    g: 0xcc,
    b: 0x71,
};

/// The VM colour as a screenshot pixel.
pub const GREEN: u32 = 0x002e_cc71;

/// Generous bound for anything the compositor or a client has to do (a failure guard).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn identity() -> Identity {
    Identity {
        vm: VM.into(),
        color: COLOR,
    }
}

/// Why a test cannot run here, or `None` when it can.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("weston headless runs as root here (the recipe in wayland.md)".into());
    }
    for tool in [
        "weston",
        "weston-screenshooter",
        "weston-debug",
        "weston-simple-shm",
    ] {
        if vmsilo_testkit::find_tool(tool).is_err() {
            return Some(format!(
                "{tool} is missing (apt-get install weston; `cargo xtask` setup installs it)"
            ));
        }
    }
    None
}

/// The test kit's headless weston 10 (pixman, black background, no panel) at 800x600, with
/// the shorthands the frame tests use.
pub struct Weston {
    inner: wayland::Weston,
    /// The compositor's socket.
    pub socket: PathBuf,
}

pub const WESTON_SOCKET: &str = "wl-weston";

impl Weston {
    pub fn start() -> Weston {
        let inner = wayland::Weston::start(WestonOptions {
            width: 800,
            height: 600,
            socket: WESTON_SOCKET.into(),
        })
        .unwrap_or_else(|e| panic!("starting weston: {e}"));
        let socket = inner.runtime_dir().join(WESTON_SOCKET);
        let w = Weston { inner, socket };
        // The desktop shell maps its background asynchronously; one screenshot round trip
        // makes sure it is up.
        let _ = w.screenshot();
        w
    }

    /// The runtime directory (gate sockets go here too).
    pub fn dir(&self) -> &Path {
        self.inner.runtime_dir()
    }

    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// A command for a client of `display` (a socket name in the runtime directory).
    pub fn client(&self, program: &str, display: &str) -> Command {
        let mut c = self.inner.command(program);
        c.env("WAYLAND_DISPLAY", display)
            .env_remove("WAYLAND_SOCKET")
            .stdin(Stdio::null());
        c
    }

    /// A screenshot of the whole output.
    pub fn screenshot(&self) -> Shot {
        Shot::from_image(
            &self
                .inner
                .screenshot()
                .unwrap_or_else(|e| panic!("weston screenshot: {e}")),
        )
    }

    /// Starts `weston-debug proto` (the test kit's trace, waited for before it returns).
    pub fn proto_trace(&self) -> ProtoTrace {
        self.inner
            .proto_trace()
            .unwrap_or_else(|e| panic!("weston-debug proto: {e}"))
    }
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A screenshot, pixels as 0xRRGGBB.
pub struct Shot {
    pub width: usize,
    pub height: usize,
    pub px: Vec<u32>,
}

impl Shot {
    /// The test kit's decoded screenshot as 0xRRGGBB pixels.
    pub fn from_image(img: &Image) -> Shot {
        let (width, height) = (img.width() as usize, img.height() as usize);
        let mut px = Vec::with_capacity(width * height);
        for y in 0..img.height() {
            for x in 0..img.width() {
                let [r, g, b] = img.pixel(x, y).unwrap_or_default();
                px.push((u32::from(r) << 16) | (u32::from(g) << 8) | u32::from(b));
            }
        }
        Shot { width, height, px }
    }

    pub fn get(&self, x: usize, y: usize) -> u32 {
        self.px[y * self.width + x]
    }

    /// The bounding box (x0, y0, x1, y1 exclusive) of pixels of colour `rgb`.
    pub fn bbox(&self, rgb: u32) -> Option<(usize, usize, usize, usize)> {
        let mut b: Option<(usize, usize, usize, usize)> = None;
        for y in 0..self.height {
            for x in 0..self.width {
                if self.get(x, y) == rgb {
                    b = Some(match b {
                        None => (x, y, x + 1, y + 1),
                        Some((x0, y0, x1, y1)) => {
                            (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1))
                        }
                    });
                }
            }
        }
        b
    }

    pub fn count(&self, rgb: u32) -> usize {
        self.px.iter().filter(|&&p| p == rgb).count()
    }

    pub fn save_ppm(&self, path: &Path) {
        let mut out = format!("P6 {} {} 255\n", self.width, self.height).into_bytes();
        for p in &self.px {
            out.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
        }
        let _ = std::fs::write(path, out);
    }
}

/// A gate for one guest client: listens on `<runtime dir>/<name>`, serves the first client
/// that connects with `frame::start`/`frame::on_bind` wired as the connection code does,
/// with every global but the decoration manager offered.
pub struct Gate {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<GateOutcome>>,
}

/// How the gate's client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateOutcome {
    pub cut_off: bool,
}

impl Gate {
    pub fn start(weston: &Weston, name: &str, frame_on: bool) -> Gate {
        Gate::start_at(&weston.dir().join(name), &weston.socket, frame_on)
    }

    /// A gate listening on `listen`, for the compositor at `compositor`.
    pub fn start_at(listen: &Path, compositor: &Path, frame_on: bool) -> Gate {
        Gate::start_with(listen, compositor, frame_on, false)
    }

    /// [`Gate::start_at`]; `offer_decoration` offers the compositor's xdg-decoration
    /// manager to the guest (the policy hides it).
    pub fn start_with(
        listen: &Path,
        compositor: &Path,
        frame_on: bool,
        offer_decoration: bool,
    ) -> Gate {
        let listener = UnixListener::bind(listen).unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = compositor.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            serve(listener, &server, frame_on, offer_decoration, &stop2)
        });
        Gate {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> GateOutcome {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("gate thread panicked")
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: UnixListener,
    server: &Path,
    frame_on: bool,
    offer_decoration: bool,
    stop: &AtomicBool,
) -> GateOutcome {
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return GateOutcome { cut_off: false };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let upstream = UnixStream::connect(server).expect("connecting to weston");
    let state = State::builder(Baseline::ALL_OF_THEM)
        .with_server_fd(&Rc::new(OwnedFd::from(upstream)))
        .build()
        .expect("wl-proxy state");
    let conn = Rc::new(Conn {
        identity: Rc::new(identity()),
        policy: Rc::new(Policy::default()),
        limits: Limits::default(),
        frame: frame_on,
        cut_off: Cell::new(false),
    });
    frame::start(&conn, &state);
    let client = state
        .add_client(&Rc::new(OwnedFd::from(stream)))
        .expect("add_client");
    let gone = Rc::new(Cell::new(false));
    client.set_handler(Gone(gone.clone()));
    client.display().set_handler(Display {
        conn: conn.clone(),
        offer_decoration,
    });
    while !stop.load(Ordering::SeqCst) && !gone.get() && state.is_not_destroyed() {
        if state.dispatch(Some(Duration::from_millis(50))).is_err() {
            break;
        }
        if conn.cut_off.get() {
            // Let the error reach the client, then end it.
            let _ = state.dispatch(Some(Duration::from_millis(50)));
            break;
        }
    }
    let out = GateOutcome {
        cut_off: conn.cut_off.get(),
    };
    state.destroy();
    out
}

struct Gone(Rc<Cell<bool>>);

impl ClientHandler for Gone {
    fn disconnected(self: Box<Self>) {
        self.0.set(true);
    }
}

struct Display {
    conn: Rc<Conn>,
    offer_decoration: bool,
}

impl WlDisplayHandler for Display {
    fn handle_get_registry(&mut self, slf: &Rc<WlDisplay>, registry: &Rc<WlRegistry>) {
        slf.send_get_registry(registry);
        registry.set_handler(Registry {
            conn: self.conn.clone(),
            filter: GlobalMapper::default(),
            offer_decoration: self.offer_decoration,
        });
    }
}

struct Registry {
    conn: Rc<Conn>,
    filter: GlobalMapper,
    offer_decoration: bool,
}

impl WlRegistryHandler for Registry {
    fn handle_bind(&mut self, slf: &Rc<WlRegistry>, name: u32, id: Rc<dyn Object>) {
        self.filter.forward_bind(slf, name, &id);
        frame::on_bind(&self.conn, id.interface(), &id);
    }

    fn handle_global(
        &mut self,
        slf: &Rc<WlRegistry>,
        name: u32,
        interface: ObjectInterface,
        version: u32,
    ) {
        if interface == ObjectInterface::ZxdgDecorationManagerV1 && !self.offer_decoration {
            self.filter.ignore_global(name);
        } else {
            self.filter.forward_global(slf, name, interface, version);
        }
    }

    fn handle_global_remove(&mut self, slf: &Rc<WlRegistry>, name: u32) {
        self.filter.forward_global_remove(slf, name);
    }
}

/// Waits until `check` accepts a screenshot (bounded by [`PATIENCE`]); returns the last one
/// and whether it was accepted.
pub fn wait_for_shot(weston: &Weston, check: impl FnMut(&Shot) -> bool) -> (Shot, bool) {
    wait_for(
        || weston.screenshot(),
        check,
        |shot, n| shot.save_ppm(&weston.dir().join(format!("shot-{n}.ppm"))),
    )
}

/// Takes screenshots with `take` until `check` accepts one (bounded by [`PATIENCE`]); the
/// last one is handed to `keep` (to save it) and returned with whether it was accepted.
pub fn wait_for(
    mut take: impl FnMut() -> Shot,
    mut check: impl FnMut(&Shot) -> bool,
    keep: impl Fn(&Shot, u32),
) -> (Shot, bool) {
    let t0 = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let shot = take();
        let ok = check(&shot);
        if ok || t0.elapsed() > PATIENCE {
            // Kept for a look when the scratch directory is kept or the check failed.
            keep(&shot, n);
            return (shot, ok);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the frame around `layout` in `shot`: located by the bounding box of the VM colour,
/// every ring/band pixel exactly as drawn (colour and label), the VM colour count exact.
/// Returns the frame's top-left corner.
pub fn check_frame(shot: &Shot, layout: &Layout) -> Result<(usize, usize), String> {
    let (x0, y0, x1, y1) = shot.bbox(GREEN).ok_or("no VM-colour pixel on screen")?;
    if (x1 - x0, y1 - y0) != (layout.width as usize, layout.height as usize) {
        return Err(format!(
            "VM-colour bounding box {}x{} at ({x0},{y0}), frame should be {}x{}",
            x1 - x0,
            y1 - y0,
            layout.width,
            layout.height
        ));
    }
    let reference = draw::overlay(layout, COLOR, VM);
    let inner = layout.inner();
    let (mut wrong, mut ring_green) = (0, 0);
    for y in 0..layout.height {
        for x in 0..layout.width {
            let r = reference.get(x, y).unwrap();
            let s = shot.get(x0 + x as usize, y0 + y as usize);
            let in_inner = x >= inner.x0 && x < inner.x1 && y >= inner.y0 && y < inner.y1;
            if in_inner {
                continue;
            }
            if s != r & 0xff_ffff {
                wrong += 1;
            }
            if s == GREEN {
                ring_green += 1;
            }
        }
    }
    let area = (layout.width * layout.height - layout.content_w * layout.content_h) as usize;
    let expected = area - draw::label_pixels(layout.width, VM);
    if wrong != 0 || ring_green != expected {
        return Err(format!(
            "{wrong} ring/band pixels differ from the drawn frame; {ring_green} VM-colour ring \
             pixels, expected {expected}"
        ));
    }
    Ok((x0, y0))
}
