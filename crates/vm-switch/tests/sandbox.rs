//! Component tests of the main process's sandbox, seen from the host: the real `vm-switch`
//! binary, its namespaces, its root, its ids, signals, and forwarding through it.
//!
//! Inspecting another process's namespaces and root needs ptrace access, which a
//! non-dumpable sandbox grants only to root: those tests skip (and say so) when not run as
//! root. CI runs as root.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The sandboxed main process: the only child of the started (outer) process.
fn main_pid(s: &SwitchProc) -> u32 {
    let outer = s.child.id();
    let kids = children_of(outer);
    assert_eq!(
        kids.len(),
        1,
        "the outer process {outer} should have exactly one child, the main process: {kids:?}"
    );
    kids[0]
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .display()
        .to_string()
}

fn listing(dir: impl AsRef<Path>) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.as_ref().display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn status_field(pid: u32, field: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn gone(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    match vm_switch::testing::proc_stat(pid) {
        None => true,
        Some(f) => f.first().is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn wait_gone(pids: &[u32], what: &str) {
    let deadline = Instant::now() + 10 * SECOND;
    while !pids.iter().all(|p| gone(*p)) {
        assert!(Instant::now() < deadline, "{what}: {pids:?} still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sets up ports a and b with frontends and checks one frame each way.
fn forwards(s: &SwitchProc) {
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &[], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &[], false, &[]);
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 11))
        .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(11))
            .is_some(),
        "a -> b failed; log:\n{}",
        s.log()
    );
    b.send(&udp4(MAC_B, MAC_A, v4("10.0.0.2"), v4("10.0.0.1"), 12))
        .unwrap();
    assert!(
        a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(12))
            .is_some(),
        "b -> a failed; log:\n{}",
        s.log()
    );
}

