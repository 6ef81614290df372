//! The gate's side of the two-level clipboard (vmsilo-clipd): the copy and paste chords in
//! the keyboard events the gate relays, and the VM clipboard content clipd pastes.
//!
//! Chords are recognised by keysym, not keycode: the compositor's keymap (the `wl_keyboard`
//! keymap fd, trusted: it comes from the compositor, never from the guest) is compiled with
//! libxkbcommon, so Ctrl+Shift+C is the key that types `c` at level 1 of the active layout on
//! any layout (AZERTY, Dvorak), with exactly the chord's modifiers active. A chord's press,
//! repeats and release never reach the guest. The gate never injects input: it only withholds
//! these key events and changes the VM's selection.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::rc::Rc;

use vmsilo_clipd::proto::Chord;
use xkbcommon::xkb;

/// Largest keymap the gate compiles (a full keymap is ~60 KiB).
pub const MAX_KEYMAP: usize = 4 << 20;
/// Largest content the gate holds for a paste (clipd's cap is smaller).
pub const MAX_PUT: usize = 64 << 20;

/// One chord: modifiers and a keysym.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChordSpec {
    /// Control.
    pub ctrl: bool,
    /// Shift.
    pub shift: bool,
    /// Alt (Mod1).
    pub alt: bool,
    /// Super (Mod4).
    pub logo: bool,
    /// The key's keysym at level 1 (lower case for letters).
    pub keysym: u32,
}

impl ChordSpec {
    /// Parses `ctrl+shift+c` (modifiers `ctrl`, `shift`, `alt`, `super`; the key by its
    /// XKB keysym name, case-insensitive for letters).
    pub fn parse(s: &str) -> Result<ChordSpec, String> {
        let mut c = ChordSpec {
            ctrl: false,
            shift: false,
            alt: false,
            logo: false,
            keysym: 0,
        };
        let parts: Vec<&str> = s.split('+').map(str::trim).collect();
        let Some((key, mods)) = parts.split_last() else {
            return Err(format!("chord {s:?}: empty"));
        };
        for m in mods {
            match m.to_ascii_lowercase().as_str() {
                "ctrl" | "control" => c.ctrl = true,
                "shift" => c.shift = true,
                "alt" => c.alt = true,
                "super" | "logo" => c.logo = true,
                other => {
                    return Err(format!(
                        "chord {s:?}: unknown modifier {other:?} (ctrl, shift, alt or super)"
                    ));
                }
            }
        }
        if !(c.ctrl || c.alt || c.logo) {
            return Err(format!(
                "chord {s:?}: needs ctrl, alt or super, or typing would trigger it"
            ));
        }
        let name = if key.chars().count() == 1 {
            key.to_lowercase()
        } else {
            key.to_string()
        };
        let mut sym = xkb::keysym_from_name(&name, xkb::KEYSYM_NO_FLAGS);
        if sym.raw() == 0 {
            sym = xkb::keysym_from_name(&name, xkb::KEYSYM_CASE_INSENSITIVE);
        }
        if sym.raw() == 0 {
            return Err(format!(
                "chord {s:?}: unknown key {key:?} (an XKB keysym name)"
            ));
        }
        c.keysym = sym.raw();
        Ok(c)
    }
}

/// The copy and paste chords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chords {
    /// Copy into the global slot (default Ctrl+Shift+C).
    pub copy: ChordSpec,
    /// Paste from the global slot (default Ctrl+Shift+V).
    pub paste: ChordSpec,
}

impl Chords {
    /// Parses both; they must differ.
    pub fn parse(copy: &str, paste: &str) -> Result<Chords, String> {
        let c = Chords {
            copy: ChordSpec::parse(copy)?,
            paste: ChordSpec::parse(paste)?,
        };
        if c.copy == c.paste {
            return Err("the copy and paste chords must differ".into());
        }
        Ok(c)
    }
}

/// What a client child does with a recognised chord (sends it to the parent).
#[derive(Clone)]
pub struct ClipHook {
    /// The chords.
    pub chords: Chords,
    /// Reports a chord.
    pub send: Rc<dyn Fn(Chord)>,
}

impl std::fmt::Debug for ClipHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipHook")
            .field("chords", &self.chords)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The hook of each connection in this process (one in a gate client process).
    static HOOKS: std::cell::RefCell<Vec<(std::rc::Weak<crate::conn::Conn>, ClipHook)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Turns chords on for the client of `conn`.
pub fn register(conn: &Rc<crate::conn::Conn>, hook: ClipHook) {
    HOOKS.with(|h| {
        let mut h = h.borrow_mut();
        h.retain(|(c, _)| c.strong_count() > 0);
        h.push((Rc::downgrade(conn), hook));
    });
}

/// The hook of `conn`'s client, if chords are on.
pub fn hook_for(conn: &std::rc::Weak<crate::conn::Conn>) -> Option<ClipHook> {
    HOOKS.with(|h| {
        h.borrow()
            .iter()
            .find(|(c, _)| c.ptr_eq(conn))
            .map(|(_, k)| k.clone())
    })
}

