//! The systemd units and the polkit rule a configuration turns into (sans-IO: text in memory).
//!
//! Per VM `<vm>`:
//! - `vmsilo-<vm>.socket`: the command socket (`<run>/<vm>-command.socket`, owned by the
//!   configured user, mode 0600), enabled through `sockets.target.wants/`; it activates
//! - `vmsilo-<vm>-command.service`: `vmsilo command-service <vm>` with the listening socket
//!   (`Accept=no`, `LISTEN_FDS`); it starts the VM service itself (`systemctl start
//!   --no-block`) when a connection needs it, so it can tell the waiting `vm-run` how the start
//!   goes, and outlives the VM (the next connection starts it again);
//! - `vmsilo-<vm>-vm.service`: `vmsilo vm-service <vm>` as root, `Type=notify`, hardened;
//!   `autoStart` adds it to `multi-user.target.wants/`, `dependsOn` becomes `Wants=`/`After=`.
//!
//! Per vm-switch network `<net>`: `vm-switch-<net>.service`. Once: `vmsilo-balloond.service`,
//! and, on hosts without the NixOS module ([`UnitOptions::host_network`]) whose configuration
//! has TAP interfaces or NAT, `vmsilo-net.service` (`vmsilo net up`/`down`, a oneshot that
//! stays active; the VM services with TAPs require it). The NixOS module sets up TAPs, bridges
//! and NAT itself, so it must not be generated there.
//! The polkit rule (`50-vmsilo.rules`) lets the configured user start, stop and restart exactly
//! these units, by name; a generator cannot install it (the NixOS module does, `vmsilo units`
//! writes it for other systems).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use vmsilo_config::measure::format_duration;
use vmsilo_config::model::{InterfaceType, Vm};
use vmsilo_config::{Dirs, ValidConfig, derive};

/// Where the units' programs and the configuration are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitOptions {
    /// Absolute path of the vmsilo executable.
    pub vmsilo_bin: String,
    /// Absolute path of vm-switch.
    pub vm_switch_bin: String,
    /// Absolute path of vmsilo-balloond.
    pub balloond_bin: String,
    /// Absolute path of the configuration the services read (`--config`).
    pub config_path: String,
    /// Whether vmsilo sets up the host's TAPs, bridge ports and NAT itself
    /// (`vmsilo-net.service`): true except where the NixOS module does it.
    pub host_network: bool,
}

/// What a generated file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// A regular file with this text.
    File(String),
    /// A symlink to this (relative) target.
    Symlink(String),
}

/// One generated file, relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Path relative to the unit directory (`vmsilo-banking.socket`,
    /// `sockets.target.wants/vmsilo-banking.socket`).
    pub path: String,
    /// The text or link target.
    pub contents: Contents,
}

/// Seconds the VM service may take to stop: the guest's shutdown timeout (vm-service's
/// `--shutdown-timeout` default, 30 s) plus the hard stop and the backends.
pub const VM_STOP_TIMEOUT_SECS: u32 = 60;

/// vm-service's exit status when the guest did not power off in time and the VMM was stopped
/// hard; the unit counts it as success (the VM is stopped, as asked).
pub const EXIT_STOPPED_HARD: u8 = 37;

/// Name of the VM service.
pub fn vm_service(vm: &str) -> String {
    format!("vmsilo-{vm}-vm.service")
}

/// Name of the command socket unit.
pub fn socket_unit(vm: &str) -> String {
    format!("vmsilo-{vm}.socket")
}

/// Name of the command service.
pub fn command_service(vm: &str) -> String {
    format!("vmsilo-{vm}-command.service")
}

/// Name of a vm-switch network's service.
pub fn vm_switch_service(net: &str) -> String {
    format!("vm-switch-{net}.service")
}

/// Name of the balloon daemon's service.
pub const BALLOOND_SERVICE: &str = "vmsilo-balloond.service";

/// Name of the host networking service (hosts without the NixOS module).
pub const NET_SERVICE: &str = "vmsilo-net.service";

