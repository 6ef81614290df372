//! `cargo xtask bench vm-switch`: the switch's figures beside their baselines, from the
//! `vm_switch_bench` example of `crates/vm-switch` (release build):
//!
//! 1. scheduler operations per second at 1 to 1024 flows;
//! 2. a virtual-clock simulation of bulk + sparse traffic at 50/200/1000/4000 Mbit/s drain rates,
//!    with MTU-sized and TSO-segment-sized bulk packets: plain 256 KiB FIFO and the seed's
//!    design (FQ-CoDel before the ring) as baselines;
//! 3. datapath packets per second at 64 B and 1500 B, and Gbit/s with 64 KiB TSO segments,
//!    through the real vm-switch with in-process vhost-user frontends, with the `ring_full`
//!    share of the frames sent; the 64 B and 1500 B frames also through two taps on a Linux
//!    bridge (in a private network namespace) as the baseline; goal ≥ 2× the bridge;
//! 4. bulk throughput and latency under load with QEMU/TCG guests (iperf3 bulk A→B, fping
//!    every 10 ms C→B), through vm-switch and through a Linux bridge + taps with fq_codel, in
//!    5 interleaved rounds each; goals: bulk ≥ the bridge's, loaded p99 ≤ the bridge's; an
//!    SVG with the latency CDF and the throughput over time.
//!
//! Parts 3 and 4 need root. `cargo xtask bench vm-switch quick` skips part 4. Ends with one
//! `key=value` line.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, section, sh};

fn run_part(
    example: &std::path::Path,
    args: &[&str],
    results: &mut BTreeMap<String, String>,
) -> Result<()> {
    let out = Command::new(example)
        .args(args)
        .env(
            "VM_SWITCH_BENCH_OUT",
            crate::util::target_dir().join("vm-switch-bench"),
        )
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} {args:?}", example.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        match line.strip_prefix("RESULT ") {
            Some(kv) => {
                if let Some((k, v)) = kv.split_once('=') {
                    results.insert(k.to_owned(), v.to_owned());
                }
            }
            None => println!("{line}"),
        }
    }
    if !out.status.success() {
        bail!("{} {args:?} failed with {}", example.display(), out.status);
    }
    Ok(())
}

