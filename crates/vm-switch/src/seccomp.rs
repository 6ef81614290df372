//! Seccomp allow-lists: one for the main process, a tighter one for port children, and a tiny
//! one for the outer process that stays outside the main process's PID namespace.
//!
//! The main process's filter is installed before its event loop; children inherit it and add
//! their own after the sandbox is set up and before the vhost-user daemon starts any thread,
//! so both apply to a child (the kernel takes the strictest verdict). The child's list has no
//! `fork` (`clone` only with `CLONE_THREAD`; `clone3` answers `ENOSYS` so the C library falls
//! back to `clone`), no socket creation, no `execve`, no `PROT_EXEC` mappings, and `open`/
//! `openat` always fail with `EACCES` (the sandbox root is an empty tmpfs anyway).
//!
//! Modes (`--seccomp-mode`): `kill` (default) kills the process on a call outside the list,
//! `trap` raises SIGSYS (a handler prints the call number and exits 159), `log` allows and
//! logs through the kernel audit log, `disabled` installs nothing.

#![forbid(unsafe_code)]

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};
use vmsilo_sys::seccomp::{self, Rules, allow};

/// What happens on a system call outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process.
    Kill,
    /// Send SIGSYS (logged, then exit 159).
    Trap,
    /// Allow, but log to the kernel audit log.
    Log,
    /// No filter.
    Disabled,
}

/// Seccomp setup errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Building the filter failed (a bug).
    #[error("could not build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("could not install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    seccomp::cond(arg, SeccompCmpArgLen::Qword, op, value)
        .expect("static seccomp condition is valid")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("static seccomp rule is valid")
}

/// System calls every vm-switch process needs once running (threads, memory, epoll, logging).
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_accept4,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_mremap,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_lseek,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// Additional calls of the main process: the config directory, sockets, memfds, forking and
/// the children's sandbox setup (which runs under this filter, before the child's own). The
/// main process's own sandbox is set up before the filter is installed.
const MAIN_ONLY: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mkdir,
    libc::SYS_fchmodat,
    libc::SYS_chdir,
    libc::SYS_fchdir,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_signalfd4,
    libc::SYS_timerfd_create,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_getppid,
    libc::SYS_unshare,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_seccomp,
    libc::SYS_prctl,
    libc::SYS_close_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_tid_address,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_readlinkat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
];

fn mismatch(mode: SeccompMode) -> SeccompAction {
    match mode {
        SeccompMode::Kill | SeccompMode::Disabled => SeccompAction::KillProcess,
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    }
}

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    seccomp::compile(rules, mismatch, matched).map_err(SeccompError::Build)
}

/// The datapath threads ask the scheduler for a short slice for themselves
/// ([`crate::sys::request_slice`]): `sched_getattr`/`sched_setattr` on the calling thread
/// (pid 0) only, never on another process.
fn allow_own_sched_attr(rules: &mut Rules) {
    for nr in [libc::SYS_sched_getattr, libc::SYS_sched_setattr] {
        rules.insert(nr, vec![rule(vec![cond(0, SeccompCmpOp::Eq, 0)])]);
    }
}

/// The main process's filter.
pub fn main_filter(mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let mut rules = Rules::new();
    allow(&mut rules, COMMON);
    allow(&mut rules, MAIN_ONLY);
    allow_own_sched_attr(&mut rules);
    // std's set_nonblocking on sockets uses ioctl(FIONBIO); nothing else.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(1, SeccompCmpOp::Eq, libc::FIONBIO)])],
    );
    compile(rules, mismatch(mode), SeccompAction::Allow)
}

/// The outer process's filter (see [`crate::sandbox`]): it only waits for signals and pid
/// translation requests, forwards signals to the sandboxed main process and reaps it.
pub fn outer_filter(mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let mut rules = Rules::new();
    allow(&mut rules, COMMON);
    allow(&mut rules, &[libc::SYS_wait4, libc::SYS_kill]);
    let exec = libc::PROT_EXEC as u64;
    rules.insert(
        libc::SYS_mmap,
        vec![rule(vec![cond(2, SeccompCmpOp::MaskedEq(exec), 0)])],
    );
    compile(rules, mismatch(mode), SeccompAction::Allow)
}

