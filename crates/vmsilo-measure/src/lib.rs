//! Sizes and durations as users write them: `10G`, `300m`, `256k`, `2s`, `500ms`.
//!
//! A crate of its own (std and thiserror only) so that small programs (the guest agent,
//! vm-switch) parse their flags without the configuration model's dependencies.
//!
//! Sizes use binary multiples (`k` = 1024, `m` = 1024², `g` = 1024³, `t` = 1024⁴), like
//! `qemu-img` and the seed's `guestAvailableBias = "300m"`; the suffix is case-insensitive and may
//! be followed by `iB` or `B` (`300MiB`, `300MB` and `300m` are the same). A bare number is a
//! byte count. Durations need a unit: `us`, `ms`, `s`, `min` or `h`; a bare number is rejected
//! because `2` could mean seconds or milliseconds depending on who reads it. Durations longer
//! than 100 years are rejected, so that every component can add one to the current time (or
//! count it in nanoseconds) without overflowing.
//!
//! Disk image sizes (`rootOverlay.size`, handed to `qemu-img`) additionally accept what
//! `qemu-img` accepts: a fraction before the unit (`10.5G`), the units `p` and `e`, and a bare
//! hexadecimal byte count (`0x1000`); see [`parse_image_size`].

#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// Why a size or a duration did not parse. The message names the offending text and says what
/// would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The text was empty or only whitespace.
    #[error("empty value: expected {expected}")]
    Empty {
        /// What the caller wanted, e.g. "a size such as 300m".
        expected: &'static str,
    },
    /// The number part is missing or not a decimal number.
    #[error("{text:?} is not a number followed by a unit: expected {expected}")]
    BadNumber {
        /// The text as written.
        text: String,
        /// What the caller wanted.
        expected: &'static str,
    },
    /// The suffix is not a known unit.
    #[error("{text:?} has an unknown unit {unit:?}: expected {expected}")]
    BadUnit {
        /// The text as written.
        text: String,
        /// The unit part.
        unit: String,
        /// What the caller wanted.
        expected: &'static str,
    },
    /// The value does not fit.
    #[error("{text:?} is too large")]
    Overflow {
        /// The text as written.
        text: String,
    },
    /// The duration is longer than [`MAX_DURATION`].
    #[error("{text:?} is too long: expected a duration of at most 100 years (876000h)")]
    TooLong {
        /// The text as written.
        text: String,
    },
}

/// The longest duration [`parse_duration`] accepts: 100 years of 365 days. `Instant::now()`
/// plus this never overflows, and it fits a `u64` of nanoseconds.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const SIZE_EXPECTED: &str = "a size such as 4096, 256k, 300m, 10G or 1TiB";
const DURATION_EXPECTED: &str = "a duration such as 500ms, 2s, 5min or 1h";
const IMAGE_SIZE_EXPECTED: &str =
    "a size as qemu-img reads it, such as 4096, 300m, 10G, 10.5G or 1T (a fraction needs a unit)";

/// The largest disk image size [`parse_image_size`] accepts: `qemu-img` refuses anything above
/// `i64::MAX` bytes.
pub const MAX_IMAGE_SIZE: u64 = i64::MAX as u64;

/// A number of bytes, parsed from and displayed as a human-friendly size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for ByteSize {
    /// Serialized the way it is written in a configuration (`"300m"`), so that a serialized
    /// configuration reads back to the same value.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for ByteSize {
    /// Prints the largest binary unit that divides the size exactly (`300m`, `10g`, `1536`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "t"),
            (1 << 30, "g"),
            (1 << 20, "m"),
            (1 << 10, "k"),
        ];
        for (mult, suffix) in units {
            if self.0 != 0 && self.0.is_multiple_of(mult) {
                return write!(f, "{}{suffix}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Parses a size in bytes: `4096`, `256k`, `300m`, `10G`, `1TiB`, `2MB`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty {
            expected: SIZE_EXPECTED,
        });
    }
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(UnitError::BadNumber {
            text: text.to_owned(),
            expected: SIZE_EXPECTED,
        });
    }
    let value: u64 = num.parse().map_err(|_| UnitError::Overflow {
        text: text.to_owned(),
    })?;
    let unit_lc = unit.trim().to_ascii_lowercase();
    let shift = match unit_lc.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(UnitError::BadUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
                expected: SIZE_EXPECTED,
            });
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::Overflow {
            text: text.to_owned(),
        })
}

