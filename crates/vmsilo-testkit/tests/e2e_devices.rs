//! End-to-end tests of the harness's devices with real guests: two guests on a vhost-user-net
//! hub, vsock both ways through vhost-device-vsock, the balloon through QMP, and a tap device
//! plus a virtiofs share from the host.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use vmsilo_testkit::hub::VhostNetHub;
use vmsilo_testkit::{Guest, ImageSpec, QemuBuilder, ScratchDir};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn mem_total_kib(guest: &Guest) -> u64 {
    let out = guest.run_ok("grep MemTotal: /proc/meminfo", T).unwrap();
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected meminfo line {out:?}"))
}

/// Two guests, each with a vhost-user-net NIC on a hub the test runs, configured only through
/// the vmsilo.* kernel parameters; one pings the other over IPv4 and IPv6.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_two_guests_on_a_vhost_user_net_hub_ping_each_other() {
    let dir = ScratchDir::new("hub").unwrap();
    // Declared before the guests, so it outlives them.
    let hub = VhostNetHub::start(dir.path(), 2).unwrap();
    // iperf3 and its libraries come from the host, for a bulk transfer over the hub.
    let image = ImageSpec::new().program("iperf3").build().unwrap();
    let guest = |name: &str, port: usize, n: u8| {
        let mac = format!("52:54:00:12:34:0{n}");
        QemuBuilder::new(&image)
            .name(name)
            .vhost_user_net(hub.socket(port), mac.as_str())
            .kernel_param(format!("vmsilo.ifname=lan,{mac}"))
            .kernel_param(format!("vmsilo.addr=lan,10.0.0.{n}/24"))
            .kernel_param(format!("vmsilo.addr=lan,fd00::{n}/64"))
            .kernel_param("vmsilo.route=lan,10.9.0.0/16,10.0.0.254")
            .kernel_param("vmsilo.nameserver=10.0.0.53")
            .spawn()
            .unwrap()
    };
    // Boot both at once.
    let mut a = guest("net-a", 0, 1);
    let mut b = guest("net-b", 1, 2);
    a.wait_ready(vmsilo_testkit::qemu::DEFAULT_READY_TIMEOUT)
        .unwrap();
    b.wait_ready(vmsilo_testkit::qemu::DEFAULT_READY_TIMEOUT)
        .unwrap();

    // /init applied every parameter.
    let link = a.run_ok("cat /sys/class/net/lan/address", T).unwrap();
    assert_eq!(link.trim(), "52:54:00:12:34:01");
    let addrs = a.run_ok("ip -o addr show dev lan", T).unwrap();
    assert!(addrs.contains("inet 10.0.0.1/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00::1/64"), "{addrs}");
    let routes = a.run_ok("ip route", T).unwrap();
    assert!(
        routes.contains("10.9.0.0/16 via 10.0.0.254 dev lan"),
        "{routes}"
    );
    let resolv = a.run_ok("cat /etc/resolv.conf", T).unwrap();
    assert_eq!(resolv, "nameserver 10.0.0.53\n");

    let v4 = a.run("ping -c 3 -w 30 10.0.0.2", T).unwrap();
    assert!(v4.success(), "{}", v4.stdout);
    assert!(v4.stdout.contains("3 packets received"), "{}", v4.stdout);
    let v6 = b.run("ping6 -c 2 -w 30 fd00::1", T).unwrap();
    assert!(v6.success(), "{}", v6.stdout);
    assert!(v6.stdout.contains("2 packets received"), "{}", v6.stdout);
    // Every echo and reply crossed the hub (plus ARP and neighbour discovery).
    assert!(hub.forwarded() >= 10, "{hub:?}");

    // Full-size frames in bulk, both ways (TCP data one way, ACKs the other).
    // iperf3 -D returns before it listens: wait (bounded) until the port is open.
    b.run_ok(
        "iperf3 -s -D -1 >/dev/null 2>&1; i=0; until netstat -ltn | grep -q ':5201 '; do i=$((i+1)); [ $i -ge 100 ] && break; sleep 0.1; done; netstat -ltn | grep -q ':5201 '",
        T,
    )
    .unwrap();
    let bulk = a
        .run("iperf3 -c 10.0.0.2 -t 2 -J", Duration::from_secs(60))
        .unwrap();
    assert!(bulk.success(), "{}", bulk.stdout);
    let report: serde_json::Value = serde_json::from_str(&bulk.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J output is not JSON ({e}):\n{}", bulk.stdout));
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    // At least 1 MiB arrived (no speed assertion: that is TCG's business).
    assert!(received >= 1 << 20, "{}", bulk.stdout);
    assert!(hub.forwarded() > 700, "{hub:?}");

    a.shutdown(T).unwrap();
    b.shutdown(T).unwrap();
}

