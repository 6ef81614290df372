//! `vm-run <vm> <command...>` (`vmsilo run`): run a command in a VM through its command socket,
//! starting the VM if needed (`docs/vm-run.md`).
//!
//! Detached (the default) it returns once the guest agent has started the command; `--wait`
//! attaches stdin, stdout and stderr, forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the
//! command and terminal size changes (SIGWINCH) to its terminal, and exits with its status.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use vmsilo_config::{Dirs, plan};
use vmsilo_proto::client::{self, AttachedIo, ClientError, Control};
use vmsilo_proto::{Request, WindowSize};

use crate::CliError;
use crate::cli::VmRunArgs;
use crate::config_file;
use crate::error::VmRunError;
use crate::vm_run::client::{CLEAR_LINE, Progress, WaitError, wait_ready};

/// How long vm-run waits without hearing from the command service before the command starts
/// (the service sends a status frame twice a second while the VM starts).
const SILENCE: Duration = Duration::from_secs(30);

/// The signals vm-run forwards (or, before the command runs, dies of).
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Where the signal thread sends what it receives once the command runs attached.
#[derive(Default)]
struct Relay {
    /// The control channel and whether the command has a terminal (SIGWINCH → Resize).
    attached: Mutex<Option<(Sender<Control>, bool)>>,
}

/// Blocks the forwarded signals and SIGWINCH in this (the only) thread, so every later thread
/// inherits the mask, and starts the thread that handles them: before the command runs
/// attached, a signal clears the progress line and ends vm-run with that signal, as it would
/// have without vm-run's help; afterwards it is sent to the command.
fn start_signal_thread(progress_shown: Arc<AtomicBool>) -> Result<Arc<Relay>, CliError> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGWINCH);
    set.thread_block().map_err(CliError::BlockSignals)?;
    let relay = Arc::new(Relay::default());
    let r = Arc::clone(&relay);
    std::thread::Builder::new()
        .name("vm-run-signals".into())
        // It only waits for signals and sends small messages.
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                let Ok(sig) = set.wait() else { return };
                let attached = r
                    .attached
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                match (attached, sig) {
                    (Some((tx, tty)), Signal::SIGWINCH) => {
                        if tty && let Some(size) = terminal_size() {
                            let _ = tx.send(Control::Resize(size));
                        }
                    }
                    (None, Signal::SIGWINCH) => {}
                    (Some((tx, _)), sig) => {
                        if let Some(s) = vmsilo_proto::Signal::from_number(sig as i32) {
                            let _ = tx.send(Control::Signal(s));
                        }
                    }
                    (None, sig) => {
                        if progress_shown.load(Ordering::SeqCst) {
                            eprint!("{CLEAR_LINE}");
                        }
                        // Default action: the process ends by this signal.
                        let mut one = SigSet::empty();
                        one.add(sig);
                        let _ = one.thread_unblock();
                        let _ = nix::sys::signal::raise(sig);
                        let _ = one.thread_block();
                    }
                }
            }
        })
        .map_err(VmRunError::SignalThread)?;
    Ok(relay)
}

/// The size of the terminal on stdin or stdout.
fn terminal_size() -> Option<WindowSize> {
    let (rows, cols) = crate::sys::window_size(std::io::stdin().as_fd())
        .or_else(|| crate::sys::window_size(std::io::stdout().as_fd()))?;
    Some(WindowSize { rows, cols })
}

/// A VM name that can be part of a socket path.
fn check_vm_name(vm: &str) -> Result<(), CliError> {
    if vm.is_empty() || vm.contains('/') || vm.contains('\0') || vm.starts_with('.') {
        return Err(CliError::Usage(format!(
            "{vm:?} is not a VM name: a name is not empty, has no \"/\" and does not start with \".\""
        )));
    }
    Ok(())
}

