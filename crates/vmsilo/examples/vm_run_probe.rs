//! Times one warm attached `true` two ways, in this process, for `cargo xtask bench vm-run`:
//!
//! - **direct**: the VM's hybrid-vsock socket, `CONNECT 5000`, the agent protocol: the time in
//!   the guest and its vsock transport, with no vmsilo host component in the way (the
//!   baseline);
//! - **service**: the VM's command socket: the command service's status exchange (`Ready`)
//!   and splice, then the same agent protocol.
//!
//! Usage: `vm_run_probe COMMAND-SOCKET HYBRID-SOCKET ROUNDS`. Prints one line per round:
//! `direct_us service_us ready_us` (`ready_us`: connect to `Ready` on the command socket).
//!
//! `vm_run_probe front LISTEN AGENT-SOCKET` stands in for vhost-device-vsock in front of an
//! agent running on this host (`vmsilo-guest --unix AGENT-SOCKET`): it answers `CONNECT 5000`
//! on `LISTEN` and relays to the agent, so the host's share of the latency can be measured
//! without a VM's noise (both paths go through it alike).

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmsilo::vm_run::wire::{FrameReader, ServiceFrame};
use vmsilo_proto::client::{AttachedIo, run_attached};
use vmsilo_proto::{AGENT_PORT, Request, hybrid};

fn io() -> AttachedIo {
    AttachedIo {
        stdin: None,
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(std::io::sink()),
        controls: None,
    }
}

fn run_true(stream: UnixStream) -> Result<(), String> {
    let reader = stream.try_clone().map_err(|e| e.to_string())?;
    let done = run_attached(reader, stream, &Request::attached(["true"]), io())
        .map_err(|e| e.to_string())?;
    if done.status.code() != 0 {
        return Err(format!("true exited with {}", done.status.code()));
    }
    Ok(())
}

fn direct(hybrid_socket: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = UnixStream::connect(hybrid_socket).map_err(|e| format!("{hybrid_socket}: {e}"))?;
    hybrid::connect(&mut s, AGENT_PORT).map_err(|e| e.to_string())?;
    run_true(s).map_err(|e| format!("direct: {e}"))?;
    Ok(start.elapsed())
}

fn service(command_socket: &str) -> Result<(Duration, Duration), String> {
    let start = Instant::now();
    let s = UnixStream::connect(command_socket).map_err(|e| format!("{command_socket}: {e}"))?;
    let mut r = FrameReader::new();
    loop {
        match r.poll(&mut &s).map_err(|e| e.to_string())? {
            Some(ServiceFrame::Ready { .. }) => break,
            Some(ServiceFrame::Failed { message, .. }) => return Err(message),
            _ => {}
        }
    }
    let ready = start.elapsed();
    run_true(s).map_err(|e| format!("through the command socket: {e}"))?;
    Ok((start.elapsed(), ready))
}

/// Relays one accepted hybrid-vsock connection to the agent.
fn front_conn(mut s: UnixStream, agent: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' && line.len() < 64 {
        line.push(b[0]);
    }
    if line != format!("CONNECT {AGENT_PORT}").as_bytes() {
        return Ok(());
    }
    let a = UnixStream::connect(agent)?;
    s.write_all(format!("OK {AGENT_PORT}\n").as_bytes())?;
    let (mut s2, mut a2) = (s.try_clone()?, a.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
    let (mut a, mut s) = (a, s);
    let _ = std::io::copy(&mut a, &mut s);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    Ok(())
}

fn front(listen: &str, agent: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(listen);
    let l = std::os::unix::net::UnixListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    for s in l.incoming() {
        let s = s.map_err(|e| e.to_string())?;
        let agent = agent.to_owned();
        std::thread::spawn(move || front_conn(s, &agent));
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, listen, agent] = args.as_slice()
        && mode == "front"
    {
        return front(listen, agent);
    }
    let [_, command_socket, hybrid_socket, rounds] = args.as_slice() else {
        return Err("usage: vm_run_probe COMMAND-SOCKET HYBRID-SOCKET ROUNDS".into());
    };
    let rounds: u32 = rounds.parse().map_err(|e| format!("ROUNDS: {e}"))?;
    for i in 0..rounds {
        // Alternate the order, so neither path always runs on a freshly woken guest.
        let (d, (s, ready)) = if i % 2 == 0 {
            let d = direct(hybrid_socket)?;
            (d, service(command_socket)?)
        } else {
            let s = service(command_socket)?;
            (direct(hybrid_socket)?, s)
        };
        println!("{} {} {}", d.as_micros(), s.as_micros(), ready.as_micros());
    }
    Ok(())
}
