//! Component tests: a real `vmsilo-gate` process (sandboxed, as in production) between test
//! clients and the in-process fake compositor of `vmsilo_gate::testing`, whose request trace
//! shows what reached the compositor.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use vmsilo_gate::testing::{
    FakeCompositor, Gate, Selection, SelectionRecorder, TIMEOUT, TempDir, TestClient, raw_connect,
    standard_globals, wait_eof,
};
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::wayland::wl_compositor::WlCompositor;
use wl_proxy::protocols::wayland::wl_data_device_manager::WlDataDeviceManager;
use wl_proxy::protocols::wayland::wl_data_source::{WlDataSource, WlDataSourceHandler};
use wl_proxy::protocols::wayland::wl_seat::WlSeat;

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-gate");

fn gate(dir: &Path, fake: &FakeCompositor, extra: &[&str]) -> Gate {
    let comp = fake.path().to_str().unwrap().to_string();
    let mut args = vec!["--vm", "work", "--color", "#2ecc71", "--compositor", &comp];
    args.extend_from_slice(extra);
    Gate::start(Path::new(EXE), &dir.join("gate.sock"), &args).expect("start the gate")
}

fn interfaces(c: &TestClient) -> Vec<(&'static str, u32)> {
    let mut v: Vec<_> = c
        .globals
        .borrow()
        .iter()
        .map(|g| (g.1.name(), g.2))
        .collect();
    v.sort();
    v
}

/// The trace lines of connection `n`.
fn of(trace: &[String], n: u32) -> Vec<String> {
    let p = format!("c{n} ");
    trace
        .iter()
        .filter(|l| l.starts_with(&p))
        .map(|l| l[p.len()..].to_string())
        .collect()
}

const HIDDEN: &[&str] = &[
    "zwlr_screencopy_manager_v1",
    "zwp_virtual_keyboard_manager_v1",
    "zwlr_layer_shell_v1",
    "zwlr_data_control_manager_v1",
    "ext_data_control_manager_v1",
    "zwp_tablet_manager_v2",
    "wp_security_context_manager_v1",
    "zxdg_decoration_manager_v1",
];

#[test]
fn test_only_offered_globals_are_seen_and_bound() {
    let dir = TempDir::new("offer");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let _gate = gate(dir.path(), &fake, &[]);
    let c = TestClient::connect(&dir.path().join("gate.sock")).unwrap();
    assert_eq!(
        interfaces(&c),
        vec![
            ("wl_compositor", 6),
            ("wl_data_device_manager", 3),
            ("wl_output", 4),
            ("wl_seat", 7),
            ("wl_shm", 1),
            ("wl_subcompositor", 1),
            ("wp_viewporter", 1),
            ("xdg_wm_base", 6),
        ]
    );
    // Bind everything offered at the offered version.
    let offered: Vec<(u32, ObjectInterface, u32)> = c.globals.borrow().clone();
    for (name, iface, version) in &offered {
        let obj = c.state.create_object_dyn(*iface, *version);
        c.registry.send_bind(*name, obj);
    }
    c.roundtrip().unwrap();
    let trace = fake.trace();
    // c1 is the gate's own startup connection (probe for a security context), c2 the client.
    assert_eq!(of(&trace, 1), vec!["connected".to_string()], "{trace:#?}");
    // The frame binds the gate's own globals first, on a registry of its own, ending with the
    // decoration manager (which guests never see); the client's binds follow.
    let c2 = of(&trace, 2);
    let own_end = c2
        .iter()
        .position(|l| l.starts_with("bind zxdg_decoration_manager_v1"))
        .map_or(0, |i| i + 1);
    let mut binds: Vec<String> = c2[own_end..]
        .iter()
        .filter(|l| l.starts_with("bind "))
        .cloned()
        .collect();
    binds.sort();
    assert_eq!(
        binds,
        vec![
            "bind wl_compositor v6",
            "bind wl_output v4",
            "bind wl_seat v7",
            "bind wl_shm v1",
            "bind wl_subcompositor v1",
            "bind wp_viewporter v1",
            "bind xdg_wm_base v6",
        ],
        "{trace:#?}"
    );
    for h in HIDDEN {
        assert!(
            !trace
                .iter()
                .any(|l| l.contains(h) && !l.contains("zxdg_decoration")),
            "{h} reached the compositor: {trace:#?}"
        );
    }
    assert!(!trace.iter().any(|l| l.contains("wl_data_device_manager")));
}

