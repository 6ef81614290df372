//! A headless sway 1.7 (pixman) for the frame tests. sway refuses to run as root, so the test
//! (root) starts it under an unused uid/gid with a runtime directory of that owner; root
//! still connects to its sockets. Screenshots with `grim -t ppm`, window state with
//! `swaymsg -t get_tree`.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_testkit::ScratchDir;

use super::{PATIENCE, Shot, wait_bounded};

/// The uid/gid sway runs as (no passwd entry needed).
pub const SWAY_UID: u32 = 4243;

/// Why sway tests cannot run here, or `None`.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("starting sway under another uid needs root".into());
    }
    for tool in ["sway", "swaymsg", "grim", "wtype"] {
        if vmsilo_testkit::find_tool(tool).is_err() {
            return Some(format!(
                "{tool} is missing (apt-get install sway grim wtype; `cargo xtask setup` installs them)"
            ));
        }
    }
    None
}

pub struct Sway {
    child: Child,
    pub dir: ScratchDir,
    pub socket: PathBuf,
    ipc: PathBuf,
}

impl Sway {
    pub fn start(label: &str) -> Sway {
        let dir = ScratchDir::new(label).expect("scratch dir");
        let cfg = dir.path().join("cfg");
        std::fs::write(
            &cfg,
            "output HEADLESS-1 resolution 800x600 position 0 0\n\
             for_window [app_id=\"^vmsilo\\.\"] floating enable\n\
             default_floating_border normal 2\n",
        )
        .unwrap();
        for p in [dir.path(), cfg.as_path()] {
            nix::unistd::chown(
                p,
                Some(nix::unistd::Uid::from_raw(SWAY_UID)),
                Some(nix::unistd::Gid::from_raw(SWAY_UID)),
            )
            .unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let log = std::fs::File::create(dir.path().join("sway.log")).unwrap();
        let child = Command::new("sway")
            .arg("-c")
            .arg(&cfg)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("WLR_BACKENDS", "headless")
            .env("WLR_RENDERER", "pixman")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .uid(SWAY_UID)
            .gid(SWAY_UID)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting sway");
        let pid = child.id();
        let socket = dir.path().join("wayland-1");
        let ipc = dir.path().join(format!("sway-ipc.{SWAY_UID}.{pid}.sock"));
        let s = Sway {
            child,
            dir,
            socket,
            ipc,
        };
        let t0 = Instant::now();
        while !(s.socket.exists() && s.ipc.exists()) {
            assert!(
                t0.elapsed() < PATIENCE,
                "sway did not open {} (log: {})",
                s.socket.display(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sway.log")).unwrap_or_default()
    }

    pub fn screenshot(&self) -> Shot {
        let mut child = Command::new("grim")
            .args(["-t", "ppm", "-"])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("grim");
        let mut out = Vec::new();
        std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let status = wait_bounded(&mut child, PATIENCE).expect("grim hung");
        assert!(status.success(), "grim failed: {status}");
        Shot::from_ppm(&out)
    }

    /// A screenshot as a PNG file (`grim`'s default format) in the scratch directory, read
    /// with the test kit's PNG reader.
    pub fn screenshot_png(&self, name: &str) -> Shot {
        let path = self.dir.path().join(name);
        let mut child = Command::new("grim")
            .arg(&path)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("grim");
        let status = wait_bounded(&mut child, PATIENCE).expect("grim hung");
        assert!(status.success(), "grim failed: {status}");
        Shot::read_png(&path)
    }

    /// A virtual keyboard (a `wtype` that sleeps), so that the seat has a keyboard and sway
    /// gives keyboard focus; it ends when the returned child is dropped.
    pub fn keyboard(&self) -> KeyboardProcess {
        let child = Command::new("wtype")
            .args(["-s", "600000", "x"])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wtype");
        KeyboardProcess(child)
    }

    /// `swaymsg CRITERIA focus`.
    pub fn focus(&self, criteria: &str) {
        let out = Command::new("swaymsg")
            .args(["-s"])
            .arg(&self.ipc)
            .arg(format!("{criteria} focus"))
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .output()
            .expect("swaymsg");
        assert!(out.status.success(), "swaymsg {criteria} focus: {out:?}");
    }

    /// `swaymsg -t get_tree` (JSON text).
    pub fn tree(&self) -> String {
        let out = Command::new("swaymsg")
            .args(["-r", "-t", "get_tree", "-s"])
            .arg(&self.ipc)
            .output()
            .expect("swaymsg");
        assert!(out.status.success(), "swaymsg failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Sway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `wtype` holding a virtual keyboard.
pub struct KeyboardProcess(Child);

impl Drop for KeyboardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A virtual pointer on sway's seat, driven by the test (a wl-proxy client of sway).
pub struct VirtualPointer {
    state: std::rc::Rc<wl_proxy::state::State>,
    pointer: std::rc::Rc<wl_proxy::protocols::wlr_virtual_pointer_unstable_v1::zwlr_virtual_pointer_v1::ZwlrVirtualPointerV1>,
    time: std::cell::Cell<u32>,
}

impl VirtualPointer {
    pub fn connect(sway: &Sway) -> VirtualPointer {
        use std::cell::{Cell, RefCell};
        use std::rc::Rc;
        use wl_proxy::object::ConcreteObject;
        use wl_proxy::protocols::ObjectInterface;
        use wl_proxy::protocols::wayland::wl_registry::{WlRegistry, WlRegistryHandler};
        use wl_proxy::protocols::wlr_virtual_pointer_unstable_v1::zwlr_virtual_pointer_manager_v1::ZwlrVirtualPointerManagerV1;

        struct Globals(Rc<RefCell<Vec<(u32, ObjectInterface, u32)>>>);
        impl WlRegistryHandler for Globals {
            fn handle_global(&mut self, _: &Rc<WlRegistry>, name: u32, i: ObjectInterface, v: u32) {
                self.0.borrow_mut().push((name, i, v));
            }
        }
        let stream = std::os::unix::net::UnixStream::connect(&sway.socket).unwrap();
        let state = wl_proxy::state::State::builder(wl_proxy::baseline::Baseline::ALL_OF_THEM)
            .with_server_fd(&Rc::new(std::os::fd::OwnedFd::from(stream)))
            .build()
            .unwrap();
        state.set_default_forward_to_client(false);
        let registry = state.display().new_send_get_registry();
        let globals = Rc::new(RefCell::new(Vec::new()));
        registry.set_handler(Globals(globals.clone()));
        roundtrip(&state);
        let (name, v) = globals
            .borrow()
            .iter()
            .find(|(_, i, _)| *i == ZwlrVirtualPointerManagerV1::INTERFACE)
            .map(|&(n, _, v)| (n, v.min(1)))
            .expect("sway offers no zwlr_virtual_pointer_manager_v1");
        let mgr = state.create_object::<ZwlrVirtualPointerManagerV1>(v);
        registry.send_bind(name, mgr.clone());
        let pointer = mgr.new_send_create_virtual_pointer(None);
        roundtrip(&state);
        VirtualPointer {
            state,
            pointer,
            time: Cell::new(1),
        }
    }

    fn roundtrip(&self) {
        roundtrip(&self.state);
    }

    fn tick(&self) -> u32 {
        let t = self.time.get() + 10;
        self.time.set(t);
        t
    }

    /// Moves to (`x`, `y`) on the 800x600 output.
    pub fn move_to(&self, x: u32, y: u32) {
        self.pointer
            .send_motion_absolute(self.tick(), x, y, 800, 600);
        self.pointer.send_frame();
        self.roundtrip();
    }

    /// Presses or releases the left button.
    pub fn left(&self, pressed: bool) {
        use wl_proxy::protocols::wayland::wl_pointer::WlPointerButtonState;
        let s = if pressed {
            WlPointerButtonState::PRESSED
        } else {
            WlPointerButtonState::RELEASED
        };
        self.pointer.send_button(self.tick(), 0x110, s);
        self.pointer.send_frame();
        self.roundtrip();
    }
}

fn roundtrip(state: &std::rc::Rc<wl_proxy::state::State>) {
    use std::cell::Cell;
    use std::rc::Rc;
    use wl_proxy::protocols::wayland::wl_callback::{WlCallback, WlCallbackHandler};
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
        assert!(
            t0.elapsed() < PATIENCE,
            "virtual pointer round trip timed out"
        );
        state.dispatch(Some(Duration::from_millis(50))).unwrap();
    }
}

/// One long-lived virtual keyboard on sway's seat (see `vmsilo_gate::testing`).
pub struct VirtualKeyboard;

impl VirtualKeyboard {
    /// Connects to `sway`, creates the keyboard and uploads `keymap`.
    pub fn connect(sway: &Sway, keymap: &str) -> vmsilo_gate::testing::VirtualKeyboard {
        vmsilo_gate::testing::VirtualKeyboard::connect(&sway.socket, keymap)
            .expect("a virtual keyboard on sway")
    }
}
