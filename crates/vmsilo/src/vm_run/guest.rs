//! Reaching the guest agent's vsock port from the host: `AF_VSOCK` to the VM's CID (crosvm and
//! the kernel's vhost-vsock), or the hybrid-vsock Unix socket of vhost-device-vsock (QEMU) with
//! its `CONNECT <port>\n` / `OK …\n` handshake.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, VsockAddr, connect, socket};
use vmsilo_config::plan::LaunchPlan;
use vmsilo_proto::hybrid::{HybridError, PendingConnect};

/// Where the guest's vsock is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestAddr {
    /// vhost-device-vsock's hybrid-vsock Unix socket (`paths.vsockSocket` of a QEMU plan).
    Hybrid(PathBuf),
    /// The kernel's vsock, guest CID `cid` (crosvm).
    Vsock {
        /// The guest's CID.
        cid: u32,
    },
}

/// Why one attempt to reach the agent failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The VM's vsock is not there: the VM is not running (yet).
    NoVm(String),
    /// The VM runs but nothing listens on the port (yet): the guest is booting.
    NotListening(String),
    /// The VM runs but its vsock device is not started yet (hybrid vsock: the backend closed
    /// the connection without reading `CONNECT`): early in the guest's boot.
    NotStarted(String),
    /// Something else went wrong (the message says what).
    Other(String),
}

impl ConnectError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            ConnectError::NoVm(m)
            | ConnectError::NotListening(m)
            | ConnectError::NotStarted(m)
            | ConnectError::Other(m) => m,
        }
    }
}

impl GuestAddr {
    /// The agent's address for a plan: hybrid vsock when the plan has a vsock socket (QEMU),
    /// the guest's CID otherwise.
    pub fn from_plan(plan: &LaunchPlan) -> GuestAddr {
        match &plan.paths.vsock_socket {
            Some(p) => GuestAddr::Hybrid(PathBuf::from(p)),
            None => GuestAddr::Vsock {
                cid: plan.vsock_cid,
            },
        }
    }

    /// For messages: `hybrid vsock /run/vmsilo/a-vsock.socket` or `vsock CID 3`.
    pub fn describe(&self) -> String {
        match self {
            GuestAddr::Hybrid(p) => format!("hybrid vsock {}", p.display()),
            GuestAddr::Vsock { cid } => format!("vsock CID {cid}"),
        }
    }

    /// Starts one attempt to connect to `port` in the guest. `AF_VSOCK` connects at once (the
    /// kernel waits for the guest's answer); hybrid vsock returns the attempt with its `CONNECT`
    /// sent, to be watched with [`poll_attempt`] and never closed unanswered (see
    /// [`vmsilo_proto::hybrid`]: that would break the VM's vsock for good).
    pub fn begin(&self, port: u32) -> Result<Attempt, ConnectError> {
        match self {
            GuestAddr::Hybrid(path) => begin_hybrid(path, port).map(Attempt::Pending),
            GuestAddr::Vsock { cid } => connect_vsock(*cid, port).map(Attempt::Connected),
        }
    }
}

/// A started connection attempt.
#[derive(Debug)]
pub enum Attempt {
    /// Connected: a blocking stream that carries the port's bytes.
    Connected(OwnedFd),
    /// Hybrid vsock: `CONNECT` sent, the answer not read yet.
    Pending(PendingConnect),
}

fn begin_hybrid(path: &Path, port: u32) -> Result<PendingConnect, ConnectError> {
    let s = connect_unix(path)?;
    PendingConnect::send(s, port).map_err(|e| hybrid_error(path, e))
}

/// Connects without blocking: a listener whose queue is full (a wedged backend that accepts
/// nothing) fails at once with `EAGAIN` instead of blocking this connection's thread past its
/// deadline. The stream returned is blocking.
fn connect_unix(path: &Path) -> Result<UnixStream, ConnectError> {
    let m = |e: &dyn std::fmt::Display| format!("cannot connect to {}: {e}", path.display());
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| ConnectError::Other(m(&e)))?;
    let addr = UnixAddr::new(path).map_err(|e| ConnectError::Other(m(&e)))?;
    match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
        Ok(()) => {}
        Err(e @ (Errno::ENOENT | Errno::ECONNREFUSED)) => return Err(ConnectError::NoVm(m(&e))),
        Err(e @ Errno::EAGAIN) => {
            return Err(ConnectError::NotListening(format!(
                "{} (its queue of connections is full: the backend accepts nothing)",
                m(&e)
            )));
        }
        Err(e) => return Err(ConnectError::Other(m(&e))),
    }
    let s = UnixStream::from(fd);
    s.set_nonblocking(false)
        .map_err(|e| ConnectError::Other(m(&e)))?;
    Ok(s)
}

