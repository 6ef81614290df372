//! Component tests: the real `vm-switch` binary (main process, forked sandboxed children,
//! seccomp in `kill` mode, shared-memory rings) driven by in-process vhost-user frontends with
//! memfd guest memory.

mod common;

use common::*;
use vm_switch::frame::{self, L3};
use vm_switch::testing::{BUF, GuestOptions, TestGuest};

fn two_ports(test: &str) -> SwitchProc {
    let s = SwitchProc::start(test, &[]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &["fd00::a/64"], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &["fd00::b/64"], true, &[]);
    s
}

/// [`two_ports`] and a third port c (IPv4 only, no broadcast), all three connected.
fn three_ports(test: &str) -> (SwitchProc, TestGuest, TestGuest, TestGuest) {
    let s = two_ports(test);
    s.add_port("c", MAC_C, &["10.0.0.3/24"], &[], false, &[]);
    let (a, b, c) = (s.guest("a"), s.guest("b"), s.guest("c"));
    s.wait_mesh(&["a", "b", "c"]);
    (s, a, b, c)
}

#[test]
fn test_ipv4_unicast_is_routed_to_the_destination_port() {
    let s = two_ports("unicast4");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    // The sender uses some other destination MAC: the switch routes by IP.
    a.send(&udp4(
        MAC_A,
        [2, 0, 0, 0, 0, 9],
        v4("10.0.0.1"),
        v4("10.0.0.2"),
        7,
    ))
    .unwrap();
    let f = b
        .recv_matching(5 * SECOND, |f| tag_of(f) == Some(7))
        .unwrap_or_else(|| panic!("b got nothing; stats {}\nlog:\n{}", s.stats(), s.log()));
    assert_eq!(&f[0..6], &MAC_B, "destination MAC rewritten to the port's");
    assert_eq!(&f[6..12], &MAC_A);
    let stats = s.wait_stats("b", "delivery counted", |p| {
        p["to_guest_frames"].as_u64() >= Some(1)
    });
    assert_eq!(stats["connected"], true);
}

#[test]
fn test_ipv6_unicast_both_directions() {
    let s = two_ports("unicast6");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    a.send(&udp6(MAC_A, MAC_B, v6("fd00::a"), v6("fd00::b"), 1))
        .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(1))
            .is_some()
    );
    b.send(&udp6(MAC_B, MAC_A, v6("fd00::b"), v6("fd00::a"), 2))
        .unwrap();
    assert!(
        a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(2))
            .is_some()
    );
}

#[test]
fn test_proxy_arp_answers_with_the_peer_mac() {
    let s = two_ports("arp");
    let mut a = s.guest("a");
    let _b = s.guest("b");
    s.wait_stats("b", "b connected", |p| p["connected"] == true);
    a.send(&arp_request(MAC_A, v4("10.0.0.1"), v4("10.0.0.2")))
        .unwrap();
    let reply = a
        .recv_matching(5 * SECOND, |f| f.get(12..14) == Some(&[0x08, 0x06]))
        .expect("ARP reply");
    let (eth, l3) = frame::parse(&reply).unwrap();
    assert_eq!(eth.dst, MAC_A);
    let L3::Arp(arp) = l3 else { panic!("not ARP") };
    assert_eq!(arp.op, 2);
    assert_eq!(arp.sha, MAC_B);
    assert_eq!(arp.spa, v4("10.0.0.2"));
    s.wait_stats("a", "proxy reply counted", |p| {
        p["proxy_replies"].as_u64() >= Some(1)
    });
}

#[test]
fn test_proxy_ndp_answers_neighbor_solicitation() {
    let s = two_ports("ndp");
    let mut a = s.guest("a");
    a.send(&neighbor_solicit(MAC_A, v6("fd00::a"), v6("fd00::b")))
        .unwrap();
    let na = a
        .recv_matching(5 * SECOND, |f| {
            f.len() > 54 && f[12..14] == [0x86, 0xdd] && f[54] == 136
        })
        .expect("neighbour advertisement");
    let (_, l3) = frame::parse(&na).unwrap();
    let L3::Ipv6(ip) = l3 else { panic!() };
    assert_eq!(ip.src, v6("fd00::b"));
    assert_eq!(ip.icmp.unwrap().target, Some(v6("fd00::b")));
    assert_eq!(&na[6..12], &MAC_B);
}

#[test]
fn test_broadcast_reaches_only_receive_broadcast_ports() {
    let (_s, mut a, mut b, mut c) = three_ports("bcast");
    a.send(&udp4(
        MAC_A,
        frame::BROADCAST_MAC,
        v4("10.0.0.1"),
        v4("10.0.0.255"),
        100,
    ))
    .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(100))
            .is_some(),
        "b wants broadcast"
    );
    // A unicast marker sent after the broadcast: c must see the marker and never the broadcast.
    a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("10.0.0.3"), 101))
        .unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&Some(101)) {
        let got = c.recv_timeout(5 * SECOND);
        assert!(!got.is_empty(), "marker never arrived");
        seen.extend(got.iter().map(|f| tag_of(f)));
    }
    assert!(
        !seen.contains(&Some(100)),
        "c must not receive broadcast: {seen:?}"
    );
}

