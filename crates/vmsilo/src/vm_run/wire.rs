//! The command service's status exchange: the frames `vmsilo command-service` sends on a new
//! connection before it splices it to the guest agent (`docs/vm-run.md`).
//!
//! Same frame layout as the agent protocol (`vmsilo_proto::frame`: `len: u32 LE`, `kind: u8`,
//! payload), with kinds `0x30..=0x3F`, which the agent protocol does not use, and fixed
//! payload layouts that never change:
//!
//! | kind | name | payload |
//! |---|---|---|
//! | `0x30` | `Status` | `phase: u8` (1 starting the VM, 2 waiting for the guest agent), `elapsed_ms: u32 LE` |
//! | `0x31` | `Ready` | `cold: u8` (1: this connection waited for the VM), `startup_ms: u32 LE` |
//! | `0x32` | `Failed` | `code: u16 LE`, UTF-8 message (at most 4096 bytes) |
//!
//! `Ready` and `Failed` are the last service frames; after `Ready` the connection carries the
//! agent protocol unchanged, end to end. Kinds `0x38..=0x3F` are informational: clients skip
//! those they do not know, so a newer service can add some. Any other unknown kind, a length
//! over [`MAX_SERVICE_FRAME`], or a payload of the wrong size is an error.
//!
//! The reader ([`FrameReader`]) never reads past the end of the frame it is decoding, so the
//! bytes after `Ready` stay in the socket for the agent protocol client.

use std::io::{self, ErrorKind, Read};

use vmsilo_proto::frame::{LEN_BYTES, encode_frame};

/// Frame kinds of the status exchange, inside the range `vmsilo-proto` reserves for it.
pub mod kind {
    use vmsilo_proto::message::kind::{COMMAND_SERVICE_FIRST, COMMAND_SERVICE_LAST};

    /// Progress while the VM starts.
    pub const STATUS: u8 = COMMAND_SERVICE_FIRST;
    /// The guest agent answered: the agent protocol starts with the next byte.
    pub const READY: u8 = 0x31;
    /// The command service cannot reach the guest agent.
    pub const FAILED: u8 = 0x32;
    /// First kind of the informational range (skipped when unknown).
    pub const INFO_FIRST: u8 = 0x38;
    /// Last kind of the informational range.
    pub const INFO_LAST: u8 = COMMAND_SERVICE_LAST;
    const _: () = assert!(FAILED < INFO_FIRST && INFO_FIRST <= INFO_LAST);
}

/// Largest length prefix (type byte + payload) of a service frame.
pub const MAX_SERVICE_FRAME: usize = 8 * 1024;

/// Longest message in a `Failed` frame; longer ones are cut at a character boundary.
pub const MAX_MESSAGE: usize = 4096;

/// What the command service is doing while the client waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The VM service is starting the VM.
    StartingVm,
    /// The VM runs; the guest is booting and its agent does not answer yet.
    WaitingForAgent,
    /// A phase this build does not know.
    Other(u8),
}

impl Phase {
    fn to_u8(self) -> u8 {
        match self {
            Phase::StartingVm => 1,
            Phase::WaitingForAgent => 2,
            Phase::Other(n) => n,
        }
    }

    fn from_u8(n: u8) -> Phase {
        match n {
            1 => Phase::StartingVm,
            2 => Phase::WaitingForAgent,
            n => Phase::Other(n),
        }
    }
}

/// Why the command service gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailCode {
    /// The VM is not in the configuration (or the configuration is invalid).
    NotConfigured,
    /// The VM failed to start, or stopped while starting.
    StartFailed,
    /// The VM runs but its guest agent did not answer in time.
    AgentTimeout,
    /// The guest cannot be reached for another reason.
    Unavailable,
    /// The command service is stopping.
    ShuttingDown,
    /// A code this build does not know.
    Other(u16),
}

