//! Making text a guest chose safe to print on the user's terminal or in a log.
//!
//! A guest controls the message of an agent `Error` frame, and through the VMM's and
//! virtiofsd's output some of what the command service relays. Printed as is, such text can
//! drive the user's terminal: OSC 52 writes the clipboard, OSC 0 sets the window title, CSI
//! sequences clear the screen or hide text, a carriage return overwrites a line, and bidi
//! overrides or zero-width characters make text read differently from what it is.
//!
//! [`escape`] keeps printable UTF-8 (accents, CJK, emoji) and replaces every character that
//! controls a terminal or changes how text reads with a visible escape:
//!
//! | characters | shown as |
//! |---|---|
//! | tab, line feed, carriage return | `\t`, `\n`, `\r` |
//! | other C0 controls (U+0000–U+001F, ESC and BEL included), DEL | `\x1b`, `\x07`, `\x7f`, ... |
//! | C1 controls (U+0080–U+009F), bidi controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), zero-width and invisible characters (U+180E, U+200B–U+200D, U+2060–U+2064, U+FEFF), line and paragraph separators (U+2028, U+2029), interlinear annotation (U+FFF9–U+FFFB), tags (U+E0000–U+E007F) | `\u{202e}`, ... |
//!
//! The output is one line. A backslash is left as it is: the escapes are for a human reading
//! the message, not a reversible encoding. Text with nothing to escape is returned borrowed.
//!
//! This is for vmsilo's own messages that embed guest text. A command's stdout and stderr
//! under `vm-run --wait` are that program's output and pass unchanged, as with ssh.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as is.
pub fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// `text` with every character [`needs_escape`] selects replaced by a visible escape (see the
/// module documentation); borrowed when nothing needed escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(needs_escape) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// [`escape`] applied to each line of `text` (split at line feeds, with a carriage return
/// before a line feed dropped): for a multi-line message whose line breaks are part of its
/// layout. Every other control character is escaped as [`escape`] does.
pub fn escape_lines(text: &str) -> impl Iterator<Item = Cow<'_, str>> {
    text.lines().map(escape)
}

fn push_escaped(out: &mut String, c: char) {
    if !needs_escape(c) {
        out.push(c);
        return;
    }
    // Writing to a String cannot fail.
    let _ = match c {
        '\t' => out.write_str("\\t"),
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => write!(out, "\\x{:02x}", u32::from(c)),
        _ => write!(out, "\\u{{{:x}}}", u32::from(c)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_escape_keeps_printable_text_borrowed() {
        for s in [
            "",
            "plain text",
            "vmsilo-guest: café: 命令 not found 🚀",
            "a\\x1b",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn test_escape_makes_terminal_sequences_visible() {
        assert_eq!(
            escape("\x1b]52;c;aGk=\x07\x1b]0;title\x07\x1b[2J"),
            "\\x1b]52;c;aGk=\\x07\\x1b]0;title\\x07\\x1b[2J"
        );
        assert_eq!(escape("a\tb\r\nc\0\x7f"), "a\\tb\\r\\nc\\x00\\x7f");
        // C1: CSI and OSC as single characters.
        assert_eq!(
            escape("\u{9b}2J\u{9d}0;t\u{9c}"),
            "\\u{9b}2J\\u{9d}0;t\\u{9c}"
        );
    }

    #[test]
    fn test_escape_shows_bidi_and_invisible_characters() {
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(
            escape("\u{200b}\u{200d}\u{2066}\u{feff}\u{e0041}\u{2028}"),
            "\\u{200b}\\u{200d}\\u{2066}\\u{feff}\\u{e0041}\\u{2028}"
        );
    }

    #[test]
    fn test_escape_output_never_contains_an_escapable_character() {
        let all: String = (0..=0x10ffffu32).filter_map(char::from_u32).collect();
        let out = escape(&all);
        assert!(!out.chars().any(needs_escape));
        assert!(out.contains('é') && out.contains('\u{1f680}'));
    }

    #[test]
    fn test_escape_lines_keeps_the_line_layout() {
        let lines: Vec<_> = escape_lines("first\x1b[2J\r\n  second\x07\n").collect();
        assert_eq!(lines, ["first\\x1b[2J", "  second\\x07"]);
    }
}
