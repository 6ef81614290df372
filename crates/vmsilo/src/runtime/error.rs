//! Why the runtime could not start a VM ([`StartError`]) or why a VM that ran ended abnormally
//! ([`EndReason`]); [`super::RuntimeError`] adds the VM's name.
//!
//! Each message says what failed, on what, and what to do next. Where the underlying error ends
//! the message it is the variant's `#[source]` (printed after it, `: <error>`); where the advice
//! follows it, it is part of the message and not a source, so that it is not printed twice.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::exit;

fn dur(d: &Duration) -> String {
    vmsilo_config::measure::format_duration(*d)
}

fn pid_note(pid: &Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// What stopped a VM from starting (everything it created is undone).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A check of the host or the guest's files failed.
    #[error(transparent)]
    Check(#[from] super::checks::CheckError),
    /// Moving PCI devices to vfio-pci failed.
    #[error(transparent)]
    Vfio(#[from] super::vfio::VfioError),
    /// A program the plan runs is missing.
    #[error("{program} is not installed (not found in PATH): {hint}")]
    NotInstalled {
        /// The program.
        program: String,
        /// Where to get it.
        hint: &'static str,
    },
    /// Blocking the stop signals failed.
    #[error("cannot block signals")]
    BlockSignals(#[source] nix::Error),
    /// The run directory is something else than a directory.
    #[error("the run directory {} is not a directory: remove it, or pass --run-dir", dir.display())]
    RunDirNotDir {
        /// The run directory.
        dir: PathBuf,
    },
    /// The run directory could not be created.
    #[error(
        "cannot create the run directory {}: {error}: run vm-service as root, or pass --run-dir",
        dir.display()
    )]
    CreateRunDir {
        /// The run directory.
        dir: PathBuf,
        /// Why (in the message, before the advice).
        error: io::Error,
    },
    /// The run directory could not be inspected.
    #[error("cannot use the run directory {}", dir.display())]
    UseRunDir {
        /// The run directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another runtime holds the VM's lock.
    #[error(
        "is already running{}: stop it first (vm-stop {vm}, or `vmsilo status {vm}` to see it)",
        pid_note(pid)
    )]
    AlreadyRunning {
        /// The VM.
        vm: String,
        /// The other runtime's pid, when its state file says.
        pid: Option<u32>,
    },
    /// The lock file could not be created.
    #[error(
        "the run directory {run_dir} is not writable: cannot create {}: {error}: run vm-service \
         as root, or pass --run-dir",
        path.display()
    )]
    CreateLock {
        /// The run directory.
        run_dir: String,
        /// The lock file.
        path: PathBuf,
        /// Why (in the message, before the advice).
        error: io::Error,
    },
    /// The state file could not be written.
    #[error("the run directory {run_dir} is not writable: cannot write {}", path.display())]
    WriteState {
        /// The run directory.
        run_dir: String,
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file operation of the preparation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done ("create", "remove the stale socket", ...).
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something that is not ours sits where the runtime must put a file.
    #[error("{} exists and is not {expected}: refusing to remove it; move it away", path.display())]
    InTheWay {
        /// The path.
        path: PathBuf,
        /// What the runtime expected there ("a socket", "a directory", ...).
        expected: &'static str,
    },
    /// A socket of the plan is still served by a process.
    #[error(
        "socket {} is in use by a running process (another VMM or backend of this VM?): stop it \
         first",
        path.display()
    )]
    SocketInUse {
        /// The socket.
        path: PathBuf,
    },
    /// qemu-img could not be run.
    #[error("cannot run qemu-img")]
    RunQemuImg(#[source] io::Error),
    /// qemu-img failed to create the overlay.
    #[error("cannot create the overlay {}: qemu-img failed ({status}): {stderr}", path.display())]
    CreateOverlay {
        /// The overlay.
        path: PathBuf,
        /// Its exit status, described.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// The shared home could not be prepared.
    #[error("cannot prepare the shared home: {0}")]
    Home(super::home::HomeError),
    /// A directory could not be given to its owner.
    #[error("cannot give {} to uid {uid} gid {gid} (mode {mode:o})", dir.display())]
    GiveDir {
        /// The directory.
        dir: PathBuf,
        /// The owner.
        uid: u32,
        /// The group.
        gid: u32,
        /// The mode.
        mode: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A gate socket was replaced by something else while the gate started.
    #[error(
        "{path} is not a socket (something replaced it while the gate started): refusing to \
         start the VM"
    )]
    GateSocketReplaced {
        /// The socket.
        path: String,
    },
    /// The waypipe vsock link could not be created.
    #[error("cannot link {} to {target}", link.display())]
    LinkWaypipe {
        /// The link.
        link: PathBuf,
        /// waypipe's socket.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// vm-switch did not create a VM's socket.
    #[error(
        "vm-switch did not create {} within {}: is vm-switch-{network}.service running? \
         (systemctl status vm-switch-{network}.service)",
        socket.display(),
        dur(timeout)
    )]
    VmSwitchTimeout {
        /// The socket.
        socket: PathBuf,
        /// The time it had.
        timeout: Duration,
        /// The vm-switch network.
        network: String,
    },
    /// A stop was requested before the VM was up.
    #[error("stopped while starting")]
    Interrupted,
    /// A process could not be started.
    #[error(transparent)]
    Spawn(#[from] super::procs::SpawnError),
    /// A backend exited before creating its socket.
    #[error(
        "{kind} exited with {status} before creating its socket {} (its messages are above, or \
         in the journal)",
        socket.display()
    )]
    BackendExited {
        /// The backend.
        kind: String,
        /// Its exit status, described.
        status: String,
        /// Its socket.
        socket: PathBuf,
    },
    /// A backend did not create its socket in time.
    #[error("{kind} did not create its socket {} within {}", socket.display(), dur(timeout))]
    BackendTimeout {
        /// The backend.
        kind: String,
        /// Its socket.
        socket: PathBuf,
        /// The time it had.
        timeout: Duration,
    },
    /// The console PTY could not be set up.
    #[error(transparent)]
    Pty(#[from] super::console::PtyError),
    /// The console socket could not be set up.
    #[error("console socket")]
    ConsoleSocket(#[source] io::Error),
    /// A console socket operation failed.
    #[error("cannot {what} {path}")]
    Console {
        /// What was being done.
        what: &'static str,
        /// The socket or link.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The VMM exited before the VM was up.
    #[error(
        "{vmm} exited with {status} before the VM was up (its messages are above, or in \
         `journalctl -u vmsilo-{vm}-vm.service`)"
    )]
    VmmExitedEarly {
        /// The VMM's name.
        vmm: &'static str,
        /// Its exit status, described.
        status: String,
        /// The VM.
        vm: String,
    },
    /// The VMM did not create a socket in time.
    #[error("{vmm} did not create its {what} {} within {}", path.display(), dur(timeout))]
    VmmTimeout {
        /// The VMM's name.
        vmm: &'static str,
        /// Which socket.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The time it had.
        timeout: Duration,
    },
    /// The VMM did not connect its console in time.
    #[error("{vmm} did not connect its console {socket} within {}", dur(timeout))]
    ConsoleTimeout {
        /// The VMM's name.
        vmm: &'static str,
        /// The console socket.
        socket: String,
        /// The time it had.
        timeout: Duration,
    },
}

