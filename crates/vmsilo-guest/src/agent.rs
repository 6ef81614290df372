//! The agent's event loop: one thread, one `poll(2)`, any number of connections.
//!
//! Each connection goes Hello → Request → (attached: Running) → Closing. Children are watched
//! with pidfds, so the loop never needs `SIGCHLD` and never reaps a process it did not start.
//! Detached commands, and attached ones whose host went away, are kept as orphans until they
//! exit, so that they are reaped and count as running for the idle watchdog.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::unistd::Pid;
use vmsilo_log::Sampler;
use vmsilo_proto::frame::MAX_DATA_CHUNK;
use vmsilo_proto::{
    ErrorCode, ErrorFrame, ExitStatus, FrameDecoder, Message, Mode, PROTOCOL_VERSION, Request,
    Signal, Started,
};

use crate::exec::{self, ExecConfig, Spawned};
use crate::idle::{BusyMarker, IdleWatchdog};
use crate::transport::{Listener, Transport};
use crate::{log, session};

/// Stop reading a command's output while this much is queued for the host.
const OUT_HIGH_WATER: usize = 256 << 10;
/// Stop reading the connection while this much stdin waits for the command.
const STDIN_HIGH_WATER: usize = 256 << 10;
/// Connections accepted per wakeup, so one busy listener cannot starve the rest.
const ACCEPT_BURST: usize = 16;

/// Where detached commands go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// Children of the agent (the test guest, or any guest without a user session).
    Plain,
    /// Transient services of the user's systemd instance (NixOS guests).
    Systemd,
}

/// Everything the event loop needs to know.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// How commands are prepared.
    pub exec: ExecConfig,
    /// Where detached commands run.
    pub session: SessionMode,
    /// Power off after this long with nothing running; `None`: never.
    pub idle_shutdown: Option<Duration>,
    /// Keep a busy-marker file here (for `vmsilo-guest idle-watchdog`).
    pub state_dir: Option<PathBuf>,
    /// After an attached command exited, wait this long for its output pipes to reach EOF
    /// (a background grandchild may hold them open) before reporting the exit status.
    pub exit_grace: Duration,
    /// Drop a connection that has not sent its request after this long.
    pub handshake_timeout: Duration,
    /// Drop a closing connection whose host does not read the last frames after this long.
    pub closing_timeout: Duration,
    /// Run every command under waypipe (QEMU VMs with windows, `vmsilo.waypipe=<port>`).
    pub waypipe: Option<WaypipeConfig>,
}

/// How commands get a Wayland display in a QEMU VM: see [`crate::waypipe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypipeConfig {
    /// The host's vsock port for waypipe streams.
    pub port: u32,
    /// The agent's own executable, which runs as `vmsilo-guest waypipe-run`.
    pub agent_exe: PathBuf,
}

impl AgentConfig {
    /// Defaults around an exec configuration: plain session, no idle shutdown.
    pub fn new(exec: ExecConfig) -> Self {
        Self {
            exec,
            session: SessionMode::Plain,
            idle_shutdown: None,
            state_dir: None,
            exit_grace: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(30),
            closing_timeout: Duration::from_secs(10),
            waypipe: None,
        }
    }
}

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No listener, no connection and no command left (socket activation with `Accept=yes`).
    Finished,
    /// Nothing ran for the configured idle time: the caller powers the guest off.
    Idle,
}

/// A process the agent started and must reap.
#[derive(Debug)]
struct Tracked {
    child: Child,
    pidfd: OwnedFd,
    name: String,
    /// Reaped: remove it from the orphan list.
    reaped: bool,
}

impl Tracked {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reaps the process if it has exited.
    fn try_reap(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(convert_status(status)),
            Ok(None) => None,
            Err(e) => {
                log(&format!(
                    "failed to reap {} (pid {}): {e}",
                    self.name,
                    self.pid()
                ));
                Some(ExitStatus::Exited(255))
            }
        }
    }
}