impl FailCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            FailCode::NotConfigured => 1,
            FailCode::StartFailed => 2,
            FailCode::AgentTimeout => 3,
            FailCode::Unavailable => 4,
            FailCode::ShuttingDown => 5,
            FailCode::Other(n) => n,
        }
    }

    /// From the wire value.
    pub fn from_u16(n: u16) -> FailCode {
        match n {
            1 => FailCode::NotConfigured,
            2 => FailCode::StartFailed,
            3 => FailCode::AgentTimeout,
            4 => FailCode::Unavailable,
            5 => FailCode::ShuttingDown,
            n => FailCode::Other(n),
        }
    }

    /// `vm-run`'s exit status for it: 2 for a VM that is not configured, 1 otherwise.
    pub fn exit_code(self) -> u8 {
        match self {
            FailCode::NotConfigured => crate::error::EXIT_USAGE,
            _ => crate::error::EXIT_FAILURE,
        }
    }
}

/// One frame of the status exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFrame {
    /// Progress.
    Status {
        /// What is happening.
        phase: Phase,
        /// Milliseconds since the VM's start began.
        elapsed_ms: u32,
    },
    /// The agent answered; the agent protocol follows.
    Ready {
        /// Whether this connection waited for the VM to start.
        cold: bool,
        /// How long it waited, in milliseconds (0 when warm).
        startup_ms: u32,
    },
    /// The service gives up on this connection and closes it.
    Failed {
        /// Why.
        code: FailCode,
        /// What failed and what to do (for the user).
        message: String,
    },
}

/// A malformed or unreadable status exchange.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading from the command socket failed.
    #[error("cannot read from the command service")]
    Io(#[source] io::Error),
    /// The service closed the connection before `Ready` or `Failed`.
    #[error("the command service closed the connection{}", if *.partial { " in the middle of a frame" } else { "" })]
    Closed {
        /// Whether a frame was cut short.
        partial: bool,
    },
    /// The length prefix is zero or too large.
    #[error("the command service sent a frame of {len} bytes (the limit is {MAX_SERVICE_FRAME})")]
    BadLength {
        /// The announced length.
        len: u32,
    },
    /// A kind outside the status exchange.
    #[error(
        "the command service sent a frame of unknown kind {kind:#04x} (is vm-run from the same vmsilo build as the service?)"
    )]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A payload of the wrong shape.
    #[error("the command service sent a malformed {name} frame ({len} bytes of payload)")]
    BadPayload {
        /// The frame's name.
        name: &'static str,
        /// The payload's length.
        len: usize,
    },
}

fn cut(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

impl ServiceFrame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            ServiceFrame::Status { phase, elapsed_ms } => {
                let mut p = vec![phase.to_u8()];
                p.extend_from_slice(&elapsed_ms.to_le_bytes());
                (kind::STATUS, p)
            }
            ServiceFrame::Ready { cold, startup_ms } => {
                let mut p = vec![u8::from(*cold)];
                p.extend_from_slice(&startup_ms.to_le_bytes());
                (kind::READY, p)
            }
            ServiceFrame::Failed { code, message } => {
                let mut p = code.to_u16().to_le_bytes().to_vec();
                p.extend_from_slice(cut(message).as_bytes());
                (kind::FAILED, p)
            }
        };
        let mut out = Vec::with_capacity(LEN_BYTES + 1 + payload.len());
        encode_frame(kind, &payload, &mut out).expect("service frames are far below the limit");
        out
    }

    /// Decodes one frame; `Ok(None)` for an unknown informational kind (to be skipped).
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Option<ServiceFrame>, WireError> {
        let bad = |name| WireError::BadPayload {
            name,
            len: payload.len(),
        };
        let fixed5 = |name| -> Result<(u8, u32), WireError> {
            let p: &[u8; 5] = payload.try_into().map_err(|_| bad(name))?;
            Ok((p[0], u32::from_le_bytes([p[1], p[2], p[3], p[4]])))
        };
        match kind {
            kind::STATUS => {
                let (phase, elapsed_ms) = fixed5("Status")?;
                Ok(Some(ServiceFrame::Status {
                    phase: Phase::from_u8(phase),
                    elapsed_ms,
                }))
            }
            kind::READY => {
                let (cold, startup_ms) = fixed5("Ready")?;
                if cold > 1 {
                    return Err(bad("Ready"));
                }
                Ok(Some(ServiceFrame::Ready {
                    cold: cold == 1,
                    startup_ms,
                }))
            }
            kind::FAILED => {
                let Some((code, text)) = payload.split_first_chunk::<2>() else {
                    return Err(bad("Failed"));
                };
                if text.len() > MAX_MESSAGE {
                    return Err(bad("Failed"));
                }
                Ok(Some(ServiceFrame::Failed {
                    code: FailCode::from_u16(u16::from_le_bytes(*code)),
                    message: String::from_utf8_lossy(text).into_owned(),
                }))
            }
            kind::INFO_FIRST..=kind::INFO_LAST => Ok(None),
            kind => Err(WireError::UnknownKind { kind }),
        }
    }
}

