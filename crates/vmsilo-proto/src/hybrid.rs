//! The hybrid-vsock handshake of Firecracker and vhost-device-vsock: on the host, a Unix socket
//! stands for the guest's vsock; the client writes `CONNECT <port>\n` and the backend answers
//! `OK <something>\n` once the guest accepted, or closes the socket if nothing listens there.
//!
//! vhost-device-vsock 0.3 answers `OK <guest port>`, Firecracker `OK <host-side port>`: any
//! `OK ` line is accepted.
//!
//! **Never close a socket whose `CONNECT` is still unanswered.** vhost-device-vsock 0.3 writes
//! its `OK` with `write_all(..).unwrap()` (`vsock_conn.rs`): when the guest accepts after the
//! host end has gone, the write fails with `EPIPE`, the device's worker thread panics, and from
//! then on every `CONNECT` to that VM is accepted by the kernel and never answered, while the
//! VM itself keeps running. A client that gives up on a slow answer (a loaded host, a TCG
//! guest still booting) therefore cuts the VM's vsock off for good. [`PendingConnect`] waits
//! for the answer without closing, and [`linger`] keeps abandoned attempts open in the
//! background until they are answered.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Longest reply line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

/// The handshake failed.
#[derive(Debug, Error)]
pub enum HybridError {
    /// Writing `CONNECT` or reading the reply failed.
    #[error("hybrid vsock: failed to connect to guest port {port}: {source}")]
    Io {
        /// The guest port.
        port: u32,
        /// The OS error.
        source: io::Error,
    },
    /// The backend closed the socket: nothing listens on that port in the guest (yet).
    #[error(
        "hybrid vsock: guest port {port} refused the connection (nothing listens there yet: is the guest agent running?)"
    )]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// The backend closed the socket without reading `CONNECT`: vhost-device-vsock does this
    /// while the guest's driver has not started the vsock device (early in the boot).
    #[error(
        "hybrid vsock: the guest's vsock device is not started yet (the backend closed CONNECT {port} unread)"
    )]
    NotStarted {
        /// The guest port.
        port: u32,
    },
    /// The backend answered something other than `OK`.
    #[error("hybrid vsock: unexpected reply to CONNECT {port}: {reply:?}")]
    BadReply {
        /// The guest port.
        port: u32,
        /// What came back (lossily decoded, at most 64 bytes).
        reply: String,
    },
}

/// Performs the handshake on a freshly connected hybrid-vsock Unix socket. Afterwards the
/// stream carries the bytes of the guest port. Reads one byte at a time so that nothing after
/// the reply line is consumed.
pub fn connect<S: Read + Write>(stream: &mut S, port: u32) -> Result<(), HybridError> {
    let io_err = |source| HybridError::Io { port, source };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .and_then(|()| stream.flush())
        .map_err(io_err)?;
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HybridError::Refused { port }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HybridError::Refused { port });
            }
            Err(e) => return Err(io_err(e)),
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY {
            break;
        }
    }
    if line.starts_with(b"OK ") && line.len() <= MAX_REPLY {
        Ok(())
    } else {
        Err(HybridError::BadReply {
            port,
            reply: String::from_utf8_lossy(&line).into_owned(),
        })
    }
}

/// A `CONNECT <port>` sent on a hybrid-vsock Unix socket whose answer has not arrived yet.
///
/// Dropping it closes the socket: do that only after [`PendingConnect::poll`] returned an
/// error (the backend closed first), and hand unanswered attempts to [`linger`] instead (see
/// the module documentation for why).
#[derive(Debug)]
pub struct PendingConnect {
    stream: UnixStream,
    port: u32,
    line: Vec<u8>,
    sent: Instant,
}

