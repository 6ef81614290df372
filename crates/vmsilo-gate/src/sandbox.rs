//! The seccomp filter of the gate, installed in the parent after setup and inherited by every
//! client child: the system calls a Wayland proxy needs, nothing else. No `execve`, no
//! `ptrace`, no mounts or namespaces, no new privileges.
//!
//! Three stacked filters (the kernel takes the strictest verdict):
//! 1. `socket`/`socketpair` with a family other than `AF_UNIX` fail with `EPERM`;
//! 2. `open`/`openat` fail with `EACCES` (the gate opens no files once running; a library
//!    probing one copes with a failure);
//! 3. the allow-list; anything outside it kills the process.
//!
//! EPERM rather than a kill for socket families: the gate itself never asks for them, so
//! only a library fallback or an attacker who already runs code in a child would; the first
//! should fail cleanly, the second gains nothing either way (no network namespace access:
//! the runtime also starts the gate in an empty network namespace).
#![forbid(unsafe_code)]

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};
use vmsilo_sys::seccomp::{self, Rules};

/// What a running gate (parent or child) calls.
const ALLOWED: &[libc::c_long] = &[
    // I/O and the Wayland sockets.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_connect,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_getsockopt,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_open,
    libc::SYS_openat,
    // Memory (the frame's shm buffers are memfds).
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    // Event loops.
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_signalfd4,
    // Processes: fork a child per client, reap, kill on shutdown.
    libc::SYS_clone,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_prlimit64,
    libc::SYS_setrlimit,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    // Shutdown: remove the sockets.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_umask,
    // A client child adds its own, stricter filter.
    libc::SYS_seccomp,
];

fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, String> {
    seccomp::cond(arg, len, op, value).map_err(|e| e.to_string())
}

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    seccomp::compile(rules, mismatch, matched).map_err(|e| e.to_string())
}

/// The three filters, in installation order.
pub fn filters() -> Result<Vec<BpfProgram>, String> {
    // 1. Non-AF_UNIX sockets: EPERM.
    let unix = libc::AF_UNIX as u64;
    let mut not_unix = Rules::new();
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        not_unix.insert(
            nr,
            vec![
                SeccompRule::new(vec![cond(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    unix,
                )?])
                .map_err(|e| e.to_string())?,
            ],
        );
    }
    let sockets = compile(
        not_unix,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )?;
    // 2. open/openat: EACCES.
    let no_open = seccomp::refuse(&[libc::SYS_open, libc::SYS_openat], libc::EACCES)
        .map_err(|e| e.to_string())?;
    // 3. The allow-list; ioctl only for FIONBIO (std's set_nonblocking) and FIOCLEX.
    let mut rules = Rules::new();
    for nr in ALLOWED {
        rules.insert(*nr, vec![]);
    }
    let mut ioctl = Vec::new();
    for req in [libc::FIONBIO, libc::FIOCLEX] {
        ioctl.push(
            SeccompRule::new(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )?])
            .map_err(|e| e.to_string())?,
        );
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    // Only PR_SET_PDEATHSIG (children), PR_SET_NAME and PR_SET_NO_NEW_PRIVS (before a client
    // child adds its own filter, which only ever restricts further).
    let mut prctl = Vec::new();
    for option in [
        libc::PR_SET_PDEATHSIG,
        libc::PR_SET_NAME,
        libc::PR_SET_NO_NEW_PRIVS,
    ] {
        prctl.push(
            SeccompRule::new(vec![cond(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                option as u64,
            )?])
            .map_err(|e| e.to_string())?,
        );
    }
    rules.insert(libc::SYS_prctl, prctl);
    let main = compile(rules, SeccompAction::KillProcess, SeccompAction::Allow)?;
    Ok(vec![sockets, no_open, main])
}

/// System calls a client child no longer makes once it serves its client (its compositor
/// connection was made by the parent): new sockets and connections, processes, signals to
/// others, file removal. A child that an attacker took over cannot reach the compositor (or
/// anything else) on a connection of its own.
const CHILD_DENIED: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_clone,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_signalfd4,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_prctl,
    libc::SYS_umask,
    libc::SYS_seccomp,
];

/// The client child's extra filter (on top of the inherited ones): [`CHILD_DENIED`] kills.
pub fn child_filter() -> Result<BpfProgram, String> {
    let mut rules = Rules::new();
    for nr in CHILD_DENIED {
        rules.insert(*nr, vec![]);
    }
    compile(rules, SeccompAction::Allow, SeccompAction::KillProcess)
}

/// Installs [`child_filter`] in a client child.
pub fn apply_child() -> Result<(), String> {
    seccomp::install(&[child_filter()?]).map_err(|e| e.to_string())
}

/// Installs the filters for the calling thread (the parent is single-threaded; children
/// inherit them). Sets no-new-privs first (seccompiler does).
pub fn apply() -> Result<(), String> {
    seccomp::install(&filters()?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::WaitStatus;

    /// Runs `attempt` in a forked child under the filters; the child only makes
    /// async-signal-safe calls (the filters are compiled before the fork).
    fn in_filtered_child(attempt: fn() -> i32) -> WaitStatus {
        seccomp::in_filtered_child(&filters().unwrap(), None, attempt).unwrap()
    }

    #[test]
    fn test_inet_socket_fails_with_eperm_unix_socket_works() {
        fn attempt() -> i32 {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
            let inet = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            );
            if inet.err() != Some(nix::errno::Errno::EPERM) {
                return 3;
            }
            let unix = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::empty(),
                None,
            );
            if unix.is_err() {
                return 4;
            }
            0
        }
        let st = in_filtered_child(attempt);
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }

    #[test]
    fn test_exec_kills_the_process() {
        fn attempt() -> i32 {
            let _ = nix::unistd::execv(c"/bin/true", &[c"/bin/true"]);
            5
        }
        let st = in_filtered_child(attempt);
        assert!(
            matches!(
                st,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{st:?}"
        );
    }

    #[test]
    fn test_child_filter_kills_on_a_new_socket() {
        fn attempt() -> i32 {
            use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
            let _ = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::empty(),
                None,
            );
            8
        }
        let mut progs = filters().unwrap();
        progs.push(child_filter().unwrap());
        let st = seccomp::in_filtered_child(&progs, None, attempt).unwrap();
        assert!(
            matches!(
                st,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{st:?}"
        );
    }

    #[test]
    fn test_open_fails_with_eacces() {
        fn attempt() -> i32 {
            match nix::fcntl::open(
                c"/dev/null",
                nix::fcntl::OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            ) {
                Err(nix::errno::Errno::EACCES) => 0,
                _ => 6,
            }
        }
        assert!(matches!(
            in_filtered_child(attempt),
            WaitStatus::Exited(_, 0)
        ));
    }

    #[test]
    fn test_filters_compile_and_exclude_exec_and_ptrace() {
        let f = filters().unwrap();
        assert_eq!(f.len(), 3);
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_process_vm_readv,
        ] {
            assert!(!ALLOWED.contains(&nr), "{nr}");
        }
    }
}
