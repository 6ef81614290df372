//! Namespace sandboxes: the main process's, entered once at startup before any thread or
//! event source exists, and each port child's, entered right after `fork`.
//!
//! # The main process ([`enter_main`])
//!
//! 1. Started as root, switch to the sandbox ids first ([`sandbox_ids`]: `--user`, or an unused
//!    uid/gid from systemd's dynamic range) and give them the config directory. A user
//!    namespace that maps root inside to root outside would still own every root-owned file
//!    and global sysctl it can reach, so the sandbox never runs as the host's root.
//! 2. `unshare` user, mount, IPC, network and PID namespaces; map the current uid/gid to root
//!    inside (only the caller's own ids, which needs no privilege).
//! 3. Fork: the child is PID 1 of the new PID namespace and becomes the main process. The
//!    process that was started (systemd's main PID) stays outside the PID namespace as the
//!    *outer* process: it forwards SIGTERM, SIGINT and SIGHUP to PID 1 (which sees them through
//!    its signalfd: PID 1 of a namespace only ignores signals it neither handles nor blocks),
//!    reaps it and exits with its status, and translates the pids of port children into pids
//!    of its own namespace for the statistics (the main process sends a child's pid as
//!    `SCM_CREDENTIALS`, which the kernel translates for the receiver). It runs under its own
//!    small seccomp filter. PID 1 dies with it (`PR_SET_PDEATHSIG`), and every port child with
//!    PID 1 (the kernel empties a PID namespace whose init exits).
//! 4. PID 1 builds the new root: the mount tree is made private, a small `tmpfs` is mounted
//!    on the config directory (hiding it only in this namespace) and gets `/config` (the
//!    config directory, a bind mount cloned with `open_tree` before: sockets bound there are
//!    the files the host sees, and inotify sees the host's writes), `/dev/null`,
//!    `/dev/zero`, `/dev/urandom` (read-only bind mounts), a fresh `/proc` of the new PID
//!    namespace (`subset=pid` where supported: no `/proc/sys`), and a small `/tmp`. Then
//!    `pivot_root`, detach the old root, remount the root read-only, become non-dumpable.
//!
//! The outer process chdirs to `/` before the fork, so `pivot_root` moves its root and working
//! directory too: it keeps no reference to the host's file system either.
//!
//! # A port child ([`enter`])
//!
//! 1. `unshare` user, mount, IPC, network and PID namespaces (nested inside the main
//!    process's when it is sandboxed); map its uid/gid to root inside.
//! 2. Fork once more: the grandchild is PID 1 of the new PID namespace and does the work; the
//!    intermediate process waits for it and exits with its status, so the main process keeps
//!    one pid per port (killing it kills the grandchild through `PR_SET_PDEATHSIG`).
//! 3. Make the mount tree private, mount a small `tmpfs` (nosuid, nodev, noexec) and
//!    `pivot_root` into it; detach the old root. The child keeps only inherited fds: the
//!    listening vhost-user socket, the control channel, the stats page, later the rings and
//!    guest memory.
//! 4. Remount the root read-only, make the process non-dumpable.
//!
//! The seccomp filters come after this (see [`crate::seccomp`]).

#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::warn;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixCredentials, recvmsg, sendmsg, setsockopt, socketpair, sockopt,
};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Group, Pid, Uid, User, chdir, getgid, getuid, mkdir, pivot_root};

use crate::seccomp::{self, SeccompMode};
use crate::sys::{self, Forked};

/// Where the config directory appears inside the main process's sandbox.
pub const CONFIG_MOUNT: &str = "/config";

/// First and last id of systemd's range for dynamic users (`DynamicUser=`), from which a
/// root-started vm-switch picks its sandbox ids when `--user` is not given.
pub const DYNAMIC_IDS: (u32, u32) = (61184, 65519);

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
    /// The config directory cannot hold the sandbox root.
    #[error("sandbox: the config directory {0} cannot be /, nor under /proc or /dev")]
    BadDir(String),
}

fn step(step: &'static str) -> impl FnOnce(nix::Error) -> SandboxError {
    move |e| SandboxError::Step {
        step,
        source: e.into(),
    }
}

fn io_step(step: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Step { step, source }
}

