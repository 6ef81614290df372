//! `cargo xtask bench <name>`: benchmarks. Each prints its figures beside a baseline measured
//! in the same run and ends with one line of `key=value` figures.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The benchmark to run, or `list`.
    pub name: String,
    /// Extra arguments for the benchmark.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

type BenchFn = fn(&[String]) -> Result<()>;

/// Every benchmark: (name, what it measures, entry point).
const BENCHES: &[(&str, &str, BenchFn)] = &[
    (
        "balloond",
        "memory balancer: policy simulator vs baselines, daemon RSS and CPU per tick",
        crate::bench_balloond::run,
    ),
    (
        "gate",
        "vmsilo-gate: fps and frame round trip of a shm client vs direct, RSS per VM",
        crate::bench_gate::run,
    ),
    (
        "guest-agent",
        "idle memory of the guest agent",
        crate::bench_guest_agent::run,
    ),
    (
        "vm-run",
        "warm vm-run latency vs a direct agent connection (host overhead), cold start",
        crate::bench_vm_run::run,
    ),
    (
        "vm-switch",
        "vm-switch: scheduler, queueing simulation, datapath vs bridge, latency under load",
        crate::bench_vm_switch::run,
    ),
];

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.name == "list" {
        for (name, what, _) in BENCHES {
            println!("{name:12} {what}");
        }
        return Ok(());
    }
    match BENCHES.iter().find(|(name, _, _)| *name == args.name) {
        Some((_, _, f)) => f(&args.args),
        None => {
            let names: Vec<&str> = BENCHES.iter().map(|(n, _, _)| *n).collect();
            bail!(
                "no benchmark named {:?}; known: {}",
                args.name,
                names.join(", ")
            )
        }
    }
}
