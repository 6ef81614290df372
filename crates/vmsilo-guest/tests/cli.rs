//! The `vmsilo-guest` binary itself: command line, socket activation through the real
//! `systemd-socket-activate` (both `Accept=yes` and a listening socket), the idle shutdown of
//! the long-lived agent, busy markers and the standalone `idle-watchdog` mode.

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use vmsilo_guest::idle::{live_markers, process_start_time};
use vmsilo_proto::client::run_attached;
use vmsilo_proto::{ExitStatus, Request};

mod common;
use common::{Buf, captured};

const BIN: &str = env!("CARGO_BIN_EXE_vmsilo-guest");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmsilo-guest-cli-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Kills a child on drop so a failing test leaves nothing behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to `path` once something listens there (waiting at most 60 s: a loaded machine
/// may be slow to start the agent).
fn wait_for_socket(path: &Path) -> UnixStream {
    for _ in 0..6000 {
        if let Ok(s) = UnixStream::connect(path) {
            return s;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never accepted a connection", path.display());
}

/// Runs an attached command; returns (status, stdout).
fn run(stream: UnixStream, argv: &[&str]) -> (ExitStatus, String) {
    let out = Buf::default();
    let io = captured(None, &out, &Buf::default());
    let reader = stream.try_clone().unwrap();
    let done = run_attached(reader, stream, &Request::attached(argv), io).unwrap();
    (done.status, out.text())
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

#[test]
fn test_usage_errors_exit_2() {
    let out = Command::new(BIN)
        .arg("--listen-fd")
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen-fd: no socket was passed"));
    let out = Command::new(BIN)
        .args(["--idle-shutdown", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-shutdown \"soon\""));
    // Seconds past any clock: a usage error, not a panic when the watchdog arms.
    let out = Command::new(BIN)
        .args(["--idle-shutdown", "18446744073709551615"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 100 years"));
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn test_idle_agent_powers_off_after_its_last_command() {
    let dir = scratch("idle");
    let sock = dir.join("agent.sock");
    // The idle time runs from the agent's start, before this test can connect: generous, so
    // that a slow, loaded machine still connects in time. (That the watchdog waits for a
    // running command is tested in agent.rs.)
    let child = Command::new(BIN)
        .args([
            "--unix",
            sock.to_str().unwrap(),
            "--idle-shutdown",
            "5s",
            "--poweroff",
            "exit",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, out) = run(wait_for_socket(&sock), &["echo", "done"]);
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "done\n"));
    let output = finish(child);
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("idle shutdown after 5s"), "{log}");
    assert!(
        log.contains("no command has run for 5s: powering off"),
        "{log}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_kernel_command_line_enables_idle_shutdown() {
    let dir = scratch("cmdline");
    let sock = dir.join("agent.sock");
    let cmdline = dir.join("cmdline");
    fs::write(&cmdline, "console=ttyS0 vmsilo.autoshutdown=1 quiet\n").unwrap();
    let child = Command::new(BIN)
        .args([
            "--unix",
            sock.to_str().unwrap(),
            "--poweroff",
            "exit",
            "--cmdline",
        ])
        .arg(&cmdline)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish(child);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("powering off"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_socket_activation_accept_yes_serves_one_connection_per_process() {
    let dir = scratch("accept");
    let sock = dir.join("agent.sock");
    let state = dir.join("state");
    let activator = Guard(
        Command::new("systemd-socket-activate")
            .args(["--accept", "-l", sock.to_str().unwrap(), BIN, "--state-dir"])
            .arg(&state)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Each connection is a fresh agent process; while one runs a command its busy marker
    // exists, which is what `vmsilo-guest idle-watchdog` looks at.
    let (status, out) = run(
        wait_for_socket(&sock),
        &["sh", "-c", &format!("ls {}", state.display())],
    );
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(
        out.lines().count(),
        1,
        "one busy marker while running: {out:?}"
    );
    let (status, out) = run(UnixStream::connect(&sock).unwrap(), &["echo", "second"]);
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "second\n"));
    // The agent processes are gone, and so are their markers (waiting at most 60 s).
    for _ in 0..6000 {
        if live_markers(&state) == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(live_markers(&state), 0);
    drop(activator);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_socket_activation_with_a_listening_socket() {
    let dir = scratch("listen");
    let sock = dir.join("agent.sock");
    // The agent starts only once both connections wait in the socket's queue (a shell that
    // waits for the gate, then execs the agent under the same pid, so LISTEN_PID still
    // matches): its idle time cannot run out before the first connection however slow the
    // machine is, and it is never idle between the two.
    let gate = dir.join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let script = format!(
        "cat {} >/dev/null; exec {BIN} --listen-fd --idle-shutdown 1 --poweroff exit",
        gate.display()
    );
    let activator = Command::new("systemd-socket-activate")
        .args(["-l", sock.to_str().unwrap(), "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = wait_for_socket(&sock);
    let second = UnixStream::connect(&sock).unwrap();
    drop(fs::File::create(&gate).unwrap());
    let (status, out) = run(first, &["echo", "one"]);
    assert_eq!((status, out.as_str()), (ExitStatus::Exited(0), "one\n"));
    let (status, _) = run(second, &["false"]);
    assert_eq!(status, ExitStatus::Exited(1));
    // One long-lived process served both, then went idle.
    let output = finish(activator);
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("serving the socket passed by systemd"),
        "{log}"
    );
    assert!(log.contains("powering off"), "{log}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_idle_watchdog_mode_waits_for_busy_agents() {
    let dir = scratch("watchdog");
    let state = dir.join("state");
    fs::create_dir_all(&state).unwrap();
    // A stand-in for a busy agent process: a marker for a live process with its start time.
    let busy = Guard(Command::new("sleep").arg("2").spawn().unwrap());
    let pid = busy.0.id();
    fs::write(
        state.join(pid.to_string()),
        format!("{}\n", process_start_time(pid).unwrap()),
    )
    .unwrap();
    let mut watchdog = Command::new(BIN)
        .args([
            "idle-watchdog",
            "--idle-shutdown",
            "1",
            "--interval",
            "100ms",
        ])
        .args(["--cgroup-root", "none", "--poweroff", "exit", "--state-dir"])
        .arg(&state)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut busy = busy;
    let _ = busy.0.wait();
    let reaped_at_exit = watchdog.wait().unwrap();
    assert!(reaped_at_exit.success());
    // It cannot have fired while the marker's process lived: the marker is gone only now.
    assert!(
        !state.join(pid.to_string()).exists(),
        "stale marker not removed"
    );
    let mut log = String::new();
    io::Read::read_to_string(watchdog.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("powering off"), "{log}");

    // Without any idle time configured, it exits at once.
    let cmdline = dir.join("cmdline");
    fs::write(&cmdline, "console=ttyS0").unwrap();
    let out = Command::new(BIN)
        .args(["idle-watchdog", "--cmdline"])
        .arg(&cmdline)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no idle time configured"));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_agent_logs_why_it_drops_a_connection() {
    let dir = scratch("drops");
    let sock = dir.join("agent.sock");
    let child = Command::new(BIN)
        .args([
            "--unix",
            sock.to_str().unwrap(),
            "--idle-shutdown",
            "3s",
            "--poweroff",
            "exit",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A host that connects and goes away without a word.
    drop(wait_for_socket(&sock));
    let output = finish(child);
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(
            "dropping a connection before its Hello: the host closed the connection (1 dropped so far)"
        ),
        "{log}"
    );
    let _ = fs::remove_dir_all(&dir);
}
