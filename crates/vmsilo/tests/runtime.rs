//! The runtime's failures, `vmsilo status`, and `vm-start`/`vm-stop`, from the real binary
//! without booting a guest:
//!
//! - each way `vmsilo vm-service` can fail to start says what failed, on what, and what to do,
//!   exits 1, and leaves the run directory as it found it: a missing kernel, a PCI device whose
//!   IOMMU group is not fully bound to vfio-pci (a fake sysfs tree), an isolated device moved to
//!   vfio-pci only once the rest of the start is known good, a socket still in use, a
//!   non-socket where a socket goes, an unwritable run directory, a VM already running, a VMM
//!   that exits at once (a stand-in QEMU; the real vhost-device-vsock and qemu-img run);
//! - `vmsilo status` for running, stopped and failed VMs, as a table (with colours on a
//!   terminal) and as JSON, with the balloon size from vmsilo-balloond's status socket;
//! - `vm-start`/`vm-stop` without systemd, for an unknown VM, a missing unit, and the
//!   systemctl command line.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Scratch, Term, entries, multi_call, vmsilo};

/// A `VMSILO_SYSTEMD_DIR` that cannot exist (nothing creates directories in /proc), where a
/// fixed path such as /nonexistent may: it is `nobody`'s home directory and some machines have it.
const NO_SYSTEMD: &str = "/proc/self/vmsilo-no-systemd";

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A directory with executable scripts standing in for programs.
fn fake_bin(dir: &Path, programs: &[(&str, &str)]) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for (name, script) in programs {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

struct Vm {
    dir: Scratch,
    cfg: PathBuf,
}

impl Vm {
    /// A QEMU VM (or crosvm with `crosvm = true`) whose files exist.
    fn new(label: &str, extra_global: &str, extra_vm: &str) -> Vm {
        let dir = Scratch::new(label);
        let d = dir.str().to_owned();
        for f in ["vmlinuz", "initrd", "root.img"] {
            std::fs::write(format!("{d}/{f}"), "x").expect("file");
        }
        let cfg = dir.path().join("vmsilo.toml");
        let vmm = if extra_vm.contains("vmm =") {
            ""
        } else {
            "vmm = \"qemu\""
        };
        let sound = if extra_vm.contains("sound =") {
            ""
        } else {
            "sound = false"
        };
        let gpu = if extra_vm.contains("gpu =") {
            ""
        } else {
            "gpu = false"
        };
        std::fs::write(
            &cfg,
            format!(
                r#"
enable = true
user = "root"
qemu.accel = "tcg"
{extra_global}
[[nixosVms]]
name = "t"
memory = 256
cpus = 1
{gpu}
{sound}
sharedHome = false
{vmm}
kernel = "{d}/vmlinuz"
initramfs = "{d}/initrd"
rootDisk = "{d}/root.img"
{extra_vm}
"#
            ),
        )
        .expect("config");
        std::fs::create_dir_all(dir.path().join("run")).expect("run");
        Vm { dir, cfg }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn service(&self, path: &str) -> Command {
        self.service_with(&common::vmsilo_bin(), path)
    }

    fn service_with(&self, program: &Path, path: &str) -> Command {
        self.service_as(program, path, 0)
    }

    /// vm-service with the configured user's uid and gid both `id`.
    fn service_as(&self, program: &Path, path: &str, id: u32) -> Command {
        let d = self.dir.str();
        let mut c = common::command(program);
        c.args([
            "--config",
            self.cfg.to_str().expect("utf-8"),
            "vm-service",
            "t",
        ])
        .args(["--run-dir", &format!("{d}/run")])
        .args(["--vm-switch-dir", &format!("{d}/vs")])
        .args(["--state-dir", &format!("{d}/state")])
        .args(["--uid", &id.to_string(), "--gid", &id.to_string()])
        .env("PATH", path);
        c
    }

    /// Runs vm-service; asserts exit 1, a message containing every `expect`, and a run
    /// directory left as `before`.
    fn fails(&self, path: &str, expect: &[&str], before: &[String]) -> String {
        let o = self.service(path).output().expect("vm-service");
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        for e in expect {
            assert!(err.contains(e), "{e:?} not in:\n{err}");
        }
        assert_eq!(entries(&self.run_dir()), before, "run dir after: {err}");
        assert!(!self.dir.path().join("state/overlays/t.qcow2").exists());
        err
    }
}

fn system_path() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    format!(
        "{}:{home}/.cargo/bin",
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn test_missing_kernel_is_named_and_nothing_is_created() {
    let vm = Vm::new("kernel", "", "");
    std::fs::remove_file(vm.dir.path().join("vmlinuz")).expect("rm");
    std::fs::remove_dir(vm.run_dir()).expect("rmdir");
    let err = vm.fails(
        &system_path(),
        &[
            "VM \"t\": kernel",
            "vmlinuz cannot be used: No such file or directory",
            "fix `kernel` in the configuration",
        ],
        &[],
    );
    assert!(!vm.run_dir().exists(), "{err}");
}

/// A fake sysfs with PCI devices in IOMMU group 7: (address, driver, class).
fn fake_sysfs(root: &Path, members: &[(&str, Option<&str>, &str)], with_group: bool) {
    for (addr, driver, class) in members {
        let dev = root.join("sys/devices/pci0000:00").join(addr);
        std::fs::create_dir_all(&dev).expect("mkdir");
        std::fs::write(dev.join("class"), format!("{class}\n")).expect("class");
        let link = root.join("sys/bus/pci/devices").join(addr);
        std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&dev, &link).expect("link");
        if let Some(d) = driver {
            let drv = root.join("sys/bus/pci/drivers").join(d);
            std::fs::create_dir_all(&drv).expect("mkdir");
            std::os::unix::fs::symlink(&drv, dev.join("driver")).expect("driver link");
        }
        if with_group {
            let group = root.join("sys/kernel/iommu_groups/7/devices");
            std::fs::create_dir_all(&group).expect("mkdir");
            std::os::unix::fs::symlink(&dev, group.join(addr)).expect("member");
            std::os::unix::fs::symlink(
                root.join("sys/kernel/iommu_groups/7"),
                dev.join("iommu_group"),
            )
            .expect("group link");
        }
    }
}

fn pci_vm(label: &str) -> Vm {
    Vm::new(
        label,
        "isolatedPciDevices = [\"01:00.0\"]",
        "vmm = \"crosvm\"\npciDevices = [{ path = \"01:00.0\" }]",
    )
}

#[test]
fn test_iommu_group_not_fully_bound_names_the_device_and_its_members() {
    let vm = pci_vm("iommu");
    let sys = vm.dir.path().join("fake");
    fake_sysfs(
        &sys,
        &[
            ("0000:01:00.0", Some("vfio-pci"), "0x030000"),
            ("0000:01:00.1", Some("snd_hda_intel"), "0x040300"),
            ("0000:00:01.0", Some("pcieport"), "0x060400"),
        ],
        true,
    );
    let sysfs = sys.join("sys");
    let mut c = vm.service(&system_path());
    c.arg("--sysfs-root").arg(&sysfs);
    let o = c.output().expect("vm-service");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for e in [
        "PCI device 0000:01:00.0: IOMMU group 7 is not fully bound to vfio-pci",
        "0000:00:01.0 (pcieport), 0000:01:00.0 (vfio-pci), 0000:01:00.1 (snd_hda_intel)",
        "isolatedPciDevices",
    ] {
        assert!(err.contains(e), "{e:?} not in:\n{err}");
    }
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new());

    // Bound: the check passes and the start stops at the next step (no crosvm here).
    std::fs::remove_file(sys.join("sys/devices/pci0000:00/0000:01:00.1/driver")).expect("unbind");
    let mut c = vm.service("/nonexistent");
    c.arg("--sysfs-root").arg(&sysfs);
    let (_, err) = text(&c.output().expect("vm-service"));
    assert!(err.contains("crosvm is not installed"), "{err}");
}

/// Without NixOS nothing claimed the device at boot: vm-service moves it to vfio-pci, but only
/// once every other check passed (a missing VMM leaves the host's driver alone).
#[test]
fn test_isolated_device_is_moved_to_vfio_pci_once_the_rest_of_the_start_is_known_good() {
    let vm = Vm::new(
        "vfiobind",
        "isolatedPciDevices = [\"01:00.0\"]",
        "vmm = \"crosvm\"\npciDevices = [{ path = \"01:00.0\" }]\n\
         crosvm.extraRunArgs = [\"--disable-sandbox\"]",
    );
    let sys = vm.dir.path().join("fake");
    fake_sysfs(
        &sys,
        &[("0000:01:00.0", Some("xhci_hcd"), "0x0c0330")],
        true,
    );
    let root = sys.join("sys");
    let dev = root.join("devices/pci0000:00/0000:01:00.0");
    std::fs::write(dev.join("driver_override"), "(null)\n").expect("override");
    std::fs::write(root.join("bus/pci/drivers/xhci_hcd/unbind"), "").expect("unbind");
    std::fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).expect("vfio-pci");
    std::fs::write(root.join("bus/pci/drivers_probe"), "").expect("probe");

    let mut c = vm.service("/nonexistent");
    c.arg("--sysfs-root").arg(&root);
    let (_, err) = text(&c.output().expect("vm-service"));
    assert!(err.contains("crosvm is not installed"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).expect("read"),
        "(null)\n",
        "nothing written while the start cannot succeed"
    );

    let bin = fake_bin(vm.dir.path(), &[("crosvm", "exit 0")]);
    let mut c = vm.service(&format!("{}:{}", bin.display(), system_path()));
    c.arg("--sysfs-root").arg(&root);
    let o = c.output().expect("vm-service");
    let (_, err) = text(&o);
    // The fake kernel does not bind on drivers_probe, so the final group check fails: what
    // matters is what vm-service wrote, in order.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("vfio-pci: wrote \"vfio-pci\" into"), "{err}");
    assert!(err.contains("is not fully bound to vfio-pci"), "{err}");
    let read = |p: &Path| std::fs::read_to_string(p).expect("read");
    assert_eq!(read(&dev.join("driver_override")), "vfio-pci");
    assert_eq!(
        read(&root.join("bus/pci/drivers/xhci_hcd/unbind")),
        "0000:01:00.0"
    );
    assert_eq!(read(&root.join("bus/pci/drivers_probe")), "0000:01:00.0");
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new());
}