/// Each incoming ring is drained when its own event fires (not every ring on every
/// wake-up): frames from two senders, interleaved, must all reach the one receiver, each
/// sender's in order.
#[test]
fn test_two_senders_interleaved_to_one_port_all_arrive_in_order() {
    let (s, mut a, mut b, mut c) = three_ports("two-senders");
    const N: u32 = 200;
    let mut got = Vec::new();
    for i in 0..N {
        a.send(&udp4(
            MAC_A,
            MAC_B,
            v4("10.0.0.1"),
            v4("10.0.0.2"),
            10_000 + i,
        ))
        .unwrap();
        c.send(&udp4(
            MAC_C,
            MAC_B,
            v4("10.0.0.3"),
            v4("10.0.0.2"),
            20_000 + i,
        ))
        .unwrap();
        b.poll_frames(&mut got);
    }
    let tags = |got: &[Vec<u8>], base: u32| -> Vec<u32> {
        got.iter()
            .filter_map(|f| tag_of(f))
            .filter(|t| (base..base + N).contains(t))
            .collect()
    };
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while (tags(&got, 10_000).len() as u32) < N || (tags(&got, 20_000).len() as u32) < N {
        assert!(
            std::time::Instant::now() < deadline,
            "b got {} of a's and {} of c's {N} frames; stats {}\nlog:\n{}",
            tags(&got, 10_000).len(),
            tags(&got, 20_000).len(),
            s.stats(),
            s.log()
        );
        got.extend(b.recv_timeout(SECOND));
    }
    assert_eq!(tags(&got, 10_000), (10_000..10_000 + N).collect::<Vec<_>>());
    assert_eq!(tags(&got, 20_000), (20_000..20_000 + N).collect::<Vec<_>>());
    // Then each sender alone: its frames must not wait for the other ring's wake-up.
    for (from, mac, src, tag) in [
        (&mut a, MAC_A, "10.0.0.1", 30_000),
        (&mut c, MAC_C, "10.0.0.3", 40_000),
    ] {
        from.send(&udp4(mac, MAC_B, v4(src), v4("10.0.0.2"), tag))
            .unwrap();
        assert!(
            b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(tag))
                .is_some(),
            "frame {tag} from {src} alone never arrived; stats {}\nlog:\n{}",
            s.stats(),
            s.log()
        );
    }
    // Every ring's event was consumed: b's worker sleeps now. A ring event left readable
    // would wake it again at once, forever (the frames still arrive then, through the other
    // ring's wake-ups, so only the CPU shows it): half a second of it is a whole core's
    // half second, an idle worker uses next to nothing.
    let pid = s.port_stats("b")["pid"].as_u64().unwrap() as u32;
    let before = tree_cpu_ticks(pid);
    std::thread::sleep(SECOND / 2);
    let used = tree_cpu_ticks(pid) - before;
    assert!(
        used < 15,
        "b's worker used {used} ticks in half a second while idle (spinning)"
    );
}

#[test]
fn test_advertised_route_wins_for_its_prefix_and_router_may_source_it() {
    let s = two_ports("routes");
    s.add_port(
        "r",
        MAC_C,
        &["10.0.0.254/24"],
        &[],
        false,
        &["192.168.1.0/24"],
    );
    let mut a = s.guest("a");
    let mut r = s.guest("r");
    s.wait_mesh(&["a", "b", "r"]);
    a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("192.168.1.7"), 5))
        .unwrap();
    assert!(
        r.recv_matching(5 * SECOND, |f| tag_of(f) == Some(5))
            .is_some()
    );
    r.send(&udp4(MAC_C, MAC_A, v4("192.168.1.7"), v4("10.0.0.1"), 6))
        .unwrap();
    assert!(
        a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(6))
            .is_some()
    );
}

#[test]
fn test_spoofed_frames_are_dropped_and_counted() {
    let s = two_ports("spoof");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.99"), v4("10.0.0.2"), 1))
        .unwrap();
    a.send(&udp4(MAC_C, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 2))
        .unwrap();
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 3))
        .unwrap();
    let mut tags = Vec::new();
    while !tags.contains(&Some(3)) {
        let got = b.recv_timeout(5 * SECOND);
        assert!(!got.is_empty(), "legitimate frame never arrived");
        tags.extend(got.iter().map(|f| tag_of(f)));
    }
    assert_eq!(tags, vec![Some(3)], "spoofed frames must not be delivered");
    let st = s.wait_stats("a", "spoofs counted", |p| {
        p["drops"]["spoof_ip"].as_u64() >= Some(1) && p["drops"]["spoof_mac"].as_u64() >= Some(1)
    });
    assert_eq!(st["from_guest_frames"].as_u64(), Some(3));
}

#[test]
fn test_device_config_reports_the_port_mac() {
    let s = two_ports("config");
    let mut a = s.guest("a");
    assert_eq!(a.config(0, 6).unwrap(), MAC_A.to_vec());
    // Byte-wise reads, as a guest driver does through crosvm.
    assert_eq!(a.config(5, 1).unwrap(), vec![MAC_A[5]]);
}

#[test]
fn test_legacy_layout_without_event_idx_or_mergeable_buffers() {
    let s = two_ports("legacy");
    let opts = GuestOptions {
        event_idx: false,
        mrg_rxbuf: false,
        ..GuestOptions::default()
    };
    let mut a = s.guest_with("a", opts);
    let mut b = s.guest_with("b", opts);
    s.wait_mesh(&["a", "b"]);
    for i in 0..50 {
        a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), i))
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let f = b.recv_timeout(5 * SECOND);
        assert!(
            !f.is_empty(),
            "only {} of 50 frames; stats {}\nlog:\n{}",
            got.len(),
            s.stats(),
            s.log()
        );
        got.extend(f.iter().filter_map(|f| tag_of(f)));
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>(), "in order, nothing lost");
}

#[test]
fn test_frontend_reconnect_resets_the_port_and_traffic_resumes() {
    let s = two_ports("reconnect");
    let mut b = s.guest("b");
    {
        let mut a = s.guest("a");
        s.wait_mesh(&["a", "b"]);
        a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 1))
            .unwrap();
        assert!(
            b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(1))
                .is_some()
        );
    }
    s.wait_stats("a", "disconnect seen", |p| p["connected"] == false);
    let mut a = s.guest("a");
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 2))
        .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(2))
            .is_some()
    );
    b.send(&udp4(MAC_B, MAC_A, v4("10.0.0.2"), v4("10.0.0.1"), 3))
        .unwrap();
    assert!(
        a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(3))
            .is_some()
    );
    let st = s.port_stats("a");
    assert_eq!(st["connects"].as_u64(), Some(2));
}

