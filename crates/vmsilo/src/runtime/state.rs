//! The VM's state file `<run>/<vm>.state` (JSON, replaced atomically) and its lock
//! `<run>/<vm>.lock` (flock), which keep two runtimes off one VM and tell `vmsilo status` what
//! runs.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Version of the state file.
pub const STATE_VERSION: u32 = 1;

/// What the runtime is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Preparing, or the VMM is starting.
    Starting,
    /// The VMM is up (console connected, control socket present).
    Running,
    /// Shutting down.
    Stopping,
}

impl Phase {
    /// `starting`, `running`, `stopping`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
        }
    }
}

/// The content of `<run>/<vm>.state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The VM.
    pub vm: String,
    /// What is happening.
    pub state: Phase,
    /// pid of the runtime (`vmsilo vm-service` / `vm-start-debug`).
    pub pid: u32,
    /// pid of the VMM, once started.
    pub vmm_pid: Option<u32>,
    /// `crosvm` or `qemu`.
    pub vmm: String,
    /// Unix time (seconds) the runtime started the VM.
    pub started_at: u64,
    /// Whether this is `vm-start-debug`.
    pub debug: bool,
    /// The console PTY link (absent in debug mode).
    pub console: Option<String>,
}

/// `<run>/<vm>.state`.
pub fn state_path(run_dir: &str, vm: &str) -> PathBuf {
    PathBuf::from(vmsilo_config::Dirs::with_run_dir(run_dir).state_file(vm))
}

/// `<run>/<vm>.lock`.
pub fn lock_path(run_dir: &str, vm: &str) -> PathBuf {
    PathBuf::from(vmsilo_config::Dirs::with_run_dir(run_dir).lock_file(vm))
}

/// Largest state file read.
const MAX_STATE: u64 = 64 * 1024;

/// Reads a state file; `None` when missing or unreadable (a malformed file is never an error
/// for readers: the runtime that wrote it is gone or writing).
pub fn read(path: &Path) -> Option<State> {
    use std::io::Read;
    let f = File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_STATE).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a state file atomically (temporary file, then rename).
pub fn write(path: &Path, state: &State) -> std::io::Result<()> {
    let tmp = path.with_extension("state.tmp");
    let text = serde_json::to_string(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another runtime holds it.
    Held,
    /// The lock file could not be created or locked.
    Io(std::io::Error),
}

/// An exclusive lock on `<run>/<vm>.lock`; the file is removed when the lock is dropped.
#[derive(Debug)]
pub struct VmLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl VmLock {
    /// Takes the lock without waiting.
    pub fn take(path: &Path) -> Result<VmLock, LockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc_cloexec())
            .open(path)
            .map_err(LockError::Io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(VmLock {
                path: path.to_owned(),
                _lock: lock,
            }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held),
            Err((_, e)) => Err(LockError::Io(e.into())),
        }
    }
}

fn libc_cloexec() -> i32 {
    nix::fcntl::OFlag::O_CLOEXEC.bits()
}

impl Drop for VmLock {
    fn drop(&mut self) {
        // Removed while still locked, so a new runtime never locks a file about to vanish.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != ErrorKind::NotFound
        {
            eprintln!("vmsilo: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_state_round_trips_and_lock_is_exclusive() {
        let dir = std::env::temp_dir().join(format!("vmsilo-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let run = dir.to_str().expect("utf-8");
        let st = State {
            version: STATE_VERSION,
            vm: "a".into(),
            state: Phase::Running,
            pid: 1,
            vmm_pid: Some(2),
            vmm: "qemu".into(),
            started_at: 3,
            debug: false,
            console: Some("/run/vmsilo/a-console".into()),
        };
        write(&state_path(run, "a"), &st).expect("write");
        assert_eq!(read(&state_path(run, "a")), Some(st));
        std::fs::write(state_path(run, "b"), "{not json").expect("write");
        assert_eq!(read(&state_path(run, "b")), None);

        let lock = VmLock::take(&lock_path(run, "a")).expect("first lock");
        assert!(matches!(
            VmLock::take(&lock_path(run, "a")),
            Err(LockError::Held)
        ));
        drop(lock);
        assert!(!lock_path(run, "a").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
