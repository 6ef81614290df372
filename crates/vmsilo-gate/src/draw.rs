//! The frame's pixels: the label band (VM colour, VM name in black or white) and the ring.
//! Sans-IO: images are `Vec<u32>` in `wl_shm` ARGB8888 order (`0xAARRGGBB`).
//!
//! The gate shows the frame as four strips (band on top, left, right, bottom ring), each its
//! own small buffer, so that a window's frame costs `width × (BAND + BORDER) + 2 × BORDER ×
//! height` pixels instead of a full-window overlay. [`overlay`] composes the same strips into
//! one full-size image (transparent in the middle); the tests and the screenshot comparison use
//! it as the reference.

use crate::identity::Rgb;
use crate::layout::{BAND, BORDER, Layout};

/// Label glyph scale (font8x8 glyphs drawn at 2×: 16×16 px per character).
pub const SCALE: i32 = 2;
/// Left edge of the label, in frame coordinates.
pub const LABEL_X: i32 = BORDER + 4;
/// Top edge of the label.
pub const LABEL_Y: i32 = (BAND - 8 * SCALE) / 2;

/// An ARGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: i32,
    /// Height in pixels.
    pub height: i32,
    /// Row-major pixels, `width × height` of them.
    pub pixels: Vec<u32>,
}

impl Image {
    fn filled(width: i32, height: i32, px: u32) -> Image {
        let (w, h) = (width.max(0), height.max(0));
        Image {
            width: w,
            height: h,
            pixels: vec![px; (w as usize) * (h as usize)],
        }
    }

    /// The pixel at (`x`, `y`), or `None` outside.
    pub fn get(&self, x: i32, y: i32) -> Option<u32> {
        if x < 0 || y < 0 || x >= self.width || y >= self.height {
            return None;
        }
        self.pixels
            .get(y as usize * self.width as usize + x as usize)
            .copied()
    }

    /// The pixels as little-endian bytes (what a `wl_shm` ARGB8888 buffer holds).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pixels.len() * 4);
        for p in &self.pixels {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out
    }
}

/// The 8×8 glyph for a label character (VM names are ASCII; anything else shows as `?`).
fn glyph(c: char) -> [u8; 8] {
    let i = if c.is_ascii() && !c.is_ascii_control() {
        c as usize
    } else {
        '?' as usize
    };
    font8x8::legacy::BASIC_LEGACY[i]
}

/// The label band: `width × BAND` in `color`, the label in `color.label_text()` from
/// ([`LABEL_X`], [`LABEL_Y`]), clipped before the right ring (`width − BORDER`).
pub fn band(width: i32, color: Rgb, label: &str) -> Image {
    let mut img = Image::filled(width, BAND, color.argb());
    let text = color.label_text().argb();
    let clip = img.width - BORDER;
    for (i, c) in label.chars().enumerate() {
        let Ok(i) = i32::try_from(i) else { break };
        let gx = LABEL_X.saturating_add(i.saturating_mul(8 * SCALE));
        if gx >= clip {
            break;
        }
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let x = gx + col * SCALE + dx;
                        let y = LABEL_Y + row as i32 * SCALE + dy;
                        if x < clip && y < img.height {
                            img.pixels[y as usize * img.width as usize + x as usize] = text;
                        }
                    }
                }
            }
        }
    }
    img
}

/// A solid strip (the left, right and bottom ring).
pub fn solid(width: i32, height: i32, color: Rgb) -> Image {
    Image::filled(width, height, color.argb())
}

/// The strips of a frame, with their positions in frame coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strips {
    /// The band, at (0, 0).
    pub band: Image,
    /// The left and right ring (same image), at (0, BAND) and (width − BORDER, BAND).
    pub side: Image,
    /// The bottom ring, at (0, height − BORDER).
    pub bottom: Image,
}

/// The frame's strips for `layout`.
pub fn strips(layout: &Layout, color: Rgb, label: &str) -> Strips {
    Strips {
        band: band(layout.width, color, label),
        side: solid(BORDER, layout.content_h, color),
        bottom: solid(layout.width, BORDER, color),
    }
}