#[test]
fn test_pci_device_without_iommu_group_asks_for_the_iommu() {
    let vm = pci_vm("noiommu");
    let sys = vm.dir.path().join("fake");
    fake_sysfs(
        &sys,
        &[("0000:01:00.0", Some("vfio-pci"), "0x030000")],
        false,
    );
    let mut c = vm.service(&system_path());
    c.arg("--sysfs-root").arg(sys.join("sys"));
    let (_, err) = text(&c.output().expect("vm-service"));
    assert!(
        err.contains("PCI device 0000:01:00.0 has no IOMMU group"),
        "{err}"
    );
    assert!(err.contains("intel_iommu=on"), "{err}");
}

#[test]
fn test_socket_in_use_stops_the_start_and_stays() {
    let vm = Vm::new("inuse", "", "");
    let qmp = vm.run_dir().join("t-qmp.socket");
    let _listener = UnixListener::bind(&qmp).expect("listen");
    vm.fails(
        &system_path(),
        &[&format!(
            "socket {} is in use by a running process",
            qmp.display()
        )],
        &["t-qmp.socket".to_owned()],
    );
}

#[test]
fn test_non_socket_in_a_socket_path_is_not_removed() {
    let vm = Vm::new("notsock", "", "");
    let path = vm.run_dir().join("t-console.socket");
    std::fs::write(&path, "precious").expect("file");
    vm.fails(
        &system_path(),
        &["exists and is not a socket: refusing to remove it"],
        &["t-console.socket".to_owned()],
    );
    assert_eq!(std::fs::read_to_string(&path).expect("kept"), "precious");
}