fn write_file(path: &str, text: &str, name: &'static str) -> Result<(), SandboxError> {
    std::fs::write(path, text).map_err(io_step(name))
}

/// The ids a sandbox started as root runs as outside its user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxIds {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Chooses the ids of the sandbox. Not root (`euid_is_root` false): `None`, the sandbox runs
/// as the invoking user, and `--user` is refused. Root: `user` (a name, or a numeric uid with
/// its primary group, or the same number as gid when the user database does not know it), or
/// by default an id from [`DYNAMIC_IDS`] chosen by a hash of `dir`, skipping ids the user
/// database knows as a user or a group. Never root.
pub fn sandbox_ids(
    user: Option<&str>,
    dir: &Path,
    euid_is_root: bool,
) -> Result<Option<SandboxIds>, String> {
    if !euid_is_root {
        return match user {
            Some(u) => Err(format!(
                "--user {u:?} needs root: started as a regular user, the sandbox runs as that user"
            )),
            None => Ok(None),
        };
    }
    let ids = match user {
        Some(spec) => {
            let found = match spec.parse::<u32>() {
                Ok(n) => match User::from_uid(Uid::from_raw(n)) {
                    Ok(Some(u)) => Some(u),
                    Ok(None) => None,
                    Err(e) => return Err(format!("--user {spec:?}: user database: {e}")),
                },
                Err(_) => match User::from_name(spec) {
                    Ok(Some(u)) => Some(u),
                    Ok(None) => {
                        return Err(format!(
                            "--user {spec:?}: no such user (give an existing user name or a numeric uid)"
                        ));
                    }
                    Err(e) => return Err(format!("--user {spec:?}: user database: {e}")),
                },
            };
            match found {
                Some(u) => SandboxIds {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                },
                None => {
                    let n = spec.parse::<u32>().unwrap_or(0);
                    SandboxIds { uid: n, gid: n }
                }
            }
        }
        None => dynamic_ids(dir, |id| {
            matches!(User::from_uid(Uid::from_raw(id)), Ok(None))
                && matches!(Group::from_gid(Gid::from_raw(id)), Ok(None))
        })
        .ok_or_else(|| {
            format!(
                "no free id in {}-{} for the sandbox: give one with --user",
                DYNAMIC_IDS.0, DYNAMIC_IDS.1
            )
        })?,
    };
    if ids.uid == 0 || ids.gid == 0 || ids.uid == u32::MAX || ids.gid == u32::MAX {
        return Err(format!(
            "--user: the sandbox must not run as root (uid {}, gid {}); give an unprivileged user",
            ids.uid, ids.gid
        ));
    }
    Ok(Some(ids))
}

/// The first id of [`DYNAMIC_IDS`], starting at a hash of `dir` (FNV-1a) and wrapping, for
/// which `free` holds (uid = gid).
pub fn dynamic_ids(dir: &Path, free: impl Fn(u32) -> bool) -> Option<SandboxIds> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let (first, last) = DYNAMIC_IDS;
    let n = u64::from(last - first + 1);
    (0..n)
        .map(|i| first + ((h + i) % n) as u32)
        .find(|id| free(*id))
        .map(|id| SandboxIds { uid: id, gid: id })
}

/// Unshares every namespace in `flags` (which include `CLONE_NEWUSER`) and maps the current
/// uid and gid to root inside.
fn unshare_as_root(flags: CloneFlags) -> Result<(), SandboxError> {
    let uid = getuid();
    let gid = getgid();
    // A process that changed ids, or inherited a non-dumpable flag, has /proc/self owned by
    // the host's root and could not write its own maps.
    nix::sys::prctl::set_dumpable(true).map_err(step("PR_SET_DUMPABLE"))?;
    unshare(flags).map_err(step("unshare"))?;
    write_file("/proc/self/setgroups", "deny", "setgroups")?;
    write_file("/proc/self/uid_map", &format!("0 {uid} 1"), "uid_map")?;
    write_file("/proc/self/gid_map", &format!("0 {gid} 1"), "gid_map")?;
    Ok(())
}

const ALL_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWPID);

