//! End-to-end tests of the Wayland harness: real headless weston and sway, a real client,
//! screenshots decoded and searched for the client's window.

use std::process::{Child, Stdio};
use std::time::Duration;

use vmsilo_testkit::wayland::{Compositor, Image, Sway, SwayOptions, Weston, WestonOptions};

const T: Duration = Duration::from_secs(60);
const BLACK: [u8; 3] = [0, 0, 0];

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Screenshots until `found` holds (the first frame may not be on screen yet).
fn shot_until(take: impl Fn() -> Image, found: impl Fn(&Image) -> bool) -> Image {
    let deadline = std::time::Instant::now() + T;
    loop {
        let img = take();
        if found(&img) || std::time::Instant::now() > deadline {
            return img;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
#[ignore = "e2e: runs weston headless"]
fn test_weston_shows_a_client_window_in_screenshots_and_traces_it() {
    if !is_root() {
        eprintln!("skipped: needs root (weston headless as root)");
        return;
    }
    let weston = Weston::start(WestonOptions {
        width: 640,
        height: 480,
        ..WestonOptions::default()
    })
    .unwrap();

    // Before any client: only the black background.
    let empty = weston.screenshot().unwrap();
    assert_eq!((empty.width(), empty.height()), (640, 480));
    assert_eq!(
        empty.bbox_not(BLACK),
        None,
        "colours: {:?}",
        empty.top_colors(5)
    );

    let trace = weston.proto_trace().unwrap();
    let _client = Kill(
        weston
            .command("weston-simple-shm")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weston-simple-shm"),
    );
    let line = trace.wait_for("xdg_toplevel", T).unwrap();
    let client = vmsilo_testkit::wayland::trace_client(&line).unwrap();
    assert!(
        trace
            .lines_of(client)
            .iter()
            .any(|l| l.contains("set_title(\"simple-shm\")")),
        "{}",
        trace.text()
    );

    // simple-shm draws a 250x250 window with a 20 px transparent border (over black) and a
    // changing pattern inside.
    let img = shot_until(
        || weston.screenshot().unwrap(),
        |img| {
            img.bbox_not(BLACK)
                .is_some_and(|r| r.w >= 150 && r.h >= 150)
        },
    );
    let region = img.bbox_not(BLACK).expect("no window in the screenshot");
    assert!(
        (150..=250).contains(&region.w) && (150..=250).contains(&region.h),
        "{region:?}, colours {:?}",
        img.top_colors(5)
    );
}

#[test]
#[ignore = "e2e: runs sway headless as a test user"]
fn test_sway_runs_as_the_test_user_and_grim_sees_its_output() {
    if !is_root() {
        eprintln!("skipped: needs root (creates the test user)");
        return;
    }
    let sway = Sway::start(SwayOptions {
        width: 800,
        height: 600,
        ..SwayOptions::default()
    })
    .unwrap();
    assert_ne!(sway.user().uid, 0);
    let img = sway.screenshot().unwrap();
    assert_eq!((img.width(), img.height()), (800, 600));
    // The clear colour covers the output.
    assert_eq!(
        img.count(sway.background()),
        800 * 600,
        "{:?}",
        img.top_colors(5)
    );
    // A client of the test user connects (sway's socket is the user's).
    let out = sway.command("wayland-info").output().expect("wayland-info");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", sway.log());
    assert!(text.contains("xdg_wm_base"), "{text}");
    // Its IPC answers (the window tree is how tests read titles on sway).
    let tree = sway.ipc(&["-t", "get_tree"]).unwrap();
    assert!(tree.contains("HEADLESS-1"), "{tree}");
}
