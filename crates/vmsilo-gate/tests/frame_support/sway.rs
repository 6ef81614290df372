//! A headless sway 1.7 (pixman) for the frame tests. sway refuses to run as root, so the test
//! (root) starts it under an unused uid/gid with a runtime directory of that owner; root
//! still connects to its sockets. Screenshots with `grim -t ppm`, window state with
//! `swaymsg -t get_tree`.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_testkit::ScratchDir;

use super::{PATIENCE, Shot, wait_bounded};

/// The uid/gid sway runs as (no passwd entry needed).
pub const SWAY_UID: u32 = 4243;

/// Why sway tests cannot run here, or `None`.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("starting sway under another uid needs root".into());
    }
    for tool in ["sway", "swaymsg", "grim", "wtype"] {
        if vmsilo_testkit::find_tool(tool).is_err() {
            return Some(format!(
                "{tool} is missing (apt-get install sway grim wtype; `cargo xtask setup` installs them)"
            ));
        }
    }
    None
}

pub struct Sway {
    child: Child,
    pub dir: ScratchDir,
    pub socket: PathBuf,
    ipc: PathBuf,
}

impl Sway {
    pub fn start(label: &str) -> Sway {
        let dir = ScratchDir::new(label).expect("scratch dir");
        let cfg = dir.path().join("cfg");
        std::fs::write(
            &cfg,
            "output HEADLESS-1 resolution 800x600 position 0 0\n\
             for_window [app_id=\"^vmsilo\\.\"] floating enable\n\
             default_floating_border normal 2\n",
        )
        .unwrap();
        for p in [dir.path(), cfg.as_path()] {
            nix::unistd::chown(
                p,
                Some(nix::unistd::Uid::from_raw(SWAY_UID)),
                Some(nix::unistd::Gid::from_raw(SWAY_UID)),
            )
            .unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let log = std::fs::File::create(dir.path().join("sway.log")).unwrap();
        let child = Command::new("sway")
            .arg("-c")
            .arg(&cfg)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("WLR_BACKENDS", "headless")
            .env("WLR_RENDERER", "pixman")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .uid(SWAY_UID)
            .gid(SWAY_UID)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting sway");
        let pid = child.id();
        let socket = dir.path().join("wayland-1");
        let ipc = dir.path().join(format!("sway-ipc.{SWAY_UID}.{pid}.sock"));
        let s = Sway {
            child,
            dir,
            socket,
            ipc,
        };
        let t0 = Instant::now();
        while !(s.socket.exists() && s.ipc.exists()) {
            assert!(
                t0.elapsed() < PATIENCE,
                "sway did not open {} (log: {})",
                s.socket.display(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sway.log")).unwrap_or_default()
    }

    pub fn screenshot(&self) -> Shot {
        let mut child = Command::new("grim")
            .args(["-t", "ppm", "-"])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("grim");
        let mut out = Vec::new();
        std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let status = wait_bounded(&mut child, PATIENCE).expect("grim hung");
        assert!(status.success(), "grim failed: {status}");
        Shot::from_ppm(&out)
    }

    /// A virtual keyboard (a `wtype` that sleeps), so that the seat has a keyboard and sway
    /// gives keyboard focus; it ends when the returned child is dropped.
    pub fn keyboard(&self) -> KeyboardProcess {
        let child = Command::new("wtype")
            .args(["-s", "600000", "x"])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wtype");
        KeyboardProcess(child)
    }

    /// `swaymsg -t get_tree` (JSON text).
    pub fn tree(&self) -> String {
        let out = Command::new("swaymsg")
            .args(["-r", "-t", "get_tree", "-s"])
            .arg(&self.ipc)
            .output()
            .expect("swaymsg");
        assert!(out.status.success(), "swaymsg failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Sway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `wtype` holding a virtual keyboard.
pub struct KeyboardProcess(Child);

impl Drop for KeyboardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
