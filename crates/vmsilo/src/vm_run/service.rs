//! The command service: what `vmsilo command-service <vm>` does with the listening command
//! socket it inherits (`docs/vm-run.md`).
//!
//! The main thread accepts connections; each gets its own thread, which
//!
//! 1. tries the guest agent at once (the warm path: one connection attempt, no other work);
//! 2. otherwise makes sure the VM is starting: with systemd, `systemctl start --no-block
//!    vmsilo-<vm>-vm.service` unless it is active or activating; without systemd, a
//!    `vmsilo vm-service <vm>` child that this service supervises for the life of the VM (one
//!    per VM, shared by every connection). While it waits it sends `Status` frames to the
//!    client;
//! 3. retries the agent every 100 ms until it answers, the VM fails, or the agent timeout
//!    (60 s by default) passes, and reports a failure as a `Failed` frame that says what to do.
//!    A hybrid-vsock `CONNECT` that is not answered yet is waited for, never closed (a late
//!    answer to a closed socket crashes vhost-device-vsock 0.3's worker: see
//!    `vmsilo_proto::hybrid`); after 2 s another attempt is started beside it;
//! 4. sends `Ready` and splices the client to the guest ([`super::splice`]).
//!
//! A VM that stops (idle auto-shutdown, `vm-stop`) is noticed by the next connection, whose
//! fast path fails, and started again. On SIGTERM/SIGINT/SIGHUP the service exits; a
//! vm-service child is first asked to stop the VM (a second signal stops it hard).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmsilo_config::measure::format_duration;
use vmsilo_log::Sampler;
use vmsilo_proto::AGENT_PORT;
use vmsilo_proto::hybrid::{self, PendingConnect};
use vmsilo_proto::text::escape;

use super::guest::{Attempt, ConnectError, GuestAddr, poll_attempt};
use super::splice::splice;
use super::wire::{FailCode, Phase, ServiceFrame};
use crate::runtime::procs::describe;
use crate::runtime::signals::Signals;

/// How often a waiting connection tries the agent.
const RETRY: Duration = Duration::from_millis(100);
/// How often a waiting client hears that the VM is still starting.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// How often a waiting connection tries the agent while the guest's vsock device is not
/// started yet. vhost-device-vsock 0.3 handles a host connection that arrives while the guest's
/// driver starts the device (guest memory mapped, queues not ready) by failing its queue walk,
/// and that error ends its worker thread: from then on nothing is answered. Trying seldom in
/// this phase makes landing in that window rarer (it cannot be avoided from the host side).
const BOOT_RETRY: Duration = Duration::from_secs(1);
/// A hybrid-vsock attempt unanswered this long gets another one beside it.
const HEDGE_AFTER: Duration = Duration::from_secs(2);
/// Unanswered attempts kept at once by one connection.
const MAX_PENDING: usize = 4;
/// An attempt unanswered this long is logged (once per connection, rate-limited).
const SLOW_ANSWER: Duration = Duration::from_secs(5);
/// How often `systemctl is-active` is asked while a connection waits.
const SYSTEMD_CHECK: Duration = Duration::from_secs(1);
/// A unit that was `failed` before our start job ran still says so for a moment.
const FAILED_GRACE: Duration = Duration::from_millis(300);
/// A start issued this recently is not issued again.
const START_GRACE: Duration = Duration::from_secs(3);
/// Connections served at once; more are refused.
pub const MAX_CONNECTIONS: usize = 128;
/// A client that does not read its status frames for this long is dropped.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a vm-service child's stderr kept for error messages.
const TAIL_LINES: usize = 12;
/// Longest stderr line kept.
const MAX_LINE: usize = 2048;

/// Why every connection is refused (the configuration does not have the VM, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code sent to the client.
    pub code: FailCode,
    /// The message sent to the client.
    pub message: String,
}

/// How the VM gets started.
#[derive(Debug, Clone)]
pub enum Starter {
    /// `systemctl start --no-block <unit>`.
    Systemd {
        /// `vmsilo-<vm>-vm.service`.
        unit: String,
        /// The systemctl program.
        systemctl: OsString,
        /// The configured user (for systemctl's advice).
        user: String,
    },
    /// Run `argv` (`vmsilo vm-service <vm> ...`) as a child for the life of the VM.
    Child {
        /// The command line.
        argv: Vec<OsString>,
    },
}