#[test]
fn test_killed_child_leaves_other_ports_working_and_restarts() {
    let s = two_ports("kill");
    s.add_port("c", MAC_C, &["10.0.0.3/24"], &[], false, &[]);
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    let c = s.guest("c");
    s.wait_mesh(&["a", "b", "c"]);
    let pid = s.wait_stats("c", "c connected", |p| p["connected"] == true)["pid"]
        .as_u64()
        .unwrap();
    // Traffic to c is flowing when its child dies.
    for i in 0..20 {
        a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("10.0.0.3"), i))
            .unwrap();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(c);
    for i in 0..20 {
        a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("10.0.0.3"), i))
            .unwrap();
    }
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 1000))
        .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(1000))
            .is_some(),
        "a->b broken"
    );
    b.send(&udp4(MAC_B, MAC_A, v4("10.0.0.2"), v4("10.0.0.1"), 1001))
        .unwrap();
    assert!(
        a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(1001))
            .is_some(),
        "b->a broken"
    );
    // The main process restarts c's child; a new frontend can use it.
    let new = s.wait_stats("c", "c restarted", |p| {
        p["pid"].as_u64().is_some_and(|p| p != 0 && p != pid)
    });
    assert_ne!(new["pid"].as_u64(), Some(pid));
    let mut c = s.guest("c");
    let deadline = std::time::Instant::now() + 10 * SECOND;
    loop {
        a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("10.0.0.3"), 2000))
            .unwrap();
        if c.recv_matching(SECOND / 5, |f| tag_of(f) == Some(2000))
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restarted c never got traffic; log:\n{}",
            s.log()
        );
    }
}

#[test]
fn test_removing_a_port_file_stops_only_that_port() {
    let s = two_ports("remove");
    s.add_port("c", MAC_C, &["10.0.0.3/24"], &[], false, &[]);
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b", "c"]);
    std::fs::remove_file(s.dir.join("c.port")).unwrap();
    let deadline = std::time::Instant::now() + 10 * SECOND;
    while s.sock("c").exists() {
        assert!(std::time::Instant::now() < deadline, "c.sock not removed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        s.stats()["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["vm"] != "c")
    );
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 9))
        .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(9))
            .is_some()
    );
    // c's address has no route any more.
    a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("10.0.0.3"), 10))
        .unwrap();
    s.wait_stats("a", "no_route counted", |p| {
        p["drops"]["no_route"].as_u64() >= Some(1)
    });
}

#[test]
fn test_worker_process_titles_name_switch_and_vm() {
    let s = two_ports("titles");
    let pid = s.wait_stats("a", "a started", |p| p["pid"].as_u64() > Some(0))["pid"]
        .as_u64()
        .unwrap();
    let name = s.dir.file_name().unwrap().to_str().unwrap().to_string();
    let want = format!("vm-switch({name}): a");
    // The child sets its title right after fork; give it a moment.
    let deadline = std::time::Instant::now() + 5 * SECOND;
    loop {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let text = String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .to_string();
        if text == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "title {text:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn test_bad_port_file_is_reported_and_ignored() {
    let s = SwitchProc::start("badport", &[]);
    std::fs::write(s.dir.join("x.port"), "name = \"x\"\nmac = \"nope\"\n").unwrap();
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &[], false, &[]);
    s.wait_for(&s.sock("a"));
    assert!(!s.sock("x").exists());
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while !s.log().contains("x.port") {
        assert!(
            std::time::Instant::now() < deadline,
            "error not logged:\n{}",
            s.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(s.log().contains("mac"), "{}", s.log());
}

#[test]
fn test_stalled_guest_fills_only_its_own_bounded_queue() {
    let s = two_ports("stalled");
    s.add_port("c", MAC_C, &["10.0.0.3/24"], &[], false, &[]);
    let mut a = s.guest("a");
    // b connects but never takes a frame out of its RX ring.
    let _b = s.guest("b");
    let mut c = s.guest("c");
    s.wait_mesh(&["a", "b", "c"]);
    let mut big = udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 1);
    big.resize(1400, 0);
    // IPv4 total length must match the padded frame for the switch's parser to accept it.
    let total = (big.len() - 14) as u16;
    big[16..18].copy_from_slice(&total.to_be_bytes());
    big[24..26].copy_from_slice(&[0, 0]);
    let c_sum = frame::csum_fold(frame::csum_add(0, &big[14..34]));
    big[24..26].copy_from_slice(&c_sum.to_be_bytes());
    for _ in 0..6000 {
        a.send(&big).unwrap();
    }
    // The egress queue towards b overflowed and stayed within its byte limit.
    let sb = s.wait_stats("b", "overflow drops at b", |p| {
        p["drops"]["overflow"].as_u64() > Some(0)
    });
    assert!(sb["backlog_bytes"].as_u64() <= Some(2 << 20), "{sb}");
    // Other pairs are unaffected.
    a.send(&udp4(MAC_A, MAC_C, v4("10.0.0.1"), v4("10.0.0.3"), 77))
        .unwrap();
    assert!(
        c.recv_matching(5 * SECOND, |f| tag_of(f) == Some(77))
            .is_some(),
        "a->c stalled"
    );
    c.send(&udp4(MAC_C, MAC_A, v4("10.0.0.3"), v4("10.0.0.1"), 78))
        .unwrap();
    assert!(
        a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(78))
            .is_some(),
        "c->a stalled"
    );
}

