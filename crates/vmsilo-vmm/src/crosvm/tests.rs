//! The crosvm client against an in-process fake crosvm on a SOCK_SEQPACKET socket pair:
//! exact request bytes, typed replies, and peers that misbehave (silence, hangup, huge or
//! garbage datagrams).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};

use super::*;

const T: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(200);
/// Nothing listens here: a client that reconnects gets a connect error.
const GONE: &str = "/nonexistent/vmsilo-vmm/a-control.socket";

const STATS_REPLY: &[u8] = br#"{"BalloonStats":{"stats":{"swap_in":0,"swap_out":0,"major_faults":369,"minor_faults":504067,"free_memory":1961717760,"total_memory":2074480640,"available_memory":1902641152,"disk_caches":34332672,"hugetlb_allocations":0,"hugetlb_failures":0,"shared_memory":null,"unevictable_memory":null},"balloon_actual":4096}}"#;

/// A connected SOCK_SEQPACKET pair, as crosvm's control socket is.
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

/// The fake crosvm's side: answers each request datagram with what `answer` returns (`None`:
/// stop and hang up). Returns the requests it saw.
fn fake_crosvm(
    mut answer: impl FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> (CrosvmControl, JoinHandle<Vec<Vec<u8>>>) {
    let (ours, theirs) = seqpacket_pair();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match recv(theirs.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.push(buf[..n].to_vec());
            match answer(&buf[..n]) {
                Some(reply) => {
                    if send(theirs.as_raw_fd(), &reply, MsgFlags::MSG_NOSIGNAL).is_err() {
                        break;
                    }
                }
                None => break,
            }
        }
        seen
    });
    let client = CrosvmControl::with_connection(Path::new(GONE), T, ours).unwrap();
    (client, handle)
}

#[test]
fn test_request_bytes_match_crosvm() {
    assert_eq!(Request::Exit.to_bytes(), br#""Exit""#);
    assert_eq!(Request::Powerbtn.to_bytes(), br#""Powerbtn""#);
    assert_eq!(
        Request::BalloonStats.to_bytes(),
        br#"{"BalloonCommand":"Stats"}"#
    );
    assert_eq!(
        Request::BalloonAdjust {
            num_bytes: 1_073_741_824
        }
        .to_bytes(),
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
    match parse_reply(STATS_REPLY) {
        Ok(Reply::BalloonStats {
            stats,
            balloon_actual,
        }) => {
            assert_eq!(balloon_actual, 4096);
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

#[test]
fn test_requests_share_one_connection_and_replies_are_typed() {
    let (mut c, peer) = fake_crosvm(|req| {
        Some(match req {
            br#"{"BalloonCommand":"Stats"}"# => STATS_REPLY.to_vec(),
            br#""Powerbtn""# => br#"{"Err":95}"#.to_vec(),
            br#""Exit""# => br#""Ok""#.to_vec(),
            _ => br#""Ok""#.to_vec(),
        })
    });
    let (stats, actual) = c.balloon_stats().unwrap();
    assert_eq!(actual, 4096);
    assert_eq!(stats.available_memory, Some(1_902_641_152));
    c.balloon_adjust(8192).unwrap();
    let err = c.power_button().unwrap_err();
    assert!(matches!(err, VmmError::Errno { errno: 95, .. }), "{err:?}");
    // An error reply is still a reply: the connection stays.
    c.exit().unwrap();
    drop(c);
    let seen = peer.join().unwrap();
    assert_eq!(seen.len(), 4, "every request on the first connection");
    assert_eq!(
        seen[1],
        br#"{"BalloonCommand":{"Adjust":{"num_bytes":8192,"wait_for_success":false}}}"#
    );
}

#[test]
fn test_driver_not_ready_and_err_string() {
    let (mut c, peer) = fake_crosvm(|_| Some(br#"{"Err":107}"#.to_vec()));
    let err = c.balloon_stats().unwrap_err();
    assert!(err.is_driver_not_ready(), "{err:?}");
    drop(c);
    peer.join().unwrap();

    let (mut c, peer) =
        fake_crosvm(|_| Some(b"{\"ErrString\":\"Adjust\\u001b overriden\"}".to_vec()));
    let err = c.balloon_adjust(1).unwrap_err();
    match &err {
        VmmError::Refused { message, .. } => assert_eq!(message, "Adjust overriden"),
        other => panic!("{other:?}"),
    }
    drop(c);
    peer.join().unwrap();
}

#[test]
fn test_a_huge_or_garbage_reply_is_malformed() {
    let (mut c, peer) = fake_crosvm(|_| Some(vec![b' '; MAX_REPLY + 1]));
    let err = c.balloon_stats().unwrap_err();
    assert!(matches!(err, VmmError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("exceeds"), "{err}");
    drop(c);
    peer.join().unwrap();

    let (mut c, peer) = fake_crosvm(|_| Some(br#"{"BalloonStats":{"stats":{}}}"#.to_vec()));
    assert!(matches!(c.balloon_stats(), Err(VmmError::Malformed { .. })));
    drop(c);
    peer.join().unwrap();

    // The stats reply to an adjust request is a protocol error, not a success.
    let (mut c, peer) = fake_crosvm(|_| Some(STATS_REPLY.to_vec()));
    assert!(matches!(
        c.balloon_adjust(1),
        Err(VmmError::Malformed { .. })
    ));
    drop(c);
    peer.join().unwrap();
}

#[test]
fn test_silence_is_a_timeout_and_the_connection_is_dropped() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ours, theirs) = seqpacket_pair();
    let silent = std::thread::spawn(move || {
        let _keep = theirs;
        let _ = rx.recv();
    });
    let mut c = CrosvmControl::with_connection(Path::new(GONE), SHORT, ours).unwrap();
    let err = c.power_button().unwrap_err();
    assert!(matches!(err, VmmError::Timeout { .. }), "{err:?}");
    // A late reply must never answer the next request: the timed-out connection is gone.
    assert!(matches!(c.power_button(), Err(VmmError::Connect { .. })));
    tx.send(()).unwrap();
    silent.join().unwrap();
}

#[test]
fn test_hangup_retries_once_on_a_fresh_connection() {
    let (mut c, peer) = fake_crosvm(|_| None);
    // The kept connection is closed, so the client reconnects once (to nothing here).
    assert!(matches!(c.exit(), Err(VmmError::Connect { .. })));
    peer.join().unwrap();
}
