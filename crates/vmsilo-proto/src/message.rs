//! Typed messages: what each frame type means and how its payload is encoded.
//!
//! Three frame types have a fixed layout that never changes between protocol versions, so that
//! two peers of different versions can always tell each other so: [`Message::Hello`],
//! [`Message::HelloReply`] and [`Message::Error`]. Every other payload is
//! [postcard](https://docs.rs/postcard) (serde, varint integers) and may change with
//! [`crate::PROTOCOL_VERSION`]; data frames carry raw bytes.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::{FrameDecoder, FrameError, MAX_DATA_CHUNK, RawFrame, encode_frame};

/// The four bytes that start a `Hello` and a `HelloReply` payload.
pub const MAGIC: [u8; 4] = *b"VMSL";

/// Longest error message carried in an `Error` frame; longer ones are cut at a character
/// boundary.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// Frame type bytes.
pub mod kind {
    /// client -> agent, first frame: magic + version (fixed layout).
    pub const HELLO: u8 = 0x01;
    /// agent -> client, reply to `HELLO`: magic + agent version (fixed layout).
    pub const HELLO_REPLY: u8 = 0x02;
    /// either direction: code + message (fixed layout).
    pub const ERROR: u8 = 0x03;
    /// client -> agent: the command to run (postcard).
    pub const REQUEST: u8 = 0x10;
    /// client -> agent: bytes for the command's stdin (raw).
    pub const STDIN: u8 = 0x11;
    /// client -> agent: end of stdin (empty).
    pub const STDIN_EOF: u8 = 0x12;
    /// client -> agent: terminal size changed (postcard).
    pub const RESIZE: u8 = 0x13;
    /// client -> agent: deliver a signal (postcard).
    pub const SIGNAL: u8 = 0x14;
    /// agent -> client: the command has been started (postcard).
    pub const STARTED: u8 = 0x20;
    /// agent -> client: bytes the command wrote to stdout (raw; the terminal in tty mode).
    pub const STDOUT: u8 = 0x21;
    /// agent -> client: bytes the command wrote to stderr (raw).
    pub const STDERR: u8 = 0x22;
    /// agent -> client: how the command ended (postcard); the last frame of a connection.
    pub const EXIT: u8 = 0x23;
    /// First kind reserved for the command service's status exchange (`vmsilo command-service`
    /// → `vm-run`, before the agent protocol starts on the same socket; see
    /// `docs/protocol.md`). The agent never sends these and rejects them as unknown.
    pub const COMMAND_SERVICE_FIRST: u8 = 0x30;
    /// Last kind reserved for the command service (`0x38..=0x3F` of the range are
    /// informational: clients skip the ones they do not know).
    pub const COMMAND_SERVICE_LAST: u8 = 0x3F;
}

/// Whether the client waits for the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// The agent replies `Started` once the command runs, then closes the connection.
    Detached,
    /// The agent streams stdio and ends with `Exit`.
    Attached,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A command to run in the guest.
///
/// Strings are raw bytes because Unix arguments, environment values and paths are: nothing a
/// user passes is lost in a UTF-8 conversion. None of them may contain a NUL byte (the agent
/// refuses such a request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The command and its arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<Vec<u8>>,
    /// Environment variables added to (or replacing those in) the agent's base environment.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory; `None` is the user's home directory (or `/`).
    pub cwd: Option<Vec<u8>>,
    /// Detached or attached.
    pub mode: Mode,
    /// `Some` allocates a pseudo-terminal of this size for the command (attached mode only).
    pub tty: Option<WindowSize>,
    /// The guest account to run as; `None` is the agent's default user.
    pub user: Option<String>,
}

impl Request {
    /// A detached request for `argv` with no environment additions, no tty, default user.
    pub fn detached<I, A>(argv: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        Self::new(Mode::Detached, argv)
    }

    /// An attached request for `argv` (pipes, not a tty).
    pub fn attached<I, A>(argv: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        Self::new(Mode::Attached, argv)
    }

