//! The measurements behind `cargo xtask bench vm-switch` (which builds this in release mode and
//! runs its parts). Each part prints human-readable lines and `RESULT key=value` lines.
//!
//! * `sched`: FQ-CoDel enqueue+dequeue operations per second at 1 to 1024 flows.
//! * `sim`: a virtual-clock simulation of a bulk TCP-like flow plus a sparse flow into one
//!   guest draining at 50/200/1000/4000 Mbit/s, through (a) a plain 256 KiB FIFO, (b) the seed's
//!   design (FQ-CoDel before a 256 KiB ring and a 256-entry RX ring) and (c) vm-switch
//!   (ring drained into FQ-CoDel at the destination, DQL-limited RX ring).
//! * `datapath <vm-switch binary> <frame size>`: frames per second from one in-process
//!   frontend to another through the real vm-switch (sandbox and seccomp on).
//! * `bridge <frame size>`: the same frames written into a tap and read from a second tap on a
//!   Linux bridge, in a private network namespace (needs root): the baseline.
//! * `qemu <vm-switch binary>`: three QEMU/TCG guests; bulk iperf3 A→B and a sparse fping C→B
//!   (10 ms), idle and loaded RTT percentiles; through vm-switch, then through a Linux bridge
//!   with taps under fq_codel (needs root).
//! * `picture <out.svg>`: draws the QEMU part's picture from made-up rounds (to look at the
//!   drawing without booting guests).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vm_switch::dql::Dql;
use vm_switch::egress::{Class, Egress, Step};
use vm_switch::frame;
use vm_switch::sched::{FqCodel, Packet, Params};
use vm_switch::testing::{GuestOptions, TestGuest, proc_stat};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let part = args.first().map(String::as_str).unwrap_or("");
    match part {
        "sched" => sched(),
        "sim" => sim(),
        "datapath" => datapath(Path::new(&args[1]), args[2].parse().expect("frame size")),
        "bridge" => bridge(args[1].parse().expect("frame size")),
        "qemu" => qemu(Path::new(&args[1])),
        "picture" => picture(Path::new(&args[1])),
        _ => {
            eprintln!(
                "usage: vm_switch_bench sched|sim|datapath BIN SIZE|bridge SIZE|qemu BIN|picture OUT.svg"
            );
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scheduler

#[derive(Debug, Clone)]
struct SimPkt {
    size: u32,
    ts: u64,
    ect: bool,
    ce: bool,
    bulk: bool,
    sent_at: u64,
    /// MTU-sized packets this one stands for (a TSO segment: more than one).
    mtus: u32,
}

impl Packet for SimPkt {
    fn size(&self) -> u32 {
        self.size
    }
    fn mem_size(&self) -> u32 {
        self.size
    }
    fn enqueued_at(&self) -> u64 {
        self.ts
    }
    fn mark_ce(&mut self) -> bool {
        if self.ect {
            self.ce = true;
        }
        self.ect
    }
}

fn pkt(size: u32, ts: u64) -> SimPkt {
    SimPkt {
        size,
        ts,
        ect: false,
        ce: false,
        bulk: true,
        sent_at: ts,
        mtus: 1,
    }
}

fn sched() {
    println!("== scheduler: FQ-CoDel enqueue + dequeue (64-byte packets, virtual time)");
    for flows in [1u32, 16, 256, 1024] {
        let mut q = FqCodel::new(Params {
            limit_bytes: 64 << 20,
            ..Params::default()
        });
        let hashes: Vec<u32> = (0..flows).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        for (i, h) in hashes.iter().enumerate() {
            q.enqueue((i % 4) as u32, *h, pkt(64, 0), &mut |_, _| {});
            q.enqueue((i % 4) as u32, *h, pkt(64, 0), &mut |_, _| {});
        }
        let n = 2_000_000u64;
        let start = Instant::now();
        for i in 0..n {
            let h = hashes[(i % u64::from(flows)) as usize];
            q.enqueue((i % 4) as u32, h, pkt(64, i), &mut |_, _| {});
            let p = q.dequeue(i + 1000, &mut |_, _| {});
            std::hint::black_box(p);
        }
        let el = start.elapsed().as_secs_f64();
        let ops = (2 * n) as f64 / el;
        println!(
            "  flows={flows:5}  {:7.1} ns/op  {:6.2} Mops/s",
            el * 1e9 / (2 * n) as f64,
            ops / 1e6
        );
        println!("RESULT sched_ops_per_s_{flows}={ops:.0}");
    }
}

// ---------------------------------------------------------------------------------------
// Simulation

const MTU: u32 = 1514;
const SPARSE: u32 = 100;
const BASE_RTT: u64 = 1_000_000; // 1 ms outside the switch (both stacks)
const DT: u64 = 5_000; // 5 us steps
const DURATION: u64 = 10_000_000_000;
const WARMUP: u64 = 1_000_000_000;
const SPARSE_EVERY: u64 = 10_000_000;
const RING_BYTES: u64 = 256 * 1024;
const RX_ENTRIES: usize = 256;
const RECHECK: u64 = 250_000; // vm-switch observes guest consumption at least every 250 us

/// How the simulated bulk sender sizes its packets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bulk {
    /// One MTU per packet (no TSO).
    Mtu,
    /// TSO segments sized like Linux's `tcp_tso_autosize`: about 1 ms of the pacing rate
    /// (1.2 × cwnd / srtt), at least 2 and at most 44 MTUs (64 KiB).
    TsoAuto,
    /// Always 44-MTU (64 KiB) segments, whatever the rate: the worst case.
    Tso64k,
}

/// MTUs in a 64 KiB segment.
const SEG_MTUS: u32 = 44;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Design {
    Fifo,
    Seed,
    VmSwitch,
}

struct Reno {
    cwnd: f64,
    inflight: u32,
    ssthresh: f64,
    last_cut: u64,
    /// (time the ack arrives, (CE, MTUs acked, time sent)).
    acks: VecDeque<(u64, (bool, u32, u64))>,
}

impl Reno {
    fn cut(&mut self, now: u64) {
        if now > self.last_cut + BASE_RTT * 2 {
            self.cwnd = (self.cwnd / 2.0).max(2.0);
            self.ssthresh = self.cwnd;
            self.last_cut = now;
        }
    }
}

struct SimOut {
    sparse_p99_ms: f64,
    bulk_share: f64,
}

fn run_sim(design: Design, mbit: u64, bulk: Bulk) -> SimOut {
    let mut srtt = BASE_RTT as f64;
    let mut seg_dbg = 0;
    let rate = mbit as f64 * 1e6 / 8.0 / 1e9; // bytes per ns
    let mut tcp = Reno {
        cwnd: 10.0,
        inflight: 0,
        ssthresh: f64::MAX,
        last_cut: 0,
        acks: VecDeque::new(),
    };
    let mut fifo: VecDeque<SimPkt> = VecDeque::new();
    let mut fifo_bytes = 0u64;
    let mut fq: FqCodel<SimPkt> = FqCodel::new(Params::default());
    let mut ring: VecDeque<SimPkt> = VecDeque::new();
    let mut ring_bytes = 0u64;
    let mut rx: VecDeque<SimPkt> = VecDeque::new();
    let mut dql = Dql::new(2 * u64::from(MTU), 512 * 1024, 1_000_000_000);
    let mut consumed_total = 0u64; // bytes consumed by the guest (what the switch can observe)
    let mut observed = 0u64;
    let mut last_obs = 0u64;
    let mut egress: Egress<SimPkt, ()> = Egress::new(Params::default());
    let mut budget = 0.0f64;
    let mut next_sparse = 0u64;
    let mut sparse_delays: Vec<f64> = Vec::new();
    let mut bulk_bytes = 0u64;
    let mut losses: VecDeque<(u64, u32)> = VecDeque::new();
    let mut now = 0u64;
    while now < DURATION {
        // Acks and loss signals back at the sender.
        while let Some(&(t, ce)) = tcp.acks.front() {
            if t > now {
                break;
            }
            let (ce, k, sent) = ce;
            tcp.acks.pop_front();
            tcp.inflight -= k;
            srtt = 0.875 * srtt + 0.125 * (now - sent) as f64;
            if ce {
                tcp.cut(now);
            } else if tcp.cwnd < tcp.ssthresh {
                tcp.cwnd += f64::from(k);
            } else {
                tcp.cwnd += f64::from(k) / tcp.cwnd;
            }
        }
        while let Some(&(t, k)) = losses.front() {
            if t > now {
                break;
            }
            losses.pop_front();
            tcp.inflight -= k;
            tcp.cut(now);
        }
        // Arrivals at the switch.
        let mut arrivals = Vec::new();
        let seg = match bulk {
            Bulk::Mtu => 1,
            Bulk::Tso64k => SEG_MTUS,
            Bulk::TsoAuto => {
                let pacing = 1.2 * tcp.cwnd * f64::from(MTU) / srtt; // bytes per ns
                ((pacing * 1e6 / f64::from(MTU)) as u32).clamp(2, SEG_MTUS)
            }
        };
        seg_dbg = seg;
        // Like Linux's TSO deferral: wait until a whole segment fits the window (or the
        // window is smaller than a segment and nothing is in flight).
        let room = |tcp: &Reno| (tcp.cwnd.floor() as u32).saturating_sub(tcp.inflight);
        while room(&tcp) >= seg || (tcp.inflight == 0 && room(&tcp) > 0) {
            let k = seg.min(room(&tcp)).max(1);
            tcp.inflight += k;
            arrivals.push(SimPkt {
                size: MTU * k,
                ts: now,
                ect: true,
                ce: false,
                bulk: true,
                sent_at: now,
                mtus: k,
            });
        }
        if now >= next_sparse {
            next_sparse += SPARSE_EVERY;
            arrivals.push(SimPkt {
                size: SPARSE,
                ts: now,
                ect: false,
                ce: false,
                bulk: false,
                sent_at: now,
                mtus: 1,
            });
        }
        let mut dropped = Vec::new();
        for p in arrivals {
            let (source, hash) = if p.bulk {
                (1, 0x1111_0000)
            } else {
                (2, 0x9999_0000)
            };
            match design {
                Design::Fifo => {
                    if fifo_bytes + u64::from(p.size) > RING_BYTES {
                        dropped.push(p);
                    } else {
                        fifo_bytes += u64::from(p.size);
                        fifo.push_back(p);
                    }
                }
                // The seed queued per destination in the sender; flows are the only fairness.
                Design::Seed => fq.enqueue(0, hash, p, &mut |p, _| dropped.push(p)),
                Design::VmSwitch => egress.enqueue(source, hash, p, &mut |p, _| dropped.push(p)),
            }
        }
        // Switch stages.
        match design {
            Design::Fifo => {}
            Design::Seed => {
                loop {
                    if ring_bytes + u64::from(MTU * seg) > RING_BYTES {
                        break;
                    }
                    match fq.dequeue(now, &mut |p, _| dropped.push(p)) {
                        Some(p) => {
                            ring_bytes += u64::from(p.size);
                            ring.push_back(p);
                        }
                        None => break,
                    }
                }
                while rx.len() < RX_ENTRIES {
                    let Some(p) = ring.pop_front() else { break };
                    ring_bytes -= u64::from(p.size);
                    rx.push_back(p);
                }
            }
            Design::VmSwitch => {
                if now >= last_obs + RECHECK {
                    last_obs = now;
                    if consumed_total > observed {
                        dql.completed(consumed_total - observed, now);
                        observed = consumed_total;
                    }
                }
                while rx.len() < RX_ENTRIES && dql.avail() > 0 {
                    // The backend's rule (`vm_switch::egress`): a segment that does not fit
                    // what DQL allows now waits beside the scheduler when it will fit at the
                    // guest's pace, the sparse flow served meanwhile, and is segmented in
                    // software, its frames back at the head of their flow, when it will not.
                    let step = egress.next(
                        &dql,
                        now,
                        &mut |p: &SimPkt| {
                            if p.mtus > 1 {
                                Class::Segment(())
                            } else {
                                Class::Plain(())
                            }
                        },
                        &mut |p, _| dropped.push(p),
                    );
                    let p = match step {
                        Step::Deliver(p, ()) => p,
                        Step::Split(p, ()) => {
                            let frames = (0..p.mtus)
                                .map(|_| SimPkt {
                                    size: MTU,
                                    mtus: 1,
                                    ..p.clone()
                                })
                                .collect();
                            egress.requeue_front(1, 0x1111_0000, frames, p.size);
                            continue;
                        }
                        Step::Wait | Step::Empty => break,
                    };
                    dql.queued(u64::from(p.size));
                    rx.push_back(p);
                }
            }
        }
        for p in dropped {
            if p.bulk {
                losses.push_back((now + BASE_RTT, p.mtus));
            }
        }
        // The guest consumes at the drain rate.
        let q: &mut VecDeque<SimPkt> = if design == Design::Fifo {
            &mut fifo
        } else {
            &mut rx
        };
        if q.is_empty() {
            budget = budget.min(f64::from(MTU * seg));
        }
        budget += rate * DT as f64;
        while let Some(p) = q.front() {
            if budget < f64::from(p.size) {
                break;
            }
            budget -= f64::from(p.size);
            let p = q.pop_front().expect("front exists");
            if design == Design::Fifo {
                fifo_bytes -= u64::from(p.size);
            }
            consumed_total += u64::from(p.size);
            if p.bulk {
                if now >= WARMUP {
                    bulk_bytes += u64::from(p.size);
                }
                tcp.acks
                    .push_back((now + BASE_RTT, (p.ce, p.mtus, p.sent_at)));
            } else if now >= WARMUP {
                let own = f64::from(p.size) / rate;
                sparse_delays.push((now - p.sent_at) as f64 - own);
            }
        }
        now += DT;
    }
    if std::env::var_os("SIM_DEBUG").is_some() {
        eprintln!(
            "debug {design:?} {mbit} {bulk:?}: seg {seg_dbg} dql {} srtt {srtt} cwnd {} segments waited {} split {}",
            dql.limit(),
            tcp.cwnd,
            egress.counts().waited,
            egress.counts().split
        );
    }
    sparse_delays.sort_by(|a, b| a.total_cmp(b));
    if std::env::var_os("SIM_DEBUG").is_some() {
        let q = |f: f64| {
            sparse_delays
                .get((sparse_delays.len() as f64 * f) as usize)
                .copied()
                .unwrap_or(0.0)
                / 1e6
        };
        eprintln!(
            "   p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999)
        );
    }
    let p99 = sparse_delays
        .get(sparse_delays.len() * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    let capacity = rate * (DURATION - WARMUP) as f64;
    SimOut {
        sparse_p99_ms: p99.max(0.0) / 1e6,
        bulk_share: bulk_bytes as f64 / capacity,
    }
}

fn sim() {
    println!(
        "== simulation: bulk TCP-like flow (ECN) + sparse flow (100 B every 10 ms), virtual clock"
    );
    println!(
        "   designs: fifo = plain 256 KiB FIFO; seed = FQ-CoDel -> 256 KiB ring -> 256-entry RX ring;"
    );
    println!(
        "            vm-switch = ring drained into FQ-CoDel at the egress -> DQL-limited RX ring"
    );
    println!(
        "   bulk packets: mtu = 1514 B; tso = TSO segments sized like Linux's tcp_tso_autosize (~1 ms of\n\
         \x20  pacing rate, 2..44 MTUs); tso64k = always 64 KiB segments (worst case, not what Linux sends)"
    );
    let mut worst_p99 = 0.0f64;
    let mut worst_share = f64::MAX;
    let mut worst_64k = 0.0f64;
    let mut worst_tso = 0.0f64;
    for mbit in [50u64, 200, 1000, 4000] {
        for (design, bulk) in [
            (Design::Fifo, Bulk::Mtu),
            (Design::Seed, Bulk::Mtu),
            (Design::VmSwitch, Bulk::Mtu),
            (Design::Fifo, Bulk::TsoAuto),
            (Design::VmSwitch, Bulk::TsoAuto),
            (Design::VmSwitch, Bulk::Tso64k),
        ] {
            let r = run_sim(design, mbit, bulk);
            let name = match design {
                Design::Fifo => "fifo",
                Design::Seed => "seed",
                Design::VmSwitch => "vm-switch",
            };
            let bname = match bulk {
                Bulk::Mtu => "mtu",
                Bulk::TsoAuto => "tso",
                Bulk::Tso64k => "tso64k",
            };
            println!(
                "  {mbit:4} Mbit/s  {name:9} {bname:6}  sparse p99 added {:8.3} ms  bulk {:5.1} % of drain",
                r.sparse_p99_ms,
                r.bulk_share * 100.0
            );
            let key = if bulk == Bulk::Mtu {
                name.to_owned()
            } else {
                format!("{name}_{bname}")
            };
            println!("RESULT sim_{key}_{mbit}_p99_ms={:.3}", r.sparse_p99_ms);
            println!("RESULT sim_{key}_{mbit}_bulk_share={:.3}", r.bulk_share);
            if design == Design::VmSwitch {
                match bulk {
                    Bulk::Tso64k => worst_64k = worst_64k.max(r.sparse_p99_ms),
                    Bulk::TsoAuto => worst_tso = worst_tso.max(r.sparse_p99_ms),
                    Bulk::Mtu => {
                        worst_p99 = worst_p99.max(r.sparse_p99_ms);
                        worst_share = worst_share.min(r.bulk_share);
                    }
                }
            }
        }
    }
    println!("RESULT sim_sparse_p99_added_ms_tso64k={worst_64k:.3}");
    println!("RESULT sim_sparse_p99_added_ms_tso={worst_tso:.3}");
    println!("RESULT sim_sparse_p99_added_ms={worst_p99:.3}");
    println!("RESULT sim_bulk_share={worst_share:.3}");
}

// ---------------------------------------------------------------------------------------
// Datapath

const MAC_A: frame::Mac = [0x52, 0x54, 0, 0, 0, 0xa];
const MAC_B: frame::Mac = [0x52, 0x54, 0, 0, 0, 0xb];

fn test_frame(size: usize) -> Vec<u8> {
    let size = size.max(60);
    let total = size - 14;
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&frame::ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, frame::IPPROTO_UDP, 0, 0]);
    f.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 1).octets());
    f.extend_from_slice(&Ipv4Addr::new(10, 0, 0, 2).octets());
    let c = frame::csum_fold(frame::csum_add(0, &f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&((total - 20) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(size, 0xab);
    f
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn write_port(dir: &Path, name: &str, mac: frame::Mac, addr: &str, v6: &str) {
    let text = format!(
        "name = {name:?}\nmac = {:?}\naddresses = [{addr:?}]\nv6Addresses = [{v6:?}]\nreceiveBroadcast = false\n",
        frame::format_mac(mac)
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write port file");
    std::fs::rename(&tmp, dir.join(format!("{name}.port"))).expect("rename port file");
}

fn start_switch(bin: &Path, dir: &Path) -> Proc {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("scratch dir");
    let log = std::fs::File::create(dir.with_extension("log")).expect("switch log");
    let child = Command::new(bin)
        .arg("-d")
        .arg(dir)
        .args(
            std::env::var("VM_SWITCH_BENCH_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start vm-switch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("stats.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Proc(child)
}

fn stats(bin: &Path, dir: &Path) -> serde_json::Value {
    let out = Command::new(bin)
        .arg("--stats")
        .arg("-d")
        .arg(dir)
        .output()
        .expect("vm-switch --stats");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn wait_linked(bin: &Path, dir: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(bin, dir);
        let ok = s["ports"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["linked_peers"].as_u64() >= Some(n)));
        if ok || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const RUN: Duration = Duration::from_secs(3);

fn datapath(bin: &Path, size: usize) {
    let dir = std::env::temp_dir().join(format!("vm-switch-bench-{}", std::process::id()));
    let _sw = start_switch(bin, &dir);
    write_port(&dir, "a", MAC_A, "10.0.0.1/24", "fd00::1/64");
    write_port(&dir, "b", MAC_B, "10.0.0.2/24", "fd00::2/64");
    let opts = GuestOptions::default();
    let mut a = TestGuest::connect(&dir.join("a.sock"), opts).expect("frontend a");
    let mut b = TestGuest::connect(&dir.join("b.sock"), opts).expect("frontend b");
    wait_linked(bin, &dir, 1);
    // 65536: 64 KiB TCP segments (TSO), handed whole to b, which negotiated GUEST_TSO4.
    let (f, hdr) = if size >= 65536 {
        vm_switch::testing::tcp_segment(
            MAC_A,
            MAC_B,
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            65535 - 20 - 32,
        )
    } else {
        (test_frame(size), [0u8; 12])
    };
    let frame_bytes = f.len();
    let tso = size >= 65536;
    // With segments, count TCP payload bytes (b may get a segment whole or as MSS frames when
    // its DQL budget is short), in units of one segment's payload.
    const SEG_HDRS: usize = 14 + 20 + 32;
    let unit = if tso { frame_bytes - SEG_HDRS } else { 1 };
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let rx_frames = Arc::new(AtomicU64::new(0));
    let rx = {
        let stop = stop.clone();
        let received = received.clone();
        let rx_frames = rx_frames.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut acc = 0usize;
            while !stop.load(Ordering::Relaxed) {
                buf.clear();
                if b.poll_frames(&mut buf) == 0 {
                    buf = b.recv_timeout(Duration::from_millis(5));
                }
                for f in &buf {
                    rx_frames.fetch_add(1, Ordering::Relaxed);
                    if tso {
                        acc += f.len().saturating_sub(SEG_HDRS);
                        received.fetch_add((acc / unit) as u64, Ordering::Relaxed);
                        acc %= unit;
                    } else {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::hint::black_box(&buf);
            }
        })
    };
    let mut sent = 0u64;
    let pps = receive_rate(&received, || {
        let mut queued = 0;
        while queued < 64 && a.queue_frame_hdr(hdr, &f) {
            queued += 1;
        }
        if queued > 0 {
            a.kick_tx();
            sent += queued;
        } else {
            std::thread::yield_now();
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    if tso {
        println!(
            "  (b received {} frames for {sent} segments sent: whole or split by its DQL budget)",
            rx_frames.load(Ordering::Relaxed)
        );
    }
    let s = stats(bin, &dir);
    let pa = s["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["vm"] == "a"))
        .cloned()
        .unwrap_or_default();
    let drops = &pa["drops"];
    let from = pa["from_guest_frames"].as_f64().unwrap_or(f64::NAN);
    let ring_full = drops["ring_full"].as_f64().unwrap_or(f64::NAN);
    let share = ring_full / from;
    println!(
        "  vm-switch {size:5} B: {:6.3} Mpps ({:7.1} Mbit/s), sent {sent}, ring_full {:.1} % of frames sent, drops at a: {drops}",
        pps / 1e6,
        pps * frame_bytes as f64 * 8.0 / 1e6,
        share * 100.0
    );
    if let Some(pb) = s["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["vm"] == "b"))
    {
        let d = &pb["drops"];
        println!(
            "            at b's egress (AQM): overflow {}, codel {}, codel marks {}, max sojourn {} us",
            d["overflow"], d["codel"], pb["codel_marks"], pb["max_sojourn_us"]
        );
    }
    println!("RESULT pps_vmswitch_{size}={pps:.0}");
    println!(
        "RESULT gbps_vmswitch_{size}={:.3}",
        pps * frame_bytes as f64 * 8.0 / 1e9
    );
    println!("RESULT ring_full_share_{size}={share:.4}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Calls `send` over and over for 500 ms of warm-up and then [`RUN`]; returns how many frames
/// per second `received` counted during the run.
fn receive_rate(received: &AtomicU64, mut send: impl FnMut()) -> f64 {
    let warm = Instant::now() + Duration::from_millis(500);
    let end = warm + RUN;
    let mut start = None;
    let mut base = 0;
    loop {
        let now = Instant::now();
        if start.is_none() && now >= warm {
            start = Some(now);
            base = received.load(Ordering::Relaxed);
        }
        if now >= end {
            break;
        }
        send();
    }
    let got = received.load(Ordering::Relaxed) - base;
    got as f64 / start.map_or(RUN, |s| s.elapsed()).as_secs_f64()
}

fn sh(cmd: &str) {
    let st = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    if !st.success() {
        eprintln!("command failed: {cmd}");
    }
}

fn bridge(size: usize) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns (root needed)");
    sh(
        "ip link set lo up; sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
    );
    let t0 = vm_switch::sys::open_tap("vmswb0").expect("tap0");
    let t1 = vm_switch::sys::open_tap("vmswb1").expect("tap1");
    sh(
        "ip link add vmswbr type bridge && ip link set vmswbr up && \
        ip link set vmswb0 master vmswbr up && ip link set vmswb1 master vmswbr up",
    );
    std::thread::sleep(Duration::from_millis(200));
    let f = test_frame(size);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let rx = {
        let stop = stop.clone();
        let received = received.clone();
        let mut t1 = t1;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if !vm_switch::sys::wait_readable(t1.as_raw_fd(), 5) {
                    continue;
                }
                if let Ok(n) = t1.read(&mut buf)
                    && n == size.max(60)
                {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut t0 = t0;
    let mut sent = 0u64;
    let pps = receive_rate(&received, || {
        for _ in 0..64 {
            if t0.write(&f).is_ok() {
                sent += 1;
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    println!(
        "  bridge    {size:5} B: {:6.3} Mpps ({:7.1} Mbit/s), sent {sent}",
        pps / 1e6,
        pps * size as f64 * 8.0 / 1e6
    );
    println!("RESULT pps_bridge_{size}={pps:.0}");
}

// ---------------------------------------------------------------------------------------
// QEMU latency under load

fn percentile(v: &mut [f64], p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Parses `fping -C N -q` output: `10.0.0.2 : 0.51 0.49 - 0.60 ...` ("-" = lost).
fn fping_rtts(out: &str) -> (Vec<f64>, usize) {
    let mut rtts = Vec::new();
    let mut lost = 0;
    for line in out.lines() {
        if let Some((_, rest)) = line.split_once(" : ") {
            for tok in rest.split_whitespace() {
                match tok.parse::<f64>() {
                    Ok(v) => rtts.push(v),
                    Err(_) => lost += 1,
                }
            }
        }
    }
    (rtts, lost)
}

/// One round of load on one configuration.
#[derive(Default)]
struct Round {
    idle_rtts: Vec<f64>,
    load_rtts: Vec<f64>,
    lost: usize,
    /// iperf3's receiver average.
    mbits: f64,
    /// iperf3's per-second client intervals, Mbit/s.
    series: Vec<f64>,
    /// The host's CPU time while the iperf3 client ran.
    cpu: CpuUse,
}

/// Where the host's CPU time went while a round's iperf3 client ran, in seconds: the guests'
/// vCPU threads (QEMU's "CPU n/TCG" threads: the guests' own work), QEMU's other threads
/// (device emulation: the bridge's virtio-net and tap I/O, or vm-switch's kicks and
/// interrupts), the switch's processes (vm-switch only) and everything else on the host
/// (kernel threads such as ksoftirqd, the bench itself).
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    vcpu: f64,
    qemu_other: f64,
    switch: f64,
    rest: f64,
}

impl CpuUse {
    /// Host CPU spent outside the guests' vCPUs: what the path between them costs.
    fn outside(&self) -> f64 {
        self.qemu_other + self.switch + self.rest
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuKind {
    Vcpu,
    QemuOther,
    Switch,
    Rest,
}

/// Run time (ns, from `/proc/PID/task/TID/schedstat`) of every task on the host, by thread
/// id, with its kind: `qemu` are the guests' QEMU processes, `switch` the root of the
/// switch's process tree (its sandboxed children included).
fn cpu_snapshot(qemu: &[u32], switch: Option<u32>) -> HashMap<u32, (CpuKind, u64)> {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // Each process's parent (field 4 of /proc/PID/stat).
    let parents: HashMap<u32, u32> = pids
        .iter()
        .filter_map(|&p| Some((p, proc_stat(p)?.get(1)?.parse().ok()?)))
        .collect();
    let in_switch = |mut pid: u32| -> bool {
        let Some(root) = switch else { return false };
        for _ in 0..16 {
            if pid == root {
                return true;
            }
            match parents.get(&pid) {
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let mut out = HashMap::new();
    for &pid in &pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            else {
                continue;
            };
            let kind = if qemu.contains(&pid) {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if comm.starts_with("CPU ") && comm.trim_end().ends_with("/TCG") {
                    CpuKind::Vcpu
                } else {
                    CpuKind::QemuOther
                }
            } else if in_switch(pid) {
                CpuKind::Switch
            } else {
                CpuKind::Rest
            };
            out.insert(tid, (kind, ns));
        }
    }
    out
}

/// CPU time between two snapshots (a task that started in between counts from zero; one
/// that ended in between is lost, which for this bench is nothing but short shell commands).
fn cpu_between(
    before: &HashMap<u32, (CpuKind, u64)>,
    after: &HashMap<u32, (CpuKind, u64)>,
) -> CpuUse {
    let mut u = CpuUse::default();
    for (tid, &(kind, ns)) in after {
        let base = before.get(tid).map_or(0, |&(_, b)| b);
        let s = ns.saturating_sub(base) as f64 / 1e9;
        match kind {
            CpuKind::Vcpu => u.vcpu += s,
            CpuKind::QemuOther => u.qemu_other += s,
            CpuKind::Switch => u.switch += s,
            CpuKind::Rest => u.rest += s,
        }
    }
    u
}

impl Round {
    /// Gbit carried by the bulk connection (iperf3's receiver average over its run).
    fn gbits(&self) -> f64 {
        self.mbits * IPERF_SECS as f64 / 1000.0
    }

    /// Host CPU outside the guests per Gbit carried, in ms.
    fn host_ms_per_gbit(&self) -> f64 {
        self.cpu.outside() * 1000.0 / self.gbits()
    }

    /// The guests' own (vCPU) CPU per Gbit carried, in ms.
    fn guest_ms_per_gbit(&self) -> f64 {
        self.cpu.vcpu * 1000.0 / self.gbits()
    }

    /// The bulk connection stopped for good (three or more idle seconds after it had
    /// started, or no receiver figure at all): the guest's TCP was stuck, not slow. Both
    /// configurations show this now and then under QEMU/TCG (a lost virtqueue
    /// notification); such a round measures the stall, not the path, so it is reported
    /// and left out of the comparison.
    fn stalled(&self) -> bool {
        if !self.mbits.is_finite() || self.mbits <= 1.0 {
            return true;
        }
        let started = self.series.iter().position(|&m| m > 1.0).unwrap_or(0);
        self.series[started..]
            .windows(3)
            .any(|w| w.iter().all(|&m| m <= 1.0))
    }
}

/// Rounds of bulk + sparse load per configuration (interleaved: vm-switch, bridge, vm-switch,
/// ...; fresh guests each round); their RTT samples are pooled.
const ROUNDS: usize = 5;

/// Seconds the iperf3 client runs.
const IPERF_SECS: u32 = 20;

/// One round's measurements; `switch` is the switch's process (its CPU time is told apart).
fn measure_round(guests: &[vmsilo_testkit::Guest], switch: Option<u32>) -> Round {
    let t = Duration::from_secs(120);
    let (a, b, c) = (&guests[0], &guests[1], &guests[2]);
    // VM_SWITCH_BENCH_GUEST_SETUP: a shell command run in every guest first (experiments).
    if let Ok(cmd) = std::env::var("VM_SWITCH_BENCH_GUEST_SETUP") {
        for g in guests {
            let _ = g.run(&cmd, t);
        }
    }
    let idle = c
        .run("fping -C 100 -p 10 -q 10.0.0.2 2>&1", t)
        .map(|o| o.stdout)
        .unwrap_or_default();
    let (idle_rtts, _) = fping_rtts(&idle);
    if idle_rtts.is_empty() {
        println!(
            "  (fping printed no RTTs: {:?})",
            idle.chars().take(400).collect::<String>()
        );
    }
    b.run_ok("iperf3 -s -D", t).expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let qemu: Vec<u32> = guests.iter().map(|g| g.pid()).collect();
    let cpu_before = cpu_snapshot(&qemu, switch);
    // `--forceflush` and the done marker: the report is read only once the client has
    // exited (a block-buffered log read while it still ran came back empty).
    a.run_ok(
        &format!(
            "rm -f /tmp/iperf.done; (iperf3 -c 10.0.0.2 -t {IPERF_SECS} -i 1 -f m --forceflush > /tmp/iperf.log 2>&1; \
             echo $? > /tmp/iperf.done) &"
        ),
        t,
    )
    .expect("iperf3 client");
    std::thread::sleep(Duration::from_secs(4));
    let loaded = c
        .run("fping -C 1000 -p 10 -q 10.0.0.2 2>&1", t)
        .map(|o| o.stdout)
        .unwrap_or_default();
    let (load_rtts, lost) = fping_rtts(&loaded);
    // The client runs 20 s: 4 s before fping, ~10 s of fping, the rest here; wait for it
    // to exit (bounded: a stuck client gives no figure, not a hang).
    let _ = a.run(
        "for i in $(seq 1 600); do [ -e /tmp/iperf.done ] && break; sleep 0.1; done",
        t,
    );
    let cpu = cpu_between(&cpu_before, &cpu_snapshot(&qemu, switch));
    if std::env::var_os("VM_SWITCH_BENCH_DIAG").is_some() {
        for (name, g) in [("a", a), ("b", b)] {
            let out = g
                .run(
                    "cat /proc/net/snmp /proc/net/netstat; dmesg | tail -n 5; ps | grep iperf3; \
                     grep lan /proc/net/dev; cat /proc/net/softnet_stat; grep -i virtio /proc/interrupts",
                    t,
                )
                .map(|o| o.stdout)
                .unwrap_or_default();
            println!("  DIAG {name}: {}", diag_counters(&out));
        }
    }
    let iperf = a
        .run("cat /tmp/iperf.log", t)
        .map(|o| o.stdout)
        .unwrap_or_default();
    let rate_of = |l: &str| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.windows(2)
            .find(|p| p[1] == "Mbits/sec")
            .and_then(|p| p[0].parse::<f64>().ok())
    };
    let mbits = iperf
        .lines()
        .filter(|l| l.contains("receiver"))
        .find_map(rate_of)
        .unwrap_or(f64::NAN);
    if std::env::var_os("VM_SWITCH_BENCH_DIAG").is_some()
        && let Some(l) = iperf.lines().find(|l| l.contains("sender"))
    {
        println!("  DIAG iperf3: {}", l.trim().escape_debug());
    }
    if mbits.is_nan() || mbits <= 1.0 {
        println!(
            "  (no iperf3 result: {:?})",
            iperf
                .chars()
                .rev()
                .take(3000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
    }
    let series = iperf
        .lines()
        .filter(|l| l.contains(" sec ") && !l.contains("sender") && !l.contains("receiver"))
        .filter_map(rate_of)
        .collect();
    Round {
        idle_rtts,
        load_rtts,
        lost,
        mbits,
        series,
        cpu,
    }
}

/// The nonzero counters of interest from `/proc/net/snmp` + `/proc/net/netstat` text
/// (header line, value line per protocol), plus any other lines (dmesg, ps), escaped.
fn diag_counters(text: &str) -> String {
    const KEEP: &[&str] = &[
        "InCsumErrors",
        "InErrs",
        "RetransSegs",
        "TCPOFOQueue",
        "TCPOFODrop",
        "TCPSACKReorder",
        "TCPTSReorder",
        "TCPRenoReorder",
        "TCPLostRetransmit",
        "TCPTimeouts",
        "TCPSpuriousRTOs",
        "TCPRcvQDrop",
        "TCPZeroWindowDrop",
        "TCPBacklogDrop",
        "PruneCalled",
        "RcvPruned",
        "TCPRcvCollapsed",
        "InDiscards",
        "ReasmFails",
        "TCPDSACKRecv",
        "TCPDSACKOldSent",
        "TCPAbortOnData",
        "TCPAbortOnTimeout",
        "InTruncatedPkts",
        "InHdrErrors",
        "TCPWqueueTooBig",
        "TCPDelivered",
    ];
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if let Some((proto, keys)) = l.split_once(": ")
            && let Some(vals) = lines
                .get(i + 1)
                .and_then(|v| v.strip_prefix(&format!("{proto}: ")))
            && keys
                .split_whitespace()
                .next()
                .is_some_and(|k| k.parse::<i64>().is_err())
        {
            for (k, v) in keys.split_whitespace().zip(vals.split_whitespace()) {
                if (KEEP.contains(&k) || std::env::var_os("VM_SWITCH_BENCH_DIAG_ALL").is_some())
                    && v != "0"
                {
                    out.push(format!("{proto}.{k}={v}"));
                }
            }
            i += 2;
            continue;
        }
        if !l.trim().is_empty() {
            out.push(format!("| {l}"));
        }
        i += 1;
    }
    // All of it is guest text: escaped before it reaches the terminal.
    out.join(" ").escape_debug().to_string()
}

/// Pooled figures of a configuration's rounds.
struct Lat {
    idle_p50: f64,
    idle_p99: f64,
    load_p50: f64,
    load_p99: f64,
    lost: usize,
    mbits: f64,
}

/// Pools the rounds that did not stall ([`Round::stalled`]).
fn pool(rounds: &[Round]) -> Lat {
    let rounds: Vec<&Round> = rounds.iter().filter(|r| !r.stalled()).collect();
    let mut idle: Vec<f64> = rounds.iter().flat_map(|r| r.idle_rtts.clone()).collect();
    let mut load: Vec<f64> = rounds.iter().flat_map(|r| r.load_rtts.clone()).collect();
    let mut mbits: Vec<f64> = rounds.iter().map(|r| r.mbits).collect();
    Lat {
        idle_p50: percentile(&mut idle, 50),
        idle_p99: percentile(&mut idle, 99),
        load_p50: percentile(&mut load, 50),
        load_p99: percentile(&mut load, 99),
        lost: rounds.iter().map(|r| r.lost).sum(),
        mbits: percentile(&mut mbits, 50),
    }
}

/// min / median / max of `v`.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn boot(
    image: &vmsilo_testkit::GuestImage,
    nic: impl Fn(vmsilo_testkit::QemuBuilder, &str, &str) -> vmsilo_testkit::QemuBuilder,
) -> Vec<vmsilo_testkit::Guest> {
    let mut guests = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let mac = format!("52:54:00:00:00:{:02x}", 0xa + i);
        let b = vmsilo_testkit::QemuBuilder::new(image)
            .name(*name)
            .memory_mib(256)
            .kernel_param(format!("vmsilo.ifname=lan,{mac}"))
            .kernel_param(format!("vmsilo.addr=lan,10.0.0.{}/24", i + 1));
        guests.push(nic(b, name, &mac).spawn().expect("start guest"));
    }
    for g in &mut guests {
        g.wait_ready(Duration::from_secs(300)).expect("guest ready");
    }
    guests
}

fn print_lat(name: &str, l: &Lat) {
    println!(
        "  {name:9} idle RTT p50 {:6.2} ms p99 {:6.2} ms | loaded p50 {:6.2} ms p99 {:6.2} ms (lost {}) | bulk {:6.1} Mbit/s",
        l.idle_p50, l.idle_p99, l.load_p50, l.load_p99, l.lost, l.mbits
    );
    let key = name.replace('-', "");
    println!("RESULT e2e_{key}_idle_p99_ms={:.3}", l.idle_p99);
    println!("RESULT e2e_{key}_loaded_p99_ms={:.3}", l.load_p99);
    println!("RESULT e2e_{key}_loaded_p50_ms={:.3}", l.load_p50);
    println!("RESULT e2e_{key}_bulk_mbits={:.1}", l.mbits);
    println!(
        "RESULT e2e_{key}_added_p99_ms={:.3}",
        l.load_p99 - l.idle_p99
    );
}

fn qemu(bin: &Path) {
    println!("== latency under load, QEMU/TCG guests: iperf3 A->B bulk, fping C->B every 10 ms");
    println!(
        "   {ROUNDS} rounds per configuration, interleaved (vm-switch, bridge, vm-switch, ...), fresh guests each round"
    );
    let image = vmsilo_testkit::ImageSpec::new()
        .program("iperf3")
        .program("fping")
        // fping looks the ICMP protocols up by name.
        .file(
            "/etc/protocols",
            "icmp 1 ICMP\nipv6-icmp 58 IPv6-ICMP\ntcp 6 TCP\nudp 17 UDP\n",
            0o644,
        )
        .build()
        .expect("guest image");
    let (mut vs, mut br) = (Vec::new(), Vec::new());
    let rounds = std::env::var("VM_SWITCH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    // VM_SWITCH_BENCH_ONLY=vm-switch or =bridge runs one configuration (for experiments).
    let only = std::env::var("VM_SWITCH_BENCH_ONLY").unwrap_or_default();
    let round_line = |name: &str, round: usize, r: &Round| {
        println!(
            "    round {}: {name:9} loaded p99 {:6.2} ms, bulk {:7.1} Mbit/s{}",
            round + 1,
            percentile(&mut r.load_rtts.clone(), 99),
            r.mbits,
            if r.stalled() { " (stalled)" } else { "" }
        );
        let c = &r.cpu;
        println!(
            "             CPU while iperf3 ran: guests' vCPUs {:.1} s ({:.0} ms/Gbit); outside them {:.2} s ({:.0} ms/Gbit: QEMU's other threads {:.2} s, vm-switch {:.2} s, rest of the host {:.2} s)",
            c.vcpu,
            r.guest_ms_per_gbit(),
            c.outside(),
            r.host_ms_per_gbit(),
            c.qemu_other,
            c.switch,
            c.rest
        );
    };
    for round in 0..rounds {
        if only != "bridge" {
            let r = vmswitch_round(bin, &image);
            round_line("vm-switch", round, &r);
            vs.push(r);
        }
        if only != "vm-switch" {
            let r = bridge_round(&image, round == 0);
            round_line("bridge", round, &r);
            br.push(r);
        }
    }
    if !only.is_empty() {
        return;
    }
    let (vl, bl) = (pool(&vs), pool(&br));
    print_lat("vm-switch", &vl);
    print_lat("bridge", &bl);
    // Per-round ratios pair the rounds run one after the other; a pair with a stalled round
    // is left out (see `Round::stalled`), and so are stalled rounds from the pooled figures.
    let (vs_stalled, br_stalled) = (
        vs.iter().filter(|r| r.stalled()).count(),
        br.iter().filter(|r| r.stalled()).count(),
    );
    println!(
        "  stalled rounds (bulk TCP stuck for good, left out below): vm-switch {vs_stalled}, bridge {br_stalled}"
    );
    println!("RESULT e2e_stalled_rounds_vmswitch={vs_stalled}");
    println!("RESULT e2e_stalled_rounds_bridge={br_stalled}");
    let pairs: Vec<(&Round, &Round)> = vs
        .iter()
        .zip(&br)
        .filter(|(a, b)| !a.stalled() && !b.stalled())
        .collect();
    let bulk_ratios: Vec<f64> = pairs.iter().map(|(a, b)| a.mbits / b.mbits).collect();
    let p99_ratios: Vec<f64> = pairs
        .iter()
        .map(|(a, b)| {
            percentile(&mut a.load_rtts.clone(), 99) / percentile(&mut b.load_rtts.clone(), 99)
        })
        .collect();
    let (bmin, bmed, bmax) = spread(&bulk_ratios);
    let (pmin, pmed, pmax) = spread(&p99_ratios);
    let bulk_pooled = vl.mbits / bl.mbits;
    let p99_pooled = vl.load_p99 / bl.load_p99;
    println!(
        "  bulk vm-switch / bridge: pooled (median rounds) {bulk_pooled:.2}, per-round ratios min/median/max {bmin:.2} / {bmed:.2} / {bmax:.2}"
    );
    println!(
        "  loaded p99 vm-switch / bridge: pooled {p99_pooled:.2}, per-round ratios min/median/max {pmin:.2} / {pmed:.2} / {pmax:.2}"
    );
    // What the path between the guests costs the host, per Gbit carried: the CPU time outside
    // the guests' vCPUs. It moves with the machine's speed too, but not with how the CPU is
    // shared between guests and path; with its per-round pairs it compares the two paths
    // where their throughput ties.
    let per_gbit = |rs: &[Round], f: fn(&Round) -> f64| {
        let v: Vec<f64> = rs.iter().filter(|r| !r.stalled()).map(f).collect();
        spread(&v)
    };
    let (vh, bh) = (
        per_gbit(&vs, Round::host_ms_per_gbit),
        per_gbit(&br, Round::host_ms_per_gbit),
    );
    let (vg, bg) = (
        per_gbit(&vs, Round::guest_ms_per_gbit),
        per_gbit(&br, Round::guest_ms_per_gbit),
    );
    let host_ratios: Vec<f64> = pairs
        .iter()
        .map(|(a, b)| a.host_ms_per_gbit() / b.host_ms_per_gbit())
        .collect();
    let (hmin, hmed, hmax) = spread(&host_ratios);
    let host_ratio = vh.1 / bh.1;
    println!(
        "  host CPU outside the guests per Gbit (median, min-max over rounds): vm-switch {:.0} ms ({:.0}-{:.0}), bridge {:.0} ms ({:.0}-{:.0}); ratio {host_ratio:.2}, per-round ratios min/median/max {hmin:.2} / {hmed:.2} / {hmax:.2}",
        vh.1, vh.0, vh.2, bh.1, bh.0, bh.2
    );
    println!(
        "  guests' own (vCPU) CPU per Gbit: vm-switch {:.0} ms ({:.0}-{:.0}), bridge {:.0} ms ({:.0}-{:.0})",
        vg.1, vg.0, vg.2, bg.1, bg.0, bg.2
    );
    println!("RESULT e2e_vmswitch_host_ms_per_gbit={:.3}", vh.1);
    println!("RESULT e2e_bridge_host_ms_per_gbit={:.3}", bh.1);
    println!("RESULT e2e_vmswitch_guest_ms_per_gbit={:.3}", vg.1);
    println!("RESULT e2e_bridge_guest_ms_per_gbit={:.3}", bg.1);
    // The ratios the goals are judged on go out unrounded: the xtask rounds them once for the
    // summary line, the same way as the lines above (rounding twice turned a printed 0.93
    // into a summary 0.94).
    println!("RESULT e2e_host_cpu_ratio_vs_bridge={host_ratio}");
    println!("RESULT e2e_host_cpu_ratio_spread={hmin:.2}/{hmed:.2}/{hmax:.2}");
    println!("RESULT e2e_bulk_ratio_vs_bridge={bulk_pooled}");
    println!("RESULT e2e_bulk_ratio_spread={bmin:.2}/{bmed:.2}/{bmax:.2}");
    println!("RESULT e2e_p99_ratio_vs_bridge={p99_pooled}");
    println!("RESULT e2e_p99_ratio_spread={pmin:.2}/{pmed:.2}/{pmax:.2}");
    let out = std::env::var_os("VM_SWITCH_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("vm-switch-bench.svg");
    match std::fs::write(&out, svg(&vs, &br)) {
        Ok(()) => {
            println!("  picture: {}", out.display());
            println!("RESULT svg={}", out.display());
        }
        Err(e) => println!("  could not write {}: {e}", out.display()),
    }
    let _ = std::io::stdout().flush();
}

/// One round through vm-switch: a fresh vm-switch and three fresh guests.
fn vmswitch_round(bin: &Path, image: &vmsilo_testkit::GuestImage) -> Round {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("vm-switch-bench-q-{}", std::process::id()));
    let sw = start_switch(bin, &dir);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let mac: frame::Mac = [0x52, 0x54, 0, 0, 0, 0xa + i as u8];
        write_port(
            &dir,
            name,
            mac,
            &format!("10.0.0.{}/24", i + 1),
            &format!("fd00::{}/64", i + 1),
        );
    }
    for name in ["a", "b", "c"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join(format!("{name}.sock")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let guests = boot(image, |b, name, mac| {
        b.vhost_user_net(dir.join(format!("{name}.sock")), mac)
    });
    wait_linked(bin, &dir, 2);
    let r = measure_round(&guests, Some(sw.0.id()));
    let st = stats(bin, &dir);
    drop(guests);
    drop(sw);
    let _ = std::fs::remove_dir_all(&dir);
    for vm in ["a", "b"] {
        if let Some(p) = st["ports"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["vm"] == vm))
        {
            println!(
                "            port {vm}: from guest {} frames, to guest {} frames, segments waited {} split {}, TX held {}, queue errors {}, TX rescue irqs {} kicks {}, max sojourn {} us, CoDel marks {}, drops {}",
                p["from_guest_frames"],
                p["to_guest_frames"],
                p["segments_waited"],
                p["segments_split"],
                p["tx_held"],
                p["queue_errors"],
                p["tx_rescue_irqs"],
                p["tx_rescue_kicks"],
                p["max_sojourn_us"],
                p["codel_marks"],
                p["drops"]
            );
        }
    }
    r
}

/// The QEMU part's picture from made-up rounds: two configurations, two rounds each, one of
/// them stalled.
fn picture(out: &Path) {
    let round = |base: f64, slope: f64, stall: Option<u32>| Round {
        idle_rtts: vec![base; 10],
        load_rtts: (0..1000)
            .map(|i| base + slope * f64::from(i) / 1000.0)
            .collect(),
        lost: 0,
        mbits: 3000.0,
        series: (0..20u32)
            .map(|i| {
                if stall.is_some_and(|s| i >= s) {
                    0.0
                } else {
                    2800.0 + 40.0 * f64::from(i % 5)
                }
            })
            .collect(),
        cpu: CpuUse::default(),
    };
    let vs = [round(0.6, 2.0, None), round(0.7, 1.8, None)];
    let br = [round(0.7, 2.2, None), round(0.8, 2.0, Some(8))];
    std::fs::write(out, svg(&vs, &br)).expect("write the picture");
    println!("picture: {}", out.display());
}

/// The sparse flow's loaded RTT CDF and the bulk throughput over time, vm-switch beside the
/// bridge, as an SVG drawn with `plotters` (two panels, like flent's plots).
fn svg(vs: &[Round], br: &[Round]) -> String {
    let mut out = String::new();
    if let Err(e) = draw_svg(&mut out, vs, br) {
        println!("  (could not draw the picture: {e})");
    }
    out
}

/// Draws the two panels with `plotters` (SVG backend, no font files: SVG text is laid out by
/// the viewer): the sparse flow's pooled loaded-RTT CDF, and iperf3's per-second throughput of
/// every round, vm-switch red, bridge blue.
fn draw_svg(
    out: &mut String,
    vs: &[Round],
    br: &[Round],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let mut all: Vec<f64> = vs
        .iter()
        .chain(br)
        .flat_map(|r| r.load_rtts.clone())
        .collect();
    let xmax = (percentile(&mut all, 99) * 1.5).max(1.0);
    let ymax = vs
        .iter()
        .chain(br)
        .flat_map(|r| r.series.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.1;
    let tmax = vs
        .iter()
        .chain(br)
        .map(|r| r.series.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let configs = [
        ("vm-switch", RGBColor(0xd6, 0x27, 0x28), vs),
        ("bridge", RGBColor(0x1f, 0x77, 0xb4), br),
    ];
    let root = SVGBackend::with_string(out, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);

    let mut cdf = ChartBuilder::on(&left)
        .caption(
            "sparse flow (fping C->B, 10 ms) RTT under load: CDF",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..1f64)?;
    cdf.configure_mesh()
        .x_desc("RTT (ms)")
        .y_desc("fraction of pings")
        .draw()?;
    for (name, color, rounds) in configs {
        let mut rtts: Vec<f64> = rounds.iter().flat_map(|r| r.load_rtts.clone()).collect();
        rtts.sort_by(|a, b| a.total_cmp(b));
        let n = rtts.len().max(1) as f64;
        cdf.draw_series(LineSeries::new(
            rtts.iter()
                .enumerate()
                .map(|(i, v)| (v.min(xmax), (i as f64 + 1.0) / n)),
            color.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;

    let mut tput = ChartBuilder::on(&right)
        .caption(
            "bulk (iperf3 A->B) throughput over time, every round",
            ("sans-serif", 15),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
    tput.configure_mesh()
        .x_desc("time (s)")
        .y_desc("Mbit/s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (name, color, rounds) in configs {
        for (k, r) in rounds.iter().enumerate() {
            let series = tput.draw_series(LineSeries::new(
                r.series
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64 + 1.0, *v)),
                color.mix(0.7).stroke_width(1),
            ))?;
            if k == 0 {
                series.label(name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
    }
    tput.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One round on a Linux bridge + taps (fq_codel where the host kernel has it), with the same
/// virtio-net device as vm-switch's guests (vectors=0, which vhost-user-net needs under TCG).
/// The taps offer TSO/GSO as QEMU sets them up.
fn bridge_round(image: &vmsilo_testkit::GuestImage, announce: bool) -> Round {
    sh(
        "ip link del vmswqbr 2>/dev/null; ip link add vmswqbr type bridge && ip link set vmswqbr up",
    );
    let guests = boot(image, |b, name, mac| {
        b.tap_intx(format!("vmswq{name}"), mac)
    });
    let mut qdisc = "fq_codel";
    for name in ["a", "b", "c"] {
        sh(&format!("ip link set vmswq{name} master vmswqbr up"));
        let ok = Command::new("tc")
            .args([
                "qdisc",
                "replace",
                "dev",
                &format!("vmswq{name}"),
                "root",
                "fq_codel",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            qdisc = "the kernel's default qdisc (fq_codel is not available on this host kernel)";
        }
    }
    if announce {
        println!(
            "  bridge baseline: Linux bridge + taps with {qdisc}, virtio-net with vectors=0 (INTx), as vm-switch's guests"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let r = measure_round(&guests, None);
    drop(guests);
    sh("ip link del vmswqbr");
    r
}