/// Issue 14: the seed's `--quiet` suppresses all log output. A normal run (ports coming and
/// going, frames forwarded, a malformed port file it survives, a clean SIGTERM) writes nothing
/// to stdout or stderr, even with `--log-level info` (which the helper passes) given as well.
#[test]
fn test_quiet_run_writes_nothing_to_stdout_or_stderr() {
    let mut s = SwitchProc::start("quiet", &["--quiet"]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &[], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &[], false, &[]);
    // Logged at error level without --quiet: the port is not started.
    std::fs::write(s.dir.join("broken.port"), "name = 7\n").unwrap();
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    a.send(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 5))
        .unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(5))
            .is_some(),
        "a->b not forwarded; log:\n{}",
        s.log()
    );
    drop(a);
    std::fs::remove_file(s.dir.join("b.port")).unwrap();
    drop(b);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status}; log:\n{}", s.log());
    assert_eq!(s.log(), "", "--quiet printed something");
}

#[test]
fn test_cli_usage_errors_exit_2_and_missing_instance_exits_1() {
    let bin = env!("CARGO_BIN_EXE_vm-switch");
    let out = std::process::Command::new(bin)
        .args([
            "-d",
            "/nonexistent/x",
            "--fq-codel-target",
            "200ms",
            "--fq-codel-interval",
            "100ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fq-codel-interval"));
    let out = std::process::Command::new(bin)
        .args(["-d", "/nonexistent/x", "--fq-codel-interval", "876000h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be at most 1h"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin)
        .args(["--buffer-size", "10ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a duration is not a size");
    let dir = std::env::temp_dir().join(format!("vm-switch-nostats-{}", std::process::id()));
    let out = std::process::Command::new(bin)
        .arg("--stats")
        .arg("-d")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no vm-switch is serving"));
}

/// Issue 11, finding 2: a guest that publishes a TX available index more than a queue ahead
/// used to spin its port's worker forever (one core, an error line per turn), holding the port
/// so that even a reconnecting frontend hung. The queue must stop instead, once, and the port
/// must stay usable.
#[test]
fn test_tx_avail_index_beyond_the_queue_stops_that_queue_and_the_port_stays_usable() {
    let s = two_ports("txidx");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    let bad = a.tx_avail_idx().wrapping_add(a.queue_size() + 1);
    a.publish_tx_avail_idx(bad);
    s.wait_stats("a", "a's broken TX queue counted", |p| {
        p["queue_errors"].as_u64() >= Some(1)
    });
    // The worker is free: a still receives (its RX queue and the port's events work).
    assert!(
        udp_arrives(&mut b, &mut a, B_TO_A, 1),
        "a's RX stopped with its TX queue; stats {}\nlog:\n{}",
        s.stats(),
        s.log()
    );
    // More kicks on the stopped queue change nothing and log nothing.
    for _ in 0..100 {
        a.publish_tx_avail_idx(bad);
    }
    assert!(udp_arrives(&mut b, &mut a, B_TO_A, 2));
    let st = s.port_stats("a");
    assert_eq!(st["queue_errors"].as_u64(), Some(1), "{st}");
    assert_eq!(st["from_guest_frames"].as_u64(), Some(0), "{st}");
    assert_eq!(s.log_count("broke its TX queue"), 1, "log:\n{}", s.log());
    // The guest's VMM reconnects (as after a reboot): the port serves it normally.
    drop(a);
    s.wait_stats("a", "disconnect seen", |p| p["connected"] == false);
    let mut a = s.guest_within("a", 30 * SECOND);
    assert!(
        udp_arrives(&mut a, &mut b, A_TO_B, 3),
        "a's TX after reconnecting; log:\n{}",
        s.log()
    );
    assert_eq!(s.port_stats("a")["queue_errors"].as_u64(), Some(1));
}

/// Issue 11, finding 3: with mergeable RX buffers, a guest whose posted buffers add up to less
/// than one frame used to spin its port's worker forever. The frame must wait for the guest's
/// next buffers (and the kick it sends for them) with the worker free meanwhile.
#[test]
fn test_rx_buffers_too_small_for_a_frame_wait_for_the_next_kick_without_spinning() {
    let s = two_ports("rxsmall");
    let opts = GuestOptions {
        post_rx: false,
        ..GuestOptions::default()
    };
    assert!(opts.mrg_rxbuf && opts.event_idx);
    let mut a = s.guest_with("a", opts);
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    // 32 bytes of RX buffers: less than the virtio-net header and the frame below.
    a.post_rx_buffers(2, 16);
    b.send(&udp4(MAC_B, MAC_A, v4("10.0.0.2"), v4("10.0.0.1"), 1))
        .unwrap();
    s.wait_stats("a", "the frame for a waits at its egress", |p| {
        p["backlog_bytes"].as_u64() > Some(0)
    });
    // The worker is free: a's TX still reaches b.
    assert!(
        udp_arrives(&mut a, &mut b, A_TO_B, 2),
        "a's port is stuck; stats {}\nlog:\n{}",
        s.stats(),
        s.log()
    );
    let st = s.port_stats("a");
    assert_eq!(st["to_guest_frames"].as_u64(), Some(0), "{st}");
    assert_eq!(st["drops"]["no_buffer"].as_u64(), Some(0), "{st}");
    // Enough buffers now, with the kick Linux would send for them (EVENT_IDX honoured): the
    // waiting frame is delivered, merged over the small buffers and a large one.
    a.post_rx_buffers(4, BUF as u32);
    let f = a.recv_matching(5 * SECOND, |f| tag_of(f) == Some(1));
    assert!(
        f.is_some(),
        "the waiting frame never came; stats {}\nlog:\n{}",
        s.stats(),
        s.log()
    );
    // The child updates backlog_bytes after it signalled the guest: wait for it.
    let st = s.wait_stats("a", "the delivery accounted", |p| {
        p["to_guest_frames"].as_u64() == Some(1) && p["backlog_bytes"].as_u64() == Some(0)
    });
    assert_eq!(st["queue_errors"].as_u64(), Some(0), "{st}");
    assert_eq!(st["drops"]["no_buffer"].as_u64(), Some(0), "{st}");
}

/// Issue 11, finding 8: a second frontend connecting to a port another frontend holds used
/// to wait forever for a reply to GET_FEATURES. It must be refused (connection closed), and
/// the first frontend must keep working.
#[test]
fn test_second_frontend_on_a_busy_port_is_refused_and_the_first_keeps_working() {
    let s = two_ports("busy");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    let probe = |s: &SwitchProc| {
        let sock = s.sock("a");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(TestGuest::probe_features(&sock));
        });
        rx.recv_timeout(30 * SECOND).unwrap_or_else(|_| {
            panic!(
                "a second frontend got neither features nor EOF in 30 s; log:\n{}",
                s.log()
            )
        })
    };
    for n in 1..=2u64 {
        let r = probe(&s);
        assert!(r.is_err(), "a second frontend was served: {r:?}");
        s.wait_stats("a", "refusal counted", |p| {
            p["refused_frontends"].as_u64() == Some(n)
        });
    }
    assert_eq!(
        s.log_count("refused another frontend"),
        1,
        "log:\n{}",
        s.log()
    );
    assert!(udp_arrives(&mut a, &mut b, A_TO_B, 1));
    assert!(udp_arrives(&mut b, &mut a, B_TO_A, 2));
    let st = s.port_stats("a");
    assert_eq!(st["connected"], true);
    assert_eq!(st["connects"].as_u64(), Some(1), "{st}");
}

