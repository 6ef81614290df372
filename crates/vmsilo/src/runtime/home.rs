//! The shared home: created on first use from the home template, owned by the configured user.
//!
//! vm-service runs as root, but the user owns the directory the home lives in (`/shared`) and
//! the template, and may change both while vm-service works on them. So:
//!
//! - The path to the home is walked one component at a time from `/` with `O_NOFOLLOW`: a
//!   symbolic link anywhere on it (the home itself included) is refused, and so is anything
//!   that is not a directory. Missing ancestors are created by root (mode 0755).
//! - A missing home is created by root with `mkdirat` and then given to the user through a
//!   descriptor (`fchown`/`fchmod`), after checking that the directory opened is the one root
//!   created. An existing empty home is given to the user through the descriptor opened
//!   without following links. Nothing is ever chowned or chmodded by name.
//! - The template is copied by a child process that has dropped to the user's uid and gid
//!   (no supplementary groups) before it runs [`fill`] (`vmsilo fill-home`, hidden), with the
//!   home on descriptor 3. The kernel checks every read and write as the user's, and
//!   everything it creates belongs to the user from the start. The child also follows no
//!   link: entries are opened with `O_NOFOLLOW`, created with `O_EXCL`, and symbolic links are
//!   copied as links.
//! - If the copy fails, what it left is removed, again relative to descriptors and without
//!   following links, so the next start tries again.

use std::ffi::{CStr, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

/// The descriptor on which `vmsilo fill-home` receives the home directory.
pub const FILL_HOME_FD: i32 = 3;

/// How deep a template (or a home being removed) may nest directories: each level holds two
/// descriptors open, and a user-made tree must not exhaust them or the stack.
const MAX_DEPTH: usize = 64;

/// How much of the fill child's error output is kept.
const MAX_CHILD_STDERR: u64 = 4096;

/// Why the shared home could not be prepared, removed or filled. The failed system call's error
/// is part of each message (a field, not a `source`), because the runtime logs these with
/// `Display` alone and some messages go on with advice after it.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// A system call on `path` failed (`cannot open /home/x: EACCES`).
    #[error("cannot {what} {}: {error}", path.display())]
    Io {
        /// What was being done, as a verb phrase.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        error: Errno,
    },
    /// The directory could not be given to the user.
    #[error("cannot give {} to uid {uid}: {error}", path.display())]
    Give {
        /// The directory.
        path: PathBuf,
        /// The user.
        uid: u32,
        /// The error.
        error: Errno,
    },
    /// Copying a file's content failed.
    #[error("cannot copy {}: {error}", path.display())]
    Copy {
        /// The file in the template.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A symbolic link on the way to the home, or in its place.
    #[error(
        "{} is a symbolic link: refusing to follow it, as root, into a directory the user \
         picked; replace it with a real directory (or set sharedHome to the real path)",
        path.display()
    )]
    SymbolicLink {
        /// The link.
        path: PathBuf,
    },
    /// Something other than a directory where a directory must be.
    #[error("{} is not a directory: move it away or set sharedHome to another path", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The configured home is not an absolute path ending in a name.
    #[error("{}: a shared home must be an absolute path ending in a name", path.display())]
    NotAbsolute {
        /// The path.
        path: PathBuf,
    },
    /// The configured home's path has a `..`.
    #[error("{}: a shared home's path must not contain \"..\"", path.display())]
    ParentDir {
        /// The path.
        path: PathBuf,
    },
    /// The home vmsilo created was replaced since: left alone.
    #[error("{} is no longer the directory vmsilo created: leaving it", path.display())]
    NoLongerOurs {
        /// The home.
        path: PathBuf,
    },
    /// The home was replaced between its creation and its opening.
    #[error(
        "{} was replaced while vmsilo created it (now owned by uid {owner}): not touching it",
        path.display()
    )]
    Replaced {
        /// The home.
        path: PathBuf,
        /// Who owns what is there now.
        owner: u32,
    },
    /// `fill-home`'s descriptor 3 could not be inspected.
    #[error("descriptor {FILL_HOME_FD}: {error}")]
    Descriptor {
        /// The error.
        error: Errno,
    },
    /// `fill-home`'s descriptor 3 is not a directory.
    #[error("descriptor {FILL_HOME_FD} is not a directory (vm-service passes the home there)")]
    DescriptorNotDir,
    /// `fill-home` was started without a descriptor 3.
    #[error(
        "no directory on descriptor {FILL_HOME_FD}: fill-home is started by vm-service, not by hand"
    )]
    NotInherited,
    /// The template could not be opened.
    #[error("cannot open the home template {}: {error}", path.display())]
    OpenTemplate {
        /// The template.
        path: PathBuf,
        /// The error.
        error: Errno,
    },
    /// The template nests too deep.
    #[error("{}: directories nest deeper than {MAX_DEPTH} levels", path.display())]
    TooDeep {
        /// Where.
        path: PathBuf,
    },
    /// The home's descriptor could not be duplicated for the child.
    #[error("cannot duplicate the home's descriptor: {error}")]
    Duplicate {
        /// The error.
        error: std::io::Error,
    },
    /// `fill-home` could not be started.
    #[error(
        "cannot start {} fill-home as uid {uid} to copy the home template: {error}",
        helper.display()
    )]
    StartFill {
        /// This program.
        helper: PathBuf,
        /// The user.
        uid: u32,
        /// The error.
        error: std::io::Error,
    },
    /// Waiting for `fill-home` failed.
    #[error("cannot wait for fill-home: {error}")]
    WaitFill {
        /// The error.
        error: std::io::Error,
    },
    /// `fill-home` failed.
    #[error("copying the home template {} as uid {uid} failed ({status}): {message}", template.display())]
    FillFailed {
        /// The template.
        template: PathBuf,
        /// The user.
        uid: u32,
        /// Its exit status, described.
        status: String,
        /// What it printed (control characters blanked), or "no message".
        message: String,
    },
    /// The copy failed, and so did removing what it left.
    #[error("{error} (and cannot remove what was copied: {cleanup})")]
    Cleanup {
        /// Why the copy failed.
        error: Box<HomeError>,
        /// Why the removal failed.
        cleanup: Errno,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> HomeError {
    let path = path.to_path_buf();
    move |error| HomeError::Io { what, path, error }
}

fn give_err(path: &Path, uid: u32) -> impl FnOnce(Errno) -> HomeError {
    let path = path.to_path_buf();
    move |error| HomeError::Give { path, uid, error }
}

/// The identity of a directory vm-service created (device and inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    dev: u64,
    ino: u64,
}

