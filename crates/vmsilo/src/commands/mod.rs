//! One module per subcommand.

use crate::CliError;
use crate::cli::{Cli, Command};

pub mod check;
pub mod plan;

/// Runs the subcommand.
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Check(args) => check::run(cli.config.as_deref(), &args),
        Command::Plan(args) => plan::run(cli.config.as_deref(), &args),
    }
}
