//! The crate's only unsafe code: a `pre_exec` hook for the processes the runtime starts.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::Signal;

/// Makes the child receive `SIGTERM` when the runtime dies (so a killed `vm-service` never
/// leaves a VMM or backend behind), set after the child's identity change so it sticks.
pub fn term_on_parent_death(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl(2) and
    // getppid(2), which are async-signal-safe, and allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent died before prctl: nobody would send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent process exited"));
            }
            Ok(())
        });
    }
}