#[test]
fn test_unwritable_run_dir_is_reported() {
    let vm = Vm::new("rodir", "", "");
    // Programs that are never run: the start fails before.
    let bin = fake_bin(
        vm.dir.path(),
        &[
            ("qemu-system-x86_64", "exit 1"),
            ("vhost-device-vsock", "exit 1"),
            ("qemu-img", "exit 1"),
        ],
    );
    let path = bin.to_str().expect("utf-8");
    // A copy nobody can run, wherever the checkout is.
    let program = vm.dir.path().join("vmsilo");
    std::fs::copy(common::vmsilo_bin(), &program).expect("copy vmsilo");
    let mut c = vm.service_with(&program, path);
    if nix::unistd::geteuid().is_root() {
        // root writes anywhere: run as nobody, for whom the root-owned run dir is read-only.
        use std::os::unix::process::CommandExt;
        c.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(vm.run_dir(), std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
    }
    let o = c.output().expect("vm-service");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the run directory {} is not writable",
            vm.run_dir().display()
        )),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new());
}

#[test]
fn test_vm_already_running_is_refused() {
    let vm = Vm::new("twice", "", "");
    let lock = std::fs::File::create(vm.run_dir().join("t.lock")).expect("lock file");
    let _held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).expect("flock");
    vm.fails(
        &system_path(),
        &["VM \"t\": is already running", "vm-stop t"],
        &["t.lock".to_owned()],
    );
}

#[test]
fn test_vmm_that_exits_at_once_is_reported_and_everything_is_undone() {
    let vm = Vm::new("vmmfail", "", "");
    // A stale socket from an earlier crash is removed first; the real qemu-img and
    // vhost-device-vsock run; the stand-in QEMU fails.
    drop(UnixListener::bind(vm.run_dir().join("t-qmp.socket")).expect("stale"));
    let bin = fake_bin(
        vm.dir.path(),
        &[(
            "qemu-system-x86_64",
            "echo 'qemu-system-x86_64: -accel tcg: boom' >&2; exit 1",
        )],
    );
    let path = format!("{}:{}", bin.display(), system_path());
    let err = vm.fails(
        &path,
        &[
            "removed stale socket",
            "qemu-system-x86_64: -accel tcg: boom",
            "VM \"t\": QEMU exited with status 1 before the VM was up",
        ],
        &[],
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn test_user_backend_gets_a_user_owned_socket_dir_that_is_removed_afterwards() {
    // crosvm with sound: vhost-device-sound runs as the configured user (uid 65534 here) and
    // must create its socket although the run directory belongs to root. The stand-in backend
    // binds its socket as that user and records who it is; the stand-in crosvm (root) records
    // what it sees and fails, so vm-service cleans up.
    // `--pivot-root`: crosvm's sandbox directory; this machine may have no /var/empty.
    let vm = Vm::new(
        "sound",
        "",
        "vmm = \"crosvm\"\nsound = true\ncrosvm.extraRunArgs = [\"--pivot-root\", \"/tmp\"]",
    );
    let d = vm.dir.str().to_owned();
    let seen = format!("{d}/seen");
    let bin = fake_bin(
        vm.dir.path(),
        &[
            (
                "vhost-device-sound",
                // argv: --socket PATH --backend pipewire
                "id -u > \"$(dirname \"$2\")/backend-uid\"\n\
                 exec socat UNIX-LISTEN:\"$2\",fork /dev/null",
            ),
            (
                "crosvm",
                &format!(
                    "stat -c '%u:%g %a' {d}/run/t.user > {seen}\n\
                     stat -c '%u %F' {d}/run/t.user/t-sound.socket >> {seen}\n\
                     cat {d}/run/t.user/backend-uid >> {seen}\n\
                     exit 1"
                ),
            ),
        ],
    );
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", bin.display(), system_path());
    let o = vm
        .service_as(&common::vmsilo_bin(), &path, 65534)
        .output()
        .expect("vm-service");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("crosvm exited with status 1 before the VM was up"),
        "{err}"
    );
    let seen = std::fs::read_to_string(&seen).expect("the stand-in crosvm ran");
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["65534:65534 700", "65534 socket", "65534"],
        "{err}"
    );
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new(), "{err}");
}

