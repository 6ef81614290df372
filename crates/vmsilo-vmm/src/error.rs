//! [`VmmError`]: why a request to a VMM failed, naming the socket and the request.

use std::path::PathBuf;
use std::time::Duration;

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
        /// The VMM's message (truncated, control characters removed).
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

    /// Maps an I/O error of `what` on `path`: a receive or send timeout becomes
    /// [`VmmError::Timeout`], anything else [`VmmError::Io`].
    pub(crate) fn from_io(
        path: &std::path::Path,
        what: &'static str,
        timeout: Duration,
        e: std::io::Error,
    ) -> Self {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            Self::Timeout {
                path: path.to_owned(),
                what,
                timeout,
            }
        } else {
            Self::Io {
                path: path.to_owned(),
                what,
                source: e,
            }
        }
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

/// Truncates text from a peer for an error message: at most 120 bytes, control characters
/// removed, `…` when cut.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    let mut s: String = text.chars().filter(|c| !c.is_control()).collect();
    if bytes.len() > 120 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_excerpt_cuts_and_strips_control_characters() {
        assert_eq!(excerpt(b"a\x1b[2Jb\nc"), "a[2Jbc");
        let long = vec![b'x'; 500];
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().count(), 121);
    }

    #[test]
    fn test_errno_107_is_driver_not_ready() {
        let e = VmmError::Errno {
            path: "/s".into(),
            what: "x",
            errno: 107,
        };
        assert!(e.is_driver_not_ready());
        assert!(e.to_string().contains("ENOTCONN"), "{e}");
    }
}
