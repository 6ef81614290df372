//! Windows from QEMU guests: `vmsilo-guest waypipe-run` runs one command with a Wayland display
//! served by `waypipe server`, and carries waypipe's stream to the host over vsock.
//!
//! When the kernel command line has `vmsilo.waypipe=<port>` (QEMU VMs with `gpu`), the agent
//! runs every command as `vmsilo-guest waypipe-run --port <port> -- <program> <args>...`, as the
//! command's own user. The wrapper
//!
//! 1. creates a private directory (mode 0700) in `$XDG_RUNTIME_DIR`, else the temporary
//!    directory, and listens on `waypipe.socket` there;
//! 2. starts `waypipe --no-gpu --socket <dir>/waypipe.socket --display <dir>/wayland-0 server
//!    -- vmsilo-guest waypipe-hold`, which serves the display `<dir>/wayland-0` for as long as
//!    the wrapper keeps the holder's stdin open;
//! 3. for each connection waypipe makes to `waypipe.socket`, connects to vsock CID 2 (the host)
//!    at the port and copies both directions (two threads per connection, 64 KiB buffers, at
//!    most [`MAX_CONNECTIONS`] at once); on the host, vhost-device-vsock hands the stream to
//!    `waypipe client`, which talks to the VM's vmsilo-gate;
//! 4. runs the command itself with `WAYLAND_DISPLAY=<dir>/wayland-0`, so that its stdio,
//!    process group and exit status are exactly those of a command run without the wrapper
//!    (`waypipe server` reports a command killed by a signal as status 0, so the command is not
//!    waypipe's child); and exits with the command's status (dying by the same signal).
//!
//! Without `waypipe` in `PATH` (or when its display does not come up) the command runs without
//! a Wayland display, after one warning on its stderr.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};

/// The wrapper's subcommand.
pub const RUN: &str = "waypipe-run";
/// The placeholder `waypipe server` runs: it waits for the end of its stdin.
pub const HOLD: &str = "waypipe-hold";
/// Streams relayed at once; further connections are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Bytes copied per read, in each direction of each stream.
const BUFFER: usize = 64 << 10;
/// How long waypipe gets to create its display socket.
const DISPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long waypipe gets to exit after the command did.
const WAYPIPE_GRACE: Duration = Duration::from_secs(2);

/// Where the wrapper sends waypipe's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// vsock (the host is CID 2).
    Vsock {
        /// The peer's CID.
        cid: u32,
        /// The peer's port.
        port: u32,
    },
    /// A Unix socket (tests).
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Vsock { cid, port } => write!(f, "vsock CID {cid} port {port}"),
            Target::Unix(p) => write!(f, "unix socket {}", p.display()),
        }
    }
}

/// `vmsilo-guest waypipe-run` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// Where streams go.
    pub target: Target,
    /// The command and its arguments (at least the command).
    pub command: Vec<OsString>,
}

/// Parses what follows `waypipe-run`: `--port N [--cid N] | --unix-target PATH`, `--`, then the
/// command.
pub fn parse(args: &[OsString]) -> Result<RunArgs, String> {
    let mut port = None;
    let mut cid = vmsilo_proto::HOST_CID;
    let mut unix = None;
    let mut it = args.iter();
    loop {
        let Some(flag) = it.next() else {
            return Err(format!("{RUN}: expected -- and a command"));
        };
        let flag = flag.to_string_lossy();
        if flag == "--" {
            break;
        }
        let Some(value) = it.next() else {
            return Err(format!("{RUN}: {flag} needs a value"));
        };
        let number = || {
            value
                .to_str()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| format!("{RUN}: {flag} {value:?}: expected a number"))
        };
        match flag.as_ref() {
            "--port" => port = Some(number()?),
            "--cid" => cid = number()?,
            "--unix-target" => unix = Some(PathBuf::from(value)),
            _ => return Err(format!("{RUN}: unknown option {flag}")),
        }
    }
    let command: Vec<OsString> = it.cloned().collect();
    if command.is_empty() || command[0].is_empty() {
        return Err(format!("{RUN}: no command after --"));
    }
    let target = match (unix, port) {
        (Some(p), None) => Target::Unix(p),
        (None, Some(port)) => Target::Vsock { cid, port },
        _ => return Err(format!("{RUN}: give either --port or --unix-target")),
    };
    Ok(RunArgs { target, command })
}

/// The command line the agent runs instead of `program args...`: `vmsilo-guest waypipe-run
/// --port <port> -- <program> <args>...` (`agent` is the agent's own executable).
pub fn wrapper_argv(agent: &Path, port: u32, program: &Path, args: &[OsString]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![
        agent.as_os_str().to_owned(),
        RUN.into(),
        "--port".into(),
        port.to_string().into(),
        "--".into(),
        program.as_os_str().to_owned(),
    ];
    argv.extend(args.iter().cloned());
    argv
}

