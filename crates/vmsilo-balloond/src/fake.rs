//! In-process fake VMM peers for tests and benchmarks: a crosvm control socket (SOCK_SEQPACKET,
//! one JSON datagram per message, exactly crosvm's wire format) and a QEMU QMP monitor. Each
//! records the raw requests it received and can misbehave on demand (no reply, an errno, garbage,
//! hanging up mid-request).
//!
//! Not used by the daemon itself; it lives in the library, behind the `sim` feature, so that
//! integration tests and `cargo xtask bench balloond` can share it.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::sys::socket::{AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr};
use serde_json::{Value, json};

use crate::stats::GuestStats;

/// How a fake peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Answer like a healthy VMM.
    Normal,
    /// Read the request and never answer (crosvm with a paused guest, or an unknown request).
    NoReply,
    /// Answer every balloon command with `{"Err":107}` (guest driver not up).
    ErrNotConnected,
    /// Answer with bytes that are not a valid reply.
    Garbage,
    /// Read the request, then hang up without answering.
    HangUp,
}

/// The fake guest behind a peer, shared with the test.
#[derive(Debug, Clone)]
pub struct FakeGuest {
    /// Statistics reported.
    pub stats: GuestStats,
    /// Balloon size now (bytes).
    pub balloon_actual: u64,
    /// VM RAM size (bytes; QMP reports it).
    pub ram_size: u64,
    /// Whether an `Adjust` moves the balloon at once (`false`: a stuck balloon).
    pub follow_adjust: bool,
    /// How the peer answers.
    pub behavior: Behavior,
    /// Raw requests received, in order (crosvm: datagrams; QMP: lines).
    pub requests: Vec<Vec<u8>>,
    /// Balloon sizes requested, in order.
    pub adjusts: Vec<u64>,
    /// QMP: the guest-stats polling interval set by the client.
    pub polling_interval: u64,
    /// QMP: whether the guest driver reports stats once polling is on (`false`: QEMU answers
    /// `last-update: 0` and `u64::MAX` for every stat).
    pub stats_reported: bool,
    /// QMP: whether the VM has the `balloon0` device.
    pub has_balloon: bool,
}

impl FakeGuest {
    /// A 1 GiB guest with 600 MiB free and 200 MiB of caches, empty balloon.
    pub fn new() -> Self {
        let m = 1u64 << 20;
        Self {
            stats: GuestStats {
                swap_in: Some(0),
                swap_out: Some(0),
                major_faults: Some(10),
                minor_faults: Some(1000),
                free_memory: Some(600 * m),
                total_memory: Some(1000 * m),
                available_memory: Some(700 * m),
                disk_caches: Some(200 * m),
                hugetlb_allocations: Some(0),
                hugetlb_failures: Some(0),
                shared_memory: None,
                unevictable_memory: None,
            },
            balloon_actual: 0,
            ram_size: 1024 * m,
            follow_adjust: true,
            behavior: Behavior::Normal,
            requests: Vec::new(),
            adjusts: Vec::new(),
            polling_interval: 0,
            stats_reported: true,
            has_balloon: true,
        }
    }
}

