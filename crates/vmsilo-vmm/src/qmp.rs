//! QEMU's QMP (QEMU Machine Protocol): JSON objects, one per line, over a unix stream socket.
//!
//! A [`QmpSession`] reads the greeting, negotiates capabilities (`qmp_capabilities`), then runs
//! commands one at a time, each with an `id` its reply must carry. Asynchronous events
//! (`BALLOON_CHANGE`, `POWERDOWN`, ...) may arrive between replies: they are kept (at most
//! [`MAX_EVENTS_KEPT`], oldest dropped) for [`QmpSession::take_events`].
//!
//! QEMU serves one QMP client per socket at a time, so callers that share a socket (the runtime,
//! the balloon daemon, a test) open a session per operation and drop it promptly.
//!
//! Bounds: a line longer than [`MAX_LINE`] bytes, more than [`MAX_SKIPPED`] events before a
//! reply, or a reply that is neither `return` nor `error` is [`VmmError::Malformed`]; every read
//! and write has the session's timeout.
//!
//! Conventions (QEMU's, not crosvm's):
//! - `balloon {"value": V}` takes the **guest RAM target** (RAM size − balloon size), and
//!   `query-balloon` returns the guest RAM size now. RAM comes from `query-memory-size-summary`
//!   (`base-memory` + `plugged-memory`).
//! - Guest statistics come from `qom-get` of `guest-stats` on the balloon device, refreshed by
//!   QEMU every `guest-stats-polling-interval` seconds. A stat of `u64::MAX` (or −1), or
//!   `last-update` 0, means "not reported".

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::SockType;
use serde_json::{Value, json};

use crate::{GuestStats, VmmError, excerpt};

/// QOM path of the balloon device (the runtime and the test kit name it `balloon0`).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";
/// Longest QMP line accepted.
pub const MAX_LINE: usize = 256 * 1024;
/// Most events skipped while waiting for one reply.
pub const MAX_SKIPPED: usize = 1000;
/// Most events kept for [`QmpSession::take_events`]; older ones are dropped.
pub const MAX_EVENTS_KEPT: usize = 256;
/// Longest error description kept from QEMU's `error` reply, in characters.
const MAX_DESC: usize = 200;

/// The balloon's `guest-stats`, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QemuGuestStats {
    /// The statistics (all `None` when the guest never reported).
    pub stats: GuestStats,
    /// When QEMU last polled the guest (host wall-clock seconds); `None` when never.
    pub last_update: Option<u64>,
}

/// Maps QEMU's `guest-stats` object. All-`None` stats when `last-update` is 0 (the guest never
/// reported, or polling is off); a stat of `u64::MAX` or a negative number is `None`.
pub fn parse_guest_stats(v: &Value) -> QemuGuestStats {
    let last_update = v
        .get("last-update")
        .and_then(Value::as_u64)
        .filter(|&l| l > 0);
    let Some(stats) = v.get("stats").filter(|_| last_update.is_some()) else {
        return QemuGuestStats::default();
    };
    let get = |key: &str| {
        stats
            .get(key)
            .and_then(Value::as_u64)
            .filter(|&n| n != u64::MAX)
    };
    QemuGuestStats {
        stats: GuestStats {
            swap_in: get("stat-swap-in"),
            swap_out: get("stat-swap-out"),
            major_faults: get("stat-major-faults"),
            minor_faults: get("stat-minor-faults"),
            free_memory: get("stat-free-memory"),
            total_memory: get("stat-total-memory"),
            available_memory: get("stat-available-memory"),
            disk_caches: get("stat-disk-caches"),
            hugetlb_allocations: get("stat-htlb-pgalloc"),
            hugetlb_failures: get("stat-htlb-pgfail"),
            shared_memory: None,
            unevictable_memory: None,
        },
        last_update,
    }
}

/// A connected, capability-negotiated QMP session.
#[derive(Debug)]
pub struct QmpSession {
    path: PathBuf,
    timeout: Duration,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    events: VecDeque<Value>,
}

