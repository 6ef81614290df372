//! The status document served on the status socket, and its human rendering.
//!
//! Protocol: connect to the unix stream socket (default `/run/vmsilo/balloond.status`); the
//! daemon writes one JSON document (schema below, `version` 1) followed by a newline and closes
//! the connection. Nothing is read from the client. The schema is documented field by field in
//! `docs/vmsilo-balloond.md`; additions keep `version` 1, incompatible changes bump it.
//! [`StatusDoc`] is the one type of the document: the daemon writes it, `vmsilo-balloond
//! --status` and `vmsilo status` read it.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balancer::{Counters, Decision};
use crate::stats::GuestStats;

/// Version of the status document.
pub const STATUS_VERSION: u32 = 1;

/// The whole status document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// Schema version ([`STATUS_VERSION`]).
    pub version: u32,
    /// The daemon and its configuration.
    pub daemon: DaemonStatus,
    /// The last host sample.
    pub host: Option<HostStatus>,
    /// One entry per discovered VM, in name order.
    pub vms: Vec<VmStatus>,
}

/// The daemon and its configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Process id.
    pub pid: u32,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Poll interval (ms).
    pub poll_interval_ms: u64,
    /// Per-request timeout (ms).
    pub request_timeout_ms: u64,
    /// `sequential` or `shared`.
    pub multi_vm: String,
    /// `free-plus-caches` or `available`.
    pub guest_available: String,
    /// Host critical level, percent of MemTotal.
    pub critical_host_percent: u32,
    /// Guest bias (bytes).
    pub guest_available_bias: u64,
    /// Minimum memory left to a guest (bytes).
    pub min_guest_memory: u64,
    /// Whether stall detection is on.
    pub stall_detection: bool,
    /// Whether Adjust requests are being sent (false with `--dry-run`).
    pub dry_run: bool,
    /// The watched runtime directory.
    pub run_dir: String,
}

/// The last host sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Where it was read from.
    pub meminfo: String,
    /// `MemTotal` (bytes).
    pub mem_total: u64,
    /// `MemAvailable` (bytes).
    pub mem_available: u64,
    /// Critical level (bytes).
    pub critical: u64,
    /// `mem_available - critical` (bytes, may be negative).
    pub above_critical: i64,
    /// PSI `full avg10` (percent), when readable.
    pub psi_full_avg10: Option<f64>,
    /// PSI `some avg10` (percent), when readable.
    pub psi_some_avg10: Option<f64>,
    /// Milliseconds since the sample.
    pub age_ms: u64,
    /// The last error reading the host, if the last attempt failed.
    pub error: Option<String>,
}

/// Stall detection state of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StallStatus {
    /// An inflation is being watched.
    pub checking: bool,
    /// Stalls since the VM appeared.
    pub total: u32,
    /// Stalls since the last inflation that reached its target.
    pub consecutive: u32,
    /// Milliseconds of inflation block left (0: not blocked).
    pub inflate_blocked_ms: u64,
    /// Milliseconds since the last stall, if any.
    pub last_stall_ago_ms: Option<u64>,
}

/// One VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    /// VM name.
    pub name: String,
    /// `crosvm` or `qemu`.
    pub vmm: String,
    /// The control socket.
    pub socket: String,
    /// Bumped when the VM restarts (its socket is replaced).
    pub generation: u64,
    /// `starting` (no stats yet), `ok`, `driver-not-ready`, `unresponsive`, `error`.
    pub state: String,
    /// The last good statistics.
    pub stats: Option<GuestStats>,
    /// Milliseconds since those statistics.
    pub stats_age_ms: Option<u64>,
    /// Balloon size at the last good sample (bytes).
    pub balloon_actual: Option<u64>,
    /// Last balloon size requested (bytes).
    pub balloon_target: Option<u64>,
    /// VM RAM size when the VMM reports it (bytes).
    pub ram_size: Option<u64>,
    /// Learned guest critical level (bytes).
    pub guest_critical: u64,
    /// Fullness denominator: largest balloon seen or 3/4 of RAM (bytes; 0 before the first
    /// sample).
    pub max_balloon: u64,
    /// The last decision, with its reason and the policy's numbers.
    pub last_decision: Option<Decision>,
    /// Stall detection.
    pub stall: StallStatus,
    /// Counters.
    pub counters: Counters,
    /// The last error talking to the VMM, if the last request failed.
    pub last_error: Option<String>,
}