impl PendingConnect {
    /// Writes `CONNECT <port>\n` on a freshly connected hybrid-vsock socket.
    pub fn send(mut stream: UnixStream, port: u32) -> Result<PendingConnect, HybridError> {
        let io_err = |source: io::Error| match source.kind() {
            // The backend accepted and closed at once (vhost-device-vsock before the guest
            // driver set the device up): nothing is pending, the port is not reachable yet.
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                HybridError::NotStarted { port }
            }
            _ => HybridError::Io { port, source },
        };
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(io_err)?;
        Ok(PendingConnect {
            stream,
            port,
            line: Vec::with_capacity(16),
            sent: Instant::now(),
        })
    }

    /// How long the answer has been awaited.
    pub fn age(&self) -> Duration {
        self.sent.elapsed()
    }

    /// The guest port asked for.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Reads what has arrived of the answer, waiting at most `wait` for it (`Duration::ZERO`:
    /// not at all). `Ok(None)`: still unanswered, keep the attempt. `Ok(Some(stream))`: `OK`
    /// arrived; the stream is blocking, without timeouts, and carries the port's bytes (nothing
    /// after the reply line was consumed). `Err`: the attempt is over (refused, a bad reply,
    /// an I/O error) and its socket may be closed.
    pub fn poll(&mut self, wait: Duration) -> Result<Option<UnixStream>, HybridError> {
        let port = self.port;
        let io_err = |source| HybridError::Io { port, source };
        if wait.is_zero() {
            self.stream.set_nonblocking(true).map_err(io_err)?;
        } else {
            self.stream.set_nonblocking(false).map_err(io_err)?;
            self.stream.set_read_timeout(Some(wait)).map_err(io_err)?;
        }
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(HybridError::Refused { port }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                // A Unix socket closed with our bytes unread: the backend never read CONNECT.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(HybridError::NotStarted { port });
                }
                Err(e) => return Err(io_err(e)),
            }
            if byte[0] == b'\n' {
                break;
            }
            self.line.push(byte[0]);
            if self.line.len() > MAX_REPLY {
                break;
            }
        }
        if !(self.line.starts_with(b"OK ") && self.line.len() <= MAX_REPLY) {
            return Err(HybridError::BadReply {
                port,
                reply: String::from_utf8_lossy(&self.line).into_owned(),
            });
        }
        let stream = self.stream.try_clone().map_err(io_err)?;
        stream.set_nonblocking(false).map_err(io_err)?;
        stream.set_read_timeout(None).map_err(io_err)?;
        Ok(Some(stream))
    }
}

/// How long [`linger`] keeps an unanswered attempt open at most.
pub const LINGER_LIMIT: Duration = Duration::from_secs(600);

/// Unanswered attempts [`linger`] keeps open at once in this process, at most.
pub const MAX_LINGERING: usize = 256;

/// Attempts lingering now.
static LINGERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Keeps abandoned, still unanswered attempts open until each is answered (or refused), then
/// closes it; gives up after [`LINGER_LIMIT`]. Runs in a background thread, checking every
/// 100 ms. If [`MAX_LINGERING`] attempts linger already or no thread can be started, the
/// attempts are closed at once (the risk the module documentation describes), and the error
/// says so.
pub fn linger(attempts: Vec<PendingConnect>) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    let n = attempts.len();
    if n == 0 {
        return Ok(());
    }
    if LINGERING.fetch_add(n, Ordering::SeqCst) + n > MAX_LINGERING {
        LINGERING.fetch_sub(n, Ordering::SeqCst);
        return Err(io::Error::other(format!(
            "{MAX_LINGERING} unanswered hybrid-vsock attempts are kept open already: closing {n} more"
        )));
    }
    std::thread::Builder::new()
        .name("hybrid-linger".into())
        .spawn(move || {
            linger_until_answered(attempts, LINGER_LIMIT);
            LINGERING.fetch_sub(n, Ordering::SeqCst);
        })
        .map(drop)
        .inspect_err(|_| {
            LINGERING.fetch_sub(n, Ordering::SeqCst);
        })
}

