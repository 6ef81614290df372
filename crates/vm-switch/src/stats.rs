//! Per-port counters and the stats JSON.
//!
//! Each child keeps its counters in a small memfd page that the main process created and also
//! maps, so `vm-switch --stats` (through the main process's `stats.sock`) reads them without
//! asking the children anything. A child can only write garbage into its own page.
//!
//! JSON schema (one object, `vm-switch --stats -d DIR` prints it):
//!
//! ```json
//! {
//!   "version": 1,
//!   "name": "<switch name>",
//!   "ports": [
//!     {
//!       "vm": "banking", "pid": 1234, "connected": true, "connects": 1,
//!       "from_guest_frames": 10, "from_guest_bytes": 980,
//!       "to_guest_frames": 12, "to_guest_bytes": 1100,
//!       "drops": { "malformed": 0, "oversize": 0, "spoof_mac": 0, "spoof_ip": 1, "no_route": 0,
//!                  "loop": 0, "unsupported": 0, "control": 3, "ring_full": 0, "port_down": 0,
//!                  "overflow": 0, "codel": 0, "no_buffer": 0, "bad_header": 0 },
//!       "codel_marks": 0, "max_sojourn_us": 812, "dql_limit_bytes": 6056,
//!       "backlog_bytes": 0, "proxy_replies": 2, "linked_peers": 2,
//!       "queue_errors": 0, "refused_frontends": 0, "tx_held": 0, "tx_direct": 0,
//!       "tx_rescue_irqs": 0, "tx_rescue_kicks": 0, "segments_waited": 0, "segments_split": 0
//!     }
//!   ]
//! }
//! ```
//!
//! `from_guest_*` counts every frame the guest sent (before validation); `to_guest_*` every
//! frame written into its RX ring; `drops` are attributed to the port that saw them (spoofs and
//! routing to the sender, ring-full and egress drops to the port whose egress dropped them,
//! except `ring_full`/`port_down`, counted at the sender). `queue_errors` counts guest virtqueues
//! stopped because the driver broke them, `refused_frontends` connections refused because
//! another frontend held the port.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::forward::DropReason;
use crate::sys::SharedMem;

/// Bytes of a stats page.
pub const STATS_BYTES: usize = 4096;

/// One counter in the stats page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Frames received from the guest.
    FromGuestFrames = 0,
    /// Bytes received from the guest.
    FromGuestBytes,
    /// Frames delivered to the guest.
    ToGuestFrames,
    /// Bytes delivered to the guest.
    ToGuestBytes,
    /// CE marks by CoDel.
    CodelMarks,
    /// Largest sojourn, ns.
    MaxSojournNs,
    /// Current DQL limit.
    DqlLimit,
    /// Bytes waiting in the egress scheduler.
    Backlog,
    /// 1 while a frontend is connected.
    Connected,
    /// Child pid.
    Pid,
    /// Number of frontend connections so far.
    Connects,
    /// Proxy ARP/NDP replies sent.
    ProxyReplies,
    /// Peers with rings in both directions.
    LinkedPeers,
    /// Guest queues stopped because the driver broke them (bad available index, descriptor
    /// head out of range, rings outside guest memory).
    QueueErrors,
    /// Frontend connections refused because another frontend held the port.
    RefusedFrontends,
    /// Guest TX chains held uncompleted because the destination's ring was full
    /// (back-pressure), counted once each.
    TxHeld,
    /// Guest TX frames copied from guest memory straight into a peer's ring (their checks
    /// passed on the copied headers), rather than copied out whole first.
    TxDirect,
    /// TX watchdog (`backend::Port::tx_watchdog`): interrupts sent after 10 ms of TX quiet.
    TxRescueIrqs,
    /// TX watchdog: chains found posted without a kick.
    TxRescueKicks,
    /// Offload segments for this guest that waited for room to go whole (`egress`).
    SegmentsWaited,
    /// Offload segments for this guest segmented in software at its egress.
    SegmentsSplit,
    /// First drop counter; drop reason `r` is at `DropBase + r.index()`.
    DropBase,
}

const NUM_COUNTERS: usize = Counter::DropBase as usize + DropReason::ALL.len();
const _: () = assert!(NUM_COUNTERS * 8 <= STATS_BYTES);

/// The counters of one port, in shared memory.
#[derive(Debug)]
pub struct PortStats {
    mem: SharedMem,
}

impl PortStats {
    /// Creates a fresh page (main process, or tests).
    pub fn create(name: &str) -> std::io::Result<Self> {
        Ok(PortStats {
            mem: SharedMem::create(name, STATS_BYTES)?,
        })
    }

