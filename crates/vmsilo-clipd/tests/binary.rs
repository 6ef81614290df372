//! The `vmsilo-clipd` binary: flags, the socket it creates (0600), desktop notifications
//! through `notify-send` when a session bus is set (a stand-in records its arguments), and a
//! clean exit on SIGTERM that removes the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmsilo_clipd::chan::{self, Client};
use vmsilo_clipd::proto::{Msg, Outcome};

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo-clipd");
const T: Duration = Duration::from_secs(30);

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < T, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn test_binary_notifies_through_notify_send_and_exits_cleanly() {
    let dir = Dir(std::env::temp_dir().join(format!("clipd-bin-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let log = dir.0.join("notified");
    let ns = dir.0.join("notify-send");
    std::fs::write(
        &ns,
        format!(
            "#!/bin/sh\nprintf '%s|' \"$@\" >> {}\necho >> {}\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&ns, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.0.join("clipd.sock");
    let mut child = Command::new(EXE)
        .arg("--socket")
        .arg(&socket)
        .args(["--max-size", "5", "--policy", "*:*:deny"])
        .env("PATH", format!("{}:/usr/bin:/bin", dir.0.display()))
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the socket", || socket.exists());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let c = Client::connect(&socket).unwrap();
    let memfd = chan::memfd_with(b"too long for five").unwrap();
    let (m, _) = c
        .request(
            &Msg::FromHost {
                mime: "text/plain".into(),
            },
            Some(std::os::fd::AsFd::as_fd(&memfd)),
            T,
        )
        .unwrap();
    assert!(
        matches!(&m, Msg::Reply { outcome: Outcome::Refused, text } if text.contains("too large")),
        "{m:?}"
    );
    wait_for("the notification", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Clipboard: refused"))
    });
    let notified = std::fs::read_to_string(&log).unwrap();
    assert!(notified.contains("--app-name=vmsilo|"), "{notified}");
    assert!(
        notified.contains("copy from host: too large: 17 > 5"),
        "{notified}"
    );
    assert!(
        !notified.contains("too long for five"),
        "no content in notifications"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on SIGTERM");
}

#[test]
fn test_bad_flags_are_usage_errors() {
    for args in [
        &["--policy", "a:b"][..],
        &["--policy", "*:*:maybe"],
        &["--mime", "application/x-evil"],
        &["--max-size", "0"],
    ] {
        let out = Command::new(EXE)
            .args(["--socket", "/nonexistent/x.sock"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}
