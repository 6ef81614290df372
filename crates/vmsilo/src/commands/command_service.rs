//! `vmsilo command-service <vm>`: what `vmsilo-<vm>-command.service` runs, with the command
//! socket passed by socket activation (`LISTEN_FDS`). The work is in
//! [`crate::vm_run::service`]; this module finds the socket, the configuration and the way to
//! start the VM.

use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use vmsilo_config::measure::format_duration;
use vmsilo_config::plan;

use crate::CliError;
use crate::cli::{CommandServiceArgs, RunArgs};
use crate::commands::systemctl;
use crate::config_file;
use crate::runtime::signals::Signals;
use crate::systemd_units::vm_service;
use crate::vm_run::guest::GuestAddr;
use crate::vm_run::service::{Refusal, Service, ServiceOptions, Starter};
use crate::vm_run::wire::FailCode;

/// Extra time a vm-service child gets to stop, beyond the guest's shutdown timeout.
const STOP_MARGIN: Duration = Duration::from_secs(30);

/// The listening socket systemd (or `systemd-socket-activate`) passed.
fn listener(vm: &str) -> Result<UnixListener, CliError> {
    let hint = format!(
        "command-service is started by socket activation (vmsilo-{vm}.socket); to run it by \
         hand: systemd-socket-activate --listen=/run/vmsilo/{vm}-command.socket vmsilo \
         command-service {vm}"
    );
    let fd = crate::sys::take_listen_fd().ok_or_else(|| {
        CliError::Usage(format!(
            "no listening socket was passed (LISTEN_PID/LISTEN_FDS are not set for this \
             process): {hint}"
        ))
    })?;
    match getsockopt(&fd, sockopt::AcceptConn) {
        Ok(true) => {}
        _ => {
            return Err(CliError::Usage(format!(
                "the passed descriptor 3 is not a listening socket (use Accept=no): {hint}"
            )));
        }
    }
    let listener = UnixListener::from(fd);
    if listener.local_addr().is_err() {
        return Err(CliError::Usage(format!(
            "the passed socket is not a Unix stream socket: {hint}"
        )));
    }
    Ok(listener)
}

/// The `vmsilo vm-service` command line for a VM this service starts itself.
fn child_argv(config: &Path, args: &RunArgs) -> Vec<OsString> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vmsilo"));
    let mut argv: Vec<OsString> = vec![exe.into(), "--config".into(), config.into()];
    let d = &args.dirs;
    for (flag, value) in [
        ("vm-service", args.vm.as_str()),
        ("--run-dir", &d.run_dir),
        ("--vm-switch-dir", &d.vm_switch_dir),
        ("--state-dir", &d.state_dir),
    ] {
        argv.push(flag.into());
        argv.push(value.into());
    }
    argv.extend([
        "--home-template".into(),
        args.home_template.clone().into(),
        "--sysfs-root".into(),
        args.sysfs_root.clone().into(),
        "--shutdown-timeout".into(),
        format_duration(args.shutdown_timeout).into(),
        "--socket-timeout".into(),
        format_duration(args.socket_timeout).into(),
    ]);
    if let Some(uid) = args.user.uid {
        argv.extend(["--uid".into(), uid.to_string().into()]);
    }
    if let Some(gid) = args.user.gid {
        argv.extend(["--gid".into(), gid.to_string().into()]);
    }
    if let Some(w) = &args.user.wayland_socket {
        argv.extend(["--wayland-socket".into(), w.into()]);
    }
    argv
}

/// Runs the command service until a stop signal.
pub fn run(config: Option<&Path>, args: &CommandServiceArgs) -> Result<(), CliError> {
    let vm = args.run.vm.clone();
    let listener = listener(&vm)?;
    // Whatever is wrong with the configuration is told to every client, rather than ending
    // the service (socket activation would only start it again for the next one).
    let loaded = config_file::resolve_and_load(config).and_then(|(path, cfg)| {
        plan::find_vm(&cfg, &vm)?;
        let opts = super::plan_options(&cfg, &args.run.dirs, &args.run.user)?;
        let plan = plan::build(&cfg, &vm, &opts)?;
        Ok((path, cfg, plan))
    });
    let (target, starter) = match loaded {
        Ok((path, cfg, plan)) => {
            let starter = if systemctl::systemd_running() {
                Starter::Systemd {
                    unit: vm_service(&vm),
                    systemctl: systemctl::systemctl(),
                    user: cfg.user.clone(),
                }
            } else {
                Starter::Child {
                    argv: child_argv(&path, &args.run),
                }
            };
            (Ok(GuestAddr::from_plan(&plan)), starter)
        }
        Err(e) => {
            let code = if e.code() == crate::error::EXIT_USAGE {
                FailCode::NotConfigured
            } else {
                FailCode::Unavailable
            };
            let message = e.lines().join("\n");
            eprintln!("vmsilo: VM {vm:?}: cannot serve commands: {message}");
            (
                Err(Refusal { code, message }),
                Starter::Child { argv: Vec::new() },
            )
        }
    };
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "the passed socket".to_owned());
    eprintln!(
        "vmsilo: VM {vm:?}: command service on {path}; {}",
        starter.describe()
    );
    // Before any thread exists: every thread inherits the blocked stop signals.
    let signals = Signals::block().map_err(CliError::BlockSignals)?;
    let service = Service::new(ServiceOptions {
        vm,
        target,
        starter,
        agent_timeout: args.agent_timeout,
        stop_timeout: args.run.shutdown_timeout + STOP_MARGIN,
    });
    service
        .serve(listener, &signals)
        .map_err(CliError::CommandService)
}
