//! The wire messages between vmsilo-clipd and its peers (the gates and the `vmsilo clipboard`
//! CLI): one [`Msg`] per `SOCK_SEQPACKET` datagram, with at most one fd beside it.
//!
//! Encoding: a tag byte, then the fields in order; integers little-endian, strings as a u16
//! length and UTF-8 bytes (at most [`MAX_STR`]), string lists as a u8 count (at most
//! [`MAX_LIST`]), as [`crate::wire`] encodes every clipboard seam. Anything else (unknown
//! tag, truncation, trailing bytes) is [`BadMsg`].
//! Clipboard content never travels in a datagram: it goes through the fd (a pipe or a
//! memfd), so that datagrams stay small and bounded.
#![forbid(unsafe_code)]

pub use crate::wire::BadMsg;
use crate::wire::{self, Message, Reader};

/// Longest string field in bytes.
pub const MAX_STR: usize = 1024;
/// Most entries of a string list.
pub const MAX_LIST: usize = 64;
/// Largest datagram.
pub const MAX_MSG_BYTES: usize = 16 + 4 * (2 + MAX_STR) + MAX_LIST * (2 + MAX_STR);

/// The two chords a gate reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chord {
    /// Copy the VM's clipboard into the slot.
    Copy,
    /// Paste the slot into the VM's clipboard.
    Paste,
}

/// What became of a request, as the CLI is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok = 0,
    /// Refused (policy, cap, MIME type, nothing to paste...); the text says why.
    Refused = 1,
    /// The policy says `ask`: repeat with `confirm` to go ahead.
    NeedConfirm = 2,
    /// A failure (the VM's gate is not running, a read failed...).
    Failed = 3,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Peer → clipd, first: who I am. `vm` is the gate's VM; empty for the CLI.
    Hello {
        /// The VM (gates), or empty (CLI).
        vm: String,
    },
    /// Gate → clipd: the user pressed a chord in one of my VM's windows.
    Chord(Chord),
    /// CLI → clipd: copy `vm`'s clipboard into the slot.
    Copy {
        /// The VM.
        vm: String,
    },
    /// CLI → clipd: paste the slot into `vm`'s clipboard.
    Paste {
        /// The VM.
        vm: String,
        /// The user confirmed (for `ask`).
        confirm: bool,
    },
    /// CLI → clipd: hand me the slot for the host's clipboard (reply: [`Msg::Data`]).
    ToHost {
        /// The user confirmed (for `ask`).
        confirm: bool,
    },
    /// CLI → clipd: the host's clipboard, `mime`, is in the fd; put it in the slot.
    FromHost {
        /// Its MIME type.
        mime: String,
    },
    /// CLI → clipd: what is in the slot (reply: [`Msg::Status`]).
    Query,
    /// CLI → clipd: empty the slot.
    Wipe,
    /// clipd → gate: write the VM's clipboard, in the first of `mimes` it offers, into the
    /// fd (a pipe's write end); answer [`Msg::Fetched`].
    Fetch {
        /// The request.
        req: u64,
        /// Acceptable MIME types, preferred first.
        mimes: Vec<String>,
    },
    /// Gate → clipd: the MIME type written for `req` (empty: the VM has no clipboard of an
    /// acceptable type; the fd was closed).
    Fetched {
        /// The request.
        req: u64,
        /// The MIME type, or empty.
        mime: String,
    },
    /// clipd → gate: make the content in the fd (a memfd) the VM's clipboard, as `mime`.
    Put {
        /// Its MIME type.
        mime: String,
    },
    /// clipd → gate: show `text` (metadata only: never content) in the label band of the
    /// VM's windows for a few seconds. Sent to the gate of the VM a transfer or refusal is
    /// about (the source of a copy, the destination of a paste).
    Notice {
        /// The short message (ASCII; see `core::band_text`).
        text: String,
    },
    /// clipd → CLI: how a request ended.
    Reply {
        /// The outcome.
        outcome: Outcome,
        /// What happened (metadata only).
        text: String,
    },
    /// clipd → CLI: the slot's content is in the fd (a memfd).
    Data {
        /// Its MIME type.
        mime: String,
        /// Where it came from.
        source: String,
    },
    /// clipd → CLI: the slot (empty `source`: the slot is empty).
    Status {
        /// Where the content came from.
        source: String,
        /// Its MIME type.
        mime: String,
        /// Its size (characters for text, bytes otherwise).
        size: u64,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    wire::put_str(out, s, MAX_STR);
}

