//! Preparation, steps 1-4 of the runtime (`mod.rs`): the checks before anything starts, the run
//! directory and the lock, stale sockets, the overlay, the shared home, the user's and the gate's
//! directories, the vm-switch port files and the backends.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

use vmsilo_config::model::Vmm;
use vmsilo_config::plan::RunAs;

use super::error::StartError;
use super::procs::{Identity, WaitError};
use super::state::{LockError, VmLock};
use super::{RunOptions, Runtime, checks, control, home, ports, procs, state, vfio};

pub(super) fn preflight(o: &RunOptions) -> Result<(), StartError> {
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
            return Err(StartError::NotInstalled {
                program: p.to_owned(),
                hint: checks::provider(p),
            });
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

pub(super) fn ensure_run_dir(dir: &Path) -> Result<(), StartError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StartError::RunDirNotDir {
            dir: dir.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|error| StartError::CreateRunDir {
                dir: dir.to_owned(),
                error,
            }),
        Err(source) => Err(StartError::UseRunDir {
            dir: dir.to_owned(),
            source,
        }),
    }
}

pub(super) fn take_lock(o: &RunOptions) -> Result<VmLock, StartError> {
    let vm = &o.plan.vm;
    let path = state::lock_path(&o.run_dir, vm);
    VmLock::take(&path).map_err(|e| match e {
        LockError::Held => StartError::AlreadyRunning {
            vm: vm.clone(),
            pid: state::read(&state::state_path(&o.run_dir, vm)).map(|s| s.pid),
        },
        LockError::Io(error) => StartError::CreateLock {
            run_dir: o.run_dir.clone(),
            path,
            error,
        },
    })
}

/// Gives the directory `dir` (a path only root can replace) to `uid`/`gid` with `mode`.
fn give_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), StartError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .and_then(|()| {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
        })
        .map_err(|source| StartError::GiveDir {
            dir: dir.to_owned(),
            uid,
            gid,
            mode,
            source,
        })
}

/// A failed file operation `what` on `path`.
fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.to_owned();
    move |source| StartError::Io { what, path, source }
}

/// Something other than `expected` at `path`.
fn in_the_way(path: &Path, expected: &'static str) -> StartError {
    StartError::InTheWay {
        path: path.to_owned(),
        expected,
    }
}

impl Runtime {
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

    /// What is prepared afresh at every start: stale sockets removed, the overlay created.
    pub(super) fn prepare(&mut self) -> Result<(), StartError> {
        self.remove_stale_sockets()?;
        self.create_overlay()
    }

    /// The vm-switch ports, the gate's directory and the backends, in that order.
    pub(super) fn prepare_backends(&mut self) -> Result<(), StartError> {
        self.write_port_files()?;
        self.prepare_gate_dir()?;
        self.start_backends()?;
        self.seal_gate_dir()
    }