/// Issue 11, finding 3, second half: when even a whole ring of posted RX buffers cannot hold
/// a frame, waiting would never end (the guest cannot post more); the frame is dropped and
/// counted, and the port keeps working.
#[test]
fn test_rx_ring_full_of_buffers_too_small_for_a_frame_drops_it_as_no_buffer() {
    let s = two_ports("rxfull");
    let opts = GuestOptions {
        post_rx: false,
        queue_size: 4,
        ..GuestOptions::default()
    };
    let mut a = s.guest_with("a", opts);
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    // The whole ring: 4 buffers of 16 bytes, 64 bytes, less than header and frame.
    a.post_rx_buffers(4, 16);
    for (n, tag) in [(1u64, 1u32), (2, 2)] {
        b.send(&udp4(MAC_B, MAC_A, v4("10.0.0.2"), v4("10.0.0.1"), tag))
            .unwrap();
        s.wait_stats("a", "frame dropped as no_buffer", |p| {
            p["drops"]["no_buffer"].as_u64() == Some(n)
        });
    }
    assert!(
        udp_arrives(&mut a, &mut b, A_TO_B, 3),
        "a's port is stuck; log:\n{}",
        s.log()
    );
    let st = s.port_stats("a");
    assert_eq!(st["to_guest_frames"].as_u64(), Some(0), "{st}");
    assert_eq!(st["backlog_bytes"].as_u64(), Some(0), "{st}");
    assert_eq!(st["queue_errors"].as_u64(), Some(0), "{st}");
}

// Issue 11, finding 4: IPv6 control messages behind extension headers.

const HBH: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
const DSTOPTS: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
const ROUTING: [u8; 8] = [0, 0, 253, 0, 0, 0, 0, 0];
const ALL_NODES_MAC: frame::Mac = [0x33, 0x33, 0, 0, 0, 1];

fn frag(offset: u16, more: bool) -> [u8; 8] {
    let [hi, lo] = ((offset << 3) | u16::from(more)).to_be_bytes();
    [0, 0, hi, lo, 0, 0, 0xab, 0xcd]
}

fn tagged(mut head: Vec<u8>, tag: u32) -> Vec<u8> {
    head.extend_from_slice(&tag.to_be_bytes().repeat(4));
    head
}

fn has_tag(f: &[u8], tag: u32) -> bool {
    f.ends_with(&tag.to_be_bytes().repeat(4))
}

/// An IPv6 frame from port a with the extension headers `ext` and the upper layer `upper`.
fn from_a6(dst_mac: frame::Mac, dst: &str, ext: &[(u8, &[u8])], upper: (u8, &[u8])) -> Vec<u8> {
    frame::build_ipv6(
        (MAC_A, dst_mac),
        (frame::link_local_from_mac(MAC_A), v6(dst)),
        255,
        ext,
        upper,
    )
}

/// Collects the tags of everything `guest` receives until every tag in `want` arrived, and
/// a little longer for stragglers.
fn tags_until(guest: &mut vm_switch::testing::TestGuest, all: &[u32], want: &[u32]) -> Vec<u32> {
    let mut seen = Vec::new();
    let mut frames = Vec::new();
    while !want.iter().all(|t| seen.contains(t)) {
        let got = guest.recv_timeout(5 * SECOND);
        assert!(!got.is_empty(), "legitimate frames never arrived: {seen:?}");
        frames.extend(got);
        seen = all
            .iter()
            .copied()
            .filter(|t| frames.iter().any(|f| has_tag(f, *t)))
            .collect();
    }
    frames.extend(guest.recv_timeout(SECOND / 5));
    all.iter()
        .copied()
        .filter(|t| frames.iter().any(|f| has_tag(f, *t)))
        .collect()
}

