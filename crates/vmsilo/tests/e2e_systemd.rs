//! End to end under a real systemd as PID 1: a `systemd-nspawn --boot` container of this
//! machine's own OS (`--volatile=yes`: `/usr` from the host, read-only; `/etc` an overlay of the
//! host's with the test's files on top), where systemd runs vmsilo's generator and units as on a
//! desktop. The machine itself has no systemd PID 1; the container does.
//!
//! The container gets, through the `/etc` overlay: a user `alice` (4711) who is the
//! configuration's user and a user `mallory` (4712) who is not, `/etc/vmsilo/vmsilo.toml` with
//! two QEMU/TCG VMs `demo` (10.77.0.2) and `peer` (10.77.0.3) on the vm-switch network `lan`,
//! `vmsilo-generator` in `/etc/systemd/system-generators/`, the polkit rule `vmsilo units`
//! writes, and a drop-in for every `vmsilo-*.service` that puts vhost-device-vsock on `PATH` (as
//! the NixOS module's drop-in does). vmsilo, vm-switch, vmsilo-balloond (next to vmsilo, where
//! the generator looks), vhost-device-vsock and the guest files are copied into a directory
//! bound at `/var/lib/vmsilo-e2e`. It boots `basic.target` (sockets, D-Bus; polkit is D-Bus
//! activated), not the host's multi-user services.
//!
//! Checked, each through systemd:
//! 1. the generator ran: `vmsilo-demo.socket` listens at `/run/vmsilo/demo-command.socket`,
//!    owned by alice with mode 0600;
//! 2. `vm-run -w demo` as alice starts the VM by socket activation (command service →
//!    `systemctl start vmsilo-demo-vm.service` → vm-service → QEMU), prints the guest's
//!    output, and the VM unit is active with vm-service as its main process;
//! 3. the VM unit pulled in `vm-switch-lan.service` and `vmsilo-balloond.service`; `peer` starts
//!    the same way, `demo` pings `peer` through vm-switch (sandboxed, as its unit runs it), and
//!    balloond reports both VMs with statistics;
//! 4. `vmsilo status` as alice shows both running; balloond's status socket serves alice and
//!    refuses mallory;
//! 5. `vm-stop demo` as mallory is refused by polkit with vmsilo's explanation, the VM runs on;
//!    alice may not start `vmsilo-planted.service`, a unit the configuration did not generate
//!    (the rule lists vmsilo's units by name);
//! 6. `vm-stop demo` as alice is allowed by the rule: the unit stops with `Result=success`
//!    (the guest powered off); `vm-start demo` as alice starts it again and `vm-run` works.
//!
//! A second test boots such a container with its own network namespace (`--private-network`)
//! and a configuration with a TAP and NAT, to run the generated `vmsilo-net.service` under its
//! own sandbox: start creates the user's TAP, forwarding and the nftables table; reload keeps
//! them; stop removes them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Scratch;
use vmsilo_testkit::find_tool;

/// Where the test's directory appears inside the container.
const INSIDE: &str = "/var/lib/vmsilo-e2e";
const ALICE: u32 = 4711;
const MALLORY: u32 = 4712;

/// The container; stopped (and killed if it must be) when dropped.
struct Container {
    nspawn: Child,
    /// Host pid of the container's PID 1 (systemd).
    init: u32,
    log: PathBuf,
}

