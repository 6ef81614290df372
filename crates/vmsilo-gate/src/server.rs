//! The listening socket and one process per client.
//!
//! The parent is single-threaded: it polls the listener, a signalfd (SIGCHLD, SIGTERM,
//! SIGINT), the clipboard channels of its children and, when the compositor has a security
//! context, its own compositor connection. Each accepted connection is served by a forked
//! child ([`serve_client`]), so that anything a client does wrong (a protocol error, a panic
//! or fd exhaustion inside wl-proxy, too many objects) ends that client only.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use wl_proxy::baseline::Baseline;
use wl_proxy::client::ClientHandler;
use wl_proxy::object::Object;
use wl_proxy::state::State;

use crate::conn::{Conn, Limits};
use vmsilo_clipd::seqpacket::{self, Recv};

use crate::datadev::{self, DataDev, Hub, Link, Message, Msg, Out};
use crate::identity::Identity;
use crate::logger::warn_limited;
use crate::policy::Policy;
use crate::{frame, registry, sys};

/// The wl-proxy baseline the gate is written against (the policy caps versions further).
pub const BASELINE: Baseline = Baseline::V6;

/// `wl_display.error` code `no_memory`, used when a client exceeds a limit.
const NO_MEMORY: u32 = 2;

/// Everything a client child needs (cloned into each child).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who the VM is.
    pub identity: Rc<Identity>,
    /// The policy.
    pub policy: Rc<Policy>,
    /// Per-client limits.
    pub limits: Limits,
    /// Whether toplevels are framed.
    pub frame: bool,
    /// wl-proxy message logging.
    pub debug: bool,
    /// The global clipboard's chords (with `--clipd`), recognised in the keyboard events.
    pub chords: Option<crate::clip::Chords>,
}

/// The gate's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// What each client child gets.
    pub client: ClientConfig,
    /// The socket guests connect to.
    pub listen: PathBuf,
    /// The compositor's socket.
    pub compositor: PathBuf,
    /// Where the security-context socket goes.
    pub state_dir: PathBuf,
    /// Simultaneous clients.
    pub max_clients: usize,
    /// Install the seccomp filter.
    pub sandbox: bool,
    /// vmsilo-clipd's socket (`--clipd`): chords go there, pastes come from there.
    pub clipd: Option<PathBuf>,
}

/// How a client's service ended (the child's exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client disconnected.
    ClientGone = 0,
    /// The compositor connection failed or sent an error.
    Compositor = 1,
    /// The client was cut off (protocol error or limit).
    CutOff = 3,
    /// The client child panicked.
    Panicked = 4,
}

/// Errors of the gate's setup, each with what failed on what.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket.
    #[error("could not listen on {path}: {source}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A non-socket is in the way.
    #[error("{0} exists and is not a socket: remove it or choose another --listen path")]
    NotASocket(PathBuf),
    /// The parent directory is missing.
    #[error(
        "the directory of {0} does not exist: create it first (the gate does not create directories)"
    )]
    NoDir(PathBuf),
    /// Signals.
    #[error("could not set up signal handling: {0}")]
    Signals(nix::Error),
    /// The compositor.
    #[error(
        "could not connect to the compositor at {path}: {source} (is it running? check --compositor, WAYLAND_DISPLAY and XDG_RUNTIME_DIR)"
    )]
    Compositor {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The security context.
    #[error("could not set up the security context: {0}")]
    SecurityContext(String),
    /// The sandbox.
    #[error("could not install the seccomp filter: {0} (run with --no-sandbox to debug)")]
    Sandbox(String),
    /// A runtime failure of the parent's loop.
    #[error("{0}")]
    Runtime(String),
}

