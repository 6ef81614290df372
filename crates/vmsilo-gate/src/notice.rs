//! The clipboard notice in the label band, sans-IO: vmsilo-clipd tells the gate's parent
//! about each transfer or refusal that concerns this VM (`Notice`); the parent's [`Board`]
//! decides when the band of every window of the VM shows it and when it shows the VM name
//! alone again, with the time passed in. The band is drawn by the gate, so a guest can
//! neither fake nor hide the message.
//!
//! Bounds: the text is printable ASCII of at most [`MAX_CHARS`] characters ([`sanitize`]);
//! the band changes at most once per [`MIN_GAP`] (a burst of notices shows the latest one
//! when the gap is over), so that redraws stay bounded whatever clipd sends.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// How long a notice shows.
pub const SHOW_FOR: Duration = Duration::from_secs(4);
/// Least time between two changes of the band (at most 4 redraws per second per window).
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// Longest notice, in characters.
pub const MAX_CHARS: usize = 96;
/// What separates the VM name from the notice in the band.
pub const SEPARATOR: &str = " | ";

/// `text` as the band may show it: printable ASCII only (anything else becomes a space),
/// runs of spaces collapsed, trimmed, cut to [`MAX_CHARS`].
pub fn sanitize(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_ascii_graphic() { c } else { ' ' };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() >= MAX_CHARS {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// The band's label: the VM's label, and the notice after it while one shows (the VM name
/// always stays first, so the band keeps saying whose window it is).
pub fn label(vm_label: &str, notice: Option<&str>) -> String {
    match notice {
        Some(n) if !n.is_empty() => format!("{vm_label}{SEPARATOR}{n}"),
        _ => vm_label.to_string(),
    }
}

/// A change the children must draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Show this notice.
    Show(String),
    /// Show the VM name alone again.
    Clear,
}

/// The notice state of one gate (its parent).
#[derive(Debug, Default)]
pub struct Board {
    shown: Option<(String, Instant)>,
    waiting: Option<String>,
    last_change: Option<Instant>,
}

impl Board {
    /// What shows now (for a child that starts while a notice shows).
    pub fn current(&self) -> Option<&str> {
        self.shown.as_ref().map(|(t, _)| t.as_str())
    }

    fn may_change(&self, now: Instant) -> bool {
        self.last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_GAP)
    }

    fn show(&mut self, text: String, now: Instant) -> Change {
        self.shown = Some((text.clone(), now + SHOW_FOR));
        self.last_change = Some(now);
        Change::Show(text)
    }

    /// clipd sent `text`: show it now, or as soon as the gap allows (a later notice replaces
    /// a waiting one). Empty text is ignored.
    pub fn post(&mut self, text: &str, now: Instant) -> Option<Change> {
        let text = sanitize(text);
        if text.is_empty() {
            return None;
        }
        if self.may_change(now) {
            self.waiting = None;
            Some(self.show(text, now))
        } else {
            self.waiting = Some(text);
            None
        }
    }

    /// The change due at `now`, if any (call again until `None`, or wait for
    /// [`Self::deadline`]).
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        if !self.may_change(now) {
            return None;
        }
        if let Some(text) = self.waiting.take() {
            return Some(self.show(text, now));
        }
        if self.shown.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.shown = None;
            self.last_change = Some(now);
            return Some(Change::Clear);
        }
        None
    }

    /// When [`Self::tick`] next has work.
    pub fn deadline(&self) -> Option<Instant> {
        let gap_over = self.last_change.map(|t| t + MIN_GAP);
        let waiting = self.waiting.as_ref().and(gap_over);
        let expiry = self
            .shown
            .as_ref()
            .map(|(_, until)| (*until).max(gap_over.unwrap_or(*until)));
        match (waiting, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_notice_shows_for_a_few_seconds_then_the_name_returns() {
        let t0 = Instant::now();
        let mut b = Board::default();
        assert_eq!(b.deadline(), None);
        assert_eq!(
            b.post("clipboard: refused, over 64000 chars", t0),
            Some(Change::Show("clipboard: refused, over 64000 chars".into()))
        );
        assert_eq!(b.current(), Some("clipboard: refused, over 64000 chars"));
        assert_eq!(b.deadline(), Some(t0 + SHOW_FOR));
        assert_eq!(b.tick(t0 + SHOW_FOR - Duration::from_millis(1)), None);
        assert_eq!(b.tick(t0 + SHOW_FOR), Some(Change::Clear));
        assert_eq!(b.current(), None);
        assert_eq!(b.tick(t0 + SHOW_FOR * 2), None);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn test_a_burst_shows_the_latest_notice_once_the_gap_is_over() {
        let t0 = Instant::now();
        let mut b = Board::default();
        assert!(b.post("first", t0).is_some());
        let soon = t0 + MIN_GAP / 2;
        assert_eq!(b.post("second", soon), None);
        assert_eq!(b.post("third", soon), None);
        assert_eq!(b.current(), Some("first"));
        assert_eq!(b.deadline(), Some(t0 + MIN_GAP));
        assert_eq!(b.tick(soon), None);
        assert_eq!(b.tick(t0 + MIN_GAP), Some(Change::Show("third".into())));
        assert_eq!(b.tick(t0 + MIN_GAP), None, "second was replaced");
        // the new notice shows for its own full time
        assert_eq!(b.deadline(), Some(t0 + MIN_GAP + SHOW_FOR));
        // 1000 notices in one second change the band at most 1 + 1 s / MIN_GAP times
        let mut b = Board::default();
        let mut changes = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            changes += usize::from(b.post(&format!("n{i}"), now).is_some());
            while b.tick(now).is_some() {
                changes += 1;
            }
        }
        assert!(changes <= 5, "{changes} changes");
        assert_eq!(
            b.tick(t0 + Duration::from_secs(1)),
            Some(Change::Show("n999".into()))
        );
    }

    #[test]
    fn test_an_expiry_within_the_gap_waits_for_the_gap() {
        let t0 = Instant::now();
        let mut b = Board::default();
        b.post("a", t0);
        assert_eq!(b.tick(t0 + SHOW_FOR), Some(Change::Clear));
        // shown right after a clear: the next change (its expiry) still honours the gap
        let t1 = t0 + SHOW_FOR + MIN_GAP;
        assert!(b.post("b", t1).is_some());
        assert!(b.deadline().unwrap() >= t1 + MIN_GAP);
    }

    #[test]
    fn test_sanitize_keeps_printable_ascii_and_bounds_the_length() {
        assert_eq!(sanitize("  a\u{202e}b\n\tc  "), "a b c");
        assert_eq!(sanitize("日本"), "");
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_CHARS);
        let mut b = Board::default();
        assert_eq!(
            b.post(" \u{200b} ", Instant::now()),
            None,
            "nothing to show"
        );
        assert_eq!(label("banking", None), "banking");
        assert_eq!(label("banking", Some("")), "banking");
        assert_eq!(
            label("banking", Some("clipboard: x")),
            "banking | clipboard: x"
        );
    }
}
