//! The serial console as a PTY at `<run>/<vm>-console`.
//!
//! The runtime owns the PTY master and relays it to the VMM's console stream socket (crosvm has
//! no PTY serial type; QEMU's socket keeps the runtime in charge too). It keeps one slave fd
//! open for the VM's lifetime so the master never sees EIO when nobody is attached. The slave is
//! raw (the guest echoes and edits lines itself) and owned by the configured user, so
//! `vm-shell` needs no root.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::openpty;
use nix::sys::termios::{FlushArg, SetArg, cfmakeraw, tcflush, tcgetattr, tcsetattr};

/// A PTY: the master the runtime relays, and the slave it keeps open.
#[derive(Debug)]
pub struct Pty {
    /// Master side (non-blocking).
    pub master: File,
    slave: OwnedFd,
    /// `/dev/pts/N`.
    pub path: PathBuf,
}

fn set_nonblocking(fd: impl AsFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Why the console PTY could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// No PTY.
    #[error("cannot open a PTY")]
    Open(#[source] nix::Error),
    /// A terminal or descriptor setting failed.
    #[error("{what}")]
    Setting {
        /// `tcgetattr`, `tcsetattr` or `fcntl`.
        what: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The PTY's path could not be found.
    #[error("cannot find the PTY's name")]
    Name(#[source] std::io::Error),
    /// The PTY could not be given to the user.
    #[error("cannot give {} to uid {uid}", path.display())]
    Chown {
        /// The PTY.
        path: std::path::PathBuf,
        /// The user.
        uid: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PTY's mode could not be set.
    #[error("chmod {}", path.display())]
    Chmod {
        /// The PTY.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn setting(what: &'static str) -> impl FnOnce(nix::Error) -> PtyError {
    move |source| PtyError::Setting { what, source }
}

impl Pty {
    /// Opens a raw PTY whose slave belongs to `uid`/`gid` with mode 0600.
    pub fn open(uid: u32, gid: u32) -> Result<Pty, PtyError> {
        let pty = openpty(None, None).map_err(PtyError::Open)?;
        let mut t = tcgetattr(&pty.slave).map_err(setting("tcgetattr"))?;
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(setting("tcsetattr"))?;
        use std::os::fd::AsRawFd;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
            .map_err(PtyError::Name)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|source| {
            PtyError::Chown {
                path: path.clone(),
                uid,
                source,
            }
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| PtyError::Chmod {
                path: path.clone(),
                source,
            },
        )?;
        set_nonblocking(&pty.master).map_err(setting("fcntl"))?;
        for fd in [&pty.master, &pty.slave] {
            fcntl(
                fd.as_fd(),
                FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(setting("fcntl"))?;
        }
        Ok(Pty {
            master: File::from(pty.master),
            slave: pty.slave,
            path,
        })
    }

    /// Writes guest output to the master. Never blocks: when nobody has read the console for a
    /// while and the PTY buffer is full, the unread (oldest) output is discarded so an attaching
    /// `vm-shell` sees what is current.
    pub fn write_output(&mut self, mut data: &[u8]) {
        let mut flushed = false;
        while !data.is_empty() {
            match self.master.write(data) {
                Ok(0) => return,
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && !flushed => {
                    let _ = tcflush(&self.slave, FlushArg::TCIFLUSH);
                    flushed = true;
                }
                Err(_) => return,
            }
        }
    }

    /// Reads user input from the master (non-blocking): `Ok(0)` when there is none.
    pub fn read_input(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.master.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// Points `link` at the PTY, replacing what was there.
pub fn link(pty_path: &Path, link: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.is_dir() => {
            return Err(std::io::Error::other(format!(
                "{} is a directory",
                link.display()
            )));
        }
        Ok(_) => std::fs::remove_file(link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(pty_path, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pty_relays_both_ways_and_never_blocks_on_output() {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let mut pty = Pty::open(uid, gid).expect("pty");
        let mut user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pty.path)
            .expect("open slave");
        pty.write_output(b"hello\n");
        let mut buf = [0u8; 64];
        let n = user.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"hello\n", "raw: no CR added");
        user.write_all(b"ls\r").expect("type");
        // The line discipline hands input over asynchronously: poll for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut n = 0;
        while n == 0 && std::time::Instant::now() < deadline {
            n = pty.read_input(&mut buf).expect("input");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(&buf[..n], b"ls\r", "raw: no CR translation");
        // Nobody reads: a lot of output must not block, and the newest output survives.
        drop(user);
        for _ in 0..2000 {
            pty.write_output(&[b'x'; 64]);
        }
        pty.write_output(b"LATEST");
        let mut user = File::open(&pty.path).expect("reopen");
        set_nonblocking(&user).expect("nonblock");
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !all.ends_with(b"LATEST") && std::time::Instant::now() < deadline {
            match user.read(&mut chunk) {
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        assert!(all.ends_with(b"LATEST"), "{} bytes", all.len());
    }
}
