//! The main process: watches the config directory, forks one child per port, wires rings
//! between children over their control channels, restarts children that die, and answers
//! stats requests on `<config-dir>/stats.sock`.
//!
//! With the sandbox on, [`run`] first enters the main process's sandbox ([`sandbox::enter_main`]):
//! from then on this process is PID 1 of its own PID namespace, sees the config directory at
//! `/config`, and the process that was started waits outside for it.
//!
//! Invariant: this process never starts a thread (it forks children). One epoll loop serves
//! inotify, a signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP), the stats socket and every child's
//! control channel. Children are hostile: their messages are validated and a misbehaving child
//! only loses its own rings.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::backend::PortParams;
use crate::child::{ChildSetup, child_main};
use crate::control::{self, Role, ToChild, ToMain};
use crate::forward::PortId;
use crate::port_file::{PORT_SUFFIX, PortConfig, SOCK_SUFFIX, valid_vm_name};
use crate::ring::{self, Event, RingSpec};
use crate::sandbox::{self, MainSandbox, SandboxError, SandboxIds};
use crate::seccomp::{self, SeccompMode};
use crate::stats::{Counter, PortStats, SwitchSnapshot};
use crate::sys::{self, Forked};

/// Name of the stats socket in the config directory.
pub const STATS_SOCKET: &str = "stats.sock";

const TOKEN_INOTIFY: u64 = 1;
const TOKEN_SIGNAL: u64 = 2;
const TOKEN_STATS: u64 = 3;
const TOKEN_CHILD: u64 = 1 << 32;

/// Main process settings.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Switch instance name (`--name`).
    pub name: String,
    /// Config directory.
    pub dir: PathBuf,
    /// Port parameters.
    pub params: PortParams,
    /// Geometry of every ring.
    pub ring: RingSpec,
    /// Sandbox the main process and the children.
    pub sandbox: bool,
    /// Started as root: the ids the sandbox runs as outside its user namespace
    /// ([`sandbox::sandbox_ids`]); `None` keeps the current ids.
    pub sandbox_ids: Option<SandboxIds>,
    /// Seccomp mode for main and children.
    pub seccomp: SeccompMode,
}

/// Main process errors (all fatal at startup).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// Setting up the config directory, sockets or event sources failed.
    #[error("{what} {path}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// On what.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Installing seccomp failed.
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    /// Entering the sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

fn setup_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let path = path.display().to_string();
    move |source| SupervisorError::Setup { what, path, source }
}

fn nix_io(e: nix::Error) -> std::io::Error {
    e.into()
}

#[derive(Debug)]
struct PortEntry {
    id: PortId,
    cfg: PortConfig,
    pid: Option<Pid>,
    control: Option<OwnedFd>,
    stats: PortStats,
    ready: bool,
    removing: bool,
    restarts: VecDeque<Instant>,
    restart_at: Option<Instant>,
}

struct Supervisor {
    cfg: SupervisorConfig,
    /// The config directory as the host names it (`cfg.dir` is `/config` in the sandbox).
    host_dir: PathBuf,
    sandbox: Option<MainSandbox>,
    epoll: Epoll,
    inotify: Inotify,
    signals: SignalFd,
    stats_listener: UnixListener,
    ports: BTreeMap<PortId, PortEntry>,
    next_id: PortId,
    relay_seq: u64,
    quit: bool,
}

