//! The host side of the balance: `MemTotal`/`MemAvailable` from `/proc/meminfo` and the PSI
//! memory pressure from `/proc/pressure/memory`. Parsing is pure; [`read_host_sample`] reads the
//! (injectable) files.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why the host sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The meminfo file could not be read.
    #[error("cannot read host memory information from {path}")]
    ReadMeminfo {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A required line was missing or malformed.
    #[error("{path}: no valid {field} line (expected \"{field}: <number> kB\")")]
    MissingField {
        /// The file.
        path: String,
        /// `MemTotal` or `MemAvailable`.
        field: &'static str,
    },
}

/// One reading of the host's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostSample {
    /// `MemTotal` in bytes.
    pub mem_total: u64,
    /// `MemAvailable` in bytes.
    pub mem_available: u64,
    /// PSI `full avg10` in percent, when the pressure file is readable.
    pub psi_full_avg10: Option<f64>,
    /// PSI `some avg10` in percent, when the pressure file is readable.
    pub psi_some_avg10: Option<f64>,
}

/// Finds `field:` in meminfo text and returns its value in bytes (meminfo values are kB).
pub fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => value.checked_mul(1024),
            Some(_) => None,
        }
    })
}

/// Parses `/proc/meminfo` text into `(MemTotal, MemAvailable)` bytes.
pub fn parse_meminfo(text: &str, path: &str) -> Result<(u64, u64), HostError> {
    let total = meminfo_field(text, "MemTotal").ok_or_else(|| HostError::MissingField {
        path: path.to_owned(),
        field: "MemTotal",
    })?;
    let available = meminfo_field(text, "MemAvailable").ok_or_else(|| HostError::MissingField {
        path: path.to_owned(),
        field: "MemAvailable",
    })?;
    Ok((total, available))
}

/// Parses the `avg10` value of the `some` or `full` line of a PSI file.
pub fn parse_psi_avg10(text: &str, kind: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != kind {
            return None;
        }
        words.find_map(|w| {
            let v: f64 = w.strip_prefix("avg10=")?.parse().ok()?;
            (v.is_finite() && (0.0..=100.0).contains(&v)).then_some(v)
        })
    })
}

/// Reads the host sample from `meminfo` and (optionally) `psi`. A missing or unreadable PSI file
/// is not an error: PSI is only an emergency signal.
pub fn read_host_sample(meminfo: &Path, psi: Option<&Path>) -> Result<HostSample, HostError> {
    let shown = meminfo.display().to_string();
    let text = std::fs::read_to_string(meminfo).map_err(|source| HostError::ReadMeminfo {
        path: shown.clone(),
        source,
    })?;
    let (mem_total, mem_available) = parse_meminfo(&text, &shown)?;
    let psi_text = psi.and_then(|p| std::fs::read_to_string(p).ok());
    Ok(HostSample {
        mem_total,
        mem_available,
        psi_full_avg10: psi_text.as_deref().and_then(|t| parse_psi_avg10(t, "full")),
        psi_some_avg10: psi_text.as_deref().and_then(|t| parse_psi_avg10(t, "some")),
    })
}

/// The host's critical level: `percent` % of `MemTotal`.
pub fn host_critical(mem_total: u64, percent: u32) -> u64 {
    u64::try_from(u128::from(mem_total) * u128::from(percent) / 100).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24554672 kB\nMemFree:         1234 kB\n\
                           MemAvailable:   20000000 kB\nBuffers:          10 kB\n";

    #[test]
    fn test_parse_meminfo_reads_total_and_available_in_bytes() {
        assert_eq!(
            parse_meminfo(MEMINFO, "x").unwrap(),
            (24_554_672 * 1024, 20_000_000 * 1024)
        );
    }

    #[test]
    fn test_parse_meminfo_missing_field_names_it() {
        let err = parse_meminfo("MemTotal: 100 kB\n", "/fake").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/fake: no valid MemAvailable line (expected \"MemAvailable: <number> kB\")"
        );
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n", "f").is_err());
        assert!(parse_meminfo("MemTotal: 1 MB\nMemAvailable: 1 kB\n", "f").is_err());
        assert!(
            parse_meminfo(
                "MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n",
                "f"
            )
            .is_err()
        );
        // `MemTotalX:` is not `MemTotal:`.
        assert!(parse_meminfo("MemTotalX: 1 kB\nMemAvailable: 1 kB\n", "f").is_err());
    }

    #[test]
    fn test_parse_psi() {
        let text = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\n\
                    full avg10=4.25 avg60=1.00 avg300=0.10 total=45\n";
        assert_eq!(parse_psi_avg10(text, "some"), Some(12.5));
        assert_eq!(parse_psi_avg10(text, "full"), Some(4.25));
        assert_eq!(parse_psi_avg10("full avg10=nan\n", "full"), None);
        assert_eq!(parse_psi_avg10("full avg10=300\n", "full"), None);
        assert_eq!(parse_psi_avg10("", "full"), None);
    }

    #[test]
    fn test_host_critical_percent() {
        assert_eq!(host_critical(32 << 30, 5), (32u64 << 30) * 5 / 100);
        assert_eq!(host_critical(u64::MAX, 100), u64::MAX);
    }
}
