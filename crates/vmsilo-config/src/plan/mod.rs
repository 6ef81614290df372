//! Launch plans: a validated configuration in, everything needed to start one VM out.
//!
//! A [`LaunchPlan`] holds the VMM's argv, the vhost-user backends to start first, every runtime
//! path, the derived network values and the kernel parameters. It is plain data: the runtime
//! (`vmsilo vm-service`) executes it, `vmsilo plan` prints it, and `vmsilo plan --json` emits it
//! for other tools. The JSON schema is documented in `docs/runtime-paths.md`.
//!
//! Building a plan does no I/O: the host user's uid/gid and the directories come in through
//! [`PlanOptions`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::derive::{self, IfaceInfo};
use crate::model::{InterfaceType, OverlayType, Vm, Vmm};
use crate::paths::{Dirs, MAX_SOCKET_PATH};
use crate::validate::ValidConfig;

mod crosvm;
pub(crate) mod qemu;
mod render;

pub use qemu::QEMU;
pub use render::{render_text, shell_quote};

/// Version of the plan's JSON form; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Queue size announced for vm-switch ports. crosvm offers the guest `max-queue-size` from
/// `--vhost-user` (default 32768, `Queue::MAX_SIZE`), and rust-vmm's vhost-user-backend refuses a
/// `SET_VRING_NUM` above its own maximum, so the size is passed explicitly.
pub const VM_SWITCH_QUEUE_SIZE: u32 = 256;

/// The default GPU options (`gpu = true`).
pub const DEFAULT_GPU_OPTIONS: &str = "context-types=cross-domain:virgl2";

/// The gate's program (`crates/vmsilo-gate`), looked up in `PATH`.
pub const GATE: &str = "vmsilo-gate";

pub use crate::derive::{WAYPIPE_VSOCK_PORT, kernel_cmdline};

/// Inputs of a plan that are not in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Where runtime files live.
    pub dirs: Dirs,
    /// The configured user's uid (shared-home mapping, sound backend).
    pub uid: u32,
    /// The configured user's primary gid.
    pub gid: u32,
    /// The user's Wayland socket for `--wayland-sock` (default `/run/user/<uid>/wayland-0`).
    pub wayland_socket: Option<String>,
}

impl PlanOptions {
    /// Default directories for the user `uid`/`gid`.
    pub fn new(uid: u32, gid: u32) -> Self {
        PlanOptions {
            dirs: Dirs::default(),
            uid,
            gid,
            wayland_socket: None,
        }
    }

    /// The user's runtime directory, `/run/user/<uid>`.
    pub fn user_runtime_dir(&self) -> String {
        format!("/run/user/{}", self.uid)
    }

    /// vmsilo-clipd's socket, `/run/user/<uid>/vmsilo-clipd.socket` (the user's daemon).
    pub fn clipd_socket(&self) -> String {
        format!("{}/vmsilo-clipd.socket", self.user_runtime_dir())
    }

    /// The Wayland socket the GPU's cross-domain context connects to.
    pub fn wayland_socket(&self) -> String {
        self.wayland_socket
            .clone()
            .unwrap_or_else(|| format!("{}/wayland-0", self.user_runtime_dir()))
    }
}

/// Why a plan could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No VM has that name.
    #[error("no VM called {name:?}{}", unknown_vm_hint(suggestion.as_deref(), known))]
    UnknownVm {
        /// The name asked for.
        name: String,
        /// The closest existing name.
        suggestion: Option<String>,
        /// Every VM the configuration has (named when there is no close one).
        known: Vec<String>,
    },
    /// The VM is in the file but was left out for its own problems
    /// ([`crate::load_str_lenient`]).
    #[error(
        "VM {name:?} is left out: its configuration is invalid (`vmsilo check` lists every \
         problem; fix them and run `systemctl daemon-reload`):\n{problems}"
    )]
    LeftOut {
        /// The VM.
        name: String,
        /// Its problems, one per line.
        problems: String,
    },
    /// A derived socket path does not fit in `sun_path`.
    #[error(
        "VM {vm:?}: socket path {path:?} is {} bytes; unix sockets allow {MAX_SOCKET_PATH}: use a shorter run directory or VM name",
        path.len()
    )]
    SocketPathTooLong {
        /// The VM.
        vm: String,
        /// The path.
        path: String,
    },
}

