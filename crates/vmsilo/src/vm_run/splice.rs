//! Copying a client connection to the guest and back, until the conversation is over.
//!
//! One thread, `poll(2)`, non-blocking descriptors, a 64 KiB buffer per direction (a side that
//! does not read gets back-pressure, never an unbounded buffer). The rules:
//!
//! - **Never half-close toward the guest.** Through vhost-device-vsock a `shutdown(SHUT_WR)`
//!   drops the whole connection; the agent protocol ends stdin with a `StdinEof` frame instead.
//!   When the client half-closes (end of file, the socket still open), the guest side stays
//!   open and its output keeps flowing to the client.
//! - When the client is gone (it closed the socket: `POLLHUP`, or a write fails), what it sent
//!   is delivered, then the guest connection is closed: the agent treats that as a hangup.
//! - When the guest side ends (the agent closes after `Exit` or `Started`), what it sent is
//!   delivered to the client, then both are closed.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Bytes buffered per direction.
const BUF: usize = 64 * 1024;

/// Bytes moved by a splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Client to guest.
    pub to_guest: u64,
    /// Guest to client.
    pub to_client: u64,
}

/// One direction's buffer.
struct Pipe {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; BUF],
            start: 0,
            end: 0,
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn has_room(&self) -> bool {
        self.end < self.buf.len()
    }

    /// Reads from `fd` into the free space. `Ok(None)`: nothing to read now.
    fn fill(&mut self, fd: &OwnedFd) -> nix::Result<Option<usize>> {
        match nix::unistd::read(fd, &mut self.buf[self.end..]) {
            Ok(n) => {
                self.end += n;
                Ok(Some(n))
            }
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes buffered bytes to `fd`; returns how many went out.
    fn drain(&mut self, fd: &OwnedFd) -> nix::Result<usize> {
        match nix::unistd::write(fd, &self.buf[self.start..self.end]) {
            Ok(n) => {
                self.start += n;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(n)
            }
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(0),
            Err(e) => Err(e),
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

fn gone(r: PollFlags) -> bool {
    r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
}

/// Copies between `client` and `guest` until one side is done (see the module docs); both
/// are closed when it returns.
pub fn splice(client: OwnedFd, guest: OwnedFd) -> nix::Result<Moved> {
    set_nonblocking(&client)?;
    set_nonblocking(&guest)?;
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let mut moved = Moved::default();
    // End of file read from each side.
    let mut client_eof = false;
    let mut guest_eof = false;
    // The client closed its socket (not just its write side).
    let mut client_gone = false;
    // The guest takes no more data (a write failed); what it still sends is delivered.
    let mut guest_deaf = false;
    loop {
        if guest_eof && down.is_empty() {
            return Ok(moved);
        }
        if client_gone && (up.is_empty() || guest_deaf) {
            return Ok(moved);
        }
        let mut cf = PollFlags::empty();
        if !client_eof && up.has_room() {
            cf |= PollFlags::POLLIN;
        }
        if !down.is_empty() {
            cf |= PollFlags::POLLOUT;
        }
        let mut gf = PollFlags::empty();
        if !guest_eof && down.has_room() {
            gf |= PollFlags::POLLIN;
        }
        if !up.is_empty() && !guest_deaf {
            gf |= PollFlags::POLLOUT;
        }
        // A side is polled only for what it can do now (its permanent POLLHUP would spin
        // this loop otherwise), and a half-closed client also for its full close.
        let poll_client = !client_gone && (!cf.is_empty() || client_eof);
        let poll_guest = !gf.is_empty();
        if !poll_client && !poll_guest {
            return Ok(moved);
        }
        let (cr, gr) = {
            let mut fds = Vec::with_capacity(2);
            if poll_client {
                fds.push(PollFd::new(client.as_fd(), cf));
            }
            if poll_guest {
                fds.push(PollFd::new(guest.as_fd(), gf));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
            let mut it = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()));
            let cr = if poll_client {
                it.next().unwrap_or(PollFlags::empty())
            } else {
                PollFlags::empty()
            };
            let gr = if poll_guest {
                it.next().unwrap_or(PollFlags::empty())
            } else {
                PollFlags::empty()
            };
            (cr, gr)
        };

        // Reads. End of file is what read() says; a hangup without POLLIN counts only where
        // POLLIN was asked for (otherwise unread data may still wait).
        if cf.contains(PollFlags::POLLIN)
            && cr.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            match up.fill(&client) {
                Ok(Some(0)) => client_eof = true,
                Ok(Some(n)) => moved.to_guest += n as u64,
                Ok(None) => {}
                Err(_) => {
                    client_eof = true;
                    client_gone = true;
                }
            }
        }
        if gone(cr)
            && (client_eof || (cf.contains(PollFlags::POLLIN) && !cr.contains(PollFlags::POLLIN)))
        {
            client_eof = true;
            client_gone = true;
        }
        if gf.contains(PollFlags::POLLIN)
            && gr.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            match down.fill(&guest) {
                Ok(Some(0)) | Err(_) => guest_eof = true,
                Ok(Some(n)) => moved.to_client += n as u64,
                Ok(None) => {}
            }
        }
        if gone(gr) && gf.contains(PollFlags::POLLIN) && !gr.contains(PollFlags::POLLIN) {
            guest_eof = true;
        }

        // Writes. A failed write to the guest (it closed after its last frame) must not end
        // the splice: what it sent before closing is still to be read and delivered.
        if !up.is_empty() {
            if guest_deaf || (guest_eof && gone(gr)) {
                // Nobody will read it.
                up.clear();
            } else if let Err(_e) = up.drain(&guest) {
                up.clear();
                guest_deaf = true;
            }
        }
        if !down.is_empty() {
            if client_gone {
                down.clear();
            } else if let Err(_e) = down.drain(&client) {
                down.clear();
                client_gone = true;
                client_eof = true;
            }
        }
        if client_gone && !down.is_empty() {
            down.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("socketpair")
    }

    #[test]
    fn test_bytes_flow_both_ways_and_guest_close_ends_it() {
        let (mut client, client_end) = pair();
        let (guest_end, mut guest) = pair();
        let t = std::thread::spawn(move || splice(client_end.into(), guest_end.into()));
        client.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        guest.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hello");
        // 1 MiB back, more than the buffers hold.
        let big = vec![7u8; 1 << 20];
        let w = std::thread::spawn(move || {
            guest.write_all(&big).expect("write big");
            drop(guest);
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).expect("read all");
        w.join().expect("writer");
        assert_eq!(got.len(), 1 << 20);
        let moved = t.join().expect("join").expect("splice");
        assert_eq!(
            moved,
            Moved {
                to_guest: 5,
                to_client: 1 << 20
            }
        );
    }

    #[test]
    fn test_client_half_close_keeps_the_guest_side_open() {
        let (mut client, client_end) = pair();
        let (guest_end, mut guest) = pair();
        let t = std::thread::spawn(move || splice(client_end.into(), guest_end.into()));
        client.write_all(b"in").expect("write");
        client.shutdown(Shutdown::Write).expect("half-close");
        let mut buf = [0u8; 2];
        guest.read_exact(&mut buf).expect("read");
        // The guest side was not half-closed: the guest still writes and the client reads.
        guest
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("timeout");
        let mut probe = [0u8; 1];
        let r = guest.read(&mut probe);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the guest side saw {r:?}"
        );
        guest.write_all(b"out").expect("write");
        drop(guest);
        let mut got = String::new();
        client.read_to_string(&mut got).expect("read");
        assert_eq!(got, "out");
        t.join().expect("join").expect("splice");
    }

    #[test]
    fn test_guest_that_closes_unread_still_has_its_last_words_delivered() {
        // The agent sends its last frame and closes while the client is still writing (the
        // end of stdin after the command exited): the write fails, the frame still arrives.
        let (mut client, client_end) = pair();
        let (guest_end, mut guest) = pair();
        guest.write_all(b"exit frame").expect("write");
        drop(guest);
        client.write_all(&[1u8; 200_000]).ok();
        let t = std::thread::spawn(move || splice(client_end.into(), guest_end.into()));
        let _ = client.write_all(b"late stdin eof");
        // Then the connection ends (with a reset: the splice closes with client bytes unread).
        let mut got = [0u8; 10];
        client.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"exit frame");
        t.join().expect("join").expect("splice");
    }

    #[test]
    fn test_client_close_closes_the_guest_side_after_delivering() {
        let (mut client, client_end) = pair();
        let (guest_end, mut guest) = pair();
        let t = std::thread::spawn(move || splice(client_end.into(), guest_end.into()));
        client.write_all(b"last words").expect("write");
        drop(client);
        let mut got = String::new();
        guest
            .read_to_string(&mut got)
            .expect("read until the splice closes it");
        assert_eq!(got, "last words");
        t.join().expect("join").expect("splice");
    }
}
