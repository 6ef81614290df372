//! Every `unsafe` operation of vmsilo-sys: `fork`, `_exit`, closing inherited descriptors in
//! a forked child, and taking ownership of descriptors passed with `SCM_RIGHTS`. Each block
//! carries a `// SAFETY:` comment.

/// Result of [`fork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Forks the process.
///
/// Must only be called while the process has a single thread (the gate's parent, vm-switch's
/// main process and its sandbox steps never start threads), or, in a multi-threaded process,
/// with a child that only makes async-signal-safe calls before it exits or execs (tests that
/// fork from the test harness: the child makes a system call or two and calls
/// [`exit_now`]).
pub fn fork() -> std::io::Result<Forked> {
    // SAFETY: callers are single-threaded, so the child cannot inherit a lock held by another
    // thread, or their children keep to async-signal-safe calls (see above).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Ends the process at once with `code`, without running destructors or exit handlers (a
/// forked child must never unwind into, or drop, the parent's objects it has a copy of).
/// Async-signal-safe.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// Closes every file descriptor of this process except `keep` (and 0, 1, 2). Used right after
/// `fork` in a child that must not hold its siblings' or its parent's descriptors.
///
/// Descriptors owned by Rust objects inherited from the parent are closed behind their
/// backs, so the caller must never drop those objects (the child never returns into the
/// parent's code; it ends with [`exit_now`]).
pub fn close_fds_except(keep: &[std::os::fd::RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|fd| **fd > 2)
        .map(|fd| *fd as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let close_range = |first: u32, last: u32| {
        // SAFETY: close_range(2) takes integers and flags and touches no memory; see the
        // function documentation for the descriptors it closes behind Rust objects.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_long::from(first),
                libc::c_long::from(last),
                0 as libc::c_long,
            ) == 0
        }
    };
    let mut first = 3u32;
    let mut ok = true;
    // `keep` is sorted, unique and above 2, so every k >= first.
    for &k in &keep {
        if k > first {
            ok &= close_range(first, k - 1);
        }
        first = k + 1;
    }
    ok &= close_range(first, u32::MAX);
    if ok {
        return;
    }
    // Kernels before 5.9 have no close_range: walk /proc/self/fd instead.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&(fd as u32)) {
            // SAFETY: see the function documentation: the objects owning these fds in the
            // parent's copy of memory are never used or dropped in this process. The fd of
            // the directory iterator itself is already closed (iterator dropped), so closing
            // it again only yields EBADF.
            unsafe {
                libc::close(fd);
            }
        }
    }
}

/// Takes ownership of a descriptor the kernel just passed in an `SCM_RIGHTS` message.
/// Call it once per descriptor of a `recvmsg(2)` that just returned, and for nothing else.
pub fn owned_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was installed in this process by recvmsg(2) for this message (the
    // documented contract); nothing else refers to it, so this is its only owner.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
