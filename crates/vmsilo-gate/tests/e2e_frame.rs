//! The frame on a real compositor (weston 10 headless, root): guest clients through a gate
//! driver, screenshots counted to the pixel, and weston's protocol trace as the oracle for
//! what reached the compositor.

mod frame_support;

use frame_support::{COLOR, Gate, Shot, VM, Weston, wait_for_shot};
use vmsilo_gate::draw;
use vmsilo_gate::layout::{Extents, Layout};

const GREEN: u32 = 0x2e_cc_71;

/// Checks the frame around `layout` in `shot`: located by the bounding box of the VM colour,
/// every ring/band pixel exactly as drawn (colour and label), the VM colour count exact.
/// Returns the frame's top-left corner.
fn check_frame(shot: &Shot, layout: &Layout) -> Result<(usize, usize), String> {
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
    let weston = Weston::start("frame-shm");
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
        shot.save_ppm(&weston.dir.path().join("last.ppm"));
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