    fn new<I, A>(mode: Mode, argv: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        Self {
            argv: argv.into_iter().map(|a| a.as_ref().to_vec()).collect(),
            env: Vec::new(),
            cwd: None,
            mode,
            tty: None,
            user: None,
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.env
            .push((key.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl AsRef<[u8]>) -> Self {
        self.cwd = Some(dir.as_ref().to_vec());
        self
    }

    /// Asks for a pseudo-terminal of this size.
    pub fn tty(mut self, size: WindowSize) -> Self {
        self.tty = Some(size);
        self
    }

    /// Sets the guest user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The command name for messages: `argv[0]`, lossily decoded.
    pub fn command_name(&self) -> String {
        self.argv
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default()
    }
}

/// Reply to a request: the command runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Its process id in the guest (0 if the service manager did not report one).
    pub pid: u32,
    /// The transient systemd unit it runs in, when the agent handed it to the user's service
    /// manager.
    pub unit: Option<String>,
}

/// Signals the client may ask the agent to deliver to the command's process group. The numbers
/// are Linux's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Alrm,
    Term,
    Cont,
    Stop,
    Tstp,
    Winch,
}

impl Signal {
    const TABLE: [(Signal, i32, &'static str); 12] = [
        (Signal::Hup, 1, "SIGHUP"),
        (Signal::Int, 2, "SIGINT"),
        (Signal::Quit, 3, "SIGQUIT"),
        (Signal::Kill, 9, "SIGKILL"),
        (Signal::Usr1, 10, "SIGUSR1"),
        (Signal::Usr2, 12, "SIGUSR2"),
        (Signal::Alrm, 14, "SIGALRM"),
        (Signal::Term, 15, "SIGTERM"),
        (Signal::Cont, 18, "SIGCONT"),
        (Signal::Stop, 19, "SIGSTOP"),
        (Signal::Tstp, 20, "SIGTSTP"),
        (Signal::Winch, 28, "SIGWINCH"),
    ];

    /// The Linux signal number.
    pub fn number(self) -> i32 {
        Self::TABLE
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or(0, |(_, n, _)| *n)
    }

    /// The signal with this Linux number, if it is one the protocol carries.
    pub fn from_number(number: i32) -> Option<Self> {
        Self::TABLE
            .iter()
            .find(|(_, n, _)| *n == number)
            .map(|(s, _, _)| *s)
    }

    /// `SIGINT` and so on.
    pub fn name(self) -> &'static str {
        Self::TABLE
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or("?", |(_, _, name)| name)
    }
}

/// How an attached command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this status (0-255).
    Exited(u8),
    /// A signal (Linux number) killed it.
    Signaled {
        /// The signal number.
        signal: u8,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl ExitStatus {
    /// The shell convention: the exit status, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(code) => i32::from(code),
            Self::Signaled { signal, .. } => 128 + i32::from(signal),
        }
    }

    /// True for `Exited(0)`.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }
}

/// What went wrong, in an `Error` frame. The numbers are part of the fixed layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// A frame could not be decoded, or came at the wrong time.
    Malformed,
    /// The request was decoded but is not acceptable (empty argv, NUL bytes, tty in detached
    /// mode, missing working directory...).
    BadRequest,
    /// `argv[0]` was not found (exit status 127).
    CommandNotFound,
    /// `argv[0]` was found but could not be executed (exit status 126).
    NotExecutable,
    /// Starting the command failed for another reason.
    SpawnFailed,
    /// The requested guest user does not exist.
    UnknownUser,
    /// The agent refused: peer not allowed, or it may not switch to the requested user.
    PermissionDenied,
    /// The agent failed internally.
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire number.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::VersionMismatch => 1,
            Self::Malformed => 2,
            Self::BadRequest => 3,
            Self::CommandNotFound => 4,
            Self::NotExecutable => 5,
            Self::SpawnFailed => 6,
            Self::UnknownUser => 7,
            Self::PermissionDenied => 8,
            Self::Internal => 9,
            Self::Other(n) => n,
        }
    }

    /// From the wire number.
    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => Self::VersionMismatch,
            2 => Self::Malformed,
            3 => Self::BadRequest,
            4 => Self::CommandNotFound,
            5 => Self::NotExecutable,
            6 => Self::SpawnFailed,
            7 => Self::UnknownUser,
            8 => Self::PermissionDenied,
            9 => Self::Internal,
            n => Self::Other(n),
        }
    }

    /// The exit status `vm-run` reports for this refusal: 127 command not found, 126 not
    /// executable, 1 otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::CommandNotFound => 127,
            Self::NotExecutable => 126,
            _ => 1,
        }
    }
}

