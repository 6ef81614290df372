//! `cargo xtask bench balloond`: the memory balancer, in three parts.
//!
//! 1. The policy simulator (`vmsilo_balloond::sim`): the scenarios of `docs/vmsilo-balloond.md`
//!    ("The simulator") with metrics M1–M9, the daemon's policy core (`vmsilo`) beside three baselines run on
//!    the same traces: ChromeOS as shipped (`chromeos`: shared host sample, 1 s, bias 0, no stall
//!    detection), a qmemman-style policy and a MOM-style policy; then the goals.
//! 2. CPU of one policy-core tick for 16 VMs, in process (baseline: the ChromeOS-faithful
//!    configuration of the same core).
//! 3. The real daemon (release build) against 16 in-process fake crosvm control sockets, polling
//!    every 100 ms: resident memory (VmRSS) and CPU time per tick from `/proc`, beside the same
//!    daemon with no VM as the baseline; and the idle daemon's CPU at the default 2 s poll
//!    (no busy waiting).
//!
//! Ends with one `key=value` line. `cargo xtask bench balloond daemon` runs only part 3.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vmsilo_balloond::balancer::{Balancer, BalancerParams, VmInput};
use vmsilo_balloond::fake::{FakeCrosvm, FakeGuest};
use vmsilo_balloond::host::HostSample;
use vmsilo_balloond::sim;
use vmsilo_balloond::stats::{BalloonSample, GuestStats};

use crate::util::{cargo, section, sh};

const VMS: usize = 16;
const RSS_TARGET_KIB: u64 = 8 * 1024;
const TICK_TARGET_US: f64 = 1000.0;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS line")
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat: time spent on the CPU).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        if let Ok(text) = fs::read_to_string(&path)
            && let Some(ns) = text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Ok(total)
}

fn status_ticks(socket: &Path) -> Result<u64> {
    let text = vmsilo_balloond::status::fetch(socket, Duration::from_secs(2))
        .with_context(|| format!("reading {}", socket.display()))?;
    let doc: vmsilo_balloond::status::StatusDoc =
        serde_json::from_str(&text).context("decoding the status document")?;
    Ok(doc.daemon.ticks)
}

struct DaemonFigures {
    rss_kib: u64,
    cpu_us_per_tick: f64,
    ticks: u64,
}

