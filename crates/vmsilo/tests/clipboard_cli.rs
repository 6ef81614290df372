//! `vmsilo clipboard` (the real binary) against an in-process vmsilo-clipd, with stand-ins
//! for wl-paste and wl-copy on PATH (the host clipboard side).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmsilo_clipd::core::Settings;
use vmsilo_clipd::daemon::{Daemon, Options, Records};

const EXE: &str = env!("CARGO_BIN_EXE_vmsilo");

struct Running {
    dir: PathBuf,
    socket: PathBuf,
    records: Records,
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("vmsilo-clipcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("clipd.sock");
    let mut d = Daemon::new(Options {
        socket: socket.clone(),
        settings: Settings::default(),
        desktop_notifications: false,
        fetch_timeout: Duration::from_secs(30),
    })
    .unwrap();
    let records = d.records();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let thread = std::thread::spawn(move || d.run(r.as_fd()).unwrap());
    Running {
        dir,
        socket,
        records,
        stop: Some(w),
        thread: Some(thread),
    }
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn vmsilo(r: &Running, args: &[&str]) -> (bool, String, String) {
    let path = format!(
        "{}:{}",
        r.dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(EXE)
        .arg("clipboard")
        .arg("--socket")
        .arg(&r.socket)
        .args(args)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn test_from_host_status_and_refusals_through_the_cli() {
    let r = start("host");
    script(&r.dir, "wl-paste", "printf 'host text'");
    script(
        &r.dir,
        "wl-copy",
        &format!("cat > {}/copied", r.dir.display()),
    );

    let (ok, out, err) = vmsilo(&r, &["status"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "the global clipboard is empty");

    let (ok, out, err) = vmsilo(&r, &["from-host", "--mime", "text/plain"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "host → the global clipboard: 9 characters, text/plain"
    );
    let (_, out, _) = vmsilo(&r, &["status"]);
    assert_eq!(out.trim(), "from host: 9 (text/plain)");

    // host → host: no rule matches, so the default policy denies; the slot stays.
    let (ok, _, err) = vmsilo(&r, &["to-host", "--yes"]);
    assert!(!ok);
    assert!(err.contains("the clipboard policy denies it"), "{err}");
    assert!(!r.dir.join("copied").exists(), "nothing reached wl-copy");

    // A VM without a gate: the paste fails and says why; the slot stays.
    let (ok, _, err) = vmsilo(&r, &["paste", "shopping", "--yes"]);
    assert!(!ok);
    assert!(err.contains("its gate is not running"), "{err}");
    let (_, out, _) = vmsilo(&r, &["status"]);
    assert_eq!(out.trim(), "from host: 9 (text/plain)");

    let (ok, _, err) = vmsilo(&r, &["wipe"]);
    assert!(ok, "{err}");
    let (_, out, _) = vmsilo(&r, &["status"]);
    assert_eq!(out.trim(), "the global clipboard is empty");
    let records = r.records.lock().unwrap().clone();
    assert!(
        !records.iter().any(|l| l.contains("host text")),
        "metadata only: {records:#?}"
    );
}

#[test]
fn test_the_cli_says_what_to_do_when_clipd_is_not_running() {
    let r = start("absent");
    let out = Command::new(EXE)
        .args(["clipboard", "--socket"])
        .arg(r.dir.join("nothing.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not reach vmsilo-clipd"), "{err}");
    assert!(
        err.contains("systemctl --user status vmsilo-clipd"),
        "{err}"
    );
}
