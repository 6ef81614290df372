//! End to end: `vmsilo vm-service` runs real QEMU/TCG guests (Debian kernel, testkit
//! initramfs) from a configuration, as systemd would run it (SIGTERM to stop, `$NOTIFY_SOCKET`
//! for readiness).
//!
//! - A VM with a qcow2 overlay: readiness is reported, `vmsilo status` shows it running,
//!   `vm-shell` (driven through a PTY) reaches the guest's shell and runs commands, CTRL+]
//!   detaches and restores the terminal, SIGTERM presses the ACPI power button and the guest
//!   powers off (exit 0); afterwards the overlay, the sockets, the console link and the state
//!   file are gone and `vmsilo status` shows it stopped. Stale sockets left in the run
//!   directory are removed at start.
//! - A VM with a shared home under QEMU + virtiofsd: the home is created from the template
//!   with the configured user's ownership, the guest sees the template's and the host's files
//!   and the host sees the guest user's file owned by the configured uid/gid.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Guard, Scratch, Term, entries, multi_call, vmsilo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmsilo_testkit::{GuestImage, ImageSpec};

const BOOT: Duration = Duration::from_secs(180);

fn image() -> GuestImage {
    // `button` and `evdev`: the testkit's /init then powers off on the ACPI power button.
    ImageSpec::new()
        .module("virtio_blk")
        .module("button")
        .module("evdev")
        .build()
        .expect("guest image")
}

/// The e2e VM with a 64 MiB qcow2 overlay and `sharedHome = <shared_home>` (a TOML value).
fn config(dir: &Scratch, image: &GuestImage, shared_home: &str) -> std::path::PathBuf {
    let root = dir.path().join("root.img");
    std::fs::File::create(&root)
        .and_then(|f| f.set_len(8 << 20))
        .expect("root disk");
    let path = common::qemu_vm_config(
        dir.path(),
        "e2e",
        &image.kernel,
        &image.initrd,
        &root,
        "rootOverlay = { type = \"qcow2\", size = \"64m\" }",
    );
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace("sharedHome = false", &format!("sharedHome = {shared_home}"));
    std::fs::write(&path, text).expect("config");
    path
}

/// Starts `vmsilo vm-service e2e` with its directories in `dir`, reporting readiness to a
/// datagram socket the test reads.
fn start_service(dir: &Scratch, cfg: &Path, uid: u32, gid: u32) -> (Guard, UnixDatagram) {
    for sub in ["run", "vs", "state"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
    }
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let d = dir.str();
    let child = vmsilo()
        .args([
            "--config",
            cfg.to_str().expect("utf-8"),
            "vm-service",
            "e2e",
        ])
        .args(["--run-dir", &format!("{d}/run")])
        .args(["--vm-switch-dir", &format!("{d}/vs")])
        .args(["--state-dir", &format!("{d}/state")])
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
        .args(["--home-template", &format!("{d}/template")])
        .env("NOTIFY_SOCKET", &notify_path)
        .env(
            "PATH",
            format!(
                "{}:{}",
                std::env::var("PATH").unwrap_or_default(),
                home_cargo_bin()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("service.log")).expect("log"))
        .spawn()
        .expect("start vm-service");
    (Guard(Some(child)), notify)
}

/// virtiofsd and vhost-device-vsock are installed into ~/.cargo/bin by `cargo xtask setup`.
fn home_cargo_bin() -> String {
    std::env::var("HOME")
        .map(|h| format!("{h}/.cargo/bin"))
        .unwrap_or_default()
}

