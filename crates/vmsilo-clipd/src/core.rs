//! The clipboard's decisions, sans-IO: the global slot, the policy (`allow`, `ask`, `deny` per
//! source → destination), the size cap, the MIME allowlist and the wipe (after a paste, after
//! a timeout). Time is passed in, so that everything here is unit-tested without clocks.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, Instant};

/// Where content comes from or goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The host desktop (the user's own clipboard, through `vmsilo clipboard`).
    Host,
    /// A VM.
    Vm(String),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Host => f.write_str("host"),
            Endpoint::Vm(v) => f.write_str(v),
        }
    }
}

impl Endpoint {
    /// `host` is the host; anything else a VM.
    pub fn parse(s: &str) -> Endpoint {
        if s == "host" {
            Endpoint::Host
        } else {
            Endpoint::Vm(s.to_string())
        }
    }
}

/// One side of a policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: any VM (never the host: the host is only ever named).
    AnyVm,
    /// `host`.
    Host,
    /// One VM.
    Vm(String),
}

impl Pattern {
    /// `*`, `host` or a VM name.
    pub fn parse(s: &str) -> Pattern {
        match s {
            "*" => Pattern::AnyVm,
            "host" => Pattern::Host,
            v => Pattern::Vm(v.to_string()),
        }
    }

    fn matches(&self, e: &Endpoint) -> bool {
        match (self, e) {
            (Pattern::AnyVm, Endpoint::Vm(_)) => true,
            (Pattern::Host, Endpoint::Host) => true,
            (Pattern::Vm(p), Endpoint::Vm(v)) => p == v,
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::AnyVm => f.write_str("*"),
            Pattern::Host => f.write_str("host"),
            Pattern::Vm(v) => f.write_str(v),
        }
    }
}

/// A rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go ahead.
    Allow,
    /// Go ahead once the user confirms (a second paste chord within the confirmation window,
    /// or the CLI's confirmation).
    Ask,
    /// Refuse.
    Deny,
}

impl Action {
    /// `allow`, `ask` or `deny`.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "allow" => Some(Action::Allow),
            "ask" => Some(Action::Ask),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }
}

/// One rule: `from` → `to` = `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The source.
    pub from: Pattern,
    /// The destination.
    pub to: Pattern,
    /// The verdict.
    pub action: Action,
}

impl Rule {
    /// Parses `FROM:TO:ACTION` (the daemon's `--policy` flag).
    pub fn parse(s: &str) -> Result<Rule, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [from, to, action] = parts.as_slice() else {
            return Err(format!(
                "policy rule {s:?}: expected FROM:TO:ACTION, e.g. '*:host:ask'"
            ));
        };
        let action = Action::parse(action).ok_or_else(|| {
            format!("policy rule {s:?}: the action is allow, ask or deny, not {action:?}")
        })?;
        if from.is_empty() || to.is_empty() {
            return Err(format!("policy rule {s:?}: FROM and TO must not be empty"));
        }
        Ok(Rule {
            from: Pattern::parse(from),
            to: Pattern::parse(to),
            action,
        })
    }
}

/// The policy: the first matching rule decides; no match is `deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    /// VM → VM is allowed (both chords are the user's explicit acts, in two windows, as in
    /// Qubes); VM → host asks (the host's applications parse what a VM wrote); host → VM is
    /// allowed (only the user's own `vmsilo clipboard from-host` puts host content in the
    /// slot). Anything else (no rule) is denied.
    fn default() -> Policy {
        Policy {
            rules: vec![
                Rule {
                    from: Pattern::AnyVm,
                    to: Pattern::Host,
                    action: Action::Ask,
                },
                Rule {
                    from: Pattern::AnyVm,
                    to: Pattern::AnyVm,
                    action: Action::Allow,
                },
                Rule {
                    from: Pattern::Host,
                    to: Pattern::AnyVm,
                    action: Action::Allow,
                },
            ],
        }
    }
}

impl Policy {
    /// The verdict for `from` → `to`.
    pub fn decide(&self, from: &Endpoint, to: &Endpoint) -> Action {
        self.rules
            .iter()
            .find(|r| r.from.matches(from) && r.to.matches(to))
            .map(|r| r.action)
            .unwrap_or(Action::Deny)
    }
}

