//! The two-level clipboard on sway 1.7 headless: two real gate processes (`banking`,
//! `shopping`) framed on sway, a guest client behind each, one in-process vmsilo-clipd, and
//! the chords typed on one long-lived virtual keyboard bound on sway (no wtype, no synthetic
//! input from the gate).

mod frame_support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use frame_support::client::{KeyboardLog, TestClient, Toplevel};
use frame_support::sway::{self, Sway, VirtualKeyboard};
use frame_support::{PATIENCE, Shot};
use vmsilo_clipd::chan::Client;
use vmsilo_clipd::core::Settings;
use vmsilo_clipd::daemon::{Daemon, Options, Records};
use vmsilo_clipd::proto::Msg;
use vmsilo_gate::testing::{Selection, SelectionRecorder};
use wl_proxy::protocols::wayland::wl_data_device::WlDataDevice;
use wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManager;
use wl_proxy::protocols::wayland::wl_data_source::{WlDataSource, WlDataSourceHandler};
use wl_proxy::protocols::wayland::wl_seat::WlSeat;

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-gate");
const UTF8: &str = "text/plain;charset=utf-8";
const SECRET: &[u8] = b"IBAN DE44 5001 0517 5407 3249 31";
const KEY_C: u32 = 46;
const KEY_V: u32 = 47;
const CTRL_SHIFT: u32 = 4 | 1;

struct Src(&'static [u8]);

impl WlDataSourceHandler for Src {
    fn handle_send(&mut self, _: &Rc<WlDataSource>, _mime: &str, fd: &Rc<OwnedFd>) {
        let _ = std::fs::File::from(fd.as_ref().try_clone().unwrap()).write_all(self.0);
    }
}

/// A guest app behind a gate: a window with keyboard focus tracking and a data device.
struct App {
    c: TestClient,
    kb: Rc<KeyboardLog>,
    top: Toplevel,
    ddm: Rc<WlDataDeviceManager>,
    dev: Rc<WlDataDevice>,
    sel: Rc<RefCell<Selection>>,
    _src: RefCell<Vec<Rc<WlDataSource>>>,
}

impl App {
    fn open(socket: &Path, title: &str) -> App {
        App::open_sized(socket, title, 200)
    }

    /// A window `width`×100.
    fn open_sized(socket: &Path, title: &str, width: i32) -> App {
        let c = TestClient::connect(socket);
        let kb = c.keyboard();
        let top = c.toplevel(Some(title), Some("org.example.clip"));
        top.surface
            .send_attach(Some(&c.buffer(width, 100, 0xff00_00ff)), 0, 0);
        top.surface.send_commit();
        let ddm: Rc<WlDataDeviceManager> = c.bind_optional(3).expect("a data device manager");
        let seat: Rc<WlSeat> = c.bind_optional(5).expect("a seat");
        let dev = ddm.new_send_get_data_device(&seat);
        let sel = Rc::new(RefCell::new(Selection::default()));
        dev.set_handler(SelectionRecorder(sel.clone()));
        c.roundtrip();
        App {
            c,
            kb,
            top,
            ddm,
            dev,
            sel,
            _src: RefCell::new(Vec::new()),
        }
    }

    fn pump_until(&self, what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < PATIENCE * 2, "timed out waiting for {what}");
            let _ = self.c.state.dispatch(Some(Duration::from_millis(20)));
        }
    }

    fn copy(&self, payload: &'static [u8]) {
        let src = self.ddm.new_send_create_data_source();
        src.set_handler(Src(payload));
        src.send_offer(UTF8);
        self.dev.send_set_selection(Some(&src), 0);
        self._src.borrow_mut().push(src);
        self.c.roundtrip();
    }

    fn paste(&self) -> Vec<u8> {
        let offer = self.sel.borrow().offer.clone().expect("a selection");
        let (mut r, w) = std::io::pipe().unwrap();
        offer.send_receive(UTF8, &Rc::new(OwnedFd::from(w)));
        self.c.roundtrip();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            let _ = tx.send(b);
        });
        rx.recv_timeout(PATIENCE).expect("the paste's pipe closes")
    }
}

