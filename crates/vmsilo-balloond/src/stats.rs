//! What a VMM tells us about one guest's memory: the virtio-balloon statistics and the balloon
//! size. Both crosvm and QEMU clients produce these types, so the policy never sees a VMM's wire
//! format.

use serde::{Deserialize, Serialize};

/// The virtio-balloon statistics of one guest (`vmsilo-vmm` decodes them from either VMM).
pub use vmsilo_vmm::GuestStats;

/// One successful stats read: the guest's statistics plus the balloon as the VMM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonSample {
    /// The guest's statistics.
    pub stats: GuestStats,
    /// Bytes currently held by the balloon (what the guest driver has reached, not the target).
    pub balloon_actual: u64,
    /// The VM's RAM size when the VMM tells it (QEMU does; crosvm's control socket does not).
    pub ram_size: Option<u64>,
    /// How old the statistics are (ms), for display. crosvm collects them on request (0); QEMU
    /// returns what it last polled from the guest (`last-update`, whole seconds). The balloon
    /// size is always current.
    #[serde(default)]
    pub stats_age_ms: u64,
    /// An identity of the statistics that changes whenever the guest reports new ones (QEMU's
    /// `last-update`); `None` when they are collected on request (crosvm).
    #[serde(default)]
    pub stats_stamp: Option<u64>,
}
