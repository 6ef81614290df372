//! The JSON the NixOS module writes for the seed's quick-start configuration
//! (`nix/tests/seed-example.json`, produced by evaluating `nix/module.nix` with
//! `examples/nixos-configuration.nix` against real nixpkgs: `cargo xtask nixos-fixture`) is
//! accepted by the Rust side.

use std::path::PathBuf;
use std::process::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../nix/tests/seed-example.json")
}

#[test]
fn test_nixos_module_json_for_seed_example_passes_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(["check", "--config"])
        .arg(fixture())
        .env_remove("VMSILO_CONFIG")
        .output()
        .expect("run vmsilo check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vmsilo check rejected the module's JSON:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for vm in ["banking", "shopping", "personal"] {
        assert!(stdout.contains(vm), "VM {vm} missing from:\n{stdout}");
    }
    assert!(stdout.contains("tap banking-0 10.0.0.1/24"), "{stdout}");
}

#[test]
fn test_nixos_module_json_carries_the_guest_build() {
    let text = std::fs::read_to_string(fixture()).expect("read fixture");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let vms = json["nixosVms"].as_array().expect("nixosVms");
    assert_eq!(vms.len(), 3);
    for vm in vms {
        let name = vm["name"].as_str().expect("name");
        for key in ["kernel", "initramfs", "rootDisk"] {
            let path = vm[key].as_str().unwrap_or_default();
            assert!(path.starts_with("/nix/store/"), "{name}.{key} = {path:?}");
        }
        let params: Vec<&str> = vm["kernelParams"]
            .as_array()
            .expect("kernelParams")
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert!(
            params
                .iter()
                .any(|p| p.starts_with("init=/nix/store/") && p.ends_with("/init")),
            "{name}: no init= for stage 2 in {params:?}"
        );
    }
}