/// Explains why the command socket could not be reached.
fn connect_error(config: Option<&Path>, vm: &str, socket: &str, e: std::io::Error) -> CliError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => match config_file::resolve_and_load(config) {
            Ok((_, cfg)) => match plan::find_vm(&cfg, vm) {
                Err(unknown) => CliError::Plan(unknown),
                Ok(_) => VmRunError::SocketNotListening {
                    vm: vm.to_owned(),
                    socket: socket.to_owned(),
                }
                .into(),
            },
            Err(_) => VmRunError::NoSocket {
                vm: vm.to_owned(),
                socket: socket.to_owned(),
            }
            .into(),
        },
        ErrorKind::PermissionDenied => VmRunError::PermissionDenied {
            vm: vm.to_owned(),
            socket: socket.to_owned(),
        }
        .into(),
        ErrorKind::ConnectionRefused => VmRunError::NothingListens {
            vm: vm.to_owned(),
            socket: socket.to_owned(),
        }
        .into(),
        _ => VmRunError::Connect {
            vm: vm.to_owned(),
            socket: socket.to_owned(),
            source: e,
        }
        .into(),
    }
}

/// An agent-protocol failure: the agent's own refusals are printed without a prefix (they
/// name their source, `vmsilo-guest: frobnicate: command not found`), others with the VM.
/// The agent's text is the guest's: its `Display` escapes control characters
/// (`vmsilo_proto::text::escape`), so it cannot drive the user's terminal.
fn client_error(vm: &str, e: &ClientError, answer_timeout: Duration) -> CliError {
    let code = u8::try_from(e.exit_code()).unwrap_or(crate::error::EXIT_FAILURE);
    match e {
        ClientError::Agent(_) => eprintln!("{e}"),
        ClientError::NoAnswer { what } => eprintln!(
            "vmsilo: VM {vm:?}: the guest agent accepted the connection but did not {what} \
             within {}: the guest may be overloaded or its agent stuck; look at its console \
             (`vm-shell {vm}`); the limit is vm-run's --answer-timeout (VMSILO_ANSWER_TIMEOUT)",
            vmsilo_config::measure::format_duration(answer_timeout)
        ),
        other => eprintln!("vmsilo: VM {vm:?}: {other}"),
    }
    CliError::Exit(code)
}

/// Bounds how long the guest agent may stay silent (or leave the request unread) before the
/// command has started; lifted once it has.
fn bound_start(stream: &UnixStream, limit: Duration, vm: &str) -> Result<(), CliError> {
    // A zero duration is not a valid socket timeout: use the smallest one.
    let limit = Some(limit.max(Duration::from_millis(1)));
    stream
        .set_read_timeout(limit)
        .and_then(|()| stream.set_write_timeout(limit))
        .map_err(|source| command_socket(vm, source))
}

/// A failed operation on `vm`'s connected command socket.
fn command_socket(vm: &str, source: std::io::Error) -> CliError {
    VmRunError::CommandSocket {
        vm: vm.to_owned(),
        source,
    }
    .into()
}

fn request(args: &VmRunArgs, tty: Option<WindowSize>) -> Request {
    let argv = args.command.iter().map(|a| a.as_bytes());
    let mut req = if args.wait {
        Request::attached(argv)
    } else {
        Request::detached(argv)
    };
    if let Some(size) = tty {
        req = req.tty(size);
        if let Some(term) = std::env::var_os("TERM") {
            req = req.env("TERM", term.as_bytes());
        }
    }
    for (k, v) in &args.env {
        req = req.env(k, v);
    }
    if let Some(dir) = &args.cwd {
        req = req.cwd(dir.as_os_str().as_bytes());
    }
    if let Some(user) = &args.user {
        req = req.user(user.clone());
    }
    req
}

