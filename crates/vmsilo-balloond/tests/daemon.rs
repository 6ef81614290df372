//! The real `vmsilo-balloond` binary against in-process fake crosvm and QMP peers: discovery
//! while running, restarts, the status socket, `--once`, a stuck VM, a stalled balloon, and the
//! exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_balloond::fake::{Behavior, FakeCrosvm, FakeGuest, FakeQmp};
use vmsilo_balloond::status::StatusDoc;

const BIN: &str = env!("CARGO_BIN_EXE_vmsilo-balloond");
const M: u64 = 1 << 20;

/// A scratch directory, removed when the test ends.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn tmpdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("balloond-d-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn write_meminfo(path: &Path, total_mib: u64, avail_mib: u64) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    write!(
        f,
        "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n",
        total_mib * 1024,
        avail_mib * 1024,
        avail_mib * 1024
    )
    .unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct Daemon {
    child: Child,
    status: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let status = dir.join("balloond.status");
        let log = dir.join("daemon.log");
        let child = Command::new(BIN)
            .arg("--run-dir")
            .arg(&run)
            .arg("--status-socket")
            .arg(&status)
            .arg("--host-meminfo")
            .arg(dir.join("meminfo"))
            .arg("--host-psi")
            .arg(dir.join("no-psi"))
            .args(["--log-level", "debug"])
            .args(if extra.contains(&"--poll-interval") {
                &[][..]
            } else {
                &["--poll-interval", "200ms"][..]
            })
            .args(extra)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, status, log }
    }

    fn status(&self) -> Option<StatusDoc> {
        let text = vmsilo_balloond::status::fetch(&self.status, Duration::from_secs(2)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn wait_status(&mut self, what: &str, cond: impl Fn(&StatusDoc) -> bool) -> StatusDoc {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("the daemon exited ({st}) while waiting for {what}:\n{log}");
            }
            if let Some(doc) = self.status()
                && cond(&doc)
            {
                return doc;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "timed out waiting for {what}; status: {:?}\nlog:\n{log}",
                    self.status()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 30 s) for something the daemon does asynchronously to a fake peer.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn vm<'a>(doc: &'a StatusDoc, name: &str) -> Option<&'a vmsilo_balloond::status::VmStatus> {
    doc.vms.iter().find(|v| v.name == name)
}

