//! `vmsilo-gate`: see the library documentation.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("vmsilo-gate: not implemented yet");
    std::process::exit(2);
}