#[test]
fn test_ipv6_control_messages_behind_extension_headers_are_dropped() {
    use frame::{IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6};
    use frame::{IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP};
    let s = two_ports("ipv6ext");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    let ra = |tag| tagged(vec![134, 0, 0, 0, 64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0], tag);
    let na = |tag| {
        let mut m = vec![frame::ND_NEIGHBOR_ADVERT, 0, 0, 0, 0x20, 0, 0, 0];
        m.extend_from_slice(&v6("fd00::a").octets());
        tagged(m, tag)
    };
    let redirect = |tag| {
        let mut m = vec![137, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&v6("fd00::a").octets());
        m.extend_from_slice(&v6("fd00::99").octets());
        tagged(m, tag)
    };
    let hbh: &[(u8, &[u8])] = &[(IPPROTO_HOPOPTS, &HBH)];
    let dst_rt: &[(u8, &[u8])] = &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_ROUTING, &ROUTING)];
    let mut long_hbh = HBH;
    long_hbh[1] = 5;
    let control = [
        from_a6(ALL_NODES_MAC, "ff02::1", hbh, (IPPROTO_ICMPV6, &ra(1))),
        from_a6(ALL_NODES_MAC, "ff02::1", dst_rt, (IPPROTO_ICMPV6, &ra(2))),
        from_a6(MAC_B, "fd00::b", hbh, (IPPROTO_ICMPV6, &na(3))),
        from_a6(ALL_NODES_MAC, "ff02::1", dst_rt, (IPPROTO_ICMPV6, &na(4))),
        from_a6(MAC_B, "fd00::b", hbh, (IPPROTO_ICMPV6, &redirect(5))),
        // A later fragment of an ICMPv6 datagram, and a first one.
        from_a6(
            MAC_B,
            "fd00::b",
            &[(IPPROTO_FRAGMENT, &frag(2, false))],
            (IPPROTO_ICMPV6, &tagged(Vec::new(), 6)),
        ),
        from_a6(
            ALL_NODES_MAC,
            "ff02::1",
            &[(IPPROTO_HOPOPTS, &HBH), (IPPROTO_FRAGMENT, &frag(0, true))],
            (IPPROTO_ICMPV6, &ra(7)),
        ),
    ];
    let malformed = [
        // A chain longer than the packet.
        from_a6(
            ALL_NODES_MAC,
            "ff02::1",
            &[(IPPROTO_HOPOPTS, &long_hbh)],
            (IPPROTO_ICMPV6, &ra(8)),
        ),
        // Hop-by-Hop behind another header.
        from_a6(
            ALL_NODES_MAC,
            "ff02::1",
            &[(IPPROTO_DSTOPTS, &DSTOPTS), (IPPROTO_HOPOPTS, &HBH)],
            (IPPROTO_ICMPV6, &ra(9)),
        ),
    ];
    for f in control.iter().chain(&malformed) {
        a.send(f).unwrap();
    }
    // Ordinary traffic behind a Hop-by-Hop header still flows.
    let udp = tagged(vec![0x0f, 0xa0, 0x13, 0x88, 0, 24, 0, 0], 100);
    let tcp = tagged(
        vec![
            0x0f, 0xa0, 0x13, 0x88, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ],
        101,
    );
    a.send(&from_a6(MAC_B, "fd00::b", hbh, (IPPROTO_UDP, &udp)))
        .unwrap();
    a.send(&from_a6(MAC_B, "fd00::b", hbh, (IPPROTO_TCP, &tcp)))
        .unwrap();
    let all: Vec<u32> = (1..=9).chain([100, 101]).collect();
    let seen = tags_until(&mut b, &all, &[100, 101]);
    assert_eq!(
        seen,
        vec![100, 101],
        "only the UDP and TCP frames may arrive"
    );
    let st = s.wait_stats("a", "drops counted", |p| {
        p["drops"]["control"].as_u64() >= Some(control.len() as u64)
            && p["drops"]["malformed"].as_u64() >= Some(malformed.len() as u64)
    });
    assert_eq!(st["from_guest_frames"].as_u64(), Some(11), "{st}");
}

// Issue 11, finding 5: a port that routes a default route spoofing its peers.

#[test]
fn test_default_route_port_cannot_spoof_a_peer_source() {
    let s = two_ports("rpf");
    s.add_port(
        "r",
        MAC_C,
        &["10.0.0.254/24"],
        &["fd00::fe/64"],
        false,
        &["0.0.0.0/0", "::/0"],
    );
    let _a = s.guest("a");
    let mut b = s.guest("b");
    let mut r = s.guest("r");
    s.wait_mesh(&["a", "b", "r"]);
    // a's addresses as the source: spoofs.
    r.send(&udp4(MAC_C, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), 1))
        .unwrap();
    r.send(&udp6(MAC_C, MAC_B, v6("fd00::a"), v6("fd00::b"), 2))
        .unwrap();
    r.send(&udp4(
        MAC_C,
        frame::BROADCAST_MAC,
        v4("10.0.0.1"),
        v4("10.0.0.255"),
        3,
    ))
    .unwrap();
    // Its own addresses and addresses it genuinely routes for: fine.
    r.send(&udp4(MAC_C, MAC_B, v4("10.0.0.254"), v4("10.0.0.2"), 10))
        .unwrap();
    r.send(&udp4(MAC_C, MAC_B, v4("8.8.8.8"), v4("10.0.0.2"), 11))
        .unwrap();
    r.send(&udp6(MAC_C, MAC_B, v6("fd00::fe"), v6("fd00::b"), 12))
        .unwrap();
    r.send(&udp6(MAC_C, MAC_B, v6("2001:db8::1"), v6("fd00::b"), 13))
        .unwrap();
    let want = [10, 11, 12, 13];
    let mut seen = Vec::new();
    while !want.iter().all(|t| seen.contains(&Some(*t))) {
        let got = b.recv_timeout(5 * SECOND);
        assert!(
            !got.is_empty(),
            "legitimate frames never arrived: {seen:?}; stats {}",
            s.stats()
        );
        seen.extend(got.iter().map(|f| tag_of(f)));
    }
    seen.extend(b.recv_timeout(SECOND / 5).iter().map(|f| tag_of(f)));
    seen.sort();
    assert_eq!(
        seen,
        want.map(Some).to_vec(),
        "spoofed frames must not be delivered"
    );
    s.wait_stats("r", "spoofs counted", |p| {
        p["drops"]["spoof_ip"].as_u64() >= Some(3)
    });
}

