//! Building and installing seccomp BPF programs with seccompiler: the steps every sandboxed
//! vmsilo process takes the same way. The allow-lists themselves are each process's policy
//! and stay in its crate (vm-switch `seccomp.rs`, vmsilo-gate `sandbox.rs`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// System call number → the rules under which it matches (an empty list: always).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The architecture this process runs on (x86_64 if seccompiler does not know it).
pub fn arch() -> TargetArch {
    std::env::consts::ARCH
        .try_into()
        .unwrap_or(TargetArch::x86_64)
}

/// Makes each of `nrs` match unconditionally.
pub fn allow(rules: &mut Rules, nrs: &[libc::c_long]) {
    for nr in nrs {
        rules.insert(*nr, vec![]);
    }
}

/// A condition on argument `arg`.
pub fn cond(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, len, op, value)
}

/// Compiles `rules` for this architecture: a call that matches gets `matched`, any other
/// `mismatch`.
pub fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(rules, mismatch, matched, arch())?.try_into()
}

/// A program that lets every call through except `nrs`, which fail with `errno` (for calls
/// a process must not make but whose failure its libraries handle, such as `open` in a
/// process that opens nothing once running).
pub fn refuse(nrs: &[libc::c_long], errno: i32) -> Result<BpfProgram, BackendError> {
    let mut rules = Rules::new();
    allow(&mut rules, nrs);
    compile(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
    )
}

/// Installs compiled programs, in order, for the calling thread (and sets no-new-privs:
/// seccompiler does). Stops at the first the kernel refuses.
pub fn install(progs: &[BpfProgram]) -> Result<(), seccompiler::Error> {
    for prog in progs {
        seccompiler::apply_filter(prog)?;
    }
    Ok(())
}

/// For tests of a filter: forks; the child runs `setup` (if any), installs `progs`, then runs
/// `attempt` and exits with its code (99 if a program did not install). Returns how the child
/// ended. The child makes only async-signal-safe calls if `setup` and `attempt` do (compile
/// the programs before calling), so this may be called from the multi-threaded test harness.
pub fn in_filtered_child(
    progs: &[BpfProgram],
    setup: Option<fn()>,
    attempt: fn() -> i32,
) -> nix::Result<nix::sys::wait::WaitStatus> {
    match crate::fork().map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))? {
        crate::Forked::Child => {
            if let Some(setup) = setup {
                setup();
            }
            for prog in progs {
                if seccompiler::apply_filter(prog).is_err() {
                    crate::exit_now(99);
                }
            }
            crate::exit_now(attempt());
        }
        crate::Forked::Parent(pid) => {
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rules_compile_for_this_architecture() {
        let mut rules = Rules::new();
        allow(&mut rules, &[libc::SYS_read, libc::SYS_write]);
        rules.insert(
            libc::SYS_socket,
            vec![
                SeccompRule::new(vec![
                    cond(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        libc::AF_UNIX as u64,
                    )
                    .unwrap(),
                ])
                .unwrap(),
            ],
        );
        assert_eq!(rules.len(), 3);
        let prog = compile(rules, SeccompAction::KillProcess, SeccompAction::Allow).unwrap();
        assert!(!prog.is_empty());
        assert!(cond(6, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0).is_err());
    }

    #[test]
    fn test_a_refused_call_fails_with_its_errno_and_others_still_work() {
        fn attempt() -> i32 {
            // &CStr paths and no allocation: this runs in a forked child of the test harness.
            let opened = nix::fcntl::open(
                c"/dev/null",
                nix::fcntl::OFlag::O_RDONLY,
                nix::sys::stat::Mode::empty(),
            );
            match (opened, nix::unistd::getpid().as_raw() > 0) {
                (Err(nix::errno::Errno::EACCES), true) => 0,
                (Ok(_), _) => 4,
                _ => 5,
            }
        }
        let prog = refuse(&[libc::SYS_open, libc::SYS_openat], libc::EACCES).unwrap();
        let st = in_filtered_child(&[prog], None, attempt).unwrap();
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
            "{st:?}"
        );
        let st = in_filtered_child(&[], None, attempt).unwrap();
        assert!(
            matches!(st, nix::sys::wait::WaitStatus::Exited(_, 4)),
            "without the filter the open works: {st:?}"
        );
    }
}
