//! Raw frames: a little-endian `u32` length, a type byte, a payload.
//!
//! ```text
//! +-------------------+-----------+---------------------------+
//! | len: u32, LE      | kind: u8  | payload: len - 1 bytes    |
//! +-------------------+-----------+---------------------------+
//! ```
//!
//! `len` counts the type byte and the payload, so it is at least 1 and at most
//! [`MAX_FRAME_LEN`]. The decoder checks the length as soon as the four length bytes have
//! arrived, before it buffers any payload, so an oversized or zero length prefix is an error
//! without any allocation. This layer does not interpret the type byte: that is
//! [`crate::Message`]'s job, which keeps the frame layer identical across protocol versions.

use thiserror::Error;

/// Bytes in the length prefix.
pub const LEN_BYTES: usize = 4;

/// Largest value of the length prefix (type byte + payload): 1 MiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Largest payload of a data frame (stdin, stdout, stderr): 64 KiB.
pub const MAX_DATA_CHUNK: usize = 64 << 10;

/// A frame as it travels on the wire, before its payload is interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The type byte.
    pub kind: u8,
    /// Everything after the type byte.
    pub payload: Vec<u8>,
}

/// A frame the decoder refused. The stream cannot be resynchronised after one of these: the
/// connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The length prefix was 0 (a frame always has a type byte).
    #[error("frame with a zero length prefix")]
    Empty,
    /// The length prefix exceeded the hard limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
}

/// Appends one frame to `out`. Fails (writing nothing) when the frame would exceed
/// [`MAX_FRAME_LEN`].
pub fn encode_frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = payload.len() + 1;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    // `len` <= 1 MiB, so the cast cannot truncate.
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    Ok(())
}

/// An incremental frame decoder: feed it bytes as they arrive with [`FrameDecoder::push`] and
/// take complete frames out with [`FrameDecoder::next_frame`].
///
/// The decoder holds at most what was pushed and not yet taken out; a caller that drains all
/// frames after every push never buffers more than one frame plus one read.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes pushed and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when bytes of an incomplete frame are buffered (useful to report a truncated frame
    /// when the stream ends).
    pub fn has_partial(&self) -> bool {
        self.buffered() > 0
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error, every call
    /// returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let avail = &self.buf[self.start..];
        let Some(prefix) = avail.first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len == 0 {
            return Err(self.fail(FrameError::Empty));
        }
        if len > MAX_FRAME_LEN {
            return Err(self.fail(FrameError::TooLarge {
                len: len as u64,
                max: MAX_FRAME_LEN,
            }));
        }
        let Some(body) = avail.get(LEN_BYTES..LEN_BYTES + len) else {
            return Ok(None);
        };
        let frame = RawFrame {
            kind: body[0],
            payload: body[1..].to_vec(),
        };
        self.start += LEN_BYTES + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_FRAME_LEN {
            // Compact once the consumed prefix is large, so the buffer does not creep.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        self.buf = Vec::new();
        self.start = 0;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_encodes_little_endian_length_then_type() {
        let mut out = Vec::new();
        encode_frame(0x21, b"hi", &mut out).unwrap();
        assert_eq!(out, [3, 0, 0, 0, 0x21, b'h', b'i']);
    }

    #[test]
    fn test_decodes_frames_fed_one_byte_at_a_time() {
        let mut wire = Vec::new();
        encode_frame(1, b"abc", &mut wire).unwrap();
        encode_frame(2, b"", &mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            [
                RawFrame {
                    kind: 1,
                    payload: b"abc".to_vec()
                },
                RawFrame {
                    kind: 2,
                    payload: Vec::new()
                }
            ]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn test_rejects_oversized_prefix_before_the_payload_arrives() {
        let mut dec = FrameDecoder::new();
        dec.push(&((MAX_FRAME_LEN as u32) + 1).to_le_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN as u64 + 1,
                max: MAX_FRAME_LEN
            })
        );
        // Poisoned: further input is ignored and the error repeats.
        dec.push(&[1, 0, 0, 0, 7]);
        assert!(dec.next_frame().is_err());
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn test_rejects_zero_length() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn test_largest_frame_round_trips_and_one_more_byte_is_refused() {
        let payload = vec![7u8; MAX_FRAME_LEN - 1];
        let mut out = Vec::new();
        encode_frame(9, &payload, &mut out).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&out);
        assert_eq!(
            dec.next_frame().unwrap().unwrap().payload.len(),
            payload.len()
        );
        let mut out = Vec::new();
        assert!(encode_frame(9, &[0; MAX_FRAME_LEN], &mut out).is_err());
        assert!(out.is_empty());
    }
}
