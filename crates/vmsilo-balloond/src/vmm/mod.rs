//! VMM clients behind one trait: crosvm's control socket and QEMU's QMP.
//!
//! Every request has a timeout: a VMM that does not answer (a paused guest, a crosvm whose
//! balloon queue is wedged, a malformed request) costs at most that long, and the daemon runs
//! each VM's client on its own worker thread, so one stuck VM never delays the others.

use std::path::{Path, PathBuf};
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

/// Why a VMM request failed. Messages name the socket and say what to check.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `connect` failed (VMM not running, stale socket, permission).
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("I/O error on {path} during {what}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No reply within the timeout.
    #[error("no reply from {path} to {what} within {} ms", timeout.as_millis())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The peer closed the connection before replying.
    #[error("{path} closed the connection before replying to {what}")]
    Closed {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
    },
    /// crosvm answered `{"Err":errno}`.
    #[error("{path} refused {what}: errno {errno} ({})", errno_hint(*errno))]
    Errno {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
        /// The errno.
        errno: i64,
    },
    /// The VMM answered with an error message (crosvm `ErrString`, QMP `error`).
    #[error("{path} refused {what}: {message}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
        /// The VMM's message.
        message: String,
    },
    /// The reply was not what the protocol allows.
    #[error("unexpected reply from {path} to {what}: {detail}")]
    Malformed {
        /// The socket.
        path: PathBuf,
        /// The request.
        what: &'static str,
        /// What was wrong (truncated).
        detail: String,
    },
}

impl VmmError {
    /// Whether this is crosvm's "balloon driver not up yet" (ENOTCONN) answer.
    pub fn is_driver_not_ready(&self) -> bool {
        matches!(self, Self::Errno { errno: 107, .. })
    }
}

fn errno_hint(errno: i64) -> &'static str {
    match errno {
        107 => "ENOTCONN: the guest's balloon driver is not up yet",
        95 => "ENOTSUP: the VM has no balloon device, or it is driven through --balloon-control",
        22 => "EINVAL",
        5 => "EIO",
        _ => "see errno(3)",
    }
}

/// Truncates text from a peer for an error message.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    let mut s: String = text.chars().filter(|c| !c.is_control()).collect();
    if bytes.len() > 120 {
        s.push('…');
    }
    s
}

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
