//! The frame on a real compositor (weston 10 headless, root): guest clients through a gate
//! driver, screenshots counted to the pixel, and weston's protocol trace as the oracle for
//! what reached the compositor.

mod frame_support;

use std::sync::mpsc;

use frame_support::client::TestClient;
use frame_support::{GREEN, Gate, PATIENCE, Shot, Weston, check_frame, wait_for_shot};
use vmsilo_gate::layout::{Extents, Layout};

fn skip() -> bool {
    if let Some(why) = frame_support::skip_reason() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_simple_shm_is_framed_exactly_and_titled_with_the_vm_prefix() {
    if skip() {
        return;
    }
    let weston = Weston::start();
    let trace = weston.proto_trace();
    let gate = Gate::start(&weston, "gate-0", true);
    let mut client = weston
        .client("weston-simple-shm", "gate-0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("weston-simple-shm");
    // weston-simple-shm draws a 250x250 buffer.
    let layout = Layout::for_extents(Extents::at(0, 0, 250, 250)).unwrap();
    let (shot, ok) = wait_for_shot(&weston, |s| check_frame(s, &layout).is_ok());
    let _ = client.kill();
    let _ = client.wait();
    let outcome = gate.stop();
    if !ok || std::env::var_os("VMSILO_TESTKIT_KEEP").is_some() {
        shot.save_ppm(&weston.dir().join("last.ppm"));
    }
    let result = check_frame(&shot, &layout);
    assert!(result.is_ok(), "{result:?}\nweston log:\n{}", weston.log());
    assert!(!outcome.cut_off, "the gate cut a well-behaved client off");
    // Outside the frame: no VM colour at all (the bbox check), and the label is where the
    // band is: the count of label-text pixels in the band is exact.
    let trace = trace.text();
    let titles: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(".set_title("))
        .collect();
    let app_ids: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(".set_app_id("))
        .collect();
    assert!(
        titles
            .iter()
            .any(|l| l.contains("set_title(\"[banking] simple-shm\")")),
        "no prefixed title reached weston: {titles:?}\n(trace: {} bytes)",
        trace.len()
    );
    assert!(
        titles.iter().all(|l| l.contains("set_title(\"[banking] ")),
        "an unprefixed title reached weston: {titles:?}"
    );
    assert!(
        app_ids
            .iter()
            .any(|l| l.contains("set_app_id(\"vmsilo.banking.org.freedesktop.weston.simple-shm\")")),
        "no prefixed app_id reached weston: {app_ids:?}"
    );
    assert!(
        app_ids
            .iter()
            .all(|l| l.contains("set_app_id(\"vmsilo.banking.")),
        "an unprefixed app_id reached weston: {app_ids:?}"
    );
}

/// Runs `script` on a test client of the gate socket `socket` in a thread of its own (a
/// wl-proxy state is not `Send`); the script talks to the test through `Ctl`.
fn run_client<F>(socket: std::path::PathBuf, script: F) -> (Ctl, std::thread::JoinHandle<()>)
where
    F: FnOnce(TestClient, ClientSide) + Send + 'static,
{
    let (to_main, from_client) = mpsc::channel();
    let (to_client, from_main) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let c = TestClient::connect(&socket);
        script(c, ClientSide { to_main, from_main })
    });
    (
        Ctl {
            to_client,
            from_client,
        },
        t,
    )
}

/// The test's end of a client thread.
struct Ctl {
    to_client: mpsc::Sender<()>,
    from_client: mpsc::Receiver<String>,
}

impl Ctl {
    fn next(&self) -> String {
        self.from_client
            .recv_timeout(PATIENCE * 2)
            .expect("the client thread reported nothing (it panicked or hung)")
    }

    fn go(&self) {
        let _ = self.to_client.send(());
    }
}

/// The client's end.
struct ClientSide {
    to_main: mpsc::Sender<String>,
    from_main: mpsc::Receiver<()>,
}

impl ClientSide {
    /// Reports `msg` and keeps the client dispatching until the test says go.
    fn report_and_wait(&self, c: &TestClient, msg: String) {
        self.to_main.send(msg).unwrap();
        let t0 = std::time::Instant::now();
        while self.from_main.try_recv().is_err() {
            assert!(t0.elapsed() < PATIENCE * 4, "the test never said go");
            let _ = c.state.dispatch(Some(std::time::Duration::from_millis(50)));
        }
    }
}

