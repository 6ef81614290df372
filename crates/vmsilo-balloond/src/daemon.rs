//! The daemon: discovery, one worker thread per VM, the tick loop and the status socket.
//!
//! Threading: the main thread owns all state and sleeps in `poll(2)` on the inotify descriptor,
//! the status socket and a wake-up socket, with a timeout to the next deadline (no busy
//! waiting, no timer thread). Each VM has a worker thread that owns its VMM client and performs
//! blocking requests with a timeout; results come back over a channel plus one byte on the
//! wake-up socket. A tick asks every idle VM for stats, waits until all answered or the request
//! timeout passed, then runs the policy core once for all VMs and queues the resulting `Adjust`
//! requests to the workers. A VM whose worker is still busy is reported as unresponsive for that
//! tick and is not asked again, so one stuck VM never delays the others and requests never pile
//! up inside a VMM.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{getsockopt, sockopt};

use crate::balancer::{Balancer, BalancerParams, Decision, Reason, TickReport, VmInput};
use crate::discovery::{self, Change, Found, Watcher};
use crate::host::{HostSample, read_host_sample};
use crate::logger::{self, RateLimiter};
use crate::stall::Millis;
use crate::stats::BalloonSample;
use crate::status::{DaemonStatus, HostStatus, STATUS_VERSION, StallStatus, StatusDoc, VmStatus};
use crate::vmm::{VmmClient, VmmError, client_for};

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Directory watched for VM sockets.
    pub run_dir: PathBuf,
    /// Status socket path.
    pub status_socket: PathBuf,
    /// The user who may read the status socket besides root and the daemon's own uid (the
    /// socket is theirs, mode 0600); `None`: root only.
    pub status_uid: Option<u32>,
    /// Host meminfo file.
    pub host_meminfo: PathBuf,
    /// Host PSI file (optional signal).
    pub host_psi: Option<PathBuf>,
    /// Tick period.
    pub poll_interval: Duration,
    /// Timeout of every VMM request.
    pub request_timeout: Duration,
    /// Policy core parameters.
    pub balancer: BalancerParams,
    /// Compute and show decisions, never send them.
    pub dry_run: bool,
}

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The runtime directory is missing and could not be created, or is not a directory.
    #[error("cannot use the runtime directory {path} (create it, or pass --run-dir)")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// inotify could not watch the directory.
    #[error("cannot watch {path} with inotify")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The status socket could not be created.
    #[error("cannot create the status socket {path}")]
    StatusSocket {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another instance answers on the status socket.
    #[error(
        "another vmsilo-balloond is already running (it answers on {path}); stop it or pass another --status-socket"
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The host memory file cannot be read at start.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// Waiting for events failed.
    #[error("poll failed")]
    Poll(#[source] nix::Error),
    /// A thread could not be started.
    #[error("cannot start a worker thread for VM {vm:?}")]
    Spawn {
        /// The VM.
        vm: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

enum Job {
    Stats,
    Adjust(u64),
}

enum Outcome {
    Stats(Result<BalloonSample, VmmError>),
    Adjust(u64, Result<(), VmmError>),
}

struct Done {
    name: String,
    generation: u64,
    outcome: Outcome,
}

/// Classification of the last error, for the status document.
fn error_state(e: &VmmError) -> &'static str {
    match e {
        VmmError::Errno { errno: 107, .. } => "driver-not-ready",
        VmmError::Timeout { .. } => "unresponsive",
        _ => "error",
    }
}

struct Vm {
    found: Found,
    generation: u64,
    jobs: Sender<Job>,
    busy: bool,
    last_error: Option<(String, &'static str)>,
    limiter: RateLimiter,
}

const WORKER_STACK: usize = 256 * 1024;

fn spawn_worker(
    name: &str,
    generation: u64,
    mut client: Box<dyn VmmClient>,
    done: Sender<Done>,
    wake: UnixStream,
) -> std::io::Result<Sender<Job>> {
    let (tx, rx): (Sender<Job>, Receiver<Job>) = channel();
    let vm = name.to_owned();
    std::thread::Builder::new()
        .name(format!("vm-{}", name.chars().take(12).collect::<String>()))
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let mut wake = wake;
            for job in rx {
                let outcome = match job {
                    Job::Stats => Outcome::Stats(client.stats()),
                    Job::Adjust(t) => Outcome::Adjust(t, client.set_balloon(t)),
                };
                let msg = Done {
                    name: vm.clone(),
                    generation,
                    outcome,
                };
                if done.send(msg).is_err() {
                    return;
                }
                // Non-blocking: if the socket buffer is full the main thread is awake anyway.
                let _ = wake.write(&[1]);
            }
        })?;
    Ok(tx)
}

enum Phase {
    Idle,
    Collecting {
        deadline: Instant,
        at_ms: Millis,
        host: HostSample,
        inputs: BTreeMap<String, VmInput>,
        waiting: BTreeSet<String>,
    },
}

/// The running daemon.
pub struct Daemon {
    cfg: DaemonConfig,
    start: Instant,
    balancer: Balancer,
    vms: BTreeMap<String, Vm>,
    found: BTreeMap<String, Found>,
    watcher: Watcher,
    status: Option<UnixListener>,
    /// Signals that stop the daemon (SIGTERM from systemd), when `stop_on` was called.
    stop_signals: Option<SignalFd>,
    /// A stop signal arrived: `run` returns after the current step.
    stopping: bool,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    phase: Phase,
    next_tick: Instant,
    host: Option<(Millis, HostSample)>,
    host_error: Option<String>,
    host_limiter: RateLimiter,
    /// Refused status connections (a local user can make many).
    status_limiter: RateLimiter,
    last_report: Option<TickReport>,
    last_rescan: Option<Instant>,
}

/// How often the directory is rescanned without an inotify event (a symlinked socket can be
/// replaced without an event in the watched directory).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("run_dir", &self.cfg.run_dir)
            .field("vms", &self.vms.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn bind_status(path: &Path, owner: Option<u32>) -> Result<UnixListener, DaemonError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning {
                path: path.to_owned(),
            });
        }
        // A stale socket from a daemon that was killed.
        let _ = std::fs::remove_file(path);
    }
    let err = |source| DaemonError::StatusSocket {
        path: path.to_owned(),
        source,
    };
    let l = UnixListener::bind(path).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    // Connecting needs write permission on the socket: 0600 and owned by the configured user
    // (who runs `vmsilo status`), so only they and root can connect. `serve_status` also
    // checks each peer's uid, so an owner who widens the mode still serves nobody else.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    if let Some(uid) = owner {
        std::os::unix::fs::lchown(path, Some(uid), None).map_err(err)?;
    }
    Ok(l)
}

