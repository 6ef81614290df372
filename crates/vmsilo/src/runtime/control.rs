//! Asking the VMM to stop: QMP (`system_powerdown`, `quit`) for QEMU, the crosvm control socket
//! (`"Powerbtn"`, `"Exit"`: one JSON datagram on SOCK_SEQPACKET) for crosvm.
//!
//! Each request opens its own connection with timeouts: QEMU serves one QMP client at a time
//! and vmsilo-balloond uses the same sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, connect, recv, send, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;
use serde_json::Value;

/// Longest QMP line accepted.
const MAX_LINE: u64 = 1 << 20;
/// Most asynchronous events skipped while waiting for a reply.
const MAX_EVENTS: usize = 1000;

fn read_line(r: &mut BufReader<UnixStream>) -> Result<Value, String> {
    let mut line = String::new();
    let n = r
        .by_ref()
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|e| format!("reading QMP: {e}"))?;
    if n == 0 {
        return Err("QMP closed the connection".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("QMP sent malformed JSON: {e}"))
}

fn qmp_reply(r: &mut BufReader<UnixStream>) -> Result<Value, String> {
    for _ in 0..MAX_EVENTS {
        let v = read_line(r)?;
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = v.get("error") {
            return Err(format!("QMP error: {err}"));
        }
    }
    Err("QMP sent only events".into())
}

/// Runs one QMP command (after the greeting and `qmp_capabilities`).
pub fn qmp(socket: &Path, command: &str, timeout: Duration) -> Result<Value, String> {
    let s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to QMP at {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let greeting = read_line(&mut r)?;
    if greeting.get("QMP").is_none() {
        return Err(format!("no QMP greeting on {}", socket.display()));
    }
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .map_err(|e| format!("writing to QMP: {e}"))?;
    qmp_reply(&mut r)?;
    w.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
        .map_err(|e| format!("writing to QMP: {e}"))?;
    qmp_reply(&mut r)
}

/// Sends one request to crosvm's control socket and returns the reply text.
pub fn crosvm(socket: &Path, request: &str, timeout: Duration) -> Result<String, String> {
    let fd = socket_seqpacket().map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    use std::os::fd::AsRawFd;
    connect(fd.as_raw_fd(), &addr)
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let tv = TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(|e| e.to_string())?;
    setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(|e| e.to_string())?;
    send(fd.as_raw_fd(), request.as_bytes(), MsgFlags::empty())
        .map_err(|e| format!("sending {request} to crosvm: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("waiting for crosvm's reply to {request}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
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
            w.write_all(b"{\"return\":{}}\n").expect("w");
            line.clear();
            r.read_line(&mut line).expect("cmd");
            w.write_all(b"{\"event\":\"POWERDOWN\"}\n{\"return\":{\"ok\":1}}\n")
                .expect("w");
            line
        });
        let v = qmp(&path, "system_powerdown", Duration::from_secs(5)).expect("qmp");
        assert_eq!(v["ok"], 1);
        let sent = server.join().expect("server");
        assert_eq!(sent.trim(), "{\"execute\":\"system_powerdown\"}");
        assert!(path.exists());
        assert!(
            !listening(&path).expect("probe"),
            "the listener is gone: the socket is stale"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
