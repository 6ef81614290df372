//! The blocking client against scripted agents on real Unix sockets: handshake, version
//! mismatch, attached streaming, signals, refusals and garbage from the agent.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use vmsilo_proto::client::{
    AttachedIo, ClientError, Control, MessageReader, run_attached, run_detached,
};
use vmsilo_proto::{
    ErrorCode, ErrorFrame, ExitStatus, Message, PROTOCOL_VERSION, Request, Signal, Started,
};

/// A `Write` whose bytes can be read back after the writer was moved into the client.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn send(stream: &mut UnixStream, msg: &Message) {
    let mut out = Vec::new();
    msg.encode(&mut out).unwrap();
    stream.write_all(&out).unwrap();
}

/// Runs `agent` on one end of a socket pair; returns the other end.
fn scripted_agent(agent: impl FnOnce(UnixStream) + Send + 'static) -> UnixStream {
    let (host, guest) = UnixStream::pair().unwrap();
    thread::spawn(move || agent(guest));
    host
}

/// Reads Hello and Request like a real agent would.
fn expect_hello_and_request(stream: &UnixStream) -> (MessageReader<UnixStream>, Request) {
    let mut reader = MessageReader::new(stream.try_clone().unwrap());
    assert_eq!(
        reader.read_message().unwrap(),
        Some(Message::Hello {
            version: PROTOCOL_VERSION
        })
    );
    let Some(Message::Request(req)) = reader.read_message().unwrap() else {
        panic!("no request")
    };
    (reader, req)
}

fn io_with(stdin: &'static [u8], out: &Shared, err: &Shared) -> AttachedIo {
    AttachedIo {
        stdin: Some(Box::new(stdin)),
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
        controls: None,
    }
}

#[test]
fn test_detached_returns_the_started_pid() {
    let host = scripted_agent(|mut s| {
        let (_, req) = expect_hello_and_request(&s);
        assert_eq!(req, Request::detached(["firefox"]));
        send(
            &mut s,
            &Message::HelloReply {
                version: PROTOCOL_VERSION,
            },
        );
        send(
            &mut s,
            &Message::Started(Started {
                pid: 77,
                unit: None,
            }),
        );
    });
    let started = run_detached(host, &Request::detached(["firefox"])).unwrap();
    assert_eq!(started.pid, 77);
}

#[test]
fn test_version_mismatch_names_both_versions() {
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        send(&mut s, &Message::HelloReply { version: 99 });
        send(
            &mut s,
            &Message::Error(ErrorFrame::new(ErrorCode::VersionMismatch, "mismatch")),
        );
    });
    let err = run_detached(host, &Request::detached(["x"])).unwrap_err();
    assert!(matches!(
        err,
        ClientError::VersionMismatch {
            host: PROTOCOL_VERSION,
            agent: 99
        }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "agent version mismatch: host speaks {PROTOCOL_VERSION}, guest agent speaks 99; rebuild the guest image"
        )
    );
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn test_attached_streams_stdout_and_stderr_separately_and_returns_the_status() {
    let host = scripted_agent(|mut s| {
        let (mut reader, req) = expect_hello_and_request(&s);
        assert_eq!(req.argv, [b"cat".to_vec()]);
        send(
            &mut s,
            &Message::HelloReply {
                version: PROTOCOL_VERSION,
            },
        );
        send(&mut s, &Message::Started(Started { pid: 5, unit: None }));
        let mut input = Vec::new();
        loop {
            match reader.read_message().unwrap() {
                Some(Message::Stdin(d)) => input.extend(d),
                Some(Message::StdinEof) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        send(&mut s, &Message::Stdout(input.to_ascii_uppercase()));
        send(&mut s, &Message::Stderr(b"warning\n".to_vec()));
        send(&mut s, &Message::Exit(ExitStatus::Exited(3)));
    });
    let (out, err) = (Shared::default(), Shared::default());
    let reader = host.try_clone().unwrap();
    let done = run_attached(
        reader,
        host,
        &Request::attached(["cat"]),
        io_with(b"hi\n", &out, &err),
    )
    .unwrap();
    assert_eq!(done.status, ExitStatus::Exited(3));
    assert_eq!(done.started.pid, 5);
    assert_eq!(out.text(), "HI\n");
    assert_eq!(err.text(), "warning\n");
}

#[test]
fn test_controls_are_forwarded_while_the_command_runs() {
    let host = scripted_agent(|mut s| {
        let (mut reader, req) = expect_hello_and_request(&s);
        assert!(req.tty.is_none());
        send(
            &mut s,
            &Message::HelloReply {
                version: PROTOCOL_VERSION,
            },
        );
        send(&mut s, &Message::Started(Started { pid: 5, unit: None }));
        // stdin is None: the client closes it at once.
        assert_eq!(reader.read_message().unwrap(), Some(Message::StdinEof));
        assert_eq!(
            reader.read_message().unwrap(),
            Some(Message::Signal(Signal::Int))
        );
        send(
            &mut s,
            &Message::Exit(ExitStatus::Signaled {
                signal: 2,
                core_dumped: false,
            }),
        );
    });
    let (tx, rx) = mpsc::channel();
    tx.send(Control::Signal(Signal::Int)).unwrap();
    let io = AttachedIo {
        stdin: None,
        stdout: Box::new(io::sink()),
        stderr: Box::new(io::sink()),
        controls: Some(rx),
    };
    let reader = host.try_clone().unwrap();
    let done = run_attached(reader, host, &Request::attached(["sleep", "9"]), io).unwrap();
    assert_eq!(done.status.code(), 130);
}

#[test]
fn test_agent_refusals_carry_the_agent_message_and_exit_code() {
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        send(
            &mut s,
            &Message::HelloReply {
                version: PROTOCOL_VERSION,
            },
        );
        send(
            &mut s,
            &Message::Error(ErrorFrame::new(
                ErrorCode::CommandNotFound,
                "vmsilo-guest: nosuch: command not found",
            )),
        );
    });
    let reader = host.try_clone().unwrap();
    let (out, err) = (Shared::default(), Shared::default());
    let e = run_attached(
        reader,
        host,
        &Request::attached(["nosuch"]),
        io_with(b"", &out, &err),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "vmsilo-guest: nosuch: command not found");
    assert_eq!(e.exit_code(), 127);
}

