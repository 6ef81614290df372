//! Component tests of the command path without a VM: the real `vmsilo command-service`,
//! started by the real `systemd-socket-activate` on the command socket, and the real `vm-run`,
//! with the guest agent behind a hybrid-vsock Unix socket (`<run>/t-vsock.socket`, speaking
//! `CONNECT 5000` / `OK 5000` as vhost-device-vsock does). The agent is either the real one
//! (the `vmsilo-guest` library's event loop, in a thread of this test, running commands on this
//! machine) or a scripted one that misbehaves on purpose. systemd is replaced by a scripted
//! `systemctl` (`VMSILO_SYSTEMCTL`, `VMSILO_SYSTEMD_DIR`) where its path is tested; without
//! it the service runs the real `vmsilo vm-service` itself.
//!
//! - warm path: exit status, stdin, separate stderr, 127 with the agent's message, `-e`/`-C`,
//!   detached commands (`-v` prints the pid), SIGTERM forwarded to the command, a tty;
//!   SIGTERM stops the service; the terminal's size, and a resize forwarded on SIGWINCH;
//! - malformed and oversized frames from the agent (to vm-run, through the service) and from a
//!   client (to the service and on to the agent) are rejected without a panic, and the service
//!   keeps serving;
//! - malformed status frames from a fake command service are rejected by vm-run;
//! - systemd path: a cold start issues `systemctl start --no-block`, shows the progress line on
//!   a terminal and then runs the command; a unit that fails is reported with where to look;
//!   an agent that never answers times out with `--agent-timeout`;
//! - no systemd: a VM that cannot start is reported with vm-service's status and last lines;
//! - a VM that is not configured, a missing command socket, a service started without a
//!   socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use common::{Guard, Scratch, Term, multi_call};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmsilo::vm_run::wire::{FrameReader, ServiceFrame};
use vmsilo_guest::exec::ExecConfig;
use vmsilo_guest::transport::{Listener, Transport};
use vmsilo_guest::{Agent, AgentConfig};
use vmsilo_proto::client::MessageReader;
use vmsilo_proto::{ErrorCode, Message, PROTOCOL_VERSION, Started};

const LIMIT: Duration = Duration::from_secs(60);

