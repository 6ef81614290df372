//! `vm-switch`: the vhost-user-net L3 switch between VMs. See `docs/vm-switch.md`.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 usage or configuration error.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::LevelFilter;
use vm_switch::backend::PortParams;
use vm_switch::frame::MAX_FRAME;
use vm_switch::ring::RingSpec;
use vm_switch::sandbox;
use vm_switch::sched::Params;
use vm_switch::seccomp::SeccompMode;
use vm_switch::supervisor::{self, SupervisorConfig};
use vmsilo_measure::{parse_duration, parse_size};

/// vhost-user-net L3 switch between VMs: one sandboxed child per VM port, FQ-CoDel at each
/// destination's egress.
#[derive(Debug, Parser)]
#[command(name = "vm-switch", version)]
struct Cli {
    /// Name of this switch instance (the network), shown in process titles and stats.
    /// Defaults to the last component of the config directory.
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// Directory of port files (`<vm>.port`) and vhost-user sockets (`<vm>.sock`).
    #[arg(short = 'd', long = "config-dir", default_value = "/run/vm-switch")]
    config_dir: PathBuf,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long = "log-level", default_value = "warn", value_parser = parse_level)]
    log_level: LevelFilter,
    /// Size of each inter-port ring (per ordered pair of ports), e.g. 256k.
    #[arg(long = "buffer-size", default_value = "256k", value_parser = parse_size)]
    buffer_size: u64,
    /// CoDel target sojourn time.
    #[arg(long = "fq-codel-target", default_value = "5ms", value_parser = parse_duration)]
    fq_codel_target: Duration,
    /// CoDel interval.
    #[arg(long = "fq-codel-interval", default_value = "100ms", value_parser = parse_duration)]
    fq_codel_interval: Duration,
    /// Byte limit of each port's egress queue.
    #[arg(long = "fq-codel-limit", default_value = "2m", value_parser = parse_size)]
    fq_codel_limit: u64,
    /// DRR quantum in bytes.
    #[arg(long = "fq-codel-quantum", default_value = "1514", value_parser = parse_size)]
    fq_codel_quantum: u64,
    /// Suppress all log output (overrides --log-level). A failure that ends vm-switch with a
    /// non-zero exit code is still reported on stderr.
    #[arg(long)]
    quiet: bool,
    /// Do not put the main process and the port children into namespaces (debugging;
    /// seccomp still applies).
    #[arg(long = "no-sandbox")]
    no_sandbox: bool,
    /// Started as root: the user (name or numeric uid) the sandbox runs as outside its user
    /// namespace; it is given the config directory. Default: an unused id from systemd's
    /// dynamic range (61184-65519), chosen by a hash of the config directory.
    #[arg(long)]
    user: Option<String>,
    /// What a forbidden system call does.
    #[arg(long = "seccomp-mode", value_enum, default_value = "kill")]
    seccomp_mode: SeccompMode,
    /// Print the per-port counters of the running switch serving --config-dir as JSON, then
    /// exit.
    #[arg(long)]
    stats: bool,
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a log level: off, error, warn, info, debug or trace"))
}

fn usage(msg: String) -> ExitCode {
    eprintln!("vm-switch: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vm_switch::logger::init(if cli.quiet {
        LevelFilter::Off
    } else {
        cli.log_level
    });
    if cli.stats {
        return match supervisor::fetch_stats(&cli.config_dir) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vm-switch: {e}");
                ExitCode::from(1)
            }
        };
    }
    let name = match cli.name.clone().or_else(|| {
        cli.config_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
    }) {
        Some(n) if vm_switch::port_file::valid_vm_name(&n) => n,
        Some(n) => {
            return usage(format!(
                "--name {n:?} must be 1-64 characters from A-Z a-z 0-9 _ . -"
            ));
        }
        None => return usage("--name is required when --config-dir has no final component".into()),
    };
    if cli.fq_codel_target.is_zero() || cli.fq_codel_interval < cli.fq_codel_target {
        return usage(format!(
            "--fq-codel-interval ({:?}) must be at least --fq-codel-target ({:?}), and the target above zero",
            cli.fq_codel_interval, cli.fq_codel_target
        ));
    }
    if cli.fq_codel_interval > Duration::from_secs(3600) {
        return usage(format!(
            "--fq-codel-interval ({:?}) must be at most 1h (the default, 100ms, suits a switch)",
            cli.fq_codel_interval
        ));
    }
    if !(256..=65536).contains(&cli.fq_codel_quantum) {
        return usage(format!(
            "--fq-codel-quantum {} must be between 256 and 65536 bytes",
            cli.fq_codel_quantum
        ));
    }
    if cli.fq_codel_limit < 64 * 1024 {
        return usage(format!(
            "--fq-codel-limit {} must be at least 64k",
            cli.fq_codel_limit
        ));
    }
    let sandbox_ids = if cli.no_sandbox {
        if let Some(u) = &cli.user {
            return usage(format!(
                "--user {u:?} applies to the sandbox and cannot be combined with --no-sandbox"
            ));
        }
        None
    } else {
        let dir = std::path::absolute(&cli.config_dir).unwrap_or_else(|_| cli.config_dir.clone());
        match sandbox::sandbox_ids(cli.user.as_deref(), &dir, nix::unistd::geteuid().is_root()) {
            Ok(ids) => ids,
            Err(m) => return usage(m),
        }
    };
    let ring = RingSpec::for_size(cli.buffer_size, MAX_FRAME);
    if cli.buffer_size < 2 * u64::from(ring.slot_size) || ring.validate().is_err() {
        return usage(format!(
            "--buffer-size {} must hold at least two {}-byte slots",
            cli.buffer_size, ring.slot_size
        ));
    }
    let params = PortParams {
        sched: Params {
            target_ns: cli.fq_codel_target.as_nanos() as u64,
            interval_ns: cli.fq_codel_interval.as_nanos() as u64,
            quantum: cli.fq_codel_quantum as u32,
            limit_bytes: cli.fq_codel_limit,
            ..Params::default()
        },
        ..PortParams::default()
    };
    let cfg = SupervisorConfig {
        name,
        dir: cli.config_dir,
        params,
        ring,
        sandbox: !cli.no_sandbox,
        sandbox_ids,
        seccomp: cli.seccomp_mode,
    };
    match supervisor::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("vm-switch: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}