/// Binds the listening socket: the parent directory must exist, a stale socket is removed
/// (anything else in the way is an error), and the socket is created 0600.
pub fn bind_listener(path: &Path) -> Result<UnixListener, ServerError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        return Err(ServerError::NoDir(path.to_path_buf()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServerError::Listen {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let res = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = res.map_err(|source| ServerError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    l.set_nonblocking(true)
        .map_err(|source| ServerError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(l)
}

/// The clipboard channel of a child to the parent (`SOCK_SEQPACKET`, one [`Msg`] per
/// datagram, at most one fd).
#[derive(Debug, Clone)]
pub struct Chan {
    fd: Rc<OwnedFd>,
}

impl Chan {
    /// Wraps one end of the socketpair.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd: Rc::new(fd) }
    }

    /// The socket.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A new channel pair (non-blocking, close-on-exec).
pub fn chan_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    seqpacket::pair(true)
}

impl Link for Chan {
    fn send(&self, msg: &Msg, fd: Option<&OwnedFd>) {
        if let Err(e) = seqpacket::try_send(self.fd.as_fd(), msg, fd.map(|f| f.as_fd())) {
            warn_limited(
                "clipboard",
                &format!("could not reach the gate's parent: {e}"),
            );
        }
    }
}

struct ClientGone(Rc<Cell<bool>>);

impl ClientHandler for ClientGone {
    fn disconnected(self: Box<Self>) {
        self.0.set(true);
    }
}

/// Serves one guest client until it or the compositor goes away: the body of a client child.
/// `chan` is the clipboard channel to the parent.
pub fn serve_client(
    cfg: &ClientConfig,
    client_fd: OwnedFd,
    compositor_fd: OwnedFd,
    chan: Option<Chan>,
) -> End {
    let mut session = match Session::new(cfg, client_fd, compositor_fd, chan) {
        Ok(s) => s,
        Err(end) => return end,
    };
    loop {
        if let Step::End(end) = session.step(PollTimeout::NONE) {
            return end;
        }
    }
}

/// What one [`Session::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Still serving; `true` if messages were handled.
    Continue(bool),
    /// The service ended.
    End(End),
}

/// One guest client's service: its wl-proxy state (the client and its own compositor
/// connection), the policy handlers and its clipboard. Driven by [`Session::step`], so that
/// tests and the fuzz target can run it in-process.
pub struct Session {
    state: Rc<State>,
    _destroy: wl_proxy::state::Destructor,
    client: Rc<wl_proxy::client::Client>,
    client_sock: Rc<OwnedFd>,
    conn: Rc<Conn>,
    dd: Rc<DataDev>,
    chan: Option<Chan>,
    gone: Rc<Cell<bool>>,
    suspended: bool,
    objects: Vec<Rc<dyn Object>>,
    linger: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Sets up the service of the client on `client_fd`, with `compositor_fd` as its
    /// compositor connection.
    pub fn new(
        cfg: &ClientConfig,
        client_fd: OwnedFd,
        compositor_fd: OwnedFd,
        chan: Option<Chan>,
    ) -> Result<Session, End> {
        let state = match State::builder(BASELINE)
            .with_server_fd(&Rc::new(compositor_fd))
            .with_logging(cfg.debug)
            .build()
        {
            Ok(s) => s,
            Err(e) => {
                log::error!("could not set up the compositor connection: {e}");
                return Err(End::Compositor);
            }
        };
        let destroy = state.create_destructor();
        let client_sock = Rc::new(client_fd);
        let client = match state.add_client(&client_sock) {
            Ok(c) => c,
            Err(e) => {
                log::error!("could not add the client: {e}");
                return Err(End::Compositor);
            }
        };
        let gone = Rc::new(Cell::new(false));
        client.set_handler(ClientGone(gone.clone()));
        let conn = Rc::new(Conn::new(
            cfg.identity.clone(),
            cfg.policy.clone(),
            cfg.limits,
            cfg.frame,
        ));
        let link: Option<Box<dyn Link>> = chan.clone().map(|c| Box::new(c) as Box<dyn Link>);
        let dd = DataDev::new(link);
        if let (Some(chords), Some(chan)) = (cfg.chords, chan.clone()) {
            let send = move |c: vmsilo_clipd::proto::Chord| {
                let copy = c == vmsilo_clipd::proto::Chord::Copy;
                chan.send(&Msg::Chord { copy }, None);
            };
            crate::clip::register(
                &conn,
                crate::clip::ClipHook {
                    chords,
                    send: Rc::new(send),
                },
            );
        }
        crate::datadev::set_focus_sink(&dd);
        frame::start(&conn, &state);
        client
            .display()
            .set_handler(registry::Display::new(conn.clone(), dd.clone()));
        Ok(Session {
            state,
            _destroy: destroy,
            client,
            client_sock,
            conn,
            dd,
            chan,
            gone,
            suspended: false,
            objects: Vec::new(),
            linger: LINGER,
        })
    }

    fn ended(&self) -> End {
        if self.gone.get() {
            End::ClientGone
        } else {
            End::Compositor
        }
    }

    fn cut_off(&self, why: &str) {
        warn_limited(
            "limit",
            &format!("VM {:?}: client cut off: {why}", self.conn.identity.vm),
        );
        let obj: Rc<dyn Object> = self.client.display().clone();
        self.client.display().send_error(obj, NO_MEMORY, why);
        self.conn.cut_off.set(true);
    }

    /// Sets how long a cut-off client may read its error (default [`LINGER`]).
    pub fn set_linger(&mut self, d: Duration) {
        self.linger = d;
    }

    /// Waits up to `timeout` for work, handles it, checks the limits.
    pub fn step(&mut self, timeout: PollTimeout) -> Step {
        if self.state.is_destroyed() {
            return Step::End(End::Compositor);
        }
        if self.gone.get() {
            return Step::End(End::ClientGone);
        }
        if self.conn.cut_off.get() {
            let _ = self.state.before_poll();
            linger(&self.client_sock, self.linger);
            return Step::End(End::CutOff);
        }
        if let Err(e) = self.state.before_poll() {
            log::info!("connection ended: {e}");
            return Step::End(self.ended());
        }
        // Backpressure: while the client does not read (its socket buffer is full), stop
        // reading the compositor, so that events for it queue in the compositor, which
        // bounds them (and may disconnect), not in this process.
        let (writable, hung_up) = client_status(&self.client_sock);
        if hung_up {
            return Step::End(End::ClientGone);
        }
        let blocked = !writable;
        if blocked != self.suspended {
            self.state.set_suspended(blocked);
            self.suspended = blocked;
        }
        let (state_ready, chan_ready) = {
            let mut fds = vec![PollFd::new(self.state.poll_fd().as_fd(), PollFlags::POLLIN)];
            if let Some(c) = &self.chan {
                fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
            }
            if blocked {
                fds.push(PollFd::new(self.client_sock.as_fd(), PollFlags::POLLOUT));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return Step::Continue(false),
                Err(e) => {
                    log::error!("poll failed: {e}");
                    return Step::End(End::Compositor);
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                self.chan.is_some() && fds.get(1).is_some_and(ready),
            )
        };
        let mut worked = false;
        if state_ready {
            match self.state.dispatch_available() {
                Ok(w) => worked |= w,
                Err(e) => {
                    log::info!("connection ended: {e}");
                    return Step::End(self.ended());
                }
            }
        }
        if chan_ready && let Some(c) = &self.chan {
            worked = true;
            for _ in 0..64 {
                match seqpacket::try_recv(c.fd.as_fd()) {
                    Recv::Msg(Msg::Notice { text }, _) => {
                        let text = crate::notice::sanitize(&text);
                        frame::set_notice(&self.conn, (!text.is_empty()).then_some(text));
                    }
                    Recv::Msg(m, fd) => self.dd.handle_parent(m, fd),
                    Recv::Bad => warn_limited("clipboard", "malformed message from the parent"),
                    Recv::Empty => break,
                    Recv::Closed => return Step::End(End::Compositor),
                }
            }
        }
        if !self.gone.get() && !self.conn.cut_off.get() {
            self.objects.clear();
            self.client.objects(&mut self.objects);
            let n = self.objects.len();
            self.objects.clear();
            if n > self.conn.limits.max_objects {
                self.cut_off(&format!(
                    "too many objects ({n} > {}): the gate's per-client limit",
                    self.conn.limits.max_objects
                ));
            }
        }
        Step::Continue(worked)
    }
}

/// Whether the client socket has room to write, and whether the client has shut down its
/// sending side with nothing left to read (readable, and a peek finds end of file). (wl-proxy 0.1.5 treats a zero-byte read as "no
/// data", so a half-closed client would keep its process busy forever without this check.)
fn client_status(sock: &OwnedFd) -> (bool, bool) {
    let mut fds = [PollFd::new(
        sock.as_fd(),
        PollFlags::POLLOUT | PollFlags::POLLIN,
    )];
    let revents = match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
        Err(_) => return (true, false),
    };
    let writable = revents.contains(PollFlags::POLLOUT);
    let mut hung_up = false;
    if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
        let mut b = [0u8; 1];
        hung_up = match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => true,
            Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => false,
            Err(_) => true,
        };
    }
    (writable, hung_up)
}