/// What to do with a key event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it to the guest.
    Forward,
    /// Withhold it; `Some` for the press of a chord.
    Withhold(Option<Chord>),
}

/// One keyboard's chord state (per `wl_keyboard` the gate relays).
#[derive(Default)]
pub struct KeyState {
    xkb: Option<(xkb::Keymap, xkb::State)>,
    /// Keys whose press was withheld (their repeats and release are too).
    withheld: Vec<u32>,
    /// Keymaps that could not be used.
    pub bad_keymaps: u64,
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyState")
            .field("keymap", &self.xkb.is_some())
            .field("withheld", &self.withheld)
            .finish()
    }
}

/// Reads a keymap fd (from offset 0, at most `size` ≤ [`MAX_KEYMAP`] bytes).
pub fn read_keymap(fd: &OwnedFd, size: u32) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let size = size as usize;
    if size == 0 || size > MAX_KEYMAP {
        return None;
    }
    let f = std::fs::File::from(fd.try_clone().ok()?);
    let mut buf = vec![0u8; size];
    let mut got = 0;
    while got < size {
        match f.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    while buf.last() == Some(&0) {
        buf.pop();
    }
    String::from_utf8(buf).ok()
}

impl KeyState {
    /// A new keymap (text of format XKB v1); `false` if it does not compile (chords are then
    /// off for this keyboard, all keys are relayed).
    pub fn set_keymap(&mut self, text: Option<String>) -> bool {
        self.xkb = None;
        let Some(text) = text else {
            self.bad_keymaps += 1;
            return false;
        };
        let ctx =
            xkb::Context::new(xkb::CONTEXT_NO_DEFAULT_INCLUDES | xkb::CONTEXT_NO_ENVIRONMENT_NAMES);
        match xkb::Keymap::new_from_string(
            &ctx,
            text,
            xkb::KEYMAP_FORMAT_TEXT_V1,
            xkb::KEYMAP_COMPILE_NO_FLAGS,
        ) {
            Some(km) => {
                let st = xkb::State::new(&km);
                self.xkb = Some((km, st));
                true
            }
            None => {
                self.bad_keymaps += 1;
                false
            }
        }
    }

    /// Whether a keymap is in use.
    pub fn has_keymap(&self) -> bool {
        self.xkb.is_some()
    }

    /// The compositor's modifier state.
    pub fn modifiers(&mut self, depressed: u32, latched: u32, locked: u32, group: u32) {
        if let Some((_, st)) = &mut self.xkb {
            st.update_mask(depressed, latched, locked, 0, 0, group);
        }
    }

    /// Focus left: what was withheld is forgotten (the guest never saw those presses).
    pub fn leave(&mut self) {
        self.withheld.clear();
    }

    fn matches(&self, c: &ChordSpec, key: u32) -> bool {
        let Some((km, st)) = &self.xkb else {
            return false;
        };
        let active = |name: &str| st.mod_name_is_active(name, xkb::STATE_MODS_EFFECTIVE);
        if active(xkb::MOD_NAME_CTRL) != c.ctrl
            || active(xkb::MOD_NAME_SHIFT) != c.shift
            || active(xkb::MOD_NAME_ALT) != c.alt
            || active(xkb::MOD_NAME_LOGO) != c.logo
        {
            return false;
        }
        let kc = xkb::Keycode::new(key.saturating_add(8));
        let layout = st.key_get_layout(kc);
        km.key_get_syms_by_level(kc, layout, 0)
            .iter()
            .any(|s| s.raw() == c.keysym)
    }

    /// A key event (`state`: 0 released, 1 pressed, 2 repeated).
    pub fn key(&mut self, chords: &Chords, key: u32, state: u32) -> Verdict {
        if state == 1 {
            let chord = if self.matches(&chords.copy, key) {
                Some(Chord::Copy)
            } else if self.matches(&chords.paste, key) {
                Some(Chord::Paste)
            } else {
                None
            };
            if let Some(chord) = chord {
                if !self.withheld.contains(&key) && self.withheld.len() < 16 {
                    self.withheld.push(key);
                }
                return Verdict::Withhold(Some(chord));
            }
            return Verdict::Forward;
        }
        if let Some(i) = self.withheld.iter().position(|&k| k == key) {
            if state == 0 {
                self.withheld.swap_remove(i);
            }
            return Verdict::Withhold(None);
        }
        Verdict::Forward
    }
}

