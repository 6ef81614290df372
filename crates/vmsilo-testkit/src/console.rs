//! The guest's serial console as the harness sees it: everything QEMU sent, a read cursor for
//! line matching, and a log file.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Console bytes kept in memory; older output is dropped (the log file keeps everything).
const MAX_KEPT: usize = 16 << 20;

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    /// Bytes before `cursor` have been consumed by line matching.
    cursor: usize,
    /// The console reached EOF (QEMU exited or the socket broke).
    closed: bool,
}

/// Why a wait on the console ended without a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    Timeout,
    Closed,
}

#[derive(Debug, Default)]
pub(crate) struct Console {
    state: Mutex<State>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies `src` into the console (and `log`) until EOF; run on its own thread.
    pub(crate) fn pump(&self, mut src: impl Read, mut log: Option<File>) {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match src.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(&chunk[..n]);
            }
            let mut st = self.lock();
            st.buf.extend_from_slice(&chunk[..n]);
            if st.buf.len() > MAX_KEPT {
                let drop_n = st.buf.len() - MAX_KEPT / 2;
                st.buf.drain(..drop_n);
                st.cursor = st.cursor.saturating_sub(drop_n);
            }
            drop(st);
            self.changed.notify_all();
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Consumes complete lines from the cursor until `f` returns `Some` for one (the line has
    /// its `\r`, `\n` and terminal escape sequences removed). Lines before and including the
    /// match are consumed.
    pub(crate) fn next_line<T>(
        &self,
        deadline: Instant,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, WaitEnd> {
        let mut st = self.lock();
        loop {
            while let Some(nl) = st.buf[st.cursor..].iter().position(|&b| b == b'\n') {
                let start = st.cursor;
                st.cursor += nl + 1;
                let line = String::from_utf8_lossy(&st.buf[start..start + nl]);
                let line = strip_escapes(line.trim_end_matches('\r'));
                if let Some(v) = f(&line) {
                    return Ok(v);
                }
            }
            if st.closed {
                return Err(WaitEnd::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitEnd::Timeout);
            }
            let wait = (deadline - now).min(Duration::from_millis(250));
            st = self
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Everything kept so far, lossily decoded.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().buf).into_owned()
    }

    /// The last `n` lines, control characters made visible, each prefixed with `  | `.
    pub(crate) fn tail(&self, n: usize) -> String {
        tail_lines(&self.text(), n)
    }
}

/// `line` without terminal escape sequences (busybox's line editor sends `ESC [ 6 n` before
/// every prompt).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // CSI: parameters and intermediates up to a final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            // Two-character escape.
            chars.next();
        }
    }
    out
}

/// The last `n` lines of `text`, control characters made visible, each prefixed with `  | `.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    for line in &lines[start..] {
        out.push_str("  | ");
        for c in line.trim_end_matches('\r').chars() {
            match c {
                '\t' => out.push(c),
                c if c.is_control() => out.push_str(&format!("^{}", ((c as u8) ^ 0x40) as char)),
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_lines_are_consumed_in_order_and_partial_lines_wait() {
        let c = Console::default();
        c.pump(&b"boot\r\nVMSILO-READY uptime=3.1\r\nfoo\nbar"[..], None);
        let soon = Instant::now() + Duration::from_millis(10);
        let ready = c
            .next_line(soon, |l| {
                l.starts_with("VMSILO-READY").then(|| l.to_owned())
            })
            .unwrap();
        assert_eq!(ready, "VMSILO-READY uptime=3.1");
        // "boot" was consumed; "foo" is next; "bar" has no newline yet and the console closed.
        assert_eq!(c.next_line(soon, |l| Some(l.to_owned())).unwrap(), "foo");
        assert_eq!(
            c.next_line(soon, |l| Some(l.to_owned())),
            Err(WaitEnd::Closed)
        );
        assert!(c.text().ends_with("bar"));
    }

    #[test]
    fn test_timeout_when_nothing_matches() {
        let c = Console::default();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(c.next_line(soon, |_| Some(())), Err(WaitEnd::Timeout));
    }

    #[test]
    fn test_escape_sequences_are_not_part_of_lines() {
        assert_eq!(strip_escapes("\x1b[6ndelayed"), "delayed");
        assert_eq!(strip_escapes("a\x1b[1;32mb\x1b[0m\x1b7c"), "abc");
        assert_eq!(strip_escapes("plain \u{e9}"), "plain \u{e9}");
        let c = Console::default();
        c.pump(&b"\x1b[6nVMSILO-READY\r\n"[..], None);
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(
            c.next_line(soon, |l| Some(l.to_owned())).unwrap(),
            "VMSILO-READY"
        );
    }

    #[test]
    fn test_tail_shows_control_characters() {
        let t = tail_lines("a\nb\x1b[6n\r\nc\n", 2);
        assert_eq!(t, "  | b^[[6n\n  | c\n");
    }
}