/// An `Error` frame: a code and a message meant for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The kind of failure.
    pub code: ErrorCode,
    /// What failed, e.g. `vmsilo-guest: frobnicate: command not found`.
    pub message: String,
}

impl ErrorFrame {
    /// An error frame.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame of the client: its protocol version.
    Hello {
        /// [`crate::PROTOCOL_VERSION`] of the client.
        version: u16,
    },
    /// The agent's answer to `Hello`: its protocol version, sent whether or not they match.
    HelloReply {
        /// [`crate::PROTOCOL_VERSION`] of the agent.
        version: u16,
    },
    /// A refusal or failure; the sender closes the connection after it.
    Error(ErrorFrame),
    /// The command to run (second frame of the client).
    Request(Request),
    /// Bytes for stdin, at most [`MAX_DATA_CHUNK`].
    Stdin(Vec<u8>),
    /// End of stdin.
    StdinEof,
    /// Terminal size change (tty mode).
    Resize(WindowSize),
    /// Deliver a signal to the command's process group.
    Signal(Signal),
    /// The command runs.
    Started(Started),
    /// Output on stdout (or the terminal), at most [`MAX_DATA_CHUNK`].
    Stdout(Vec<u8>),
    /// Output on stderr, at most [`MAX_DATA_CHUNK`].
    Stderr(Vec<u8>),
    /// How the command ended.
    Exit(ExitStatus),
}

/// A message could not be encoded.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// A data frame larger than [`MAX_DATA_CHUNK`]; split it with [`encode_data`].
    #[error("data chunk of {len} bytes exceeds the limit of {MAX_DATA_CHUNK} bytes")]
    DataTooLarge {
        /// Its length.
        len: usize,
    },
    /// The encoded frame would exceed the frame limit.
    #[error("message too large: {0}")]
    Frame(#[from] FrameError),
    /// postcard failed (it cannot for these types, but the error is not discarded).
    #[error("failed to serialize a message: {0}")]
    Serialize(postcard::Error),
}

