//! End-to-end: the real agent in a real Debian-kernel guest under QEMU/TCG, reached from the
//! host through vhost-device-vsock's hybrid-vsock socket, driven by the real `vmsilo-proto`
//! client. Two boots: one for commands, one for the idle shutdown.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmsilo_proto::client::{ClientError, MessageReader, run_attached, run_detached};
use vmsilo_proto::{
    AGENT_PORT, ErrorCode, ExitStatus, Message, PROTOCOL_VERSION, Request, WindowSize,
};
use vmsilo_testkit::{Guest, ImageSpec, QemuBuilder, agent_binary};

const T: Duration = Duration::from_secs(30);

mod common;
use common::{Buf, captured};

struct Done {
    result: Result<ExitStatus, ClientError>,
    stdout: String,
    stderr: String,
}

fn connect(guest: &Guest) -> UnixStream {
    guest.vsock_connect_timeout(AGENT_PORT, T).unwrap()
}

fn attached(guest: &Guest, req: Request, stdin: Option<&[u8]>) -> Done {
    let s = connect(guest);
    let (out, err) = (Buf::default(), Buf::default());
    let io = captured(stdin.map(<[u8]>::to_vec), &out, &err);
    let reader = s.try_clone().unwrap();
    let result = run_attached(reader, s, &req, io).map(|a| a.status);
    Done {
        result,
        stdout: out.text(),
        stderr: err.text(),
    }
}

