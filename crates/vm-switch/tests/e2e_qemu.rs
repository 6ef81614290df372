//! End-to-end: two QEMU/TCG guests with the Debian kernel's virtio-net driver talk through
//! vm-switch (sandbox on, seccomp `kill`): ping over IPv4 and IPv6, then iperf3.

mod common;

use std::time::Duration;

use common::*;
use vmsilo_testkit::{Guest, ImageSpec, QemuBuilder};

const T: Duration = Duration::from_secs(60);
/// Starts a one-shot iperf3 server in the guest and waits (up to 10 s) until it listens.
const IPERF_SERVER: &str = "iperf3 -s -D -1 >/dev/null 2>&1; i=0; until netstat -ltn | grep -q ':5201 '; do i=$((i+1)); [ $i -ge 100 ] && break; sleep 0.1; done; netstat -ltn | grep -q ':5201 '";

fn guest(
    image: &vmsilo_testkit::GuestImage,
    s: &SwitchProc,
    name: &str,
    mac: &str,
    n: u8,
) -> Guest {
    QemuBuilder::new(image)
        .name(name)
        .memory_mib(256)
        .vhost_user_net(s.sock(name), mac)
        .kernel_param(format!("vmsilo.ifname=lan,{mac}"))
        .kernel_param(format!("vmsilo.addr=lan,10.0.0.{n}/24"))
        .kernel_param(format!("vmsilo.addr=lan,fd00::{n}/64"))
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_e2e_two_guests_ping_v4_v6_and_iperf3_through_vm_switch() {
    let image = ImageSpec::new().program("iperf3").build().unwrap();
    let s = SwitchProc::start("e2e", &["--seccomp-mode", "kill"]);
    s.add_port("a", MAC_A, &["10.0.0.1/24"], &["fd00::1/64"], false, &[]);
    s.add_port("b", MAC_B, &["10.0.0.2/24"], &["fd00::2/64"], true, &[]);
    s.wait_for(&s.sock("a"));
    s.wait_for(&s.sock("b"));
    let mac_a = vm_switch::frame::format_mac(MAC_A);
    let mac_b = vm_switch::frame::format_mac(MAC_B);
    let mut a = guest(&image, &s, "a", &mac_a, 1);
    let mut b = guest(&image, &s, "b", &mac_b, 2);
    a.wait_ready(Duration::from_secs(240)).unwrap();
    b.wait_ready(Duration::from_secs(240)).unwrap();
    s.wait_mesh(&["a", "b"]);

    // The driver negotiated what the switch offers (sysfs: character i = feature bit i).
    let features = a
        .run_ok("cat /sys/class/net/lan/device/features", T)
        .unwrap();
    let bit = |i: usize| features.trim().as_bytes().get(i) == Some(&b'1');
    assert!(bit(15), "MRG_RXBUF not negotiated: {features}");
    assert!(bit(29), "EVENT_IDX not negotiated: {features}");
    assert!(bit(32), "VERSION_1 not negotiated: {features}");
    assert!(
        bit(0) && bit(1),
        "checksum offload not negotiated: {features}"
    );

    let out = a.run("ping -c 3 -W 5 10.0.0.2", T).unwrap();
    assert!(
        out.success(),
        "IPv4 ping failed:\n{}\nswitch log:\n{}",
        out.stdout,
        s.log()
    );
    assert!(out.stdout.contains("3 packets received"), "{}", out.stdout);

    // Wait for duplicate address detection to finish, then ping over IPv6.
    let out = a
        .run(
            "for i in $(seq 1 20); do ip -6 addr show dev lan | grep -q tentative || break; sleep 0.5; done; \
             ok=1; for i in 1 2 3; do ping -6 -c 3 -W 3 fd00::2 && { ok=0; break; }; sleep 1; done; \
             ip -6 addr show dev lan; ip -6 neigh; test $ok = 0",
            Duration::from_secs(120),
        )
        .unwrap();
    assert!(
        out.success(),
        "IPv6 ping failed:\n{}\nstats: {}\nswitch log:\n{}",
        out.stdout,
        s.stats(),
        s.log()
    );

    // iperf3 -D returns before it listens: wait (bounded) until the port is open.
    b.run_ok(IPERF_SERVER, T).unwrap();
    let out = a
        .run("iperf3 -c 10.0.0.2 -t 5 -f m", Duration::from_secs(90))
        .unwrap();
    assert!(out.success(), "iperf3 failed:\n{}", out.stdout);
    let receiver = out
        .stdout
        .lines()
        .find(|l| l.contains("receiver"))
        .unwrap_or_else(|| panic!("no receiver line:\n{}", out.stdout));
    let mbits: f64 = receiver
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "Mbits/sec")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0.0);
    assert!(mbits > 0.0, "no throughput: {receiver}");
    eprintln!("iperf3 a -> b through vm-switch: {mbits} Mbit/s");
    // Every frame vm-switch wrote into b's mergeable RX buffers was whole when the driver
    // saw it: Linux counts a frame whose used elements were not all published yet as a
    // length error ("buffers missing") and drops it.
    let errs = b
        .run_ok(
            "cat /sys/class/net/lan/statistics/rx_length_errors \
             /sys/class/net/lan/statistics/rx_frame_errors",
            T,
        )
        .unwrap();
    assert_eq!(
        errs.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "b's driver dropped frames as malformed (rx_length_errors, rx_frame_errors)"
    );

    let sa = s.port_stats("a");
    let sb = s.port_stats("b");
    assert!(sb["to_guest_bytes"].as_u64() > Some(1_000_000), "{sb}");
    assert_eq!(sa["drops"]["spoof_mac"], 0, "{sa}");
    assert_eq!(sa["drops"]["spoof_ip"], 0, "{sa}");
    assert!(
        sa["proxy_replies"].as_u64() >= Some(2),
        "ARP and NDP answered by proxy: {sa}"
    );
    a.shutdown(Duration::from_secs(30)).ok();
    b.shutdown(Duration::from_secs(30)).ok();
}