/// A frame could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame layer refused the stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A type byte this version does not know.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownKind(u8),
    /// A fixed-layout or postcard payload that does not parse.
    #[error("malformed {what} frame: {detail}")]
    BadPayload {
        /// The frame type.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A data frame above [`MAX_DATA_CHUNK`].
    #[error("{what} frame of {len} bytes exceeds the data limit of {MAX_DATA_CHUNK} bytes")]
    DataTooLarge {
        /// The frame type.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

impl Message {
    /// A short name for messages and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::HelloReply { .. } => "HelloReply",
            Self::Error(_) => "Error",
            Self::Request(_) => "Request",
            Self::Stdin(_) => "Stdin",
            Self::StdinEof => "StdinEof",
            Self::Resize(_) => "Resize",
            Self::Signal(_) => "Signal",
            Self::Started(_) => "Started",
            Self::Stdout(_) => "Stdout",
            Self::Stderr(_) => "Stderr",
            Self::Exit(_) => "Exit",
        }
    }

    /// Appends this message as one frame to `out`. On error nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Self::Hello { version } => encode_hello(kind::HELLO, *version, out),
            Self::HelloReply { version } => encode_hello(kind::HELLO_REPLY, *version, out),
            Self::Error(err) => {
                let msg = truncate_utf8(&err.message, MAX_ERROR_MESSAGE);
                let mut payload = Vec::with_capacity(2 + msg.len());
                payload.extend_from_slice(&err.code.to_u16().to_le_bytes());
                payload.extend_from_slice(msg.as_bytes());
                Ok(encode_frame(kind::ERROR, &payload, out)?)
            }
            Self::Request(req) => encode_postcard(kind::REQUEST, req, out),
            Self::Stdin(data) => encode_data_frame(kind::STDIN, data, out),
            Self::StdinEof => Ok(encode_frame(kind::STDIN_EOF, &[], out)?),
            Self::Resize(size) => encode_postcard(kind::RESIZE, size, out),
            Self::Signal(sig) => encode_postcard(kind::SIGNAL, sig, out),
            Self::Started(started) => encode_postcard(kind::STARTED, started, out),
            Self::Stdout(data) => encode_data_frame(kind::STDOUT, data, out),
            Self::Stderr(data) => encode_data_frame(kind::STDERR, data, out),
            Self::Exit(status) => encode_postcard(kind::EXIT, status, out),
        }
    }

    /// The message carried by a raw frame.
    pub fn decode(frame: &RawFrame) -> Result<Self, DecodeError> {
        let p = &frame.payload;
        Ok(match frame.kind {
            kind::HELLO => Self::Hello {
                version: decode_hello("Hello", p)?,
            },
            kind::HELLO_REPLY => Self::HelloReply {
                version: decode_hello("HelloReply", p)?,
            },
            kind::ERROR => {
                let Some((code, msg)) = p.split_first_chunk::<2>() else {
                    return Err(bad("Error", "shorter than its 2-byte code"));
                };
                let mut message = String::from_utf8_lossy(msg).into_owned();
                if message.len() > MAX_ERROR_MESSAGE {
                    message = truncate_utf8(&message, MAX_ERROR_MESSAGE).to_owned();
                }
                Self::Error(ErrorFrame {
                    code: ErrorCode::from_u16(u16::from_le_bytes(*code)),
                    message,
                })
            }
            kind::REQUEST => Self::Request(decode_postcard("Request", p)?),
            kind::STDIN => Self::Stdin(decode_data("Stdin", p)?),
            kind::STDIN_EOF => {
                if !p.is_empty() {
                    return Err(bad("StdinEof", "has a payload"));
                }
                Self::StdinEof
            }
            kind::RESIZE => Self::Resize(decode_postcard("Resize", p)?),
            kind::SIGNAL => Self::Signal(decode_postcard("Signal", p)?),
            kind::STARTED => Self::Started(decode_postcard("Started", p)?),
            kind::STDOUT => Self::Stdout(decode_data("Stdout", p)?),
            kind::STDERR => Self::Stderr(decode_data("Stderr", p)?),
            kind::EXIT => Self::Exit(decode_postcard("Exit", p)?),
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Appends `data` as as many frames of `kind` ([`kind::STDIN`], [`kind::STDOUT`] or
/// [`kind::STDERR`]) as needed, each at most [`MAX_DATA_CHUNK`]. Empty data appends nothing.
pub fn encode_data(kind: u8, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(MAX_DATA_CHUNK) {
        // A chunk is at most 64 KiB, far below the frame limit.
        let _ = encode_frame(kind, chunk, out);
    }
}

impl FrameDecoder {
    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match self.next_frame()? {
            Some(frame) => Message::decode(&frame).map(Some),
            None => Ok(None),
        }
    }
}

fn encode_hello(kind: u8, version: u16, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut payload = [0u8; 6];
    payload[..4].copy_from_slice(&MAGIC);
    payload[4..].copy_from_slice(&version.to_le_bytes());
    Ok(encode_frame(kind, &payload, out)?)
}

fn decode_hello(what: &'static str, p: &[u8]) -> Result<u16, DecodeError> {
    if p.len() != 6 {
        return Err(bad(what, format!("{} bytes, expected 6", p.len())));
    }
    if p[..4] != MAGIC {
        return Err(bad(
            what,
            "bad magic (the peer is not a vmsilo agent or client)",
        ));
    }
    Ok(u16::from_le_bytes([p[4], p[5]]))
}

fn encode_data_frame(kind: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if data.len() > MAX_DATA_CHUNK {
        return Err(EncodeError::DataTooLarge { len: data.len() });
    }
    Ok(encode_frame(kind, data, out)?)
}

fn decode_data(what: &'static str, p: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if p.len() > MAX_DATA_CHUNK {
        return Err(DecodeError::DataTooLarge { what, len: p.len() });
    }
    Ok(p.to_vec())
}

fn encode_postcard<T: Serialize>(
    kind: u8,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let payload = postcard::to_allocvec(value).map_err(EncodeError::Serialize)?;
    Ok(encode_frame(kind, &payload, out)?)
}

fn decode_postcard<'a, T: Deserialize<'a>>(
    what: &'static str,
    p: &'a [u8],
) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(p).map_err(|e| bad(what, e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(what, format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

fn bad(what: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::BadPayload {
        what,
        detail: detail.into(),
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: &Message) -> Message {
        let mut out = Vec::new();
        msg.encode(&mut out).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&out);
        let back = dec.next_message().unwrap().unwrap();
        assert_eq!(dec.buffered(), 0);
        back
    }

    #[test]
    fn test_every_message_round_trips() {
        let msgs = [
            Message::Hello { version: 1 },
            Message::HelloReply { version: 65535 },
            Message::Error(ErrorFrame::new(ErrorCode::CommandNotFound, "nope")),
            Message::Error(ErrorFrame::new(ErrorCode::Other(999), "")),
            Message::Request(
                Request::attached(["cat", "-n"])
                    .env("TERM", "xterm")
                    .cwd(b"/tmp/\xff")
                    .tty(WindowSize { rows: 24, cols: 80 })
                    .user("user"),
            ),
            Message::Request(Request::detached(["firefox"])),
            Message::Stdin(b"hi\n".to_vec()),
            Message::Stdin(Vec::new()),
            Message::StdinEof,
            Message::Resize(WindowSize {
                rows: 50,
                cols: 200,
            }),
            Message::Signal(Signal::Int),
            Message::Started(Started {
                pid: 4242,
                unit: Some("vmsilo-run-x.service".into()),
            }),
            Message::Stdout(vec![0; MAX_DATA_CHUNK]),
            Message::Stderr(b"oops".to_vec()),
            Message::Exit(ExitStatus::Exited(3)),
            Message::Exit(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            }),
        ];
        for msg in &msgs {
            assert_eq!(&round_trip(msg), msg, "{}", msg.name());
        }
    }

    #[test]
    fn test_hello_layout_is_fixed() {
        let mut out = Vec::new();
        Message::Hello { version: 0x0102 }.encode(&mut out).unwrap();
        assert_eq!(out, [7, 0, 0, 0, kind::HELLO, b'V', b'M', b'S', b'L', 2, 1]);
        let mut out = Vec::new();
        Message::Error(ErrorFrame::new(ErrorCode::VersionMismatch, "x"))
            .encode(&mut out)
            .unwrap();
        assert_eq!(out, [4, 0, 0, 0, kind::ERROR, 1, 0, b'x']);
    }

    #[test]
    fn test_oversized_data_is_refused_both_ways() {
        let mut out = Vec::new();
        assert!(matches!(
            Message::Stdout(vec![0; MAX_DATA_CHUNK + 1]).encode(&mut out),
            Err(EncodeError::DataTooLarge { .. })
        ));
        assert!(out.is_empty());
        let frame = RawFrame {
            kind: kind::STDIN,
            payload: vec![0; MAX_DATA_CHUNK + 1],
        };
        assert!(matches!(
            Message::decode(&frame),
            Err(DecodeError::DataTooLarge { what: "Stdin", .. })
        ));
    }

    #[test]
    fn test_encode_data_splits_into_chunks() {
        let data = vec![5u8; MAX_DATA_CHUNK * 2 + 10];
        let mut out = Vec::new();
        encode_data(kind::STDOUT, &data, &mut out);
        let mut dec = FrameDecoder::new();
        dec.push(&out);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(Message::Stdout(chunk)) = dec.next_message().unwrap() {
            got.extend(chunk);
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert_eq!(got, data);
    }

    #[test]
    fn test_bad_payloads_are_errors() {
        let cases: [(u8, &[u8]); 7] = [
            (kind::HELLO, b"VMSL\x01"),
            (kind::HELLO, b"XXXX\x01\x00"),
            (kind::ERROR, b"\x01"),
            (kind::STDIN_EOF, b"\x00"),
            (kind::REQUEST, b"\xff\xff\xff"),
            (kind::EXIT, b"\x00\x05\x00"),
            (kind::SIGNAL, b"\x63"),
        ];
        for (k, payload) in cases {
            let frame = RawFrame {
                kind: k,
                payload: payload.to_vec(),
            };
            assert!(
                matches!(Message::decode(&frame), Err(DecodeError::BadPayload { .. })),
                "kind {k:#x} payload {payload:?}"
            );
        }
        let frame = RawFrame {
            kind: 0x7f,
            payload: Vec::new(),
        };
        assert_eq!(Message::decode(&frame), Err(DecodeError::UnknownKind(0x7f)));
    }

    #[test]
    fn test_command_service_kinds_are_reserved_and_unknown_to_the_agent() {
        let agent_kinds = [
            kind::HELLO,
            kind::HELLO_REPLY,
            kind::ERROR,
            kind::REQUEST,
            kind::STDIN,
            kind::STDIN_EOF,
            kind::RESIZE,
            kind::SIGNAL,
            kind::STARTED,
            kind::STDOUT,
            kind::STDERR,
            kind::EXIT,
        ];
        let reserved = kind::COMMAND_SERVICE_FIRST..=kind::COMMAND_SERVICE_LAST;
        assert!(agent_kinds.iter().all(|k| !reserved.contains(k)));
        for k in reserved {
            let frame = RawFrame {
                kind: k,
                payload: vec![1, 2, 3],
            };
            assert_eq!(Message::decode(&frame), Err(DecodeError::UnknownKind(k)));
        }
    }

    #[test]
    fn test_long_error_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let back = round_trip(&Message::Error(ErrorFrame::new(ErrorCode::Internal, long)));
        let Message::Error(e) = back else { panic!() };
        assert!(e.message.len() <= MAX_ERROR_MESSAGE);
        assert!(e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn test_exit_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Exited(1).code(), 1);
        assert_eq!(
            ExitStatus::Signaled {
                signal: 15,
                core_dumped: false
            }
            .code(),
            143
        );
        assert_eq!(ErrorCode::CommandNotFound.exit_code(), 127);
        assert_eq!(ErrorCode::NotExecutable.exit_code(), 126);
        assert_eq!(ErrorCode::UnknownUser.exit_code(), 1);
        for n in 0..=u16::MAX {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
    }

    #[test]
    fn test_signal_numbers_round_trip() {
        for n in 0..64 {
            if let Some(s) = Signal::from_number(n) {
                assert_eq!(s.number(), n);
                assert!(s.name().starts_with("SIG"));
            }
        }
        assert_eq!(Signal::Int.number(), 2);
        assert_eq!(Signal::from_number(15), Some(Signal::Term));
        assert_eq!(Signal::from_number(31), None);
    }
}