/// Quotes one word for an `ExecStart=` line or a path list: `%` and `$` are escaped (systemd
/// specifiers and variables), and a word with blanks, quotes, backslashes or `;` is put in
/// double quotes with C escapes.
pub fn quote(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped != ";"
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'));
    if plain {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32 & 0xff);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn command_line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn header(opts: &UnitOptions) -> String {
    format!(
        "# Generated by vmsilo from {}: do not edit (see `vmsilo units`).\n",
        opts.config_path.replace('\n', " ")
    )
}

/// The vm-switch networks a VM has ports on.
fn networks(vm: &Vm) -> BTreeSet<String> {
    vm.network
        .interfaces
        .values()
        .filter(|i| i.kind == InterfaceType::VmSwitch)
        .filter_map(|i| i.vm_network.name.clone())
        .collect()
}

/// Paths the VM service must be able to write outside /run and /var: the shared home (and its
/// parent, where it is created on first use), shared directories, writable disks.
fn writable_paths(vm: &Vm) -> Vec<String> {
    let mut out = BTreeSet::new();
    if let Some(home) = derive::shared_home_dir(vm) {
        if let Some(parent) = std::path::Path::new(&home).parent()
            && parent != std::path::Path::new("/")
        {
            out.insert(parent.to_string_lossy().into_owned());
        }
        out.insert(home);
    }
    for d in &vm.shared_directories {
        out.insert(d.path.clone());
    }
    let ro = |d: &vmsilo_config::model::Disk| {
        d.options
            .get("ro")
            .is_some_and(|v| matches!(v.to_string().as_str(), "true" | "on"))
    };
    for d in &vm.additional_disks {
        if !ro(d) {
            out.insert(d.path.clone());
        }
    }
    if let Some(root) = &vm.root_disk
        && !vm.root_disk_readonly
    {
        out.insert(root.path.clone());
    }
    out.into_iter().collect()
}

/// The hardening of the small daemons (vm-switch, vmsilo-balloond, the command service): a
/// read-only system except `rw`, no network but `families`, no kernel tunables.
///
/// `own_sandbox` is for vm-switch, which builds its own sandbox: it may create namespaces, and
/// it mounts a fresh `/proc` inside its user namespace, which the kernel refuses while parts of
/// the outer `/proc` are mounted over, as `ProtectKernelTunables=` and `ProtectKernelLogs=` do
/// (vm-switch's `/proc` shows only its own processes, and it drops root before it starts).
fn sandbox(rw: Option<&str>, families: &str, own_sandbox: bool) -> String {
    let mut t = String::from("NoNewPrivileges=yes\nProtectSystem=strict\n");
    if let Some(rw) = rw {
        let _ = writeln!(t, "ReadWritePaths={}", quote(rw));
    }
    t.push_str(
        "ProtectHome=yes
PrivateTmp=yes
PrivateNetwork=yes
",
    );
    if !own_sandbox {
        t.push_str("ProtectKernelTunables=yes\n");
    }
    t.push_str("ProtectKernelModules=yes\n");
    if !own_sandbox {
        t.push_str("ProtectKernelLogs=yes\n");
    }
    t.push_str(
        "ProtectControlGroups=yes
ProtectHostname=yes
ProtectClock=yes
",
    );
    let _ = writeln!(t, "RestrictAddressFamilies={families}");
    if !own_sandbox {
        t.push_str("RestrictNamespaces=yes\n");
    }
    t.push_str(
        "RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
",
    );
    t
}

fn socket_text(cfg: &ValidConfig, vm: &Vm, dirs: &Dirs, opts: &UnitOptions) -> String {
    let name = &vm.name;
    format!(
        "{header}\
[Unit]
Description=vmsilo command socket of VM {name}
Documentation=man:vmsilo(1)

[Socket]
ListenStream={socket}
SocketUser={user}
SocketMode=0600
DirectoryMode=0755
Accept=no
Service={service}

[Install]
WantedBy=sockets.target
",
        header = header(opts),
        socket = quote(&dirs.command_socket(name)),
        user = cfg.user,
        service = command_service(name),
    )
}

fn command_service_text(vm: &Vm, opts: &UnitOptions) -> String {
    let name = &vm.name;
    format!(
        "{header}\
[Unit]
Description=vmsilo command service of VM {name}
Documentation=man:vmsilo(1)
Requires={socket}
After={socket}

[Service]
Type=simple
ExecStart={exec}
{sandbox}",
        header = header(opts),
        socket = socket_unit(name),
        sandbox = sandbox(None, "AF_UNIX AF_VSOCK", false),
        exec = command_line(&[
            opts.vmsilo_bin.as_str(),
            "--config",
            &opts.config_path,
            "command-service",
            name,
        ]),
    )
}

fn vm_service_text(vm: &Vm, opts: &UnitOptions) -> String {
    let name = &vm.name;
    let nets = networks(vm);
    let mut wants: Vec<String> = vec![BALLOOND_SERVICE.to_owned()];
    let mut after: Vec<String> = vec!["network.target".to_owned()];
    let needs_net = opts.host_network && !crate::hostnet::vm_taps(vm).is_empty();
    if needs_net {
        after.push(NET_SERVICE.to_owned());
    }
    for n in &nets {
        wants.push(vm_switch_service(n));
        after.push(vm_switch_service(n));
    }
    for d in &vm.depends_on {
        wants.push(vm_service(d));
        after.push(vm_service(d));
    }
    let rw: Vec<String> = writable_paths(vm)
        .iter()
        .map(|p| quote(&format!("-{p}")))
        .collect();
    let mut t = header(opts);
    let _ = write!(
        t,
        "[Unit]
Description=vmsilo VM {name}
Documentation=man:vmsilo(1)
{requires}Wants={wants}
After={after}

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec}
KillMode=mixed
TimeoutStartSec=120
TimeoutStopSec={VM_STOP_TIMEOUT_SECS}
SuccessExitStatus={EXIT_STOPPED_HARD}
UMask=0022
# Root for taps, vfio and KVM; crosvm and virtiofsd sandbox their own device processes.
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=read-only
",
        requires = if needs_net {
            format!("Requires={NET_SERVICE}\n")
        } else {
            String::new()
        },
        wants = wants.join(" "),
        after = after.join(" "),
        exec = command_line(&[
            opts.vmsilo_bin.as_str(),
            "--config",
            &opts.config_path,
            "vm-service",
            name,
        ]),
    );
    if !rw.is_empty() {
        let _ = writeln!(t, "ReadWritePaths={}", rw.join(" "));
    }
    t.push_str(
        // No ProtectKernelModules=, ProtectKernelLogs= or ProtectControlGroups=: crosvm's own
        // sandbox (minijail) mounts a /proc for its jailed device processes, which the kernel
        // refuses under those mounts (checked with a real crosvm: docs/crosvm-verification.md).
        "ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_VSOCK
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
",
    );
    if vm.auto_start {
        t.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    }
    t
}

