//! Every `unsafe` block of the agent: system calls that neither std nor nix wrap safely.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `pidfd_open(2)`: a file descriptor that becomes readable when the process exits. Always
/// close-on-exec. Needs Linux 5.3.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and a flags word and passes no memory; it returns a new
    // file descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor inherited through socket activation (`LISTEN_FDS`).
///
/// The caller must have checked `LISTEN_PID` and `LISTEN_FDS` so that `fd` is an open
/// descriptor passed to this process and owned by nothing else. A second call fails (the
/// descriptor then has an owner already), whatever the descriptor.
pub fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the socket-activation descriptor was taken already",
        ));
    }
    // Check that the descriptor is open before claiming it.
    // SAFETY: F_GETFD on any integer is harmless: it returns -1/EBADF for a closed one.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open, was passed to this process by its service manager (the
    // caller checked LISTEN_PID), and TAKEN makes this the only place that ever claims it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Returns memory that `free` kept in the heap to the kernel (glibc `malloc_trim`), so that an
/// idle agent's resident size falls back after serving large transfers. No-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers from
    // us and is safe to call at any time outside a signal handler.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets a pseudo-terminal's window size (`TIOCSWINSZ`), which also sends `SIGWINCH` to its
/// foreground process group.
pub fn set_window_size(pty: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` through the pointer, which points to a
    // live local value for the duration of the call.
    let ret = unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the child does between `fork` and `exec`, after std has set up its stdio.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// Make the pseudo-terminal on stdin the controlling terminal (after `setsid`).
    pub controlling_tty: bool,
    /// Switch to this identity: (uid, gid, supplementary groups).
    pub identity: Option<(u32, u32, Vec<u32>)>,
}

/// Installs the child setup: always `setsid` (the command gets its own session and process
/// group, so signals can be sent to the whole group and it is detached from the agent's
/// console); then `TIOCSCTTY`; then the identity switch.
pub fn install_child_setup(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        controlling_tty,
        identity,
    } = setup;
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe system calls below: no allocation, no locks.
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        if controlling_tty {
            // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); fd 0 is the pty
            // slave std installed as stdin.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid, groups)) = &identity {
            // SAFETY: the pointer and length describe the `groups` vector, which lives (in the
            // child's copy of memory) for the duration of the call.
            if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setgid/setuid take plain integers; gid first, while we may still.
            if unsafe { libc::setgid(*gid) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above.
            if unsafe { libc::setuid(*uid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (setsid, ioctl, setgroups,
    // setgid, setuid) on data moved into the closure before the fork; it allocates nothing and
    // takes no locks, so it is sound to run in the forked child of a multi-threaded process.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// The signals a terminal or the host sends to end a command (`vm-run`'s Ctrl+C, a stop).
const TERMINATION_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Makes this process outlive the termination signals its process group receives (the
/// command it waits for gets them too and decides), so that it can report that command's real
/// status. A handler, not `SIG_IGN`: handlers fall back to the default action in programs this
/// process starts, an ignored signal would stay ignored in them.
pub fn outlive_termination_signals() -> io::Result<()> {
    for sig in TERMINATION_SIGNALS {
        // SAFETY: installs a handler that does nothing (async-signal-safe by construction);
        // sigaction copies the struct, which is fully initialised (zeroed, then the handler and
        // SA_RESTART set), and touches no other memory of ours.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ends this process by `signal` with its default action (and a core dump if that is the
/// default), so that whoever waits for it sees the same status as for the command it ran.
/// Falls back to exit status 128 + signal if the signal does not end the process.
pub fn die_by_signal(signal: i32) -> ! {
    // SAFETY: restoring the default action and sending ourselves a signal pass no memory;
    // both only fail for invalid signal numbers, which the fallback exit covers.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + (signal & 0x7f));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn test_pidfd_becomes_readable_when_the_child_exits() {
        let mut child = Command::new("true").spawn().unwrap();
        let fd = pidfd_open(child.id()).unwrap();
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).unwrap();
        assert_eq!(n, 1);
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn test_adopting_is_refused_the_second_time() {
        // Descriptor 1_000_000 is not open: the first call fails on F_GETFD, the second
        // before looking at it. Only one test may call adopt_inherited_fd (TAKEN is global).
        let first = adopt_inherited_fd(1_000_000).unwrap_err();
        assert_eq!(first.raw_os_error(), Some(libc::EBADF), "{first}");
        let second = adopt_inherited_fd(1_000_000).unwrap_err();
        assert!(second.to_string().contains("taken already"), "{second}");
    }
}
