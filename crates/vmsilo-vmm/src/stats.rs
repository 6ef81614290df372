//! The guest's virtio-balloon statistics, as both VMMs report them.

use serde::{Deserialize, Serialize};

/// The virtio-balloon statistics a guest reports (crosvm's `BalloonStats`, QEMU's
/// `guest-stats`). `None` = not reported.
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
