//! The daemon: the socket (0600, peers of another uid refused by `SO_PEERCRED`), the peers
//! (gates, one registered per VM; the CLI), copies through a gate's `Fetch`, pastes through a
//! gate's `Put`, the log (metadata only) and the notifications.
//!
//! Single-threaded: one `poll` over the listener, the peers and a stop fd. Reading a VM's
//! clipboard from the pipe its gate handed to the guest is the one blocking step, bounded by
//! the size cap and [`Options::fetch_timeout`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, getsockopt, listen,
    socket, sockopt,
};
use vmsilo_log::Limiter;

use crate::chan::{self, Recv};
use crate::core::{BandEvent, Clipboard, Endpoint, Refusal, Settings, Transfer, band_text};
use crate::proto::{Chord, Msg, Outcome};

/// Most peers at once (gates and CLI calls).
pub const MAX_PEERS: usize = 256;
/// Most copies in flight.
pub const MAX_PENDING: usize = 16;
/// Most log lines per second (more are counted and summarised).
pub const LOG_PER_SECOND: u32 = 20;

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The listening socket.
    pub socket: PathBuf,
    /// Policy, cap, MIME types, wipe timeout.
    pub settings: Settings,
    /// Desktop notifications (`notify-send`, when a session bus exists) besides the log.
    pub desktop_notifications: bool,
    /// How long a VM may take to write its clipboard into the pipe.
    pub fetch_timeout: Duration,
}

/// Errors of the daemon's setup.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket.
    #[error("could not listen on {path}: {source}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another daemon answers there.
    #[error(
        "another vmsilo-clipd already listens on {0}: stop it first (systemctl --user stop vmsilo-clipd)"
    )]
    Running(PathBuf),
    /// A non-socket is in the way.
    #[error("{0} exists and is not a socket: remove it or choose another --socket")]
    NotASocket(PathBuf),
    /// The settings.
    #[error("invalid settings: {0}")]
    Settings(String),
}

/// Records of what the user is shown (tests read them; the daemon also logs each one).
pub type Records = Arc<Mutex<Vec<String>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    New,
    Gate(String),
    Cli,
}

#[derive(Debug)]
struct Peer {
    id: u64,
    fd: OwnedFd,
    role: Role,
}

#[derive(Debug)]
struct Pending {
    read: OwnedFd,
    vm: String,
    gate: u64,
    requester: Option<u64>,
    started: Instant,
}

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    opts: Options,
    listener: OwnedFd,
    peers: Vec<Peer>,
    next_id: u64,
    next_req: u64,
    pending: HashMap<u64, Pending>,
    clip: Clipboard,
    uid: u32,
    records: Records,
    limiter: Limiter,
    notifiers: Vec<std::process::Child>,
}

