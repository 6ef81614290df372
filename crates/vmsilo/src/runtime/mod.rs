//! The VM runtime: what `vmsilo vm-service <vm>` (under systemd) and `vm-start-debug <vm>` (in
//! a terminal) do with a launch plan.
//!
//! 1. Checks: the guest's kernel, initramfs, disks and shared directories exist; its TAPs
//!    exist; the VMM, the backends and `qemu-img` are installed. Then the VM's PCI devices and
//!    the isolated members of their IOMMU groups are bound to vfio-pci if nothing did it at
//!    boot ([`vfio`]), and every device's IOMMU group must be fully owned by vfio-pci.
//! 2. The run directory (created 0755 if missing), the lock `<vm>.lock` (one runtime per VM)
//!    and the state file `<vm>.state` (read by `vmsilo status`).
//! 3. Stale sockets of the plan are removed; a socket something still listens on, or a
//!    non-socket in its place, stops the start.
//! 4. The qcow2 overlay is recreated with `qemu-img`; the shared home is created from the
//!    template on first use; the vm-switch port files are written and vm-switch's sockets
//!    awaited; the backends are started and their sockets awaited. With `gpu`, the gate's
//!    directory `<run>/<vm>.gate` is created for the user first; vmsilo-gate and (QEMU) waypipe
//!    run as the user without network and with everything but that directory read-only
//!    ([`procs::Identity::Confined`]); once they listen, the directory is given to root and
//!    (QEMU) `<vsock>_6000` is linked to waypipe's socket. A gate that dies is not restarted:
//!    the VM runs on without windows until it is restarted.
//! 5. The console PTY is linked at `<run>/<vm>-console` (not in debug mode, where the console
//!    is this terminal); for crosvm the runtime listens on the console socket first, for QEMU it
//!    connects once QEMU created it. Then the VMM runs; once its console is connected and its
//!    control socket exists, the runtime reports `READY=1` to systemd.
//! 6. A stop signal (SIGTERM from systemd, SIGINT, SIGHUP) presses the guest's ACPI power
//!    button (QMP `system_powerdown`, crosvm `"Powerbtn"`); after `--shutdown-timeout` the VMM
//!    is stopped hard (QMP `quit` / crosvm `"Exit"`, then SIGKILL). A second signal stops hard
//!    at once. A crosvm guest reboot (status 32) starts the VM again (at most 5 times a minute).
//! 7. Whatever happened, everything created is undone: processes stopped, port files, overlay,
//!    sockets, console link, state file and lock removed. A shared home created by a start that
//!    failed before the VM ran is removed too.
//!
//! Steps 1-4 are in `prepare.rs`, 5-7 in `supervise.rs`; this module holds the runtime's state and
//! runs the steps in order (again after a crosvm guest reboot).
//!
//! Exit statuses are in [`exit`] (and `docs/exit-codes.md`).

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmsilo_config::Vm;
use vmsilo_config::plan::LaunchPlan;

pub mod checks;
pub mod console;
pub mod control;
mod error;
pub mod home;
pub mod notify;
pub mod ports;
mod prepare;
pub mod procs;
pub mod signals;
pub mod state;
mod supervise;
pub mod vfio;

pub use error::{EndReason, StartError};
use prepare::{ensure_run_dir, preflight, take_lock};
use procs::Proc;
use signals::Signals;
use state::{Phase, State};

/// Copied into a shared home on first use.
pub const DEFAULT_HOME_TEMPLATE: &str = "/var/lib/vmsilo/home-template";