/// Who listens on the console socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsoleListener {
    /// The runtime listens before starting the VMM, which connects (crosvm `unix-stream`).
    Runtime,
    /// The VMM listens; the runtime connects after starting it (QEMU `server=on`).
    Vmm,
}

/// Every runtime path of a VM. Absent entries do not apply to this VMM or configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPaths {
    /// `<run>/<vm>-command.socket`.
    pub command_socket: String,
    /// `<run>/<vm>-console`, symlink to the console PTY the runtime creates.
    pub console: String,
    /// `<run>/<vm>-console.socket`, the VMM's serial stream.
    pub console_socket: String,
    /// Who listens on `consoleSocket`.
    pub console_listener: ConsoleListener,
    /// crosvm control socket.
    pub control_socket: Option<String>,
    /// QEMU QMP socket.
    pub qmp_socket: Option<String>,
    /// Hybrid-vsock socket (QEMU): `CONNECT <port>\n`.
    pub vsock_socket: Option<String>,
    /// vhost-device-vsock's vhost-user socket (QEMU).
    pub vhost_vsock_socket: Option<String>,
    /// vhost-device-sound's socket (in `userDir`).
    pub sound_socket: Option<String>,
    /// `<run>/<vm>.user`: created by the runtime, owned by the configured user (mode 0700),
    /// when a backend runs as that user; holds that backend's socket.
    pub user_dir: Option<String>,
    /// `<run>/<vm>.gate` (with `gpu`): the gate's (and waypipe's) directory, created by the
    /// runtime owned by the configured user (0700) and given to root (0755) once
    /// `gateSocket` (and `waypipeSocket`) exist.
    pub gate_dir: Option<String>,
    /// `<run>/<vm>.gate/wayland-0` (with `gpu`): vmsilo-gate's Wayland socket, the only one
    /// the VMM or waypipe is given.
    pub gate_socket: Option<String>,
    /// `<run>/<vm>.gate/state` (with `gpu`): the gate's `--state-dir`, created with
    /// `gateDir` and left to the user when `gateDir` becomes root's.
    pub gate_state_dir: Option<String>,
    /// `<run>/<vm>.gate/waypipe.socket` (QEMU with `gpu`): `waypipe client`'s socket.
    pub waypipe_socket: Option<String>,
    /// `<run>/<vm>-vsock.socket_6000` (QEMU with `gpu`): the hybrid-vsock path of
    /// [`WAYPIPE_VSOCK_PORT`]; a symlink to `waypipeSocket` the runtime creates after the gate
    /// directory became root's.
    pub waypipe_vsock_link: Option<String>,
    /// virtiofsd sockets by tag (QEMU).
    pub fs_sockets: BTreeMap<String, String>,
    /// vm-switch ports of this VM.
    pub vm_switch: Vec<VmSwitchPort>,
    /// The qcow2 overlay image, recreated at each start.
    pub overlay: Option<String>,
}

/// One vm-switch port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSwitchPort {
    /// Network name.
    pub network: String,
    /// The network's directory, `<vm-switch>/<net>`.
    pub dir: String,
    /// The vhost-user socket vm-switch serves, `<dir>/<vm>.sock`.
    pub socket: String,
    /// The port file the runtime writes, `<dir>/<vm>.port`.
    pub port_file: String,
}