/// Reads the status document text from the daemon's status socket.
pub fn fetch(path: &Path, timeout: Duration) -> std::io::Result<String> {
    let s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    let mut text = String::new();
    s.take(16 << 20).read_to_string(&mut text)?;
    if text.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the daemon closed the connection without a status document: only root and the \
             user given by its --status-user (vmsilo's configured user) may read it",
        ));
    }
    Ok(text)
}

fn mib(v: u64) -> String {
    format!("{} MiB", v >> 20)
}

fn opt_mib(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), mib)
}

fn signed_mib(v: i64) -> String {
    let m = v / (1 << 20);
    if m > 0 {
        format!("+{m} MiB")
    } else {
        format!("{m} MiB")
    }
}

/// Renders the document as a table for humans.
pub fn render(doc: &StatusDoc) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let d = &doc.daemon;
    let _ = writeln!(
        out,
        "vmsilo-balloond (pid {}): {} ticks, poll {} ms, {} mode, guest available = {}, bias {}{}",
        d.pid,
        d.ticks,
        d.poll_interval_ms,
        d.multi_vm,
        d.guest_available,
        mib(d.guest_available_bias),
        if d.dry_run { ", DRY RUN" } else { "" }
    );
    match &doc.host {
        Some(h) => {
            let psi = h
                .psi_full_avg10
                .map_or_else(|| "n/a".to_owned(), |p| format!("{p:.1} %"));
            let _ = writeln!(
                out,
                "host: available {} of {}, critical {} ({} %), headroom {}, PSI full avg10 {psi}",
                mib(h.mem_available),
                mib(h.mem_total),
                mib(h.critical),
                d.critical_host_percent,
                signed_mib(h.above_critical)
            );
            if let Some(e) = &h.error {
                let _ = writeln!(out, "host: last read failed: {e}");
            }
        }
        None => {
            let _ = writeln!(out, "host: not sampled yet");
        }
    }
    if doc.vms.is_empty() {
        let _ = writeln!(out, "no VMs found in {}", d.run_dir);
        return out;
    }
    let rows: Vec<[String; 9]> = doc
        .vms
        .iter()
        .map(|v| {
            let avail = v.last_decision.as_ref().and_then(|d| d.policy).map_or_else(
                || "-".to_owned(),
                |p| mib(u64::try_from(p.guest_available).unwrap_or(0)),
            );
            let reason = v
                .last_decision
                .as_ref()
                .map_or("-", |d| d.reason.as_str())
                .to_owned();
            [
                v.name.clone(),
                v.vmm.clone(),
                v.state.clone(),
                avail,
                opt_mib(v.balloon_actual),
                opt_mib(v.balloon_target),
                mib(v.guest_critical),
                format!("{}", v.stall.total),
                reason,
            ]
        })
        .collect();
    let header = [
        "VM",
        "VMM",
        "STATE",
        "AVAILABLE",
        "BALLOON",
        "TARGET",
        "CRITICAL",
        "STALLS",
        "REASON",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ");
            }
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    for (r, v) in rows.iter().zip(&doc.vms) {
        let _ = writeln!(out, "{}", line(r));
        if let Some(dec) = &v.last_decision {
            let _ = writeln!(out, "    {}", dec.detail);
        }
        if v.stall.inflate_blocked_ms > 0 {
            let _ = writeln!(
                out,
                "    inflation blocked for {} s after {} stall(s) in a row",
                v.stall.inflate_blocked_ms.div_ceil(1000),
                v.stall.consecutive
            );
        }
        if let Some(e) = &v.last_error {
            let _ = writeln!(out, "    last error: {e}");
        }
    }
    out
}