/// A configuration with one QEMU VM `t` and the directories under a scratch directory.
struct Setup {
    dir: Scratch,
    cfg: PathBuf,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = Scratch::new(label);
        let d = dir.str().to_owned();
        for f in ["vmlinuz", "initrd", "root.img"] {
            std::fs::write(format!("{d}/{f}"), "x").expect("file");
        }
        std::fs::create_dir_all(format!("{d}/run")).expect("run");
        let p = |f: &str| dir.path().join(f);
        let cfg = common::qemu_vm_config(
            dir.path(),
            "t",
            &p("vmlinuz"),
            &p("initrd"),
            &p("root.img"),
            "",
        );
        Setup { dir, cfg }
    }

    fn run_dir(&self) -> String {
        format!("{}/run", self.dir.str())
    }

    fn vsock(&self) -> PathBuf {
        PathBuf::from(format!("{}/t-vsock.socket", self.run_dir()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// `systemd-socket-activate` on `<run>/<vm>-command.socket`, running the command service
    /// with `env` (the activator passes only the variables it is told to).
    fn service(&self, vm: &str, extra: &[&str], env: &[(&str, &str)]) -> Guard {
        let d = self.dir.str();
        let socket = format!("{}/{vm}-command.socket", self.run_dir());
        let mut cmd = common::command(Path::new("systemd-socket-activate"));
        cmd.arg(format!("--listen={socket}"));
        let mut vars = vec![("VMSILO_SYSTEMD_DIR", format!("{d}/no-systemd"))];
        vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        for (k, v) in vars {
            cmd.arg(format!("--setenv={k}={v}"));
        }
        cmd.arg(common::vmsilo_bin())
            .args([
                "--config",
                self.cfg.to_str().expect("utf-8"),
                "command-service",
                vm,
            ])
            .args(["--run-dir", &self.run_dir()])
            .args(["--vm-switch-dir", &format!("{d}/vs")])
            .args(["--state-dir", &format!("{d}/state")])
            .args(["--uid", "0", "--gid", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("service.log")).expect("log"));
        let guard = Guard(Some(cmd.spawn().expect("systemd-socket-activate")));
        common::wait_path(Path::new(&socket), Duration::from_secs(10));
        guard
    }

    /// `vm-run --config <cfg> --run-dir <run> ARGS`.
    fn vm_run(&self, args: &[&str]) -> Command {
        let mut c = common::command(&multi_call(self.dir.path(), "vm-run"));
        c.args(["--config", self.cfg.to_str().expect("utf-8")])
            .args(["--run-dir", &self.run_dir()])
            .args(args);
        c
    }

    /// Runs vm-run to the end (at most [`LIMIT`]) with `stdin`.
    fn output(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut c = self.vm_run(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = c.spawn().expect("vm-run");
        finish(child, stdin, &self.log())
    }
}

/// Feeds `stdin`, collects the output, and fails the test if it takes longer than [`LIMIT`].
fn finish(mut child: Child, stdin: &[u8], log: &str) -> Output {
    let mut input = child.stdin.take();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        if let Some(i) = input.as_mut() {
            let _ = i.write_all(&data);
        }
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vm-run did not finish within {LIMIT:?}; service log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: o.join().expect("stdout"),
        stderr: e.join().expect("stderr"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// vhost-device-vsock's side of hybrid vsock: reads `CONNECT <port>\n`, answers `OK <port>\n`
/// for port 5000, closes otherwise.
fn handshake(s: &mut UnixStream) -> bool {
    read_connect(s) && s.write_all(b"OK 5000\n").is_ok()
}

/// Reads the client's `CONNECT <port>\n` (waiting at most 10 s); true for port 5000. Leaves
/// the stream without a read timeout.
fn read_connect(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            _ => return false,
        }
    }
    s.set_read_timeout(None).expect("timeout");
    line == b"CONNECT 5000"
}

/// The real agent's listener, behind the hybrid-vsock handshake.
struct HybridFront(UnixListener);

impl std::os::fd::AsFd for HybridFront {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Listener for HybridFront {
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>> {
        let mut s = match self.0.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        s.set_nonblocking(false)?;
        Ok(handshake(&mut s).then(|| Box::new(s) as Box<dyn Transport>))
    }

    fn describe(&self) -> String {
        "hybrid vsock (test)".into()
    }
}

/// Starts the real agent (in a thread of this process) behind `vsock`.
fn real_agent(vsock: &Path) {
    let l = UnixListener::bind(vsock).expect("bind vsock socket");
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut exec = ExecConfig::from_process(None);
        exec.etc_dir = PathBuf::from("/nonexistent-etc");
        let mut agent = Agent::new(AgentConfig::new(exec));
        agent.set_listener(Box::new(HybridFront(l)));
        let _ = agent.run();
    });
}

/// A scripted agent behind `vsock`: connection `i` (from 0) gets `script(i, stream)` once the
/// client's `Hello` and `Request` have arrived.
fn scripted_agent(vsock: &Path, script: fn(usize, UnixStream)) {
    let l = UnixListener::bind(vsock).expect("bind vsock socket");
    std::thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            if handshake(&mut s) {
                let mut r = MessageReader::new(s.try_clone().expect("clone"));
                while let Ok(Some(m)) = r.read_message() {
                    if matches!(m, Message::Request(_)) {
                        break;
                    }
                }
                script(i, s);
            }
        }
    });
}