/// Mounts a small tmpfs on `scratch`, lets `populate` fill it, pivots into it and detaches
/// the old root.
fn pivot_into_tmpfs(
    scratch: &Path,
    size: &str,
    populate: impl FnOnce(&Path) -> Result<(), SandboxError>,
) -> Result<(), SandboxError> {
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
        Some(format!("size={size},mode=0755").as_str()),
    )
    .map_err(step("mounting the tmpfs root"))?;
    populate(scratch)?;
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
    Ok(())
}

/// Enters a port child's sandbox. `scratch` is an existing directory (hidden afterwards) to
/// mount the new root on. Returns in the grandchild only; the intermediate process exits.
pub fn enter(scratch: &Path) -> Result<(), SandboxError> {
    unshare_as_root(ALL_NAMESPACES)?;
    match sys::fork().map_err(io_step("fork into the PID namespace"))? {
        Forked::Parent(pid) => {
            // The intermediate: wait for the worker and exit with its status.
            let code = wait_exit_code(Pid::from_raw(pid));
            std::process::exit(code);
        }
        Forked::Child => {}
    }
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("PR_SET_PDEATHSIG"))?;
    pivot_into_tmpfs(scratch, "64k", |_| Ok(()))?;
    nix::sys::prctl::set_dumpable(false).map_err(step("PR_SET_DUMPABLE"))?;
    Ok(())
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn wait_exit_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(s) => {
                if let Some(c) = exit_code(s) {
                    return c;
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// The main process's handle on its sandbox (held by PID 1).
#[derive(Debug)]
pub struct MainSandbox {
    outer: OwnedFd,
}

impl MainSandbox {
    /// The config directory inside the sandbox.
    pub fn config_dir(&self) -> PathBuf {
        PathBuf::from(CONFIG_MOUNT)
    }

    /// The pid of `pid` (a child of this process) as the outer process's namespace (usually
    /// the host's) sees it, or `None` when the outer process does not answer.
    pub fn host_pid(&self, pid: i32) -> Option<i32> {
        let creds = UnixCredentials::from(libc::ucred {
            pid,
            uid: getuid().as_raw(),
            gid: getgid().as_raw(),
        });
        let body = pid.to_ne_bytes();
        let fd = self.outer.as_raw_fd();
        sendmsg::<()>(
            fd,
            &[IoSlice::new(&body)],
            &[ControlMessage::ScmCredentials(&creds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .ok()?;
        // The reply echoes the request, so a late answer to an earlier request is skipped.
        for _ in 0..8 {
            if !sys::wait_readable(fd, 1000) {
                return None;
            }
            let mut buf = [0u8; 8];
            let n = nix::sys::socket::recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT).ok()?;
            if n == 0 {
                return None;
            }
            if n == 8 && buf[..4] == body {
                let host = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
                return (host > 0).then_some(host);
            }
        }
        None
    }
}

/// Enters the main process's sandbox (see the module documentation). `dir` is the config
/// directory: absolute, canonical and existing. Returns in the sandboxed main process (PID 1
/// of the new PID namespace, root at the new tmpfs, the config directory at
/// [`CONFIG_MOUNT`]); the process that called it stays outside as the outer process and never
/// returns. Must run before the process has threads.
pub fn enter_main(
    dir: &Path,
    ids: Option<SandboxIds>,
    seccomp_mode: SeccompMode,
) -> Result<MainSandbox, SandboxError> {
    if dir == Path::new("/") || dir.starts_with("/proc") || dir.starts_with("/dev") {
        return Err(SandboxError::BadDir(dir.display().to_string()));
    }
    if let Some(ids) = ids {
        drop_privileges(dir, ids)?;
    }
    chdir("/").map_err(step("chdir /"))?;
    let (outer_end, main_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(step("socketpair"))?;
    setsockopt(&outer_end, sockopt::PassCred, &true).map_err(step("SO_PASSCRED"))?;
    unshare_as_root(ALL_NAMESPACES)?;
    match sys::fork().map_err(io_step("fork into the PID namespace"))? {
        Forked::Parent(pid) => {
            drop(main_end);
            outer_main(Pid::from_raw(pid), outer_end, seccomp_mode)
        }
        Forked::Child => {}
    }
    drop(outer_end);
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("PR_SET_PDEATHSIG"))?;
    // The outer process may have died before PR_SET_PDEATHSIG: its end is closed then.
    let mut fds = [PollFd::new(main_end.as_fd(), PollFlags::empty())];
    if poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
    {
        std::process::exit(1);
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("making mounts private"))?;
    // A detached copy of the config directory, attached at /config once the tmpfs hides it.
    let config = sys::clone_tree(dir).map_err(io_step("cloning the config directory mount"))?;
    pivot_into_tmpfs(dir, "64k", |root| populate_main_root(root, &config))?;
    drop(config);
    nix::sys::prctl::set_dumpable(false).map_err(step("PR_SET_DUMPABLE"))?;
    Ok(MainSandbox { outer: main_end })
}

/// Started as root: give the config directory to `ids` and become them for good.
fn drop_privileges(dir: &Path, ids: SandboxIds) -> Result<(), SandboxError> {
    let uid = Uid::from_raw(ids.uid);
    let gid = Gid::from_raw(ids.gid);
    nix::unistd::chown(dir, Some(uid), Some(gid))
        .map_err(step("giving the config directory to the sandbox user"))?;
    nix::unistd::setgroups(&[]).map_err(step("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(step("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(step("setresuid"))?;
    Ok(())
}

/// Fills the main process's new root: `/config`, `/dev/{null,zero,urandom}`, `/proc`, `/tmp`.
fn populate_main_root(root: &Path, config: &OwnedFd) -> Result<(), SandboxError> {
    let dir_mode = Mode::from_bits_truncate(0o755);
    let target = root.join(CONFIG_MOUNT.trim_start_matches('/'));
    mkdir(&target, dir_mode).map_err(step("mkdir /config"))?;
    sys::attach_tree(config, &target).map_err(io_step("mounting the config directory"))?;
    restrict_bind(
        &target,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    );

    let dev = root.join("dev");
    mkdir(&dev, dir_mode).map_err(step("mkdir /dev"))?;
    for name in ["null", "zero", "urandom"] {
        let node = dev.join(name);
        std::fs::File::create(&node).map_err(io_step("creating a /dev mount point"))?;
        mount(
            Some(Path::new("/dev").join(name).as_path()),
            &node,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(step("bind-mounting /dev/null, /dev/zero, /dev/urandom"))?;
        restrict_bind(
            &node,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        );
    }

    let proc = root.join("proc");
    mkdir(&proc, Mode::from_bits_truncate(0o555)).map_err(step("mkdir /proc"))?;
    let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // subset=pid (Linux 5.8) leaves out /proc/sys and every other non-process file.
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        proc_flags,
        Some("subset=pid"),
    )
    .or_else(|_| mount(Some("proc"), &proc, Some("proc"), proc_flags, None::<&str>))
    .map_err(step(
        "mounting /proc (the kernel refuses it in a user namespace when parts of /proc are mounted over, as systemd's ProtectKernelTunables= and ProtectKernelLogs= do)",
    ))?;

    let tmp = root.join("tmp");
    mkdir(&tmp, dir_mode).map_err(step("mkdir /tmp"))?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=1m,mode=1777"),
    )
    .map_err(step("mounting /tmp"))?;
    Ok(())
}

/// Adds `extra` flags to the bind mount at `path`, keeping the flags it already has (a user
/// namespace may not clear them). Best effort: the mount is usable without them.
fn restrict_bind(path: &Path, extra: MsFlags) {
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | extra;
    if let Ok(st) = statvfs(path) {
        let have = st.flags();
        for (fs, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if have.contains(fs) {
                flags |= ms;
            }
        }
    }
    if let Err(e) = mount(None::<&str>, path, None::<&str>, flags, None::<&str>) {
        warn!(
            "sandbox: could not restrict the mount {}: {e}",
            path.display()
        );
    }
}

/// The outer process: forwards SIGTERM, SIGINT and SIGHUP to `main`, answers pid
/// translations on `sock`, and exits with `main`'s status when it ends.
fn outer_main(main: Pid, sock: OwnedFd, seccomp_mode: SeccompMode) -> ! {
    let _ = nix::sys::prctl::set_dumpable(false);
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    // The caller blocked these signals before forking; they wait for this signalfd.
    let signals = match SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vm-switch: sandbox: signalfd for the outer process failed: {e}");
            let _ = kill(main, Signal::SIGKILL);
            std::process::exit(wait_exit_code(main).max(1));
        }
    };
    if seccomp_mode == SeccompMode::Trap {
        let _ = sys::install_sigsys_handler();
    }
    if let Err(e) = seccomp::apply_outer(seccomp_mode) {
        eprintln!("vm-switch: sandbox: outer process: {e}");
        let _ = kill(main, Signal::SIGKILL);
        std::process::exit(wait_exit_code(main).max(1));
    }
    let mut sock = Some(sock);
    loop {
        let (sig_ready, sock_ready) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if let Some(s) = &sock {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {
                    let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                    (ready(&fds[0]), fds.get(1).is_some_and(ready))
                }
                Err(nix::Error::EINTR) => continue,
                // Cannot happen with valid descriptors; reading both without blocking is safe.
                Err(_) => (true, fds.len() > 1),
            }
        };
        if sig_ready {
            while let Ok(Some(info)) = signals.read_signal() {
                let signo = info.ssi_signo as i32;
                if signo == Signal::SIGCHLD as i32 {
                    if let Ok(status) = waitpid(main, Some(WaitPidFlag::WNOHANG))
                        && let Some(code) = exit_code(status)
                    {
                        std::process::exit(code);
                    }
                } else if let Ok(sig) = Signal::try_from(signo) {
                    let _ = kill(main, sig);
                }
            }
        }
        if sock_ready
            && let Some(s) = &sock
            && !answer_pid(s.as_fd())
        {
            sock = None;
        }
    }
}

/// Answers one pid translation request: the request carries the pid as `SCM_CREDENTIALS`,
/// which the kernel translated into this process's PID namespace. Returns false when the
/// main process closed the channel.
fn answer_pid(sock: BorrowedFd<'_>) -> bool {
    let mut buf = [0u8; 4];
    let mut cmsg = nix::cmsg_space!(libc::ucred);
    let (n, host) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(msg) => {
                let host = msg
                    .cmsgs()
                    .ok()
                    .into_iter()
                    .flatten()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(u) => Some(u.pid()),
                        _ => None,
                    })
                    .unwrap_or(0);
                (msg.bytes, host)
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => return true,
            Err(_) => return false,
        }
    };
    if n == 0 {
        return false;
    }
    let mut reply = [0u8; 8];
    reply[..4].copy_from_slice(&buf);
    reply[4..].copy_from_slice(&host.to_ne_bytes());
    let _ = nix::sys::socket::send(
        sock.as_raw_fd(),
        &reply,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_dynamic_ids_are_stable_in_range_and_skip_taken_ids() {
        let a = dynamic_ids(Path::new("/run/vm-switch/lan"), |_| true).unwrap();
        let again = dynamic_ids(Path::new("/run/vm-switch/lan"), |_| true).unwrap();
        assert_eq!(a, again);
        assert_eq!(a.uid, a.gid);
        assert!((DYNAMIC_IDS.0..=DYNAMIC_IDS.1).contains(&a.uid));
        let skipped = dynamic_ids(Path::new("/run/vm-switch/lan"), |id| id != a.uid).unwrap();
        assert_ne!(skipped.uid, a.uid);
        assert!((DYNAMIC_IDS.0..=DYNAMIC_IDS.1).contains(&skipped.uid));
        assert_eq!(dynamic_ids(Path::new("/x"), |_| false), None);
    }

    #[test]
    fn test_sandbox_ids_refuse_root_and_user_without_root() {
        assert_eq!(sandbox_ids(None, Path::new("/d"), false), Ok(None));
        assert!(sandbox_ids(Some("nobody"), Path::new("/d"), false).is_err());
        assert!(sandbox_ids(Some("0"), Path::new("/d"), true).is_err());
        assert!(sandbox_ids(Some("root"), Path::new("/d"), true).is_err());
        assert!(
            sandbox_ids(Some("no-such-user-vm-switch"), Path::new("/d"), true)
                .unwrap_err()
                .contains("no such user")
        );
        let ids = sandbox_ids(Some("4242"), Path::new("/d"), true)
            .unwrap()
            .unwrap();
        assert_eq!(ids.uid, 4242);
        let dynamic = sandbox_ids(None, Path::new("/d"), true).unwrap().unwrap();
        assert!((DYNAMIC_IDS.0..=DYNAMIC_IDS.1).contains(&dynamic.uid));
    }
}
