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
//! Exit statuses are in [`exit`] (and `docs/exit-codes.md`).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use vmsilo_config::Vm;
use vmsilo_config::model::Vmm;
use vmsilo_config::plan::{ConsoleListener, LaunchPlan, RunAs};

pub mod checks;
pub mod console;
pub mod control;
pub mod home;
pub mod notify;
pub mod ports;
pub mod procs;
pub mod signals;
pub mod state;
pub mod vfio;

use procs::{Identity, Proc, WaitError};
use signals::Signals;
use state::{LockError, Phase, State, VmLock};

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
    #[error("VM {vm:?}: {message}")]
    Start {
        /// The VM.
        vm: String,
        /// What failed, on what, and what to do.
        message: String,
    },
    /// The VM ran and ended abnormally.
    #[error("VM {vm:?}: {message}")]
    Ended {
        /// The VM.
        vm: String,
        /// What happened.
        message: String,
        /// The exit status (see [`exit`]).
        code: u8,
    },
}

impl RuntimeError {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::Start { .. } => 1,
            RuntimeError::Ended { code, .. } => *code,
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

/// How one VMM run ended.
enum Ended {
    Status(ExitStatus),
    StoppedHard,
}

/// Grace period for backends and a VMM being stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a QMP or crosvm control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// CTRL+] in `vm-start-debug` and `vm-shell`.
pub const ESCAPE: u8 = 0x1d;
/// Most console reads (of up to 16 KiB) relayed per wakeup of the runtime's loop.
const CONSOLE_READS_PER_WAKEUP: usize = 64;

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

fn vmm_name(vmm: Vmm) -> &'static str {
    match vmm {
        Vmm::Crosvm => "crosvm",
        Vmm::Qemu => "QEMU",
    }
}

/// Runs the VM until it stops. `Ok(0)` when the guest powered off, `Ok(STOPPED_HARD)` when a
/// requested stop needed a hard stop.
pub fn run(o: RunOptions) -> Result<u8, RuntimeError> {
    let vm = o.plan.vm.clone();
    let fail = |message: String| RuntimeError::Start {
        vm: vm.clone(),
        message,
    };
    preflight(&o).map_err(fail)?;
    let signals = Signals::block().map_err(|e| fail(format!("cannot block signals: {e}")))?;
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
        Err(e) => Err(rt.fail(format!(
            "the run directory {} is not writable: cannot write {}: {e}",
            rt.o.run_dir,
            state_path.display()
        ))),
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

fn preflight(o: &RunOptions) -> Result<(), String> {
    checks::check_guest_files(&o.vm)?;
    checks::check_taps(&o.sysfs_root, &o.vm)?;
    // PCI devices: checked now, moved to vfio-pci only once everything else is known good.
    let devices: Vec<_> = o.vm.pci_devices.iter().map(|d| d.address).collect();
    let pci = vfio::plan(&o.sysfs_root, &devices, &o.isolated_pci)?;
    if pci.rebinds.is_empty() {
        for d in &devices {
            checks::check_iommu_group(&o.sysfs_root, d)?;
        }
    }
    let mut programs: Vec<&str> = Vec::new();
    if let Some(p) = o.plan.argv.first() {
        programs.push(p);
    }
    programs.extend(
        o.plan
            .backends
            .iter()
            .filter_map(|b| b.argv.first().map(String::as_str)),
    );
    if o.plan.overlay.path.is_some() {
        programs.push("qemu-img");
    }
    for p in programs {
        if checks::find_program(p).is_none() {
            return Err(format!(
                "{p} is not installed (not found in PATH): {}",
                checks::provider(p)
            ));
        }
    }
    if o.plan.vmm == Vmm::Crosvm {
        checks::check_crosvm_pivot_root(&o.plan.argv, Path::new("/var/empty"))?;
    }
    if !pci.rebinds.is_empty() {
        for w in vfio::apply(&pci)? {
            eprintln!(
                "vmsilo: VM {:?}: vfio-pci: wrote {:?} into {}",
                o.plan.vm,
                w.value,
                w.path.display()
            );
        }
        for d in &devices {
            checks::check_iommu_group(&o.sysfs_root, d)?;
        }
    }
    Ok(())
}

fn ensure_run_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "the run directory {} is not a directory: remove it, or pass --run-dir",
            dir.display()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                format!(
                    "cannot create the run directory {}: {e}: run vm-service as root, or pass \
                     --run-dir",
                    dir.display()
                )
            }),
        Err(e) => Err(format!(
            "cannot use the run directory {}: {e}",
            dir.display()
        )),
    }
}