/// `RuntimeDirectory=` lines creating `dir` (0755, kept when the unit stops) if it is under
/// /run (the directive is relative to /run; a directory elsewhere gets none).
fn runtime_directory(dir: &str) -> String {
    dir.strip_prefix("/run/")
        .map(|rel| {
            format!(
                "RuntimeDirectory={}\nRuntimeDirectoryMode=0755\nRuntimeDirectoryPreserve=yes\n",
                quote(rel)
            )
        })
        .unwrap_or_default()
}

fn vm_switch_text(cfg: &ValidConfig, net: &str, dirs: &Dirs, opts: &UnitOptions) -> String {
    let dir = dirs.vm_switch_net_dir(net);
    let mut argv: Vec<String> = vec![
        opts.vm_switch_bin.clone(),
        "-n".into(),
        net.into(),
        "-d".into(),
        dir.clone(),
        "--log-level".into(),
        cfg.vm_switch.log_level.as_str().into(),
    ];
    argv.extend(cfg.vm_switch.extra_args.iter().cloned());
    let runtime_dir = runtime_directory(&dir);
    format!(
        "{header}\
[Unit]
Description=vmsilo vm-switch network {net}
Documentation=man:vmsilo(1)

[Service]
Type=simple
ExecStart={exec}
{runtime_dir}Restart=on-failure
{sandbox}",
        header = header(opts),
        exec = command_line(&argv),
        sandbox = sandbox(Some(&dir), "AF_UNIX", true),
    )
}