#[test]
fn test_main_process_runs_in_its_own_namespaces_with_a_minimal_root() {
    if !is_root() {
        eprintln!("skipped: inspecting the non-dumpable sandbox needs root");
        return;
    }
    let s = SwitchProc::start("sbx-ns", &[]);
    forwards(&s);
    let outer = s.child.id();
    let main = main_pid(&s);
    let (outer_s, main_s) = (outer.to_string(), main.to_string());

    for kind in ["user", "mnt", "net", "ipc"] {
        assert_ne!(
            ns("self", kind),
            ns(&main_s, kind),
            "main process shares the {kind} namespace with the host"
        );
        assert_eq!(
            ns(&outer_s, kind),
            ns(&main_s, kind),
            "the outer process is in the sandbox's {kind} namespace too"
        );
    }
    assert_ne!(ns("self", "pid"), ns(&main_s, "pid"));
    assert_eq!(ns(&outer_s, "pid_for_children"), ns(&main_s, "pid"));
    assert_eq!(
        status_field(main, "NSpid"),
        vec![main, 1],
        "main is PID 1 of its own PID namespace"
    );

    // The root: exactly config, dev (three nodes), proc, tmp; the outer process's root was
    // moved by pivot_root too.
    let want = vec!["config", "dev", "proc", "tmp"];
    assert_eq!(listing(format!("/proc/{main}/root")), want);
    assert_eq!(listing(format!("/proc/{outer}/root")), want);
    assert_eq!(
        listing(format!("/proc/{main}/root/dev")),
        vec!["null", "urandom", "zero"]
    );
    // /config is the host's config directory itself.
    std::fs::write(s.dir.join("marker"), "host").unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{main}/root/config/marker")).unwrap(),
        "host"
    );
    assert!(Path::new(&format!("/proc/{main}/root/config/a.sock")).exists());
    // Its own /proc shows only its PID namespace: the main process is 1 there.
    let procs: Vec<String> = listing(format!("/proc/{main}/root/proc"))
        .into_iter()
        .filter(|n| n.parse::<u32>().is_ok())
        .collect();
    assert!(procs.contains(&"1".to_string()), "{procs:?}");
    assert!(
        !procs.contains(&main_s),
        "host pids visible inside: {procs:?}"
    );

    // No network interface but loopback.
    let dev = std::fs::read_to_string(format!("/proc/{main}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, vec!["lo"]);

    // Root inside, an unprivileged id outside (started as root: a dynamic id, which owns the
    // config directory).
    let uid = status_field(main, "Uid")[0];
    assert_ne!(uid, 0, "the sandbox must not run as the host's root");
    assert!((61184..=65519).contains(&uid), "dynamic uid {uid}");
    let map = std::fs::read_to_string(format!("/proc/{main}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        vec!["0", &uid.to_string(), "1"]
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&s.dir).unwrap().uid(), uid);

    // Port children sit in further namespaces of their own, inside the main process's.
    let child = s.port_stats("a")["pid"].as_u64().unwrap() as u32;
    let mut want = vec![child, s.port_stats("b")["pid"].as_u64().unwrap() as u32];
    want.sort();
    let mut got = children_of(main);
    got.sort();
    assert_eq!(
        got, want,
        "the main process's children are the ports' (host pids in stats)"
    );
    let child_s = child.to_string();
    assert_ne!(ns(&child_s, "user"), ns(&main_s, "user"));
    assert_ne!(ns(&child_s, "mnt"), ns(&main_s, "mnt"));
    assert_eq!(
        status_field(child, "NSpid").len(),
        2,
        "child pid in main's namespace"
    );
    // A child inherits only its own descriptors, none of the main process's.
    let fds: Vec<String> = listing(format!("/proc/{child}/fd"))
        .iter()
        .filter_map(|fd| std::fs::read_link(format!("/proc/{child}/fd/{fd}")).ok())
        .map(|t| t.display().to_string())
        .collect();
    for bad in ["inotify", "signalfd", "vm-switch-stats-b"] {
        assert!(
            !fds.iter().any(|t| t.contains(bad)),
            "port a's child holds {bad}: {fds:?}"
        );
    }
    assert!(
        fds.iter().any(|t| t.contains("vm-switch-stats-a")),
        "{fds:?}"
    );
}

#[test]
fn test_user_flag_sets_the_ids_of_a_root_started_sandbox() {
    if !is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    let s = SwitchProc::start("sbx-user", &["--user", "4242"]);
    forwards(&s);
    let main = main_pid(&s);
    assert_eq!(status_field(main, "Uid"), vec![4242; 4]);
    assert_eq!(status_field(main, "Gid"), vec![4242; 4]);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(s.sock("a")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (4242, 4242),
        "socket owned by the sandbox"
    );
}

#[test]
fn test_unprivileged_start_sandboxes_as_the_invoking_user() {
    if !is_root() {
        // Then every other test here already runs unprivileged.
        eprintln!("skipped: already unprivileged");
        return;
    }
    let s = SwitchProc::start_as("sbx-unpriv", &[], Some((65534, 65534)));
    forwards(&s);
    let main = main_pid(&s);
    assert_eq!(status_field(main, "Uid")[0], 65534);
    assert_eq!(status_field(main, "NSpid"), vec![main, 1]);
    assert_ne!(ns("self", "net"), ns(&main.to_string(), "net"));
}

#[test]
fn test_sigterm_to_the_started_process_stops_the_sandbox_cleanly() {
    let mut s = SwitchProc::start("sbx-term", &[]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &[], false, &[]);
    s.wait_for(&s.sock("a"));
    let main = main_pid(&s);
    let child = s.wait_stats("a", "a started", |p| p["pid"].as_u64() > Some(0))["pid"]
        .as_u64()
        .unwrap() as u32;
    kill(Pid::from_raw(s.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", s.log());
    assert!(s.log().contains("shutting down"), "{}", s.log());
    wait_gone(&[main, child], "sandbox processes after SIGTERM");
    assert!(!s.sock("a").exists(), "a.sock left behind");
    assert!(!s.dir.join("stats.sock").exists(), "stats.sock left behind");
}

#[test]
fn test_killing_the_started_process_takes_the_sandbox_down() {
    let mut s = SwitchProc::start("sbx-kill", &[]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &[], false, &[]);
    let main = main_pid(&s);
    let child = s.wait_stats("a", "a started", |p| p["pid"].as_u64() > Some(0))["pid"]
        .as_u64()
        .unwrap() as u32;
    s.child.kill().unwrap();
    let _ = s.child.wait();
    wait_gone(
        &[main, child],
        "sandbox processes after SIGKILL of the outer process",
    );
}

#[test]
fn test_no_sandbox_keeps_the_host_namespaces_and_forwards() {
    let s = SwitchProc::start("sbx-off", &["--no-sandbox"]);
    forwards(&s);
    let pid = s.child.id().to_string();
    for kind in ["user", "mnt", "net", "ipc", "pid"] {
        assert_eq!(ns("self", kind), ns(&pid, kind), "{kind}");
    }
    let child = s.port_stats("a")["pid"].as_u64().unwrap();
    assert!(children_of(s.child.id()).contains(&(child as u32)));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vm-switch"))
        .args(["--no-sandbox", "--user", "nobody", "-d"])
        .arg(&s.dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "--user with --no-sandbox is a usage error"
    );
}