/// [`linger`]'s loop, in the calling thread: returns once every attempt was answered or
/// refused, or `limit` passed.
pub fn linger_until_answered(mut attempts: Vec<PendingConnect>, limit: Duration) {
    let start = Instant::now();
    const CHECK: Duration = Duration::from_millis(100);
    while !attempts.is_empty() && start.elapsed() < limit {
        // Wait on the first, look at the others without waiting.
        let mut first = true;
        attempts.retain_mut(|a| {
            let wait = if std::mem::take(&mut first) {
                CHECK
            } else {
                Duration::ZERO
            };
            matches!(a.poll(wait), Ok(None))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose reads come from a script and whose writes are recorded.
    struct Script {
        input: io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn script(reply: &[u8]) -> Script {
        Script {
            input: io::Cursor::new(reply.to_vec()),
            written: Vec::new(),
        }
    }

    #[test]
    fn test_accepts_ok_and_leaves_the_rest_unread() {
        let mut s = script(b"OK 5000\nrest");
        connect(&mut s, 5000).unwrap();
        assert_eq!(s.written, b"CONNECT 5000\n");
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
    }

    #[test]
    fn test_close_is_refused_and_garbage_is_a_bad_reply() {
        assert!(matches!(
            connect(&mut script(b""), 5000),
            Err(HybridError::Refused { port: 5000 })
        ));
        assert!(matches!(
            connect(&mut script(b"NOPE\n"), 5000),
            Err(HybridError::BadReply { .. })
        ));
        assert!(matches!(
            connect(&mut script(&[b'O'; 1000]), 5000),
            Err(HybridError::BadReply { .. })
        ));
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("socketpair")
    }

    fn read_line(s: &mut UnixStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).expect("read") == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    #[test]
    fn test_pending_connect_waits_for_a_late_answer_without_closing() {
        let (host, mut backend) = pair();
        let mut p = PendingConnect::send(host, 5000).expect("send");
        assert_eq!(read_line(&mut backend), "CONNECT 5000");
        assert!(p.poll(Duration::ZERO).expect("poll").is_none());
        assert!(
            p.poll(Duration::from_millis(1)).expect("poll").is_none(),
            "still unanswered"
        );
        // Half an answer, then the rest and data behind it.
        backend.write_all(b"OK 50").expect("write");
        assert!(p.poll(Duration::ZERO).expect("poll").is_none());
        backend.write_all(b"00\nafter").expect("write");
        let mut s = p
            .poll(Duration::from_secs(60))
            .expect("poll")
            .expect("answered");
        drop(backend);
        let mut rest = String::new();
        s.read_to_string(&mut rest).expect("read");
        assert_eq!(rest, "after");
    }

    #[test]
    fn test_pending_connect_close_is_refused_and_garbage_is_a_bad_reply() {
        // The backend read CONNECT and closed (the guest refused): refused.
        let (host, mut backend) = pair();
        let mut p = PendingConnect::send(host, 5000).expect("send");
        assert_eq!(read_line(&mut backend), "CONNECT 5000");
        drop(backend);
        assert!(matches!(
            p.poll(Duration::from_secs(60)),
            Err(HybridError::Refused { port: 5000 })
        ));
        let (host, mut backend) = pair();
        let mut p = PendingConnect::send(host, 5000).expect("send");
        backend.write_all(&[b'x'; 100]).expect("write");
        assert!(matches!(
            p.poll(Duration::from_secs(60)),
            Err(HybridError::BadReply { .. })
        ));
        // A backend that closed before CONNECT was written, or without reading it: its
        // device is not started, not an I/O failure.
        let (host, backend) = pair();
        drop(backend);
        assert!(matches!(
            PendingConnect::send(host, 5000),
            Err(HybridError::NotStarted { port: 5000 })
        ));
        let (host, backend) = pair();
        let mut p = PendingConnect::send(host, 5000).expect("send");
        drop(backend);
        assert!(matches!(
            p.poll(Duration::from_secs(60)),
            Err(HybridError::NotStarted { port: 5000 })
        ));
    }

    #[test]
    fn test_lingering_attempt_stays_open_until_answered_then_closes() {
        let (host, mut backend) = pair();
        let p = PendingConnect::send(host, 5000).expect("send");
        assert_eq!(read_line(&mut backend), "CONNECT 5000");
        let t = std::thread::spawn(move || linger_until_answered(vec![p], LINGER_LIMIT));
        // While unanswered, the host end stays open: a read finds nothing, not EOF.
        backend.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        let e = backend.read(&mut b).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        backend.set_nonblocking(false).expect("blocking");
        backend.write_all(b"OK 5000\n").expect("answer");
        t.join().expect("linger");
        assert_eq!(
            backend.read(&mut b).expect("read"),
            0,
            "closed once answered"
        );
    }

    #[test]
    fn test_lingering_attempts_are_capped() {
        // The only test that calls linger(): the count is per process.
        let mut backends = Vec::new();
        let mut attempts = Vec::new();
        for _ in 0..MAX_LINGERING {
            let (host, backend) = pair();
            attempts.push(PendingConnect::send(host, 5000).expect("send"));
            backends.push(backend);
        }
        linger(attempts).expect("within the cap");
        let (host, mut extra) = pair();
        let one = PendingConnect::send(host, 5000).expect("send");
        let e = linger(vec![one]).expect_err("over the cap");
        assert!(e.to_string().contains("kept open already"), "{e}");
        assert_eq!(read_line(&mut extra), "CONNECT 5000");
        let mut b = [0u8; 1];
        assert_eq!(extra.read(&mut b).expect("read"), 0, "closed at once");
        // Answer the lingering ones so that their thread ends.
        for mut b in backends {
            b.write_all(b"OK 5000\n").expect("answer");
        }
    }
}
