//! A small QMP client (QEMU Machine Protocol: JSON lines over a unix socket).
//!
//! QEMU serves one QMP client per socket at a time; drop a [`Qmp`] before another program (a
//! balloon daemon under test, say) connects to the same socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Error, Result, io_err};

/// QOM path of the balloon device the harness adds (`id=balloon0`).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";

/// Longest QMP line accepted (QEMU's answers are far shorter).
const MAX_LINE: usize = 1 << 20;

/// A connected, capability-negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

fn qmp_err(command: &str, message: impl Into<String>) -> Error {
    Error::Qmp {
        command: command.into(),
        message: message.into(),
    }
}

impl Qmp {
    /// Connects, reads the greeting and sends `qmp_capabilities`.
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(io_err(format!(
            "connecting to QMP socket {}",
            path.display()
        )))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io_err("setting the QMP read timeout"))?;
        let writer = stream
            .try_clone()
            .map_err(io_err("cloning the QMP socket"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(qmp_err(
                "greeting",
                format!("unexpected greeting {greeting}"),
            ));
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    fn read_message(&mut self, command: &str) -> Result<Value> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .map_err(|e| qmp_err(command, format!("reading the reply: {e}")))?;
        if n == 0 {
            return Err(qmp_err(command, "QEMU closed the QMP socket"));
        }
        serde_json::from_str(&line)
            .map_err(|e| qmp_err(command, format!("bad JSON {:?}: {e}", line.trim_end())))
    }

    /// Runs `command` with `arguments` (`Value::Null` for none) and returns its `return` value.
    /// Events that arrive meanwhile are kept for [`Qmp::take_events`].
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut req = json!({ "execute": command });
        if !arguments.is_null() {
            req["arguments"] = arguments;
        }
        let mut text = req.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| qmp_err(command, format!("sending: {e}")))?;
        loop {
            let mut msg = self.read_message(command)?;
            if let Some(ret) = msg.get_mut("return") {
                return Ok(ret.take());
            }
            if let Some(err) = msg.get("error") {
                let class = err.get("class").and_then(Value::as_str).unwrap_or("?");
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(qmp_err(command, format!("{class}: {desc}")));
            }
            if msg.get("event").is_some() {
                self.events.push(msg);
            }
        }
    }

    /// Events received so far (e.g. `BALLOON_CHANGE`), oldest first; clears the list.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// `query-balloon`: the guest's current RAM size in bytes (RAM minus balloon).
    pub fn query_balloon(&mut self) -> Result<u64> {
        let v = self.execute("query-balloon", Value::Null)?;
        v.get("actual")
            .and_then(Value::as_u64)
            .ok_or_else(|| qmp_err("query-balloon", format!("no \"actual\" in {v}")))
    }

    /// `balloon`: asks the guest to shrink or grow to `target_bytes` of RAM.
    pub fn balloon(&mut self, target_bytes: u64) -> Result<()> {
        self.execute("balloon", json!({ "value": target_bytes }))?;
        Ok(())
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
                return Err(qmp_err(
                    "query-balloon",
                    format!(
                        "guest RAM is {actual} bytes, not the {target_bytes} asked for, after {timeout:?}"
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the balloon driver report guest memory statistics every `secs` seconds
    /// (0 turns it off).
    pub fn set_balloon_stats_interval(&mut self, secs: u64) -> Result<()> {
        self.execute(
            "qom-set",
            json!({
                "path": BALLOON_QOM_PATH,
                "property": "guest-stats-polling-interval",
                "value": secs,
            }),
        )?;
        Ok(())
    }

    /// The balloon's `guest-stats` (`{"stats": {"stat-free-memory": ..}, "last-update": ..}`).
    /// Stats the guest has not reported yet read as `u64::MAX`.
    pub fn balloon_stats(&mut self) -> Result<Value> {
        self.execute(
            "qom-get",
            json!({ "path": BALLOON_QOM_PATH, "property": "guest-stats" }),
        )
    }

    /// `quit`: QEMU exits at once (no guest shutdown).
    pub fn quit(&mut self) -> Result<()> {
        match self.execute("quit", Value::Null) {
            Ok(_) => Ok(()),
            // QEMU may close the socket before the reply arrives.
            Err(Error::Qmp { message, .. }) if message.contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// An in-process peer speaking QMP's framing, scripted; the real QEMU peer is in the e2e
    /// tests.
    #[test]
    fn execute_skips_events_and_reports_errors() {
        let dir = crate::ScratchDir::new("qmp").unwrap();
        let path = dir.socket_path("qmp.sock").unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            r.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), r#"{"execute":"qmp_capabilities"}"#);
            s.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains(r#""value":1234"#), "{line}");
            s.write_all(
                b"{\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": 1}}\n{\"return\": {}}\n",
            )
            .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'target' expects a size\"}}\n")
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            s.write_all(b"{\"return\": {\"actual\": 536870912}}\n")
                .unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let mut qmp = Qmp::connect(&path).unwrap();
        qmp.balloon(1234).unwrap();
        assert_eq!(qmp.take_events().len(), 1);
        let err = qmp.balloon(0).unwrap_err().to_string();
        assert!(err.contains("expects a size"), "{err}");
        assert_eq!(qmp.query_balloon().unwrap(), 536_870_912);
        drop(qmp);
        server.join().unwrap();
    }
}
