//! `vmsilo-clipd`: the per-user clipboard daemon; see the library documentation and
//! `vmsilo-clipd --help`.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmsilo_clipd::core::{DEFAULT_MAX_SIZE, Policy, Rule, Settings};
use vmsilo_clipd::daemon::{Daemon, Options};

/// vmsilo-clipd: the global clipboard slot between VMs and the host, one per user session.
#[derive(Debug, Parser)]
#[command(name = "vmsilo-clipd", version)]
struct Args {
    /// The socket (default: $XDG_RUNTIME_DIR/vmsilo-clipd.socket).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// A policy rule FROM:TO:ACTION (repeatable, first match wins; FROM/TO are a VM name,
    /// `*` for any VM or `host`; ACTION is allow, ask or deny). Without any: `*:host:ask`,
    /// `*:*:allow`, `host:*:allow`. No matching rule denies.
    #[arg(long = "policy", value_name = "FROM:TO:ACTION")]
    policy: Vec<String>,
    /// The size cap: characters for text, bytes otherwise.
    #[arg(long, default_value_t = DEFAULT_MAX_SIZE)]
    max_size: usize,
    /// An allowed MIME type, preferred first (repeatable; default text/plain;charset=utf-8
    /// and text/plain; text/html and image/png may be added).
    #[arg(long = "mime", value_name = "TYPE")]
    mimes: Vec<String>,
    /// Wipe an unpasted slot after this many seconds.
    #[arg(long, default_value_t = 60)]
    wipe_after: u64,
    /// How long a VM may take to hand over its clipboard, in seconds.
    #[arg(long, default_value_t = 3)]
    fetch_timeout: u64,
    /// Do not send desktop notifications (transfers are still logged).
    #[arg(long)]
    no_desktop_notifications: bool,
}

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = Args::parse();
    let Some(socket) = args.socket.clone().or_else(vmsilo_clipd::default_socket) else {
        eprintln!("vmsilo-clipd: XDG_RUNTIME_DIR is not set: pass --socket /path/to/socket");
        return 2;
    };
    let mut settings = Settings {
        max_size: args.max_size,
        wipe_after: Duration::from_secs(args.wipe_after),
        ..Settings::default()
    };
    if !args.policy.is_empty() {
        let rules: Result<Vec<Rule>, String> = args.policy.iter().map(|r| Rule::parse(r)).collect();
        match rules {
            Ok(rules) => settings.policy = Policy { rules },
            Err(e) => {
                eprintln!("vmsilo-clipd: --policy: {e}");
                return 2;
            }
        }
    }
    if !args.mimes.is_empty() {
        settings.mimes = args.mimes.clone();
    }
    if let Err(e) = settings.validate() {
        eprintln!("vmsilo-clipd: {e}");
        return 2;
    }
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let stop = match set
        .thread_block()
        .and_then(|_| SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmsilo-clipd: could not set up signal handling: {e}");
            return 1;
        }
    };
    let mut daemon = match Daemon::new(Options {
        socket: socket.clone(),
        settings,
        desktop_notifications: !args.no_desktop_notifications,
        fetch_timeout: Duration::from_secs(args.fetch_timeout.max(1)),
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vmsilo-clipd: {e}");
            return 1;
        }
    };
    eprintln!("vmsilo-clipd: listening on {}", socket.display());
    match daemon.run(stop.as_fd()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmsilo-clipd: {e}");
            1
        }
    }
}
