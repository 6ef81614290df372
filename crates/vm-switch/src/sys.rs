//! Every `unsafe` operation of vm-switch: shared memory (memfd + mmap, atomics and copies on
//! memory another process writes), the new mount API (`open_tree`, `move_mount`) for the
//! sandbox, the process title, and the SIGSYS handler. `fork`, `_exit` and closing inherited
//! descriptors are vmsilo-sys's (shared with the gate), re-exported here.
//!
//! Each block carries a `// SAFETY:` comment. Callers get safe wrappers that check bounds and
//! alignment before touching memory.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use vm_memory::VolatileSlice;

pub use vmsilo_sys::{Forked, close_fds_except, exit_now, fork};

/// A `MAP_SHARED` mapping of a memfd that another process maps too.
///
/// The peer may write anything at any time, so the mapping is never exposed as a Rust
/// reference to plain data: reads and writes are byte copies through raw pointers, and the
/// few control words are accessed as atomics.
#[derive(Debug)]
pub struct SharedMem {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomics or raw byte
// copies (no references to non-atomic data), so using it from several threads is as safe as
// sharing it with the other process, which the design already assumes.
unsafe impl Send for SharedMem {}
// SAFETY: see `Send`; `&SharedMem` only allows atomic accesses and raw copies.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// Creates a sealed memfd of `len` bytes (size can no longer change) and maps it.
    pub fn create(name: &str, len: usize) -> std::io::Result<Self> {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        nix::unistd::ftruncate(&fd, len as i64)?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Self::map(fd, len)
    }

