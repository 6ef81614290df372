//! Component tests of `vmsilo net up|down` against a real kernel, inside network namespaces the
//! tests create (the machine's own network is untouched): TAPs owned by the user, host
//! addresses, a port of an existing bridge, forwarding and the nftables table; idempotence;
//! down removing exactly what up made; the errors that stop `up` before any change.
//! Needs root; skipped otherwise. Addresses: 10.216.0.0/16 (no other test uses it).

mod common;

use std::path::Path;
use std::process::Output;

use common::{NetNs, Scratch, ip, root_or_skip, vmsilo_bin};

const CONFIG: &str = r#"
enable = true
user = "nobody"
hostNetworking.nat = { enable = true, interface = "uplink" }
[[nixosVms]]
name = "work"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.wan]
type = "tap"
tap.name = "nt-work"
tap.hostAddress = "10.216.1.254/24"
addresses = ["10.216.1.2/24"]
[[nixosVms]]
name = "lan"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
[nixosVms.network.interfaces.eth]
type = "tap"
tap.name = "nt-lan"
tap.bridge = "nt-br"
"#;

fn net(ns: &NetNs, dir: &Scratch, config: &Path, args: &[&str]) -> Output {
    ns.exec(&vmsilo_bin())
        .arg("--config")
        .arg(config)
        .arg("net")
        .args(args)
        .args(["--run-dir", dir.str(), "--uid", "65534", "--gid", "65534"])
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

fn setup(label: &str, config: &str) -> (NetNs, Scratch, std::path::PathBuf) {
    let ns = NetNs::new(label);
    let dir = Scratch::new(label);
    let cfg = dir.path().join("vmsilo.toml");
    std::fs::write(&cfg, config).expect("config");
    (ns, dir, cfg)
}

#[test]
fn test_net_up_creates_taps_bridge_port_forwarding_and_nat_and_down_undoes_exactly_that() {
    if !root_or_skip("net up/down") {
        return;
    }
    let (ns, dir, cfg) = setup("nt-updown", CONFIG);
    ip(&["-n", &ns.0, "link", "add", "nt-br", "type", "bridge"]);
    assert_eq!(ns.ip_forward(), "0");
    let links_before = ns.links();

    let o = net(&ns, &dir, &cfg, &["up"]);
    assert!(o.status.success(), "{}", text(&o));
    // Persistent TAPs owned by the configured user, up.
    assert_eq!(ns.sys("class/net/nt-work/owner").as_deref(), Some("65534"));
    assert_eq!(ns.sys("class/net/nt-lan/owner").as_deref(), Some("65534"));
    // IFF_TAP | IFF_PERSIST | IFF_NO_PI, as `ip tuntap add mode tap` makes them.
    assert_eq!(
        ns.sys("class/net/nt-work/tun_flags").as_deref(),
        Some("0x1802")
    );
    let flags = ns.sys("class/net/nt-work/flags").expect("flags");
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).expect("hex");
    assert_eq!(flags & 1, 1, "nt-work is up");
    // The bridge port.
    let master = ns
        .sys_link("class/net/nt-lan/master")
        .expect("nt-lan has a master");
    assert!(master.ends_with("/nt-br"), "{master}");
    // The host address.
    let addr = ns
        .exec(Path::new("ip"))
        .args(["-4", "-o", "addr", "show", "dev", "nt-work"])
        .output()
        .expect("ip addr");
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("inet 10.216.1.254/24"),
        "{}",
        text(&addr)
    );
    // Forwarding and the NAT table.
    assert_eq!(ns.ip_forward(), "1");
    let rules = ns.nft_ruleset();
    assert!(rules.contains("table inet vmsilo"), "{rules}");
    assert!(
        rules.contains("oifname \"uplink\" ip saddr 10.216.1.0/24 masquerade"),
        "{rules}"
    );
    assert!(dir.path().join("net.json").is_file());

    // Up twice = up once: the second plans only the (same) table, and changes nothing.
    let record = std::fs::read_to_string(dir.path().join("net.json")).expect("record");
    let dry = net(&ns, &dir, &cfg, &["up", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    let planned = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert_eq!(planned.lines().count(), 1, "{planned}");
    assert!(planned.starts_with("nft -j -f -"), "{planned}");
    let again = net(&ns, &dir, &cfg, &["up"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("net.json")).expect("record"),
        record
    );
    assert_eq!(ns.nft_ruleset(), rules);

    // Down: the TAPs, the table and forwarding go; the bridge (not vmsilo's) stays.
    let down = net(&ns, &dir, &cfg, &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(ns.sys("class/net/nt-work/owner"), None);
    assert_eq!(ns.sys("class/net/nt-lan/owner"), None);
    assert!(ns.sys("class/net/nt-br/bridge/stp_state").is_some());
    assert_eq!(ns.links(), links_before);
    assert_eq!(ns.ip_forward(), "0");
    assert!(!ns.nft_ruleset().contains("vmsilo"));
    assert!(!dir.path().join("net.json").exists());
    // Down again: nothing left to do.
    let twice = net(&ns, &dir, &cfg, &["down"]);
    assert!(twice.status.success(), "{}", text(&twice));
}

#[test]
fn test_net_up_with_a_missing_bridge_says_which_vm_and_option_and_changes_nothing() {
    if !root_or_skip("net up missing bridge") {
        return;
    }
    let (ns, dir, cfg) = setup("nt-nobr", CONFIG);
    let o = net(&ns, &dir, &cfg, &["up"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "vmsilo: VM \"lan\": network.interfaces.eth.tap.bridge: bridge \"nt-br\" does not \
             exist; create it or remove the option"
        ),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(ns.sys("class/net/nt-work/owner"), None);
    assert_eq!(ns.ip_forward(), "0");
    assert!(!dir.path().join("net.json").exists());
}

#[test]
fn test_net_up_keeps_a_pre_existing_tap_and_forwarding_and_down_leaves_them() {
    if !root_or_skip("net pre-existing") {
        return;
    }
    let config = CONFIG.replace(
        "tap.bridge = \"nt-br\"",
        "tap.hostAddress = \"10.216.2.254/24\"",
    );
    let (ns, dir, cfg) = setup("nt-pre", &config);
    ip(&[
        "-n", &ns.0, "tuntap", "add", "nt-work", "mode", "tap", "user", "65534",
    ]);
    ns.exec(Path::new("sh"))
        .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        .status()
        .expect("sysctl");
    let o = net(&ns, &dir, &cfg, &["up"]);
    assert!(o.status.success(), "{}", text(&o));
    let down = net(&ns, &dir, &cfg, &["down"]);
    assert!(down.status.success(), "{}", text(&down));
    // The TAP vmsilo found stays (without the address vmsilo added), the one it made goes.
    assert_eq!(ns.sys("class/net/nt-work/owner").as_deref(), Some("65534"));
    assert_eq!(ns.sys("class/net/nt-lan/owner"), None);
    let addr = ns
        .exec(Path::new("ip"))
        .args(["-4", "-o", "addr", "show", "dev", "nt-work"])
        .output()
        .expect("ip addr");
    assert!(addr.stdout.is_empty(), "{}", text(&addr));
    assert_eq!(ns.ip_forward(), "1");
}

#[test]
fn test_net_up_refuses_a_tap_owned_by_another_user() {
    if !root_or_skip("net foreign tap") {
        return;
    }
    let (ns, dir, cfg) = setup("nt-foreign", CONFIG);
    ip(&["-n", &ns.0, "link", "add", "nt-br", "type", "bridge"]);
    ip(&[
        "-n", &ns.0, "tuntap", "add", "nt-work", "mode", "tap", "user", "0",
    ]);
    let o = net(&ns, &dir, &cfg, &["up"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the TAP \"nt-work\" exists and is owned by uid 0, not by \"nobody\""),
        "{err}"
    );
    assert_eq!(ns.sys("class/net/nt-lan/owner"), None, "nothing created");
}

#[test]
fn test_net_up_without_nft_changes_nothing_and_a_failing_nft_is_rolled_back() {
    if !root_or_skip("net up rollback") {
        return;
    }
    let (ns, dir, cfg) = setup("nt-rollback", CONFIG);
    ip(&["-n", &ns.0, "link", "add", "nt-br", "type", "bridge"]);
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let ip_path = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("ip");
    std::os::unix::fs::symlink(ip_path, bin.join("ip")).expect("symlink");
    let up = || {
        ns.exec(&vmsilo_bin())
            .arg("--config")
            .arg(&cfg)
            .args([
                "net",
                "up",
                "--run-dir",
                dir.str(),
                "--uid",
                "65534",
                "--gid",
                "65534",
            ])
            .env("VMSILO_HOST_SETUP", "vmsilo")
            .env("PATH", &bin)
            .output()
            .expect("vmsilo net")
    };
    let nothing_left = || {
        assert_eq!(ns.sys("class/net/nt-work/owner"), None);
        assert_eq!(ns.sys("class/net/nt-lan/owner"), None);
        assert_eq!(ns.ip_forward(), "0");
        assert!(!dir.path().join("net.json").exists());
    };
    // A PATH with `ip` but without `nft`: refused before any change.
    let o = up();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nft is not installed"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    nothing_left();
    // An `nft` that fails: the table, the last operation, fails after the TAPs and forwarding
    // were made, and they are rolled back.
    std::fs::write(
        bin.join("nft"),
        "#!/bin/sh\necho 'Error: no nf_tables here' >&2\nexit 1\n",
    )
    .expect("fake nft");
    std::fs::set_permissions(
        bin.join("nft"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let o = up();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Error: no nf_tables here"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    nothing_left();
}