fn balloond_text(cfg: &ValidConfig, dirs: &Dirs, opts: &UnitOptions) -> String {
    let b = &cfg.balloond;
    let mut argv: Vec<String> = vec![
        opts.balloond_bin.clone(),
        "--poll-interval".into(),
        format_duration(b.poll_interval),
        "--critical-host-percent".into(),
        b.critical_host_percent.to_string(),
        "--guest-available-bias".into(),
        b.guest_available_bias.to_string(),
        "--log-level".into(),
        b.log_level.as_str().into(),
        // The status socket is theirs (0600) and refuses every other uid: `vmsilo status`
        // runs as this user.
        "--status-user".into(),
        cfg.user.clone(),
    ];
    argv.extend(b.extra_args.iter().cloned());
    format!(
        "{header}\
[Unit]
Description=vmsilo memory balancer (virtio-balloon)
Documentation=man:vmsilo(1)

[Service]
Type=simple
ExecStart={exec}
Restart=on-failure
{sandbox}",
        header = header(opts),
        exec = command_line(&argv),
        sandbox = sandbox(Some(&dirs.run_dir), "AF_UNIX", false),
    )
}

/// `vmsilo-net.service`: TAPs, bridge ports, forwarding and NAT, set up once for every VM
/// (persistent TAPs, as the NixOS module makes them) and undone when it stops. A oneshot that
/// stays active, so that VM services can require it; `systemctl reload` applies a changed
/// configuration without touching TAPs that did not change.
fn net_service_text(dirs: &Dirs, opts: &UnitOptions) -> String {
    let exec = |verb: &str| {
        command_line(&[
            opts.vmsilo_bin.as_str(),
            "--config",
            &opts.config_path,
            "net",
            verb,
        ])
    };
    let runtime_dir = runtime_directory(&dirs.run_dir);
    format!(
        "{header}\
[Unit]
Description=vmsilo host networking (TAPs, bridge ports, NAT)
Documentation=man:vmsilo(1)
After=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={up}
ExecReload={up}
ExecStop={down}
{runtime_dir}NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={run}
ProtectHome=yes
PrivateTmp=yes
CapabilityBoundingSet=CAP_NET_ADMIN
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
",
        header = header(opts),
        up = exec("up"),
        down = exec("down"),
        run = quote(&dirs.run_dir),
    )
}

/// The names of the units [`render`] writes (not the `.wants/` links), sorted: what the polkit
/// rule lets the configured user manage. Not `vmsilo-net.service`: stopping it takes every
/// VM's network away (a VM service the user starts still pulls it in).
pub fn managed_units(cfg: &ValidConfig, opts: &UnitOptions) -> Vec<String> {
    let mut units: Vec<String> = render(cfg, opts)
        .into_iter()
        .filter(|g| matches!(g.contents, Contents::File(_)))
        .map(|g| g.path)
        .filter(|p| p != NET_SERVICE)
        .collect();
    units.sort();
    units
}

/// Every unit file and symlink for `cfg`, in a stable order. Empty when `enable` is false.
pub fn render(cfg: &ValidConfig, opts: &UnitOptions) -> Vec<Generated> {
    let dirs = Dirs::default();
    let mut out = Vec::new();
    if !cfg.enable {
        return out;
    }
    let file = |path: String, text: String| Generated {
        path,
        contents: Contents::File(text),
    };
    let link = |dir: &str, unit: &str| Generated {
        path: format!("{dir}/{unit}"),
        contents: Contents::Symlink(format!("../{unit}")),
    };
    let mut nets = BTreeSet::new();
    for vm in &cfg.nixos_vms {
        let name = &vm.name;
        out.push(file(socket_unit(name), socket_text(cfg, vm, &dirs, opts)));
        out.push(link("sockets.target.wants", &socket_unit(name)));
        out.push(file(command_service(name), command_service_text(vm, opts)));
        out.push(file(vm_service(name), vm_service_text(vm, opts)));
        if vm.auto_start {
            out.push(link("multi-user.target.wants", &vm_service(name)));
        }
        nets.extend(networks(vm));
    }
    for net in &nets {
        out.push(file(
            vm_switch_service(net),
            vm_switch_text(cfg, net, &dirs, opts),
        ));
    }
    out.push(file(
        BALLOOND_SERVICE.to_owned(),
        balloond_text(cfg, &dirs, opts),
    ));
    if opts.host_network && crate::hostnet::needed(cfg) {
        out.push(file(NET_SERVICE.to_owned(), net_service_text(&dirs, opts)));
        out.push(link("multi-user.target.wants", NET_SERVICE));
    }
    out
}