/// The MIME types allowed by default.
pub const DEFAULT_MIMES: &[&str] = &["text/plain;charset=utf-8", "text/plain"];
/// MIME types that may be allowed at all (opt-in beyond the defaults).
pub const KNOWN_MIMES: &[&str] = &[
    "text/plain;charset=utf-8",
    "text/plain",
    "text/html",
    "image/png",
];
/// The default cap, in characters (text) or bytes (other types), as Qubes.
pub const DEFAULT_MAX_SIZE: usize = 64_000;
/// The largest cap that can be configured.
pub const MAX_MAX_SIZE: usize = 16 << 20;
/// The default time after which an unpasted slot is wiped.
pub const DEFAULT_WIPE_AFTER: Duration = Duration::from_secs(60);
/// How long an `ask` waits for the confirming second paste.
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(10);

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The policy.
    pub policy: Policy,
    /// The cap: characters for text types, bytes for others.
    pub max_size: usize,
    /// Allowed MIME types, preferred first.
    pub mimes: Vec<String>,
    /// An unpasted slot is wiped after this.
    pub wipe_after: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            policy: Policy::default(),
            max_size: DEFAULT_MAX_SIZE,
            mimes: DEFAULT_MIMES.iter().map(|s| s.to_string()).collect(),
            wipe_after: DEFAULT_WIPE_AFTER,
        }
    }
}

impl Settings {
    /// Checks the settings (what is wrong, and how to fix it).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_size == 0 || self.max_size > MAX_MAX_SIZE {
            return Err(format!(
                "the size cap {} is out of range: choose 1 to {MAX_MAX_SIZE}",
                self.max_size
            ));
        }
        if self.mimes.is_empty() {
            return Err("no MIME type is allowed: allow at least text/plain".into());
        }
        for m in &self.mimes {
            if !KNOWN_MIMES.contains(&m.as_str()) {
                return Err(format!(
                    "MIME type {m:?} cannot be allowed: choose from {}",
                    KNOWN_MIMES.join(", ")
                ));
            }
        }
        if self.wipe_after.is_zero() {
            return Err("the wipe timeout must be longer than zero".into());
        }
        Ok(())
    }

    /// The most bytes worth reading for the cap (4 bytes per character for text).
    pub fn max_bytes(&self) -> usize {
        self.max_size.saturating_mul(4)
    }

    /// The first allowed MIME type (in our order of preference) among `offered`.
    pub fn pick_mime(&self, offered: &[String]) -> Option<String> {
        self.mimes.iter().find(|m| offered.contains(m)).cloned()
    }

    /// Checks content against the MIME allowlist and the cap; its size (characters for text,
    /// bytes otherwise).
    pub fn check(&self, mime: &str, data: &[u8]) -> Result<usize, Refusal> {
        if !self.mimes.iter().any(|m| m == mime) {
            return Err(Refusal::Mime(mime.to_string()));
        }
        let size = if mime.starts_with("text/") {
            match std::str::from_utf8(data) {
                Ok(s) => s.chars().count(),
                Err(_) if mime.contains("charset=utf-8") => return Err(Refusal::NotUtf8),
                Err(_) => data.len(),
            }
        } else {
            data.len()
        };
        if size > self.max_size {
            return Err(Refusal::OverCap {
                size,
                cap: self.max_size,
            });
        }
        Ok(size)
    }
}

/// Why a transfer did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The policy denies it.
    Denied,
    /// The policy asks, and the user has not confirmed yet.
    NeedConfirm,
    /// Over the cap.
    OverCap {
        /// The size seen (at least; reading stops past the cap).
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// A MIME type not allowed.
    Mime(String),
    /// `text/plain;charset=utf-8` that is not UTF-8.
    NotUtf8,
    /// The slot is empty.
    Empty,
    /// The source has nothing of an allowed type.
    NothingToCopy,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied => f.write_str("the clipboard policy denies it"),
            Refusal::NeedConfirm => {
                f.write_str("the clipboard policy asks: paste again within 10 s to confirm")
            }
            Refusal::OverCap { size, cap } => {
                write!(f, "too large: {size} > {cap} (the clipboard size cap)")
            }
            Refusal::Mime(m) => write!(f, "the MIME type {m:?} is not allowed"),
            Refusal::NotUtf8 => f.write_str("the text is not valid UTF-8"),
            Refusal::Empty => f.write_str("the global clipboard is empty"),
            Refusal::NothingToCopy => {
                f.write_str("the clipboard holds nothing of an allowed MIME type")
            }
        }
    }
}