trait CreateDyn {
    fn create_object_dyn(
        self: &Rc<Self>,
        iface: ObjectInterface,
        version: u32,
    ) -> Rc<dyn wl_proxy::object::Object>;
}

impl CreateDyn for wl_proxy::state::State {
    fn create_object_dyn(
        self: &Rc<Self>,
        iface: ObjectInterface,
        version: u32,
    ) -> Rc<dyn wl_proxy::object::Object> {
        use wl_proxy::protocols::viewporter::wp_viewporter::WpViewporter;
        use wl_proxy::protocols::wayland::*;
        use wl_proxy::protocols::xdg_shell::xdg_wm_base::XdgWmBase;
        match iface {
            ObjectInterface::WlCompositor => {
                self.create_object::<wl_compositor::WlCompositor>(version)
            }
            ObjectInterface::WlSubcompositor => {
                self.create_object::<wl_subcompositor::WlSubcompositor>(version)
            }
            ObjectInterface::WlShm => self.create_object::<wl_shm::WlShm>(version),
            ObjectInterface::WlSeat => self.create_object::<wl_seat::WlSeat>(version),
            ObjectInterface::WlOutput => self.create_object::<wl_output::WlOutput>(version),
            ObjectInterface::XdgWmBase => self.create_object::<XdgWmBase>(version),
            ObjectInterface::WpViewporter => self.create_object::<WpViewporter>(version),
            ObjectInterface::WlDataDeviceManager => {
                self.create_object::<wl_data_device_manager::WlDataDeviceManager>(version)
            }
            other => panic!("test does not bind {}", other.name()),
        }
    }
}

#[test]
fn test_bad_binds_cut_off_that_client_only() {
    let dir = TempDir::new("bind");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let mut g = gate(dir.path(), &fake, &[]);
    let sock = dir.path().join("gate.sock");
    let good = TestClient::connect(&sock).unwrap();

    // Above the offered version.
    let bad = TestClient::connect(&sock).unwrap();
    let (name, version) = bad.global(ObjectInterface::WlCompositor).unwrap();
    assert_eq!(version, 6);
    bad.bind::<WlCompositor>(name, 7);
    let err = bad.roundtrip().unwrap_err();
    assert!(
        err.contains("protocol error 0")
            && err.contains("wl_compositor")
            && err.contains("have 6, wanted 7"),
        "{err}"
    );
    // A name never offered (hidden globals have no client-side name at all).
    let bad = TestClient::connect(&sock).unwrap();
    bad.bind::<WlCompositor>(9999, 1);
    let err = bad.roundtrip().unwrap_err();
    assert!(
        err.contains("protocol error 0") && err.contains("never offered"),
        "{err}"
    );
    // The right name, the wrong interface.
    let bad = TestClient::connect(&sock).unwrap();
    let (name, _) = bad.global(ObjectInterface::WlShm).unwrap();
    bad.bind::<WlCompositor>(name, 1);
    let err = bad.roundtrip().unwrap_err();
    assert!(err.contains("invalid interface"), "{err}");

    // The first client still works, and so does the gate.
    let (name, _) = good.global(ObjectInterface::WlCompositor).unwrap();
    let comp = good.bind::<WlCompositor>(name, 6);
    comp.new_send_create_surface();
    good.roundtrip().unwrap();
    assert!(fake.wait_for(TIMEOUT, |l| l.ends_with("create_surface")));
    assert!(g.alive());
    let trace = fake.trace();
    assert!(
        !trace
            .iter()
            .any(|l| l.contains("v7") || l.contains("INVALID")),
        "{trace:#?}"
    );
}

