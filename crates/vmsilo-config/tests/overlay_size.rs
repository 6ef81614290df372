//! `rootOverlay.size` accepts what `qemu-img` accepts (issue 14): a fractional size such as
//! `10.5G` plans the byte count `qemu-img` itself reads from that text, and the real
//! `qemu-img create` accepts the planned argument exactly as the runtime passes it.

use std::process::Command;

use vmsilo_config::plan::{self, PlanOptions};
use vmsilo_config::{Format, load_str};
use vmsilo_testkit::ScratchDir;

fn planned_overlay_bytes(size: &str) -> u64 {
    let config = format!(
        "user = \"alice\"\n[[nixosVms]]\nname = \"a\"\nkernel = \"/k\"\ninitramfs = \"/i\"\nrootDisk = \"/r\"\nrootOverlay.size = \"{size}\"\n"
    );
    let cfg = load_str(&config, Format::Toml).unwrap_or_else(|e| panic!("{size}:\n{e}"));
    plan::build(&cfg, "a", &PlanOptions::new(1000, 1000))
        .expect("plan")
        .overlay
        .size_bytes
}

/// `qemu-img create -q -f qcow2 PATH SIZE`, then the image's virtual size.
fn qemu_img_virtual_size(path: &std::path::Path, size: &str) -> u64 {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .output()
        .expect("run qemu-img (Debian: qemu-utils; cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "qemu-img create {size}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img info");
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("qemu-img info JSON");
    info["virtual-size"].as_u64().expect("virtual-size")
}

#[test]
fn test_root_overlay_fractional_size_is_planned_as_qemu_img_reads_it() {
    assert_eq!(planned_overlay_bytes("10.5G"), 11_274_289_152);
    let dir = ScratchDir::new("overlay-size").expect("scratch dir");
    for text in ["10.5G", "10.5g", "1.25T", "2.5m", "10G", "300MiB"] {
        let bytes = planned_overlay_bytes(text);
        // The runtime passes the byte count; qemu-img must accept it and make that size.
        let planned = qemu_img_virtual_size(&dir.path().join("planned.qcow2"), &bytes.to_string());
        assert_eq!(planned, bytes, "{text}");
        // Where qemu-img reads the text itself, it means the same size.
        if !text.ends_with("iB") {
            let direct = qemu_img_virtual_size(&dir.path().join("direct.qcow2"), text);
            assert_eq!(
                direct, bytes,
                "{text}: qemu-img reads the text as another size"
            );
        }
    }
}