fn take_lock(o: &RunOptions) -> Result<VmLock, String> {
    let vm = &o.plan.vm;
    let path = state::lock_path(&o.run_dir, vm);
    VmLock::take(&path).map_err(|e| match e {
        LockError::Held => {
            let who = state::read(&state::state_path(&o.run_dir, vm))
                .map(|s| format!(" (pid {})", s.pid))
                .unwrap_or_default();
            format!(
                "is already running{who}: stop it first (vm-stop {vm}, or `vmsilo status {vm}` to \
                 see it)"
            )
        }
        LockError::Io(e) => format!(
            "the run directory {} is not writable: cannot create {}: {e}: run vm-service as \
             root, or pass --run-dir",
            o.run_dir,
            path.display()
        ),
    })
}

/// Gives the directory `dir` (a path only root can replace) to `uid`/`gid` with `mode`.
fn give_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .and_then(|()| {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
        })
        .map_err(|e| {
            format!(
                "cannot give {} to uid {uid} gid {gid} (mode {mode:o}): {e}",
                dir.display()
            )
        })
}

fn remove_file_quiet(p: &Path) {
    if let Err(e) = std::fs::remove_file(p)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("vmsilo: cannot remove {}: {e}", p.display());
    }
}

impl Runtime {
    fn fail(&self, message: String) -> RuntimeError {
        RuntimeError::Start {
            vm: self.o.plan.vm.clone(),
            message,
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
            self.remove_stale_sockets().map_err(|m| self.fail(m))?;
            self.create_overlay().map_err(|m| self.fail(m))?;
            if first {
                self.prepare_home().map_err(|m| self.fail(m))?;
                self.prepare_user_dir().map_err(|m| self.fail(m))?;
                first = false;
            }
            self.write_port_files()?;
            self.prepare_gate_dir().map_err(|m| self.fail(m))?;
            self.start_backends()?;
            self.seal_gate_dir().map_err(|m| self.fail(m))?;
            let ended = self.run_vmm()?;
            match self.outcome(ended) {
                Err(reboot) if reboot.exit_code() == exit::REBOOT_LOOP && !self.stopping => {
                    reboots.retain(|t| t.elapsed() < Duration::from_secs(60));
                    reboots.push(Instant::now());
                    if reboots.len() > 5 {
                        return Err(RuntimeError::Ended {
                            vm: self.o.plan.vm.clone(),
                            message: "the guest rebooted more than 5 times within a minute: \
                                      giving up"
                                .into(),
                            code: exit::REBOOT_LOOP,
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

    /// The plan's sockets, with whether each is crosvm's control socket.
    fn plan_sockets(&self) -> Vec<PathBuf> {
        let p = &self.o.plan.paths;
        let mut out: Vec<PathBuf> = [
            Some(&p.console_socket),
            p.control_socket.as_ref(),
            p.qmp_socket.as_ref(),
            p.vsock_socket.as_ref(),
            p.vhost_vsock_socket.as_ref(),
            p.sound_socket.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(p.fs_sockets.values())
        .map(PathBuf::from)
        .collect();
        out.sort();
        out.dedup();
        out
    }

    fn remove_stale_sockets(&mut self) -> Result<(), String> {
        let sockets = self.plan_sockets();
        let mut stale = Vec::new();
        for s in &sockets {
            let meta = match std::fs::symlink_metadata(s) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("cannot check {}: {e}", s.display())),
            };
            if !meta.file_type().is_socket() {
                return Err(format!(
                    "{} exists and is not a socket: refusing to remove it; move it away",
                    s.display()
                ));
            }
            match control::listening(s) {
                Ok(false) => stale.push(s.clone()),
                Ok(true) => {
                    return Err(format!(
                        "socket {} is in use by a running process (another VMM or backend of \
                         this VM?): stop it first",
                        s.display()
                    ));
                }
                Err(e) => return Err(format!("cannot check socket {}: {e}", s.display())),
            }
        }
        for s in stale {
            std::fs::remove_file(&s)
                .map_err(|e| format!("cannot remove the stale socket {}: {e}", s.display()))?;
            self.log(&format!("removed stale socket {}", s.display()));
        }
        let link = PathBuf::from(&self.o.plan.paths.console);
        if let Ok(m) = std::fs::symlink_metadata(&link) {
            if !m.file_type().is_symlink() {
                return Err(format!(
                    "{} exists and is not a console link: refusing to remove it; move it away",
                    link.display()
                ));
            }
            std::fs::remove_file(&link)
                .map_err(|e| format!("cannot remove the stale link {}: {e}", link.display()))?;
        }
        // From here on these are ours: remove them at teardown.
        self.files.extend(sockets);
        Ok(())
    }

    fn create_overlay(&mut self) -> Result<(), String> {
        let Some(path) = self.o.plan.overlay.path.clone() else {
            return Ok(());
        };
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove the old overlay {}: {e}",
                    path.display()
                ));
            }
        }
        self.files.push(path.clone());
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(self.o.plan.overlay.size_bytes.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run qemu-img: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot create the overlay {}: qemu-img failed ({}): {}",
                path.display(),
                procs::describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn prepare_home(&mut self) -> Result<(), String> {
        let Some(home) = vmsilo_config::derive::shared_home_dir(&self.o.vm) else {
            return Ok(());
        };
        let home = PathBuf::from(home);
        let u = &self.o.plan.user;
        // The copy runs as the user in this same program (`vmsilo fill-home`).
        let helper = Path::new("/proc/self/exe");
        match home::prepare(&home, &self.o.home_template, u.uid, u.gid, helper) {
            Ok(home::Prepared::Created(id)) => {
                self.log(&format!(
                    "created the shared home {} for uid {}",
                    home.display(),
                    u.uid
                ));
                self.created_home = Some((home, id));
                Ok(())
            }
            Ok(_) => Ok(()),
            // prepare leaves no half-created home behind.
            Err(e) => Err(format!("cannot prepare the shared home: {e}")),
        }
    }

    /// Creates `<run>/<vm>.user` for the backends that run as the configured user (their
    /// sockets go there: the run directory belongs to root), owned by the user, mode 0700. A
    /// directory left by a crashed run is reused and its owner and mode reset.
    fn prepare_user_dir(&mut self) -> Result<(), String> {
        let Some(dir) = self.o.plan.paths.user_dir.clone().map(PathBuf::from) else {
            return Ok(());
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a directory: refusing to remove it; move it away",
                    dir.display()
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            Err(e) => return Err(format!("cannot check {}: {e}", dir.display())),
        }
        self.user_dir = Some(dir.clone());
        let u = &self.o.plan.user;
        give_dir(&dir, u.uid, u.gid, 0o700)
    }

    /// Creates `<run>/<vm>.gate` afresh for the gate and waypipe, owned by the configured user,
    /// mode 0700: the only directory they may write (their mount namespace has everything
    /// else read-only). What an earlier run left there (stale sockets) is removed first; the
    /// run directory is root's, so the path itself cannot have been replaced.
    fn prepare_gate_dir(&mut self) -> Result<(), String> {
        let Some(dir) = self.o.plan.paths.gate_dir.clone().map(PathBuf::from) else {
            return Ok(());
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("cannot remove the old {}: {e}", dir.display()))?,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a directory: refusing to remove it; move it away",
                    dir.display()
                ));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot check {}: {e}", dir.display())),
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        self.gate_dir = Some(dir.clone());
        let u = &self.o.plan.user;
        give_dir(&dir, u.uid, u.gid, 0o700)?;
        // The gate's state directory stays the user's after the gate directory is sealed.
        if let Some(state) = self.o.plan.paths.gate_state_dir.clone().map(PathBuf::from) {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&state)
                .map_err(|e| format!("cannot create {}: {e}", state.display()))?;
            give_dir(&state, u.uid, u.gid, 0o700)?;
        }
        Ok(())
    }

    /// Once the gate (and waypipe) listen: gives `<run>/<vm>.gate` to root (mode 0755), so that
    /// from now on nobody, the user included, can replace the sockets the VMM and
    /// vhost-device-vsock (both root) connect to, e.g. by a symlink to a root-only socket.
    /// Then checks that they are sockets and (QEMU) links `<vsock>_6000` to waypipe's.
    fn seal_gate_dir(&mut self) -> Result<(), String> {
        let Some(dir) = self.gate_dir.clone() else {
            return Ok(());
        };
        give_dir(
            &dir,
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            0o755,
        )?;
        let p = self.o.plan.paths.clone();
        for s in [&p.gate_socket, &p.waypipe_socket].into_iter().flatten() {
            match std::fs::symlink_metadata(s) {
                Ok(m) if m.file_type().is_socket() => {}
                Ok(_) => {
                    return Err(format!(
                        "{s} is not a socket (something replaced it while the gate started): \
                         refusing to start the VM"
                    ));
                }
                Err(e) => return Err(format!("cannot check {s}: {e}")),
            }
        }
        if let (Some(link), Some(target)) = (&p.waypipe_vsock_link, &p.waypipe_socket) {
            let link = PathBuf::from(link);
            match std::fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() || m.file_type().is_socket() => {
                    std::fs::remove_file(&link)
                        .map_err(|e| format!("cannot remove the stale {}: {e}", link.display()))?;
                }
                Ok(_) => {
                    return Err(format!(
                        "{} exists and is not a socket or link: refusing to remove it; move it \
                         away",
                        link.display()
                    ));
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot check {}: {e}", link.display())),
            }
            self.files.push(link.clone());
            std::os::unix::fs::symlink(target, &link)
                .map_err(|e| format!("cannot link {} to {target}: {e}", link.display()))?;
        }
        Ok(())
    }

    fn write_port_files(&mut self) -> Result<(), RuntimeError> {
        let vm = self.o.plan.vm.clone();
        let ifaces = self.o.plan.interfaces.clone();
        for iface in &ifaces {
            let (Some(sw), Some(text)) = (&iface.vm_switch, ports::port_file(&vm, iface)) else {
                continue;
            };
            let port = PathBuf::from(&sw.port_file);
            if let Some(dir) = port.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| self.fail(format!("cannot create {}: {e}", dir.display())))?;
            }
            let tmp = port.with_extension("port.tmp");
            self.files.push(port.clone());
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, &port))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    self.fail(format!(
                        "cannot write the vm-switch port file {}: {e}",
                        port.display()
                    ))
                })?;
            let socket = PathBuf::from(&sw.socket);
            match procs::wait_for_path(&socket, None, self.o.socket_timeout, &self.signals) {
                Ok(()) => {}
                Err(WaitError::Interrupted) => {
                    return Err(self.fail("stopped while starting".into()));
                }
                Err(_) => {
                    return Err(self.fail(format!(
                        "vm-switch did not create {} within {}: is vm-switch-{net}.service \
                         running? (systemctl status vm-switch-{net}.service)",
                        socket.display(),
                        vmsilo_config::measure::format_duration(self.o.socket_timeout),
                        net = sw.network,
                    )));
                }
            }
        }
        Ok(())
    }

    fn start_backends(&mut self) -> Result<(), RuntimeError> {
        let backends = self.o.plan.backends.clone();
        for b in &backends {
            let (uid, gid) = (self.o.plan.user.uid, self.o.plan.user.gid);
            let writable = b.sandbox.as_ref().map(|s| PathBuf::from(&s.writable_dir));
            let who = match (b.run_as, &writable, &b.sandbox) {
                (RunAs::Root, _, _) => Identity::Inherit,
                (RunAs::User, Some(w), Some(s)) => Identity::Confined {
                    uid,
                    gid,
                    writable: w,
                    hidden: &s.hidden,
                },
                (RunAs::User, _, _) => Identity::User { uid, gid },
            };
            let argv = resolve_sound_argv(b);
            let proc = procs::spawn(&b.kind, &argv, &b.env, who).map_err(|m| self.fail(m))?;
            self.backends.push(proc);
            let socket = PathBuf::from(&b.socket);
            let timeout = self.o.socket_timeout;
            let proc = self.backends.last_mut().expect("just pushed");
            match procs::wait_for_path(&socket, Some(proc), timeout, &self.signals) {
                Ok(()) => {}
                Err(WaitError::Exited(s)) => {
                    return Err(self.fail(format!(
                        "{} exited with {} before creating its socket {} (its messages are \
                         above, or in the journal)",
                        b.kind,
                        procs::describe(s),
                        socket.display()
                    )));
                }
                Err(WaitError::Timeout) => {
                    return Err(self.fail(format!(
                        "{} did not create its socket {} within {}",
                        b.kind,
                        socket.display(),
                        vmsilo_config::measure::format_duration(timeout)
                    )));
                }
                Err(WaitError::Interrupted) => {
                    return Err(self.fail("stopped while starting".into()));
                }
            }
        }
        Ok(())
    }

    /// Starts the VMM, connects its console, reports readiness and relays until it exits.
    fn run_vmm(&mut self) -> Result<Ended, RuntimeError> {
        let paths = self.o.plan.paths.clone();
        let name = vmm_name(self.o.plan.vmm);
        if !self.o.debug {
            let u = &self.o.plan.user;
            let pty = console::Pty::open(u.uid, u.gid).map_err(|m| self.fail(m))?;
            let link = PathBuf::from(&paths.console);
            self.files.push(link.clone());
            console::link(&pty.path, &link).map_err(|e| {
                self.fail(format!(
                    "cannot link the console at {}: {e}",
                    link.display()
                ))
            })?;
            self.pty = Some(pty);
        }
        let listener = match paths.console_listener {
            ConsoleListener::Runtime => {
                let l = UnixListener::bind(&paths.console_socket).map_err(|e| {
                    self.fail(format!(
                        "cannot listen on the console socket {}: {e}",
                        paths.console_socket
                    ))
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| self.fail(format!("console socket: {e}")))?;
                Some(l)
            }
            ConsoleListener::Vmm => None,
        };
        let argv = self.o.plan.argv.clone();
        let vmm = procs::spawn(name, &argv, &Default::default(), Identity::Inherit)
            .map_err(|m| self.fail(m))?;
        self.vmm = Some(vmm);
        self.set_phase(Phase::Starting);
        self.sd_notify("STATUS=Starting the VMM");

        let stream = self.connect_console(listener, &paths.console_socket)?;
        stream
            .set_nonblocking(true)
            .map_err(|e| self.fail(format!("console socket: {e}")))?;
        self.console = Some(stream);
        let control = paths
            .control_socket
            .as_ref()
            .or(paths.qmp_socket.as_ref())
            .map(PathBuf::from);
        if let Some(c) = control {
            self.wait_vmm_path(&c, "control socket")?;
        }
        self.ever_ready = true;
        self.set_phase(Phase::Running);
        self.sd_notify(&format!(
            "READY=1\nSTATUS=Running ({name} pid {})",
            self.vmm.as_ref().map_or(0, Proc::pid)
        ));
        if self.o.debug {
            eprintln!(
                "vmsilo: VM {:?} is running; CTRL+] powers it off (twice: stops it hard)",
                self.o.plan.vm
            );
        }
        Ok(self.supervise())
    }

    fn vmm_exited_early(&mut self, status: ExitStatus) -> RuntimeError {
        let name = vmm_name(self.o.plan.vmm);
        self.fail(format!(
            "{name} exited with {} before the VM was up (its messages are above, or in \
             `journalctl -u vmsilo-{}-vm.service`)",
            procs::describe(status),
            self.o.plan.vm
        ))
    }

    fn wait_vmm_path(&mut self, path: &Path, what: &str) -> Result<(), RuntimeError> {
        let timeout = self.o.socket_timeout;
        let vmm = self.vmm.as_mut().expect("VMM started");
        match procs::wait_for_path(path, Some(vmm), timeout, &self.signals) {
            Ok(()) => Ok(()),
            Err(WaitError::Exited(s)) => Err(self.vmm_exited_early(s)),
            Err(WaitError::Interrupted) => Err(self.fail("stopped while starting".into())),
            Err(WaitError::Timeout) => Err(self.fail(format!(
                "{} did not create its {what} {} within {}",
                vmm_name(self.o.plan.vmm),
                path.display(),
                vmsilo_config::measure::format_duration(timeout)
            ))),
        }
    }

    fn connect_console(
        &mut self,
        listener: Option<UnixListener>,
        socket: &str,
    ) -> Result<UnixStream, RuntimeError> {
        let deadline = Instant::now() + self.o.socket_timeout;
        if listener.is_none() {
            self.wait_vmm_path(Path::new(socket), "console socket")?;
        }
        loop {
            let attempt = match &listener {
                Some(l) => l.accept().map(|(s, _)| s),
                None => UnixStream::connect(socket),
            };
            match attempt {
                Ok(s) => return Ok(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::ConnectionRefused | ErrorKind::NotFound
                    ) => {}
                Err(e) => {
                    return Err(self.fail(format!("cannot connect the console {socket}: {e}")));
                }
            }
            if let Some(s) = self.vmm.as_mut().and_then(Proc::poll) {
                return Err(self.vmm_exited_early(s));
            }
            if self.signals.stop_requested() {
                return Err(self.fail("stopped while starting".into()));
            }
            if Instant::now() >= deadline {
                return Err(self.fail(format!(
                    "{} did not connect its console {socket} within {}",
                    vmm_name(self.o.plan.vmm),
                    vmsilo_config::measure::format_duration(self.o.socket_timeout)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Presses the power button; false if the VMM could not be asked.
    fn power_button(&mut self) -> bool {
        let p = &self.o.plan.paths;
        let result = match (&p.qmp_socket, &p.control_socket) {
            (Some(qmp), _) => {
                control::qmp(Path::new(qmp), "system_powerdown", CONTROL_TIMEOUT).map(|_| ())
            }
            (None, Some(ctl)) => control::crosvm(
                Path::new(ctl),
                vmsilo_vmm::crosvm::Request::Powerbtn,
                CONTROL_TIMEOUT,
            ),
            (None, None) => Err("the VMM has no control socket".into()),
        };
        match result {
            Ok(()) => {
                self.log(&format!(
                    "stopping: ACPI power button pressed; the guest has {} to power off",
                    vmsilo_config::measure::format_duration(self.o.shutdown_timeout)
                ));
                true
            }
            Err(e) => {
                self.log(&format!(
                    "cannot press the power button ({e}): stopping the VMM hard"
                ));
                false
            }
        }
    }

    /// Stops the VMM without the guest: QMP `quit` / crosvm `"Exit"`, then SIGKILL.
    fn hard_stop(&mut self) {
        let p = self.o.plan.paths.clone();
        let asked = match (&p.qmp_socket, &p.control_socket) {
            (Some(qmp), _) => control::qmp(Path::new(qmp), "quit", CONTROL_TIMEOUT).is_ok(),
            (None, Some(ctl)) => control::crosvm(
                Path::new(ctl),
                vmsilo_vmm::crosvm::Request::Exit,
                CONTROL_TIMEOUT,
            )
            .is_ok(),
            _ => false,
        };
        if let Some(vmm) = self.vmm.as_mut() {
            if !asked {
                vmm.signal(nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while vmm.poll().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if vmm.poll().is_none() {
                vmm.stop(Duration::ZERO);
            }
        }
    }

    fn begin_stop(&mut self) -> Instant {
        self.stopping = true;
        self.set_phase(Phase::Stopping);
        self.sd_notify("STOPPING=1\nSTATUS=Stopping: power button pressed");
        if self.power_button() {
            Instant::now() + self.o.shutdown_timeout
        } else {
            Instant::now()
        }
    }

    /// Relays the console until the VMM exits; handles stop requests.
    fn supervise(&mut self) -> Ended {
        let mut handled_stops = 0;
        let mut deadline: Option<Instant> = None;
        let mut stdin_open = self.o.debug;
        let _raw = if self.o.debug {
            crate::term::RawMode::enter(std::io::stdin().as_fd())
        } else {
            None
        };
        let mut console_open = true;
        let mut warned: Vec<bool> = vec![false; self.backends.len()];
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(s) = self.vmm.as_mut().and_then(Proc::poll) {
                // Let the last console output through.
                self.pump_console(&mut buf);
                return Ended::Status(s);
            }
            let mut graphics_gone = false;
            for (i, b) in self.backends.iter_mut().enumerate() {
                if let Some(s) = b.poll()
                    && !warned[i]
                {
                    warned[i] = true;
                    graphics_gone |= b.name == vmsilo_config::plan::GATE || b.name == "waypipe";
                    // Nothing restarts it behind the user's back: a gate that died may have
                    // been broken by the guest, and only the gate may reach the compositor.
                    let what = if b.name == vmsilo_config::plan::GATE || b.name == "waypipe" {
                        format!(
                            "the VM's windows are gone and no new one can open (the VM keeps \
                             running without graphics): `vm-stop {vm}` and `vm-start {vm}` \
                             restore them",
                            vm = self.o.plan.vm
                        )
                    } else {
                        "its device stops working until the VM restarts".to_owned()
                    };
                    eprintln!(
                        "vmsilo: VM {:?}: {} exited with {} while the VM runs: {what}",
                        self.o.plan.vm,
                        b.name,
                        procs::describe(s)
                    );
                }
            }
            if graphics_gone {
                self.close_graphics(&mut warned);
            }
            let stops = self.signals.drain();
            if stops > handled_stops {
                handled_stops = stops;
                if self.stopping {
                    self.log("stopping hard (second stop request)");
                    self.hard_stop();
                    return Ended::StoppedHard;
                }
                deadline = Some(self.begin_stop());
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                self.log("the guest did not power off in time: stopping the VMM hard");
                self.hard_stop();
                return Ended::StoppedHard;
            }
            // Wait for console traffic, a signal or a timer tick.
            let (sig_ready, console_ready, input_ready) = {
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                let console_fd = self
                    .console
                    .as_ref()
                    .filter(|_| console_open)
                    .map(|s| s.as_fd());
                let stdin = std::io::stdin();
                let input_fd = if self.o.debug {
                    stdin_open.then(|| stdin.as_fd())
                } else {
                    self.pty.as_ref().map(|p| p.master.as_fd())
                };
                let ci = console_fd.map(|fd| {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    fds.len() - 1
                });
                let ii = input_fd.map(|fd| {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    fds.len() - 1
                });
                let _ = poll(&mut fds, 200u16);
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (ready(Some(0)), ready(ci), ready(ii))
            };
            let _ = sig_ready;
            if console_ready && !self.pump_console(&mut buf) {
                console_open = false;
            }
            if input_ready {
                match self.pump_input(&mut buf) {
                    Input::Ok => {}
                    Input::Closed => stdin_open = false,
                    Input::Escape => {
                        self.signals.request_stop();
                    }
                }
            }
        }
    }

    /// The gate or waypipe died: close the rest of the path too, so that a guest's waypipe
    /// stream is refused at once (vhost-device-vsock answers a connection to a missing
    /// `<vsock>_6000` with a reset) instead of being accepted by a waypipe client that can
    /// no longer reach a gate. `warned` marks the waypipe stopped here as reported.
    fn close_graphics(&mut self, warned: &mut [bool]) {
        if let Some(link) = self.o.plan.paths.waypipe_vsock_link.clone() {
            remove_file_quiet(Path::new(&link));
        }
        for (i, b) in self.backends.iter_mut().enumerate() {
            if b.name == "waypipe" && !warned[i] {
                warned[i] = true;
                b.signal(nix::sys::signal::Signal::SIGTERM);
                eprintln!(
                    "vmsilo: VM {:?}: stopped waypipe: the VM's windows stay closed until it \
                     restarts",
                    self.o.plan.vm
                );
            }
        }
    }

    /// Copies guest output to the PTY (or stdout); false once the console stream closed.
    /// Copies at most [`CONSOLE_READS_PER_WAKEUP`] reads, so that a guest that never stops
    /// writing cannot keep the loop from handling a stop request.
    fn pump_console(&mut self, buf: &mut [u8]) -> bool {
        let Some(stream) = self.console.as_mut() else {
            return false;
        };
        for _ in 0..CONSOLE_READS_PER_WAKEUP {
            match stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if let Some(pty) = self.pty.as_mut() {
                        pty.write_output(&buf[..n]);
                    } else {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Copies user input (PTY or stdin) to the guest.
    fn pump_input(&mut self, buf: &mut [u8]) -> Input {
        let n = if let Some(pty) = self.pty.as_mut() {
            match pty.read_input(buf) {
                Ok(n) => n,
                Err(_) => return Input::Ok,
            }
        } else {
            match std::io::stdin().lock().read(buf) {
                Ok(0) | Err(_) => return Input::Closed,
                Ok(n) => n,
            }
        };
        let mut data = &buf[..n];
        let mut escape = false;
        if self.o.debug
            && let Some(i) = data.iter().position(|&b| b == ESCAPE)
        {
            data = &data[..i];
            escape = true;
        }
        if let Some(stream) = self.console.as_mut() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(data);
            let _ = stream.set_nonblocking(true);
        }
        if escape { Input::Escape } else { Input::Ok }
    }

    fn outcome(&mut self, ended: Ended) -> Result<u8, RuntimeError> {
        let vm = self.o.plan.vm.clone();
        let ended_with = |code: u8, message: String| {
            Err(RuntimeError::Ended {
                vm: vm.clone(),
                message,
                code,
            })
        };
        let status = match ended {
            Ended::StoppedHard => return Ok(exit::STOPPED_HARD),
            Ended::Status(s) => s,
        };
        let name = vmm_name(self.o.plan.vmm);
        match (self.o.plan.vmm, status.code()) {
            (_, Some(0)) => {
                self.log(&format!("{name} exited: the guest powered off"));
                Ok(0)
            }
            (Vmm::Crosvm, Some(32)) => ended_with(exit::REBOOT_LOOP, "the guest rebooted".into()),
            (Vmm::Crosvm, Some(33)) => ended_with(exit::CRASH, "crosvm crashed (status 33)".into()),
            (Vmm::Crosvm, Some(34)) => {
                ended_with(exit::GUEST_PANIC, "the guest kernel panicked".into())
            }
            (Vmm::Crosvm, Some(36)) => {
                ended_with(exit::WATCHDOG, "the guest's watchdog reset it".into())
            }
            (Vmm::Crosvm, Some(c)) => ended_with(1, format!("crosvm exited with status {c}")),
            (_, _) if self.stopping => {
                self.log(&format!(
                    "{name} exited with {} while stopping",
                    procs::describe(status)
                ));
                Ok(0)
            }
            (_, _) => ended_with(
                exit::CRASH,
                format!(
                    "{name} exited with {} while the VM ran (a crash)",
                    procs::describe(status)
                ),
            ),
        }
    }

    /// Stops every process and removes every file this run created.
    fn teardown(&mut self) {
        self.console = None;
        if let Some(mut vmm) = self.vmm.take()
            && vmm.poll().is_none()
        {
            vmm.stop(STOP_GRACE);
        }
        for mut b in self.backends.drain(..).rev() {
            b.stop(STOP_GRACE);
        }
        self.pty = None;
        for f in std::mem::take(&mut self.files) {
            remove_file_quiet(&f);
        }
        for b in &self.o.plan.backends {
            // What the backends may have left: their socket, and virtiofsd's lock file
            // `<socket>.pid`.
            let s = Path::new(&b.socket);
            if s.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_socket())
            {
                remove_file_quiet(s);
            }
            remove_file_quiet(&PathBuf::from(format!("{}.pid", b.socket)));
        }
    }
}

enum Input {
    Ok,
    Closed,
    Escape,
}

/// A backend's argv as started: vhost-device-sound's `--backend pulse` becomes `pipewire`
/// when the user's PipeWire socket (`$XDG_RUNTIME_DIR/pipewire-0`) exists, else `alsa`
/// (ALSA's default device, PulseAudio's on a PulseAudio desktop).
fn resolve_sound_argv(b: &vmsilo_config::plan::Backend) -> Vec<String> {
    let mut argv = b.argv.clone();
    if b.kind != "vhost-device-sound" {
        return argv;
    }
    let pipewire = b
        .env
        .get("XDG_RUNTIME_DIR")
        .is_some_and(|d| Path::new(d).join("pipewire-0").exists());
    if let Some(i) = argv.iter().position(|a| a == "--backend")
        && let Some(v) = argv.get_mut(i + 1)
    {
        *v = vmsilo_config::plan::resolve_sound_backend(v, pipewire).to_owned();
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vmsilo_config::plan::{Backend, RunAs};

    fn sound(runtime_dir: &Path, backend: &str) -> Backend {
        Backend {
            kind: "vhost-device-sound".into(),
            argv: ["vhost-device-sound", "--socket", "/s", "--backend", backend]
                .map(String::from)
                .to_vec(),
            socket: "/s".into(),
            run_as: RunAs::User,
            env: BTreeMap::from([(
                "XDG_RUNTIME_DIR".to_owned(),
                runtime_dir.display().to_string(),
            )]),
            sandbox: None,
        }
    }

    #[test]
    fn test_pulse_becomes_pipewire_only_where_pipewire_listens() {
        let dir = std::env::temp_dir().join(format!("vmsilo-pulse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let last = |b: &Backend| resolve_sound_argv(b).last().cloned();
        assert_eq!(last(&sound(&dir, "pulse")).as_deref(), Some("alsa"));
        std::fs::write(dir.join("pipewire-0"), "").expect("stand-in socket");
        assert_eq!(last(&sound(&dir, "pulse")).as_deref(), Some("pipewire"));
        assert_eq!(last(&sound(&dir, "alsa")).as_deref(), Some("alsa"));
        // Other backends' argv is left alone, even with the same words in it.
        let mut other = sound(&dir, "pulse");
        other.kind = "virtiofsd".into();
        assert_eq!(last(&other).as_deref(), Some("pulse"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