/// Whether a status client with this uid may read the document: root, the daemon's own user,
/// or the configured status user.
fn status_reader_allowed(peer: u32, own: u32, status_uid: Option<u32>) -> bool {
    peer == 0 || peer == own || Some(peer) == status_uid
}

impl Daemon {
    /// Sets everything up: runtime directory, inotify, status socket (unless `status` is false),
    /// and a first host reading (so a wrong `--host-meminfo` fails at once).
    pub fn new(cfg: DaemonConfig, status: bool) -> Result<Self, DaemonError> {
        let dir_err = |source| DaemonError::RunDir {
            path: cfg.run_dir.clone(),
            source,
        };
        if !cfg.run_dir.is_dir() {
            std::fs::create_dir_all(&cfg.run_dir).map_err(dir_err)?;
        }
        let watcher = Watcher::new(&cfg.run_dir).map_err(|source| DaemonError::Watch {
            path: cfg.run_dir.clone(),
            source,
        })?;
        read_host_sample(&cfg.host_meminfo, cfg.host_psi.as_deref())?;
        let status = if status {
            Some(bind_status(&cfg.status_socket, cfg.status_uid)?)
        } else {
            None
        };
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(dir_err)?;
        wake_tx.set_nonblocking(true).map_err(dir_err)?;
        wake_rx.set_nonblocking(true).map_err(dir_err)?;
        let (done_tx, done_rx) = channel();
        let now = Instant::now();
        Ok(Self {
            balancer: Balancer::new(cfg.balancer),
            cfg,
            start: now,
            vms: BTreeMap::new(),
            found: BTreeMap::new(),
            watcher,
            status,
            stop_signals: None,
            stopping: false,
            done_tx,
            done_rx,
            wake_tx,
            wake_rx,
            phase: Phase::Idle,
            next_tick: now,
            host: None,
            host_error: None,
            host_limiter: logger::rate_limiter(),
            status_limiter: logger::rate_limiter(),
            last_report: None,
            last_rescan: None,
        })
    }

