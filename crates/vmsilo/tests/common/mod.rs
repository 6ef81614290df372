//! Helpers shared by the vmsilo integration tests: the binary under its multi-call names, a
//! terminal (PTY) a test can type into and read, and waiting for files and processes.

#![allow(dead_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};

/// The vmsilo binary.
pub fn vmsilo_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmsilo"))
}

/// A symlink `dir/<name>` to the vmsilo binary (a multi-call entry point).
pub fn multi_call(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(vmsilo_bin(), &link).expect("symlink");
    link
}

/// `vmsilo` with a clean environment for vmsilo's variables.
pub fn vmsilo() -> Command {
    command(&vmsilo_bin())
}

/// A command for `program` without the vmsilo environment variables of the caller.
pub fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for v in [
        "VMSILO_CONFIG",
        "VMSILO_RUN_DIR",
        "VMSILO_SYSFS_ROOT",
        "VMSILO_BIN",
        "VMSILO_VM_SWITCH_BIN",
        "VMSILO_BALLOOND_BIN",
        "NOTIFY_SOCKET",
        "VMSILO_SYSTEMCTL",
        "VMSILO_SYSTEMD_DIR",
        "VMSILO_ANSWER_TIMEOUT",
        "VMSILO_HOST_SETUP",
    ] {
        c.env_remove(v);
    }
    c
}

/// A fresh directory under /tmp (short: socket paths), removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from(format!(
            "/tmp/vmsilo-t-{}-{}-{label}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("VMSILO_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Files in a directory, sorted (empty if it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits for `child` and collects its output; kills it and returns `None` after `limit`.
pub fn output_within(mut child: Child, limit: Duration) -> Option<Output> {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The testkit guest with vmsilo's agent; `button` and `evdev` make its /init power off on
/// the ACPI power button.
pub fn agent_image() -> vmsilo_testkit::GuestImage {
    vmsilo_testkit::ImageSpec::new()
        .agent(vmsilo_testkit::agent_binary().expect("vmsilo-guest"))
        .module("button")
        .module("evdev")
        .build()
        .expect("guest image")
}

/// Kills the child when dropped.
pub struct Guard(pub Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Guard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }

    /// Waits for the exit status, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.wait_timeout_or(timeout, || "the process did not exit in time".into())
    }

    /// [`Guard::wait_timeout`] that panics with `message()` when the time is up.
    pub fn wait_timeout_or(
        &mut self,
        timeout: Duration,
        message: impl Fn() -> String,
    ) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child().try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "{}", message());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A pseudo-terminal whose slave is handed to a child; the test reads and types on the master.
pub struct Term {
    pub master: File,
    pub slave: File,
    pub seen: String,
}

impl Term {
    pub fn new() -> Term {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let flags =
            OFlag::from_bits_truncate(fcntl(pty.master.as_fd(), FcntlArg::F_GETFL).expect("getfl"));
        fcntl(
            pty.master.as_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )
        .expect("setfl");
        Term {
            master: File::from(pty.master),
            slave: File::from(pty.slave),
            seen: String::new(),
        }
    }

    /// Stdio for a child attached to the slave.
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("clone slave"))
    }

    pub fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type");
    }

    /// Reads what is available (waits up to `wait`).
    pub fn pump(&mut self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let _ = poll(&mut fds, ms);
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            match self.master.read(&mut buf) {
                Ok(0) => return any,
                Ok(n) => {
                    any = true;
                    self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return any,
                Err(_) => return any,
            }
        }
    }

    /// Reads until `pattern` appears after byte `from`; returns the position after it.
    pub fn wait_for(&mut self, from: usize, pattern: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen.get(from..).and_then(|s| s.find(pattern)) {
                return from + i + pattern.len();
            }
            assert!(
                Instant::now() < deadline,
                "no {pattern:?} on the terminal; it shows:\n{}",
                self.tail()
            );
            self.pump(Duration::from_millis(200));
        }
    }

    pub fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(3000);
        let mut i = start;
        while !self.seen.is_char_boundary(i) {
            i += 1;
        }
        self.seen[i..].to_owned()
    }

    /// Runs a shell command in the guest console shell and returns its output (markers keep
    /// the echoed command line apart from the output).
    pub fn run(&mut self, n: u32, cmd: &str, timeout: Duration) -> String {
        let start = self.seen.len();
        self.type_bytes(format!("echo __B''EGIN{n}__; {cmd}; echo __E''ND{n}__\r").as_bytes());
        let begin = self.wait_for(start, &format!("__BEGIN{n}__"), timeout);
        let end = self.wait_for(begin, &format!("__END{n}__"), timeout);
        self.seen[begin..end - format!("__END{n}__").len()]
            .replace('\r', "")
            .trim()
            .to_owned()
    }

    /// Types `cmd` every few seconds until `expect` shows (the guest may still be booting).
    pub fn run_until(&mut self, cmd: &str, expect: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let start = self.seen.len();
        loop {
            self.type_bytes(format!("{cmd}\r").as_bytes());
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if self.seen[start..].contains(expect) {
                    return;
                }
                self.pump(Duration::from_millis(200));
            }
            assert!(
                Instant::now() < deadline,
                "the guest never answered {cmd:?} with {expect:?}; the terminal shows:\n{}",
                self.tail()
            );
        }
    }
}

