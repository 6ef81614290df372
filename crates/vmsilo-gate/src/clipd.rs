//! The gate parent's link to vmsilo-clipd (`--clipd`): chords from the client processes go
//! to clipd; clipd's `Fetch` (copy) reads the VM's selection through the [`Hub`] into clipd's
//! pipe; clipd's `Put` (paste) makes its content the VM's selection, owned by the gate
//! ([`datadev::GATE`]), which the parent then writes into each paste's fd itself.
//!
//! The connection is made lazily (at the first chord, and again after clipd restarts), so
//! that the gate and clipd can start in any order.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use vmsilo_clipd::chan::{self, Recv};
use vmsilo_clipd::proto::{Chord, Msg as ClipMsg};

use crate::clip::{MAX_PUT, offered_mimes};
use crate::datadev::{self, Hub, Msg, Out};
use crate::logger::warn_limited;

struct Held {
    serial: u64,
    data: Vec<u8>,
}

/// The parent's side of vmsilo-clipd.
pub struct ClipdLink {
    path: Option<PathBuf>,
    vm: String,
    sock: Option<OwnedFd>,
    held: Option<Held>,
    next_serial: u64,
    /// Notices clipd sent for the label band, not yet taken by the parent (at most
    /// [`MAX_NOTICES`]; the oldest are dropped).
    notices: std::collections::VecDeque<String>,
}

/// Most notices kept between two [`ClipdLink::take_notices`].
pub const MAX_NOTICES: usize = 16;

impl std::fmt::Debug for ClipdLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipdLink")
            .field("path", &self.path)
            .field("connected", &self.sock.is_some())
            .finish_non_exhaustive()
    }
}

impl ClipdLink {
    /// A link to the daemon at `path` (none: chords are off), for VM `vm`.
    pub fn new(path: Option<PathBuf>, vm: String) -> ClipdLink {
        let mut l = ClipdLink {
            path,
            vm,
            sock: None,
            held: None,
            next_serial: 1,
            notices: std::collections::VecDeque::new(),
        };
        l.connect();
        l
    }

    fn connect(&mut self) -> bool {
        if self.sock.is_some() {
            return true;
        }
        let Some(path) = &self.path else {
            return false;
        };
        let sock = match chan::connect_to(path) {
            Ok(s) => s,
            Err(e) => {
                warn_limited(
                    "clipd",
                    &format!(
                        "could not reach vmsilo-clipd at {}: {e} (is it running? the global clipboard's chords do nothing until it is)",
                        path.display()
                    ),
                );
                return false;
            }
        };
        let nonblocking = nix::fcntl::fcntl(
            &sock,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let hello = ClipMsg::Hello {
            vm: self.vm.clone(),
        };
        if nonblocking.is_err() || chan::send(sock.as_fd(), &hello, None).is_err() {
            warn_limited("clipd", "could not introduce the gate to vmsilo-clipd");
            return false;
        }
        log::info!("connected to vmsilo-clipd at {}", path.display());
        self.sock = Some(sock);
        true
    }

    /// The socket to poll, while connected.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.sock.as_ref().map(|s| s.as_fd())
    }

    fn send(&mut self, msg: &ClipMsg) {
        let Some(sock) = &self.sock else { return };
        if let Err(e) = chan::send(sock.as_fd(), msg, None) {
            warn_limited("clipd", &format!("could not reach vmsilo-clipd: {e}"));
            self.sock = None;
        }
    }

    /// A client process saw a chord.
    pub fn chord(&mut self, copy: bool) {
        if !self.connect() {
            return;
        }
        self.send(&ClipMsg::Chord(if copy {
            Chord::Copy
        } else {
            Chord::Paste
        }));
    }

    /// Messages from clipd; returns what to route to the children (with the fd for the
    /// `Send`).
    pub fn handle(&mut self, hub: &mut Hub) -> Vec<(Vec<Out>, Option<OwnedFd>)> {
        let mut routes = Vec::new();
        for _ in 0..16 {
            let Some(sock) = &self.sock else { break };
            match chan::recv(sock.as_fd()) {
                Recv::Msg(ClipMsg::Fetch { req, mimes }, Some(fd)) => {
                    let pick = mimes.into_iter().find(|m| hub.fetch(m).is_some());
                    let mime = match pick.as_deref().and_then(|m| hub.fetch(m)) {
                        None => String::new(),
                        Some(Out::To(owner, Msg::Send { serial, mime }))
                            if owner == datadev::GATE =>
                        {
                            self.write_held(serial, fd);
                            mime
                        }
                        Some(out) => {
                            let mime = pick.unwrap_or_default();
                            routes.push((vec![out], Some(fd)));
                            mime
                        }
                    };
                    self.send(&ClipMsg::Fetched { req, mime });
                }
                Recv::Msg(ClipMsg::Put { mime }, Some(fd)) => match chan::read_memfd(fd, MAX_PUT) {
                    Ok(Ok(data)) => {
                        let serial = self.next_serial;
                        self.next_serial += 1;
                        self.held = Some(Held { serial, data });
                        routes.push((hub.set_gate_selection(serial, offered_mimes(&mime)), None));
                    }
                    Ok(Err(_)) | Err(_) => {
                        warn_limited("clipd", "could not read the content vmsilo-clipd pasted")
                    }
                },
                Recv::Msg(ClipMsg::Notice { text }, None) => {
                    if self.notices.len() >= MAX_NOTICES {
                        self.notices.pop_front();
                    }
                    self.notices.push_back(crate::notice::sanitize(&text));
                }
                Recv::Msg(_, _) | Recv::Bad => {
                    warn_limited("clipd", "unexpected message from vmsilo-clipd (ignored)")
                }
                Recv::Empty => break,
                Recv::Closed => {
                    warn_limited(
                        "clipd",
                        "vmsilo-clipd closed the connection (it reconnects at the next chord)",
                    );
                    self.sock = None;
                    break;
                }
            }
        }
        routes
    }

    /// The notices clipd sent since the last call, oldest first (for the label band).
    pub fn take_notices(&mut self) -> Vec<String> {
        self.notices.drain(..).collect()
    }

    /// A hub message for the gate's own selection: a paste of it (write the content into
    /// the fd) or its cancellation.
    pub fn gate_out(&mut self, msg: Msg, fd: Option<OwnedFd>) {
        match (msg, fd) {
            (Msg::Send { serial, .. }, Some(fd)) => self.write_held(serial, fd),
            (Msg::Cancel { serial }, _)
                if self.held.as_ref().is_some_and(|h| h.serial == serial) =>
            {
                self.held = None;
            }
            _ => {}
        }
    }

    /// Writes the held content into a paste's fd without blocking: the pipe is grown to
    /// hold it all (a guest that does not read must not stall the gate); what does not fit
    /// is dropped.
    fn write_held(&self, serial: u64, fd: OwnedFd) {
        let Some(held) = self.held.as_ref().filter(|h| h.serial == serial) else {
            return;
        };
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let _ = fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        let want = held.data.len().clamp(4096, 1 << 20) as libc::c_int;
        let _ = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(want));
        let mut off = 0;
        while off < held.data.len() {
            match nix::unistd::write(&fd, &held.data[off..]) {
                Ok(0) => break,
                Ok(n) => off += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if off < held.data.len() {
            warn_limited(
                "clipd",
                &format!(
                    "a paste in VM {:?} got {off} of {} bytes (its pipe was full)",
                    self.vm,
                    held.data.len()
                ),
            );
        }
    }
}
