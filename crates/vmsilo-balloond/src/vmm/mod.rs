//! VMM clients behind one trait: crosvm's control socket and QEMU's QMP (the protocol
//! clients are `vmsilo-vmm`'s; this module adapts them to the balancer's [`BalloonSample`]).
//!
//! Every request has a timeout: a VMM that does not answer (a paused guest, a crosvm whose
//! balloon queue is wedged, a malformed request) costs at most that long, and the daemon runs
//! each VM's client on its own worker thread, so one stuck VM never delays the others.

use std::path::Path;
use std::time::Duration;

use crate::stats::BalloonSample;

pub mod crosvm;
pub mod qmp;

pub use crosvm::CrosvmClient;
pub use qmp::QmpClient;

/// Which VMM a socket belongs to (from its name in the runtime directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    /// `<vm>-control.socket`: crosvm's control socket (JSON over SOCK_SEQPACKET).
    Crosvm,
    /// `<vm>-qmp.socket`: QEMU's QMP (JSON lines over a stream socket).
    Qemu,
}

impl VmmKind {
    /// `crosvm` or `qemu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crosvm => "crosvm",
            Self::Qemu => "qemu",
        }
    }
}

impl From<vmsilo_config::Vmm> for VmmKind {
    fn from(vmm: vmsilo_config::Vmm) -> Self {
        match vmm {
            vmsilo_config::Vmm::Crosvm => Self::Crosvm,
            vmsilo_config::Vmm::Qemu => Self::Qemu,
        }
    }
}

impl From<VmmKind> for vmsilo_config::Vmm {
    fn from(kind: VmmKind) -> Self {
        match kind {
            VmmKind::Crosvm => Self::Crosvm,
            VmmKind::Qemu => Self::Qemu,
        }
    }
}

pub use vmsilo_vmm::VmmError;

/// A connection to one VM's VMM. Implementations apply their timeout to every request.
pub trait VmmClient: Send {
    /// Reads the guest's balloon statistics and the balloon size.
    fn stats(&mut self) -> Result<BalloonSample, VmmError>;
    /// Asks the VMM to make the balloon `bytes` big (the balloon size, i.e. memory taken from
    /// the guest, whatever the VMM's own convention is). Does not wait for the guest.
    fn set_balloon(&mut self, bytes: u64) -> Result<(), VmmError>;
    /// The socket this client talks to.
    fn path(&self) -> &Path;
}

/// Builds the client for `kind` at `path`.
pub fn client_for(
    kind: VmmKind,
    path: &Path,
    timeout: Duration,
    stats_polling_interval: Duration,
) -> Box<dyn VmmClient> {
    match kind {
        VmmKind::Crosvm => Box::new(CrosvmClient::new(path, timeout)),
        VmmKind::Qemu => Box::new(QmpClient::new(path, timeout, stats_polling_interval)),
    }
}
