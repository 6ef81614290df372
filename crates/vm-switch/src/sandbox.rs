//! The namespace sandbox of a port child, entered right after `fork` and before any thread.
//!
//! 1. `unshare` user, mount, IPC, network and PID namespaces; map the current uid/gid to root
//!    inside (only the caller's own ids, which needs no privilege).
//! 2. Fork once more: the grandchild is PID 1 of the new PID namespace and does the work; the
//!    intermediate process waits for it and exits with its status, so the main process keeps
//!    one pid per port (killing it kills the grandchild through `PR_SET_PDEATHSIG`).
//! 3. Make the mount tree private, mount a small `tmpfs` (nosuid, nodev, noexec) and
//!    `pivot_root` into it; detach the old root. The child keeps only inherited fds: the
//!    listening vhost-user socket, the control channel, the stats page, later the rings and
//!    guest memory.
//! 4. Remount the root read-only, make the process non-dumpable.
//!
//! The seccomp filter comes after this (see [`crate::seccomp`]).

#![forbid(unsafe_code)]

use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{chdir, getgid, getuid, mkdir, pivot_root};

use crate::sys::{self, Forked};

/// Sandbox errors.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A setup step failed.
    #[error("sandbox: {step} failed (run with --no-sandbox if this kernel forbids namespaces)")]
    Step {
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> SandboxError {
    move |e| SandboxError::Step {
        step,
        source: e.into(),
    }
}

fn write_file(path: &str, text: &str, name: &'static str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(|source| SandboxError::Step { step: name, source })
}

/// Enters the sandbox. `scratch` is an existing directory (hidden afterwards) to mount the new
/// root on. Returns in the grandchild only; the intermediate process exits.
pub fn enter(scratch: &Path) -> Result<(), SandboxError> {
    let uid = getuid();
    let gid = getgid();
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(step("unshare"))?;
    write_file("/proc/self/setgroups", "deny", "setgroups")?;
    write_file("/proc/self/uid_map", &format!("0 {uid} 1"), "uid_map")?;
    write_file("/proc/self/gid_map", &format!("0 {gid} 1"), "gid_map")?;

    match sys::fork().map_err(|source| SandboxError::Step {
        step: "fork into the PID namespace",
        source,
    })? {
        Forked::Parent(pid) => {
            // The intermediate: wait for the worker and exit with its status.
            let pid = nix::unistd::Pid::from_raw(pid);
            let code = loop {
                match waitpid(pid, None) {
                    Ok(WaitStatus::Exited(_, c)) => break c,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) => continue,
                    Err(nix::Error::EINTR) => continue,
                    Err(_) => break 1,
                }
            };
            std::process::exit(code);
        }
        Forked::Child => {}
    }
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(step("PR_SET_PDEATHSIG"))?;

    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making mounts private"))?;
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(step("mounting the tmpfs root"))?;
    let old = scratch.join("old");
    mkdir(&old, Mode::from_bits_truncate(0o700)).map_err(step("mkdir old root"))?;
    pivot_root(scratch, &old).map_err(step("pivot_root"))?;
    chdir("/").map_err(step("chdir /"))?;
    umount2("/old", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?;
    let _ = std::fs::remove_dir("/old");
    // Best effort: a read-only root.
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    nix::sys::prctl::set_dumpable(false).map_err(step("PR_SET_DUMPABLE"))?;
    Ok(())
}