/// A process the runtime starts before the VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// `vhost-device-sound`, `virtiofsd` or `vhost-device-vsock`.
    pub kind: String,
    /// The command line (`argv[0]` is the program name, looked up in `PATH`).
    pub argv: Vec<String>,
    /// The vhost-user socket it listens on; the VMM connects once it exists.
    pub socket: String,
    /// Whether it runs as root or as the configured user.
    pub run_as: RunAs,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Confinement beyond the identity (the gate and waypipe), or none.
    pub sandbox: Option<BackendSandbox>,
}

/// How the runtime confines a backend that handles guest data with the user's rights: no
/// network (a fresh network namespace with only a down loopback) and a private mount namespace
/// where everything but `writableDir` is read-only and `hidden` directories are empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendSandbox {
    /// The only directory mounted writable (the gate directory).
    pub writable_dir: String,
    /// Directories covered by an empty read-only tmpfs (those that exist): the user's files
    /// and, for waypipe, the user's runtime directory with their session's sockets (the
    /// compositor's, D-Bus, PipeWire, agents), which a read-only mount would still let it
    /// connect to.
    pub hidden: Vec<String>,
}

/// Directories no confined backend needs: the users' files.
const HIDDEN_DIRS: &[&str] = &["/home", "/root"];

/// A sandbox writable in `writable`, hiding `extra` and [`HIDDEN_DIRS`], except a directory
/// holding something it needs (`keep`, e.g. the compositor's socket).
pub(crate) fn sandbox(writable: String, extra: &[String], keep: &[&str]) -> BackendSandbox {
    let hidden = HIDDEN_DIRS
        .iter()
        .map(|d| (*d).to_owned())
        .chain(extra.iter().cloned())
        .filter(|h| {
            let h = std::path::Path::new(h);
            !std::path::Path::new(&writable).starts_with(h)
                && !keep.iter().any(|k| std::path::Path::new(k).starts_with(h))
        })
        .collect();
    BackendSandbox {
        writable_dir: writable,
        hidden,
    }
}

/// The identity a backend runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunAs {
    /// root (like the VMM service).
    Root,
    /// The configured `user` (needs their PipeWire session).
    User,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRoute {
    /// Destination prefix.
    pub dest: String,
    /// Gateway.
    pub via: String,
}

/// TAP details of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanTap {
    /// Host TAP name.
    pub name: String,
    /// Host-side address with prefix.
    pub host_address: Option<String>,
    /// Bridge the TAP joins.
    pub bridge: Option<String>,
}

/// vm-switch details of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanVmSwitch {
    /// Network name.
    pub network: String,
    /// vhost-user socket.
    pub socket: String,
    /// Port file the runtime writes.
    pub port_file: String,
    /// Whether this port receives broadcasts.
    pub receive_broadcast: bool,
    /// Prefixes this VM routes for its peers.
    pub routes: Vec<String>,
}

/// An interface with everything derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanInterface {
    /// Guest-visible name.
    pub name: String,
    /// Position in name order.
    pub index: usize,
    /// `tap` or `vm-switch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// MAC address.
    pub mac: String,
    /// TAP details, for TAP interfaces.
    pub tap: Option<PlanTap>,
    /// vm-switch details, for vm-switch interfaces.
    pub vm_switch: Option<PlanVmSwitch>,
    /// DHCP in the guest.
    pub dhcp: bool,
    /// Static addresses (IPv4 then IPv6) with prefix.
    pub addresses: Vec<String>,
    /// Static routes (IPv4 then IPv6).
    pub routes: Vec<PlanRoute>,
}

/// Idle shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanAutoShutdown {
    /// Whether it is on.
    pub enable: bool,
    /// Idle seconds.
    pub after_seconds: u64,
}

/// The root overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanOverlay {
    /// `qcow2` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Size as configured (`10g`).
    pub size: String,
    /// Size in bytes (for `qemu-img create`).
    pub size_bytes: u64,
    /// The qcow2 image (absent for tmpfs).
    pub path: Option<String>,
    /// The guest device of the qcow2 image.
    pub guest_device: Option<String>,
}

