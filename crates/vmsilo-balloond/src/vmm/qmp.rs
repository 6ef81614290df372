//! The balancer's view of QEMU's QMP: `vmsilo-vmm`'s [`QmpSession`] behind [`VmmClient`].
//!
//! Each operation opens its own session (greeting, `qmp_capabilities`, the commands, close),
//! because QEMU serves one QMP client at a time and the runtime needs the monitor too.
//!
//! Conventions that differ from crosvm:
//! - `balloon {"value": V}` takes the **guest RAM target** (RAM size − balloon size), and
//!   `query-balloon` returns the guest RAM size now, so the balloon is `RAM − actual`. RAM comes
//!   from `query-memory-size-summary` (`base-memory` + `plugged-memory`), read once.
//! - Guest statistics come from `qom-get` of `guest-stats` on the balloon device, refreshed by
//!   QEMU every `guest-stats-polling-interval` seconds (which we enable), so a sample carries
//!   its age.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmsilo_vmm::qmp::QmpSession;

use super::{VmmClient, VmmError};
use crate::stats::BalloonSample;

/// Age of QEMU's guest statistics polled at `last_update` (host wall-clock seconds) at `now`;
/// 0 when unknown or in the future.
pub fn stats_age_ms(last_update: Option<u64>, now: std::time::SystemTime) -> u64 {
    let Some(last) = last_update else {
        return 0;
    };
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now_ms.saturating_sub(last.saturating_mul(1000))
}

/// The QMP `balloon` argument for a balloon of `balloon` bytes in a guest of `ram` bytes (QEMU
/// rejects 0, so at least one page is left).
pub fn balloon_value(ram: u64, balloon: u64) -> u64 {
    ram.saturating_sub(balloon).max(4096)
}

/// A QMP client for one VM.
#[derive(Debug, Clone)]
pub struct QmpClient {
    path: PathBuf,
    timeout: Duration,
    polling_interval_s: u64,
    ram_size: Option<u64>,
}

impl QmpClient {
    /// A client for the QMP socket at `path`. `stats_polling_interval` is what QEMU's guest
    /// stats polling is set to (whole seconds, at least 1).
    pub fn new(path: &Path, timeout: Duration, stats_polling_interval: Duration) -> Self {
        Self {
            path: path.to_owned(),
            timeout,
            polling_interval_s: stats_polling_interval.as_secs().max(1),
            ram_size: None,
        }
    }

    /// A new session and the VM's RAM size (asked once, then remembered).
    fn session(&mut self) -> Result<(QmpSession, u64), VmmError> {
        let mut s = QmpSession::connect(&self.path, self.timeout)?;
        let ram = match self.ram_size {
            Some(r) => r,
            None => s.memory_size()?,
        };
        Ok((s, ram))
    }
}

impl VmmClient for QmpClient {
    fn stats(&mut self) -> Result<BalloonSample, VmmError> {
        let (mut s, ram) = self.session()?;
        // Set only when different: re-setting re-arms QEMU's timer and would starve it.
        if s.balloon_stats_interval()? != Some(self.polling_interval_s) {
            s.set_balloon_stats_interval(self.polling_interval_s)?;
        }
        let guest_size = s.query_balloon()?;
        let stats = s.guest_stats()?;
        self.ram_size = Some(ram);
        Ok(BalloonSample {
            stats: stats.stats,
            balloon_actual: ram.saturating_sub(guest_size),
            ram_size: Some(ram),
            stats_age_ms: stats_age_ms(stats.last_update, std::time::SystemTime::now()),
            stats_stamp: stats.last_update,
        })
    }

    fn set_balloon(&mut self, bytes: u64) -> Result<(), VmmError> {
        let (mut s, ram) = self.session()?;
        self.ram_size = Some(ram);
        s.balloon(balloon_value(ram, bytes))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stats_age_from_last_update() {
        let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        assert_eq!(stats_age_ms(Some(1000), at(1_000_700)), 700);
        assert_eq!(stats_age_ms(Some(1000), at(999_000)), 0);
        assert_eq!(stats_age_ms(None, at(5_000_000)), 0);
    }

    #[test]
    fn test_balloon_value_is_guest_size() {
        let ram = 512 << 20;
        assert_eq!(balloon_value(ram, 100 << 20), 412 << 20);
        assert_eq!(balloon_value(ram, 0), ram);
        assert_eq!(balloon_value(ram, ram), 4096);
        assert_eq!(balloon_value(ram, u64::MAX), 4096);
    }
}