    /// Maps a page received from the main process.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> std::io::Result<Self> {
        Ok(PortStats {
            mem: SharedMem::map(fd, STATS_BYTES)?,
        })
    }

    /// The memfd.
    pub fn fd(&self) -> &std::os::fd::OwnedFd {
        self.mem.fd()
    }

    fn slot(&self, i: usize) -> Option<&std::sync::atomic::AtomicU64> {
        self.mem.atomic_u64(i * 8)
    }

    /// Adds to a counter.
    pub fn add(&self, c: Counter, v: u64) {
        if let Some(a) = self.slot(c as usize) {
            a.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Sets a gauge.
    pub fn set(&self, c: Counter, v: u64) {
        if let Some(a) = self.slot(c as usize) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Raises a maximum.
    pub fn max(&self, c: Counter, v: u64) {
        if let Some(a) = self.slot(c as usize) {
            a.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// Counts a drop.
    pub fn count_drop(&self, r: DropReason, n: u64) {
        if let Some(a) = self.slot(Counter::DropBase as usize + r.index()) {
            a.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Reads a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.slot(c as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Reads a drop counter.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.slot(Counter::DropBase as usize + r.index())
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// A JSON-ready copy.
    pub fn snapshot(&self, vm: &str) -> PortSnapshot {
        PortSnapshot {
            vm: vm.to_owned(),
            pid: self.get(Counter::Pid),
            connected: self.get(Counter::Connected) != 0,
            connects: self.get(Counter::Connects),
            from_guest_frames: self.get(Counter::FromGuestFrames),
            from_guest_bytes: self.get(Counter::FromGuestBytes),
            to_guest_frames: self.get(Counter::ToGuestFrames),
            to_guest_bytes: self.get(Counter::ToGuestBytes),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.key().to_owned(), self.drops(*r)))
                .collect(),
            codel_marks: self.get(Counter::CodelMarks),
            max_sojourn_us: self.get(Counter::MaxSojournNs) / 1000,
            dql_limit_bytes: self.get(Counter::DqlLimit),
            backlog_bytes: self.get(Counter::Backlog),
            proxy_replies: self.get(Counter::ProxyReplies),
            linked_peers: self.get(Counter::LinkedPeers),
            queue_errors: self.get(Counter::QueueErrors),
            refused_frontends: self.get(Counter::RefusedFrontends),
            tx_held: self.get(Counter::TxHeld),
            tx_direct: self.get(Counter::TxDirect),
            tx_rescue_irqs: self.get(Counter::TxRescueIrqs),
            tx_rescue_kicks: self.get(Counter::TxRescueKicks),
            segments_waited: self.get(Counter::SegmentsWaited),
            segments_split: self.get(Counter::SegmentsSplit),
        }
    }
}

/// One port in the stats JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSnapshot {
    /// VM name.
    pub vm: String,
    /// Child pid.
    pub pid: u64,
    /// Whether a frontend is connected.
    pub connected: bool,
    /// Frontend connections so far.
    pub connects: u64,
    /// Frames from the guest.
    pub from_guest_frames: u64,
    /// Bytes from the guest.
    pub from_guest_bytes: u64,
    /// Frames to the guest.
    pub to_guest_frames: u64,
    /// Bytes to the guest.
    pub to_guest_bytes: u64,
    /// Drops by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// CoDel CE marks.
    pub codel_marks: u64,
    /// Largest sojourn through the switch, µs.
    pub max_sojourn_us: u64,
    /// Current DQL limit on the guest's RX ring, bytes.
    pub dql_limit_bytes: u64,
    /// Bytes queued at the egress.
    pub backlog_bytes: u64,
    /// Proxy ARP/NDP replies sent.
    pub proxy_replies: u64,
    /// Other ports this port has rings to and from.
    pub linked_peers: u64,
    /// Guest queues stopped for a driver error (each stays stopped until the guest resets the
    /// device or the frontend reconnects).
    #[serde(default)]
    pub queue_errors: u64,
    /// Frontend connections refused because another frontend held the port.
    #[serde(default)]
    pub refused_frontends: u64,
    /// Guest TX chains held back because a destination's ring was full (back-pressure).
    #[serde(default)]
    pub tx_held: u64,
    /// Guest TX frames copied straight from guest memory into a peer's ring.
    #[serde(default)]
    pub tx_direct: u64,
    /// TX watchdog: interrupts sent after 10 ms of TX quiet.
    #[serde(default)]
    pub tx_rescue_irqs: u64,
    /// TX watchdog: chains found posted without a kick.
    #[serde(default)]
    pub tx_rescue_kicks: u64,
    /// Offload segments for this guest that waited for room to go whole.
    #[serde(default)]
    pub segments_waited: u64,
    /// Offload segments for this guest segmented in software at its egress.
    #[serde(default)]
    pub segments_split: u64,
}

/// The whole stats document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchSnapshot {
    /// Schema version (1).
    pub version: u32,
    /// The switch instance name (`--name`).
    pub name: String,
    /// Ports by VM name.
    pub ports: Vec<PortSnapshot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_port_stats_shared_between_mappings() {
        let a = PortStats::create("s").unwrap();
        let b = PortStats::from_fd(a.fd().try_clone().unwrap()).unwrap();
        a.add(Counter::FromGuestFrames, 3);
        a.count_drop(DropReason::SpoofIp, 2);
        a.max(Counter::MaxSojournNs, 5000);
        a.max(Counter::MaxSojournNs, 10);
        let s = b.snapshot("vm1");
        assert_eq!(s.from_guest_frames, 3);
        assert_eq!(s.drops["spoof_ip"], 2);
        assert_eq!(s.max_sojourn_us, 5);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"spoof_ip\":2"));
    }
}