/// Parses a disk image size the way `qemu-img create` reads its size argument, so that a
/// configuration may say what `qemu-img` would accept: everything [`parse_size`] accepts, plus
/// a decimal fraction before a unit (`10.5G`, `1.7k`; rounded to the nearest byte, as
/// `qemu-img` does: `1.7k` is 1741 bytes), the units `p` (1024⁵) and `e` (1024⁶), and a bare hexadecimal byte count
/// (`0x1000`). A fraction without a unit (`1.5`, `1.5B`) is refused, as `qemu-img` refuses it.
/// At most [`MAX_IMAGE_SIZE`] bytes. Callers pass the result to `qemu-img` as a byte count.
pub fn parse_image_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty {
            expected: IMAGE_SIZE_EXPECTED,
        });
    }
    let bad_number = || UnitError::BadNumber {
        text: text.to_owned(),
        expected: IMAGE_SIZE_EXPECTED,
    };
    let overflow = || UnitError::Overflow {
        text: text.to_owned(),
    };
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad_number());
        }
        let v = u64::from_str_radix(hex, 16).map_err(|_| overflow())?;
        return if v <= MAX_IMAGE_SIZE {
            Ok(v)
        } else {
            Err(overflow())
        };
    }
    let (int, rest) = split_number(s);
    if int.is_empty() {
        return Err(bad_number());
    }
    let (frac, unit) = match rest.strip_prefix('.') {
        Some(r) => split_number(r),
        None => ("", rest),
    };
    let int: u64 = int.parse().map_err(|_| overflow())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => {
            return Err(UnitError::BadUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
                expected: IMAGE_SIZE_EXPECTED,
            });
        }
    };
    // Digits past the 19th change the result by less than one byte for every unit up to `e`
    // (2^60 < 10^19), so they are dropped before the integer arithmetic.
    let frac = &frac[..frac.len().min(19)];
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad_number())?
    };
    if shift == 0 && frac_value != 0 {
        return Err(UnitError::BadUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
            expected: IMAGE_SIZE_EXPECTED,
        });
    }
    let mul = 1u128 << shift;
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = u128::from(int)
        .checked_mul(mul)
        .and_then(|b| b.checked_add((frac_value * mul + scale / 2) / scale))
        .ok_or_else(overflow)?;
    match u64::try_from(bytes) {
        Ok(b) if b <= MAX_IMAGE_SIZE => Ok(b),
        _ => Err(overflow()),
    }
}

/// Parses a duration: `250us`, `500ms`, `2s`, `5min`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty {
            expected: DURATION_EXPECTED,
        });
    }
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(UnitError::BadNumber {
            text: text.to_owned(),
            expected: DURATION_EXPECTED,
        });
    }
    let value: u64 = num.parse().map_err(|_| UnitError::Overflow {
        text: text.to_owned(),
    })?;
    let overflow = || UnitError::Overflow {
        text: text.to_owned(),
    };
    let d = match unit.trim() {
        "us" | "µs" => Ok(Duration::from_micros(value)),
        "ms" => Ok(Duration::from_millis(value)),
        "s" | "sec" => Ok(Duration::from_secs(value)),
        "min" | "m" => value
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(overflow),
        "h" => value
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(overflow),
        "" => Err(UnitError::BadUnit {
            text: text.to_owned(),
            unit: String::new(),
            expected: DURATION_EXPECTED,
        }),
        other => Err(UnitError::BadUnit {
            text: text.to_owned(),
            unit: other.to_owned(),
            expected: DURATION_EXPECTED,
        }),
    }?;
    if d > MAX_DURATION {
        return Err(UnitError::TooLong {
            text: text.to_owned(),
        });
    }
    Ok(d)
}