#[test]
fn test_too_many_objects_cut_off_that_client_only() {
    let dir = TempDir::new("objects");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let mut g = gate(dir.path(), &fake, &["--max-objects", "40"]);
    let sock = dir.path().join("gate.sock");
    let good = TestClient::connect(&sock).unwrap();
    let greedy = TestClient::connect(&sock).unwrap();
    let (name, _) = greedy.global(ObjectInterface::WlCompositor).unwrap();
    let comp = greedy.bind::<WlCompositor>(name, 6);
    for _ in 0..100 {
        comp.new_send_create_region();
    }
    let err = greedy.roundtrip().unwrap_err();
    assert!(
        err.contains("protocol error 2") && err.contains("too many objects"),
        "{err}"
    );
    good.roundtrip().unwrap();
    assert!(g.alive());
}

#[test]
fn test_malformed_message_ends_only_that_client() {
    let dir = TempDir::new("malformed");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let mut g = gate(dir.path(), &fake, &[]);
    let sock = dir.path().join("gate.sock");
    let good = TestClient::connect(&sock).unwrap();
    // wl_display#1, opcode 1, size 4: smaller than a header.
    let s = raw_connect(&sock, &[1, 0, 0, 0, 1, 0, 4, 0]).unwrap();
    assert!(
        wait_eof(&s),
        "the gate kept a client that sent a malformed message"
    );
    // A request to an object that does not exist.
    let s = raw_connect(&sock, &[77, 0, 0, 0, 0, 0, 8, 0]).unwrap();
    assert!(wait_eof(&s));
    // A client that shuts down its sending side is gone: its process ends (wl-proxy alone
    // would spin on the end of file).
    let s = raw_connect(&sock, &[1, 0, 0, 0, 1, 0, 12, 0, 2, 0, 0, 0]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(wait_eof(&s), "the gate kept serving a half-closed client");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while children_of(g.child.id()).len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        children_of(g.child.id()).len(),
        1,
        "only the good client's process is left"
    );
    good.roundtrip().unwrap();
    assert!(g.alive());
    let again = TestClient::connect(&sock).unwrap();
    again.roundtrip().unwrap();
}

#[test]
fn test_max_clients_refuses_beyond_the_cap() {
    let dir = TempDir::new("maxcl");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let g = gate(dir.path(), &fake, &["--max-clients", "1"]);
    let sock = dir.path().join("gate.sock");
    let first = TestClient::connect(&sock).unwrap();
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    assert!(wait_eof(&s), "a connection beyond --max-clients was kept");
    first.roundtrip().unwrap();
    assert!(
        g.wait_log(|l| l.contains("refused a connection")),
        "{:?}",
        g.log()
    );
}

#[test]
fn test_security_context_carries_the_vm_identity_and_clients_use_it() {
    let dir = TempDir::new("secctx");
    let mut globals = standard_globals();
    globals.push((ObjectInterface::WpSecurityContextManagerV1, 1));
    let fake = FakeCompositor::start(dir.path(), &globals);
    let mut g = gate(dir.path(), &fake, &[]);
    let trace = fake.trace();
    assert_eq!(
        of(&trace, 1),
        vec![
            "connected",
            "bind wp_security_context_manager_v1 v1",
            "create_listener",
            "set_sandbox_engine vmsilo",
            "set_app_id vmsilo.work",
            "set_instance_id work",
            "commit",
            "context.destroy",
            "manager.destroy",
        ],
        "{trace:#?}"
    );
    let secctx_sock = dir.path().join("work.secctx.sock");
    assert!(secctx_sock.exists());
    let c = TestClient::connect(&dir.path().join("gate.sock")).unwrap();
    assert!(
        c.global(ObjectInterface::WpSecurityContextManagerV1)
            .is_none()
    );
    c.roundtrip().unwrap();
    assert!(
        fake.wait_for(TIMEOUT, |l| l == "c2 connected via security context"),
        "{:#?}",
        fake.trace()
    );
    // SIGTERM: the gate exits 0 and leaves neither socket behind; its clients are gone.
    let status = g.terminate();
    assert!(status.success(), "{status:?} {:?}", g.log());
    assert!(!dir.path().join("gate.sock").exists());
    assert!(!secctx_sock.exists());
    assert!(c.roundtrip().is_err());
}

#[test]
fn test_sigterm_without_security_context_removes_the_socket() {
    let dir = TempDir::new("term");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let mut g = gate(dir.path(), &fake, &[]);
    let c = TestClient::connect(&dir.path().join("gate.sock")).unwrap();
    let status = g.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!dir.path().join("gate.sock").exists());
    assert!(c.roundtrip().is_err());
}