#[test]
fn test_garbage_and_early_close_from_the_agent_are_errors_not_panics() {
    // An oversized length prefix instead of HelloReply.
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    });
    let e = run_detached(host, &Request::detached(["x"])).unwrap_err();
    assert!(matches!(e, ClientError::Decode(_)), "{e}");

    // Not a vmsilo agent at all.
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n").unwrap();
    });
    let e = run_detached(host, &Request::detached(["x"])).unwrap_err();
    assert!(
        matches!(e, ClientError::Decode(_) | ClientError::Closed { .. }),
        "{e}"
    );

    // Closed after Started, before Exit.
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        send(
            &mut s,
            &Message::HelloReply {
                version: PROTOCOL_VERSION,
            },
        );
        send(&mut s, &Message::Started(Started { pid: 1, unit: None }));
    });
    let reader = host.try_clone().unwrap();
    let e = run_attached(
        reader,
        host,
        &Request::attached(["x"]),
        io_with(b"", &Shared::default(), &Shared::default()),
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Closed { .. }), "{e}");

    // A frame that is valid but out of place.
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        send(&mut s, &Message::Stdout(b"early".to_vec()));
    });
    let e = run_detached(host, &Request::detached(["x"])).unwrap_err();
    assert!(
        matches!(e, ClientError::Unexpected { got: "Stdout", .. }),
        "{e}"
    );
}

#[test]
fn test_mode_mismatch_is_refused_locally() {
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(matches!(
        run_detached(a, &Request::attached(["x"])),
        Err(ClientError::InvalidRequest(_))
    ));
}

#[test]
fn test_agent_error_text_is_shown_with_terminal_controls_escaped() {
    let host = scripted_agent(|mut s| {
        let _ = expect_hello_and_request(&s);
        send(
            &mut s,
            &Message::HelloReply {
                version: PROTOCOL_VERSION,
            },
        );
        send(
            &mut s,
            &Message::Error(ErrorFrame::new(
                ErrorCode::CommandNotFound,
                "x\x1b]52;c;aGk=\x07\x1b]0;owned\x07\x1b[2J\u{202e}",
            )),
        );
    });
    let err = run_detached(host, &Request::detached(["x"])).unwrap_err();
    assert_eq!(err.exit_code(), 127);
    assert_eq!(
        err.to_string(),
        "x\\x1b]52;c;aGk=\\x07\\x1b]0;owned\\x07\\x1b[2J\\u{202e}"
    );
}

#[test]
fn test_silent_agent_is_no_answer_once_the_read_timeout_passes() {
    // The agent takes the connection and says nothing, with the connection open.
    let (host, guest) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let err = run_detached(host, &Request::detached(["x"])).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::NoAnswer {
                what: "answer Hello"
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 1);
    drop(guest);
}
