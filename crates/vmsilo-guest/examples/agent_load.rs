//! Load generator for `cargo xtask bench guest-agent`: connects to an agent's Unix socket and
//! runs commands through the real client, so the benchmark can measure the agent's memory
//! after it has served attached, tty and detached commands.
//!
//! Usage: `agent_load <socket> <rounds>`; prints the number of commands run.

use std::io;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use vmsilo_proto::client::{AttachedIo, run_attached, run_detached};
use vmsilo_proto::{Request, WindowSize};

fn attached(sock: &str, req: &Request, stdin: &'static [u8]) -> Result<(), String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("connect {sock}: {e}"))?;
    let reader = s.try_clone().map_err(|e| e.to_string())?;
    let io = AttachedIo {
        stdin: Some(Box::new(stdin)),
        stdout: Box::new(io::sink()),
        stderr: Box::new(io::sink()),
        controls: None,
    };
    let done = run_attached(reader, s, req, io).map_err(|e| e.to_string())?;
    if !done.status.success() {
        return Err(format!("{req:?} ended with {:?}", done.status));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(sock), Some(rounds)) = (args.get(1), args.get(2).and_then(|r| r.parse::<u32>().ok()))
    else {
        eprintln!("usage: agent_load <socket> <rounds>");
        return ExitCode::from(2);
    };
    let big: &'static [u8] = Box::leak(vec![b'x'; 256 << 10].into_boxed_slice());
    let mut n = 0;
    for _ in 0..rounds {
        let steps: [Result<(), String>; 4] = [
            attached(sock, &Request::attached(["cat"]), big),
            attached(
                sock,
                &Request::attached(["sh", "-c", "echo out; echo err >&2"]),
                b"",
            ),
            attached(
                sock,
                &Request::attached(["sh", "-c", "stty size"])
                    .tty(WindowSize { rows: 24, cols: 80 }),
                b"",
            ),
            UnixStream::connect(sock)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    run_detached(s, &Request::detached(["true"])).map_err(|e| e.to_string())
                })
                .map(|_| ()),
        ];
        for step in steps {
            if let Err(e) = step {
                eprintln!("agent_load: {e}");
                return ExitCode::FAILURE;
            }
            n += 1;
        }
    }
    println!("{n}");
    ExitCode::SUCCESS
}