// --- clipboard ---------------------------------------------------------------------------

struct Source {
    payload: &'static [u8],
    cancelled: Rc<RefCell<bool>>,
}

impl WlDataSourceHandler for Source {
    fn handle_send(&mut self, _slf: &Rc<WlDataSource>, mime_type: &str, fd: &Rc<OwnedFd>) {
        assert_eq!(mime_type, "text/plain;charset=utf-8");
        let mut f = std::fs::File::from(fd.as_ref().try_clone().unwrap());
        let _ = f.write_all(self.payload);
    }
    fn handle_cancelled(&mut self, _slf: &Rc<WlDataSource>) {
        *self.cancelled.borrow_mut() = true;
    }
}

fn data_device(c: &TestClient, focus: bool) -> (Rc<WlDataDeviceManager>, Rc<RefCell<Selection>>) {
    let (name, v) = c.global(ObjectInterface::WlDataDeviceManager).unwrap();
    let ddm = c.bind::<WlDataDeviceManager>(name, v);
    let (sname, sv) = c.global(ObjectInterface::WlSeat).unwrap();
    let seat = c.bind::<WlSeat>(sname, sv);
    let seen = Rc::new(RefCell::new(Selection::default()));
    let dev = ddm.new_send_get_data_device(&seat);
    dev.set_handler(SelectionRecorder(seen.clone()));
    if focus {
        focus_on_new_surface(c, &seat);
    }
    (ddm, seen)
}

/// A surface and a keyboard: the fake gives the keyboard focus on the surface at once.
fn focus_on_new_surface(c: &TestClient, seat: &Rc<WlSeat>) {
    let (cname, _) = c.global(ObjectInterface::WlCompositor).unwrap();
    let comp = c.bind::<WlCompositor>(cname, 6);
    comp.new_send_create_surface();
    seat.new_send_get_keyboard();
}

