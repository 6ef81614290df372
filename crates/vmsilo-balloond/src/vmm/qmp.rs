//! QEMU's QMP over a unix stream socket: one JSON object per line.
//!
//! Each operation opens its own connection (greeting, `qmp_capabilities`, the commands, close),
//! because QEMU serves one QMP client at a time and the runtime needs the monitor too.
//!
//! Conventions that differ from crosvm:
//! - `balloon {"value": V}` takes the **guest RAM target** (RAM size − balloon size), and
//!   `query-balloon` returns the guest RAM size now, so the balloon is `RAM − actual`. RAM comes
//!   from `query-memory-size-summary` (`base-memory` + `plugged-memory`).
//! - Guest statistics come from `qom-get` of `guest-stats` on `/machine/peripheral/balloon0`,
//!   refreshed by QEMU every `guest-stats-polling-interval` seconds (which we enable). A stat of
//!   `u64::MAX` (or −1), or `last-update` 0, means "not reported".
//! - Asynchronous events (`BALLOON_CHANGE` ...) may arrive between replies; they are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::SockType;
use serde_json::{Value, json};

use super::{VmmClient, VmmError, excerpt};
use crate::stats::{BalloonSample, GuestStats};

/// QOM path of the balloon device (the runtime names it `balloon0`).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";
/// Longest QMP line accepted.
pub const MAX_LINE: usize = 256 * 1024;
/// Most events skipped while waiting for one reply.
const MAX_SKIPPED: usize = 1000;

/// Maps QEMU's `guest-stats` object to [`GuestStats`]. Returns all-`None` stats when
/// `last-update` is 0 (the guest never reported, or polling is off).
pub fn parse_guest_stats(v: &Value) -> GuestStats {
    let last_update = v.get("last-update").and_then(Value::as_u64).unwrap_or(0);
    let Some(stats) = v.get("stats").filter(|_| last_update != 0) else {
        return GuestStats::default();
    };
    let get = |key: &str| {
        stats
            .get(key)
            .and_then(Value::as_u64)
            .filter(|&n| n != u64::MAX)
    };
    GuestStats {
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
    }
}

/// Age of QEMU's `guest-stats` (from `last-update`, host wall-clock seconds) at `now`; 0 when
/// unknown or in the future.
pub fn stats_age_ms(v: &Value, now: std::time::SystemTime) -> u64 {
    let Some(last) = v
        .get("last-update")
        .and_then(Value::as_u64)
        .filter(|&l| l > 0)
    else {
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

/// The socket and timeout, for error messages.
#[derive(Debug, Clone)]
struct Ctx {
    path: PathBuf,
    timeout: Duration,
}

impl Ctx {
    fn io(&self, what: &'static str, e: std::io::Error) -> VmmError {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            VmmError::Timeout {
                path: self.path.clone(),
                what,
                timeout: self.timeout,
            }
        } else {
            VmmError::Io {
                path: self.path.clone(),
                what,
                source: e,
            }
        }
    }

    fn malformed(&self, what: &'static str, detail: String) -> VmmError {
        VmmError::Malformed {
            path: self.path.clone(),
            what,
            detail,
        }
    }
}

