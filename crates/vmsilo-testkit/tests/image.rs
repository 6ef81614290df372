//! Component tests of the guest image builder against the machine's real kernel, modules and
//! busybox, and GNU cpio as the reader of the archive (no QEMU).

use std::io::Write;
use std::process::{Command, Stdio};

use vmsilo_testkit::image::{AGENT_GUEST_PATH, INIT_SCRIPT, images_dir};
use vmsilo_testkit::{GuestImage, ImageSpec};

/// Lists the initramfs with GNU cpio.
fn listing(image: &GuestImage) -> Vec<String> {
    let data = std::fs::read(&image.initrd).unwrap();
    let mut cpio = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cpio.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = cpio.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Extracts one file from the initramfs with GNU cpio.
fn extract(image: &GuestImage, path: &str) -> Vec<u8> {
    let data = std::fs::read(&image.initrd).unwrap();
    let mut cpio = Command::new("cpio")
        .args(["-i", "--quiet", "--to-stdout", path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cpio.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = cpio.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn test_base_image_has_init_busybox_and_virtio_modules_in_load_order() {
    let image = ImageSpec::new().build().unwrap();
    assert!(image.kernel.is_file() && image.initrd.is_file());
    assert_eq!(image.dir, images_dir().join(&image.hash));
    let files = listing(&image);
    for f in [
        "init",
        "bin/busybox",
        "bin/sh",
        "bin/ip",
        "dev/console",
        "etc/vmsilo/modules",
    ] {
        assert!(files.iter().any(|l| l == f), "{f} missing from {files:?}");
    }
    assert_eq!(extract(&image, "init"), INIT_SCRIPT.as_bytes());
    let modules = String::from_utf8(extract(&image, "etc/vmsilo/modules")).unwrap();
    let order: Vec<&str> = modules.lines().collect();
    let pos = |m: &str| {
        order
            .iter()
            .position(|l| *l == format!("{m}.ko"))
            .unwrap_or_else(|| panic!("{m} not in {order:?}"))
    };
    assert!(pos("virtio_ring") < pos("virtio"));
    assert!(pos("virtio") < pos("virtio_pci"));
    assert!(pos("failover") < pos("net_failover"));
    assert!(pos("net_failover") < pos("virtio_net"));
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
    assert!(pos("vmw_vsock_virtio_transport_common") < pos("vmw_vsock_virtio_transport"));
    assert!(pos("virtio") < pos("virtio_balloon"));
    for m in &order {
        assert!(
            files
                .iter()
                .any(|l| *l == format!("lib/modules/vmsilo/{m}")),
            "{m}"
        );
    }
    assert!(!files.iter().any(|l| l == &AGENT_GUEST_PATH[1..]));
}

#[test]
fn test_programs_bring_their_libraries_and_files_and_hooks_land_where_asked() {
    let image = ImageSpec::new()
        .program("socat")
        .file("/etc/vmsilo/test-data", b"abc".to_vec(), 0o600)
        .init_hook("echo hook-ran")
        .build()
        .unwrap();
    let files = listing(&image);
    let socat = vmsilo_testkit::find_tool("socat").unwrap();
    let socat = socat.to_string_lossy();
    assert!(files.iter().any(|l| *l == socat[1..]), "{socat}");
    assert!(files.iter().any(|l| l == "lib64/ld-linux-x86-64.so.2"));
    assert!(files.iter().any(|l| l.ends_with("/libc.so.6")));
    assert_eq!(extract(&image, "etc/vmsilo/test-data"), b"abc");
    assert_eq!(extract(&image, "etc/vmsilo/init.d/00.sh"), b"echo hook-ran");
    let manifest = std::fs::read_to_string(image.dir.join("manifest.txt")).unwrap();
    assert!(
        manifest.contains("library /lib64/ld-linux-x86-64.so.2"),
        "{manifest}"
    );
}

#[test]
fn test_identical_specs_share_one_image_and_any_change_makes_another() {
    let a = ImageSpec::new().file("/etc/marker", b"1".to_vec(), 0o644);
    let b = ImageSpec::new().file("/etc/marker", b"2".to_vec(), 0o644);
    let (ia, ib) = (a.build().unwrap(), b.build().unwrap());
    assert_ne!(ia.hash, ib.hash);
    assert_eq!(a.build().unwrap(), ia);
}

/// Several processes (threads here) building the same new image at once all get the same,
/// complete image, and no temporary directory is left behind.
#[test]
fn test_concurrent_builds_of_a_new_image_agree() {
    let unique = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let spec = ImageSpec::new().file("/etc/unique", unique.into_bytes(), 0o644);
    let images: Vec<GuestImage> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| spec.build().unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    let files = listing(&images[0]);
    assert!(files.iter().any(|l| l == "etc/unique"));
    let leftovers: Vec<_> = std::fs::read_dir(images_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".tmp-{}", images[0].hash)))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&images[0].dir).unwrap();
}

#[test]
fn test_missing_programs_and_bad_paths_are_reported() {
    let err = ImageSpec::new()
        .program("vmsilo-no-such-program")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("vmsilo-no-such-program"), "{err}");
    let err = ImageSpec::new()
        .file("relative/path", b"x".to_vec(), 0o644)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("must be absolute"), "{err}");
    let err = ImageSpec::new()
        .module("vmsilo_no_such_module")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("has no module vmsilo_no_such_module"), "{err}");
}