fn convert_status(status: std::process::ExitStatus) -> ExitStatus {
    if let Some(code) = status.code() {
        // Linux exit statuses are 8 bits.
        ExitStatus::Exited(code as u8)
    } else {
        ExitStatus::Signaled {
            signal: status.signal().unwrap_or(0).clamp(0, 255) as u8,
            core_dumped: status.core_dumped(),
        }
    }
}

/// An attached command.
#[derive(Debug)]
struct Running {
    tracked: Tracked,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    /// stdout (or the pty master), stderr.
    outputs: [Option<OwnedFd>; 2],
    pty: Option<OwnedFd>,
    exit: Option<(ExitStatus, Instant)>,
}

impl Running {
    /// Sends a signal to the command's process group (it is a session leader, so its pgid is
    /// its pid), unless it has already been reaped.
    fn signal(&self, sig: NixSignal) {
        if self.exit.is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.tracked.pid()) else {
            return;
        };
        match killpg(Pid::from_raw(pid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => log(&format!(
                "failed to send {sig} to {} (pid {pid}): {e}",
                self.tracked.name
            )),
        }
    }

    /// The host went away: close the command's stdio and send it SIGHUP, as a terminal
    /// hangup would. Returns the process if it still has to be reaped.
    fn hang_up(mut self) -> Option<Tracked> {
        self.stdin = None;
        self.outputs = [None, None];
        self.pty = None;
        if self.exit.is_some() {
            return None;
        }
        self.signal(NixSignal::SIGHUP);
        Some(self.tracked)
    }
}

#[derive(Debug)]
enum State {
    Hello,
    Request,
    Running(Box<Running>),
    Closing,
}

struct Conn {
    io: Box<dyn Transport>,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_pos: usize,
    state: State,
    /// The peer closed or the connection failed: drop it.
    gone: bool,
    /// Why it is gone, for the log.
    why: Option<String>,
    since: Instant,
}

impl Conn {
    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Closing and everything written: nothing left to do.
    fn finished(&self) -> bool {
        matches!(self.state, State::Closing) && self.pending() == 0
    }

    fn queue(&mut self, msg: &Message) {
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        if let Err(e) = msg.encode(&mut self.out) {
            log(&format!("failed to encode a {} frame: {e}", msg.name()));
        }
    }

    /// Marks the connection for dropping, keeping the first reason.
    fn give_up(&mut self, why: impl Into<String>) {
        if !self.gone {
            self.gone = true;
            self.why = Some(why.into());
        }
    }

    /// What the connection was doing, for the log.
    fn stage(&self) -> &'static str {
        match self.state {
            State::Hello => "before its Hello",
            State::Request => "before its request",
            State::Running(_) => "while its command ran",
            State::Closing => "while its last frames were sent",
        }
    }

    fn refuse(&mut self, err: ErrorFrame) -> Option<Tracked> {
        self.queue(&Message::Error(err));
        self.close()
    }

    /// Switches to Closing; returns a running command to orphan.
    fn close(&mut self) -> Option<Tracked> {
        let old = std::mem::replace(&mut self.state, State::Closing);
        self.since = Instant::now();
        match old {
            State::Running(r) => r.hang_up(),
            _ => None,
        }
    }

    /// Writes as much queued output as the socket takes.
    fn flush(&mut self) {
        while self.pending() > 0 && !self.gone {
            match self.io.write(&self.out[self.out_pos..]) {
                Ok(0) => self.give_up("a write to the host wrote nothing"),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.give_up(format!("writing to the host failed: {e}")),
            }
        }
        if self.pending() == 0 {
            self.out.clear();
            self.out_pos = 0;
        }
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy)]
enum Token {
    Listener,
    Conn(usize),
    Output(usize, usize),
    Stdin(usize),
    Pid(usize),
    Orphan(usize),
}

