//! The encoding every `SOCK_SEQPACKET` message of the clipboard seams shares (sans-IO, std
//! only): vmsilo-clipd ⇄ its peers ([`crate::proto::Msg`]) and, inside vmsilo-gate, the parent
//! ⇄ its per-client children (`vmsilo_gate::datadev::Msg`). Each message set is its own
//! agreement; this module is the one place that says how a message becomes bytes.
//!
//! A message is one datagram: a tag byte, then the fields in order; integers little-endian,
//! flags one byte (0 or 1), strings a u16 length and UTF-8 bytes, string lists a u8 count
//! and the strings. Each message set sets its own bounds (longest string, most entries):
//! encoding cuts to them, decoding refuses past them. Anything else (unknown tag, truncation,
//! trailing bytes) is [`BadMsg`]. [`crate::seqpacket`] sends and receives a [`Message`]
//! with its fd.
#![forbid(unsafe_code)]

/// A message that does not decode; the text names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct BadMsg(pub &'static str);

/// A message set carried one message per datagram, with at most one fd beside it.
pub trait Message: Sized {
    /// Largest datagram an encoded message can be (the receive buffer's size).
    const MAX_BYTES: usize;
    /// The datagram (strings and lists cut to the set's bounds).
    fn encode(&self) -> Vec<u8>;
    /// Decodes one datagram.
    fn decode(b: &[u8]) -> Result<Self, BadMsg>;
    /// Whether this message carries an fd (it must, and others must not).
    fn has_fd(&self) -> bool;
}

/// Appends `v` little-endian.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a flag (0 or 1).
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(v as u8);
}

/// Appends `s`, cut to at most `max` bytes (at a character boundary; `max` ≤ `u16::MAX`).
pub fn put_str(out: &mut Vec<u8>, s: &str, max: usize) {
    let mut end = s.len().min(max).min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let b = &s.as_bytes()[..end];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends a list of at most `max_n` strings (`max_n` ≤ 255) of at most `max_str` bytes each.
pub fn put_list(out: &mut Vec<u8>, l: &[String], max_n: usize, max_str: usize) {
    let l = &l[..l.len().min(max_n).min(u8::MAX as usize)];
    out.push(l.len() as u8);
    for s in l {
        put_str(out, s, max_str);
    }
}

/// Reads a datagram's fields in order.
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader of the datagram `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BadMsg> {
        if self.0.len() < n {
            return Err(BadMsg("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    /// One byte (a tag, an enum value).
    pub fn u8(&mut self) -> Result<u8, BadMsg> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, BadMsg> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| BadMsg("u64"))?;
        Ok(u64::from_le_bytes(b))
    }

    /// A flag: 0 or 1, anything else is refused.
    pub fn bool(&mut self) -> Result<bool, BadMsg> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BadMsg("bad flag")),
        }
    }

    /// A string of at most `max` bytes.
    pub fn str(&mut self, max: usize) -> Result<String, BadMsg> {
        let l = self.take(2)?;
        let len = u16::from_le_bytes([l[0], l[1]]) as usize;
        if len > max {
            return Err(BadMsg("string too long"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| BadMsg("string not UTF-8"))
    }

    /// A list of at most `max_n` strings of at most `max_str` bytes each.
    pub fn list(&mut self, max_n: usize, max_str: usize) -> Result<Vec<String>, BadMsg> {
        let n = self.u8()? as usize;
        if n > max_n {
            return Err(BadMsg("list too long"));
        }
        (0..n).map(|_| self.str(max_str)).collect()
    }

    /// The end: nothing may follow the last field.
    pub fn end(&self) -> Result<(), BadMsg> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(BadMsg("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fields_round_trip_and_bounds_hold_both_ways() {
        let mut b = Vec::new();
        put_u64(&mut b, 0x0102_0304_0506_0708);
        put_bool(&mut b, true);
        put_str(&mut b, "ééé", 5);
        put_list(&mut b, &["a".into(), "b".into(), "c".into()], 2, 8);
        assert_eq!(&b[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        let mut r = Reader::new(&b);
        assert_eq!(r.u64(), Ok(0x0102_0304_0506_0708));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.str(5).as_deref(), Ok("éé"), "cut at a character boundary");
        assert_eq!(r.list(2, 8), Ok(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(r.end(), Ok(()));
        assert_eq!(r.u8(), Err(BadMsg("truncated")));

        let mut b = Vec::new();
        put_str(&mut b, "abcdef", 16);
        assert_eq!(Reader::new(&b).str(5), Err(BadMsg("string too long")));
        assert_eq!(Reader::new(&[2]).bool(), Err(BadMsg("bad flag")));
        assert_eq!(Reader::new(&[3]).list(2, 8), Err(BadMsg("list too long")));
        assert_eq!(
            Reader::new(&[2, 0, 0xff, 0xfe]).str(8),
            Err(BadMsg("string not UTF-8"))
        );
        assert_eq!(Reader::new(&[0]).end(), Err(BadMsg("trailing bytes")));
    }
}