fn put_list(out: &mut Vec<u8>, l: &[String]) {
    wire::put_list(out, l, MAX_LIST, MAX_STR);
}

impl Message for Msg {
    const MAX_BYTES: usize = MAX_MSG_BYTES;

    /// The datagram (strings cut to [`MAX_STR`], lists to [`MAX_LIST`]).
    fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(32);
        match self {
            Msg::Hello { vm } => {
                o.push(1);
                put_str(&mut o, vm);
            }
            Msg::Chord(c) => {
                o.push(2);
                o.push(match c {
                    Chord::Copy => 0,
                    Chord::Paste => 1,
                });
            }
            Msg::Copy { vm } => {
                o.push(3);
                put_str(&mut o, vm);
            }
            Msg::Paste { vm, confirm } => {
                o.push(4);
                put_str(&mut o, vm);
                wire::put_bool(&mut o, *confirm);
            }
            Msg::ToHost { confirm } => {
                o.push(5);
                wire::put_bool(&mut o, *confirm);
            }
            Msg::FromHost { mime } => {
                o.push(6);
                put_str(&mut o, mime);
            }
            Msg::Query => o.push(7),
            Msg::Wipe => o.push(8),
            Msg::Fetch { req, mimes } => {
                o.push(20);
                wire::put_u64(&mut o, *req);
                put_list(&mut o, mimes);
            }
            Msg::Fetched { req, mime } => {
                o.push(21);
                wire::put_u64(&mut o, *req);
                put_str(&mut o, mime);
            }
            Msg::Put { mime } => {
                o.push(22);
                put_str(&mut o, mime);
            }
            Msg::Notice { text } => {
                o.push(23);
                put_str(&mut o, text);
            }
            Msg::Reply { outcome, text } => {
                o.push(30);
                o.push(*outcome as u8);
                put_str(&mut o, text);
            }
            Msg::Data { mime, source } => {
                o.push(31);
                put_str(&mut o, mime);
                put_str(&mut o, source);
            }
            Msg::Status { source, mime, size } => {
                o.push(32);
                put_str(&mut o, source);
                put_str(&mut o, mime);
                wire::put_u64(&mut o, *size);
            }
        }
        o
    }

    fn decode(b: &[u8]) -> Result<Msg, BadMsg> {
        let mut r = Reader::new(b);
        let m = match r.u8()? {
            1 => Msg::Hello {
                vm: r.str(MAX_STR)?,
            },
            2 => Msg::Chord(match r.u8()? {
                0 => Chord::Copy,
                1 => Chord::Paste,
                _ => return Err(BadMsg("unknown chord")),
            }),
            3 => Msg::Copy {
                vm: r.str(MAX_STR)?,
            },
            4 => Msg::Paste {
                vm: r.str(MAX_STR)?,
                confirm: r.bool()?,
            },
            5 => Msg::ToHost { confirm: r.bool()? },
            6 => Msg::FromHost {
                mime: r.str(MAX_STR)?,
            },
            7 => Msg::Query,
            8 => Msg::Wipe,
            20 => Msg::Fetch {
                req: r.u64()?,
                mimes: r.list(MAX_LIST, MAX_STR)?,
            },
            21 => Msg::Fetched {
                req: r.u64()?,
                mime: r.str(MAX_STR)?,
            },
            22 => Msg::Put {
                mime: r.str(MAX_STR)?,
            },
            23 => Msg::Notice {
                text: r.str(MAX_STR)?,
            },
            30 => Msg::Reply {
                outcome: match r.u8()? {
                    0 => Outcome::Ok,
                    1 => Outcome::Refused,
                    2 => Outcome::NeedConfirm,
                    3 => Outcome::Failed,
                    _ => return Err(BadMsg("unknown outcome")),
                },
                text: r.str(MAX_STR)?,
            },
            31 => Msg::Data {
                mime: r.str(MAX_STR)?,
                source: r.str(MAX_STR)?,
            },
            32 => Msg::Status {
                source: r.str(MAX_STR)?,
                mime: r.str(MAX_STR)?,
                size: r.u64()?,
            },
            _ => return Err(BadMsg("unknown tag")),
        };
        r.end()?;
        Ok(m)
    }

    fn has_fd(&self) -> bool {
        matches!(
            self,
            Msg::FromHost { .. } | Msg::Fetch { .. } | Msg::Put { .. } | Msg::Data { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_message_round_trips_and_damaged_ones_are_refused() {
        let all = vec![
            Msg::Hello {
                vm: "banking".into(),
            },
            Msg::Hello { vm: String::new() },
            Msg::Chord(Chord::Copy),
            Msg::Chord(Chord::Paste),
            Msg::Copy { vm: "a".into() },
            Msg::Paste {
                vm: "b".into(),
                confirm: true,
            },
            Msg::ToHost { confirm: false },
            Msg::FromHost {
                mime: "text/plain".into(),
            },
            Msg::Query,
            Msg::Wipe,
            Msg::Fetch {
                req: 9,
                mimes: vec!["text/plain;charset=utf-8".into(), "text/plain".into()],
            },
            Msg::Fetched {
                req: 9,
                mime: String::new(),
            },
            Msg::Put { mime: "x".into() },
            Msg::Notice {
                text: "clipboard: 5 chars copied to global slot".into(),
            },
            Msg::Reply {
                outcome: Outcome::NeedConfirm,
                text: "t".into(),
            },
            Msg::Data {
                mime: "m".into(),
                source: "host".into(),
            },
            Msg::Status {
                source: "a".into(),
                mime: "m".into(),
                size: 12,
            },
        ];
        for m in all {
            let b = m.encode();
            assert!(b.len() <= MAX_MSG_BYTES);
            assert_eq!(Msg::decode(&b), Ok(m.clone()), "{m:?}");
            if b.len() > 1 {
                assert!(Msg::decode(&b[..b.len() - 1]).is_err(), "{m:?} truncated");
            }
            let mut longer = b;
            longer.push(0);
            assert_eq!(Msg::decode(&longer), Err(BadMsg("trailing bytes")));
        }
        assert!(Msg::decode(&[]).is_err());
        assert!(Msg::decode(&[99]).is_err());
        assert!(Msg::decode(&[2, 7]).is_err());
        assert!(Msg::decode(&[4, 0, 0, 2]).is_err(), "a flag is 0 or 1");
    }

    #[test]
    fn test_wire_bytes_are_pinned() {
        let paste = Msg::Paste {
            vm: "b".into(),
            confirm: true,
        };
        assert_eq!(paste.encode(), [4, 1, 0, b'b', 1]);
        let fetch = Msg::Fetch {
            req: 258,
            mimes: vec!["t".into()],
        };
        assert_eq!(fetch.encode(), [20, 2, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, b't']);
    }

    #[test]
    fn test_long_strings_and_lists_are_cut_on_encode_and_refused_on_decode() {
        let long = "é".repeat(MAX_STR);
        match Msg::decode(&Msg::Hello { vm: long }.encode()).unwrap() {
            Msg::Hello { vm } => assert!(vm.len() <= MAX_STR && vm.chars().all(|c| c == 'é')),
            _ => unreachable!(),
        }
        let many = Msg::Fetch {
            req: 1,
            mimes: (0..200).map(|i| i.to_string()).collect(),
        };
        match Msg::decode(&many.encode()).unwrap() {
            Msg::Fetch { mimes, .. } => assert_eq!(mimes.len(), MAX_LIST),
            _ => unreachable!(),
        }
        let mut raw = vec![1u8];
        raw.extend_from_slice(&((MAX_STR + 1) as u16).to_le_bytes());
        raw.extend(std::iter::repeat_n(b'a', MAX_STR + 1));
        assert_eq!(Msg::decode(&raw), Err(BadMsg("string too long")));
    }
}