impl DirId {
    fn of(st: &FileStat) -> DirId {
        DirId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The home existed with content: untouched.
    Existing,
    /// It existed but was empty: given to the user and filled from the template.
    Filled,
    /// It did not exist: created (and filled from the template if there is one). The id lets
    /// [`remove_created`] remove exactly this directory.
    Created(DirId),
}

/// Makes sure `home` exists, giving it the template's content the first time (when it is
/// missing or empty) and `uid`/`gid` ownership of it and everything copied. The copy runs as
/// `uid`/`gid` in `helper fill-home` (`helper` is this program: `/proc/self/exe`). Symlinks in
/// the template are copied as symlinks; special files are skipped. A symbolic link on the way
/// to the home, or in its place, is an error and nothing is written.
pub fn prepare(
    home: &Path,
    template: &Path,
    uid: u32,
    gid: u32,
    helper: &Path,
) -> Result<Prepared, HomeError> {
    let (parent, name) = split(home)?;
    let parent_fd = open_dir_path(parent, true)?;
    let (home_fd, outcome) = match open_dir_at(&parent_fd, name) {
        Ok(fd) => {
            if !is_empty_fd(&fd).map_err(io("read", home))? {
                return Ok(Prepared::Existing);
            }
            give(&fd, uid, gid).map_err(give_err(home, uid))?;
            (fd, Prepared::Filled)
        }
        Err(Errno::ENOENT) => {
            let (fd, id) = create_dir_at(&parent_fd, name, home, uid, gid)?;
            (fd, Prepared::Created(id))
        }
        Err(e) => return Err(refusal(&parent_fd, name, home, e)),
    };
    if template.is_dir()
        && let Err(e) = fill_as(&home_fd, template, uid, gid, helper)
    {
        // Leave no half-filled home behind: the next start fills it again.
        let cleanup = match outcome {
            Prepared::Created(_) => clear_dir(&home_fd, uid, 0)
                .and_then(|()| unlinkat(&parent_fd, name, UnlinkatFlags::RemoveDir)),
            _ => clear_dir(&home_fd, uid, 0),
        };
        return Err(match cleanup {
            Ok(()) => e,
            Err(c) => HomeError::Cleanup {
                error: Box::new(e),
                cleanup: c,
            },
        });
    }
    Ok(outcome)
}

/// Removes the home [`prepare`] created (`id`) for `uid`, with everything in it, following no
/// link: a path that now leads elsewhere (or through a symbolic link) is left alone, and so is
/// anything in it that is not in a directory `uid` owns.
pub fn remove_created(home: &Path, id: DirId, uid: u32) -> Result<(), HomeError> {
    let (parent, name) = split(home)?;
    let parent_fd = open_dir_path(parent, false)?;
    let fd = open_dir_at(&parent_fd, name).map_err(|e| refusal(&parent_fd, name, home, e))?;
    let st = fstat(&fd).map_err(io("stat", home))?;
    if DirId::of(&st) != id {
        return Err(HomeError::NoLongerOurs {
            path: home.to_path_buf(),
        });
    }
    clear_dir(&fd, uid, 0)
        .and_then(|()| unlinkat(&parent_fd, name, UnlinkatFlags::RemoveDir))
        .map_err(io("remove", home))
}

/// `vmsilo fill-home`: copies `template` into the directory `home` (descriptor 3 from
/// vm-service), as whoever runs it (vm-service starts it as the configured user).
pub fn fill(template: &Path, home: &OwnedFd) -> Result<(), HomeError> {
    let st = fstat(home).map_err(|error| HomeError::Descriptor { error })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(HomeError::DescriptorNotDir);
    }
    let src = nix::fcntl::open(
        template,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|error| HomeError::OpenTemplate {
        path: template.to_path_buf(),
        error,
    })?;
    copy_dir(&src, home, template, 0)
}

