//! Command-line definitions (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// vmsilo: run untrusted programs in small VMs.
#[derive(Debug, Parser)]
#[command(name = "vmsilo", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (.json is read as JSON, anything else as TOML). Default:
    /// /etc/vmsilo/vmsilo.toml, else /etc/vmsilo/vmsilo.json.
    #[arg(long, global = true, env = "VMSILO_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration; print one line per VM, or every problem found (exit 2).
    Check(CheckArgs),
    /// Print how a VM is launched: the backends to start and the VMM command line.
    Plan(PlanArgs),
}

/// `vmsilo check`.
#[derive(Debug, Args)]
pub struct CheckArgs {}

/// `vmsilo plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The VM.
    pub vm: String,

    /// Print the plan as JSON (argv, backends, runtime paths, derived values).
    #[arg(long)]
    pub json: bool,

    /// Directory of sockets and consoles.
    #[arg(long, env = "VMSILO_RUN_DIR", value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_RUN_DIR)]
    pub run_dir: String,

    /// Directory of vm-switch networks.
    #[arg(long, value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_VM_SWITCH_DIR)]
    pub vm_switch_dir: String,

    /// Directory of persistent state (overlay images).
    #[arg(long, value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_STATE_DIR)]
    pub state_dir: String,

    /// The configured user's uid (default: looked up in /etc/passwd).
    #[arg(long)]
    pub uid: Option<u32>,

    /// The configured user's gid (default: looked up in /etc/passwd).
    #[arg(long)]
    pub gid: Option<u32>,

    /// The user's Wayland socket (default: `/run/user/<uid>/wayland-0`).
    #[arg(long, value_name = "PATH")]
    pub wayland_socket: Option<String>,
}