/// Runs the main process until SIGTERM/SIGINT.
pub fn run(mut cfg: SupervisorConfig) -> Result<(), SupervisorError> {
    std::fs::create_dir_all(&cfg.dir)
        .map_err(setup_err("could not create config directory", &cfg.dir))?;
    let host_dir = std::fs::canonicalize(&cfg.dir)
        .map_err(setup_err("could not resolve config directory", &cfg.dir))?;
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    // Blocked before the sandbox forks, so PID 1 of the new PID namespace never misses (or
    // ignores) a signal: they wait for its signalfd.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| setup_err("could not block signals for", &host_dir)(nix_io(e)))?;
    let sandbox = if cfg.sandbox {
        let sb = sandbox::enter_main(&host_dir, cfg.sandbox_ids, cfg.seccomp)?;
        cfg.dir = sb.config_dir();
        Some(sb)
    } else {
        None
    };
    let shown = host_dir.clone();
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| setup_err("could not create a signalfd for", &shown)(nix_io(e)))?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| setup_err("could not initialise inotify for", &shown)(nix_io(e)))?;
    inotify
        .add_watch(
            &cfg.dir,
            AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_DELETE,
        )
        .map_err(|e| setup_err("could not watch config directory", &shown)(nix_io(e)))?;
    let stats_path = cfg.dir.join(STATS_SOCKET);
    let _ = std::fs::remove_file(&stats_path);
    let stats_listener = UnixListener::bind(&stats_path).map_err(setup_err(
        "could not bind stats socket",
        &shown.join(STATS_SOCKET),
    ))?;
    stats_listener.set_nonblocking(true).map_err(setup_err(
        "could not configure stats socket",
        &shown.join(STATS_SOCKET),
    ))?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(|e| setup_err("could not create epoll for", &shown)(nix_io(e)))?;
    let add = |fd: std::os::fd::BorrowedFd<'_>, token: u64| {
        epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(|e| setup_err("could not register an event source for", &shown)(nix_io(e)))
    };
    add(inotify.as_fd(), TOKEN_INOTIFY)?;
    add(signals.as_fd(), TOKEN_SIGNAL)?;
    add(stats_listener.as_fd(), TOKEN_STATS)?;
    if cfg.seccomp == SeccompMode::Trap {
        sys::install_sigsys_handler()
            .map_err(setup_err("could not install SIGSYS handler for", &shown))?;
    }
    seccomp::apply_main(cfg.seccomp)?;
    let mut sup = Supervisor {
        cfg,
        host_dir,
        sandbox,
        epoll,
        inotify,
        signals,
        stats_listener,
        ports: BTreeMap::new(),
        next_id: 1,
        relay_seq: 0,
        quit: false,
    };
    sup.scan();
    info!(
        "vm-switch {}: serving {} ({}, seccomp {:?})",
        sup.cfg.name,
        sup.host_dir.display(),
        if sup.cfg.sandbox {
            "sandbox on: mounted at /config"
        } else {
            "sandbox off"
        },
        sup.cfg.seccomp
    );
    sup.event_loop();
    sup.shutdown();
    Ok(())
}

impl Supervisor {
    fn port_path(&self, name: &str, suffix: &str) -> PathBuf {
        self.cfg.dir.join(format!("{name}{suffix}"))
    }

    /// `path` (in the config directory) as the host names it, for messages.
    fn shown(&self, path: &Path) -> String {
        match path.strip_prefix(&self.cfg.dir) {
            Ok(rest) => self.host_dir.join(rest).display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }

    fn scan(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.cfg.dir) else {
            return;
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            self.file_changed(&n);
        }
    }

    fn event_loop(&mut self) {
        let mut events = [EpollEvent::empty(); 32];
        while !self.quit {
            let timeout = self
                .ports
                .values()
                .filter_map(|p| p.restart_at)
                .min()
                .map(|t| t.saturating_duration_since(Instant::now()));
            let timeout = match timeout {
                Some(d) => EpollTimeout::try_from(d.max(Duration::from_millis(1)))
                    .unwrap_or(EpollTimeout::MAX),
                None => EpollTimeout::NONE,
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    error!("epoll_wait failed: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_INOTIFY => self.on_inotify(),
                    TOKEN_SIGNAL => self.on_signal(),
                    TOKEN_STATS => self.on_stats(),
                    t if t >= TOKEN_CHILD => self.on_child((t - TOKEN_CHILD) as PortId),
                    _ => {}
                }
            }
            let now = Instant::now();
            let due: Vec<PortId> = self
                .ports
                .values()
                .filter(|p| p.restart_at.is_some_and(|t| t <= now))
                .map(|p| p.id)
                .collect();
            for id in due {
                if let Some(p) = self.ports.get_mut(&id) {
                    p.restart_at = None;
                }
                self.spawn(id);
            }
        }
    }

    fn on_inotify(&mut self) {
        let Ok(events) = self.inotify.read_events() else {
            return;
        };
        for ev in events {
            let Some(name) = ev.name.and_then(|n| n.into_string().ok()) else {
                continue;
            };
            if ev
                .mask
                .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
            {
                if let Some(vm) = name.strip_suffix(PORT_SUFFIX) {
                    self.remove_by_name(vm);
                }
            } else {
                self.file_changed(&name);
            }
        }
    }