/// Runs the daemon against `vms` fake crosvm peers for `secs` with `poll`.
fn measure_daemon(
    bin: &Path,
    dir: &Path,
    vms: usize,
    poll: &str,
    secs: u64,
) -> Result<DaemonFigures> {
    let run = dir.join(format!("run-{vms}-{poll}"));
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run)?;
    let meminfo = dir.join("meminfo");
    // A host with 2 GiB available of 32 GiB: under pressure, so every VM gets adjusts.
    fs::write(
        &meminfo,
        "MemTotal: 33554432 kB\nMemAvailable: 2097152 kB\n",
    )?;
    let mut peers = Vec::new();
    for i in 0..vms {
        let mut g = FakeGuest::new();
        g.follow_adjust = false;
        peers.push(FakeCrosvm::start(
            &run.join(format!("vm{i:02}-control.socket")),
            g,
        )?);
    }
    let status = run.join("balloond.status");
    let child = Command::new(bin)
        .arg("--run-dir")
        .arg(&run)
        .arg("--host-meminfo")
        .arg(&meminfo)
        .args([
            "--poll-interval",
            poll,
            "--log-level",
            "warn",
            "--no-stall-detection",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting vmsilo-balloond")?;
    let pid = child.id();
    let child = Killed(child);
    // Warm up: every VM discovered and polled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_ticks(&status).unwrap_or(0) < 5 {
        if Instant::now() > deadline {
            bail!("the daemon did not tick within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (t0, c0) = (status_ticks(&status)?, cpu_ns(pid)?);
    let mut rss = vm_rss_kib(pid)?;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        rss = rss.max(vm_rss_kib(pid)?);
    }
    let (t1, c1) = (status_ticks(&status)?, cpu_ns(pid)?);
    drop(child);
    drop(peers);
    let ticks = t1.saturating_sub(t0).max(1);
    Ok(DaemonFigures {
        rss_kib: rss,
        cpu_us_per_tick: (c1.saturating_sub(c0)) as f64 / 1000.0 / ticks as f64,
        ticks,
    })
}

fn daemon_figures() -> Result<(DaemonFigures, DaemonFigures, DaemonFigures)> {
    section("balloond: the real daemon against 16 fake crosvm control sockets");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "vmsilo-balloond",
        "--bin",
        "vmsilo-balloond",
    ]))?;
    let bin = crate::util::target_dir().join("release/vmsilo-balloond");
    let dir = std::env::temp_dir().join(format!("bench-balloond-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let busy = measure_daemon(&bin, &dir, VMS, "100ms", 10);
    let empty = measure_daemon(&bin, &dir, 0, "100ms", 5);
    let idle = measure_daemon(&bin, &dir, 0, "2s", 10);
    let _ = fs::remove_dir_all(&dir);
    Ok((busy?, empty?, idle?))
}

fn core_tick_us(params: BalancerParams) -> f64 {
    let mut b = Balancer::new(params);
    let mut inputs = std::collections::BTreeMap::new();
    for i in 0..VMS {
        let name = format!("vm{i:02}");
        b.add_vm(&name);
        inputs.insert(
            name,
            VmInput::Sample(BalloonSample {
                stats: GuestStats {
                    free_memory: Some((600 + i as u64 * 10) << 20),
                    disk_caches: Some(200 << 20),
                    total_memory: Some(4 << 30),
                    available_memory: Some(700 << 20),
                    ..GuestStats::default()
                },
                balloon_actual: (i as u64) << 24,
                ram_size: None,
                stats_age_ms: 0,
                stats_stamp: None,
            }),
        );
    }
    let host = HostSample {
        mem_total: 32 << 30,
        mem_available: 2 << 30,
        psi_full_avg10: Some(0.0),
        psi_some_avg10: Some(0.0),
    };
    let n = 20_000u64;
    let start = Instant::now();
    for t in 0..n {
        std::hint::black_box(b.tick(t * 2000, &host, &inputs));
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "daemon") {
        let (busy, empty, _) = daemon_figures()?;
        println!(
            "balloond rss_kib={} tick_cpu_us_16vms={:.0} baseline_rss_kib={} baseline_tick_cpu_us={:.0}",
            busy.rss_kib, busy.cpu_us_per_tick, empty.rss_kib, empty.cpu_us_per_tick
        );
        return Ok(());
    }
    section("balloond: policy simulator (scenarios of docs/vmsilo-balloond.md)");
    let started = Instant::now();
    let rows = sim::run_all();
    print!("{}", sim::render(&rows));
    print!("{}", sim::render_totals(&rows));
    let s = sim::summarize(&rows);
    println!(
        "simulated {} runs in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    println!("\ngoals (default policy `vmsilo`):");
    println!(
        "  guest OOM kills in scenarios 1-8: {} (goal 0)",
        s.guest_oom_kills
    );
    println!(
        "  scenario 2, 2-s ticks with host below critical: {} (goal <= 2)",
        s.host_below_critical_ticks_max
    );
    println!(
        "  oscillating runs: {} {:?} (goal 0 for scenario 3, N = 1..6)",
        s.oscillating_scenarios, s.oscillating_list
    );
    println!(
        "  longest stall detection: {:.1} s (goal <= 10 s)",
        s.stall_detect_s_max
    );
    println!("\ncomparison with the baselines (same traces):");
    for (b, ok, detail) in &s.beats {
        println!(
            "  vs {b:9} {}: {detail}",
            if *ok { "better" } else { "NOT better" }
        );
    }
    let beaten = s.beats.iter().filter(|b| b.1).count();

    section("balloond: policy core, one tick for 16 VMs (in process)");
    let core = core_tick_us(BalancerParams::default());
    let core_faithful = core_tick_us(BalancerParams::chromeos_faithful(300 << 20));
    println!("  vmsilo (sequential, stall detection): {core:.1} us/tick");
    println!("  baseline, ChromeOS-faithful core:     {core_faithful:.1} us/tick");

    let (busy, empty, idle) = daemon_figures()?;
    println!(
        "  16 VMs, 100 ms poll: VmRSS {} KiB (target < {RSS_TARGET_KIB}), CPU {:.0} us/tick over {} ticks (target < {TICK_TARGET_US:.0})",
        busy.rss_kib, busy.cpu_us_per_tick, busy.ticks
    );
    println!(
        "  baseline, no VM, 100 ms poll: VmRSS {} KiB, CPU {:.0} us/tick over {} ticks",
        empty.rss_kib, empty.cpu_us_per_tick, empty.ticks
    );
    let idle_pct = idle.cpu_us_per_tick / 2e6 * 100.0;
    println!(
        "  idle, no VM, 2 s poll: CPU {:.0} us/tick = {idle_pct:.4} % of a core (no busy waiting)",
        idle.cpu_us_per_tick
    );

    println!(
        "balloond guest_oom_kills={} host_below_critical_ticks_max={} oscillating_scenarios={} \
         stall_detect_s_max={:.1} beats_baselines={beaten}/{} rss_kib={} tick_cpu_us_16vms={:.0} \
         core_tick_us_16vms={core:.1} idle_cpu_pct={idle_pct:.4} rss_ok={} tick_ok={}",
        s.guest_oom_kills,
        s.host_below_critical_ticks_max,
        s.oscillating_scenarios,
        s.stall_detect_s_max,
        s.beats.len(),
        busy.rss_kib,
        busy.cpu_us_per_tick,
        busy.rss_kib < RSS_TARGET_KIB,
        busy.cpu_us_per_tick < TICK_TARGET_US,
    );
    Ok(())
}