#[test]
fn test_gate_and_waypipe_run_confined_and_the_vmm_only_sees_the_sealed_gate_dir() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (namespaces, a second uid)");
        return;
    }
    // A QEMU VM with gpu: the stand-in gate and waypipe (uid 65534) record who they are, which
    // network interfaces and which writable places they have, then listen; the stand-in QEMU
    // (root) records the gate directory and the vsock link it finds, then fails, so vm-service
    // cleans up. The real vhost-device-vsock and qemu-img run.
    let vm = Vm::new(
        "gate",
        "",
        "gpu = true
color = \"#2ecc71\"",
    );
    let d = vm.dir.str().to_owned();
    let probe = "id -u > \"$dir/$who-uid\"\n\
                 tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ' > \"$dir/$who-net\"\n\
                 if touch /tmp/vmsilo-gate-probe-$$ 2>/dev/null; then echo writable; else echo read-only; fi > \"$dir/$who-tmp\"\n\
                 rm -f /tmp/vmsilo-gate-probe-$$\n\
                 echo \"$@\" > \"$dir/$who-argv\"\n\
                 echo \"${WAYLAND_DISPLAY:-unset}\" > \"$dir/$who-display\"\n\
                 ls -A /home | wc -l > \"$dir/$who-home\"\n";
    let gate = format!(
        "sock=\"$6\"; dir=\"$(dirname \"$sock\")\"; who=gate\n{probe}\
         exec socat UNIX-LISTEN:\"$sock\",fork /dev/null"
    );
    let waypipe = format!(
        "sock=\"$3\"; dir=\"$(dirname \"$sock\")\"; who=waypipe\n{probe}\
         exec socat UNIX-LISTEN:\"$sock\",fork /dev/null"
    );
    let seen = format!("{d}/seen");
    let qemu = format!(
        "g={d}/run/t.gate\n\
         stat -c '%u:%g %a' $g > {seen}\n\
         stat -c 'state %u:%g %a' $g/state >> {seen}\n\
         stat -c '%u %F' $g/wayland-0 $g/waypipe.socket >> {seen}\n\
         readlink {d}/run/t-vsock.socket_6000 >> {seen}\n\
         for f in uid net tmp home argv display; do for w in gate waypipe; do \
           echo \"$w-$f: $(cat $g/$w-$f)\" >> {seen}; done; done\n\
         case \"$*\" in *vmsilo.waypipe=6000*) echo 'cmdline: waypipe port' >> {seen};; esac\n\
         exit 1"
    );
    let bin = fake_bin(
        vm.dir.path(),
        &[
            ("vmsilo-gate", &gate),
            ("waypipe", &waypipe),
            ("qemu-system-x86_64", &qemu),
        ],
    );
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", bin.display(), system_path());
    let o = vm
        .service_as(&common::vmsilo_bin(), &path, 65534)
        .args(["--wayland-socket", "/run/user/65534/compositor-x"])
        .output()
        .expect("vm-service");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("QEMU exited with status 1 before the VM was up"),
        "{err}"
    );
    let seen = std::fs::read_to_string(&seen).expect("the stand-in QEMU ran");
    let gate_dir = format!("{d}/run/t.gate");
    let expected: Vec<String> = vec![
        // Sealed: root's, so nobody can swap the sockets root-run processes connect to.
        "0:0 755".into(),
        // Its security-context socket goes here: the user's, only the gate connects to it.
        "state 65534:65534 700".into(),
        "65534 socket".into(),
        "65534 socket".into(),
        format!("{gate_dir}/waypipe.socket"),
        "gate-uid: 65534".into(),
        "waypipe-uid: 65534".into(),
        // Only a loopback (down): no network.
        "gate-net: lo ".into(),
        "waypipe-net: lo ".into(),
        "gate-tmp: read-only".into(),
        "waypipe-tmp: read-only".into(),
        // The users' files are hidden (an empty tmpfs over /home).
        "gate-home: 0".into(),
        "waypipe-home: 0".into(),
        format!(
            "gate-argv: --vm t --color #2ecc71 --listen {gate_dir}/wayland-0 --compositor \
             /run/user/65534/compositor-x --state-dir {gate_dir}/state --clipd \
             /run/user/65534/vmsilo-clipd.socket --copy-chord ctrl+shift+c --paste-chord \
             ctrl+shift+v"
        ),
        format!("waypipe-argv: --no-gpu --socket {gate_dir}/waypipe.socket client"),
        "gate-display: unset".into(),
        format!("waypipe-display: {gate_dir}/wayland-0"),
        "cmdline: waypipe port".into(),
    ];
    assert_eq!(seen.lines().collect::<Vec<_>>(), expected, "{err}");
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new(), "{err}");
}

/// Pids of the processes running `program` with an argument that mentions `needle`.
fn pids_of(program: &str, needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let c = String::from_utf8_lossy(&c);
            let mut argv = c.split('\0');
            argv.next()
                .is_some_and(|a| Path::new(a).file_name() == Some(program.as_ref()))
                && argv.any(|a| a.contains(needle))
        })
        .collect()
}

/// What a vhost-user frontend saw of the VM's sound socket.
struct SoundProbe {
    features: u64,
    queues: u64,
    /// jacks, streams, chmaps.
    config: (u32, u32, u32),
    /// Whether the connection survived `SET_VRING_NUM` of size 0 (invalid: vhost-user-backend
    /// rejects it and drops the connection) for the capture ring 3.
    alive_after_bad_rx: bool,
    /// The same for the playback ring 2 (only probed when the connection was still up).
    alive_after_bad_tx: Option<bool>,
    /// vhost-device-sound processes, and sound-filter processes, serving the VM.
    devices: usize,
    filters: usize,
}