    fn now_ms(&self) -> Millis {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Rescans the runtime directory and applies the changes.
    fn rescan(&mut self) -> Result<(), DaemonError> {
        self.rescan_after(&std::collections::BTreeSet::new())
    }

    /// Rescans; `gone` are file names inotify saw deleted since the last scan.
    fn rescan_after(&mut self, gone: &BTreeSet<String>) -> Result<(), DaemonError> {
        self.last_rescan = Some(Instant::now());
        let fresh = match discovery::scan(&self.cfg.run_dir) {
            Ok(f) => f,
            Err(e) => {
                if self
                    .host_limiter
                    .allow(Duration::from_millis(self.now_ms()))
                    .is_some()
                {
                    warn!("cannot list {}: {e}", self.cfg.run_dir.display());
                }
                return Ok(());
            }
        };
        for change in discovery::diff(&self.found, &fresh, gone) {
            match change {
                Change::Added(name, f) => {
                    info!(
                        "VM {name:?}: found {} socket {}",
                        f.kind.as_str(),
                        f.path.display()
                    );
                    self.add_vm(&name, f)?;
                }
                Change::Replaced(name, f) => {
                    info!(
                        "VM {name:?}: socket {} was replaced: the VM restarted, starting with fresh state",
                        f.path.display()
                    );
                    self.remove_vm(&name);
                    self.add_vm(&name, f)?;
                }
                Change::Removed(name) => {
                    info!("VM {name:?}: socket gone, forgetting the VM");
                    self.remove_vm(&name);
                }
            }
        }
        self.found = fresh;
        Ok(())
    }

    fn add_vm(&mut self, name: &str, found: Found) -> Result<(), DaemonError> {
        let generation = self.balancer.add_vm(name);
        let client = client_for(
            found.kind,
            &found.path,
            self.cfg.request_timeout,
            self.cfg.poll_interval,
        );
        let wake = self
            .wake_tx
            .try_clone()
            .map_err(|source| DaemonError::Spawn {
                vm: name.to_owned(),
                source,
            })?;
        let jobs = spawn_worker(name, generation, client, self.done_tx.clone(), wake).map_err(
            |source| DaemonError::Spawn {
                vm: name.to_owned(),
                source,
            },
        )?;
        self.vms.insert(
            name.to_owned(),
            Vm {
                found,
                generation,
                jobs,
                busy: false,
                last_error: None,
                limiter: logger::rate_limiter(),
            },
        );
        Ok(())
    }

    fn remove_vm(&mut self, name: &str) {
        // Dropping the job sender ends the worker after its current request.
        self.vms.remove(name);
        self.balancer.remove_vm(name);
        if let Phase::Collecting {
            inputs, waiting, ..
        } = &mut self.phase
        {
            inputs.remove(name);
            waiting.remove(name);
        }
    }

    fn vm_warn(&mut self, name: &str, msg: &str) {
        let now = self.now_ms();
        if let Some(vm) = self.vms.get_mut(name)
            && let Some(suppressed) = vm.limiter.allow(Duration::from_millis(now))
        {
            if suppressed > 0 {
                warn!("VM {name:?}: {msg} ({suppressed} similar messages suppressed)");
            } else {
                warn!("VM {name:?}: {msg}");
            }
        }
    }

    fn handle_done(&mut self) {
        let mut buf = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        let mut warnings = Vec::new();
        while let Ok(done) = self.done_rx.try_recv() {
            let Some(vm) = self.vms.get_mut(&done.name) else {
                continue;
            };
            if vm.generation != done.generation {
                continue;
            }
            match done.outcome {
                Outcome::Stats(result) => {
                    vm.busy = false;
                    let input = match result {
                        Ok(sample) => {
                            vm.last_error = None;
                            VmInput::Sample(sample)
                        }
                        Err(e) => {
                            let text = e.to_string();
                            vm.last_error = Some((text.clone(), error_state(&e)));
                            if e.is_driver_not_ready() {
                                debug!("VM {:?}: {text}", done.name);
                            } else {
                                warnings.push((done.name.clone(), text.clone()));
                            }
                            VmInput::Failed(text)
                        }
                    };
                    if let Phase::Collecting {
                        inputs, waiting, ..
                    } = &mut self.phase
                        && waiting.remove(&done.name)
                    {
                        inputs.insert(done.name.clone(), input);
                    }
                }
                Outcome::Adjust(target, Err(e)) => {
                    let text = e.to_string();
                    vm.last_error = Some((text.clone(), error_state(&e)));
                    self.balancer.adjust_failed(&done.name);
                    warnings.push((
                        done.name.clone(),
                        format!("setting the balloon to {} MiB failed: {text}", target >> 20),
                    ));
                }
                Outcome::Adjust(_, Ok(())) => {}
            }
        }
        for (name, msg) in warnings {
            self.vm_warn(&name, &msg);
        }
    }

    fn start_tick(&mut self) -> Result<(), DaemonError> {
        if !self.watcher.ensure() || self.last_rescan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY) {
            self.rescan()?;
        }
        let now = self.now_ms();
        let host = match read_host_sample(&self.cfg.host_meminfo, self.cfg.host_psi.as_deref()) {
            Ok(h) => {
                self.host_error = None;
                h
            }
            Err(e) => {
                let text = e.to_string();
                if self
                    .host_limiter
                    .allow(Duration::from_millis(now))
                    .is_some()
                {
                    warn!("skipping this tick: {text}");
                }
                self.host_error = Some(text);
                return Ok(());
            }
        };
        self.host = Some((now, host));
        let mut inputs = BTreeMap::new();
        let mut waiting = BTreeSet::new();
        for (name, vm) in &mut self.vms {
            if vm.busy {
                inputs.insert(name.clone(), VmInput::Busy);
            } else if self.balancer.wants_stats(name, now) && vm.jobs.send(Job::Stats).is_ok() {
                vm.busy = true;
                waiting.insert(name.clone());
            }
        }
        // The workers time out at `request_timeout`; a little grace lets their answer arrive.
        let deadline = Instant::now() + self.cfg.request_timeout + Duration::from_millis(100);
        self.phase = Phase::Collecting {
            deadline,
            at_ms: now,
            host,
            inputs,
            waiting,
        };
        Ok(())
    }

