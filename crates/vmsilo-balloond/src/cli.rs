//! Command line: flags, their defaults, and validation into a [`DaemonConfig`].
//!
//! Sizes and durations are parsed with `vmsilo_config::measure`, like every vmsilo component; a
//! bad value is a usage error (exit status 2), never silently replaced by a default.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use log::LevelFilter;
use vmsilo_config::measure::{parse_duration, parse_size};

use crate::balancer::{BalancerParams, MultiVmMode};
use crate::daemon::DaemonConfig;
use crate::policy::{ClampMode, GuestAvailableSource, PolicyParams};
use crate::stall::StallParams;

fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

fn percent(text: &str) -> Result<u32, String> {
    let v: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of percent (0 to 100)"))?;
    if v <= 100 {
        Ok(v)
    } else {
        Err(format!("{v} is out of range: expected 0 to 100 percent"))
    }
}

fn psi_threshold(text: &str) -> Result<Option<f64>, String> {
    if text.trim() == "off" {
        return Ok(None);
    }
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage: expected 0 to 100, or off"))?;
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(Some(v))
    } else {
        Err(format!(
            "{text:?} is out of range: expected 0 to 100, or off"
        ))
    }
}

/// A `--status-user` value: a user name (looked up through NSS, `/etc/passwd` on NixOS) or a
/// numeric uid.
fn status_user(text: &str) -> Result<u32, String> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!(
            "{text:?}: no such user (expected a user name or a numeric uid)"
        )),
        Err(e) => Err(format!("{text:?}: cannot look the user up: {e}")),
    }
}

fn multi_vm(text: &str) -> Result<MultiVmMode, String> {
    match text {
        "sequential" => Ok(MultiVmMode::Sequential),
        "shared" => Ok(MultiVmMode::Shared),
        _ => Err(format!("{text:?}: expected sequential or shared")),
    }
}

fn guest_available(text: &str) -> Result<GuestAvailableSource, String> {
    match text {
        "free-plus-caches" => Ok(GuestAvailableSource::FreePlusCaches),
        "available" => Ok(GuestAvailableSource::Available),
        _ => Err(format!("{text:?}: expected free-plus-caches or available")),
    }
}

/// vmsilo-balloond: balances free memory between the host and its VMs with virtio-balloons.
#[derive(Debug, Parser)]
#[command(name = "vmsilo-balloond", version, about, long_about = None)]
pub struct Cli {
    /// How often to sample host and guests and move balloons.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub poll_interval: Duration,

    /// Host critical level, in percent of MemTotal (0 to 100, as the configuration allows).
    #[arg(long, value_name = "PERCENT", default_value = "5", value_parser = percent)]
    pub critical_host_percent: u32,

    /// Extra headroom a full balloon grants its guest over the host (scaled by fullness).
    #[arg(long, value_name = "SIZE", default_value = "300m", value_parser = size)]
    pub guest_available_bias: u64,

    /// Log level: off, error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = crate::logger::parse_level)]
    pub log_level: LevelFilter,

