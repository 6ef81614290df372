//! The host/guest memory model of the simulator (`docs/vmsilo-balloond.md`, "The simulator"), in MiB as `f64`.
//!
//! Host: `MemTotal` = kernel + host processes' anon (resident or swapped) + host file cache +
//! every guest's resident set + free. `MemAvailable` = free above the low watermark + file cache.
//!
//! Guest: `MemTotal` = RAM − a static kernel part; used = kernel + anon (processes) + shmem
//! (tmpfs; counted in `disk_caches` but not reclaimable) + clean file cache (reclaimable) +
//! balloon; the rest is free, split into pages the guest has touched (backed by host memory) and
//! pages it has not (never touched, or handed back by a deflation: the host backs them only once
//! the guest writes them). Host RSS of a guest = RAM − balloon − untouched.
//!
//! Balloon: deflation is instant. Inflation runs at 500 MiB/s while the guest has free memory
//! above its min watermark, at the guest's reclaim speed (200 MiB/s) while it drops clean cache,
//! and at most 5 MiB/s ("Out of puff!", 1 MiB per 200 ms) once only anon and shmem remain,
//! and then only from what the guest frees meanwhile (its allocations never take the watermark
//! reserve). The guest driver keeps trying to reach its target.
//!
//! Deflate-on-OOM: the driver's OOM notifier runs before the OOM killer picks a victim and hands
//! back 1 MiB per call, so while the balloon holds pages a failing allocation deflates it
//! instead of killing (one event per MiB); the kill happens only once the balloon is empty.

/// Inflation speed from free memory (MiB/s).
pub const INFLATE_FREE_RATE: f64 = 500.0;
/// Inflation speed while reclaiming clean cache (MiB/s).
pub const INFLATE_RECLAIM_RATE: f64 = 200.0;
/// Inflation speed in the "Out of puff" regime (MiB/s).
pub const INFLATE_PUFF_RATE: f64 = 5.0;
/// Deflate-on-OOM events per second at most (1 MiB each). The notifier runs before the OOM
/// killer picks a victim, on every failed allocation, so it keeps up with the allocation.
pub const DOO_RATE: f64 = 100_000.0;
/// Page-cache fill speed when a guest or the host reads files (MiB/s).
pub const CACHE_FILL_RATE: f64 = 100.0;

/// A process: its anon memory moves toward `target` at `rate` MiB/s.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Resident anon (MiB).
    pub size: f64,
    /// Wanted size (MiB).
    pub target: f64,
    /// Growth speed (MiB/s); shrinking is instant.
    pub rate: f64,
    /// False once killed.
    pub alive: bool,
    /// Creation order (for "kill the oldest").
    pub born: u64,
}

/// One guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// VM name.
    pub name: String,
    /// Bumped on restart.
    pub generation: u64,
    /// RAM (MiB).
    pub ram: f64,
    /// Static kernel part not in MemTotal (MiB).
    pub kernel_static: f64,
    /// Dynamic kernel memory (slab etc., MiB).
    pub kernel: f64,
    /// Min watermark (MiB).
    pub min_free: f64,
    /// Processes.
    pub procs: Vec<Proc>,
    /// tmpfs/shmem (MiB).
    pub shmem: f64,
    /// Clean page cache (MiB).
    pub cache: f64,
    /// Page cache the guest would like to hold (its working set of files).
    pub cache_want: f64,
    /// Balloon size (MiB).
    pub balloon: f64,
    /// Balloon target set by the VMM (MiB).
    pub target: f64,
    /// Free pages the host does not back (MiB).
    pub untouched: f64,
    /// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM` negotiated.
    pub deflate_on_oom: bool,
    /// Whether the VMM answers stats requests.
    pub responsive: bool,
    /// Guest OOM kills.
    pub oom_kills: u64,
    /// Deflate-on-OOM events (1 MiB each).
    pub doo_events: u64,
    /// Inflation is in the "Out of puff" regime now.
    pub stuck: bool,
    /// When the current stuck interval began (s).
    pub stuck_since: Option<f64>,
    /// Last time a deflate-on-OOM event happened (s).
    pub last_doo: Option<f64>,
    /// Low-memory killer level (MiB of free + cache), when this guest runs one.
    pub lmk_level: Option<f64>,
    next_born: u64,
}

