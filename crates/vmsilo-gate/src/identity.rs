//! Who a VM is, as the host configuration says: its name and colour, and the title and app_id
//! prefixes derived from them. Sans-IO.
//!
//! Guest text is sanitised before it is prefixed: control, bidi and zero-width characters are
//! stripped (a guest must not be able to reorder or hide the prefix), and the result is capped.

use std::fmt;

/// Longest title or app_id (in bytes) the gate forwards; longer guest text is cut at a
/// character boundary.
pub const MAX_TEXT_BYTES: usize = 1024;

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb {
    /// Red.
    pub r: u8,
    /// Green.
    pub g: u8,
    /// Blue.
    pub b: u8,
}

/// A colour given to the gate that is not `#rrggbb`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "colour {0:?} is not #rrggbb (the configuration's named and rgb() forms are converted by \
     vmsilo before the gate starts)"
)]
pub struct BadColor(pub String);

impl Rgb {
    /// Parses `#rrggbb`.
    pub fn parse_hex(s: &str) -> Result<Self, BadColor> {
        let bad = || BadColor(s.to_string());
        let hex = s.strip_prefix('#').ok_or_else(bad)?;
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let v = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
        Ok(Self {
            r: (v >> 16) as u8,
            g: (v >> 8) as u8,
            b: v as u8,
        })
    }

    /// The pixel in `wl_shm` ARGB8888/XRGB8888 order (little-endian `0xAARRGGBB`), opaque.
    pub fn argb(self) -> u32 {
        0xff00_0000 | (u32::from(self.r) << 16) | (u32::from(self.g) << 8) | u32::from(self.b)
    }

    /// WCAG relative luminance, 0.0 (black) to 1.0 (white).
    pub fn luminance(self) -> f64 {
        fn lin(c: u8) -> f64 {
            let c = f64::from(c) / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        }
        0.2126 * lin(self.r) + 0.7152 * lin(self.g) + 0.0722 * lin(self.b)
    }

    /// Black or white, whichever contrasts more with `self` (WCAG contrast ratio).
    pub fn label_text(self) -> Rgb {
        let l = self.luminance();
        let on_black = (l + 0.05) / 0.05;
        let on_white = 1.05 / (l + 0.05);
        if on_black >= on_white {
            Rgb { r: 0, g: 0, b: 0 }
        } else {
            Rgb {
                r: 255,
                g: 255,
                b: 255,
            }
        }
    }
}

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:02x}{:02x}{:02x}", self.r, self.g, self.b)
    }
}

/// A VM's identity, from the host configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The VM's name (validated by vmsilo-config: ASCII letters, digits, `-`, `_`).
    pub vm: String,
    /// The frame colour.
    pub color: Rgb,
}

impl Identity {
    /// The title the compositor sees for a guest title: `[<vm>] ` + sanitised guest text.
    pub fn title(&self, guest: &str) -> String {
        format!("[{}] {}", self.vm, sanitize(guest))
    }

    /// The app_id the compositor sees: `vmsilo.<vm>.` + sanitised guest text. A guest that
    /// claims another VM's prefix is simply prefixed again.
    pub fn app_id(&self, guest: &str) -> String {
        format!("vmsilo.{}.{}", self.vm, sanitize(guest))
    }

    /// The label band text.
    pub fn label(&self) -> String {
        self.vm.clone()
    }
}

/// Whether a character is dropped from guest text: controls (C0, C1, DEL), bidi embeddings,
/// overrides, isolates and marks, zero-width characters, and other invisible format
/// characters.
pub fn is_stripped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'              // soft hyphen
            | '\u{034F}'            // combining grapheme joiner
            | '\u{061C}'            // Arabic letter mark
            | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' // Mongolian variation selectors, vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}' // separators, LRE, RLE, PDF, LRO, RLO
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, LRI..PDI, deprecated
            | '\u{FE00}'..='\u{FE0F}' // variation selectors
            | '\u{FEFF}'            // BOM / ZWNBSP
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
            | '\u{E0000}'..='\u{E007F}' // tags
            | '\u{E0100}'..='\u{E01EF}' // variation selectors supplement
        )
}

/// Guest text with [`is_stripped`] characters removed, capped at [`MAX_TEXT_BYTES`].
pub fn sanitize(guest: &str) -> String {
    let mut out = String::with_capacity(guest.len().min(MAX_TEXT_BYTES));
    for c in guest.chars().filter(|&c| !is_stripped(c)) {
        if out.len() + c.len_utf8() > MAX_TEXT_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banking() -> Identity {
        Identity {
            vm: "banking".into(),
            color: Rgb::parse_hex("#2ecc71").unwrap(),
        }
    }

    #[test]
    fn test_title_and_app_id_are_prefixed() {
        let id = banking();
        assert_eq!(id.title("Firefox"), "[banking] Firefox");
        assert_eq!(
            id.app_id("org.mozilla.firefox"),
            "vmsilo.banking.org.mozilla.firefox"
        );
    }

    #[test]
    fn test_spoofed_prefix_is_prefixed_again() {
        let id = banking();
        assert_eq!(id.title("[vault] x"), "[banking] [vault] x");
        assert_eq!(id.app_id("vmsilo.vault.x"), "vmsilo.banking.vmsilo.vault.x");
    }

    #[test]
    fn test_bidi_zero_width_and_controls_are_stripped() {
        let id = banking();
        // RLO would render the rest right-to-left; ZWSP and a newline hide or split the text.
        assert_eq!(
            id.title("a\u{202E}b\u{200B}c\nd\u{2066}e\u{7f}"),
            "[banking] abcde"
        );
        assert_eq!(id.app_id("x\u{FEFF}y\u{E0041}"), "vmsilo.banking.xy");
        assert_eq!(sanitize("plain ünïcödé 日本"), "plain ünïcödé 日本");
    }

    #[test]
    fn test_long_guest_text_is_capped_at_a_char_boundary() {
        let s = "é".repeat(MAX_TEXT_BYTES);
        let out = sanitize(&s);
        assert!(out.len() <= MAX_TEXT_BYTES);
        assert_eq!(out.len(), MAX_TEXT_BYTES);
        assert!(out.chars().all(|c| c == 'é'));
    }

    #[test]
    fn test_label_text_follows_luminance() {
        let black = Rgb { r: 0, g: 0, b: 0 };
        let white = Rgb {
            r: 255,
            g: 255,
            b: 255,
        };
        assert_eq!(Rgb::parse_hex("#2ecc71").unwrap().label_text(), black);
        assert_eq!(Rgb::parse_hex("#3498db").unwrap().label_text(), black);
        assert_eq!(Rgb::parse_hex("#1a237e").unwrap().label_text(), white);
        assert_eq!(Rgb::parse_hex("#ffff00").unwrap().label_text(), black);
        assert_eq!(Rgb::parse_hex("#000000").unwrap().label_text(), white);
    }

    #[test]
    fn test_colour_is_hex_only() {
        assert_eq!(
            Rgb::parse_hex("#2ECC71").unwrap(),
            Rgb {
                r: 0x2e,
                g: 0xcc,
                b: 0x71
            }
        );
        assert_eq!(Rgb::parse_hex("#2ecc71").unwrap().argb(), 0xff2e_cc71);
        for bad in [
            "2ecc71",
            "#2ecc7",
            "#2ecc711",
            "#gggggg",
            "red",
            "rgb(1,2,3)",
            "#+ecc71",
        ] {
            assert!(Rgb::parse_hex(bad).is_err(), "{bad}");
        }
    }
}
