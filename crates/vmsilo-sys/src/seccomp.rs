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

/// Installs compiled programs, in order, for the calling thread (and sets no-new-privs:
/// seccompiler does). Stops at the first the kernel refuses.
pub fn install(progs: &[BpfProgram]) -> Result<(), seccompiler::Error> {
    for prog in progs {
        seccompiler::apply_filter(prog)?;
    }
    Ok(())
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
}