impl Guest {
    /// A guest of `ram` MiB, booted and settled: `used` MiB of anon, `cache` MiB of cache, all
    /// pages touched when `warm`.
    pub fn new(name: &str, ram: f64, anon: f64, cache: f64, warm: bool) -> Self {
        let kernel_static = (ram * 0.03).round();
        let mut g = Self {
            name: name.to_owned(),
            generation: 1,
            ram,
            kernel_static,
            kernel: 40.0 + ram * 0.01,
            min_free: (ram * 0.005).max(8.0),
            procs: Vec::new(),
            shmem: 0.0,
            cache,
            cache_want: cache,
            balloon: 0.0,
            target: 0.0,
            untouched: 0.0,
            deflate_on_oom: true,
            responsive: true,
            oom_kills: 0,
            doo_events: 0,
            stuck: false,
            stuck_since: None,
            last_doo: None,
            lmk_level: None,
            next_born: 0,
        };
        if anon > 0.0 {
            g.spawn(anon, f64::INFINITY);
            if let Some(p) = g.procs.last_mut() {
                p.size = anon;
            }
        }
        if !warm {
            g.untouched = g.free();
        }
        g
    }

    /// `MemTotal` the guest reports.
    pub fn mem_total(&self) -> f64 {
        let t = self.ram - self.kernel_static;
        if self.deflate_on_oom {
            t
        } else {
            t - self.balloon
        }
    }

    /// Anon memory of live processes.
    pub fn anon(&self) -> f64 {
        self.procs.iter().filter(|p| p.alive).map(|p| p.size).sum()
    }

    /// Free memory (MiB).
    pub fn free(&self) -> f64 {
        self.ram
            - self.kernel_static
            - self.kernel
            - self.anon()
            - self.shmem
            - self.cache
            - self.balloon
    }

    /// Host memory backing this guest (MiB).
    pub fn rss(&self) -> f64 {
        (self.ram - self.balloon - self.untouched).max(0.0)
    }

    /// The guest's own MemAvailable: free above the low watermark + clean cache.
    pub fn available(&self) -> f64 {
        (self.free() - self.min_free * 1.25 + self.cache).max(0.0)
    }

    /// Starts a process that grows to `target` at `rate` MiB/s; returns its index.
    pub fn spawn(&mut self, target: f64, rate: f64) -> usize {
        self.procs.push(Proc {
            size: 0.0,
            target,
            rate,
            alive: true,
            born: self.next_born,
        });
        self.next_born += 1;
        self.procs.len() - 1
    }

    /// Takes `x` MiB of free memory for the guest's own use (touched pages first).
    fn take_free(&mut self, x: f64) {
        let touched = (self.free() - self.untouched).max(0.0);
        if x > touched {
            self.untouched = (self.untouched - (x - touched)).max(0.0);
        }
    }

    /// Allocates `x` MiB for the guest (reclaiming cache, then deflate-on-OOM); returns how
    /// much it got. The caller adds the memory to its owner *after* this returns.
    fn alloc(&mut self, x: f64, now: f64, dt: f64) -> f64 {
        let spare = |g: &Self| (g.free() - g.min_free).max(0.0);
        // Reclaim enough clean cache for the allocation and to restore the min watermark.
        let short = x - (self.free() - self.min_free);
        if short > 0.0 {
            let r = short.min(self.cache);
            self.cache -= r;
        }
        if spare(self) < x && self.deflate_on_oom && self.balloon > 0.0 {
            let rel = (x - spare(self)).min(self.balloon).min(DOO_RATE * dt);
            if rel > 0.0 {
                self.balloon -= rel;
                self.untouched += rel;
                self.doo_events += rel.ceil() as u64;
                self.last_doo = Some(now);
            }
        }
        let got = x.min(spare(self));
        self.take_free(got);
        got
    }

