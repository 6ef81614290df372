//! The Wayland wire format on a unix stream: message encoding, event decoding, object ids,
//! and file descriptors sent with `SCM_RIGHTS`.
//!
//! Every event is checked before use: a short, oversized or truncated message is an error,
//! never a panic. File descriptors sent to us are discarded by the kernel (we read without a
//! control buffer); none of the interfaces this client binds sends any.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// Largest message the protocol allows (libwayland's limit).
pub const MAX_MESSAGE: usize = 4096;
/// The id of `wl_display`.
pub const DISPLAY: u32 = 1;

/// What can end the client.
#[derive(Debug)]
pub enum ClientError {
    /// Bad command line.
    Usage(String),
    /// No compositor to connect to.
    Connect(String),
    /// A socket operation failed.
    Io(String, io::Error),
    /// The compositor sent `wl_display.error`.
    Protocol {
        /// The object the error is about.
        object: u32,
        /// The interface's error code.
        code: u32,
        /// The compositor's text.
        message: String,
    },
    /// The compositor closed the connection.
    Disconnected,
    /// A message that does not parse.
    Malformed(String),
    /// Something the compositor lacks, or a wait that ran out.
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Usage(s) => write!(f, "usage: {s} (see --help)"),
            ClientError::Connect(s) => write!(f, "connecting: {s}"),
            ClientError::Io(what, e) => write!(f, "{what}: {e}"),
            ClientError::Protocol {
                object,
                code,
                message,
            } => write!(
                f,
                "protocol error: object={object} code={code} message={message:?}"
            ),
            ClientError::Disconnected => write!(f, "the compositor closed the connection"),
            ClientError::Malformed(s) => write!(f, "malformed message from the compositor: {s}"),
            ClientError::Failed(s) => write!(f, "{s}"),
        }
    }
}

impl ClientError {
    /// The process exit code (documented in `--help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Protocol { .. } => 3,
            ClientError::Disconnected => 4,
            ClientError::Malformed(_) => 5,
            ClientError::Connect(_) | ClientError::Io(..) | ClientError::Failed(_) => 1,
        }
    }
}

/// The result type of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A request being encoded.
#[derive(Debug)]
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    /// A request `opcode` on `object`.
    pub fn new(object: u32, opcode: u16) -> Msg {
        let mut buf = Vec::with_capacity(32);
        buf.extend_from_slice(&object.to_ne_bytes());
        buf.extend_from_slice(&u32::from(opcode).to_ne_bytes());
        Msg { buf }
    }

    /// A `uint`, `object` or `new_id` argument.
    pub fn uint(mut self, v: u32) -> Msg {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// An `int` argument.
    pub fn int(mut self, v: i32) -> Msg {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// A `string` argument (NUL-terminated, padded to 4 bytes).
    pub fn string(mut self, s: &str) -> Msg {
        let len = s.len() + 1;
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    /// The encoded message with its size filled in.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let size = self.buf.len();
        if size > MAX_MESSAGE {
            return Err(ClientError::Usage(format!(
                "a request of {size} bytes is larger than {MAX_MESSAGE}"
            )));
        }
        let opcode = u32::from_ne_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let word = ((size as u32) << 16) | (opcode & 0xffff);
        self.buf[4..8].copy_from_slice(&word.to_ne_bytes());
        Ok(self.buf)
    }
}

/// One event from the compositor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The object it is sent to.
    pub object: u32,
    /// Its opcode.
    pub opcode: u16,
    /// The argument bytes.
    pub body: Vec<u8>,
}

/// Reads an event's arguments in order; every read checks the bounds.
#[derive(Debug)]
pub struct Args<'a> {
    body: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Args<'a> {
    /// The arguments of `ev`; `what` names the event in errors.
    pub fn new(ev: &'a Event, what: &'static str) -> Args<'a> {
        Args {
            body: &ev.body,
            at: 0,
            what,
        }
    }

    fn short(&self) -> ClientError {
        ClientError::Malformed(format!("{}: arguments cut short", self.what))
    }

    /// A `uint`, `object` or `new_id`.
    pub fn uint(&mut self) -> Result<u32> {
        let end = self.at.checked_add(4).ok_or_else(|| self.short())?;
        let b = self.body.get(self.at..end).ok_or_else(|| self.short())?;
        self.at = end;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An `array` (the raw bytes).
    pub fn array(&mut self) -> Result<&'a [u8]> {
        let len = self.uint()? as usize;
        let padded = len.checked_add(3).ok_or_else(|| self.short())? & !3;
        let end = self.at.checked_add(padded).ok_or_else(|| self.short())?;
        let data = self
            .body
            .get(self.at..self.at + len)
            .ok_or_else(|| self.short())?;
        if end > self.body.len() {
            return Err(self.short());
        }
        self.at = end;
        Ok(data)
    }

    /// A `string` (lossy UTF-8, without its NUL); a null string reads as empty.
    pub fn string(&mut self) -> Result<String> {
        let raw = self.array()?;
        match raw.split_last() {
            None => Ok(String::new()),
            Some((0, s)) => Ok(String::from_utf8_lossy(s).into_owned()),
            Some(_) => Err(ClientError::Malformed(format!(
                "{}: string without its terminating NUL",
                self.what
            ))),
        }
    }
}