    /// Maps `len` bytes of a memfd received from elsewhere. Fails unless the file is sealed
    /// against shrinking and at least `len` bytes long, so the mapping cannot fault later.
    pub fn map(fd: OwnedFd, len: usize) -> std::io::Result<Self> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS)?;
        if seals & SealFlag::F_SEAL_SHRINK.bits() == 0 {
            return Err(bad("shared memory file is not sealed against shrinking"));
        }
        let st = nix::sys::stat::fstat(&fd)?;
        if (st.st_size as u64) < len as u64 {
            return Err(bad("shared memory file is smaller than announced"));
        }
        let length = NonZeroUsize::new(len).ok_or_else(|| bad("empty shared memory"))?;
        // SAFETY: a fresh mapping chosen by the kernel (no address hint), of a file we checked
        // is at least `len` bytes and cannot shrink; nothing else refers to this range.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )?
        };
        Ok(SharedMem {
            ptr: ptr.cast(),
            len,
            fd,
        })
    }

    /// The memfd (to pass to another process).
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `map` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize, align: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len) && offset.is_multiple_of(align)
    }

    /// The 32-bit atomic at `offset` (4-byte aligned, in bounds), or `None`.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if !self.check(offset, 4, 4) {
            return None;
        }
        // SAFETY: in bounds and aligned (checked; the mapping is page aligned); the memory
        // stays mapped for the lifetime of `&self`; AtomicU32 has the size and alignment of
        // u32 and atomics are the right type for memory another process writes concurrently.
        Some(unsafe { &*(self.ptr.as_ptr().add(offset) as *const AtomicU32) })
    }

    /// The 64-bit atomic at `offset` (8-byte aligned, in bounds), or `None`.
    pub fn atomic_u64(&self, offset: usize) -> Option<&AtomicU64> {
        if !self.check(offset, 8, 8) {
            return None;
        }
        // SAFETY: as in `atomic_u32`, with 8-byte size and alignment.
        Some(unsafe { &*(self.ptr.as_ptr().add(offset) as *const AtomicU64) })
    }

    /// Copies `out.len()` bytes at `offset` out of the mapping. Returns false when out of
    /// bounds. The bytes are a snapshot: the peer may change the source afterwards, never the
    /// copy.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if !self.check(offset, out.len(), 1) {
            return false;
        }
        // SAFETY: source range checked in bounds of the live mapping; the destination is a
        // distinct local buffer. A concurrent write by the peer can only produce arbitrary
        // bytes in the copy, which callers treat as untrusted.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        true
    }

    /// Appends `len` bytes at `offset` of the mapping to `out`, without first zeroing the
    /// room for them (a frame-sized `resize` before every copy cost more than the copy).
    /// Returns false, leaving `out` as it was, when out of bounds.
    pub fn read_append(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
        if !self.check(offset, len, 1) {
            return false;
        }
        out.reserve(len);
        let spare = out.spare_capacity_mut();
        // SAFETY: source range checked in bounds of the live mapping; the destination is the
        // vector's own spare capacity, at least `len` bytes after `reserve`, distinct from
        // the mapping. `copy_nonoverlapping` initializes those `len` bytes (a concurrent
        // write by the peer only changes which bytes they are), so the new length covers
        // initialized memory only.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                spare.as_mut_ptr().cast::<u8>(),
                len,
            );
            out.set_len(out.len() + len);
        }
        true
    }

    /// The `len` bytes at `offset` as a [`VolatileSlice`], to copy guest memory straight into
    /// the mapping (`VolatileSlice::copy_to_volatile_slice`). `None` when out of bounds.
    pub fn volatile_slice(&self, offset: usize, len: usize) -> Option<VolatileSlice<'_>> {
        if !self.check(offset, len, 1) {
            return None;
        }
        // SAFETY: the range is checked in bounds of the live, writable mapping, which outlives
        // the returned slice (it borrows `self`). A `VolatileSlice` only ever accesses the
        // memory through raw pointer copies and volatile accesses, never as a Rust reference,
        // which is what memory another process may write concurrently needs.
        Some(unsafe { VolatileSlice::new(self.ptr.as_ptr().add(offset), len) })
    }

    /// Copies `data` into the mapping at `offset`. Returns false when out of bounds.
    pub fn write(&self, offset: usize, data: &[u8]) -> bool {
        if !self.check(offset, data.len(), 1) {
            return false;
        }
        // SAFETY: destination range checked in bounds of the live, writable mapping; source is
        // a distinct local buffer; no Rust reference to the destination exists.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        true
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map`, and no reference into
        // it outlives `self` (accessors borrow `self`).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A detached copy of the mount tree at a directory (`open_tree(2)` with `OPEN_TREE_CLONE`,
/// recursive), to attach elsewhere with [`attach_tree`] even after the directory itself has
/// been mounted over. Needs mount privileges in the current mount namespace (Linux 5.2).
pub fn clone_tree(dir: &std::path::Path) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_long = 1;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = OPEN_TREE_CLONE
        | libc::c_long::from(libc::O_CLOEXEC)
        | libc::c_long::from(libc::AT_RECURSIVE);
    // SAFETY: open_tree(2) reads the NUL-terminated path, which lives for the call, and
    // returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::c_long::from(libc::AT_FDCWD),
            path.as_ptr(),
            flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us; it has no other owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a tree from [`clone_tree`] on `target` (`move_mount(2)`).
pub fn attach_tree(tree: &OwnedFd, target: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
    let to = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: move_mount(2) reads two NUL-terminated paths (an empty one and `to`), both
    // alive for the call; `tree` is a valid descriptor we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            libc::c_long::from(tree.as_raw_fd()),
            c"".as_ptr(),
            libc::c_long::from(libc::AT_FDCWD),
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout_ms` passed. Returns whether it is readable.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack; poll(2) only reads `fd` as a number (an invalid
    // fd yields POLLNVAL, not undefined behaviour).
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

/// Opens (creating if needed) the tap interface `name` without packet information headers.
/// Used by the benchmark's Linux-bridge baseline; needs CAP_NET_ADMIN.
pub fn open_tap(name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: i16 = 0x0002;
    const IFF_NO_PI: i16 = 0x1000;
    if name.is_empty() || name.len() >= 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface names have 1 to 15 bytes",
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // struct ifreq: char ifr_name[16]; short ifr_flags; (padded to 40 bytes)
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq; `ifr` is a 40-byte buffer (the size
    // of struct ifreq on x86_64) that lives for the call; the fd is valid.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Asks the scheduler for a short time slice for the calling thread (`sched_attr.sched_runtime`
/// of a `SCHED_OTHER` thread, Linux 6.12+ EEVDF), keeping its policy and nice value. A thread
/// with a short slice gets an early deadline and so runs soon after it is woken, instead of
/// waiting for a busy vCPU thread's longer slice to end; its share of the CPU stays the same.
/// Kernels before 6.12 accept and ignore the request. The kernel clamps `ns` to 0.1–100 ms.
pub fn request_slice(ns: u64) -> std::io::Result<()> {
    let mut attr = sched_getattr(0)?;
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        // An explicit policy (batch, idle or real-time, set by whoever started us) stays.
        return Ok(());
    }
    attr.sched_flags = 0;
    attr.sched_runtime = ns;
    // SAFETY: sched_setattr(2) on the calling thread reads `size` bytes of `attr`, a live local;
    // policy and nice are the ones just read, only the slice request changes.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0 as libc::c_long, &attr, 0u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The scheduling attributes of thread `pid` (0: the calling thread), with `size` set to the
/// struct's size, ready to be written back with `sched_setattr`.
pub(crate) fn sched_getattr(pid: libc::pid_t) -> std::io::Result<libc::sched_attr> {
    let size = std::mem::size_of::<libc::sched_attr>() as u32;
    // SAFETY: all-zero bytes are a valid `sched_attr` (plain integers).
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getattr(2) writes at most `size` bytes into `attr`, a live local of exactly
    // that size; flags must be 0. The pid is passed full-width, as seccomp compares it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            libc::c_long::from(pid),
            &mut attr,
            size,
            0u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    attr.size = size;
    Ok(attr)
}

/// Sets the process title shown by `ps` (the argv area) and the thread name (`comm`,
/// truncated to 15 bytes). Best effort: does nothing when /proc is unavailable.
pub fn set_process_title(title: &str) {
    let comm: String = title.chars().take(15).collect();
    let _ = nix::sys::prctl::set_name(&std::ffi::CString::new(comm).unwrap_or_default());
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // arg_start and arg_end are fields 48 and 49 of stat(5); `rest` starts at field 3.
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|s| s.parse::<usize>().ok()),
        fields.get(46).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        return;
    };
    if end <= start + 1 || end - start > 1 << 20 {
        return;
    }
    let area = end - start;
    let bytes = title.as_bytes();
    let n = bytes.len().min(area - 1);
    // SAFETY: [arg_start, arg_end) is this process's own argv string area, mapped and
    // writable on the initial stack for the whole life of the process. No Rust reference into
    // it exists: std keeps only the raw argv pointers and copies the strings out on each
    // `std::env::args()` call (which afterwards reads the new title, still NUL-terminated
    // inside the area because the last byte written is 0). Writing bytes there is how
    // setproctitle works.
    unsafe {
        let p = start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n);
        std::ptr::write_bytes(p.add(n), 0, area - n);
    }
}

/// Installs a SIGSYS handler that writes the number of the offending system call to stderr
/// (for `--seccomp-mode trap`) and exits the process with status 159 (128 + SIGSYS).
pub fn install_sigsys_handler() -> std::io::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::SigAction(sigsys_handler),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions (write, _exit) and touches
    // no Rust state.
    unsafe { sigaction(Signal::SIGSYS, &action) }?;
    Ok(())
}