/// How long a cut-off client has to read its `wl_display.error` before the gate closes.
pub const LINGER: Duration = Duration::from_secs(2);

/// After a protocol error: shuts down the sending side (the client reads the error, then
/// EOF, instead of a hang-up that some clients handle before reading) and waits, bounded by
/// [`LINGER`], for the client to close. What it still sends is discarded.
fn linger(sock: &OwnedFd, linger: Duration) {
    let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    let deadline = Instant::now() + linger;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return,
            Ok(_) => {}
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Connects to a unix stream socket without blocking (a full backlog is an error, EAGAIN).
fn connect_nonblocking(path: &Path) -> nix::Result<OwnedFd> {
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = nix::sys::socket::UnixAddr::new(path)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Sets the child's resource limits: fds (bounds fds in flight) and data (bounds queued
/// bytes and everything else the child allocates).
pub fn child_rlimits(limits: &Limits) {
    use nix::sys::resource::{Resource, setrlimit};
    let fds = limits.max_fds as u64;
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, fds, fds) {
        log::warn!("could not limit open files to {fds}: {e}");
    }
    let data = CHILD_DATA_LIMIT;
    if let Err(e) = setrlimit(Resource::RLIMIT_DATA, data, data) {
        log::warn!("could not limit the data segment to {data} bytes: {e}");
    }
}

/// RLIMIT_DATA of a client child.
pub const CHILD_DATA_LIMIT: u64 = 256 << 20;

struct ChildInfo {
    id: u64,
    chan: OwnedFd,
}

/// The parent: accepts, forks, reaps, routes the clipboard.
pub struct Parent {
    cfg: Config,
    listener: UnixListener,
    /// Where children connect: the compositor or the security-context listener.
    connect_to: PathBuf,
    secctx: Option<crate::secctx::SecCtx>,
    children: HashMap<i32, ChildInfo>,
    next_id: u64,
    hub: Hub,
    refused: u64,
    pid: u32,
    /// The connection to vmsilo-clipd and the content the gate holds as the VM's
    /// selection (see `clipd.rs`).
    clipd: crate::clipd::ClipdLink,
    /// The clipboard notice in the label band (see `notice.rs`).
    notices: crate::notice::Board,
}

impl Parent {
    /// The parent around a bound listener. `secctx` is the security context, if the
    /// compositor has one: children then connect to its listener.
    pub fn new(cfg: Config, listener: UnixListener, secctx: Option<crate::secctx::SecCtx>) -> Self {
        let connect_to = secctx
            .as_ref()
            .map(|s| s.path().to_path_buf())
            .unwrap_or_else(|| cfg.compositor.clone());
        let clipd = crate::clipd::ClipdLink::new(cfg.clipd.clone(), cfg.client.identity.vm.clone());
        Self {
            cfg,
            listener,
            connect_to,
            secctx,
            children: HashMap::new(),
            next_id: 1,
            hub: Hub::default(),
            refused: 0,
            pid: std::process::id(),
            clipd,
            notices: crate::notice::Board::default(),
        }
    }

    /// Removes the gate's sockets (only in the process that created them).
    fn cleanup(&mut self) {
        if std::process::id() != self.pid {
            return;
        }
        let _ = std::fs::remove_file(&self.cfg.listen);
        if let Some(s) = &self.secctx {
            let _ = std::fs::remove_file(s.path());
        }
    }

    fn kill_children(&mut self) {
        for pid in self.children.keys() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        for pid in self.children.keys() {
            let _ = waitpid(Pid::from_raw(*pid), None);
        }
        self.children.clear();
    }

    fn route(&mut self, outs: Vec<Out>, mut fd: Option<OwnedFd>) {
        for Out::To(child, msg) in outs {
            if child == datadev::GATE {
                let pass = if msg.has_fd() { fd.take() } else { None };
                self.clipd.gate_out(msg, pass);
                continue;
            }
            let Some(info) = self.children.values().find(|c| c.id == child) else {
                continue;
            };
            let pass = if msg.has_fd() { fd.take() } else { None };
            if msg.has_fd() && pass.is_none() {
                continue;
            }
            if let Err(e) =
                seqpacket::try_send(info.chan.as_fd(), &msg, pass.as_ref().map(|f| f.as_fd()))
            {
                warn_limited(
                    "clipboard",
                    &format!("could not reach client process {child}: {e}"),
                );
            }
        }
    }

    /// Tells every child (or only `only`) what the label band shows.
    fn send_notice(&self, text: &str, only: Option<i32>) {
        let msg = Msg::Notice {
            text: text.to_string(),
        };
        for (pid, info) in &self.children {
            if only.is_some_and(|o| o != *pid) {
                continue;
            }
            if let Err(e) = seqpacket::try_send(info.chan.as_fd(), &msg, None) {
                warn_limited(
                    "clipboard",
                    &format!("could not reach client process {}: {e}", info.id),
                );
            }
        }
    }

    /// Applies the notice changes due now.
    fn notices_due(&mut self) {
        let now = std::time::Instant::now();
        for text in self.clipd.take_notices() {
            if let Some(c) = self.notices.post(&text, now) {
                self.apply_notice(c);
            }
        }
        while let Some(c) = self.notices.tick(now) {
            self.apply_notice(c);
        }
    }

    fn apply_notice(&self, c: crate::notice::Change) {
        match c {
            crate::notice::Change::Show(t) => self.send_notice(&t, None),
            crate::notice::Change::Clear => self.send_notice("", None),
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                    if let Some(info) = self.children.remove(&pid.as_raw()) {
                        let outs = self.hub.child_gone(info.id);
                        self.route(outs, None);
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..16 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    warn_limited("accept", "out of file descriptors; connection left pending");
                    return;
                }
                Err(e) => {
                    warn_limited("accept", &format!("accept failed: {e}"));
                    return;
                }
            };
            if self.children.len() >= self.cfg.max_clients {
                self.refused += 1;
                warn_limited(
                    "clients",
                    &format!(
                        "VM {:?}: refused a connection: {} clients already (--max-clients); {} refused so far",
                        self.cfg.client.identity.vm, self.cfg.max_clients, self.refused
                    ),
                );
                drop(stream);
                continue;
            }
            self.spawn(stream);
        }
    }

    fn spawn(&mut self, stream: UnixStream) {
        // The parent connects for the child, so that the child needs no socket() or
        // connect() (its seccomp filter forbids them). Non-blocking: a compositor whose
        // backlog is full refuses this client instead of stalling the gate.
        let compositor = match connect_nonblocking(&self.connect_to) {
            Ok(c) => c,
            Err(e) => {
                warn_limited(
                    "clients",
                    &format!(
                        "VM {:?}: refused a connection: cannot connect to the compositor at {}: {e}",
                        self.cfg.client.identity.vm,
                        self.connect_to.display()
                    ),
                );
                return;
            }
        };
        let (mine, theirs) = match chan_pair() {
            Ok(p) => p,
            Err(e) => {
                warn_limited("clients", &format!("could not create a channel: {e}"));
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        match sys::fork() {
            Err(e) => warn_limited("clients", &format!("could not fork a client process: {e}")),
            Ok(sys::Forked::Child) => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.child(stream, compositor, theirs)
                }))
                .unwrap_or(End::Panicked as i32);
                sys::exit_now(code);
            }
            Ok(sys::Forked::Parent(pid)) => {
                drop(stream);
                drop(compositor);
                drop(theirs);
                self.children.insert(pid, ChildInfo { id, chan: mine });
                let outs = self.hub.child_added(id);
                self.route(outs, None);
                if let Some(t) = self.notices.current() {
                    self.send_notice(t, Some(pid));
                }
            }
        }
    }

    /// The child side after fork: never returns into the parent's loop.
    fn child(&self, stream: UnixStream, compositor: OwnedFd, chan: OwnedFd) -> i32 {
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        if nix::unistd::getppid().as_raw() as u32 != self.pid {
            return End::Compositor as i32;
        }
        sys::close_fds_except(&[stream.as_raw_fd(), compositor.as_raw_fd(), chan.as_raw_fd()]);
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&SigSet::empty()),
            None,
        );
        child_rlimits(&self.cfg.client.limits);
        if self.cfg.sandbox
            && let Err(e) = crate::sandbox::apply_child()
        {
            log::error!("could not install the client process's seccomp filter: {e}");
            return End::Compositor as i32;
        }
        serve_client(
            &self.cfg.client,
            OwnedFd::from(stream),
            compositor,
            Some(Chan::new(chan)),
        ) as i32
    }

    /// Runs until SIGTERM or SIGINT (then kills the children, removes the sockets and
    /// returns `Ok`), or a fatal error.
    pub fn run(&mut self, signals: &SignalFd) -> Result<(), ServerError> {
        loop {
            if let Some(s) = &self.secctx
                && let Err(e) = s.before_poll()
            {
                self.kill_children();
                self.cleanup();
                return Err(ServerError::Runtime(format!(
                    "the compositor connection holding the security context failed: {e}"
                )));
            }
            let child_ids: Vec<i32> = self.children.keys().copied().collect();
            let mut ready_children = Vec::new();
            let clipd_ready;
            let (listener_ready, signal_ready, secctx_ready) = {
                let secctx_fd = self.secctx.as_ref().map(|s| s.poll_fd());
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(f) = &secctx_fd {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                }
                let clipd_at = fds.len();
                if let Some(f) = self.clipd.fd() {
                    fds.push(PollFd::new(f, PollFlags::POLLIN));
                }
                let base = fds.len();
                for pid in &child_ids {
                    fds.push(PollFd::new(
                        self.children[pid].chan.as_fd(),
                        PollFlags::POLLIN,
                    ));
                }
                let timeout = match self.notices.deadline() {
                    None => PollTimeout::NONE,
                    Some(d) => {
                        let wait = d.saturating_duration_since(std::time::Instant::now());
                        // Rounded up, so that the wake-up is not before the deadline.
                        PollTimeout::try_from(wait + Duration::from_millis(1))
                            .unwrap_or(PollTimeout::MAX)
                    }
                };
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(ServerError::Runtime(format!("poll failed: {e}"))),
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                for (i, pid) in child_ids.iter().enumerate() {
                    if ready(&fds[base + i]) {
                        ready_children.push(*pid);
                    }
                }
                clipd_ready = base > clipd_at && ready(&fds[clipd_at]);
                (
                    ready(&fds[0]),
                    ready(&fds[1]),
                    secctx_fd.is_some() && ready(&fds[2]),
                )
            };
            if clipd_ready {
                let outs = self.clipd.handle(&mut self.hub);
                for (outs, fd) in outs {
                    self.route(outs, fd);
                }
            }
            self.notices_due();
            if signal_ready {
                while let Ok(Some(info)) = signals.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                            self.kill_children();
                            self.cleanup();
                            return Ok(());
                        }
                        _ => {}
                    }
                }
            }
            if secctx_ready
                && let Some(s) = &self.secctx
                && let Err(e) = s.dispatch()
            {
                self.kill_children();
                self.cleanup();
                return Err(ServerError::Runtime(format!(
                    "the compositor connection holding the security context failed: {e}"
                )));
            }
            for pid in ready_children {
                self.child_messages(pid);
            }
            if listener_ready {
                self.accept();
            }
        }
    }

    fn child_messages(&mut self, pid: i32) {
        for _ in 0..64 {
            let Some(info) = self.children.get(&pid) else {
                return;
            };
            let id = info.id;
            match seqpacket::try_recv(info.chan.as_fd()) {
                Recv::Msg(Msg::Chord { copy }, _) => self.clipd.chord(copy),
                Recv::Msg(msg, fd) => {
                    let outs = self.hub.handle(id, msg);
                    self.route(outs, fd);
                }
                Recv::Bad => warn_limited(
                    "clipboard",
                    &format!("malformed clipboard message from client process {id}"),
                ),
                Recv::Empty => return,
                Recv::Closed => {
                    // The child is exiting; SIGCHLD does the rest. Stop polling its channel.
                    let outs = self.hub.child_gone(id);
                    self.route(outs, None);
                    return;
                }
            }
        }
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Blocks SIGCHLD, SIGTERM and SIGINT and returns a signalfd for them.
pub fn signal_fd() -> Result<SignalFd, ServerError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().map_err(ServerError::Signals)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(ServerError::Signals)
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parent").finish_non_exhaustive()
    }
}