/// Starts a crosvm VM with `sound = { backend = "null"; capture = CAPTURE; }` through the
/// real vm-service and the real vhost-device-sound, and probes the socket crosvm would use.
fn probe_real_sound(name: &str, capture: bool) -> SoundProbe {
    use vhost::VhostBackend;
    use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
    use vhost::vhost_user::{Frontend, VhostUserFrontend};

    // The real vhost-device-sound (crates.io; `cargo xtask setup` installs it), copied next to
    // a stand-in crosvm because it runs as uid 65534, who may not reach ~/.cargo/bin.
    let real = vmsilo_testkit::find_tool("vhost-device-sound")
        .expect("vhost-device-sound is not installed: run `cargo xtask setup`");
    let vm = Vm::new(
        name,
        "",
        &format!(
            "vmm = \"crosvm\"\nsound = {{ backend = \"null\", capture = {capture} }}\n\
             crosvm.extraRunArgs = [\"--pivot-root\", \"/tmp\"]"
        ),
    );
    let d = vm.dir.str().to_owned();
    // The stand-in crosvm says it runs, waits for the test's handshake, then fails, so that
    // vm-service tears everything down.
    let bin = fake_bin(
        vm.dir.path(),
        &[(
            "crosvm",
            &format!(
                "touch {d}/crosvm-up\n\
                 while [ ! -e {d}/done ]; do sleep 0.05; done\n\
                 exit 1"
            ),
        )],
    );
    std::fs::copy(&real, bin.join("vhost-device-sound")).expect("copy vhost-device-sound");
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", bin.display(), system_path());
    let mut service = vm
        .service_as(&common::vmsilo_bin(), &path, 65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vm-service");
    let up = PathBuf::from(format!("{d}/crosvm-up"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !up.exists() {
        if std::time::Instant::now() > deadline || service.try_wait().expect("wait").is_some() {
            let _ = service.kill();
            let o = service.wait_with_output().expect("output");
            panic!("crosvm was never started:\n{}", text(&o).1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // vm-service started crosvm only once the backend's socket existed: speak vhost-user to it.
    let socket = format!("{d}/run/t.user/t-sound.socket");
    type Seen = (u64, u64, [u32; 4], bool, Option<bool>);
    let handshake = || -> Result<Seen, String> {
        let mut f = Frontend::connect(&socket, 1).map_err(|e| format!("connect: {e}"))?;
        f.set_owner().map_err(|e| format!("SET_OWNER: {e}"))?;
        let features = f.get_features().map_err(|e| format!("GET_FEATURES: {e}"))?;
        f.set_features(features)
            .map_err(|e| format!("SET_FEATURES: {e}"))?;
        let protocol = f
            .get_protocol_features()
            .map_err(|e| format!("GET_PROTOCOL_FEATURES: {e}"))?;
        f.set_protocol_features(protocol)
            .map_err(|e| format!("SET_PROTOCOL_FEATURES: {e}"))?;
        let wanted = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ;
        if !protocol.contains(wanted) {
            return Err(format!("CONFIG or MQ not offered: {protocol:?}"));
        }
        let queues = f
            .get_queue_num()
            .map_err(|e| format!("GET_QUEUE_NUM: {e}"))?;
        // struct virtio_snd_config { le32 jacks, streams, chmaps, controls }.
        let (_, cfg) = f
            .get_config(0, 16, VhostUserConfigFlags::WRITABLE, &[0; 16])
            .map_err(|e| format!("GET_CONFIG: {e}"))?;
        let word = |i: usize| u32::from_le_bytes(cfg[i * 4..i * 4 + 4].try_into().expect("4"));
        // The capture ring: an invalid size, which vhost-device-sound refuses by dropping the
        // connection; behind the filter it never gets there.
        let _ = f.set_vring_num(3, 0);
        let alive_rx = f.get_features().is_ok();
        let alive_tx = alive_rx.then(|| {
            let _ = f.set_vring_num(2, 0);
            f.get_features().is_ok()
        });
        Ok((
            features,
            queues,
            [word(0), word(1), word(2), word(3)],
            alive_rx,
            alive_tx,
        ))
    };
    // (Read before the handshake: after a frontend leaves, vhost-device-sound removes and
    // re-creates its socket.)
    let owner = std::fs::metadata(&socket).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let devices = pids_of("vhost-device-sound", &d).len();
    let filters = pids_of("exe", &socket).len();
    let result = handshake();

    std::fs::write(format!("{d}/done"), "").expect("done");
    let o = service.wait_with_output().expect("vm-service");
    let (_, err) = text(&o);
    let (features, queues, [jacks, streams, chmaps, _controls], alive_rx, alive_tx) = result
        .unwrap_or_else(|e| panic!("vhost-user handshake with vhost-device-sound: {e}\n{err}"));
    assert_eq!(
        owner.ok(),
        Some(65534),
        "the VM's sound socket belongs to the configured user"
    );
    // The stand-in crosvm failed: vm-service says so, stops the backends and removes files.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("crosvm exited with status 1 before the VM was up"),
        "{err}"
    );
    assert_eq!(
        pids_of("vhost-device-sound", &d).len() + pids_of("exe", &socket).len(),
        0,
        "backends left running"
    );
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new(), "{err}");
    SoundProbe {
        features,
        queues,
        config: (jacks, streams, chmaps),
        alive_after_bad_rx: alive_rx,
        alive_after_bad_tx: alive_tx,
        devices,
        filters,
    }
}

#[test]
fn test_real_vhost_device_sound_with_capture_offers_the_capture_stream() {
    let p = probe_real_sound("soundcap", true);
    assert_ne!(
        p.features & (1 << 32),
        0,
        "VIRTIO_F_VERSION_1 offered: {:#x}",
        p.features
    );
    assert_eq!(p.queues, 4, "control, event, tx and rx queues");
    assert_eq!(p.config, (0, 2, 1), "an output and an input stream");
    assert!(
        !p.alive_after_bad_rx,
        "vhost-device-sound itself sees (and refuses) the bad capture ring"
    );
    assert_eq!((p.devices, p.filters), (1, 0), "no filter with capture");
}

#[test]
fn test_real_vhost_device_sound_without_capture_sits_behind_the_filter() {
    let p = probe_real_sound("soundnocap", false);
    assert_ne!(p.features & (1 << 32), 0, "{:#x}", p.features);
    assert_eq!(p.queues, 4, "the frontend still sets up four queues");
    assert_eq!(
        p.config,
        (0, 1, 1),
        "the guest driver is shown the output stream only"
    );
    assert!(
        p.alive_after_bad_rx,
        "the capture ring never reaches vhost-device-sound"
    );
    assert_eq!(
        p.alive_after_bad_tx,
        Some(false),
        "the playback ring does reach it (the probe detects a refusal)"
    );
    assert_eq!((p.devices, p.filters), (1, 1));
}

// ---------------------------------------------------------------------------------------------
// vmsilo status

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/vmsilo.toml")
}

fn write_state(run: &Path, vm: &str, pid: u32, started_ago: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let state = serde_json::json!({
        "version": 1, "vm": vm, "state": "running", "pid": pid, "vmmPid": 4242,
        "vmm": "crosvm", "startedAt": now - started_ago, "debug": false,
        "console": format!("{}/{vm}-console", run.display()),
    });
    std::fs::write(run.join(format!("{vm}.state")), state.to_string()).expect("state");
}

/// A stand-in for vmsilo-balloond's status socket: serves one document per connection.
fn balloond_status(path: &Path, doc: String) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming().take(2) {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(doc.as_bytes());
        }
    })
}

