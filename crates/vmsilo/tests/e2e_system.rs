//! End to end, the whole system as the generated units assemble it: two QEMU/TCG guests `a`
//! and `b` on one vm-switch network `lan`, vmsilo-balloond balancing their memory, commands run
//! in them through `vm-run`. Every program is the real binary.
//!
//! Assembly. There is no systemd as PID 1 here, so the test plays systemd: `vmsilo units
//! --out` writes the units for the configuration, and the test runs each unit's `ExecStart=`
//! command line as written (and listens on each socket unit's `ListenStream=`). The generator
//! always writes the default directories (`/run/vmsilo`, `/run/vm-switch`); the test moves
//! every word that names one of them into its scratch directory, and where a unit relies on a
//! program's default directory it adds the relocating flag:
//!
//! - `vm-switch-lan.service`: `vm-switch -n lan -d <vs>/lan --log-level info`, as generated;
//! - `vmsilo-balloond.service`: as generated (the poll interval and the `extraArgs` come from
//!   the configuration) + `--run-dir <run> --host-meminfo <fake> --host-psi <none>`: the host
//!   is a meminfo file the test writes;
//! - `vmsilo-<vm>.socket` + `vmsilo-<vm>-command.service`: `systemd-socket-activate
//!   --listen=<run>/<vm>-command.socket vmsilo --config <cfg> command-service <vm>` + `--run-dir
//!   --vm-switch-dir --state-dir`; without systemd the command service runs `vmsilo vm-service
//!   <vm>` itself (as `cargo xtask demo` does).
//!
//! Then:
//!
//! 1. `vm-run -w a …` and `vm-run -w b …` at the same time: each first connection starts its VM
//!    through socket activation (vm-service writes the port file, waits for vm-switch's
//!    socket, starts vhost-device-vsock and QEMU), the two guests boot in parallel.
//! 2. `a` pings `b` and `b` pings `a` through vm-switch, over IPv4 and IPv6; `a` pinging from an
//!    address that is not its own gets no answer, and `vm-switch --stats` counts spoof drops on
//!    `a`'s port.
//! 3. The host is short of memory (the fake meminfo): balloond finds both VMs from
//!    `<run>/<vm>-qmp.socket` and inflates both balloons; `vmsilo-balloond --status --json`
//!    says so, and `vmsilo status --json` shows both VMs running with balloond's balloon sizes.
//!    Then the host has memory to spare: both balloons are deflated, and `vmsilo status` shows
//!    empty balloons.
//! 4. Stop as systemd would: SIGTERM to the command services (their vm-service children press
//!    the power button, the guests power off), then to vm-switch and balloond. Every exit status
//!    is the documented one, and no port file, VM socket, state file or process is left.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Guard, Scratch, entries, multi_call};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use vmsilo_testkit::{GuestImage, workspace_binary};

/// The longest one `vm-run` may take (a cold start of two TCG guests takes seconds alone, and
/// minutes on a loaded two-core machine running other e2e tests beside this one).
const LIMIT: Duration = Duration::from_secs(180);
/// How long the command services wait for an agent (`--agent-timeout`): most of [`LIMIT`],
/// so that a slow boot ends in the service's own message rather than in the test's limit.
const AGENT_TIMEOUT: &str = "170s";
/// The longest a daemon may take to create its socket, to react, or to exit (generous: a
/// loaded machine).
const DAEMON: Duration = Duration::from_secs(60);
/// The VMs and their addresses on `lan`.
const VMS: [(&str, &str, &str); 2] = [
    ("a", "10.77.0.1/24", "fd77::1/64"),
    ("b", "10.77.0.2/24", "fd77::2/64"),
];
const MIB: u64 = 1 << 20;

/// Splits a systemd command line with the quoting vmsilo's generator writes: blanks separate
/// words, double quotes with backslash escapes, `%%` and `$$` for `%` and `$`.
fn systemd_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return words;
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next().expect("unterminated quote") {
                    '"' => break,
                    '\\' => match chars.next().expect("escape") {
                        'n' => word.push('\n'),
                        't' => word.push('\t'),
                        c => word.push(c),
                    },
                    c => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word.replace("%%", "%").replace("$$", "$"));
    }
}

