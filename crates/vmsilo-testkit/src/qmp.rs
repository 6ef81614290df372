//! The harness's QMP session: `vmsilo-vmm`'s client with the test kit's timeout and error type,
//! plus [`Qmp::wait_balloon`].
//!
//! QEMU serves one QMP client per socket at a time; drop a [`Qmp`] before another program (a
//! balloon daemon under test, say) connects to the same socket.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmsilo_vmm::qmp::QmpSession;

use crate::{Error, Result};

pub use vmsilo_vmm::qmp::BALLOON_QOM_PATH;

/// How long one QMP request may take (QEMU under TCG on a loaded CI machine is slow).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A connected, capability-negotiated QMP session.
#[derive(Debug)]
pub struct Qmp(QmpSession);

impl Qmp {
    /// Connects, reads the greeting and sends `qmp_capabilities`.
    pub fn connect(path: &Path) -> Result<Self> {
        Ok(Self(QmpSession::connect(path, TIMEOUT)?))
    }

    /// Runs `command` with `arguments` (`Value::Null` for none) and returns its `return` value.
    /// Events that arrive meanwhile are kept for [`Qmp::take_events`].
    pub fn execute(&mut self, command: &'static str, arguments: Value) -> Result<Value> {
        let args = (!arguments.is_null()).then_some(arguments);
        Ok(self.0.execute(command, args)?)
    }

    /// Events received so far (e.g. `BALLOON_CHANGE`), oldest first; clears the list.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.0.take_events()
    }

    /// `query-balloon`: the guest's current RAM size in bytes (RAM minus balloon).
    pub fn query_balloon(&mut self) -> Result<u64> {
        Ok(self.0.query_balloon()?)
    }

    /// `balloon`: asks the guest to shrink or grow to `target_bytes` of RAM.
    pub fn balloon(&mut self, target_bytes: u64) -> Result<()> {
        Ok(self.0.balloon(target_bytes)?)
    }

    /// Polls `query-balloon` every 20 ms until it reports `target_bytes`; returns the last
    /// value seen on timeout as an error.
    pub fn wait_balloon(&mut self, target_bytes: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let actual = self.query_balloon()?;
            if actual == target_bytes {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::BalloonTimeout(format!(
                    "guest RAM is {actual} bytes, not the {target_bytes} asked for, after {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the balloon driver report guest memory statistics every `secs` seconds
    /// (0 turns it off).
    pub fn set_balloon_stats_interval(&mut self, secs: u64) -> Result<()> {
        Ok(self.0.set_balloon_stats_interval(secs)?)
    }

    /// The balloon's `guest-stats` (`{"stats": {"stat-free-memory": ..}, "last-update": ..}`).
    /// Stats the guest has not reported yet read as `u64::MAX`.
    pub fn balloon_stats(&mut self) -> Result<Value> {
        Ok(self.0.guest_stats_raw()?)
    }

    /// `quit`: QEMU exits at once (no guest shutdown).
    pub fn quit(&mut self) -> Result<()> {
        Ok(self.0.quit()?)
    }
}