/// A status document as vmsilo-balloond writes it: one VM, `banking`, with a 512 MiB balloon.
fn balloond_doc() -> String {
    use vmsilo_balloond::status::{DaemonStatus, STATUS_VERSION, StatusDoc, VmStatus};
    let doc = StatusDoc {
        version: STATUS_VERSION,
        daemon: DaemonStatus {
            pid: 1,
            ..DaemonStatus::default()
        },
        host: None,
        vms: vec![VmStatus {
            name: "banking".into(),
            vmm: "crosvm".into(),
            socket: "/run/vmsilo/banking-control.socket".into(),
            generation: 1,
            state: "ok".into(),
            balloon_actual: Some(512 << 20),
            ram_size: Some(4 << 30),
            ..VmStatus::default()
        }],
    };
    let mut text = serde_json::to_string(&doc).expect("json");
    text.push('\n');
    text
}

#[test]
fn test_status_shows_running_stopped_and_failed_vms() {
    let dir = Scratch::new("status");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("run");
    write_state(&run, "banking", std::process::id(), 3725);
    let _cmd_socket = UnixListener::bind(run.join("banking-command.socket")).expect("socket");
    let mut dead = Command::new("true").spawn().expect("true");
    let dead_pid = dead.id();
    dead.wait().expect("wait");
    write_state(&run, "personal", dead_pid, 10);
    let server = balloond_status(&run.join("balloond.status"), balloond_doc());

    let status = |json: bool| {
        let mut c = vmsilo();
        c.args(["--config", example().to_str().expect("utf-8"), "status"])
            .arg("--run-dir")
            .arg(&run)
            .env("VMSILO_SYSTEMD_DIR", NO_SYSTEMD);
        if json {
            c.arg("--json");
        }
        c.output().expect("status")
    };
    let o = status(false);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let cols = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        [
            "VM", "STATE", "UPTIME", "MEMORY", "BALLOON", "PID", "COMMAND", "SOCKET"
        ]
    );
    let sock = run.join("banking-command.socket").display().to_string();
    assert_eq!(
        cols(lines[1]),
        [
            "banking", "running", "1h02m", "4096", "MiB", "512", "MiB", "4242", &sock
        ]
    );
    assert_eq!(
        cols(lines[2]),
        ["shopping", "stopped", "-", "2048", "MiB", "-", "-", "-"]
    );
    assert_eq!(
        cols(lines[3]),
        ["personal", "failed", "-", "4096", "MiB", "-", "-", "-"]
    );
    assert!(
        !out.contains('\x1b'),
        "no colours when stdout is not a terminal"
    );

    let o = status(true);
    let (out, _) = text(&o);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["vms"][0]["state"], "running");
    assert_eq!(v["vms"][0]["pid"], std::process::id());
    assert_eq!(v["vms"][0]["balloonBytes"], 536870912u64);
    assert_eq!(v["vms"][0]["color"], "#2ecc71");
    assert_eq!(v["vms"][1]["state"], "stopped");
    assert_eq!(v["vms"][2]["state"], "failed");
    server.join().expect("server");
}

#[test]
fn test_status_on_a_terminal_colours_vm_names() {
    let dir = Scratch::new("colour");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("run");
    let mut term = Term::new();
    let mut child = vmsilo()
        .args([
            "--config",
            example().to_str().expect("utf-8"),
            "status",
            "banking",
        ])
        .arg("--run-dir")
        .arg(&run)
        .env("VMSILO_SYSTEMD_DIR", NO_SYSTEMD)
        .env_remove("NO_COLOR")
        .stdout(term.stdio())
        .spawn()
        .expect("status");
    let code = child.wait().expect("wait");
    assert!(code.success());
    term.pump(Duration::from_millis(500));
    assert!(
        term.seen.contains("\x1b[38;2;46;204;113mbanking\x1b[0m"),
        "{:?}",
        term.seen
    );
    assert!(term.seen.contains("stopped"), "{:?}", term.seen);
}

