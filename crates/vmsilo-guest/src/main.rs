//! `vmsilo-guest`: the guest agent. See `docs/guest-agent.md`.
//!
//! Exit status: 0 done (or powering off), 1 runtime failure, 2 usage error.

#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmsilo_guest::agent::WaypipeConfig;
use vmsilo_guest::cli::{self, Command, ServeArgs, WatchdogArgs};
use vmsilo_guest::exec::ExecConfig;
use vmsilo_guest::idle::{IdleWatchdog, ScanConfig, scan_busy};
use vmsilo_guest::power::power_off;
use vmsilo_guest::transport::{
    self, Activation, PeerPolicy, SocketStream, UnixSocketListener, VsockListener,
};
use vmsilo_guest::{Agent, AgentConfig, Outcome, SessionMode, cmdline, log, waypipe};

/// A failure with the exit status it maps to.
struct Failure(u8, String);

fn usage(msg: impl Into<String>) -> Failure {
    Failure(2, msg.into())
}

fn runtime(msg: impl Into<String>) -> Failure {
    Failure(1, msg.into())
}

fn main() -> ExitCode {
    // The waypipe wrapper's command may be any bytes: handled before the UTF-8 parser.
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match raw.first().and_then(|a| a.to_str()) {
        Some(waypipe::RUN) => match waypipe::parse(&raw[1..]) {
            Ok(args) => waypipe::run(args),
            Err(msg) => {
                log(&msg);
                return ExitCode::from(2);
            }
        },
        Some(waypipe::HOLD) => return ExitCode::from(waypipe::hold() as u8),
        _ => {}
    }
    let result = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Serve(args)) => serve(&args),
        Ok(Command::IdleWatchdog(args)) => watchdog(&args),
        Ok(Command::Print(text)) => {
            print!("{text}");
            Ok(())
        }
        Err(cli::UsageError(msg)) => Err(usage(format!("{msg}; see vmsilo-guest --help"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            log(&msg);
            ExitCode::from(code)
        }
    }
}

/// `5` (seconds), `5s`, `2min`; `off` and `0` disable.
fn parse_idle(text: &str, what: &str) -> Result<Option<Duration>, Failure> {
    let t = text.trim();
    if t == "off" || t == "0" {
        return Ok(None);
    }
    // A bare number is seconds; it goes through the same parser (and its 100-year limit).
    let with_unit;
    let t = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        with_unit = format!("{t}s");
        with_unit.as_str()
    } else {
        t
    };
    vmsilo_measure::parse_duration(t)
        .map(Some)
        .map_err(|e| usage(format!("{what} {text:?}: {e}")))
}

/// The kernel command line's settings (logging its warnings); defaults if it is unreadable.
fn kernel_settings(cmdline_path: &Path) -> cmdline::KernelSettings {
    let text = match std::fs::read_to_string(cmdline_path) {
        Ok(t) => t,
        Err(e) => {
            log(&format!(
                "cannot read {}: {e}; idle shutdown stays off, no waypipe",
                cmdline_path.display()
            ));
            return cmdline::KernelSettings::default();
        }
    };
    let settings = cmdline::parse(&text);
    for w in &settings.warnings {
        log(w);
    }
    settings
}

/// The idle time from the flag, else from the kernel command line.
fn idle_setting(flag: Option<&str>, cmdline_path: &Path) -> Result<Option<Duration>, Failure> {
    if let Some(text) = flag {
        return parse_idle(text, "--idle-shutdown");
    }
    Ok(kernel_settings(cmdline_path).autoshutdown)
}

