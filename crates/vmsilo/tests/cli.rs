//! Runs the real `vmsilo` binary: `check` and `plan` on the shipped examples, exit codes (0 ok,
//! 2 invalid configuration or usage) and messages on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `vmsilo args...`. The host is taken as a NixOS one (no host checks, whose results depend
/// on this machine's interfaces); the tests of those checks ask for them.
fn vmsilo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(args)
        .env_remove("VMSILO_CONFIG")
        .env_remove("VMSILO_RUN_DIR")
        .env_remove("VMSILO_SYSFS_ROOT")
        .env("VMSILO_HOST_SETUP", "nixos")
        .output()
        .expect("run vmsilo")
}

const UNREADY_HOST: &str = r#"
enable = true
user = "alice"
hostNetworking.nat = { enable = true, interface = "vmsilo-noif" }
isolatedPciDevices = ["7f:1f.7"]
[[nixosVms]]
name = "work"
kernel = "/k"
initramfs = "/i"
rootDisk = "/r"
pciDevices = [{ path = "7f:1f.7" }]
[nixosVms.network.interfaces.wan]
type = "tap"
tap.bridge = "vmsilo-nobr"
"#;

fn check_host(cfg: &Path, sys: &Path, extra: &[&str]) -> Output {
    // PATH without nft.
    let empty = sys.join("empty-path");
    std::fs::create_dir_all(&empty).expect("mkdir");
    Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args([
            "check",
            "--config",
            path_str(cfg),
            "--sysfs-root",
            path_str(sys),
        ])
        .args(extra)
        .env_remove("VMSILO_CONFIG")
        .env_remove("VMSILO_SYSFS_ROOT")
        .env("VMSILO_HOST_SETUP", "vmsilo")
        .env("PATH", &empty)
        .output()
        .expect("run vmsilo")
}

