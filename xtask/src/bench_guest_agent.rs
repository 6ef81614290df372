//! `cargo xtask bench guest-agent`: resident memory of the idle guest agent.
//!
//! Builds `vmsilo-guest` in release mode twice, dynamically linked against glibc and statically
//! (`-C target-feature=+crt-static`, as the guest image should ship it), starts each on a Unix
//! socket, and reads `/proc/<pid>/status` and `smaps_rollup`:
//! - idle right after start;
//! - idle again after serving a load of attached, tty and detached commands
//!   (`crates/vmsilo-guest/examples/agent_load.rs`, through the real client).
//!
//! Baselines from the same run: `sleep` (coreutils, dynamic glibc) and `busybox sleep`
//! (static), the smallest idle processes on the machine. The target is an idle RSS under
//! 2 MiB. Ends with one `key=value` line.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, section, workspace_root};

const TARGET_KIB: u64 = 2048;
const HOST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Memory figures of one process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
    pss: u64,
    uss: u64,
}

fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn measure(pid: u32) -> Result<Mem> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Ok(Mem {
        rss: field(&status, "VmRSS:"),
        anon: field(&status, "RssAnon:"),
        file: field(&status, "RssFile:"),
        pss: field(&rollup, "Pss:"),
        uss: field(&rollup, "Private_Clean:") + field(&rollup, "Private_Dirty:"),
    })
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn baseline(program: &str, args: &[&str]) -> Result<Mem> {
    let child = Killed(
        Command::new(program)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {program}"))?,
    );
    sleep(Duration::from_millis(300));
    measure(child.0.id())
}

/// Builds the agent and the load generator; returns (agent, load generator).
fn build(variant: &str, static_link: bool) -> Result<(PathBuf, PathBuf)> {
    let target_dir = workspace_root()
        .join("target")
        .join("bench-guest-agent")
        .join(variant);
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "-p",
        "vmsilo-guest",
        "--bin",
        "vmsilo-guest",
        "--example",
        "agent_load",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(workspace_root());
    let out_dir = if static_link {
        // Static glibc: a static-pie binary maps no libc.so/ld.so. `--target` keeps the flag
        // away from build scripts and proc macros, which must stay dynamic.
        cmd.args(["--target", HOST_TRIPLE])
            .env("RUSTFLAGS", "-C target-feature=+crt-static");
        target_dir.join(HOST_TRIPLE).join("release")
    } else {
        cmd.env_remove("RUSTFLAGS");
        target_dir.join("release")
    };
    eprintln!("+ building the {variant} agent");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the {variant} guest agent failed with {status}");
    }
    Ok((
        out_dir.join("vmsilo-guest"),
        out_dir.join("examples").join("agent_load"),
    ))
}

fn wait_for_socket(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        if Instant::now() >= deadline {
            bail!("the agent never listened on {}", path.display());
        }
        sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// (idle at start, idle after the load, commands served).
fn run_variant(agent: &Path, load: &Path, rounds: u32) -> Result<(Mem, Mem, u32)> {
    let dir = std::env::temp_dir().join(format!("vmsilo-bench-agent-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let sock = dir.join("agent.sock");
    let _ = fs::remove_file(&sock);
    let child = Killed(
        Command::new(agent)
            .args(["--unix"])
            .arg(&sock)
            .args(["--idle-shutdown", "off"])
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", agent.display()))?,
    );
    wait_for_socket(&sock)?;
    sleep(Duration::from_millis(300));
    let start = measure(child.0.id())?;
    let out = Command::new(load)
        .arg(&sock)
        .arg(rounds.to_string())
        .output()
        .context("running the load generator")?;
    if !out.status.success() {
        bail!(
            "the load generator failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let served: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    // Let the detached commands end and be reaped.
    sleep(Duration::from_millis(500));
    let after = measure(child.0.id())?;
    drop(child);
    let _ = fs::remove_dir_all(&dir);
    Ok((start, after, served))
}

fn row(name: &str, m: Mem) {
    println!(
        "{name:34} {:>7} {:>7} {:>7} {:>7} {:>7}",
        m.rss, m.anon, m.file, m.pss, m.uss
    );
}

pub fn run(args: &[String]) -> Result<()> {
    let rounds: u32 = match args.first() {
        Some(r) => r.parse().context("rounds must be a number")?,
        None => 25,
    };
    section("bench guest-agent: building");
    let (dyn_agent, dyn_load) = build("dynamic", false)?;
    let (static_agent, _) = build("static", true)?;

    section("bench guest-agent: measuring");
    let sleep_base = baseline("sleep", &["1000"])?;
    let busybox_base = baseline("busybox", &["sleep", "1000"]).unwrap_or_default();
    let (dyn_start, dyn_after, served) = run_variant(&dyn_agent, &dyn_load, rounds)?;
    let (st_start, st_after, _) = run_variant(&static_agent, &dyn_load, rounds)?;

    println!(
        "{:34} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "process (KiB)", "VmRSS", "anon", "file", "PSS", "USS"
    );
    row("baseline: sleep (glibc, dynamic)", sleep_base);
    row("baseline: busybox sleep (static)", busybox_base);
    row("agent dynamic, idle at start", dyn_start);
    row(&format!("agent dynamic, idle after {served}"), dyn_after);
    row("agent static, idle at start", st_start);
    row(&format!("agent static, idle after {served}"), st_after);
    println!(
        "target: idle VmRSS under {TARGET_KIB} KiB; the guest image ships the static build: {}",
        if st_after.rss < TARGET_KIB {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "guest_agent_idle_rss_kib={} guest_agent_idle_rss_after_load_kib={} dynamic_idle_rss_kib={} dynamic_idle_rss_after_load_kib={} baseline_sleep_rss_kib={} baseline_busybox_rss_kib={} commands={served} target_kib={TARGET_KIB}",
        st_start.rss, st_after.rss, dyn_start.rss, dyn_after.rss, sleep_base.rss, busybox_base.rss
    );
    Ok(())
}
