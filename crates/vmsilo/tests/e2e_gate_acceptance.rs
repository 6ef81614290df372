//! End to end, issue 12's acceptance: windows of two QEMU/TCG VMs, `banking` (`#2ecc71`) and
//! `shopping` (`#3498db`), both `gpu = true`, on a real headless compositor, each through its
//! own vmsilo-gate.
//!
//! The path of a window: `vm-run -w <vm> vmsilo-test-client …` → the guest agent runs it under
//! `waypipe server` → vsock port 6000 → vhost-device-vsock → `waypipe client` on the host (as
//! the VM's user) → the VM's `vmsilo-gate` → the compositor. Everything is the real binary;
//! the VMs start through socket activation as in `e2e_vm_run` (`systemd-socket-activate` →
//! `vmsilo command-service <vm> --wayland-socket <compositor>` → `vm-service`). `e2e_gate`
//! covers one VM in more depth (the VM keeps running without graphics once its gate died).
//!
//! Checked on weston 10 headless (as root, VMs' user root) and on sway headless (as the
//! non-root test user `vmsilo-test`, which is then also the VMs' user, so that the gates, which
//! run as the VM's user, may connect to sway's socket):
//!
//! 1. Each VM's window is on screen with the gate's frame in the VM's colour: at least the
//!    ring's area (left, right and bottom ring of [`BORDER`] px around the client's size) of
//!    exactly that colour, and the colour's bounding box at least the frame's outer size
//!    (ring + label band of [`BAND`] px on top).
//! 2. The titles reach the compositor prefixed: weston's protocol trace (`weston-debug proto`)
//!    shows `set_title("[banking] …")` and `set_title("[shopping] …")`; sway's tree shows them.
//!    On weston, no guest connection (the connections that set those titles) binds
//!    `weston_screenshooter` or `weston_debug_v1`, and a guest's registry lists neither.
//! 3. A guest client that binds a hidden global is cut off (a protocol error or a closed
//!    connection, exit status non-zero) while both windows keep updating (their `frames=`
//!    counts keep increasing).
//! 4. Killing banking's gate ends banking's graphics (its window leaves the screen, its client
//!    ends) while shopping's window keeps updating.
//!
//! And issue 13's two-level clipboard with QEMU guests on sway (see
//! [`test_e2e_clipboard_between_two_qemu_vms_on_sway`]).

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Guard, Scratch, multi_call};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmsilo_testkit::wayland::{
    Compositor, Image, Rect, Rgb, Sway, SwayOptions, Weston, WestonOptions, parse_rgb,
};
use vmsilo_testkit::{GuestImage, ImageSpec, agent_binary, workspace_binary};

/// A cold start of a TCG guest with waypipe's libraries in its initramfs, two at once on a
/// loaded two-core machine, and anything else that waits on a guest.
const LIMIT: Duration = Duration::from_secs(400);
/// The command services' `--agent-timeout` (most of [`LIMIT`]).
const AGENT_TIMEOUT: &str = "380s";
/// The gate's frame: ring width on the left, right and bottom (crates/vmsilo-gate layout).
const BORDER: u32 = 4;
/// The gate's frame: label band height on top.
const BAND: u32 = 24;
/// The test client's window size (small: waypipe copies every frame over vsock under TCG).
const W: u32 = 160;
const H: u32 = 120;

