//! Component tests of `vmsilo-guest waypipe-run` (the wrapper QEMU guests run every command
//! under) with the real waypipe 0.8 and the real agent: the command's output, exit status and
//! signal death pass through unchanged, it gets a Wayland display, waypipe's stream reaches the
//! target, and without waypipe the command still runs after one warning.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use vmsilo_guest::agent::WaypipeConfig;
use vmsilo_guest::exec::ExecConfig;
use vmsilo_guest::{Agent, AgentConfig};
use vmsilo_proto::client::run_attached;
use vmsilo_proto::{ExitStatus, Request};

mod common;
use common::{Buf, captured};

fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmsilo-guest"))
}

fn have_waypipe() -> bool {
    let found = vmsilo_guest::waypipe::find_in_path("waypipe").is_some();
    if !found {
        eprintln!("skipped: waypipe is not installed (apt-get install waypipe)");
    }
    found
}

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "vmsilo-waypipe-test-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the wrapper with `XDG_RUNTIME_DIR` in `dir` and the given target.
fn wrapper(dir: &Path, target: &Path, path: &str, command: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(["waypipe-run", "--unix-target"])
        .arg(target)
        .arg("--")
        .args(command)
        .env("XDG_RUNTIME_DIR", dir)
        .env("PATH", path)
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("run the wrapper")
}

fn system_path() -> String {
    std::env::var("PATH").unwrap_or_default()
}

#[test]
fn test_command_output_and_status_pass_through_with_a_display() {
    if !have_waypipe() {
        return;
    }
    let s = Scratch::new("status");
    let o = wrapper(
        &s.0,
        &s.0.join("no-host"),
        &system_path(),
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; test -S \"$WAYLAND_DISPLAY\" && echo \"display $WAYLAND_DISPLAY\"; exit 3",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "out", "{out}");
    let display = lines[1].strip_prefix("display ").expect("a display socket");
    let private = Path::new(display).parent().expect("in a directory");
    assert_eq!(private.parent(), Some(s.0.as_path()), "{display}");
    assert!(err.starts_with("err\n"), "{err}");
    // The private directory is gone afterwards.
    assert!(!private.exists(), "{} left behind", private.display());
}

#[test]
fn test_a_command_killed_by_a_signal_kills_the_wrapper_the_same_way() {
    if !have_waypipe() {
        return;
    }
    let s = Scratch::new("signal");
    let o = wrapper(
        &s.0,
        &s.0.join("no-host"),
        &system_path(),
        &["sh", "-c", "kill -TERM $$"],
    );
    assert_eq!(o.status.signal(), Some(15), "{o:?}");
}

#[test]
fn test_without_waypipe_the_command_runs_without_a_display_after_one_warning() {
    let s = Scratch::new("missing");
    // PATH without waypipe; the command is given by its absolute path.
    let o = wrapper(
        &s.0,
        &s.0.join("no-host"),
        s.0.to_str().expect("utf-8"),
        &[
            "/bin/sh",
            "-c",
            "echo \"display=${WAYLAND_DISPLAY:-none}\"; exit 4",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "display=none\n");
    assert_eq!(
        err.matches("waypipe is not installed in this guest")
            .count(),
        1,
        "{err}"
    );
    // A command that does not exist is 127, as in a shell.
    let o = wrapper(&s.0, &s.0.join("no-host"), "/nonexistent", &["no-such-cmd"]);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
}

#[test]
fn test_a_wayland_client_reaches_the_target_through_waypipe_and_the_relay() {
    if !have_waypipe() || vmsilo_guest::waypipe::find_in_path("wayland-info").is_none() {
        eprintln!("skipped: needs waypipe and wayland-info (apt-get install wayland-utils)");
        return;
    }
    // The target stands in for the host's vsock: it must receive waypipe's stream.
    let s = Scratch::new("relay");
    let target = s.0.join("host.sock");
    let listener = UnixListener::bind(&target).expect("bind the target");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = tx.send(n);
            // Closing ends the client's display: wayland-info exits.
        }
    });
    let o = wrapper(
        &s.0,
        &target,
        &system_path(),
        &["timeout", "60", "wayland-info"],
    );
    let got = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the target got a connection");
    assert!(got > 0, "the target read nothing; wrapper: {o:?}");
}

#[test]
fn test_the_agent_wraps_commands_when_waypipe_is_configured() {
    if !have_waypipe() {
        return;
    }
    let s = Scratch::new("agent");
    let mut exec = ExecConfig::from_process(None);
    exec.etc_dir = PathBuf::from("/nonexistent-etc");
    exec.base_env
        .push(("XDG_RUNTIME_DIR".into(), s.0.clone().into_os_string()));
    let mut cfg = AgentConfig::new(exec);
    cfg.waypipe = Some(WaypipeConfig {
        // Nothing listens on this port: the command still runs and exits normally.
        port: 6000,
        agent_exe: agent_bin(),
    });
    let (host, guest) = std::os::unix::net::UnixStream::pair().expect("pair");
    let agent = thread::spawn(move || {
        let mut agent = Agent::new(cfg);
        agent.add_connection(Box::new(guest)).expect("connection");
        agent.run().expect("agent runs")
    });
    let (stdout, stderr) = (Buf::default(), Buf::default());
    let req = Request::attached([
        "sh",
        "-c",
        "test -S \"$WAYLAND_DISPLAY\" && echo has-display; exit 3",
    ]);
    let reader = host.try_clone().expect("clone");
    let status = run_attached(reader, host, &req, captured(None, &stdout, &stderr))
        .expect("ran")
        .status;
    agent.join().expect("agent thread");
    assert_eq!(status, ExitStatus::Exited(3), "stderr: {:?}", stderr.text());
    assert_eq!(stdout.text(), "has-display\n");
}