// ---------------------------------------------------------------------------------------------
// vm-start / vm-stop

fn start_stop(dir: &Scratch, name: &str, vm: &str, envs: &[(&str, &str)]) -> Output {
    let program = multi_call(dir.path(), name);
    let mut c = common::command(&program);
    c.args(["--config", example().to_str().expect("utf-8"), vm]);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run")
}

#[test]
fn test_vm_start_without_systemd_says_so_and_suggests_vm_start_debug() {
    let dir = Scratch::new("nosystemd");
    let marker = NO_SYSTEMD;
    for name in ["vm-start", "vm-stop"] {
        let o = start_stop(&dir, name, "banking", &[("VMSILO_SYSTEMD_DIR", marker)]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("systemd is not running on this machine"),
            "{err}"
        );
        assert!(err.contains("vm-start-debug banking"), "{err}");
        if name == "vm-stop" {
            // How to stop a VM that runs without systemd, not how to start one.
            assert!(err.contains("CTRL+]"), "{err}");
            assert!(!err.contains("run the VM in the foreground"), "{err}");
        }
    }
    let o = start_stop(
        &dir,
        "vm-start",
        "bankign",
        &[("VMSILO_SYSTEMD_DIR", marker)],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("did you mean \"banking\""), "{err}");
}

#[test]
fn test_vm_start_and_stop_run_systemctl_and_explain_a_missing_unit() {
    let dir = Scratch::new("systemctl");
    let log = dir.path().join("systemctl.log");
    let bin = fake_bin(
        dir.path(),
        &[
            ("systemctl-ok", &format!("echo \"$@\" >>{}", log.display())),
            (
                // What systemd 252's systemctl prints for a unit it does not know.
                "systemctl-missing",
                "echo \"Failed to $1 $2: Unit $2 not found.\" >&2; exit 5",
            ),
        ],
    );
    let systemd_dir = dir.path().to_str().expect("utf-8");
    let ok = bin.join("systemctl-ok");
    for name in ["vm-start", "vm-stop"] {
        let o = start_stop(
            &dir,
            name,
            "shopping",
            &[
                ("VMSILO_SYSTEMD_DIR", systemd_dir),
                ("VMSILO_SYSTEMCTL", ok.to_str().expect("utf-8")),
            ],
        );
        assert!(o.status.success(), "{:?}", text(&o));
    }
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "start vmsilo-shopping-vm.service\nstop vmsilo-shopping-vm.service\n"
    );
    let missing = bin.join("systemctl-missing");
    let o = start_stop(
        &dir,
        "vm-start",
        "shopping",
        &[
            ("VMSILO_SYSTEMD_DIR", systemd_dir),
            ("VMSILO_SYSTEMCTL", missing.to_str().expect("utf-8")),
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("systemd has no unit vmsilo-shopping-vm.service"),
        "{err}"
    );
    assert!(err.contains("vmsilo units --out DIR"), "{err}");
}

#[test]
fn test_port_file_is_read_by_vm_switch_and_a_missing_switch_is_reported() {
    let vm = Vm::new(
        "vmswitch",
        "",
        "[nixosVms.network.interfaces.lan]\nvmNetwork = { name = \"lan\", receiveBroadcast = true, routes = [\"0.0.0.0/0\"] }\naddresses = [\"10.5.0.2/24\"]\nv6Addresses = [\"fd00::2/64\"]",
    );
    let port = vm.dir.path().join("vs/lan/t.port");
    let mut c = vm.service(&system_path());
    c.args(["--socket-timeout", "1s"]);
    let child = c
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vm-service");
    common::wait_path(&port, Duration::from_secs(10));
    // vm-switch's own parser reads what the runtime wrote.
    let parsed = vm_switch::port_file::PortConfig::load(&port).expect("vm-switch accepts it");
    assert_eq!(parsed.name, "t");
    assert!(parsed.receive_broadcast);
    let addrs: Vec<String> = parsed.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["10.5.0.2/24", "fd00::2/64"]);
    let routes: Vec<String> = parsed.routes.iter().map(ToString::to_string).collect();
    assert_eq!(routes, ["0.0.0.0/0"]);
    let o = child.wait_with_output().expect("wait");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "vm-switch did not create {}/vs/lan/t.sock within 1s: is vm-switch-lan.service running?",
            vm.dir.str()
        )),
        "{err}"
    );
    assert!(!port.exists(), "the port file is removed");
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new());
    assert!(!vm.dir.path().join("state/overlays/t.qcow2").exists());
}

