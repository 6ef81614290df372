//! `vmsilo-gate`: see the library documentation and `vmsilo-gate --help`.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(vmsilo_gate::cli::main());
}