fn bbox_in(
    shot: &Shot,
    rgb: u32,
    r: (usize, usize, usize, usize),
) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for y in r.1..r.3.min(shot.height) {
        for x in r.0..r.2.min(shot.width) {
            if shot.get(x, y) == rgb {
                b = Some(match b {
                    None => (x, y, x + 1, y + 1),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
                });
            }
        }
    }
    b
}

fn count_in(shot: &Shot, rgb: u32, r: (usize, usize, usize, usize)) -> usize {
    let mut n = 0;
    for y in r.1..r.3.min(shot.height) {
        for x in r.0..r.2.min(shot.width) {
            n += usize::from(shot.get(x, y) == rgb);
        }
    }
    n
}

const RED: u32 = 0xffff_0000;
const BLUE: u32 = 0xff00_00ff;
const YELLOW: u32 = 0xffff_ff00;
const MAGENTA: u32 = 0xffff_00ff;

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_hostile_subsurface_cannot_cover_the_band_and_titles_are_sanitised() {
    if skip() {
        return;
    }
    let weston = Weston::start();
    let trace = weston.proto_trace();
    let gate = Gate::start(&weston, "gate-0", true);
    let socket = weston.dir().join("gate-0");
    let (ctl, client) = run_client(socket, |c, side| {
        // RLO would render the prefix reversed after the text; ZWSP and LRI hide things.
        let top = c.toplevel(
            Some("\u{202E}gnikna\u{200B}b evil\u{2066}"),
            Some("vmsilo.vault.\u{202E}x"),
        );
        // A child surface at (-100, -100): where the band would be if the frame were fixed
        // to the toplevel surface. Painted red over it.
        let child = c.compositor.new_send_create_surface();
        let sub = c
            .subcompositor
            .new_send_get_subsurface(&child, &top.surface);
        sub.send_set_position(-100, -100);
        child.send_attach(Some(&c.buffer(150, 150, RED)), 0, 0);
        child.send_commit();
        top.surface
            .send_attach(Some(&c.buffer(200, 100, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        // A popup anchored at (120, 60) of the toplevel's window geometry.
        let popup = c.popup(&top.xdg, 120, 60, 40, 30, YELLOW);
        // A popup of the popup: forwarded as it is, relative to its parent popup.
        let nested = c.popup(&popup.xdg, 5, 5, 10, 10, MAGENTA);
        let pos = (popup.ev.popup_pos.get(), nested.ev.popup_pos.get());
        side.report_and_wait(&c, format!("{pos:?}"));
        nested.destroy();
        popup.destroy();
        sub.send_destroy();
        child.send_destroy();
        top.destroy();
        let alive = c.alive();
        side.report_and_wait(&c, format!("alive={alive}"));
    });
    let popup_pos = ctl.next();
    // The frame encloses the union of the tree: (-100,-100)..(200,100) = 300x200.
    let layout =
        Layout::for_extents(Extents::at(0, 0, 200, 100).union(Extents::at(-100, -100, 150, 150)))
            .unwrap();
    assert_eq!((layout.surface_x, layout.surface_y), (104, 124));
    let (shot, _) = wait_for_shot(&weston, |s| {
        check_frame(s, &layout).is_ok() && s.count(MAGENTA & 0xff_ffff) > 0
    });
    let frame = check_frame(&shot, &layout);
    if frame.is_err() {
        shot.save_ppm(&weston.dir().join("last.ppm"));
    }
    let (fx, fy) = frame.unwrap();
    let rect = (
        fx,
        fy,
        fx + layout.width as usize,
        fy + layout.height as usize,
    );
    let inner = (fx + 4, fy + 24, fx + 4 + 300, fy + 24 + 200);
    // The red child is entirely inside the frame's inner rectangle, at its top-left corner.
    assert_eq!(
        bbox_in(&shot, RED & 0xff_ffff, (0, 0, shot.width, shot.height)),
        Some((inner.0, inner.1, inner.0 + 150, inner.1 + 150))
    );
    assert_eq!(count_in(&shot, RED & 0xff_ffff, rect), 150 * 150);
    // The popup: at the frame's content offset + (120, 60); the client was told (120, 60).
    let (px, py) = (fx + 104 + 120, fy + 124 + 60);
    assert_eq!(
        bbox_in(&shot, YELLOW & 0xff_ffff, (0, 0, shot.width, shot.height)),
        Some((px, py, px + 40, py + 30))
    );
    assert_eq!(popup_pos, "(Some((120, 60, 40, 30)), Some((5, 5, 10, 10)))");
    assert_eq!(
        bbox_in(&shot, MAGENTA & 0xff_ffff, (0, 0, shot.width, shot.height)),
        Some((px + 5, py + 5, px + 15, py + 15))
    );
    assert_eq!(shot.count(YELLOW & 0xff_ffff), 40 * 30 - 10 * 10);
    // The toplevel's own surface: blue minus what the red child and the popup cover.
    assert_eq!(
        count_in(&shot, BLUE & 0xff_ffff, rect),
        200 * 100 - 50 * 50 - 40 * 30
    );
    ctl.go();
    assert_eq!(
        ctl.next(),
        "alive=true",
        "destroying the window cost the client its connection"
    );
    let (shot, gone) = wait_for_shot(&weston, |s| s.count(GREEN) == 0);
    assert!(
        gone,
        "the frame stayed after the guest destroyed its toplevel ({} VM-colour pixels)",
        shot.count(GREEN)
    );
    ctl.go();
    client.join().expect("client thread");
    let outcome = gate.stop();
    assert!(!outcome.cut_off, "the gate cut the client off");
    let trace = trace.text();
    let titles: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(".set_title("))
        .collect();
    assert!(
        titles
            .iter()
            .any(|l| l.contains("set_title(\"[banking] gniknab evil\")")),
        "sanitised title missing: {titles:?}"
    );
    assert!(
        titles.iter().all(|l| l.contains("set_title(\"[banking] ")),
        "{titles:?}"
    );
    assert!(
        !trace.contains('\u{202E}') && !trace.contains('\u{200B}') && !trace.contains('\u{2066}'),
        "a bidi or zero-width character reached weston"
    );
    assert!(
        trace.contains("set_app_id(\"vmsilo.banking.vmsilo.vault.x\")"),
        "a cross-VM app_id spoof was not prefixed again"
    );
}

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_no_frame_still_rewrites_titles_and_labels_untitled_windows() {
    if skip() {
        return;
    }
    let weston = Weston::start();
    let trace = weston.proto_trace();
    let gate = Gate::start(&weston, "gate-0", false);
    let socket = weston.dir().join("gate-0");
    let (ctl, client) = run_client(socket, |c, side| {
        let top = c.toplevel(None, None);
        top.surface
            .send_attach(Some(&c.buffer(120, 80, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        let second = c.toplevel(Some("second"), Some("app"));
        second.toplevel.send_set_title("renamed\u{202E}");
        c.roundtrip();
        side.report_and_wait(&c, "mapped".into());
    });
    assert_eq!(ctl.next(), "mapped");
    let (shot, ok) = wait_for_shot(&weston, |s| s.count(BLUE & 0xff_ffff) == 120 * 80);
    assert!(ok, "the unframed window never showed");
    assert_eq!(shot.count(GREEN), 0, "a frame was drawn with --no-frame");
    ctl.go();
    client.join().expect("client thread");
    assert!(!gate.stop().cut_off);
    let trace = trace.text();
    let titles: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(".set_title("))
        .collect();
    for want in [
        "\"[banking] \"",
        "\"[banking] second\"",
        "\"[banking] renamed\"",
    ] {
        assert!(
            titles.iter().any(|l| l.contains(want)),
            "{want} missing: {titles:?}"
        );
    }
    assert!(
        titles.iter().all(|l| l.contains("set_title(\"[banking] ")),
        "{titles:?}"
    );
    assert!(trace.contains("set_app_id(\"vmsilo.banking.app\")"));
    assert!(
        trace.contains("set_app_id(\"vmsilo.banking.\")"),
        "untitled window has no app_id"
    );
}

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_fullscreen_keeps_the_frame_and_the_guest_gets_the_inner_size() {
    if skip() {
        return;
    }
    let weston = Weston::start();
    let trace = weston.proto_trace();
    let gate = Gate::start(&weston, "gate-0", true);
    let socket = weston.dir().join("gate-0");
    let (ctl, client) = run_client(socket, |c, side| {
        let top = c.toplevel_with(Some("full"), None, |t| t.send_set_fullscreen(None));
        let (w, h) = top.ev.size.get().unwrap_or((0, 0));
        // Draw what was asked for (the guest's content size).
        top.surface
            .send_attach(Some(&c.buffer(w.max(1), h.max(1), BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, format!("{w}x{h}"));
    });
    let size = ctl.next();
    // weston's headless output is 800x600; the compositor configures the frame to it and
    // the guest gets that minus the ring and band.
    assert_eq!(size, "792x572", "the guest's fullscreen configure");
    let layout = Layout::for_extents(Extents::at(0, 0, 792, 572)).unwrap();
    let (shot, ok) = wait_for_shot(&weston, |s| check_frame(s, &layout).is_ok());
    assert!(ok, "{:?}", check_frame(&shot, &layout));
    assert_eq!(
        check_frame(&shot, &layout),
        Ok((0, 0)),
        "the frame fills the output"
    );
    assert_eq!(shot.count(BLUE & 0xff_ffff), 792 * 572);
    ctl.go();
    client.join().expect("client thread");
    assert!(!gate.stop().cut_off);
    // What weston configured, and that the gate asked for fullscreen on its own toplevel.
    let trace = trace.text();
    assert!(
        trace
            .lines()
            .any(|l| l.contains("xdg_toplevel@") && l.contains(".configure(800, 600,")),
        "weston never configured the frame fullscreen at 800x600"
    );
    assert!(trace.lines().any(|l| l.contains(".set_fullscreen(")));
}

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_a_cached_shrink_of_a_sync_subsurface_does_not_shrink_the_frame() {
    if skip() {
        return;
    }
    let weston = Weston::start();
    let gate = Gate::start(&weston, "gate-0", true);
    let socket = weston.dir().join("gate-0");
    let (ctl, client) = run_client(socket, |c, side| {
        let top = c.toplevel(Some("shrink"), None);
        let child = c.compositor.new_send_create_surface();
        let sub = c
            .subcompositor
            .new_send_get_subsurface(&child, &top.surface);
        sub.send_set_position(250, -50);
        child.send_attach(Some(&c.buffer(150, 150, RED)), 0, 0);
        child.send_commit();
        top.surface
            .send_attach(Some(&c.buffer(200, 100, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, "big".into());
        // The child (synchronized) commits a 1x1 buffer; its parent never commits, so the
        // compositor keeps showing the 150x150 one.
        child.send_attach(Some(&c.buffer(1, 1, RED)), 0, 0);
        child.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, "cached".into());
        top.surface.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, "applied".into());
    });
    let big =
        Layout::for_extents(Extents::at(0, 0, 200, 100).union(Extents::at(250, -50, 150, 150)))
            .unwrap();
    let small = Layout::for_extents(Extents::at(0, 0, 200, 100).union(Extents::at(250, -50, 1, 1)))
        .unwrap();
    assert_eq!(ctl.next(), "big");
    let (shot, ok) = wait_for_shot(&weston, |s| check_frame(s, &big).is_ok());
    assert!(ok, "{:?}", check_frame(&shot, &big));
    ctl.go();
    assert_eq!(ctl.next(), "cached");
    // Everything the cached commit could have changed has reached weston (round trip).
    let shot = weston.screenshot();
    assert_eq!(
        check_frame(&shot, &big).map(|_| ()),
        Ok(()),
        "the frame shrank before the compositor did"
    );
    assert_eq!(
        shot.count(RED & 0xff_ffff),
        150 * 150,
        "the child no longer shows at 150x150"
    );
    ctl.go();
    assert_eq!(ctl.next(), "applied");
    let (shot, ok) = wait_for_shot(&weston, |s| check_frame(s, &small).is_ok());
    assert!(
        ok,
        "the frame did not follow the applied shrink: {:?}",
        check_frame(&shot, &small)
    );
    assert_eq!(shot.count(RED & 0xff_ffff), 1);
    ctl.go();
    client.join().expect("client thread");
    assert!(!gate.stop().cut_off);
}

/// Runs `script` as a client of a fresh gate on weston; returns the script's report and
/// whether the gate cut the client off.
fn cut_off_case<F>(script: F) -> (String, bool)
where
    F: FnOnce(TestClient, ClientSide) + Send + 'static,
{
    let weston = Weston::start();
    let gate = Gate::start(&weston, "gate-0", true);
    let (ctl, client) = run_client(weston.dir().join("gate-0"), script);
    let report = ctl.next();
    ctl.go();
    client.join().expect("client thread");
    (report, gate.stop().cut_off)
}

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_clients_breaking_the_frame_rules_are_cut_off() {
    if skip() {
        return;
    }
    // The xdg_surface destroyed before its toplevel (xdg-shell's defunct_role_object).
    let (report, cut) = cut_off_case(|c, side| {
        let top = c.toplevel(Some("x"), None);
        top.xdg.send_destroy();
        let alive = c.alive();
        side.report_and_wait(&c, format!("alive={alive} error={:?}", c.error.borrow()));
    });
    assert!(cut, "not cut off: {report}");
    assert!(report.starts_with("alive=false"), "{report}");
    assert!(
        report.contains("xdg_surface destroyed before its xdg_toplevel"),
        "{report}"
    );
    // More subsurfaces on one surface than the frame follows.
    let (report, cut) = cut_off_case(|c, side| {
        let top = c.toplevel(Some("x"), None);
        let mut keep = Vec::new();
        for _ in 0..=vmsilo_gate::frame::MAX_TREE {
            let s = c.compositor.new_send_create_surface();
            keep.push(c.subcompositor.new_send_get_subsurface(&s, &top.surface));
        }
        let alive = c.alive();
        side.report_and_wait(&c, format!("alive={alive} error={:?}", c.error.borrow()));
    });
    assert!(
        cut && report.starts_with("alive=false") && report.contains("too many subsurfaces"),
        "{report}"
    );
    // A second xdg_surface for a surface that has one.
    let (report, cut) = cut_off_case(|c, side| {
        let top = c.toplevel(Some("x"), None);
        let _again = c.wm_base.new_send_get_xdg_surface(&top.surface);
        let alive = c.alive();
        side.report_and_wait(&c, format!("alive={alive} error={:?}", c.error.borrow()));
    });
    assert!(cut && report.contains("already has a role"), "{report}");
}

#[test]
#[ignore = "e2e: needs weston headless as root"]
fn test_the_frame_follows_scale_transform_and_viewport() {
    use wl_proxy::protocols::viewporter::wp_viewporter::WpViewporter;
    use wl_proxy::protocols::wayland::wl_output::WlOutputTransform;
    if skip() {
        return;
    }
    let weston = Weston::start();
    let gate = Gate::start(&weston, "gate-0", true);
    let (ctl, client) = run_client(weston.dir().join("gate-0"), |c, side| {
        let vp = c
            .bind_optional::<WpViewporter>(1)
            .expect("weston offers wp_viewporter");
        let top = c.toplevel(Some("scaled"), None);
        // 400x200 at scale 2: 200x100.
        top.surface.send_set_buffer_scale(2);
        top.surface
            .send_attach(Some(&c.buffer(400, 200, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, "scale".into());
        // 100x300 rotated by 90 degrees at scale 1: 300x100.
        top.surface.send_set_buffer_scale(1);
        top.surface
            .send_set_buffer_transform(WlOutputTransform::_90);
        top.surface
            .send_attach(Some(&c.buffer(100, 300, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, "transform".into());
        // A 10x10 buffer through a viewport to 320x40.
        top.surface
            .send_set_buffer_transform(WlOutputTransform::NORMAL);
        let viewport = vp.new_send_get_viewport(&top.surface);
        viewport.send_set_destination(320, 40);
        top.surface.send_attach(Some(&c.buffer(10, 10, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        side.report_and_wait(&c, "viewport".into());
    });
    for (step, (w, h)) in [
        ("scale", (200, 100)),
        ("transform", (300, 100)),
        ("viewport", (320, 40)),
    ] {
        assert_eq!(ctl.next(), step);
        let layout = Layout::for_extents(Extents::at(0, 0, w, h)).unwrap();
        let (shot, ok) = wait_for_shot(&weston, |s| check_frame(s, &layout).is_ok());
        assert!(ok, "{step}: {:?}", check_frame(&shot, &layout));
        assert_eq!(shot.count(BLUE & 0xff_ffff), (w * h) as usize, "{step}");
        ctl.go();
    }
    client.join().expect("client thread");
    assert!(!gate.stop().cut_off);
}