fn agent_image() -> vmsilo_testkit::GuestImage {
    ImageSpec::new()
        .agent(agent_binary().unwrap())
        .build()
        .unwrap()
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_agent_runs_commands_sent_over_hybrid_vsock() {
    let image = agent_image();
    let guest = QemuBuilder::new(&image)
        .name("agent")
        .memory_mib(256)
        .vsock(3)
        .start()
        .unwrap();

    // Exit status.
    let d = attached(&guest, Request::attached(["sh", "-c", "exit 3"]), None);
    assert_eq!(d.result.unwrap(), ExitStatus::Exited(3));
    let d = attached(&guest, Request::attached(["false"]), None);
    assert_eq!(d.result.unwrap().code(), 1);

    // stdin piping: `echo hi | vm-run -w vm cat`.
    let d = attached(&guest, Request::attached(["cat"]), Some(b"hi\n"));
    assert_eq!(d.result.unwrap(), ExitStatus::Exited(0));
    assert_eq!(d.stdout, "hi\n");

    // stderr kept separate.
    let d = attached(
        &guest,
        Request::attached(["sh", "-c", "echo to-out; echo to-err >&2"]),
        None,
    );
    assert_eq!(d.result.unwrap(), ExitStatus::Exited(0));
    assert_eq!(
        (d.stdout.as_str(), d.stderr.as_str()),
        ("to-out\n", "to-err\n")
    );

    // A command that doesn't exist: a clear error, exit status 127.
    let d = attached(&guest, Request::attached(["frobnicate"]), None);
    let e = d.result.unwrap_err();
    assert_eq!(e.to_string(), "vmsilo-guest: frobnicate: command not found");
    assert_eq!(e.exit_code(), 127);

    // A terminal.
    let d = attached(
        &guest,
        Request::attached(["sh", "-c", "tty; stty size"]).tty(WindowSize { rows: 33, cols: 99 }),
        None,
    );
    assert_eq!(d.result.unwrap(), ExitStatus::Exited(0));
    assert!(d.stdout.contains("/dev/pts/"), "{:?}", d.stdout);
    assert!(d.stdout.contains("33 99"), "{:?}", d.stdout);

    // Detached: returns once started; the command keeps running after the connection ended.
    let started = run_detached(
        connect(&guest),
        &Request::detached(["sh", "-c", "sleep 1; echo $$ > /tmp/detached"]),
    )
    .unwrap();
    let written = guest
        .run_ok(
            "while [ ! -s /tmp/detached ]; do sleep 0.2; done; cat /tmp/detached",
            T,
        )
        .unwrap();
    assert_eq!(written.trim(), started.pid.to_string());

    // Wrong protocol version and malformed frames over the real transport.
    let mut s = connect(&guest);
    let mut wire = Vec::new();
    Message::Hello {
        version: PROTOCOL_VERSION + 1,
    }
    .encode(&mut wire)
    .unwrap();
    s.write_all(&wire).unwrap();
    let mut r = MessageReader::new(s);
    assert_eq!(
        r.read_message().unwrap(),
        Some(Message::HelloReply {
            version: PROTOCOL_VERSION
        })
    );
    let Some(Message::Error(e)) = r.read_message().unwrap() else {
        panic!("no error frame after a version mismatch")
    };
    assert_eq!(e.code, ErrorCode::VersionMismatch);
    let mut s = connect(&guest);
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut r = MessageReader::new(s);
    let Some(Message::Error(e)) = r.read_message().unwrap() else {
        panic!("no error frame for an oversized frame")
    };
    assert_eq!(e.code, ErrorCode::Malformed);

    // Under vhost-device-vsock the host is CID 2 as seen from the guest: the agent admitted
    // every connection above. A second agent that admits only CID 7 refuses the host.
    let log = guest.run_ok("cat /run/vmsilo-guest.log", T).unwrap();
    assert!(log.contains("listening on vsock port 5000"), "{log}");
    assert!(!log.contains("refused a connection"), "{log}");
    let rss = guest
        .run_ok("grep VmRSS /proc/$(pidof vmsilo-guest)/status", T)
        .unwrap_or_default();
    eprintln!(
        "agent in the guest after the commands above: {}",
        rss.trim()
    );
    guest
        .run_ok(
            "/bin/vmsilo-guest --port 5001 --host-cid 7 </dev/null >/tmp/cid7.log 2>&1 &",
            T,
        )
        .unwrap();
    let s = guest.vsock_connect_timeout(5001, T).unwrap();
    let refused = run_detached(s, &Request::detached(["true"])).unwrap_err();
    assert!(
        matches!(refused, ClientError::Closed { .. } | ClientError::Io { .. }),
        "{refused}"
    );
    // The refusal is logged after the connection closed: wait for it (at most 10 s).
    let log = guest
        .run_ok(
            "i=0; until grep -q 'refused a connection' /tmp/cid7.log; do i=$((i+1)); \
             [ $i -ge 100 ] && break; sleep 0.1; done; cat /tmp/cid7.log",
            T,
        )
        .unwrap();
    assert!(
        log.contains("refused a connection from vsock CID 2"),
        "{log}"
    );

    guest.shutdown(T).unwrap();
}

#[test]
#[ignore = "e2e: boots QEMU guests"]
fn test_idle_guest_powers_off_after_its_last_command_and_not_during_it() {
    let image = agent_image();
    let mut guest = QemuBuilder::new(&image)
        .name("idle")
        .memory_mib(256)
        .vsock(3)
        .kernel_param("vmsilo.autoshutdown=5")
        .spawn()
        .unwrap();
    // Connect as soon as the agent listens (the idle clock starts with the agent).
    let s = guest
        .vsock_connect_timeout(AGENT_PORT, Duration::from_secs(120))
        .unwrap();
    let out = Buf::default();
    let io = captured(None, &out, &Buf::default());
    let reader = s.try_clone().unwrap();
    // Longer than the idle time: had the guest powered off meanwhile, the connection would
    // have broken and this would be an error.
    let status = run_attached(
        reader,
        s,
        &Request::attached(["sh", "-c", "sleep 8; echo still-here"]),
        io,
    )
    .unwrap()
    .status;
    let ended = Instant::now();
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(out.text(), "still-here\n");
    assert!(guest.is_running());

    // Then, with nothing running, the agent powers the guest off on its own.
    while guest.is_running() {
        assert!(
            ended.elapsed() < Duration::from_secs(90),
            "guest still running {:?} after its last command{}",
            ended.elapsed(),
            guest.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "guest powered off {:.1} s after its last command ended (autoshutdown 5 s)",
        ended.elapsed().as_secs_f64()
    );
    let console = guest.console_log();
    assert!(console.contains("reboot: Power down"), "{console}");
    // Reap QEMU and the backends.
    guest.kill();
}
