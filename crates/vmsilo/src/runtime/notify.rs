//! `sd_notify(3)`: readiness and status messages to systemd over `$NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (`READY=1`, `STATUS=...`, `STOPPING=1`) to `$NOTIFY_SOCKET` when it is set.
/// Returns whether a message was sent; failures are ignored (systemd is optional).
pub fn notify(state: &str) -> bool {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => path.to_str().is_some_and(|p| notify_to(p, state)),
        None => false,
    }
}

/// Sends `state` to the notification socket `path` (`@name` for an abstract socket).
pub fn notify_to(path: &str, state: &str) -> bool {
    let addr = if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(path)
    };
    let Ok(addr) = addr else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    sock.send_to_addr(state.as_bytes(), &addr).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_notify_to_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("vmsilo-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        assert!(notify_to(path.to_str().expect("utf-8"), "READY=1"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("vmsilo-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        assert!(notify_to(&format!("@{name}"), "STOPPING=1"));
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(!notify_to(&dir.join("none").to_string_lossy(), "READY=1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
