//! Connecting to a VMM's unix socket with timeouts.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::VmmError;

/// Sets the send and receive timeouts of `fd` to `timeout` (at least 1 ms: 0 would mean
/// "never").
pub(crate) fn set_timeouts(fd: &OwnedFd, timeout: Duration) -> nix::Result<()> {
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let t = TimeVal::milliseconds(ms);
    setsockopt(fd, sockopt::ReceiveTimeout, &t)?;
    setsockopt(fd, sockopt::SendTimeout, &t)
}

/// Connects a unix socket of type `ty` to `path` with send and receive timeouts set (the send
/// timeout also bounds a connect to a listener whose backlog is full).
pub(crate) fn connect_unix(
    path: &Path,
    ty: SockType,
    timeout: Duration,
) -> Result<OwnedFd, VmmError> {
    let connect_err = |e: Errno| VmmError::Connect {
        path: path.to_owned(),
        source: e.into(),
    };
    let fd = nix::sys::socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
        .map_err(connect_err)?;
    set_timeouts(&fd, timeout).map_err(connect_err)?;
    let addr = UnixAddr::new(path).map_err(connect_err)?;
    loop {
        match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                return Err(VmmError::Timeout {
                    path: path.to_owned(),
                    what: "connect",
                    timeout,
                });
            }
            Err(e) => return Err(connect_err(e)),
        }
    }
}
