//! `cargo xtask verify-crosvm --crosvm PATH`: checks vmsilo's crosvm-facing code against a real
//! crosvm binary. It needs root and `/dev/kvm` (a guest that hangs on KVM is fine: nothing here
//! waits for the guest). CI has no crosvm, so CI does not run it; the results on the reference
//! crosvm are in `docs/crosvm-verification.md`.
//!
//! Checks (`--only` picks some):
//! - `args`: every crosvm golden plan (`crates/vmsilo-config/tests/golden/crosvm_*.toml`) and the
//!   example's `banking` plan (`examples/vmsilo.toml`, uid 1000, gid 100) is built with every
//!   path moved into a scratch directory. The files, directories and sockets the argv names are
//!   created there (disks, kernel, shared directories, a console listener, a Wayland listener, a
//!   minimal vhost-user backend per `--vhost-user` socket), and the argv runs with the real crosvm
//!   in a private network namespace (crosvm creates the TAPs there). Exit 35 means crosvm
//!   rejected a flag or a value: a vmsilo bug. Any later stop (a missing host device, KVM) is
//!   recorded with crosvm's message; a crosvm still running after `--run-for` got through its
//!   whole setup and is stopped with `"Exit"` on its control socket. When `/dev/vhost-vsock` is
//!   missing, a plan that stopped there is run again without `--vsock` to check the rest.
//! - `control`: `crosvm run -s SOCK --mem 256 KERNEL`, then vmsilo-balloond's crosvm client
//!   (library and `vmsilo-balloond --once`, and the daemon's status) must see `{"Err":107}` as
//!   "driver not ready"; `"Powerbtn"` and `"Exit"` (the requests `vmsilo vm-service` sends) must
//!   get `"Ok"`, and crosvm must exit 0 and remove its socket.
//! - `vm-service`: `vmsilo vm-service` runs a `vmm = "crosvm"` VM; crosvm must connect to the
//!   runtime's console socket (the service reaches `running`), then SIGTERM: the power button is
//!   pressed, the guest cannot react (KVM hangs it), so after `--shutdown-timeout` the hard stop
//!   happens (exit 37), and nothing may be left behind.
//! - `vm-switch`: crosvm as vhost-user-net frontend of a real vm-switch port must get through
//!   its startup negotiation (SET_OWNER, GET_FEATURES, protocol features) and keep running;
//!   vm-switch must log the connection.
//! - `unit-sandbox`: the mount protections of the VM unit `vmsilo units` generates (`Protect*=`,
//!   `NoNewPrivileges=`) are recreated in a private mount namespace, and a sandboxed crosvm with
//!   a GPU (whose jail mounts `/proc` and binds host library directories) must start inside.
//!
//! crosvm runs sandboxed as vmsilo runs it, unless `--disable-sandbox` is given or crosvm's jail
//! root `/var/empty` does not exist (then `--disable-sandbox` is added and the report says so).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde_json::Value;
use vmsilo_balloond::vmm::VmmClient;
use vmsilo_balloond::vmm::crosvm::CrosvmClient;
use vmsilo_config::plan::{self, PlanOptions};
use vmsilo_config::{Dirs, Format, load_str};
use vmsilo_vmm::crosvm::{CrosvmControl, Reply, Request};

use crate::demo::is_root;
use crate::util::{cargo, section, sh, workspace_root};

/// crosvm's exit status for a rejected flag or value (`CommandStatus::InvalidArgs`).
const INVALID_ARGS: i32 = 35;
/// Seconds to wait for a socket crosvm or vm-switch creates.
const SOCKET_WAIT: Duration = Duration::from_secs(15);

/// The checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Check {
    /// Argument acceptance of every crosvm plan vmsilo produces.
    Args,
    /// The control socket: balloon "driver not ready", Powerbtn, Exit.
    Control,
    /// `vmsilo vm-service` with crosvm: console relay, stop, hard stop, cleanup.
    VmService,
    /// crosvm as the vhost-user-net frontend of vm-switch.
    VmSwitch,
    /// A sandboxed crosvm with a GPU under the mount protections of the generated VM unit.
    UnitSandbox,
}

/// `cargo xtask verify-crosvm`.
#[derive(Debug, clap::Args)]
pub struct VerifyCrosvmArgs {
    /// The crosvm binary to check.
    #[arg(long, value_name = "PATH")]
    pub crosvm: PathBuf,

    /// Guest kernel (default: the newest /boot/vmlinuz-*).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Run every crosvm with `--disable-sandbox` (default: only when /var/empty, crosvm's jail
    /// root, is missing).
    #[arg(long)]
    pub disable_sandbox: bool,

    /// How long a crosvm that got through its setup runs before it is stopped.
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = parse_duration)]
    pub run_for: Duration,

    /// Only these checks (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Check>,

    /// Keep the scratch directory (its logs) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    vmsilo_config::measure::parse_duration(text).map_err(|e| e.to_string())
}

/// One line of the report.
struct Row {
    check: String,
    ok: bool,
    detail: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn add(&mut self, check: impl Into<String>, ok: bool, detail: impl Into<String>) {
        let row = Row {
            check: check.into(),
            ok,
            detail: detail.into(),
        };
        eprintln!(
            "[{}] {}: {}",
            if row.ok { "ok" } else { "FAIL" },
            row.check,
            row.detail
        );
        self.rows.push(row);
    }

    fn note(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        let check = check.into();
        let detail = detail.into();
        eprintln!("[note] {check}: {detail}");
        self.notes.push(format!("{check}: {detail}"));
    }
}

/// What every check needs.
struct Ctx {
    crosvm: PathBuf,
    kernel: PathBuf,
    scratch: PathBuf,
    disable_sandbox: bool,
    run_for: Duration,
    no_vhost_vsock: bool,
    /// Whether `prlimit` can give crosvm systemd's default open-files limits.
    nofile_raised: bool,
}