/// The words of `key=` in the generated unit `name`.
fn unit_words(units: &Path, name: &str, key: &str) -> Vec<String> {
    let path = units.join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (vmsilo units wrote no such unit)", path.display()));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {}:\n{text}", path.display()));
    systemd_words(line)
}

/// The assembled system in a scratch directory: `run/` for `/run/vmsilo`, `vs/` for
/// `/run/vm-switch`, `state/` for `/var/lib/vmsilo`.
struct System {
    dir: Scratch,
    cfg: PathBuf,
    vm_run: PathBuf,
    meminfo: PathBuf,
}

impl System {
    fn new(image: &GuestImage) -> System {
        let dir = Scratch::new("system");
        for sub in ["run", "vs", "state", "units"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let root = dir.path().join("root.img");
        std::fs::File::create(&root)
            .and_then(|f| f.set_len(8 << 20))
            .expect("root disk");
        let mut text = String::from(
            r#"
enable = true
user = "root"
qemu.accel = "tcg"

[vmsilo-balloond]
pollInterval = "1s"
# The guests have 384 MiB: a critical level below the default 400 MiB guess, so that the
# policy sees headroom to take.
extraArgs = ["--guest-critical", "64m"]
"#,
        );
        for (vm, v4, v6) in VMS {
            text.push_str(&format!(
                r#"
[[nixosVms]]
name = "{vm}"
vmm = "qemu"
memory = 384
cpus = 1
gpu = false
sound = false
sharedHome = false
kernel = "{kernel}"
initramfs = "{initrd}"
rootDisk = "{root}"
rootOverlay = {{ type = "tmpfs" }}

[nixosVms.network.interfaces.lan]
vmNetwork.name = "lan"
addresses = ["{v4}"]
v6Addresses = ["{v6}"]
"#,
                kernel = image.kernel.display(),
                initrd = image.initrd.display(),
                root = root.display(),
            ));
        }
        let cfg = dir.path().join("vmsilo.toml");
        std::fs::write(&cfg, text).expect("config");
        let vm_run = multi_call(dir.path(), "vm-run");
        let meminfo = dir.path().join("meminfo");
        let sys = System {
            dir,
            cfg,
            vm_run,
            meminfo,
        };
        sys.write_meminfo(4096 * MIB, 300 * MIB);
        sys
    }

    fn d(&self) -> &str {
        self.dir.str()
    }

    fn run_dir(&self) -> String {
        format!("{}/run", self.d())
    }

    fn switch_dir(&self) -> String {
        format!("{}/vs/lan", self.d())
    }

    fn cfg(&self) -> &str {
        self.cfg.to_str().expect("utf-8")
    }

    /// The host as balloond sees it: a meminfo file, replaced atomically.
    fn write_meminfo(&self, total: u64, available: u64) {
        let tmp = self.meminfo.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!(
                "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n",
                total / 1024,
                available / 1024,
                available / 1024
            ),
        )
        .expect("meminfo");
        std::fs::rename(&tmp, &self.meminfo).expect("meminfo");
    }

