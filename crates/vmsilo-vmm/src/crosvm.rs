//! crosvm's control socket (`crosvm run -s PATH`): AF_UNIX SOCK_SEQPACKET, one JSON value per
//! datagram (no length prefix, no newline, no file descriptors), serde's externally tagged
//! enums (`"Exit"`, `{"BalloonCommand":"Stats"}`, `{"Err":107}`).
//!
//! crosvm serves any number of requests on one connection, so a [`CrosvmControl`] keeps its
//! connection and reconnects only after an error: a timed-out request's late reply must never
//! be read as the next request's answer, so any error closes the connection.
//!
//! crosvm never answers a request it cannot parse, and a balloon `Stats` request waits for the
//! guest without a server-side timeout, so every request has a receive timeout here. Replies
//! longer than [`MAX_REPLY`] bytes are rejected whole (the datagram's real length is read with
//! `MSG_TRUNC`).
//!
//! The protocol is not stable across crosvm versions; these encodings match crosvm's
//! `vm_control` crate (`VmRequest`, `VmResponse`, `BalloonControlCommand`) at the versions
//! vmsilo is tested with.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, SockType};
use serde::Deserialize;
use serde_json::Value;

use crate::{GuestStats, VmmError, excerpt};

/// Largest reply accepted (a stats reply is about 450 bytes).
pub const MAX_REPLY: usize = 8 * 1024;
/// Longest `ErrString` message kept, in characters.
const MAX_MESSAGE: usize = 200;

/// A request to crosvm (the `VmRequest` variants vmsilo sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `"Exit"`: crosvm replies `"Ok"`, then tears the VM down without telling the guest.
    Exit,
    /// `"Powerbtn"`: an ACPI power-button press (a graceful guest shutdown).
    Powerbtn,
    /// `{"BalloonCommand":"Stats"}`: the guest's balloon statistics and the balloon size.
    BalloonStats,
    /// `{"BalloonCommand":{"Adjust":{"num_bytes":N,"wait_for_success":false}}}`: sets the
    /// balloon size without waiting for the guest.
    BalloonAdjust {
        /// The balloon size in bytes (memory taken from the guest).
        num_bytes: u64,
    },
}

impl Request {
    /// The exact datagram crosvm expects.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            Self::Exit => br#""Exit""#.to_vec(),
            Self::Powerbtn => br#""Powerbtn""#.to_vec(),
            Self::BalloonStats => br#"{"BalloonCommand":"Stats"}"#.to_vec(),
            Self::BalloonAdjust { num_bytes } => format!(
                r#"{{"BalloonCommand":{{"Adjust":{{"num_bytes":{num_bytes},"wait_for_success":false}}}}}}"#
            )
            .into_bytes(),
        }
    }

    /// The request's name in error messages.
    pub fn what(self) -> &'static str {
        match self {
            Self::Exit => "the exit request",
            Self::Powerbtn => "the power button request",
            Self::BalloonStats => "the balloon stats request",
            Self::BalloonAdjust { .. } => "the balloon adjust request",
        }
    }
}

/// A decoded crosvm reply (the `VmResponse` variants a vmsilo request can get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `"Ok"`.
    Ok,
    /// `{"Err":errno}`.
    Err(i64),
    /// `{"ErrString":".."}` (truncated, control characters removed).
    ErrString(String),
    /// `{"BalloonStats":{"stats":{..},"balloon_actual":N}}`.
    BalloonStats {
        /// The guest's statistics.
        stats: GuestStats,
        /// The balloon size in bytes.
        balloon_actual: u64,
    },
}

#[derive(Deserialize)]
struct StatsBody {
    stats: GuestStats,
    balloon_actual: u64,
}

/// Decodes one reply datagram; the error says what was wrong.
pub fn parse_reply(bytes: &[u8]) -> Result<Reply, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    match v {
        Value::String(s) if s == "Ok" => Ok(Reply::Ok),
        Value::Object(map) if map.len() == 1 => {
            let (k, v) = map.into_iter().next().ok_or("empty object")?;
            match k.as_str() {
                "Err" => v
                    .as_i64()
                    .map(Reply::Err)
                    .ok_or_else(|| "Err without an errno".to_owned()),
                "ErrString" => v
                    .as_str()
                    .map(|s| {
                        Reply::ErrString(
                            s.chars()
                                .filter(|c| !c.is_control())
                                .take(MAX_MESSAGE)
                                .collect(),
                        )
                    })
                    .ok_or_else(|| "ErrString without a string".to_owned()),
                "BalloonStats" => serde_json::from_value::<StatsBody>(v)
                    .map(|b| Reply::BalloonStats {
                        stats: b.stats,
                        balloon_actual: b.balloon_actual,
                    })
                    .map_err(|e| format!("bad BalloonStats ({e})")),
                other => Err(format!("unknown variant {:?}", excerpt(other.as_bytes()))),
            }
        }
        _ => Err("not a crosvm VmResponse".to_owned()),
    }
}

/// A crosvm control-socket client for one VM.
#[derive(Debug)]
pub struct CrosvmControl {
    path: PathBuf,
    timeout: Duration,
    conn: Option<OwnedFd>,
}