/// vhost-device-vsock 0.3 in front of the real agent, for a guest that takes [`SLOW_GUEST`] to
/// accept a connection (a loaded host, a TCG guest). Like the real one, it is wedged for good
/// once a client closes a connection whose `CONNECT` it has not answered yet: there the guest's
/// late acceptance makes the `OK` write fail with EPIPE, the device's worker thread panics, and
/// every later `CONNECT` is accepted by the kernel and never answered.
struct SlowFront {
    listener: UnixListener,
    wedged: Arc<AtomicBool>,
    held: Vec<UnixStream>,
}

/// How long [`SlowFront`]'s guest takes to accept: longer than the 2 s the command service
/// used to wait for an answer before it closed the attempt and tried again.
const SLOW_GUEST: Duration = Duration::from_secs(3);

impl std::os::fd::AsFd for SlowFront {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Listener for SlowFront {
    fn accept(&mut self) -> std::io::Result<Option<Box<dyn Transport>>> {
        let mut s = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        s.set_nonblocking(false)?;
        if self.wedged.load(AtomicOrdering::SeqCst) {
            // Accepted by the kernel, never answered.
            self.held.push(s);
            return Ok(None);
        }
        if !read_connect(&mut s) {
            return Ok(None);
        }
        let mut b = [0u8; 1];
        // The guest thinks it over; a client that hangs up meanwhile wedges the device.
        s.set_read_timeout(Some(SLOW_GUEST))?;
        match s.read(&mut b) {
            Ok(0) => {
                self.wedged.store(true, AtomicOrdering::SeqCst);
                Ok(None)
            }
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                s.set_read_timeout(None)?;
                s.write_all(b"OK 5000\n")?;
                Ok(Some(Box::new(s)))
            }
            Err(_) => Ok(None),
        }
    }

    fn describe(&self) -> String {
        "slow hybrid vsock (test)".into()
    }
}

#[test]
fn test_hybrid_connect_answered_late_is_awaited_not_abandoned() {
    let s = Setup::new("slowconnect");
    let env = fake_systemctl(&s);
    set_unit_state(&s.dir.path().join("unit-state"), "active");
    let l = UnixListener::bind(s.vsock()).expect("bind vsock socket");
    l.set_nonblocking(true).expect("nonblocking");
    let wedged = Arc::new(AtomicBool::new(false));
    let front = SlowFront {
        listener: l,
        wedged: Arc::clone(&wedged),
        held: Vec::new(),
    };
    std::thread::spawn(move || {
        let mut exec = ExecConfig::from_process(None);
        exec.etc_dir = PathBuf::from("/nonexistent-etc");
        let mut agent = Agent::new(AgentConfig::new(exec));
        agent.set_listener(Box::new(front));
        let _ = agent.run();
    });
    let _svc = s.service("t", &["--agent-timeout", "30s"], &env_refs(&env));
    for word in ["first", "second"] {
        let o = s.output(&["-w", "t", "echo", word], b"");
        assert!(
            !wedged.load(AtomicOrdering::SeqCst),
            "the command service closed a connection whose CONNECT was not answered yet; \
             vhost-device-vsock would now be wedged: {o:?}\n{}",
            s.log()
        );
        assert_eq!(
            (o.status.code(), text(&o.stdout)),
            (Some(0), format!("{word}\n")),
            "{o:?}\n{}",
            s.log()
        );
    }
}

fn frame(m: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    m.encode(&mut v).expect("encode");
    v
}

