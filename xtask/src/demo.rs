//! `cargo xtask demo`: the whole command path on this machine, step by step.
//!
//! 1. `cargo xtask setup` (installs what is missing), builds vmsilo and the test guest image
//!    with the guest agent (`vmsilo-testkit`);
//! 2. writes a configuration with one VM `demo` (QEMU/TCG, the test image's kernel and
//!    initramfs, a small raw root disk, tmpfs overlay, no GPU, sound or shared home) into a
//!    scratch directory and checks it;
//! 3. starts `systemd-socket-activate --listen=<run>/demo-command.socket vmsilo command-service
//!    demo`: the real socket-activation path (no systemd as PID 1 here, so the command service
//!    runs `vmsilo vm-service demo` itself);
//! 4. `vm-run -w demo uname -a` (the cold start: the progress line on a terminal), a detached
//!    command and a command that reads its effect, an exit status, warm timings;
//! 5. a window: weston 10 headless runs from the start (the VM has `gpu = true`, and the command
//!    service gets `--wayland-socket` with weston's socket); `vm-run demo vmsilo-test-client`
//!    shows a window through waypipe over vsock and the VM's vmsilo-gate, the demo waits until
//!    a screenshot has the gate's frame in the VM's colour, saves it to
//!    `<target>/vmsilo-demo/screenshot.png` and prints the path and the prefixed title from
//!    weston's protocol trace (`--no-window` skips this part and runs the VM without a GPU);
//! 6. `vmsilo status`; stops the VM (SIGTERM to the activator, passed to the command service,
//!    which stops vm-service, which presses the guest's power button).
//!
//! Everything it started is stopped and its scratch directory removed, also when a step fails
//! (`--keep` keeps the directory), and also when the demo itself is interrupted (CTRL+C) or
//! killed: a small janitor process in its own session waits for the demo to go away and then
//! stops the command service (which stops the VM) and removes the directory. Needs root
//! (vm-service runs QEMU and its backends as root).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use vmsilo_testkit::wayland::{Compositor, Image, ProtoTrace, Weston, WestonOptions};
use vmsilo_testkit::{GuestImage, ImageSpec};

use crate::util::{cargo, section, sh, target_dir};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Build vmsilo in release mode (default: debug, which builds faster).
    #[arg(long)]
    pub release: bool,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
    /// Keep the scratch directory (configuration, logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Skip the window (no weston, the VM without a GPU).
    #[arg(long)]
    pub no_window: bool,
}

/// The demo window's size.
const WINDOW: (u32, u32) = (320, 240);
/// The gate's frame: ring width (left, right, bottom); see crates/vmsilo-gate.
const FRAME_BORDER: u32 = 4;
/// The demo VM's colour (named colours are accepted, like `#rrggbb`).
const DEMO_COLOR: &str = "teal";

/// How long one vm-run may take (a cold start under TCG takes a few seconds).
const STEP_LIMIT: Duration = Duration::from_secs(180);

/// A scratch directory with a one-VM configuration, and the socket-activated command service
/// for it. Everything started is undone on drop: the activator (with the command service,
/// which stops the VM), any process still naming the scratch directory, the directory. Used
/// by the demo and by `cargo xtask bench vm-run`.
pub(crate) struct Sandbox {
    pub(crate) dir: PathBuf,
    pub(crate) vm: String,
    pub(crate) cfg: PathBuf,
    pub(crate) vmsilo: PathBuf,
    pub(crate) vm_run: PathBuf,
    activator: Option<Child>,
    janitor: Option<Child>,
    keep: bool,
    /// The compositor the VM's gate connects to (`gpu = true`), or none (`gpu = false`).
    wayland_socket: Option<PathBuf>,
    /// Other processes the janitor stops (the demo's weston).
    also_stop: Vec<u32>,
}

