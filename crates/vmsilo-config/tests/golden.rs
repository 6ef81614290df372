//! Golden tests of launch plans: each `tests/golden/<name>.toml` is planned (its first VM, or the
//! one named by a `# plan: <vm>` line) and the rendered plan must equal `<name>.txt`; when
//! `<name>.json` exists, the JSON plan must equal it too.
//!
//! After an intended change, regenerate the expected files with
//! `VMSILO_BLESS=1 cargo test -p vmsilo-config --test golden` and review the diff.

use std::path::PathBuf;

use vmsilo_config::plan::{self, PlanOptions, render_text};
use vmsilo_config::{Format, load_str};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check(expected_path: PathBuf, actual: &str) {
    if std::env::var_os("VMSILO_BLESS").is_some() {
        std::fs::write(&expected_path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with VMSILO_BLESS=1 to create it",
            expected_path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (VMSILO_BLESS=1 regenerates it)\n--- expected\n{expected}\n--- actual\n{actual}",
        expected_path.display()
    );
}

fn golden(name: &str) {
    let dir = golden_dir();
    let input = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&input).expect("read golden input");
    let cfg = load_str(&text, Format::Toml)
        .unwrap_or_else(|e| panic!("{}: invalid configuration:\n{e}", input.display()));
    let vm = text
        .lines()
        .find_map(|l| l.strip_prefix("# plan: "))
        .map(str::to_owned)
        .unwrap_or_else(|| cfg.nixos_vms[0].name.clone());
    let mut opts = PlanOptions::new(1000, 100);
    if let Some(run) = text.lines().find_map(|l| l.strip_prefix("# run-dir: ")) {
        opts.dirs.run_dir = run.to_owned();
    }
    let p = plan::build(&cfg, &vm, &opts).expect("plan builds");
    check(dir.join(format!("{name}.txt")), &render_text(&p));
    let json_path = dir.join(format!("{name}.json"));
    if json_path.exists() {
        let mut json = serde_json::to_string_pretty(&p).expect("serialize");
        json.push('\n');
        check(json_path, &json);
    }
}

macro_rules! golden_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                golden(stringify!($name));
            }
        )*
    };
}

golden_tests!(
    crosvm_seed_banking,
    crosvm_minimal_offline,
    crosvm_tap_bridge_mac_ipv6_dhcp,
    crosvm_vm_switch,
    crosvm_disks,
    crosvm_shared_dirs,
    crosvm_gpu_custom,
    crosvm_sound_alsa,
    crosvm_sound_pulse_capture,
    crosvm_pci_passthrough,
    crosvm_vhost_user_manual,
    crosvm_log_and_extra_args,
    crosvm_writable_root_kernel_params,
    crosvm_relocated_run_dir,
    qemu_seed_banking,
    qemu_tcg_offline_tmpfs,
    qemu_vm_switch,
    qemu_shared_dirs,
    qemu_disks,
    qemu_vhost_user_manual,
    qemu_gpu_gate,
    crosvm_gate_options,
);

/// With `gpu`, the compositor's socket is given to the gate only: never to the VMM, never to
/// waypipe, whatever the VMM.
#[test]
fn test_gpu_vms_never_get_the_compositor_socket() {
    for vmm in ["crosvm", "qemu"] {
        let text = format!(
            "user = \"alice\"\n[[nixosVms]]\nname = \"w\"\nvmm = \"{vmm}\"\nsound = false\n\
             kernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\n"
        );
        let cfg = load_str(&text, Format::Toml).expect("valid");
        let mut opts = PlanOptions::new(1000, 100);
        opts.wayland_socket = Some("/run/user/1000/compositor-7".into());
        let p = plan::build(&cfg, "w", &opts).expect("plan builds");
        let leaks = |args: &[String]| args.iter().any(|a| a.contains("compositor-7"));
        assert!(
            !leaks(&p.argv),
            "{vmm}: the VMM got the compositor: {:?}",
            p.argv
        );
        let gate_socket = p.paths.gate_socket.clone().expect("gpu has a gate");
        for b in &p.backends {
            let env: Vec<String> = b.env.values().cloned().collect();
            if b.kind == "vmsilo-gate" {
                assert!(
                    leaks(&b.argv),
                    "{vmm}: the gate lacks --compositor: {:?}",
                    b.argv
                );
                assert_eq!(b.socket, gate_socket);
            } else {
                assert!(!leaks(&b.argv) && !leaks(&env), "{vmm}: {} got it", b.kind);
            }
        }
        if vmm == "crosvm" {
            assert!(
                p.argv
                    .windows(2)
                    .any(|w| w[0] == "--wayland-sock" && w[1] == gate_socket)
            );
        } else {
            let waypipe = p
                .backends
                .iter()
                .find(|b| b.kind == "waypipe")
                .expect("waypipe");
            assert_eq!(waypipe.env.get("WAYLAND_DISPLAY"), Some(&gate_socket));
            // The gate starts first, waypipe next, both before QEMU.
            let kinds: Vec<&str> = p.backends.iter().map(|b| b.kind.as_str()).collect();
            let gi = kinds
                .iter()
                .position(|k| *k == "vmsilo-gate")
                .expect("gate");
            let wi = kinds.iter().position(|k| *k == "waypipe").expect("waypipe");
            assert!(gi < wi, "{kinds:?}");
            assert!(p.kernel_params.contains(&"vmsilo.waypipe=6000".to_owned()));
        }
    }
}
