//! The command line of the real binary: `--print-policy`, usage errors (exit 2) and runtime
//! failures (exit 1), the listening socket's rules.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use vmsilo_gate::testing::{FakeCompositor, Gate, TempDir, standard_globals};

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-gate");

fn run(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run vmsilo-gate")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn test_print_policy_prints_the_table_with_overrides() {
    let o = run(&[
        "--print-policy",
        "--allow",
        "zwp_tablet_manager_v2",
        "--deny",
        "wp_viewporter",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("wl_compositor")[1..4], ["required", "yes", "6"]);
    assert_eq!(row("zwp_tablet_manager_v2")[1..3], ["off-default", "yes"]);
    assert_eq!(row("wp_viewporter")[1..3], ["accelerated-rendering", "no"]);
    assert_eq!(row("zwlr_screencopy_manager_v1")[1..3], ["high-risk", "no"]);
    assert_eq!(
        row("wl_data_device_manager")[1..4],
        ["virtualized", "yes", "3"]
    );
}

#[test]
fn test_forbidden_overrides_are_usage_errors() {
    for (flag, iface, says) in [
        (
            "--allow",
            "zwlr_screencopy_manager_v1",
            "cannot allow zwlr_screencopy_manager_v1: it is high-risk",
        ),
        (
            "--allow",
            "zwlr_data_control_manager_v1",
            "clipboard-boundary",
        ),
        ("--allow", "zxdg_decoration_manager_v1", "gate-only"),
        ("--deny", "wl_seat", "cannot deny wl_seat"),
        ("--allow", "no_such_global", "unknown interface"),
    ] {
        let o = run(&["--print-policy", flag, iface]);
        assert_eq!(o.status.code(), Some(2), "{flag} {iface}");
        assert!(stderr(&o).contains(says), "{flag} {iface}: {}", stderr(&o));
        let o = run(&[
            "--vm", "w", "--color", "#000000", "--listen", "/tmp/x", flag, iface,
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {iface}");
    }
}

#[test]
fn test_listen_rules() {
    let dir = TempDir::new("cli");
    let fake = FakeCompositor::start(dir.path(), &standard_globals());
    let comp = fake.path().to_str().unwrap().to_string();
    let base = [
        "--vm",
        "w",
        "--color",
        "#2ecc71",
        "--compositor",
        comp.as_str(),
    ];
    // A missing directory: usage error.
    let missing = dir.path().join("nope/gate.sock");
    let mut args = base.to_vec();
    let m = missing.to_str().unwrap().to_string();
    args.extend(["--listen", m.as_str()]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // A regular file in the way: usage error, the file stays.
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep").unwrap();
    let f = file.to_str().unwrap().to_string();
    let mut args = base.to_vec();
    args.extend(["--listen", f.as_str()]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // A stale socket is replaced; the new one is 0600.
    let sock = dir.path().join("gate.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let g = Gate::start(Path::new(EXE), &sock, &base).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let want = format!("vmsilo-gate: VM \"w\": listening on {}", sock.display());
    assert!(g.log().contains(&want), "{:?}", g.log());
}

#[test]
fn test_unreachable_compositor_is_a_runtime_failure() {
    let dir = TempDir::new("nocomp");
    let sock = dir.path().join("gate.sock");
    let nothing = dir.path().join("no-compositor");
    let o = run(&[
        "--vm",
        "w",
        "--color",
        "#2ecc71",
        "--compositor",
        nothing.to_str().unwrap(),
        "--listen",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("could not connect to the compositor"),
        "{}",
        stderr(&o)
    );
    assert!(!sock.exists(), "the socket was left behind");
}

#[test]
fn test_bad_clipboard_chords_are_usage_errors() {
    for (copy, paste, why) in [
        ("shift+c", "ctrl+shift+v", "typing would trigger it"),
        ("ctrl+shift+nosuchkey", "ctrl+shift+v", "unknown key"),
        ("ctrl+shift+v", "ctrl+shift+v", "must differ"),
    ] {
        let o = run(&[
            "--vm",
            "work",
            "--color",
            "#2ecc71",
            "--listen",
            "/nonexistent/gate.sock",
            "--compositor",
            "/nonexistent/compositor",
            "--clipd",
            "/nonexistent/clipd.sock",
            "--copy-chord",
            copy,
            "--paste-chord",
            paste,
        ]);
        assert_eq!(o.status.code(), Some(2), "{copy} {paste}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
    }
}