/// (VM, frame colour, the client's fill colour).
const BANKING: (&str, &str, &str) = ("banking", "#2ecc71", "#404040");
const SHOPPING: (&str, &str, &str) = ("shopping", "#3498db", "#a0a0a0");

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Pixels of the ring around a `W`×`H` window (the label band is not counted: its text is
/// drawn in black or white over the colour).
fn ring_area() -> usize {
    ((W + 2 * BORDER) * (H + BORDER) - W * H) as usize
}

fn client_bin() -> PathBuf {
    workspace_binary("vmsilo-test-client", "vmsilo-test-client").expect("vmsilo-test-client")
}

/// The testkit guest with the agent, waypipe and the test client (the power-button modules
/// let the guest power off when its VM is stopped).
fn image() -> GuestImage {
    ImageSpec::new()
        .agent(agent_binary().expect("vmsilo-guest"))
        .module("button")
        .module("evdev")
        .program("waypipe")
        .program(client_bin().to_str().expect("utf-8"))
        .build()
        .expect("guest image")
}

/// The two VMs, their command services, and `vm-run`.
struct Setup {
    dir: Scratch,
    cfg: PathBuf,
    vm_run: PathBuf,
    activators: Vec<(String, Guard)>,
}

impl Setup {
    /// Writes the configuration (VMs' user `user`) and starts both activators, with the
    /// compositor at `wayland_socket`.
    fn new(image: &GuestImage, user: &str, uid: u32, gid: u32, wayland_socket: &Path) -> Setup {
        let dir = Scratch::new("gate2");
        // The VMs' user runs the gate from `bin` and reaches its directories below.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        // Each VM has its own run, vm-switch and state directories (and service log).
        for vm in [BANKING.0, SHOPPING.0] {
            for sub in ["run", "vs", "state"] {
                std::fs::create_dir_all(dir.path().join(vm).join(sub)).expect("mkdir");
            }
        }
        // vm-service starts vmsilo-gate from PATH: the one built from this workspace, copied
        // where the VMs' user can run it.
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let gate = workspace_binary("vmsilo-gate", "vmsilo-gate").expect("vmsilo-gate");
        std::fs::copy(&gate, bin.join("vmsilo-gate")).expect("copy vmsilo-gate");
        std::fs::set_permissions(
            bin.join("vmsilo-gate"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        let root = dir.path().join("root.img");
        std::fs::File::create(&root)
            .and_then(|f| f.set_len(8 << 20))
            .expect("root disk");
        let mut text = format!("enable = true\nuser = \"{user}\"\nqemu.accel = \"tcg\"\n");
        for (vm, color, _) in [BANKING, SHOPPING] {
            text.push_str(&format!(
                r#"
[[nixosVms]]
name = "{vm}"
vmm = "qemu"
color = "{color}"
memory = 640
cpus = 1
gpu = true
sound = false
sharedHome = false
kernel = "{kernel}"
initramfs = "{initrd}"
rootDisk = "{root}"
rootOverlay = {{ type = "tmpfs" }}
"#,
                kernel = image.kernel.display(),
                initrd = image.initrd.display(),
                root = root.display(),
            ));
        }
        let cfg = dir.path().join("vmsilo.toml");
        std::fs::write(&cfg, text).expect("config");
        let vm_run = multi_call(dir.path(), "vm-run");
        let mut s = Setup {
            dir,
            cfg,
            vm_run,
            activators: Vec::new(),
        };
        for (vm, _, _) in [BANKING, SHOPPING] {
            let g = s.activator(vm, uid, gid, wayland_socket);
            s.activators.push((vm.to_owned(), g));
        }
        s
    }

    fn d(&self) -> &str {
        self.dir.str()
    }

    fn run_dir(&self, vm: &str) -> String {
        format!("{}/{vm}/run", self.d())
    }

    fn log_path(&self, vm: &str) -> PathBuf {
        self.dir.path().join(vm).join("service.log")
    }

    /// Both command services' logs, for failure messages.
    fn logs(&self) -> String {
        [BANKING.0, SHOPPING.0]
            .iter()
            .map(|vm| {
                format!(
                    "--- command service {vm}:\n{}",
                    std::fs::read_to_string(self.log_path(vm)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `systemd-socket-activate` → `vmsilo command-service <vm>`, as `vmsilo-<vm>.socket`.
    fn activator(&self, vm: &str, uid: u32, gid: u32, wayland_socket: &Path) -> Guard {
        let (uid, gid) = (uid.to_string(), gid.to_string());
        common::command_activator(
            &self.dir.path().join(vm),
            &self.cfg,
            vm,
            Some(&format!("{}/bin", self.d())),
            &[
                "--uid",
                &uid,
                "--gid",
                &gid,
                "--wayland-socket",
                wayland_socket.to_str().expect("utf-8"),
                "--agent-timeout",
                AGENT_TIMEOUT,
            ],
        )
    }

    /// `vm-run -w <vm> vmsilo-test-client ARGS`, reading its output as it comes.
    fn client(&self, vm: &str, args: &[&str]) -> Client {
        self.run(vm, &client_bin(), args)
    }

    /// `vm-run -w <vm> PROGRAM ARGS` (a program of the guest image, by its host path),
    /// reading its output as it comes.
    fn run(&self, vm: &str, program: &Path, args: &[&str]) -> Client {
        let mut child = common::command(&self.vm_run)
            .args(["--run-dir", &self.run_dir(vm), "-w", vm])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vm-run");
        let out = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Client {
            vm: vm.to_owned(),
            guard: Guard(Some(child)),
            out,
        }
    }

    /// `vm-run -w <vm> vmsilo-test-client ARGS` to the end, at most [`LIMIT`].
    fn client_output(&self, vm: &str, args: &[&str]) -> Output {
        self.run_output(vm, &client_bin(), args)
    }

    /// `vm-run -w <vm> PROGRAM ARGS` to the end, at most [`LIMIT`].
    fn run_output(&self, vm: &str, program: &Path, args: &[&str]) -> Output {
        let child = common::command(&self.vm_run)
            .args(["--run-dir", &self.run_dir(vm), "-w", vm])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vm-run");
        common::output_within(child, LIMIT).unwrap_or_else(|| {
            panic!(
                "vm-run {vm} {} {args:?} hangs\n{}",
                program.display(),
                self.logs()
            )
        })
    }
}

impl Drop for Setup {
    /// Stops as systemd would: SIGTERM to each activator (the command service stops its VM),
    /// then waits; SIGKILL only when that hangs.
    fn drop(&mut self) {
        for (_, g) in &mut self.activators {
            if let Some(c) = g.0.as_mut() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            }
        }
        for (_, g) in &mut self.activators {
            if let Some(c) = g.0.as_mut() {
                let deadline = Instant::now() + Duration::from_secs(90);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// A running `vm-run -w <vm> vmsilo-test-client …` and everything it printed so far.
struct Client {
    vm: String,
    guard: Guard,
    out: Arc<Mutex<String>>,
}

impl Client {
    fn text(&self) -> String {
        self.out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The last `frames=N` the client printed (0 before the first).
    fn frames(&self) -> u64 {
        self.text()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("frames=")?.parse().ok())
            .next_back()
            .unwrap_or(0)
    }

    /// Waits until the client reported more than `n` frames; returns the count.
    fn wait_frames_above(&mut self, n: u64, setup: &Setup) -> u64 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let f = self.frames();
            if f > n {
                return f;
            }
            let exited = self.guard.child().try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{}'s window did not get past {n} frames (exited: {exited:?}); its output:\n{}\n{}",
                self.vm,
                self.text(),
                setup.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A screenshot: its PNG bytes (kept for failure messages) and its pixels.
struct Shot {
    png: Vec<u8>,
    img: Image,
}

impl std::ops::Deref for Shot {
    type Target = Image;
    fn deref(&self) -> &Image {
        &self.img
    }
}

fn shot<C: Compositor>(c: &C) -> Shot {
    let png = c.screenshot_png().expect("screenshot");
    let img = Image::from_png(&png).expect("decoding the screenshot");
    Shot { png, img }
}

/// Screenshots until `done` holds or [`LIMIT`] passed; returns the last one.
fn shot_until<C: Compositor>(c: &C, done: impl Fn(&Image) -> bool) -> Shot {
    let deadline = Instant::now() + LIMIT;
    loop {
        let s = shot(c);
        if done(&s.img) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Saves a screenshot under the target directory, for a failure message.
fn keep(shot: &Shot, name: &str) -> String {
    let dir = vmsilo_testkit::target_dir().join("e2e-gate");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}.png"));
    match std::fs::write(&path, &shot.png) {
        Ok(()) => format!("screenshot kept at {}", path.display()),
        Err(e) => format!("could not keep the screenshot at {}: {e}", path.display()),
    }
}

fn rgb(hex: &str) -> Rgb {
    parse_rgb(hex).expect("colour")
}

/// The frame of `vm` (colour `color`) is on screen: at least the ring's area of the exact
/// colour, within a box at least the frame's outer size.
fn assert_frame(img: &Shot, vm: &str, color: &str, what: &str) -> Rect {
    let c = rgb(color);
    let n = img.count(c);
    let bbox = img.bbox(c);
    let detail = || {
        format!(
            "{vm} ({color}) in {what}: {n} pixels, bbox {bbox:?}; expected >= {} pixels in a box \
             >= {}x{}; most frequent colours {:?}; {}",
            ring_area(),
            W + 2 * BORDER,
            H + BORDER + BAND,
            img.top_colors(8),
            keep(img, &format!("{what}-{vm}").replace(' ', "-"))
        )
    };
    assert!(n >= ring_area(), "{}", detail());
    let b = bbox.unwrap_or_else(|| panic!("{}", detail()));
    assert!(
        b.w >= W + 2 * BORDER && b.h >= H + BORDER + BAND,
        "{}",
        detail()
    );
    eprintln!(
        "{what}: {vm}'s frame: {n} pixels of {color} (ring {}) in a {}x{} box at ({}, {})",
        ring_area(),
        b.w,
        b.h,
        b.x,
        b.y
    );
    b
}

fn overlaps(a: Rect, b: Rect) -> bool {
    a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
}

/// The `vmsilo-gate` parent process of `vm` (not its per-client children).
fn gate_pid(vm: &str) -> Option<i32> {
    let is_gate = |pid: &str| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        args.first().is_some_and(|a0| a0.ends_with(b"vmsilo-gate"))
            && args
                .windows(2)
                .any(|w| w[0] == b"--vm" && w[1] == vm.as_bytes())
    };
    let ppid = |pid: &str| -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(
            status
                .lines()
                .find(|l| l.starts_with("PPid:"))?
                .split_whitespace()
                .nth(1)?
                .to_owned(),
        )
    };
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .find(|p| is_gate(p) && !ppid(p).is_some_and(|pp| is_gate(&pp)))
        .and_then(|p| p.parse().ok())
}

/// Checks 1 to 4 (see the file's documentation) on compositor `c`. `titled(vm_title)` tells
/// whether the compositor has seen a toplevel with that (prefixed) title; `hidden` is a global
/// the compositor offers and the gate hides.
fn scenario<C: Compositor>(
    c: &C,
    setup: &Setup,
    titled: &dyn Fn(&str) -> bool,
    hidden: &str,
) -> (Client, Client) {
    let size = format!("{W}x{H}");
    let window = |vm: &str, fill: &str| {
        setup.client(
            vm,
            &[
                "--title",
                &format!("{vm} window"),
                "--app-id",
                "test.client",
                "--size",
                &size,
                "--color",
                fill,
                "--report-ms",
                "500",
            ],
        )
    };

    // 1. banking's window first (alone, so nothing covers it), then shopping's.
    let started = Instant::now();
    let mut banking = window(BANKING.0, BANKING.2);
    banking.wait_frames_above(0, setup);
    eprintln!(
        "banking's window updates after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let alone = shot_until(c, |img| img.count(rgb(BANKING.1)) >= ring_area());
    let banking_box = assert_frame(&alone, BANKING.0, BANKING.1, "banking alone");
    let mut shopping = window(SHOPPING.0, SHOPPING.2);
    shopping.wait_frames_above(0, setup);
    let both = shot_until(c, |img| {
        img.count(rgb(SHOPPING.1)) >= ring_area() && img.count(rgb(BANKING.1)) > 0
    });
    let shopping_box = assert_frame(&both, SHOPPING.0, SHOPPING.1, "both windows");
    if overlaps(banking_box, shopping_box) {
        // The compositor placed shopping's frame over part of banking's: banking's frame is
        // still there, only not all of it.
        assert!(
            both.count(rgb(BANKING.1)) > 0,
            "banking's frame vanished: {}",
            keep(&both, "both-windows")
        );
    } else {
        assert_frame(&both, BANKING.0, BANKING.1, "both windows");
    }
    // The client's own pixels are inside the frame, untouched.
    for (vm, _, fill) in [BANKING, SHOPPING] {
        assert!(
            both.count(rgb(fill)) >= (W * H) as usize * 9 / 10,
            "{vm}'s content ({fill}) is not on screen: {:?}; {}",
            both.top_colors(8),
            keep(&both, "content")
        );
    }

    // 2. Prefixed titles.
    for vm in [BANKING.0, SHOPPING.0] {
        let title = format!("[{vm}] {vm} window");
        let deadline = Instant::now() + LIMIT;
        while !titled(&title) {
            assert!(
                Instant::now() < deadline,
                "the compositor never saw the title {title:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let listed = setup.client_output(BANKING.0, &["--list-globals"]);
    let globals = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.status.success() && globals.contains("interface=wl_compositor "),
        "--list-globals in banking: {listed:?}\n{}",
        setup.logs()
    );
    assert!(
        !globals.contains(&format!("interface={hidden} ")),
        "the gate offers {hidden}:\n{globals}"
    );

    // 3. A client binding a hidden global is cut off; both windows keep updating.
    let (b0, s0) = (banking.frames(), shopping.frames());
    let cut = setup.client_output(BANKING.0, &["--bind", hidden]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&cut.stdout),
        String::from_utf8_lossy(&cut.stderr)
    );
    assert!(
        !cut.status.success()
            && (said.contains("wl_display.error") || said.contains("disconnected")),
        "binding the hidden {hidden}: {}\n{said}",
        cut.status
    );
    assert!(!said.contains("bound interface="), "{said}");
    banking.wait_frames_above(b0 + 5, setup);
    shopping.wait_frames_above(s0 + 5, setup);

    (banking, shopping)
}

/// Check 4: killing banking's gate ends banking's graphics, shopping's window keeps updating.
fn kill_banking_gate<C: Compositor>(
    c: &C,
    setup: &Setup,
    mut banking: Client,
    mut shopping: Client,
) {
    let pid = gate_pid(BANKING.0)
        .unwrap_or_else(|| panic!("no vmsilo-gate process for banking\n{}", setup.logs()));
    let s0 = shopping.frames();
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL banking's gate");
    let gone = shot_until(c, |img| img.count(rgb(BANKING.1)) == 0);
    assert_eq!(
        gone.count(rgb(BANKING.1)),
        0,
        "banking's frame is still on screen after its gate died; {}",
        keep(&gone, "gate-killed")
    );
    assert!(
        gone.count(rgb(BANKING.2)) < (W * H) as usize / 10,
        "banking's content is still on screen after its gate died; {}",
        keep(&gone, "gate-killed")
    );
    let out = Arc::clone(&banking.out);
    let logs = setup.logs();
    banking.guard.wait_timeout_or(LIMIT, || {
        format!(
            "banking's client still runs after its gate died:\n{}\n{logs}",
            out.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        )
    });
    shopping.wait_frames_above(s0 + 5, setup);
    assert_frame(
        &shot(c),
        SHOPPING.0,
        SHOPPING.1,
        "after banking's gate died",
    );
}

#[test]
#[ignore = "e2e: boots two QEMU guests, runs weston headless"]
fn test_e2e_gate_two_vms_on_weston() {
    if !is_root() {
        eprintln!("skipped: needs root (QEMU guests, weston as root)");
        return;
    }
    let image = image();
    let weston = Weston::start(WestonOptions {
        width: 1600,
        height: 1200,
        ..WestonOptions::default()
    })
    .expect("weston");
    let trace = weston.proto_trace().expect("weston-debug proto");
    let setup = Setup::new(&image, "root", 0, 0, &weston.socket_path());
    let titled = |title: &str| trace.contains(&format!("set_title(\"{title}\")"));
    let (banking, shopping) = scenario(&weston, &setup, &titled, "weston_screenshooter");

    // No guest connection (the gate's compositor connections that carried the prefixed
    // titles) bound weston's privileged globals.
    for vm in [BANKING.0, SHOPPING.0] {
        let ids = trace.clients_with(&format!("set_title(\"[{vm}] "));
        assert!(!ids.is_empty(), "no connection set {vm}'s title");
        for id in ids {
            for line in trace.lines_of(&id) {
                assert!(
                    !(line.contains(".bind(")
                        && (line.contains("\"weston_screenshooter\"")
                            || line.contains("\"weston_debug_v1\""))),
                    "{vm}'s connection {id} bound a privileged global: {line}"
                );
            }
        }
    }
    kill_banking_gate(&weston, &setup, banking, shopping);
}

#[test]
#[ignore = "e2e: boots two QEMU guests, runs sway headless as a test user"]
fn test_e2e_gate_two_vms_on_sway_as_a_user() {
    if !is_root() {
        eprintln!("skipped: needs root (QEMU guests, the test user)");
        return;
    }
    let image = image();
    let sway = Sway::start(SwayOptions {
        width: 1280,
        height: 800,
        ..SwayOptions::default()
    })
    .expect("sway");
    let user = sway.user().clone();
    let setup = Setup::new(&image, &user.name, user.uid, user.gid, &sway.socket_path());
    let titled = |title: &str| {
        sway.ipc(&["-t", "get_tree"])
            .is_ok_and(|tree| tree.contains(&format!("\"name\": \"{title}\"")))
    };
    let (banking, shopping) = scenario(&sway, &setup, &titled, "zwlr_screencopy_manager_v1");
    // The app_id prefix too (sway shows it in the tree).
    let tree = sway.ipc(&["-t", "get_tree"]).expect("get_tree");
    for vm in [BANKING.0, SHOPPING.0] {
        assert!(
            tree.contains(&format!("\"app_id\": \"vmsilo.{vm}.test.client\"")),
            "{tree}"
        );
    }
    kill_banking_gate(&sway, &setup, banking, shopping);
}

/// The guest image of [`image`] with wl-clipboard's `wl-copy` and `wl-paste`.
fn clipboard_image() -> GuestImage {
    ImageSpec::new()
        .agent(agent_binary().expect("vmsilo-guest"))
        .module("button")
        .module("evdev")
        .program("waypipe")
        .program(client_bin().to_str().expect("utf-8"))
        .program("wl-copy")
        .program("wl-paste")
        .build()
        .expect("guest image")
}

/// vmsilo-clipd run as the VMs' user at the socket the gates are given
/// (`/run/user/<uid>/vmsilo-clipd.socket`), its log (metadata lines) in `log`.
struct ClipdProcess {
    guard: Guard,
    log: PathBuf,
}

impl Drop for ClipdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ClipdProcess {
    fn start(uid: u32, gid: u32, log: PathBuf) -> ClipdProcess {
        let runtime = PathBuf::from(format!("/run/user/{uid}"));
        if !runtime.exists() {
            std::fs::create_dir_all(&runtime).expect("mkdir /run/user/<uid>");
            std::os::unix::fs::chown(&runtime, Some(uid), Some(gid)).expect("chown");
            std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
        }
        let socket = runtime.join("vmsilo-clipd.socket");
        let bin = workspace_binary("vmsilo-clipd", "vmsilo-clipd").expect("vmsilo-clipd");
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--no-desktop-notifications")
            .env_clear()
            .env("XDG_RUNTIME_DIR", &runtime)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("clipd log"))
            .spawn()
            .expect("vmsilo-clipd");
        let c = ClipdProcess {
            guard: Guard(Some(child)),
            log,
        };
        c.wait_for("listening on", "vmsilo-clipd to listen");
        c
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (clipd removes its socket), then waits a little; the guard kills what is left.
    fn stop(&mut self) {
        if let Some(c) = self.guard.0.as_mut() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn has(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    fn wait_for(&self, needle: &str, what: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.has(needle) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; clipd said:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The host's clipboard set with `wl-copy --foreground` on the compositor (killed on drop).
fn host_clipboard(socket: &Path, text: &str) -> Guard {
    let wl_copy = vmsilo_testkit::find_tool("wl-copy").expect("wl-copy");
    let child = std::process::Command::new(wl_copy)
        .args(["--foreground", "--type", "text/plain;charset=utf-8", text])
        .env("WAYLAND_DISPLAY", socket)
        .env(
            "XDG_RUNTIME_DIR",
            socket.parent().expect("the socket's directory"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wl-copy");
    Guard(Some(child))
}

/// `wl-paste` in `vm` (its own popup surface takes the focus, as wl-clipboard does without
/// data-control, which the gate does not offer): the text, or `None` when the VM's
/// clipboard is empty (wl-paste fails).
fn guest_paste(setup: &Setup, vm: &str, wl_paste: &Path) -> Option<String> {
    let out = setup.run_output(
        vm,
        wl_paste,
        &["--no-newline", "--type", "text/plain;charset=utf-8"],
    );
    eprintln!(
        "wl-paste in {vm}: {} stdout {:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// evdev codes of c and v, and the XKB modifier mask of Ctrl+Shift.
const KEY_C: u32 = 46;
const KEY_V: u32 = 47;
const CTRL_SHIFT: u32 = 4 | 1;

/// Issue 13 with QEMU guests: two TCG VMs behind their gates on sway 1.7 headless as the test
/// user, vmsilo-clipd as that user at the socket the gates are configured with. In banking's
/// guest, `wl-copy` fills banking's own clipboard; Ctrl+Shift+C on one long-lived virtual
/// keyboard (banking's window focused) copies it into the global slot; Ctrl+Shift+V in
/// shopping's window pastes it; `wl-paste` in shopping's guest reads it. The slot is empty
/// afterwards (a second paste chord is refused: empty), and neither guest ever sees the host's
/// clipboard.
#[test]
#[ignore = "e2e: boots two QEMU guests, runs sway headless as a test user and vmsilo-clipd"]
fn test_e2e_clipboard_between_two_qemu_vms_on_sway() {
    if !is_root() {
        eprintln!("skipped: needs root (QEMU guests, the test user)");
        return;
    }
    let (Ok(wl_copy), Ok(wl_paste)) = (
        vmsilo_testkit::find_tool("wl-copy"),
        vmsilo_testkit::find_tool("wl-paste"),
    ) else {
        eprintln!("skipped: wl-clipboard is missing (apt-get install wl-clipboard)");
        return;
    };
    let image = clipboard_image();
    let sway = Sway::start(SwayOptions {
        width: 1280,
        height: 800,
        ..SwayOptions::default()
    })
    .expect("sway");
    let user = sway.user().clone();
    let setup = Setup::new(&image, &user.name, user.uid, user.gid, &sway.socket_path());
    let clipd = ClipdProcess::start(user.uid, user.gid, setup.dir.path().join("clipd.log"));
    let keymap = vmsilo_gate::testing::us_keymap().expect("keymap");
    let vkb = vmsilo_gate::testing::VirtualKeyboard::connect(&sway.socket_path(), &keymap)
        .expect("a virtual keyboard on sway");
    let _host = host_clipboard(&sway.socket_path(), "HOST SECRET");

    // A window in each VM, with a keyboard (the gate sees the chords in the keyboard events
    // it relays to a client; the client prints the keys that reach it).
    let size = format!("{W}x{H}");
    let window = |vm: &str, fill: &str| {
        setup.client(
            vm,
            &[
                "--title",
                &format!("{vm} window"),
                "--size",
                &size,
                "--color",
                fill,
                "--report-ms",
                "500",
                "--keyboard",
            ],
        )
    };
    let started = Instant::now();
    let mut banking = window(BANKING.0, BANKING.2);
    let mut shopping = window(SHOPPING.0, SHOPPING.2);
    banking.wait_frames_above(0, &setup);
    shopping.wait_frames_above(0, &setup);
    eprintln!(
        "both windows update after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    clipd.wait_for(
        "gate of VM \"banking\" registered",
        "banking's gate at clipd",
    );
    clipd.wait_for(
        "gate of VM \"shopping\" registered",
        "shopping's gate at clipd",
    );
    let focus = |vm: &str| {
        let criteria = format!("[title=\"^\\[{vm}\\] {vm} window$\"] focus");
        sway.ipc(&[&criteria]).expect("swaymsg focus");
    };

    // Neither VM sees the host's clipboard; nothing is in shopping's.
    assert_eq!(guest_paste(&setup, SHOPPING.0, &wl_paste), None);
    assert_eq!(guest_paste(&setup, BANKING.0, &wl_paste), None);

    // banking's app copies (banking's own clipboard, served by its gate).
    let text = "IBAN DE44 5001 0517 5407 3249 31";
    let wl_copy_args = ["--foreground", "--type", "text/plain;charset=utf-8", text];
    let _copier = setup.run(BANKING.0, &wl_copy, &wl_copy_args);
    let deadline = Instant::now() + LIMIT;
    while guest_paste(&setup, BANKING.0, &wl_paste).as_deref() != Some(text) {
        assert!(
            Instant::now() < deadline,
            "banking's clipboard never held the text\n{}",
            setup.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Still nothing in shopping: nothing crosses without the chords.
    assert_eq!(guest_paste(&setup, SHOPPING.0, &wl_paste), None);

    // Ctrl+Shift+C in banking's window: banking's clipboard into the global slot.
    // (Typed again while nothing arrived: the focus change may not have reached the gate
    // yet; a copy is idempotent.)
    focus(BANKING.0);
    let deadline = Instant::now() + LIMIT;
    while !clipd.has("Clipboard: copied: banking") {
        assert!(
            Instant::now() < deadline,
            "the copy chord in banking did nothing; clipd said:\n{}\nbanking's window: {}\n{}",
            clipd.text(),
            banking.text(),
            setup.logs()
        );
        vkb.chord(CTRL_SHIFT, KEY_C);
        let t = Instant::now();
        while !clipd.has("Clipboard: copied: banking") && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        clipd.has("banking → the global clipboard: 32 characters"),
        "{}",
        clipd.text()
    );

    // Ctrl+Shift+V in shopping's window: the slot becomes shopping's clipboard.
    focus(SHOPPING.0);
    vkb.chord(CTRL_SHIFT, KEY_V);
    clipd.wait_for(
        "Clipboard: pasted: banking → shopping: 32 characters",
        "the paste chord in shopping",
    );
    assert_eq!(
        guest_paste(&setup, SHOPPING.0, &wl_paste).as_deref(),
        Some(text),
        "shopping's app reads the pasted text"
    );
    // The slot is empty afterwards: another paste chord is refused as empty.
    focus(SHOPPING.0);
    vkb.chord(CTRL_SHIFT, KEY_V);
    clipd.wait_for(
        "paste into shopping: the global clipboard is empty",
        "the refused second paste",
    );
    // banking still has its own text, never the host's.
    assert_eq!(
        guest_paste(&setup, BANKING.0, &wl_paste).as_deref(),
        Some(text)
    );
    assert!(
        !clipd.has("HOST SECRET") && !clipd.has("IBAN"),
        "metadata only"
    );
    // The windows kept running, had the keyboard focus, and no chord key reached them.
    let (b, s) = (banking.frames(), shopping.frames());
    banking.wait_frames_above(b, &setup);
    shopping.wait_frames_above(s, &setup);
    for client in [&banking, &shopping] {
        let out = client.text();
        assert!(out.contains("keyboard-enter"), "{}: {out}", client.vm);
        for key in [KEY_C, KEY_V] {
            assert!(
                !out.contains(&format!("key={key} ")),
                "a chord key reached {}: {out}",
                client.vm
            );
        }
    }
}
