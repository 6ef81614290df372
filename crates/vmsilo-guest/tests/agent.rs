//! Component tests: the real agent event loop serving the real `vmsilo-proto` client over Unix
//! socket pairs, running real processes. No timing assertions: only "it happened" and "it
//! had not happened yet while a command was still running".

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use vmsilo_guest::exec::ExecConfig;
use vmsilo_guest::transport::UnixSocketListener;
use vmsilo_guest::{Agent, AgentConfig, Outcome};
use vmsilo_proto::client::{
    AttachedIo, ClientError, Control, MessageReader, run_attached, run_detached,
};
use vmsilo_proto::frame::encode_frame;
use vmsilo_proto::message::kind;
use vmsilo_proto::{ErrorCode, ExitStatus, Message, PROTOCOL_VERSION, Request, Signal, WindowSize};

mod common;
use common::{Buf, captured};

fn config() -> AgentConfig {
    let mut exec = ExecConfig::from_process(None);
    exec.etc_dir = PathBuf::from("/nonexistent-etc");
    AgentConfig::new(exec)
}

/// An agent serving one connection in a thread; returns the host end.
fn one_shot(cfg: AgentConfig) -> (UnixStream, thread::JoinHandle<Outcome>) {
    let (host, guest) = UnixStream::pair().unwrap();
    let handle = thread::spawn(move || {
        let mut agent = Agent::new(cfg);
        agent.add_connection(Box::new(guest)).unwrap();
        agent.run().unwrap()
    });
    (host, handle)
}

struct Run {
    result: Result<ExitStatus, ClientError>,
    stdout: Buf,
    stderr: Buf,
    outcome: Outcome,
}

/// Runs one attached request against a fresh agent.
fn attached(
    req: Request,
    stdin: Option<Vec<u8>>,
    controls: Option<mpsc::Receiver<Control>>,
) -> Run {
    let (host, agent) = one_shot(config());
    let (stdout, stderr) = (Buf::default(), Buf::default());
    let io = AttachedIo {
        controls,
        ..captured(stdin, &stdout, &stderr)
    };
    let reader = host.try_clone().unwrap();
    let result = run_attached(reader, host, &req, io).map(|a| a.status);
    let outcome = agent.join().unwrap();
    Run {
        result,
        stdout,
        stderr,
        outcome,
    }
}

#[test]
fn test_exit_status_is_passed_through() {
    let r = attached(Request::attached(["sh", "-c", "exit 3"]), None, None);
    assert_eq!(r.result.unwrap(), ExitStatus::Exited(3));
    assert_eq!(r.outcome, Outcome::Finished);
    let r = attached(Request::attached(["false"]), None, None);
    assert_eq!(r.result.unwrap().code(), 1);
}

#[test]
fn test_stdin_is_piped_to_the_command() {
    let r = attached(Request::attached(["cat"]), Some(b"hi\n".to_vec()), None);
    assert_eq!(r.result.unwrap(), ExitStatus::Exited(0));
    assert_eq!(r.stdout.text(), "hi\n");
    assert_eq!(r.stderr.text(), "");
}

#[test]
fn test_stderr_is_kept_separate() {
    let r = attached(
        Request::attached(["sh", "-c", "echo out; echo err >&2; echo out2"]),
        None,
        None,
    );
    assert_eq!(r.result.unwrap(), ExitStatus::Exited(0));
    assert_eq!(r.stdout.text(), "out\nout2\n");
    assert_eq!(r.stderr.text(), "err\n");
}

#[test]
fn test_large_streams_arrive_intact_both_ways() {
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = attached(Request::attached(["cat"]), Some(input.clone()), None);
    assert_eq!(r.result.unwrap(), ExitStatus::Exited(0));
    assert!(r.stdout.bytes() == input, "3 MB through cat changed");
}

#[test]
fn test_missing_command_is_127_with_a_clear_message() {
    let r = attached(Request::attached(["no-such-command-vmsilo"]), None, None);
    let e = r.result.unwrap_err();
    assert_eq!(e.exit_code(), 127);
    assert_eq!(
        e.to_string(),
        "vmsilo-guest: no-such-command-vmsilo: command not found"
    );
    assert_eq!(r.outcome, Outcome::Finished);
}