impl QmpSession {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates capabilities.
    /// `timeout` bounds the connect and every later read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let fd = crate::socket::connect_unix(path, SockType::Stream, timeout)?;
        Self::handshake(UnixStream::from(fd), path, timeout)
    }

    /// Speaks QMP over an already connected `stream` (a socket pair in tests, say); `path`
    /// names the peer in errors. Sets the stream's timeouts, reads the greeting and negotiates
    /// capabilities.
    pub fn from_stream(
        stream: UnixStream,
        path: &Path,
        timeout: Duration,
    ) -> Result<Self, VmmError> {
        Self::handshake(stream, path, timeout)
    }

    fn handshake(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let t = Some(timeout.max(Duration::from_millis(1)));
        let io = |e| VmmError::from_io(path, "connect", timeout, e);
        stream.set_read_timeout(t).map_err(io)?;
        stream.set_write_timeout(t).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut s = Self {
            path: path.to_owned(),
            timeout,
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            events: VecDeque::new(),
        };
        let greeting = s.read_reply("the QMP greeting", None)?;
        if greeting.get("QMP").is_none() {
            return Err(s.malformed(
                "the QMP greeting",
                format!(
                    "no QMP greeting: {}",
                    excerpt(greeting.to_string().as_bytes())
                ),
            ));
        }
        s.execute("qmp_capabilities", None)?;
        Ok(s)
    }

    /// The socket this session talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn malformed(&self, what: &'static str, detail: String) -> VmmError {
        VmmError::Malformed {
            path: self.path.clone(),
            what,
            detail,
        }
    }

    fn io(&self, what: &'static str, e: std::io::Error) -> VmmError {
        VmmError::from_io(&self.path, what, self.timeout, e)
    }

    fn read_line(&mut self, what: &'static str) -> Result<Vec<u8>, VmmError> {
        let mut line = Vec::new();
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VmmError::from_io(&self.path, what, self.timeout, e)),
            };
            if buf.is_empty() {
                return Err(VmmError::Closed {
                    path: self.path.clone(),
                    what,
                });
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if line.len() + chunk.len() > MAX_LINE {
                return Err(self.malformed(what, format!("line longer than {MAX_LINE} bytes")));
            }
            line.extend_from_slice(chunk);
            let used = done.unwrap_or(buf.len());
            self.reader.consume(used);
            if done.is_some() {
                return Ok(line);
            }
        }
    }

    /// Reads lines until a non-event message; events are kept. With `id`, the message must
    /// carry it.
    fn read_reply(&mut self, what: &'static str, id: Option<u64>) -> Result<Value, VmmError> {
        for _ in 0..MAX_SKIPPED {
            let line = self.read_line(what)?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line)
                .map_err(|e| self.malformed(what, format!("not JSON ({e}): {}", excerpt(&line))))?;
            if v.get("event").is_some() {
                if self.events.len() == MAX_EVENTS_KEPT {
                    self.events.pop_front();
                }
                self.events.push_back(v);
                continue;
            }
            if let Some(want) = id
                && v.get("id").and_then(Value::as_u64) != Some(want)
            {
                // A reply to someone else's command cannot happen on our own connection;
                // treat it as a protocol error rather than guessing.
                return Err(
                    self.malformed(what, format!("reply with a foreign id: {}", excerpt(&line)))
                );
            }
            return Ok(v);
        }
        Err(self.malformed(
            what,
            format!("more than {MAX_SKIPPED} events before a reply"),
        ))
    }

    /// Runs `command` with `arguments` and returns its `return` value. QEMU's `error` reply is
    /// [`VmmError::Refused`] with its class and description.
    pub fn execute(
        &mut self,
        command: &'static str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let mut bytes = req.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|e| self.io(command, e))?;
        let mut reply = self.read_reply(command, Some(id))?;
        if let Some(ret) = reply.get_mut("return") {
            return Ok(ret.take());
        }
        if let Some(err) = reply.get("error") {
            let class = err.get("class").and_then(Value::as_str).unwrap_or("?");
            let desc = err.get("desc").and_then(Value::as_str).unwrap_or("?");
            return Err(VmmError::Refused {
                path: self.path.clone(),
                what: command,
                message: format!(
                    "{command}: {}: {}",
                    excerpt(class.as_bytes()),
                    desc.chars()
                        .filter(|c| !c.is_control())
                        .take(MAX_DESC)
                        .collect::<String>()
                ),
            });
        }
        Err(self.malformed(
            command,
            format!(
                "neither return nor error: {}",
                excerpt(reply.to_string().as_bytes())
            ),
        ))
    }

    /// Events received so far (e.g. `BALLOON_CHANGE`), oldest first; clears the list.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// `query-balloon`: the guest's current RAM size in bytes (RAM minus balloon).
    pub fn query_balloon(&mut self) -> Result<u64, VmmError> {
        let v = self.execute("query-balloon", None)?;
        v.get("actual")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.malformed("query-balloon", "no \"actual\"".into()))
    }

    /// `balloon`: asks the guest to shrink or grow to `guest_ram` bytes of RAM. Does not wait.
    pub fn balloon(&mut self, guest_ram: u64) -> Result<(), VmmError> {
        self.execute("balloon", Some(json!({ "value": guest_ram })))?;
        Ok(())
    }

    /// `query-memory-size-summary`: the VM's RAM size, `base-memory` + `plugged-memory`.
    pub fn memory_size(&mut self) -> Result<u64, VmmError> {
        let v = self.execute("query-memory-size-summary", None)?;
        let base = v
            .get("base-memory")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                self.malformed("query-memory-size-summary", "no \"base-memory\"".into())
            })?;
        let plugged = v.get("plugged-memory").and_then(Value::as_u64).unwrap_or(0);
        Ok(base.saturating_add(plugged))
    }

    /// `qom-get` of `property` on `path`.
    pub fn qom_get(&mut self, path: &str, property: &str) -> Result<Value, VmmError> {
        self.execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
    }

    /// `qom-set` of `property` on `path` to `value`.
    pub fn qom_set(&mut self, path: &str, property: &str, value: Value) -> Result<(), VmmError> {
        self.execute(
            "qom-set",
            Some(json!({ "path": path, "property": property, "value": value })),
        )?;
        Ok(())
    }

    /// The balloon's `guest-stats-polling-interval` in seconds (`None` if not a number).
    pub fn balloon_stats_interval(&mut self) -> Result<Option<u64>, VmmError> {
        Ok(self
            .qom_get(BALLOON_QOM_PATH, "guest-stats-polling-interval")?
            .as_u64())
    }

    /// Makes the balloon driver report guest memory statistics every `secs` seconds (0 turns
    /// it off). Re-setting the same value re-arms QEMU's timer, so callers set it only when it
    /// differs.
    pub fn set_balloon_stats_interval(&mut self, secs: u64) -> Result<(), VmmError> {
        self.qom_set(
            BALLOON_QOM_PATH,
            "guest-stats-polling-interval",
            json!(secs),
        )
    }

    /// The balloon's `guest-stats`, raw (`{"stats": {"stat-free-memory": ..}, "last-update":
    /// ..}`).
    pub fn guest_stats_raw(&mut self) -> Result<Value, VmmError> {
        self.qom_get(BALLOON_QOM_PATH, "guest-stats")
    }

    /// The balloon's `guest-stats`, decoded (see [`parse_guest_stats`]).
    pub fn guest_stats(&mut self) -> Result<QemuGuestStats, VmmError> {
        Ok(parse_guest_stats(&self.guest_stats_raw()?))
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<(), VmmError> {
        self.execute("system_powerdown", None)?;
        Ok(())
    }

    /// `quit`: QEMU exits at once (no guest shutdown). QEMU closing the socket before its
    /// reply counts as done.
    pub fn quit(&mut self) -> Result<(), VmmError> {
        match self.execute("quit", None) {
            Ok(_) | Err(VmmError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