impl Container {
    /// Boots the container on `dir`'s layout, with `extra` nspawn options.
    fn boot(dir: &Path, extra: &[&str]) -> Container {
        let upper = dir.join("etc-upper");
        let log = dir.join("nspawn.log");
        let nspawn = Command::new(find_tool("systemd-nspawn").expect(
            "systemd-nspawn is missing: run `cargo xtask setup` (package systemd-container)",
        ))
        .args([
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--directory=/",
            "--volatile=yes",
            "--console=pipe",
        ])
        .arg(format!("--overlay=/etc:{}:/etc", upper.display()))
        .arg(format!("--bind={}:{INSIDE}", dir.join("share").display()))
        .args(extra)
        .args(["--boot", "systemd.unit=basic.target"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::from(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("log"),
        ))
        .spawn()
        .expect("systemd-nspawn");
        let mut c = Container {
            nspawn,
            init: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.init == 0 {
            if let Ok(Some(s)) = c.nspawn.try_wait() {
                panic!("systemd-nspawn exited with {s}:\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after 60 s:\n{}",
                c.log()
            );
            c.init = container_init(c.nspawn.id()).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(100));
        }
        // Booted (basic.target reached) or not: is-system-running says which. Until systemd
        // listens on its private socket, systemctl cannot ask and says so: ask again.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let o = c.sh(&["systemctl", "is-system-running", "--wait"]);
            let (state, err) = text(&o);
            let state = state.trim();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot: {state:?} {err}\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `argv` in the container as root (all its namespaces, its root directory).
    fn sh(&self, argv: &[&str]) -> Output {
        self.run_as(None, argv)
    }

    /// Runs `argv` in the container as `uid` (also as gid) when given.
    fn run_as(&self, uid: Option<u32>, argv: &[&str]) -> Output {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-a"]);
        if let Some(uid) = uid {
            let id = uid.to_string();
            c.args(["setpriv", "--reuid", &id, "--regid", &id, "--init-groups"]);
        }
        c.args(argv).stdin(Stdio::null());
        let child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter");
        common::output_within(child, Duration::from_secs(180))
            .unwrap_or_else(|| panic!("{argv:?} did not finish within 180 s"))
    }

    fn unit_property(&self, unit: &str, property: &str) -> String {
        let o = self.sh(&["systemctl", "show", "-P", property, unit]);
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// `ActiveState` of the VM's unit.
    fn vm_state(&self) -> String {
        self.unit_property("vmsilo-demo-vm.service", "ActiveState")
    }

    /// The units' journal, for failure messages.
    fn journal(&self) -> String {
        let o = self.sh(&["journalctl", "--no-pager", "-n", "80", "-u", "vmsilo-*"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes systemd-nspawn ask the container's systemd to power off, which stops
        // the VM; SIGKILL after a while takes the whole PID namespace down.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The host pid of the container's PID 1: the descendant of `nspawn` that is pid 1 in its own
/// PID namespace.
fn container_init(nspawn: u32) -> Option<u32> {
    let mut parents = vec![nspawn];
    for _ in 0..4 {
        let mut next = Vec::new();
        for dir in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = dir.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_owned()
            };
            if !field("PPid:")
                .parse::<u32>()
                .is_ok_and(|pp| parents.contains(&pp))
            {
                continue;
            }
            let nspid = field("NSpid:");
            if nspid.split_whitespace().last() == Some("1")
                && nspid.split_whitespace().count() > 1
                && field("Name:") == "systemd"
            {
                return Some(pid);
            }
            next.push(pid);
        }
        if next.is_empty() {
            return None;
        }
        parents = next;
    }
    None
}

fn copy_exec(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Lays out the container's `/etc` overlay and the shared directory.
fn prepare(dir: &Path) {
    let etc = dir.join("etc-upper");
    let share = dir.join("share");
    for d in [
        etc.join("vmsilo"),
        etc.join("systemd/system-generators"),
        etc.join("systemd/system/vmsilo-.service.d"),
        etc.join("polkit-1/rules.d"),
        share.join("bin"),
    ] {
        std::fs::create_dir_all(&d).expect("mkdir");
    }
    // The shared directory must be reachable for alice (the scratch dir is root's).
    for d in [dir, &share, &share.join("bin")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    // Programs: vmsilo under its multi-call names, vhost-device-vsock.
    copy_exec(&common::vmsilo_bin(), &share.join("bin/vmsilo"));
    for name in ["vm-run", "vm-start", "vm-stop", "vmsilo-generator"] {
        std::os::unix::fs::symlink("vmsilo", share.join("bin").join(name)).expect("symlink");
    }
    copy_exec(
        &vmsilo_testkit::vhost_device_vsock()
            .expect("vhost-device-vsock is missing: run `cargo xtask setup`"),
        &share.join("bin/vhost-device-vsock"),
    );
    // The generator looks for vm-switch and vmsilo-balloond next to vmsilo.
    for (package, name) in [
        ("vm-switch", "vm-switch"),
        ("vmsilo-balloond", "vmsilo-balloond"),
    ] {
        let built = vmsilo_testkit::workspace_binary(package, name).expect(name);
        copy_exec(&built, &share.join("bin").join(name));
    }

    // The guest.
    let image = common::agent_image();
    std::fs::copy(&image.kernel, share.join("vmlinuz")).expect("kernel");
    std::fs::copy(&image.initrd, share.join("initrd.img")).expect("initrd");
    std::fs::File::create(share.join("root.img"))
        .and_then(|f| f.set_len(8 << 20))
        .expect("root disk");

    // Users.
    for (file, lines) in [
        (
            "passwd",
            format!(
                "alice:x:{ALICE}:{ALICE}:alice:/nonexistent:/bin/sh\n\
                 mallory:x:{MALLORY}:{MALLORY}:mallory:/nonexistent:/bin/sh\n"
            ),
        ),
        ("group", format!("alice:x:{ALICE}:\nmallory:x:{MALLORY}:\n")),
    ] {
        let host = std::fs::read_to_string(Path::new("/etc").join(file)).expect("host file");
        std::fs::write(etc.join(file), format!("{host}{lines}")).expect("write");
    }

    // vmsilo's configuration, generator, polkit rule and PATH drop-in.
    let inside = Path::new(INSIDE);
    let config = common::qemu_vm_config(
        &etc.join("vmsilo"),
        "demo",
        &inside.join("vmlinuz"),
        &inside.join("initrd.img"),
        &inside.join("root.img"),
        "rootOverlay = { type = \"tmpfs\" }\n\
         [nixosVms.network.interfaces.lan]\n\
         vmNetwork.name = \"lan\"\n\
         addresses = [\"10.77.0.2/24\"]\n",
    );
    // The same VM again as `peer` with the next address, for alice.
    let text = std::fs::read_to_string(&config).expect("config");
    let vm = &text[text.find("[[nixosVms]]").expect("a VM")..];
    let peer = vm
        .replace("name = \"demo\"", "name = \"peer\"")
        .replace("10.77.0.2/24", "10.77.0.3/24");
    let text = format!("{text}\n{peer}").replace("user = \"root\"", "user = \"alice\"");
    std::fs::write(&config, text).expect("config");
    std::os::unix::fs::symlink(
        format!("{INSIDE}/bin/vmsilo-generator"),
        etc.join("systemd/system-generators/vmsilo-generator"),
    )
    .expect("generator");
    let units = dir.join("units");
    let o = common::vmsilo()
        .arg("--config")
        .arg(&config)
        .arg("units")
        .arg("--out")
        .arg(&units)
        .output()
        .expect("vmsilo units");
    assert!(o.status.success(), "{o:?}");
    std::fs::copy(
        units.join("polkit/50-vmsilo.rules"),
        etc.join("polkit-1/rules.d/50-vmsilo.rules"),
    )
    .expect("polkit rule");
    // A unit under a vmsilo- name that the configuration does not generate (one a user could
    // have planted): the polkit rule must not let alice start it.
    std::fs::write(
        etc.join("systemd/system/vmsilo-planted.service"),
        "[Service]\nType=oneshot\nExecStart=/bin/touch /run/vmsilo-planted-ran\n",
    )
    .expect("planted unit");
    std::fs::write(
        etc.join("systemd/system/vmsilo-.service.d/path.conf"),
        // The command services wait up to 170 s for an agent (the default is 60 s): a cold
        // TCG boot on a loaded two-core machine can take longer, and commands in the
        // container are given 180 s.
        format!(
            "[Service]\nEnvironment=PATH={INSIDE}/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             Environment=VMSILO_AGENT_TIMEOUT=170s\n"
        ),
    )
    .expect("drop-in");
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
#[ignore = "e2e: boots a systemd container and a QEMU guest"]
fn test_e2e_under_systemd_pid1_generator_socket_activation_polkit_and_stop() {
    let dir = Scratch::new("systemd");
    prepare(dir.path());
    let c = Container::boot(dir.path(), &[]);
    let bin = |name: &str| format!("{INSIDE}/bin/{name}");

    // 1. The generator's socket unit listens where vm-run looks, for alice only.
    assert_eq!(
        c.unit_property("vmsilo-demo.socket", "ActiveState"),
        "active",
        "{}",
        c.journal()
    );
    let o = c.sh(&["stat", "-c", "%U %a %F", "/run/vmsilo/demo-command.socket"]);
    assert_eq!(text(&o).0.trim(), "alice 600 socket", "{o:?}");
    assert_eq!(c.vm_state(), "inactive", "{}", c.journal());

    // 2. Cold start by socket activation, as alice.
    let vm_run = bin("vm-run");
    let o = c.run_as(
        Some(ALICE),
        &[&vm_run, "-w", "demo", "cat", "/proc/version"],
    );
    let (out, err) = text(&o);
    assert!(
        o.status.success() && out.starts_with("Linux version"),
        "vm-run: {o:?}\n{}",
        c.journal()
    );
    assert!(!err.contains("vmsilo:"), "{err}");
    assert_eq!(c.vm_state(), "active", "{}", c.journal());
    // Type=notify: vm-service itself is the main process and said it is ready.
    let main = c.unit_property("vmsilo-demo-vm.service", "MainPID");
    let o = c.sh(&["cat", &format!("/proc/{main}/cmdline")]);
    assert!(
        text(&o).0.contains("vm-service"),
        "main process {main}: {o:?}"
    );
    assert!(
        c.unit_property("vmsilo-demo-vm.service", "StatusText")
            .starts_with("Running (QEMU pid"),
        "{}",
        c.journal()
    );

    // 3. The VM's unit pulled in vm-switch-lan.service and vmsilo-balloond.service (Wants=).
    // A second VM on the same network, and a ping between them through vm-switch, sandboxed
    // as its unit runs it.
    for unit in ["vm-switch-lan.service", "vmsilo-balloond.service"] {
        assert_eq!(
            c.unit_property(unit, "ActiveState"),
            "active",
            "{unit}\n{}",
            c.journal()
        );
    }
    let o = c.run_as(Some(ALICE), &[&vm_run, "-w", "peer", "true"]);
    assert!(o.status.success(), "vm-run peer: {o:?}\n{}", c.journal());
    let o = c.run_as(
        Some(ALICE),
        &[
            &vm_run,
            "-w",
            "demo",
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-w",
            "20",
            "10.77.0.3",
        ],
    );
    assert!(
        o.status.success() && text(&o).0.contains("3 packets received"),
        "ping demo -> peer through vm-switch: {o:?}\n{}",
        c.journal()
    );
    // balloond found both VMs (their QMP sockets) and gets their statistics.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = c.sh(&[&bin("vmsilo-balloond"), "--status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let ok = |vm: &str| {
            doc["vms"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x["name"] == vm && x["state"] == "ok"))
        };
        if ok("demo") && ok("peer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "balloond under systemd: {o:?}\n{}",
            c.journal()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // 4. vmsilo status, as alice: both VMs, with their balloons from balloond.
    let o = c.run_as(Some(ALICE), &[&bin("vmsilo"), "status"]);
    let (out, _) = text(&o);
    for vm in ["demo", "peer"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(vm) && l.contains("running")),
            "{o:?}"
        );
    }

    // balloond's status socket is alice's (the generator passes --status-user alice): she
    // reads it, mallory may not (issue 11, finding 7).
    let o = c.run_as(
        Some(ALICE),
        &[&bin("vmsilo-balloond"), "--status", "--json"],
    );
    assert!(
        o.status.success() && text(&o).0.contains("\"vms\""),
        "balloond status as alice: {o:?}"
    );
    let o = c.run_as(
        Some(MALLORY),
        &[&bin("vmsilo-balloond"), "--status", "--json"],
    );
    assert!(
        o.status.code() == Some(1) && o.stdout.is_empty(),
        "balloond status as mallory: {o:?}"
    );

    // 5. mallory may not stop alice's VM: polkit says no, vmsilo explains.
    let o = c.run_as(Some(MALLORY), &[&bin("vm-stop"), "demo"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("polkit refused"), "{err}");
    assert!(
        err.contains("you are mallory; the configuration's user is alice"),
        "{err}"
    );
    assert_eq!(c.vm_state(), "active", "{}", c.journal());

    // 5b. The rule names vmsilo's units: alice may not start a unit merely called vmsilo-*.
    let o = c.run_as(
        Some(ALICE),
        &[
            "systemctl",
            "start",
            "--no-ask-password",
            "vmsilo-planted.service",
        ],
    );
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(
        c.unit_property("vmsilo-planted.service", "ActiveState"),
        "inactive",
        "{}",
        c.journal()
    );
    assert!(
        !c.sh(&["test", "-e", "/run/vmsilo-planted-ran"])
            .status
            .success(),
        "the planted unit ran"
    );

    // 6. alice may: the VM powers off cleanly, then starts again.
    let o = c.run_as(Some(ALICE), &[&bin("vm-stop"), "demo"]);
    assert!(o.status.success(), "vm-stop: {o:?}\n{}", c.journal());
    assert_eq!(c.vm_state(), "inactive", "{}", c.journal());
    assert_eq!(
        c.unit_property("vmsilo-demo-vm.service", "Result"),
        "success",
        "{}",
        c.journal()
    );
    let o = c.sh(&["ls", "/run/vmsilo"]);
    assert_eq!(
        text(&o)
            .0
            .split_whitespace()
            .filter(|f| f.starts_with("demo"))
            .collect::<Vec<_>>(),
        ["demo-command.socket"],
        "of demo's files only the socket unit's socket is left"
    );
    let o = c.run_as(Some(ALICE), &[&bin("vm-start"), "demo"]);
    assert!(o.status.success(), "vm-start: {o:?}\n{}", c.journal());
    assert_eq!(c.vm_state(), "active", "{}", c.journal());
    let o = c.run_as(Some(ALICE), &[&vm_run, "-w", "demo", "echo", "again"]);
    assert_eq!(text(&o).0, "again\n", "{o:?}\n{}", c.journal());
}

/// The layout for the host networking test: the generator and a configuration with one TAP
/// (owned by `nobody`) and NAT; no guest is booted.
fn prepare_net(dir: &Path) {
    let etc = dir.join("etc-upper");
    let share = dir.join("share");
    for d in [
        etc.join("vmsilo"),
        etc.join("systemd/system-generators"),
        share.join("bin"),
    ] {
        std::fs::create_dir_all(&d).expect("mkdir");
    }
    for d in [dir, &share, &share.join("bin")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    copy_exec(&common::vmsilo_bin(), &share.join("bin/vmsilo"));
    std::os::unix::fs::symlink("vmsilo", share.join("bin/vmsilo-generator")).expect("symlink");
    std::os::unix::fs::symlink(
        format!("{INSIDE}/bin/vmsilo-generator"),
        etc.join("systemd/system-generators/vmsilo-generator"),
    )
    .expect("generator");
    std::fs::write(
        etc.join("vmsilo/vmsilo.toml"),
        "enable = true\n\
         user = \"nobody\"\n\
         hostNetworking.nat = { enable = true, interface = \"e2e-up\" }\n\
         [[nixosVms]]\n\
         name = \"work\"\n\
         kernel = \"/nonexistent/k\"\n\
         initramfs = \"/nonexistent/i\"\n\
         rootDisk = \"/nonexistent/r\"\n\
         [nixosVms.network.interfaces.wan]\n\
         type = \"tap\"\n\
         tap.name = \"sd-work\"\n\
         tap.hostAddress = \"10.218.1.254/24\"\n",
    )
    .expect("config");
}

#[test]
#[ignore = "e2e: boots a systemd container"]
fn test_e2e_under_systemd_pid1_vmsilo_net_service_sets_up_and_undoes_the_host_network() {
    if !common::root_or_skip("vmsilo-net.service under systemd") {
        return;
    }
    let dir = Scratch::new("systemd-net");
    prepare_net(dir.path());
    let c = Container::boot(dir.path(), &["--private-network"]);
    let cat = |path: &str| text(&c.sh(&["cat", path])).0.trim().to_owned();
    assert_eq!(cat("/proc/sys/net/ipv4/ip_forward"), "0");
    // The generator wrote the unit (no /etc/NIXOS here) and the VM unit requires it.
    let requires = c.unit_property("vmsilo-work-vm.service", "Requires");
    assert!(
        requires
            .split_whitespace()
            .any(|u| u == "vmsilo-net.service"),
        "{requires}\n{}",
        c.journal()
    );

    let o = c.sh(&["systemctl", "start", "vmsilo-net.service"]);
    assert!(o.status.success(), "{o:?}\n{}", c.journal());
    assert_eq!(
        c.unit_property("vmsilo-net.service", "ActiveState"),
        "active"
    );
    assert_eq!(
        cat("/sys/class/net/sd-work/owner"),
        "65534",
        "{}",
        c.journal()
    );
    assert_eq!(cat("/proc/sys/net/ipv4/ip_forward"), "1");
    let rules = text(&c.sh(&["nft", "list", "ruleset"])).0;
    assert!(
        rules.contains("oifname \"e2e-up\" ip saddr 10.218.1.0/24 masquerade"),
        "{rules}"
    );
    let addr = text(&c.sh(&["ip", "-4", "-o", "addr", "show", "dev", "sd-work"])).0;
    assert!(addr.contains("inet 10.218.1.254/24"), "{addr}");

    // Reload (after a configuration change) is `net up` again: nothing changes here.
    let o = c.sh(&["systemctl", "reload", "vmsilo-net.service"]);
    assert!(o.status.success(), "{o:?}\n{}", c.journal());
    assert_eq!(cat("/sys/class/net/sd-work/owner"), "65534");

    let o = c.sh(&["systemctl", "stop", "vmsilo-net.service"]);
    assert!(o.status.success(), "{o:?}\n{}", c.journal());
    let gone = c.sh(&["test", "-e", "/sys/class/net/sd-work"]);
    assert!(!gone.status.success(), "the TAP is gone\n{}", c.journal());
    assert_eq!(cat("/proc/sys/net/ipv4/ip_forward"), "0");
    let rules = text(&c.sh(&["nft", "list", "ruleset"])).0;
    assert!(!rules.contains("vmsilo"), "{rules}");
    assert_eq!(
        c.unit_property("vmsilo-net.service", "Result"),
        "success",
        "{}",
        c.journal()
    );
}