/// The MIME types the gate offers for pasted content of type `mime` (the usual aliases of
/// UTF-8 text, which X11 and GTK clients ask for).
pub fn offered_mimes(mime: &str) -> Vec<String> {
    let v: &[&str] = match mime {
        "text/plain;charset=utf-8" => &[
            "text/plain;charset=utf-8",
            "text/plain",
            "UTF8_STRING",
            "TEXT",
            "STRING",
        ],
        "text/plain" => &["text/plain", "TEXT", "STRING"],
        other => return vec![other.to_string()],
    };
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The evdev keycode of the key in row B, column 3 (QWERTY `c`, AZERTY `c`, Dvorak `j`).
    const KEY_C: u32 = 46;
    const KEY_V: u32 = 47;
    const KEY_I: u32 = 23;
    const SHIFT: u32 = 1;
    const CTRL: u32 = 4;

    fn keymap(layout: &str) -> String {
        let ctx = xkb::Context::new(xkb::CONTEXT_NO_FLAGS);
        let km = xkb::Keymap::new_from_names(&ctx, "evdev", "pc105", layout, "", None, 0)
            .expect("the system's XKB data (xkb-data) compiles a keymap");
        km.get_as_string(xkb::KEYMAP_FORMAT_TEXT_V1)
    }

    #[test]
    fn test_chords_parse_and_refuse_bad_ones() {
        let c = Chords::parse("ctrl+shift+c", "Ctrl+Shift+V").unwrap();
        assert!(c.copy.ctrl && c.copy.shift && !c.copy.alt);
        assert_eq!(c.copy.keysym, xkb::keysym_from_name("c", 0).raw());
        assert_eq!(c.paste.keysym, xkb::keysym_from_name("v", 0).raw());
        assert!(
            ChordSpec::parse("shift+c").is_err(),
            "typing would trigger it"
        );
        assert!(ChordSpec::parse("hyper+c").is_err());
        assert!(ChordSpec::parse("ctrl+nosuchkey").is_err());
        assert!(Chords::parse("ctrl+shift+c", "ctrl+shift+c").is_err());
        assert!(ChordSpec::parse("alt+Insert").is_ok());
    }

    #[test]
    fn test_chord_press_repeat_release_are_withheld_other_keys_relayed() {
        let chords = Chords::parse("ctrl+shift+c", "ctrl+shift+v").unwrap();
        let mut k = KeyState::default();
        assert_eq!(
            k.key(&chords, KEY_C, 1),
            Verdict::Forward,
            "no keymap: relay"
        );
        assert!(k.set_keymap(Some(keymap("us"))));
        k.modifiers(CTRL, 0, 0, 0);
        assert_eq!(
            k.key(&chords, KEY_C, 1),
            Verdict::Forward,
            "ctrl+c is the guest's"
        );
        k.key(&chords, KEY_C, 0);
        k.modifiers(CTRL | SHIFT, 0, 0, 0);
        assert_eq!(
            k.key(&chords, KEY_C, 1),
            Verdict::Withhold(Some(Chord::Copy))
        );
        assert_eq!(k.key(&chords, KEY_C, 2), Verdict::Withhold(None));
        k.modifiers(0, 0, 0, 0);
        assert_eq!(
            k.key(&chords, KEY_C, 0),
            Verdict::Withhold(None),
            "the release after the modifiers went up is still withheld"
        );
        assert_eq!(k.key(&chords, KEY_C, 0), Verdict::Forward);
        k.modifiers(CTRL | SHIFT, 0, 0, 0);
        assert_eq!(
            k.key(&chords, KEY_V, 1),
            Verdict::Withhold(Some(Chord::Paste))
        );
        assert_eq!(k.key(&chords, KEY_I, 1), Verdict::Forward);
        // Caps Lock (locked Lock) does not change the level-1 keysym.
        k.modifiers(CTRL | SHIFT, 0, 2, 0);
        assert_eq!(
            k.key(&chords, KEY_C, 1),
            Verdict::Withhold(Some(Chord::Copy))
        );
        // An extra modifier (alt) is another chord.
        k.modifiers(CTRL | SHIFT | 8, 0, 0, 0);
        assert_eq!(k.key(&chords, KEY_V, 1), Verdict::Forward);
    }

    #[test]
    fn test_chords_follow_the_layout_not_the_key_position() {
        let chords = Chords::parse("ctrl+shift+c", "ctrl+shift+v").unwrap();
        let mut k = KeyState::default();
        assert!(k.set_keymap(Some(keymap("us(dvorak)"))));
        k.modifiers(CTRL | SHIFT, 0, 0, 0);
        // Dvorak: the QWERTY `c` position types `j`, and `c` is on QWERTY `i`.
        assert_eq!(k.key(&chords, KEY_C, 1), Verdict::Forward);
        assert_eq!(
            k.key(&chords, KEY_I, 1),
            Verdict::Withhold(Some(Chord::Copy))
        );
    }

    #[test]
    fn test_bad_keymaps_turn_chords_off_without_failing() {
        let chords = Chords::parse("ctrl+shift+c", "ctrl+shift+v").unwrap();
        let mut k = KeyState::default();
        assert!(!k.set_keymap(Some("xkb_keymap { garbage".into())));
        assert!(!k.set_keymap(None));
        assert_eq!(k.bad_keymaps, 2);
        k.modifiers(CTRL | SHIFT, 0, 0, 0);
        assert_eq!(k.key(&chords, KEY_C, 1), Verdict::Forward);
    }

    #[test]
    fn test_offered_mimes_include_the_usual_aliases() {
        assert!(offered_mimes("text/plain;charset=utf-8").contains(&"UTF8_STRING".to_string()));
        assert_eq!(offered_mimes("image/png"), vec!["image/png".to_string()]);
    }
}