impl CrosvmControl {
    /// A client for the control socket at `path`; `timeout` bounds connect, send and receive.
    /// Connects on the first request.
    pub fn new(path: &Path, timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            timeout,
            conn: None,
        }
    }

    /// A client that starts on an already connected SOCK_SEQPACKET socket (a socket pair in
    /// tests, say); it reconnects to `path` after an error. Sets the socket's timeouts.
    pub fn with_connection(
        path: &Path,
        timeout: Duration,
        conn: OwnedFd,
    ) -> Result<Self, VmmError> {
        crate::socket::set_timeouts(&conn, timeout).map_err(|e| VmmError::Connect {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            timeout,
            conn: Some(conn),
        })
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, what: &'static str, e: Errno) -> VmmError {
        VmmError::from_io(&self.path, what, self.timeout, e.into())
    }

    /// Sends one request and returns the decoded reply, whatever it is. Uses the kept
    /// connection when there is one (retrying once on a fresh connection if crosvm had closed
    /// it), and drops the connection after any error.
    pub fn request(&mut self, req: Request) -> Result<Reply, VmmError> {
        let what = req.what();
        let msg = req.to_bytes();
        if let Some(fd) = self.conn.take() {
            match self.exchange(&fd, what, &msg) {
                Ok(r) => {
                    self.conn = Some(fd);
                    return Ok(r);
                }
                Err(VmmError::Closed { .. } | VmmError::Io { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let fd = crate::socket::connect_unix(&self.path, SockType::SeqPacket, self.timeout)?;
        let r = self.exchange(&fd, what, &msg)?;
        self.conn = Some(fd);
        Ok(r)
    }

    fn exchange(&self, fd: &OwnedFd, what: &'static str, msg: &[u8]) -> Result<Reply, VmmError> {
        let sent = loop {
            match nix::sys::socket::send(fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(self.io(what, e)),
            }
        };
        if sent != msg.len() {
            return Err(VmmError::Malformed {
                path: self.path.clone(),
                what,
                detail: format!("short send ({sent} of {} bytes)", msg.len()),
            });
        }
        let mut buf = [0u8; MAX_REPLY];
        // MSG_TRUNC makes recv return the datagram's real length even if it did not fit.
        let full = loop {
            match nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC) {
                Ok(v) => break v,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(self.io(what, e)),
            }
        };
        if full == 0 {
            return Err(VmmError::Closed {
                path: self.path.clone(),
                what,
            });
        }
        if full > MAX_REPLY {
            return Err(VmmError::Malformed {
                path: self.path.clone(),
                what,
                detail: format!("reply of {full} bytes exceeds {MAX_REPLY}"),
            });
        }
        parse_reply(&buf[..full]).map_err(|detail| VmmError::Malformed {
            path: self.path.clone(),
            what,
            detail: format!("{detail}: {}", excerpt(&buf[..full])),
        })
    }

    /// The error for a reply that is not the success `req` expects.
    fn refused(&self, req: Request, reply: Reply) -> VmmError {
        let what = req.what();
        match reply {
            Reply::Err(errno) => VmmError::Errno {
                path: self.path.clone(),
                what,
                errno,
            },
            Reply::ErrString(message) => VmmError::Refused {
                path: self.path.clone(),
                what,
                message,
            },
            other => VmmError::Malformed {
                path: self.path.clone(),
                what,
                detail: format!("unexpected {other:?}"),
            },
        }
    }

    /// Sends `req`, which crosvm answers with `"Ok"`.
    fn expect_ok(&mut self, req: Request) -> Result<(), VmmError> {
        match self.request(req)? {
            Reply::Ok => Ok(()),
            other => Err(self.refused(req, other)),
        }
    }

    /// `{"BalloonCommand":"Stats"}`: the guest's statistics and the balloon size in bytes.
    /// crosvm answers `{"Err":107}` ([`VmmError::is_driver_not_ready`]) until the guest's
    /// balloon driver is up.
    pub fn balloon_stats(&mut self) -> Result<(GuestStats, u64), VmmError> {
        let req = Request::BalloonStats;
        match self.request(req)? {
            Reply::BalloonStats {
                stats,
                balloon_actual,
            } => Ok((stats, balloon_actual)),
            other => Err(self.refused(req, other)),
        }
    }

    /// Sets the balloon to `num_bytes` (memory taken from the guest); does not wait for the
    /// guest.
    pub fn balloon_adjust(&mut self, num_bytes: u64) -> Result<(), VmmError> {
        self.expect_ok(Request::BalloonAdjust { num_bytes })
    }

    /// Presses the ACPI power button. crosvm answers `{"Err":95}` without a power-management
    /// device.
    pub fn power_button(&mut self) -> Result<(), VmmError> {
        self.expect_ok(Request::Powerbtn)
    }

    /// Stops the VMM without the guest (`"Exit"`); crosvm exits after its `"Ok"`.
    pub fn exit(&mut self) -> Result<(), VmmError> {
        self.expect_ok(Request::Exit)
    }
}

#[cfg(test)]
mod tests;