/// The socket named by `WAYLAND_DISPLAY` (relative to `XDG_RUNTIME_DIR` unless absolute).
pub fn display_path() -> Result<PathBuf> {
    let display = std::env::var_os("WAYLAND_DISPLAY")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "wayland-0".into());
    let display = PathBuf::from(display);
    if display.is_absolute() {
        return Ok(display);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            ClientError::Connect(
                "XDG_RUNTIME_DIR is not set and WAYLAND_DISPLAY is not an absolute path".into(),
            )
        })?;
    Ok(PathBuf::from(runtime).join(display))
}

/// A client connection: buffered requests and fds out, decoded events in, id allocation.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    out: Vec<u8>,
    out_fds: Vec<OwnedFd>,
    inbuf: Vec<u8>,
    next_id: u32,
    free_ids: Vec<u32>,
}

impl Connection {
    /// Connects to the compositor at `path`.
    pub fn connect(path: &std::path::Path) -> Result<Connection> {
        let stream = UnixStream::connect(path)
            .map_err(|e| ClientError::Connect(format!("{}: {e}", path.display())))?;
        Ok(Connection {
            stream,
            out: Vec::new(),
            out_fds: Vec::new(),
            inbuf: Vec::new(),
            next_id: 2,
            free_ids: Vec::new(),
        })
    }

