//! Powering the guest off.

use std::io;
use std::path::Path;
use std::process::Command;

/// How to power off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOff {
    /// `systemctl poweroff` when systemd is the init system (`/run/systemd/system` exists),
    /// otherwise the `reboot(2)` system call.
    Auto,
    /// `sync()` then `reboot(RB_POWER_OFF)`: immediate, for init-less guests (the test guest).
    Syscall,
    /// `systemctl poweroff`: an orderly shutdown through systemd.
    Systemctl,
    /// Only exit the agent (status 0): for debugging and tests.
    Exit,
}

impl PowerOff {
    /// Resolves `Auto` on this machine.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if Path::new("/run/systemd/system").is_dir() => Self::Systemctl,
            Self::Auto => Self::Syscall,
            other => other,
        }
    }
}

/// Powers the guest off. Returns only on failure, or after starting `systemctl poweroff`
/// (which stops the agent in due course), or for [`PowerOff::Exit`].
pub fn power_off(method: PowerOff) -> io::Result<()> {
    match method.resolve() {
        PowerOff::Syscall => {
            nix::unistd::sync();
            match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
                Ok(never) => match never {},
                Err(e) => Err(io::Error::other(format!(
                    "reboot(RB_POWER_OFF) failed: {e} (the agent must run as root)"
                ))),
            }
        }
        PowerOff::Systemctl => {
            let status = Command::new("systemctl").arg("poweroff").status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "systemctl poweroff failed: {status}"
                )))
            }
        }
        PowerOff::Exit | PowerOff::Auto => Ok(()),
    }
}