impl Sandbox {
    /// `/tmp/vmsilo-<label>-<pid>` (short: Unix socket paths must stay under 108 bytes) with
    /// `run/`, `state/`, `vs/`, `bin/vm-run` (a link to `vmsilo`) and a configuration for VM
    /// `vm` booting `image`.
    pub(crate) fn create(
        label: &str,
        vm: &str,
        vmsilo: &Path,
        image: &GuestImage,
        keep: bool,
    ) -> Result<Sandbox> {
        Sandbox::create_with_display(label, vm, vmsilo, image, keep, None)
    }

    /// [`Sandbox::create`] for a VM with `gpu = true` whose gate connects to the compositor at
    /// `wayland_socket` (`None`: no GPU).
    pub(crate) fn create_with_display(
        label: &str,
        vm: &str,
        vmsilo: &Path,
        image: &GuestImage,
        keep: bool,
        wayland_socket: Option<&Path>,
    ) -> Result<Sandbox> {
        let dir = PathBuf::from(format!("/tmp/vmsilo-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["run", "state", "vs", "bin"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {sub}"))?;
        }
        let mut sandbox = Sandbox {
            cfg: dir.join("vmsilo.toml"),
            vm_run: dir.join("bin/vm-run"),
            dir,
            vm: vm.to_owned(),
            vmsilo: vmsilo.to_owned(),
            activator: None,
            janitor: None,
            keep,
            wayland_socket: wayland_socket.map(Path::to_path_buf),
            also_stop: Vec::new(),
        };
        std::os::unix::fs::symlink(vmsilo, &sandbox.vm_run).context("linking vm-run")?;
        sandbox.cfg = write_config(&sandbox.dir, vm, image, wayland_socket.is_some())?;
        Ok(sandbox)
    }

    pub(crate) fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The VM's command socket.
    pub(crate) fn command_socket(&self) -> PathBuf {
        self.run_dir().join(format!("{}-command.socket", self.vm))
    }

    /// Starts `systemd-socket-activate` on the command socket with `vmsilo command-service`
    /// (its output on our stderr with `prefix`, or discarded), and the janitor.
    pub(crate) fn activate(&mut self, prefix: Option<&'static str>) -> Result<()> {
        let socket = self.command_socket();
        let mut path = format!(
            "{}:{}/.cargo/bin",
            std::env::var("PATH").unwrap_or_default(),
            std::env::var("HOME").unwrap_or_default()
        );
        if self.wayland_socket.is_some()
            && let Some(bin_dir) = self.vmsilo.parent()
        {
            // vm-service finds vmsilo-gate on PATH; the demo built it beside vmsilo.
            path = format!("{}:{path}", bin_dir.display());
        }
        let mut activator = Command::new("systemd-socket-activate");
        activator
            .arg(format!("--listen={}", socket.display()))
            .arg(format!("--setenv=PATH={path}"))
            .arg(&self.vmsilo)
            .arg("--config")
            .arg(&self.cfg)
            .args(["command-service", &self.vm, "--run-dir"])
            .arg(self.run_dir())
            .arg("--vm-switch-dir")
            .arg(self.dir.join("vs"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(
                self.wayland_socket
                    .iter()
                    .flat_map(|w| ["--wayland-socket".as_ref(), w.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if prefix.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .process_group(0);
        let mut child = activator
            .spawn()
            .context("starting systemd-socket-activate (cargo xtask setup installs systemd)")?;
        if let (Some(prefix), Some(err)) = (prefix, child.stderr.take()) {
            relay(err, prefix);
        }
        let pid = child.id();
        self.activator = Some(child);
        self.janitor = Some(janitor(pid, &self.also_stop, &self.dir, self.keep)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "systemd-socket-activate did not create {}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The VM's state as `vmsilo status --json` says (`stopped`, `running`, ...).
    pub(crate) fn state(&self) -> Result<String> {
        let out = Command::new(&self.vmsilo)
            .arg("--config")
            .arg(&self.cfg)
            .args(["status", &self.vm, "--json", "--run-dir"])
            .arg(self.run_dir())
            .output()
            .context("vmsilo status")?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("vmsilo status --json")?;
        Ok(v["vms"][0]["state"].as_str().unwrap_or("?").to_owned())
    }

    /// Stops the activator (SIGTERM: the command service stops the VM), at most `grace`.
    pub(crate) fn stop_activator(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.activator.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        signal(child.id(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "demo: the command service did not stop within {}s: killing it",
            grace.as_secs()
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut j) = self.janitor.take() {
            let _ = j.kill();
            let _ = j.wait();
        }
        self.stop_activator(Duration::from_secs(60));
        // Whatever is left that names our scratch directory (vm-service, QEMU, backends of a
        // failed run) was started by this demo.
        for pid in processes_mentioning(&self.dir) {
            eprintln!("demo: stopping leftover process {pid}");
            signal(pid, "KILL");
        }
        if self.keep {
            eprintln!("demo: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Processes (other than this one) whose command line contains `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Starts the janitor: once this process is gone without having cleaned up (interrupted,
/// killed), it sends SIGTERM to the activator (whose command service stops the VM), waits for
/// it (at most 90 s, then SIGKILL) and removes `dir` unless `keep`. The demo kills it when it
/// cleans up itself.
fn janitor(activator: u32, also_stop: &[u32], dir: &Path, keep: bool) -> Result<Child> {
    let me = std::process::id();
    let others: Vec<String> = also_stop.iter().map(u32::to_string).collect();
    let others = if others.is_empty() {
        String::new()
    } else {
        format!("kill -TERM {} 2>/dev/null", others.join(" "))
    };
    let dir = dir.display();
    let remove = if keep {
        String::new()
    } else {
        format!("rm -rf '{dir}'")
    };
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.3; done
         kill -TERM {activator} 2>/dev/null
         i=0; while kill -0 {activator} 2>/dev/null && [ $i -lt 300 ]; do sleep 0.3; i=$((i+1)); done
         kill -KILL {activator} 2>/dev/null
         {others}
         {remove}
"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the clean-up watchdog")
}

pub(crate) fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Builds `vmsilo` (and `examples`) and returns the binary's path.
pub(crate) fn build_vmsilo(release: bool, examples: &[&str]) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "vmsilo", "--bin", "vmsilo"]);
    for e in examples {
        cmd.args(["--example", e]);
    }
    if release {
        cmd.arg("--release");
    }
    sh(&mut cmd).context("building vmsilo")?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("vmsilo");
    if !bin.is_file() {
        bail!("cargo built vmsilo but {} is not there", bin.display());
    }
    Ok(bin)
}

/// The test guest image with the guest agent and the ACPI power button.
pub(crate) fn guest_image() -> Result<GuestImage> {
    guest_image_with(&[])
}

/// [`guest_image`] with extra host programs (and their libraries).
pub(crate) fn guest_image_with(programs: &[&str]) -> Result<GuestImage> {
    let agent = vmsilo_testkit::agent_binary().context("building the guest agent")?;
    let mut spec = ImageSpec::new()
        .agent(agent)
        .module("button")
        .module("evdev");
    for p in programs {
        spec = spec.program(*p);
    }
    spec.build().context("building the guest image")
}

fn write_config(dir: &Path, vm: &str, image: &GuestImage, gpu: bool) -> Result<PathBuf> {
    let root = dir.join("root.img");
    fs::File::create(&root)
        .and_then(|f| f.set_len(64 << 20))
        .context("creating the root disk")?;
    let cfg = dir.join("vmsilo.toml");
    let text = format!(
        r#"# vmsilo demo configuration (written by cargo xtask demo)
enable = true
user = "root"
qemu.accel = "tcg"          # no usable KVM here: QEMU emulates the CPU

[[nixosVms]]
name = "{vm}"
color = "{DEMO_COLOR}"
vmm = "qemu"
memory = {memory}
cpus = 1
gpu = {gpu}              # windows through the VM's own vmsilo-gate (waypipe over vsock)
sound = false
sharedHome = false
kernel = "{kernel}"
initramfs = "{initrd}"
rootDisk = "{root}"
rootOverlay.type = "tmpfs"
autoShutdown = {{ enable = true, after = 300 }}
"#,
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
        root = root.display(),
        // waypipe's libraries make the initramfs about 150 MiB.
        memory = if gpu { 640 } else { 256 },
    );
    fs::write(&cfg, text).context("writing the configuration")?;
    Ok(cfg)
}

/// Prints each line of `r` with a prefix, from a thread.
fn relay(r: impl std::io::Read + Send + 'static, prefix: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            eprintln!("{prefix}{line}");
        }
    });
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    took: Duration,
}

/// Runs `vm-run ARGS` with `stdin`; stderr goes to ours (the progress line, messages).
fn vm_run(vm_run: &Path, run_dir: &Path, args: &[&str], stdin: &[u8]) -> Result<Ran> {
    let shown: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    println!("$ vm-run {}", shown.join(" "));
    let started = Instant::now();
    let mut child = Command::new(vm_run)
        .arg("--run-dir")
        .arg(run_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", vm_run.display()))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let mut out = child.stdout.take().context("vm-run stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > STEP_LIMIT {
            let _ = child.kill();
            bail!("vm-run {} took longer than {STEP_LIMIT:?}", shown.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let stdout = reader.join().unwrap_or_default();
    for line in stdout.lines() {
        println!("  {line}");
    }
    println!(
        "  (exit status {}, {:.2} s)",
        status
            .code()
            .map_or_else(|| "none".to_owned(), |c| c.to_string()),
        took.as_secs_f64()
    );
    Ok(Ran {
        code: status.code(),
        stdout,
        took,
    })
}

/// `a` as a shell word, for showing command lines.
fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn expect_ok(r: &Ran, what: &str) -> Result<()> {
    if r.code != Some(0) {
        bail!("{what} failed with exit status {:?}", r.code);
    }
    Ok(())
}

pub fn run(args: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask demo must run as root: vmsilo vm-service starts QEMU and \
             vhost-device-vsock as root and owns the run directory; try `sudo -E cargo xtask \
             demo`"
        );
    }
    if !args.no_setup {
        section("demo: setup (installs what is missing)");
        crate::setup::run()?;
    }

    section("demo: building vmsilo and the test guest image");
    let vmsilo = build_vmsilo(args.release, &[])?;
    let window = !args.no_window;
    let image = if window {
        build_gate(args.release)?;
        let client = vmsilo_testkit::workspace_binary("vmsilo-test-client", "vmsilo-test-client")
            .context("building vmsilo-test-client")?;
        let client = client
            .to_str()
            .context("a UTF-8 target directory")?
            .to_owned();
        guest_image_with(&["waypipe", &client])?
    } else {
        guest_image()?
    };
    println!(
        "guest image: kernel {} with vmsilo-guest{}, {}",
        image.kernel_version,
        if window {
            ", waypipe and vmsilo-test-client"
        } else {
            ""
        },
        image.dir.display()
    );

    // Declared before the sandbox, so it outlives the VM.
    let desktop = if window {
        section("demo: weston headless, the desktop the VM's windows go to");
        let weston = Weston::start(WestonOptions {
            width: 1024,
            height: 768,
            ..WestonOptions::default()
        })
        .context("starting weston headless (cargo xtask setup installs weston)")?;
        let trace = weston.proto_trace().context("weston-debug proto")?;
        println!(
            "$ weston --backend=headless-backend.so --use-pixman --idle-time=0 --debug ...
               socket {}",
            weston.socket_path().display()
        );
        Some((weston, trace))
    } else {
        None
    };

    let mut demo = Sandbox::create_with_display(
        "demo",
        "demo",
        &vmsilo,
        &image,
        args.keep,
        desktop.as_ref().map(|(w, _)| w.socket_path()).as_deref(),
    )?;
    if let Some((w, _)) = &desktop {
        demo.also_stop.push(w.pid());
    }
    let dir = demo.dir.clone();
    let cfg = demo.cfg.clone();
    let vm_run_bin = demo.vm_run.clone();

    section("demo: configuration");
    println!("{}", fs::read_to_string(&cfg)?.trim_end());
    let check = Command::new(&vmsilo)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .context("vmsilo check")?;
    print!(
        "$ vmsilo check\n  {}",
        String::from_utf8_lossy(&check.stdout)
    );
    if !check.status.success() {
        bail!(
            "vmsilo check failed: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }

    section("demo: socket activation");
    let socket = demo.command_socket();
    println!(
        "$ systemd-socket-activate --listen={} vmsilo --config {} command-service demo ...",
        socket.display(),
        cfg.display()
    );
    demo.activate(Some("    service | "))?;
    println!(
        "listening on {}; the VM is stopped until the first vm-run connects",
        socket.display()
    );
    status(&vmsilo, &cfg, &demo.run_dir())?;

    section("demo: the first command starts the VM (cold start)");
    let run_dir = demo.run_dir();
    let cold = vm_run(&vm_run_bin, &run_dir, &["-w", "demo", "uname", "-a"], b"")?;
    expect_ok(&cold, "vm-run -w demo uname -a")?;
    if !cold.stdout.contains("Linux") {
        bail!("uname -a printed {:?}", cold.stdout);
    }

    section("demo: a detached command, then one that sees its effect");
    let detached = vm_run(
        &vm_run_bin,
        &run_dir,
        &["demo", "sh", "-c", "echo hello from the guest > /tmp/x"],
        b"",
    )?;
    expect_ok(&detached, "the detached command")?;
    println!("  (detached: vm-run returned once the guest had started the command)");
    let mut seen = false;
    for _ in 0..20 {
        let r = vm_run(&vm_run_bin, &run_dir, &["-w", "demo", "cat", "/tmp/x"], b"")?;
        if r.code == Some(0) {
            seen = r.stdout.contains("hello from the guest");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !seen {
        bail!("the detached command's file never showed up");
    }

    section("demo: stdin, exit statuses, warm commands");
    println!("(stdin: \"four\")");
    let piped = vm_run(&vm_run_bin, &run_dir, &["-w", "demo", "wc", "-c"], b"four")?;
    if piped.stdout.trim() != "4" {
        bail!("wc -c of 4 bytes printed {:?}", piped.stdout);
    }
    let three = vm_run(
        &vm_run_bin,
        &run_dir,
        &["-w", "demo", "sh", "-c", "exit 3"],
        b"",
    )?;
    if three.code != Some(3) {
        bail!("exit 3 came back as {:?}", three.code);
    }
    let missing = vm_run(&vm_run_bin, &run_dir, &["-w", "demo", "frobnicate"], b"")?;
    if missing.code != Some(127) {
        bail!("a missing command came back as {:?}", missing.code);
    }
    let warm = vm_run(&vm_run_bin, &run_dir, &["-w", "demo", "true"], b"")?;
    expect_ok(&warm, "vm-run -w demo true")?;
    println!(
        "cold start {:.1} s; a warm command {:.0} ms",
        cold.took.as_secs_f64(),
        warm.took.as_secs_f64() * 1000.0
    );

    if let Some((weston, trace)) = &desktop {
        show_window(weston, trace, &vm_run_bin, &run_dir)?;
    }

    section("demo: vmsilo status");
    status(&vmsilo, &cfg, &run_dir)?;

    section("demo: stopping the VM (SIGTERM to the command service: ACPI power button)");
    let stopped = demo.stop_activator(Duration::from_secs(90));
    match stopped {
        Some(s) if s.success() => println!("the command service and the VM stopped ({s})"),
        other => bail!("the command service ended with {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(200));
    status(&vmsilo, &cfg, &run_dir)?;
    let left: Vec<String> = fs::read_dir(&run_dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "demo-command.socket")
        .collect();
    if !left.is_empty() {
        bail!("left in {}: {left:?}", run_dir.display());
    }
    println!(
        "\ndemo: done: every step worked; cleaning up {}",
        dir.display()
    );
    Ok(())
}

/// Builds vmsilo-gate beside vmsilo (vm-service starts it for VMs with `gpu`).
fn build_gate(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "vmsilo-gate", "--bin", "vmsilo-gate"]);
    if release {
        cmd.arg("--release");
    }
    sh(&mut cmd).context("building vmsilo-gate")
}

/// Runs the test client in the VM, waits for its window in the gate's frame on weston, and
/// saves a screenshot.
fn show_window(
    weston: &Weston,
    trace: &ProtoTrace,
    vm_run_bin: &Path,
    run_dir: &Path,
) -> Result<()> {
    section("demo: a window from the VM, through its vmsilo-gate, on weston");
    let client = vmsilo_testkit::workspace_binary("vmsilo-test-client", "vmsilo-test-client")
        .context("building vmsilo-test-client")?;
    let client = client.to_str().context("a UTF-8 target directory")?;
    let size = format!("{}x{}", WINDOW.0, WINDOW.1);
    let started = vm_run(
        vm_run_bin,
        run_dir,
        &[
            "demo",
            client,
            "--title",
            "hello from the demo VM",
            "--app-id",
            "demo.client",
            "--size",
            &size,
            "--color",
            "#ffffff",
        ],
        b"",
    )?;
    expect_ok(&started, "starting vmsilo-test-client in the VM")?;
    let color: vmsilo_config::color::Color = DEMO_COLOR
        .parse()
        .map_err(|e| anyhow::anyhow!("the demo colour {DEMO_COLOR:?}: {e:?}"))?;
    let hex = color.hex();
    let rgb = vmsilo_testkit::wayland::parse_rgb(&hex)
        .with_context(|| format!("colour {hex:?} is not #rrggbb"))?;
    let (w, h) = WINDOW;
    let ring = ((w + 2 * FRAME_BORDER) * (h + FRAME_BORDER) - w * h) as usize;
    let deadline = Instant::now() + STEP_LIMIT;
    let (png, img) = loop {
        let png = weston.screenshot_png().context("taking a screenshot")?;
        let img = Image::from_png(&png).context("decoding the screenshot")?;
        if img.count(rgb) >= ring {
            break (png, img);
        }
        if Instant::now() > deadline {
            bail!(
                "no window in the VM's colour {hex} after {STEP_LIMIT:?} (most frequent                  colours {:?})",
                img.top_colors(5)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let dir = target_dir().join("vmsilo-demo");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("screenshot.png");
    fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
    if let Some(b) = img.bbox(rgb) {
        println!(
            "the window is on screen in its frame: {} pixels of {DEMO_COLOR} ({hex}) in a {}x{} box at ({}, {})",
            img.count(rgb),
            b.w,
            b.h,
            b.x,
            b.y
        );
    }
    // The latest title the gate gave the window (its frame is titled before the guest's
    // title arrives).
    if let Some(line) = trace
        .text()
        .lines()
        .rev()
        .find(|l| l.contains("set_title(\"[demo] "))
    {
        let at = line.find("xdg_toplevel").unwrap_or(0);
        println!("weston's protocol trace: {}", &line[at..]);
    }
    println!("screenshot: {}", path.display());
    Ok(())
}

fn status(vmsilo: &Path, cfg: &Path, run_dir: &Path) -> Result<()> {
    let out = Command::new(vmsilo)
        .arg("--config")
        .arg(cfg)
        .arg("status")
        .arg("--run-dir")
        .arg(run_dir)
        .env("NO_COLOR", "1")
        .output()
        .context("vmsilo status")?;
    println!("$ vmsilo status");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!(
            "vmsilo status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
