//! Window decoration colours: a CSS/SVG colour name (`red`, `darkgreen`), `#rrggbb` (or `#rgb`),
//! or `rgb(r, g, b)`. The same set KWin (QColor) understands, so the value passed on is honoured.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A parsed colour. Keeps the text as written (it is what the desktop side receives) and the
/// RGB value (for `#rrggbb` output and contrast decisions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Color {
    /// The colour as the user wrote it.
    pub text: String,
    /// Red, green, blue.
    pub rgb: [u8; 3],
}

impl Color {
    /// `#rrggbb`.
    pub fn hex(&self) -> String {
        let [r, g, b] = self.rgb;
        format!("#{r:02x}{g:02x}{b:02x}")
    }
}

impl Default for Color {
    fn default() -> Self {
        Color {
            text: "red".into(),
            rgb: [255, 0, 0],
        }
    }
}

impl FromStr for Color {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let rgb = if let Some(hex) = t.strip_prefix('#') {
            parse_hex(hex).ok_or_else(|| {
                format!("{s:?} is not a hex colour: expected #rrggbb or #rgb, e.g. #2ecc71")
            })?
        } else if let Some(args) = t
            .strip_prefix("rgb(")
            .or_else(|| t.strip_prefix("RGB("))
            .and_then(|r| r.strip_suffix(')'))
        {
            parse_rgb_fn(args).ok_or_else(|| {
                format!("{s:?} is not an rgb() colour: expected rgb(r,g,b) with each value 0–255")
            })?
        } else {
            let lc = t.to_ascii_lowercase();
            let Some((_, rgb)) = NAMED.iter().find(|(n, _)| *n == lc) else {
                let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
                let hint = crate::diag::did_you_mean(&lc, &names)
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "{s:?} is not a colour{hint}: use a CSS colour name such as \"red\", #rrggbb or rgb(r,g,b)"
                ));
            };
            let [_, r, g, b] = rgb.to_be_bytes();
            [r, g, b]
        };
        Ok(Color {
            text: s.to_owned(),
            rgb,
        })
    }
}

fn parse_hex(hex: &str) -> Option<[u8; 3]> {
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        6 => {
            let v = u32::from_str_radix(hex, 16).ok()?;
            let [_, r, g, b] = v.to_be_bytes();
            Some([r, g, b])
        }
        3 => {
            let mut out = [0u8; 3];
            for (o, c) in out.iter_mut().zip(hex.chars()) {
                let d = u8::try_from(c.to_digit(16)?).ok()?;
                *o = d * 17;
            }
            Some(out)
        }
        _ => None,
    }
}

