//! vmsilo-clipd's side of its socket: sending and receiving [`Msg`]s (through
//! [`crate::seqpacket`]), connecting, the blocking CLI client, and the memfd/pipe helpers for
//! the content.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::proto::Msg;
use crate::seqpacket;

/// Sends one message (with `fd` for the kinds that carry one); see [`seqpacket::send`].
pub fn send(sock: BorrowedFd<'_>, msg: &Msg, fd: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    seqpacket::send(sock, msg, fd)
}

/// What one receive of a [`Msg`] gave.
pub type Recv = seqpacket::Recv<Msg>;

/// Receives one message; see [`seqpacket::recv`].
pub fn recv(sock: BorrowedFd<'_>) -> Recv {
    seqpacket::recv(sock)
}

/// Connects to the daemon's socket (blocking, close-on-exec).
pub fn connect_to(path: &Path) -> std::io::Result<OwnedFd> {
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(s.as_raw_fd(), &addr)?;
    Ok(s)
}

/// Waits up to `timeout` for `sock` to be readable; `false` on timeout.
pub fn wait_readable(sock: BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// A sealed-size anonymous file holding `data`, positioned at 0 (the content travels as
/// this fd).
pub fn memfd_with(data: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"vmsilo-clip", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data)?;
    Ok(OwnedFd::from(f))
}

/// Reads a received content fd from offset 0 (memfd or file), at most `max` bytes; `Err` if
/// there is more.
pub fn read_memfd(fd: OwnedFd, max: usize) -> std::io::Result<Result<Vec<u8>, usize>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(Ok(out));
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > max {
            return Ok(Err(out.len()));
        }
    }
}

/// Reads a pipe until EOF, at most `max` bytes (`Err(seen)` beyond), giving up after
/// `timeout` (a writer that neither writes nor closes).
pub fn read_pipe(
    fd: OwnedFd,
    max: usize,
    timeout: Duration,
) -> std::io::Result<Result<Vec<u8>, usize>> {
    let deadline = Instant::now() + timeout;
    let mut f = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the VM did not finish writing its clipboard in time",
            ));
        }
        let ready = {
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(n) => n > 0,
                Err(Errno::EINTR) => false,
                Err(e) => return Err(e.into()),
            }
        };
        if !ready {
            continue;
        }
        let n = match f.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Ok(out));
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > max {
            return Ok(Err(out.len()));
        }
    }
}

/// A blocking client of the daemon (the CLI's side).
#[derive(Debug)]
pub struct Client {
    sock: OwnedFd,
}

impl Client {
    /// Connects and says hello as the host CLI.
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let sock = connect_to(path)?;
        send(sock.as_fd(), &Msg::Hello { vm: String::new() }, None)?;
        Ok(Client { sock })
    }

    /// Sends `msg` (with `fd`) and waits (up to `timeout`) for the reply.
    pub fn request(
        &self,
        msg: &Msg,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> std::io::Result<(Msg, Option<OwnedFd>)> {
        send(self.sock.as_fd(), msg, fd)?;
        if !wait_readable(self.sock.as_fd(), timeout) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "vmsilo-clipd did not answer in time",
            ));
        }
        match recv(self.sock.as_fd()) {
            Recv::Msg(m, fd) => Ok((m, fd)),
            Recv::Bad => Err(std::io::Error::other("vmsilo-clipd sent a malformed reply")),
            Recv::Empty | Recv::Closed => Err(std::io::Error::other(
                "vmsilo-clipd closed the connection (it refuses peers of another user)",
            )),
        }
    }
}

/// A connected pair of blocking `SOCK_SEQPACKET` sockets (tests, in-process peers).
pub fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    seqpacket::pair(false)
}
