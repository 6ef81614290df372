//! The processes the runtime starts (backends, the VMM): spawning, waiting for their sockets,
//! stopping them.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::signals::Signals;

/// A started process.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages (`virtiofsd`, `QEMU`).
    pub name: String,
    /// The child.
    pub child: Child,
    /// Its exit status once reaped.
    pub status: Option<ExitStatus>,
}

/// Who a process runs as.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// The runtime's own (root).
    Inherit,
    /// Another user (supplementary groups are dropped).
    User {
        /// uid.
        uid: u32,
        /// gid.
        gid: u32,
    },
    /// Another user, without network, with everything but `writable` mounted read-only and
    /// `hidden` directories empty ([`crate::sys::confine_child`]).
    Confined {
        /// uid.
        uid: u32,
        /// gid.
        gid: u32,
        /// The only writable directory.
        writable: &'a Path,
        /// Directories covered by an empty tmpfs (those that do not exist are skipped).
        hidden: &'a [String],
    },
}

/// Why a backend or the VMM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The plan gave no command line.
    #[error("{name}: empty command line")]
    EmptyCommand {
        /// The process's name.
        name: String,
    },
    /// The confinement of a user process could not be set up.
    #[error("cannot start {name} ({program}): {why}")]
    Confine {
        /// The process's name.
        name: String,
        /// Its program.
        program: String,
        /// Why.
        why: String,
    },
    /// The process could not be started.
    #[error("cannot start {name} ({program})")]
    Start {
        /// The process's name.
        name: String,
        /// Its program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Starts `argv` in its own process group with stdin from /dev/null and the runtime's
/// stdout/stderr (the journal under systemd); it gets SIGTERM if the runtime dies.
pub fn spawn(
    name: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    who: Identity<'_>,
) -> Result<Proc, SpawnError> {
    let (program, args) = argv.split_first().ok_or_else(|| SpawnError::EmptyCommand {
        name: name.to_owned(),
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .process_group(0);
    match who {
        Identity::Inherit => {}
        Identity::User { uid, gid } => {
            cmd.uid(uid).gid(gid);
        }
        Identity::Confined {
            uid,
            gid,
            writable,
            hidden,
        } => {
            // It handles guest data: it gets nothing of the runtime's it does not need.
            cmd.env_remove("NOTIFY_SOCKET");
            // Only real directories (a symlink would move the tmpfs elsewhere), and never the
            // one the program itself is installed in (it is found after the mounts).
            let exe =
                super::checks::find_program(program).and_then(|p| std::fs::canonicalize(p).ok());
            let hidden: Vec<std::path::PathBuf> = hidden
                .iter()
                .map(std::path::PathBuf::from)
                .filter(|h| std::fs::symlink_metadata(h).is_ok_and(|m| m.is_dir()))
                .filter(|h| !exe.as_ref().is_some_and(|e| e.starts_with(h)))
                .collect();
            crate::sys::confine_child(&mut cmd, uid, gid, writable, &hidden).map_err(|why| {
                SpawnError::Confine {
                    name: name.to_owned(),
                    program: program.clone(),
                    why,
                }
            })?;
        }
    }
    crate::sys::prepare_child(&mut cmd);
    let child = cmd.spawn().map_err(|source| SpawnError::Start {
        name: name.to_owned(),
        program: program.clone(),
        source,
    })?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        status: None,
    })
}

/// Describes an exit status for messages.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("signal {}", sig.as_str()),
            Err(_) => format!("signal {s}"),
        },
        _ => "an unknown status".to_owned(),
    }
}

impl Proc {
    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reaps the process if it has exited; returns its status.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
        }
        self.status
    }

    /// Sends a signal to its process group (ignored once reaped): [`spawn`] makes every
    /// process a group leader, so what it forked (the gate's per-client processes,
    /// virtiofsd's sandbox) is stopped with it.
    pub fn signal(&mut self, sig: Signal) {
        if self.poll().is_none()
            && let Ok(pid) = i32::try_from(self.child.id())
        {
            let _ = killpg(Pid::from_raw(pid), sig);
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaps it.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.poll() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(Signal::SIGKILL);
        match self.child.wait() {
            Ok(s) => {
                self.status = Some(s);
                s
            }
            Err(_) => ExitStatus::from_raw(libc_sigkill_status()),
        }
    }
}

fn libc_sigkill_status() -> i32 {
    Signal::SIGKILL as i32
}

/// Why waiting for a socket failed.
#[derive(Debug)]
pub enum WaitError {
    /// The process exited first.
    Exited(ExitStatus),
    /// It did not appear in time.
    Timeout,
    /// A stop signal arrived.
    Interrupted,
}

/// Waits until `path` exists, while `proc` (if any) keeps running.
pub fn wait_for_path(
    path: &Path,
    mut proc: Option<&mut Proc>,
    timeout: Duration,
    signals: &Signals,
) -> Result<(), WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        if path.exists() {
            return Ok(());
        }
        if let Some(p) = proc.as_deref_mut()
            && let Some(s) = p.poll()
        {
            return Err(WaitError::Exited(s));
        }
        if signals.stop_requested() {
            return Err(WaitError::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(WaitError::Timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