/// Bytes both ways over vsock between the test and processes in the guest: the test connects
/// to a guest listener (hybrid vsock CONNECT), and a guest program connects to the host.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_vsock_carries_bytes_both_ways() {
    let image = ImageSpec::new().program("socat").build().unwrap();
    let guest = QemuBuilder::new(&image)
        .name("vsock")
        .vsock(3)
        .start()
        .unwrap();

    // Host -> guest: a guest process upper-cases what it reads and sends it back.
    guest
        .run_ok(
            "socat VSOCK-LISTEN:1234,reuseaddr,fork EXEC:'tr a-z A-Z' >/tmp/socat.log 2>&1 &",
            T,
        )
        .unwrap();
    let mut s = guest.vsock_connect_timeout(1234, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let payload: Vec<u8> = (0..65_536u32)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[(i % 27) as usize])
        .collect();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&payload));
    let mut back = vec![0u8; 65_536];
    s.read_exact(&mut back).unwrap();
    sender.join().unwrap().unwrap();
    let expected: Vec<u8> = (0..65_536u32)
        .map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"[(i % 27) as usize])
        .collect();
    assert!(
        back == expected,
        "the guest's reply differs from the upper-cased payload"
    );
    drop(s);

    // Guest -> host: the host listens on <uds>_6000 before the guest connects to CID 2.
    let listener = guest.vsock_listen(6000).unwrap();
    let host = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(T)).unwrap();
        let mut line = String::new();
        BufReader::new(conn.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (&conn)
            .write_all(format!("from-host: {}", line.to_uppercase()).as_bytes())
            .unwrap();
        line
    });
    let out = guest
        .run_ok(
            "(echo ping-from-guest-$(uname -r); sleep 2) | socat -t 10 - VSOCK-CONNECT:2:6000",
            T,
        )
        .unwrap();
    let got = host.join().unwrap();
    assert_eq!(
        got.trim_end(),
        format!("ping-from-guest-{}", image.kernel_version)
    );
    assert!(
        out.contains(&format!(
            "from-host: PING-FROM-GUEST-{}",
            image.kernel_version.to_uppercase()
        )),
        "{out}"
    );

    guest.shutdown(T).unwrap();
}

/// Inflating the balloon through QMP shrinks the guest's memory, as the guest itself sees it;
/// deflating gives it back.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_balloon_inflation_through_qmp_shrinks_guest_memory() {
    let image = ImageSpec::new().build().unwrap();
    let guest = QemuBuilder::new(&image)
        .name("balloon")
        .memory_mib(256)
        .balloon()
        .start()
        .unwrap();
    let mut qmp = guest.qmp().unwrap();
    assert_eq!(qmp.query_balloon().unwrap(), 256 * MIB);
    let before = mem_total_kib(&guest);

    qmp.balloon(192 * MIB).unwrap();
    qmp.wait_balloon(192 * MIB, T).unwrap();
    let inflated = mem_total_kib(&guest);
    assert_eq!(
        before - inflated,
        64 * 1024,
        "MemTotal {before} -> {inflated} kB"
    );

    // With polling on, the driver's statistics catch up with the shrunk size (until the first
    // poll QEMU may still hold the report the driver sent when it started).
    qmp.set_balloon_stats_interval(1).unwrap();
    let mut total = u64::MAX;
    for _ in 0..100 {
        let stats = qmp.balloon_stats().unwrap();
        total = stats["stats"]["stat-total-memory"]
            .as_u64()
            .unwrap_or(u64::MAX);
        if total == inflated * 1024 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(total, inflated * 1024);

    qmp.balloon(256 * MIB).unwrap();
    qmp.wait_balloon(256 * MIB, T).unwrap();
    assert_eq!(mem_total_kib(&guest), before);
    let events = qmp.take_events();
    assert!(
        events.iter().any(|e| e["event"] == "BALLOON_CHANGE"),
        "{events:?}"
    );
    drop(qmp);

    guest.shutdown(T).unwrap();
}

/// A network namespace for the test, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new() -> NetNs {
        let name = format!("vmtk-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        NetNs(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Host resources handed to a guest: a tap device (QEMU runs in a network namespace the test
/// made, so the host's own network is untouched) and a host directory through virtiofsd.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_tap_network_and_virtiofs_share_reach_the_host() {
    let ns = NetNs::new();
    let share = ScratchDir::new("share").unwrap();
    std::fs::write(share.path().join("hello.txt"), "hello from the host\n").unwrap();
    let image = ImageSpec::new().build().unwrap();
    let guest = QemuBuilder::new(&image)
        .name("hostdev")
        .netns(&ns.0)
        .tap("tap0", "52:54:00:aa:00:02")
        .kernel_param("vmsilo.ifname=wan,52:54:00:aa:00:02")
        .kernel_param("vmsilo.addr=wan,10.213.0.2/24")
        .virtiofs(share.path(), "share")
        .start()
        .unwrap();

    // QEMU created tap0 in the namespace; give the host side an address.
    ip(&["-n", &ns.0, "addr", "add", "10.213.0.1/24", "dev", "tap0"]);
    ip(&["-n", &ns.0, "link", "set", "tap0", "up"]);
    let out = guest.run("ping -c 3 -w 30 10.213.0.1", T).unwrap();
    assert!(out.success(), "{}", out.stdout);
    let host_ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "10",
            "10.213.0.2",
        ])
        .output()
        .unwrap();
    assert!(host_ping.status.success(), "{host_ping:?}");

    guest
        .run_ok(
            "mkdir -p /mnt/share && mount -t virtiofs share /mnt/share",
            T,
        )
        .unwrap();
    let hello = guest.run_ok("cat /mnt/share/hello.txt", T).unwrap();
    assert_eq!(hello, "hello from the host\n");
    guest
        .run_ok("echo written-by-guest > /mnt/share/back.txt && sync", T)
        .unwrap();
    let back = std::fs::read_to_string(share.path().join("back.txt")).unwrap();
    assert_eq!(back, "written-by-guest\n");
    guest.run_ok("umount /mnt/share", T).unwrap();

    guest.shutdown(T).unwrap();
}
