//! The command line of `vmsilo-guest`.
//!
//! Hand-written rather than clap: the agent must stay under 2 MiB resident while idle, and
//! clap's parser and help machinery alone cost about 400 KiB of resident code pages
//! (measured with `cargo xtask bench guest-agent`). The grammar is small: `--flag value`,
//! `--flag=value`, boolean `--flag`, one optional subcommand.

use std::path::PathBuf;

use vmsilo_proto::{AGENT_PORT, HOST_CID};

use crate::agent::SessionMode;
use crate::power::PowerOff;

/// `vmsilo-guest [serve] [OPTIONS]` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// `--port`.
    pub port: u32,
    /// `--unix PATH`.
    pub unix: Option<PathBuf>,
    /// `--listen-fd`.
    pub listen_fd: bool,
    /// `--host-cid`.
    pub host_cid: u32,
    /// `--any-cid`.
    pub any_cid: bool,
    /// `--idle-shutdown DURATION` (unparsed).
    pub idle_shutdown: Option<String>,
    /// `--poweroff`.
    pub poweroff: PowerOff,
    /// `--user`.
    pub user: Option<String>,
    /// `--session`.
    pub session: SessionMode,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--cmdline`.
    pub cmdline: PathBuf,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            port: AGENT_PORT,
            unix: None,
            listen_fd: false,
            host_cid: HOST_CID,
            any_cid: false,
            idle_shutdown: None,
            poweroff: PowerOff::Auto,
            user: None,
            session: SessionMode::Plain,
            state_dir: None,
            cmdline: PathBuf::from("/proc/cmdline"),
        }
    }
}

/// `vmsilo-guest idle-watchdog [OPTIONS]` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogArgs {
    /// `--idle-shutdown DURATION` (unparsed).
    pub idle_shutdown: Option<String>,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--cgroup-root` (`none` disables the unit scan).
    pub cgroup_root: Option<PathBuf>,
    /// `--interval` (unparsed).
    pub interval: String,
    /// `--poweroff`.
    pub poweroff: PowerOff,
    /// `--cmdline`.
    pub cmdline: PathBuf,
}

