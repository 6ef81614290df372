//! `--session systemd`: commands for a NixOS guest's graphical session.
//!
//! Detached commands become transient services of the user's service manager
//! (`systemd-run --user --machine=<user>@ --unit=vmsilo-run-...`), ordered after
//! `graphical-session.target`, so they get the session's environment (`WAYLAND_DISPLAY`, ...),
//! survive the per-connection agent instance, and show up in `systemctl --user`. Attached
//! commands stay children of the agent (their stdio is streamed), started with the user
//! manager's environment.
//!
//! This needs systemd as PID 1 and a running user manager, which the test machine does not
//! have: only the command lines and parsers here are tested.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use vmsilo_proto::{ErrorCode, ErrorFrame, Started};

use crate::exec::Prepared;

/// Parses `systemctl show-environment` output (`KEY=value` lines). Values systemd had to
/// escape (printed as `KEY=$'...'`) are skipped rather than guessed.
pub fn parse_environment(text: &[u8]) -> Vec<(OsString, OsString)> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|b| *b == b'=')?;
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            if k.is_empty() || v.starts_with(b"$'") {
                return None;
            }
            Some((
                OsStr::from_bytes(k).to_owned(),
                OsStr::from_bytes(v).to_owned(),
            ))
        })
        .collect()
}

/// The user manager's environment, or an error message.
pub fn manager_environment(user: &str) -> Result<Vec<(OsString, OsString)>, String> {
    let out = Command::new("systemctl")
        .args(["--user", &format!("--machine={user}@"), "show-environment"])
        .output()
        .map_err(|e| format!("failed to run systemctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemctl --user show-environment for {user} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_environment(&out.stdout))
}

/// A unit name for a command: `vmsilo-run-<name>-<agent pid>-<n>`, with `<name>` reduced to
/// characters valid in unit names.
pub fn unit_name(argv0: &OsStr, serial: u32) -> String {
    let base = std::path::Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("vmsilo-run-{clean}-{}-{serial}", std::process::id())
}

/// The `systemd-run` command line for a detached command. `additions` are the request's own
/// environment variables (the unit already inherits the manager's environment).
pub fn systemd_run_argv(
    p: &Prepared,
    user: &str,
    unit: &str,
    additions: &[(OsString, OsString)],
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = [
        "--user".to_owned(),
        format!("--machine={user}@"),
        format!("--unit={unit}"),
        "--collect".to_owned(),
        "--quiet".to_owned(),
        "--property=Type=exec".to_owned(),
        "--property=After=graphical-session.target".to_owned(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let mut wd = OsString::from("--working-directory=");
    wd.push(&p.cwd);
    argv.push(wd);
    for (k, v) in additions {
        let mut s = OsString::from("--setenv=");
        s.push(k);
        s.push("=");
        s.push(v);
        argv.push(s);
    }
    argv.push("--".into());
    argv.push(p.program.clone().into_os_string());
    argv.extend(p.argv[1..].iter().cloned());
    argv
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// Starts a detached command as a transient user service and reports its main pid.
pub fn start_detached(
    p: &Prepared,
    user: &str,
    additions: &[(OsString, OsString)],
) -> Result<Started, ErrorFrame> {
    let unit = unit_name(&p.argv[0], SERIAL.fetch_add(1, Ordering::Relaxed));
    let shown = p.argv[0].to_string_lossy();
    let out = Command::new("systemd-run")
        .args(systemd_run_argv(p, user, &unit, additions))
        .output()
        .map_err(|e| {
            ErrorFrame::new(
                ErrorCode::SpawnFailed,
                format!("vmsilo-guest: failed to run systemd-run for {shown}: {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(ErrorFrame::new(
            ErrorCode::SpawnFailed,
            format!(
                "vmsilo-guest: failed to start {shown} as {unit}.service: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let pid = Command::new("systemctl")
        .args([
            "--user",
            &format!("--machine={user}@"),
            "show",
            "--property=MainPID",
            "--value",
            &format!("{unit}.service"),
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Ok(Started {
        pid,
        unit: Some(format!("{unit}.service")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use vmsilo_proto::Mode;

    #[test]
    fn test_parses_manager_environment_and_skips_escaped_values() {
        let env = parse_environment(
            b"HOME=/home/user\nWAYLAND_DISPLAY=wayland-0\nODD=$'a\\nb'\n=x\nnoequals\n",
        );
        assert_eq!(
            env,
            [
                ("HOME".into(), "/home/user".into()),
                ("WAYLAND_DISPLAY".into(), "wayland-0".into())
            ]
        );
    }

    #[test]
    fn test_unit_names_are_valid_and_distinct() {
        let a = unit_name(OsStr::new("/run/current-system/sw/bin/fire fox"), 1);
        let b = unit_name(OsStr::new("firefox"), 2);
        assert!(a.starts_with("vmsilo-run-fire_fox-"), "{a}");
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn test_systemd_run_command_line() {
        let p = Prepared {
            program: PathBuf::from("/run/current-system/sw/bin/firefox"),
            argv: vec!["firefox".into(), "--new-window".into()],
            env: Vec::new(),
            cwd: PathBuf::from("/home/user"),
            switch_to: None,
            account: None,
            mode: Mode::Detached,
            tty: None,
        };
        let argv = systemd_run_argv(
            &p,
            "user",
            "vmsilo-run-firefox-1-0",
            &[("A".into(), "b".into())],
        );
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            argv,
            [
                "--user",
                "--machine=user@",
                "--unit=vmsilo-run-firefox-1-0",
                "--collect",
                "--quiet",
                "--property=Type=exec",
                "--property=After=graphical-session.target",
                "--working-directory=/home/user",
                "--setenv=A=b",
                "--",
                "/run/current-system/sw/bin/firefox",
                "--new-window"
            ]
        );
    }
}
