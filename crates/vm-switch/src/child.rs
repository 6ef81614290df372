//! A port child: sandbox, seccomp, then serve vhost-user connections forever.
//!
//! The listening socket is created by the main process (the sandboxed child cannot bind in
//! the config directory). Each frontend connection gets a fresh `VhostUserDaemon` (fresh
//! vrings and worker thread) around the same [`NetBackend`], so a frontend disconnect resets
//! the port's guest-facing state and the child waits for the next connection; the rings to
//! other ports and their traffic are unaffected.
//!
//! One frontend at a time: while one holds the port, a helper thread accepts every further
//! connection and closes it at once (counted in `refused_frontends`, logged once per
//! connection held), so a second frontend sees EOF instead of waiting forever for a reply.

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{NetBackend, PortParams};
use crate::forward::PortId;
use crate::port_file::PortConfig;
use crate::seccomp::{self, SeccompMode};
use crate::stats::{Counter, PortStats};
use crate::sys;
use vhost_user_relay::Relay;

/// Everything a child needs, prepared by the main process before `fork`.
#[derive(Debug)]
pub struct ChildSetup {
    /// Port id.
    pub id: PortId,
    /// Port configuration.
    pub cfg: PortConfig,
    /// Port parameters.
    pub params: PortParams,
    /// Bound, listening vhost-user socket.
    pub listener: OwnedFd,
    /// Child end of the control channel.
    pub control: OwnedFd,
    /// Stats page memfd.
    pub stats: OwnedFd,
    /// Enter the namespace sandbox.
    pub sandbox: bool,
    /// Seccomp mode.
    pub seccomp: SeccompMode,
    /// Process title.
    pub title: String,
    /// Directory to mount the sandbox root on (the config dir).
    pub scratch: PathBuf,
}

/// Runs the child; never returns.
pub fn child_main(setup: ChildSetup) -> ! {
    let code = match run(setup) {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            1
        }
    };
    std::process::exit(code)
}

fn run(setup: ChildSetup) -> Result<(), String> {
    // Signals blocked for the main process's signalfd must work normally here.
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    sys::close_fds_except(&[
        setup.listener.as_raw_fd(),
        setup.control.as_raw_fd(),
        setup.stats.as_raw_fd(),
    ]);
    sys::set_process_title(&setup.title);
    let name = setup.cfg.name.clone();
    let stats = Arc::new(
        PortStats::from_fd(setup.stats).map_err(|e| format!("port {name}: stats page: {e}"))?,
    );
    let backend = NetBackend::new(
        setup.id,
        setup.cfg,
        setup.params,
        stats.clone(),
        Some(setup.control),
    )
    .map_err(|e| format!("port {name}: {e}"))?;
    if setup.sandbox {
        crate::sandbox::enter(&setup.scratch).map_err(|e| format!("port {name}: {e}"))?;
    }
    if setup.seccomp == SeccompMode::Trap {
        sys::install_sigsys_handler().map_err(|e| format!("port {name}: SIGSYS handler: {e}"))?;
    }
    seccomp::apply_child(setup.seccomp).map_err(|e| format!("port {name}: {e}"))?;
    serve(&name, backend, UnixListener::from(setup.listener), &stats)
}