/// The polkit rule: the configured user may start, stop and restart exactly the units
/// [`render`] writes for `cfg` (the NixOS module installs the same rule). Not every unit whose
/// name starts with `vmsilo-`: a unit someone else put on the system under such a name (say,
/// files a user managed to write into `/run/systemd/system`) is not the user's to start.
pub fn polkit_rule(cfg: &ValidConfig, opts: &UnitOptions) -> String {
    let user = serde_json::to_string(&cfg.user).unwrap_or_else(|_| "\"\"".to_owned());
    let units = managed_units(cfg, opts);
    let list = serde_json::to_string(&units).unwrap_or_else(|_| "[]".to_owned());
    format!(
        "// Generated by vmsilo from {config}: do not edit (see `vmsilo units`).
// vmsilo: let {plain} start, stop and restart vmsilo's units without sudo.
polkit.addRule(function(action, subject) {{
  var units = {list};
  if (action.id == \"org.freedesktop.systemd1.manage-units\" &&
      subject.user == {user}) {{
    var unit = action.lookup(\"unit\");
    if (unit && units.indexOf(unit) >= 0) {{
      var verb = action.lookup(\"verb\");
      if (verb == \"start\" || verb == \"stop\" || verb == \"restart\") {{
        return polkit.Result.YES;
      }}
    }}
  }}
}});
",
        config = opts.config_path.replace('\n', " "),
        plain = cfg.user.replace('\n', " "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_quote_escapes_specifiers_and_blanks() {
        assert_eq!(quote("/run/vmsilo"), "/run/vmsilo");
        assert_eq!(quote("50%"), "50%%");
        assert_eq!(quote("$HOME"), "$$HOME");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote(";"), "\";\"");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
    }

    fn cfg(text: &str) -> ValidConfig {
        vmsilo_config::load_str(text, vmsilo_config::Format::Toml).expect("valid")
    }

    fn opts() -> UnitOptions {
        UnitOptions {
            vmsilo_bin: "/bin/vmsilo".into(),
            vm_switch_bin: "/bin/vm-switch".into(),
            balloond_bin: "/bin/vmsilo-balloond".into(),
            config_path: "/etc/vmsilo/vmsilo.toml".into(),
            host_network: true,
        }
    }

    const VM: &str = r#"
enable = true
user = "alice"
[vm-switch]
extraArgs = ["--buffer-size", "1m"]
[[nixosVms]]
name = "a"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
autoStart = true
dependsOn = ["b"]
sharedHome = "/home/alice/vm a"
[nixosVms.network.interfaces.lan]
vmNetwork.name = "lan"
[[nixosVms]]
name = "b"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
sharedHome = false
"#;

    #[test]
    fn test_render_lists_every_unit_and_link() {
        let files = render(&cfg(VM), &opts());
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "vmsilo-a.socket",
                "sockets.target.wants/vmsilo-a.socket",
                "vmsilo-a-command.service",
                "vmsilo-a-vm.service",
                "multi-user.target.wants/vmsilo-a-vm.service",
                "vmsilo-b.socket",
                "sockets.target.wants/vmsilo-b.socket",
                "vmsilo-b-command.service",
                "vmsilo-b-vm.service",
                "vm-switch-lan.service",
                "vmsilo-balloond.service",
            ]
        );
        assert_eq!(
            files[1].contents,
            Contents::Symlink("../vmsilo-a.socket".into())
        );
    }

    #[test]
    fn test_vm_service_carries_dependencies_paths_and_quoting() {
        let files = render(&cfg(VM), &opts());
        let Contents::File(text) = &files[3].contents else {
            panic!("a file");
        };
        assert!(
            text.contains(
                "Wants=vmsilo-balloond.service vm-switch-lan.service vmsilo-b-vm.service\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("After=network.target vm-switch-lan.service vmsilo-b-vm.service\n"),
            "{text}"
        );
        assert!(
            text.contains("ExecStart=/bin/vmsilo --config /etc/vmsilo/vmsilo.toml vm-service a\n"),
            "{text}"
        );
        assert!(
            text.contains("ReadWritePaths=-/home/alice \"-/home/alice/vm a\"\n"),
            "{text}"
        );
        assert!(
            text.contains("[Install]\nWantedBy=multi-user.target\n"),
            "{text}"
        );
        let Contents::File(switch) = &files[9].contents else {
            panic!("a file");
        };
        assert!(
            switch.contains(
                "ExecStart=/bin/vm-switch -n lan -d /run/vm-switch/lan --log-level info --buffer-size 1m\n"
            ),
            "{switch}"
        );
        assert!(
            switch.contains("RuntimeDirectory=vm-switch/lan\n"),
            "{switch}"
        );
    }

    const TAPS: &str = r#"
enable = true
user = "alice"
hostNetworking.nat = { enable = true, interface = "eth0" }
[[nixosVms]]
name = "a"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.wan]
type = "tap"
tap.hostAddress = "10.0.0.254/24"
[[nixosVms]]
name = "b"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
"#;

    fn text_of(files: &[Generated], path: &str) -> String {
        match files.iter().find(|f| f.path == path).map(|f| &f.contents) {
            Some(Contents::File(t)) => t.clone(),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn test_net_service_is_generated_without_nixos_and_required_by_tap_vms() {
        let files = render(&cfg(TAPS), &opts());
        let net = text_of(&files, NET_SERVICE);
        assert!(net.contains("Type=oneshot\nRemainAfterExit=yes\n"), "{net}");
        assert!(
            net.contains("ExecStart=/bin/vmsilo --config /etc/vmsilo/vmsilo.toml net up\n"),
            "{net}"
        );
        assert!(
            net.contains("ExecStop=/bin/vmsilo --config /etc/vmsilo/vmsilo.toml net down\n"),
            "{net}"
        );
        assert!(net.contains("ExecReload=/bin/vmsilo --config /etc/vmsilo/vmsilo.toml net up\n"));
        assert!(
            files
                .iter()
                .any(|f| f.path == "multi-user.target.wants/vmsilo-net.service")
        );
        let a = text_of(&files, "vmsilo-a-vm.service");
        assert!(a.contains("Requires=vmsilo-net.service\n"), "{a}");
        assert!(
            a.contains("After=network.target vmsilo-net.service\n"),
            "{a}"
        );
        // A VM without TAPs does not wait for it.
        let b = text_of(&files, "vmsilo-b-vm.service");
        assert!(!b.contains("vmsilo-net.service"), "{b}");
        // The user may not stop everyone's network through polkit.
        assert!(!managed_units(&cfg(TAPS), &opts()).contains(&NET_SERVICE.to_owned()));
    }

    #[test]
    fn test_net_service_is_not_generated_where_the_nixos_module_sets_up_the_host() {
        let nixos = UnitOptions {
            host_network: false,
            ..opts()
        };
        let files = render(&cfg(TAPS), &nixos);
        assert!(!files.iter().any(|f| f.path.contains(NET_SERVICE)));
        assert!(!text_of(&files, "vmsilo-a-vm.service").contains(NET_SERVICE));
        // Nor without TAPs or NAT.
        assert!(
            !render(&cfg(VM), &opts())
                .iter()
                .any(|f| f.path.contains(NET_SERVICE))
        );
    }

    #[test]
    fn test_disabled_configuration_generates_nothing() {
        let text = VM.replace("enable = true", "enable = false");
        assert!(render(&cfg(&text), &opts()).is_empty());
    }

    #[test]
    fn test_polkit_rule_names_the_user_as_a_js_string() {
        let rule = polkit_rule(&cfg(VM), &opts());
        assert!(rule.contains("subject.user == \"alice\""), "{rule}");
        assert!(rule.contains("units.indexOf(unit) >= 0"), "{rule}");
        assert!(rule.contains("verb == \"restart\""), "{rule}");
    }

    #[test]
    fn test_polkit_rule_allows_exactly_the_generated_units_not_a_name_prefix() {
        let rule = polkit_rule(&cfg(VM), &opts());
        assert!(
            rule.contains(
                "var units = [\"vm-switch-lan.service\",\"vmsilo-a-command.service\",\
                 \"vmsilo-a-vm.service\",\"vmsilo-a.socket\",\"vmsilo-b-command.service\",\
                 \"vmsilo-b-vm.service\",\"vmsilo-b.socket\",\"vmsilo-balloond.service\"];"
            ),
            "{rule}"
        );
        assert!(rule.contains("units.indexOf(unit) >= 0"), "{rule}");
        assert!(!rule.contains("indexOf(\"vmsilo-\")"), "{rule}");
    }
}