fn wait_ready(notify: &UnixDatagram, service: &mut Guard, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = notify.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            return;
        }
        if let Some(s) = service.child().try_wait().expect("try_wait") {
            panic!(
                "vm-service exited with {s} before READY=1:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no READY=1:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

fn status_json(cfg: &Path, run: &str) -> serde_json::Value {
    let out = vmsilo()
        .args([
            "--config",
            cfg.to_str().expect("utf-8"),
            "status",
            "e2e",
            "--json",
        ])
        .args(["--run-dir", run])
        .output()
        .expect("status");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn stop(service: &mut Guard, log: &Path) {
    let pid = Pid::from_raw(i32::try_from(service.child().id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let status = service.wait_timeout(Duration::from_secs(90));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "vm-service:\n{text}");
    assert!(text.contains("power button pressed"), "{text}");
    assert!(text.contains("the guest powered off"), "{text}");
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_e2e_vm_service_boots_shell_attaches_and_sigterm_powers_off() {
    let image = image();
    let dir = Scratch::new("rt");
    let cfg = config(&dir, &image, "false");
    let run = format!("{}/run", dir.str());
    std::fs::create_dir_all(&run).expect("run dir");
    // Leftovers of a crashed run: a stale QMP socket and a dangling console link.
    drop(UnixListener::bind(format!("{run}/e2e-qmp.socket")).expect("stale socket"));
    std::os::unix::fs::symlink("/dev/pts/999999", format!("{run}/e2e-console")).expect("link");
    let log = dir.path().join("service.log");

    let (mut service, notify) = start_service(&dir, &cfg, 0, 0);
    wait_ready(&notify, &mut service, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(&format!("removed stale socket {run}/e2e-qmp.socket")),
        "{text}"
    );
    let overlay = dir.path().join("state/overlays/e2e.qcow2");
    assert!(overlay.exists(), "the overlay is created");
    let st = status_json(&cfg, &run);
    assert_eq!(st["vms"][0]["state"], "running", "{st}");
    assert!(st["vms"][0]["vmmPid"].as_u64().is_some(), "{st}");

    // vm-shell through a terminal.
    let mut term = Term::new();
    let before = nix::sys::termios::tcgetattr(&term.slave).expect("termios");
    let shell_bin = multi_call(dir.path(), "vm-shell");
    let mut shell = Guard(Some(
        common::command(&shell_bin)
            .args(["--config", cfg.to_str().expect("utf-8"), "e2e"])
            .env("VMSILO_RUN_DIR", &run)
            .stdin(term.stdio())
            .stdout(term.stdio())
            .stderr(term.stdio())
            .spawn()
            .expect("vm-shell"),
    ));
    term.wait_for(0, "CTRL+] detaches", Duration::from_secs(10));
    term.run_until("echo VM$((6*7))OK", "VM42OK", BOOT);
    let size = term.run(1, "cat /sys/block/vdb/size", Duration::from_secs(30));
    assert_eq!(size, "131072", "the 64 MiB overlay is the second disk");
    let cmdline = term.run(2, "cat /proc/cmdline", Duration::from_secs(30));
    assert!(
        cmdline.contains("vmsilo.overlay=qcow2,/dev/vdb"),
        "{cmdline}"
    );
    term.type_bytes(&[0x1d]);
    let status = shell.wait_timeout(Duration::from_secs(10));
    assert!(status.success(), "vm-shell: {status}\n{}", term.tail());
    term.pump(Duration::from_millis(200));
    assert!(term.seen.contains("detached"), "{}", term.tail());
    let after = nix::sys::termios::tcgetattr(&term.slave).expect("termios");
    assert_eq!(
        before.local_flags, after.local_flags,
        "vm-shell restores the terminal"
    );

    stop(&mut service, &log);
    assert!(!overlay.exists(), "the overlay is removed");
    assert_eq!(entries(Path::new(&run)), Vec::<String>::new(), "run dir");
    let st = status_json(&cfg, &run);
    assert_eq!(st["vms"][0]["state"], "stopped", "{st}");
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_e2e_shared_home_under_qemu_and_virtiofsd() {
    let image = image();
    let dir = Scratch::new("home");
    let home = dir.path().join("shared/e2e");
    let cfg = config(&dir, &image, &format!("\"{}\"", home.display()));
    let template = dir.path().join("template");
    std::fs::create_dir_all(&template).expect("template");
    std::fs::write(template.join("from-template"), "template\n").expect("write");
    let (uid, gid) = (4242, 4343);
    let log = dir.path().join("service.log");

    let (mut service, notify) = start_service(&dir, &cfg, uid, gid);
    wait_ready(&notify, &mut service, &log);
    // Created from the template, owned by the configured user.
    let meta = std::fs::metadata(&home).expect("home created");
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    let meta = std::fs::metadata(home.join("from-template")).expect("template copied");
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    std::fs::write(home.join("from-host"), "host\n").expect("write");
    std::os::unix::fs::chown(home.join("from-host"), Some(uid), Some(gid)).expect("chown");

    // The console PTY, straight (vm-shell is covered by the other test).
    let run = format!("{}/run", dir.str());
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("{run}/e2e-console"))
        .expect("console");
    let mut term = Term {
        master: console.try_clone().expect("clone"),
        slave: console,
        seen: String::new(),
    };
    let flags = nix::fcntl::OFlag::from_bits_truncate(
        nix::fcntl::fcntl(&term.master, nix::fcntl::FcntlArg::F_GETFL).expect("getfl"),
    );
    nix::fcntl::fcntl(
        &term.master,
        nix::fcntl::FcntlArg::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("setfl");
    term.run_until("echo VM$((6*7))OK", "VM42OK", BOOT);
    term.run(
        1,
        "mkdir -p /mnt/home && mount -t virtiofs home /mnt/home && echo mounted",
        Duration::from_secs(30),
    );
    assert_eq!(
        term.run(
            2,
            "cat /mnt/home/from-template /mnt/home/from-host",
            Duration::from_secs(30)
        ),
        "template\nhost"
    );
    assert_eq!(
        term.run(
            3,
            "stat -c %u:%g /mnt/home/from-host",
            Duration::from_secs(30)
        ),
        "1000:1000",
        "the configured user is the guest user"
    );
    term.run(
        4,
        "echo 'user:x:1000:1000::/:/bin/sh' >>/etc/passwd; echo 'user:x:1000:' >>/etc/group; \
         su user -s /bin/sh -c 'echo guest >/mnt/home/from-guest'; sync",
        Duration::from_secs(30),
    );
    let meta = std::fs::metadata(home.join("from-guest")).expect("file written by the guest");
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    assert_eq!(
        std::fs::read_to_string(home.join("from-guest")).expect("read"),
        "guest\n"
    );
    drop(term);

    stop(&mut service, &log);
    assert!(home.join("from-guest").exists(), "the shared home persists");
    assert_eq!(entries(Path::new(&run)), Vec::<String>::new(), "run dir");
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_e2e_vm_start_debug_runs_on_the_terminal_and_ctrl_bracket_powers_off() {
    let image = image();
    let dir = Scratch::new("debug");
    let cfg = config(&dir, &image, "false");
    let d = dir.str().to_owned();
    let mut term = Term::new();
    let program = multi_call(dir.path(), "vm-start-debug");
    let mut debug = Guard(Some(
        common::command(&program)
            .args(["--config", cfg.to_str().expect("utf-8"), "e2e"])
            .args(["--run-dir", &format!("{d}/run")])
            .args(["--state-dir", &format!("{d}/state")])
            .args(["--uid", "0", "--gid", "0"])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    std::env::var("PATH").unwrap_or_default(),
                    home_cargo_bin()
                ),
            )
            .stdin(term.stdio())
            .stdout(term.stdio())
            .stderr(term.stdio())
            .spawn()
            .expect("vm-start-debug"),
    ));
    term.wait_for(0, "CTRL+] powers it off", Duration::from_secs(60));
    // The guest's boot messages are on the terminal.
    term.wait_for(0, "VMSILO-READY", BOOT);
    term.run_until("echo VM$((6*7))OK", "VM42OK", BOOT);
    let st = status_json(&cfg, &format!("{d}/run"));
    assert_eq!(st["vms"][0]["state"], "running", "{st}");
    assert_eq!(st["vms"][0]["debug"], true, "{st}");
    term.type_bytes(&[0x1d]);
    let status = debug.wait_timeout(Duration::from_secs(90));
    term.pump(Duration::from_millis(200));
    assert_eq!(status.code(), Some(0), "{}", term.tail());
    assert!(
        term.seen.contains("power button pressed"),
        "{}",
        term.tail()
    );
    assert_eq!(
        entries(Path::new(&format!("{d}/run"))),
        Vec::<String>::new()
    );
}