fn assert_no_panic(out: &Output, log: &str) {
    let all = format!("{}{}{log}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn test_warm_commands_statuses_stdio_signals_and_tty() {
    let s = Setup::new("warm");
    real_agent(&s.vsock());
    let mut svc = s.service("t", &[], &[]);

    let o = s.output(
        &["-w", "t", "sh", "-c", "echo out; echo err >&2; exit 3"],
        b"",
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}\n{}", s.log());
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");

    let o = s.output(&["-w", "t", "cat"], b"hi\n");
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), "hi\n".into()));

    let o = s.output(&["-w", "t", "vmsilo-no-such-command"], b"");
    assert_eq!(o.status.code(), Some(127), "{o:?}");
    assert_eq!(
        text(&o.stderr),
        "vmsilo-guest: vmsilo-no-such-command: command not found\n"
    );

    let o = s.output(
        &[
            "-w",
            "-e",
            "GREETING=a b",
            "-C",
            "/tmp",
            "t",
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd",
        ],
        b"",
    );
    assert_eq!(text(&o.stdout), "a b\n/tmp\n", "{o:?}");

    // Detached: returns once started; -v prints the pid.
    let marker = s.dir.path().join("detached");
    let o = s.output(
        &[
            "-v",
            "t",
            "sh",
            "-c",
            &format!("sleep 0.2; echo done > {}", marker.display()),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let pid: u32 = text(&o.stdout).trim().parse().expect("a pid");
    assert!(pid > 1);
    common::wait_path(&marker, Duration::from_secs(10));

    // SIGTERM to vm-run reaches the command, whose status vm-run exits with.
    let mut c = s.vm_run(&[
        "-w",
        "t",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-run");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut b = [0u8; 64];
    while !text(&seen).contains("ready") {
        let n = stdout.read(&mut b).expect("read");
        assert!(n > 0, "vm-run ended early: {}", text(&seen));
        seen.extend_from_slice(&b[..n]);
    }
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("kill");
    child.stdout = Some(stdout);
    let o = finish(child, b"", &s.log());
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert!(text(&o.stdout).contains("got TERM"), "{o:?}");

    // A terminal on both ends: the command gets a pseudo-terminal in the guest.
    let term = Term::new();
    let mut c = s.vm_run(&["-w", "t", "sh", "-c", "test -t 0 && test -t 1 && echo tty"]);
    let child = c
        .stdin(term.stdio())
        .stdout(term.stdio())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-run");
    let mut g = Guard(Some(child));
    assert_eq!(g.wait_timeout(LIMIT).code(), Some(0));
    let mut term = term;
    term.wait_for(0, "tty", Duration::from_secs(5));

    // Stopping the service (systemd sends SIGTERM through the activator).
    let pid = Pid::from_raw(i32::try_from(svc.child().id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    assert!(
        svc.wait_timeout(Duration::from_secs(20)).success(),
        "{}",
        s.log()
    );
    let log = s.log();
    assert!(log.contains("command service stopping"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn test_tty_mode_passes_the_terminal_size_and_forwards_resizes() {
    let s = Setup::new("tty");
    real_agent(&s.vsock());
    let _svc = s.service("t", &[], &[]);
    let mut term = Term::new();
    let slave = term.slave.try_clone().expect("slave");
    let size = |rows: &str, cols: &str| {
        let st = Command::new("stty")
            .args(["rows", rows, "cols", cols])
            .stdin(slave.try_clone().expect("slave"))
            .status()
            .expect("stty");
        assert!(st.success());
    };
    size("30", "100");
    let child = s
        .vm_run(&[
            "-w",
            "t",
            "sh",
            "-c",
            // The trap is set before the size is printed: the test resizes as soon as it
            // sees the size, and a SIGWINCH before the trap would be ignored (a hang).
            "trap 'echo \"resized $(stty size)\"; exit 4' WINCH; echo \"size $(stty size)\"; \
             while :; do sleep 0.05; done",
        ])
        .stdin(term.stdio())
        .stdout(term.stdio())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-run");
    let mut g = Guard(Some(child));
    let at = term.wait_for(0, "size 30 100", LIMIT);
    // The terminal changes size; the kernel would send SIGWINCH to its foreground process
    // group, which vm-run is not part of here, so the test sends it.
    size("40", "120");
    let pid = Pid::from_raw(i32::try_from(g.child().id()).expect("pid"));
    kill(pid, Signal::SIGWINCH).expect("SIGWINCH");
    term.wait_for(at, "resized 40 120", LIMIT);
    assert_eq!(g.wait_timeout(LIMIT).code(), Some(4), "{}", term.tail());
}

#[test]
fn test_malformed_agent_frames_are_rejected_and_the_service_keeps_serving() {
    let s = Setup::new("badagent");
    scripted_agent(&s.vsock(), |i, mut st| {
        let reply: Vec<u8> = match i {
            // A frame of an unknown type with garbage.
            0 => vec![5, 0, 0, 0, 0x99, 1, 2, 3, 4],
            // An oversized length prefix.
            1 => vec![0xff, 0xff, 0xff, 0x7f, 0x21],
            // Another protocol version.
            2 => [
                frame(&Message::HelloReply { version: 99 }),
                frame(&Message::Error(vmsilo_proto::ErrorFrame::new(
                    ErrorCode::VersionMismatch,
                    "vmsilo-guest: protocol version mismatch",
                ))),
            ]
            .concat(),
            // Random bytes.
            3 => (0..4096u32)
                .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            // Closes at once.
            4 => Vec::new(),
            // Finally a well-behaved detached start.
            _ => [
                frame(&Message::HelloReply {
                    version: PROTOCOL_VERSION,
                }),
                frame(&Message::Started(Started {
                    pid: 42,
                    unit: None,
                })),
            ]
            .concat(),
        };
        let _ = st.write_all(&reply);
    });
    let _svc = s.service("t", &[], &[]);
    let expect = [
        "the guest agent sent a malformed frame",
        "exceeds the limit",
        "agent version mismatch: host speaks 1, guest agent speaks 99; rebuild the guest image",
        "the guest agent",
        "the guest agent closed the connection",
    ];
    for e in expect {
        let o = s.output(&["-w", "t", "true"], b"");
        assert_eq!(o.status.code(), Some(1), "{e}: {o:?}");
        assert!(text(&o.stderr).contains(e), "{e:?} not in {o:?}");
        assert!(text(&o.stderr).starts_with("vmsilo: VM \"t\": "), "{o:?}");
        assert_no_panic(&o, &s.log());
    }
    let o = s.output(&["-v", "t", "true"], b"");
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "42\n".into()),
        "{o:?}"
    );
}

/// Connects to the command socket and reads the service's frames up to `Ready`.
fn raw_client(s: &Setup) -> UnixStream {
    let c = UnixStream::connect(format!("{}/t-command.socket", s.run_dir())).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut r = FrameReader::new();
    loop {
        match r.poll(&mut &c).expect("service frames") {
            Some(ServiceFrame::Ready { .. }) => return c,
            Some(ServiceFrame::Failed { message, .. }) => panic!("{message}"),
            _ => {}
        }
    }
}

#[test]
fn test_malformed_client_frames_reach_the_agent_which_refuses_them() {
    let s = Setup::new("badclient");
    real_agent(&s.vsock());
    let _svc = s.service("t", &[], &[]);
    // An oversized length prefix: the agent answers Malformed and closes.
    let mut c = raw_client(&s);
    c.write_all(&[0xff, 0xff, 0xff, 0x7f, 0x01]).expect("write");
    let mut r = MessageReader::new(c);
    match r.read_message() {
        Ok(Some(Message::Error(e))) => assert_eq!(e.code, ErrorCode::Malformed, "{e:?}"),
        other => panic!("{other:?}"),
    }
    // A frame of an unknown type, then garbage.
    let mut c = raw_client(&s);
    c.write_all(&[3, 0, 0, 0, 0x7e, 0, 0]).expect("write");
    let _ = c.write_all(&[0x5a; 100_000]);
    let mut r = MessageReader::new(c);
    let reply = r.read_message();
    assert!(
        matches!(
            &reply,
            Ok(Some(Message::Error(_) | Message::HelloReply { .. })) | Err(_)
        ),
        "{reply:?}"
    );
    // A client that leaves at once, and one that half-closes after its Hello.
    drop(raw_client(&s));
    let c = raw_client(&s);
    (&c).write_all(&frame(&Message::Hello {
        version: PROTOCOL_VERSION,
    }))
    .expect("hello");
    c.shutdown(std::net::Shutdown::Write).expect("half-close");
    drop(c);
    // The service still serves.
    let o = s.output(&["-w", "t", "echo", "still here"], b"");
    assert_eq!(text(&o.stdout), "still here\n", "{o:?}\n{}", s.log());
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn test_malformed_status_frames_are_rejected_by_vm_run() {
    let s = Setup::new("badsvc");
    let l = UnixListener::bind(format!("{}/t-command.socket", s.run_dir())).expect("bind");
    std::thread::spawn(move || {
        let replies: [&[u8]; 3] = [
            &[1, 0, 0, 0, 0x02],
            &[0xff, 0xff, 0, 0, 0x30],
            &[2, 0, 0, 0, 0x31, 1],
        ];
        for (c, reply) in l.incoming().zip(replies) {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(reply);
        }
    });
    for e in [
        "unknown kind 0x02",
        "a frame of 65535 bytes",
        "malformed Ready frame",
    ] {
        let o = s.output(&["-w", "t", "true"], b"");
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        assert!(text(&o.stderr).contains(e), "{e:?} not in {o:?}");
        assert_no_panic(&o, "");
    }
}

/// A scripted `systemctl`: `is-active` prints `<dir>/unit-state` (default inactive),
/// `start` writes `<dir>/start-outcome` (default activating) there and touches `<dir>/started`;
/// every call is logged to `<dir>/systemctl.log`.
fn fake_systemctl(s: &Setup) -> Vec<(String, String)> {
    let d = s.dir.str();
    std::fs::create_dir_all(format!("{d}/systemd")).expect("mkdir");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> {d}/systemctl.log\ncase \"$1\" in\n\
         is-active) st=$(cat {d}/unit-state 2>/dev/null || echo inactive); echo \"$st\"; \
         [ \"$st\" = active ] ;;\n\
         start) {{ cat {d}/start-outcome 2>/dev/null || echo activating; }} > {d}/unit-state.new; \
         mv {d}/unit-state.new {d}/unit-state; touch {d}/started ;;\n\
         esac\n"
    );
    let path = s.dir.path().join("systemctl");
    std::fs::write(&path, script).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    vec![
        ("VMSILO_SYSTEMCTL".into(), path.display().to_string()),
        ("VMSILO_SYSTEMD_DIR".into(), format!("{d}/systemd")),
    ]
}

/// Sets what the scripted `systemctl is-active` prints, atomically (a new file renamed over the
/// old): a torn read (an empty file) after "activating" would look like a VM that went down.
fn set_unit_state(path: &Path, state: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, format!("{state}\n")).expect("unit state");
    std::fs::rename(&new, path).expect("unit state");
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn test_systemd_cold_start_shows_progress_then_runs_the_command() {
    let s = Setup::new("cold");
    let env = fake_systemctl(&s);
    let _svc = s.service("t", &[], &env_refs(&env));
    // "The VM": once started, the guest agent comes up a second later.
    let started = s.dir.path().join("started");
    let state = s.dir.path().join("unit-state");
    let vsock = s.vsock();
    let vm = std::thread::spawn(move || {
        common::wait_path(&started, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(1200));
        set_unit_state(&state, "active");
        real_agent(&vsock);
    });
    let mut term = Term::new();
    let mut c = s.vm_run(&["-w", "t", "echo", "hello"]);
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(term.stdio())
        .spawn()
        .expect("vm-run");
    let mut g = Guard(Some(child));
    let status = g.wait_timeout(LIMIT);
    let mut out = String::new();
    g.child()
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    vm.join().expect("vm thread");
    assert_eq!(
        (status.code(), out.as_str()),
        (Some(0), "hello\n"),
        "{}",
        s.log()
    );
    term.pump(Duration::from_millis(200));
    assert!(
        term.seen.contains("vmsilo: starting VM t\u{2026}"),
        "{:?}",
        term.seen
    );
    assert!(
        term.seen.ends_with("\r\x1b[K"),
        "cleared at the end: {:?}",
        term.seen
    );
    let calls = std::fs::read_to_string(s.dir.path().join("systemctl.log")).expect("log");
    assert!(
        calls.contains("start --no-block vmsilo-t-vm.service"),
        "{calls}"
    );
    // Warm now: no more systemctl calls.
    let before = calls.lines().count();
    let o = s.output(&["-w", "t", "true"], b"");
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let calls = std::fs::read_to_string(s.dir.path().join("systemctl.log")).expect("log");
    assert_eq!(calls.lines().count(), before, "{calls}");
}

#[test]
fn test_systemd_unit_that_fails_is_reported_with_where_to_look() {
    let s = Setup::new("unitfail");
    let env = fake_systemctl(&s);
    std::fs::write(s.dir.path().join("start-outcome"), "failed\n").expect("outcome");
    let _svc = s.service("t", &[], &env_refs(&env));
    let o = s.output(&["-w", "t", "true"], b"");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.contains("vmsilo: VM \"t\" failed to start: vmsilo-t-vm.service is failed"),
        "{err}"
    );
    assert!(err.contains("journalctl -u vmsilo-t-vm.service"), "{err}");
}

#[test]
fn test_agent_that_never_answers_times_out() {
    let s = Setup::new("timeout");
    let env = fake_systemctl(&s);
    set_unit_state(&s.dir.path().join("unit-state"), "active");
    // The VM runs, but nothing listens on port 5000: each CONNECT is closed.
    let l = UnixListener::bind(s.vsock()).expect("bind");
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut line = [0u8; 13];
            let _ = c.read_exact(&mut line);
        }
    });
    let _svc = s.service("t", &["--agent-timeout", "1s"], &env_refs(&env));
    let o = s.output(&["-w", "t", "true"], b"");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = text(&o.stderr);
    assert!(
        err.contains("timed out after 1s waiting for the guest agent"),
        "{err}"
    );
    assert!(err.contains("vm-shell t"), "{err}");
}

#[test]
fn test_without_systemd_a_vm_that_cannot_start_is_explained() {
    let s = Setup::new("nokernel");
    std::fs::remove_file(s.dir.path().join("vmlinuz")).expect("rm kernel");
    let _svc = s.service("t", &[], &[]);
    for _ in 0..2 {
        // Each attempt starts vm-service again.
        let o = s.output(&["-w", "t", "true"], b"");
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with("vmsilo: VM \"t\" failed to start: vm-service (pid "),
            "{err}"
        );
        assert!(err.contains("exited with status 1"), "{err}");
        assert!(err.contains("vmlinuz cannot be used"), "{err}");
    }
    assert_eq!(
        s.log().matches("starting the VM: vm-service pid").count(),
        2
    );
}

#[test]
fn test_unknown_vm_missing_socket_and_missing_listen_fds() {
    let s = Setup::new("unknown");
    // A service for a VM the configuration does not have tells every client.
    let _svc = s.service("nope", &[], &[]);
    let o = s.output(&["-w", "nope", "true"], b"");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o.stderr).contains("no VM called \"nope\""), "{o:?}");
    // No socket: an unknown VM is a usage error with a suggestion, a known one is explained.
    let o = s.output(&["-w", "x", "true"], b"");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o.stderr).contains("no VM called \"x\""), "{o:?}");
    let o = s.output(&["-w", "t", "true"], b"");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        text(&o.stderr).contains("its command socket")
            && text(&o.stderr).contains("vmsilo-t.socket"),
        "{o:?}"
    );
    // The service without socket activation.
    let o = common::vmsilo()
        .args([
            "--config",
            s.cfg.to_str().expect("utf-8"),
            "command-service",
            "t",
        ])
        .output()
        .expect("command-service");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        text(&o.stderr).contains("systemd-socket-activate --listen="),
        "{o:?}"
    );
}