    /// Directory watched for `<vm>-control.socket` (crosvm) and `<vm>-qmp.socket` (QEMU).
    #[arg(
        long,
        value_name = "DIR",
        env = "VMSILO_RUN_DIR",
        default_value = "/run/vmsilo"
    )]
    pub run_dir: PathBuf,

    /// Status socket (default: `<run-dir>/balloond.status`).
    #[arg(long, value_name = "PATH")]
    pub status_socket: Option<PathBuf>,

    /// The user (name or uid) who may read the status socket besides root: vmsilo's
    /// configured user, who runs `vmsilo status`. The socket is made theirs with mode 0600,
    /// and every connection from another uid is refused. Without it only root may read it.
    #[arg(long, value_name = "USER", value_parser = status_user)]
    pub status_user: Option<u32>,

    /// Run one tick, print the decisions and exit.
    #[arg(long, conflicts_with = "status")]
    pub once: bool,

    /// With --once: compute and print the decisions but do not send them.
    #[arg(long, requires = "once")]
    pub dry_run: bool,

    /// Print the running daemon's status and exit.
    #[arg(long)]
    pub status: bool,

    /// With --status or --once: print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Host memory source in /proc/meminfo format (tests point this at a file they rewrite).
    #[arg(long, value_name = "PATH", default_value = "/proc/meminfo")]
    pub host_meminfo: PathBuf,

    /// Host memory pressure (PSI) file; a missing file disables the PSI veto.
    #[arg(long, value_name = "PATH", default_value = "/proc/pressure/memory")]
    pub host_psi: PathBuf,

    /// Refuse deflations while host PSI `full avg10` is at least this percentage (or `off`).
    #[arg(long, value_name = "PERCENT", default_value = "10", value_parser = psi_threshold)]
    pub psi_full_threshold: ::std::option::Option<f64>,

    /// How VMs share a host sample: sequential (each sees the previous VMs' moves) or shared
    /// (ChromeOS: all see the same sample; oscillates with 3 or more similar VMs).
    #[arg(long, value_name = "MODE", default_value = "sequential", value_parser = multi_vm)]
    pub multi_vm: MultiVmMode,

    /// Guest figure counted as available: free-plus-caches (ChromeOS; counts tmpfs) or
    /// available (the guest's MemAvailable).
    #[arg(long, value_name = "SOURCE", default_value = "free-plus-caches", value_parser = guest_available)]
    pub guest_available: GuestAvailableSource,

    /// Initial guess of a guest's critical available level (learned downwards).
    #[arg(long, value_name = "SIZE", default_value = "400m", value_parser = size)]
    pub guest_critical: u64,

    /// Never leave a guest less memory than this (RAM minus balloon); 0 disables.
    #[arg(long, value_name = "SIZE", default_value = "256m", value_parser = size)]
    pub min_guest_memory: u64,

    /// Timeout of every request to a VMM (default: half the poll interval, at most 1s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub request_timeout: Option<Duration>,

    /// Longest inflation block after consecutive stalls (the block starts at 10s and doubles).
    #[arg(long, value_name = "DURATION", default_value = "5min", value_parser = duration)]
    pub stall_block_max: Duration,

    /// Disable stall detection (ChromeOS BalanceAvailable has none).
    #[arg(long)]
    pub no_stall_detection: bool,
}

/// What the process was asked to do.
#[derive(Debug)]
pub enum Mode {
    /// Run the daemon.
    Daemon(DaemonConfig),
    /// One tick.
    Once(DaemonConfig),
    /// Query a running daemon.
    Status {
        /// Its status socket.
        socket: PathBuf,
    },
}

