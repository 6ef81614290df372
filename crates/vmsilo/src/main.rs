//! `vmsilo` and its multi-call names (`vm-start`, `vm-stop`, `vm-start-debug`, `vm-shell`,
//! `vmsilo-generator`): hands the command line to the library; every decision, and the mapping
//! of errors to exit codes (docs/exit-codes.md), lives there.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    vmsilo::main_with_args(std::env::args_os().collect())
}