#[test]
fn test_daemon_discovers_balances_and_forgets_vms_while_running() {
    let dir = tmpdir("discover");
    write_meminfo(&dir.join("meminfo"), 8192, 200);
    let mut d = Daemon::start(&dir, &[]);
    d.wait_status("the daemon to run", |doc| doc.daemon.ticks > 0);
    // A VM appears while the daemon runs; the host is under pressure, so it is inflated.
    let a = FakeCrosvm::start(&dir.join("run/a-control.socket"), FakeGuest::new()).unwrap();
    let doc = d.wait_status("VM a to be inflated", |doc| {
        vm(doc, "a").is_some_and(|v| v.balloon_target.unwrap_or(0) > 0)
    });
    let va = vm(&doc, "a").unwrap();
    assert_eq!(va.vmm, "crosvm");
    // The status shows the decision; the worker sends it right after.
    eventually("the adjust to reach a", || !a.guest().adjusts.is_empty());
    assert!(a.guest().requests[0].starts_with(br#"{"BalloonCommand""#));
    // A QEMU VM appears too.
    let b = FakeQmp::start(&dir.join("run/b-qmp.socket"), FakeGuest::new()).unwrap();
    d.wait_status("VM b to be inflated", |doc| {
        vm(doc, "b").is_some_and(|v| v.vmm == "qemu" && v.balloon_target.unwrap_or(0) > 0)
    });
    eventually("the adjust to reach b", || !b.guest().adjusts.is_empty());
    // The crosvm VM goes away: forgotten.
    drop(a);
    d.wait_status("VM a to be forgotten", |doc| vm(doc, "a").is_none());
    // The QEMU VM restarts under the same name: fresh state, new generation.
    let before = d.status().unwrap();
    let old = vm(&before, "b").unwrap();
    let (old_gen, old_ok) = (old.generation, old.counters.stats_ok);
    drop(b);
    let _b2 = FakeQmp::start(&dir.join("run/b-qmp.socket"), FakeGuest::new()).unwrap();
    let doc = d.wait_status("VM b to restart", |doc| {
        vm(doc, "b").is_some_and(|v| v.generation != old_gen)
    });
    let vb = vm(&doc, "b").unwrap();
    // Fresh state: the counters started again.
    assert!(vb.counters.stats_ok < old_ok.max(2), "{vb:?}");
}

#[test]
fn test_status_table_and_json() {
    let dir = tmpdir("status");
    write_meminfo(&dir.join("meminfo"), 8192, 6000);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let _a = FakeCrosvm::start(&dir.join("run/alpha-control.socket"), FakeGuest::new()).unwrap();
    let mut d = Daemon::start(&dir, &[]);
    d.wait_status("a decision for alpha", |doc| {
        vm(doc, "alpha").is_some_and(|v| v.last_decision.is_some())
    });
    let out = Command::new(BIN)
        .args(["--status", "--status-socket"])
        .arg(&d.status)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("VM") && text.contains("REASON"), "{text}");
    assert!(text.contains("alpha") && text.contains("crosvm"), "{text}");
    assert!(
        text.contains("host: available 6000 MiB of 8192 MiB"),
        "{text}"
    );
    let out = Command::new(BIN)
        .args(["--status", "--json", "--status-socket"])
        .arg(&d.status)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["vms"][0]["name"], "alpha");
    assert!(doc["vms"][0]["last_decision"]["reason"].is_string());
    assert!(doc["vms"][0]["last_decision"]["detail"].is_string());
    // A second daemon on the same status socket refuses to start.
    let second = Command::new(BIN)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--status-socket")
        .arg(&d.status)
        .arg("--host-meminfo")
        .arg(dir.join("meminfo"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
}

#[test]
fn test_stuck_vm_does_not_delay_the_others() {
    let dir = tmpdir("stuck");
    write_meminfo(&dir.join("meminfo"), 8192, 200);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let stuck = FakeCrosvm::start(&dir.join("run/stuck-control.socket"), FakeGuest::new()).unwrap();
    stuck.guest().behavior = Behavior::NoReply;
    let ok = FakeCrosvm::start(&dir.join("run/ok-control.socket"), FakeGuest::new()).unwrap();
    // Generous timeouts: the healthy peer must answer in time even on a loaded CI machine.
    let mut d = Daemon::start(
        &dir,
        &["--poll-interval", "300ms", "--request-timeout", "300ms"],
    );
    let doc = d.wait_status("30 ticks", |doc| doc.daemon.ticks >= 30);
    let vs = vm(&doc, "stuck").unwrap();
    let vo = vm(&doc, "ok").unwrap();
    assert_eq!(vs.state, "unresponsive");
    assert!(vs.last_error.as_deref().unwrap_or("").contains("no reply"));
    assert_eq!(vs.counters.adjusts, 0);
    // The healthy VM got an answer on (nearly) every tick ...
    assert!(
        vo.counters.stats_ok * 10 >= doc.daemon.ticks * 9,
        "{vo:?} {:?}",
        doc.daemon
    );
    // ... and the stuck one was not flooded: one outstanding request at a time, then back-off.
    let sent_to_stuck = stuck.guest().requests.len() as u64;
    assert!(
        sent_to_stuck * 2 < doc.daemon.ticks,
        "{sent_to_stuck} requests"
    );
    assert!(stuck.guest().adjusts.is_empty());
    eventually("an adjust to the healthy VM", || {
        !ok.guest().adjusts.is_empty()
    });
}

#[test]
fn test_stalled_balloon_backs_off_and_shows_in_status() {
    let dir = tmpdir("stall");
    // Host far below critical: the policy wants to inflate.
    write_meminfo(&dir.join("meminfo"), 8192, 100);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let mut g = FakeGuest::new();
    g.follow_adjust = false;
    g.balloon_actual = 200 * M;
    let peer = FakeCrosvm::start(&dir.join("run/s-control.socket"), g).unwrap();
    let mut d = Daemon::start(&dir, &["--poll-interval", "500ms"]);
    let doc = d.wait_status("a stall", |doc| {
        vm(doc, "s").is_some_and(|v| v.stall.total >= 1)
    });
    let v = vm(&doc, "s").unwrap();
    // Inflation is blocked right after a stall, for the first block of 10 s (the wait above
    // only ensured the stall was counted).
    assert!(
        (1..=10_000).contains(&v.stall.inflate_blocked_ms),
        "{:?}",
        v.stall
    );
    // The back-off deflates 128 MiB below where the balloon is.
    eventually("the back-off adjust", || {
        peer.guest().adjusts.contains(&(72 * M))
    });
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("stall-backoff"), "{log}");
    assert!(log.contains("inflation stalled"), "{log}");
}

#[test]
fn test_once_prints_decisions_and_dry_run_sends_nothing() {
    let dir = tmpdir("once");
    write_meminfo(&dir.join("meminfo"), 8192, 200);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let peer = FakeCrosvm::start(&dir.join("run/one-control.socket"), FakeGuest::new()).unwrap();
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--host-meminfo")
            .arg(dir.join("meminfo"))
            .arg("--once")
            .args(extra)
            .stdout(Stdio::piped())
            .output()
            .unwrap()
    };
    let out = run(&["--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("one: host-critical balloon 0 MiB ->"),
        "{text}"
    );
    assert!(peer.guest().adjusts.is_empty());
    let out = run(&["--json"]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decisions"][0]["vm"], "one");
    assert_eq!(report["decisions"][0]["send"], true);
    assert_eq!(peer.guest().adjusts.len(), 1);
}

#[test]
fn test_exit_codes() {
    let dir = tmpdir("exit");
    let code = |args: &[&str]| Command::new(BIN).args(args).output().unwrap().status.code();
    assert_eq!(code(&["--poll-interval", "2"]), Some(2));
    assert_eq!(code(&["--guest-available-bias", "lots"]), Some(2));
    assert_eq!(code(&["--help"]), Some(0));
    let run = dir.join("run");
    let run = run.to_str().unwrap();
    // An unreadable host memory file is a runtime failure.
    assert_eq!(
        code(&[
            "--once",
            "--run-dir",
            run,
            "--host-meminfo",
            "/nonexistent/meminfo"
        ]),
        Some(1)
    );
    // No daemon to ask.
    let sock = dir.join("none.status");
    assert_eq!(
        code(&["--status", "--status-socket", sock.to_str().unwrap()]),
        Some(1)
    );
}

#[test]
fn test_sigterm_stops_the_daemon_cleanly_and_removes_its_status_socket() {
    let dir = tmpdir("sigterm");
    write_meminfo(&dir.join("meminfo"), 8192, 200);
    let mut d = Daemon::start(&dir, &[]);
    // With a VM and its worker thread running, so the signal must reach the main loop although
    // other threads exist.
    let _a = FakeCrosvm::start(&dir.join("run/a-control.socket"), FakeGuest::new()).unwrap();
    d.wait_status("VM a to be balanced", |doc| {
        vm(doc, "a").is_some_and(|v| v.counters.stats_ok > 0)
    });
    assert!(d.status.exists());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(d.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the daemon ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(log.contains("stopping on signal 15"), "{log}");
    assert!(!d.status.exists(), "the status socket was left behind");
}

/// `vmsilo-balloond --status --json` run as `uid`/`gid` (a real client of another user; std
/// drops the supplementary groups when root sets a uid).
fn status_as(bin: &Path, socket: &Path, uid: u32, gid: u32) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(bin)
        .args(["--status", "--json", "--status-socket"])
        .arg(socket)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap()
}

#[test]
fn test_status_socket_serves_root_and_the_status_user_and_refuses_other_users() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: connecting as other users needs root");
        return;
    }
    const USER: u32 = 4242;
    const NOBODY: u32 = 65534;
    let dir = tmpdir("statusperm");
    write_meminfo(&dir.join("meminfo"), 8192, 4096);
    // The clients run as other users: give them a binary they can reach and run.
    let bin = dir.join("vmsilo-balloond");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon::start(&dir, &["--status-user", &USER.to_string()]);
    // Root is served.
    d.wait_status("the first status document", |_| true);
    let meta = std::fs::symlink_metadata(&d.status).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o600, USER),
        "the socket is the status user's, mode 0600"
    );

    // The configured user is served.
    let o = status_as(&bin, &d.status, USER, USER);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let doc: StatusDoc = serde_json::from_slice(&o.stdout).expect("a status document");
    assert_eq!(doc.version, vmsilo_balloond::status::STATUS_VERSION);

    // Another user cannot connect.
    let o = status_as(&bin, &d.status, NOBODY, NOBODY);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{o:?}"
    );

    // Nor read anything once the socket's owner widened its mode: the peer's uid is checked.
    std::fs::set_permissions(&d.status, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = status_as(&bin, &d.status, NOBODY, NOBODY);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("without a status document"),
        "{o:?}"
    );
    eventually("the refusal in the log", || {
        std::fs::read_to_string(&d.log)
            .unwrap_or_default()
            .contains("refused a status connection from uid 65534")
    });
    // Root and the user still are served.
    assert!(d.status().is_some());
    let o = status_as(&bin, &d.status, USER, USER);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}