    fn oom_kill(&mut self) -> Option<usize> {
        let victim = self
            .procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.alive && p.size > 0.0)
            .max_by(|a, b| a.1.size.total_cmp(&b.1.size))
            .map(|(i, _)| i)?;
        let p = &mut self.procs[victim];
        p.alive = false;
        p.size = 0.0;
        p.target = 0.0;
        self.oom_kills += 1;
        Some(victim)
    }

    /// Kills the oldest live process (low-memory killer).
    pub fn kill_oldest(&mut self) -> bool {
        if let Some(p) = self
            .procs
            .iter_mut()
            .filter(|p| p.alive && p.size > 0.0)
            .min_by_key(|p| p.born)
        {
            p.alive = false;
            p.size = 0.0;
            p.target = 0.0;
            true
        } else {
            false
        }
    }

    /// Live processes.
    pub fn alive(&self) -> usize {
        self.procs.iter().filter(|p| p.alive).count()
    }

    /// Advances the guest by `dt` seconds at time `now`.
    pub fn step(&mut self, now: f64, dt: f64) {
        // Processes.
        for i in 0..self.procs.len() {
            let p = &self.procs[i];
            if !p.alive {
                continue;
            }
            if p.size > p.target {
                self.procs[i].size = p.target;
                continue;
            }
            let want = (p.target - p.size).min(p.rate * dt);
            if want <= 0.0 {
                continue;
            }
            let got = self.alloc(want, now, dt);
            self.procs[i].size += got;
            if got + 0.5 < want {
                self.oom_kill();
            }
        }
        // Shmem cannot be reclaimed; it only changes by scenario action.
        // Page cache toward what the guest reads.
        if self.cache > self.cache_want {
            self.cache = self.cache_want;
        } else {
            let room = (self.free() - self.min_free * 1.5).max(0.0);
            let grow = (self.cache_want - self.cache)
                .min(CACHE_FILL_RATE * dt)
                .min(room);
            if grow > 0.0 {
                self.take_free(grow);
                self.cache += grow;
            }
        }
        // Balloon.
        let before = self.balloon;
        let mut puff = false;
        if self.target + 1e-9 < self.balloon {
            let rel = self.balloon - self.target;
            self.balloon = self.target;
            self.untouched += rel;
        } else if self.target > self.balloon + 1e-9 {
            let mut want = self.target - self.balloon;
            // From free memory above the min watermark.
            let free_part = want
                .min((self.free() - self.min_free).max(0.0))
                .min(INFLATE_FREE_RATE * dt);
            if free_part > 0.0 {
                let free = self.free().max(1e-9);
                let share = (self.untouched / free).clamp(0.0, 1.0);
                self.untouched -= free_part * share;
                self.balloon += free_part;
                want -= free_part;
            }
            // Reclaiming clean cache.
            let reclaim = want.min(self.cache).min(INFLATE_RECLAIM_RATE * dt);
            if reclaim > 0.0 {
                self.cache -= reclaim;
                self.balloon += reclaim;
                want -= reclaim;
            }
            // Out of puff: the driver's allocations fail (they may not dip into the reserves)
            // and it retries every 200 ms; it gets only what the guest frees meanwhile.
            if want > 1e-6 {
                puff = true;
                let puff_part = want
                    .min(INFLATE_PUFF_RATE * dt)
                    .min((self.free() - self.min_free).max(0.0));
                if puff_part > 0.0 {
                    self.take_free(puff_part);
                    self.balloon += puff_part;
                }
            }
        }
        let rate = (self.balloon - before) / dt;
        let short = self.target - self.balloon > 1.0;
        self.stuck = puff && short && rate < 15.0;
        if self.stuck {
            self.stuck_since.get_or_insert(now);
        } else {
            self.stuck_since = None;
        }
        // The guest's low-memory killer, when it has one.
        if let Some(level) = self.lmk_level
            && self.free() + self.cache < level
        {
            self.kill_oldest();
        }
    }
}

/// A host process (its anon can be swapped out).
#[derive(Debug, Clone)]
pub struct HostProc {
    /// Total anon (MiB).
    pub size: f64,
    /// Swapped-out part (MiB).
    pub swapped: f64,
    /// Wanted size (MiB).
    pub target: f64,
    /// Growth rate (MiB/s).
    pub rate: f64,
    /// False once killed.
    pub alive: bool,
    /// Creation order.
    pub born: u64,
}

