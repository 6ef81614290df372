//! End to end: the real `vmsilo-balloond` binary balancing two real QEMU/TCG guests (Debian
//! kernel, virtio-balloon with deflate-on-oom, QMP) under a simulated host.
//!
//! The host is a meminfo file the test rewrites every 200 ms: `MemTotal` 8 GiB (critical level
//! 5 % = 410 MiB) and `MemAvailable` = a base the test chooses + the balloons' sizes read from the
//! daemon's status socket (memory a balloon takes from its guest is returned to the host). The
//! guests' QMP sockets are symlinked into the directory the daemon watches as
//! `<vm>-qmp.socket`.
//!
//! 1. Host under pressure: both guests are inflated.
//! 2. Guest `a` allocates 200 MiB of anon memory: its balloon is deflated and `b`'s inflated.
//! 3. Guest `b` pins its free memory in tmpfs (counted as cache, so the policy still sees it as
//!    available) and the host loses all its headroom: `b`'s balloon cannot inflate, the daemon
//!    detects the stall, backs off and blocks inflation, and the status socket says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmsilo_balloond::status::{StatusDoc, VmStatus, fetch};
use vmsilo_testkit::{BalloonOptions, ImageSpec, QemuBuilder, ScratchDir};

const BIN: &str = env!("CARGO_BIN_EXE_vmsilo-balloond");
const M: u64 = 1 << 20;
const T: Duration = Duration::from_secs(60);
const HOST_TOTAL_MIB: u64 = 8192;

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_meminfo(path: &Path, avail_mib: u64) {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).expect("meminfo");
    write!(
        f,
        "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n",
        HOST_TOTAL_MIB * 1024,
        avail_mib * 1024,
        avail_mib * 1024
    )
    .expect("meminfo");
    std::fs::rename(tmp, path).expect("meminfo");
}

fn status(socket: &Path) -> Option<StatusDoc> {
    let text = fetch(socket, Duration::from_secs(2)).ok()?;
    serde_json::from_str(&text).ok()
}

fn vm<'a>(doc: &'a StatusDoc, name: &str) -> Option<&'a VmStatus> {
    doc.vms.iter().find(|v| v.name == name)
}

fn balloon(doc: &StatusDoc, name: &str) -> u64 {
    vm(doc, name).and_then(|v| v.balloon_actual).unwrap_or(0)
}

