//! `vmsilo-balloond`: the memory balancer daemon, `--once` for a single tick, `--status` to
//! query a running daemon. Exit status: 0 ok, 1 runtime failure, 2 usage error.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vmsilo_balloond::cli::{Cli, Mode};
use vmsilo_balloond::daemon::{Daemon, render_report};
use vmsilo_balloond::logger;
use vmsilo_balloond::status::{self, StatusDoc};

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn fail(err: &dyn std::error::Error) -> ExitCode {
    eprintln!("vmsilo-balloond: {}", chain(err));
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let json = cli.json;
    let level = cli.log_level;
    let mode = match cli.into_mode() {
        Ok(m) => m,
        Err(msg) => {
            eprintln!("vmsilo-balloond: {msg}");
            return ExitCode::from(2);
        }
    };
    logger::init(level);
    match mode {
        Mode::Status { socket } => {
            let text = match status::fetch(&socket, Duration::from_secs(2)) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!(
                        "vmsilo-balloond: cannot read the status from {}: {e} (is vmsilo-balloond running?)",
                        socket.display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            if json {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            match serde_json::from_str::<StatusDoc>(&text) {
                Ok(doc) => {
                    print!("{}", status::render(&doc));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "vmsilo-balloond: {} sent a status document this version cannot read: {e}",
                        socket.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Once(cfg) => {
            let report = match Daemon::new(cfg, false).and_then(|mut d| d.run_once()) {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(t) => println!("{t}"),
                    Err(e) => return fail(&e),
                }
            } else {
                print!("{}", render_report(&report));
            }
            ExitCode::SUCCESS
        }
        Mode::Daemon(cfg) => {
            // SIGTERM (systemd's stop), SIGINT and SIGHUP end the daemon cleanly. They are blocked
            // here, before any thread exists, so every thread inherits the mask and the main
            // loop reads them from a signalfd.
            let signals = match stop_signals() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("vmsilo-balloond: cannot set up signal handling: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match Daemon::new(cfg, true).and_then(|mut d| {
                d.stop_on(signals);
                d.run()
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this (still single) thread and returns a signalfd
/// that reports them.
fn stop_signals() -> nix::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(sig);
    }
    mask.thread_block()?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}
