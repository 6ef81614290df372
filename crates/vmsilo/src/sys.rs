//! The crate's only unsafe code: a `pre_exec` hook for the processes the runtime starts.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// Prepares a child of the runtime: it starts with an empty signal mask (the runtime blocks
/// SIGTERM, SIGINT, SIGHUP and SIGCHLD for its signalfd, and a mask survives exec), and it
/// receives `SIGTERM` when the runtime dies (so a killed `vm-service` never leaves a VMM or
/// backend behind), set after the child's identity change so it sticks.
pub fn prepare_child(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec; it only calls
    // pthread_sigmask(3), prctl(2) and getppid(2), which are async-signal-safe, and allocates
    // nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent died before prctl: nobody would send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent process exited"));
            }
            Ok(())
        });
    }
}