fn us_keymap() -> String {
    use xkbcommon::xkb;
    let ctx = xkb::Context::new(xkb::CONTEXT_NO_FLAGS);
    xkb::Keymap::new_from_names(&ctx, "evdev", "pc105", "us", "", None, 0)
        .expect("the system's XKB data compiles a keymap")
        .get_as_string(xkb::KEYMAP_FORMAT_TEXT_V1)
}

struct Clipd {
    socket: PathBuf,
    records: Records,
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Clipd {
    fn start(socket: PathBuf, settings: Settings) -> Clipd {
        let mut d = Daemon::new(Options {
            socket: socket.clone(),
            settings,
            desktop_notifications: false,
            fetch_timeout: PATIENCE,
        })
        .unwrap();
        let records = d.records();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let thread = std::thread::spawn(move || d.run(r.as_fd()).unwrap());
        Clipd {
            socket,
            records,
            stop: Some(w),
            thread: Some(thread),
        }
    }
    fn has(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.records.lock().unwrap().iter().any(|r| pred(r))
    }
    fn slot_source(&self) -> String {
        let c = Client::connect(&self.socket).unwrap();
        match c.request(&Msg::Query, None, PATIENCE).unwrap().0 {
            Msg::Status { source, .. } => source,
            m => panic!("unexpected {m:?}"),
        }
    }
}

impl Drop for Clipd {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gate(sway: &Sway, vm: &str, color: &str, clipd: &Clipd) -> vmsilo_gate::testing::Gate {
    let comp = sway.socket.to_str().unwrap().to_string();
    let clipd = clipd.socket.to_str().unwrap().to_string();
    vmsilo_gate::testing::Gate::start(
        Path::new(EXE),
        &sway.dir().join(format!("{vm}.sock")),
        &[
            "--vm",
            vm,
            "--color",
            color,
            "--compositor",
            &comp,
            "--clipd",
            &clipd,
        ],
    )
    .expect("start the gate")
}

#[test]
#[ignore = "e2e: needs sway headless (started under another uid, so root)"]
fn test_chords_on_a_virtual_keyboard_move_banking_text_to_shopping_on_sway() {
    if let Some(why) = sway::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let sway = Sway::start();
    let vkb = VirtualKeyboard::connect(&sway, &us_keymap());
    let clipd = Clipd::start(sway.dir().join("clipd.sock"), Settings::default());
    let _gb = gate(&sway, "banking", "#2ecc71", &clipd);
    let _gs = gate(&sway, "shopping", "#e74c3c", &clipd);
    // The host's own clipboard holds a secret (set by a host client of sway).
    let _host = HostClipboard::set(&sway, "HOST SECRET");

    // banking's window gets the focus (the only window); its app copies (its own clipboard).
    let banking = App::open(&sway.dir().join("banking.sock"), "bank");
    banking.pump_until("keyboard focus on banking", || {
        banking.kb.focus.borrow().is_some()
    });
    banking.c.roundtrip();
    assert!(
        banking.sel.borrow().offer.is_none(),
        "a VM never sees the host's clipboard"
    );
    banking.copy(SECRET);
    // Ctrl+Shift+C on the virtual keyboard: banking's clipboard into the slot.
    vkb.chord(CTRL_SHIFT, KEY_C);
    banking.pump_until("the copy", || {
        clipd.has(|r| r.starts_with("Clipboard: copied"))
    });
    assert_eq!(clipd.slot_source(), "banking");

    // shopping's window opens and takes the focus; nothing crossed yet.
    let shopping = App::open(&sway.dir().join("shopping.sock"), "shop");
    shopping.pump_until("keyboard focus on shopping", || {
        shopping.kb.focus.borrow().is_some()
    });
    shopping.c.roundtrip();
    assert!(
        shopping.sel.borrow().offer.is_none(),
        "nothing crosses without the paste chord"
    );

    // Ctrl+Shift+V: the slot becomes shopping's clipboard; a shopping client reads it.
    vkb.chord(CTRL_SHIFT, KEY_V);
    shopping.pump_until("the pasted selection", || {
        shopping.sel.borrow().offer.is_some()
    });
    assert!(shopping.sel.borrow().mimes.contains(&UTF8.to_string()));
    assert_eq!(shopping.paste(), SECRET);
    assert_eq!(clipd.slot_source(), "", "the slot is empty after the paste");
    assert!(
        clipd.has(|r| r
            == "Clipboard: pasted: banking → shopping: 32 characters, text/plain;charset=utf-8")
    );

    // The chords never reached the guests.
    banking.c.roundtrip();
    assert!(
        banking.kb.keys.borrow().is_empty(),
        "{:?}",
        banking.kb.keys.borrow()
    );
    assert!(
        shopping.kb.keys.borrow().is_empty(),
        "{:?}",
        shopping.kb.keys.borrow()
    );
    drop(banking.top);
    drop(shopping.top);
}

/// The host's clipboard set with `wl-copy --foreground` on sway (killed by PID on drop).
struct HostClipboard(std::process::Child);

impl HostClipboard {
    fn set(sway: &Sway, text: &str) -> HostClipboard {
        let mut child = std::process::Command::new("wl-copy")
            .args(["--foreground", "--type", UTF8])
            .env("XDG_RUNTIME_DIR", sway.dir())
            .env("WAYLAND_DISPLAY", &sway.socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("wl-copy (apt-get install wl-clipboard)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        // Bounded wait until the host clipboard holds it (wl-paste as a host client).
        let t0 = Instant::now();
        loop {
            let out = std::process::Command::new("wl-paste")
                .args(["--no-newline"])
                .env("XDG_RUNTIME_DIR", sway.dir())
                .env("WAYLAND_DISPLAY", &sway.socket)
                .output()
                .expect("wl-paste");
            if out.stdout == text.as_bytes() {
                break;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "wl-copy did not set the host clipboard"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HostClipboard(child)
    }
}

impl Drop for HostClipboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "e2e: needs sway headless (started under another uid, so root)"]
fn test_over_cap_and_denied_transfers_are_refused_on_sway() {
    if let Some(why) = sway::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    use vmsilo_clipd::core::{Policy, Rule};
    let sway = Sway::start();
    let vkb = VirtualKeyboard::connect(&sway, &us_keymap());
    let settings = Settings {
        policy: Policy {
            rules: vec![
                Rule::parse("banking:shopping:deny").unwrap(),
                Rule::parse("*:*:allow").unwrap(),
            ],
        },
        max_size: 10,
        ..Settings::default()
    };
    let clipd = Clipd::start(sway.dir().join("clipd.sock"), settings);
    let _gb = gate(&sway, "banking", "#2ecc71", &clipd);
    let _gs = gate(&sway, "shopping", "#e74c3c", &clipd);
    // Wide enough for the whole notice in the band.
    let banking = App::open_sized(&sway.dir().join("banking.sock"), "bank", 700);
    banking.pump_until("keyboard focus on banking", || {
        banking.kb.focus.borrow().is_some()
    });
    // The band as sway shows it (a grim PNG): the VM name.
    let name = "banking";
    let notice = "banking | clipboard: refused, over 10 chars";
    let (shot, ok) = band_shot(&sway, "before", name);
    assert!(ok, "{:?}", band_check(&shot, name));
    // The bottom ring of a wide frame reaches the right edge too (no scaling shortfall).
    let (x0, _, x1, y1) = shot.bbox(GREEN).expect("banking's frame on screen");
    let short: Vec<usize> = (x0..x1).filter(|&x| shot.get(x, y1 - 1) != GREEN).collect();
    assert!(short.is_empty(), "bottom ring not green at x = {short:?}");
    banking.copy(SECRET);
    vkb.chord(CTRL_SHIFT, KEY_C);
    banking.pump_until("the over-cap refusal", || {
        clipd.has(|r| r.starts_with("Clipboard: refused") && r.contains("too large"))
    });
    assert_eq!(clipd.slot_source(), "");
    // The refusal shows in banking's band, drawn by the gate, next to the name...
    let (during, ok) = band_shot(&sway, "during", notice);
    assert!(ok, "{:?}", band_check(&during, notice));
    let black = |s: &Shot| band_pixels(s).iter().filter(|&&p| p == 0).count();
    assert!(
        black(&during) > black(&shot),
        "the notice adds text to the band"
    );
    // ... and a few seconds later the band shows the name alone again.
    let (after, ok) = band_shot(&sway, "after", name);
    assert!(ok, "{:?}", band_check(&after, name));
    assert_eq!(band_pixels(&after), band_pixels(&shot));
    banking.copy(b"short");
    vkb.chord(CTRL_SHIFT, KEY_C);
    banking.pump_until("the copy", || {
        clipd.has(|r| r.starts_with("Clipboard: copied"))
    });
    let shopping = App::open(&sway.dir().join("shopping.sock"), "shop");
    shopping.pump_until("keyboard focus on shopping", || {
        shopping.kb.focus.borrow().is_some()
    });
    vkb.chord(CTRL_SHIFT, KEY_V);
    shopping.pump_until("the denial", || {
        clipd.has(|r| r.starts_with("Clipboard: refused") && r.contains("denies"))
    });
    shopping.c.roundtrip();
    assert!(
        shopping.sel.borrow().offer.is_none(),
        "a denied paste delivers nothing"
    );
    assert_eq!(clipd.slot_source(), "banking");
    drop(banking.top);
    drop(shopping.top);
}

/// banking's frame colour (#2ecc71) as a screenshot pixel.
const GREEN: u32 = 0x002e_cc71;
/// The width of banking's frame in the over-cap test (a 700-pixel window).
const WIDE_FRAME: i32 = 700 + vmsilo_gate::layout::EXTRA_W;

/// The band rows of banking's frame (located by the bounding box of its colour), to its right
/// edge (a 700-pixel band is drawn whole: the colour buffer is not one pixel), or none.
fn band_pixels(shot: &Shot) -> Vec<u32> {
    let Some((x0, y0, x1, _)) = shot.bbox(GREEN) else {
        return Vec::new();
    };
    let mut px = Vec::new();
    for y in y0..(y0 + vmsilo_gate::layout::BAND as usize).min(shot.height) {
        for x in x0..x1 {
            px.push(shot.get(x, y));
        }
    }
    px
}

/// Whether banking's band on screen is exactly the gate's drawing of `label`.
fn band_check(shot: &Shot, label: &str) -> Result<(), String> {
    let (x0, _, x1, _) = shot
        .bbox(GREEN)
        .ok_or("no banking-colour pixel on screen")?;
    if x1 - x0 != WIDE_FRAME as usize {
        return Err(format!(
            "banking's frame is {} wide, not {WIDE_FRAME}",
            x1 - x0
        ));
    }
    let band = vmsilo_gate::draw::band(
        WIDE_FRAME,
        vmsilo_gate::identity::Rgb {
            r: 0x2e,
            g: 0xcc,
            b: 0x71,
        },
        label,
    );
    let want: Vec<u32> = band
        .pixels
        .chunks_exact(band.width as usize)
        .flatten()
        .map(|p| p & 0xff_ffff)
        .collect();
    let got = band_pixels(shot);
    let wrong = want.iter().zip(&got).filter(|(a, b)| a != b).count();
    if got.len() != want.len() || wrong > 0 {
        return Err(format!(
            "{wrong} of {} band pixels differ from {label:?}",
            want.len()
        ));
    }
    Ok(())
}

/// Screenshots (grim PNGs) until banking's band shows `label` (bounded); the last one is
/// kept as `<name>.png` in sway's scratch directory.
fn band_shot(sway: &Sway, name: &str, label: &str) -> (Shot, bool) {
    frame_support::wait_for(
        || sway.screenshot_png(&format!("{name}.png")),
        |s| band_check(s, label).is_ok(),
        |_, _| {},
    )
}

/// `wl-copy`/`wl-paste` (wl-clipboard) run as a guest app behind the gate of `vm`.
fn wl(sway: &Sway, vm: &str, program: &str) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("XDG_RUNTIME_DIR", sway.dir())
        .env("WAYLAND_DISPLAY", sway.dir().join(format!("{vm}.sock")))
        .stdin(std::process::Stdio::null());
    c
}

/// Runs `wl-paste --no-newline` behind `vm`'s gate (bounded); its output, or `None` when it
/// found nothing to paste.
fn wl_paste(sway: &Sway, vm: &str) -> Option<Vec<u8>> {
    let mut child = wl(sway, vm, "wl-paste")
        .args(["--no-newline", "--type", "text/plain;charset=utf-8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wl-paste (apt-get install wl-clipboard)");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = frame_support::wait_bounded(&mut child, PATIENCE).expect("wl-paste hung");
    status.success().then_some(out)
}

#[test]
#[ignore = "e2e: needs sway headless (started under another uid, so root) and wl-clipboard"]
fn test_wl_clipboard_apps_behind_the_gates_cross_only_by_the_chords_on_sway() {
    if let Some(why) = sway::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let sway = Sway::start();
    let vkb = VirtualKeyboard::connect(&sway, &us_keymap());
    let clipd = Clipd::start(sway.dir().join("clipd.sock"), Settings::default());
    let _gb = gate(&sway, "banking", "#2ecc71", &clipd);
    let _gs = gate(&sway, "shopping", "#e74c3c", &clipd);
    let _host = HostClipboard::set(&sway, "HOST SECRET");
    let banking = App::open(&sway.dir().join("banking.sock"), "bank");
    banking.pump_until("keyboard focus on banking", || {
        banking.kb.focus.borrow().is_some()
    });
    assert_eq!(
        wl_paste(&sway, "shopping"),
        None,
        "no VM sees the host's clipboard"
    );
    let mut copy = wl(&sway, "banking", "wl-copy")
        .args(["--foreground", "--type", UTF8, "from banking"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("wl-copy");
    // wl-copy sets the selection some time after it starts: wait for it (bounded) rather
    // than race it.
    let t0 = Instant::now();
    let mut pasted = wl_paste(&sway, "banking");
    while pasted.is_none() && t0.elapsed() < PATIENCE {
        std::thread::sleep(std::time::Duration::from_millis(50));
        pasted = wl_paste(&sway, "banking");
    }
    assert_eq!(pasted.as_deref(), Some(&b"from banking"[..]));
    assert_eq!(
        wl_paste(&sway, "shopping"),
        None,
        "nothing crosses without the chords"
    );
    sway.focus("[title=\"^\\[banking\\] bank\"]");
    let t0 = Instant::now();
    while !clipd.has(|r| r.starts_with("Clipboard: copied")) {
        assert!(t0.elapsed() < PATIENCE, "no copy");
        vkb.chord(CTRL_SHIFT, KEY_C);
        banking.pump_until("a copy or refusal", || {
            clipd.has(|r| r.contains("copy from banking") || r.starts_with("Clipboard: copied"))
        });
    }
    let shopping = App::open(&sway.dir().join("shopping.sock"), "shop");
    shopping.pump_until("keyboard focus on shopping", || {
        shopping.kb.focus.borrow().is_some()
    });
    vkb.chord(CTRL_SHIFT, KEY_V);
    shopping.pump_until("the paste", || {
        clipd.has(|r| r.starts_with("Clipboard: pasted"))
    });
    assert_eq!(
        wl_paste(&sway, "shopping").as_deref(),
        Some(&b"from banking"[..])
    );
    assert_eq!(clipd.slot_source(), "");
    let _ = copy.kill();
    let _ = copy.wait();
}
