//! In-process entry point of the `gate_wire` fuzz target (feature `fuzzing`): the fuzz input
//! is what a hostile guest client sends, chunk by chunk (some chunks with an fd), to one
//! client [`Session`] whose compositor is a [`FakeServer`] over a socketpair offering allowed
//! and hidden globals. Both are pumped until idle after each chunk; then the client shuts
//! down its side and the session must end. Nothing may panic or hang.
//!
//! Input format: repeated `[flags: u8][len: u16 le][len bytes]`; flags bit 0 attaches a pipe
//! fd, bit 1 a 4 KiB memfd (for `wl_shm.create_pool`).
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use nix::poll::PollTimeout;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recv, sendmsg, shutdown,
    socketpair,
};
use wl_proxy::protocols::ObjectInterface;

use crate::conn::Limits;
use crate::identity::{Identity, Rgb};
use crate::policy::Policy;
use crate::server::{ClientConfig, End, Session, Step};
use crate::testing::FakeServer;

/// The globals the fuzz target's compositor offers.
pub fn globals() -> Vec<(ObjectInterface, u32)> {
    vec![
        (ObjectInterface::WlCompositor, 6),
        (ObjectInterface::WlSubcompositor, 1),
        (ObjectInterface::WlShm, 1),
        (ObjectInterface::WlSeat, 7),
        (ObjectInterface::WlOutput, 4),
        (ObjectInterface::XdgWmBase, 6),
        (ObjectInterface::WpViewporter, 1),
        (ObjectInterface::WlDataDeviceManager, 3),
        (ObjectInterface::ZwlrScreencopyManagerV1, 3),
        (ObjectInterface::ZxdgDecorationManagerV1, 1),
        (ObjectInterface::ZwpTabletManagerV2, 1),
    ]
}

/// Most chunks and bytes taken from one input.
const MAX_CHUNKS: usize = 64;
const MAX_BYTES: usize = 64 << 10;

fn pair() -> Option<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .ok()
}

fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8192];
    for _ in 0..64 {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Pumps gate and fake until both are idle; `Some` once the session ended.
fn pump(session: &mut Session, fake: &FakeServer, client: &OwnedFd) -> Option<End> {
    let mut idle = 0;
    for _ in 0..512 {
        fake.before_poll();
        let st = session.step(PollTimeout::ZERO);
        let f = fake.dispatch();
        drain(client);
        match st {
            Step::End(end) => return Some(end),
            Step::Continue(w) => {
                if !w && !f {
                    idle += 1;
                    if idle >= 3 {
                        return None;
                    }
                } else {
                    idle = 0;
                }
            }
        }
    }
    None
}

fn attachment(flags: u8) -> Option<OwnedFd> {
    if flags & 1 != 0 {
        return nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .ok()
            .map(|(_r, w)| w);
    }
    if flags & 2 != 0 {
        let fd =
            nix::sys::memfd::memfd_create(c"fuzz", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).ok()?;
        nix::unistd::ftruncate(&fd, 4096).ok()?;
        return Some(fd);
    }
    None
}

/// Runs one input; returns how the service ended (`None`: it could not be set up).
pub fn run(data: &[u8]) -> Option<End> {
    let (client, gate_side) = pair()?;
    let (gate_comp, fake_comp) = pair()?;
    let fake = FakeServer::new(globals(), 0, Default::default());
    fake.add_client(fake_comp, "");
    let cfg = ClientConfig {
        identity: Rc::new(Identity {
            vm: "fuzz".into(),
            color: Rgb {
                r: 46,
                g: 204,
                b: 113,
            },
        }),
        policy: Rc::new(Policy::default()),
        limits: Limits {
            max_objects: 500,
            ..Limits::default()
        },
        frame: true,
        debug: false,
    };
    let mut session = Session::new(&cfg, gate_side, gate_comp, None).ok()?;
    session.set_linger(Duration::ZERO);
    let mut rest = data;
    let mut total = 0;
    for _ in 0..MAX_CHUNKS {
        let [flags, lo, hi, tail @ ..] = rest else {
            break;
        };
        let len = (usize::from(*lo) | usize::from(*hi) << 8).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        total += len;
        if total > MAX_BYTES {
            break;
        }
        let fd = attachment(*flags);
        let fds;
        let cmsgs: &[ControlMessage] = match &fd {
            Some(f) => {
                fds = [f.as_fd().as_raw_fd()];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        let iov = [IoSlice::new(chunk)];
        let _ = sendmsg::<()>(
            client.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        );
        drop(fd);
        if let Some(end) = pump(&mut session, &fake, &client) {
            return Some(end);
        }
    }
    let _ = shutdown(client.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    for _ in 0..8 {
        if let Some(end) = pump(&mut session, &fake, &client) {
            return Some(end);
        }
    }
    panic!("the client shut down its side, but its service did not end");
}