/// The simulated host: `MemAvailable` = base + every balloon.
struct HostModel {
    base_mib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostModel {
    fn start(meminfo: PathBuf, socket: PathBuf, base_mib: u64) -> Self {
        write_meminfo(&meminfo, base_mib);
        let base = Arc::new(AtomicU64::new(base_mib));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (base.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let balloons: u64 = status(&socket)
                    .map(|d| d.vms.iter().filter_map(|v| v.balloon_actual).sum())
                    .unwrap_or(0);
                write_meminfo(&meminfo, b.load(Ordering::SeqCst) + balloons / M);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            base_mib: base,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostModel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_status(
    socket: &Path,
    daemon: &Daemon,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&StatusDoc) -> bool,
) -> StatusDoc {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(doc) = status(socket) {
            if cond(&doc) {
                return doc;
            }
            last = Some(doc);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    panic!(
        "timed out waiting for {what}\nlast status: {}\ndaemon log (newest first):\n{}",
        last.map(|d| serde_json::to_string_pretty(&d.vms).unwrap_or_default())
            .unwrap_or_default(),
        tail.join("\n")
    );
}

/// Waits until, over the last four status documents of distinct ticks, no balloon's size
/// varied by more than 4 MiB; returns the newest.
fn wait_settled(socket: &Path, daemon: &Daemon, timeout: Duration) -> StatusDoc {
    let deadline = Instant::now() + timeout;
    let mut window: Vec<StatusDoc> = Vec::new();
    while Instant::now() < deadline {
        if let Some(doc) = status(socket)
            && window
                .last()
                .is_none_or(|last| doc.daemon.ticks > last.daemon.ticks)
        {
            window.push(doc);
            if window.len() > 4 {
                window.remove(0);
            }
            let steady = |name: &str| {
                let sizes = window.iter().map(|d| balloon(d, name));
                let (lo, hi) = (sizes.clone().min(), sizes.max());
                lo.zip(hi).is_some_and(|(lo, hi)| hi - lo <= 4 * M)
            };
            if window.len() == 4 && steady("a") && steady("b") {
                return window.pop().expect("four documents");
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let sizes: Vec<(u64, u64)> = window
        .iter()
        .map(|d| (balloon(d, "a") / M, balloon(d, "b") / M))
        .collect();
    panic!(
        "the balloons did not settle within {timeout:?}; last sizes (MiB): {sizes:?}\n\
         daemon log (newest first):\n{}",
        tail.join("\n")
    );
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_two_qemu_guests_are_balanced_and_a_stalled_balloon_backs_off() {
    let dir = ScratchDir::new("balloond").expect("scratch dir");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("run dir");
    let image = ImageSpec::new().build().expect("guest image");
    let opts = BalloonOptions {
        free_page_reporting: false,
        deflate_on_oom: true,
    };
    let boot = |name: &str| {
        QemuBuilder::new(&image)
            .name(name)
            .memory_mib(512)
            .cpus(1)
            .balloon_with(opts)
            .spawn()
            .expect("spawn guest")
    };
    let mut a = boot("bd-a");
    let mut b = boot("bd-b");
    a.wait_ready(T).expect("guest a ready");
    b.wait_ready(T).expect("guest b ready");
    std::os::unix::fs::symlink(a.qmp_socket(), run.join("a-qmp.socket")).expect("symlink");
    std::os::unix::fs::symlink(b.qmp_socket(), run.join("b-qmp.socket")).expect("symlink");

    let meminfo = dir.path().join("meminfo");
    let socket = dir.path().join("balloond.status");
    // 110 MiB below the host's critical level.
    let host = HostModel::start(meminfo.clone(), socket.clone(), 300);
    let log = dir.path().join("balloond.log");
    let child = Command::new(BIN)
        .arg("--run-dir")
        .arg(&run)
        .arg("--status-socket")
        .arg(&socket)
        .arg("--host-meminfo")
        .arg(&meminfo)
        .arg("--host-psi")
        .arg(dir.path().join("no-psi"))
        .args([
            "--poll-interval",
            "1s",
            "--guest-critical",
            "128m",
            "--guest-available-bias",
            "64m",
            "--log-level",
            "debug",
        ])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start vmsilo-balloond");
    let daemon = Daemon { child, log };

    // 1. Host pressure: both guests give memory.
    let doc = wait_status(&socket, &daemon, "both balloons inflated", T, |d| {
        balloon(d, "a") >= 64 * M && balloon(d, "b") >= 64 * M
    });
    for name in ["a", "b"] {
        let v = vm(&doc, name).expect("vm");
        assert_eq!(v.vmm, "qemu");
        assert_eq!(v.ram_size, Some(512 * M));
        assert!(v.stats.is_some_and(|s| s.free_memory.is_some()), "{v:?}");
    }
    // Wait until the balance settles (no balloon moved by more than 4 MiB over the last three
    // ticks), then take the reference sizes.
    let settled = wait_settled(&socket, &daemon, Duration::from_secs(90));
    let (a1, b1) = (balloon(&settled, "a"), balloon(&settled, "b"));

    // 2. Guest a allocates 200 MiB of anon memory (busybox dd reads one 200 MiB block into its
    // buffer, then blocks writing it to a pipe nobody reads).
    a.run_ok(
        "dd if=/dev/zero bs=209715200 count=1 2>/dev/null | sleep 3600 >/dev/null 2>&1 &",
        T,
    )
    .expect("allocate in guest a");
    let doc = wait_status(
        &socket,
        &daemon,
        "a deflated and b inflated",
        Duration::from_secs(90),
        |d| balloon(d, "a") + 64 * M <= a1 && balloon(d, "b") >= b1 + 32 * M,
    );
    let va = vm(&doc, "a").expect("vm a");
    assert!(va.counters.adjusts > 0);
    let a_avail = va
        .stats
        .and_then(|s| s.free_memory.zip(s.disk_caches))
        .map(|(f, c)| f + c)
        .expect("stats");
    assert!(
        a_avail < 300 * M,
        "guest a still reports {a_avail} available"
    );

    // 3. Guest b pins its free memory in tmpfs, and the host loses its headroom entirely.
    let free_kib: u64 = b
        .run_ok("grep MemFree: /proc/meminfo", T)
        .expect("meminfo in b")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemFree");
    let pin_mib = (free_kib / 1024).saturating_sub(8).min(240);
    b.run_ok(
        &format!("dd if=/dev/zero of=/tmp/pin bs=1048576 count={pin_mib} 2>/dev/null; true"),
        T,
    )
    .expect("pin memory in guest b");
    host.base_mib.store(0, Ordering::SeqCst);
    let doc = wait_status(
        &socket,
        &daemon,
        "a stall back-off on b",
        Duration::from_secs(90),
        |d| vm(d, "b").is_some_and(|v| v.stall.total >= 1),
    );
    let vb = vm(&doc, "b").expect("vm b");
    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("VM \"b\"") && l.contains("stall-backoff")),
        "no back-off for b in the log"
    );
    // The back-off is visible in the status: inflation blocked, or the reason itself.
    assert!(
        vb.stall.inflate_blocked_ms > 0
            || vb
                .last_decision
                .as_ref()
                .is_some_and(|d| d.reason.as_str() == "stall-backoff"
                    || d.reason.as_str() == "inflate-blocked"),
        "{vb:?}"
    );
    assert!(vb.stall.last_stall_ago_ms.is_some());

    // The table view names the VMs and the stall count.
    let out = Command::new(BIN)
        .args(["--status", "--status-socket"])
        .arg(&socket)
        .output()
        .expect("--status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("qemu") && text.contains("STALLS"), "{text}");

    drop(host);
    drop(daemon);
    a.shutdown(T).expect("a shuts down");
    b.shutdown(T).expect("b shuts down");
}
