//! End-to-end tests of the harness itself: a guest boots, talks, shuts down; a broken guest
//! fails fast with its console in the error and leaves no QEMU behind.

use std::path::Path;
use std::time::{Duration, Instant};

use vmsilo_testkit::{Error, ImageSpec, QemuBuilder};

const T: Duration = Duration::from_secs(30);

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_guest_boots_runs_commands_and_powers_off() {
    let image = ImageSpec::new().build().unwrap();
    let spawned = Instant::now();
    let guest = QemuBuilder::new(&image).name("boot").start().unwrap();
    eprintln!(
        "boot to VMSILO-READY: {:.1} s",
        spawned.elapsed().as_secs_f64()
    );

    // A line the guest printed on its own: the readiness line carries the guest's uptime.
    let log = guest.console_log();
    let ready = log.lines().find(|l| l.starts_with("VMSILO-READY")).unwrap();
    assert!(ready.contains("uptime="), "{ready}");

    // A line printed on request, read back through the console.
    let out = guest.run("echo hello from $(uname -r)", T).unwrap();
    assert_eq!(out.status, 0);
    assert_eq!(out.stdout, format!("hello from {}\n", image.kernel_version));

    // Status, stderr, quoting, output without a trailing newline.
    let out = guest.run(
        "echo 'it''s' \"$((6*7))\" >&2; exit_code() { return 3; }; exit_code",
        T,
    );
    let out = out.unwrap();
    assert_eq!((out.stdout.as_str(), out.status), ("its 42\n", 3));
    let out = guest.run("printf 'no newline'", T).unwrap();
    assert_eq!((out.stdout.as_str(), out.status), ("no newline", 0));
    let out = guest.run("printf '%s\\n' \"a'b\" 'c d'", T).unwrap();
    assert_eq!(out.stdout, "a'b\nc d\n");

    // A line the guest prints later, matched with wait_for_line.
    guest
        .run("(sleep 1; echo delayed-marker-42) >/dev/console &", T)
        .unwrap();
    let line = guest.wait_for_line("delayed-marker", T).unwrap();
    assert_eq!(line, "delayed-marker-42");

    // The modules /init loaded, and the shared RAM size.
    let mods = guest.run_ok("cat /proc/modules", T).unwrap();
    for m in [
        "virtio_pci",
        "virtio_net",
        "virtio_balloon",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(mods.contains(m), "{m} not loaded:\n{mods}");
    }

    let err = guest.run_ok("false", T).unwrap_err().to_string();
    assert!(err.contains("exited with status 1"), "{err}");

    let pid = guest.pid();
    guest.shutdown(T).unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

fn assert_gone(pid: u32) {
    let proc = format!("/proc/{pid}");
    // Killed and reaped before the error is returned.
    assert!(!Path::new(&proc).exists(), "QEMU {pid} is still there");
}

/// A bad kernel parameter that leaves the guest running without ever printing the readiness
/// line: the harness gives up after its timeout, kills QEMU, and shows the console.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_guest_without_readiness_line_times_out_with_console_and_is_killed() {
    let image = ImageSpec::new().build().unwrap();
    let mut guest = QemuBuilder::new(&image)
        .name("hang")
        // The kernel runs busybox's shell instead of /init: no VMSILO-READY, ever.
        .kernel_param("rdinit=/bin/sh")
        .spawn()
        .unwrap();
    let pid = guest.pid();
    let err = guest.wait_ready(Duration::from_secs(20)).unwrap_err();
    assert!(matches!(err, Error::Guest { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no VMSILO-READY line within 20s"), "{msg}");
    assert!(msg.contains("console lines"), "{msg}");
    // What the guest printed is in the console excerpt: the shell the kernel ran as init.
    assert!(msg.contains("built-in shell (ash)"), "{msg}");
    assert_gone(pid);
    assert!(!guest.is_running());
}

/// A kernel parameter that makes the boot fail (no init): the kernel panics, `panic=-1` and
/// `-no-reboot` end QEMU, and the harness reports it at once instead of waiting.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_guest_with_bad_init_fails_fast_and_leaves_no_qemu() {
    let image = ImageSpec::new().build().unwrap();
    let mut guest = QemuBuilder::new(&image)
        .name("panic")
        .kernel_param("rdinit=/nonexistent")
        .spawn()
        .unwrap();
    let pid = guest.pid();
    let err = guest.wait_ready(Duration::from_secs(120)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("panicked"), "{msg}");
    assert!(msg.contains("Kernel panic"), "{msg}");
    assert_gone(pid);
}

/// A vmsilo.* parameter /init cannot apply: /init says what is wrong and the harness fails
/// without waiting for the timeout.
#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_init_reports_bad_vmsilo_parameters() {
    let image = ImageSpec::new().build().unwrap();
    let err = QemuBuilder::new(&image)
        .name("badparam")
        .kernel_param("vmsilo.ifname=lan,52:54:00:99:99:99")
        .start()
        .unwrap_err()
        .to_string();
    assert!(err.contains("VMSILO-INIT-FAILED"), "{err}");
    assert!(
        err.contains("no network interface has MAC 52:54:00:99:99:99"),
        "{err}"
    );
}