    fn file_changed(&mut self, file: &str) {
        let Some(vm) = file.strip_suffix(PORT_SUFFIX) else {
            return;
        };
        if !valid_vm_name(vm) {
            warn!("ignoring {file}: {vm:?} is not a valid VM name");
            return;
        }
        let path = self.cfg.dir.join(file);
        let cfg = match PortConfig::load_as(&path, &self.shown(&path)) {
            Ok(c) => c,
            Err(e) => {
                // Missing means it went away between the event and now.
                if path.exists() {
                    error!("{e}; the port is not started (fix the file and rewrite it)");
                }
                return;
            }
        };
        if let Some(id) = self.ports.values().find(|p| p.cfg.name == vm).map(|p| p.id) {
            let changed = self.ports.get(&id).is_some_and(|p| p.cfg != cfg);
            if changed {
                info!("port {vm}: configuration changed");
                if let Some(p) = self.ports.get_mut(&id) {
                    p.cfg = cfg.clone();
                }
                let ids: Vec<PortId> = self.ports.keys().copied().collect();
                for to in ids {
                    self.send(
                        to,
                        &ToChild::Peer {
                            id,
                            config: cfg.clone(),
                        },
                        &[],
                    );
                }
            }
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let stats = match PortStats::create(&format!("vm-switch-stats-{vm}")) {
            Ok(s) => s,
            Err(e) => {
                error!("port {vm}: could not create its stats page: {e}");
                return;
            }
        };
        self.ports.insert(
            id,
            PortEntry {
                id,
                cfg,
                pid: None,
                control: None,
                stats,
                ready: false,
                removing: false,
                restarts: VecDeque::new(),
                restart_at: None,
            },
        );
        self.spawn(id);
    }

    fn spawn(&mut self, id: PortId) {
        let Some(p) = self.ports.get(&id) else { return };
        if p.pid.is_some() || p.removing {
            return;
        }
        let name = p.cfg.name.clone();
        let sock = self.port_path(&name, SOCK_SUFFIX);
        let _ = std::fs::remove_file(&sock);
        let listener = match UnixListener::bind(&sock) {
            Ok(l) => l,
            Err(e) => {
                error!("port {name}: could not bind {}: {e}", self.shown(&sock));
                self.schedule_restart(id);
                return;
            }
        };
        let (parent_end, child_end) = match control::pair() {
            Ok(p) => p,
            Err(e) => {
                error!("port {name}: {e}");
                self.schedule_restart(id);
                return;
            }
        };
        let stats_fd = match p.stats.fd().try_clone() {
            Ok(f) => f,
            Err(e) => {
                error!("port {name}: {e}");
                return;
            }
        };
        let setup = ChildSetup {
            id,
            cfg: p.cfg.clone(),
            params: self.cfg.params,
            listener: OwnedFd::from(listener),
            control: child_end,
            stats: stats_fd,
            sandbox: self.cfg.sandbox,
            seccomp: self.cfg.seccomp,
            title: format!("vm-switch({}): {name}", self.cfg.name),
            scratch: self.cfg.dir.clone(),
        };
        let pid = match sys::fork() {
            Ok(Forked::Child) => child_main(setup),
            Ok(Forked::Parent(pid)) => Pid::from_raw(pid),
            Err(e) => {
                error!("port {name}: fork failed: {e}");
                self.schedule_restart(id);
                return;
            }
        };
        drop(setup);
        if let Err(e) = self.epoll.add(
            parent_end.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CHILD + u64::from(id)),
        ) {
            error!("port {name}: could not watch its control channel: {e}");
        }
        // Statistics show the pid as the host sees it (this process may be PID 1 of its own
        // PID namespace).
        let shown_pid = self
            .sandbox
            .as_ref()
            .and_then(|s| s.host_pid(pid.as_raw()))
            .unwrap_or(pid.as_raw());
        if let Some(p) = self.ports.get_mut(&id) {
            p.pid = Some(pid);
            p.control = Some(parent_end);
            p.ready = false;
            p.stats.set(Counter::Pid, shown_pid as u64);
        }
        info!("port {name}: started child {shown_pid}");
        // The child learns about itself and every other port; the others learn about it.
        let me = self.ports.get(&id).map(|p| p.cfg.clone());
        if let Some(me) = me {
            self.send(
                id,
                &ToChild::Peer {
                    id,
                    config: me.clone(),
                },
                &[],
            );
            let others: Vec<(PortId, PortConfig)> = self
                .ports
                .values()
                .filter(|p| p.id != id && !p.removing)
                .map(|p| (p.id, p.cfg.clone()))
                .collect();
            for (oid, ocfg) in others {
                self.send(
                    id,
                    &ToChild::Peer {
                        id: oid,
                        config: ocfg,
                    },
                    &[],
                );
                self.send(
                    oid,
                    &ToChild::Peer {
                        id,
                        config: me.clone(),
                    },
                    &[],
                );
            }
        }
    }

