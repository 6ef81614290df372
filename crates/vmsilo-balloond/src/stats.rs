//! What a VMM tells us about one guest's memory: the virtio-balloon statistics and the balloon
//! size. Both crosvm and QEMU clients produce these types, so the policy never sees a VMM's wire
//! format.

use serde::{Deserialize, Serialize};

/// The virtio-balloon statistics of one guest, in the order and with the names of crosvm's
/// `BalloonStats`. Every field is optional: a guest reports what it wants, and `None` means "not
/// reported" (crosvm sends `null`, QEMU sends `u64::MAX`).
///
/// Units follow the mainline Linux driver: `swap_*`, `*_memory` and `disk_caches` are bytes,
/// the fault and hugetlb counters are counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestStats {
    /// Bytes swapped in since boot.
    pub swap_in: Option<u64>,
    /// Bytes swapped out since boot.
    pub swap_out: Option<u64>,
    /// Major page faults since boot.
    pub major_faults: Option<u64>,
    /// Minor page faults since boot.
    pub minor_faults: Option<u64>,
    /// Guest `MemFree`.
    pub free_memory: Option<u64>,
    /// Guest `MemTotal`. With `DEFLATE_ON_OOM` (crosvm always; QEMU `deflate-on-oom=on`) it does
    /// not shrink while the balloon is inflated.
    pub total_memory: Option<u64>,
    /// Guest `MemAvailable`.
    pub available_memory: Option<u64>,
    /// Guest file pages (`NR_FILE_PAGES`): page cache **including shmem/tmpfs and swap cache**.
    pub disk_caches: Option<u64>,
    /// Successful hugetlb allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb allocations.
    pub hugetlb_failures: Option<u64>,
    /// Shared memory (non-standard tag, ChromeOS guests only).
    pub shared_memory: Option<u64>,
    /// Unevictable memory (non-standard tag, ChromeOS guests only).
    pub unevictable_memory: Option<u64>,
}

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