impl Default for FakeGuest {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(g: &Mutex<FakeGuest>) -> MutexGuard<'_, FakeGuest> {
    g.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fake crosvm control socket.
#[derive(Debug)]
pub struct FakeCrosvm {
    path: PathBuf,
    guest: Arc<Mutex<FakeGuest>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCrosvm {
    /// Binds `path` (removing a stale file first, as the runtime does) and serves it.
    pub fn start(path: &Path, guest: FakeGuest) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let fd = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        nix::sys::socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        nix::sys::socket::listen(&fd, Backlog::new(128)?)?;
        let guest = Arc::new(Mutex::new(guest));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (guest.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-crosvm".into())
            .spawn(move || {
                let mut conns = Vec::new();
                while let Ok(conn) = nix::sys::socket::accept(&fd) {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let g = g.clone();
                    conns.push(std::thread::spawn(move || serve_crosvm(conn, &g)));
                    conns.retain(|h| !h.is_finished());
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            guest,
            stop,
            thread: Some(thread),
        })
    }

    /// The fake guest, to inspect or change.
    pub fn guest(&self) -> MutexGuard<'_, FakeGuest> {
        lock(&self.guest)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FakeCrosvm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        if let Ok(fd) = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) && let Ok(addr) = UnixAddr::new(self.path.as_path())
        {
            let _ = nix::sys::socket::connect(fd.as_raw_fd(), &addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn crosvm_stats_reply(g: &FakeGuest) -> Vec<u8> {
    // Key order as crosvm's serde derive writes it.
    let s = &g.stats;
    let f = |v: Option<u64>| v.map_or("null".to_owned(), |n| n.to_string());
    format!(
        r#"{{"BalloonStats":{{"stats":{{"swap_in":{},"swap_out":{},"major_faults":{},"minor_faults":{},"free_memory":{},"total_memory":{},"available_memory":{},"disk_caches":{},"hugetlb_allocations":{},"hugetlb_failures":{},"shared_memory":{},"unevictable_memory":{}}},"balloon_actual":{}}}}}"#,
        f(s.swap_in),
        f(s.swap_out),
        f(s.major_faults),
        f(s.minor_faults),
        f(s.free_memory),
        f(s.total_memory),
        f(s.available_memory),
        f(s.disk_caches),
        f(s.hugetlb_allocations),
        f(s.hugetlb_failures),
        f(s.shared_memory),
        f(s.unevictable_memory),
        g.balloon_actual
    )
    .into_bytes()
}

fn serve_crosvm(conn: OwnedFd, guest: &Mutex<FakeGuest>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match nix::sys::socket::recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        let req = buf[..n].to_vec();
        let reply: Option<Vec<u8>> = {
            let mut g = lock(guest);
            g.requests.push(req.clone());
            match g.behavior {
                Behavior::NoReply => None,
                Behavior::HangUp => return,
                Behavior::Garbage => Some(b"\x00garbage{".to_vec()),
                Behavior::ErrNotConnected => Some(br#"{"Err":107}"#.to_vec()),
                Behavior::Normal => {
                    let v: Option<Value> = serde_json::from_slice(&req).ok();
                    match v {
                        Some(Value::Object(m)) => match m.get("BalloonCommand") {
                            Some(Value::String(s)) if s == "Stats" => Some(crosvm_stats_reply(&g)),
                            Some(Value::Object(c)) => {
                                match c
                                    .get("Adjust")
                                    .and_then(|a| a.get("num_bytes"))
                                    .and_then(Value::as_u64)
                                {
                                    Some(n) if c["Adjust"].get("wait_for_success").is_some() => {
                                        g.adjusts.push(n);
                                        if g.follow_adjust {
                                            g.balloon_actual = n;
                                        }
                                        Some(br#""Ok""#.to_vec())
                                    }
                                    // crosvm does not answer what it cannot deserialize.
                                    _ => None,
                                }
                            }
                            _ => None,
                        },
                        _ => None,
                    }
                }
            }
        };
        if let Some(r) = reply
            && nix::sys::socket::send(conn.as_raw_fd(), &r, MsgFlags::MSG_NOSIGNAL).is_err()
        {
            return;
        }
    }
}

/// A fake QEMU QMP monitor.
#[derive(Debug)]
pub struct FakeQmp {
    path: PathBuf,
    guest: Arc<Mutex<FakeGuest>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeQmp {
    /// Binds `path` and serves QMP on it, one client at a time like QEMU.
    pub fn start(path: &Path, guest: FakeGuest) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let guest = Arc::new(Mutex::new(guest));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (guest.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-qmp".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        serve_qmp(c, &g);
                    }
                }
            })?;
        Ok(Self {
            path: path.to_owned(),
            guest,
            stop,
            thread: Some(thread),
        })
    }

    /// The fake guest, to inspect or change.
    pub fn guest(&self) -> MutexGuard<'_, FakeGuest> {
        lock(&self.guest)
    }
}

impl Drop for FakeQmp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn qmp_stats(g: &FakeGuest) -> Value {
    let s = &g.stats;
    let reported = g.polling_interval > 0 && g.stats_reported;
    let v = |x: Option<u64>| x.filter(|_| reported).unwrap_or(u64::MAX);
    json!({
        "stats": {
            "stat-swap-in": v(s.swap_in), "stat-swap-out": v(s.swap_out),
            "stat-major-faults": v(s.major_faults), "stat-minor-faults": v(s.minor_faults),
            "stat-free-memory": v(s.free_memory), "stat-total-memory": v(s.total_memory),
            "stat-available-memory": v(s.available_memory), "stat-disk-caches": v(s.disk_caches),
            "stat-htlb-pgalloc": v(s.hugetlb_allocations), "stat-htlb-pgfail": v(s.hugetlb_failures)
        },
        "last-update": if reported {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        } else {
            0
        }
    })
}

fn serve_qmp(conn: UnixStream, guest: &Mutex<FakeGuest>) {
    let Ok(mut w) = conn.try_clone() else {
        return;
    };
    let greeting = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#;
    if w.write_all(greeting)
        .and_then(|()| w.write_all(b"\r\n"))
        .is_err()
    {
        return;
    }
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = {
            let mut g = lock(guest);
            g.requests.push(line.trim_end().as_bytes().to_vec());
            match g.behavior {
                Behavior::NoReply => None,
                Behavior::HangUp => return,
                Behavior::Garbage => Some("}}not json\r\n".to_owned()),
                Behavior::ErrNotConnected | Behavior::Normal => {
                    let req: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    let id = req.get("id").cloned().unwrap_or(Value::Null);
                    let cmd = req.get("execute").and_then(Value::as_str).unwrap_or("");
                    let args = req.get("arguments").cloned().unwrap_or(Value::Null);
                    let ret: Result<Value, &str> = match cmd {
                        "qmp_capabilities" => Ok(json!({})),
                        "query-memory-size-summary" => {
                            Ok(json!({"base-memory": g.ram_size, "plugged-memory": 0}))
                        }
                        "query-balloon" => {
                            Ok(json!({"actual": g.ram_size.saturating_sub(g.balloon_actual)}))
                        }
                        "qom-get" | "qom-set" if !g.has_balloon => {
                            Err("Device 'balloon0' not found")
                        }
                        "qom-get" => match args.get("property").and_then(Value::as_str) {
                            Some("guest-stats") => Ok(qmp_stats(&g)),
                            Some("guest-stats-polling-interval") => Ok(json!(g.polling_interval)),
                            _ => Err("Property not found"),
                        },
                        "qom-set" => {
                            g.polling_interval =
                                args.get("value").and_then(Value::as_u64).unwrap_or(0);
                            Ok(json!({}))
                        }
                        "balloon" => match args.get("value").and_then(Value::as_u64) {
                            Some(v) if v > 0 => {
                                let target = g.ram_size.saturating_sub(v);
                                g.adjusts.push(target);
                                if g.follow_adjust {
                                    g.balloon_actual = target;
                                }
                                Ok(json!({}))
                            }
                            _ => Err("Parameter 'target' expects a size"),
                        },
                        _ => Err("The command is not found"),
                    };
                    // An asynchronous event before every reply, as QEMU may interleave them.
                    let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BALLOON_CHANGE", "data": {"actual": 1}}"#;
                    let body = match ret {
                        Ok(v) => json!({"return": v, "id": id}),
                        Err(desc) => {
                            json!({"error": {"class": "GenericError", "desc": desc}, "id": id})
                        }
                    };
                    Some(format!("{event}\r\n{body}\r\n"))
                }
            }
        };
        if let Some(text) = reply
            && w.write_all(text.as_bytes()).is_err()
        {
            return;
        }
    }
}