struct Conn {
    client: Ctx,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Conn {
    fn read_line(&mut self, what: &'static str) -> Result<Vec<u8>, VmmError> {
        let mut line = Vec::new();
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.client.io(what, e)),
            };
            if buf.is_empty() {
                return Err(VmmError::Closed {
                    path: self.client.path.clone(),
                    what,
                });
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if line.len() + chunk.len() > MAX_LINE {
                return Err(self.client.malformed(what, "line too long".into()));
            }
            line.extend_from_slice(chunk);
            let used = done.unwrap_or(buf.len());
            self.reader.consume(used);
            if done.is_some() {
                return Ok(line);
            }
        }
    }

    /// Reads lines until a reply (skipping events); returns the parsed object.
    fn read_reply(&mut self, what: &'static str, id: Option<u64>) -> Result<Value, VmmError> {
        for _ in 0..MAX_SKIPPED {
            let line = self.read_line(what)?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line).map_err(|e| {
                self.client
                    .malformed(what, format!("not JSON ({e}): {}", excerpt(&line)))
            })?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(want) = id
                && v.get("id").and_then(Value::as_u64) != Some(want)
            {
                // A reply to someone else's command cannot happen on our own connection;
                // treat it as a protocol error rather than guessing.
                return Err(self
                    .client
                    .malformed(what, format!("reply with a foreign id: {}", excerpt(&line))));
            }
            return Ok(v);
        }
        Err(self.client.malformed(what, "too many events".into()))
    }

    fn execute(
        &mut self,
        what: &'static str,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let mut bytes =
            serde_json::to_vec(&req).map_err(|e| self.client.malformed(what, e.to_string()))?;
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|e| self.client.io(what, e))?;
        let reply = self.read_reply(what, Some(id))?;
        if let Some(ret) = reply.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = reply.get("error") {
            let class = err.get("class").and_then(Value::as_str).unwrap_or("?");
            let desc = err.get("desc").and_then(Value::as_str).unwrap_or("?");
            return Err(VmmError::Refused {
                path: self.client.path.clone(),
                what,
                message: format!(
                    "{command}: {class}: {}",
                    desc.chars().take(200).collect::<String>()
                ),
            });
        }
        Err(self.client.malformed(
            what,
            format!(
                "neither return nor error: {}",
                excerpt(reply.to_string().as_bytes())
            ),
        ))
    }
}

/// A QMP client for one VM.
#[derive(Debug, Clone)]
pub struct QmpClient {
    ctx: Ctx,
    polling_interval_s: u64,
    ram_size: Option<u64>,
}

impl QmpClient {
    /// A client for the QMP socket at `path`. `stats_polling_interval` is what QEMU's guest
    /// stats polling is set to (whole seconds, at least 1).
    pub fn new(path: &Path, timeout: Duration, stats_polling_interval: Duration) -> Self {
        Self {
            ctx: Ctx {
                path: path.to_owned(),
                timeout,
            },
            polling_interval_s: stats_polling_interval.as_secs().max(1),
            ram_size: None,
        }
    }

    fn connect(&self) -> Result<Conn, VmmError> {
        let ctx = &self.ctx;
        let fd = super::crosvm::connect_unix(&ctx.path, SockType::Stream, ctx.timeout)?;
        let t = Some(ctx.timeout.max(Duration::from_millis(1)));
        let stream = UnixStream::from(fd);
        stream
            .set_read_timeout(t)
            .map_err(|e| self.ctx.io("connect", e))?;
        let writer = stream.try_clone().map_err(|e| self.ctx.io("connect", e))?;
        let mut conn = Conn {
            client: ctx.clone(),
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        };
        let greeting = conn.read_reply("the QMP greeting", None)?;
        if greeting.get("QMP").is_none() {
            return Err(self.ctx.malformed(
                "the QMP greeting",
                format!(
                    "no QMP greeting: {}",
                    excerpt(greeting.to_string().as_bytes())
                ),
            ));
        }
        conn.execute("qmp_capabilities", "qmp_capabilities", None)?;
        Ok(conn)
    }

    fn ram_size(&self, conn: &mut Conn) -> Result<u64, VmmError> {
        if let Some(r) = self.ram_size {
            return Ok(r);
        }
        let v = conn.execute("the memory size query", "query-memory-size-summary", None)?;
        let base = v
            .get("base-memory")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                self.ctx
                    .malformed("the memory size query", "no base-memory".into())
            })?;
        let plugged = v.get("plugged-memory").and_then(Value::as_u64).unwrap_or(0);
        let ram = base.saturating_add(plugged);
        Ok(ram)
    }
}

