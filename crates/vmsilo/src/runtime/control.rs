//! Asking the VMM to stop: QMP (`system_powerdown`, `quit`) for QEMU, the crosvm control socket
//! (`"Powerbtn"`, `"Exit"`) for crosvm; both clients are `vmsilo-vmm`'s. Also the stale-socket
//! probe.
//!
//! Each request opens its own connection with timeouts: QEMU serves one QMP client at a time
//! and vmsilo-balloond uses the same sockets.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use serde_json::Value;
use vmsilo_vmm::VmmError;
use vmsilo_vmm::crosvm::{CrosvmControl, Request};
use vmsilo_vmm::qmp::QmpSession;

/// Why the VMM could not be asked to stop. Displayed with the causes of the VMM client's error
/// inline (the runtime's log has one line per event), so it has no `source` to print twice.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The QMP or crosvm client failed (connect, timeout, protocol, an error reply).
    #[error("{}", describe(.0))]
    Vmm(VmmError),
    /// crosvm answered, but not `"Ok"`.
    #[error("crosvm answered {reply} to {what}")]
    Refused {
        /// The request, as crosvm names it.
        what: &'static str,
        /// The reply, as debug text.
        reply: String,
    },
    /// The plan has neither a QMP nor a crosvm control socket.
    #[error("the VMM has no control socket")]
    NoSocket,
}

/// The error with its causes, for the runtime's log.
fn describe(e: &VmmError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Runs one QMP command without arguments (after the greeting and `qmp_capabilities`).
pub fn qmp(socket: &Path, command: &'static str, timeout: Duration) -> Result<Value, ControlError> {
    let mut session = QmpSession::connect(socket, timeout).map_err(ControlError::Vmm)?;
    session.execute(command, None).map_err(ControlError::Vmm)
}

/// Sends one request to crosvm's control socket; `Ok` when crosvm answers `"Ok"`.
pub fn crosvm(socket: &Path, request: Request, timeout: Duration) -> Result<(), ControlError> {
    let mut c = CrosvmControl::new(socket, timeout);
    match c.request(request).map_err(ControlError::Vmm)? {
        vmsilo_vmm::crosvm::Reply::Ok => Ok(()),
        other => Err(ControlError::Refused {
            what: request.what(),
            reply: format!("{other:?}"),
        }),
    }
}

fn socket_seqpacket() -> nix::Result<std::os::fd::OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Whether something listens on the unix socket at `path` (stream or seqpacket).
pub fn listening(path: &Path) -> std::io::Result<bool> {
    match UnixStream::connect(path) {
        Ok(_) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(libc_eprototype()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(false),
        Err(e) => return Err(e),
    }
    // A SOCK_SEQPACKET listener (crosvm's control socket) refuses stream clients.
    let fd = socket_seqpacket()?;
    let addr = UnixAddr::new(path)?;
    use std::os::fd::AsRawFd;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ECONNREFUSED) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn libc_eprototype() -> i32 {
    nix::errno::Errno::EPROTOTYPE as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn test_qmp_skips_events_and_returns_the_reply() {
        let dir = std::env::temp_dir().join(format!("vmsilo-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\":{\"version\":{}}}\n").expect("greet");
            let mut line = String::new();
            r.read_line(&mut line).expect("caps");
            assert!(line.contains("qmp_capabilities"));
            let caps: Value = serde_json::from_str(&line).expect("JSON");
            w.write_all(format!("{{\"return\":{{}},\"id\":{}}}\n", caps["id"]).as_bytes())
                .expect("w");
            line.clear();
            r.read_line(&mut line).expect("cmd");
            let cmd: Value = serde_json::from_str(&line).expect("JSON");
            w.write_all(
                format!(
                    "{{\"event\":\"POWERDOWN\"}}\n{{\"return\":{{\"ok\":1}},\"id\":{}}}\n",
                    cmd["id"]
                )
                .as_bytes(),
            )
            .expect("w");
            cmd
        });
        let v = qmp(&path, "system_powerdown", Duration::from_secs(5)).expect("qmp");
        assert_eq!(v["ok"], 1);
        let sent = server.join().expect("server");
        assert_eq!(sent["execute"], "system_powerdown");
        assert!(path.exists());
        assert!(
            !listening(&path).expect("probe"),
            "the listener is gone: the socket is stale"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