/// The configured user, resolved by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanUser {
    /// User name (`user`).
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Everything needed to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchPlan {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The VM's name.
    pub vm: String,
    /// The VMM.
    pub vmm: Vmm,
    /// The VMM's full argv; `argv[0]` is `crosvm` or `qemu-system-x86_64`.
    pub argv: Vec<String>,
    /// Backends to start, in order, before the VMM.
    pub backends: Vec<Backend>,
    /// Runtime paths.
    pub paths: PlanPaths,
    /// The guest's vsock CID.
    pub vsock_cid: u32,
    /// The kernel parameters: for crosvm vmsilo's own and the VM's (crosvm adds `root=` and
    /// `console=`); for QEMU the whole `-append` line.
    pub kernel_params: Vec<String>,
    /// Interfaces in name order.
    pub interfaces: Vec<PlanInterface>,
    /// Idle shutdown.
    pub auto_shutdown: PlanAutoShutdown,
    /// The root overlay.
    pub overlay: PlanOverlay,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Window colour, `#rrggbb`.
    pub color: String,
    /// Start at boot.
    pub auto_start: bool,
    /// VMs to start first.
    pub depends_on: Vec<String>,
    /// The configured user (backends with `runAs = "user"` run as them).
    pub user: PlanUser,
    /// argv split into option groups, for display only.
    #[serde(skip)]
    pub argv_groups: Vec<Vec<String>>,
}

/// What to try instead of an unknown VM: the closest name, else the names there are.
fn unknown_vm_hint(suggestion: Option<&str>, known: &[String]) -> String {
    match (suggestion, known) {
        (Some(s), _) => format!(" (did you mean {s:?}?)"),
        (None, []) => ": the configuration has no VMs".to_owned(),
        (None, names) => {
            let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
            format!(": the configuration has {}", list.join(", "))
        }
    }
}

fn unknown_vm(cfg: &ValidConfig, name: &str) -> PlanError {
    if let Some(l) = cfg.left_out_vm(name) {
        return PlanError::LeftOut {
            name: name.to_owned(),
            problems: l.problems.to_string(),
        };
    }
    let names: Vec<&str> = cfg.nixos_vms.iter().map(|v| v.name.as_str()).collect();
    PlanError::UnknownVm {
        name: name.to_owned(),
        suggestion: crate::diag::did_you_mean(name, &names).map(str::to_owned),
        known: names.iter().map(|n| (*n).to_owned()).collect(),
    }
}

/// The VM called `name`, or [`PlanError::UnknownVm`] with the closest name as a suggestion
/// (or, when none is close, the names there are).
pub fn find_vm<'c>(cfg: &'c ValidConfig, name: &str) -> Result<&'c Vm, PlanError> {
    cfg.vm(name).ok_or_else(|| unknown_vm(cfg, name))
}

/// Builds the plan for VM `name`.
pub fn build(cfg: &ValidConfig, name: &str, opts: &PlanOptions) -> Result<LaunchPlan, PlanError> {
    let vm = find_vm(cfg, name)?;
    let cid = cfg.cid(name).ok_or_else(|| unknown_vm(cfg, name))?;
    let mut plan = common(vm, cid, opts);
    plan.user.name = cfg.user.clone();
    match vm.vmm {
        Vmm::Crosvm => crosvm::fill(cfg, vm, opts, &mut plan),
        Vmm::Qemu => qemu::fill(cfg, vm, opts, &mut plan),
    }
    plan.argv = plan.argv_groups.iter().flatten().cloned().collect();
    let user_dir = opts.dirs.user_dir(name);
    plan.paths.user_dir = plan
        .backends
        .iter()
        .any(|b| b.run_as == RunAs::User && b.sandbox.is_none())
        .then_some(user_dir);
    check_socket_paths(&plan)?;
    Ok(plan)
}

