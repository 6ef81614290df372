//! End-to-end test of host networking without NixOS: `vmsilo net up` (what vmsilo-net.service
//! runs) in a network namespace standing in for the host, a QEMU/TCG guest on the TAP it made,
//! and a second namespace standing in for the internet behind the host's NAT interface.
//! Needs root (skipped otherwise). Addresses: 10.217.0.0/16 (no other test uses it).

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{NetNs, Scratch, ip, root_or_skip, vmsilo_bin};
use vmsilo_testkit::{ImageSpec, QemuBuilder};

const T: Duration = Duration::from_secs(60);

const CONFIG: &str = r#"
enable = true
user = "nobody"
hostNetworking.nat = { enable = true, interface = "e2e-up" }
[[nixosVms]]
name = "work"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.wan]
type = "tap"
tap.name = "e2e-work"
tap.hostAddress = "10.217.1.254/24"
addresses = ["10.217.1.2/24"]
routes."0.0.0.0/0".via = "10.217.1.254"
"#;

fn net(ns: &NetNs, dir: &Scratch, config: &Path, action: &str) -> Output {
    ns.exec(&vmsilo_bin())
        .arg("--config")
        .arg(config)
        .args(["net", action, "--run-dir", dir.str()])
        .env("VMSILO_HOST_SETUP", "vmsilo")
        .output()
        .expect("vmsilo net")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The guest pings its TAP's hostAddress, then (through forwarding and the NAT table) an
/// address in the "internet" namespace, which has no route back to the guest's network: only
/// a masqueraded packet can be answered. After the guest stops, `vmsilo net down` leaves the
/// host namespace as it was.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_guest_on_a_vmsilo_tap_reaches_its_host_address_and_the_internet_through_nat() {
    if !root_or_skip("guest on a vmsilo TAP") {
        return;
    }
    let host = NetNs::new("e2enet-host");
    let inet = NetNs::new("e2enet-inet");
    let dir = Scratch::new("e2enet");
    let cfg = dir.path().join("vmsilo.toml");
    std::fs::write(&cfg, CONFIG).expect("config");

    // The host's uplink: a veth pair into the "internet", which knows only its own network.
    ip(&[
        "-n", &host.0, "link", "add", "e2e-up", "type", "veth", "peer", "name", "e2e-peer",
        "netns", &inet.0,
    ]);
    ip(&[
        "-n",
        &host.0,
        "addr",
        "add",
        "10.217.9.1/24",
        "dev",
        "e2e-up",
    ]);
    ip(&["-n", &host.0, "link", "set", "e2e-up", "up"]);
    ip(&[
        "-n",
        &inet.0,
        "addr",
        "add",
        "10.217.9.9/24",
        "dev",
        "e2e-peer",
    ]);
    ip(&["-n", &inet.0, "link", "set", "e2e-peer", "up"]);
    let host_before = host.nft_ruleset();
    let links_before = host.links();
    assert_eq!(host.ip_forward(), "0");

    let up = net(&host, &dir, &cfg, "up");
    assert!(up.status.success(), "{}", text(&up));
    assert_eq!(
        host.sys("class/net/e2e-work/owner").as_deref(),
        Some("65534")
    );

    let image = ImageSpec::new().build().expect("guest image");
    let mac = "52:54:00:21:70:02";
    let guest = QemuBuilder::new(&image)
        .name("e2enet")
        .netns(&host.0)
        .tap("e2e-work", mac)
        .kernel_param(format!("vmsilo.ifname=wan,{mac}"))
        .kernel_param("vmsilo.addr=wan,10.217.1.2/24")
        .kernel_param("vmsilo.route=wan,default,10.217.1.254")
        .start()
        .expect("guest");

    let to_host = guest
        .run("ping -c 3 -w 30 10.217.1.254", T)
        .expect("ping host");
    assert!(to_host.success(), "ping hostAddress: {}", to_host.stdout);
    let to_inet = guest
        .run("ping -c 3 -w 30 10.217.9.9", T)
        .expect("ping inet");
    assert!(
        to_inet.success(),
        "ping through NAT: {}\nhost ruleset:\n{}",
        to_inet.stdout,
        host.nft_ruleset()
    );
    guest.shutdown(T).expect("guest shutdown");

    let down = net(&host, &dir, &cfg, "down");
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(host.sys("class/net/e2e-work/owner"), None, "TAP gone");
    assert_eq!(host.ip_forward(), "0", "forwarding back off");
    assert_eq!(host.nft_ruleset(), host_before, "table gone");
    assert!(!dir.path().join("net.json").exists(), "record gone");
    assert_eq!(
        host.links(),
        links_before,
        "the host's interfaces as before"
    );
}