/// Formats a duration the way [`parse_duration`] reads it back (`2s`, `500ms`, `250us`).
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_suffixes_are_binary_and_case_insensitive() {
        let cases = [
            ("4096", 4096),
            ("256k", 256 << 10),
            ("300m", 300 << 20),
            ("300M", 300 << 20),
            ("300MiB", 300 << 20),
            ("2m", 2 << 20),
            ("10G", 10 << 30),
            ("1TiB", 1 << 40),
            (" 1g ", 1 << 30),
            ("0", 0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn test_parse_size_rejects_garbage_with_the_text_in_the_message() {
        for text in [
            "",
            "m",
            "-1m",
            "1.5G",
            "10X",
            "99999999999999999999",
            "16777216t",
        ] {
            let err = parse_size(text).expect_err(text);
            if !text.is_empty() {
                assert!(err.to_string().contains(text.trim()), "{err}");
            }
        }
    }

    #[test]
    fn test_parse_image_size_accepts_fractions_and_qemu_img_units() {
        let cases = [
            ("10.5G", 10 * (1 << 30) + (1 << 29)),
            ("10.5g", 11_274_289_152),
            ("1.3k", 1331),
            ("1.7k", 1741),
            ("0.6k", 614),
            ("1.9999k", 2048),
            ("5.G", 5 << 30),
            ("1.k", 1024),
            ("10.5T", 11_544_872_091_648),
            ("1.123456789012345678901234G", 1_206_302_542),
            ("0.0001k", 0),
            ("1P", 1 << 50),
            ("1E", 1 << 60),
            ("0x1000", 4096),
            ("0X10", 16),
            ("010", 10),
            ("9223372036854775807", i64::MAX as u64),
            // Everything parse_size accepts still parses the same.
            ("10G", 10 << 30),
            ("300MiB", 300 << 20),
            ("2mb", 2 << 20),
            (" 1g ", 1 << 30),
            ("10 G", 10 << 30),
            ("1.5GiB", 3 << 29),
        ];
        for (text, want) in cases {
            assert_eq!(parse_image_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn test_parse_image_size_refuses_what_qemu_img_refuses() {
        for text in [
            "",
            "1.5",
            "1.5B",
            ".5G",
            "0x",
            "0x1.8k",
            "0x10k",
            "1e3k",
            "1.5k5",
            "-1G",
            "10X",
            "8E",
            "16E",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            let err = parse_image_size(text).expect_err(text);
            if !text.is_empty() {
                assert!(err.to_string().contains(text.trim()), "{err}");
            }
        }
    }

    #[test]
    fn test_parse_duration_units() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn test_parse_duration_requires_a_unit() {
        let err = parse_duration("2").expect_err("bare number");
        assert!(err.to_string().contains("unknown unit"), "{err}");
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn test_parse_duration_refuses_what_would_overflow_an_instant() {
        assert_eq!(parse_duration("876000h"), Ok(MAX_DURATION));
        // The longest accepted duration can be added to the clock and counted in nanoseconds.
        assert!(
            std::time::Instant::now()
                .checked_add(MAX_DURATION)
                .is_some()
        );
        assert!(u64::try_from(MAX_DURATION.as_nanos()).is_ok());
        for text in [
            "876001h",
            "5000000000000000h",
            "18446744073709551615s",
            "18446744073709551615ms",
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(matches!(err, UnitError::TooLong { .. }), "{text}: {err}");
            assert!(err.to_string().contains("at most 100 years"), "{err}");
        }
        // Past u64 is still the parse error it was.
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(UnitError::Overflow { .. })
        ));
    }

    #[test]
    fn test_size_and_duration_display_round_trip() {
        for text in ["300m", "10g", "256k", "1536", "1t"] {
            let size: ByteSize = text.parse().expect(text);
            assert_eq!(size.to_string(), text);
        }
        for text in ["2s", "500ms", "250us"] {
            let d = parse_duration(text).expect(text);
            assert_eq!(format_duration(d), text);
        }
    }
}
