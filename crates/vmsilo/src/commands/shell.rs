//! `vm-shell <vm>`: attach this terminal to the VM's console PTY (`<run>/<vm>-console`) in raw
//! mode until CTRL+] (or the VM stops); `--ssh [--root]`: ssh to the VM's first static address as
//! the guest user `user` (or root).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, poll};
use vmsilo_config::{Dirs, Vm, derive, plan};

use crate::CliError;
use crate::cli::ShellArgs;
use crate::config_file;
use crate::runtime::ESCAPE;
use crate::term::RawMode;

/// The guest's desktop user (uid 1000 in every vmsilo guest).
pub const GUEST_USER: &str = "user";

/// The VM's first static address (interfaces in name order, IPv4 before IPv6).
pub fn first_address(vm: &Vm) -> Option<String> {
    derive::interfaces(vm).iter().find_map(|i| {
        i.iface
            .addresses
            .iter()
            .chain(&i.iface.v6_addresses)
            .next()
            .map(|c| c.addr.to_string())
    })
}

fn ssh(vm: &Vm, args: &ShellArgs) -> Result<(), CliError> {
    let Some(addr) = first_address(vm) else {
        return Err(CliError::Usage(format!(
            "VM {:?} has no static address to ssh to: give one of its interfaces `addresses`, or \
             use the console (vm-shell {})",
            vm.name, vm.name
        )));
    };
    let login = if args.root { "root" } else { GUEST_USER };
    let err = std::process::Command::new("ssh")
        .arg(format!("{login}@{addr}"))
        .args(&args.ssh_args)
        .exec();
    Err(CliError::Failure(format!("cannot run ssh: {err}")))
}

/// Runs `vm-shell`.
pub fn run(config: Option<&Path>, args: &ShellArgs) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    let vm = plan::find_vm(&cfg, &args.vm)?;
    if args.ssh {
        return ssh(vm, args);
    }
    let link = Dirs::with_run_dir(args.run_dir.clone()).console(&vm.name);
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits())
        .open(&link)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => CliError::Failure(format!(
                "VM {:?} is not running (no console at {link}): start it with `vm-start {}`",
                vm.name, vm.name
            )),
            ErrorKind::PermissionDenied => CliError::Failure(format!(
                "cannot open the console {link}: permission denied: it belongs to the \
                 configured user ({}); run vm-shell as them, or as root",
                cfg.user
            )),
            _ => CliError::Failure(format!("cannot open the console {link}: {e}")),
        })?;
    let console = Flock::lock(console, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        CliError::Failure(if e == nix::errno::Errno::EWOULDBLOCK {
            format!(
                "another vm-shell is attached to VM {:?}'s console: detach it first (CTRL+])",
                vm.name
            )
        } else {
            format!("cannot lock the console {link}: {e}")
        })
    })?;
    eprintln!(
        "vm-shell: connected to the console of VM {:?}; CTRL+] detaches",
        vm.name
    );
    let stdin = std::io::stdin();
    let raw = RawMode::enter(stdin.as_fd());
    let result = relay(&console, raw.is_some());
    drop(raw);
    match result {
        Ok(Detach::Escape) | Ok(Detach::InputClosed) => {
            eprintln!("\nvm-shell: detached from VM {:?}", vm.name);
            Ok(())
        }
        Ok(Detach::ConsoleClosed) => {
            eprintln!(
                "\nvm-shell: the console of VM {:?} closed (the VM stopped)",
                vm.name
            );
            Ok(())
        }
        Err(e) => Err(CliError::Failure(format!(
            "console of VM {:?}: {e}",
            vm.name
        ))),
    }
}

enum Detach {
    Escape,
    InputClosed,
    ConsoleClosed,
}

fn relay(console: &std::fs::File, _raw: bool) -> std::io::Result<Detach> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let (input, output) = {
            let mut fds = [
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(console.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, nix::poll::PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let r = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
            (r(0), r(1))
        };
        if !output.is_empty() {
            match (&*console).read(&mut buf) {
                Ok(0) => return Ok(Detach::ConsoleClosed),
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                // EIO: the master side (the VM's runtime) is gone.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => {
                    return Ok(Detach::ConsoleClosed);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !input.is_empty() {
            let n = match stdin.lock().read(&mut buf) {
                Ok(0) => return Ok(Detach::InputClosed),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let data = &buf[..n];
            if let Some(i) = data.iter().position(|&b| b == ESCAPE) {
                (&*console).write_all(&data[..i])?;
                return Ok(Detach::Escape);
            }
            (&*console).write_all(data)?;
        }
    }
}