impl VmmClient for QmpClient {
    fn stats(&mut self) -> Result<BalloonSample, VmmError> {
        let mut conn = self.connect()?;
        let ram = self.ram_size(&mut conn)?;
        let interval = conn.execute(
            "the stats polling query",
            "qom-get",
            Some(json!({"path": BALLOON_QOM_PATH, "property": "guest-stats-polling-interval"})),
        )?;
        // Set only when different: re-setting re-arms QEMU's timer and would starve it.
        if interval.as_u64() != Some(self.polling_interval_s) {
            conn.execute(
                "enabling guest stats polling",
                "qom-set",
                Some(json!({
                    "path": BALLOON_QOM_PATH,
                    "property": "guest-stats-polling-interval",
                    "value": self.polling_interval_s
                })),
            )?;
        }
        let balloon = conn.execute("the balloon query", "query-balloon", None)?;
        let guest_size = balloon
            .get("actual")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.ctx.malformed("the balloon query", "no actual".into()))?;
        let stats = conn.execute(
            "the guest stats query",
            "qom-get",
            Some(json!({"path": BALLOON_QOM_PATH, "property": "guest-stats"})),
        )?;
        self.ram_size = Some(ram);
        Ok(BalloonSample {
            stats: parse_guest_stats(&stats),
            balloon_actual: ram.saturating_sub(guest_size),
            ram_size: Some(ram),
            stats_age_ms: stats_age_ms(&stats, std::time::SystemTime::now()),
            stats_stamp: stats
                .get("last-update")
                .and_then(Value::as_u64)
                .filter(|&l| l > 0),
        })
    }

    fn set_balloon(&mut self, bytes: u64) -> Result<(), VmmError> {
        let mut conn = self.connect()?;
        let ram = self.ram_size(&mut conn)?;
        self.ram_size = Some(ram);
        conn.execute(
            "the balloon request",
            "balloon",
            Some(json!({"value": balloon_value(ram, bytes)})),
        )?;
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.ctx.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_guest_stats_mapping_and_not_reported() {
        let v: Value = serde_json::from_str(
            r#"{"stats": {"stat-htlb-pgalloc": 0, "stat-swap-out": 0, "stat-available-memory": 439410688,
                "stat-htlb-pgfail": 0, "stat-free-memory": 439697408, "stat-minor-faults": 1078,
                "stat-major-faults": 0, "stat-total-memory": 479657984, "stat-swap-in": 18446744073709551615,
                "stat-disk-caches": 12402688}, "last-update": 1795886548}"#,
        )
        .unwrap();
        let s = parse_guest_stats(&v);
        assert_eq!(s.free_memory, Some(439_697_408));
        assert_eq!(s.available_memory, Some(439_410_688));
        assert_eq!(s.total_memory, Some(479_657_984));
        assert_eq!(s.disk_caches, Some(12_402_688));
        assert_eq!(s.swap_in, None);
        let never: Value = serde_json::from_str(
            r#"{"stats": {"stat-free-memory": 18446744073709551615}, "last-update": 0}"#,
        )
        .unwrap();
        assert_eq!(parse_guest_stats(&never), GuestStats::default());
        let negative: Value =
            serde_json::from_str(r#"{"stats": {"stat-free-memory": -1}, "last-update": 5}"#)
                .unwrap();
        assert_eq!(parse_guest_stats(&negative).free_memory, None);
    }

    #[test]
    fn test_stats_age_from_last_update() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs);
        let v: Value = serde_json::from_str(r#"{"stats": {}, "last-update": 1000}"#).unwrap();
        assert_eq!(stats_age_ms(&v, at(1_000_700)), 700);
        assert_eq!(stats_age_ms(&v, at(999_000)), 0);
        let never: Value = serde_json::from_str(r#"{"stats": {}, "last-update": 0}"#).unwrap();
        assert_eq!(stats_age_ms(&never, at(5_000_000)), 0);
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