/// The port children's filter (applied on top of the main one).
pub fn child_filters(mode: SeccompMode) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut rules = Rules::new();
    allow(&mut rules, COMMON);
    allow_own_sched_attr(&mut rules);
    // Threads only: clone must carry CLONE_THREAD.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(thread), thread)])],
    );
    rules.insert(libc::SYS_clone3, vec![]);
    // Memory for thread stacks and guest RAM, never executable.
    let exec = libc::PROT_EXEC as u64;
    rules.insert(
        libc::SYS_mmap,
        vec![rule(vec![cond(2, SeccompCmpOp::MaskedEq(exec), 0)])],
    );
    rules.insert(
        libc::SYS_mprotect,
        vec![rule(vec![cond(2, SeccompCmpOp::MaskedEq(exec), 0)])],
    );
    // Thread names only.
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::Eq,
            libc::PR_SET_NAME as u64,
        )])],
    );
    // open/openat pass this filter only to be refused by the next one with EACCES: glibc's
    // malloc probes /proc/sys/vm/overcommit_memory when a thread arena shrinks and copes with
    // a failure, which must not kill the port.
    rules.insert(libc::SYS_open, vec![]);
    rules.insert(libc::SYS_openat, vec![]);
    let main = compile(rules, mismatch(mode), SeccompAction::Allow)?;
    // clone3 takes its flags in memory a filter cannot read: answer ENOSYS so glibc uses
    // clone, whose flags the filter above checks. Installed first: installing a filter needs
    // prctl and seccomp(2), which the main child filter no longer allows.
    let clone3 = seccomp::refuse(&[libc::SYS_clone3], libc::ENOSYS).map_err(SeccompError::Build)?;
    let no_open = seccomp::refuse(&[libc::SYS_open, libc::SYS_openat], libc::EACCES)
        .map_err(SeccompError::Build)?;
    Ok(vec![clone3, no_open, main])
}

/// Installs the main process's filter for the calling (only) thread.
pub fn apply_main(mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Disabled {
        return Ok(());
    }
    install(&[main_filter(mode)?])
}

/// Installs the outer process's filter for the calling (only) thread.
pub fn apply_outer(mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Disabled {
        return Ok(());
    }
    install(&[outer_filter(mode)?])
}

/// Installs the child filters for the calling thread (threads created later inherit them).
pub fn apply_child(mode: SeccompMode) -> Result<(), SeccompError> {
    if mode == SeccompMode::Disabled {
        return Ok(());
    }
    install(&child_filters(mode)?)
}

/// Installs compiled filters, in order, for the calling thread.
pub fn install(progs: &[BpfProgram]) -> Result<(), SeccompError> {
    seccomp::install(progs).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_filters_compile_in_every_mode() {
        for mode in [SeccompMode::Kill, SeccompMode::Trap, SeccompMode::Log] {
            assert!(!main_filter(mode).unwrap().is_empty());
            assert!(!outer_filter(mode).unwrap().is_empty());
            assert_eq!(child_filters(mode).unwrap().len(), 3);
        }
    }

    use nix::sys::wait::WaitStatus;

    use crate::sys;

    /// Forks; the child installs the child filters of `mode`, runs `attempt` and exits 0 if it
    /// survived (or `attempt`'s own code). Returns how the child ended.
    fn in_filtered_child(mode: SeccompMode, attempt: fn() -> i32) -> WaitStatus {
        fn sigsys_handler() {
            let _ = sys::install_sigsys_handler();
        }
        let setup = (mode == SeccompMode::Trap).then_some(sigsys_handler as fn());
        seccomp::in_filtered_child(&child_filters(mode).unwrap(), setup, attempt).unwrap()
    }

    fn make_socket() -> i32 {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::empty(),
            None,
        );
        if s.is_ok() { 0 } else { 3 }
    }

    fn open_file() -> i32 {
        // A &CStr path: no allocation in the forked child of a multi-threaded test process.
        match nix::fcntl::open(
            c"/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(_) => 4,
            Err(nix::Error::EACCES) => 0,
            Err(_) => 5,
        }
    }

    #[test]
    fn test_child_filter_kill_mode_kills_on_socket_creation() {
        let st = in_filtered_child(SeccompMode::Kill, make_socket);
        assert!(
            matches!(
                st,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{st:?}"
        );
    }

    #[test]
    fn test_child_filter_trap_mode_reports_and_exits_159() {
        let st = in_filtered_child(SeccompMode::Trap, make_socket);
        assert!(matches!(st, WaitStatus::Exited(_, 159)), "{st:?}");
    }

    #[test]
    fn test_child_filter_log_mode_allows() {
        let st = in_filtered_child(SeccompMode::Log, make_socket);
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }

    #[test]
    fn test_child_filter_lets_a_thread_ask_for_its_own_slice() {
        let st = in_filtered_child(SeccompMode::Kill, || {
            if sys::request_slice(100_000).is_ok() {
                0
            } else {
                6
            }
        });
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }

    #[test]
    fn test_child_filter_kills_sched_attr_calls_on_other_processes() {
        let st = in_filtered_child(SeccompMode::Kill, || {
            let _ = sys::sched_getattr(1);
            0
        });
        assert!(
            matches!(
                st,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{st:?}"
        );
    }

    #[test]
    fn test_child_filter_open_fails_with_eacces_instead_of_killing() {
        let st = in_filtered_child(SeccompMode::Kill, open_file);
        assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    }

    #[test]
    fn test_child_list_has_no_socket_open_or_exec() {
        for nr in [
            libc::SYS_socket,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_fork,
        ] {
            assert!(
                !COMMON.contains(&nr),
                "{nr} must not be in the child allow-list"
            );
        }
    }
}