impl Default for WatchdogArgs {
    fn default() -> Self {
        Self {
            idle_shutdown: None,
            state_dir: PathBuf::from("/run/vmsilo-guest"),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            interval: "1s".into(),
            poweroff: PowerOff::Auto,
            cmdline: PathBuf::from("/proc/cmdline"),
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve commands.
    Serve(ServeArgs),
    /// Run the standalone idle watchdog.
    IdleWatchdog(WatchdogArgs),
    /// Print this text to stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

/// Help text.
pub const HELP: &str = "\
vmsilo-guest: vmsilo's guest agent. Runs commands the host sends over vsock, streams their
stdio, and powers the guest off when nothing has run for a while.

Usage:
  vmsilo-guest [serve] [OPTIONS]       serve commands (the default)
  vmsilo-guest idle-watchdog [OPTIONS] power off once no agent is busy (systemd Accept=yes guests)

Serve options:
  --port PORT             vsock port to listen on [default: 5000]
  --unix PATH             listen on a Unix socket instead (development and tests)
  --listen-fd             require the socket systemd passes (LISTEN_FDS): a listening socket
                          or, with Accept=yes, one connection; used anyway when present
  --host-cid CID          accept vsock connections from this CID only [default: 2]
  --any-cid               accept vsock connections from any CID (debugging only)
  --idle-shutdown TIME    power off after TIME without a running command: seconds (5) or a
                          duration (2min); off disables [default: vmsilo.autoshutdown=<secs>
                          on the kernel command line, else off]
  --poweroff HOW          auto, syscall, systemctl or exit [default: auto]
  --user NAME             run commands as this guest user unless the request names one
  --session MODE          plain (commands are children of the agent) or systemd (detached
                          commands become transient units of the user's systemd) [default: plain]
  --state-dir DIR         keep a busy marker here, for `vmsilo-guest idle-watchdog`
  --cmdline PATH          kernel command line to read [default: /proc/cmdline]

Idle-watchdog options:
  --idle-shutdown TIME    as above; without it and without vmsilo.autoshutdown= it exits
  --state-dir DIR         the agents' busy markers [default: /run/vmsilo-guest]
  --cgroup-root DIR       cgroup2 mount, to find running vmsilo-run-* units, or none
                          [default: /sys/fs/cgroup]
  --interval TIME         how often to look [default: 1s]
  --poweroff HOW          as above
  --cmdline PATH          as above

  -h, --help              print this help
  -V, --version           print the version

Exit status: 0 success (or powering off), 1 runtime failure, 2 usage error.
";

/// A usage error, already phrased for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

fn parse_poweroff(v: &str) -> Result<PowerOff, UsageError> {
    match v {
        "auto" => Ok(PowerOff::Auto),
        "syscall" => Ok(PowerOff::Syscall),
        "systemctl" => Ok(PowerOff::Systemctl),
        "exit" => Ok(PowerOff::Exit),
        _ => err(format!(
            "--poweroff {v:?}: expected auto, syscall, systemctl or exit"
        )),
    }
}

fn parse_u32(flag: &str, v: &str) -> Result<u32, UsageError> {
    v.parse()
        .or_else(|_| err(format!("{flag} {v:?}: expected a number")))
}

/// Splits `--flag=value`; returns (flag, inline value).
fn split(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v)),
        _ => (arg, None),
    }
}

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args: Vec<String> = args.into_iter().map(Into::into).collect();
    let watchdog = match args.first().map(String::as_str) {
        Some("idle-watchdog") => {
            args.remove(0);
            true
        }
        Some("serve") => {
            args.remove(0);
            false
        }
        _ => false,
    };
    let mut serve = ServeArgs::default();
    let mut wd = WatchdogArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = split(arg);
        if matches!(flag, "-h" | "--help") {
            return Ok(Command::Print(HELP.to_owned()));
        }
        if matches!(flag, "-V" | "--version") {
            return Ok(Command::Print(format!(
                "vmsilo-guest {} (protocol {})\n",
                env!("CARGO_PKG_VERSION"),
                vmsilo_proto::PROTOCOL_VERSION
            )));
        }
        let is_bool = matches!(flag, "--listen-fd" | "--any-cid") && !watchdog;
        if is_bool {
            if inline.is_some() {
                return err(format!("{flag} takes no value"));
            }
            match flag {
                "--listen-fd" => serve.listen_fd = true,
                _ => serve.any_cid = true,
            }
            continue;
        }
        if !flag.starts_with('-') {
            return err(format!("unexpected argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v.to_owned(),
            None => match it.next() {
                Some(v) => v.clone(),
                None => return err(format!("{flag} needs a value")),
            },
        };
        let v = value.as_str();
        if watchdog {
            match flag {
                "--idle-shutdown" => wd.idle_shutdown = Some(value.clone()),
                "--state-dir" => wd.state_dir = PathBuf::from(v),
                "--cgroup-root" => {
                    wd.cgroup_root = (v != "none").then(|| PathBuf::from(v));
                }
                "--interval" => wd.interval = value.clone(),
                "--poweroff" => wd.poweroff = parse_poweroff(v)?,
                "--cmdline" => wd.cmdline = PathBuf::from(v),
                _ => return err(format!("idle-watchdog: unknown option {flag}")),
            }
        } else {
            match flag {
                "--port" => serve.port = parse_u32(flag, v)?,
                "--unix" => serve.unix = Some(PathBuf::from(v)),
                "--host-cid" => serve.host_cid = parse_u32(flag, v)?,
                "--idle-shutdown" => serve.idle_shutdown = Some(value.clone()),
                "--poweroff" => serve.poweroff = parse_poweroff(v)?,
                "--user" => serve.user = Some(value.clone()),
                "--session" => {
                    serve.session = match v {
                        "plain" => SessionMode::Plain,
                        "systemd" => SessionMode::Systemd,
                        _ => return err(format!("--session {v:?}: expected plain or systemd")),
                    }
                }
                "--state-dir" => serve.state_dir = Some(PathBuf::from(v)),
                "--cmdline" => serve.cmdline = PathBuf::from(v),
                _ => return err(format!("unknown option {flag}")),
            }
        }
    }
    if !watchdog && serve.unix.is_some() && serve.listen_fd {
        return err("--unix and --listen-fd exclude each other");
    }
    Ok(if watchdog {
        Command::IdleWatchdog(wd)
    } else {
        Command::Serve(serve)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args.iter().copied()).unwrap() {
            Command::Serve(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_no_arguments_serve_on_the_agent_port() {
        assert_eq!(serve(&[]), ServeArgs::default());
        assert_eq!(serve(&["serve"]), ServeArgs::default());
        assert_eq!(ServeArgs::default().port, 5000);
        assert_eq!(ServeArgs::default().host_cid, 2);
    }

    #[test]
    fn test_values_separate_or_inline() {
        let s = serve(&[
            "--port",
            "5001",
            "--idle-shutdown=5",
            "--unix",
            "/tmp/a.sock",
            "--any-cid",
            "--session=systemd",
            "--user",
            "user",
            "--poweroff",
            "exit",
            "--state-dir",
            "/run/x",
        ]);
        assert_eq!(s.port, 5001);
        assert_eq!(s.idle_shutdown.as_deref(), Some("5"));
        assert_eq!(s.unix, Some(PathBuf::from("/tmp/a.sock")));
        assert!(s.any_cid);
        assert_eq!(s.session, SessionMode::Systemd);
        assert_eq!(s.user.as_deref(), Some("user"));
        assert_eq!(s.poweroff, PowerOff::Exit);
        assert_eq!(s.state_dir, Some(PathBuf::from("/run/x")));
    }

    #[test]
    fn test_watchdog_subcommand() {
        let Command::IdleWatchdog(w) = parse([
            "idle-watchdog",
            "--cgroup-root",
            "none",
            "--interval",
            "100ms",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(w.cgroup_root, None);
        assert_eq!(w.interval, "100ms");
        assert_eq!(w.state_dir, PathBuf::from("/run/vmsilo-guest"));
    }

    #[test]
    fn test_usage_errors_say_what_is_wrong() {
        let e = |args: &[&str]| parse(args.iter().copied()).unwrap_err().0;
        assert_eq!(e(&["--port"]), "--port needs a value");
        assert_eq!(e(&["--port", "x"]), "--port \"x\": expected a number");
        assert_eq!(e(&["--bogus", "1"]), "unknown option --bogus");
        assert_eq!(e(&["stray"]), "unexpected argument \"stray\"");
        assert_eq!(e(&["--listen-fd=yes"]), "--listen-fd takes no value");
        assert_eq!(
            e(&["--poweroff", "now"]),
            "--poweroff \"now\": expected auto, syscall, systemctl or exit"
        );
        assert_eq!(
            e(&["idle-watchdog", "--port", "1"]),
            "idle-watchdog: unknown option --port"
        );
        assert_eq!(
            e(&["--unix", "/a", "--listen-fd"]),
            "--unix and --listen-fd exclude each other"
        );
    }

    #[test]
    fn test_help_and_version_print() {
        assert!(matches!(parse(["--help"]).unwrap(), Command::Print(t) if t.contains("Usage:")));
        assert!(
            matches!(parse(["idle-watchdog", "-V"]).unwrap(), Command::Print(t) if t.starts_with("vmsilo-guest "))
        );
    }
}
