//! The vmsilo host tool and runtime, one multi-call binary: `vmsilo` (`check`, `plan`, `units`,
//! `net`, `status`, `vm-service`, `command-service`, `desktop-entries`, ...), `vm-run`, `vm-start`,
//! `vm-stop`, `vm-start-debug`, `vm-shell`, `vmsilo-generator`.
//!
//! Each subcommand is a module of [`commands`]; [`cli`] holds the argument definitions and the
//! multi-call entry points, [`config_file`] finds and reads the configuration, [`users`]
//! resolves the configured user, [`systemd_units`] renders the systemd units, [`runtime`] runs a
//! VM from its launch plan (and binds its PCI devices to vfio-pci), [`hostnet`] plans and carries
//! out the host's TAPs, bridge ports and NAT on hosts without the NixOS module, [`error`] maps
//! failures to the documented exit codes. The
//! configuration logic itself is in the sans-IO `vmsilo-config` crate; this crate is the I/O
//! edge around it.
//!
//! Threading: the runtime is one poll loop (signals through a signalfd, the console relay).
//! The command service ([`vm_run::service`]) accepts on its main thread and serves each
//! connection on a thread of its own; `vm-run` has a signal thread and the agent client's stdin
//! and control threads. Trust: the configuration file, `/etc/passwd` and `.desktop` files are
//! read as untrusted text (malformed content is an error, never a panic); console bytes and
//! the agent protocol from the guest are relayed by the runtime and the command service, never
//! interpreted; replies from QMP and crosvm, and the agent's frames in `vm-run`, are bounded
//! and parsed without panicking.

#![deny(unsafe_code)]

use std::process::ExitCode;

pub mod cli;
pub mod commands;
pub mod config_file;
pub mod desktop;
pub mod error;
pub mod hostnet;
pub mod runtime;
#[allow(unsafe_code)]
mod sys;
pub mod systemd_units;
pub mod term;
pub mod users;
pub mod vm_run;

pub use error::CliError;

/// Runs a parsed command line and returns the process exit code; errors are printed on stderr.
pub fn run(cli: cli::Cli) -> ExitCode {
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}

/// The whole program: picks the entry point from `argv[0]`, parses, runs.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> ExitCode {
    match cli::parse_from(args) {
        Ok(cli) => run(cli),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() {
                error::EXIT_USAGE
            } else {
                error::EXIT_OK
            })
        }
    }
}