/// Positions of the strips in frame coordinates: band, left, right, bottom.
pub fn strip_positions(layout: &Layout) -> [(i32, i32); 4] {
    [
        (0, 0),
        (0, BAND),
        (layout.width - BORDER, BAND),
        (0, layout.height - BORDER),
    ]
}

/// The whole frame as one image: the strips in place, the middle fully transparent.
pub fn overlay(layout: &Layout, color: Rgb, label: &str) -> Image {
    let mut img = Image::filled(layout.width, layout.height, 0);
    let s = strips(layout, color, label);
    let pos = strip_positions(layout);
    for (src, (x0, y0)) in [&s.band, &s.side, &s.side, &s.bottom].into_iter().zip(pos) {
        for y in 0..src.height {
            for x in 0..src.width {
                let (tx, ty) = (x0 + x, y0 + y);
                if tx < img.width && ty < img.height {
                    img.pixels[ty as usize * img.width as usize + tx as usize] =
                        src.pixels[y as usize * src.width as usize + x as usize];
                }
            }
        }
    }
    img
}

/// Width of the label part of the band for a frame `frame_width` wide: the label's natural
/// width, cut before the right ring.
pub fn label_width(frame_width: i32, label: &str) -> i32 {
    let n = i32::try_from(label.chars().count()).unwrap_or(i32::MAX);
    let natural = LABEL_X.saturating_add(n.saturating_mul(8 * SCALE));
    natural.min(frame_width.saturating_sub(BORDER)).max(0)
}

/// The label part of the band: the first [`label_width`] columns of [`band`] for a frame
/// `frame_width` wide (the rest of the band is plain colour). With it, a window's frame
/// costs the same memory at any size: the plain parts are one scaled pixel.
pub fn label_strip(frame_width: i32, color: Rgb, label: &str) -> Image {
    let lw = label_width(frame_width, label);
    let full = band(lw.saturating_add(BORDER), color, label);
    let mut img = Image::filled(lw, BAND, 0);
    for y in 0..img.height {
        for x in 0..img.width {
            img.pixels[(y * img.width + x) as usize] = full.pixels[(y * full.width + x) as usize];
        }
    }
    img
}

