//! The crate's only unsafe code: `pre_exec` hooks for the processes the runtime starts (signal
//! mask and parent-death signal, passing a descriptor, the network and mount namespaces of the
//! gate and waypipe), adopting inherited descriptors (the
//! socket-activation one, the shared home of `fill-home`), reading a terminal's size, and
//! creating a persistent TAP (the tun ioctls).

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
            // The parent died before prctl: nobody would send the signal (nor read this error,
            // which is why a plain errno, which needs no allocation, is enough).
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

/// `LISTEN_FDS_START` of sd_listen_fds(3): the first descriptor systemd passes.
const LISTEN_FDS_START: i32 = 3;

/// The first socket passed by socket activation (sd_listen_fds(3)): `LISTEN_PID` must be this
/// process and `LISTEN_FDS` at least 1. The descriptor is made close-on-exec, so the programs
/// this process starts do not inherit it. `None` when nothing was passed (or it was taken
/// already); the caller checks that it is the kind of socket it expects.
pub fn take_listen_fd() -> Option<std::os::fd::OwnedFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    if pid != std::process::id() || count == 0 {
        return None;
    }
    take_inherited_fd(LISTEN_FDS_START)
}

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// The size of the terminal on `fd` as (rows, columns); `None` if it is not a terminal or
/// reports 0×0.
pub fn window_size(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to a
    // live, properly aligned local of that type; `fd` is a valid borrowed descriptor.
    // JUSTIFICATION: nix has no safe wrapper for TIOCGWINSZ.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Makes the child of `cmd` receive `fd` (open in this process until `spawn` returns) as
/// descriptor `target`, inheritable. `fd` must be above 2 (the child's stdio is set up before
/// this hook runs and would replace it).
pub fn pass_fd(cmd: &mut Command, fd: std::os::fd::RawFd, target: std::os::fd::RawFd) {
    // SAFETY: the closure runs in the forked child before exec; it only calls dup2(2) or
    // fcntl(2), which are async-signal-safe, and allocates nothing and takes no lock. `fd` is
    // open in the parent when it forks (the caller keeps it open until spawn returns), so it
    // is open in the child. dup2 to another number gives a descriptor without FD_CLOEXEC; when
    // `fd` already is `target`, FD_CLOEXEC is cleared on it instead.
    // JUSTIFICATION: std's Command cannot pass a descriptor on stable Rust.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == target {
                nix::libc::fcntl(fd, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(fd, target)
            };
            if r == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Adopts descriptor `n`, inherited from the process that started this one (systemd passes the
/// socket-activation socket this way, vm-service the shared home of `vmsilo fill-home`), made
/// close-on-exec, so the programs this process starts do not inherit it. `None` if it is not
/// open, or was taken already. Call it only for a number the parent passed, before this
/// process opens anything that could get that number.
pub fn take_inherited_fd(n: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;

    use nix::fcntl::{FcntlArg, FdFlag, fcntl};

    static TAKEN: Mutex<Vec<std::os::fd::RawFd>> = Mutex::new(Vec::new());
    if n <= 2 {
        return None;
    }
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if taken.contains(&n) {
        return None;
    }
    // SAFETY: only borrowed for the F_GETFD/F_SETFD calls below, which fail harmlessly (EBADF)
    // if descriptor `n` is not open.
    // JUSTIFICATION: std offers no way to name an inherited descriptor number without unsafe.
    let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
    let flags = fcntl(borrowed, FcntlArg::F_GETFD).ok()?;
    fcntl(
        borrowed,
        FcntlArg::F_SETFD(FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    taken.push(n);
    // SAFETY: descriptor `n` is open (F_GETFD succeeded) and above stdio; the parent passed it
    // (the callers check LISTEN_PID, or are `vmsilo fill-home`, which vm-service starts with
    // the home on it) and nothing else in this process owns it (std and this crate never open
    // it implicitly, the callers run before opening anything, and TAKEN makes this the only
    // owner).
    // JUSTIFICATION: adopting an inherited descriptor needs from_raw_fd.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

/// `struct mount_attr` of mount_setattr(2) (linux/mount.h; not in the libc crate).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
/// `AT_RECURSIVE` (linux/fcntl.h): the whole mount tree below the path.
const AT_RECURSIVE: nix::libc::c_int = 0x8000;

/// Confines the child of `cmd` before it becomes `uid`/`gid` (supplementary groups dropped):
/// a fresh network namespace (only a loopback, down: no network at all) and a private mount
/// namespace where each of `hidden` (existing directories) is covered by an empty tmpfs, every
/// mount is read-only and nosuid, except `writable` (bind-mounted onto itself, writable,
/// nodev, noexec). Register it before [`prepare_child`], whose parent-death signal must be
/// set after the identity change.
///
/// A unix socket on a read-only mount can still be connected to, so the confined program
/// reaches the compositor's socket; it can create files only in `writable`. Fails (and the
/// spawn with it) if any step fails, e.g. on kernels before 5.12 (no mount_setattr): a backend
/// is never started less confined than asked.
pub fn confine_child(
    cmd: &mut Command,
    uid: u32,
    gid: u32,
    writable: &std::path::Path,
    hidden: &[std::path::PathBuf],
) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;

    use nix::libc;

    let cstring = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", p.display()))
    };
    let dir = cstring(writable)?;
    let hidden: Vec<std::ffi::CString> = hidden
        .iter()
        .map(|p| cstring(p))
        .collect::<Result<_, _>>()?;
    let tmpfs = c"tmpfs";
    let tmpfs_options = c"mode=0755,size=4k";
    let root = c"/";
    let size = std::mem::size_of::<MountAttr>();
    let read_only = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let writable_attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        attr_clr: MOUNT_ATTR_RDONLY,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the closure runs in the forked (single-threaded) child before exec. It only
    // makes raw system calls (unshare, mount, mount_setattr, setgroups, setgid, setuid), which
    // are async-signal-safe, with pointers to NUL-terminated strings (`dir`, `root`, `hidden`,
    // `tmpfs`, `tmpfs_options`) and to the two `MountAttr` values, all moved into the closure
    // and alive while it runs; it allocates nothing (io::Error::last_os_error holds a plain
    // errno) and takes no lock.
    // JUSTIFICATION: std and nix offer no pre-exec namespace setup, and nix has no
    // mount_setattr.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_long| {
                if r == -1 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            let null = std::ptr::null::<libc::c_char>();
            check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS).into())?;
            // Nothing mounted here may propagate back to the runtime's namespace.
            check(
                libc::mount(
                    null,
                    root.as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
                .into(),
            )?;
            for h in &hidden {
                check(
                    libc::mount(
                        tmpfs.as_ptr(),
                        h.as_ptr(),
                        tmpfs.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        tmpfs_options.as_ptr().cast(),
                    )
                    .into(),
                )?;
            }
            check(
                libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                )
                .into(),
            )?;
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                root.as_ptr(),
                AT_RECURSIVE,
                &read_only as *const MountAttr,
                size,
            ))?;
            check(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                dir.as_ptr(),
                0,
                &writable_attr as *const MountAttr,
                size,
            ))?;
            check(libc::setgroups(0, std::ptr::null()).into())?;
            check(libc::setgid(gid).into())?;
            check(libc::setuid(uid).into())?;
            Ok(())
        });
    }
    Ok(())
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union).
#[repr(C)]
struct TunIfReq {
    name: [u8; 16],
    flags: nix::libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<nix::libc::c_int>()),
    TunIfReq
);
nix::ioctl_write_int!(tunsetpersist, b'T', 203);
nix::ioctl_write_int!(tunsetowner, b'T', 204);

/// Creates the persistent TAP `name` (no packet information header, as `ip tuntap add mode
/// tap` does) owned by `uid`. Fails with EBUSY-like errors if a device of that name exists and
/// is in use. `name` must be at most 15 bytes without NUL.
pub fn create_persistent_tap(name: &str, uid: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;

    const IFF_TAP: nix::libc::c_short = 0x0002;
    const IFF_NO_PI: nix::libc::c_short = 0x1000;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 15 || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = TunIfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    let fd = tun.as_raw_fd();
    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `tun`, alive for these calls;
    // TUNSETIFF reads one `struct ifreq` (40 bytes, which TunIfReq is, NUL-terminated name)
    // from a live local; TUNSETOWNER and TUNSETPERSIST take plain integers.
    // JUSTIFICATION: nix has no safe wrapper for the tun ioctls, and rtnetlink cannot create
    // TAPs (the kernel's tun driver refuses RTM_NEWLINK).
    unsafe {
        tunsetiff(fd, &req)?;
        tunsetowner(fd, nix::libc::c_ulong::from(uid))?;
        tunsetpersist(fd, 1)?;
    }
    Ok(())
}