    /// Runs the policy on what was collected and queues the adjusts. Returns the report.
    fn finish_tick(&mut self) -> Option<TickReport> {
        let Phase::Collecting {
            at_ms,
            host,
            mut inputs,
            waiting,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Idle)
        else {
            return None;
        };
        for name in waiting {
            inputs.insert(name, VmInput::Busy);
        }
        let report = self.balancer.tick(at_ms, &host, &inputs);
        for d in &report.decisions {
            self.apply(d);
        }
        self.last_report = Some(report.clone());
        Some(report)
    }

    fn apply(&mut self, d: &Decision) {
        let moving = d.send && d.target.is_some();
        let what = format!(
            "{} {} -> {}: {}",
            d.reason.as_str(),
            d.actual
                .map_or("-".to_owned(), |a| format!("{} MiB", a >> 20)),
            d.target
                .map_or("-".to_owned(), |t| format!("{} MiB", t >> 20)),
            d.detail
        );
        match d.reason {
            Reason::StallBackoff => self.vm_warn(&d.vm, &what),
            _ if moving => info!("VM {:?}: {what}", d.vm),
            _ => debug!("VM {:?}: {what}", d.vm),
        }
        if !moving || self.cfg.dry_run {
            return;
        }
        if let (Some(vm), Some(target)) = (self.vms.get(&d.vm), d.target) {
            let _ = vm.jobs.send(Job::Adjust(target));
        }
    }