#[test]
fn test_non_executable_file_is_126() {
    let dir = std::env::temp_dir().join(format!("vmsilo-guest-noexec-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let r = attached(Request::attached([script.to_str().unwrap()]), None, None);
    let e = r.result.unwrap_err();
    assert_eq!(e.exit_code(), 126, "{e}");
    assert!(e.to_string().contains("Permission denied"), "{e}");

    // Found but with a missing interpreter: also 126.
    fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let r = attached(Request::attached([script.to_str().unwrap()]), None, None);
    assert_eq!(r.result.unwrap_err().exit_code(), 126);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_environment_and_working_directory_are_applied() {
    let r = attached(
        Request::attached(["sh", "-c", "echo \"$VMSILO_TEST\"; pwd"])
            .env("VMSILO_TEST", "hello")
            .cwd("/tmp"),
        None,
        None,
    );
    assert_eq!(r.result.unwrap(), ExitStatus::Exited(0));
    assert_eq!(r.stdout.text(), "hello\n/tmp\n");
}

#[test]
fn test_signals_are_forwarded_and_reported_as_128_plus_n() {
    let (tx, rx) = mpsc::channel();
    tx.send(Control::Signal(Signal::Term)).unwrap();
    let r = attached(Request::attached(["sleep", "60"]), None, Some(rx));
    let status = r.result.unwrap();
    assert_eq!(
        status,
        ExitStatus::Signaled {
            signal: 15,
            core_dumped: false
        }
    );
    assert_eq!(status.code(), 143);
}

/// A `Write` that reports each chunk on a channel, to react to output while the command runs.
struct Tap(Buf, mpsc::Sender<()>);

impl Write for Tap {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)?;
        let _ = self.1.send(());
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `req` against a fresh agent, sends `control` once the command printed "ready", and
/// returns its status and output.
fn control_when_ready(req: Request, control: Control) -> (ExitStatus, String) {
    let (host, agent) = one_shot(config());
    let out = Buf::default();
    let (seen_tx, seen_rx) = mpsc::channel();
    let (ctl_tx, ctl_rx) = mpsc::channel();
    let io = AttachedIo {
        stdin: None,
        stdout: Box::new(Tap(out.clone(), seen_tx)),
        stderr: Box::new(io::sink()),
        controls: Some(ctl_rx),
    };
    let reader = host.try_clone().unwrap();
    let client = thread::spawn(move || run_attached(reader, host, &req, io));
    while !out.text().contains("ready") {
        seen_rx.recv().unwrap();
    }
    ctl_tx.send(control).unwrap();
    let status = client.join().unwrap().unwrap().status;
    assert_eq!(agent.join().unwrap(), Outcome::Finished);
    (status, out.text())
}

#[test]
fn test_signals_reach_the_whole_process_group() {
    // The outer shell waits for an inner process that announces itself once it runs; SIGINT
    // to the group then ends both, as Ctrl-C in a terminal would. (Signalling before the
    // inner process exists would only test the shell's own deferred-signal handling.)
    let req = Request::attached([
        "sh",
        "-c",
        "sh -c 'echo ready; exec sleep 60'; echo not reached",
    ]);
    let (status, out) = control_when_ready(req, Control::Signal(Signal::Int));
    assert_eq!(status.code(), 130, "{status:?}");
    assert_eq!(out, "ready\n");
}

#[test]
fn test_tty_mode_gives_a_terminal_that_follows_resizes() {
    let script =
        "tty; stty size; trap 'stty size; exit 7' WINCH; echo ready; while :; do sleep 0.05; done";
    let req = Request::attached(["sh", "-c", script]).tty(WindowSize { rows: 24, cols: 80 });
    let resize = Control::Resize(WindowSize {
        rows: 50,
        cols: 132,
    });
    let (status, text) = control_when_ready(req, resize);
    assert_eq!(status, ExitStatus::Exited(7));
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("24 80"), "{text:?}");
    assert!(text.contains("50 132"), "{text:?}");
}

#[test]
fn test_tty_stdin_eof_ends_a_line_reading_command() {
    let r = attached(
        Request::attached(["cat"]).tty(WindowSize { rows: 10, cols: 40 }),
        Some(b"typed\n".to_vec()),
        None,
    );
    assert_eq!(r.result.unwrap(), ExitStatus::Exited(0));
    // The terminal echoes the input and cat prints it again (with CRLF line endings).
    assert_eq!(
        r.stdout.text().matches("typed").count(),
        2,
        "{:?}",
        r.stdout.text()
    );
}

#[test]
fn test_detached_command_runs_after_the_connection_ends_and_is_reaped() {
    let dir = std::env::temp_dir().join(format!("vmsilo-guest-detached-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    let (host, agent) = one_shot(config());
    let script = format!("sleep 0.3; echo $$ > {}", marker.display());
    let started = run_detached(host, &Request::detached(["sh", "-c", &script])).unwrap();
    assert!(started.pid > 0);
    assert_eq!(started.unit, None);
    // With no listener, the agent returns only once its detached child has been reaped.
    assert_eq!(agent.join().unwrap(), Outcome::Finished);
    let written = fs::read_to_string(&marker).unwrap();
    assert_eq!(written.trim(), started.pid.to_string());
    assert!(
        !PathBuf::from(format!("/proc/{}", started.pid)).exists(),
        "not reaped"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn test_lost_host_hangs_up_the_attached_command() {
    let (mut host, agent) = one_shot(config());
    let mut wire = Vec::new();
    Message::Hello {
        version: PROTOCOL_VERSION,
    }
    .encode(&mut wire)
    .unwrap();
    Message::Request(Request::attached(["sleep", "60"]))
        .encode(&mut wire)
        .unwrap();
    host.write_all(&wire).unwrap();
    let mut reader = MessageReader::new(host.try_clone().unwrap());
    assert!(matches!(
        reader.read_message().unwrap(),
        Some(Message::HelloReply { .. })
    ));
    let Some(Message::Started(started)) = reader.read_message().unwrap() else {
        panic!("not started")
    };
    drop(reader);
    drop(host);
    // SIGHUP ends sleep, the agent reaps it and, having nothing left, returns.
    assert_eq!(agent.join().unwrap(), Outcome::Finished);
    assert!(!PathBuf::from(format!("/proc/{}", started.pid)).exists());
}

/// Sends raw bytes as the host and returns every message the agent sent before closing.
fn raw_exchange(bytes: &[u8]) -> Vec<Message> {
    let (mut host, agent) = one_shot(config());
    host.write_all(bytes).unwrap();
    let mut reader = MessageReader::new(host);
    let mut msgs = Vec::new();
    while let Ok(Some(m)) = reader.read_message() {
        msgs.push(m);
    }
    assert_eq!(agent.join().unwrap(), Outcome::Finished);
    msgs
}

fn hello(version: u16) -> Vec<u8> {
    let mut v = Vec::new();
    Message::Hello { version }.encode(&mut v).unwrap();
    v
}

fn error_code(msgs: &[Message]) -> Option<ErrorCode> {
    msgs.iter().find_map(|m| match m {
        Message::Error(e) => Some(e.code),
        _ => None,
    })
}

#[test]
fn test_version_mismatch_gets_the_agent_version_and_an_error() {
    let mut wire = hello(PROTOCOL_VERSION + 1);
    Message::Request(Request::attached(["true"]))
        .encode(&mut wire)
        .unwrap();
    let msgs = raw_exchange(&wire);
    assert_eq!(
        msgs[0],
        Message::HelloReply {
            version: PROTOCOL_VERSION
        }
    );
    let Message::Error(e) = &msgs[1] else {
        panic!("{msgs:?}")
    };
    assert_eq!(e.code, ErrorCode::VersionMismatch);
    assert!(
        e.message.contains(&format!(
            "host speaks {}, guest agent speaks {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        )),
        "{}",
        e.message
    );
    assert_eq!(msgs.len(), 2, "nothing is started after a mismatch");
}

#[test]
fn test_malformed_and_oversized_frames_are_refused_with_an_error_frame() {
    // Garbage instead of Hello.
    let msgs = raw_exchange(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(error_code(&msgs), Some(ErrorCode::Malformed), "{msgs:?}");

    // An oversized length prefix.
    let msgs = raw_exchange(&u32::MAX.to_le_bytes());
    assert_eq!(error_code(&msgs), Some(ErrorCode::Malformed));

    // A Request before Hello.
    let mut wire = Vec::new();
    Message::Request(Request::attached(["true"]))
        .encode(&mut wire)
        .unwrap();
    let msgs = raw_exchange(&wire);
    assert_eq!(error_code(&msgs), Some(ErrorCode::Malformed));

    // A Request whose payload is not postcard.
    let mut wire = hello(PROTOCOL_VERSION);
    encode_frame(kind::REQUEST, &[0xff; 9], &mut wire).unwrap();
    let msgs = raw_exchange(&wire);
    assert_eq!(error_code(&msgs), Some(ErrorCode::Malformed));

    // An oversized stdin chunk while a command runs: refused, and the command is hung up.
    let mut wire = hello(PROTOCOL_VERSION);
    Message::Request(Request::attached(["sleep", "60"]))
        .encode(&mut wire)
        .unwrap();
    encode_frame(kind::STDIN, &vec![b'x'; 64 * 1024 + 1], &mut wire).unwrap();
    let msgs = raw_exchange(&wire);
    assert!(matches!(msgs[1], Message::Started(_)), "{msgs:?}");
    assert_eq!(error_code(&msgs), Some(ErrorCode::Malformed));

    // A request that decodes but is not acceptable.
    let mut wire = hello(PROTOCOL_VERSION);
    Message::Request(Request::detached(["sh"]).tty(WindowSize { rows: 1, cols: 1 }))
        .encode(&mut wire)
        .unwrap();
    let msgs = raw_exchange(&wire);
    assert_eq!(error_code(&msgs), Some(ErrorCode::BadRequest));
}

#[test]
fn test_random_garbage_never_kills_the_agent() {
    // xorshift, fixed seed.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50 {
        let mut bytes = hello(PROTOCOL_VERSION);
        let n = (x % 300) as usize;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push(x as u8);
        }
        // Whatever comes back, the agent thread must end normally (no panic). The host then
        // closes, so an incomplete frame does not wait for the handshake timeout.
        let (mut host, agent) = one_shot(config());
        host.write_all(&bytes).unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        let _ = host.read_to_end(&mut sink);
        assert_eq!(agent.join().unwrap(), Outcome::Finished);
    }
}

#[test]
fn test_silent_connections_are_dropped_after_the_handshake_timeout() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(200);
    let (mut host, agent) = one_shot(cfg);
    // Half a Hello, then nothing.
    host.write_all(&hello(PROTOCOL_VERSION)[..3]).unwrap();
    assert_eq!(agent.join().unwrap(), Outcome::Finished);
    let mut rest = Vec::new();
    assert_eq!(
        host.read_to_end(&mut rest).unwrap(),
        0,
        "closed without a reply"
    );
}

#[test]
fn test_unknown_user_is_refused_and_known_user_is_switched_to() {
    let r = attached(
        Request::attached(["id", "-u"]).user("nobody-here"),
        None,
        None,
    );
    let e = r.result.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert_eq!(
        e.to_string(),
        "vmsilo-guest: user \"nobody-here\" does not exist in the guest"
    );

    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: skipping the identity switch half of this test");
        return;
    }
    let etc = std::env::temp_dir().join(format!("vmsilo-guest-etc-{}", std::process::id()));
    fs::create_dir_all(&etc).unwrap();
    fs::write(
        etc.join("passwd"),
        "root:x:0:0::/root:/bin/sh\nguest:x:65534:65534::/nonexistent:/bin/sh\n",
    )
    .unwrap();
    fs::write(etc.join("group"), "nogroup:x:65534:\naudio:x:29:guest\n").unwrap();
    let mut cfg = config();
    cfg.exec.etc_dir = etc.clone();
    let (host, agent) = one_shot(cfg);
    let out = Buf::default();
    let io = AttachedIo {
        stdin: None,
        stdout: Box::new(out.clone()),
        stderr: Box::new(io::sink()),
        controls: None,
    };
    let req =
        Request::attached(["sh", "-c", "id -u; id -g; id -G; echo $USER $HOME"]).user("guest");
    let reader = host.try_clone().unwrap();
    let status = run_attached(reader, host, &req, io).unwrap().status;
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(out.text(), "65534\n65534\n65534 29\nguest /nonexistent\n");
    agent.join().unwrap();
    let _ = fs::remove_dir_all(&etc);
}

#[test]
fn test_several_connections_are_served_at_once() {
    let path = std::env::temp_dir().join(format!("vmsilo-guest-multi-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut agent = Agent::new(config());
    agent.set_listener(Box::new(
        UnixSocketListener::new(listener, path.display().to_string()).unwrap(),
    ));
    thread::spawn(move || agent.run());
    // The first command waits for input that only arrives after the second one finished.
    let slow = UnixStream::connect(&path).unwrap();
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>();
    let slow_out = Buf::default();
    let io = AttachedIo {
        stdin: Some(Box::new(ChannelReader(in_rx, Vec::new()))),
        stdout: Box::new(slow_out.clone()),
        stderr: Box::new(io::sink()),
        controls: None,
    };
    let reader = slow.try_clone().unwrap();
    let first = thread::spawn(move || run_attached(reader, slow, &Request::attached(["cat"]), io));
    let fast = UnixStream::connect(&path).unwrap();
    let out = Buf::default();
    let io = AttachedIo {
        stdin: None,
        stdout: Box::new(out.clone()),
        stderr: Box::new(io::sink()),
        controls: None,
    };
    let reader = fast.try_clone().unwrap();
    let status = run_attached(reader, fast, &Request::attached(["echo", "second"]), io).unwrap();
    assert_eq!(status.status, ExitStatus::Exited(0));
    assert_eq!(out.text(), "second\n");
    in_tx.send(b"first\n".to_vec()).unwrap();
    drop(in_tx);
    assert_eq!(first.join().unwrap().unwrap().status, ExitStatus::Exited(0));
    assert_eq!(slow_out.text(), "first\n");
    let _ = fs::remove_file(&path);
}

/// stdin fed from a channel; EOF when the sender is dropped.
struct ChannelReader(mpsc::Receiver<Vec<u8>>, Vec<u8>);

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.1.is_empty() {
            match self.0.recv() {
                Ok(d) => self.1 = d,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.1.len());
        buf[..n].copy_from_slice(&self.1[..n]);
        self.1.drain(..n);
        Ok(n)
    }
}

#[test]
fn test_idle_watchdog_fires_without_commands() {
    let mut cfg = config();
    cfg.idle_shutdown = Some(Duration::from_millis(200));
    let path = std::env::temp_dir().join(format!("vmsilo-guest-idle0-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut agent = Agent::new(cfg);
    agent.set_listener(Box::new(UnixSocketListener::new(listener, "t").unwrap()));
    assert_eq!(agent.run().unwrap(), Outcome::Idle);
    let _ = fs::remove_file(&path);
}

#[test]
fn test_idle_watchdog_waits_for_running_commands() {
    let mut cfg = config();
    cfg.idle_shutdown = Some(Duration::from_millis(500));
    let path = std::env::temp_dir().join(format!("vmsilo-guest-idle-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut agent = Agent::new(cfg);
    agent.set_listener(Box::new(UnixSocketListener::new(listener, "t").unwrap()));
    let handle = thread::spawn(move || agent.run().unwrap());

    // An attached command running for longer than the idle time: the agent must not power
    // off under it (the connection would break and the client would get an error). The
    // second connection is opened before it ends, so that the agent is never idle between
    // the two however slowly this test runs.
    let s = UnixStream::connect(&path).unwrap();
    let second = UnixStream::connect(&path).unwrap();
    let reader = s.try_clone().unwrap();
    let io = AttachedIo {
        stdin: None,
        stdout: Box::new(io::sink()),
        stderr: Box::new(io::sink()),
        controls: None,
    };
    let done = run_attached(reader, s, &Request::attached(["sleep", "1.5"]), io).unwrap();
    assert_eq!(done.status, ExitStatus::Exited(0));

    // A detached one: the watchdog fires only after it has ended.
    let started = run_detached(second, &Request::detached(["sleep", "1.5"])).unwrap();
    assert_eq!(handle.join().unwrap(), Outcome::Idle);
    assert!(
        !PathBuf::from(format!("/proc/{}", started.pid)).exists(),
        "powered off while the detached command was still running"
    );
    let _ = fs::remove_file(&path);
}

#[test]
fn test_connection_queued_when_the_idle_time_runs_out_is_served() {
    // The idle time has run out before the agent first looks, and a host connection already
    // waits in the listener's queue: it must be served, not dropped by powering off.
    let mut cfg = config();
    cfg.idle_shutdown = Some(Duration::ZERO);
    let path = std::env::temp_dir().join(format!("vmsilo-guest-idleq-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut agent = Agent::new(cfg);
    agent.set_listener(Box::new(UnixSocketListener::new(listener, "t").unwrap()));
    let s = UnixStream::connect(&path).unwrap();
    let handle = thread::spawn(move || agent.run().unwrap());
    let out = Buf::default();
    let reader = s.try_clone().unwrap();
    let done = run_attached(
        reader,
        s,
        &Request::attached(["echo", "served"]),
        captured(None, &out, &Buf::default()),
    )
    .unwrap();
    assert_eq!(done.status, ExitStatus::Exited(0));
    assert_eq!(out.text(), "served\n");
    assert_eq!(handle.join().unwrap(), Outcome::Idle);
    let _ = fs::remove_file(&path);
}
