//! crosvm's control socket: AF_UNIX SOCK_SEQPACKET, one JSON value per datagram (no length
//! prefix, no newline), serde's externally tagged enums. crosvm serves any number of requests
//! on one connection, so the client keeps its connection and only reconnects after an error
//! (a timed-out request's late reply must never be read as the next request's answer, so a
//! timeout always closes the connection).
//!
//! Requests: `{"BalloonCommand":"Stats"}` and
//! `{"BalloonCommand":{"Adjust":{"num_bytes":N,"wait_for_success":false}}}`.
//! Replies: `{"BalloonStats":{"stats":{..},"balloon_actual":N}}`, `"Ok"`, `{"Err":errno}` (107 =
//! ENOTCONN while the guest driver is not up), `{"ErrString":".."}`. crosvm never answers a
//! request it cannot parse, and a `Stats` request waits for the guest without a server-side
//! timeout, so every request here has a receive timeout.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, setsockopt, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use serde::Deserialize;
use serde_json::Value;

use super::{VmmClient, VmmError, excerpt};
use crate::stats::{BalloonSample, GuestStats};

/// Largest reply accepted (a stats reply is about 450 bytes).
pub const MAX_REPLY: usize = 8 * 1024;

/// The exact bytes of a stats request.
pub const STATS_REQUEST: &[u8] = br#"{"BalloonCommand":"Stats"}"#;

/// The exact bytes of a non-waiting `Adjust` request.
pub fn adjust_request(num_bytes: u64) -> Vec<u8> {
    format!(
        r#"{{"BalloonCommand":{{"Adjust":{{"num_bytes":{num_bytes},"wait_for_success":false}}}}}}"#
    )
    .into_bytes()
}

/// A decoded crosvm reply (only the variants a balloon client can get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `"Ok"`.
    Ok,
    /// `{"Err":errno}`.
    Err(i64),
    /// `{"ErrString":".."}`.
    ErrString(String),
    /// `{"BalloonStats":{..}}`.
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

/// Decodes one reply datagram.
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
                    .map(|s| Reply::ErrString(s.chars().take(200).collect()))
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
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let t = TimeVal::milliseconds(ms);
    setsockopt(&fd, sockopt::ReceiveTimeout, &t).map_err(connect_err)?;
    setsockopt(&fd, sockopt::SendTimeout, &t).map_err(connect_err)?;
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

/// A crosvm control-socket client.
#[derive(Debug)]
pub struct CrosvmClient {
    path: PathBuf,
    timeout: Duration,
    conn: Option<OwnedFd>,
}

impl CrosvmClient {
    /// A client for the control socket at `path`; `timeout` bounds connect, send and receive.
    pub fn new(path: &Path, timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            timeout,
            conn: None,
        }
    }

    fn io(&self, what: &'static str, e: Errno) -> VmmError {
        if e == Errno::EAGAIN || e == Errno::EWOULDBLOCK {
            VmmError::Timeout {
                path: self.path.clone(),
                what,
                timeout: self.timeout,
            }
        } else {
            VmmError::Io {
                path: self.path.clone(),
                what,
                source: e.into(),
            }
        }
    }

    fn connect(&self) -> Result<OwnedFd, VmmError> {
        connect_unix(&self.path, SockType::SeqPacket, self.timeout)
    }

    /// Sends one request and returns the decoded reply. Uses the kept connection when there is
    /// one (retrying once on a fresh connection if crosvm had closed it), and drops the
    /// connection after any error.
    pub fn request(&mut self, what: &'static str, msg: &[u8]) -> Result<Reply, VmmError> {
        if let Some(fd) = self.conn.take() {
            match self.exchange(&fd, what, msg) {
                Ok(r) => {
                    self.conn = Some(fd);
                    return Ok(r);
                }
                Err(VmmError::Closed { .. } | VmmError::Io { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let fd = self.connect()?;
        let r = self.exchange(&fd, what, msg)?;
        self.conn = Some(fd);
        Ok(r)
    }

    fn exchange(&self, fd: &OwnedFd, what: &'static str, msg: &[u8]) -> Result<Reply, VmmError> {
        let sent = nix::sys::socket::send(fd.as_raw_fd(), msg, MsgFlags::MSG_NOSIGNAL)
            .map_err(|e| self.io(what, e))?;
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
        let n = full.min(MAX_REPLY);
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
        parse_reply(&buf[..n]).map_err(|detail| VmmError::Malformed {
            path: self.path.clone(),
            what,
            detail: format!("{detail}: {}", excerpt(&buf[..n])),
        })
    }

    fn refused(&self, what: &'static str, reply: Reply) -> VmmError {
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
}

impl VmmClient for CrosvmClient {
    fn stats(&mut self) -> Result<BalloonSample, VmmError> {
        match self.request("the balloon stats request", STATS_REQUEST)? {
            Reply::BalloonStats {
                stats,
                balloon_actual,
            } => Ok(BalloonSample {
                stats,
                balloon_actual,
                ram_size: None,
                stats_age_ms: 0,
                stats_stamp: None,
            }),
            other => Err(self.refused("the balloon stats request", other)),
        }
    }

    fn set_balloon(&mut self, bytes: u64) -> Result<(), VmmError> {
        match self.request("the balloon adjust request", &adjust_request(bytes))? {
            Reply::Ok => Ok(()),
            other => Err(self.refused("the balloon adjust request", other)),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_bytes_match_crosvm() {
        assert_eq!(STATS_REQUEST, br#"{"BalloonCommand":"Stats"}"#);
        assert_eq!(
            adjust_request(1_073_741_824),
            br#"{"BalloonCommand":{"Adjust":{"num_bytes":1073741824,"wait_for_success":false}}}"#
        );
    }

    #[test]
    fn test_parse_replies() {
        assert_eq!(parse_reply(br#""Ok""#), Ok(Reply::Ok));
        assert_eq!(parse_reply(br#"{"Err":107}"#), Ok(Reply::Err(107)));
        assert_eq!(
            parse_reply(br#"{"ErrString":"Adjust overriden"}"#),
            Ok(Reply::ErrString("Adjust overriden".into()))
        );
        let stats = br#"{"BalloonStats":{"stats":{"swap_in":0,"swap_out":0,"major_faults":369,"minor_faults":504067,"free_memory":1961717760,"total_memory":2074480640,"available_memory":1902641152,"disk_caches":34332672,"hugetlb_allocations":0,"hugetlb_failures":0,"shared_memory":null,"unevictable_memory":null},"balloon_actual":0}}"#;
        match parse_reply(stats) {
            Ok(Reply::BalloonStats {
                stats,
                balloon_actual,
            }) => {
                assert_eq!(balloon_actual, 0);
                assert_eq!(stats.free_memory, Some(1_961_717_760));
                assert_eq!(stats.disk_caches, Some(34_332_672));
                assert_eq!(stats.shared_memory, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_parse_rejects_garbage() {
        for bad in [
            &b""[..],
            b"garbage",
            b"\"Nope\"",
            b"{\"Err\":\"x\"}",
            b"{\"BalloonStats\":{\"stats\":{},\"balloon_actual\":-1}}",
            b"{\"BalloonStats\":{\"stats\":{\"free_memory\":1.5},\"balloon_actual\":0}}",
            b"{\"A\":1,\"B\":2}",
            b"[1,2,3]",
            b"\xff\xfe",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
    }
}