    /// A fresh object id: one the compositor released (`delete_id`) or the next unused one,
    /// as libwayland allocates them (a server only accepts those).
    pub fn new_id(&mut self) -> u32 {
        if let Some(id) = self.free_ids.pop() {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Marks `id` free again (after `wl_display.delete_id`).
    pub fn release_id(&mut self, id: u32) {
        if id > DISPLAY && id < self.next_id && !self.free_ids.contains(&id) {
            self.free_ids.push(id);
        }
    }

    /// Queues a request.
    pub fn send(&mut self, msg: Msg) -> Result<()> {
        let bytes = msg.finish()?;
        self.out.extend_from_slice(&bytes);
        Ok(())
    }

    /// Queues a request that carries `fd` (sent with the queued bytes at the next flush).
    pub fn send_with_fd(&mut self, msg: Msg, fd: OwnedFd) -> Result<()> {
        self.send(msg)?;
        self.out_fds.push(fd);
        Ok(())
    }

    /// Writes every queued request (and fd).
    pub fn flush(&mut self) -> Result<()> {
        let mut sent = 0;
        while sent < self.out.len() {
            let fds: Vec<RawFd> = self.out_fds.iter().map(AsRawFd::as_raw_fd).collect();
            let cmsgs = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
            let iov = [IoSlice::new(&self.out[sent..])];
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => {
                    sent += n;
                    // The fds went with the first bytes; close our copies.
                    self.out_fds.clear();
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                    return Err(ClientError::Disconnected);
                }
                Err(e) => return Err(ClientError::Io("sending requests".into(), e.into())),
            }
        }
        self.out.clear();
        Ok(())
    }

    /// The next event. Waits at most `timeout` (`None`: forever) for data; returns `Ok(None)`
    /// when the time is up.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>> {
        loop {
            if let Some(ev) = self.take_event()? {
                return Ok(Some(ev));
            }
            self.stream
                .set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))
                .map_err(|e| ClientError::Io("setting the read timeout".into(), e))?;
            let mut buf = [0u8; 8192];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Disconnected),
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ClientError::Disconnected);
                }
                Err(e) => return Err(ClientError::Io("reading events".into(), e)),
            }
        }
    }

    /// Splits one complete event off the input buffer.
    fn take_event(&mut self) -> Result<Option<Event>> {
        if self.inbuf.len() < 8 {
            return Ok(None);
        }
        let object =
            u32::from_ne_bytes([self.inbuf[0], self.inbuf[1], self.inbuf[2], self.inbuf[3]]);
        let word = u32::from_ne_bytes([self.inbuf[4], self.inbuf[5], self.inbuf[6], self.inbuf[7]]);
        let size = (word >> 16) as usize;
        if !(8..=MAX_MESSAGE).contains(&size) || !size.is_multiple_of(4) {
            return Err(ClientError::Malformed(format!(
                "event on object {object} with size {size}"
            )));
        }
        if self.inbuf.len() < size {
            return Ok(None);
        }
        let body = self.inbuf[8..size].to_vec();
        self.inbuf.drain(..size);
        Ok(Some(Event {
            object,
            opcode: (word & 0xffff) as u16,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bytes: Vec<u8>) -> Event {
        Event {
            object: 1,
            opcode: 0,
            body: bytes,
        }
    }

    #[test]
    fn test_requests_encode_size_opcode_and_padded_strings() {
        let m = Msg::new(7, 2).uint(9).string("abc").finish().unwrap();
        assert_eq!(m.len(), 8 + 4 + 4 + 4);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(m[4..8].try_into().unwrap()),
            (20 << 16) | 2
        );
        assert_eq!(&m[12..20], &[4, 0, 0, 0, b'a', b'b', b'c', 0][..]);
        let m = Msg::new(7, 0).string("abcd").finish().unwrap();
        assert_eq!(m.len(), 8 + 4 + 8, "5 bytes with the NUL pad to 8");
        assert!(Msg::new(1, 0).string(&"x".repeat(5000)).finish().is_err());
    }

    #[test]
    fn test_args_decode_and_reject_truncation() {
        let body = Msg::new(0, 0)
            .uint(5)
            .string("wl_shm")
            .int(-3)
            .finish()
            .unwrap()[8..]
            .to_vec();
        let ev = event(body.clone());
        let mut a = Args::new(&ev, "test");
        assert_eq!(a.uint().unwrap(), 5);
        assert_eq!(a.string().unwrap(), "wl_shm");
        assert_eq!(a.uint().unwrap() as i32, -3);
        assert!(a.uint().is_err());
        for cut in 0..body.len() {
            let ev = event(body[..cut].to_vec());
            let mut a = Args::new(&ev, "test");
            let r = a.uint().and_then(|_| a.string()).and_then(|_| a.uint());
            assert!(r.is_err(), "cut at {cut}");
        }
        // A huge length does not overflow or panic.
        let ev = event(u32::MAX.to_ne_bytes().to_vec());
        assert!(Args::new(&ev, "test").array().is_err());
        // A string without its NUL.
        let ev = event([4u32.to_ne_bytes(), *b"abcd"].concat());
        assert!(Args::new(&ev, "test").string().is_err());
        let ev = event([3u32.to_ne_bytes(), *b"ab\0\0"].concat());
        assert_eq!(Args::new(&ev, "test").string().unwrap(), "ab");
    }

    #[test]
    fn test_ids_are_reused_after_delete_id() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection {
            stream: a,
            out: Vec::new(),
            out_fds: Vec::new(),
            inbuf: Vec::new(),
            next_id: 2,
            free_ids: Vec::new(),
        };
        assert_eq!((c.new_id(), c.new_id(), c.new_id()), (2, 3, 4));
        c.release_id(3);
        c.release_id(3);
        c.release_id(1);
        c.release_id(99);
        assert_eq!(c.new_id(), 3);
        assert_eq!(c.new_id(), 5);
    }

    #[test]
    fn test_events_split_and_bad_sizes_are_errors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut c = Connection {
            stream: a,
            out: Vec::new(),
            out_fds: Vec::new(),
            inbuf: Vec::new(),
            next_id: 2,
            free_ids: Vec::new(),
        };
        let m = Msg::new(3, 0).uint(42).finish().unwrap();
        use std::io::Write;
        b.write_all(&m[..5]).unwrap();
        assert_eq!(c.next_event(Some(Duration::from_millis(20))).unwrap(), None);
        b.write_all(&m[5..]).unwrap();
        let ev = c.next_event(None).unwrap().unwrap();
        assert_eq!((ev.object, ev.opcode, ev.body.len()), (3, 0, 4));
        b.write_all(&[1, 0, 0, 0, 0, 0, 4, 0]).unwrap();
        assert!(matches!(c.next_event(None), Err(ClientError::Malformed(_))));
        drop(b);
        c.inbuf.clear();
        assert!(matches!(c.next_event(None), Err(ClientError::Disconnected)));
    }
}