    fn serve_status(&mut self) {
        let Some(listener) = &self.status else {
            return;
        };
        let own = nix::unistd::geteuid().as_raw();
        let mut clients = Vec::new();
        let mut refused = Vec::new();
        while let Ok((c, _)) = listener.accept() {
            match getsockopt(&c, sockopt::PeerCredentials) {
                Ok(cred) if status_reader_allowed(cred.uid(), own, self.cfg.status_uid) => {
                    clients.push(c);
                }
                // Closed without a byte: the client sees an empty answer.
                Ok(cred) => refused.push(format!("uid {} (pid {})", cred.uid(), cred.pid())),
                Err(e) => refused.push(format!("a peer whose credentials are unknown ({e})")),
            }
        }
        for who in refused {
            let now = self.now_ms();
            if let Some(suppressed) = self.status_limiter.allow(Duration::from_millis(now)) {
                let more = if suppressed > 0 {
                    format!(" ({suppressed} similar messages suppressed)")
                } else {
                    String::new()
                };
                warn!(
                    "refused a status connection from {who}: only root and {} may read the \
                     status{more}",
                    self.cfg
                        .status_uid
                        .map_or_else(|| "no other user".to_owned(), |u| format!("uid {u}"))
                );
            }
        }
        if clients.is_empty() {
            return;
        }
        let mut text = match serde_json::to_vec(&self.status_doc()) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot encode the status document: {e}");
                return;
            }
        };
        text.push(b'\n');
        for mut c in clients {
            // Never block the loop on a slow reader: a document that does not fit in the
            // socket buffer is cut short (the client sees invalid JSON and can retry).
            let _ = c.set_nonblocking(true);
            let _ = c.write_all(&text);
        }
    }

    /// The status document now.
    pub fn status_doc(&self) -> StatusDoc {
        let now = self.now_ms();
        let p = self.balancer.params();
        let daemon = DaemonStatus {
            pid: std::process::id(),
            uptime_ms: now,
            ticks: self.balancer.ticks(),
            poll_interval_ms: u64::try_from(self.cfg.poll_interval.as_millis()).unwrap_or(0),
            request_timeout_ms: u64::try_from(self.cfg.request_timeout.as_millis()).unwrap_or(0),
            multi_vm: p.mode.as_str().to_owned(),
            guest_available: p.policy.guest_available.as_str().to_owned(),
            critical_host_percent: p.critical_host_percent,
            guest_available_bias: p.policy.guest_bias,
            min_guest_memory: p.min_guest_memory,
            stall_detection: p.stall.is_some(),
            dry_run: self.cfg.dry_run,
            run_dir: self.cfg.run_dir.display().to_string(),
        };
        let host = self.host.map(|(at, h)| {
            let critical = crate::host::host_critical(h.mem_total, p.critical_host_percent);
            HostStatus {
                meminfo: self.cfg.host_meminfo.display().to_string(),
                mem_total: h.mem_total,
                mem_available: h.mem_available,
                critical,
                above_critical: i64::try_from(h.mem_available).unwrap_or(i64::MAX)
                    - i64::try_from(critical).unwrap_or(i64::MAX),
                psi_full_avg10: h.psi_full_avg10,
                psi_some_avg10: h.psi_some_avg10,
                age_ms: now.saturating_sub(at),
                error: self.host_error.clone(),
            }
        });
        let vms = self
            .balancer
            .vms()
            .filter_map(|(name, e)| {
                let vm = self.vms.get(name)?;
                let (stats, stats_age_ms, actual, ram) = match &e.last_sample {
                    Some((at, s)) => (
                        Some(s.stats),
                        Some(now.saturating_sub(*at)),
                        Some(s.balloon_actual),
                        s.ram_size,
                    ),
                    None => (None, None, None, None),
                };
                let state = match (&vm.last_error, &e.last_sample) {
                    (Some((_, state)), _) => (*state).to_owned(),
                    (None, None) => "starting".to_owned(),
                    (None, Some(_)) => "ok".to_owned(),
                };
                Some(VmStatus {
                    name: name.to_owned(),
                    vmm: vm.found.kind.as_str().to_owned(),
                    socket: vm.found.path.display().to_string(),
                    generation: vm.generation,
                    state,
                    stats,
                    stats_age_ms,
                    balloon_actual: actual,
                    balloon_target: e.last_sent.map(|(t, _)| t).or(e.stall.target_sent),
                    ram_size: ram,
                    guest_critical: e.policy.guest_critical,
                    max_balloon: e.policy.max_balloon,
                    last_decision: e.last_decision.clone(),
                    stall: StallStatus {
                        checking: e.stall.checking,
                        total: e.stall.total,
                        consecutive: e.stall.consecutive,
                        inflate_blocked_ms: e.stall.blocked_for(now),
                        last_stall_ago_ms: e.stall.last_stall_at.map(|t| now.saturating_sub(t)),
                    },
                    counters: e.counters,
                    last_error: vm.last_error.as_ref().map(|(t, _)| t.clone()),
                })
            })
            .collect();
        StatusDoc {
            version: STATUS_VERSION,
            daemon,
            host,
            vms,
        }
    }

    /// One pass of the event loop: waits for the next event or deadline and handles it.
    /// Returns the tick report when a tick finished.
    pub fn step(&mut self) -> Result<Option<TickReport>, DaemonError> {
        let now = Instant::now();
        let deadline = match &self.phase {
            Phase::Idle => self.next_tick,
            Phase::Collecting { deadline, .. } => *deadline,
        };
        let wait = deadline.saturating_duration_since(now);
        // +1 ms: never wake up just before the deadline and spin.
        let timeout =
            PollTimeout::try_from(wait.as_millis().saturating_add(1)).unwrap_or(PollTimeout::MAX);
        let (inotify_ready, status_ready, wake_ready) = {
            let mut fds = vec![
                PollFd::new(self.watcher.fd(), PollFlags::POLLIN),
                PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN),
            ];
            let status_index = self.status.as_ref().map(|l| {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let signal_index = self.stop_signals.as_ref().map(|sfd| {
                fds.push(PollFd::new(sfd.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(DaemonError::Poll(e)),
            }
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds.get(i))
                    .and_then(PollFd::revents)
                    .is_some_and(|r| !r.is_empty())
            };
            if ready(signal_index)
                && let Some(sfd) = &self.stop_signals
                && let Ok(Some(info)) = sfd.read_signal()
            {
                info!("stopping on signal {}", info.ssi_signo);
                self.stopping = true;
                return Ok(None);
            }
            (ready(Some(0)), ready(status_index), ready(Some(1)))
        };
        if inotify_ready && let Some(gone) = self.watcher.drain() {
            self.rescan_after(&gone)?;
        }
        if wake_ready {
            self.handle_done();
        }
        if status_ready {
            self.serve_status();
        }
        let now = Instant::now();
        match &self.phase {
            Phase::Idle if now >= self.next_tick => {
                self.next_tick += self.cfg.poll_interval;
                if self.next_tick < now {
                    // We fell behind (suspend, overload): skip the missed ticks.
                    self.next_tick = now + self.cfg.poll_interval;
                }
                self.start_tick()?;
                if let Phase::Collecting { waiting, .. } = &self.phase
                    && waiting.is_empty()
                {
                    return Ok(self.finish_tick());
                }
            }
            Phase::Collecting {
                deadline, waiting, ..
            } if waiting.is_empty() || now >= *deadline => {
                return Ok(self.finish_tick());
            }
            _ => {}
        }
        Ok(None)
    }

    /// Makes `run` return (and clean up) when `signals` reports a signal. The signals must be
    /// blocked in every thread, so call this before the daemon starts any (block them in
    /// `main` before [`Daemon::new`]).
    pub fn stop_on(&mut self, signals: SignalFd) {
        self.stop_signals = Some(signals);
    }

    /// Runs until a stop signal ([`Daemon::stop_on`]) or an unrecoverable error. On a stop the
    /// status socket is removed; the VMs' balloons are left where they are.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        self.rescan()?;
        info!(
            "watching {} every {} ms ({} VM(s) found), status on {}",
            self.cfg.run_dir.display(),
            self.cfg.poll_interval.as_millis(),
            self.vms.len(),
            self.cfg.status_socket.display()
        );
        while !self.stopping {
            self.step()?;
        }
        if self.status.take().is_some() {
            let _ = std::fs::remove_file(&self.cfg.status_socket);
        }
        Ok(())
    }

    /// Runs exactly one tick and returns its report (waits for the VMs' answers up to the
    /// request timeout).
    pub fn run_once(&mut self) -> Result<TickReport, DaemonError> {
        self.rescan()?;
        loop {
            if let Some(r) = self.step()? {
                // Give the queued adjusts a chance to be sent before the process exits.
                self.drain_adjusts(&r);
                return Ok(r);
            }
        }
    }

    fn drain_adjusts(&mut self, r: &TickReport) {
        if self.cfg.dry_run {
            return;
        }
        let mut pending: usize = r.decisions.iter().filter(|d| d.send).count();
        let deadline = Instant::now() + self.cfg.request_timeout + Duration::from_millis(100);
        while pending > 0 && Instant::now() < deadline {
            match self.done_rx.recv_timeout(deadline - Instant::now()) {
                Ok(done) => {
                    if let Outcome::Adjust(t, Err(e)) = &done.outcome {
                        warn!(
                            "VM {:?}: setting the balloon to {} MiB failed: {e}",
                            done.name,
                            t >> 20
                        );
                    }
                    if matches!(done.outcome, Outcome::Adjust(..)) {
                        pending -= 1;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// Renders a tick report for `--once`.
pub fn render_report(r: &TickReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host: available {} MiB of {} MiB, critical {} MiB, headroom {} MiB",
        r.host.mem_available >> 20,
        r.host.mem_total >> 20,
        r.host_critical >> 20,
        r.host_above / (1 << 20)
    );
    if r.decisions.is_empty() {
        let _ = writeln!(out, "no VMs");
    }
    for d in &r.decisions {
        let _ = writeln!(
            out,
            "{}: {} balloon {} -> {}{}\n    {}",
            d.vm,
            d.reason.as_str(),
            d.actual
                .map_or("-".to_owned(), |a| format!("{} MiB", a >> 20)),
            d.target
                .map_or("-".to_owned(), |t| format!("{} MiB", t >> 20)),
            if d.send { " (sent)" } else { "" },
            d.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_status_readers_are_root_the_daemon_and_the_status_user() {
        assert!(status_reader_allowed(0, 0, None));
        assert!(status_reader_allowed(1000, 0, Some(1000)));
        assert!(status_reader_allowed(1000, 1000, None));
        assert!(!status_reader_allowed(65534, 0, Some(1000)));
        assert!(!status_reader_allowed(1000, 0, None));
    }
}