impl Cli {
    /// Validates the combination of flags.
    pub fn into_mode(self) -> Result<Mode, String> {
        let status_socket = self
            .status_socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join(vmsilo_config::paths::BALLOOND_STATUS));
        if self.status {
            return Ok(Mode::Status {
                socket: status_socket,
            });
        }
        if self.json && !self.once {
            return Err("--json needs --status or --once".to_owned());
        }
        let poll = self.poll_interval;
        if poll < Duration::from_millis(50) || poll > Duration::from_secs(3600) {
            return Err(format!(
                "--poll-interval {}: expected 50ms to 1h",
                vmsilo_config::measure::format_duration(poll)
            ));
        }
        let request_timeout = match self.request_timeout {
            Some(t) if t.is_zero() || t > poll => {
                return Err(format!(
                    "--request-timeout {}: expected more than 0 and at most the poll interval",
                    vmsilo_config::measure::format_duration(t)
                ));
            }
            Some(t) => t,
            None => (poll / 2).min(Duration::from_secs(1)),
        };
        let stall = StallParams {
            block_max_ms: u64::try_from(self.stall_block_max.as_millis()).unwrap_or(u64::MAX),
            ..StallParams::default()
        };
        if stall.block_max_ms < stall.block_ms {
            return Err(format!(
                "--stall-block-max {}: expected at least 10s",
                vmsilo_config::measure::format_duration(self.stall_block_max)
            ));
        }
        let balancer = BalancerParams {
            policy: PolicyParams {
                guest_bias: self.guest_available_bias,
                initial_guest_critical: self.guest_critical,
                guest_available: self.guest_available,
                clamp: ClampMode::CrossingSafe,
                max_balloon_from_ram: true,
            },
            mode: self.multi_vm,
            critical_host_percent: self.critical_host_percent,
            min_guest_memory: self.min_guest_memory,
            stall: (!self.no_stall_detection).then_some(stall),
            psi_full_threshold: self.psi_full_threshold,
            protect_guest: true,
            poll_interval_ms: u64::try_from(poll.as_millis()).unwrap_or(u64::MAX),
            ..BalancerParams::default()
        };
        let cfg = DaemonConfig {
            run_dir: self.run_dir,
            status_socket,
            status_uid: self.status_user,
            host_meminfo: self.host_meminfo,
            host_psi: Some(self.host_psi),
            poll_interval: poll,
            request_timeout,
            balancer,
            dry_run: self.dry_run,
        };
        Ok(if self.once {
            Mode::Once(cfg)
        } else {
            Mode::Daemon(cfg)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Mode, String> {
        let mut v = vec!["vmsilo-balloond"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map_err(|e| e.to_string())
            .and_then(Cli::into_mode)
    }

    #[test]
    fn test_defaults() {
        let Ok(Mode::Daemon(c)) = parse(&["--run-dir", "/tmp/x"]) else {
            panic!()
        };
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.request_timeout, Duration::from_secs(1));
        assert_eq!(c.balancer.critical_host_percent, 5);
        assert_eq!(c.balancer.policy.guest_bias, 300 << 20);
        assert_eq!(c.balancer.policy.initial_guest_critical, 400 << 20);
        assert_eq!(c.balancer.mode, MultiVmMode::Sequential);
        assert_eq!(c.status_socket, PathBuf::from("/tmp/x/balloond.status"));
        assert!(c.balancer.stall.is_some());
    }

    #[test]
    fn test_values_parse_like_the_rest_of_vmsilo() {
        let Ok(Mode::Once(c)) = parse(&[
            "--once",
            "--poll-interval",
            "500ms",
            "--guest-available-bias",
            "1G",
            "--critical-host-percent",
            "10",
            "--multi-vm",
            "shared",
            "--guest-available",
            "available",
            "--psi-full-threshold",
            "off",
        ]) else {
            panic!()
        };
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.balancer.policy.guest_bias, 1 << 30);
        assert_eq!(c.balancer.mode, MultiVmMode::Shared);
        assert_eq!(c.balancer.psi_full_threshold, None);
    }

    #[test]
    fn test_bad_values_are_errors_not_defaults() {
        for (args, needle) in [
            (&["--poll-interval", "2"][..], "unknown unit"),
            (&["--poll-interval", "fast"][..], "fast"),
            (&["--guest-available-bias", "300x"][..], "300x"),
            (&["--critical-host-percent", "101"][..], "out of range"),
            (&["--critical-host-percent", "5.2"][..], "5.2"),
            (&["--log-level", "loud"][..], "loud"),
            (&["--multi-vm", "parallel"][..], "parallel"),
            (&["--poll-interval", "10ms"][..], "50ms to 1h"),
            (
                &["--request-timeout", "5s"][..],
                "at most the poll interval",
            ),
            (&["--dry-run"][..], "--once"),
            (&["--json"][..], "--json"),
        ] {
            let err = parse(args).expect_err(needle);
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn test_status_user_is_a_name_or_a_uid() {
        let uid = |args: &[&str]| match parse(args) {
            Ok(Mode::Daemon(c)) => c.status_uid,
            other => panic!("{other:?}"),
        };
        assert_eq!(uid(&[]), None);
        assert_eq!(uid(&["--status-user", "4242"]), Some(4242));
        assert_eq!(uid(&["--status-user", "root"]), Some(0));
        let err = parse(&["--status-user", "vmsilo-no-such-user"]).unwrap_err();
        assert!(err.contains("no such user"), "{err}");
    }
}