/// The agent.
pub struct Agent {
    cfg: AgentConfig,
    listener: Option<Box<dyn Listener>>,
    conns: Vec<Conn>,
    orphans: Vec<Tracked>,
    idle: Option<IdleWatchdog>,
    marker: Option<BusyMarker>,
    scratch: Vec<u8>,
    was_busy: bool,
    /// Connections dropped before they ended normally (counted, and sampled for the log).
    dropped: Sampler,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("connections", &self.conns.len())
            .field("orphans", &self.orphans.len())
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent with no listener and no connection yet.
    pub fn new(cfg: AgentConfig) -> Self {
        let now = Instant::now();
        Self {
            idle: cfg.idle_shutdown.map(|after| IdleWatchdog::new(after, now)),
            marker: cfg.state_dir.as_deref().map(BusyMarker::new),
            cfg,
            listener: None,
            conns: Vec::new(),
            orphans: Vec::new(),
            scratch: Vec::new(),
            was_busy: false,
            dropped: Sampler::new(5, 100),
        }
    }

    /// Accept connections from `listener`.
    pub fn set_listener(&mut self, listener: Box<dyn Listener>) {
        self.listener = Some(listener);
    }

    /// Serves an already-connected stream (socket activation with `Accept=yes`, tests).
    pub fn add_connection(&mut self, io: Box<dyn Transport>) -> io::Result<()> {
        let fd = io.as_fd().try_clone_to_owned()?;
        exec::set_nonblocking(&fd)?;
        self.conns.push(Conn {
            io,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            out_pos: 0,
            state: State::Hello,
            gone: false,
            why: None,
            since: Instant::now(),
        });
        Ok(())
    }

    fn busy(&self) -> bool {
        !self.conns.is_empty() || !self.orphans.is_empty()
    }

    /// Runs until there is nothing left to serve or the idle watchdog fires.
    pub fn run(&mut self) -> io::Result<Outcome> {
        loop {
            let now = Instant::now();
            self.housekeeping(now);
            let busy = self.busy();
            if self.was_busy && !busy {
                // Idle again: give back the read buffer and whatever the allocator kept, so
                // the resident size of an idle agent stays small.
                self.scratch = Vec::new();
                crate::sys::release_free_memory();
            }
            self.was_busy = busy;
            if let Some(marker) = &mut self.marker
                && let Err(e) = marker.set(busy)
            {
                log(&format!("failed to update the busy marker: {e}"));
            }
            if let Some(w) = &mut self.idle {
                w.update(busy, now);
                if w.expired(now) {
                    // A host may have connected while the deadline passed: its connection
                    // waits in the listener's queue, and powering off now would drop it
                    // unread. Take it and stay up.
                    self.accept();
                    if self.conns.is_empty() {
                        return Ok(Outcome::Idle);
                    }
                    log("a connection arrived as the idle time ran out: staying up");
                    continue;
                }
            }
            if self.listener.is_none() && self.conns.is_empty() && self.orphans.is_empty() {
                return Ok(Outcome::Finished);
            }
            let ready = self.wait(now)?;
            for (token, revents) in ready {
                self.dispatch(token, revents);
            }
            self.orphans.retain(|o| !o.reaped);
        }
    }

