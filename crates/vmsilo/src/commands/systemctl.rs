//! `vm-start <vm>` and `vm-stop <vm>`: `systemctl start|stop vmsilo-<vm>-vm.service`, with
//! messages that say what to do when systemd, the unit or the polkit rule is missing.
//!
//! `VMSILO_SYSTEMCTL` names another systemctl and `VMSILO_SYSTEMD_DIR` replaces
//! `/run/systemd/system` (the "systemd is running" marker); both are for tests.

use std::path::Path;
use std::process::Command;

use vmsilo_config::plan;

use crate::CliError;
use crate::config_file;
use crate::systemd_units::vm_service;

/// What to do with the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `systemctl start`.
    Start,
    /// `systemctl stop`.
    Stop,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
        }
    }
}

/// The directory that exists when systemd is the running init (sd_booted(3)).
pub fn systemd_dir() -> std::path::PathBuf {
    std::env::var_os("VMSILO_SYSTEMD_DIR")
        .map(Into::into)
        .unwrap_or_else(|| "/run/systemd/system".into())
}

/// Whether systemd runs this machine.
pub fn systemd_running() -> bool {
    systemd_dir().is_dir()
}

/// The systemctl program.
pub fn systemctl() -> std::ffi::OsString {
    std::env::var_os("VMSILO_SYSTEMCTL").unwrap_or_else(|| "systemctl".into())
}

fn current_user() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Turns systemctl's complaint into advice.
pub fn explain(verb: &str, unit: &str, vm: &str, user: &str, me: &str, stderr: &str) -> String {
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let lower = stderr.to_lowercase();
    if lower.contains("not found") || lower.contains("not loaded") || lower.contains("no such file")
    {
        return format!(
            "cannot {verb} VM {vm:?}: systemd has no unit {unit} ({first}): the units are \
             generated from the configuration by vmsilo-generator; run `systemctl daemon-reload` \
             (on NixOS: `nixos-rebuild switch`), or install them with `vmsilo units --out DIR`"
        );
    }
    if lower.contains("access denied")
        || lower.contains("authentication required")
        || lower.contains("not authorized")
        || lower.contains("permission denied")
    {
        let who = if me == user {
            String::new()
        } else {
            format!(" (you are {me}; the configuration's user is {user})")
        };
        return format!(
            "not allowed to {verb} {unit}{who}: polkit refused ({first}): the vmsilo polkit rule \
             lets the configured user start, stop and restart vmsilo units: install it \
             (`vmsilo units --out DIR` writes DIR/polkit/50-vmsilo.rules for \
             /etc/polkit-1/rules.d/; the NixOS module installs it), run as {user}, or use sudo"
        );
    }
    format!(
        "systemctl {verb} {unit} failed{}: see `systemctl status {unit}` and `journalctl -u \
         {unit}`",
        if first.is_empty() {
            String::new()
        } else {
            format!(" ({first})")
        }
    )
}

/// Runs `vm-start` / `vm-stop`.
pub fn run(config: Option<&Path>, verb: Verb, vm: &str) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    plan::find_vm(&cfg, vm)?;
    let unit = vm_service(vm);
    if !systemd_running() {
        let instead = match verb {
            Verb::Start => format!(
                "run the VM in the foreground with `vm-start-debug {vm}` (as root), or start \
                 `vmsilo vm-service {vm}` yourself"
            ),
            Verb::Stop => format!(
                "a VM run by `vm-start-debug {vm}` stops with CTRL+] in its terminal, one run by \
                 `vmsilo vm-service {vm}` when that process gets SIGTERM"
            ),
        };
        return Err(CliError::NoSystemd {
            verb: verb.as_str(),
            vm: vm.to_owned(),
            dir: systemd_dir(),
            instead,
        });
    }
    let out = Command::new(systemctl())
        .arg(verb.as_str())
        .arg(&unit)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| CliError::RunProgram {
            program: systemctl().to_string_lossy().into_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(CliError::Systemctl(explain(
        verb.as_str(),
        &unit,
        vm,
        &cfg.user,
        &current_user(),
        &stderr,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The texts are systemctl's (systemd 252) for these cases.
    #[test]
    fn test_explain_missing_unit_and_polkit_denial() {
        let m = explain(
            "start",
            "vmsilo-a-vm.service",
            "a",
            "alice",
            "alice",
            "Failed to start vmsilo-a-vm.service: Unit vmsilo-a-vm.service not found.\n",
        );
        assert!(m.contains("systemd has no unit vmsilo-a-vm.service"), "{m}");
        assert!(m.contains("vmsilo units"), "{m}");
        let m = explain(
            "stop",
            "vmsilo-a-vm.service",
            "a",
            "alice",
            "bob",
            "Failed to stop vmsilo-a-vm.service: Access denied\n",
        );
        assert!(m.contains("polkit refused"), "{m}");
        assert!(
            m.contains("you are bob; the configuration's user is alice"),
            "{m}"
        );
        let m = explain(
            "start",
            "vmsilo-a-vm.service",
            "a",
            "alice",
            "alice",
            "Job for vmsilo-a-vm.service failed because the control process exited with error code.\n",
        );
        assert!(m.contains("journalctl -u vmsilo-a-vm.service"), "{m}");
    }
}