/// `path` as (parent, last component); the last component must be a plain name.
fn split(path: &Path) -> Result<(&Path, &OsStr), HomeError> {
    match (path.parent(), path.components().next_back()) {
        (Some(parent), Some(Component::Normal(name))) if path.is_absolute() => Ok((parent, name)),
        _ => Err(HomeError::NotAbsolute {
            path: path.to_path_buf(),
        }),
    }
}

/// Opens the directory `path` (absolute) walking from `/` without following any link;
/// `create` makes missing components (root's, mode 0755).
fn open_dir_path(path: &Path, create: bool) -> Result<OwnedFd, HomeError> {
    let mut fd = nix::fcntl::open(
        "/",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open", Path::new("/")))?;
    let mut so_far = PathBuf::from("/");
    for c in path.components() {
        let name = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(HomeError::ParentDir {
                    path: path.to_path_buf(),
                });
            }
        };
        so_far.push(name);
        let next = match open_dir_at(&fd, name) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(&fd, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io("create", &so_far)(e)),
                }
                open_dir_at(&fd, name)
            }
            r => r,
        };
        fd = next.map_err(|e| refusal(&fd, name, &so_far, e))?;
    }
    Ok(fd)
}

/// Opens the directory `name` in `dir`, refusing a symbolic link (`ELOOP` or `ENOTDIR`).
fn open_dir_at(dir: &impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The error for `name` in `dir` (at `path`) that could not be opened as a directory.
fn refusal(dir: &impl AsFd, name: &OsStr, path: &Path, e: Errno) -> HomeError {
    let kind = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT);
    match kind {
        Ok(SFlag::S_IFLNK) => HomeError::SymbolicLink {
            path: path.to_path_buf(),
        },
        Ok(k) if k != SFlag::S_IFDIR => HomeError::NotADirectory {
            path: path.to_path_buf(),
        },
        _ => io("open", path)(e),
    }
}

/// Creates the home `name` in `parent` and gives it to `uid`/`gid` (mode 0700) through its
/// descriptor, once sure that descriptor is the directory just created (root's).
fn create_dir_at(
    parent: &OwnedFd,
    name: &OsStr,
    home: &Path,
    uid: u32,
    gid: u32,
) -> Result<(OwnedFd, DirId), HomeError> {
    mkdirat(parent, name, Mode::from_bits_truncate(0o700)).map_err(io("create", home))?;
    let fd = open_dir_at(parent, name).map_err(|e| refusal(parent, name, home, e))?;
    let st = fstat(&fd).map_err(io("stat", home))?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(HomeError::Replaced {
            path: home.to_path_buf(),
            owner: st.st_uid,
        });
    }
    fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .and_then(|()| fchmod(&fd, Mode::from_bits_truncate(0o700)))
        .map_err(give_err(home, uid))?;
    Ok((fd, DirId::of(&st)))
}