/// Commands run under waypipe when the kernel command line asks for it.
fn waypipe_setting(cmdline_path: &Path) -> Option<WaypipeConfig> {
    let port = kernel_settings(cmdline_path).waypipe_port?;
    match std::env::current_exe() {
        Ok(agent_exe) => {
            log(&format!(
                "commands get a Wayland display through waypipe (host vsock port {port})"
            ));
            Some(WaypipeConfig { port, agent_exe })
        }
        Err(e) => {
            log(&format!(
                "cannot find the agent's own executable ({e}): commands run without waypipe"
            ));
            None
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let idle = idle_setting(args.idle_shutdown.as_deref(), &args.cmdline)?;
    let policy = if args.any_cid {
        PeerPolicy::Any
    } else {
        PeerPolicy::Cid(args.host_cid)
    };
    let mut cfg = AgentConfig::new(ExecConfig::from_process(args.user.clone()));
    cfg.session = args.session;
    if args.session == SessionMode::Systemd && args.user.is_none() {
        log("--session systemd without --user: requests that name no user run as plain children");
    }
    cfg.state_dir = args.state_dir.clone();
    cfg.waypipe = waypipe_setting(&args.cmdline);

    let activation = transport::from_systemd(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
    )
    .map_err(|e| runtime(format!("failed to take the socket passed by systemd: {e}")))?;
    if args.listen_fd && activation.is_none() {
        return Err(usage(
            "--listen-fd: no socket was passed (LISTEN_PID/LISTEN_FDS are not set for this process); run under systemd socket activation or drop the flag",
        ));
    }
    if args.unix.is_some() && activation.is_some() {
        return Err(usage(
            "--unix cannot be used when systemd passes a socket (LISTEN_FDS)",
        ));
    }

    let mut agent;
    match activation {
        Some(Activation::Connection(fd)) => {
            // One connection per process: idle state lives in the separate idle-watchdog
            // process, fed by --state-dir markers.
            if args.idle_shutdown.is_some() {
                log(
                    "--idle-shutdown has no effect with Accept=yes sockets; run `vmsilo-guest idle-watchdog` beside the socket unit",
                );
            }
            match transport::check_peer(fd.as_fd(), policy) {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => return Err(runtime(msg)),
                Err(e) => return Err(runtime(format!("failed to check the peer: {e}"))),
            }
            agent = Agent::new(cfg);
            agent
                .add_connection(Box::new(SocketStream::new(fd)))
                .map_err(|e| runtime(format!("failed to set up the connection: {e}")))?;
        }
        Some(Activation::Listening(fd)) => {
            cfg.idle_shutdown = idle;
            log_idle(idle);
            let listener = VsockListener::from_fd(fd, policy)
                .map_err(|e| runtime(format!("failed to use the socket passed by systemd: {e}")))?;
            agent = Agent::new(cfg);
            agent.set_listener(Box::new(listener));
            log("serving the socket passed by systemd");
        }
        None => {
            cfg.idle_shutdown = idle;
            log_idle(idle);
            agent = Agent::new(cfg);
            if let Some(path) = &args.unix {
                let _ = std::fs::remove_file(path);
                let l = UnixListener::bind(path)
                    .and_then(|l| UnixSocketListener::new(l, path.display().to_string()))
                    .map_err(|e| runtime(format!("failed to listen on {}: {e}", path.display())))?;
                agent.set_listener(Box::new(l));
                log(&format!("listening on unix socket {}", path.display()));
            } else {
                let l =
                    VsockListener::bind(args.port, policy).map_err(|e| runtime(e.to_string()))?;
                agent.set_listener(Box::new(l));
                log(&format!("listening on vsock port {}", args.port));
            }
        }
    }
    match agent.run().map_err(|e| runtime(e.to_string()))? {
        Outcome::Finished => Ok(()),
        Outcome::Idle => {
            log(&format!(
                "no command has run for {}s: powering off",
                idle.map_or(0.0, |d| d.as_secs_f64())
            ));
            power_off(args.poweroff).map_err(|e| runtime(format!("failed to power off: {e}")))
        }
    }
}

fn log_idle(idle: Option<Duration>) {
    if let Some(after) = idle {
        log(&format!(
            "idle shutdown after {}s without a running command",
            after.as_secs_f64()
        ));
    }
}

fn watchdog(args: &WatchdogArgs) -> Result<(), Failure> {
    let Some(after) = idle_setting(args.idle_shutdown.as_deref(), &args.cmdline)? else {
        log(
            "idle watchdog: no idle time configured (vmsilo.autoshutdown= or --idle-shutdown); exiting",
        );
        return Ok(());
    };
    let interval = parse_idle(&args.interval, "--interval")?
        .ok_or_else(|| usage("--interval must be positive"))?;
    let cfg = ScanConfig {
        state_dir: args.state_dir.clone(),
        cgroup_root: args.cgroup_root.clone(),
    };
    log(&format!(
        "idle watchdog: powering off after {}s without a busy agent in {} or a vmsilo-run-* unit",
        after.as_secs_f64(),
        cfg.state_dir.display()
    ));
    let mut w = IdleWatchdog::new(after, Instant::now());
    loop {
        let now = Instant::now();
        w.update(scan_busy(&cfg), now);
        if w.expired(now) {
            log(&format!(
                "no command has run for {}s: powering off",
                after.as_secs_f64()
            ));
            return power_off(args.poweroff)
                .map_err(|e| runtime(format!("failed to power off: {e}")));
        }
        std::thread::sleep(interval);
    }
}
