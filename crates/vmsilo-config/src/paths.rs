//! Runtime paths: where sockets, the console and overlays of a VM live.
//!
//! All of them hang off three directories, which tests and the runtime can relocate
//! ([`Dirs`]); the defaults are `/run/vmsilo`, `/run/vm-switch` and `/var/lib/vmsilo`.
//! `docs/runtime-paths.md` has the full table.

use serde::{Deserialize, Serialize};

use crate::model::Vmm;

/// The directories every runtime path is derived from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dirs {
    /// Sockets and the console of each VM (`/run/vmsilo`).
    pub run_dir: String,
    /// vm-switch networks, one subdirectory each (`/run/vm-switch`).
    pub vm_switch_dir: String,
    /// Persistent state: overlay images (`/var/lib/vmsilo`).
    pub state_dir: String,
}

/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/vmsilo";
/// Default vm-switch directory.
pub const DEFAULT_VM_SWITCH_DIR: &str = "/run/vm-switch";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vmsilo";

/// Longest path a unix socket can have (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

impl Default for Dirs {
    fn default() -> Self {
        Dirs {
            run_dir: DEFAULT_RUN_DIR.into(),
            vm_switch_dir: DEFAULT_VM_SWITCH_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
        }
    }
}

/// Suffix of a VM's crosvm control socket in the run directory: `<vm>-control.socket`.
pub const CONTROL_SOCKET_SUFFIX: &str = "-control.socket";
/// Suffix of a VM's QEMU QMP socket in the run directory: `<vm>-qmp.socket`.
pub const QMP_SOCKET_SUFFIX: &str = "-qmp.socket";
/// File name of vmsilo-balloond's status socket in the run directory.
pub const BALLOOND_STATUS: &str = "balloond.status";

/// The suffix of the socket `vmm` is controlled through (in the run directory).
pub fn vmm_socket_suffix(vmm: Vmm) -> &'static str {
    match vmm {
        Vmm::Crosvm => CONTROL_SOCKET_SUFFIX,
        Vmm::Qemu => QMP_SOCKET_SUFFIX,
    }
}

/// Splits a run-directory file name into the VM name and its VMM when it is a VMM control
/// socket ([`Dirs::control_socket`] or [`Dirs::qmp_socket`]); `None` for other files. The VM
/// name is not checked here (it may be empty).
pub fn parse_vmm_socket_name(file: &str) -> Option<(&str, Vmm)> {
    [Vmm::Crosvm, Vmm::Qemu]
        .into_iter()
        .find_map(|vmm| file.strip_suffix(vmm_socket_suffix(vmm)).map(|n| (n, vmm)))
}

fn join(dir: &str, file: &str) -> String {
    let dir = dir.trim_end_matches('/');
    format!("{dir}/{file}")
}

impl Dirs {
    /// Dirs with the given run directory and the default others.
    pub fn with_run_dir(run_dir: impl Into<String>) -> Self {
        Dirs {
            run_dir: run_dir.into(),
            ..Dirs::default()
        }
    }

