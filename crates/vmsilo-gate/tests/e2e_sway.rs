//! End to end with real clients on a real compositor: sway 1.7 headless (the test kit's,
//! `vmsilo_testkit::wayland`; it refuses to run as root, so it runs as `nobody`, and so do
//! the gate and the clients), a wtype virtual
//! keyboard so that the seat has a keyboard, the gate in front of sway. Checked: foot starts
//! through the gate (it refuses to without a data device) and runs its command; wl-copy in
//! one guest client and wl-paste in another move text through the VM's own clipboard; the
//! host's clipboard never sees it and the host's never reaches the VM. Needs root (to switch
//! to `nobody`) and the sway, foot, wl-clipboard and wtype packages.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmsilo_gate::testing::{Gate, Killed, wait_until};
use vmsilo_testkit::wayland::{Compositor, Sway, SwayOptions};

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-gate");
use vmsilo_gate::testing::TIMEOUT as WAIT;
const NOBODY: &str = "65534";

/// `prog args…` as nobody with `XDG_RUNTIME_DIR=rt` (and `WAYLAND_DISPLAY=display` if given).
fn as_nobody(rt: &Path, display: Option<&Path>, prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        "--",
        prog,
    ])
    .args(args)
    .env_clear()
    .env("PATH", "/usr/bin:/bin")
    .env("HOME", rt)
    .env("XDG_RUNTIME_DIR", rt)
    .stdin(Stdio::null());
    if let Some(d) = display {
        c.env("WAYLAND_DISPLAY", d);
    }
    c
}

/// Runs a command, bounded by `timeout` (killed after it), and returns its output.
fn run_bounded(mut c: Command, timeout: Duration) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "e2e: runs sway headless, foot and wl-clipboard as nobody (needs root)"]
fn test_e2e_sway_foot_starts_and_the_clipboard_stays_in_the_vm() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (to run sway and the clients as nobody)");
        return;
    }
    let sway = Sway::start(SwayOptions {
        width: 640,
        height: 480,
        user: "nobody".into(),
        ..SwayOptions::default()
    })
    .expect("sway (apt-get install sway)");
    let rt = sway.runtime_dir().to_path_buf();
    let host = rt.join(sway.display());

    // A virtual keyboard that stays for the test (wtype sleeps between its two keys).
    let mut wtype = as_nobody(&rt, Some(&host), "wtype", &["-s", "120000", "a", "b"]);
    wtype.stdout(Stdio::null()).stderr(Stdio::null());
    let _wtype = Killed(wtype.spawn().expect("wtype (apt-get install wtype)"));

    let listen = rt.join("gate-0");
    let gate_cmd = as_nobody(
        &rt,
        None,
        EXE,
        &[
            "--vm",
            "e2e",
            "--color",
            "#2ecc71",
            "--compositor",
            host.to_str().unwrap(),
            "--listen",
            listen.to_str().unwrap(),
        ],
    );
    let gate = Gate::start_command(gate_cmd, &listen).unwrap();

    // foot refuses to start without a data device; through the gate it runs its command.
    let foot = run_bounded(
        as_nobody(
            &rt,
            Some(&listen),
            "foot",
            &[
                "-o",
                "main.font=monospace:size=8",
                "--",
                "sh",
                "-c",
                "exit 7",
            ],
        ),
        WAIT,
    );
    assert_eq!(
        foot.status.code(),
        Some(7),
        "foot did not run through the gate: {}\n{:?}",
        String::from_utf8_lossy(&foot.stderr),
        gate.log()
    );

    // wl-copy in the foreground (killed by pid at the end) serves the selection; wl-paste, a
    // second client of the VM, reads it. The wtype keyboard may take a moment to reach the
    // seat: paste is retried (bounded).
    let paste = |display: &Path| {
        let o = run_bounded(as_nobody(&rt, Some(display), "wl-paste", &["-n"]), WAIT);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut copy = as_nobody(
        &rt,
        Some(&listen),
        "wl-copy",
        &["--foreground", "copied-in-the-vm"],
    );
    copy.stdout(Stdio::null()).stderr(Stdio::null());
    let _copy = Killed(
        copy.spawn()
            .expect("wl-copy (apt-get install wl-clipboard)"),
    );
    wait_until("the VM's selection in a second VM client", || {
        paste(&listen) == "copied-in-the-vm"
    });
    assert_ne!(
        paste(&host),
        "copied-in-the-vm",
        "the VM's selection reached the host"
    );

    // The host copies: the VM still pastes its own.
    let mut host_copy = as_nobody(
        &rt,
        Some(&host),
        "wl-copy",
        &["--foreground", "secret-from-host"],
    );
    host_copy.stdout(Stdio::null()).stderr(Stdio::null());
    let _host_copy = Killed(host_copy.spawn().unwrap());
    wait_until("the host's selection on the host", || {
        paste(&host) == "secret-from-host"
    });
    assert_eq!(
        paste(&listen),
        "copied-in-the-vm",
        "the host's selection reached the VM"
    );
    assert!(gate.log().iter().any(|l| l.contains("listening on")));
    drop(gate);
}
