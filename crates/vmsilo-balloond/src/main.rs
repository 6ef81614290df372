//! vmsilo-balloond (work in progress: only the library exists in this commit).

fn main() -> std::process::ExitCode {
    eprintln!("vmsilo-balloond: the daemon is not implemented yet in this build");
    std::process::ExitCode::FAILURE
}