#[test]
fn test_check_warns_about_taps_bridges_nat_and_pci_that_cannot_work_here() {
    let cfg = scratch("host.toml", UNREADY_HOST);
    let sys = cfg.parent().expect("dir").join("sys");
    std::fs::create_dir_all(sys.join("bus/pci/devices")).expect("fake sysfs");
    let out = check_host(&cfg, &sys, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    for expected in [
        "vmsilo: warning: VM \"work\": network.interfaces.wan.tap.bridge: bridge \"vmsilo-nobr\" \
         does not exist",
        "vmsilo: warning: hostNetworking.nat: nft is not installed",
        "vmsilo: warning: hostNetworking.nat.interface: \"vmsilo-noif\" does not exist",
        "vmsilo: warning: isolatedPciDevices[0]: PCI device 0000:7f:1f.7 does not exist",
        "vmsilo: warning: isolatedPciDevices: the vfio-pci driver is not loaded",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // --strict turns them into a failure; on NixOS the module's business, nothing is said.
    let strict = check_host(&cfg, &sys, &["--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", stderr(&strict));
    assert!(
        stderr(&strict).contains("host problems (see above)"),
        "{}",
        stderr(&strict)
    );
    let nixos = check_host(&cfg, &sys, &["--host-setup", "nixos", "--strict"]);
    assert_eq!(nixos.status.code(), Some(0), "{}", stderr(&nixos));
    assert!(stderr(&nixos).is_empty(), "{}", stderr(&nixos));
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch file unique to this test process.
fn scratch(name: &str, text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vmsilo-cli-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write scratch file");
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn test_check_passes_on_both_examples_with_one_line_per_vm() {
    for file in ["vmsilo.toml", "vmsilo.json"] {
        let cfg = examples().join(file);
        let out = vmsilo(&["check", "--config", path_str(&cfg)]);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("banking "), "{text}");
        assert!(lines[0].contains("4096 MiB"), "{text}");
        assert!(lines[0].contains("4 vCPUs"), "{text}");
        assert!(lines[0].contains("crosvm"), "{text}");
        assert!(
            lines[0].contains("wan: tap banking-0 10.0.0.1/24"),
            "{text}"
        );
        assert!(
            lines[1].contains("wan: tap shopping-0 10.0.1.1/24"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("personal") && lines[2].ends_with("offline"),
            "{text}"
        );
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    }
}

#[test]
fn test_plan_banking_is_identical_for_toml_and_json() {
    let run = |file: &str, json: bool| {
        let cfg = examples().join(file);
        let mut args = vec![
            "plan",
            "banking",
            "--config",
            path_str(&cfg),
            "--uid",
            "1000",
            "--gid",
            "100",
        ];
        if json {
            args.push("--json");
        }
        let out = vmsilo(&args);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        stdout(&out)
    };
    let toml = run("vmsilo.toml", false);
    let json = run("vmsilo.json", false);
    assert_eq!(toml, json);
    assert!(toml.contains("crosvm \\\n"), "{toml}");
    assert!(
        toml.contains("--net tap-name=banking-0,mac=3e:e2:0c:26:9e:86"),
        "{toml}"
    );
    assert_eq!(run("vmsilo.toml", true), run("vmsilo.json", true));
}

#[test]
fn test_plan_json_is_structured_and_honours_run_dir() {
    let cfg = examples().join("vmsilo.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args([
            "plan", "shopping", "--json", "--uid", "1000", "--gid", "100",
        ])
        .env("VMSILO_CONFIG", &cfg)
        .env("VMSILO_RUN_DIR", "/tmp/vmsilo-run")
        .output()
        .expect("run vmsilo");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["vm"], "shopping");
    assert_eq!(v["vmm"], "crosvm");
    assert_eq!(v["argv"][0], "crosvm");
    assert_eq!(
        v["paths"]["commandSocket"],
        "/tmp/vmsilo-run/shopping-command.socket"
    );
    assert_eq!(
        v["paths"]["controlSocket"],
        "/tmp/vmsilo-run/shopping-control.socket"
    );
    assert_eq!(v["interfaces"][0]["tap"]["name"], "shopping-0");
    assert_eq!(v["backends"][0]["kind"], "vhost-device-sound");
    assert_eq!(v["user"]["name"], "david");
    assert_eq!(v["user"]["uid"], 1000);
    assert_eq!(v["user"]["gid"], 100);
}

#[test]
fn test_invalid_configuration_exits_2_with_every_problem_on_stderr() {
    let cfg = scratch(
        "bad.toml",
        "user = \"alice\"\n[[nixosVms]]\nname = \"banking\"\nmemory = 16\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n\
         [nixosVms.network.interfaces.wan]\ntype = \"tap\"\ntap = { hostAddress = \"10.0.0.254/24\", bridge = \"br0\" }\n",
    );
    let out = vmsilo(&["check", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "vmsilo: VM \"banking\": memory: 16 is out of range: expected 64 to 1048576 MiB\n"
        ),
        "{err}"
    );
    assert!(
        err.contains("vmsilo: VM \"banking\": network.interfaces.wan.tap: hostAddress and bridge are mutually exclusive"),
        "{err}"
    );
    assert!(err.ends_with("bad.toml: 2 problems found\n"), "{err}");
    // plan refuses the same configuration the same way.
    let out = vmsilo(&["plan", "banking", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn test_syntax_error_exits_2_with_the_position() {
    let cfg = scratch("broken.json", "{\"user\": \"a\",\n \"nixosVms\": [\n");
    let out = vmsilo(&["check", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("vmsilo: "), "{err}");
    assert!(err.contains("JSON syntax error"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn test_missing_config_file_exits_2() {
    let out = vmsilo(&["check", "--config", "/nonexistent/vmsilo.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "vmsilo: /nonexistent/vmsilo.toml: no such configuration file\n"
    );
}

#[test]
fn test_unknown_vm_exits_2_with_a_suggestion() {
    let cfg = examples().join("vmsilo.toml");
    let out = vmsilo(&["plan", "bankng", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "vmsilo: no VM called \"bankng\" (did you mean \"banking\"?)\n"
    );
}

#[test]
fn test_unknown_user_exits_2_and_suggests_uid_gid() {
    let cfg = scratch(
        "user.toml",
        "user = \"no-such-user-vmsilo\"\n[[nixosVms]]\nname = \"a\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n",
    );
    let out = vmsilo(&["plan", "a", "--config", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pass --uid and --gid"),
        "{}",
        stderr(&out)
    );
    let out = vmsilo(&[
        "plan",
        "a",
        "--config",
        path_str(&cfg),
        "--uid",
        "1",
        "--gid",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("uidmap=1000 1 1"), "{}", stdout(&out));
}

#[test]
fn test_usage_errors_exit_2() {
    assert_eq!(vmsilo(&[]).status.code(), Some(2));
    assert_eq!(vmsilo(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(vmsilo(&["plan"]).status.code(), Some(2));
    assert_eq!(vmsilo(&["--help"]).status.code(), Some(0));
}
