//! `vmsilo status [vm] [--json]`: one line per VM with its state, uptime, memory, balloon, PID
//! and command socket.
//!
//! State: from systemd (`systemctl is-active vmsilo-<vm>-vm.service`) when systemd runs, and
//! the runtime's state file `<run>/<vm>.state` (written by `vm-service` and `vm-start-debug`):
//! `running`, `starting`, `stopping`, `stopped`, or `failed` (systemd says so, or a state file
//! whose runtime is gone). Balloon sizes come from vmsilo-balloond's status socket when it
//! answers. On a terminal each VM's name is shown in its configured colour.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use vmsilo_balloond::status::{self, STATUS_VERSION, StatusDoc};
use vmsilo_config::{Dirs, Vm, plan};

use crate::CliError;
use crate::cli::StatusArgs;
use crate::commands::systemctl::{systemctl, systemd_running};
use crate::config_file;
use crate::runtime::state::{self, State};
use crate::systemd_units::vm_service;

/// One VM's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStatus {
    /// The VM.
    pub vm: String,
    /// `running`, `starting`, `stopping`, `stopped` or `failed`.
    pub state: String,
    /// What systemd says (`active`, `inactive`, ...), when it runs.
    pub systemd: Option<String>,
    /// Seconds since the runtime started the VM.
    pub uptime_seconds: Option<u64>,
    /// Configured memory.
    pub memory_mib: u32,
    /// Balloon size (bytes) from vmsilo-balloond.
    pub balloon_bytes: Option<u64>,
    /// The runtime's pid.
    pub pid: Option<u32>,
    /// The VMM's pid.
    pub vmm_pid: Option<u32>,
    /// The command socket.
    pub command_socket: String,
    /// Whether the command socket exists.
    pub command_socket_present: bool,
    /// `#rrggbb`.
    pub color: String,
    /// Whether this is a `vm-start-debug` run.
    pub debug: bool,
}

/// The state shown for a VM.
pub fn state_of(systemd: Option<&str>, file: Option<&State>, alive: bool) -> &'static str {
    let phase = |s: &State| s.state.as_str();
    match systemd {
        Some("active") | Some("reloading") => file.filter(|_| alive).map_or("running", phase),
        Some("activating") => "starting",
        Some("deactivating") => "stopping",
        Some("failed") => "failed",
        _ => match file {
            Some(s) if alive => phase(s),
            Some(_) => "failed",
            None => "stopped",
        },
    }
}

/// `systemctl is-active` for every unit, in order (`None` if it cannot be asked).
fn systemd_states(units: &[String]) -> Option<Vec<String>> {
    if !systemd_running() || units.is_empty() {
        return None;
    }
    let out = Command::new(systemctl())
        .arg("is-active")
        .args(units)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect();
    (lines.len() == units.len()).then_some(lines)
}

/// Balloon sizes by VM from vmsilo-balloond's status document (VMs without a sample yet are
/// left out).
pub fn balloons(doc: &StatusDoc) -> Vec<(String, u64)> {
    doc.vms
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.balloon_actual?)))
        .collect()
}

/// The status document in `text`, if it is one of the version this build reads.
pub fn parse_balloond(text: &str) -> Option<StatusDoc> {
    serde_json::from_str::<StatusDoc>(text)
        .ok()
        .filter(|d| d.version == STATUS_VERSION)
}

fn fetch_balloond(path: &Path) -> Option<StatusDoc> {
    parse_balloond(&status::fetch(path, Duration::from_secs(1)).ok()?)
}

/// Collects every VM's status.
pub fn collect(vms: &[&Vm], run_dir: &str, balloond: &Path) -> Vec<VmStatus> {
    let dirs = Dirs::with_run_dir(run_dir.to_owned());
    let units: Vec<String> = vms.iter().map(|v| vm_service(&v.name)).collect();
    let systemd = systemd_states(&units);
    let balloons = fetch_balloond(balloond)
        .map(|d| balloons(&d))
        .unwrap_or_default();
    let now = state::now();
    vms.iter()
        .enumerate()
        .map(|(i, vm)| {
            let file = state::read(&state::state_path(run_dir, &vm.name));
            let alive = file.as_ref().is_some_and(|s| state::alive(s.pid));
            let sd = systemd.as_ref().map(|s| s[i].clone());
            let st = state_of(sd.as_deref(), file.as_ref(), alive);
            let live = file.as_ref().filter(|_| alive);
            let command_socket = dirs.command_socket(&vm.name);
            VmStatus {
                vm: vm.name.clone(),
                state: st.to_owned(),
                systemd: sd,
                uptime_seconds: live.map(|s| now.saturating_sub(s.started_at)),
                memory_mib: vm.memory,
                balloon_bytes: (st == "running")
                    .then(|| balloons.iter().find(|(n, _)| *n == vm.name).map(|b| b.1))
                    .flatten(),
                pid: live.map(|s| s.pid),
                vmm_pid: live.and_then(|s| s.vmm_pid),
                command_socket_present: Path::new(&command_socket).exists(),
                command_socket,
                color: vm.color.hex(),
                debug: live.is_some_and(|s| s.debug),
            }
        })
        .collect()
}