fn interface_plan(vm: &Vm, i: &IfaceInfo<'_>, dirs: &Dirs) -> PlanInterface {
    let iface = i.iface;
    PlanInterface {
        name: i.name.to_owned(),
        index: i.index,
        kind: iface.kind.as_str().to_owned(),
        mac: i.mac.to_string(),
        tap: i.tap_name.as_ref().map(|t| PlanTap {
            name: t.clone(),
            host_address: iface.tap.host_address.map(|a| a.to_string()),
            bridge: iface.tap.bridge.clone(),
        }),
        vm_switch: match (&iface.kind, &iface.vm_network.name) {
            (InterfaceType::VmSwitch, Some(net)) => Some(PlanVmSwitch {
                network: net.clone(),
                socket: dirs.vm_switch_socket(net, &vm.name),
                port_file: dirs.vm_switch_port_file(net, &vm.name),
                receive_broadcast: iface.vm_network.receive_broadcast,
                routes: iface
                    .vm_network
                    .routes
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            }),
            _ => None,
        },
        dhcp: iface.dhcp,
        addresses: iface
            .addresses
            .iter()
            .chain(&iface.v6_addresses)
            .map(ToString::to_string)
            .collect(),
        routes: iface
            .routes
            .iter()
            .chain(&iface.v6_routes)
            .map(|(d, r)| PlanRoute {
                dest: d.to_string(),
                via: r.via.to_string(),
            })
            .collect(),
    }
}

/// The VMM-independent part of a plan.
fn common(vm: &Vm, cid: u32, opts: &PlanOptions) -> LaunchPlan {
    let d = &opts.dirs;
    let interfaces: Vec<PlanInterface> = derive::interfaces(vm)
        .iter()
        .map(|i| interface_plan(vm, i, d))
        .collect();
    let vm_switch = interfaces
        .iter()
        .filter_map(|i| i.vm_switch.as_ref())
        .map(|s| VmSwitchPort {
            network: s.network.clone(),
            dir: d.vm_switch_net_dir(&s.network),
            socket: s.socket.clone(),
            port_file: s.port_file.clone(),
        })
        .collect();
    let qcow2 = vm.root_overlay.kind == OverlayType::Qcow2;
    LaunchPlan {
        schema_version: SCHEMA_VERSION,
        vm: vm.name.clone(),
        vmm: vm.vmm,
        argv: Vec::new(),
        backends: Vec::new(),
        paths: PlanPaths {
            command_socket: d.command_socket(&vm.name),
            console: d.console(&vm.name),
            console_socket: d.console_socket(&vm.name),
            console_listener: ConsoleListener::Runtime,
            control_socket: None,
            qmp_socket: None,
            vsock_socket: None,
            vhost_vsock_socket: None,
            sound_socket: vm.sound.enabled.then(|| d.sound_socket(&vm.name)),
            user_dir: None,
            gate_dir: vm.gpu.enabled.then(|| d.gate_dir(&vm.name)),
            gate_socket: vm.gpu.enabled.then(|| d.gate_socket(&vm.name)),
            gate_state_dir: vm.gpu.enabled.then(|| d.gate_state_dir(&vm.name)),
            waypipe_socket: None,
            waypipe_vsock_link: None,
            fs_sockets: BTreeMap::new(),
            vm_switch,
            overlay: qcow2.then(|| d.overlay_image(&vm.name)),
        },
        vsock_cid: cid,
        kernel_params: derive::kernel_params(vm),
        interfaces,
        auto_shutdown: PlanAutoShutdown {
            enable: vm.auto_shutdown.enable,
            after_seconds: vm.auto_shutdown.after,
        },
        overlay: PlanOverlay {
            kind: vm.root_overlay.kind.as_str().to_owned(),
            size: vm.root_overlay.size.to_string(),
            size_bytes: vm.root_overlay.size.bytes(),
            path: qcow2.then(|| d.overlay_image(&vm.name)),
            guest_device: qcow2.then(|| derive::OVERLAY_DEVICE.to_owned()),
        },
        memory_mib: vm.memory,
        cpus: vm.cpus,
        color: vm.color.hex(),
        auto_start: vm.auto_start,
        depends_on: vm.depends_on.clone(),
        user: PlanUser {
            name: String::new(),
            uid: opts.uid,
            gid: opts.gid,
        },
        argv_groups: Vec::new(),
    }
}

