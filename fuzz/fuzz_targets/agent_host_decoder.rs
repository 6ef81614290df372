//! The host side of the agent protocol on bytes a hostile guest chose: the frame and message
//! decoder (`FrameDecoder::next_message`) fed in input-chosen pieces, then the blocking client
//! (`run_detached`, `run_attached`) reading the same bytes as the agent's replies.
//!
//! Checked: nothing panics; every message the decoder accepts re-encodes and decodes to itself;
//! every error the client reports (what `vm-run` prints) is free of terminal control, bidi and
//! invisible characters.

#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use vmsilo_proto::client::{self, AttachedIo};
use vmsilo_proto::text::{escape, needs_escape};
use vmsilo_proto::{FrameDecoder, Message, Request};

/// The agent's side of a connection: reads come from the fuzz input in pieces of the sizes
/// the input's first bytes choose; writes are discarded.
struct Agent<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Read for Agent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes.get(self.turn % self.sizes.len().max(1)) {
            Some(&s) => usize::from(s) + 1,
            None => buf.len(),
        };
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Agent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn assert_printable(what: &str, text: &str) {
    assert!(
        !text.chars().any(needs_escape),
        "{what} lets guest control characters through: {text:?}"
    );
}

fuzz_target!(|input: &[u8]| {
    // The first byte says how many of the next bytes are read sizes; the rest is the stream.
    let (&n_sizes, rest) = input.split_first().unwrap_or((&0, &[]));
    let n_sizes = usize::from(n_sizes % 16).min(rest.len());
    let (sizes, data) = rest.split_at(n_sizes);

    // 1. The decoder, fed in pieces.
    let mut dec = FrameDecoder::new();
    let mut agent = Agent { data, sizes, turn: 0 };
    let mut buf = [0u8; 4096];
    'feed: loop {
        let n = agent.read(&mut buf).expect("reads from memory");
        if n == 0 {
            break;
        }
        dec.push(&buf[..n]);
        loop {
            match dec.next_message() {
                Ok(Some(msg)) => {
                    let mut wire = Vec::new();
                    msg.encode(&mut wire).expect("an accepted message re-encodes");
                    let mut again = FrameDecoder::new();
                    again.push(&wire);
                    assert_eq!(again.next_message().expect("re-decodes"), Some(msg.clone()));
                    if let Message::Error(e) = &msg {
                        assert_printable("escape", &escape(&e.message));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert_printable("DecodeError", &e.to_string());
                    break 'feed;
                }
            }
        }
        // The decoder never holds more than one frame plus one read.
        assert!(dec.buffered() <= vmsilo_proto::MAX_FRAME_LEN + 4 + buf.len());
    }

    // 2. The client, reading the same bytes as the agent's replies.
    let detached = client::run_detached(
        Agent { data, sizes, turn: 0 },
        &Request::detached(["true"]),
    );
    if let Err(e) = detached {
        assert_printable("run_detached's error", &e.to_string());
    }
    let io = AttachedIo {
        stdin: None,
        stdout: Box::new(io::sink()),
        stderr: Box::new(io::sink()),
        controls: None,
    };
    let attached = client::run_attached(
        Agent { data, sizes, turn: 0 },
        io::sink(),
        &Request::attached(["true"]),
        io,
    );
    if let Err(e) = attached {
        assert_printable("run_attached's error", &e.to_string());
    }
});