fn parse_rgb_fn(args: &str) -> Option<[u8; 3]> {
    let mut out = [0u8; 3];
    let mut parts = args.split(',');
    for o in &mut out {
        *o = parts.next()?.trim().parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Color {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// The CSS Color Module Level 4 named colours (the SVG 1.1 set), as 0xRRGGBB.
const NAMED: &[(&str, u32)] = &[
    ("aliceblue", 0xf0f8ff),
    ("antiquewhite", 0xfaebd7),
    ("aqua", 0x00ffff),
    ("aquamarine", 0x7fffd4),
    ("azure", 0xf0ffff),
    ("beige", 0xf5f5dc),
    ("bisque", 0xffe4c4),
    ("black", 0x000000),
    ("blanchedalmond", 0xffebcd),
    ("blue", 0x0000ff),
    ("blueviolet", 0x8a2be2),
    ("brown", 0xa52a2a),
    ("burlywood", 0xdeb887),
    ("cadetblue", 0x5f9ea0),
    ("chartreuse", 0x7fff00),
    ("chocolate", 0xd2691e),
    ("coral", 0xff7f50),
    ("cornflowerblue", 0x6495ed),
    ("cornsilk", 0xfff8dc),
    ("crimson", 0xdc143c),
    ("cyan", 0x00ffff),
    ("darkblue", 0x00008b),
    ("darkcyan", 0x008b8b),
    ("darkgoldenrod", 0xb8860b),
    ("darkgray", 0xa9a9a9),
    ("darkgreen", 0x006400),
    ("darkgrey", 0xa9a9a9),
    ("darkkhaki", 0xbdb76b),
    ("darkmagenta", 0x8b008b),
    ("darkolivegreen", 0x556b2f),
    ("darkorange", 0xff8c00),
    ("darkorchid", 0x9932cc),
    ("darkred", 0x8b0000),
    ("darksalmon", 0xe9967a),
    ("darkseagreen", 0x8fbc8f),
    ("darkslateblue", 0x483d8b),
    ("darkslategray", 0x2f4f4f),
    ("darkslategrey", 0x2f4f4f),
    ("darkturquoise", 0x00ced1),
    ("darkviolet", 0x9400d3),
    ("deeppink", 0xff1493),
    ("deepskyblue", 0x00bfff),
    ("dimgray", 0x696969),
    ("dimgrey", 0x696969),
    ("dodgerblue", 0x1e90ff),
    ("firebrick", 0xb22222),
    ("floralwhite", 0xfffaf0),
    ("forestgreen", 0x228b22),
    ("fuchsia", 0xff00ff),
    ("gainsboro", 0xdcdcdc),
    ("ghostwhite", 0xf8f8ff),
    ("gold", 0xffd700),
    ("goldenrod", 0xdaa520),
    ("gray", 0x808080),
    ("green", 0x008000),
    ("greenyellow", 0xadff2f),
    ("grey", 0x808080),
    ("honeydew", 0xf0fff0),
    ("hotpink", 0xff69b4),
    ("indianred", 0xcd5c5c),
    ("indigo", 0x4b0082),
    ("ivory", 0xfffff0),
    ("khaki", 0xf0e68c),
    ("lavender", 0xe6e6fa),
    ("lavenderblush", 0xfff0f5),
    ("lawngreen", 0x7cfc00),
    ("lemonchiffon", 0xfffacd),
    ("lightblue", 0xadd8e6),
    ("lightcoral", 0xf08080),
    ("lightcyan", 0xe0ffff),
    ("lightgoldenrodyellow", 0xfafad2),
    ("lightgray", 0xd3d3d3),
    ("lightgreen", 0x90ee90),
    ("lightgrey", 0xd3d3d3),
    ("lightpink", 0xffb6c1),
    ("lightsalmon", 0xffa07a),
    ("lightseagreen", 0x20b2aa),
    ("lightskyblue", 0x87cefa),
    ("lightslategray", 0x778899),
    ("lightslategrey", 0x778899),
    ("lightsteelblue", 0xb0c4de),
    ("lightyellow", 0xffffe0),
    ("lime", 0x00ff00),
    ("limegreen", 0x32cd32),
    ("linen", 0xfaf0e6),
    ("magenta", 0xff00ff),
    ("maroon", 0x800000),
    ("mediumaquamarine", 0x66cdaa),
    ("mediumblue", 0x0000cd),
    ("mediumorchid", 0xba55d3),
    ("mediumpurple", 0x9370db),
    ("mediumseagreen", 0x3cb371),
    ("mediumslateblue", 0x7b68ee),
    ("mediumspringgreen", 0x00fa9a),
    ("mediumturquoise", 0x48d1cc),
    ("mediumvioletred", 0xc71585),
    ("midnightblue", 0x191970),
    ("mintcream", 0xf5fffa),
    ("mistyrose", 0xffe4e1),
    ("moccasin", 0xffe4b5),
    ("navajowhite", 0xffdead),
    ("navy", 0x000080),
    ("oldlace", 0xfdf5e6),
    ("olive", 0x808000),
    ("olivedrab", 0x6b8e23),
    ("orange", 0xffa500),
    ("orangered", 0xff4500),
    ("orchid", 0xda70d6),
    ("palegoldenrod", 0xeee8aa),
    ("palegreen", 0x98fb98),
    ("paleturquoise", 0xafeeee),
    ("palevioletred", 0xdb7093),
    ("papayawhip", 0xffefd5),
    ("peachpuff", 0xffdab9),
    ("peru", 0xcd853f),
    ("pink", 0xffc0cb),
    ("plum", 0xdda0dd),
    ("powderblue", 0xb0e0e6),
    ("purple", 0x800080),
    ("rebeccapurple", 0x663399),
    ("red", 0xff0000),
    ("rosybrown", 0xbc8f8f),
    ("royalblue", 0x4169e1),
    ("saddlebrown", 0x8b4513),
    ("salmon", 0xfa8072),
    ("sandybrown", 0xf4a460),
    ("seagreen", 0x2e8b57),
    ("seashell", 0xfff5ee),
    ("sienna", 0xa0522d),
    ("silver", 0xc0c0c0),
    ("skyblue", 0x87ceeb),
    ("slateblue", 0x6a5acd),
    ("slategray", 0x708090),
    ("slategrey", 0x708090),
    ("snow", 0xfffafa),
    ("springgreen", 0x00ff7f),
    ("steelblue", 0x4682b4),
    ("tan", 0xd2b48c),
    ("teal", 0x008080),
    ("thistle", 0xd8bfd8),
    ("tomato", 0xff6347),
    ("turquoise", 0x40e0d0),
    ("violet", 0xee82ee),
    ("wheat", 0xf5deb3),
    ("white", 0xffffff),
    ("whitesmoke", 0xf5f5f5),
    ("yellow", 0xffff00),
    ("yellowgreen", 0x9acd32),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_color_forms() {
        let cases = [
            ("red", "#ff0000"),
            ("DarkGreen", "#006400"),
            ("#2ecc71", "#2ecc71"),
            ("#2ECC71", "#2ecc71"),
            ("#fa0", "#ffaa00"),
            ("rgb(255,0,0)", "#ff0000"),
            ("rgb( 52, 152, 219 )", "#3498db"),
        ];
        for (text, hex) in cases {
            let c: Color = text.parse().expect(text);
            assert_eq!(c.hex(), hex, "{text}");
            assert_eq!(c.to_string(), text);
        }
    }

    #[test]
    fn test_color_rejects_bad_values_with_a_hint() {
        let err = "gren".parse::<Color>().expect_err("typo");
        assert!(err.contains("did you mean \"green\""), "{err}");
        for s in [
            "#12345",
            "#gggggg",
            "rgb(256,0,0)",
            "rgb(1,2)",
            "rgb(1,2,3,4)",
            "",
            "blurple",
        ] {
            assert!(s.parse::<Color>().is_err(), "{s}");
        }
    }
}