/// How many label pixels [`band`] draws for `label` in a band `width` wide.
pub fn label_pixels(width: i32, label: &str) -> usize {
    let clip = width - BORDER;
    let mut n = 0;
    for (i, c) in label.chars().enumerate() {
        let gx = LABEL_X.saturating_add((i as i32).saturating_mul(8 * SCALE));
        if gx >= clip {
            break;
        }
        for bits in glyph(c) {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let x = gx + col * SCALE;
                    n += (0..SCALE).filter(|dx| x + dx < clip).count() * SCALE as usize;
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{EXTRA_H, EXTRA_W, Extents};

    const GREEN: Rgb = Rgb {
        r: 0x2e,
        g: 0xcc,
        b: 0x71,
    };
    const NAVY: Rgb = Rgb {
        r: 0x1a,
        g: 0x23,
        b: 0x7e,
    };

    fn count(img: &Image, px: u32) -> usize {
        img.pixels.iter().filter(|&&p| p == px).count()
    }

    fn glyph_bits(s: &str) -> usize {
        s.chars()
            .map(|c| {
                glyph(c)
                    .iter()
                    .map(|b| b.count_ones() as usize)
                    .sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn test_overlay_ring_label_and_transparent_middle_count_exactly() {
        let l = Layout::for_extents(Extents::at(0, 0, 250, 250)).unwrap();
        let img = overlay(&l, GREEN, "banking");
        assert_eq!((img.width, img.height), (258, 278));
        let outer = 258 * 278;
        let inner = 250 * 250;
        let label = glyph_bits("banking") * (SCALE * SCALE) as usize;
        assert_eq!(label_pixels(l.width, "banking"), label);
        assert!(label > 0);
        assert_eq!(count(&img, GREEN.argb()), outer - inner - label);
        assert_eq!(count(&img, GREEN.label_text().argb()), label);
        assert_eq!(count(&img, 0), inner);
        // every inner pixel is transparent (alpha 0), every ring pixel opaque
        for y in 0..img.height {
            for x in 0..img.width {
                let p = img.get(x, y).unwrap();
                let inside = l.inner();
                let is_inner = x >= inside.x0 && x < inside.x1 && y >= inside.y0 && y < inside.y1;
                assert_eq!(p >> 24 == 0, is_inner, "({x},{y}) {p:#x}");
            }
        }
    }

    #[test]
    fn test_label_colour_follows_luminance() {
        let l = Layout::for_extents(Extents::at(0, 0, 300, 10)).unwrap();
        let img = overlay(&l, NAVY, "vault");
        assert_eq!(count(&img, 0xffff_ffff), glyph_bits("vault") * 4);
        let img = overlay(&l, GREEN, "vault");
        assert_eq!(count(&img, 0xff00_0000), glyph_bits("vault") * 4);
    }

    #[test]
    fn test_label_is_clipped_in_a_narrow_window() {
        // content 20 px wide: frame 28; label area x in [8, 24): one glyph only, whole.
        let l = Layout::for_extents(Extents::at(0, 0, 20, 20)).unwrap();
        let img = overlay(&l, GREEN, "banking");
        let label = label_pixels(l.width, "banking");
        assert_eq!(label, glyph_bits("b") * 4);
        assert_eq!(count(&img, 0xff00_0000), label);
        assert_eq!(count(&img, GREEN.argb()), (28 * 48) - 20 * 20 - label);
        // the right ring column stays in the VM colour on every row
        for y in 0..img.height {
            assert_eq!(img.get(img.width - 1, y), Some(GREEN.argb()));
            assert_eq!(img.get(0, y), Some(GREEN.argb()));
        }
        // 0-wide content: the frame is all ring, the label cut after the first glyph's start
        let l = Layout::for_extents(Extents::at(0, 0, 0, 0)).unwrap();
        let img = overlay(&l, GREEN, "banking");
        assert_eq!((img.width, img.height), (EXTRA_W, EXTRA_H));
        assert_eq!(count(&img, GREEN.argb()), (EXTRA_W * EXTRA_H) as usize);
    }

    #[test]
    fn test_label_strip_is_the_band_prefix_and_the_rest_is_plain() {
        for w in [0, 3, 9, 28, 60, 120, 127, 128, 500] {
            let b = band(w, GREEN, "banking");
            let l = label_strip(w, GREEN, "banking");
            assert_eq!(l.width, label_width(w, "banking"), "width {w}");
            assert!(l.width <= (w - BORDER).max(0));
            for y in 0..BAND {
                for x in 0..w {
                    let want = b.get(x, y).unwrap();
                    match l.get(x, y) {
                        Some(p) => assert_eq!(p, want, "({x},{y}) at width {w}"),
                        None => assert_eq!(want, GREEN.argb(), "({x},{y}) at width {w}"),
                    }
                }
            }
        }
        assert_eq!(label_width(1000, "banking"), LABEL_X + 7 * 16);
        assert_eq!(label_width(i32::MIN, "x"), 0);
        assert_eq!(label_width(i32::MAX, "x"), LABEL_X + 16);
    }

    #[test]
    fn test_non_ascii_label_draws_question_marks() {
        let a = band(400, GREEN, "é日");
        let b = band(400, GREEN, "??");
        assert_eq!(a, b);
    }

    #[test]
    fn test_strips_cover_exactly_the_ring() {
        let l = Layout::for_extents(Extents::at(0, 0, 100, 60)).unwrap();
        let s = strips(&l, GREEN, "x");
        let area = |i: &Image| (i.width * i.height) as usize;
        assert_eq!(
            area(&s.band) + 2 * area(&s.side) + area(&s.bottom),
            (l.width * l.height - 100 * 60) as usize
        );
        assert_eq!(s.band.to_le_bytes().len(), area(&s.band) * 4);
        assert_eq!(&s.side.to_le_bytes()[..4], &GREEN.argb().to_le_bytes());
    }
}