/// The host.
#[derive(Debug, Clone)]
pub struct Host {
    /// MemTotal (MiB).
    pub total: f64,
    /// Kernel and other unreclaimable use (MiB).
    pub kernel: f64,
    /// Min watermark (MiB).
    pub min_free: f64,
    /// Host processes.
    pub procs: Vec<HostProc>,
    /// Clean file cache (MiB).
    pub file: f64,
    /// File cache the host would like.
    pub file_want: f64,
    /// Swap size (MiB; 0 = none).
    pub swap_total: f64,
    /// Bytes swapped out so far (MiB, cumulative).
    pub swap_out_total: f64,
    /// Host OOM kills.
    pub oom_kills: u64,
    /// Tab-discarder level (MiB of MemAvailable), when the host runs one.
    pub tab_killer_level: Option<f64>,
    next_born: u64,
}

impl Host {
    /// A host of `total` MiB with `anon` MiB of processes and `file` MiB of cache.
    pub fn new(total: f64, anon: f64, file: f64) -> Self {
        let mut h = Self {
            total,
            kernel: 200.0 + total * 0.02,
            min_free: (total * 0.004).max(16.0),
            procs: Vec::new(),
            file,
            file_want: file,
            swap_total: 0.0,
            swap_out_total: 0.0,
            oom_kills: 0,
            tab_killer_level: None,
            next_born: 0,
        };
        if anon > 0.0 {
            h.spawn(anon, f64::INFINITY);
            if let Some(p) = h.procs.last_mut() {
                p.size = anon;
            }
        }
        h
    }

    /// Starts a host process.
    pub fn spawn(&mut self, target: f64, rate: f64) -> usize {
        self.procs.push(HostProc {
            size: 0.0,
            swapped: 0.0,
            target,
            rate,
            alive: true,
            born: self.next_born,
        });
        self.next_born += 1;
        self.procs.len() - 1
    }

    fn resident_anon(&self) -> f64 {
        self.procs
            .iter()
            .filter(|p| p.alive)
            .map(|p| p.size - p.swapped)
            .sum()
    }

    fn swapped(&self) -> f64 {
        self.procs
            .iter()
            .filter(|p| p.alive)
            .map(|p| p.swapped)
            .sum()
    }

    /// Free memory given the guests' resident sets.
    pub fn free(&self, guests_rss: f64) -> f64 {
        self.total - self.kernel - self.resident_anon() - self.file - guests_rss
    }

    /// `MemAvailable`.
    pub fn mem_available(&self, guests_rss: f64) -> f64 {
        (self.free(guests_rss) - self.min_free * 1.25 + self.file).max(0.0)
    }

    /// ChromeOS resourced's formula: free − reserve + file + ¼·min(anon, swap free).
    pub fn chromeos_available(&self, guests_rss: f64) -> f64 {
        let swap_free = (self.swap_total - self.swapped()).max(0.0);
        let anon = self.resident_anon();
        (self.free(guests_rss) - self.min_free * 1.5).max(0.0)
            + self.file
            + anon.min(swap_free) / 4.0
    }

    /// Live processes.
    pub fn alive(&self) -> usize {
        self.procs.iter().filter(|p| p.alive).count()
    }

    /// Makes room for a shortfall of `need` MiB: drop file cache, swap anon out, then OOM-kill.
    fn relieve(&mut self, mut need: f64) {
        let r = need.min(self.file);
        self.file -= r;
        need -= r;
        if need <= 0.0 {
            return;
        }
        let swap_room = (self.swap_total - self.swapped()).max(0.0);
        let mut s = need.min(swap_room);
        if s > 0.0 {
            self.swap_out_total += s;
            need -= s;
            for p in self.procs.iter_mut().filter(|p| p.alive) {
                let take = s.min(p.size - p.swapped);
                p.swapped += take;
                s -= take;
                if s <= 0.0 {
                    break;
                }
            }
        }
        while need > 0.5 {
            let Some(p) = self
                .procs
                .iter_mut()
                .filter(|p| p.alive && p.size > 0.0)
                .max_by(|a, b| a.size.total_cmp(&b.size))
            else {
                break;
            };
            need -= p.size - p.swapped;
            p.alive = false;
            p.size = 0.0;
            p.swapped = 0.0;
            p.target = 0.0;
            self.oom_kills += 1;
        }
    }

