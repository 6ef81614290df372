//! A small blocking client for the host side (`vm-run`), over any `Read` / `Write` stream.
//!
//! The stream is what reaches the agent: an `AF_VSOCK` socket, or a hybrid-vsock Unix socket
//! after [`crate::hybrid::connect`]. Nothing the agent sends can make these functions panic;
//! every failure is a [`ClientError`] whose message is meant for the user.
//!
//! Never half-close (`shutdown(SHUT_WR)`) the stream: through vhost-device-vsock a half-close
//! drops the whole connection. The end of stdin is a [`Message::StdinEof`] frame instead.

use std::io::{self, Read, Write};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread;

use thiserror::Error;

use crate::PROTOCOL_VERSION;
use crate::frame::{FrameDecoder, MAX_DATA_CHUNK};
use crate::message::{
    DecodeError, ErrorFrame, ExitStatus, Message, Mode, Request, Signal, Started, WindowSize,
};

/// A client-side failure.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Reading from or writing to the agent connection failed.
    #[error("failed to {op} the guest agent: {source}")]
    Io {
        /// `read from` or `write to`.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The agent closed the connection early.
    #[error("the guest agent closed the connection {during}")]
    Closed {
        /// When, e.g. `before reporting the exit status`.
        during: &'static str,
    },
    /// The agent speaks another protocol version.
    #[error(
        "agent version mismatch: host speaks {host}, guest agent speaks {agent}; rebuild the guest image"
    )]
    VersionMismatch {
        /// Our version.
        host: u16,
        /// The agent's version.
        agent: u16,
    },
    /// The agent sent bytes that are not a valid frame.
    #[error("the guest agent sent a malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The agent sent a valid frame at the wrong time.
    #[error("the guest agent sent {got} where {expected} was expected")]
    Unexpected {
        /// The frame received.
        got: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// The agent refused the request or failed to start the command; the message comes from
    /// the agent (`vmsilo-guest: frobnicate: command not found`). It is guest-chosen text:
    /// shown with its control characters escaped ([`crate::text::escape`]).
    #[error("{}", crate::text::escape(&.0.message))]
    Agent(ErrorFrame),
    /// The stream's read or write timeout passed while the client waited for the agent to
    /// answer (or to take the request): the agent accepted the connection and then went
    /// silent. Only a stream with a timeout (`set_read_timeout`) produces this.
    #[error("the guest agent did not {what} in time")]
    NoAnswer {
        /// What it did not do, e.g. `answer Hello`.
        what: &'static str,
    },
    /// Writing the command's output locally failed.
    #[error("failed to write the command's {stream}: {source}")]
    Output {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The request does not fit the function it was given to.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

impl ClientError {
    /// The exit status `vm-run` should end with: 127 command not found, 126 not executable,
    /// 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Agent(frame) => frame.code.exit_code(),
            _ => 1,
        }
    }
}

/// Reads whole messages from a stream.
#[derive(Debug)]
pub struct MessageReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: Read> MessageReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(),
            buf: vec![0; MAX_DATA_CHUNK + 16],
        }
    }

    /// The next message; `Ok(None)` when the stream ends cleanly between frames. A stream that
    /// ends inside a frame is [`ClientError::Closed`].
    pub fn read_message(&mut self) -> Result<Option<Message>, ClientError> {
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                return Ok(Some(msg));
            }
            let n = match self.inner.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ClientError::Io {
                        op: "read from",
                        source,
                    });
                }
            };
            if n == 0 {
                if self.decoder.has_partial() {
                    return Err(ClientError::Closed {
                        during: "in the middle of a frame",
                    });
                }
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

/// Something to deliver to an attached command while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Forward a signal to the command's process group.
    Signal(Signal),
    /// The local terminal changed size (tty mode).
    Resize(WindowSize),
}