/// Gives the directory `fd` to `uid`/`gid` unless it is theirs already.
fn give(fd: &OwnedFd, uid: u32, gid: u32) -> nix::Result<()> {
    let st = fstat(fd)?;
    if (st.st_uid, st.st_gid) == (uid, gid) {
        return Ok(());
    }
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}

/// Up to `max` entries of the directory `fd` other than `.` and `..`, as owned names, read from
/// the start (the descriptor's offset is shared with the duplicate that reads it).
fn entries(fd: &OwnedFd, max: usize) -> nix::Result<Vec<std::ffi::CString>> {
    nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekSet)?;
    let mut dir = nix::dir::Dir::from_fd(nix::unistd::dup(fd)?)?;
    let mut names = Vec::new();
    for e in dir.iter() {
        if names.len() == max {
            break;
        }
        let name = e?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

fn is_empty_fd(fd: &OwnedFd) -> nix::Result<bool> {
    Ok(entries(fd, 1)?.is_empty())
}

/// Removes everything inside the directory `fd`, following no link (a symbolic link is
/// removed, never followed; subdirectories are opened with `O_NOFOLLOW`), and working only in
/// directories `uid` owns: root removes nothing the user could not remove (a directory of
/// someone else's that the user moved into the home is left, and the removal fails with
/// `EPERM`). Reads a batch of names at a time, so a huge directory costs no more memory than a
/// small one.
fn clear_dir(fd: &OwnedFd, uid: u32, depth: usize) -> nix::Result<()> {
    const BATCH: usize = 256;
    if depth > MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    if fstat(fd)?.st_uid != uid {
        return Err(Errno::EPERM);
    }
    // Bounded: a user who keeps adding entries must not keep root busy forever.
    for _ in 0..4096 {
        let names = entries(fd, BATCH)?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            match unlinkat(fd, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                Err(Errno::EISDIR) => {}
                Err(e) => return Err(e),
            }
            let sub = openat(
                fd,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            clear_dir(&sub, uid, depth + 1)?;
            match unlinkat(fd, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Err(Errno::EAGAIN)
}

/// Copies `template` into the directory `home` as `uid`/`gid`: runs `helper fill-home
/// --template TEMPLATE` as them (no supplementary groups) with `home` on descriptor 3.
pub fn fill_as(
    home: &OwnedFd,
    template: &Path,
    uid: u32,
    gid: u32,
    helper: &Path,
) -> Result<(), HomeError> {
    // A duplicate numbered 3 or above (F_DUPFD_CLOEXEC), so the child's stdio cannot clobber it.
    let passed = home
        .try_clone()
        .map_err(|error| HomeError::Duplicate { error })?;
    let mut cmd = Command::new(helper);
    cmd.arg("fill-home")
        .arg("--template")
        .arg(template)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // std also clears the supplementary groups (setgroups(0)) before setuid.
        .uid(uid)
        .gid(gid);
    crate::sys::prepare_child(&mut cmd);
    // SAFETY of the raw descriptor: `passed` stays open in this process until `spawn` returns.
    crate::sys::pass_fd(&mut cmd, passed.as_raw_fd(), FILL_HOME_FD);
    let mut child = cmd.spawn().map_err(|error| HomeError::StartFill {
        helper: helper.to_path_buf(),
        uid,
        error,
    })?;
    drop(passed);
    let mut err = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        // Bounded: the child runs as the user. Closing the pipe after that ends a child that
        // writes more (EPIPE), so the wait below cannot block on it.
        let _ = stderr.take(MAX_CHILD_STDERR).read_to_end(&mut err);
    }
    let status = child
        .wait()
        .map_err(|error| HomeError::WaitFill { error })?;
    if status.success() {
        return Ok(());
    }
    let text: String = String::from_utf8_lossy(&err)
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Err(HomeError::FillFailed {
        template: template.to_path_buf(),
        uid,
        status: super::procs::describe(status),
        message: if text.is_empty() {
            "no message".to_owned()
        } else {
            text
        },
    })
}

/// Copies the directory `src` (at `src_path`, for messages) into `dst`, following no link.
fn copy_dir(src: &OwnedFd, dst: &OwnedFd, src_path: &Path, depth: usize) -> Result<(), HomeError> {
    if depth > MAX_DEPTH {
        return Err(HomeError::TooDeep {
            path: src_path.to_path_buf(),
        });
    }
    let names = entries(src, usize::MAX).map_err(io("read", src_path))?;
    for name in names {
        let path = src_path.join(OsStr::from_bytes(name.as_bytes()));
        copy_entry(src, dst, &name, &path, depth)?;
    }
    Ok(())
}

/// Copies one entry `name` of `src` into `dst`.
fn copy_entry(
    src: &OwnedFd,
    dst: &OwnedFd,
    name: &CStr,
    path: &Path,
    depth: usize,
) -> Result<(), HomeError> {
    let fail = |what: &'static str, e: Errno| io(what, path)(e);
    let st = match fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(fail("stat", e)),
    };
    let mode = Mode::from_bits_truncate(st.st_mode & 0o777);
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(src, name).map_err(|e| fail("read", e))?;
            nix::unistd::symlinkat(target.as_os_str(), dst, name)
                .map_err(|e| fail("copy the link", e))?;
        }
        SFlag::S_IFDIR => {
            let s = open_dir_at(src, OsStr::from_bytes(name.to_bytes()))
                .map_err(|e| fail("open", e))?;
            mkdirat(dst, name, Mode::from_bits_truncate(0o700))
                .map_err(|e| fail("create the copy of", e))?;
            let d = open_dir_at(dst, OsStr::from_bytes(name.to_bytes()))
                .map_err(|e| fail("open the copy of", e))?;
            copy_dir(&s, &d, path, depth + 1)?;
            // The mode last, so a read-only template directory is still filled.
            fchmod(&d, mode).map_err(|e| fail("set the mode of the copy of", e))?;
        }
        SFlag::S_IFREG => {
            // O_NONBLOCK: were it swapped for a FIFO, the open must not wait for a writer.
            let s = openat(
                src,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail("open", e))?;
            let st = fstat(&s).map_err(|e| fail("stat", e))?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                return Ok(());
            }
            let d = openat(
                dst,
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| fail("create the copy of", e))?;
            let mut from = std::fs::File::from(s);
            let mut to = std::fs::File::from(d);
            std::io::copy(&mut from, &mut to).map_err(|error| HomeError::Copy {
                path: path.to_path_buf(),
                error,
            })?;
            fchmod(&to, Mode::from_bits_truncate(st.st_mode & 0o777))
                .map_err(|e| fail("set the mode of the copy of", e))?;
        }
        _ => {}
    }
    Ok(())
}