/// `1d02h`, `3h04m`, `5m06s`, `7s`.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn ansi(color: &str) -> Option<String> {
    let hex = color.strip_prefix('#')?;
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(format!(
        "\x1b[38;2;{};{};{}m",
        (v >> 16) & 0xff,
        (v >> 8) & 0xff,
        v & 0xff
    ))
}

/// The table; VM names in their colours when `color` is true.
pub fn render(rows: &[VmStatus], color: bool) -> String {
    let header = [
        "VM",
        "STATE",
        "UPTIME",
        "MEMORY",
        "BALLOON",
        "PID",
        "COMMAND SOCKET",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.vm.clone(),
                if r.debug {
                    format!("{} (debug)", r.state)
                } else {
                    r.state.clone()
                },
                r.uptime_seconds.map_or("-".into(), format_uptime),
                format!("{} MiB", r.memory_mib),
                r.balloon_bytes
                    .map_or("-".into(), |b| format!("{} MiB", b >> 20)),
                r.vmm_pid.or(r.pid).map_or("-".into(), |p| p.to_string()),
                if r.command_socket_present {
                    r.command_socket.clone()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, vals: &[String], name_color: Option<String>| {
        let mut parts = Vec::new();
        for (i, v) in vals.iter().enumerate() {
            let last = i + 1 == vals.len();
            let padded = if last {
                v.clone()
            } else {
                format!("{v:<w$}", w = widths[i])
            };
            parts.push(match (&name_color, i) {
                (Some(c), 0) => format!("{c}{v}\x1b[0m{}", &padded[v.len()..]),
                _ => padded,
            });
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_owned), None);
    for (r, c) in rows.iter().zip(&cells) {
        line(&mut out, c, if color { ansi(&r.color) } else { None });
    }
    out
}

/// Runs `vmsilo status`.
pub fn run(config: Option<&Path>, args: &StatusArgs) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    let vms: Vec<&Vm> = match &args.vm {
        Some(name) => vec![plan::find_vm(&cfg, name)?],
        None => cfg.nixos_vms.iter().collect(),
    };
    let balloond = args.balloond_status.clone().unwrap_or_else(|| {
        PathBuf::from(vmsilo_config::Dirs::with_run_dir(&args.run_dir).balloond_status())
    });
    let rows = collect(&vms, &args.run_dir, &balloond);
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&serde_json::json!({ "vms": rows }))
            .map_err(|e| CliError::Output(e.into()))?;
        s.push('\n');
        s
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        render(&rows, color)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::state::Phase;

    fn st(phase: Phase) -> State {
        State {
            version: 1,
            vm: "a".into(),
            state: phase,
            pid: 1,
            vmm_pid: None,
            vmm: "qemu".into(),
            started_at: 0,
            debug: false,
            console: None,
        }
    }

    #[test]
    fn test_state_combines_systemd_and_the_state_file() {
        assert_eq!(state_of(None, None, false), "stopped");
        assert_eq!(state_of(None, Some(&st(Phase::Running)), true), "running");
        assert_eq!(state_of(None, Some(&st(Phase::Starting)), true), "starting");
        assert_eq!(state_of(None, Some(&st(Phase::Running)), false), "failed");
        assert_eq!(state_of(Some("failed"), None, false), "failed");
        assert_eq!(state_of(Some("activating"), None, false), "starting");
        assert_eq!(state_of(Some("active"), None, false), "running");
        assert_eq!(state_of(Some("inactive"), None, false), "stopped");
        assert_eq!(
            state_of(Some("deactivating"), Some(&st(Phase::Running)), true),
            "stopping"
        );
    }

    #[test]
    fn test_uptime_and_colour() {
        assert_eq!(format_uptime(7), "7s");
        assert_eq!(format_uptime(366), "6m06s");
        assert_eq!(format_uptime(3 * 3600 + 240), "3h04m");
        assert_eq!(format_uptime(86400 + 7200), "1d02h");
        assert_eq!(ansi("#2ecc71").as_deref(), Some("\x1b[38;2;46;204;113m"));
    }

    #[test]
    fn test_balloons_from_the_balloond_document() {
        use vmsilo_balloond::status::VmStatus;
        let mut doc = StatusDoc {
            version: STATUS_VERSION,
            vms: vec![
                VmStatus {
                    name: "a".into(),
                    balloon_actual: Some(512 << 20),
                    ..VmStatus::default()
                },
                VmStatus {
                    name: "b".into(),
                    ..VmStatus::default()
                },
            ],
            ..StatusDoc::default()
        };
        // Through the text the daemon writes on its socket.
        let text = serde_json::to_string(&doc).expect("json");
        let read = parse_balloond(&text).expect("a status document");
        assert_eq!(balloons(&read), vec![("a".to_owned(), 512 << 20)]);
        doc.version = STATUS_VERSION + 1;
        let text = serde_json::to_string(&doc).expect("json");
        assert!(
            parse_balloond(&text).is_none(),
            "another version is not read"
        );
        assert!(parse_balloond("{\"version\":1}").is_none());
    }
}