/// Why a VM that ran ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum EndReason {
    /// crosvm reported a guest reboot (restarted unless it happens too often).
    #[error("the guest rebooted")]
    Rebooted,
    /// The guest rebooted too often.
    #[error("the guest rebooted more than 5 times within a minute: giving up")]
    RebootLoop,
    /// crosvm crashed (its status 33).
    #[error("crosvm crashed (status 33)")]
    CrosvmCrashed,
    /// The guest kernel panicked.
    #[error("the guest kernel panicked")]
    GuestPanic,
    /// The guest's watchdog reset it.
    #[error("the guest's watchdog reset it")]
    Watchdog,
    /// crosvm exited with a status that has no meaning of its own.
    #[error("crosvm exited with status {0}")]
    CrosvmStatus(i32),
    /// The VMM exited while the VM ran.
    #[error("{vmm} exited with {status} while the VM ran (a crash)")]
    VmmCrashed {
        /// The VMM's name.
        vmm: &'static str,
        /// Its exit status, described.
        status: String,
    },
}

impl EndReason {
    /// The runtime's exit status for this ending (see [`exit`]).
    pub fn code(&self) -> u8 {
        match self {
            EndReason::Rebooted | EndReason::RebootLoop => exit::REBOOT_LOOP,
            EndReason::CrosvmCrashed | EndReason::VmmCrashed { .. } => exit::CRASH,
            EndReason::GuestPanic => exit::GUEST_PANIC,
            EndReason::Watchdog => exit::WATCHDOG,
            EndReason::CrosvmStatus(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and its source chain, as `vmsilo:` prints them.
    fn printed(e: &dyn std::error::Error) -> String {
        let mut line = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            line.push_str(&format!(": {s}"));
            src = s.source();
        }
        line
    }

    #[test]
    fn test_start_errors_print_the_error_once_where_it_was() {
        let denied = || io::Error::from_raw_os_error(13);
        let e = StartError::Io {
            what: "remove the stale socket",
            path: "/run/vmsilo/a-qmp.socket".into(),
            source: denied(),
        };
        assert_eq!(
            printed(&e),
            format!(
                "cannot remove the stale socket /run/vmsilo/a-qmp.socket: {}",
                denied()
            )
        );
        let e = StartError::CreateRunDir {
            dir: "/run/x".into(),
            error: denied(),
        };
        assert_eq!(
            printed(&e),
            format!(
                "cannot create the run directory /run/x: {}: run vm-service as root, or pass \
                 --run-dir",
                denied()
            )
        );
        let e = StartError::VmSwitchTimeout {
            socket: "/run/vm-switch/lan/a.sock".into(),
            timeout: Duration::from_secs(30),
            network: "lan".into(),
        };
        assert_eq!(
            printed(&e),
            "vm-switch did not create /run/vm-switch/lan/a.sock within 30s: is \
             vm-switch-lan.service running? (systemctl status vm-switch-lan.service)"
        );
        let e = super::super::RuntimeError::Ended {
            vm: "a".into(),
            reason: EndReason::GuestPanic,
        };
        assert_eq!(printed(&e), "VM \"a\": the guest kernel panicked");
        assert_eq!(e.exit_code(), exit::GUEST_PANIC);
    }
}