#[test]
fn test_copy_paste_between_two_clients_of_the_vm_never_reaches_the_compositor() {
    let dir = TempDir::new("clip");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let _g = gate(dir.path(), &fake, &[]);
    let sock = dir.path().join("gate.sock");
    let a = TestClient::connect(&sock).unwrap();
    let b = TestClient::connect(&sock).unwrap();
    let (ddm_a, seen_a) = data_device(&a, true);
    let (_ddm_b, seen_b) = data_device(&b, true);
    a.roundtrip().unwrap();
    b.roundtrip().unwrap();
    // No selection yet: both got a null selection when they got focus.
    b.dispatch_until(|| seen_b.borrow().events >= 1).unwrap();
    assert!(seen_b.borrow().offer.is_none());

    // A copies.
    let cancelled = Rc::new(RefCell::new(false));
    let source = ddm_a.new_send_create_data_source();
    source.set_handler(Source {
        payload: b"copied in the VM",
        cancelled: cancelled.clone(),
    });
    source.send_offer("text/plain;charset=utf-8");
    source.send_offer("UTF8_STRING");
    let dev_a = {
        // set_selection on A's device: find it again through a fresh device (same seat).
        let (sname, sv) = a.global(ObjectInterface::WlSeat).unwrap();
        let seat = a.bind::<WlSeat>(sname, sv);
        let d = ddm_a.new_send_get_data_device(&seat);
        d.set_handler(SelectionRecorder(seen_a.clone()));
        d
    };
    dev_a.send_set_selection(Some(&source), 1);
    a.roundtrip().unwrap();

    // B sees the offer with both MIME types.
    b.dispatch_until(|| {
        let s = seen_b.borrow();
        s.offer.is_some() && s.mimes.len() == 2
    })
    .unwrap();
    assert_eq!(
        seen_b.borrow().mimes,
        vec![
            "text/plain;charset=utf-8".to_string(),
            "UTF8_STRING".to_string()
        ]
    );
    // B pastes: the bytes come from A through the pipe.
    let (mut r, w) = std::io::pipe().unwrap();
    let offer = seen_b.borrow().offer.clone().unwrap();
    offer.send_receive("text/plain;charset=utf-8", &Rc::new(OwnedFd::from(w)));
    b.roundtrip().unwrap();
    // A must dispatch to get `send`; its handler writes and drops the fd.
    a.dispatch_until(|| {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&r),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap_or(0) > 0
    })
    .unwrap();
    let mut got = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    // Keep A dispatching until the pipe's write end is closed by A.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while got.is_empty() && std::time::Instant::now() < deadline {
        a.pump();
        if let Ok(buf) = rx.recv_timeout(Duration::from_millis(20)) {
            got = buf;
            break;
        }
    }
    assert_eq!(got, b"copied in the VM");

    // A third client that connects later gets no selection until it has keyboard focus (as
    // with a compositor: clients rely on it), then the current one.
    let c = TestClient::connect(&sock).unwrap();
    let (_ddm_c, seen_c) = data_device(&c, false);
    c.roundtrip().unwrap();
    assert_eq!(seen_c.borrow().events, 0);
    let (sname, sv) = c.global(ObjectInterface::WlSeat).unwrap();
    let seat_c = c.bind::<WlSeat>(sname, sv);
    focus_on_new_surface(&c, &seat_c);
    c.dispatch_until(|| seen_c.borrow().offer.is_some())
        .unwrap();
    assert_eq!(seen_c.borrow().mimes.len(), 2);

    // B copies: A's source is cancelled.
    let (name, v) = b.global(ObjectInterface::WlDataDeviceManager).unwrap();
    let ddm_b2 = b.bind::<WlDataDeviceManager>(name, v);
    let (sname, sv) = b.global(ObjectInterface::WlSeat).unwrap();
    let seat_b = b.bind::<WlSeat>(sname, sv);
    let dev_b = ddm_b2.new_send_get_data_device(&seat_b);
    let src_b = ddm_b2.new_send_create_data_source();
    src_b.send_offer("text/plain;charset=utf-8");
    dev_b.send_set_selection(Some(&src_b), 2);
    b.roundtrip().unwrap();
    a.dispatch_until(|| *cancelled.borrow()).unwrap();

    // Nothing of it reached the compositor.
    let trace = fake.trace();
    assert!(
        !trace
            .iter()
            .any(|l| l.contains("wl_data_device_manager") || l.contains("data_source")),
        "{trace:#?}"
    );
    drop(source);
}

// --- backpressure --------------------------------------------------------------------------

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct CountScale(Rc<std::cell::Cell<usize>>);

impl wl_proxy::protocols::wayland::wl_output::WlOutputHandler for CountScale {
    fn handle_scale(
        &mut self,
        _slf: &Rc<wl_proxy::protocols::wayland::wl_output::WlOutput>,
        _factor: i32,
    ) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn test_events_for_a_client_that_does_not_read_queue_in_the_compositor_not_the_gate() {
    const FLOOD: usize = 400_000; // 4.8 MB of wl_output.scale events
    let dir = TempDir::new("backpressure");
    let fake = FakeCompositor::start_flooding(dir.path(), &standard_globals(), FLOOD);
    let g = gate(dir.path(), &fake, &[]);
    let c = TestClient::connect(&dir.path().join("gate.sock")).unwrap();
    let children = children_of(g.child.id());
    assert_eq!(children.len(), 1, "{children:?}");
    let child = children[0];
    let base = rss_kib(child);
    assert!(base > 0);
    let (name, v) = c.global(ObjectInterface::WlOutput).unwrap();
    let out = c.bind::<wl_proxy::protocols::wayland::wl_output::WlOutput>(name, v);
    let seen = Rc::new(std::cell::Cell::new(0));
    out.set_handler(CountScale(seen.clone()));
    c.state.before_poll().unwrap();
    // The client does not read. Watch the gate's client process for a while: its memory must
    // not take the flood (without backpressure it grows by the 4.8 MB at once).
    let mut peak = base;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib(child));
    }
    assert!(
        peak < base + 2048,
        "the gate's client process grew from {base} KiB to {peak} KiB for a client that does not read"
    );
    // Once the client reads, everything arrives.
    c.dispatch_until(|| seen.get() == FLOOD).unwrap();
}