impl Starter {
    /// For the log.
    pub fn describe(&self) -> String {
        match self {
            Starter::Systemd { unit, .. } => format!("starts VMs through systemd ({unit})"),
            Starter::Child { .. } => {
                "no systemd: starts VMs by running `vmsilo vm-service` itself".to_owned()
            }
        }
    }
}

/// Everything the service needs.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The VM.
    pub vm: String,
    /// Where its agent is, or why no connection can be served.
    pub target: Result<GuestAddr, Refusal>,
    /// How the VM is started.
    pub starter: Starter,
    /// How long a connection waits for the agent.
    pub agent_timeout: Duration,
    /// How long a vm-service child gets to stop the VM when this service stops.
    pub stop_timeout: Duration,
}

/// A vm-service child.
#[derive(Debug)]
struct ChildVm {
    pid: u32,
    generation: u64,
    started: Instant,
    exit: Mutex<Option<ExitStatus>>,
    tail: Mutex<VecDeque<String>>,
}

/// The VM as this service knows it.
#[derive(Debug, Default)]
struct Slot {
    /// Bumped at every start this service issues.
    generation: u64,
    /// When the current start began.
    since: Option<Instant>,
    /// The agent answered since the current start.
    ready: bool,
    /// The vm-service child (no systemd).
    child: Option<Arc<ChildVm>>,
    /// systemd: when `is-active` was last asked, and whether the unit was seen up since the
    /// start.
    checked: Option<Instant>,
    seen_up: bool,
}

/// The command service.
#[derive(Debug)]
pub struct Service {
    o: ServiceOptions,
    slot: Mutex<Slot>,
    stopping: AtomicBool,
    active: AtomicUsize,
    next_id: AtomicU64,
    /// Failures to log: the first five, then every hundredth.
    failures: Sampler,
}

/// How a connection ended before the splice.
enum Refused {
    /// Tell the client.
    Failed(Refusal),
    /// The client went away while waiting.
    ClientGone,
}

/// One connection's attempts to reach the agent.
struct Waiting<'a> {
    guest: &'a GuestAddr,
    /// Hybrid-vsock attempts whose `CONNECT` is unanswered, oldest first.
    pending: Vec<PendingConnect>,
    /// Why the last finished attempt failed.
    last_err: Option<ConnectError>,
}

impl<'a> Waiting<'a> {
    fn new(guest: &'a GuestAddr) -> Self {
        Waiting {
            guest,
            pending: Vec::new(),
            last_err: None,
        }
    }

    /// Collects answers: waits at most `wait` on the newest attempt, looks at the others
    /// without waiting. Returns a connected stream if one arrived; failed attempts are dropped
    /// (the backend closed them first, so closing is safe).
    fn poll(&mut self, wait: Duration) -> Result<Option<OwnedFd>, Refused> {
        let GuestAddr::Hybrid(path) = self.guest else {
            return Ok(None);
        };
        let mut i = self.pending.len();
        let mut first = true;
        while i > 0 {
            i -= 1;
            let slice = if std::mem::take(&mut first) {
                wait
            } else {
                Duration::ZERO
            };
            match poll_attempt(path, &mut self.pending[i], slice) {
                Ok(None) => {}
                Ok(Some(fd)) => {
                    self.pending.remove(i);
                    return Ok(Some(fd));
                }
                Err(e) => {
                    self.pending.remove(i);
                    self.last_err = Some(e);
                }
            }
        }
        Ok(None)
    }

    fn oldest_pending(&self) -> Option<Duration> {
        self.pending.first().map(PendingConnect::age)
    }

    /// What to report when time is up.
    fn timeout_error(&self) -> ConnectError {
        if let Some(age) = self.oldest_pending() {
            return ConnectError::NotListening(format!(
                "CONNECT {AGENT_PORT} unanswered for {} on {}; if the guest is up, its \
                 vhost-device-vsock may be wedged",
                seconds(age),
                self.guest.describe()
            ));
        }
        self.last_err
            .clone()
            .unwrap_or_else(|| ConnectError::Other("no attempt finished".to_owned()))
    }
}