    /// Advances the host by `dt` seconds; `guests_rss` is the guests' resident set after their
    /// own step.
    pub fn step(&mut self, guests_rss: f64, dt: f64) {
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            if !p.alive {
                continue;
            }
            if p.size > p.target {
                let drop = p.size - p.target;
                p.size = p.target;
                p.swapped = (p.swapped - drop).max(0.0);
                continue;
            }
            let grow = (p.target - p.size).min(p.rate * dt);
            p.size += grow;
        }
        // File cache toward what the host reads.
        let room = (self.free(guests_rss) - self.min_free * 1.5).max(0.0);
        if self.file > self.file_want {
            self.file = self.file_want;
        } else {
            self.file += (self.file_want - self.file)
                .min(CACHE_FILL_RATE * dt)
                .min(room);
        }
        let short = self.min_free - self.free(guests_rss);
        if short > 0.0 {
            self.relieve(short);
        }
        if let Some(level) = self.tab_killer_level
            && self.mem_available(guests_rss) < level
            && let Some(p) = self
                .procs
                .iter_mut()
                .filter(|p| p.alive && p.size > 0.0 && p.born > 0)
                .min_by_key(|p| p.born)
        {
            p.alive = false;
            p.size = 0.0;
            p.swapped = 0.0;
            p.target = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_inflation_regimes() {
        let mut g = Guest::new("g", 4096.0, 1000.0, 1000.0, true);
        let free0 = g.free();
        g.target = free0 + 500.0;
        let mut t = 0.0;
        while t < 30.0 {
            g.step(t, 0.1);
            t += 0.1;
        }
        // Free (above the watermark) and the whole cache went into the balloon; the last
        // part is stuck in the Out-of-puff regime.
        assert!(g.balloon > free0 + 400.0, "{}", g.balloon);
        assert!(g.cache < 600.0);
        assert!(g.stuck || g.balloon >= g.target - 1.0);
        assert_eq!(g.oom_kills, 0);
    }

    #[test]
    fn test_deflation_returns_untouched_pages() {
        let mut g = Guest::new("g", 2048.0, 500.0, 0.0, true);
        g.target = 1000.0;
        for i in 0..50 {
            g.step(f64::from(i) * 0.1, 0.1);
        }
        let rss_inflated = g.rss();
        g.target = 0.0;
        g.step(5.0, 0.1);
        // Deflated pages are not backed by the host until the guest uses them.
        assert!((g.rss() - rss_inflated).abs() < 1.0);
        assert!(g.untouched >= 999.0);
    }

    #[test]
    fn test_deflate_on_oom_and_oom_kill() {
        let mut g = Guest::new("g", 2048.0, 200.0, 0.0, true);
        g.target = 1500.0;
        for i in 0..100 {
            g.step(f64::from(i) * 0.1, 0.1);
        }
        let p = g.spawn(1200.0, 1000.0);
        for i in 100..200 {
            g.step(f64::from(i) * 0.1, 0.1);
        }
        assert!(g.doo_events > 0);
        assert!(g.procs[p].alive, "deflate-on-OOM should have made room");
        assert_eq!(g.oom_kills, 0);
        // Without the feature the same squeeze kills.
        let mut g = Guest::new("g", 2048.0, 200.0, 0.0, true);
        g.deflate_on_oom = false;
        g.target = 1500.0;
        for i in 0..100 {
            g.step(f64::from(i) * 0.1, 0.1);
        }
        g.spawn(1200.0, 1000.0);
        for i in 100..200 {
            g.step(f64::from(i) * 0.1, 0.1);
        }
        assert!(g.oom_kills > 0);
    }

    #[test]
    fn test_host_swaps_then_kills() {
        let mut h = Host::new(8192.0, 1000.0, 1000.0);
        h.swap_total = 1024.0;
        h.spawn(9000.0, f64::INFINITY);
        h.step(0.0, 0.1);
        assert!(h.file < 1.0);
        assert!(h.swap_out_total > 0.0);
        assert!(h.oom_kills > 0);
    }
}