/// `vm-shell --ssh` logs in at the first address of any interface that answers on the ssh port
/// (issue 14: not only the first static one), and says clearly when none does.
#[test]
fn test_vm_shell_ssh_logs_in_at_the_first_address_that_answers() {
    let dir = Scratch::new("ssh");
    let bin = fake_bin(dir.path(), &[("ssh", "echo \"ssh $*\"")]);
    let program = multi_call(dir.path(), "vm-shell");
    // Interface a's address refuses connections; b's has a listener (standing in for sshd).
    let sshd = std::net::TcpListener::bind("127.0.0.3:0").expect("listen on 127.0.0.3");
    let port = sshd.local_addr().expect("addr").port().to_string();
    let cfg = dir.path().join("ssh.toml");
    std::fs::write(
        &cfg,
        "user = \"alice\"\n[[nixosVms]]\nname = \"t\"\nkernel = \"/k\"\ninitramfs = \"/i\"\n\
         rootDisk = \"/r\"\n[nixosVms.network.interfaces.a]\nvmNetwork.name = \"lan\"\n\
         addresses = [\"127.0.0.2/8\"]\n[nixosVms.network.interfaces.b]\nvmNetwork.name = \"lan2\"\n\
         addresses = [\"127.0.0.3/8\"]\n",
    )
    .expect("config");
    let run = |config: &Path, args: &[&str]| {
        common::command(&program)
            .args(["--config", config.to_str().expect("utf-8")])
            .args(args)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("VMSILO_RUN_DIR", dir.path().join("run"))
            .output()
            .expect("vm-shell")
    };
    let o = run(&cfg, &["--ssh", "t", "--", "-p", &port]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, format!("ssh user@127.0.0.3 -p {port}\n"));
    let o = run(&cfg, &["--ssh", "--root", "t", "--", "-p", &port]);
    assert_eq!(text(&o).0, format!("ssh root@127.0.0.3 -p {port}\n"));
    drop(sshd);
    let o = run(&cfg, &["--ssh", "t", "--", "-p", &port]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(out, "", "ssh is not run");
    assert!(
        err.contains(&format!("VM \"t\": no address answers on ssh port {port}: 127.0.0.2 (a): connection refused (sshd not running?); 127.0.0.3 (b): connection refused")),
        "{err}"
    );
    assert!(
        err.contains("sshd enabled with your key in its guestConfig"),
        "{err}"
    );
    let o = run(&example(), &["--ssh", "personal"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("VM \"personal\" has no address"), "{err}");
    // The console of a VM that is not running.
    let o = run(&example(), &["banking"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("VM \"banking\" is not running"), "{err}");
}

/// A crosvm VM with `sharedHome = "<d>/shared/t"` (`shared/` owned by uid 65534, as the NixOS
/// module gives `/shared` to the user) and a template owned by that user; the stand-in crosvm
/// records the home it was given and fails, so vm-service undoes what it did.
fn shared_home_vm(label: &str) -> (Vm, PathBuf, PathBuf) {
    let vm = Vm::new(
        label,
        "",
        "vmm = \"crosvm\"\nrootOverlay = { type = \"tmpfs\" }\ncrosvm.extraRunArgs = [\"--pivot-root\", \"/tmp\"]",
    );
    let d = vm.dir.str().to_owned();
    let text = std::fs::read_to_string(&vm.cfg).expect("config");
    std::fs::write(
        &vm.cfg,
        text.replace(
            "sharedHome = false",
            &format!("sharedHome = \"{d}/shared/t\""),
        ),
    )
    .expect("config");
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let shared = vm.dir.path().join("shared");
    let template = vm.dir.path().join("template");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::create_dir_all(&template).expect("mkdir");
    std::fs::write(template.join(".bashrc"), "PS1=vm\n").expect("write");
    for p in [&shared, &template, &template.join(".bashrc")] {
        std::os::unix::fs::lchown(p, Some(65534), Some(65534)).expect("chown");
    }
    (vm, shared.join("t"), template)
}

fn is_root_for_shared_home() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: vm-service giving a home to another user needs root");
    }
    root
}

fn shared_home_service(vm: &Vm, template: &Path) -> Output {
    let d = vm.dir.str().to_owned();
    let bin = fake_bin(
        vm.dir.path(),
        &[(
            "crosvm",
            &format!(
                "stat -c '%u:%g %a' {d}/shared/t > {d}/seen\n\
                 stat -c '%u:%g %a' {d}/shared/t/.bashrc >> {d}/seen\n\
                 exit 1"
            ),
        )],
    );
    let path = format!("{}:{}", bin.display(), system_path());
    vm.service_as(&common::vmsilo_bin(), &path, 65534)
        .args(["--home-template", template.to_str().expect("utf-8")])
        .output()
        .expect("vm-service")
}

#[test]
fn test_vm_service_refuses_a_shared_home_that_is_a_symlink_to_a_root_directory() {
    if !is_root_for_shared_home() {
        return;
    }
    let (vm, home, template) = shared_home_vm("homelink");
    // The user points their home at a root directory (say /run/systemd/system).
    let target = vm.dir.path().join("root-dir");
    std::fs::create_dir(&target).expect("mkdir");
    std::os::unix::fs::symlink(&target, &home).expect("symlink");

    let o = shared_home_service(&vm, &template);

    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot prepare the shared home"), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    assert_eq!(entries(&target), Vec::<String>::new(), "{err}");
    assert!(
        !vm.dir.path().join("seen").exists(),
        "the VMM must not start: {err}"
    );
    assert!(std::fs::symlink_metadata(&home).expect("link").is_symlink());
    assert_eq!(entries(&vm.run_dir()), Vec::<String>::new(), "{err}");
}

#[test]
fn test_vm_service_fills_a_new_shared_home_as_the_user_and_removes_it_after_a_failed_start() {
    if !is_root_for_shared_home() {
        return;
    }
    let (vm, home, template) = shared_home_vm("homefill");

    let o = shared_home_service(&vm, &template);

    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("created the shared home"), "{err}");
    let seen = std::fs::read_to_string(vm.dir.path().join("seen")).expect("crosvm ran");
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["65534:65534 700", "65534:65534 644"],
        "{err}"
    );
    // The start failed before the VM ran: the home it created is gone, the rest stays.
    assert!(!home.exists(), "{err}");
    assert!(vm.dir.path().join("shared").is_dir());
    assert!(template.join(".bashrc").exists());
}