fn num(results: &BTreeMap<String, String>, key: &str) -> f64 {
    results
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "quick");
    section("bench vm-switch: building (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "vm-switch",
        "--features",
        "testing",
        "--bin",
        "vm-switch",
        "--example",
        "vm_switch_bench",
    ]))?;
    let target = crate::util::target_dir();
    // The example writes its SVG there (VM_SWITCH_BENCH_OUT).
    let out_dir = target.join("vm-switch-bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let example = target.join("release/examples/vm_switch_bench");
    let switch = target.join("release/vm-switch");
    let switch_arg = switch.to_string_lossy().into_owned();
    let mut r = BTreeMap::new();

    section("bench vm-switch: 1. scheduler");
    run_part(&example, &["sched"], &mut r)?;
    section("bench vm-switch: 2. queueing simulation (virtual clock)");
    run_part(&example, &["sim"], &mut r)?;
    println!(
        "  goal: vm-switch sparse p99 added < 1 ms with bulk >= 95 % at every rate: worst {} ms, {} % -> {}",
        num(&r, "sim_sparse_p99_added_ms"),
        num(&r, "sim_bulk_share") * 100.0,
        if num(&r, "sim_sparse_p99_added_ms") < 1.0 && num(&r, "sim_bulk_share") >= 0.95 {
            "met"
        } else {
            "NOT met"
        }
    );

    section("bench vm-switch: 3. datapath (in-process frontends) vs Linux bridge + taps");
    for size in ["64", "1500"] {
        run_part(&example, &["datapath", &switch_arg, size], &mut r)?;
        run_part(&example, &["bridge", size], &mut r)?;
    }
    run_part(&example, &["datapath", &switch_arg, "65536"], &mut r)?;
    println!(
        "  64 KiB TSO segments: {:.2} Gbit/s (no bridge baseline: the bench's taps carry no \
         virtio-net header, so they cannot take TSO segments; compare 1500 B: {:.2} Gbit/s bridge)",
        num(&r, "gbps_vmswitch_65536"),
        num(&r, "pps_bridge_1500") * 1500.0 * 8.0 / 1e9
    );
    let ratio64 = num(&r, "pps_vmswitch_64") / num(&r, "pps_bridge_64");
    let ratio1500 = num(&r, "pps_vmswitch_1500") / num(&r, "pps_bridge_1500");
    println!(
        "  vm-switch / bridge: {ratio64:.2}x at 64 B, {ratio1500:.2}x at 1500 B (goal >= 2x: {})",
        if ratio64 >= 2.0 { "met" } else { "NOT met" }
    );

    let (mut e2e_ratio, mut e2e_bulk, mut e2e_host) = (f64::NAN, f64::NAN, f64::NAN);
    if !quick {
        section("bench vm-switch: 4. bulk and latency under load with QEMU/TCG guests");
        run_part(&example, &["qemu", &switch_arg], &mut r)?;
        e2e_ratio = num(&r, "e2e_p99_ratio_vs_bridge");
        e2e_bulk = num(&r, "e2e_bulk_ratio_vs_bridge");
        e2e_host = num(&r, "e2e_host_cpu_ratio_vs_bridge");
        println!(
            "  p99 added by load (loaded - idle): vm-switch {:.2} ms, bridge {:.2} ms",
            num(&r, "e2e_vmswitch_added_p99_ms"),
            num(&r, "e2e_bridge_added_p99_ms"),
        );
        println!(
            "  goals: bulk vm-switch >= bridge: {e2e_bulk:.2} ({}), spread {}; loaded p99 vm-switch <= bridge: {e2e_ratio:.2} ({}), spread {}",
            if e2e_bulk >= 1.0 { "met" } else { "NOT met" },
            r.get("e2e_bulk_ratio_spread").map_or("?", String::as_str),
            if e2e_ratio <= 1.0 { "met" } else { "NOT met" },
            r.get("e2e_p99_ratio_spread").map_or("?", String::as_str),
        );
        println!(
            "  host CPU outside the guests per Gbit, vm-switch / bridge: {e2e_host:.2}, spread {} (vm-switch {:.0} ms, bridge {:.0} ms per Gbit)",
            r.get("e2e_host_cpu_ratio_spread")
                .map_or("?", String::as_str),
            num(&r, "e2e_vmswitch_host_ms_per_gbit"),
            num(&r, "e2e_bridge_host_ms_per_gbit"),
        );
        if let Some(svg) = r.get("svg") {
            println!("  picture: {svg}");
        }
    }

    println!(
        "sim_sparse_p99_added_ms={:.3} sim_sparse_p99_added_ms_tso={:.3} sim_bulk_share={:.3} sched_ops_per_s_1024={:.0} pps_64b={:.0} pps_1500b={:.0} pps_ratio_vs_bridge={:.2} gbps_64k={:.2} ring_full_share={:.4} e2e_bulk_ratio_vs_bridge={:.2} e2e_p99_ratio_vs_bridge={:.2} e2e_host_cpu_ratio_vs_bridge={:.2}",
        num(&r, "sim_sparse_p99_added_ms"),
        num(&r, "sim_sparse_p99_added_ms_tso"),
        num(&r, "sim_bulk_share"),
        num(&r, "sched_ops_per_s_1024"),
        num(&r, "pps_vmswitch_64"),
        num(&r, "pps_vmswitch_1500"),
        ratio64,
        num(&r, "gbps_vmswitch_65536"),
        [
            "ring_full_share_64",
            "ring_full_share_1500",
            "ring_full_share_65536"
        ]
        .iter()
        .map(|k| num(&r, k))
        .fold(0.0, f64::max),
        e2e_bulk,
        e2e_ratio,
        e2e_host,
    );
    Ok(())
}