/// Reads service frames one at a time without reading past the current frame, and survives
/// read timeouts (a socket with `set_read_timeout`) without losing bytes.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// A reader at the start of a frame.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Bytes the current frame still needs.
    fn need(&self) -> Result<usize, WireError> {
        let Some(prefix) = self.buf.first_chunk::<LEN_BYTES>() else {
            return Ok(LEN_BYTES - self.buf.len());
        };
        let len = u32::from_le_bytes(*prefix);
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        if n == 0 || n > MAX_SERVICE_FRAME {
            return Err(WireError::BadLength { len });
        }
        Ok(LEN_BYTES + n - self.buf.len())
    }

    /// Reads what `r` has of the next frame. `Ok(Some(_))` when a known frame is complete,
    /// `Ok(None)` when the read timed out or only an informational frame was skipped.
    pub fn poll<R: Read>(&mut self, r: &mut R) -> Result<Option<ServiceFrame>, WireError> {
        loop {
            let need = self.need()?;
            if need == 0 {
                let frame = std::mem::take(&mut self.buf);
                return ServiceFrame::decode(frame[LEN_BYTES], &frame[LEN_BYTES + 1..]);
            }
            let start = self.buf.len();
            self.buf.resize(start + need, 0);
            match r.read(&mut self.buf[start..]) {
                Ok(0) => {
                    self.buf.truncate(start);
                    return Err(WireError::Closed {
                        partial: !self.buf.is_empty(),
                    });
                }
                Ok(n) => self.buf.truncate(start + n),
                Err(e) => {
                    self.buf.truncate(start);
                    match e.kind() {
                        ErrorKind::Interrupted => {}
                        ErrorKind::WouldBlock | ErrorKind::TimedOut => return Ok(None),
                        _ => return Err(WireError::Io(e)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ServiceFrame> {
        vec![
            ServiceFrame::Status {
                phase: Phase::StartingVm,
                elapsed_ms: 4200,
            },
            ServiceFrame::Status {
                phase: Phase::WaitingForAgent,
                elapsed_ms: u32::MAX,
            },
            ServiceFrame::Status {
                phase: Phase::Other(9),
                elapsed_ms: 0,
            },
            ServiceFrame::Ready {
                cold: true,
                startup_ms: 8123,
            },
            ServiceFrame::Ready {
                cold: false,
                startup_ms: 0,
            },
            ServiceFrame::Failed {
                code: FailCode::AgentTimeout,
                message: "VM \"a\": no agent".into(),
            },
            ServiceFrame::Failed {
                code: FailCode::Other(77),
                message: String::new(),
            },
        ]
    }

    /// A socket with a read timeout, as seen by the reader: one byte per read, and a timeout
    /// (`WouldBlock`) between bytes.
    struct Trickle {
        bytes: Vec<u8>,
        pos: usize,
        pause: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.pause = !self.pause;
            if self.pause {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let Some(b) = self.bytes.get(self.pos) else {
                return Ok(0);
            };
            buf[0] = *b;
            self.pos += 1;
            Ok(1)
        }
    }

    #[test]
    fn test_frames_round_trip_through_a_byte_at_a_time_reader() {
        let bytes: Vec<u8> = all().iter().flat_map(ServiceFrame::encode).collect();
        let n = bytes.len();
        let mut input = Trickle {
            bytes,
            pos: 0,
            pause: false,
        };
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        while input.pos < n {
            if let Some(f) = r.poll(&mut input).expect("valid") {
                got.push(f);
            }
        }
        assert_eq!(got, all());
    }

    #[test]
    fn test_fixed_layouts() {
        let f = ServiceFrame::Status {
            phase: Phase::WaitingForAgent,
            elapsed_ms: 0x0102_0304,
        };
        assert_eq!(f.encode(), [6, 0, 0, 0, 0x30, 2, 4, 3, 2, 1]);
        let f = ServiceFrame::Failed {
            code: FailCode::NotConfigured,
            message: "x".into(),
        };
        assert_eq!(f.encode(), [4, 0, 0, 0, 0x32, 1, 0, b'x']);
    }

    #[test]
    fn test_reader_stops_at_the_end_of_ready() {
        let mut wire = ServiceFrame::Ready {
            cold: false,
            startup_ms: 0,
        }
        .encode();
        wire.extend_from_slice(b"agent bytes");
        let mut cursor = std::io::Cursor::new(wire);
        let f = FrameReader::new().poll(&mut cursor).expect("ready");
        assert!(matches!(f, Some(ServiceFrame::Ready { .. })));
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).expect("rest");
        assert_eq!(rest, "agent bytes");
    }

    #[test]
    fn test_malformed_frames_are_errors() {
        let poll = |bytes: &[u8]| FrameReader::new().poll(&mut &bytes[..]);
        assert!(matches!(
            poll(&[0, 0, 0, 0]),
            Err(WireError::BadLength { len: 0 })
        ));
        assert!(matches!(
            poll(&[0xff, 0xff, 0xff, 0x7f]),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            poll(&[2, 0, 0, 0, 0x30, 1]),
            Err(WireError::BadPayload { name: "Status", .. })
        ));
        assert!(matches!(
            poll(&[6, 0, 0, 0, 0x31, 7, 0, 0, 0, 0]),
            Err(WireError::BadPayload { name: "Ready", .. })
        ));
        assert!(matches!(
            poll(&[2, 0, 0, 0, 0x32, 1]),
            Err(WireError::BadPayload { name: "Failed", .. })
        ));
        assert!(matches!(
            poll(&[1, 0, 0, 0, 0x02]),
            Err(WireError::UnknownKind { kind: 2 })
        ));
        assert!(matches!(
            poll(&[3, 0, 0, 0, 0x30]),
            Err(WireError::Closed { partial: true })
        ));
        assert!(matches!(
            poll(&[]),
            Err(WireError::Closed { partial: false })
        ));
        // An unknown informational frame is skipped.
        assert!(matches!(poll(&[2, 0, 0, 0, 0x3a, 9]), Ok(None)));
    }

    #[test]
    fn test_random_bytes_never_panic() {
        // xorshift: a fixed-seed stream of garbage, fed in random-sized pieces.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = usize::try_from(next() % 64).expect("small");
            let mut bytes: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            if next() % 2 == 0 && bytes.len() >= 5 {
                // A plausible header, so payload decoding is reached.
                bytes[..4].copy_from_slice(&u32::try_from(len - 4).expect("len").to_le_bytes());
                bytes[4] = 0x30 + (next() % 16).to_le_bytes()[0];
            }
            let mut r = FrameReader::new();
            let mut input = &bytes[..];
            while let Ok(Some(_) | None) = r.poll(&mut input) {
                if input.is_empty() {
                    break;
                }
            }
        }
    }

    #[test]
    fn test_long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let bytes = ServiceFrame::Failed {
            code: FailCode::StartFailed,
            message: long,
        }
        .encode();
        let f = FrameReader::new().poll(&mut &bytes[..]).expect("valid");
        let Some(ServiceFrame::Failed { message, .. }) = f else {
            panic!("{f:?}")
        };
        assert_eq!(message.len(), MAX_MESSAGE);
        assert_eq!(FailCode::NotConfigured.exit_code(), 2);
        assert_eq!(FailCode::Other(9).exit_code(), 1);
    }
}