/// Waits until `path` exists.
pub fn wait_path(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `dir/vmsilo.toml`: one small QEMU/TCG VM `name` (256 MiB, 1 vCPU, no GPU, sound or
/// shared home, user root) booting `kernel` and `initrd` with root disk `root`, plus `extra`
/// lines for the VM.
pub fn qemu_vm_config(
    dir: &Path,
    name: &str,
    kernel: &Path,
    initrd: &Path,
    root: &Path,
    extra: &str,
) -> PathBuf {
    let text = format!(
        r#"
enable = true
user = "root"
qemu.accel = "tcg"

[[nixosVms]]
name = "{name}"
vmm = "qemu"
memory = 256
cpus = 1
gpu = false
sound = false
sharedHome = false
kernel = "{kernel}"
initramfs = "{initrd}"
rootDisk = "{root}"
{extra}
"#,
        kernel = kernel.display(),
        initrd = initrd.display(),
        root = root.display(),
    );
    let path = dir.join("vmsilo.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// `systemd-socket-activate` on `<dir>/run/<vm>-command.socket` starting `vmsilo
/// command-service <vm>` at the first connection, as `vmsilo-<vm>.socket` does under systemd
/// (without systemd, the command service runs `vm-service` itself). The run, vm-switch and
/// state directories are `<dir>/{run,vs,state}`; `PATH` is this one plus `path_prefix` first
/// and `~/.cargo/bin` last; `extra` goes after the command service's arguments (`--uid`, ...).
/// Its output goes to `<dir>/service.log`. Returns once the socket exists.
pub fn command_activator(
    dir: &Path,
    cfg: &Path,
    vm: &str,
    path_prefix: Option<&str>,
    extra: &[&str],
) -> Guard {
    let d = dir.display();
    let socket = format!("{d}/run/{vm}-command.socket");
    let path = format!(
        "{}{}:{}/.cargo/bin",
        path_prefix.map(|p| format!("{p}:")).unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default(),
        std::env::var("HOME").unwrap_or_default()
    );
    let child = command(Path::new("systemd-socket-activate"))
        .arg(format!("--listen={socket}"))
        .arg(format!("--setenv=PATH={path}"))
        .arg(format!("--setenv=VMSILO_SYSTEMD_DIR={d}/no-systemd"))
        .arg(vmsilo_bin())
        .arg("--config")
        .arg(cfg)
        .args(["command-service", vm])
        .args(["--run-dir", &format!("{d}/run")])
        .args(["--vm-switch-dir", &format!("{d}/vs")])
        .args(["--state-dir", &format!("{d}/state")])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("service.log")).expect("log"))
        .spawn()
        .expect("systemd-socket-activate");
    let guard = Guard(Some(child));
    wait_path(Path::new(&socket), Duration::from_secs(60));
    guard
}

/// A network namespace for a test (`ip netns add`), deleted on drop with everything in it.
pub struct NetNs(pub String);

impl NetNs {
    /// `vmsilo-<label>-<pid>`: unique per test process.
    pub fn new(label: &str) -> NetNs {
        let name = format!("vmsilo-{label}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NetNs(name)
    }

    /// `ip netns exec <ns> program args...` (with /sys of the namespace).
    pub fn exec(&self, program: &Path) -> Command {
        let mut c = command(Path::new("ip"));
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// The content of `/sys/<rel>` as the namespace sees it, trimmed; `None` if absent.
    pub fn sys(&self, rel: &str) -> Option<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat", &format!("/sys/{rel}")])
            .stderr(Stdio::null())
            .output()
            .expect("ip netns exec cat");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    /// Where `/sys/<rel>` (a symlink) points, as the namespace sees it.
    pub fn sys_link(&self, rel: &str) -> Option<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0, "readlink", &format!("/sys/{rel}")])
            .stderr(Stdio::null())
            .output()
            .expect("ip netns exec readlink");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    /// The namespace's interfaces (`/sys/class/net`), sorted.
    pub fn links(&self) -> Vec<String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0, "ls", "/sys/class/net"])
            .output()
            .expect("ip netns exec ls");
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// `net.ipv4.ip_forward` of the namespace.
    pub fn ip_forward(&self) -> String {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ])
            .output()
            .expect("ip netns exec cat");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// The nftables ruleset of the namespace (`nft list ruleset`).
    pub fn nft_ruleset(&self) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .expect("ip netns exec nft");
        assert!(o.status.success(), "nft list ruleset: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `ip args...`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Whether the tests run as root; prints why a test is skipped when not.
pub fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("{test}: skipped: needs root (network namespaces, TAPs, nftables)");
    }
    root
}