/// A guest with TSO sends TCP segments (IPv4 and IPv6): a receiver with GUEST_TSO gets a
/// segment that fits its DQL budget whole with its segmentation header (a larger one is split,
/// with partial checksums); one without gets 64 KiB segments as MSS-sized frames whose
/// checksums verify and whose payload reassembles to the segment's. A header asking for
/// something invalid is dropped and counted as `bad_header`.
#[test]
fn test_tso_segments_go_whole_or_are_segmented_per_receiver() {
    use std::net::IpAddr;
    use vm_switch::frame::VnetHdr;
    use vm_switch::testing::{tcp_checksums_ok, tcp_segment};
    let s = SwitchProc::start("tso", &["--buffer-size", "1m"]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &["fd00::a/64"], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &["fd00::b/64"], false, &[]);
    s.add_port("c", MAC_C, &["10.0.0.3/24"], &["fd00::c/64"], false, &[]);
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    let mut c = s.guest_with(
        "c",
        GuestOptions {
            rx_offloads: false,
            ..GuestOptions::default()
        },
    );
    s.wait_mesh(&["a", "b", "c"]);
    let cases: [(IpAddr, IpAddr, IpAddr, usize, usize); 2] = [
        (
            v4("10.0.0.1").into(),
            v4("10.0.0.2").into(),
            v4("10.0.0.3").into(),
            2 * 1448,
            65535 - 20 - 32,
        ),
        (
            v6("fd00::a").into(),
            v6("fd00::b").into(),
            v6("fd00::c").into(),
            2 * 1428,
            65535 - 32,
        ),
    ];
    for (src, to_b, to_c, small, len) in cases {
        // Whole, to b: two MSS, within the initial DQL budget of two MTUs.
        let (f, h) = tcp_segment(MAC_A, MAC_B, src, to_b, small);
        assert!(a.queue_frame_hdr(h, &f));
        a.kick_tx();
        let (mut got, mut hdrs) = (Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + 5 * SECOND;
        while got.is_empty() && std::time::Instant::now() < deadline {
            b.poll_frames_hdr(&mut got, &mut hdrs);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(
            got.len(),
            1,
            "b gets the segment whole; stats {}",
            s.stats()
        );
        assert_eq!(got[0], f, "the segment arrives unchanged");
        let rh = VnetHdr::from_bytes(&hdrs[0]);
        let sh = VnetHdr::from_bytes(&h);
        assert_eq!(
            (
                rh.flags,
                rh.gso_type,
                rh.gso_size,
                rh.csum_start,
                rh.csum_offset
            ),
            (
                sh.flags,
                sh.gso_type,
                sh.gso_size,
                sh.csum_start,
                sh.csum_offset
            ),
            "segmentation header passed on"
        );
        assert_eq!(rh.hdr_len, sh.hdr_len, "exact header length");

        // A 64 KiB segment to b: beyond its DQL budget while it is idle, so it comes as
        // MSS frames with partial checksums (GUEST_CSUM); finished, they verify and
        // reassemble. (Whole, had DQL allowed it.)
        let (f, h) = tcp_segment(MAC_A, MAC_B, src, to_b, len);
        let hl = usize::from(VnetHdr::from_bytes(&h).hdr_len);
        assert!(a.queue_frame_hdr(h, &f));
        a.kick_tx();
        let (mut got, mut hdrs) = (Vec::new(), Vec::new());
        let mut payload = Vec::new();
        let deadline = std::time::Instant::now() + 5 * SECOND;
        while payload.len() < len && std::time::Instant::now() < deadline {
            got.clear();
            hdrs.clear();
            b.poll_frames_hdr(&mut got, &mut hdrs);
            for (g, hb) in got.iter_mut().zip(&hdrs) {
                let rh = VnetHdr::from_bytes(hb);
                if rh.gso_type != 0 {
                    assert_eq!(*g, f, "whole segment unchanged");
                } else {
                    assert_eq!(rh.flags, frame::VNET_F_NEEDS_CSUM, "partial checksum kept");
                    assert!(frame::finish_partial_csum(
                        g,
                        usize::from(rh.csum_start),
                        usize::from(rh.csum_offset)
                    ));
                    assert!(g.len() <= 1514);
                    assert!(tcp_checksums_ok(g), "finished checksums verify");
                }
                payload.extend_from_slice(&g[hl..]);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(payload, f[hl..], "payload reassembles at b");

        // Segmented in software, to c (no receive offloads: full checksums).
        let (f, h) = tcp_segment(MAC_A, MAC_C, src, to_c, len);
        let mss = usize::from(VnetHdr::from_bytes(&h).gso_size);
        let want = len.div_ceil(mss);
        assert!(a.queue_frame_hdr(h, &f));
        a.kick_tx();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + 5 * SECOND;
        while got.len() < want && std::time::Instant::now() < deadline {
            c.poll_frames(&mut got);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(got.len(), want, "c gets MSS frames; stats {}", s.stats());
        let hl = usize::from(VnetHdr::from_bytes(&h).hdr_len);
        let mut payload = Vec::new();
        for g in &got {
            assert!(g.len() <= 1514);
            assert!(tcp_checksums_ok(g), "checksums verify");
            payload.extend_from_slice(&g[hl..]);
        }
        assert_eq!(payload, f[hl..], "payload reassembles");
    }
    // Per IP version, one segment split for b (larger than its idle DQL limit, so it could
    // never go whole there) and one for c (no offload); none waited (b's limit is too small
    // for a 64 KiB segment ever to fit).
    for (port, split) in [("b", 2), ("c", 2)] {
        let st = s.port_stats(port);
        assert_eq!(st["segments_split"].as_u64(), Some(split), "{port}: {st}");
        assert_eq!(st["segments_waited"].as_u64(), Some(0), "{port}: {st}");
    }

    // A bad header: gso_size below TCP_MIN_MSS.
    let before = s.port_stats("b")["to_guest_frames"].as_u64();
    let (f, mut h) = tcp_segment(
        MAC_A,
        MAC_B,
        v4("10.0.0.1").into(),
        v4("10.0.0.2").into(),
        9000,
    );
    h[4..6].copy_from_slice(&10u16.to_le_bytes());
    assert!(a.queue_frame_hdr(h, &f));
    a.kick_tx();
    s.wait_stats("a", "bad header counted", |p| {
        p["drops"]["bad_header"].as_u64() == Some(1)
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        s.port_stats("b")["to_guest_frames"].as_u64(),
        before,
        "nothing more reached b"
    );
}

/// The TX fast path: a frame whose headers lie within the head vm-switch copies first goes
/// from guest memory straight into the destination's ring (`tx_direct`), byte for byte, also
/// when it spans several descriptors. One whose headers run past that head (a long
/// Destination Options header) is copied out whole, checked, and forwarded the same.
#[test]
fn test_long_frames_go_straight_into_the_ring_unless_their_headers_run_past_the_head() {
    use frame::{IPPROTO_DSTOPTS, IPPROTO_UDP};
    use vm_switch::testing::tcp_segment;
    let s = two_ports("txdirect");
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    let udp = |len: usize| {
        let mut m = vec![0, 1, 0, 2];
        m.extend_from_slice(&((8 + len) as u16).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend((0..len).map(|i| (i * 7 + i / 251) as u8));
        m
    };
    // 262 bytes of options (PadN 255 + PadN 3): a 264-byte header, past a 256-byte head.
    let mut opts = vec![0u8; 264];
    opts[1] = 32;
    opts[2..4].copy_from_slice(&[1, 255]);
    opts[259..261].copy_from_slice(&[1, 3]);
    // A TSO segment of two MSS (whole to b, within its first DQL budget), over two
    // descriptors.
    let (seg, seg_hdr) = tcp_segment(
        MAC_A,
        MAC_B,
        v6("fd00::a").into(),
        v6("fd00::b").into(),
        2 * 1428,
    );
    let cases = [
        (
            from_a6(MAC_B, "fd00::b", &[], (IPPROTO_UDP, &udp(1400))),
            [0; 12],
            true,
        ),
        (seg, seg_hdr, true),
        (
            from_a6(
                MAC_B,
                "fd00::b",
                &[(IPPROTO_DSTOPTS, &opts)],
                (IPPROTO_UDP, &udp(1000)),
            ),
            [0; 12],
            false,
        ),
    ];
    for (f, hdr, direct) in cases {
        let before = s.port_stats("a")["tx_direct"].as_u64().unwrap();
        assert!(a.queue_frame_hdr(hdr, &f));
        a.kick_tx();
        let got = b.recv_matching(5 * SECOND, |g| g.len() == f.len());
        assert!(
            got.as_deref() == Some(&f[..]),
            "a {}-byte frame arrives unchanged; stats {}",
            f.len(),
            s.stats()
        );
        let after = s.port_stats("a")["tx_direct"].as_u64().unwrap();
        assert_eq!(
            after - before,
            u64::from(direct),
            "a {}-byte frame straight into the ring: {direct}",
            f.len()
        );
    }
}

/// Back-pressure: with a ring of two slots between a and b, a burst far larger than the ring
/// is not dropped at the sender (`ring_full`): the chains wait in a's TX queue until b's child
/// has made room, and every frame arrives, in order.
#[test]
fn test_full_ring_holds_the_senders_tx_chains_instead_of_dropping() {
    let s = SwitchProc::start("backpressure", &["--buffer-size", "4k"]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &["fd00::a/64"], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &["fd00::b/64"], false, &[]);
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    const N: u32 = 2000;
    let mut next = 0u32;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + 20 * SECOND;
    while (got.len() as u32) < N && std::time::Instant::now() < deadline {
        let mut queued = false;
        while next < N && a.queue_frame(&udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), next)) {
            next += 1;
            queued = true;
        }
        if queued {
            a.kick_tx();
        }
        let mut frames = Vec::new();
        b.poll_frames(&mut frames);
        got.extend(frames.iter().filter_map(|f| tag_of(f)));
        std::thread::yield_now();
    }
    let stats = s.port_stats("a");
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every frame arrives, in order; a: {stats}, b: {}",
        s.port_stats("b")
    );
    assert_eq!(stats["drops"]["ring_full"].as_u64(), Some(0));
}

/// A kick lost between the guest and vm-switch (seen under QEMU/TCG, where it stranded a TCP
/// connection for good) does not strand the guest's TX chains: after 10 ms of TX quiet the
/// watchdog looks at the queue again and forwards what was posted.
#[test]
fn test_tx_chains_posted_without_a_kick_are_taken_by_the_watchdog() {
    let s = SwitchProc::start("txwatchdog", &[]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &["fd00::a/64"], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &["fd00::b/64"], false, &[]);
    let mut a = s.guest("a");
    let mut b = s.guest("b");
    s.wait_mesh(&["a", "b"]);
    let frame = |tag| udp4(MAC_A, MAC_B, v4("10.0.0.1"), v4("10.0.0.2"), tag);
    a.send(&frame(1)).unwrap();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(1))
            .is_some(),
        "the kicked frame arrives"
    );
    assert!(a.queue_frame(&frame(2)));
    a.publish_tx_without_kick();
    assert!(
        b.recv_matching(5 * SECOND, |f| tag_of(f) == Some(2))
            .is_some(),
        "a frame posted without a kick arrives; a: {}",
        s.port_stats("a")
    );
    assert_eq!(s.port_stats("a")["tx_rescue_kicks"].as_u64(), Some(1));
}