pub fn run(args: &VerifyCrosvmArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask verify-crosvm must run as root: crosvm needs /dev/kvm and creates TAPs, \
             and vmsilo vm-service owns its run directory; try `sudo -E cargo xtask verify-crosvm`"
        );
    }
    let crosvm = fs::canonicalize(&args.crosvm)
        .with_context(|| format!("--crosvm {}", args.crosvm.display()))?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => newest_kernel()?,
    };
    let checks: Vec<Check> = if args.only.is_empty() {
        Check::value_variants().to_vec()
    } else {
        args.only.clone()
    };
    let mut report = Report::default();

    section("crosvm under test");
    let version = Command::new(&crosvm)
        .arg("version")
        .output()
        .with_context(|| format!("running {} version", crosvm.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    eprintln!(
        "{}: {version}; kernel {}",
        crosvm.display(),
        kernel.display()
    );
    let jail_root = Path::new("/var/empty").is_dir();
    let disable_sandbox = args.disable_sandbox || !jail_root;
    if disable_sandbox {
        report.note(
            "sandbox",
            if args.disable_sandbox {
                "--disable-sandbox added to every crosvm (asked for)"
            } else {
                "/var/empty (crosvm's jail root) is missing: --disable-sandbox added to every crosvm"
            },
        );
    }
    let no_vhost_vsock = !Path::new("/dev/vhost-vsock").exists();
    if no_vhost_vsock {
        report.note(
            "vsock",
            "/dev/vhost-vsock is missing: crosvm cannot create the vsock device here",
        );
    }

    let nofile_raised = Command::new("prlimit")
        .args([SERVICE_NOFILE, "--", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nofile_raised {
        report.note(
            "limits",
            "cannot raise the open-files hard limit to systemd's default 524288 (no \
             CAP_SYS_RESOURCE?): crosvm runs with this shell's limits, and a sandboxed GPU \
             device (which sets 32768) may abort; such a plan is run again with \
             --disable-sandbox",
        );
    }

    let scratch = PathBuf::from(format!("/tmp/vcv-{}", std::process::id()));
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let ctx = Ctx {
        crosvm,
        kernel,
        scratch: scratch.clone(),
        disable_sandbox,
        run_for: args.run_for,
        no_vhost_vsock,
        nofile_raised,
    };

    let bins = if checks.iter().any(|c| !matches!(c, Check::Args)) {
        Some(build_bins()?)
    } else {
        None
    };
    for c in &checks {
        let result = match (c, &bins) {
            (Check::Args, _) => check_args(&ctx, &mut report),
            (Check::Control, Some(b)) => check_control(&ctx, b, &mut report),
            (Check::VmService, Some(b)) => check_vm_service(&ctx, b, &mut report),
            (Check::VmSwitch, Some(b)) => check_vm_switch(&ctx, b, &mut report),
            (Check::UnitSandbox, Some(b)) => check_unit_sandbox(&ctx, b, &mut report),
            _ => Ok(()),
        };
        if let Err(e) = result {
            report.add(format!("{c:?}"), false, format!("{e:#}"));
        }
    }
    let left = processes_mentioning(&scratch);
    report.add(
        "cleanup",
        left.is_empty(),
        if left.is_empty() {
            "no process started by this run is left".to_owned()
        } else {
            for p in &left {
                signal(*p, "KILL");
            }
            format!("processes left behind (killed now): {left:?}")
        },
    );
    if args.keep {
        eprintln!("scratch directory kept: {}", scratch.display());
    } else {
        let _ = fs::remove_dir_all(&scratch);
    }

    section("summary");
    println!("crosvm: {} ({version})", ctx.crosvm.display());
    for n in &report.notes {
        println!("note {n}");
    }
    for r in &report.rows {
        println!(
            "{:4} {}: {}",
            if r.ok { "ok" } else { "FAIL" },
            r.check,
            r.detail
        );
    }
    let failed = report.rows.iter().filter(|r| !r.ok).count();
    let passed = report.rows.len() - failed;
    println!("verify-crosvm: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} crosvm check(s) failed");
    }
    Ok(())
}

fn newest_kernel() -> Result<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .context("reading /boot (pass --kernel PATH)")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .context("no /boot/vmlinuz-*: pass --kernel PATH")
}

/// The vmsilo binaries the runtime checks run.
struct Bins {
    vmsilo: PathBuf,
    balloond: PathBuf,
    vm_switch: PathBuf,
}

fn build_bins() -> Result<Bins> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "vmsilo",
        "-p",
        "vmsilo-balloond",
        "-p",
        "vm-switch",
        "--bins",
    ]);
    sh(&mut cmd).context("building vmsilo, vmsilo-balloond and vm-switch")?;
    let dir = crate::util::target_dir().join("debug");
    Ok(Bins {
        vmsilo: dir.join("vmsilo"),
        balloond: dir.join("vmsilo-balloond"),
        vm_switch: dir.join("vm-switch"),
    })
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A crosvm (or other program) this run started, with its log. Killed with its descendants
/// when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
    status: Option<i32>,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        eprintln!("+ {cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Proc {
            child,
            log: log.to_owned(),
            status: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code (128 + signal for a signal), once exited.
    fn poll(&mut self) -> Option<i32> {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            use std::os::unix::process::ExitStatusExt;
            self.status = Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
        }
        self.status
    }

    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while self.poll().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        self.poll()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL to the process and every descendant.
    fn kill(&mut self) {
        if self.poll().is_some() {
            return;
        }
        let mut all = descendants(self.pid());
        all.push(self.pid());
        for p in all {
            signal(p, "KILL");
        }
        let _ = self.child.wait();
        self.poll();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn ppid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let pids: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid_of(p)?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &pids {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// Processes whose command line mentions `dir` (this run's scratch directory).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn wait_for_path(path: &Path, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if let Some(code) = proc.poll() {
            bail!(
                "exited with {code} before creating {}: {}",
                path.display(),
                crosvm_errors(&proc.log_text())
            );
        }
        if Instant::now() >= deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// crosvm's error lines (its `ERROR` log lines and the `Caused by:` chain), on one line.
fn crosvm_errors(log: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut in_error = false;
    for line in log.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("syslog init failed") {
            continue;
        }
        if l.contains("libminijail") {
            // minijail's own messages from a jailed child (no crosvm log prefix).
            out.push(l);
            in_error = false;
        } else if l.starts_with('[') {
            in_error = l.contains(" ERROR ");
            if in_error {
                out.push(l.split_once("] ").map_or(l, |(_, m)| m));
            }
        } else if in_error {
            out.push(l);
        }
    }
    if out.is_empty() {
        // No crosvm error line (an abort in a jailed child, a signal): the last lines.
        let lines: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("syslog init failed"))
            .collect();
        out = lines[lines.len().saturating_sub(2)..].to_vec();
    }
    let text = out.join(" / ");
    if text.chars().count() > 600 {
        let mut t: String = text.chars().take(600).collect();
        t.push('…');
        t
    } else {
        text
    }
}

