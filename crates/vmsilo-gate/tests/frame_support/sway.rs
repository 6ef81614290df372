//! The test kit's headless sway (`vmsilo_testkit::wayland::Sway`: pixman, as a non-root test
//! user with a runtime directory of that owner; root still connects to its sockets) with the
//! frame tests' window rules and shorthands: screenshots as [`Shot`]s, window state with
//! `swaymsg -t get_tree`, a virtual keyboard and pointer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use vmsilo_testkit::wayland::{self, Compositor, Image, SwayOptions};

use super::Shot;

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

/// The test kit's headless sway at 800x600 with the frame tests' window rules (vmsilo
/// toplevels float, with sway's own 2-pixel title bar around them) and sway's defaults for
/// borders and focus, with the shorthands these tests use.
pub struct Sway {
    inner: wayland::Sway,
    /// The compositor's socket.
    pub socket: PathBuf,
}

impl Sway {
    pub fn start() -> Sway {
        let inner = wayland::Sway::start(SwayOptions {
            width: 800,
            height: 600,
            extra_config: "default_border normal 2
                           default_floating_border normal 2
                           focus_follows_mouse yes
                           for_window [app_id=\"^vmsilo\\.\"] floating enable
"
            .into(),
            ..SwayOptions::default()
        })
        .unwrap_or_else(|e| panic!("starting sway: {e}"));
        let socket = inner.runtime_dir().join(inner.display());
        Sway { inner, socket }
    }

    /// The runtime directory (gate and clipd sockets go here too).
    pub fn dir(&self) -> &Path {
        self.inner.runtime_dir()
    }

    pub fn log(&self) -> String {
        self.inner.log()
    }

    pub fn screenshot(&self) -> Shot {
        Shot::from_image(
            &self
                .inner
                .screenshot()
                .unwrap_or_else(|e| panic!("sway screenshot: {e}")),
        )
    }

    /// A screenshot, also kept as the PNG file `name` in the scratch directory.
    pub fn screenshot_png(&self, name: &str) -> Shot {
        let png = self
            .inner
            .screenshot_png()
            .unwrap_or_else(|e| panic!("sway screenshot: {e}"));
        let _ = std::fs::write(self.inner.scratch().join(name), &png);
        Shot::from_image(&Image::from_png(&png).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    /// A virtual keyboard (a `wtype` that sleeps), so that the seat has a keyboard and sway
    /// gives keyboard focus; it ends when the returned child is dropped.
    pub fn keyboard(&self) -> KeyboardProcess {
        let child = self
            .inner
            .command("wtype")
            .args(["-s", "600000", "x"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wtype");
        KeyboardProcess(child)
    }

    /// `swaymsg CRITERIA focus`.
    pub fn focus(&self, criteria: &str) {
        if let Err(e) = self.inner.ipc(&[&format!("{criteria} focus")]) {
            panic!("swaymsg {criteria} focus: {e}");
        }
    }

    /// `swaymsg -t get_tree` (JSON text).
    pub fn tree(&self) -> String {
        self.inner
            .ipc(&["-r", "-t", "get_tree"])
            .unwrap_or_else(|e| panic!("swaymsg -t get_tree: {e}"))
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
    if let Err(e) = vmsilo_gate::testing::client_roundtrip(state) {
        panic!("virtual pointer round trip: {e}");
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
