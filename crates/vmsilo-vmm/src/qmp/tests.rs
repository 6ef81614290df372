//! The QMP session against an in-process fake QEMU on a socket pair: framing, ids, events,
//! errors, and peers that misbehave (silence, hangup, endless lines, event floods).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;

const T: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(200);

/// The fake QEMU's side of a socket pair.
struct Peer {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Peer {
    fn send(&mut self, line: &str) {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
    }

    /// Reads one request; returns it parsed.
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// Greets and answers `qmp_capabilities`.
    fn greet(&mut self) {
        self.send(r#"{"QMP": {"version": {}, "capabilities": []}}"#);
        let caps = self.recv();
        assert_eq!(caps["execute"], "qmp_capabilities");
        self.send(&json!({"return": {}, "id": caps["id"]}).to_string());
    }
}

fn pair(script: impl FnOnce(Peer) + Send + 'static) -> (UnixStream, JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let peer = Peer {
        r: BufReader::new(theirs.try_clone().unwrap()),
        w: theirs,
    };
    (ours, std::thread::spawn(move || script(peer)))
}

fn session(s: UnixStream, timeout: Duration) -> Result<QmpSession, VmmError> {
    QmpSession::from_stream(s, Path::new("/test/qmp.socket"), timeout)
}

#[test]
fn test_execute_skips_events_keeps_them_and_returns_the_reply() {
    let (s, peer) = pair(|mut p| {
        p.greet();
        let req = p.recv();
        assert_eq!(req["execute"], "balloon");
        assert_eq!(req["arguments"]["value"], 1234);
        p.send(r#"{"event": "BALLOON_CHANGE", "data": {"actual": 1}}"#);
        p.send("");
        p.send(&json!({"return": {}, "id": req["id"]}).to_string());
        let req = p.recv();
        assert_eq!(req["execute"], "query-balloon");
        p.send(&json!({"return": {"actual": 536_870_912u64}, "id": req["id"]}).to_string());
    });
    let mut q = session(s, T).unwrap();
    q.balloon(1234).unwrap();
    assert_eq!(q.query_balloon().unwrap(), 536_870_912);
    let events = q.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "BALLOON_CHANGE");
    assert!(q.take_events().is_empty());
    peer.join().unwrap();
}

#[test]
fn test_error_reply_is_refused_with_class_and_description() {
    let (s, peer) = pair(|mut p| {
        p.greet();
        let req = p.recv();
        p.send(
            &json!({"error": {"class": "GenericError", "desc": "No balloon\u{1b}[2J device"}, "id": req["id"]})
                .to_string(),
        );
    });
    let mut q = session(s, T).unwrap();
    let err = q.balloon(1).unwrap_err();
    assert!(matches!(err, VmmError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("GenericError") && text.contains("No balloon"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "control characters are removed: {text:?}"
    );
    peer.join().unwrap();
}

#[test]
fn test_reply_with_a_foreign_id_is_malformed() {
    let (s, peer) = pair(|mut p| {
        p.greet();
        let _ = p.recv();
        p.send(r#"{"return": {}, "id": 999}"#);
    });
    let mut q = session(s, T).unwrap();
    let err = q.system_powerdown().unwrap_err();
    assert!(matches!(err, VmmError::Malformed { .. }), "{err:?}");
    peer.join().unwrap();
}

#[test]
fn test_a_missing_greeting_or_garbage_is_malformed() {
    let (s, peer) = pair(|mut p| p.send(r#"{"hello": 1}"#));
    assert!(matches!(session(s, T), Err(VmmError::Malformed { .. })));
    peer.join().unwrap();
    let (s, peer) = pair(|mut p| p.send("\u{ff}garbage"));
    assert!(matches!(session(s, T), Err(VmmError::Malformed { .. })));
    peer.join().unwrap();
}

#[test]
fn test_an_endless_line_is_cut_at_the_bound() {
    let (s, peer) = pair(|mut p| {
        let chunk = vec![b'x'; 64 * 1024];
        // Writes stop failing once the client hangs up; the bound ends the read first.
        for _ in 0..(MAX_LINE / chunk.len() + 2) {
            if p.w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let err = session(s, T).unwrap_err();
    assert!(matches!(err, VmmError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("line longer"), "{err}");
    peer.join().unwrap();
}

#[test]
fn test_an_event_flood_ends_the_wait() {
    let (s, peer) = pair(|mut p| {
        p.greet();
        let _ = p.recv();
        for _ in 0..=MAX_SKIPPED {
            if p.w.write_all(b"{\"event\":\"X\"}\n").is_err() {
                return;
            }
        }
    });
    let mut q = session(s, T).unwrap();
    let err = q.query_balloon().unwrap_err();
    assert!(matches!(err, VmmError::Malformed { .. }), "{err:?}");
    assert_eq!(
        q.take_events().len(),
        MAX_EVENTS_KEPT,
        "kept events are bounded"
    );
    drop(q);
    peer.join().unwrap();
}

#[test]
fn test_silence_is_a_timeout_and_hangup_is_closed() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (s, peer) = pair(move |mut p| {
        p.greet();
        let _ = p.recv();
        // Say nothing until the client gave up.
        let _ = rx.recv();
    });
    let mut q = session(s, SHORT).unwrap();
    let err = q.query_balloon().unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
    tx.send(()).unwrap();
    peer.join().unwrap();

    let (s, peer) = pair(|mut p| {
        p.greet();
        let _ = p.recv();
    });
    let mut q = session(s, T).unwrap();
    // The peer reads the request, then hangs up without a reply.
    assert!(matches!(q.query_balloon(), Err(VmmError::Closed { .. })));
    peer.join().unwrap();
}

#[test]
fn test_quit_accepts_a_hangup_before_the_reply() {
    let (s, peer) = pair(|mut p| {
        p.greet();
        assert_eq!(p.recv()["execute"], "quit");
    });
    let mut q = session(s, T).unwrap();
    q.quit().unwrap();
    peer.join().unwrap();
}

#[test]
fn test_memory_size_adds_plugged_memory() {
    let (s, peer) = pair(|mut p| {
        p.greet();
        let req = p.recv();
        assert_eq!(req["execute"], "query-memory-size-summary");
        p.send(
            &json!({"return": {"base-memory": 1u64 << 30, "plugged-memory": 1u64 << 20}, "id": req["id"]})
                .to_string(),
        );
        let req = p.recv();
        p.send(&json!({"return": {"plugged-memory": 0}, "id": req["id"]}).to_string());
    });
    let mut q = session(s, T).unwrap();
    assert_eq!(q.memory_size().unwrap(), (1 << 30) + (1 << 20));
    assert!(matches!(q.memory_size(), Err(VmmError::Malformed { .. })));
    peer.join().unwrap();
}

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
    assert_eq!(s.last_update, Some(1_795_886_548));
    assert_eq!(s.stats.free_memory, Some(439_697_408));
    assert_eq!(s.stats.available_memory, Some(439_410_688));
    assert_eq!(s.stats.total_memory, Some(479_657_984));
    assert_eq!(s.stats.disk_caches, Some(12_402_688));
    assert_eq!(s.stats.swap_in, None);
    let never: Value = serde_json::from_str(
        r#"{"stats": {"stat-free-memory": 18446744073709551615}, "last-update": 0}"#,
    )
    .unwrap();
    assert_eq!(parse_guest_stats(&never), QemuGuestStats::default());
    let negative: Value =
        serde_json::from_str(r#"{"stats": {"stat-free-memory": -1}, "last-update": 5}"#).unwrap();
    assert_eq!(parse_guest_stats(&negative).stats.free_memory, None);
}

#[test]
fn test_connect_to_a_missing_socket_is_a_connect_error() {
    let err =
        QmpSession::connect(Path::new("/nonexistent/vmsilo-vmm/qmp.socket"), SHORT).unwrap_err();
    assert!(matches!(err, VmmError::Connect { .. }), "{err:?}");
}