/// Runs `vm-run`.
pub fn run(config: Option<&Path>, args: &VmRunArgs) -> Result<(), CliError> {
    let vm = args.vm.as_str();
    check_vm_name(vm)?;
    let progress = Progress::new(vm, std::io::stderr().is_terminal(), args.verbose);
    let relay = start_signal_thread(progress.shown())?;
    let socket = Dirs::with_run_dir(args.run_dir.clone()).command_socket(vm);
    let stream = UnixStream::connect(&socket).map_err(|e| connect_error(config, vm, &socket, e))?;
    match wait_ready(&stream, &progress, SILENCE) {
        Ok(_) => {}
        Err(WaitError::Failed { code, message }) => {
            // The service's message can quote the VMM's or virtiofsd's output, which a guest
            // influences: each line is escaped.
            let mut lines = vmsilo_proto::text::escape_lines(&message);
            eprintln!("vmsilo: {}", lines.next().unwrap_or_default());
            for l in lines {
                eprintln!("{l}");
            }
            return Err(CliError::Exit(code.exit_code()));
        }
        Err(e) => {
            return Err(VmRunError::NotReady {
                vm: vm.to_owned(),
                error: e.to_string(),
            }
            .into());
        }
    }

    let answer = args.answer_timeout;
    bound_start(&stream, answer, vm)?;
    if !args.wait {
        let started = client::run_detached(stream, &request(args, None))
            .map_err(|e| client_error(vm, &e, answer))?;
        if args.verbose {
            println!("{}", started.pid);
        }
        return Ok(());
    }

    let terminals = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let tty = if args.tty || (terminals && !args.no_tty) {
        Some(terminal_size().unwrap_or(WindowSize { rows: 24, cols: 80 }))
    } else {
        None
    };
    let (tx, rx) = mpsc::channel();
    *relay
        .attached
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((tx, tty.is_some()));
    let io = AttachedIo {
        stdin: (!args.no_stdin)
            .then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>),
        stdout: Box::new(std::io::stdout()),
        stderr: Box::new(std::io::stderr()),
        controls: Some(rx),
    };
    let reader = stream
        .try_clone()
        .map_err(|source| command_socket(vm, source))?;
    let raw = if tty.is_some() {
        crate::term::RawMode::enter(std::io::stdin().as_fd())
    } else {
        None
    };
    let unbound = stream
        .try_clone()
        .map_err(|source| command_socket(vm, source))?;
    let result = client::run_attached_then(reader, stream, &request(args, tty), io, move || {
        // The timeouts belong to the socket, shared by every clone. Clearing them on an open
        // socket does not fail.
        let _ = unbound
            .set_read_timeout(None)
            .and_then(|()| unbound.set_write_timeout(None));
    });
    drop(raw);
    match result {
        Ok(done) => match u8::try_from(done.status.code()).unwrap_or(u8::MAX) {
            0 => Ok(()),
            code => Err(CliError::Exit(code)),
        },
        Err(e) => Err(client_error(vm, &e, answer)),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn args(extra: &[&str]) -> VmRunArgs {
        let mut argv = vec!["vm-run"];
        argv.extend_from_slice(extra);
        let cli =
            crate::cli::parse_from(argv.into_iter().map(OsString::from).collect()).expect("parses");
        match cli.command {
            crate::cli::Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_command_words_after_the_vm_belong_to_the_command() {
        let a = args(&["-w", "-e", "A=1=2", "-C", "/tmp", "b", "ls", "-l", "--wait"]);
        assert!(a.wait);
        assert_eq!(a.vm, "b");
        assert_eq!(a.command, ["ls", "-l", "--wait"].map(OsString::from));
        let req = request(&a, None);
        assert_eq!(
            req.argv,
            [b"ls".to_vec(), b"-l".to_vec(), b"--wait".to_vec()]
        );
        assert_eq!(req.env, [(b"A".to_vec(), b"1=2".to_vec())]);
        assert_eq!(req.cwd.as_deref(), Some(&b"/tmp"[..]));
        assert_eq!(req.mode, vmsilo_proto::Mode::Attached);
        let a = args(&["-u", "alice", "b", "firefox"]);
        let req = request(&a, None);
        assert_eq!(req.mode, vmsilo_proto::Mode::Detached);
        assert_eq!(req.user.as_deref(), Some("alice"));
        assert_eq!(req.tty, None);
    }

    #[test]
    fn test_bad_usage_is_refused() {
        let bad = |v: &[&str]| {
            let mut argv = vec!["vm-run"];
            argv.extend_from_slice(v);
            crate::cli::parse_from(argv.into_iter().map(OsString::from).collect())
                .expect_err("refused")
                .to_string()
        };
        assert!(bad(&["-t", "b", "sh"]).contains("--wait"));
        assert!(bad(&["b"]).contains("COMMAND"));
        assert!(bad(&["-e", "novalue", "b", "sh"]).contains("KEY=VALUE"));
        let err = check_vm_name("../x").expect_err("a path is not a VM name");
        assert!(err.to_string().contains("does not start with"), "{err}");
        assert!(check_vm_name("banking").is_ok());
    }
}