/// Adopts the home descriptor `vmsilo fill-home` inherits.
pub fn inherited_home() -> Result<OwnedFd, HomeError> {
    crate::sys::take_inherited_fd(FILL_HOME_FD).ok_or(HomeError::NotInherited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The root half only (no template, so no child): the home is created, 0700, given to the
    /// user, and a second call leaves content alone.
    #[test]
    fn test_home_is_created_without_a_template() {
        let dir = std::env::temp_dir().join(format!("vmsilo-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let home = dir.join("shared/vm");
        let none = dir.join("no-template");

        let r = prepare(&home, &none, uid, gid, Path::new("/nonexistent"));
        let Ok(Prepared::Created(id)) = r else {
            panic!("{r:?}")
        };
        let meta = std::fs::metadata(&home).expect("home");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));

        std::fs::write(home.join(".bashrc"), "changed").expect("write");
        assert_eq!(
            prepare(&home, &none, uid, gid, Path::new("/nonexistent")).expect("existing home"),
            Prepared::Existing
        );
        assert_eq!(
            std::fs::read_to_string(home.join(".bashrc")).expect("kept"),
            "changed"
        );

        remove_created(&home, id, uid).expect("remove");
        assert!(!home.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_open_dir_at_refuses_a_symlink_to_a_directory() {
        let dir = std::env::temp_dir().join(format!("vmsilo-home-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).expect("mkdir");
        std::os::unix::fs::symlink("real", dir.join("link")).expect("symlink");
        let fd = nix::fcntl::open(&dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .expect("open");

        assert!(open_dir_at(&fd, OsStr::new("real")).is_ok());
        let e = open_dir_at(&fd, OsStr::new("link")).expect_err("a link");
        assert!(matches!(e, Errno::ELOOP | Errno::ENOTDIR), "{e}");
        let msg = refusal(&fd, OsStr::new("link"), &dir.join("link"), e).to_string();
        assert!(msg.contains("is a symbolic link"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