/// Terminal sequences a hostile guest puts in its messages: a clipboard write (OSC 52), a
/// window title (OSC 0), a screen clear, a bidi override.
const HOSTILE: &str = "vmsilo-guest: x\x1b]52;c;aGVsbG8=\x07\x1b]0;owned\x07\x1b[2J\u{202e}";

/// What vm-run must print instead.
const HOSTILE_ESCAPED: &str =
    "vmsilo-guest: x\\x1b]52;c;aGVsbG8=\\x07\\x1b]0;owned\\x07\\x1b[2J\\u{202e}";

fn assert_no_terminal_controls(o: &Output) {
    let err = text(&o.stderr);
    assert!(
        !err.contains('\x1b') && !err.contains('\x07') && !err.contains('\u{202e}'),
        "raw control characters reached vm-run's stderr: {err:?}"
    );
}

#[test]
fn test_vm_run_escapes_terminal_controls_in_the_agents_error() {
    let s = Setup::new("escape");
    scripted_agent(&s.vsock(), |_, mut st| {
        let reply = [
            frame(&Message::HelloReply {
                version: PROTOCOL_VERSION,
            }),
            frame(&Message::Error(vmsilo_proto::ErrorFrame::new(
                ErrorCode::CommandNotFound,
                HOSTILE,
            ))),
        ]
        .concat();
        let _ = st.write_all(&reply);
    });
    let _svc = s.service("t", &[], &[]);
    // Detached (the finding) and attached print the agent's message the same way.
    for args in [&["t", "x"][..], &["-w", "t", "x"][..]] {
        let o = s.output(args, b"");
        assert_eq!(o.status.code(), Some(127), "{args:?}: {o:?}");
        assert_no_terminal_controls(&o);
        assert_eq!(text(&o.stderr), format!("{HOSTILE_ESCAPED}\n"), "{args:?}");
    }
}

