//! The hybrid-vsock handshake of Firecracker and vhost-device-vsock: on the host, a Unix socket
//! stands for the guest's vsock; the client writes `CONNECT <port>\n` and the backend answers
//! `OK <something>\n` once the guest accepted, or closes the socket if nothing listens there.
//!
//! vhost-device-vsock 0.3 answers `OK <guest port>`, Firecracker `OK <host-side port>`: any
//! `OK ` line is accepted.

use std::io::{self, Read, Write};

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
    fn accepts_ok_and_leaves_the_rest_unread() {
        let mut s = script(b"OK 5000\nrest");
        connect(&mut s, 5000).unwrap();
        assert_eq!(s.written, b"CONNECT 5000\n");
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
    }

    #[test]
    fn close_is_refused_and_garbage_is_a_bad_reply() {
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
}
