//! The control channel between the main process and each child: a `SOCK_SEQPACKET`
//! socketpair, one JSON message per datagram, file descriptors attached with `SCM_RIGHTS`.
//!
//! Messages (the ring handshake follows the original design's get-buffer / buffer-ready /
//! put-buffer vocabulary):
//!
//! * child → main `GetBuffer { peer }`: the child is set up (sandboxed, listening) and asks for
//!   its rings, to one peer or (`null`) to all. Sent once at start.
//! * main → child `Peer { id, config }`: a port exists (also sent for the child itself first);
//!   the child adds its addresses and routes to its forwarding table.
//! * main → child `BufferReady { peer, role, spec }` with fds `[memfd, eventfd]`: a ring to
//!   (`tx`) or from (`rx`) a peer, and the eventfd that wakes its consumer.
//! * child → main `PutBuffer { peer, role }`: the child dropped a ring (the peer corrupted it).
//!   The main process closes its copies; the pair stays without a ring until the peer restarts.
//! * main → child `PeerGone { id }`: a port went away; drop its routes and rings.
//! * child → main `GetRelay`, main → child `RelaySockets` with fds `[listener, client]`: a
//!   socket pair for the relay in front of the next frontend connection (see
//!   [`crate::relay`]); the sandboxed child cannot create sockets itself.
//!
//! The main process trusts nothing a child sends: datagrams are size-limited, parsed with
//! serde, and unknown or malformed messages only get logged.

#![forbid(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};

use crate::forward::PortId;
use crate::port_file::PortConfig;
use crate::ring::RingSpec;

/// Largest control datagram.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds in one message.
pub const MAX_FDS: usize = 4;

/// Which end of a ring a child gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The child writes (frames to the peer).
    Tx,
    /// The child reads (frames from the peer).
    Rx,
}

/// Main process → child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToChild {
    /// A port exists or changed.
    Peer {
        /// Port id.
        id: PortId,
        /// Its configuration.
        config: PortConfig,
    },
    /// A port is gone.
    PeerGone {
        /// Port id.
        id: PortId,
    },
    /// A ring; fds `[memfd, eventfd]` are attached.
    BufferReady {
        /// The other port.
        peer: PortId,
        /// Which end this child gets.
        role: Role,
        /// Geometry.
        spec: RingSpec,
    },
    /// A connection for the next frontend's relay; fds `[listener, client]` are attached:
    /// a listening socket with one pending connection, and that connection's client end.
    RelaySockets,
}

/// Child → main process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMain {
    /// Send me my rings (to one peer, or all).
    GetBuffer {
        /// The peer, or `None` for all.
        peer: Option<PortId>,
    },
    /// Send me the sockets for the next frontend connection ([`ToChild::RelaySockets`]).
    GetRelay,
    /// I dropped this ring.
    PutBuffer {
        /// The other port.
        peer: PortId,
        /// Which end.
        role: Role,
    },
}

/// Control channel errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A socket call failed.
    #[error("control socket {op} failed")]
    Io {
        /// Which call.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The message did not decode.
    #[error("malformed control message: {0}")]
    Malformed(String),
}

fn io(op: &'static str, e: nix::Error) -> ControlError {
    ControlError::Io {
        op,
        source: std::io::Error::from(e),
    }
}

/// A connected control socketpair (parent end, child end).
pub fn pair() -> Result<(OwnedFd, OwnedFd), ControlError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| io("socketpair", e))
}

/// Sends one message with `fds` attached. `nonblocking` makes a full socket an error instead
/// of a wait.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[RawFd],
    nonblocking: bool,
) -> Result<(), ControlError> {
    let body = serde_json::to_vec(msg).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(ControlError::Malformed("message too large".into()));
    }
    let iov = [IoSlice::new(&body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let flags = if nonblocking {
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(io("sendmsg", e)),
        }
    }
}

/// Receives one message. `Ok(None)` means the peer closed the channel; `Err(Io{WouldBlock})`
/// that nothing is pending on a non-blocking receive.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    nonblocking: bool,
) -> Result<Option<(T, Vec<OwnedFd>)>, ControlError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (bytes, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(msg) => {
                let mut raw = Vec::new();
                let mut truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                match msg.cmsgs() {
                    Ok(it) => {
                        for c in it {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                raw.extend(fds);
                            }
                        }
                    }
                    Err(_) => truncated = true,
                }
                break (msg.bytes, vhost_user_relay::adopt_fds(&raw), truncated);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(io("recvmsg", e)),
        }
    };
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(ControlError::Malformed("truncated message".into()));
    }
    let msg = serde_json::from_slice(&buf[..bytes])
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    Ok(Some((msg, fds)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::ring::Event;

    #[test]
    fn test_control_roundtrip_with_fds() {
        let (a, b) = pair().unwrap();
        let ev = Event::new().unwrap();
        let msg = ToChild::BufferReady {
            peer: 3,
            role: Role::Rx,
            spec: RingSpec {
                slots: 4,
                slot_size: 128,
            },
        };
        send(a.as_fd(), &msg, &[ev.fd().as_raw_fd()], false).unwrap();
        let (got, fds): (ToChild, _) = recv(b.as_fd(), false).unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        // The received fd is the same eventfd.
        Event::from_fd(fds.into_iter().next().unwrap()).signal();
        let mut buf = [0u8; 8];
        assert!(nix::unistd::read(ev.fd().as_fd(), &mut buf).is_ok());
    }

    #[test]
    fn test_control_recv_reports_close_and_garbage() {
        let (a, b) = pair().unwrap();
        nix::sys::socket::send(a.as_raw_fd(), b"{not json", MsgFlags::empty()).unwrap();
        assert!(matches!(
            recv::<ToMain>(b.as_fd(), false),
            Err(ControlError::Malformed(_))
        ));
        drop(a);
        assert!(recv::<ToMain>(b.as_fd(), false).unwrap().is_none());
    }

    #[test]
    fn test_control_nonblocking_recv_on_empty_is_wouldblock() {
        let (_a, b) = pair().unwrap();
        match recv::<ToMain>(b.as_fd(), true) {
            Err(ControlError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock)
            }
            other => panic!("{other:?}"),
        }
    }
}
