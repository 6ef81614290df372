//! Component tests of the two-level clipboard: one in-process vmsilo-clipd, two real gate
//! processes (`banking`, `shopping`) on the in-process fake compositor, a guest client behind
//! each. The chords are wl_keyboard events the fake sends to the focused guest surface, with
//! a real XKB keymap: no keyboard and no compositor needed. One test maps framed windows on
//! the fake and reads the label band's pixels from the buffers the gate commits.

mod frame_support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use vmsilo_clipd::chan::Client;
use vmsilo_clipd::core::{Policy, Rule, Settings};
use vmsilo_clipd::daemon::{Daemon, Options, Records};
use vmsilo_clipd::proto::Msg;
use vmsilo_gate::testing::{
    FakeCompositor, Gate, KeyCmd, Selection, SelectionRecorder, TIMEOUT, TempDir, TestClient,
    standard_globals,
};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::wayland::wl_compositor::WlCompositor;
use wl_proxy::protocols::wayland::wl_data_device::WlDataDevice;
use wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManager;
use wl_proxy::protocols::wayland::wl_data_source::{WlDataSource, WlDataSourceHandler};
use wl_proxy::protocols::wayland::wl_keyboard::{
    WlKeyboard, WlKeyboardHandler, WlKeyboardKeyState,
};
use wl_proxy::protocols::wayland::wl_seat::WlSeat;

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-gate");
const UTF8: &str = "text/plain;charset=utf-8";
const SECRET: &[u8] = b"IBAN DE44 5001 0517 5407 3249 31";
/// evdev codes of the keys typing c, v and a on a US layout.
const KEY_C: u32 = 46;
const KEY_V: u32 = 47;
const KEY_A: u32 = 30;
const SHIFT: u32 = 1;
const CTRL: u32 = 4;

