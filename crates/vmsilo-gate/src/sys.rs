//! Every `unsafe` operation of vmsilo-gate: `fork`, closing inherited descriptors in a child,
//! and `_exit`. Each block carries a `// SAFETY:` comment.

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
/// Must only be called while the process has a single thread: the gate's parent never starts
/// threads (wl-proxy's `State` is single-threaded and the logger has no thread).
pub fn fork() -> std::io::Result<Forked> {
    // SAFETY: the gate's parent process is single-threaded (see above), so the child cannot
    // inherit a lock held by another thread; the child continues with ordinary Rust code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Ends the process at once with `code`, without running destructors or exit handlers (a
/// forked child must never unwind into, or drop, the parent's objects it has a copy of).
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// Closes every file descriptor of this process except `keep` (and 0, 1, 2). Used right after
/// `fork` in a client child, which must not hold the listening socket, the other clients'
/// channels or the parent's compositor connection.
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
            // parent's copy of memory are never used or dropped in this process.
            unsafe {
                libc::close(fd);
            }
        }
    }
}