    /// Timeouts, finished commands, flushing and dropping connections.
    fn housekeeping(&mut self, now: Instant) {
        let mut orphaned = Vec::new();
        for conn in &mut self.conns {
            let age = now.saturating_duration_since(conn.since);
            let pending = conn.pending();
            match &mut conn.state {
                State::Hello | State::Request if age >= self.cfg.handshake_timeout => {
                    conn.give_up(format!(
                        "it sent no request within {}s",
                        self.cfg.handshake_timeout.as_secs_f64()
                    ));
                }
                State::Closing if age >= self.cfg.closing_timeout && pending > 0 => {
                    conn.give_up(format!(
                        "the host did not read the last {pending} bytes within {}s",
                        self.cfg.closing_timeout.as_secs_f64()
                    ));
                }
                State::Running(r) => {
                    if let Some((status, at)) = r.exit {
                        let drained = r.outputs.iter().all(Option::is_none);
                        if drained || now >= at + self.cfg.exit_grace {
                            conn.queue(&Message::Exit(status));
                            conn.close();
                        }
                    }
                }
                _ => {}
            }
            conn.flush();
            if conn.gone {
                // The first few and then every 100th, so a noisy host cannot flood the log.
                if let Some(dropped) = self.dropped.hit() {
                    log(&format!(
                        "dropping a connection {}: {} ({dropped} dropped so far)",
                        conn.stage(),
                        conn.why.as_deref().unwrap_or("no reason recorded"),
                    ));
                }
                if let State::Running(_) = conn.state
                    && let Some(t) = conn.close()
                {
                    orphaned.push(t);
                }
            }
        }
        self.orphans.extend(orphaned);
        self.conns.retain(|c| !(c.gone || c.finished()));
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines: Vec<Instant> = Vec::new();
        if let Some(d) = self.idle.as_ref().and_then(IdleWatchdog::deadline) {
            deadlines.push(d);
        }
        for c in &self.conns {
            match &c.state {
                State::Hello | State::Request => {
                    deadlines.push(c.since + self.cfg.handshake_timeout)
                }
                State::Closing => deadlines.push(c.since + self.cfg.closing_timeout),
                State::Running(r) => {
                    if let Some((_, at)) = r.exit {
                        deadlines.push(at + self.cfg.exit_grace);
                    }
                }
            }
        }
        deadlines.into_iter().min()
    }

    /// Polls every descriptor that can make progress.
    fn wait(&self, now: Instant) -> io::Result<Vec<(Token, PollFlags)>> {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut tokens = Vec::new();
        let mut add = |fd, flags, token| {
            fds.push(PollFd::new(fd, flags));
            tokens.push(token);
        };
        if let Some(l) = &self.listener {
            add(l.as_fd(), PollFlags::POLLIN, Token::Listener);
        }
        for (i, c) in self.conns.iter().enumerate() {
            let mut flags = PollFlags::empty();
            let reading = match &c.state {
                State::Hello | State::Request => true,
                State::Running(r) => r.stdin_buf.len() < STDIN_HIGH_WATER,
                State::Closing => false,
            };
            if reading {
                flags |= PollFlags::POLLIN;
            }
            if c.pending() > 0 {
                flags |= PollFlags::POLLOUT;
            }
            add(c.io.as_fd(), flags, Token::Conn(i));
            if let State::Running(r) = &c.state {
                if c.pending() < OUT_HIGH_WATER {
                    for (k, out) in r.outputs.iter().enumerate() {
                        if let Some(fd) = out {
                            add(fd.as_fd(), PollFlags::POLLIN, Token::Output(i, k));
                        }
                    }
                }
                if let Some(fd) = &r.stdin
                    && !r.stdin_buf.is_empty()
                {
                    add(fd.as_fd(), PollFlags::POLLOUT, Token::Stdin(i));
                }
                if r.exit.is_none() {
                    add(r.tracked.pidfd.as_fd(), PollFlags::POLLIN, Token::Pid(i));
                }
            }
        }
        for (j, o) in self.orphans.iter().enumerate() {
            add(o.pidfd.as_fd(), PollFlags::POLLIN, Token::Orphan(j));
        }
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(d) => {
                // Round up so that the deadline has passed when poll returns.
                let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(io::Error::other(format!("poll failed: {e}"))),
        }
        Ok(fds
            .iter()
            .zip(tokens)
            .filter_map(|(fd, token)| {
                let r = fd.revents().unwrap_or(PollFlags::empty());
                (!r.is_empty()).then_some((token, r))
            })
            .collect())
    }