/// How long to wait after a failed attempt before the next. While the guest's vsock device is
/// not started, seldom (see [`BOOT_RETRY`]).
fn pause_after(e: &ConnectError) -> Duration {
    match e {
        ConnectError::NotStarted(_) => BOOT_RETRY,
        _ => RETRY,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Removes what socket activation and systemd notification set, so children do not take
/// them for their own.
fn clean_env(cmd: &mut Command) {
    for v in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        cmd.env_remove(v);
    }
}

impl Service {
    /// A service that has not started anything yet.
    pub fn new(o: ServiceOptions) -> Arc<Service> {
        Arc::new(Service {
            o,
            slot: Mutex::new(Slot::default()),
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            failures: Sampler::new(5, 100),
        })
    }

    fn log(&self, msg: &str) {
        eprintln!("vmsilo: VM {:?}: {msg}", self.o.vm);
    }

    /// Accepts connections until a stop signal arrives, then stops a vm-service child (if
    /// any) and returns. `signals` must have been blocked before any thread was started.
    pub fn serve(
        self: &Arc<Self>,
        listener: UnixListener,
        signals: &Signals,
    ) -> Result<(), String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("command socket: {e}"))?;
        let mut handled_stops = 0;
        loop {
            let (listen_ready, _) = {
                let mut fds = [
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(signals.fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                let r = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
                (r(0), r(1))
            };
            let stops = signals.drain();
            if stops > handled_stops {
                handled_stops = stops;
                self.shutdown(signals, &mut handled_stops);
                return Ok(());
            }
            if listen_ready {
                self.accept_all(&listener);
            }
        }
    }

    fn accept_all(self: &Arc<Self>, listener: &UnixListener) {
        loop {
            let client = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.failures.hit().is_some() {
                        self.log(&format!("cannot accept a connection: {e}"));
                    }
                    // EMFILE and friends: give the other threads a moment.
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
            };
            let _ = client.set_nonblocking(false);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if self.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.active.fetch_sub(1, Ordering::SeqCst);
                let _ = client.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = (&client).write_all(
                    &ServiceFrame::Failed {
                        code: FailCode::Unavailable,
                        message: format!(
                            "VM {:?}: too many connections at once ({MAX_CONNECTIONS}): try again",
                            self.o.vm
                        ),
                    }
                    .encode(),
                );
                continue;
            }
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name(format!("conn-{id}"))
                .spawn(move || {
                    me.handle(client, id);
                    me.active.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.active.fetch_sub(1, Ordering::SeqCst);
                if self.failures.hit().is_some() {
                    self.log(&format!("cannot start a thread for a connection: {e}"));
                }
            }
        }
    }

    /// Serves one client connection.
    pub fn handle(&self, client: UnixStream, id: u64) {
        let _ = client.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        match self.reach_agent(&client, id) {
            Ok((guest, ready)) => {
                if (&client).write_all(&ready.encode()).is_err() {
                    return;
                }
                let _ = client.set_write_timeout(None);
                if let Err(e) = splice(OwnedFd::from(client), guest)
                    && self.failures.hit().is_some()
                {
                    self.log(&format!("connection {id}: relaying failed: {e}"));
                }
            }
            Err(Refused::Failed(r)) => {
                if self.failures.hit().is_some() {
                    self.log(&format!(
                        "connection {id}: {}",
                        escape(r.message.lines().next().unwrap_or(""))
                    ));
                }
                let _ = (&client).write_all(
                    &ServiceFrame::Failed {
                        code: r.code,
                        message: r.message,
                    }
                    .encode(),
                );
            }
            Err(Refused::ClientGone) => {}
        }
    }

    fn mark_ready(&self) {
        lock(&self.slot).ready = true;
    }

    /// Connects to the agent, starting the VM if needed; returns the guest stream and the
    /// `Ready` frame for the client.
    ///
    /// A hybrid-vsock attempt whose `CONNECT` is unanswered is never closed: it is waited for
    /// (the backend answers `OK`, or closes once the guest refuses), and when this connection
    /// gives up it is handed to [`hybrid::linger`]. Closing it would let the guest's late
    /// answer crash vhost-device-vsock's worker and cut the VM's vsock off for good (see
    /// `vmsilo_proto::hybrid`). While an attempt stays unanswered for [`HEDGE_AFTER`] another
    /// one is started beside it (at most [`MAX_PENDING`]), which also wakes a backend that
    /// holds a request back until its next event.
    fn reach_agent(
        &self,
        client: &UnixStream,
        id: u64,
    ) -> Result<(OwnedFd, ServiceFrame), Refused> {
        let guest = self.o.target.clone().map_err(Refused::Failed)?;
        let mut w = Waiting::new(&guest);
        let result = self.wait_for_agent(client, id, &mut w);
        if !w.pending.is_empty() {
            let n = w.pending.len();
            if let Err(e) = hybrid::linger(std::mem::take(&mut w.pending))
                && self.failures.hit().is_some()
            {
                self.log(&format!(
                    "connection {id}: cannot keep {n} unanswered vsock attempt(s) open: {e}"
                ));
            }
        }
        result
    }

    fn wait_for_agent(
        &self,
        client: &UnixStream,
        id: u64,
        w: &mut Waiting<'_>,
    ) -> Result<(OwnedFd, ServiceFrame), Refused> {
        let began = Instant::now();
        let deadline = began + self.o.agent_timeout;
        let mut waiting_on = None;
        // The first status frame after STATUS_EVERY: a warm agent that takes a moment to
        // answer shows no progress line.
        let mut last_status = Some(began);
        let mut next_attempt = began;
        // The first attempt is the warm path: no start, no systemctl.
        let mut cold = false;
        // When the VM's current start began, as far as this connection knows.
        let mut since = began;
        let mut slow_logged = false;
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return Err(Refused::Failed(Refusal {
                    code: FailCode::ShuttingDown,
                    message: format!(
                        "VM {:?}: the command service is stopping: try again",
                        self.o.vm
                    ),
                }));
            }
            let round = Instant::now();
            // Nothing in flight and the last attempt failed: the VM may not run.
            if w.pending.is_empty() && next_attempt > began {
                cold = true;
                let e = self
                    .ensure_started(&mut waiting_on)
                    .map_err(Refused::Failed)?;
                since = round.checked_sub(e).unwrap_or(round);
            }
            let elapsed = since.elapsed();
            if round >= next_attempt && w.pending.len() < MAX_PENDING {
                match w.guest.begin(AGENT_PORT) {
                    Ok(Attempt::Connected(fd)) => return Ok(self.ready(fd, id, cold, began)),
                    Ok(Attempt::Pending(p)) => {
                        w.pending.push(p);
                        next_attempt = round + HEDGE_AFTER;
                    }
                    Err(e) => {
                        next_attempt = round + pause_after(&e);
                        w.last_err = Some(e);
                    }
                }
            }
            if let Some(fd) = w.poll(RETRY.saturating_sub(round.elapsed()))? {
                return Ok(self.ready(fd, id, cold, began));
            }
            if w.pending.is_empty()
                && let Some(e) = &w.last_err
            {
                next_attempt = next_attempt.min(round + pause_after(e));
            }
            if let Some(age) = w.oldest_pending()
                && age >= SLOW_ANSWER
                && !slow_logged
                && self.failures.hit().is_some()
            {
                slow_logged = true;
                self.log(&format!(
                    "connection {id}: {} has not answered CONNECT {AGENT_PORT} for {} \
                     ({} attempt(s) waiting); still waiting (a loaded host or a busy guest)",
                    w.guest.describe(),
                    seconds(age),
                    w.pending.len()
                ));
            }
            if Instant::now() >= deadline {
                let err = w.timeout_error();
                return Err(Refused::Failed(self.timeout_message(w.guest, &err)));
            }
            if last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                last_status = Some(Instant::now());
                let phase = match (&w.last_err, w.pending.is_empty()) {
                    (Some(ConnectError::NoVm(_)), true) => Phase::StartingVm,
                    _ => Phase::WaitingForAgent,
                };
                let frame = ServiceFrame::Status {
                    phase,
                    elapsed_ms: millis(elapsed),
                };
                if (&*client).write_all(&frame.encode()).is_err() {
                    return Err(Refused::ClientGone);
                }
            }
            if w.pending.is_empty() {
                std::thread::sleep(next_attempt.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// The agent answered: the `Ready` frame for the client.
    fn ready(&self, fd: OwnedFd, id: u64, cold: bool, began: Instant) -> (OwnedFd, ServiceFrame) {
        self.mark_ready();
        if cold {
            self.log(&format!(
                "connection {id}: the guest agent answered after {}",
                seconds(began.elapsed())
            ));
        }
        (
            fd,
            ServiceFrame::Ready {
                cold,
                startup_ms: if cold { millis(began.elapsed()) } else { 0 },
            },
        )
    }

    fn timeout_message(&self, guest: &GuestAddr, err: &ConnectError) -> Refusal {
        let vm = &self.o.vm;
        let t = format_duration(self.o.agent_timeout);
        let look = match &self.o.starter {
            Starter::Systemd { unit, .. } => {
                format!("`systemctl status {unit}`, `journalctl -u {unit}`")
            }
            Starter::Child { .. } => "the command service's output".to_owned(),
        };
        let message = match err {
            ConnectError::NoVm(m) => format!(
                "VM {vm:?} did not come up within {t} ({m}): see {look}; the timeout is \
                 command-service's --agent-timeout (VMSILO_AGENT_TIMEOUT)"
            ),
            other => format!(
                "VM {vm:?}: timed out after {t} waiting for the guest agent on {} port \
                 {AGENT_PORT} ({}): the VM runs but its agent does not answer; look at the \
                 guest's console (`vm-shell {vm}`) and {look}",
                guest.describe(),
                other.message()
            ),
        };
        Refusal {
            code: FailCode::AgentTimeout,
            message,
        }
    }

    /// Makes sure the VM is starting or running; returns how long its start has taken.
    /// `waiting_on` is the start generation this connection waits for.
    fn ensure_started(&self, waiting_on: &mut Option<u64>) -> Result<Duration, Refusal> {
        match &self.o.starter {
            Starter::Systemd {
                unit,
                systemctl,
                user,
            } => self.ensure_systemd(unit, systemctl, user, waiting_on),
            Starter::Child { argv } => self.ensure_child(argv, waiting_on),
        }
    }

    fn ensure_systemd(
        &self,
        unit: &str,
        systemctl: &OsString,
        user: &str,
        waiting_on: &mut Option<u64>,
    ) -> Result<Duration, Refusal> {
        let mut s = lock(&self.slot);
        let now = Instant::now();
        let due =
            *waiting_on != Some(s.generation) || s.checked.is_none_or(|t| now - t >= SYSTEMD_CHECK);
        if due {
            s.checked = Some(now);
            let state = is_active(systemctl, unit);
            match state.as_str() {
                "active" | "activating" | "reloading" | "refreshing" => {
                    s.seen_up = true;
                    if s.since.is_none() {
                        // Started by someone else (vm-start, autoStart).
                        s.generation += 1;
                        s.since = Some(now);
                    }
                }
                _ => {
                    let age = s.since.map(|t| now - t).unwrap_or(Duration::MAX);
                    if *waiting_on == Some(s.generation) && s.since.is_some() && !s.ready {
                        if (state == "failed" && age >= FAILED_GRACE)
                            || (s.seen_up && state != "deactivating")
                        {
                            return Err(Refusal {
                                code: FailCode::StartFailed,
                                message: format!(
                                    "VM {:?} failed to start: {unit} is {state}; see `systemctl \
                                     status {unit}` and `journalctl -u {unit}`",
                                    self.o.vm
                                ),
                            });
                        }
                    } else if age >= START_GRACE || s.ready {
                        start_unit(systemctl, unit, &self.o.vm, user)?;
                        s.generation += 1;
                        s.since = Some(now);
                        s.ready = false;
                        s.seen_up = false;
                        drop(s);
                        self.log(&format!("starting the VM: systemctl start {unit}"));
                        s = lock(&self.slot);
                    }
                }
            }
        }
        *waiting_on = Some(s.generation);
        Ok(s.since.map(|t| now - t).unwrap_or_default())
    }

    fn ensure_child(
        &self,
        argv: &[OsString],
        waiting_on: &mut Option<u64>,
    ) -> Result<Duration, Refusal> {
        let mut s = lock(&self.slot);
        if let Some(c) = s.child.clone() {
            match *lock(&c.exit) {
                None => {
                    *waiting_on = Some(c.generation);
                    return Ok(c.started.elapsed());
                }
                Some(status) if *waiting_on == Some(c.generation) && !s.ready => {
                    let tail: Vec<String> = lock(&c.tail).iter().cloned().collect();
                    let mut message = format!(
                        "VM {:?} failed to start: vm-service (pid {}) exited with {}",
                        self.o.vm,
                        c.pid,
                        describe(status)
                    );
                    if !tail.is_empty() {
                        message.push_str(":\n  ");
                        message.push_str(&tail.join("\n  "));
                    }
                    return Err(Refusal {
                        code: FailCode::StartFailed,
                        message,
                    });
                }
                // Ended after it ran (idle shutdown, stopped), or a failed start nobody waits
                // for any more: start it again.
                Some(_) => {}
            }
        }
        s.generation += 1;
        let generation = s.generation;
        let child = spawn_child(argv, generation).map_err(|e| Refusal {
            code: FailCode::StartFailed,
            message: format!("VM {:?}: cannot start vm-service: {e}", self.o.vm),
        })?;
        self.log(&format!("starting the VM: vm-service pid {}", child.pid));
        s.child = Some(child);
        s.since = Some(Instant::now());
        s.ready = false;
        *waiting_on = Some(generation);
        Ok(Duration::ZERO)
    }

    /// Stops accepting; asks a vm-service child to stop the VM and waits for it (a further
    /// stop signal stops it hard, the stop timeout kills it).
    fn shutdown(&self, signals: &Signals, handled_stops: &mut u32) {
        self.stopping.store(true, Ordering::SeqCst);
        let Some(child) = lock(&self.slot).child.clone() else {
            self.log("command service stopping");
            return;
        };
        if lock(&child.exit).is_some() {
            self.log("command service stopping");
            return;
        }
        let pid = Pid::from_raw(i32::try_from(child.pid).unwrap_or(i32::MAX));
        self.log(&format!(
            "command service stopping: asking vm-service (pid {}) to stop the VM",
            child.pid
        ));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + self.o.stop_timeout;
        while lock(&child.exit).is_none() {
            let stops = signals.drain();
            if stops > *handled_stops {
                *handled_stops = stops;
                self.log("second stop request: stopping the VM hard");
                let _ = kill(pid, Signal::SIGTERM);
            }
            if Instant::now() >= deadline {
                self.log(&format!(
                    "vm-service did not stop within {}: killing it",
                    format_duration(self.o.stop_timeout)
                ));
                let _ = kill(pid, Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The supervising thread records the status right after reaping.
        let reaped = Instant::now() + Duration::from_secs(5);
        while lock(&child.exit).is_none() && Instant::now() < reaped {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `systemctl is-active <unit>`'s answer (`unknown` if it cannot be asked).
fn is_active(systemctl: &OsString, unit: &str) -> String {
    let mut cmd = Command::new(systemctl);
    cmd.args(["is-active", unit])
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    clean_env(&mut cmd);
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn start_unit(systemctl: &OsString, unit: &str, vm: &str, user: &str) -> Result<(), Refusal> {
    let mut cmd = Command::new(systemctl);
    cmd.args(["start", "--no-block", unit]).stdin(Stdio::null());
    clean_env(&mut cmd);
    let fail = |message| Refusal {
        code: FailCode::StartFailed,
        message,
    };
    let out = cmd.output().map_err(|e| {
        fail(format!(
            "VM {vm:?}: cannot run {}: {e}",
            systemctl.to_string_lossy()
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(fail(crate::commands::systemctl::explain(
        "start", unit, vm, user, "root", &stderr,
    )))
}

/// Starts `argv` from a thread that then waits for it: the child's parent-death signal
/// follows the thread that forked it, so that thread lives exactly as long as the child.
fn spawn_child(argv: &[OsString], generation: u64) -> Result<Arc<ChildVm>, String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "empty vm-service command line".to_owned())?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    clean_env(&mut cmd);
    crate::sys::prepare_child(&mut cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("vm-service".into())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(format!("{}: {e}", cmd.get_program().display())));
                    return;
                }
            };
            let info = Arc::new(ChildVm {
                pid: child.id(),
                generation,
                started: Instant::now(),
                exit: Mutex::new(None),
                tail: Mutex::new(VecDeque::new()),
            });
            let _ = tx.send(Ok(Arc::clone(&info)));
            let relay = child.stderr.take().map(|stderr| {
                let info = Arc::clone(&info);
                std::thread::spawn(move || relay_stderr(stderr, &info))
            });
            let status = child.wait();
            if let Some(r) = relay {
                let _ = r.join();
            }
            let status = status.unwrap_or_else(|_| {
                std::os::unix::process::ExitStatusExt::from_raw(Signal::SIGKILL as i32)
            });
            eprintln!(
                "vmsilo: vm-service (pid {}) exited with {}",
                info.pid,
                describe(status)
            );
            *lock(&info.exit) = Some(status);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the vm-service thread ended early".to_owned())?
}

/// Copies a child's stderr to ours line by line, keeping the last lines.
fn relay_stderr(stderr: std::process::ChildStderr, info: &ChildVm) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.by_ref().take(64 * 1024).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // vm-service relays what the VMM and virtiofsd print, which can quote guest-chosen
        // text (file names, device messages): escaped here, in the log and in the tail sent
        // to vm-run.
        let mut text = escape(String::from_utf8_lossy(&line).trim_end()).into_owned();
        let _ = writeln!(std::io::stderr(), "{text}");
        if text.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let mut tail = lock(&info.tail);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_attempts_while_the_vsock_device_is_not_started_are_seldom() {
        assert_eq!(
            pause_after(&ConnectError::NotStarted("early".into())),
            BOOT_RETRY
        );
        assert_eq!(pause_after(&ConnectError::NotListening("x".into())), RETRY);
        assert_eq!(pause_after(&ConnectError::NoVm("x".into())), RETRY);
    }

    /// A service whose VM starter is `sh -c script`, and the failure its first start ends in.
    fn failed_start(script: &str) -> (Arc<Service>, Refusal) {
        let svc = Service::new(ServiceOptions {
            vm: "a".into(),
            target: Ok(GuestAddr::Hybrid("/nonexistent/vsock".into())),
            starter: Starter::Child {
                argv: ["sh", "-c", script].map(OsString::from).to_vec(),
            },
            agent_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(5),
        });
        let mut waiting = None;
        assert_eq!(
            svc.ensure_started(&mut waiting).expect("spawned"),
            Duration::ZERO
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match svc.ensure_started(&mut waiting) {
                Ok(_) => assert!(Instant::now() < deadline, "the child never ended"),
                Err(e) => break e,
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (svc, err)
    }

    #[test]
    fn test_child_failure_reports_status_and_stderr_tail() {
        let (svc, err) = failed_start("echo one >&2; echo 'two: no kernel' >&2; exit 3");
        assert_eq!(err.code, FailCode::StartFailed);
        assert!(
            err.message.contains("exited with status 3"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("\n  one\n  two: no kernel"),
            "{}",
            err.message
        );
        // A new connection (not waiting on the failed start) starts it again.
        let mut fresh = None;
        svc.ensure_started(&mut fresh).expect("restarted");
        assert_eq!(fresh, Some(2));
    }

    #[test]
    fn test_child_stderr_tail_is_kept_with_terminal_controls_escaped() {
        // vm-service relays the VMM's and virtiofsd's output, which can quote guest text.
        let (_svc, err) = failed_start("printf 'x\\033]0;owned\\007\\033[2J\\n' >&2; exit 3");
        assert!(
            err.message.ends_with(":\n  x\\x1b]0;owned\\x07\\x1b[2J"),
            "{:?}",
            err.message
        );
    }
}