/// The local ends of an attached command.
pub struct AttachedIo {
    /// Copied to the command's stdin by a helper thread; `None` closes its stdin at once.
    pub stdin: Option<Box<dyn Read + Send>>,
    /// Receives the command's stdout (the terminal in tty mode).
    pub stdout: Box<dyn Write + Send>,
    /// Receives the command's stderr.
    pub stderr: Box<dyn Write + Send>,
    /// Signals and window-size changes to forward, read by a helper thread until the sender is
    /// dropped.
    pub controls: Option<Receiver<Control>>,
}

impl std::fmt::Debug for AttachedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedIo")
            .field("stdin", &self.stdin.is_some())
            .field("controls", &self.controls.is_some())
            .finish_non_exhaustive()
    }
}

/// The outcome of an attached command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// What the agent reported when it started the command.
    pub started: Started,
    /// How the command ended.
    pub status: ExitStatus,
}

/// Whether an I/O error is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`).
fn timed_out(e: &ClientError) -> bool {
    matches!(e, ClientError::Io { source, .. }
        if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// Turns a timeout while waiting for the agent to `what` into [`ClientError::NoAnswer`].
fn no_answer(what: &'static str) -> impl Fn(ClientError) -> ClientError {
    move |e| {
        if timed_out(&e) {
            ClientError::NoAnswer { what }
        } else {
            e
        }
    }
}

/// Writes one message to a shared writer.
fn send<W: Write>(writer: &Mutex<W>, msg: &Message) -> Result<(), ClientError> {
    let mut frame = Vec::new();
    msg.encode(&mut frame).map_err(|e| ClientError::Io {
        op: "write to",
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut w = writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    w.write_all(&frame)
        .and_then(|()| w.flush())
        .map_err(|source| ClientError::Io {
            op: "write to",
            source,
        })
}

/// Sends `Hello` and the request, then waits for `HelloReply` and `Started`.
fn start<R: Read, W: Write>(
    reader: &mut MessageReader<R>,
    writer: &Mutex<W>,
    request: &Request,
) -> Result<Started, ClientError> {
    send(
        writer,
        &Message::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .map_err(no_answer("read Hello"))?;
    send(writer, &Message::Request(request.clone())).map_err(no_answer("read the request"))?;
    match reader.read_message().map_err(no_answer("answer Hello"))? {
        Some(Message::HelloReply { version }) if version == PROTOCOL_VERSION => {}
        Some(Message::HelloReply { version }) => {
            return Err(ClientError::VersionMismatch {
                host: PROTOCOL_VERSION,
                agent: version,
            });
        }
        Some(Message::Error(frame)) => return Err(ClientError::Agent(frame)),
        Some(other) => {
            return Err(ClientError::Unexpected {
                got: other.name(),
                expected: "HelloReply",
            });
        }
        None => {
            return Err(ClientError::Closed {
                during: "before answering Hello",
            });
        }
    }
    match reader
        .read_message()
        .map_err(no_answer("report whether the command started"))?
    {
        Some(Message::Started(started)) => Ok(started),
        Some(Message::Error(frame)) => Err(ClientError::Agent(frame)),
        Some(other) => Err(ClientError::Unexpected {
            got: other.name(),
            expected: "Started",
        }),
        None => Err(ClientError::Closed {
            during: "before starting the command",
        }),
    }
}

/// Runs a detached command: returns once the agent has started it.
pub fn run_detached<S: Read + Write>(stream: S, request: &Request) -> Result<Started, ClientError> {
    if request.mode != Mode::Detached {
        return Err(ClientError::InvalidRequest(
            "run_detached needs a request in detached mode",
        ));
    }
    let stream = Mutex::new(stream);
    let mut reader = MessageReader::new(ReadThrough(&stream));
    start(&mut reader, &stream, request)
}

/// Reads through a mutex-guarded stream, for the single-threaded detached case.
struct ReadThrough<'a, S>(&'a Mutex<S>);

impl<S: Read> Read for ReadThrough<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .read(buf)
    }
}

/// Runs an attached command: streams stdin (from a helper thread), stdout and stderr, forwards
/// controls (from another helper thread), and returns the command's exit status.
///
/// `reader` and `writer` are the two directions of one connection (for a socket, the socket
/// and its `try_clone()`). The helper threads end when their input ends or the connection
/// fails; one blocked reading a terminal may outlive this call, which is harmless in a process
/// that exits afterwards.
pub fn run_attached<R, W>(
    reader: R,
    writer: W,
    request: &Request,
    io: AttachedIo,
) -> Result<Attached, ClientError>
where
    R: Read,
    W: Write + Send + 'static,
{
    run_attached_then(reader, writer, request, io, || {})
}

/// [`run_attached`] that calls `on_started` once the agent reported `Started`, before any
/// output is read. Where the start was bounded by a socket timeout (a silent agent is then
/// [`ClientError::NoAnswer`]), `on_started` is where to lift it: a running command may stay
/// silent for as long as it likes.
pub fn run_attached_then<R, W>(
    reader: R,
    writer: W,
    request: &Request,
    io: AttachedIo,
    on_started: impl FnOnce(),
) -> Result<Attached, ClientError>
where
    R: Read,
    W: Write + Send + 'static,
{
    if request.mode != Mode::Attached {
        return Err(ClientError::InvalidRequest(
            "run_attached needs a request in attached mode",
        ));
    }
    let AttachedIo {
        stdin,
        mut stdout,
        mut stderr,
        controls,
    } = io;
    let writer = Arc::new(Mutex::new(writer));
    let mut reader = MessageReader::new(reader);
    let started = start(&mut reader, &writer, request)?;
    on_started();

    match stdin {
        Some(input) => {
            let w = Arc::clone(&writer);
            thread::Builder::new()
                .name("vmsilo-stdin".into())
                .spawn(move || pump_stdin(input, &w))
                .map_err(|source| ClientError::Io {
                    op: "start a stdin thread for",
                    source,
                })?;
        }
        // A command that already ended may have closed the connection: what it reports
        // (read below) decides the outcome, not this write.
        None => {
            let _ = send(&writer, &Message::StdinEof);
        }
    }
    if let Some(rx) = controls {
        let w = Arc::clone(&writer);
        thread::Builder::new()
            .name("vmsilo-controls".into())
            .spawn(move || {
                for control in rx {
                    let msg = match control {
                        Control::Signal(sig) => Message::Signal(sig),
                        Control::Resize(size) => Message::Resize(size),
                    };
                    if send(&w, &msg).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| ClientError::Io {
                op: "start a control thread for",
                source,
            })?;
    }

    loop {
        match reader.read_message()? {
            Some(Message::Stdout(data)) => write_local(&mut stdout, &data, "stdout")?,
            Some(Message::Stderr(data)) => write_local(&mut stderr, &data, "stderr")?,
            Some(Message::Exit(status)) => return Ok(Attached { started, status }),
            Some(Message::Error(frame)) => return Err(ClientError::Agent(frame)),
            Some(other) => {
                return Err(ClientError::Unexpected {
                    got: other.name(),
                    expected: "Stdout, Stderr or Exit",
                });
            }
            None => {
                return Err(ClientError::Closed {
                    during: "before reporting the exit status",
                });
            }
        }
    }
}

fn write_local(out: &mut dyn Write, data: &[u8], stream: &'static str) -> Result<(), ClientError> {
    out.write_all(data)
        .and_then(|()| out.flush())
        .map_err(|source| ClientError::Output { stream, source })
}

fn pump_stdin<W: Write>(mut input: Box<dyn Read + Send>, writer: &Mutex<W>) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if send(writer, &Message::Stdin(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A local read error ends stdin, as EOF would.
            Err(_) => break,
        }
    }
    let _ = send(writer, &Message::StdinEof);
}
