//! The balancer's view of crosvm's control socket: `vmsilo-vmm`'s [`CrosvmControl`] (one kept
//! connection, a timeout on every request, typed replies) behind [`VmmClient`].
//!
//! crosvm reports the balloon size itself (`balloon_actual`) and collects the guest's
//! statistics on request, so a sample is always current; it does not report the RAM size.

use std::path::Path;
use std::time::Duration;

use vmsilo_vmm::crosvm::CrosvmControl;

use super::{VmmClient, VmmError};
use crate::stats::BalloonSample;

/// A crosvm control-socket client.
#[derive(Debug)]
pub struct CrosvmClient(CrosvmControl);

impl CrosvmClient {
    /// A client for the control socket at `path`; `timeout` bounds connect, send and receive.
    pub fn new(path: &Path, timeout: Duration) -> Self {
        Self(CrosvmControl::new(path, timeout))
    }
}

impl VmmClient for CrosvmClient {
    fn stats(&mut self) -> Result<BalloonSample, VmmError> {
        let (stats, balloon_actual) = self.0.balloon_stats()?;
        Ok(BalloonSample {
            stats,
            balloon_actual,
            ram_size: None,
            stats_age_ms: 0,
            stats_stamp: None,
        })
    }

    fn set_balloon(&mut self, bytes: u64) -> Result<(), VmmError> {
        self.0.balloon_adjust(bytes)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}
