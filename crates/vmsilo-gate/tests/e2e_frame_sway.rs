//! The frame on sway 1.7 headless (a wlroots compositor with a seat and xdg-decoration): the
//! same exact frame as on weston, server-side decorations requested for the frame's
//! toplevel, and keyboard focus (which sway gives the frame's toplevel surface) delivered to
//! the guest as focus on its own surface.

mod frame_support;

use std::rc::Rc;
use std::sync::mpsc;

use frame_support::client::TestClient;
use frame_support::sway::{self, Sway, VirtualPointer};
use frame_support::{Gate, PATIENCE, check_frame, wait_for};
use vmsilo_gate::layout::{Extents, Layout};

const BLUE: u32 = 0xff00_00ff;

#[test]
#[ignore = "e2e: needs sway headless (started under another uid, so root)"]
fn test_frame_decoration_and_keyboard_focus_on_sway() {
    if let Some(why) = sway::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let sway = Sway::start();
    let _keyboard = sway.keyboard();
    let gate = Gate::start_at(&sway.dir().join("gate-0"), &sway.socket, true);
    let socket = sway.dir().join("gate-0");
    let (to_main, from_client) = mpsc::channel::<String>();
    let (to_client, from_main) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let c = TestClient::connect(&socket);
        let kb = c.keyboard();
        let top = c.toplevel(Some("sway test"), Some("org.example.test"));
        top.surface
            .send_attach(Some(&c.buffer(200, 100, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        let focused = c.dispatch_until(|| kb.focus.borrow().is_some());
        let on_own = kb
            .focus
            .borrow()
            .as_ref()
            .is_some_and(|s| Rc::ptr_eq(s, &top.surface));
        to_main
            .send(format!("focused={focused} on_own_surface={on_own}"))
            .unwrap();
        let t0 = std::time::Instant::now();
        while from_main.try_recv().is_err() && t0.elapsed() < PATIENCE * 4 {
            let _ = c.state.dispatch(Some(std::time::Duration::from_millis(50)));
        }
        top.destroy();
        assert!(
            c.alive(),
            "the connection died when the window was destroyed"
        );
    });
    let focus = from_client
        .recv_timeout(PATIENCE * 2)
        .expect("the client thread reported nothing");
    let layout = Layout::for_extents(Extents::at(0, 0, 200, 100)).unwrap();
    let (shot, ok) = wait_for(
        || sway.screenshot(),
        |s| check_frame(s, &layout).is_ok(),
        |s, n| s.save_ppm(&sway.dir().join(format!("shot-{n}.ppm"))),
    );
    let tree = sway.tree();
    let _ = to_client.send(());
    client.join().expect("client thread");
    let outcome = gate.stop();
    assert!(
        ok,
        "{:?}\nsway log:\n{}",
        check_frame(&shot, &layout),
        sway.log()
    );
    assert_eq!(focus, "focused=true on_own_surface=true");
    assert!(!outcome.cut_off);
    // sway's view of the window: the prefixed title and app_id, and server-side decoration
    // (border "normal"; a client-side decorated view is "csd").
    let compact: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(
        compact.contains("\"name\":\"[banking]swaytest\""),
        "title missing from the sway tree: {tree}"
    );
    assert!(
        compact.contains("\"app_id\":\"vmsilo.banking.org.example.test\""),
        "app_id missing from the sway tree"
    );
    assert!(
        compact.contains("\"border\":\"normal\""),
        "the frame's toplevel is not server-side decorated: {tree}"
    );
    assert!(!compact.contains("\"border\":\"csd\""));
}

#[test]
#[ignore = "e2e: needs sway headless (started under another uid, so root)"]
fn test_pointer_on_the_frame_stays_with_the_gate_and_the_band_moves_the_window() {
    if let Some(why) = sway::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let sway = Sway::start();
    let pointer = VirtualPointer::connect(&sway);
    pointer.move_to(5, 595);
    let gate = Gate::start_at(&sway.dir().join("gate-0"), &sway.socket, true);
    let socket = sway.dir().join("gate-0");
    let (to_main, from_client) = mpsc::channel::<String>();
    let (to_client, from_main) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let c = TestClient::connect(&socket);
        let log = c.pointer();
        let top = c.toplevel(Some("pointer"), Some("test"));
        top.surface
            .send_attach(Some(&c.buffer(200, 100, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        for _ in 0..5 {
            let enters: Vec<(bool, f64, f64)> = log
                .enters
                .borrow()
                .iter()
                .map(|(s, x, y)| (Rc::ptr_eq(s, &top.surface), *x, *y))
                .collect();
            to_main
                .send(format!(
                    "enters={enters:?} leaves={} buttons={}",
                    log.leaves.get(),
                    log.buttons.get()
                ))
                .unwrap();
            let t0 = std::time::Instant::now();
            while from_main.try_recv().is_err() {
                assert!(t0.elapsed() < PATIENCE * 4, "the test never said go");
                let _ = c.state.dispatch(Some(std::time::Duration::from_millis(50)));
            }
            c.roundtrip();
        }
    });
    let next = || {
        from_client
            .recv_timeout(PATIENCE * 2)
            .expect("the client thread reported nothing")
    };
    let go = || to_client.send(()).unwrap();
    assert_eq!(next(), "enters=[] leaves=0 buttons=0");
    let layout = Layout::for_extents(Extents::at(0, 0, 200, 100)).unwrap();
    let (shot, ok) = wait_for(
        || sway.screenshot(),
        |s| check_frame(s, &layout).is_ok(),
        |s, n| s.save_ppm(&sway.dir().join(format!("shot-{n}.ppm"))),
    );
    assert!(ok, "{:?}", check_frame(&shot, &layout));
    let (fx, fy) = check_frame(&shot, &layout).unwrap();
    let (fx, fy) = (fx as u32, fy as u32);
    // Onto the content: the guest gets enter on its own surface, surface-local.
    pointer.move_to(fx + 4 + 100, fy + 24 + 50);
    go();
    assert_eq!(next(), "enters=[(true, 100.0, 50.0)] leaves=0 buttons=0");
    // Onto the band: the guest's surface is left, the band is the gate's.
    pointer.move_to(fx + 150, fy + 12);
    go();
    assert_eq!(next(), "enters=[(true, 100.0, 50.0)] leaves=1 buttons=0");
    // Dragging the band moves the window; the guest sees no button.
    pointer.left(true);
    // A round trip of the client through the gate: the gate has read the press (events
    // from sway arrive in order) and sent its move request before the client's reply.
    go();
    assert_eq!(next(), "enters=[(true, 100.0, 50.0)] leaves=1 buttons=0");
    pointer.move_to(fx + 150 + 30, fy + 12 + 20);
    pointer.left(false);
    // Out of the way: sway's software cursor is part of the screenshot.
    pointer.move_to(5, 595);
    go();
    assert_eq!(
        next(),
        "enters=[(true, 100.0, 50.0)] leaves=1 buttons=0",
        "the drag reached the guest"
    );
    let (shot, moved) = wait_for(
        || sway.screenshot(),
        |s| check_frame(s, &layout) == Ok((fx as usize + 30, fy as usize + 20)),
        |s, n| s.save_ppm(&sway.dir().join(format!("moved-{n}.ppm"))),
    );
    assert!(
        moved,
        "dragging the band did not move the window by (30, 20): {:?}",
        check_frame(&shot, &layout)
    );
    go();
    client.join().expect("client thread");
    assert!(!gate.stop().cut_off);
}

#[test]
#[ignore = "e2e: needs sway headless (started under another uid, so root)"]
fn test_an_offered_decoration_manager_is_served_by_the_gate() {
    use std::cell::Cell;
    use wl_proxy::protocols::xdg_decoration_unstable_v1::zxdg_decoration_manager_v1::ZxdgDecorationManagerV1;
    use wl_proxy::protocols::xdg_decoration_unstable_v1::zxdg_toplevel_decoration_v1::{
        ZxdgToplevelDecorationV1, ZxdgToplevelDecorationV1Handler, ZxdgToplevelDecorationV1Mode,
    };
    struct Modes(Rc<Cell<Vec<u32>>>);
    impl ZxdgToplevelDecorationV1Handler for Modes {
        fn handle_configure(
            &mut self,
            _: &Rc<ZxdgToplevelDecorationV1>,
            mode: ZxdgToplevelDecorationV1Mode,
        ) {
            let mut v = self.0.take();
            v.push(mode.0);
            self.0.set(v);
        }
    }
    if let Some(why) = sway::skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let sway = Sway::start();
    let socket = sway.dir().join("gate-0");
    let gate = Gate::start_with(&socket, &sway.socket, true, true);
    let (to_main, from_client) = mpsc::channel::<Vec<u32>>();
    let (to_client, from_main) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let c = TestClient::connect(&socket);
        let mgr = c
            .bind_optional::<ZxdgDecorationManagerV1>(1)
            .expect("the driver offers the decoration manager");
        let modes = Rc::new(Cell::new(Vec::new()));
        let top = c.toplevel_with(Some("deco"), None, |t| {
            let d = mgr.new_send_get_toplevel_decoration(t);
            d.set_handler(Modes(modes.clone()));
            d.send_set_mode(ZxdgToplevelDecorationV1Mode::CLIENT_SIDE);
        });
        top.surface
            .send_attach(Some(&c.buffer(200, 100, BLUE)), 0, 0);
        top.surface.send_commit();
        c.roundtrip();
        to_main.send(modes.take()).unwrap();
        let t0 = std::time::Instant::now();
        while from_main.try_recv().is_err() && t0.elapsed() < PATIENCE * 4 {
            let _ = c.state.dispatch(Some(std::time::Duration::from_millis(50)));
        }
    });
    let modes = from_client
        .recv_timeout(PATIENCE * 2)
        .expect("the client thread reported nothing");
    assert_eq!(modes, vec![2, 2]);
    let layout = Layout::for_extents(Extents::at(0, 0, 200, 100)).unwrap();
    let (shot, ok) = wait_for(
        || sway.screenshot(),
        |s| check_frame(s, &layout).is_ok(),
        |s, n| s.save_ppm(&sway.dir().join(format!("shot-{n}.ppm"))),
    );
    let tree: String = sway.tree().chars().filter(|c| !c.is_whitespace()).collect();
    let _ = to_client.send(());
    client.join().expect("client thread");
    assert!(!gate.stop().cut_off);
    assert!(ok, "{:?}", check_frame(&shot, &layout));
    assert!(tree.contains("\"border\":\"normal\""), "{tree}");
}