/// The global slot's content.
#[derive(Clone, PartialEq, Eq)]
pub struct Slot {
    /// Where it came from.
    pub source: Endpoint,
    /// Its MIME type.
    pub mime: String,
    /// The content.
    pub data: Vec<u8>,
    /// Its size (characters for text, bytes otherwise).
    pub size: usize,
    /// When it was copied.
    pub at: Instant,
}

impl fmt::Debug for Slot {
    /// Metadata only: the content is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("source", &self.source)
            .field("mime", &self.mime)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A transfer's metadata, as it is logged and notified (never the content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// From.
    pub from: Endpoint,
    /// To (`None`: into the slot).
    pub to: Option<Endpoint>,
    /// Size (characters for text, bytes otherwise).
    pub size: usize,
    /// MIME type.
    pub mime: String,
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match &self.to {
            Some(t) => t.to_string(),
            None => "the global clipboard".into(),
        };
        let unit = if self.mime.starts_with("text/") {
            "characters"
        } else {
            "bytes"
        };
        write!(
            f,
            "{} → {to}: {} {unit}, {}",
            self.from, self.size, self.mime
        )
    }
}

/// Longest [`band_text`] in characters (the gate cuts anything longer).
pub const MAX_BAND_TEXT: usize = 96;

/// What the label band of a VM's windows is told about a transfer or refusal that concerns
/// that VM (see [`band_text`]).
#[derive(Debug, Clone, Copy)]
pub enum BandEvent<'a> {
    /// Its clipboard was copied into the slot, or the slot pasted into it.
    Done(&'a Transfer),
    /// A copy from it or a paste into it was refused.
    Refused(&'a Refusal),
    /// A copy from it or a paste into it failed (the journal says why).
    Failed,
}

/// The short message for a VM's label band: ASCII, at most [`MAX_BAND_TEXT`] characters,
/// metadata only. It never holds the content, nor any text a VM chose (a MIME type a VM
/// offered is not repeated): only sizes, the cap and VM names from the configuration.
pub fn band_text(e: BandEvent<'_>) -> String {
    let t = match e {
        BandEvent::Done(t) => {
            let unit = if t.mime.starts_with("text/") {
                "chars"
            } else {
                "bytes"
            };
            match &t.to {
                None => format!("clipboard: {} {unit} copied to global slot", t.size),
                Some(_) => format!("clipboard: {} {unit} pasted from {}", t.size, t.from),
            }
        }
        BandEvent::Refused(r) => match r {
            Refusal::Denied => "clipboard: refused by policy (deny)".into(),
            Refusal::NeedConfirm => "clipboard: paste again within 10 s to confirm".into(),
            Refusal::OverCap { cap, .. } => format!("clipboard: refused, over {cap} chars"),
            Refusal::Mime(_) => "clipboard: refused, type not allowed".into(),
            Refusal::NotUtf8 => "clipboard: refused, not valid UTF-8".into(),
            Refusal::Empty => "clipboard: refused, global slot empty".into(),
            Refusal::NothingToCopy => "clipboard: refused, nothing to copy".into(),
        },
        BandEvent::Failed => "clipboard: failed (see the journal)".into(),
    };
    t.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(MAX_BAND_TEXT)
        .collect()
}

/// The slot and the decisions about it.
#[derive(Debug)]
pub struct Clipboard {
    /// The settings.
    pub settings: Settings,
    slot: Option<Slot>,
    /// An `ask` waiting for its confirmation: (from, to, deadline).
    pending: Option<(Endpoint, Endpoint, Instant)>,
}

impl Clipboard {
    /// An empty slot with these settings.
    pub fn new(settings: Settings) -> Clipboard {
        Clipboard {
            settings,
            slot: None,
            pending: None,
        }
    }

    /// The slot, if not empty.
    pub fn slot(&self) -> Option<&Slot> {
        self.slot.as_ref()
    }

    /// Copies `data` (`mime`) from `source` into the slot, replacing what was there. The
    /// MIME type and the cap are checked; the slot is unchanged on refusal.
    pub fn copy(
        &mut self,
        source: Endpoint,
        mime: &str,
        data: Vec<u8>,
        now: Instant,
    ) -> Result<Transfer, Refusal> {
        let size = self.settings.check(mime, &data)?;
        self.pending = None;
        let t = Transfer {
            from: source.clone(),
            to: None,
            size,
            mime: mime.to_string(),
        };
        self.slot = Some(Slot {
            source,
            mime: mime.to_string(),
            data,
            size,
            at: now,
        });
        Ok(t)
    }

    /// Pastes the slot into `dest`: the policy for (slot's source → `dest`) decides. On
    /// success the slot is emptied (returned, with the transfer). `confirmed` is an explicit
    /// confirmation (the CLI's); otherwise an `ask` is confirmed by a second paste to the
    /// same destination within [`CONFIRM_WINDOW`].
    pub fn paste(
        &mut self,
        dest: &Endpoint,
        confirmed: bool,
        now: Instant,
    ) -> Result<(Slot, Transfer), Refusal> {
        self.tick(now);
        let Some(slot) = &self.slot else {
            return Err(Refusal::Empty);
        };
        match self.settings.policy.decide(&slot.source, dest) {
            Action::Deny => return Err(Refusal::Denied),
            Action::Ask => {
                let again = matches!(&self.pending,
                    Some((f, t, deadline)) if f == &slot.source && t == dest && now <= *deadline);
                if !confirmed && !again {
                    self.pending = Some((slot.source.clone(), dest.clone(), now + CONFIRM_WINDOW));
                    return Err(Refusal::NeedConfirm);
                }
            }
            Action::Allow => {}
        }
        self.pending = None;
        let slot = self.slot.take().ok_or(Refusal::Empty)?;
        let t = Transfer {
            from: slot.source.clone(),
            to: Some(dest.clone()),
            size: slot.size,
            mime: slot.mime.clone(),
        };
        Ok((slot, t))
    }

    /// Empties the slot; `true` if it held something.
    pub fn wipe(&mut self) -> bool {
        self.pending = None;
        self.slot.take().is_some()
    }

    /// Wipes the slot once it is older than the timeout; the wiped slot's metadata.
    pub fn tick(&mut self, now: Instant) -> Option<Transfer> {
        let expired = self
            .slot
            .as_ref()
            .is_some_and(|s| now.saturating_duration_since(s.at) >= self.settings.wipe_after);
        if !expired {
            return None;
        }
        self.pending = None;
        self.slot.take().map(|s| Transfer {
            from: s.source,
            to: None,
            size: s.size,
            mime: s.mime,
        })
    }

    /// When [`Self::tick`] next has work.
    pub fn deadline(&self) -> Option<Instant> {
        self.slot.as_ref().map(|s| s.at + self.settings.wipe_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_band_texts_are_short_ascii_metadata() {
        let copy = Transfer {
            from: vm("banking"),
            to: None,
            size: 42,
            mime: UTF8.into(),
        };
        assert_eq!(
            band_text(BandEvent::Done(&copy)),
            "clipboard: 42 chars copied to global slot"
        );
        let paste = Transfer {
            to: Some(vm("shopping")),
            mime: "image/png".into(),
            ..copy.clone()
        };
        assert_eq!(
            band_text(BandEvent::Done(&paste)),
            "clipboard: 42 bytes pasted from banking"
        );
        let from_host = Transfer {
            from: Endpoint::Host,
            ..paste
        };
        assert_eq!(
            band_text(BandEvent::Done(&from_host)),
            "clipboard: 42 bytes pasted from host"
        );
        let over = Refusal::OverCap {
            size: 70_000,
            cap: 64_000,
        };
        assert_eq!(
            band_text(BandEvent::Refused(&over)),
            "clipboard: refused, over 64000 chars"
        );
        assert_eq!(
            band_text(BandEvent::Refused(&Refusal::Empty)),
            "clipboard: refused, global slot empty"
        );
        assert_eq!(
            band_text(BandEvent::Refused(&Refusal::Denied)),
            "clipboard: refused by policy (deny)"
        );
        assert_eq!(
            band_text(BandEvent::Refused(&Refusal::NeedConfirm)),
            "clipboard: paste again within 10 s to confirm"
        );
        // A MIME type the VM chose never reaches the band.
        let mime = Refusal::Mime("text/evil\u{202e}SPOOF".into());
        let t = band_text(BandEvent::Refused(&mime));
        assert_eq!(t, "clipboard: refused, type not allowed");
        for e in [
            BandEvent::Refused(&Refusal::NotUtf8),
            BandEvent::Refused(&Refusal::NothingToCopy),
            BandEvent::Failed,
        ] {
            let t = band_text(e);
            assert!(t.starts_with("clipboard: "), "{t}");
            assert!(t.is_ascii() && t.chars().count() <= MAX_BAND_TEXT, "{t}");
        }
        // Long VM names are cut to the bound.
        let long = Transfer {
            from: vm(&"x".repeat(200)),
            to: Some(vm("b")),
            size: 1,
            mime: UTF8.into(),
        };
        assert_eq!(
            band_text(BandEvent::Done(&long)).chars().count(),
            MAX_BAND_TEXT
        );
    }

    fn vm(s: &str) -> Endpoint {
        Endpoint::Vm(s.into())
    }
    const UTF8: &str = "text/plain;charset=utf-8";

    #[test]
    fn test_default_policy_allows_vm_to_vm_asks_vm_to_host_allows_host_to_vm() {
        let p = Policy::default();
        assert_eq!(p.decide(&vm("a"), &vm("b")), Action::Allow);
        assert_eq!(p.decide(&vm("a"), &Endpoint::Host), Action::Ask);
        assert_eq!(p.decide(&Endpoint::Host, &vm("b")), Action::Allow);
        assert_eq!(
            p.decide(&Endpoint::Host, &Endpoint::Host),
            Action::Deny,
            "no rule matches: deny"
        );
    }

    #[test]
    fn test_first_matching_rule_wins_and_star_never_matches_the_host() {
        let rules = ["vault:*:deny", "*:*:allow", "*:host:allow"]
            .iter()
            .map(|r| Rule::parse(r).unwrap())
            .collect();
        let p = Policy { rules };
        assert_eq!(p.decide(&vm("vault"), &vm("b")), Action::Deny);
        assert_eq!(p.decide(&vm("a"), &vm("vault")), Action::Allow);
        // `vault:*` does not cover the host: `*:host:allow` decides.
        assert_eq!(p.decide(&vm("vault"), &Endpoint::Host), Action::Allow);
        let star = Policy {
            rules: vec![Rule::parse("*:*:allow").unwrap()],
        };
        assert_eq!(star.decide(&vm("a"), &Endpoint::Host), Action::Deny);
        assert_eq!(star.decide(&Endpoint::Host, &vm("a")), Action::Deny);
        assert!(Rule::parse("a:b").is_err());
        assert!(Rule::parse("a:b:maybe").is_err());
        assert!(Rule::parse(":b:allow").is_err());
    }

    #[test]
    fn test_copy_then_paste_moves_the_content_and_empties_the_slot() {
        let now = Instant::now();
        let mut c = Clipboard::new(Settings::default());
        let t = c
            .copy(vm("banking"), UTF8, b"IBAN 123".to_vec(), now)
            .unwrap();
        assert_eq!(t.size, 8);
        assert_eq!(
            t.to_string(),
            "banking → the global clipboard: 8 characters, text/plain;charset=utf-8"
        );
        let (slot, t) = c.paste(&vm("shopping"), false, now).unwrap();
        assert_eq!(slot.data, b"IBAN 123");
        assert_eq!(t.to, Some(vm("shopping")));
        assert!(c.slot().is_none(), "a paste wipes the slot");
        assert_eq!(
            c.paste(&vm("shopping"), false, now).unwrap_err(),
            Refusal::Empty
        );
        assert!(
            !format!("{slot:?}").contains("IBAN"),
            "Debug shows metadata only"
        );
    }

    #[test]
    fn test_deny_refuses_and_keeps_the_slot() {
        let now = Instant::now();
        let mut c = Clipboard::new(Settings {
            policy: Policy {
                rules: vec![Rule::parse("banking:shopping:deny").unwrap()],
            },
            ..Settings::default()
        });
        c.copy(vm("banking"), UTF8, b"x".to_vec(), now).unwrap();
        assert_eq!(
            c.paste(&vm("shopping"), false, now).unwrap_err(),
            Refusal::Denied
        );
        assert_eq!(
            c.paste(&vm("shopping"), true, now).unwrap_err(),
            Refusal::Denied
        );
        assert!(c.slot().is_some());
    }

    #[test]
    fn test_ask_needs_a_second_paste_to_the_same_destination_in_time_or_a_confirmation() {
        let now = Instant::now();
        let mut c = Clipboard::new(Settings::default());
        c.copy(vm("a"), UTF8, b"x".to_vec(), now).unwrap();
        assert_eq!(
            c.paste(&Endpoint::Host, false, now).unwrap_err(),
            Refusal::NeedConfirm
        );
        // Too late: asks again.
        let late = now + CONFIRM_WINDOW + Duration::from_secs(1);
        assert_eq!(
            c.paste(&Endpoint::Host, false, late).unwrap_err(),
            Refusal::NeedConfirm
        );
        // A paste elsewhere in between does not confirm the host paste; it pastes there.
        assert!(c.paste(&Endpoint::Host, false, late).is_ok());
        c.copy(vm("a"), UTF8, b"y".to_vec(), late).unwrap();
        assert!(
            c.paste(&Endpoint::Host, true, late).is_ok(),
            "an explicit confirmation"
        );
    }

    #[test]
    fn test_cap_counts_characters_for_text_and_bytes_otherwise() {
        let s = Settings {
            max_size: 4,
            mimes: KNOWN_MIMES.iter().map(|s| s.to_string()).collect(),
            ..Settings::default()
        };
        assert_eq!(
            s.check(UTF8, "éééé".as_bytes()),
            Ok(4),
            "8 bytes, 4 characters"
        );
        assert_eq!(
            s.check(UTF8, b"12345"),
            Err(Refusal::OverCap { size: 5, cap: 4 })
        );
        assert_eq!(s.check(UTF8, &[0xff, 0xfe]), Err(Refusal::NotUtf8));
        assert_eq!(s.check("text/plain", &[0xff, 0xfe]), Ok(2));
        assert_eq!(
            s.check("image/png", "éé".as_bytes()),
            Ok(4),
            "bytes, not characters"
        );
        assert_eq!(
            s.check("image/png", &[0; 5]),
            Err(Refusal::OverCap { size: 5, cap: 4 })
        );
        let mut c = Clipboard::new(s);
        let now = Instant::now();
        c.copy(vm("a"), UTF8, b"ok".to_vec(), now).unwrap();
        assert!(c.copy(vm("b"), UTF8, b"too long".to_vec(), now).is_err());
        assert_eq!(
            c.slot().unwrap().source,
            vm("a"),
            "a refused copy keeps the slot"
        );
    }

    #[test]
    fn test_mime_filter_allows_the_defaults_and_picks_our_preference() {
        let s = Settings::default();
        assert_eq!(
            s.check("text/html", b"<b>"),
            Err(Refusal::Mime("text/html".into()))
        );
        assert_eq!(
            s.check("image/png", b"x"),
            Err(Refusal::Mime("image/png".into()))
        );
        let offered: Vec<String> = ["text/html", "text/plain", UTF8, "UTF8_STRING"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(s.pick_mime(&offered).as_deref(), Some(UTF8));
        assert_eq!(s.pick_mime(&["image/png".to_string()]), None);
        let opt_in = Settings {
            mimes: vec!["image/png".into(), "text/plain".into()],
            ..Settings::default()
        };
        assert!(opt_in.validate().is_ok());
        assert_eq!(opt_in.check("image/png", b"png"), Ok(3));
        let bad = Settings {
            mimes: vec!["application/x-evil".into()],
            ..Settings::default()
        };
        assert!(bad.validate().unwrap_err().contains("cannot be allowed"));
        assert!(
            Settings {
                max_size: 0,
                ..Settings::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn test_slot_is_wiped_after_the_timeout() {
        let now = Instant::now();
        let mut c = Clipboard::new(Settings {
            wipe_after: Duration::from_secs(60),
            ..Settings::default()
        });
        c.copy(vm("a"), UTF8, b"x".to_vec(), now).unwrap();
        assert_eq!(c.deadline(), Some(now + Duration::from_secs(60)));
        assert!(c.tick(now + Duration::from_secs(59)).is_none());
        assert!(c.slot().is_some());
        let w = c.tick(now + Duration::from_secs(60)).unwrap();
        assert_eq!(w.from, vm("a"));
        assert!(c.slot().is_none() && c.deadline().is_none());
        c.copy(vm("a"), UTF8, b"x".to_vec(), now).unwrap();
        assert_eq!(
            c.paste(&vm("b"), false, now + Duration::from_secs(61))
                .unwrap_err(),
            Refusal::Empty,
            "an expired slot is not pasted"
        );
        c.copy(vm("a"), UTF8, b"x".to_vec(), now).unwrap();
        assert!(c.wipe());
        assert!(!c.wipe());
    }
}