    /// Moves the generator's default directories into the scratch directory.
    fn relocate(&self, words: Vec<String>) -> Vec<String> {
        let d = self.d();
        words
            .into_iter()
            .map(|w| {
                for (default, here) in [("/run/vm-switch", "vs"), ("/run/vmsilo", "run")] {
                    if let Some(rest) = w.strip_prefix(default)
                        && (rest.is_empty() || rest.starts_with('/'))
                    {
                        return format!("{d}/{here}{rest}");
                    }
                }
                w
            })
            .collect()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Every daemon's log, for failure messages.
    fn logs(&self) -> String {
        ["vm-switch", "balloond", "command-a", "command-b"]
            .iter()
            .map(|n| format!("--- {n}:\n{}", self.log(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Starts `argv` with its stderr in `<name>.log`.
    fn spawn(&self, name: &str, argv: &[String]) -> Guard {
        let child = common::command(Path::new(&argv[0]))
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path(name)).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {argv:?}: {e}"));
        Guard(Some(child))
    }

    /// `vm-run --run-dir <run> -w <vm> <cmd>…` with empty stdin, at most [`LIMIT`].
    fn vm_run(&self, vm: &str, cmd: &[&str]) -> Output {
        let child = common::command(&self.vm_run)
            .args(["--run-dir", &self.run_dir(), "-w", vm])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vm-run");
        common::output_within(child, LIMIT)
            .unwrap_or_else(|| panic!("vm-run {vm} {cmd:?} hangs\n{}", self.logs()))
    }

    /// [`System::vm_run`] that must succeed; returns stdout.
    fn vm_run_ok(&self, vm: &str, cmd: &[&str]) -> String {
        let o = self.vm_run(vm, cmd);
        assert!(
            o.status.success(),
            "vm-run -w {vm} {cmd:?}: {}\nstdout: {}\nstderr: {}\n{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr),
            self.logs()
        );
        text(&o.stdout)
    }

    /// `vmsilo status --json` for the scratch run directory.
    fn status(&self) -> Vec<Value> {
        let o = common::vmsilo()
            .env("VMSILO_SYSTEMD_DIR", format!("{}/no-systemd", self.d()))
            .args(["--config", self.cfg(), "status", "--json"])
            .args(["--run-dir", &self.run_dir()])
            .output()
            .expect("vmsilo status");
        assert!(o.status.success(), "vmsilo status: {o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
        v["vms"].as_array().expect("vms").clone()
    }

    /// `vmsilo-balloond --status --json --run-dir <run>`.
    fn balloond_status(&self, bin: &Path) -> Value {
        let o = common::command(bin)
            .args(["--status", "--json", "--run-dir", &self.run_dir()])
            .output()
            .expect("vmsilo-balloond --status");
        assert!(o.status.success(), "vmsilo-balloond --status: {o:?}");
        serde_json::from_slice(&o.stdout).expect("balloond status JSON")
    }

    /// Waits (at most 120 s) until balloond's status has both VMs with statistics (state `ok`)
    /// and balloon sizes that satisfy `want`; returns the status document.
    fn wait_balloons(&self, bin: &Path, what: &str, want: impl Fn(u64) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let doc = self.balloond_status(bin);
            let vms = doc["vms"].as_array().expect("vms");
            if vms.len() == VMS.len()
                && vms
                    .iter()
                    .all(|v| v["state"] == "ok" && v["balloon_actual"].as_u64().is_some_and(&want))
            {
                return doc;
            }
            assert!(
                Instant::now() < deadline,
                "balloond did not {what}: {doc:#}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `vm-switch --stats -d <vs>/lan`: the port of `vm`.
    fn switch_port(&self, bin: &Path, vm: &str) -> Value {
        let o = common::command(bin)
            .args(["--stats", "-d", &self.switch_dir()])
            .output()
            .expect("vm-switch --stats");
        assert!(o.status.success(), "vm-switch --stats: {o:?}");
        let v: Value = serde_json::from_slice(&o.stdout).expect("stats JSON");
        v["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["vm"] == vm)
            .unwrap_or_else(|| panic!("no port {vm} in {v}"))
            .clone()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_exit(
    guard: &mut Guard,
    what: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
) -> ExitStatus {
    guard.wait_timeout_or(timeout, || {
        format!("{what} did not exit within {timeout:?}\n{}", logs())
    })
}

fn sigterm(guard: &mut Guard) {
    let pid = Pid::from_raw(i32::try_from(guard.child().id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
}

/// Pids of processes whose command line mentions `needle`.
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == i32::try_from(std::process::id()).expect("pid") {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = text(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_e2e_system_two_vms_on_vm_switch_with_balloond_and_vm_run() {
    let t0 = Instant::now();
    let image = common::agent_image();
    let switch_bin = workspace_binary("vm-switch", "vm-switch").expect("vm-switch");
    let balloond_bin =
        workspace_binary("vmsilo-balloond", "vmsilo-balloond").expect("vmsilo-balloond");
    let sys = System::new(&image);
    let d = sys.d().to_owned();
    eprintln!("image and binaries: {:.1} s", t0.elapsed().as_secs_f64());

    // The units, as the generator writes them.
    let o = common::vmsilo()
        .args([
            "--config",
            sys.cfg(),
            "units",
            "--out",
            &format!("{d}/units"),
        ])
        .arg("--vm-switch-bin")
        .arg(&switch_bin)
        .arg("--balloond-bin")
        .arg(&balloond_bin)
        .output()
        .expect("vmsilo units");
    assert!(o.status.success(), "vmsilo units: {o:?}");
    let units = PathBuf::from(format!("{d}/units/systemd"));

    // vm-switch-lan.service.
    let switch_argv = unit_words(&units, "vm-switch-lan.service", "ExecStart");
    assert_eq!(
        switch_argv[1..],
        [
            "-n",
            "lan",
            "-d",
            "/run/vm-switch/lan",
            "--log-level",
            "info"
        ],
        "vm-switch-lan.service runs {switch_argv:?}"
    );
    assert_eq!(Path::new(&switch_argv[0]), switch_bin);
    let mut switch = sys.spawn("vm-switch", &sys.relocate(switch_argv));
    common::wait_path(
        Path::new(&format!("{}/stats.sock", sys.switch_dir())),
        DAEMON,
    );

    // vmsilo-balloond.service, on a host the test makes up.
    let mut balloond_argv = unit_words(&units, "vmsilo-balloond.service", "ExecStart");
    assert_eq!(Path::new(&balloond_argv[0]), balloond_bin);
    let tail = balloond_argv[balloond_argv.len() - 2..].to_vec();
    assert_eq!(tail, ["--guest-critical", "64m"], "extraArgs last");
    assert!(
        balloond_argv
            .windows(2)
            .any(|w| w == ["--poll-interval", "1s"]),
        "{balloond_argv:?}"
    );
    balloond_argv = sys.relocate(balloond_argv);
    balloond_argv.extend([
        "--run-dir".to_owned(),
        sys.run_dir(),
        "--host-meminfo".to_owned(),
        sys.meminfo.display().to_string(),
        "--host-psi".to_owned(),
        format!("{d}/no-psi"),
    ]);
    let mut balloond = sys.spawn("balloond", &balloond_argv);
    common::wait_path(
        Path::new(&format!("{}/balloond.status", sys.run_dir())),
        DAEMON,
    );

    // vmsilo-<vm>.socket and vmsilo-<vm>-command.service.
    let path = format!(
        "{}:{}/.cargo/bin",
        std::env::var("PATH").unwrap_or_default(),
        std::env::var("HOME").unwrap_or_default()
    );
    let mut activators = Vec::new();
    for (vm, _, _) in VMS {
        let listen = unit_words(&units, &format!("vmsilo-{vm}.socket"), "ListenStream");
        assert_eq!(listen, [format!("/run/vmsilo/{vm}-command.socket")]);
        let socket = sys.relocate(listen).remove(0);
        let service = unit_words(&units, &format!("vmsilo-{vm}-command.service"), "ExecStart");
        assert_eq!(
            service[1..],
            ["--config", sys.cfg(), "command-service", vm],
            "vmsilo-{vm}-command.service runs {service:?}"
        );
        let mut argv = vec![
            "systemd-socket-activate".to_owned(),
            format!("--listen={socket}"),
            format!("--setenv=PATH={path}"),
            format!("--setenv=VMSILO_SYSTEMD_DIR={d}/no-systemd"),
        ];
        argv.extend(sys.relocate(service));
        argv.extend(
            [
                "--run-dir",
                &sys.run_dir(),
                "--vm-switch-dir",
                &format!("{d}/vs"),
                "--state-dir",
                &format!("{d}/state"),
                "--agent-timeout",
                AGENT_TIMEOUT,
            ]
            .map(str::to_owned),
        );
        let guard = sys.spawn(&format!("command-{vm}"), &argv);
        common::wait_path(Path::new(&socket), DAEMON);
        activators.push(guard);
    }
    for vm in sys.status() {
        assert_eq!(vm["state"], "stopped", "{vm}");
    }

    // 1. Both VMs start on their first command, in parallel.
    let t1 = Instant::now();
    let boot_ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = VMS
            .iter()
            .map(|(vm, _, _)| {
                let sys = &sys;
                s.spawn(move || sys.vm_run_ok(vm, &["cat", "/proc/sys/kernel/random/boot_id"]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("vm-run thread"))
            .collect()
    });
    assert_eq!(boot_ids.len(), 2);
    assert_ne!(boot_ids[0], boot_ids[1], "two guests");
    eprintln!("both VMs up: {:.1} s", t1.elapsed().as_secs_f64());
    for vm in ["a", "b"] {
        assert!(
            std::fs::read_to_string(format!("{}/{vm}.port", sys.switch_dir()))
                .is_ok_and(|t| t.contains(&format!("name = \"{vm}\""))),
            "port file of {vm}"
        );
        assert!(
            Path::new(&format!("{}/{vm}.sock", sys.switch_dir())).exists(),
            "vm-switch socket of {vm}"
        );
        let log = sys.log(&format!("command-{vm}"));
        assert!(log.contains("starting the VM: vm-service pid"), "{log}");
    }

    // 2. The guests reach each other through vm-switch, both ways, IPv4 and IPv6.
    let t2 = Instant::now();
    std::thread::scope(|s| {
        for (vm, peer4, peer6) in [("a", "10.77.0.2", "fd77::2"), ("b", "10.77.0.1", "fd77::1")] {
            let sys = &sys;
            s.spawn(move || {
                for peer in [peer4, peer6] {
                    let out =
                        sys.vm_run_ok(vm, &["ping", "-c", "3", "-i", "0.2", "-w", "20", peer]);
                    assert!(out.contains("3 packets received"), "{vm} → {peer}: {out}");
                }
            });
        }
    });
    // An address that is not a's own: the switch drops it, b never answers.
    let spoof_before = sys.switch_port(&switch_bin, "a")["drops"]["spoof_ip"]
        .as_u64()
        .expect("spoof_ip");
    let o = sys.vm_run(
        "a",
        &[
            "sh",
            "-c",
            "ip addr add 10.77.0.99/24 dev lan && ping -c 2 -i 0.2 -W 1 -w 2 -I 10.77.0.99 10.77.0.2",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "spoofed ping: {o:?}");
    assert!(text(&o.stdout).contains("0 packets received"), "{o:?}");
    let port_a = sys.switch_port(&switch_bin, "a");
    let spoof_after = port_a["drops"]["spoof_ip"].as_u64().expect("spoof_ip");
    assert!(spoof_after > spoof_before, "spoof drops on a: {port_a}");
    assert_eq!(port_a["connected"], true, "{port_a}");
    let port_b = sys.switch_port(&switch_bin, "b");
    assert!(port_b["to_guest_frames"].as_u64() > Some(0), "{port_b}");
    eprintln!("pings: {:.1} s", t2.elapsed().as_secs_f64());

    // 3. The host is short of memory: balloond takes some from both guests.
    let t3 = Instant::now();
    let doc = sys.wait_balloons(&balloond_bin, "inflate both balloons", |b| b > 0);
    let run = sys.run_dir();
    for (v, (vm, _, _)) in doc["vms"].as_array().expect("vms").iter().zip(VMS) {
        assert_eq!(v["name"], vm, "{doc}");
        assert_eq!(v["vmm"], "qemu", "{doc}");
        assert_eq!(v["socket"], format!("{run}/{vm}-qmp.socket"), "{doc}");
        assert_eq!(v["ram_size"].as_u64(), Some(384 * MIB), "{doc}");
        assert!(v["counters"]["adjusts"].as_u64() > Some(0), "{doc}");
    }
    assert_eq!(doc["daemon"]["run_dir"], run.as_str(), "{doc}");
    assert_eq!(doc["daemon"]["poll_interval_ms"], 1000, "{doc}");
    eprintln!("balloons inflated: {:.1} s", t3.elapsed().as_secs_f64());
    let status = sys.status();
    let mut qemu_pids = Vec::new();
    let mut runtime_pids = Vec::new();
    for (s, (vm, _, _)) in status.iter().zip(VMS) {
        assert_eq!(s["vm"], vm, "{s}");
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["memoryMib"], 384, "{s}");
        assert!(
            s["balloonBytes"].as_u64() > Some(0),
            "balloon from balloond: {s}"
        );
        assert_eq!(s["commandSocketPresent"], true, "{s}");
        qemu_pids.push(s["vmmPid"].as_i64().expect("vmmPid"));
        runtime_pids.push(s["pid"].as_i64().expect("pid"));
    }
    // Then it has memory to spare: the guests get theirs back.
    sys.write_meminfo(4096 * MIB, 3072 * MIB);
    sys.wait_balloons(&balloond_bin, "deflate both balloons", |b| b == 0);
    for s in sys.status() {
        assert_eq!(s["balloonBytes"], 0, "balloon from balloond: {s}");
    }
    eprintln!("balloons deflated: {:.1} s", t3.elapsed().as_secs_f64());
    for pid in &qemu_pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert!(comm.starts_with("qemu-system"), "vmmPid {pid} is {comm:?}");
    }

    // 4. Stop: the command services (their vm-service children stop the guests), then the
    //    switch and the balloon daemon.
    let t4 = Instant::now();
    for a in &mut activators {
        sigterm(a);
    }
    for (a, (vm, _, _)) in activators.iter_mut().zip(VMS) {
        let name = format!("command-{vm}");
        let s = wait_exit(a, &name, Duration::from_secs(90), || sys.logs());
        let log = sys.log(&name);
        assert_eq!(s.code(), Some(0), "command service {vm}: {s}\n{log}");
        assert!(log.contains("power button pressed"), "{log}");
        assert!(log.contains("exited with status 0"), "{log}");
    }
    eprintln!("VMs stopped: {:.1} s", t4.elapsed().as_secs_f64());
    for pid in qemu_pids.iter().chain(&runtime_pids) {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there"
        );
    }
    // The runtime removed its port files, so the switch closed the ports' sockets.
    let deadline = Instant::now() + DAEMON;
    while entries(Path::new(&sys.switch_dir())) != ["stats.sock"] {
        assert!(
            Instant::now() < deadline,
            "{} still holds {:?}\n{}",
            sys.switch_dir(),
            entries(Path::new(&sys.switch_dir())),
            sys.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sigterm(&mut switch);
    let s = wait_exit(&mut switch, "vm-switch", DAEMON, || sys.logs());
    assert_eq!(
        s.code(),
        Some(0),
        "vm-switch: {s}\n{}",
        sys.log("vm-switch")
    );
    assert_eq!(entries(Path::new(&sys.switch_dir())), Vec::<String>::new());
    // SIGTERM stops balloond cleanly: exit 0 and its status socket removed.
    sigterm(&mut balloond);
    let s = wait_exit(&mut balloond, "vmsilo-balloond", DAEMON, || sys.logs());
    assert_eq!(
        s.code(),
        Some(0),
        "vmsilo-balloond: {s}\n{}",
        sys.log("balloond")
    );

    // Nothing of the VMs is left: no VM sockets, consoles, state files, locks, overlays; the
    // command sockets belong to the socket units (systemd-socket-activate here) and stay.
    let left: Vec<String> = entries(Path::new(&run))
        .into_iter()
        .filter(|e| !e.ends_with("-command.socket"))
        .collect();
    assert!(left.is_empty(), "left in the run directory: {left:?}");
    assert_eq!(entries(&sys.dir.path().join("state")), Vec::<String>::new());
    let left = processes_naming(&d);
    assert!(left.is_empty(), "processes left: {left:?}");
    eprintln!("total: {:.1} s", t0.elapsed().as_secs_f64());
}