fn warn(msg: &str) {
    let _ = writeln!(io::stderr(), "vmsilo-guest: {msg}");
}

/// Says `msg` once per wrapper process (connection failures repeat for every stream).
fn warn_once(flag: &AtomicBool, msg: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        warn(msg);
    }
}

/// `waypipe-hold`: waits until stdin ends (the wrapper closes it), then exits 0.
pub fn hold() -> i32 {
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return 0,
        }
    }
}

/// An executable `name` in `PATH` (or the agent's default path).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from(crate::exec::DEFAULT_PATH));
    path.as_bytes()
        .split(|b| *b == b':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(OsStr::from_bytes(d)).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A new directory only this user can enter, in `$XDG_RUNTIME_DIR` or the temporary
/// directory. `mkdir` fails on anything already there (a planted symlink included), in which
/// case the next name is tried.
fn private_dir() -> io::Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let mut last = None;
    for n in 0..100 {
        let dir = base.join(format!("vmsilo-waypipe-{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free name")))
}

fn connect_target(target: &Target) -> io::Result<UnixStream> {
    match target {
        Target::Unix(p) => UnixStream::connect(p),
        Target::Vsock { cid, port } => {
            let fd: OwnedFd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &VsockAddr::new(*cid, *port),
            )?;
            // Only read(2), write(2) and shutdown(2) are used on it, which work on any stream
            // socket; UnixStream is std's type for exactly those.
            Ok(UnixStream::from(fd))
        }
    }
}

/// Copies `from` to `to` until either ends, then passes the end on (half-close).
fn pump(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Relays one stream from waypipe to the target, both directions.
fn relay(local: UnixStream, target: &Target, failed: &AtomicBool) {
    let remote = match connect_target(target) {
        Ok(r) => r,
        Err(e) => {
            warn_once(
                failed,
                &format!(
                    "cannot reach the host's waypipe at {target}: {e}: no window is shown (is \
                     the VM's gate running? `vm-stop`/`vm-start` the VM on the host)"
                ),
            );
            return;
        }
    };
    let (Ok(local2), Ok(remote2)) = (local.try_clone(), remote.try_clone()) else {
        warn_once(failed, "cannot duplicate a stream for relaying: no window");
        return;
    };
    let up = std::thread::spawn(move || pump(local2, remote2));
    pump(remote, local);
    let _ = up.join();
}

/// Accepts waypipe's streams until the process ends.
fn accept_loop(listener: UnixListener, target: Target) {
    let active = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let accept_failed = AtomicBool::new(false);
    let too_many = AtomicBool::new(false);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn_once(&accept_failed, &format!("accepting waypipe's streams: {e}"));
                // EMFILE and the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            warn_once(
                &too_many,
                &format!("more than {MAX_CONNECTIONS} Wayland streams at once: closing new ones"),
            );
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (target, active, failed) = (target.clone(), active.clone(), failed.clone());
        let spawned = std::thread::Builder::new()
            .name("waypipe-relay".into())
            .spawn(move || {
                relay(stream, &target, &failed);
                active.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            warn_once(&accept_failed, "cannot start a relay thread: no window");
        }
    }
}

/// Runs the command without a display (`exec`); returns only on failure, as an exit status.
fn exec_plain(command: &[OsString]) -> i32 {
    let err = Command::new(&command[0]).args(&command[1..]).exec();
    spawn_failure(&command[0], &err)
}

