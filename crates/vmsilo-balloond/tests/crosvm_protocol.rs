//! The crosvm client against an in-process peer speaking crosvm's exact wire format
//! (SOCK_SEQPACKET, one JSON datagram per message), including the ways crosvm misbehaves.

use std::path::PathBuf;
use std::time::Duration;

use vmsilo_balloond::fake::{Behavior, FakeCrosvm, FakeGuest};
use vmsilo_balloond::vmm::{CrosvmClient, VmmClient, VmmError};

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

#[test]
fn test_crosvm_stats_request_is_exact_and_reply_is_decoded() {
    let dir = tmpdir("cv-stats");
    let peer = FakeCrosvm::start(&dir.join("a-control.socket"), FakeGuest::new()).unwrap();
    peer.guest().balloon_actual = 64 << 20;
    let mut c = CrosvmClient::new(&dir.join("a-control.socket"), TIMEOUT);
    let s = c.stats().unwrap();
    assert_eq!(s.balloon_actual, 64 << 20);
    assert_eq!(s.stats.free_memory, Some(600 << 20));
    assert_eq!(s.stats.disk_caches, Some(200 << 20));
    assert_eq!(s.stats.shared_memory, None);
    assert_eq!(s.ram_size, None);
    assert_eq!(
        peer.guest().requests,
        [br#"{"BalloonCommand":"Stats"}"#.to_vec()]
    );
}

#[test]
fn test_crosvm_adjust_request_is_exact() {
    let dir = tmpdir("cv-adjust");
    let peer = FakeCrosvm::start(&dir.join("a-control.socket"), FakeGuest::new()).unwrap();
    let mut c = CrosvmClient::new(&dir.join("a-control.socket"), TIMEOUT);
    c.set_balloon(268_435_456).unwrap();
    let g = peer.guest();
    assert_eq!(
        g.requests,
        [
            br#"{"BalloonCommand":{"Adjust":{"num_bytes":268435456,"wait_for_success":false}}}"#
                .to_vec()
        ]
    );
    assert_eq!(g.adjusts, [268_435_456]);
    assert_eq!(g.balloon_actual, 268_435_456);
}

#[test]
fn test_crosvm_no_reply_times_out() {
    let dir = tmpdir("cv-noreply");
    let peer = FakeCrosvm::start(&dir.join("a-control.socket"), FakeGuest::new()).unwrap();
    peer.guest().behavior = Behavior::NoReply;
    let mut c = CrosvmClient::new(&dir.join("a-control.socket"), TIMEOUT);
    let err = c.stats().unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("within 300 ms"), "{err}");
    // The adjust path too.
    assert!(matches!(
        c.set_balloon(1 << 20),
        Err(VmmError::Timeout { .. })
    ));
}

#[test]
fn test_crosvm_enotconn_means_driver_not_ready() {
    let dir = tmpdir("cv-107");
    let peer = FakeCrosvm::start(&dir.join("a-control.socket"), FakeGuest::new()).unwrap();
    peer.guest().behavior = Behavior::ErrNotConnected;
    let mut c = CrosvmClient::new(&dir.join("a-control.socket"), TIMEOUT);
    let err = c.stats().unwrap_err();
    assert!(err.is_driver_not_ready(), "{err:?}");
    assert!(
        err.to_string().contains("balloon driver is not up"),
        "{err}"
    );
    let err = c.set_balloon(1 << 20).unwrap_err();
    assert!(err.is_driver_not_ready(), "{err:?}");
}

#[test]
fn test_crosvm_garbage_reply_is_an_error() {
    let dir = tmpdir("cv-garbage");
    let peer = FakeCrosvm::start(&dir.join("a-control.socket"), FakeGuest::new()).unwrap();
    peer.guest().behavior = Behavior::Garbage;
    let mut c = CrosvmClient::new(&dir.join("a-control.socket"), TIMEOUT);
    let err = c.stats().unwrap_err();
    assert!(matches!(err, VmmError::Malformed { .. }), "{err:?}");
}

#[test]
fn test_crosvm_peer_vanishing_mid_request_is_an_error() {
    let dir = tmpdir("cv-hangup");
    let peer = FakeCrosvm::start(&dir.join("a-control.socket"), FakeGuest::new()).unwrap();
    peer.guest().behavior = Behavior::HangUp;
    let mut c = CrosvmClient::new(&dir.join("a-control.socket"), TIMEOUT);
    let err = c.stats().unwrap_err();
    assert!(matches!(err, VmmError::Closed { .. }), "{err:?}");
}

#[test]
fn test_crosvm_missing_and_stale_sockets_fail_to_connect() {
    let dir = tmpdir("cv-missing");
    let mut c = CrosvmClient::new(&dir.join("gone-control.socket"), TIMEOUT);
    assert!(matches!(c.stats(), Err(VmmError::Connect { .. })));
    // A socket file whose VMM died: ECONNREFUSED.
    let path = dir.join("stale-control.socket");
    drop(FakeCrosvm::start(&path, FakeGuest::new()).unwrap());
    {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
        use std::os::fd::AsRawFd;
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path()).unwrap()).unwrap();
    }
    let mut c = CrosvmClient::new(&path, TIMEOUT);
    let err = c.stats().unwrap_err();
    assert!(matches!(err, VmmError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("stale-control.socket"), "{err}");
}

#[test]
fn test_crosvm_a_stuck_peer_does_not_block_a_healthy_one() {
    let dir = tmpdir("cv-two");
    let stuck = FakeCrosvm::start(&dir.join("s-control.socket"), FakeGuest::new()).unwrap();
    stuck.guest().behavior = Behavior::NoReply;
    let ok = FakeCrosvm::start(&dir.join("o-control.socket"), FakeGuest::new()).unwrap();
    let mut cs = CrosvmClient::new(&dir.join("s-control.socket"), Duration::from_secs(2));
    let h = std::thread::spawn(move || cs.stats());
    let mut co = CrosvmClient::new(&dir.join("o-control.socket"), TIMEOUT);
    for _ in 0..5 {
        co.stats().unwrap();
    }
    assert!(!h.is_finished());
    assert_eq!(ok.guest().requests.len(), 5);
    drop(stuck);
    assert!(h.join().unwrap().is_err());
}