/// Asks crosvm to exit through its control socket, then waits; SIGKILL after 10 s.
fn exit_crosvm(proc: &mut Proc, control: &Path) -> (Result<Reply, String>, Option<i32>) {
    let reply = CrosvmControl::new(control, Duration::from_secs(5))
        .request(Request::Exit)
        .map_err(|e| e.to_string());
    let code = proc.wait(Duration::from_secs(10));
    if code.is_none() {
        proc.kill();
    }
    (reply, code)
}

/// The open-files limits systemd gives a service by default (`DefaultLimitNOFILE=1024:524288`),
/// which the VM unit keeps. crosvm's sandboxed GPU process sets its own limit to 32768 inside a
/// user namespace, where a hard limit cannot be raised: below that, minijail aborts.
const SERVICE_NOFILE: &str = "--nofile=1024:524288";

/// `crosvm ARGS`, under `prlimit NOFILE` where that works, with `--disable-sandbox` after `run`
/// when asked.
fn crosvm_cmd(ctx: &Ctx, disable_sandbox: bool, args: &[String]) -> Command {
    let mut cmd = if ctx.nofile_raised {
        let mut c = Command::new("prlimit");
        c.args([SERVICE_NOFILE, "--"]).arg(&ctx.crosvm);
        c
    } else {
        Command::new(&ctx.crosvm)
    };
    let mut args = args.to_vec();
    if disable_sandbox
        && !args.iter().any(|a| a == "--disable-sandbox")
        && let Some(i) = args.iter().position(|a| a == "run")
    {
        args.insert(i + 1, "--disable-sandbox".into());
    }
    cmd.args(args);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Peers the argv needs: a console listener, a Wayland listener, vhost-user backends.

#[derive(Clone, Copy)]
enum Peer {
    /// Accepts and reads everything (console, Wayland).
    Sink,
    /// Answers the vhost-user messages a frontend sends at startup.
    VhostUser,
}

struct Peers {
    stop: Arc<AtomicBool>,
    /// The vhost-user requests the stubs received: one list per connection.
    requests: Arc<Mutex<Vec<Vec<u32>>>>,
}

impl Peers {
    fn new() -> Peers {
        Peers {
            stop: Arc::new(AtomicBool::new(false)),
            requests: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The request sequences the vhost-user stubs saw, each with its number of connections.
    fn requests_seen(&self) -> String {
        let seen = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        let mut distinct: Vec<(Vec<u32>, usize)> = Vec::new();
        for conn in seen {
            match distinct.iter_mut().find(|(s, _)| *s == conn) {
                Some((_, n)) => *n += 1,
                None => distinct.push((conn, 1)),
            }
        }
        distinct
            .iter()
            .map(|(seq, n)| {
                let names: Vec<String> = seq.iter().map(|c| request_name(*c)).collect();
                format!("{} ({n} connection(s))", names.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn listen(&self, path: &Path, peer: Peer) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let _ = fs::remove_file(path);
        let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        l.set_nonblocking(true)?;
        let stop = self.stop.clone();
        let requests = self.requests.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let requests = requests.clone();
                        thread::spawn(move || match peer {
                            Peer::Sink => sink(s),
                            Peer::VhostUser => vhost_user_stub(s, &requests),
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(())
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sink(mut s: UnixStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

const VHOST_USER_GET_FEATURES: u32 = 1;
const VHOST_USER_GET_PROTOCOL_FEATURES: u32 = 15;
const VHOST_USER_GET_QUEUE_NUM: u32 = 17;
const VHOST_USER_GET_CONFIG: u32 = 24;
/// Version 1 in the flags.
const VHOST_USER_VERSION: u32 = 0x1;
const VHOST_USER_REPLY: u32 = 0x4;
const VHOST_USER_NEED_REPLY: u32 = 0x8;
/// VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES.
const STUB_FEATURES: u64 = (1 << 32) | (1 << 30);
/// VHOST_USER_PROTOCOL_F_CONFIG.
const STUB_PROTOCOL_FEATURES: u64 = 0x200;

fn request_name(code: u32) -> String {
    match code {
        1 => "GET_FEATURES".into(),
        2 => "SET_FEATURES".into(),
        3 => "SET_OWNER".into(),
        5 => "SET_MEM_TABLE".into(),
        15 => "GET_PROTOCOL_FEATURES".into(),
        16 => "SET_PROTOCOL_FEATURES".into(),
        17 => "GET_QUEUE_NUM".into(),
        21 => "SET_BACKEND_REQ_FD".into(),
        24 => "GET_CONFIG".into(),
        25 => "SET_CONFIG".into(),
        other => format!("request {other}"),
    }
}

/// The smallest vhost-user backend a frontend can start with: it offers VERSION_1 and the
/// CONFIG protocol feature, answers GET_CONFIG with zeros, and acknowledges nothing unasked.
/// It never gets to the datapath (the guest does not run far enough to activate the device).
fn vhost_user_stub(mut s: UnixStream, requests: &Mutex<Vec<Vec<u32>>>) {
    let conn = requests.lock().map_or(usize::MAX, |mut r| {
        r.push(Vec::new());
        r.len() - 1
    });
    loop {
        let mut hdr = [0u8; 12];
        if s.read_exact(&mut hdr).is_err() {
            return;
        }
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        if let Ok(mut r) = requests.lock()
            && let Some(seq) = r.get_mut(conn)
        {
            seq.push(request);
        }
        if size > 0x1000 + 12 {
            return;
        }
        let mut body = vec![0u8; size as usize];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let reply: Option<Vec<u8>> = match request {
            VHOST_USER_GET_FEATURES => Some(STUB_FEATURES.to_le_bytes().to_vec()),
            VHOST_USER_GET_PROTOCOL_FEATURES => Some(STUB_PROTOCOL_FEATURES.to_le_bytes().to_vec()),
            VHOST_USER_GET_QUEUE_NUM => Some(1u64.to_le_bytes().to_vec()),
            // {offset, size, flags} then `size` bytes: echo the header, zero the payload.
            VHOST_USER_GET_CONFIG if body.len() >= 12 => {
                let mut r = body.clone();
                r[12..].fill(0);
                Some(r)
            }
            _ if flags & VHOST_USER_NEED_REPLY != 0 => Some(0u64.to_le_bytes().to_vec()),
            _ => None,
        };
        if let Some(payload) = reply {
            let mut msg = Vec::with_capacity(12 + payload.len());
            msg.extend_from_slice(&request.to_le_bytes());
            msg.extend_from_slice(&(VHOST_USER_VERSION | VHOST_USER_REPLY).to_le_bytes());
            msg.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_le_bytes());
            msg.extend_from_slice(&payload);
            if s.write_all(&msg).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// args: argument acceptance of every plan.

/// One plan to check: a configuration, the VM to plan, the user's ids.
struct Case {
    name: String,
    toml: PathBuf,
    vm: Option<String>,
}

fn cases() -> Result<Vec<Case>> {
    let root = workspace_root();
    let golden = root.join("crates/vmsilo-config/tests/golden");
    let mut out = Vec::new();
    let mut names: Vec<String> = fs::read_dir(&golden)
        .with_context(|| format!("reading {}", golden.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("crosvm_") && n.ends_with(".toml"))
        .collect();
    names.sort();
    for n in names {
        out.push(Case {
            name: format!("golden {}", n.trim_end_matches(".toml")),
            toml: golden.join(&n),
            vm: None,
        });
    }
    out.push(Case {
        name: "examples/vmsilo.toml banking".into(),
        toml: root.join("examples/vmsilo.toml"),
        vm: Some("banking".into()),
    });
    Ok(out)
}

fn check_args(ctx: &Ctx, report: &mut Report) -> Result<()> {
    section("args: every crosvm plan through the real crosvm's argument parser");
    for (i, case) in cases()?.iter().enumerate() {
        let dir = ctx.scratch.join(format!("a{i:02}"));
        match run_case(ctx, case, &dir) {
            Ok(CaseResult { rows, notes }) => {
                for (ok, detail) in rows {
                    report.add(format!("args: {}", case.name), ok, detail);
                }
                for n in notes {
                    report.note(format!("args: {}", case.name), n);
                }
            }
            Err(e) => report.add(format!("args: {}", case.name), false, format!("{e:#}")),
        }
    }
    Ok(())
}

/// Plans `case` with every path under `dir`, creates what the argv names, runs crosvm.
/// What one plan gave: `(ok, what happened)` per crosvm run, and notes (the vhost-user requests
/// crosvm sent to the stubs, a missing crosvm feature).
struct CaseResult {
    rows: Vec<(bool, String)>,
    notes: Vec<String>,
}

fn run_case(ctx: &Ctx, case: &Case, dir: &Path) -> Result<CaseResult> {
    let fsroot = dir.join("fs");
    fs::create_dir_all(&fsroot)?;
    let text = fs::read_to_string(&case.toml)?;
    // Every absolute path in the configuration is a quoted string starting with `/`.
    let text = text.replace("\"/", &format!("\"{}/", fsroot.display()));
    let cfg = load_str(&text, Format::Toml)
        .map_err(|e| anyhow::anyhow!("{}: invalid configuration:\n{e}", case.toml.display()))?;
    let vm = case
        .vm
        .clone()
        .or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix("# plan: "))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| cfg.nixos_vms[0].name.clone());
    let p = plan::build(&cfg, &vm, &scratch_plan_options(dir, 1000, 100))?;
    fs::write(dir.join("plan.txt"), plan::render_text(&p))?;

    // The shared home defaults to /shared/<vm>, a path the configuration does not spell: move
    // it too (vm-service creates it before crosvm starts; crosvm's parser checks it exists).
    let argv: Vec<String> = p
        .argv
        .iter()
        .map(|a| match a.split_once(':') {
            Some((path, rest)) if path.starts_with("/shared/") => {
                format!("{}{path}:{rest}", fsroot.display())
            }
            _ => a.clone(),
        })
        .collect();
    let peers = Peers::new();
    prepare(ctx, &argv, dir, &peers)?;
    let control = PathBuf::from(
        p.paths
            .control_socket
            .clone()
            .context("no control socket")?,
    );
    let mut rows = Vec::new();
    let mut argv = argv;
    let mut disable_sandbox = ctx.disable_sandbox;
    let mut virgl_missing = false;
    for attempt in 0..3 {
        let mut changes = Vec::new();
        if argv.len() < p.argv.len() {
            changes.push("without --vsock");
        }
        if disable_sandbox && !ctx.disable_sandbox {
            changes.push("with --disable-sandbox");
        }
        let a = run_argv(
            ctx,
            disable_sandbox,
            &argv,
            dir,
            &control,
            &format!("crosvm-{attempt}.log"),
        )?;
        virgl_missing |= a.log.contains("invalid rutabaga build parameters");
        let retry_without_vsock = ctx.no_vhost_vsock
            && a.code.is_some_and(|c| c != INVALID_ARGS)
            && a.log.contains("/dev/vhost-vsock")
            && argv.iter().any(|x| x == "--vsock");
        let retry_unsandboxed = !disable_sandbox
            && !ctx.nofile_raised
            && a.code.is_some_and(|c| c != INVALID_ARGS)
            && a.log.contains("failed to set rlimit");
        rows.push((
            a.ok,
            if changes.is_empty() {
                a.detail
            } else {
                format!("again {}: {}", changes.join(", "), a.detail)
            },
        ));
        if retry_without_vsock {
            argv = without_flag(&argv, "--vsock");
        } else if retry_unsandboxed {
            disable_sandbox = true;
        } else {
            break;
        }
    }
    let mut notes = Vec::new();
    let seen = peers.requests_seen();
    if !seen.is_empty() {
        notes.push(format!("vhost-user requests crosvm sent: {seen}"));
    }
    if virgl_missing {
        notes.push(
            "this crosvm was built without the virgl_renderer feature, which the virgl2 \
             context type (vmsilo's GPU default) needs: its GPU device panics with \
             \"invalid rutabaga build parameters\""
                .to_owned(),
        );
    }
    Ok(CaseResult { rows, notes })
}

/// Plan options with the run, vm-switch and state directories and the Wayland socket in `dir`.
fn scratch_plan_options(dir: &Path, uid: u32, gid: u32) -> PlanOptions {
    let mut opts = PlanOptions::new(uid, gid);
    opts.dirs = Dirs {
        run_dir: dir.join("run").display().to_string(),
        vm_switch_dir: dir.join("vs").display().to_string(),
        state_dir: dir.join("state").display().to_string(),
    };
    opts.wayland_socket = Some(dir.join("wayland-0").display().to_string());
    opts
}

fn without_flag(argv: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in argv {
        if skip {
            skip = false;
        } else if a == flag {
            skip = true;
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// `key=value` of a crosvm option value `a,b,key=value,...`.
fn kv<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    value
        .split(',')
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
}

/// Creates under `dir` what the argv names: block images, the kernel (a link to the real one),
/// the initrd, shared directories, and listeners for the console, the Wayland socket and each
/// vhost-user socket. Paths outside `dir` (a VFIO device's sysfs path) are left alone.
fn prepare(ctx: &Ctx, argv: &[String], dir: &Path, peers: &Peers) -> Result<()> {
    let inside = |p: &str| Path::new(p).starts_with(dir);
    let parent = |p: &Path| -> Result<()> {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
        Ok(())
    };
    let Some(kernel) = argv.last() else {
        bail!("empty argv")
    };
    if inside(kernel) {
        let k = Path::new(kernel);
        parent(k)?;
        let _ = fs::remove_file(k);
        symlink(&ctx.kernel, k)?;
    }
    let mut it = argv.iter().peekable();
    while let Some(flag) = it.next() {
        let Some(value) = it.peek().map(|v| v.as_str()) else {
            break;
        };
        match flag.as_str() {
            "--block" => {
                let path =
                    kv(value, "path").unwrap_or_else(|| value.split(',').next().unwrap_or(""));
                if inside(path) {
                    disk_image(Path::new(path))?;
                }
            }
            "--initrd" if inside(value) => {
                let p = Path::new(value);
                parent(p)?;
                fs::write(p, [0u8; 512])?;
            }
            "--shared-dir" => {
                let path = value.split(':').next().unwrap_or("");
                if inside(path) {
                    fs::create_dir_all(path)?;
                }
            }
            "--serial" => {
                if value.contains("type=unix-stream")
                    && let Some(p) = kv(value, "path")
                    && inside(p)
                {
                    peers.listen(Path::new(p), Peer::Sink)?;
                }
            }
            "--wayland-sock" if inside(value) => peers.listen(Path::new(value), Peer::Sink)?,
            "--vhost-user" => {
                if let Some(p) = kv(value, "socket")
                    && inside(p)
                {
                    peers.listen(Path::new(p), Peer::VhostUser)?;
                }
            }
            "-s" | "--socket" if inside(value) => {
                let p = Path::new(value);
                parent(p)?;
                let _ = fs::remove_file(p);
            }
            _ => {}
        }
    }
    Ok(())
}

/// A disk image: qcow2 (through qemu-img) when the name says so, else a sparse raw file.
fn disk_image(path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    let _ = fs::remove_file(path);
    if path.extension().is_some_and(|e| e == "qcow2") {
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg("1G")
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
    }
    let f = fs::File::create(path)?;
    f.set_len(64 << 20)?;
    Ok(())
}

/// One crosvm run of a plan.
struct Attempt {
    ok: bool,
    detail: String,
    code: Option<i32>,
    log: String,
}

/// Runs one argv (in a new network namespace, so that crosvm's TAPs stay there) and classifies
/// the result. Exit 35 is the only status crosvm's argument parser returns; any other end
/// (or still running) means the argv was accepted.
fn run_argv(
    ctx: &Ctx,
    disable_sandbox: bool,
    argv: &[String],
    dir: &Path,
    control: &Path,
    log: &str,
) -> Result<Attempt> {
    let crosvm = crosvm_cmd(ctx, disable_sandbox, &argv[1..]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--"]).arg(crosvm.get_program());
    cmd.args(crosvm.get_args());
    let _ = fs::remove_file(control);
    let mut proc = Proc::spawn(&mut cmd, &dir.join(log))?;
    let code = proc.wait(ctx.run_for);
    let text = proc.log_text();
    let (ok, detail) = match code {
        Some(INVALID_ARGS) => (
            false,
            format!(
                "exit 35: crosvm rejected an argument: {}",
                crosvm_errors(&text)
            ),
        ),
        Some(code) => (
            true,
            format!(
                "accepted; exit {code} later, in setup: {}",
                crosvm_errors(&text)
            ),
        ),
        None => {
            let (reply, code) = exit_crosvm(&mut proc, control);
            let gone = !control.exists();
            (
                matches!(reply, Ok(Reply::Ok)) && code == Some(0) && gone,
                format!(
                    "accepted; setup complete, still running after {:?} (the vCPU does not get \
                     far on this KVM); \"Exit\" answered {reply:?}, exit {code:?}, control \
                     socket removed: {gone}",
                    ctx.run_for
                ),
            )
        }
    };
    Ok(Attempt {
        ok,
        detail,
        code,
        log: proc.log_text(),
    })
}

// ---------------------------------------------------------------------------------------------
// control: vmsilo-balloond's client, Powerbtn and Exit.

fn check_control(ctx: &Ctx, bins: &Bins, report: &mut Report) -> Result<()> {
    section("control: the crosvm control socket");
    let dir = ctx.scratch.join("ctl");
    let run = dir.join("run");
    fs::create_dir_all(&run)?;
    let sock = run.join("cv-control.socket");
    let args: Vec<String> = vec![
        "run".into(),
        "-s".into(),
        sock.display().to_string(),
        "--mem".into(),
        "256".into(),
        ctx.kernel.display().to_string(),
    ];
    let mut crosvm = Proc::spawn(
        &mut crosvm_cmd(ctx, ctx.disable_sandbox, &args),
        &dir.join("crosvm.log"),
    )?;
    wait_for_path(&sock, &mut crosvm, SOCKET_WAIT).context("crosvm control socket")?;

    // The library client, as the daemon's worker uses it (one connection, kept).
    let mut client = CrosvmClient::new(&sock, Duration::from_secs(3));
    for round in 1..=2 {
        let r = client.stats();
        report.add(
            format!("control: balloond client stats (request {round} on one connection)"),
            matches!(&r, Err(e) if e.is_driver_not_ready()),
            match r {
                Ok(s) => format!("unexpected stats {s:?}"),
                Err(e) => format!("{e}; driver not ready: {}", e.is_driver_not_ready()),
            },
        );
    }
    let r = client.set_balloon(64 << 20);
    report.add(
        "control: balloond client adjust",
        matches!(&r, Err(e) if e.is_driver_not_ready()),
        match r {
            Ok(()) => "unexpected Ok".to_owned(),
            Err(e) => format!("{e}; driver not ready: {}", e.is_driver_not_ready()),
        },
    );

    // The binary, one tick.
    let out = Command::new(&bins.balloond)
        .args(["--once", "--json", "--run-dir"])
        .arg(&run)
        .output()
        .context("running vmsilo-balloond --once")?;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let d = &doc["decisions"][0];
    let stderr = String::from_utf8_lossy(&out.stderr);
    report.add(
        "control: vmsilo-balloond --once",
        out.status.success()
            && d["vm"] == "cv"
            && d["send"] == false
            && d["detail"]
                .as_str()
                .is_some_and(|s| s.contains("errno 107"))
            && !stderr.contains("warn"),
        format!(
            "exit {:?}, decision {} / {}, no warning logged: {}",
            out.status.code(),
            d["reason"],
            d["detail"],
            !stderr.contains("warn")
        ),
    );

    // The daemon's status document.
    let status_sock = dir.join("balloond.status");
    let mut daemon = Proc::spawn(
        Command::new(&bins.balloond)
            .arg("--run-dir")
            .arg(&run)
            .arg("--status-socket")
            .arg(&status_sock)
            .args(["--poll-interval", "200ms"]),
        &dir.join("balloond.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = Value::Null;
    while Instant::now() < deadline {
        if let Ok(o) = Command::new(&bins.balloond)
            .args(["--status", "--json", "--status-socket"])
            .arg(&status_sock)
            .output()
        {
            let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            state = doc["vms"][0]["state"].clone();
            if state == "driver-not-ready" {
                break;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    signal(daemon.pid(), "TERM");
    let code = daemon.wait(Duration::from_secs(5));
    // The daemon leaves SIGTERM at its default action (143 here), which systemd counts as a
    // clean stop.
    report.add(
        "control: vmsilo-balloond daemon status",
        state == "driver-not-ready" && matches!(code, Some(0 | 143)),
        format!("VM state {state}, daemon ended on SIGTERM with {code:?}"),
    );
    drop(daemon);

    // The power button, as vm-service presses it (a connection of its own).
    let r = CrosvmControl::new(&sock, Duration::from_secs(5)).request(Request::Powerbtn);
    report.add(
        "control: \"Powerbtn\"",
        matches!(r, Ok(Reply::Ok)),
        format!("reply {r:?}"),
    );
    let still = crosvm.wait(Duration::from_secs(2)).is_none();
    report.note(
        "control: after Powerbtn",
        format!("crosvm still running 2 s later: {still} (the guest cannot act on it here)"),
    );
    let (reply, code) = exit_crosvm(&mut crosvm, &sock);
    let gone = !sock.exists();
    report.add(
        "control: \"Exit\"",
        matches!(reply, Ok(Reply::Ok)) && code == Some(0) && gone,
        format!("reply {reply:?}, crosvm exit {code:?}, socket removed: {gone}"),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// vm-service with crosvm.

/// A `crosvm` for PATH: the real one, or (without /dev/vhost-vsock) a script that drops
/// `--vsock VALUE` and runs the real one.
fn crosvm_on_path(ctx: &Ctx, bin: &Path) -> Result<()> {
    fs::create_dir_all(bin)?;
    let shim = bin.join("crosvm");
    let _ = fs::remove_file(&shim);
    if ctx.no_vhost_vsock {
        let script = format!(
            "#!/bin/sh\n# verify-crosvm: no /dev/vhost-vsock here; drop --vsock and its value.\n\
             skip=0\nfor a; do\n  shift\n  if [ $skip = 1 ]; then skip=0; continue; fi\n  \
             if [ \"$a\" = --vsock ]; then skip=1; continue; fi\n  set -- \"$@\" \"$a\"\ndone\n\
             exec '{}' \"$@\"\n",
            ctx.crosvm.display()
        );
        fs::write(&shim, script)?;
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755))?;
    } else {
        symlink(&ctx.crosvm, &shim)?;
    }
    Ok(())
}

fn check_vm_service(ctx: &Ctx, bins: &Bins, report: &mut Report) -> Result<()> {
    section("vm-service: vmsilo vm-service with vmm = \"crosvm\"");
    let dir = ctx.scratch.join("svc");
    let (run, vs, state) = (dir.join("run"), dir.join("vs"), dir.join("state"));
    for d in [&run, &vs, &state] {
        fs::create_dir_all(d)?;
    }
    let root = dir.join("root.img");
    disk_image(&root)?;
    // The guest never gets far enough to read it.
    let initrd = dir.join("initrd");
    fs::write(&initrd, [0u8; 512])?;
    let bin = dir.join("bin");
    crosvm_on_path(ctx, &bin)?;
    if ctx.no_vhost_vsock {
        report.note(
            "vm-service",
            "crosvm on PATH is a script that drops --vsock (no /dev/vhost-vsock here)",
        );
    }
    let extra = if ctx.disable_sandbox {
        "crosvm.extraRunArgs = [\"--disable-sandbox\"]\n"
    } else {
        ""
    };
    let cfg = dir.join("vmsilo.toml");
    fs::write(
        &cfg,
        format!(
            "# written by cargo xtask verify-crosvm\nuser = \"root\"\n{extra}\n[[nixosVms]]\n\
             name = \"cv\"\nvmm = \"crosvm\"\nmemory = 256\ncpus = 1\ngpu = false\n\
             sound = false\nsharedHome = false\nkernel = \"{}\"\ninitramfs = \"{}\"\n\
             rootDisk = \"{}\"\n",
            ctx.kernel.display(),
            initrd.display(),
            root.display()
        ),
    )?;
    // A control socket left behind by a crash: crosvm does not unlink before bind (it would
    // exit with "failed to create control server"), so the runtime must remove it.
    let stale = run.join("cv-control.socket");
    drop(UnixListener::bind(&stale).with_context(|| format!("binding {}", stale.display()))?);
    let shutdown_timeout = Duration::from_secs(3);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut svc = Proc::spawn(
        Command::new(&bins.vmsilo)
            .arg("--config")
            .arg(&cfg)
            .args(["vm-service", "cv", "--uid", "0", "--gid", "0"])
            .arg("--run-dir")
            .arg(&run)
            .arg("--vm-switch-dir")
            .arg(&vs)
            .arg("--state-dir")
            .arg(&state)
            .args(["--shutdown-timeout", "3s", "--socket-timeout", "15s"])
            .env("PATH", path)
            .env_remove("NOTIFY_SOCKET"),
        &dir.join("vm-service.log"),
    )?;
    // Running = the console connected and the control socket present.
    let state_file = run.join("cv.state");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut phase = Value::Null;
    let mut vmm_pid = None;
    while Instant::now() < deadline && svc.poll().is_none() {
        let doc: Value = fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        phase = doc["state"].clone();
        vmm_pid = doc["vmmPid"].as_u64();
        if phase == "running" {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let console_link = run.join("cv-console");
    let log = svc.log_text();
    report.add(
        "vm-service: stale control socket",
        log.contains("removed stale socket") && phase == "running",
        format!(
            "a stale {} was removed before crosvm started: {}",
            stale.display(),
            log.contains("removed stale socket")
        ),
    );
    report.add(
        "vm-service: console relay and start",
        phase == "running" && console_link.is_symlink(),
        format!(
            "state {phase} (running needs crosvm connected to the runtime's unix-stream console \
             socket), console link {}: {}, crosvm pid {vmm_pid:?}",
            console_link.display(),
            console_link.is_symlink()
        ),
    );
    if phase != "running" {
        let log = svc.log_text();
        bail!(
            "vm-service did not reach running (exit {:?}); its log:\n{log}",
            svc.wait(Duration::from_secs(20))
        );
    }
    thread::sleep(ctx.run_for);
    let alive = svc.poll().is_none();
    report.add(
        "vm-service: stays up",
        alive,
        format!(
            "vm-service and crosvm still running after {:?}",
            ctx.run_for
        ),
    );
    let started = Instant::now();
    signal(svc.pid(), "TERM");
    let code = svc.wait(shutdown_timeout + Duration::from_secs(20));
    let took = started.elapsed();
    let log = svc.log_text();
    let pressed = log.contains("ACPI power button pressed");
    report.add(
        "vm-service: SIGTERM -> power button -> hard stop",
        code == Some(37) && pressed && took >= shutdown_timeout,
        format!(
            "exit {code:?} (37 = stopped hard after the timeout), power button pressed (crosvm \
             answered \"Ok\"): {pressed}, stopped {:.1} s after SIGTERM with \
             --shutdown-timeout 3s",
            took.as_secs_f64()
        ),
    );
    let mut left: Vec<String> = fs::read_dir(&run)?
        .chain(fs::read_dir(&vs)?)
        .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
        .collect();
    left.extend(
        fs::read_dir(&state)?
            .filter_map(|e| e.ok())
            .flat_map(|e| fs::read_dir(e.path()).into_iter().flatten())
            .filter_map(|e| e.ok().map(|e| e.path().display().to_string())),
    );
    let crosvm_left = vmm_pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
    report.add(
        "vm-service: cleanup",
        left.is_empty() && !crosvm_left,
        format!("files left {left:?}, crosvm process left: {crosvm_left}"),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// vm-switch as crosvm's vhost-user-net backend.

fn check_vm_switch(ctx: &Ctx, bins: &Bins, report: &mut Report) -> Result<()> {
    section("vm-switch: crosvm as vhost-user-net frontend");
    let dir = ctx.scratch.join("sw");
    let net = dir.join("lan");
    fs::create_dir_all(&net)?;
    let mut switch = Proc::spawn(
        Command::new(&bins.vm_switch)
            .arg("-d")
            .arg(&net)
            .args(["--log-level", "debug"]),
        &dir.join("vm-switch.log"),
    )?;
    let tmp = net.join("cv.port.tmp");
    fs::write(
        &tmp,
        "name = \"cv\"\nmac = \"52:54:00:12:34:56\"\naddresses = [\"10.77.0.2/24\"]\n",
    )?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, net.join("cv.port"))?;
    let sock = net.join("cv.sock");
    wait_for_path(&sock, &mut switch, SOCKET_WAIT).context("vm-switch port socket")?;

    let control = dir.join("cv-control.socket");
    let args: Vec<String> = vec![
        "run".into(),
        "-s".into(),
        control.display().to_string(),
        "--mem".into(),
        "256".into(),
        "--vhost-user".into(),
        format!(
            "net,socket={},max-queue-size={}",
            sock.display(),
            plan::VM_SWITCH_QUEUE_SIZE
        ),
        ctx.kernel.display().to_string(),
    ];
    let mut crosvm = Proc::spawn(
        &mut crosvm_cmd(ctx, ctx.disable_sandbox, &args),
        &dir.join("crosvm.log"),
    )?;
    let up = wait_for_path(&control, &mut crosvm, SOCKET_WAIT);
    let alive = up.is_ok() && crosvm.wait(ctx.run_for).is_none();
    let crosvm_log = crosvm.log_text();
    let errors: Vec<&str> = crosvm_log
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .collect();
    report.add(
        "vm-switch: crosvm starts with the vhost-user-net device",
        alive && errors.is_empty(),
        if alive {
            format!(
                "crosvm still running after {:?}, error lines logged: {errors:?}",
                ctx.run_for
            )
        } else {
            format!(
                "crosvm stopped: {} {}",
                up.err().map(|e| format!("{e:#}")).unwrap_or_default(),
                crosvm_errors(&crosvm_log)
            )
        },
    );
    let connected = switch.log_text().contains("port cv: frontend connected");
    report.add(
        "vm-switch: logs the frontend connection",
        connected,
        format!("\"port cv: frontend connected\" in vm-switch's log: {connected}"),
    );
    let (reply, code) = exit_crosvm(&mut crosvm, &control);
    thread::sleep(Duration::from_millis(500));
    let disconnected = switch.log_text().contains("port cv: frontend disconnected");
    report.add(
        "vm-switch: crosvm exits, the port sees the disconnect",
        matches!(reply, Ok(Reply::Ok)) && code == Some(0) && disconnected,
        format!(
            "\"Exit\" answered {reply:?}, crosvm exit {code:?}, \"frontend disconnected\" \
             logged: {disconnected}"
        ),
    );
    signal(switch.pid(), "TERM");
    let code = switch.wait(Duration::from_secs(10));
    report.add(
        "vm-switch: SIGTERM",
        code == Some(0),
        format!("vm-switch exit {code:?}"),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// unit-sandbox: crosvm's own sandbox inside the VM unit's.

/// The shell commands that give a private mount namespace the mounts a unit's `Protect*=`
/// settings make (the same mount structure: paths mounted over, or re-mounted read-only).
/// Settings outside the mount namespace (seccomp filters, `RestrictAddressFamilies=`) are not
/// emulated.
fn unit_mounts(unit: &str, empty: &Path) -> Vec<String> {
    let on = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::trim)
    };
    let ro = |p: &str| {
        format!(
            "if [ -e {p} ]; then mount --bind {p} {p} && mount -o remount,bind,ro {p} || exit 99; fi"
        )
    };
    let mut out = Vec::new();
    match on("ProtectSystem") {
        Some("yes") => out.extend(["/usr", "/boot", "/efi"].map(ro)),
        Some("full") => out.extend(["/usr", "/boot", "/efi", "/etc"].map(ro)),
        Some("strict") => out.push(ro("/")),
        _ => {}
    }
    match on("ProtectHome") {
        Some("read-only") => out.extend(["/home", "/root", "/run/user"].map(ro)),
        Some("yes" | "tmpfs") => {
            for p in ["/home", "/root", "/run/user"] {
                out.push(format!(
                    "if [ -d {p} ]; then mount --bind {} {p} || exit 99; fi",
                    empty.display()
                ));
            }
        }
        _ => {}
    }
    if on("ProtectKernelTunables") == Some("yes") {
        out.extend(["/proc/sys", "/proc/sysrq-trigger", "/sys"].map(ro));
    }
    if on("ProtectKernelModules") == Some("yes") {
        for p in ["/usr/lib/modules", "/lib/modules"] {
            out.push(format!(
                "if [ -d {p} ] && [ ! -L {p} ]; then mount --bind {} {p} || exit 99; fi",
                empty.display()
            ));
        }
    }
    if on("ProtectKernelLogs") == Some("yes") {
        // systemd mounts an inaccessible node over /proc/kmsg.
        out.push("mount --bind /dev/null /proc/kmsg || exit 99".to_owned());
    }
    if on("ProtectControlGroups") == Some("yes") {
        out.push(ro("/sys/fs/cgroup"));
    }
    out
}

fn check_unit_sandbox(ctx: &Ctx, bins: &Bins, report: &mut Report) -> Result<()> {
    section("unit-sandbox: a sandboxed crosvm with a GPU inside the VM unit's protections");
    if ctx.disable_sandbox {
        report.note(
            "unit-sandbox",
            "not checked: crosvm runs with --disable-sandbox here",
        );
        return Ok(());
    }
    let dir = ctx.scratch.join("us");
    let fsroot = dir.join("fs");
    fs::create_dir_all(&fsroot)?;
    let empty = dir.join("empty");
    fs::create_dir_all(&empty)?;
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o000))?;
    // The GPU with the cross-domain context only: virgl2 needs a crosvm feature (see docs).
    let cfg_text = format!(
        "enable = true\nuser = \"root\"\n[[nixosVms]]\nname = \"cv\"\nvmm = \"crosvm\"\nmemory = 512\n\
         cpus = 1\nsound = false\nsharedHome = false\n\
         gpu = {{ context-types = \"cross-domain\" }}\nkernel = \"{0}/k\"\n\
         initramfs = \"{0}/i\"\nrootDisk = \"{0}/r\"\n",
        fsroot.display()
    );
    let cfg_path = dir.join("vmsilo.toml");
    fs::write(&cfg_path, &cfg_text)?;
    let units = dir.join("units");
    let out = Command::new(&bins.vmsilo)
        .arg("--config")
        .arg(&cfg_path)
        .arg("units")
        .arg("--out")
        .arg(&units)
        .output()
        .context("running vmsilo units")?;
    if !out.status.success() {
        bail!(
            "vmsilo units failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let unit_path = units.join("systemd/vmsilo-cv-vm.service");
    let unit = fs::read_to_string(&unit_path)
        .with_context(|| format!("reading {}", unit_path.display()))?;
    let mounts = unit_mounts(&unit, &empty);

    let cfg = load_str(&cfg_text, Format::Toml)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let p = plan::build(&cfg, "cv", &scratch_plan_options(&dir, 0, 0))?;
    let peers = Peers::new();
    prepare(ctx, &p.argv, &dir, &peers)?;
    let argv = if ctx.no_vhost_vsock {
        without_flag(&p.argv, "--vsock")
    } else {
        p.argv.clone()
    };
    let control = PathBuf::from(
        p.paths
            .control_socket
            .clone()
            .context("no control socket")?,
    );

    let crosvm = crosvm_cmd(ctx, false, &argv[1..]);
    let mut script = String::from("# the VM unit's mount protections, then crosvm\n");
    for m in &mounts {
        script.push_str(m);
        script.push('\n');
    }
    if unit.contains("\nNoNewPrivileges=yes") {
        script.push_str("exec setpriv --no-new-privs -- \"$@\"\n");
    } else {
        script.push_str("exec \"$@\"\n");
    }
    let script_path = dir.join("unit.sh");
    fs::write(&script_path, &script)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh"])
        .arg(&script_path)
        .arg(crosvm.get_program())
        .args(crosvm.get_args());
    let _ = fs::remove_file(&control);
    let mut proc = Proc::spawn(&mut cmd, &dir.join("crosvm.log"))?;
    let code = proc.wait(ctx.run_for);
    let log = proc.log_text();
    let emulated = mounts.len();
    match code {
        None => {
            let (reply, code) = exit_crosvm(&mut proc, &control);
            report.add(
                "unit-sandbox: sandboxed GPU under the VM unit's protections",
                matches!(reply, Ok(Reply::Ok)) && code == Some(0),
                format!(
                    "setup complete with {emulated} emulated mounts; \"Exit\" answered \
                     {reply:?}, exit {code:?}"
                ),
            );
        }
        Some(_) if log.contains("failed to set rlimit") => report.note(
            "unit-sandbox",
            "not checked: the sandboxed GPU cannot get its open-files limit here (see limits)",
        ),
        Some(99) => bail!("emulating the unit's mounts failed: {log}"),
        Some(code) => report.add(
            "unit-sandbox: sandboxed GPU under the VM unit's protections",
            false,
            format!(
                "crosvm exit {code} under the protections of {}: {}",
                unit_path.display(),
                crosvm_errors(&log)
            ),
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_without_flag_drops_the_flag_and_its_value() {
        let argv: Vec<String> = ["crosvm", "run", "--vsock", "cid=3", "-s", "x", "k"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            without_flag(&argv, "--vsock"),
            ["crosvm", "run", "-s", "x", "k"]
        );
    }

    #[test]
    fn test_kv_and_errors() {
        assert_eq!(
            kv("type=unix-stream,path=/a/b,console", "path"),
            Some("/a/b")
        );
        assert_eq!(kv("net,socket=/s,max-queue-size=256", "socket"), Some("/s"));
        assert_eq!(kv("/img,root,ro", "path"), None);
        let log = "syslog init failed: x\n[t INFO  crosvm] fine\n[t ERROR crosvm] exiting with \
                   error 1: bad\nCaused by:\n    0: deeper\n[t INFO  x] later\n";
        assert_eq!(
            crosvm_errors(log),
            "exiting with error 1: bad / Caused by: / 0: deeper"
        );
    }
}