/// The shell's statuses for a command that could not start: 127 not found, 126 otherwise.
fn spawn_failure(program: &OsStr, e: &io::Error) -> i32 {
    warn(&format!("{}: {e}", program.to_string_lossy()));
    if e.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Waits (bounded) until waypipe's display socket exists; false if waypipe exits or it takes
/// too long.
fn wait_for_display(display: &Path, waypipe: &mut Child) -> bool {
    let deadline = Instant::now() + DISPLAY_TIMEOUT;
    loop {
        if display.exists() {
            return true;
        }
        if !matches!(waypipe.try_wait(), Ok(None)) || Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops waypipe (its holder's stdin is already closed) within [`WAYPIPE_GRACE`].
fn stop_waypipe(mut waypipe: Child) {
    let deadline = Instant::now() + WAYPIPE_GRACE;
    while matches!(waypipe.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            let _ = waypipe.kill();
            let _ = waypipe.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `waypipe-run`: never returns; exits with the command's status.
pub fn run(args: RunArgs) -> ! {
    let code = run_inner(&args);
    std::process::exit(code)
}

fn run_inner(args: &RunArgs) -> i32 {
    let command = &args.command;
    let shown = command[0].to_string_lossy().into_owned();
    let Some(waypipe) = find_in_path("waypipe") else {
        warn(&format!(
            "waypipe is not installed in this guest: {shown} runs without a Wayland display \
             (add waypipe to the guest)"
        ));
        return exec_plain(command);
    };
    let dir = match private_dir() {
        Ok(d) => d,
        Err(e) => {
            warn(&format!(
                "cannot create a directory for waypipe ({e}): {shown} runs without a Wayland \
                 display"
            ));
            return exec_plain(command);
        }
    };
    let code = with_display(args, &waypipe, &dir, &shown);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        warn(&format!("cannot remove {}: {e}", dir.display()));
    }
    match code {
        Outcome::Exited(c) => c,
        Outcome::Signaled(sig) => crate::sys::die_by_signal(sig),
    }
}

enum Outcome {
    Exited(i32),
    Signaled(i32),
}

fn with_display(args: &RunArgs, waypipe: &Path, dir: &Path, shown: &str) -> Outcome {
    let command = &args.command;
    let relay_socket = dir.join("waypipe.socket");
    let display = dir.join("wayland-0");
    if let Err(e) = crate::sys::outlive_termination_signals() {
        warn(&format!("cannot set up signal handling: {e}"));
    }
    let setup = || -> io::Result<(Child, OwnedFd)> {
        let listener = UnixListener::bind(&relay_socket)?;
        let (hold_read, hold_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let me = std::env::current_exe()?;
        let child = Command::new(waypipe)
            .arg("--no-gpu")
            .arg("--socket")
            .arg(&relay_socket)
            .arg("--display")
            .arg(&display)
            .args(["server", "--"])
            .arg(me)
            .arg(HOLD)
            .stdin(Stdio::from(hold_read))
            .stdout(Stdio::null())
            .spawn()?;
        let target = args.target.clone();
        std::thread::Builder::new()
            .name("waypipe-accept".into())
            .spawn(move || accept_loop(listener, target))?;
        Ok((child, hold_write))
    };
    let (mut wp, hold_write) = match setup() {
        Ok(x) => x,
        Err(e) => {
            warn(&format!(
                "cannot start waypipe ({e}): {shown} runs without a Wayland display"
            ));
            return finish(
                Command::new(&command[0]).args(&command[1..]).status(),
                command,
            );
        }
    };
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    if wait_for_display(&display, &mut wp) {
        cmd.env("WAYLAND_DISPLAY", &display);
    } else {
        warn(&format!(
            "waypipe did not set up a display: {shown} runs without a Wayland display"
        ));
    }
    let status = cmd.status();
    drop(hold_write);
    stop_waypipe(wp);
    finish(status, command)
}

fn finish(status: io::Result<std::process::ExitStatus>, command: &[OsString]) -> Outcome {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Outcome::Exited(c),
            (None, Some(sig)) => Outcome::Signaled(sig),
            _ => Outcome::Exited(255),
        },
        Err(e) => Outcome::Exited(spawn_failure(&command[0], &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn test_parses_the_wrapper_command_line() {
        let a = parse(&os(&["--port", "6000", "--", "sh", "-c", "exit 3"])).expect("valid");
        assert_eq!(
            a.target,
            Target::Vsock {
                cid: vmsilo_proto::HOST_CID,
                port: 6000
            }
        );
        assert_eq!(a.command, os(&["sh", "-c", "exit 3"]));
        let a = parse(&os(&["--unix-target", "/t", "--", "x", "--port"])).expect("valid");
        assert_eq!(a.target, Target::Unix("/t".into()));
        assert_eq!(a.command, os(&["x", "--port"]));
        for bad in [
            &["--port", "6000"][..],
            &["--port", "6000", "--"],
            &["--port", "x", "--", "sh"],
            &["--", "sh"],
            &["--port", "1", "--unix-target", "/t", "--", "sh"],
            &["--bogus", "1", "--", "sh"],
            &["--port"],
        ] {
            assert!(parse(&os(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_wrapper_argv_keeps_the_command_after_the_separator() {
        let argv = wrapper_argv(
            Path::new("/bin/vmsilo-guest"),
            6000,
            Path::new("/bin/sh"),
            &os(&["-c", "exit 3"]),
        );
        assert_eq!(
            argv,
            os(&[
                "/bin/vmsilo-guest",
                RUN,
                "--port",
                "6000",
                "--",
                "/bin/sh",
                "-c",
                "exit 3"
            ])
        );
        // Round trip through the parser.
        let parsed = parse(&argv[2..]).expect("valid");
        assert_eq!(parsed.command, os(&["/bin/sh", "-c", "exit 3"]));
    }
}
