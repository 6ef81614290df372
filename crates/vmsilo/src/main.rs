//! `vmsilo`: the host command-line tool. Parses arguments and hands over to the library; every
//! decision, and the mapping of errors to exit codes (docs/exit-codes.md), lives there.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vmsilo::cli::Cli::parse();
    vmsilo::run(cli)
}
