//! The QMP client against an in-process QMP peer: greeting, capabilities negotiation, events
//! interleaved with replies, QEMU's guest-size convention, and misbehaving peers.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use vmsilo_balloond::fake::{Behavior, FakeGuest, FakeQmp};
use vmsilo_balloond::vmm::{QmpClient, VmmClient, VmmError};

/// A scratch directory, removed when the test ends.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("balloond-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

const TIMEOUT: Duration = Duration::from_millis(300);
const M: u64 = 1 << 20;

fn commands(requests: &[Vec<u8>]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(r).unwrap();
            let mut s = v["execute"].as_str().unwrap().to_owned();
            if let Some(p) = v["arguments"]["property"].as_str() {
                s = format!("{s} {p}");
            }
            s
        })
        .collect()
}

#[test]
fn test_qmp_stats_enable_polling_once_and_convert_guest_size() {
    let dir = tmpdir("qmp-stats");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    peer.guest().balloon_actual = 100 * M;
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    let s = c.stats().unwrap();
    assert_eq!(s.balloon_actual, 100 * M);
    assert_eq!(s.ram_size, Some(1024 * M));
    assert_eq!(s.stats.free_memory, Some(600 * M));
    assert_eq!(peer.guest().polling_interval, 2);
    let first = commands(&peer.guest().requests);
    assert_eq!(
        first,
        [
            "qmp_capabilities",
            "query-memory-size-summary",
            "qom-get guest-stats-polling-interval",
            "qom-set guest-stats-polling-interval",
            "query-balloon",
            "qom-get guest-stats"
        ]
    );
    // The second read does not re-arm QEMU's polling timer, nor re-query the RAM size.
    peer.guest().requests.clear();
    c.stats().unwrap();
    assert_eq!(
        commands(&peer.guest().requests),
        [
            "qmp_capabilities",
            "qom-get guest-stats-polling-interval",
            "query-balloon",
            "qom-get guest-stats"
        ]
    );
}

#[test]
fn test_qmp_stats_not_yet_reported_are_none() {
    let dir = tmpdir("qmp-unreported");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    peer.guest().stats_reported = false;
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    let s = c.stats().unwrap();
    assert_eq!(s.stats, Default::default());
    assert_eq!(s.balloon_actual, 0);
    peer.guest().stats_reported = true;
    assert_eq!(c.stats().unwrap().stats.free_memory, Some(600 * M));
}

#[test]
fn test_qmp_balloon_sends_guest_size() {
    let dir = tmpdir("qmp-balloon");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    c.set_balloon(300 * M).unwrap();
    let g = peer.guest();
    let last: Value = serde_json::from_slice(g.requests.last().unwrap()).unwrap();
    assert_eq!(last["execute"], "balloon");
    assert_eq!(last["arguments"]["value"], 724 * M);
    assert_eq!(g.adjusts, [300 * M]);
}

#[test]
fn test_qmp_no_reply_times_out() {
    let dir = tmpdir("qmp-noreply");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    peer.guest().behavior = Behavior::NoReply;
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    assert!(matches!(c.stats(), Err(VmmError::Timeout { .. })));
}

#[test]
fn test_qmp_garbage_and_hangup_are_errors() {
    let dir = tmpdir("qmp-garbage");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    peer.guest().behavior = Behavior::Garbage;
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    assert!(matches!(c.stats(), Err(VmmError::Malformed { .. })));
    peer.guest().behavior = Behavior::HangUp;
    assert!(matches!(c.stats(), Err(VmmError::Closed { .. })));
    // Recovers once the peer behaves: a full, correct sample again.
    peer.guest().behavior = Behavior::Normal;
    peer.guest().balloon_actual = 64 * M;
    let s = c.stats().expect("stats after recovery");
    assert_eq!(s.balloon_actual, 64 * M);
    assert_eq!(s.stats.free_memory, Some(600 * M));
}

#[test]
fn test_qmp_error_reply_is_reported_with_class_and_desc() {
    let dir = tmpdir("qmp-error");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    peer.guest().has_balloon = false;
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    let err = c.stats().unwrap_err();
    assert!(matches!(err, VmmError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("GenericError") && text.contains("balloon0"),
        "{text}"
    );
}

#[test]
fn test_qmp_whole_ram_balloon_leaves_a_page() {
    let dir = tmpdir("qmp-whole");
    let path = dir.join("a-qmp.socket");
    let peer = FakeQmp::start(&path, FakeGuest::new()).unwrap();
    let mut c = QmpClient::new(&path, TIMEOUT, Duration::from_secs(2));
    // QEMU rejects value 0; the client never sends it.
    c.set_balloon(u64::MAX).unwrap();
    let last: Value = serde_json::from_slice(peer.guest().requests.last().unwrap()).unwrap();
    assert_eq!(last["arguments"]["value"], 4096);
}