#[test]
fn test_vm_run_escapes_terminal_controls_in_the_services_failure() {
    // A command service whose Failed message quotes guest-influenced output (vm-service's
    // last lines, which relay the VMM's and virtiofsd's).
    let s = Setup::new("escsvc");
    let l = UnixListener::bind(format!("{}/t-command.socket", s.run_dir())).expect("bind");
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(
                &ServiceFrame::Failed {
                    code: vmsilo::vm_run::wire::FailCode::StartFailed,
                    message: format!("VM \"t\" failed to start:\n  {HOSTILE}"),
                }
                .encode(),
            );
        }
    });
    let o = s.output(&["t", "x"], b"");
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_no_terminal_controls(&o);
    assert_eq!(
        text(&o.stderr),
        format!("vmsilo: VM \"t\" failed to start:\n  {HOSTILE_ESCAPED}\n")
    );
}

#[test]
fn test_vm_run_gives_up_on_an_agent_that_is_silent_after_ready() {
    let s = Setup::new("silent");
    // The agent takes Hello and the request, then says nothing and keeps the connection.
    scripted_agent(&s.vsock(), |_, st| {
        std::thread::spawn(move || {
            std::thread::sleep(LIMIT * 2);
            drop(st);
        });
    });
    let _svc = s.service("t", &[], &[]);
    for args in [
        &["--answer-timeout", "1s", "t", "x"][..],
        &["--answer-timeout", "1s", "-w", "t", "x"][..],
    ] {
        // finish() fails the test if vm-run takes longer than LIMIT (60 s).
        let o = s.output(args, b"");
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with(
                "vmsilo: VM \"t\": the guest agent accepted the connection but did not answer \
                 Hello within 1s"
            ),
            "{err}"
        );
        assert!(
            err.contains("--answer-timeout (VMSILO_ANSWER_TIMEOUT)"),
            "{err}"
        );
    }
}
