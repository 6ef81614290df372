//! Sending and receiving one [`Message`] per `SOCK_SEQPACKET` datagram, with at most one fd
//! beside it (`SCM_RIGHTS`, received close-on-exec): the transport of every clipboard seam
//! (vmsilo-clipd ⇄ gates and CLI, vmsilo-gate parent ⇄ per-client children).
//!
//! A received message is checked whole before it is returned: a truncated datagram or
//! control message, more than one fd, a datagram that does not decode, or an fd where the
//! message kind has none (or none where it has one) is [`Recv::Bad`] and its fds are closed.
#![forbid(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use crate::wire::Message;

/// What one receive gave.
#[derive(Debug)]
pub enum Recv<M> {
    /// A message and its fd, if any.
    Msg(M, Option<OwnedFd>),
    /// A datagram that did not decode, or a wrong fd count (dropped).
    Bad,
    /// Nothing to read now (non-blocking sockets).
    Empty,
    /// The peer is gone.
    Closed,
}

fn send_with<M: Message>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fd: Option<BorrowedFd<'_>>,
    flags: MsgFlags,
) -> nix::Result<()> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: &[ControlMessage] = match fd {
        Some(f) => {
            fds = [f.as_raw_fd()];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None) {
            Err(Errno::EINTR) => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Sends one message (with `fd` for the kinds that carry one); blocks on a blocking socket
/// whose peer is full.
pub fn send<M: Message>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fd: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    send_with(sock, msg, fd, MsgFlags::MSG_NOSIGNAL)
}

/// Sends one message without blocking: if the peer is full this fails with `EAGAIN` and
/// nothing is sent (`fd` stays the caller's either way).
pub fn try_send<M: Message>(
    sock: BorrowedFd<'_>,
    msg: &M,
    fd: Option<BorrowedFd<'_>>,
) -> nix::Result<()> {
    send_with(
        sock,
        msg,
        fd,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
}

fn recv_with<M: Message>(sock: BorrowedFd<'_>, flags: MsgFlags) -> Recv<M> {
    let mut buf = vec![0u8; M::MAX_BYTES + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let (len, flags, mut fds) = match recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(r) => {
            let mut fds = Vec::new();
            if let Ok(cmsgs) = r.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        fds.extend(v.into_iter().map(vmsilo_sys::owned_fd));
                    }
                }
            }
            (r.bytes, r.flags, fds)
        }
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Recv::Empty,
        Err(_) => return Recv::Closed,
    };
    if len == 0 && fds.is_empty() {
        return Recv::Closed;
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > 1 {
        return Recv::Bad;
    }
    let Ok(msg) = M::decode(&buf[..len]) else {
        return Recv::Bad;
    };
    let fd = fds.pop();
    if msg.has_fd() != fd.is_some() {
        return Recv::Bad;
    }
    Recv::Msg(msg, fd)
}

/// Receives one message (blocks on a blocking socket). Extra fds are closed.
pub fn recv<M: Message>(sock: BorrowedFd<'_>) -> Recv<M> {
    recv_with(sock, MsgFlags::empty())
}

/// Receives one message without blocking ([`Recv::Empty`] if there is none).
pub fn try_recv<M: Message>(sock: BorrowedFd<'_>) -> Recv<M> {
    recv_with(sock, MsgFlags::MSG_DONTWAIT)
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec; non-blocking if asked).
pub fn pair(nonblocking: bool) -> nix::Result<(OwnedFd, OwnedFd)> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)
}
