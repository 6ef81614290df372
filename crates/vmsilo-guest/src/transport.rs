//! Where connections come from: a vsock listener that admits the host CID only, a Unix
//! listener (development and tests), and sockets passed by systemd socket activation.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, VsockAddr, accept4,
    bind, getpeername, getsockopt, listen, socket, sockopt,
};

use crate::sys;

/// A connected byte stream the agent can poll.
pub trait Transport: Read + Write + AsFd + Send {}
impl<T: Read + Write + AsFd + Send> Transport for T {}

/// Something that yields connections when its descriptor is readable.
pub trait Listener: AsFd + Send {
    /// Accepts one pending connection. `Ok(None)`: nothing pending, or a peer that was refused
    /// (and already closed).
    fn accept(&mut self) -> io::Result<Option<Box<dyn Transport>>>;
    /// For log messages: `vsock port 5000`.
    fn describe(&self) -> String;
}

/// A stream socket accessed with plain `read(2)`/`write(2)`.
#[derive(Debug)]
pub struct SocketStream(File);

impl SocketStream {
    /// Wraps a connected stream socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self(File::from(fd))
    }
}

impl Read for SocketStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SocketStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for SocketStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Which vsock peers are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Only this CID (the host, 2).
    Cid(u32),
    /// Anyone (debugging only).
    Any,
}

/// Checks the peer of an accepted or inherited socket. Non-vsock sockets (a Unix socket given
/// by the administrator) are local and admitted.
pub fn check_peer(fd: BorrowedFd<'_>, policy: PeerPolicy) -> io::Result<Result<(), String>> {
    let PeerPolicy::Cid(allowed) = policy else {
        return Ok(Ok(()));
    };
    let peer: SockaddrStorage = getpeername(fd.as_raw_fd())?;
    if peer.family() != Some(AddressFamily::Vsock) {
        return Ok(Ok(()));
    }
    match peer.as_vsock_addr() {
        Some(addr) if addr.cid() == allowed => Ok(Ok(())),
        Some(addr) => Ok(Err(format!(
            "refused a connection from vsock CID {} port {}: only CID {allowed} (the host) may connect",
            addr.cid(),
            addr.port()
        ))),
        None => Ok(Err(
            "refused a connection with an unreadable vsock address".into()
        )),
    }
}

/// `AF_VSOCK` listener on a port, any local CID.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
    policy: PeerPolicy,
    refused: u64,
}

impl VsockListener {
    /// Binds and listens on `port` (non-blocking, close-on-exec).
    pub fn bind(port: u32, policy: PeerPolicy) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| {
            io::Error::other(format!(
                "failed to create a vsock socket: {e} (is the vsock driver loaded?)"
            ))
        })?;
        let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
        bind(fd.as_raw_fd(), &addr)
            .map_err(|e| io::Error::other(format!("failed to bind vsock port {port}: {e}")))?;
        listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN))
            .map_err(|e| io::Error::other(format!("failed to listen on vsock port {port}: {e}")))?;
        Ok(Self {
            fd,
            port,
            policy,
            refused: 0,
        })
    }

    /// Wraps a listening socket inherited from systemd.
    pub fn from_fd(fd: OwnedFd, policy: PeerPolicy) -> io::Result<Self> {
        crate::exec::set_nonblocking(&fd)?;
        Ok(Self {
            fd,
            port: 0,
            policy,
            refused: 0,
        })
    }
}

impl AsFd for VsockListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Listener for VsockListener {
    fn accept(&mut self) -> io::Result<Option<Box<dyn Transport>>> {
        let conn = match accept4(&self.fd, SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::ECONNABORTED) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match check_peer(conn.as_fd(), self.policy)? {
            Ok(()) => Ok(Some(Box::new(SocketStream::new(conn)))),
            Err(msg) => {
                // Log the first few refusals and then every 100th, so a noisy peer cannot
                // flood the console.
                self.refused += 1;
                if self.refused <= 5 || self.refused.is_multiple_of(100) {
                    crate::log(&format!("{msg} ({} refused so far)", self.refused));
                }
                Ok(None)
            }
        }
    }

    fn describe(&self) -> String {
        if self.port == 0 {
            "the socket passed by systemd".into()
        } else {
            format!("vsock port {}", self.port)
        }
    }
}

/// A Unix listener (for development and tests: `--unix PATH`).
#[derive(Debug)]
pub struct UnixSocketListener {
    inner: UnixListener,
    path: String,
}

impl UnixSocketListener {
    /// Wraps a bound listener, making it non-blocking.
    pub fn new(inner: UnixListener, path: impl Into<String>) -> io::Result<Self> {
        inner.set_nonblocking(true)?;
        Ok(Self {
            inner,
            path: path.into(),
        })
    }
}

impl AsFd for UnixSocketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl Listener for UnixSocketListener {
    fn accept(&mut self) -> io::Result<Option<Box<dyn Transport>>> {
        match self.inner.accept() {
            Ok((stream, _)) => Ok(Some(Box::new(stream))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn describe(&self) -> String {
        format!("unix socket {}", self.path)
    }
}

/// What systemd passed (`LISTEN_PID`/`LISTEN_FDS`, first descriptor 3).
#[derive(Debug)]
pub enum Activation {
    /// `Accept=no`: a listening socket.
    Listening(OwnedFd),
    /// `Accept=yes`: one connection, already accepted.
    Connection(OwnedFd),
}

/// Reads `LISTEN_PID`/`LISTEN_FDS`; `Ok(None)` when this process was not socket-activated.
/// Takes the first passed descriptor (3) and makes it close-on-exec so commands don't inherit
/// it.
pub fn from_systemd(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> io::Result<Option<Activation>> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: u32 = fds
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if n == 0 {
        return Ok(None);
    }
    if n > 1 {
        crate::log(&format!(
            "systemd passed {n} sockets; using the first (fd 3)"
        ));
    }
    const SD_LISTEN_FDS_START: i32 = 3;
    let fd = sys::adopt_inherited_fd(SD_LISTEN_FDS_START)?;
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    if getsockopt(&fd, sockopt::AcceptConn)? {
        Ok(Some(Activation::Listening(fd)))
    } else {
        Ok(Some(Activation::Connection(fd)))
    }
}
