//! Fuzz-style tests: random, truncated, mutated and oversized input must never panic the
//! decoder, and whatever it accepts must re-encode to the same message.
//!
//! A fixed-seed PRNG keeps the runs deterministic and failures reproducible.

use vmsilo_proto::frame::{LEN_BYTES, MAX_FRAME_LEN, encode_frame};
use vmsilo_proto::message::kind;
use vmsilo_proto::{
    ErrorCode, ErrorFrame, ExitStatus, FrameDecoder, FrameError, Message, RawFrame, Request,
    Signal, Started, WindowSize,
};

/// xorshift64*: small, deterministic, good enough to drive fuzz-style loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn samples() -> Vec<Message> {
    vec![
        Message::Hello { version: 1 },
        Message::HelloReply { version: 7 },
        Message::Error(ErrorFrame::new(ErrorCode::BadRequest, "bad")),
        Message::Request(
            Request::attached(["sh", "-c", "echo hi"])
                .env("A", "b")
                .cwd("/root")
                .tty(WindowSize { rows: 1, cols: 2 })
                .user("user"),
        ),
        Message::Request(Request::detached(["firefox", "--new-window"])),
        Message::Stdin(b"some input".to_vec()),
        Message::StdinEof,
        Message::Resize(WindowSize {
            rows: 300,
            cols: 40000,
        }),
        Message::Signal(Signal::Term),
        Message::Started(Started {
            pid: 1234567,
            unit: None,
        }),
        Message::Stdout(b"out".to_vec()),
        Message::Stderr(b"err".to_vec()),
        Message::Exit(ExitStatus::Signaled {
            signal: 2,
            core_dumped: true,
        }),
    ]
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out).unwrap();
    out
}

/// Decodes everything in `wire`, fed in random pieces; returns the messages decoded before
/// the first error (if any) and whether an error occurred.
fn decode_all(wire: &[u8], rng: &mut Rng) -> (Vec<Message>, bool) {
    let mut dec = FrameDecoder::new();
    let mut msgs = Vec::new();
    let mut pos = 0;
    while pos < wire.len() {
        let n = 1 + rng.below(64.min(wire.len() - pos));
        dec.push(&wire[pos..pos + n]);
        pos += n;
        loop {
            match dec.next_message() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(_) => return (msgs, true),
            }
        }
    }
    (msgs, false)
}

/// Accepted messages must survive a second round trip unchanged.
fn assert_stable(msg: &Message) {
    let wire = encode(msg);
    let mut dec = FrameDecoder::new();
    dec.push(&wire);
    assert_eq!(dec.next_message().unwrap().as_ref(), Some(msg));
}

#[test]
fn test_random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..20_000 {
        let len = rng.below(256);
        let mut wire = rng.bytes(len);
        // Half the time, make the length prefix plausible so payload decoding is reached.
        if wire.len() > LEN_BYTES && rng.below(2) == 0 {
            let body = (wire.len() - LEN_BYTES) as u32;
            wire[..LEN_BYTES].copy_from_slice(&body.to_le_bytes());
        }
        let (msgs, _) = decode_all(&wire, &mut rng);
        for m in &msgs {
            assert_stable(m);
        }
    }
}

#[test]
fn test_random_payloads_for_every_kind_never_panic() {
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..20_000 {
        let kind = rng.next() as u8;
        let len = rng.below(64);
        let frame = RawFrame {
            kind,
            payload: rng.bytes(len),
        };
        if let Ok(m) = Message::decode(&frame) {
            assert_stable(&m);
        }
    }
}

#[test]
fn test_every_truncation_of_a_valid_frame_waits_for_more() {
    for msg in samples() {
        let wire = encode(&msg);
        for cut in 0..wire.len() {
            let mut dec = FrameDecoder::new();
            dec.push(&wire[..cut]);
            assert_eq!(dec.next_message(), Ok(None), "{} cut at {cut}", msg.name());
            assert_eq!(dec.has_partial(), cut > 0);
            dec.push(&wire[cut..]);
            assert_eq!(dec.next_message().unwrap().as_ref(), Some(&msg));
        }
    }
}

#[test]
fn test_truncated_payloads_inside_a_well_formed_frame_are_errors() {
    // The frame is complete but its payload is cut. Fixed-layout and postcard payloads must
    // refuse every strict prefix; data frames and an Error's message are prefixes of
    // themselves and stay valid.
    for msg in samples() {
        let wire = encode(&msg);
        let kind = wire[LEN_BYTES];
        let payload = &wire[LEN_BYTES + 1..];
        for cut in 0..payload.len() {
            let frame = RawFrame {
                kind,
                payload: payload[..cut].to_vec(),
            };
            let result = Message::decode(&frame);
            let prefix_ok = match kind {
                kind::STDIN | kind::STDOUT | kind::STDERR => true,
                kind::ERROR => cut >= 2,
                _ => false,
            };
            assert_eq!(
                result.is_ok(),
                prefix_ok,
                "{} cut at {cut}: {result:?}",
                msg.name()
            );
        }
    }
}

#[test]
fn test_mutated_frames_never_panic() {
    let mut rng = Rng(0x5eed_0003);
    let samples = samples();
    for _ in 0..20_000 {
        let mut wire = encode(&samples[rng.below(samples.len())]);
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(wire.len());
            wire[i] = rng.next() as u8;
        }
        let (msgs, _) = decode_all(&wire, &mut rng);
        for m in &msgs {
            assert_stable(m);
        }
    }
}

#[test]
fn test_oversized_length_prefixes_are_refused_without_buffering() {
    let mut rng = Rng(0x5eed_0004);
    let mut lens = vec![MAX_FRAME_LEN as u32 + 1, u32::MAX, 0x8000_0000];
    lens.extend((0..1000).map(|_| (MAX_FRAME_LEN as u32 + 1).max(rng.next() as u32)));
    for len in lens {
        let mut dec = FrameDecoder::new();
        dec.push(&len.to_le_bytes());
        assert!(matches!(
            dec.next_message(),
            Err(vmsilo_proto::DecodeError::Frame(
                FrameError::TooLarge { .. }
            ))
        ));
        // More input after the error is dropped, not buffered.
        dec.push(&[0; 4096]);
        assert_eq!(dec.buffered(), 0);
    }
}

#[test]
fn test_oversized_data_frames_and_huge_sequence_lengths_are_refused() {
    let mut wire = Vec::new();
    encode_frame(kind::STDOUT, &vec![0; 64 * 1024 + 1], &mut wire).unwrap();
    let mut dec = FrameDecoder::new();
    dec.push(&wire);
    assert!(dec.next_message().is_err());

    // A Request whose argv claims 2^32-1 elements in a 6-byte payload.
    let frame = RawFrame {
        kind: kind::REQUEST,
        payload: vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
    };
    assert!(Message::decode(&frame).is_err());
}

#[test]
fn test_streams_of_many_valid_frames_decode_in_order() {
    let mut rng = Rng(0x5eed_0005);
    let samples = samples();
    let mut expected = Vec::new();
    let mut wire = Vec::new();
    for _ in 0..2000 {
        let m = samples[rng.below(samples.len())].clone();
        wire.extend(encode(&m));
        expected.push(m);
    }
    let (msgs, failed) = decode_all(&wire, &mut rng);
    assert!(!failed);
    assert_eq!(msgs, expected);
}