    /// `<run>/<vm>-command.socket`: the socket-activated command entry (`vm-run`).
    pub fn command_socket(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}-command.socket"))
    }
    /// `<run>/<vm>-console`: symlink to the console PTY (`vm-shell`).
    pub fn console(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}-console"))
    }
    /// `<run>/<vm>-console.socket`: the VMM's serial console stream, relayed to the PTY.
    pub fn console_socket(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}-console.socket"))
    }
    /// `<run>/<vm>-control.socket`: crosvm's control socket.
    pub fn control_socket(&self, vm: &str) -> String {
        self.vmm_socket(vm, Vmm::Crosvm)
    }
    /// `<run>/<vm>-qmp.socket`: QEMU's QMP socket.
    pub fn qmp_socket(&self, vm: &str) -> String {
        self.vmm_socket(vm, Vmm::Qemu)
    }
    /// The socket `vmm` is controlled through: [`Dirs::control_socket`] or [`Dirs::qmp_socket`]
    /// (vmsilo-balloond finds VMs by these names, [`parse_vmm_socket_name`]).
    pub fn vmm_socket(&self, vm: &str, vmm: Vmm) -> String {
        join(&self.run_dir, &format!("{vm}{}", vmm_socket_suffix(vmm)))
    }
    /// `<run>/<vm>.state`: the runtime's state file (JSON), read by `vmsilo status`.
    pub fn state_file(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}.state"))
    }
    /// `<run>/<vm>.lock`: the lock that keeps a second runtime off the VM.
    pub fn lock_file(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}.lock"))
    }
    /// `<run>/net.lock`: the lock that keeps two `vmsilo net` off the host network.
    pub fn net_lock(&self) -> String {
        join(&self.run_dir, "net.lock")
    }
    /// `<run>/net.json`: what `vmsilo net up` created on the host, for `vmsilo net down`.
    pub fn net_record(&self) -> String {
        join(&self.run_dir, "net.json")
    }
    /// `<run>/balloond.status`: vmsilo-balloond's status socket.
    pub fn balloond_status(&self) -> String {
        join(&self.run_dir, BALLOOND_STATUS)
    }
    /// `<run>/<vm>-vsock.socket`: the hybrid-vsock socket of vhost-device-vsock (QEMU):
    /// connect and send `CONNECT <port>\n`.
    pub fn vsock_socket(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}-vsock.socket"))
    }
    /// `<run>/<vm>-vhost-vsock.socket`: vhost-device-vsock's vhost-user socket (QEMU).
    pub fn vhost_vsock_socket(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}-vhost-vsock.socket"))
    }
    /// `<run>/<vm>.user`: a directory the runtime creates for the VM, owned by the configured
    /// user with mode 0700, for the sockets of backends that run as that user: they cannot
    /// create files in the root-owned run directory.
    pub fn user_dir(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}.user"))
    }
    /// `<run>/<vm>.user/<vm>-sound.socket`: the VM's vhost-user sound socket, the one the VMM
    /// connects to: vhost-device-sound's own, or with `capture = false` the socket of
    /// `vmsilo sound-filter` (both run as the configured user, so the socket lives in
    /// [`Dirs::user_dir`]).
    pub fn sound_socket(&self, vm: &str) -> String {
        join(&self.user_dir(vm), &format!("{vm}-sound.socket"))
    }
    /// `<run>/<vm>.user/<vm>-sound-device.socket`: with `capture = false`, vhost-device-sound's
    /// socket behind `vmsilo sound-filter` (only the filter connects to it).
    pub fn sound_device_socket(&self, vm: &str) -> String {
        join(&self.user_dir(vm), &format!("{vm}-sound-device.socket"))
    }
    /// `<run>/<vm>.gate`: the directory of the VM's vmsilo-gate (and, for QEMU, waypipe). The
    /// runtime creates it owned by the configured user (mode 0700), the only directory those
    /// two may write; once their sockets exist it gives the directory to root (mode 0755), so
    /// that nobody can replace the sockets the VMM and vhost-device-vsock connect to.
    pub fn gate_dir(&self, vm: &str) -> String {
        join(&self.run_dir, &format!("{vm}.gate"))
    }
    /// `<run>/<vm>.gate/wayland-0`: the Wayland socket vmsilo-gate listens on; crosvm's
    /// `--wayland-sock` and QEMU VMs' waypipe client connect to it (never to the compositor).
    pub fn gate_socket(&self, vm: &str) -> String {
        join(&self.gate_dir(vm), "wayland-0")
    }
    /// `<run>/<vm>.gate/state`: the gate's `--state-dir` (its security-context socket, which
    /// only the gate itself connects to). Created with the gate directory, owned by the user,
    /// and still theirs after the gate directory became root's.
    pub fn gate_state_dir(&self, vm: &str) -> String {
        join(&self.gate_dir(vm), "state")
    }
    /// `<run>/<vm>.gate/waypipe.socket`: the socket `waypipe client` listens on (QEMU VMs).
    pub fn waypipe_socket(&self, vm: &str) -> String {
        join(&self.gate_dir(vm), "waypipe.socket")
    }
    /// `<run>/<vm>-vsock.socket_<port>`: where vhost-device-vsock's hybrid vsock connects a
    /// guest's `connect(CID 2, port)`; for the waypipe port, the runtime makes it a symlink to
    /// [`Dirs::waypipe_socket`] once the gate directory is root's.
    pub fn vsock_port_socket(&self, vm: &str, port: u32) -> String {
        format!("{}_{port}", self.vsock_socket(vm))
    }
    /// `<run>/<vm>-fs-<tag>.socket`: virtiofsd's vhost-user socket for one shared directory
    /// (QEMU).
    pub fn fs_socket(&self, vm: &str, tag: &str) -> String {
        join(&self.run_dir, &format!("{vm}-fs-{tag}.socket"))
    }
    /// `<vm-switch>/<net>`: one vm-switch instance's directory.
    pub fn vm_switch_net_dir(&self, net: &str) -> String {
        join(&self.vm_switch_dir, net)
    }
    /// `<vm-switch>/<net>/<vm>.sock`: the vhost-user-net socket vm-switch serves for a VM.
    pub fn vm_switch_socket(&self, net: &str, vm: &str) -> String {
        join(&self.vm_switch_net_dir(net), &format!("{vm}.sock"))
    }
    /// `<vm-switch>/<net>/<vm>.port`: the port description the runtime writes for vm-switch.
    pub fn vm_switch_port_file(&self, net: &str, vm: &str) -> String {
        join(&self.vm_switch_net_dir(net), &format!("{vm}.port"))
    }
    /// `<state>/overlays/<vm>.qcow2`: the ephemeral qcow2 overlay, recreated at each start.
    pub fn overlay_image(&self, vm: &str) -> String {
        join(&self.state_dir, &format!("overlays/{vm}.qcow2"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_default_paths() {
        let d = Dirs::default();
        assert_eq!(
            d.command_socket("banking"),
            "/run/vmsilo/banking-command.socket"
        );
        assert_eq!(d.console("banking"), "/run/vmsilo/banking-console");
        assert_eq!(
            d.console_socket("banking"),
            "/run/vmsilo/banking-console.socket"
        );
        assert_eq!(
            d.control_socket("banking"),
            "/run/vmsilo/banking-control.socket"
        );
        assert_eq!(d.qmp_socket("banking"), "/run/vmsilo/banking-qmp.socket");
        assert_eq!(
            d.vsock_socket("banking"),
            "/run/vmsilo/banking-vsock.socket"
        );
        assert_eq!(
            d.vhost_vsock_socket("banking"),
            "/run/vmsilo/banking-vhost-vsock.socket"
        );
        assert_eq!(d.user_dir("banking"), "/run/vmsilo/banking.user");
        assert_eq!(
            d.sound_socket("banking"),
            "/run/vmsilo/banking.user/banking-sound.socket"
        );
        assert_eq!(d.gate_dir("banking"), "/run/vmsilo/banking.gate");
        assert_eq!(
            d.gate_socket("banking"),
            "/run/vmsilo/banking.gate/wayland-0"
        );
        assert_eq!(
            d.gate_state_dir("banking"),
            "/run/vmsilo/banking.gate/state"
        );
        assert_eq!(
            d.waypipe_socket("banking"),
            "/run/vmsilo/banking.gate/waypipe.socket"
        );
        assert_eq!(
            d.vsock_port_socket("banking", 6000),
            "/run/vmsilo/banking-vsock.socket_6000"
        );
        assert_eq!(
            d.fs_socket("banking", "home"),
            "/run/vmsilo/banking-fs-home.socket"
        );
        assert_eq!(
            d.vm_switch_socket("lan", "banking"),
            "/run/vm-switch/lan/banking.sock"
        );
        assert_eq!(
            d.vm_switch_port_file("lan", "banking"),
            "/run/vm-switch/lan/banking.port"
        );
        assert_eq!(
            d.overlay_image("banking"),
            "/var/lib/vmsilo/overlays/banking.qcow2"
        );
        assert_eq!(d.state_file("banking"), "/run/vmsilo/banking.state");
        assert_eq!(d.lock_file("banking"), "/run/vmsilo/banking.lock");
        assert_eq!(d.net_lock(), "/run/vmsilo/net.lock");
        assert_eq!(d.net_record(), "/run/vmsilo/net.json");
        assert_eq!(d.balloond_status(), "/run/vmsilo/balloond.status");
    }

    /// vmsilo-balloond recognises VMs by [`parse_vmm_socket_name`]: exactly the sockets
    /// [`Dirs`] gives each VMM, and none of the other files in the run directory.
    #[test]
    fn test_recognised_vmm_suffixes_are_the_ones_dirs_produces() {
        let d = Dirs::with_run_dir("/run/x");
        let file = |p: String| p.rsplit('/').next().unwrap_or_default().to_owned();
        for vmm in [Vmm::Crosvm, Vmm::Qemu] {
            let socket = file(d.vmm_socket("banking", vmm));
            assert_eq!(parse_vmm_socket_name(&socket), Some(("banking", vmm)));
        }
        assert_eq!(d.control_socket("a"), d.vmm_socket("a", Vmm::Crosvm));
        assert_eq!(d.qmp_socket("a"), d.vmm_socket("a", Vmm::Qemu));
        let recognised: Vec<&str> = [Vmm::Crosvm, Vmm::Qemu]
            .into_iter()
            .map(vmm_socket_suffix)
            .collect();
        assert_eq!(recognised, [CONTROL_SOCKET_SUFFIX, QMP_SOCKET_SUFFIX]);
        for other in [
            d.command_socket("banking"),
            d.console("banking"),
            d.console_socket("banking"),
            d.vsock_socket("banking"),
            d.vhost_vsock_socket("banking"),
            d.fs_socket("banking", "home"),
            d.state_file("banking"),
            d.lock_file("banking"),
            d.net_lock(),
            d.net_record(),
            d.balloond_status(),
            d.user_dir("banking"),
            d.gate_dir("banking"),
        ] {
            assert_eq!(parse_vmm_socket_name(&file(other.clone())), None, "{other}");
        }
    }

    #[test]
    fn test_relocated_run_dir_tolerates_trailing_slash() {
        let d = Dirs::with_run_dir("/tmp/t/");
        assert_eq!(d.command_socket("a"), "/tmp/t/a-command.socket");
        assert_eq!(d.vm_switch_socket("n", "a"), "/run/vm-switch/n/a.sock");
    }
}