    fn dispatch(&mut self, token: Token, revents: PollFlags) {
        match token {
            Token::Listener => self.accept(),
            Token::Conn(i) => {
                if revents.intersects(PollFlags::POLLOUT) {
                    self.conns[i].flush();
                }
                if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_conn(i);
                }
            }
            Token::Output(i, k) => self.read_output(i, k),
            Token::Stdin(i) => self.write_stdin(i),
            Token::Pid(i) => {
                if let State::Running(r) = &mut self.conns[i].state
                    && r.exit.is_none()
                    && let Some(status) = r.tracked.try_reap()
                {
                    r.exit = Some((status, Instant::now()));
                }
            }
            Token::Orphan(j) => {
                // Reaped orphans are removed after the whole batch, so indices stay valid.
                let o = &mut self.orphans[j];
                if !o.reaped
                    && let Some(status) = o.try_reap()
                {
                    o.reaped = true;
                    log(&format!(
                        "{} (pid {}) ended: status {}",
                        o.name,
                        o.pid(),
                        status.code()
                    ));
                }
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BURST {
            let Some(listener) = &mut self.listener else {
                return;
            };
            match listener.accept() {
                Ok(Some(io)) => {
                    if let Err(e) = self.add_connection(io) {
                        log(&format!("failed to set up a connection: {e}"));
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    log(&format!("failed to accept on {}: {e}", listener.describe()));
                    return;
                }
            }
        }
    }

    fn read_conn(&mut self, i: usize) {
        if self.scratch.is_empty() {
            self.scratch = vec![0; MAX_DATA_CHUNK + 16];
        }
        let conn = &mut self.conns[i];
        if matches!(conn.state, State::Closing) {
            // Nothing more is read; notice a peer that went away.
            let mut probe = [0u8; 1];
            // (With everything sent the connection is finished and goes quietly anyway.)
            if matches!(conn.io.read(&mut probe), Ok(0)) && conn.pending() > 0 {
                conn.give_up("the host closed the connection before the last frames");
            }
            return;
        }
        match conn.io.read(&mut self.scratch) {
            Ok(0) => {
                conn.give_up("the host closed the connection");
                return;
            }
            Ok(n) => conn.decoder.push(&self.scratch[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return;
            }
            Err(e) => {
                conn.give_up(format!("reading from the host failed: {e}"));
                return;
            }
        }
        let cfg = &self.cfg;
        let mut orphaned = Vec::new();
        loop {
            if matches!(conn.state, State::Closing) {
                break;
            }
            let msg = match conn.decoder.next_message() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => {
                    log(&format!("refusing a malformed frame: {e}"));
                    orphaned.extend(conn.refuse(ErrorFrame::new(
                        ErrorCode::Malformed,
                        format!("vmsilo-guest: malformed frame: {e}"),
                    )));
                    break;
                }
            };
            orphaned.extend(on_message(conn, msg, cfg));
        }
        conn.flush();
        self.orphans.extend(orphaned);
    }

    fn read_output(&mut self, i: usize, k: usize) {
        if self.scratch.is_empty() {
            self.scratch = vec![0; MAX_DATA_CHUNK + 16];
        }
        let conn = &mut self.conns[i];
        let State::Running(r) = &mut conn.state else {
            return;
        };
        let Some(fd) = &r.outputs[k] else {
            return;
        };
        match nix::unistd::read(fd, &mut self.scratch[..MAX_DATA_CHUNK]) {
            Ok(0) | Err(Errno::EIO) => r.outputs[k] = None,
            Ok(n) => {
                let data = self.scratch[..n].to_vec();
                conn.queue(&if k == 0 {
                    Message::Stdout(data)
                } else {
                    Message::Stderr(data)
                });
                conn.flush();
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => {
                log(&format!(
                    "failed to read the output of {}: {e}",
                    r.tracked.name
                ));
                r.outputs[k] = None;
            }
        }
    }

    fn write_stdin(&mut self, i: usize) {
        let State::Running(r) = &mut self.conns[i].state else {
            return;
        };
        write_stdin(r);
    }
}

/// Writes buffered stdin to the command; closes its stdin at the end (pipes).
fn write_stdin(r: &mut Running) {
    let Some(fd) = &r.stdin else {
        r.stdin_buf.clear();
        return;
    };
    while !r.stdin_buf.is_empty() {
        match nix::unistd::write(fd, &r.stdin_buf) {
            Ok(n) => {
                r.stdin_buf.drain(..n);
            }
            Err(Errno::EAGAIN) => return,
            Err(Errno::EINTR) => {}
            Err(_) => {
                // EPIPE: the command closed its stdin. What it did not read is dropped.
                r.stdin = None;
                r.stdin_buf.clear();
                return;
            }
        }
    }
    if r.stdin_eof && r.pty.is_none() {
        r.stdin = None;
    }
}

/// Handles one message from the host; returns a process to orphan if the connection gave up on
/// its command.
fn on_message(conn: &mut Conn, msg: Message, cfg: &AgentConfig) -> Option<Tracked> {
    match (&mut conn.state, msg) {
        (State::Hello, Message::Hello { version }) => {
            conn.queue(&Message::HelloReply {
                version: PROTOCOL_VERSION,
            });
            if version != PROTOCOL_VERSION {
                log(&format!(
                    "refusing a host that speaks protocol version {version} (agent: {PROTOCOL_VERSION})"
                ));
                return conn.refuse(ErrorFrame::new(
                    ErrorCode::VersionMismatch,
                    format!(
                        "vmsilo-guest: protocol version mismatch: host speaks {version}, guest agent speaks {PROTOCOL_VERSION}; rebuild the guest image"
                    ),
                ));
            }
            conn.state = State::Request;
            None
        }
        (State::Hello, other) => conn.refuse(ErrorFrame::new(
            ErrorCode::Malformed,
            format!(
                "vmsilo-guest: expected Hello as the first frame, got {}",
                other.name()
            ),
        )),
        (State::Request, Message::Request(req)) => start(conn, &req, cfg),
        (State::Request, other) => conn.refuse(ErrorFrame::new(
            ErrorCode::Malformed,
            format!("vmsilo-guest: expected Request, got {}", other.name()),
        )),
        (State::Running(r), Message::Stdin(data)) => {
            if r.stdin.is_some() && !r.stdin_eof {
                r.stdin_buf.extend_from_slice(&data);
                write_stdin(r);
            }
            None
        }
        (State::Running(r), Message::StdinEof) => {
            if !r.stdin_eof {
                r.stdin_eof = true;
                if r.pty.is_some() && r.stdin.is_some() {
                    // A terminal has no end of input: send its EOF character (^D), which ends
                    // input for a program reading a line-buffered terminal.
                    r.stdin_buf.push(0x04);
                }
                write_stdin(r);
            }
            None
        }
        (State::Running(r), Message::Resize(size)) => {
            if let Some(pty) = &r.pty
                && let Err(e) = crate::sys::set_window_size(pty.as_fd(), size.rows, size.cols)
            {
                log(&format!(
                    "failed to resize the terminal of {}: {e}",
                    r.tracked.name
                ));
            }
            None
        }
        (State::Running(r), Message::Signal(sig)) => {
            r.signal(to_nix(sig));
            None
        }
        (State::Running(_), Message::Error(e)) => {
            conn.give_up(format!("the host aborted: {}", e.message));
            conn.close()
        }
        (State::Running(_), other) => conn.refuse(ErrorFrame::new(
            ErrorCode::Malformed,
            format!(
                "vmsilo-guest: unexpected {} frame while the command runs",
                other.name()
            ),
        )),
        (State::Closing, _) => None,
    }
}

/// A refusal's message without the `vmsilo-guest: ` the log line already starts with.
fn strip_prefix(message: &str) -> &str {
    message.strip_prefix("vmsilo-guest: ").unwrap_or(message)
}

fn to_nix(sig: Signal) -> NixSignal {
    match sig {
        Signal::Hup => NixSignal::SIGHUP,
        Signal::Int => NixSignal::SIGINT,
        Signal::Quit => NixSignal::SIGQUIT,
        Signal::Kill => NixSignal::SIGKILL,
        Signal::Usr1 => NixSignal::SIGUSR1,
        Signal::Usr2 => NixSignal::SIGUSR2,
        Signal::Alrm => NixSignal::SIGALRM,
        Signal::Term => NixSignal::SIGTERM,
        Signal::Cont => NixSignal::SIGCONT,
        Signal::Stop => NixSignal::SIGSTOP,
        Signal::Tstp => NixSignal::SIGTSTP,
        Signal::Winch => NixSignal::SIGWINCH,
    }
}

/// Starts the requested command; queues `Started` or an error.
fn start(conn: &mut Conn, req: &Request, cfg: &AgentConfig) -> Option<Tracked> {
    let name = req.command_name();
    let mut exec_cfg = std::borrow::Cow::Borrowed(&cfg.exec);
    let session_user = (cfg.session == SessionMode::Systemd)
        .then(|| req.user.clone().or_else(|| cfg.exec.default_user.clone()))
        .flatten();
    if let Some(user) = &session_user {
        match session::manager_environment(user) {
            Ok(env) => {
                let mut c = cfg.exec.clone();
                for (k, v) in env {
                    match c.base_env.iter_mut().find(|(bk, _)| *bk == k) {
                        Some(slot) => slot.1 = v,
                        None => c.base_env.push((k, v)),
                    }
                }
                exec_cfg = std::borrow::Cow::Owned(c);
            }
            Err(e) => log(&format!("{e}; using the agent's environment")),
        }
    }
    let mut prepared = match exec::prepare(req, &exec_cfg) {
        Ok(p) => p,
        Err(err) => {
            log(&format!(
                "refused to run {name}: {}",
                strip_prefix(&err.message)
            ));
            return conn.refuse(err);
        }
    };
    if let Some(w) = &cfg.waypipe {
        // The wrapper runs as the command's user, with its stdio, and exits with its status.
        prepared.argv = crate::waypipe::wrapper_argv(
            &w.agent_exe,
            w.port,
            &prepared.program,
            &prepared.argv[1..],
        );
        prepared.program = w.agent_exe.clone();
    }
    if req.mode == Mode::Detached
        && let Some(user) = &session_user
    {
        let additions: Vec<_> = req
            .env
            .iter()
            .map(|(k, v)| {
                use std::os::unix::ffi::OsStrExt;
                (
                    std::ffi::OsStr::from_bytes(k).to_owned(),
                    std::ffi::OsStr::from_bytes(v).to_owned(),
                )
            })
            .collect();
        return match session::start_detached(&prepared, user, &additions) {
            Ok(started) => {
                log(&format!(
                    "started {name} in {} (pid {})",
                    started.unit.as_deref().unwrap_or("?"),
                    started.pid
                ));
                conn.queue(&Message::Started(started));
                conn.close()
            }
            Err(err) => conn.refuse(err),
        };
    }
    let Spawned {
        child,
        pidfd,
        stdin,
        stdout,
        stderr,
        pty,
    } = match exec::spawn(&prepared) {
        Ok(s) => s,
        Err(err) => {
            log(&format!(
                "failed to start {name}: {}",
                strip_prefix(&err.message)
            ));
            return conn.refuse(err);
        }
    };
    let pid = child.id();
    conn.queue(&Message::Started(Started { pid, unit: None }));
    let tracked = Tracked {
        child,
        pidfd,
        name,
        reaped: false,
    };
    match req.mode {
        Mode::Detached => {
            log(&format!("started {} (pid {pid}, detached)", tracked.name));
            conn.close();
            Some(tracked)
        }
        Mode::Attached => {
            conn.state = State::Running(Box::new(Running {
                tracked,
                stdin,
                stdin_buf: Vec::new(),
                stdin_eof: false,
                outputs: [stdout, stderr],
                pty,
                exit: None,
            }));
            None
        }
    }
}
