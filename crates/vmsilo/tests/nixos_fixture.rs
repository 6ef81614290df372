//! The JSON the NixOS module writes for the seed's configurations is accepted by the Rust side:
//! `nix/tests/seed-example.json` (the quick start, `examples/nixos-configuration.nix`),
//! `nix/tests/seed-readme-examples.json` (every other configuration example of the seed's README,
//! verbatim, `nix/tests/seed-readme-examples.nix`) and `nix/tests/seed-readme-examples-2.json` (the
//! two that cannot join it: the colour example and the pciDevices example). They are produced by evaluating `nix/module.nix` against real nixpkgs:
//! `cargo xtask nixos-fixture`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture_named(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../nix/tests/{name}"))
}

fn fixture() -> PathBuf {
    fixture_named("seed-example.json")
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

/// Every file below `root` as (relative path, contents or symlink target), sorted.
fn tree(root: &std::path::Path) -> Tree {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .display()
                .to_string();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_symlink() {
                let target = std::fs::read_link(&path).expect("read_link");
                out.push((rel, format!("-> {}", target.display())));
            } else if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.push((rel, std::fs::read_to_string(&path).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// A directory tree as sorted (relative path, content) pairs.
type Tree = Vec<(String, String)>;

/// Runs `vmsilo-generator` and `vmsilo units` on `config`; returns the generator's normal-unit
/// tree and the tree `vmsilo units` wrote.
fn generate(config: &Path, label: &str) -> (Tree, Tree) {
    let dir = std::env::temp_dir().join(format!(
        "vmsilo-nixos-fixture-{label}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["gen/normal", "gen/early", "gen/late", "units"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    // The generator is the same binary under the name systemd gives it.
    let generator = dir.join("vmsilo-generator");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vmsilo"), &generator).expect("symlink");
    let gen_out = Command::new(&generator)
        .env("VMSILO_CONFIG", config)
        .args([
            dir.join("gen/normal"),
            dir.join("gen/early"),
            dir.join("gen/late"),
        ])
        .output()
        .expect("run vmsilo-generator");
    assert!(
        gen_out.status.success() && gen_out.stderr.is_empty(),
        "{label}: generator: {}",
        String::from_utf8_lossy(&gen_out.stderr)
    );
    let units_out = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .env_remove("VMSILO_CONFIG")
        .arg("units")
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(dir.join("units"))
        .output()
        .expect("run vmsilo units");
    assert!(
        units_out.status.success(),
        "{label}: units: {}",
        String::from_utf8_lossy(&units_out.stderr)
    );
    let trees = (
        tree(&dir.join("gen/normal")),
        tree(&dir.join("units/systemd")),
    );
    let _ = std::fs::remove_dir_all(&dir);
    trees
}

#[test]
fn test_generator_output_for_the_module_json_matches_vmsilo_units() {
    let (generated, units) = generate(&fixture(), "seed-example");
    let names: Vec<&str> = generated.iter().map(|(p, _)| p.as_str()).collect();
    for unit in [
        "vmsilo-banking.socket",
        "vmsilo-banking-vm.service",
        "vmsilo-shopping-vm.service",
        "vmsilo-personal-vm.service",
        "vmsilo-balloond.service",
        "sockets.target.wants/vmsilo-banking.socket",
    ] {
        assert!(names.contains(&unit), "{unit} not generated: {names:?}");
    }
    assert_eq!(generated, units);
}

/// The VM names a fixture configures.
fn vm_names(fixture: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(fixture).expect("read fixture");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    json["nixosVms"]
        .as_array()
        .expect("nixosVms")
        .iter()
        .map(|vm| vm["name"].as_str().expect("name").to_owned())
        .collect()
}

/// `vmsilo check` accepts the fixture and reports every VM; the generator writes the socket and
/// the VM service of every VM (and no `vmsilo-config-error.service`), the same units as
/// `vmsilo units`.
fn assert_fixture_checks_and_generates_every_vm(name: &str, expected_vms: &[&str]) {
    let fixture = fixture_named(name);
    let mut vms = vm_names(&fixture);
    vms.sort();
    let mut expected: Vec<String> = expected_vms.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(vms, expected, "{name}: VMs");

    let out = Command::new(env!("CARGO_BIN_EXE_vmsilo"))
        .args(["check", "--config"])
        .arg(&fixture)
        .env_remove("VMSILO_CONFIG")
        .output()
        .expect("run vmsilo check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vmsilo check rejected {name}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for vm in &vms {
        assert!(
            stdout.contains(vm.as_str()),
            "{name}: VM {vm} missing from:\n{stdout}"
        );
    }

    let (generated, units) = generate(&fixture, name.trim_end_matches(".json"));
    let names: Vec<&str> = generated.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        !names.contains(&"vmsilo-config-error.service"),
        "{name}: the generator found the configuration invalid: {names:?}"
    );
    for vm in &vms {
        for unit in [
            format!("vmsilo-{vm}.socket"),
            format!("vmsilo-{vm}-command.service"),
            format!("vmsilo-{vm}-vm.service"),
        ] {
            assert!(
                names.contains(&unit.as_str()),
                "{name}: {unit} not generated: {names:?}"
            );
        }
    }
    assert_eq!(generated, units, "{name}");
}

#[test]
fn test_seed_readme_examples_pass_check_and_get_units_for_every_vm() {
    assert_fixture_checks_and_generates_every_vm(
        "seed-readme-examples.json",
        &[
            // Quick start.
            "banking",
            "shopping",
            "personal",
            // sharedDirectories with `id`, both examples.
            "shared-all",
            "shared-1000",
            // additionalDisks.
            "disks",
            // waylandProxy, both values.
            "wayland-virtwl",
            "wayland-sommelier",
            // gpu, the three forms.
            "gpu-off",
            "gpu-default",
            "gpu-custom",
            // sound, the three forms.
            "sound-off",
            "sound-default",
            "sound-custom",
            // The PCI passthrough example.
            "sys-usb",
            "sys-net",
            // vhostUser.
            "vhost-user",
        ],
    );
}

#[test]
fn test_seed_readme_examples_keep_the_seed_spellings() {
    let text =
        std::fs::read_to_string(fixture_named("seed-readme-examples.json")).expect("read fixture");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    let vm = |name: &str| -> serde_json::Value {
        json["nixosVms"]
            .as_array()
            .expect("nixosVms")
            .iter()
            .find(|vm| vm["name"] == name)
            .unwrap_or_else(|| panic!("no VM {name}"))
            .clone()
    };
    // `id = "home"` reaches Rust as the tag.
    for name in ["shared-all", "shared-1000"] {
        assert_eq!(vm(name)["sharedDirectories"][0]["tag"], "home", "{name}");
    }
}

#[test]
fn test_seed_readme_colors_and_pci_examples_pass_check_and_get_units_for_every_vm() {
    assert_fixture_checks_and_generates_every_vm(
        "seed-readme-examples-2.json",
        &["banking", "shopping", "untrusted", "pci-iommu"],
    );
    // The short PCI address passes through the device isolated in its long form.
    let text = std::fs::read_to_string(fixture_named("seed-readme-examples-2.json")).expect("read");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    assert_eq!(json["isolatedPciDevices"][0], "0000:01:00.0");
    let vm = &json["nixosVms"]
        .as_array()
        .expect("nixosVms")
        .iter()
        .find(|vm| vm["name"] == "pci-iommu")
        .expect("pci-iommu")["pciDevices"][0];
    assert_eq!(vm["path"], "01:00.0");
    assert_eq!(vm["iommu"], "on");
}

#[test]
fn test_seed_quick_start_gets_units_for_every_vm() {
    assert_fixture_checks_and_generates_every_vm(
        "seed-example.json",
        &["banking", "shopping", "personal"],
    );
}