    fn schedule_restart(&mut self, id: PortId) {
        let Some(p) = self.ports.get_mut(&id) else {
            return;
        };
        if p.removing {
            return;
        }
        let now = Instant::now();
        while p
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            p.restarts.pop_front();
        }
        p.restarts.push_back(now);
        // 0.1 s, doubling with each restart in the last minute, at most 10 s.
        let n = p.restarts.len().min(8) as u32;
        let delay = Duration::from_millis(100 * (1 << (n - 1))).min(Duration::from_secs(10));
        warn!("port {}: restarting its child in {delay:?}", p.cfg.name);
        p.restart_at = Some(now + delay);
    }

    fn send(&mut self, to: PortId, msg: &ToChild, fds: &[std::os::fd::RawFd]) -> bool {
        let Some(p) = self.ports.get(&to) else {
            return false;
        };
        let Some(c) = &p.control else { return false };
        match control::send(c.as_fd(), msg, fds, true) {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    "port {}: control message not delivered: {e}; restarting the child",
                    p.cfg.name
                );
                if let Some(pid) = p.pid {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                false
            }
        }
    }

    fn on_child(&mut self, id: PortId) {
        loop {
            let Some(fd) = self
                .ports
                .get(&id)
                .and_then(|p| p.control.as_ref())
                .and_then(|c| c.try_clone().ok())
            else {
                return;
            };
            match control::recv::<ToMain>(fd.as_fd(), true) {
                Ok(Some((msg, _fds))) => self.on_message(id, msg),
                Ok(None) => {
                    // The child closed its end (it is exiting); SIGCHLD does the rest.
                    if let Some(p) = self.ports.get_mut(&id)
                        && let Some(c) = p.control.take()
                    {
                        let _ = self.epoll.delete(c.as_fd());
                    }
                    return;
                }
                Err(control::ControlError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    return;
                }
                Err(e) => {
                    let name = self
                        .ports
                        .get(&id)
                        .map(|p| p.cfg.name.clone())
                        .unwrap_or_default();
                    warn!("port {name}: bad control message from its child: {e}");
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, id: PortId, msg: ToMain) {
        match msg {
            ToMain::GetBuffer { peer } => {
                if let Some(p) = self.ports.get_mut(&id) {
                    p.ready = true;
                }
                let others: Vec<PortId> = self
                    .ports
                    .values()
                    .filter(|p| p.id != id && p.ready && p.pid.is_some() && !p.removing)
                    .filter(|p| peer.is_none_or(|want| want == p.id))
                    .map(|p| p.id)
                    .collect();
                for other in others {
                    self.connect_pair(id, other);
                    self.connect_pair(other, id);
                }
            }
            ToMain::GetRelay => self.send_relay(id),
            ToMain::PutBuffer { peer, role } => {
                let name = self
                    .ports
                    .get(&id)
                    .map(|p| p.cfg.name.clone())
                    .unwrap_or_default();
                warn!("port {name}: dropped its {role:?} ring with port {peer}");
            }
        }
    }

    /// Creates a connected socket pair for a child's next frontend relay: a listener (abstract
    /// address, autobound) with one pending connection, and that connection's client end.
    fn send_relay(&mut self, id: PortId) {
        use std::os::linux::net::SocketAddrExt;
        self.relay_seq += 1;
        let name = format!(
            "vm-switch-{}-relay-{id}-{}",
            std::process::id(),
            self.relay_seq
        );
        let made =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).and_then(|addr| {
                let l = UnixListener::bind_addr(&addr)?;
                let c = UnixStream::connect_addr(&addr)?;
                Ok((l, c))
            });
        match made {
            Ok((l, c)) => {
                let fds = [l.as_raw_fd(), c.as_raw_fd()];
                self.send(id, &ToChild::RelaySockets, &fds);
            }
            Err(e) => error!("port {id}: could not create relay sockets: {e}"),
        }
    }

    /// Creates the ring `from → to` and hands its ends to both children.
    fn connect_pair(&mut self, from: PortId, to: PortId) {
        let spec = self.cfg.ring;
        let (Some(a), Some(b)) = (self.ports.get(&from), self.ports.get(&to)) else {
            return;
        };
        let name = format!("vm-switch-ring-{}-{}", a.cfg.name, b.cfg.name);
        let mem = match ring::create(spec, &name) {
            Ok(m) => m,
            Err(e) => {
                error!("{name}: {e}");
                return;
            }
        };
        let ev = match Event::new() {
            Ok(e) => e,
            Err(e) => {
                error!("{name}: eventfd: {e}");
                return;
            }
        };
        let fds = [mem.fd().as_raw_fd(), ev.fd().as_raw_fd()];
        self.send(
            from,
            &ToChild::BufferReady {
                peer: to,
                role: Role::Tx,
                spec,
            },
            &fds,
        );
        self.send(
            to,
            &ToChild::BufferReady {
                peer: from,
                role: Role::Rx,
                spec,
            },
            &fds,
        );
        debug!("{name}: ring ready");
    }

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match info.ssi_signo as i32 {
                s if s == Signal::SIGCHLD as i32 => self.reap(),
                s if s == Signal::SIGTERM as i32 || s == Signal::SIGINT as i32 => {
                    info!("vm-switch {}: shutting down", self.cfg.name);
                    self.quit = true;
                }
                s if s == Signal::SIGHUP as i32 => self.scan(),
                _ => {}
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            let Some(id) = self
                .ports
                .values()
                .find(|p| p.pid == Some(pid))
                .map(|p| p.id)
            else {
                continue;
            };
            self.child_gone(id, &status);
        }
    }

    fn child_gone(&mut self, id: PortId, status: &WaitStatus) {
        let Some(p) = self.ports.get_mut(&id) else {
            return;
        };
        p.pid = None;
        p.ready = false;
        p.stats.set(Counter::Connected, 0);
        p.stats.set(Counter::Pid, 0);
        if let Some(c) = p.control.take() {
            let _ = self.epoll.delete(c.as_fd());
        }
        let removing = p.removing;
        let name = p.cfg.name.clone();
        let others: Vec<PortId> = self.ports.keys().copied().filter(|o| *o != id).collect();
        for o in others {
            self.send(o, &ToChild::PeerGone { id }, &[]);
        }
        if removing {
            info!("port {name}: stopped");
            let _ = std::fs::remove_file(self.port_path(&name, SOCK_SUFFIX));
            self.ports.remove(&id);
        } else {
            warn!("port {name}: child exited unexpectedly ({status:?})");
            self.schedule_restart(id);
        }
    }

    fn remove_by_name(&mut self, vm: &str) {
        let Some(id) = self.ports.values().find(|p| p.cfg.name == vm).map(|p| p.id) else {
            return;
        };
        info!("port {vm}: port file removed; stopping");
        let pid = self.ports.get_mut(&id).and_then(|p| {
            p.removing = true;
            p.restart_at = None;
            p.pid
        });
        match pid {
            Some(pid) => {
                let _ = kill(pid, Signal::SIGTERM);
                // Peers stop sending now; the entry goes when SIGCHLD arrives.
                let others: Vec<PortId> = self.ports.keys().copied().filter(|o| *o != id).collect();
                for o in others {
                    self.send(o, &ToChild::PeerGone { id }, &[]);
                }
            }
            None => {
                let _ = std::fs::remove_file(self.port_path(vm, SOCK_SUFFIX));
                self.ports.remove(&id);
            }
        }
    }

    fn on_stats(&mut self) {
        while let Ok((mut conn, _)) = self.stats_listener.accept() {
            let snap = SwitchSnapshot {
                version: 1,
                name: self.cfg.name.clone(),
                ports: self
                    .ports
                    .values()
                    .filter(|p| !p.removing)
                    .map(|p| p.stats.snapshot(&p.cfg.name))
                    .collect(),
            };
            let mut text = serde_json::to_string_pretty(&snap).unwrap_or_default();
            text.push('\n');
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = conn.write_all(text.as_bytes());
        }
    }

    fn shutdown(&mut self) {
        let pids: Vec<Pid> = self.ports.values().filter_map(|p| p.pid).collect();
        for pid in &pids {
            let _ = kill(*pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut left: Vec<Pid> = pids;
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|pid| {
                !matches!(
                    waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_)
                )
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in left {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        for p in self.ports.values() {
            let _ = std::fs::remove_file(self.port_path(&p.cfg.name, SOCK_SUFFIX));
        }
        let _ = std::fs::remove_file(self.cfg.dir.join(STATS_SOCKET));
    }
}

/// Reads the stats JSON from a running switch (`vm-switch --stats`).
pub fn fetch_stats(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(STATS_SOCKET);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "no vm-switch is serving {} (could not connect to {}: {e})",
                dir.display(),
                path.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}