    fn remove_stale_sockets(&mut self) -> Result<(), StartError> {
        let sockets = self.plan_sockets();
        let mut stale = Vec::new();
        for s in &sockets {
            let meta = match std::fs::symlink_metadata(s) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("check", s)(e)),
            };
            if !meta.file_type().is_socket() {
                return Err(in_the_way(s, "a socket"));
            }
            match control::listening(s) {
                Ok(false) => stale.push(s.clone()),
                Ok(true) => return Err(StartError::SocketInUse { path: s.clone() }),
                Err(e) => return Err(io("check socket", s)(e)),
            }
        }
        for s in stale {
            std::fs::remove_file(&s).map_err(io("remove the stale socket", &s))?;
            self.log(&format!("removed stale socket {}", s.display()));
        }
        let link = PathBuf::from(&self.o.plan.paths.console);
        if let Ok(m) = std::fs::symlink_metadata(&link) {
            if !m.file_type().is_symlink() {
                return Err(in_the_way(&link, "a console link"));
            }
            std::fs::remove_file(&link).map_err(io("remove the stale link", &link))?;
        }
        // From here on these are ours: remove them at teardown.
        self.files.extend(sockets);
        Ok(())
    }

    fn create_overlay(&mut self) -> Result<(), StartError> {
        let Some(path) = self.o.plan.overlay.path.clone() else {
            return Ok(());
        };
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("create", dir))?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove the old overlay", &path)(e)),
        }
        self.files.push(path.clone());
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg(self.o.plan.overlay.size_bytes.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(StartError::RunQemuImg)?;
        if !out.status.success() {
            return Err(StartError::CreateOverlay {
                path,
                status: procs::describe(out.status),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    pub(super) fn prepare_home(&mut self) -> Result<(), StartError> {
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
            Err(e) => Err(StartError::Home(e)),
        }
    }

    /// Creates `<run>/<vm>.user` for the backends that run as the configured user (their
    /// sockets go there: the run directory belongs to root), owned by the user, mode 0700. A
    /// directory left by a crashed run is reused and its owner and mode reset.
    pub(super) fn prepare_user_dir(&mut self) -> Result<(), StartError> {
        let Some(dir) = self.o.plan.paths.user_dir.clone().map(PathBuf::from) else {
            return Ok(());
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(in_the_way(&dir, "a directory")),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(io("create", &dir))?;
            }
            Err(e) => return Err(io("check", &dir)(e)),
        }
        self.user_dir = Some(dir.clone());
        let u = &self.o.plan.user;
        give_dir(&dir, u.uid, u.gid, 0o700)
    }

    /// Creates `<run>/<vm>.gate` afresh for the gate and waypipe, owned by the configured user,
    /// mode 0700: the only directory they may write (their mount namespace has everything
    /// else read-only). What an earlier run left there (stale sockets) is removed first; the
    /// run directory is root's, so the path itself cannot have been replaced.
    fn prepare_gate_dir(&mut self) -> Result<(), StartError> {
        let Some(dir) = self.o.plan.paths.gate_dir.clone().map(PathBuf::from) else {
            return Ok(());
        };
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_dir() => {
                std::fs::remove_dir_all(&dir).map_err(io("remove the old", &dir))?;
            }
            Ok(_) => return Err(in_the_way(&dir, "a directory")),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("check", &dir)(e)),
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("create", &dir))?;
        self.gate_dir = Some(dir.clone());
        let u = &self.o.plan.user;
        give_dir(&dir, u.uid, u.gid, 0o700)?;
        // The gate's state directory stays the user's after the gate directory is sealed.
        if let Some(state) = self.o.plan.paths.gate_state_dir.clone().map(PathBuf::from) {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&state)
                .map_err(io("create", &state))?;
            give_dir(&state, u.uid, u.gid, 0o700)?;
        }
        Ok(())
    }

    /// Once the gate (and waypipe) listen: gives `<run>/<vm>.gate` to root (mode 0755), so that
    /// from now on nobody, the user included, can replace the sockets the VMM and
    /// vhost-device-vsock (both root) connect to, e.g. by a symlink to a root-only socket.
    /// Then checks that they are sockets and (QEMU) links `<vsock>_6000` to waypipe's.
    fn seal_gate_dir(&mut self) -> Result<(), StartError> {
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
                Ok(_) => return Err(StartError::GateSocketReplaced { path: s.clone() }),
                Err(e) => return Err(io("check", Path::new(s))(e)),
            }
        }
        if let (Some(link), Some(target)) = (&p.waypipe_vsock_link, &p.waypipe_socket) {
            let link = PathBuf::from(link);
            match std::fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() || m.file_type().is_socket() => {
                    std::fs::remove_file(&link).map_err(io("remove the stale", &link))?;
                }
                Ok(_) => return Err(in_the_way(&link, "a socket or link")),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io("check", &link)(e)),
            }
            self.files.push(link.clone());
            std::os::unix::fs::symlink(target, &link).map_err(|source| {
                StartError::LinkWaypipe {
                    link: link.clone(),
                    target: target.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    fn write_port_files(&mut self) -> Result<(), StartError> {
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
                    .map_err(io("create", dir))?;
            }
            let tmp = port.with_extension("port.tmp");
            self.files.push(port.clone());
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, &port))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    io("write the vm-switch port file", &port)(e)
                })?;
            let socket = PathBuf::from(&sw.socket);
            match procs::wait_for_path(&socket, None, self.o.socket_timeout, &self.signals) {
                Ok(()) => {}
                Err(WaitError::Interrupted) => return Err(StartError::Interrupted),
                Err(_) => {
                    return Err(StartError::VmSwitchTimeout {
                        socket,
                        timeout: self.o.socket_timeout,
                        network: sw.network.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn start_backends(&mut self) -> Result<(), StartError> {
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
            let proc = procs::spawn(&b.kind, &argv, &b.env, who).map_err(StartError::Spawn)?;
            self.backends.push(proc);
            let socket = PathBuf::from(&b.socket);
            let timeout = self.o.socket_timeout;
            let proc = self.backends.last_mut().expect("just pushed");
            match procs::wait_for_path(&socket, Some(proc), timeout, &self.signals) {
                Ok(()) => {}
                Err(WaitError::Exited(s)) => {
                    return Err(StartError::BackendExited {
                        kind: b.kind.clone(),
                        status: procs::describe(s),
                        socket,
                    });
                }
                Err(WaitError::Timeout) => {
                    return Err(StartError::BackendTimeout {
                        kind: b.kind.clone(),
                        socket,
                        timeout,
                    });
                }
                Err(WaitError::Interrupted) => return Err(StartError::Interrupted),
            }
        }
        Ok(())
    }
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