/// Appends user-supplied extra arguments to the display groups: a flag starts a group, and the
/// values after it join it (`-rtc base=utc` on one line).
fn push_extra<'a>(groups: &mut Vec<Vec<String>>, args: impl IntoIterator<Item = &'a String>) {
    let mut open = false;
    for a in args {
        match groups.last_mut() {
            Some(last) if open && !a.starts_with('-') => last.push(a.clone()),
            _ => {
                open = a.starts_with('-');
                groups.push(vec![a.clone()]);
            }
        }
    }
}

/// The program name a backend uses for "this vmsilo binary" (`vmsilo sound-filter`): the
/// runtime executes it by this path, which is the running vmsilo itself.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The sound backends of a VM with sound, in start order, and the socket the VMM connects
/// to. vhost-device-sound always offers a capture stream, so with `capture = false`
/// `vmsilo sound-filter` stands between the VMM and it and withholds the capture ring
/// (`vhost_user_relay::Filter::SoundNoCapture`).
pub(crate) fn sound_backends(vm: &Vm, opts: &PlanOptions) -> Option<(String, Vec<Backend>)> {
    if !vm.sound.enabled {
        return None;
    }
    let vmm_socket = opts.dirs.sound_socket(&vm.name);
    let device_socket = if vm.sound.capture {
        vmm_socket.clone()
    } else {
        opts.dirs.sound_device_socket(&vm.name)
    };
    let mut env = BTreeMap::new();
    env.insert("XDG_RUNTIME_DIR".to_owned(), opts.user_runtime_dir());
    let mut backends = vec![Backend {
        kind: "vhost-device-sound".into(),
        argv: vec![
            "vhost-device-sound".into(),
            "--socket".into(),
            device_socket.clone(),
            "--backend".into(),
            // `pulse` is resolved by the runtime at start ([`SoundBackend::Pulse`]).
            vm.sound.backend.as_str().into(),
        ],
        socket: device_socket.clone(),
        run_as: RunAs::User,
        env,
        sandbox: None,
    }];
    if !vm.sound.capture {
        backends.push(Backend {
            kind: SOUND_FILTER.into(),
            argv: vec![
                SELF_EXE.into(),
                "sound-filter".into(),
                "--listen".into(),
                vmm_socket.clone(),
                "--device".into(),
                device_socket,
            ],
            socket: vmm_socket.clone(),
            run_as: RunAs::User,
            env: BTreeMap::new(),
            sandbox: None,
        });
    }
    Some((vmm_socket, backends))
}

/// The `kind` of the capture filter backend.
pub const SOUND_FILTER: &str = "vmsilo-sound-filter";

/// What vhost-device-sound's `--backend` becomes for `backend`: `pulse` is PipeWire when the
/// user's PipeWire socket exists (`pipewire_running`), else ALSA's default device; the others
/// are passed as they are.
pub fn resolve_sound_backend(backend: &str, pipewire_running: bool) -> &str {
    match backend {
        "pulse" if pipewire_running => "pipewire",
        "pulse" => "alsa",
        b => b,
    }
}

