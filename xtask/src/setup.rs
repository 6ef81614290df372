//! `cargo xtask setup`: install what a fresh Debian or Ubuntu machine lacks.
//!
//! Idempotent: every step first checks whether its result is already there, so a second run on
//! a set-up machine changes nothing and takes about a second.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, have, output, section, sh};

/// Debian packages the checks and test tiers need, with the reason for each.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "runs the e2e test guests under TCG"),
    ("qemu-utils", "qemu-img creates the qcow2 root overlays"),
    ("busybox-static", "the userland of the test guest initramfs"),
    (
        "linux-image-amd64",
        "the test guest kernel and its virtio modules",
    ),
    ("cpio", "packs the test guest initramfs"),
    ("socat", "test peers inside and outside guests"),
    ("iperf3", "bulk traffic between test guests"),
    ("fping", "sparse-flow latency probes between test guests"),
    ("irtt", "UDP round-trip latency probes between test guests"),
    (
        "iproute2",
        "network namespaces, taps and bridges for network tests",
    ),
    (
        "systemd",
        "systemd-analyze verify and systemd-socket-activate",
    ),
    (
        "systemd-container",
        "systemd-nspawn boots a container with systemd as PID 1 for the units' e2e test",
    ),
    ("dbus", "the system bus in that container"),
    (
        "polkitd",
        "polkit in that container, to check vmsilo's rule",
    ),
    (
        "desktop-file-utils",
        "desktop-file-validate checks vmsilo desktop-entries' output",
    ),
    (
        "nftables",
        "nft -j: vmsilo net's NAT table, in the host networking e2e test",
    ),
    (
        "libglib2.0-bin",
        "gio launch runs a generated desktop entry with a URL in a test",
    ),
    (
        "weston",
        "headless compositor, screenshooter and protocol trace for the display tests",
    ),
    ("grim", "screenshots of sway in the display tests"),
    (
        "libxkbcommon-dev",
        "vmsilo-gate links libxkbcommon to recognise the clipboard chords by keysym",
    ),
    (
        "wayland-utils",
        "wayland-info lists a compositor's globals in tests",
    ),
    (
        "waypipe",
        "QEMU VMs' windows travel through waypipe (host client, and in the test guest)",
    ),
    (
        "sway",
        "headless compositor (as a non-root user, with a seat) for the display e2e tests",
    ),
    (
        "foot",
        "a real client that needs a data device, through vmsilo-gate",
    ),
    (
        "wl-clipboard",
        "wl-copy and wl-paste through vmsilo-gate's per-VM clipboard",
    ),
    (
        "wtype",
        "a virtual keyboard gives sway's headless seat a keyboard",
    ),
    ("pkg-config", "building cargo tools with C dependencies"),
    ("libseccomp-dev", "building virtiofsd"),
    ("libcap-ng-dev", "building virtiofsd"),
    (
        "nix-bin",
        "nix-instantiate checks the NixOS module and flake",
    ),
    (
        "wtype",
        "a virtual keyboard on sway, so the vmsilo-gate focus test has a keyboard",
    ),
];

/// Cargo-installed tools: (binary, crate, version, extra `cargo install` arguments).
///
/// vhost-device-sound is built with its null backend only: the tests drive it through
/// vhost-user and need no audio, and its PipeWire, ALSA and GStreamer backends would need
/// their development packages and libclang. A desktop installs it with its default features
/// (the NixOS module uses nixpkgs' build).
pub const CARGO_TOOLS: &[(&str, &str, &str, &[&str])] = &[
    ("vhost-device-vsock", "vhost-device-vsock", "0.3.0", &[]),
    ("virtiofsd", "virtiofsd", "1.14.0", &[]),
    (
        "vhost-device-sound",
        "vhost-device-sound",
        "0.3.0",
        &["--no-default-features"],
    ),
];

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn apt() -> Result<()> {
    section("setup: Debian packages");
    if !have("dpkg-query") {
        bail!("this machine has no dpkg: install the packages {APT_PACKAGES:?} by hand");
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("all {} packages present", APT_PACKAGES.len());
        return Ok(());
    }
    eprintln!("missing: {}", missing.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let mut update = Command::new(sudo.first().copied().unwrap_or("apt-get"));
    if !sudo.is_empty() {
        update.arg("apt-get");
    }
    sh(update.args(["update", "-q"])).context("apt-get update")?;
    let mut install = Command::new(sudo.first().copied().unwrap_or("apt-get"));
    if !sudo.is_empty() {
        install.arg("apt-get");
    }
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing);
    sh(&mut install).context("apt-get install")?;
    Ok(())
}

fn cargo_bin_dir() -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| "/root/.cargo".into());
    home.join("bin")
}

fn tool_version_ok(bin: &str, version: &str) -> bool {
    let path = cargo_bin_dir().join(bin);
    path.is_file()
        && output(Command::new(&path).arg("--version")).is_some_and(|v| v.contains(version))
}

fn cargo_tools() -> Result<()> {
    section("setup: cargo tools");
    if !have("cargo-nextest") && !cargo_bin_dir().join("cargo-nextest").is_file() {
        sh(cargo().args(["install", "--locked", "cargo-nextest"]))?;
    }
    // `cargo +nightly fuzz build` in CI builds the fuzz targets of fuzz/.
    if !have("cargo-fuzz") && !cargo_bin_dir().join("cargo-fuzz").is_file() {
        sh(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    }
    for (bin, krate, version, extra) in CARGO_TOOLS {
        if tool_version_ok(bin, version) {
            eprintln!("{bin} {version} present");
            continue;
        }
        sh(cargo()
            .args(["install", "--locked", "--version", version, krate])
            .args(*extra))
        .with_context(|| format!("cargo install {krate}"))?;
    }
    Ok(())
}

/// Installs everything; safe to run again.
pub fn run() -> Result<()> {
    apt()?;
    cargo_tools()?;
    Ok(())
}