/// Serves vhost-user connections on `listener` for `backend` until the process is told to
/// exit. Usable in-process (tests) as well as in a child.
pub fn serve(
    name: &str,
    backend: Arc<NetBackend>,
    listener: UnixListener,
    stats: &PortStats,
) -> Result<(), String> {
    // A connection the refuser accepted just as the previous frontend went away: the next
    // frontend, served before anything else in the backlog.
    let mut next: Option<UnixStream> = None;
    loop {
        let mut daemon = VhostUserDaemon::new(
            format!("vm-switch-{name}"),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("port {name}: could not create the vhost-user daemon: {e}"))?;
        let handlers = daemon.get_epoll_handlers();
        let Some(handler) = handlers.first() else {
            return Err(format!("port {name}: vhost-user daemon has no worker"));
        };
        backend
            .attach(handler.clone())
            .map_err(|e| format!("port {name}: could not register events: {e}"))?;
        let (relay_listener, relay_client) = backend
            .take_relay(Duration::from_secs(30))
            .map_err(|e| format!("port {name}: {e}"))?;
        let accepted = match next.take() {
            Some(s) => Ok(s),
            None => listener.accept().map(|(s, _)| s),
        };
        let frontend = match accepted {
            Ok(s) => s,
            Err(e) => {
                warn!("port {name}: accepting a frontend failed: {e}");
                backend.detach();
                drop(handlers);
                drop(daemon);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut inner = Listener::from(UnixListener::from(relay_listener));
        if let Err(e) = daemon.start(&mut inner) {
            warn!("port {name}: starting the vhost-user daemon failed: {e}");
            backend.detach();
            drop(handlers);
            drop(daemon);
            continue;
        }
        // A second handle on the frontend's socket, to tell whether it is still there when
        // another connection arrives (fcntl(F_DUPFD_CLOEXEC): no dup in the child's filter).
        let current = frontend.try_clone().ok();
        let relay = match Relay::start(frontend, UnixStream::from(relay_client)) {
            Ok(r) => r,
            Err(e) => {
                warn!("port {name}: could not start the relay: {e}");
                daemon.request_shutdown();
                let _ = daemon.wait();
                backend.detach();
                continue;
            }
        };
        backend.connected();
        info!("port {name}: frontend connected");
        let stop = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map_err(|e| format!("port {name}: could not create an eventfd: {e}"))?;
        let ended = std::thread::scope(|s| {
            let refuser = std::thread::Builder::new()
                .name("vm-switch-refuse".into())
                .spawn_scoped(s, || {
                    refuse_while_busy(name, &listener, current, &stop, stats)
                });
            let ended = daemon.wait();
            let _ = stop.write(1);
            if let Ok(refuser) = refuser {
                next = refuser.join().unwrap_or(None);
            } else {
                warn!("port {name}: could not start the thread that refuses second frontends");
            }
            ended
        });
        if frontend_closed(&ended) {
            info!("port {name}: frontend disconnected");
        } else if let Err(e) = ended {
            warn!("port {name}: frontend connection ended: {e}");
        }
        relay.stop();
        backend.detach();
        stats.set(Counter::Connected, 0);
        drop(handlers);
        drop(daemon);
        if backend.exit_requested() {
            return Ok(());
        }
    }
}

/// While the frontend on `current` holds the port, accepts every other connection on
/// `listener` and closes it at once, so a second frontend gets EOF instead of an unanswered
/// GET_FEATURES; the first refusal per held connection is logged, every one counted. Returns
/// when `stop` is signalled, or with a connection that arrived after `current` went away (the
/// next frontend, for the serving loop).
fn refuse_while_busy(
    name: &str,
    listener: &UnixListener,
    current: Option<UnixStream>,
    stop: &EventFd,
    stats: &PortStats,
) -> Option<UnixStream> {
    let mut logged = false;
    let mut accept_failed = false;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!("port {name}: waiting for connections to refuse failed: {e}");
                return None;
            }
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            return None;
        }
        if !ready(&fds[0]) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                // E.g. out of descriptors: the connection stays queued, so wait before the
                // next try instead of spinning on a listener that stays readable.
                if !accept_failed {
                    accept_failed = true;
                    warn!("port {name}: accepting a connection to refuse failed: {e}");
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if current.as_ref().is_none_or(peer_gone) {
            return Some(stream);
        }
        stats.add(Counter::RefusedFrontends, 1);
        if !logged {
            logged = true;
            warn!(
                "port {name}: refused another frontend connection: a frontend already holds \
                 this port (one VM per port; further refusals are counted in refused_frontends)"
            );
        }
        drop(stream);
    }
}

/// Whether the other end of `s` has hung up (or the relay has shut the socket down).
fn peer_gone(s: &UnixStream) -> bool {
    let hup = PollFlags::from_bits_retain(libc::POLLRDHUP) | PollFlags::POLLHUP;
    let mut fds = [PollFd::new(s.as_fd(), hup)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) => {
            n > 0
                && fds[0]
                    .revents()
                    .is_some_and(|r| r.intersects(hup | PollFlags::POLLERR))
        }
        Err(_) => false,
    }
}

/// Whether a vhost-user connection ended because the frontend closed it (its VM stopped):
/// `Disconnected` is a close at a message boundary, which vhost-user-backend reports as an
/// error (only a broken socket becomes `Ok`). crosvm closes this way after `"Exit"`.
fn frontend_closed(r: &Result<(), vhost_user_backend::Error>) -> bool {
    matches!(
        r,
        Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected
            ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_frontend_close_is_a_clean_disconnect() {
        use vhost_user_backend::Error;
        assert!(frontend_closed(&Ok(())));
        assert!(frontend_closed(&Err(Error::HandleRequest(
            VhostUserError::Disconnected
        ))));
        // A frontend that hung up in the middle of a message, or sent garbage, is worth a
        // warning.
        assert!(!frontend_closed(&Err(Error::HandleRequest(
            VhostUserError::PartialMessage
        ))));
        assert!(!frontend_closed(&Err(Error::HandleRequest(
            VhostUserError::InvalidMessage
        ))));
    }
}
