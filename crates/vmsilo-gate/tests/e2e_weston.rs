//! End to end with a real compositor: weston 10 headless with `--debug` (which offers
//! `weston_debug_v1` and `weston_screenshooter`, both must be hidden), the gate in front of
//! it, `wayland-info` as the guest client, and `weston-debug proto` as the oracle for what
//! reached weston (the test kit's weston, `vmsilo_testkit::wayland`). Needs root (weston's headless backend as root, see
//! /work/shared/reference/wayland.md 3.2) and the weston and wayland-utils packages.

use std::path::Path;
use std::process::Command;

use vmsilo_gate::testing::{Gate, wait_until};
use vmsilo_testkit::wayland::{Compositor, Weston, WestonOptions};

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-gate");

#[test]
#[ignore = "e2e: runs weston headless as root"]
fn test_e2e_weston_sees_no_hidden_global_through_the_gate() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (weston headless)");
        return;
    }
    let weston = Weston::start(WestonOptions {
        width: 320,
        height: 240,
        socket: "wl-e2e".into(),
    })
    .expect("weston (apt-get install weston)");
    let rt = weston.runtime_dir().to_path_buf();
    let env = |c: &mut Command| {
        c.env("XDG_RUNTIME_DIR", &rt)
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("WAYLAND_SOCKET");
    };
    let trace = weston.proto_trace().expect("weston-debug proto");

    let listen = rt.join("gate-0");
    let gate = Gate::start(
        Path::new(EXE),
        &listen,
        &[
            "--vm",
            "e2e",
            "--color",
            "#2ecc71",
            "--compositor",
            rt.join("wl-e2e").to_str().unwrap(),
        ],
    )
    .unwrap();

    let mut info = Command::new("wayland-info");
    env(&mut info);
    let out = info
        .env("WAYLAND_DISPLAY", &listen)
        .output()
        .expect("wayland-info (apt-get install wayland-utils)");
    assert!(out.status.success(), "{out:?} {:?}", gate.log());
    let text = String::from_utf8_lossy(&out.stdout);
    for shown in [
        "'wl_compositor'",
        "'wl_shm'",
        "'xdg_wm_base'",
        "'wl_data_device_manager'",
    ] {
        assert!(text.contains(shown), "{shown} missing:\n{text}");
    }
    for hidden in [
        "weston_debug_v1",
        "weston_screenshooter",
        "weston_capture_v1",
        "zwp_input_panel_v1",
        "zwp_text_input_manager_v1",
    ] {
        assert!(
            !text.contains(hidden),
            "{hidden} shown through the gate:\n{text}"
        );
    }

    // weston saw the gate bind what wayland-info binds (wl_shm, wl_output) and nothing hidden.
    wait_until("the gate's binds in the proto log", || {
        gate_binds(&trace.text())
            .iter()
            .any(|b| b.contains("\"wl_shm\""))
    });
    let log = trace.text();
    drop(trace);
    let binds = gate_binds(&log);
    assert!(!binds.is_empty());
    for l in &binds {
        for hidden in [
            "weston_debug_v1",
            "weston_screenshooter",
            "weston_capture_v1",
        ] {
            assert!(!l.contains(hidden), "weston saw a bind of {hidden}: {l}");
        }
    }
    assert!(
        !binds
            .iter()
            .any(|l| l.contains("\"wl_data_device_manager\"")),
        "the VM's data device reached weston:\n{}",
        binds.join("\n")
    );
}

/// The binds in weston's protocol trace that are not from weston's own helper clients
/// (weston-keyboard binds the input panel, weston-desktop-shell the shell; either may start
/// while the trace runs). Only binds identify them: every client sees those globals announced.
fn gate_binds(log: &str) -> Vec<&str> {
    fn client_of(l: &str) -> Option<&str> {
        l.split_whitespace().find(|w| w.starts_with("0x"))
    }
    let weston_own: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(".bind("))
        .filter(|l| l.contains("\"zwp_input_panel_v1\"") || l.contains("\"weston_desktop_shell\""))
        .filter_map(client_of)
        .collect();
    log.lines()
        .filter(|l| l.contains(".bind("))
        .filter(|l| client_of(l).is_none_or(|c| !weston_own.contains(&c)))
        .collect()
}