/// vm-service's exit statuses besides 0 (the guest powered off), 1 (runtime failure) and 2
/// (usage or configuration error).
pub mod exit {
    /// The guest kept rebooting (crosvm: more than 5 reboots within a minute).
    pub const REBOOT_LOOP: u8 = 32;
    /// The VMM crashed: crosvm's status 33, a QEMU that exited non-zero or by a signal while
    /// the VM ran.
    pub const CRASH: u8 = 33;
    /// The guest kernel panicked (crosvm's status 34).
    pub const GUEST_PANIC: u8 = 34;
    /// The guest's watchdog reset it (crosvm's status 36).
    pub const WATCHDOG: u8 = 36;
    /// Stopped on request, but the guest did not power off within the shutdown timeout: the VMM
    /// was stopped hard. Counted as success by the unit (`SuccessExitStatus=37`).
    pub const STOPPED_HARD: u8 = crate::systemd_units::EXIT_STOPPED_HARD;
}

/// Why running a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The VM could not be started (nothing is left behind).
    #[error("VM {vm:?}")]
    Start {
        /// The VM.
        vm: String,
        /// What failed, on what, and what to do.
        #[source]
        error: StartError,
    },
    /// The VM ran and ended abnormally.
    #[error("VM {vm:?}")]
    Ended {
        /// The VM.
        vm: String,
        /// What happened (and the exit status, [`EndReason::code`]).
        #[source]
        reason: EndReason,
    },
}

impl RuntimeError {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::Start { .. } => 1,
            RuntimeError::Ended { reason, .. } => reason.code(),
        }
    }
}

/// Everything the runtime needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The plan.
    pub plan: LaunchPlan,
    /// The VM's configuration (for files and PCI devices).
    pub vm: Vm,
    /// The run directory.
    pub run_dir: String,
    /// Root of sysfs (`/sys`).
    pub sysfs_root: PathBuf,
    /// `isolatedPciDevices`: the devices vfio-pci may take (with the VM's own, the members of
    /// their IOMMU groups that are listed here are moved to vfio-pci at start).
    pub isolated_pci: Vec<vmsilo_config::pci::PciAddress>,
    /// Shared home template.
    pub home_template: PathBuf,
    /// Time the guest gets to power off.
    pub shutdown_timeout: Duration,
    /// Time each socket gets to appear.
    pub socket_timeout: Duration,
    /// `vm-start-debug`: console on this terminal, no PTY, no systemd notification.
    pub debug: bool,
}

/// CTRL+] in `vm-start-debug` and `vm-shell`.
pub const ESCAPE: u8 = 0x1d;

struct Runtime {
    o: RunOptions,
    signals: Signals,
    /// Files to remove at teardown (sockets, port files, overlay, console link).
    files: Vec<PathBuf>,
    backends: Vec<Proc>,
    vmm: Option<Proc>,
    console: Option<UnixStream>,
    pty: Option<console::Pty>,
    created_home: Option<(PathBuf, home::DirId)>,
    /// `<run>/<vm>.user` once prepared (removed at the end).
    user_dir: Option<PathBuf>,
    /// `<run>/<vm>.gate` once created (removed at the end).
    gate_dir: Option<PathBuf>,
    ever_ready: bool,
    stopping: bool,
    state: State,
}