fn hybrid_error(path: &Path, e: HybridError) -> ConnectError {
    match e {
        e @ HybridError::Refused { .. } => ConnectError::NotListening(e.to_string()),
        e @ HybridError::NotStarted { .. } => ConnectError::NotStarted(e.to_string()),
        e => ConnectError::Other(format!("{} ({})", e, path.display())),
    }
}

/// Looks at a pending hybrid attempt, waiting at most `wait` for its answer. `Ok(None)`:
/// still unanswered (keep it, or hand it to [`vmsilo_proto::hybrid::linger`]); `Ok(Some)`:
/// connected; `Err`: this attempt is over.
pub fn poll_attempt(
    path: &Path,
    attempt: &mut PendingConnect,
    wait: Duration,
) -> Result<Option<OwnedFd>, ConnectError> {
    match attempt.poll(wait) {
        Ok(Some(s)) => Ok(Some(OwnedFd::from(s))),
        Ok(None) => Ok(None),
        Err(e) => Err(hybrid_error(path, e)),
    }
}

fn connect_vsock(cid: u32, port: u32) -> Result<OwnedFd, ConnectError> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| {
        ConnectError::Other(format!(
            "cannot create an AF_VSOCK socket: {e} (is the vsock module loaded? modprobe \
             vhost_vsock)"
        ))
    })?;
    match connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(cid, port),
    ) {
        Ok(()) => Ok(fd),
        Err(e) => {
            let m = format!("vsock CID {cid} port {port}: {e}");
            Err(match e {
                Errno::ECONNRESET | Errno::ECONNREFUSED => ConnectError::NotListening(m),
                Errno::ENODEV | Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::ETIMEDOUT => {
                    ConnectError::NoVm(m)
                }
                _ => ConnectError::Other(m),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn test_hybrid_missing_socket_is_no_vm_and_refusal_is_not_listening() {
        let dir = std::env::temp_dir().join(format!("vmsilo-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let addr = GuestAddr::Hybrid(path.clone());
        let e = addr.begin(5000).expect_err("no socket");
        assert!(matches!(e, ConnectError::NoVm(_)), "{e:?}");

        let listener = UnixListener::bind(&path).expect("bind");
        let t = std::thread::spawn(move || {
            // First connection: closed after CONNECT (nothing listens); second: accepted.
            for reply in [None, Some("OK 5000\n")] {
                let (s, _) = listener.accept().expect("accept");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                r.read_line(&mut line).expect("line");
                assert_eq!(line, "CONNECT 5000\n");
                if let Some(reply) = reply {
                    (&s).write_all(reply.as_bytes()).expect("reply");
                    (&s).write_all(b"after").expect("data");
                }
            }
        });
        let wait = Duration::from_secs(60);
        let Attempt::Pending(mut p) = addr.begin(5000).expect("begun") else {
            panic!("hybrid attempts are pending first")
        };
        let e = poll_attempt(&path, &mut p, wait).expect_err("refused");
        assert!(matches!(e, ConnectError::NotListening(_)), "{e:?}");
        let Attempt::Pending(mut p) = addr.begin(5000).expect("begun") else {
            panic!("hybrid attempts are pending first")
        };
        let fd = poll_attempt(&path, &mut p, wait)
            .expect("accepted")
            .expect("answered");
        let mut s = UnixStream::from(fd);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut s, &mut rest).expect("read");
        assert_eq!(rest, "after");
        t.join().expect("peer");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_hybrid_full_queue_is_not_listening_and_does_not_block() {
        // A backend that accepts nothing (vhost-device-vsock with a dead worker): once its
        // queue is full, an attempt fails at once instead of blocking in connect().
        let dir = std::env::temp_dir().join(format!("vmsilo-fullq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = UnixListener::bind(&path).expect("bind");
        let addr = GuestAddr::Hybrid(path.clone());
        let mut queued = Vec::new();
        let e = loop {
            match addr.begin(5000) {
                Ok(a) => queued.push(a),
                Err(e) => break e,
            }
            assert!(queued.len() < 100_000, "the queue never filled");
        };
        assert!(matches!(e, ConnectError::NotListening(_)), "{e:?}");
        assert!(
            e.message().contains("queue of connections is full"),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_address_from_plan_and_description() {
        assert_eq!(
            GuestAddr::Vsock { cid: 3 }.describe(),
            "vsock CID 3".to_owned()
        );
        assert!(
            GuestAddr::Hybrid("/run/vmsilo/a-vsock.socket".into())
                .describe()
                .ends_with("a-vsock.socket")
        );
    }
}
