//! A small PNG reader for screenshots (`weston-screenshooter`, `grim`): 8-bit RGB or RGBA,
//! not interlaced, which is what those tools write. Enough to count pixels of a colour or
//! compare two screenshots in an e2e test; anything else is an error, never a panic.

use std::path::Path;

use crate::Error;

/// A decoded image: `rgba` holds `width * height` pixels, 4 bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGBA bytes.
    pub rgba: Vec<u8>,
}

impl Image {
    /// The pixel at (`x`, `y`) as `[r, g, b, a]`; `None` outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 4]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 4;
        self.rgba.get(i..i + 4).map(|p| [p[0], p[1], p[2], p[3]])
    }

    /// How many pixels have this RGB colour (alpha ignored).
    pub fn count_rgb(&self, rgb: [u8; 3]) -> usize {
        self.rgba.chunks_exact(4).filter(|p| p[..3] == rgb).count()
    }

    /// How many pixels differ (in RGB) from `other`'s; every pixel when the sizes differ.
    pub fn differing_pixels(&self, other: &Image) -> usize {
        if (self.width, self.height) != (other.width, other.height) {
            return self.width * self.height;
        }
        self.rgba
            .chunks_exact(4)
            .zip(other.rgba.chunks_exact(4))
            .filter(|(a, b)| a[..3] != b[..3])
            .count()
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::Image(format!("PNG: {}", what.into()))
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// Reads a PNG file.
pub fn read(path: &Path) -> Result<Image, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    decode(&bytes).map_err(|e| Error::Image(format!("{}: {e}", path.display())))
}

/// Decodes PNG bytes.
pub fn decode(bytes: &[u8]) -> Result<Image, Error> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let mut rest = bytes
        .strip_prefix(SIGNATURE)
        .ok_or_else(|| bad("not a PNG file"))?;
    let mut header = None;
    let mut idat = Vec::new();
    while rest.len() >= 12 {
        let len = be32(rest);
        let kind = &rest[4..8];
        let data = rest
            .get(8..8 + len)
            .ok_or_else(|| bad("a chunk runs past the end"))?;
        match kind {
            b"IHDR" if len == 13 => header = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        rest = rest.get(12 + len..).unwrap_or(&[]);
    }
    let h = header.ok_or_else(|| bad("no IHDR chunk"))?;
    let (width, height) = (be32(&h[0..4]), be32(&h[4..8]));
    let (depth, color, interlace) = (h[8], h[9], h[12]);
    let channels = match (depth, color, interlace) {
        (8, 2, 0) => 3,
        (8, 6, 0) => 4,
        _ => {
            return Err(bad(format!(
                "bit depth {depth}, colour type {color}, interlace {interlace}: only 8-bit \
                 RGB/RGBA without interlacing is supported"
            )));
        }
    };
    if width == 0 || height == 0 || width > 1 << 15 || height > 1 << 15 {
        return Err(bad(format!("unlikely size {width}x{height}")));
    }
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat)
        .map_err(|e| bad(format!("inflating the image data: {e:?}")))?;
    let stride = width * channels;
    if raw.len() < height * (stride + 1) {
        return Err(bad("the image data is too short"));
    }
    let mut out = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        let (done, current) = out.split_at_mut(y * stride);
        let prev = if y == 0 {
            None
        } else {
            Some(&done[(y - 1) * stride..])
        };
        let cur = &mut current[..stride];
        for x in 0..stride {
            let a = if x >= channels { cur[x - channels] } else { 0 };
            let b = prev.map_or(0, |p| p[x]);
            let c = match prev {
                Some(p) if x >= channels => p[x - channels],
                _ => 0,
            };
            let predictor = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => paeth(a, b, c),
                f => return Err(bad(format!("unknown filter type {f} on row {y}"))),
            };
            cur[x] = line[x].wrapping_add(predictor);
        }
    }
    let rgba = if channels == 4 {
        out
    } else {
        out.chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect()
    };
    Ok(Image {
        width,
        height,
        rgba,
    })
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG built by hand: 2x2 RGB, rows with filters None and Sub.
    fn tiny_png() -> Vec<u8> {
        let mut raw = vec![0u8, 255, 0, 0, 0, 255, 0];
        // Sub filter: second pixel = first + (0, 0, 255).
        raw.extend_from_slice(&[1, 1, 2, 3, 0, 0, 255]);
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&[0, 0, 0, 0]); // CRC: not checked
        };
        chunk(b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 2, 8, 2, 0, 0, 0]);
        chunk(b"IDAT", &z);
        chunk(b"IEND", &[]);
        png
    }

    #[test]
    fn test_decodes_rgb_with_filters() {
        let img = decode(&tiny_png()).expect("decodes");
        assert_eq!((img.width, img.height), (2, 2));
        assert_eq!(img.pixel(0, 0), Some([255, 0, 0, 255]));
        assert_eq!(img.pixel(1, 0), Some([0, 255, 0, 255]));
        assert_eq!(img.pixel(0, 1), Some([1, 2, 3, 255]));
        assert_eq!(img.pixel(1, 1), Some([1, 2, 258u16 as u8, 255]));
        assert_eq!(img.pixel(2, 0), None);
        assert_eq!(img.count_rgb([255, 0, 0]), 1);
    }

    #[test]
    fn test_garbage_is_an_error_not_a_panic() {
        let png = tiny_png();
        assert!(decode(b"not a png").is_err());
        for cut in [8, 20, 33, png.len() - 20] {
            assert!(decode(&png[..cut]).is_err(), "cut at {cut}");
        }
    }
}