/// Binds the listening socket (0600), removing a stale one.
pub fn bind_socket(path: &Path) -> Result<OwnedFd, DaemonError> {
    let err = |source: std::io::Error| DaemonError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(DaemonError::NotASocket(path.to_path_buf()));
        }
        if chan::connect_to(path).is_ok() {
            return Err(DaemonError::Running(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let s = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| err(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
    bind(s.as_raw_fd(), &addr).map_err(|e| err(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    listen(&s, Backlog::new(16).unwrap_or(Backlog::MAXCONN)).map_err(|e| err(e.into()))?;
    Ok(s)
}

fn valid_vm(vm: &str) -> bool {
    !vm.is_empty()
        && vm.len() <= 64
        && vm != "host"
        && vm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Daemon {
    /// Validates the settings and binds the socket.
    pub fn new(opts: Options) -> Result<Daemon, DaemonError> {
        opts.settings.validate().map_err(DaemonError::Settings)?;
        let listener = bind_socket(&opts.socket)?;
        Ok(Daemon {
            clip: Clipboard::new(opts.settings.clone()),
            opts,
            listener,
            peers: Vec::new(),
            next_id: 1,
            next_req: 1,
            pending: HashMap::new(),
            uid: nix::unistd::getuid().as_raw(),
            records: Records::default(),
            limiter: Limiter::new(LOG_PER_SECOND, Duration::from_secs(1)),
            notifiers: Vec::new(),
        })
    }

    /// What the user has been shown so far (shared; tests read it while the daemon runs).
    pub fn records(&self) -> Records {
        self.records.clone()
    }

    fn log(&mut self, line: &str) {
        if let Some(dropped) = self.limiter.allow(Instant::now()) {
            if dropped > 0 {
                eprintln!("vmsilo-clipd: {dropped} log lines suppressed (rate limit)");
            }
            // Lines carry VM names, MIME types and errors a guest may have shaped.
            eprintln!("vmsilo-clipd: {}", vmsilo_proto::text::escape(line));
        }
    }

    /// Tells the user: always the log (and [`Self::records`]), and a desktop notification
    /// when enabled and a session bus exists.
    fn notify(&mut self, summary: &str, body: &str) {
        let body = &*vmsilo_proto::text::escape(body);
        self.log(&format!("{summary}: {body}"));
        if let Ok(mut r) = self.records.lock()
            && r.len() < 10_000
        {
            r.push(format!("{summary}: {body}"));
        }
        self.notifiers
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        if !self.opts.desktop_notifications
            || self.notifiers.len() >= 8
            || std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        {
            return;
        }
        if let Ok(c) = std::process::Command::new("notify-send")
            .args(["--app-name=vmsilo", "--expire-time=4000", summary, body])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            self.notifiers.push(c);
        }
    }

    fn peer_fd(&self, id: u64) -> Option<BorrowedFd<'_>> {
        self.peers.iter().find(|p| p.id == id).map(|p| p.fd.as_fd())
    }

    fn gate_of(&self, vm: &str) -> Option<u64> {
        self.peers
            .iter()
            .find(|p| p.role == Role::Gate(vm.to_string()))
            .map(|p| p.id)
    }

    fn reply(&mut self, to: Option<u64>, outcome: Outcome, text: &str) {
        if let Some(to) = to
            && let Some(fd) = self.peer_fd(to)
        {
            let _ = chan::send(
                fd,
                &Msg::Reply {
                    outcome,
                    text: text.to_string(),
                },
                None,
            );
        }
    }

    /// Tells the gate of `vm` (if it has one registered) to show the event in the label band
    /// of the VM's windows. Best effort: a gate that does not take it is not waited for.
    fn band(&mut self, vm: Option<&str>, e: BandEvent<'_>) {
        let Some(gate) = vm.and_then(|vm| self.gate_of(vm)) else {
            return;
        };
        let msg = Msg::Notice { text: band_text(e) };
        if let Some(fd) = self.peer_fd(gate) {
            let _ = chan::send(fd, &msg, None);
        }
    }

    /// `vm`: the VM the refusal concerns (its band shows it).
    fn refused(&mut self, what: &str, to: Option<u64>, vm: Option<&str>, r: &Refusal) {
        let outcome = if *r == Refusal::NeedConfirm {
            Outcome::NeedConfirm
        } else {
            Outcome::Refused
        };
        let summary = if *r == Refusal::NeedConfirm {
            "Clipboard: confirm"
        } else {
            "Clipboard: refused"
        };
        self.notify(summary, &format!("{what}: {r}"));
        self.band(vm, BandEvent::Refused(r));
        self.reply(to, outcome, &format!("{what}: {r}"));
    }

    /// `vm`: the VM the failure concerns (its band shows it).
    fn failed(&mut self, to: Option<u64>, vm: Option<&str>, text: &str) {
        self.notify("Clipboard: failed", text);
        self.band(vm, BandEvent::Failed);
        self.reply(to, Outcome::Failed, text);
    }

    /// The band shown: the source VM's for a copy, the destination VM's for a paste.
    fn transferred(&mut self, to: Option<u64>, t: &Transfer) {
        let summary = if t.to.is_none() {
            "Clipboard: copied"
        } else {
            "Clipboard: pasted"
        };
        self.notify(summary, &t.to_string());
        let vm = match t.to.as_ref().unwrap_or(&t.from) {
            Endpoint::Vm(v) => Some(v.clone()),
            Endpoint::Host => None,
        };
        self.band(vm.as_deref(), BandEvent::Done(t));
        self.reply(to, Outcome::Ok, &t.to_string());
    }

    /// Asks `vm`'s gate for its clipboard.
    fn start_fetch(&mut self, vm: &str, requester: Option<u64>) {
        let Some(gate) = self.gate_of(vm) else {
            self.failed(
                requester,
                Some(vm),
                &format!("copy from {vm}: its gate is not running (is the VM started with gpu?)"),
            );
            return;
        };
        if self.pending.len() >= MAX_PENDING {
            self.failed(
                requester,
                Some(vm),
                &format!("copy from {vm}: too many copies in flight"),
            );
            return;
        }
        let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                self.failed(
                    requester,
                    Some(vm),
                    &format!("copy from {vm}: could not create a pipe: {e}"),
                );
                return;
            }
        };
        let req = self.next_req;
        self.next_req += 1;
        let msg = Msg::Fetch {
            req,
            mimes: self.opts.settings.mimes.clone(),
        };
        let sent = self
            .peer_fd(gate)
            .map(|fd| chan::send(fd, &msg, Some(write.as_fd())));
        drop(write);
        if !matches!(sent, Some(Ok(()))) {
            self.failed(
                requester,
                Some(vm),
                &format!("copy from {vm}: its gate did not take the request"),
            );
            return;
        }
        self.pending.insert(
            req,
            Pending {
                read,
                vm: vm.to_string(),
                gate,
                requester,
                started: Instant::now(),
            },
        );
    }

    fn finish_fetch(&mut self, gate: u64, req: u64, mime: &str) {
        if self.pending.get(&req).map(|p| p.gate) != Some(gate) {
            return;
        }
        let Some(p) = self.pending.remove(&req) else {
            return;
        };
        let what = format!("copy from {}", p.vm);
        if mime.is_empty() {
            self.refused(&what, p.requester, Some(&p.vm), &Refusal::NothingToCopy);
            return;
        }
        if !self.opts.settings.mimes.iter().any(|m| m == mime) {
            self.refused(
                &what,
                p.requester,
                Some(&p.vm),
                &Refusal::Mime(mime.to_string()),
            );
            return;
        }
        let max = self.opts.settings.max_bytes();
        match chan::read_pipe(p.read, max, self.opts.fetch_timeout) {
            Err(e) => self.failed(p.requester, Some(&p.vm), &format!("{what}: {e}")),
            Ok(Err(seen)) => self.refused(
                &what,
                p.requester,
                Some(&p.vm),
                &Refusal::OverCap {
                    size: seen,
                    cap: self.opts.settings.max_size,
                },
            ),
            Ok(Ok(data)) => {
                match self
                    .clip
                    .copy(Endpoint::Vm(p.vm.clone()), mime, data, Instant::now())
                {
                    Ok(t) => self.transferred(p.requester, &t),
                    Err(r) => self.refused(&what, p.requester, Some(&p.vm), &r),
                }
            }
        }
    }

    /// Pastes the slot into `dest` (a VM through its gate; the host through the CLI).
    fn paste(&mut self, dest: Endpoint, confirm: bool, requester: Option<u64>) {
        let what = format!("paste into {dest}");
        let band_vm = match &dest {
            Endpoint::Vm(vm) => Some(vm.clone()),
            Endpoint::Host => None,
        };
        let band_vm = band_vm.as_deref();
        let gate = match &dest {
            Endpoint::Vm(vm) => match self.gate_of(vm) {
                Some(g) => Some(g),
                None => {
                    self.failed(requester, None, &format!("{what}: its gate is not running"));
                    return;
                }
            },
            Endpoint::Host => None,
        };
        let (slot, t) = match self.clip.paste(&dest, confirm, Instant::now()) {
            Ok(x) => x,
            Err(r) => {
                let what = match self.clip.slot() {
                    Some(s) => format!("paste {} → {dest}", s.source),
                    None => what,
                };
                self.refused(&what, requester, band_vm, &r);
                return;
            }
        };
        let memfd = match chan::memfd_with(&slot.data) {
            Ok(f) => f,
            Err(e) => {
                self.failed(
                    requester,
                    band_vm,
                    &format!("{what}: could not hold the content: {e}"),
                );
                return;
            }
        };
        let (to, msg) = match gate {
            Some(g) => (
                Some(g),
                Msg::Put {
                    mime: slot.mime.clone(),
                },
            ),
            None => (
                requester,
                Msg::Data {
                    mime: slot.mime.clone(),
                    source: slot.source.to_string(),
                },
            ),
        };
        let sent = to
            .and_then(|id| self.peer_fd(id))
            .map(|fd| chan::send(fd, &msg, Some(memfd.as_fd())));
        if !matches!(sent, Some(Ok(()))) {
            self.failed(
                requester,
                band_vm,
                &format!("{what}: could not hand the content over"),
            );
            return;
        }
        self.notify("Clipboard: pasted", &t.to_string());
        self.band(band_vm, BandEvent::Done(&t));
        if gate.is_some() {
            self.reply(requester, Outcome::Ok, &t.to_string());
        }
    }

    fn handle(&mut self, id: u64, msg: Msg, fd: Option<OwnedFd>) -> bool {
        let Some(role) = self
            .peers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.role.clone())
        else {
            return false;
        };
        match (role, msg) {
            (Role::New, Msg::Hello { vm }) => {
                let role = if vm.is_empty() {
                    Role::Cli
                } else if !valid_vm(&vm) {
                    self.log(&format!("refused a gate with an invalid VM name {vm:?}"));
                    return false;
                } else if self.gate_of(&vm).is_some() {
                    self.log(&format!(
                        "refused a second gate for VM {vm:?} (one is registered already)"
                    ));
                    return false;
                } else {
                    self.log(&format!("gate of VM {vm:?} registered"));
                    Role::Gate(vm)
                };
                if let Some(p) = self.peers.iter_mut().find(|p| p.id == id) {
                    p.role = role;
                }
            }
            (Role::Gate(vm), Msg::Chord(Chord::Copy)) => self.start_fetch(&vm, None),
            (Role::Gate(vm), Msg::Chord(Chord::Paste)) => self.paste(Endpoint::Vm(vm), false, None),
            (Role::Gate(_), Msg::Fetched { req, mime }) => self.finish_fetch(id, req, &mime),
            (Role::Cli, Msg::Copy { vm }) => self.start_fetch(&vm, Some(id)),
            (Role::Cli, Msg::Paste { vm, confirm }) => {
                self.paste(Endpoint::parse(&vm), confirm, Some(id))
            }
            (Role::Cli, Msg::ToHost { confirm }) => self.paste(Endpoint::Host, confirm, Some(id)),
            (Role::Cli, Msg::FromHost { mime }) => {
                let Some(fd) = fd else { return false };
                let what = "copy from host";
                match chan::read_memfd(fd, self.opts.settings.max_bytes()) {
                    Err(e) => self.failed(Some(id), None, &format!("{what}: {e}")),
                    Ok(Err(seen)) => self.refused(
                        what,
                        Some(id),
                        None,
                        &Refusal::OverCap {
                            size: seen,
                            cap: self.opts.settings.max_size,
                        },
                    ),
                    Ok(Ok(data)) => {
                        match self.clip.copy(Endpoint::Host, &mime, data, Instant::now()) {
                            Ok(t) => self.transferred(Some(id), &t),
                            Err(r) => self.refused(what, Some(id), None, &r),
                        }
                    }
                }
            }
            (Role::Cli, Msg::Query) => {
                let msg = match self.clip.slot() {
                    Some(s) => Msg::Status {
                        source: s.source.to_string(),
                        mime: s.mime.clone(),
                        size: s.size as u64,
                    },
                    None => Msg::Status {
                        source: String::new(),
                        mime: String::new(),
                        size: 0,
                    },
                };
                if let Some(fd) = self.peer_fd(id) {
                    let _ = chan::send(fd, &msg, None);
                }
            }
            (Role::Cli, Msg::Wipe) => {
                let had = self.clip.wipe();
                if had {
                    self.log("the global clipboard was wiped (vmsilo clipboard wipe)");
                }
                self.reply(Some(id), Outcome::Ok, "the global clipboard is empty");
            }
            (role, msg) => {
                self.log(&format!(
                    "closed a peer ({role:?}) that sent an unexpected {}",
                    match msg {
                        Msg::Hello { .. } => "hello",
                        _ => "message",
                    }
                ));
                return false;
            }
        }
        true
    }

    fn accept(&mut self) {
        for _ in 0..16 {
            let fd = match accept4(
                self.listener.as_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
                Err(e) => {
                    self.log(&format!("accept failed: {e}"));
                    return;
                }
            };
            let same_user = getsockopt(&fd, sockopt::PeerCredentials)
                .map(|c| c.uid() == self.uid)
                .unwrap_or(false);
            if !same_user {
                self.log("refused a peer of another user (SO_PEERCRED)");
                continue;
            }
            if self.peers.len() >= MAX_PEERS {
                self.log("refused a peer: too many connections");
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.peers.push(Peer {
                id,
                fd,
                role: Role::New,
            });
        }
    }

    fn drop_peer(&mut self, id: u64) {
        if let Some(p) = self.peers.iter().find(|p| p.id == id)
            && let Role::Gate(vm) = &p.role
        {
            let vm = vm.clone();
            self.log(&format!("gate of VM {vm:?} gone"));
        }
        self.peers.retain(|p| p.id != id);
        self.pending.retain(|_, p| p.gate != id);
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if let Some(t) = self.clip.tick(now) {
            self.log(&format!(
                "wiped the global clipboard after {:?}: {t}",
                self.opts.settings.wipe_after
            ));
        }
        let timeout = self.opts.fetch_timeout;
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) > timeout)
            .map(|(r, _)| *r)
            .collect();
        for r in stale {
            if let Some(p) = self.pending.remove(&r) {
                let vm = p.vm.clone();
                self.failed(
                    p.requester,
                    Some(&vm),
                    &format!("copy from {vm}: its gate did not answer in time"),
                );
            }
        }
    }

    /// Runs until `stop` becomes readable (or hangs up).
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> std::io::Result<()> {
        loop {
            self.tick();
            let mut timeout = Duration::from_secs(1);
            if let Some(d) = self.clip.deadline() {
                timeout = timeout.min(d.saturating_duration_since(Instant::now()));
            }
            let ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
            let (stop_ready, listen_ready, ready) = {
                let mut fds = vec![
                    PollFd::new(stop, PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                for p in &self.peers {
                    fds.push(PollFd::new(p.fd.as_fd(), PollFlags::POLLIN));
                }
                match poll(
                    &mut fds,
                    PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
                ) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let r = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let ready: Vec<u64> = ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| r(&fds[2 + i]))
                    .map(|(_, id)| *id)
                    .collect();
                (r(&fds[0]), r(&fds[1]), ready)
            };
            if stop_ready {
                let _ = std::fs::remove_file(&self.opts.socket);
                return Ok(());
            }
            for id in ready {
                for _ in 0..16 {
                    let Some(fd) = self.peer_fd(id) else { break };
                    match chan::recv(fd) {
                        Recv::Msg(m, fd) => {
                            if !self.handle(id, m, fd) {
                                self.drop_peer(id);
                                break;
                            }
                        }
                        Recv::Bad => {
                            self.log("closed a peer that sent a malformed message");
                            self.drop_peer(id);
                            break;
                        }
                        Recv::Empty => break,
                        Recv::Closed => {
                            self.drop_peer(id);
                            break;
                        }
                    }
                }
            }
            if listen_ready {
                self.accept();
            }
        }
    }
}