extern "C" fn sigsys_handler(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    let mut msg = *b"vm-switch: seccomp: blocked system call 00000\n";
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers. For SIGSYS the
    // si_syscall field sits right after si_code/si_errno, the pointer si_call_addr, in the
    // union (offset 16 + 8 on x86_64).
    let nr = unsafe {
        let base = info as *const u8;
        std::ptr::read_unaligned(base.add(24) as *const i32)
    };
    let mut n = nr.unsigned_abs();
    for i in (0..5).rev() {
        msg[40 + i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a local array.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(159);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn test_shared_mem_two_mappings_see_each_other() {
        let a = SharedMem::create("t", 4096).unwrap();
        let fd = a.fd().try_clone().unwrap();
        let b = SharedMem::map(fd, 4096).unwrap();
        a.atomic_u32(64).unwrap().store(7, Ordering::Release);
        assert_eq!(b.atomic_u32(64).unwrap().load(Ordering::Acquire), 7);
        assert!(a.write(100, b"hello"));
        let mut out = [0u8; 5];
        assert!(b.read(100, &mut out));
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn test_shared_mem_rejects_out_of_bounds_and_misaligned() {
        let a = SharedMem::create("t", 4096).unwrap();
        assert!(a.atomic_u32(4094).is_none());
        assert!(a.atomic_u32(2).is_none());
        assert!(a.atomic_u64(4).is_none());
        assert!(!a.write(4095, b"ab"));
        assert!(!a.read(usize::MAX, &mut [0u8; 2]));
    }

    #[test]
    fn test_shared_mem_map_refuses_unsealed_or_short_files() {
        let fd = memfd_create("u", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        assert!(SharedMem::map(fd, 4096).is_err());
        let a = SharedMem::create("t", 4096).unwrap();
        assert!(SharedMem::map(a.fd().try_clone().unwrap(), 8192).is_err());
    }

    #[test]
    fn test_read_append_appends_without_touching_what_was_there() {
        let a = SharedMem::create("t", 4096).unwrap();
        assert!(a.write(10, b"world"));
        let mut out = b"hello ".to_vec();
        assert!(a.read_append(10, 5, &mut out));
        assert_eq!(out, b"hello world");
        assert!(
            !a.read_append(4094, 5, &mut out),
            "out of bounds is refused"
        );
        assert_eq!(out, b"hello world", "and leaves the vector as it was");
    }

    #[test]
    fn test_request_slice_sets_the_calling_threads_slice() {
        std::thread::spawn(|| {
            request_slice(100_000).unwrap();
            // Kernels with EEVDF custom slices (6.12+) and scheduler debug info show it.
            let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
            if let Some(line) = sched.lines().find(|l| l.starts_with("se.slice")) {
                let v: u64 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
                assert_eq!(v, 100_000, "{line}");
            }
        })
        .join()
        .unwrap();
    }
}