/// The VM's vmsilo-gate (with `gpu`): runs as the configured user, listens on the gate socket
/// and connects each guest client to the user's compositor
/// ([`PlanOptions::wayland_socket`]).
fn gate_backend(cfg: &ValidConfig, vm: &Vm, opts: &PlanOptions) -> Option<Backend> {
    if !vm.gpu.enabled {
        return None;
    }
    let d = &opts.dirs;
    let socket = d.gate_socket(&vm.name);
    let mut argv: Vec<String> = vec![
        GATE.into(),
        "--vm".into(),
        vm.name.clone(),
        "--color".into(),
        vm.color.hex(),
        "--listen".into(),
        socket.clone(),
        "--compositor".into(),
        opts.wayland_socket(),
        // Its security-context socket: in a directory of the user's own, since the gate
        // directory becomes root's once the gate listens.
        "--state-dir".into(),
        d.gate_state_dir(&vm.name),
    ];
    for g in &vm.gate.allow_globals {
        argv.extend(["--allow".into(), g.clone()]);
    }
    for g in &vm.gate.deny_globals {
        argv.extend(["--deny".into(), g.clone()]);
    }
    if !vm.gate.frame {
        argv.push("--no-frame".into());
    }
    // The global clipboard: the chords in this VM's windows go to the user's vmsilo-clipd.
    if cfg.clipboard.enable {
        argv.extend([
            "--clipd".into(),
            opts.clipd_socket(),
            "--copy-chord".into(),
            cfg.clipboard.chords.copy.clone(),
            "--paste-chord".into(),
            cfg.clipboard.chords.paste.clone(),
        ]);
    }
    let mut env = BTreeMap::new();
    env.insert("XDG_RUNTIME_DIR".to_owned(), opts.user_runtime_dir());
    Some(Backend {
        kind: GATE.into(),
        argv,
        socket,
        run_as: RunAs::User,
        env,
        sandbox: Some(sandbox(
            d.gate_dir(&vm.name),
            &[],
            &[&opts.wayland_socket()],
        )),
    })
}

fn check_socket_paths(plan: &LaunchPlan) -> Result<(), PlanError> {
    let p = &plan.paths;
    let sockets = [
        Some(&p.command_socket),
        Some(&p.console_socket),
        p.control_socket.as_ref(),
        p.qmp_socket.as_ref(),
        p.vsock_socket.as_ref(),
        p.vhost_vsock_socket.as_ref(),
        p.sound_socket.as_ref(),
        p.gate_socket.as_ref(),
        p.waypipe_socket.as_ref(),
        p.waypipe_vsock_link.as_ref(),
    ];
    let all = sockets
        .into_iter()
        .flatten()
        .chain(p.fs_sockets.values())
        .chain(p.vm_switch.iter().map(|s| &s.socket))
        .chain(plan.backends.iter().map(|b| &b.socket));
    for s in all {
        if s.len() > MAX_SOCKET_PATH {
            return Err(PlanError::SocketPathTooLong {
                vm: plan.vm.clone(),
                path: s.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_sandbox_hides_users_files_but_never_what_the_backend_needs() {
        let s = sandbox(
            "/run/vmsilo/a.gate".into(),
            &["/run/user/1000".into()],
            &["/run/user/1000/wayland-0"],
        );
        assert_eq!(s.hidden, ["/home", "/root"]);
        // A compositor socket or a run directory under a home stays reachable.
        let s = sandbox("/root/run/a.gate".into(), &[], &["/home/u/wl/wayland-0"]);
        assert_eq!(s.hidden, Vec::<String>::new());
        let s = sandbox("/run/vmsilo/a.gate".into(), &["/run/user/1000".into()], &[]);
        assert_eq!(s.hidden, ["/home", "/root", "/run/user/1000"]);
    }

    #[test]
    fn test_pulse_is_pipewire_when_it_runs_else_alsa() {
        assert_eq!(resolve_sound_backend("pulse", true), "pipewire");
        assert_eq!(resolve_sound_backend("pulse", false), "alsa");
        assert_eq!(resolve_sound_backend("pipewire", false), "pipewire");
        assert_eq!(resolve_sound_backend("null", true), "null");
    }
}
