//! The vmsilo host tool: configuration checks and launch plans (`vmsilo check`, `vmsilo plan`).
//!
//! Each subcommand is a module of [`commands`]; [`cli`] holds the argument definitions,
//! [`config_file`] finds and reads the configuration, [`users`] resolves the configured user,
//! [`error`] maps failures to the documented exit codes. The configuration logic itself is in
//! the sans-IO `vmsilo-config` crate; this crate is the I/O edge around it.
//!
//! Threading: single-threaded. Trust: the configuration file and `/etc/passwd` are read as
//! untrusted text (malformed content is an error, never a panic).

#![forbid(unsafe_code)]

use std::process::ExitCode;

pub mod cli;
pub mod commands;
pub mod config_file;
pub mod error;
pub mod users;

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