/// vmsilo-clipd in a thread of the test.
struct Clipd {
    socket: PathBuf,
    records: Records,
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Clipd {
    fn start(dir: &Path, settings: Settings) -> Clipd {
        let socket = dir.join("clipd.sock");
        let mut d = Daemon::new(Options {
            socket: socket.clone(),
            settings,
            desktop_notifications: false,
            fetch_timeout: TIMEOUT,
        })
        .expect("start vmsilo-clipd");
        let records = d.records();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let thread = std::thread::spawn(move || {
            d.run(r.as_fd()).expect("clipd runs");
        });
        Clipd {
            socket,
            records,
            stop: Some(w),
            thread: Some(thread),
        }
    }

    fn records(&self) -> Vec<String> {
        self.records.lock().unwrap().clone()
    }

    fn has(&self, pred: impl Fn(&str) -> bool) -> bool {
        self.records().iter().any(|r| pred(r))
    }

    /// The slot: (source, mime, size); source is empty when the slot is.
    fn slot(&self) -> (String, String, u64) {
        let c = Client::connect(&self.socket).unwrap();
        match c.request(&Msg::Query, None, TIMEOUT).unwrap().0 {
            Msg::Status { source, mime, size } => (source, mime, size),
            other => panic!("unexpected reply {other:?}"),
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

/// Records the keys a guest client is sent (pressed only).
struct Keys(Rc<RefCell<Vec<u32>>>);

impl WlKeyboardHandler for Keys {
    fn handle_key(
        &mut self,
        _slf: &Rc<WlKeyboard>,
        _serial: u32,
        _time: u32,
        key: u32,
        state: WlKeyboardKeyState,
    ) {
        if state == WlKeyboardKeyState::PRESSED {
            self.0.borrow_mut().push(key);
        }
    }
}

struct Source(&'static [u8]);

impl WlDataSourceHandler for Source {
    fn handle_send(&mut self, _slf: &Rc<WlDataSource>, _mime: &str, fd: &Rc<OwnedFd>) {
        let mut f = std::fs::File::from(fd.as_ref().try_clone().unwrap());
        let _ = f.write_all(self.0);
    }
}

/// A guest client behind a VM's gate: a surface, a keyboard, a data device.
struct Guest {
    c: TestClient,
    ddm: Rc<WlDataDeviceManager>,
    dev: Rc<WlDataDevice>,
    seen: Rc<RefCell<Selection>>,
    /// The keys it was sent.
    keys: Rc<RefCell<Vec<u32>>>,
    /// Its connection number in the fake's trace.
    conn: u32,
    sources: Vec<Rc<WlDataSource>>,
}

impl Guest {
    fn connect(sock: &Path, fake: &FakeCompositor) -> Guest {
        let before = keyboards(fake).len();
        let c = TestClient::connect(sock).unwrap();
        let (n, v) = c.global(ObjectInterface::WlCompositor).unwrap();
        let comp = c.bind::<WlCompositor>(n, v);
        let _surface = comp.new_send_create_surface();
        let (n, v) = c.global(ObjectInterface::WlSeat).unwrap();
        let seat = c.bind::<WlSeat>(n, v);
        let seen = Rc::new(RefCell::new(Selection::default()));
        let keys = Rc::new(RefCell::new(Vec::new()));
        let kb = seat.new_send_get_keyboard();
        kb.set_handler(Keys(keys.clone()));
        let (n, v) = c.global(ObjectInterface::WlDataDeviceManager).unwrap();
        let ddm = c.bind::<WlDataDeviceManager>(n, v);
        let dev = ddm.new_send_get_data_device(&seat);
        dev.set_handler(SelectionRecorder(seen.clone()));
        c.roundtrip().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while keyboards(fake).len() == before {
            assert!(
                Instant::now() < deadline,
                "the keyboard reached the compositor"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let conn = keyboards(fake)[before];
        Guest {
            c,
            ddm,
            dev,
            seen,
            keys,
            conn,
            sources: Vec::new(),
        }
    }

    fn set_selection(&mut self, payload: &'static [u8]) {
        let src = self.ddm.new_send_create_data_source();
        src.set_handler(Source(payload));
        src.send_offer(UTF8);
        src.send_offer("UTF8_STRING");
        self.dev.send_set_selection(Some(&src), 1);
        self.sources.push(src);
        self.c.roundtrip().unwrap();
    }

    /// Sends a chord (ctrl+shift+key) through the fake compositor.
    fn chord(&self, fake: &FakeCompositor, key: u32) {
        fake.keyboard(&chord(self.conn, key));
    }

    /// Dispatches until `cond` (bounded).
    fn pump_until(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.c.pump();
        }
    }

    /// Pastes the offered selection as UTF-8 text.
    fn paste(&self) -> Vec<u8> {
        let offer = self.seen.borrow().offer.clone().expect("a selection");
        let (mut r, w) = std::io::pipe().unwrap();
        offer.send_receive(UTF8, &Rc::new(OwnedFd::from(w)));
        self.c.roundtrip().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx.recv_timeout(TIMEOUT).expect("the paste's pipe closes")
    }
}

/// Connection numbers of the keyboards the compositor saw, in order.
fn keyboards(fake: &FakeCompositor) -> Vec<u32> {
    fake.trace()
        .iter()
        .filter_map(|l| l.strip_suffix(" get_keyboard"))
        .filter_map(|l| l.strip_prefix('c')?.parse().ok())
        .collect()
}

fn us_keymap() -> String {
    use xkbcommon::xkb;
    let ctx = xkb::Context::new(xkb::CONTEXT_NO_FLAGS);
    xkb::Keymap::new_from_names(&ctx, "evdev", "pc105", "us", "", None, 0)
        .expect("the system's XKB data compiles a keymap")
        .get_as_string(xkb::KEYMAP_FORMAT_TEXT_V1)
}

fn gate(dir: &Path, fake: &FakeCompositor, vm: &str, clipd: &Clipd) -> Gate {
    let comp = fake.path().to_str().unwrap().to_string();
    let clipd = clipd.socket.to_str().unwrap().to_string();
    let args = [
        "--vm",
        vm,
        "--color",
        "#2ecc71",
        "--compositor",
        &comp,
        "--no-frame",
        "--clipd",
        &clipd,
    ];
    Gate::start(Path::new(EXE), &dir.join(format!("{vm}.sock")), &args).expect("start the gate")
}

struct World {
    dir: TempDir,
    clipd: Clipd,
    fake: FakeCompositor,
    _gates: Vec<Gate>,
    banking: Guest,
    shopping: Guest,
}

fn world(name: &str, settings: Settings) -> World {
    let dir = TempDir::new(name);
    let clipd = Clipd::start(dir.path(), settings);
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let gates = vec![
        gate(dir.path(), &fake, "banking", &clipd),
        gate(dir.path(), &fake, "shopping", &clipd),
    ];
    let banking = Guest::connect(&dir.path().join("banking.sock"), &fake);
    let shopping = Guest::connect(&dir.path().join("shopping.sock"), &fake);
    let keymap = us_keymap();
    for g in [&banking, &shopping] {
        fake.keyboard(&[
            KeyCmd::Keymap {
                conn: g.conn,
                text: keymap.clone(),
            },
            KeyCmd::Enter { conn: g.conn },
        ]);
    }
    World {
        dir,
        clipd,
        fake,
        _gates: gates,
        banking,
        shopping,
    }
}

#[test]
fn test_copy_chord_in_banking_and_paste_chord_in_shopping_move_the_text_once() {
    let mut w = world("clipxfer", Settings::default());
    w.banking.set_selection(SECRET);

    // Without a chord nothing crosses: shopping has no selection, and a paste chord with an
    // empty global clipboard is refused with a notification.
    w.shopping.c.roundtrip().unwrap();
    assert!(w.shopping.seen.borrow().offer.is_none());
    w.shopping.chord(&w.fake, KEY_V);
    w.shopping.pump_until("the empty-slot notification", || {
        w.clipd.has(|r| r.contains("the global clipboard is empty"))
    });
    w.shopping.c.roundtrip().unwrap();
    assert!(w.shopping.seen.borrow().offer.is_none());

    // Ctrl+Shift+C in banking: the slot holds banking's text (metadata in the record).
    w.banking.chord(&w.fake, KEY_C);
    w.banking.pump_until("the copy", || {
        w.clipd.has(|r| r.starts_with("Clipboard: copied"))
    });
    assert_eq!(
        w.clipd.slot(),
        ("banking".into(), UTF8.into(), SECRET.len() as u64)
    );
    let copied = w.clipd.records();
    assert!(
        copied.iter().any(|r| r
            == "Clipboard: copied: banking → the global clipboard: 32 characters, text/plain;charset=utf-8"),
        "{copied:#?}"
    );
    assert!(
        !copied.iter().any(|r| r.contains("IBAN")),
        "records are metadata only"
    );
    // Still nothing in shopping.
    w.shopping.c.roundtrip().unwrap();
    assert!(w.shopping.seen.borrow().offer.is_none());

    // Ctrl+Shift+V in shopping: shopping's clipboard offers it, a shopping client reads it.
    w.shopping.chord(&w.fake, KEY_V);
    w.shopping.pump_until("the pasted selection", || {
        w.shopping.seen.borrow().offer.is_some()
    });
    assert!(w.shopping.seen.borrow().mimes.contains(&UTF8.to_string()));
    assert_eq!(w.shopping.paste(), SECRET);
    assert!(
        w.clipd.has(|r| r
            == "Clipboard: pasted: banking → shopping: 32 characters, text/plain;charset=utf-8")
    );
    // The slot is empty afterwards.
    assert_eq!(w.clipd.slot().0, "");

    // The chords never reached either guest; an ordinary key does.
    w.shopping.c.roundtrip().unwrap();
    w.shopping.fake_key(&w.fake, KEY_A);
    w.shopping.pump_until("the typed key", || {
        w.shopping.keys.borrow().contains(&KEY_A)
    });
    w.banking.c.roundtrip().unwrap();
    assert_eq!(*w.shopping.keys.borrow(), vec![KEY_A]);
    assert!(w.banking.keys.borrow().is_empty());

    // Neither VM's clipboard ever reached the compositor (so neither can read the host's).
    let trace = w.fake.trace();
    assert!(
        !trace
            .iter()
            .any(|l| l.contains("wl_data_device_manager") || l.contains("data_source")),
        "{trace:#?}"
    );
    drop(w.dir);
}

#[test]
fn test_over_cap_and_denied_transfers_are_refused_with_a_notification() {
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
    let mut w = world("clipdeny", settings);

    // Over the cap: refused, the slot stays empty.
    w.banking.set_selection(SECRET);
    w.banking.chord(&w.fake, KEY_C);
    w.banking.pump_until("the over-cap refusal", || {
        w.clipd
            .has(|r| r.starts_with("Clipboard: refused") && r.contains("too large"))
    });
    assert_eq!(w.clipd.slot().0, "");

    // Within the cap: copied; the paste into shopping is denied, nothing arrives.
    w.banking.set_selection(b"short");
    w.banking.chord(&w.fake, KEY_C);
    w.banking.pump_until("the copy", || {
        w.clipd.has(|r| r.starts_with("Clipboard: copied"))
    });
    w.shopping.chord(&w.fake, KEY_V);
    w.shopping.pump_until("the denial", || {
        w.clipd.has(|r| {
            r.starts_with("Clipboard: refused")
                && r.contains("banking → shopping")
                && r.contains("denies")
        })
    });
    w.shopping.c.roundtrip().unwrap();
    assert!(w.shopping.seen.borrow().offer.is_none());
    assert_eq!(w.clipd.slot().0, "banking", "a denied paste keeps the slot");
    assert!(!w.clipd.has(|r| r.starts_with("Clipboard: pasted")));
}

impl Guest {
    fn fake_key(&self, fake: &FakeCompositor, key: u32) {
        fake.keyboard(&tap(self.conn, key));
    }
}

/// Ctrl+Shift+`key` on connection `conn`'s keyboards.
fn chord(conn: u32, key: u32) -> Vec<KeyCmd> {
    let mut cmds = vec![KeyCmd::Modifiers {
        conn,
        depressed: CTRL | SHIFT,
    }];
    cmds.extend(tap(conn, key));
    cmds.push(KeyCmd::Modifiers { conn, depressed: 0 });
    cmds
}

/// A key press and release.
fn tap(conn: u32, key: u32) -> [KeyCmd; 2] {
    [
        KeyCmd::Key {
            conn,
            key,
            pressed: true,
        },
        KeyCmd::Key {
            conn,
            key,
            pressed: false,
        },
    ]
}

#[test]
fn test_ask_pastes_only_on_the_second_paste_chord() {
    let settings = Settings {
        policy: Policy {
            rules: vec![Rule::parse("banking:shopping:ask").unwrap()],
        },
        ..Settings::default()
    };
    let mut w = world("clipask", settings);
    w.banking.set_selection(SECRET);
    w.banking.chord(&w.fake, KEY_C);
    w.banking.pump_until("the copy", || {
        w.clipd.has(|r| r.starts_with("Clipboard: copied"))
    });
    // The first paste chord asks (a notification naming both VMs); nothing arrives.
    w.shopping.chord(&w.fake, KEY_V);
    w.shopping.pump_until("the question", || {
        w.clipd
            .has(|r| r.starts_with("Clipboard: confirm") && r.contains("banking → shopping"))
    });
    w.shopping.c.roundtrip().unwrap();
    assert!(w.shopping.seen.borrow().offer.is_none());
    assert_eq!(w.clipd.slot().0, "banking");
    // The second one pastes.
    w.shopping.chord(&w.fake, KEY_V);
    w.shopping.pump_until("the pasted selection", || {
        w.shopping.seen.borrow().offer.is_some()
    });
    assert_eq!(w.shopping.paste(), SECRET);
    assert_eq!(w.clipd.slot().0, "");
}

/// The newest label-band strip the gate committed on connection `conn` (the fake offers
/// wp_viewporter, so the band's text is a buffer of its own, `BAND` pixels high; the plain
/// strips are single pixels).
fn band_of(fake: &FakeCompositor, conn: u32) -> Option<vmsilo_gate::testing::Committed> {
    fake.commits()
        .into_iter()
        .rev()
        .find(|c| c.conn == conn && c.height == vmsilo_gate::layout::BAND && c.width > 1)
}

#[test]
fn test_a_refused_over_cap_copy_shows_in_the_label_band_then_the_name_returns() {
    use vmsilo_gate::draw;
    use vmsilo_gate::identity::Rgb;
    use vmsilo_gate::layout::{BAND, EXTRA_W};
    let settings = Settings {
        max_size: 10,
        ..Settings::default()
    };
    let dir = TempDir::new("clipband");
    let clipd = Clipd::start(dir.path(), settings);
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let comp = fake.path().to_str().unwrap().to_string();
    let sock = clipd.socket.to_str().unwrap().to_string();
    // A framed gate (no --no-frame).
    let _gate = Gate::start(
        Path::new(EXE),
        &dir.path().join("banking.sock"),
        &[
            "--vm",
            "banking",
            "--color",
            "#2ecc71",
            "--compositor",
            &comp,
            "--clipd",
            &sock,
        ],
    )
    .expect("start the gate");
    let green = Rgb {
        r: 0x2e,
        g: 0xcc,
        b: 0x71,
    };

    // A guest app: a 200×100 window, a keyboard, a data device.
    let before = keyboards(&fake).len();
    let c = frame_support::client::TestClient::connect(&dir.path().join("banking.sock"));
    let _kb = c.keyboard();
    let top = c.toplevel(Some("bank"), Some("org.example.clip"));
    top.surface
        .send_attach(Some(&c.buffer(200, 100, 0xff00_00ff)), 0, 0);
    top.surface.send_commit();
    let ddm: Rc<WlDataDeviceManager> = c.bind_optional(3).expect("a data device manager");
    let seat: Rc<WlSeat> = c.bind_optional(5).expect("a seat");
    let dev = ddm.new_send_get_data_device(&seat);
    c.roundtrip();
    let pump_until = |what: &str, cond: &dyn Fn() -> bool| {
        assert!(c.dispatch_until(cond), "timed out waiting for {what}");
    };
    pump_until("the keyboard at the compositor", &|| {
        keyboards(&fake).len() > before
    });
    let conn = keyboards(&fake)[before];
    fake.keyboard(&[
        KeyCmd::Keymap {
            conn,
            text: us_keymap(),
        },
        KeyCmd::Enter { conn },
    ]);

    // The band shows the VM name, exactly as drawn for a 208-pixel-wide frame.
    let name = draw::label_strip(200 + EXTRA_W, green, "banking");
    pump_until("the band with the VM name", &|| {
        band_of(&fake, conn).is_some_and(|b| b.pixels == name.pixels)
    });

    // An over-cap copy: refused, and the band says so next to the name.
    let src = ddm.new_send_create_data_source();
    src.set_handler(Source(SECRET));
    src.send_offer(UTF8);
    dev.send_set_selection(Some(&src), 1);
    c.roundtrip();
    fake.keyboard(&chord(conn, KEY_C));
    pump_until("the refusal", &|| {
        clipd.has(|r| r.starts_with("Clipboard: refused") && r.contains("too large"))
    });
    let notice = draw::label_strip(
        200 + EXTRA_W,
        green,
        "banking | clipboard: refused, over 10 chars",
    );
    assert_ne!(notice.pixels, name.pixels);
    // (Looked up in the history of committed bands, so that a slow test thread cannot miss
    // the few seconds it shows.)
    let shown_at = || {
        fake.commits()
            .iter()
            .rposition(|b| b.conn == conn && b.width == notice.width && b.pixels == notice.pixels)
    };
    pump_until("the band with the refusal", &|| shown_at().is_some());
    assert!(
        notice.pixels.iter().filter(|&&p| p == 0xff00_0000).count()
            > name.pixels.iter().filter(|&&p| p == 0xff00_0000).count(),
        "the notice adds text to the band"
    );
    assert_eq!(clipd.slot().0, "", "the slot stays empty");

    // A few seconds later the band shows the name alone again.
    pump_until("the band with the name again", &|| {
        let commits = fake.commits();
        let notice_at = shown_at().unwrap_or(usize::MAX);
        commits.iter().enumerate().any(|(i, b)| {
            i > notice_at && b.conn == conn && b.height == BAND && b.pixels == name.pixels
        })
    });
    drop(top);
    drop(dir);
}