/// Runs the VM until it stops. `Ok(0)` when the guest powered off, `Ok(STOPPED_HARD)` when a
/// requested stop needed a hard stop.
pub fn run(o: RunOptions) -> Result<u8, RuntimeError> {
    let vm = o.plan.vm.clone();
    let fail = |error: StartError| RuntimeError::Start {
        vm: vm.clone(),
        error,
    };
    preflight(&o).map_err(fail)?;
    let signals = Signals::block().map_err(|e| fail(StartError::BlockSignals(e)))?;
    ensure_run_dir(Path::new(&o.run_dir)).map_err(fail)?;
    let lock = take_lock(&o).map_err(fail)?;
    let state = State {
        version: state::STATE_VERSION,
        vm: vm.clone(),
        state: Phase::Starting,
        pid: std::process::id(),
        vmm_pid: None,
        vmm: o.plan.vmm.as_str().to_owned(),
        started_at: state::now(),
        debug: o.debug,
        console: (!o.debug).then(|| o.plan.paths.console.clone()),
    };
    let mut rt = Runtime {
        o,
        signals,
        files: Vec::new(),
        backends: Vec::new(),
        vmm: None,
        console: None,
        pty: None,
        created_home: None,
        user_dir: None,
        gate_dir: None,
        ever_ready: false,
        stopping: false,
        state,
    };
    let state_path = state::state_path(&rt.o.run_dir, &vm);
    let result = match rt.write_state() {
        Ok(()) => rt.run_loop(),
        Err(source) => Err(rt.fail(StartError::WriteState {
            run_dir: rt.o.run_dir.clone(),
            path: state_path.clone(),
            source,
        })),
    };
    rt.teardown();
    for dir in [rt.user_dir.take(), rt.gate_dir.take()]
        .into_iter()
        .flatten()
    {
        // remove_dir_all does not follow symlinks, so what a user process left inside cannot
        // point it elsewhere.
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != ErrorKind::NotFound
        {
            eprintln!("vmsilo: cannot remove {}: {e}", dir.display());
        }
    }
    if result.is_err()
        && !rt.ever_ready
        && let Some((home, id)) = rt.created_home.take()
        && let Err(e) = home::remove_created(&home, id, rt.o.plan.user.uid)
    {
        rt.log(&format!("cannot remove the shared home it created: {e}"));
    }
    remove_file_quiet(&state_path);
    remove_file_quiet(&state_path.with_extension("state.tmp"));
    drop(lock);
    if !rt.o.debug {
        notify::notify("STOPPING=1");
    }
    result
}
fn remove_file_quiet(p: &Path) {
    if let Err(e) = std::fs::remove_file(p)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("vmsilo: cannot remove {}: {e}", p.display());
    }
}

impl Runtime {
    fn fail(&self, error: StartError) -> RuntimeError {
        RuntimeError::Start {
            vm: self.o.plan.vm.clone(),
            error,
        }
    }

    fn log(&self, msg: &str) {
        eprintln!("vmsilo: VM {:?}: {msg}", self.o.plan.vm);
    }

    fn write_state(&mut self) -> std::io::Result<()> {
        state::write(
            &state::state_path(&self.o.run_dir, &self.o.plan.vm),
            &self.state,
        )
    }

    fn set_phase(&mut self, phase: Phase) {
        self.state.state = phase;
        self.state.vmm_pid = self.vmm.as_ref().map(Proc::pid);
        if let Err(e) = self.write_state() {
            self.log(&format!("cannot update the state file: {e}"));
        }
    }

    fn sd_notify(&self, msg: &str) {
        if !self.o.debug {
            notify::notify(msg);
        }
    }

    fn run_loop(&mut self) -> Result<u8, RuntimeError> {
        let mut reboots: Vec<Instant> = Vec::new();
        let mut first = true;
        loop {
            self.sd_notify("STATUS=Preparing");
            self.prepare().map_err(|e| self.fail(e))?;
            if first {
                self.prepare_home().map_err(|e| self.fail(e))?;
                self.prepare_user_dir().map_err(|e| self.fail(e))?;
                first = false;
            }
            self.prepare_backends().map_err(|e| self.fail(e))?;
            let ended = self.run_vmm().map_err(|e| self.fail(e))?;
            match self.outcome(ended) {
                Err(RuntimeError::Ended {
                    reason: EndReason::Rebooted,
                    ..
                }) if !self.stopping => {
                    reboots.retain(|t| t.elapsed() < Duration::from_secs(60));
                    reboots.push(Instant::now());
                    if reboots.len() > 5 {
                        return Err(RuntimeError::Ended {
                            vm: self.o.plan.vm.clone(),
                            reason: EndReason::RebootLoop,
                        });
                    }
                    self.log("the guest rebooted: starting it again");
                    self.teardown();
                    self.set_phase(Phase::Starting);
                }
                other => return other,
            }
        }
    }
}
