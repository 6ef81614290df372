//! `cargo xtask bench gate [ROUNDS] [FRAMES] [--gate PATH]`: what vmsilo-gate costs a Wayland
//! client, against the same client connected straight to the compositor in the same run.
//!
//! Runs weston 10 headless (pixman) and one real `vmsilo-gate` (release build, or `--gate
//! PATH`) for a VM `bench` in front of it, then `ROUNDS` rounds (default 5), each running
//! `vmsilo-test-client --bench FRAMES` (default 300) once straight to weston and once through
//! the gate, in alternating order. The client draws a 200x150 shm window and times each frame
//! (commit → `wl_callback.done`) and then as many `wl_display.sync` round trips.
//!
//! Figures: frames per second and the per-frame round trip's p50/p99 for both paths (the
//! median over the rounds), the p99 the gate adds, the fps ratio, the sync round trip (the
//! proxy's own latency, without the compositor's repaint cycle), and the gate's RSS for the
//! VM: the `VmRSS` of the gate and of its per-client processes with one client connected.
//!
//! Goals: added p99 < 0.5 ms, fps ratio ≥ 0.95, RSS < 8 MiB. Ends with one `key=value` line.
//!
//! Reading the figures: weston headless repaints about 40 times a second, so a frame round trip
//! is about 25 ms, nearly all of it waiting for the next repaint, and its p99 varies by a few
//! ms from run to run of the *same* path on a loaded machine. The median over rounds damps
//! that; the sync round trip shows the proxy's own latency without the repaint cycle. A gate
//! that made commits miss repaints would show as a lower fps and a p99 one repaint higher.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vmsilo_testkit::ScratchDir;
use vmsilo_testkit::wayland::{Compositor, Weston, WestonOptions};

use crate::util::{cargo, section, sh};

const GOAL_P99_ADDED_MS: f64 = 0.5;
const GOAL_FPS_RATIO: f64 = 0.95;
const GOAL_RSS_KIB: u64 = 8 * 1024;
/// The bench VM's colour (banking's).
const COLOR: &str = "#2ecc71";
/// Longest a gate may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The figures of one `vmsilo-test-client --bench` run.
#[derive(Debug, Clone, Copy)]
struct Run {
    fps: f64,
    frame_p50_us: f64,
    frame_p99_us: f64,
    sync_p50_us: f64,
    sync_p99_us: f64,
}

fn parse_run(line: &str) -> Option<Run> {
    let kv: BTreeMap<&str, f64> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    Some(Run {
        fps: *kv.get("fps")?,
        frame_p50_us: *kv.get("frame_p50_us")?,
        frame_p99_us: *kv.get("frame_p99_us")?,
        sync_p50_us: *kv.get("sync_p50_us")?,
        sync_p99_us: *kv.get("sync_p99_us")?,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the test client with `display` as `WAYLAND_DISPLAY`, bounded in time.
fn client_bench(weston: &Weston, client: &Path, display: &str, frames: u32) -> Result<Run> {
    let mut child = weston
        .command(client)
        .env("WAYLAND_DISPLAY", display)
        .args(["--bench", &frames.to_string(), "--size", "200x150"])
        .args(["--color", "#808080", "--title", "bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", client.display()))?;
    // 300 frames take about 10 s at weston headless's pace; be generous on a loaded machine.
    let limit = Duration::from_secs(60 + u64::from(frames) / 5);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "vmsilo-test-client --bench {frames} on {display} did not finish within {} s",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_string(&mut out)?;
    }
    if let Some(mut s) = child.stderr.take() {
        s.read_to_string(&mut err)?;
    }
    match out.lines().rev().find_map(parse_run) {
        Some(r) if status.success() => Ok(r),
        _ => bail!(
            "vmsilo-test-client --bench on {display} failed ({status}):\n{out}{err}\nweston log:\n{}",
            tail(&weston.log(), 20)
        ),
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts the gate in front of `weston` and waits for its ready line.
fn start_gate(gate: &Path, weston: &Weston, dir: &Path) -> Result<(Kill, PathBuf, PathBuf)> {
    let listen = dir.join("gate.sock");
    let log = dir.join("gate.log");
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = weston
        .command(gate)
        .args(["--vm", "bench", "--color", COLOR])
        .arg("--listen")
        .arg(&listen)
        .arg("--compositor")
        .arg(weston.socket_path())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", gate.display()))?;
    let mut gate_proc = Kill(child);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("listening on") {
            return Ok((gate_proc, listen, log));
        }
        if let Some(status) = gate_proc.0.try_wait()? {
            bail!(
                "vmsilo-gate is not functional: it exited with {status} before listening \
                 (expected the line `vmsilo-gate: VM \"bench\": listening on {}`); its output:\n{}",
                listen.display(),
                tail(&text, 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "vmsilo-gate printed no `listening on` line within {} s; its output:\n{}",
                READY_TIMEOUT.as_secs(),
                tail(&text, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `RssAnon`, `RssFile` and `RssShmem` of `pid` in KiB (what the `VmRSS` is made of).
fn rss_parts(pid: u32) -> Option<[u64; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some([field("RssAnon:")?, field("RssFile:")?, field("RssShmem:")?])
}

/// Every descendant of `pid` (from each process's `PPid` in /proc).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            if let Some(pp) = status
                .lines()
                .find(|l| l.starts_with("PPid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok())
            {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(c, pp) in &parent_of {
            if pp == p && !out.contains(&c) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// The gate's RSS with one client showing a window through it: (parent, children, count).
fn gate_rss(
    weston: &Weston,
    client: &Path,
    gate_pid: u32,
    listen: &Path,
) -> Result<(u64, u64, usize)> {
    let mut child = weston
        .command(client)
        .env("WAYLAND_DISPLAY", listen)
        .args([
            "--size",
            "200x150",
            "--color",
            "#808080",
            "--report-ms",
            "200",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the test client for the RSS measurement")?;
    let mut stdout = child.stdout.take().context("client stdout")?;
    let client_proc = Kill(child);
    // Wait until frames are flowing (a few reports), then read /proc.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.matches("frames=").count() >= 5 {
                let _ = tx.send(());
                break;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .context("the client showed no frames through the gate within 60 s")?;
    let parent = rss_kib(gate_pid).context("reading the gate's VmRSS")?;
    let kids = descendants(gate_pid);
    for (what, pid) in
        std::iter::once(("parent", gate_pid)).chain(kids.iter().map(|&p| ("child", p)))
    {
        if let Some([anon, file, shmem]) = rss_parts(pid) {
            println!(
                "gate {what} {pid}: RssAnon {anon} KiB, RssFile {file} KiB, RssShmem {shmem} KiB"
            );
        }
    }
    let children: u64 = kids.iter().filter_map(|&p| rss_kib(p)).sum();
    drop(client_proc);
    Ok((parent, children, kids.len()))
}

struct Args {
    rounds: u32,
    frames: u32,
    gate: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut out = Args {
        rounds: 5,
        frames: 300,
        gate: None,
    };
    let mut positional = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--gate" {
            out.gate = Some(PathBuf::from(it.next().context("--gate needs a path")?));
            continue;
        }
        let n: u32 = a.parse().with_context(|| {
            format!("usage: bench gate [ROUNDS] [FRAMES] [--gate PATH]; got {a:?}")
        })?;
        match positional {
            0 => out.rounds = n.max(1),
            1 => out.frames = n.max(10),
            _ => bail!("usage: bench gate [ROUNDS] [FRAMES] [--gate PATH]"),
        }
        positional += 1;
    }
    Ok(out)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

pub fn run(args: &[String]) -> Result<()> {
    let args = parse_args(args)?;
    section("bench gate: building vmsilo-gate and vmsilo-test-client (release)");
    let mut build = cargo();
    build.args(["build", "--release", "-p", "vmsilo-test-client"]);
    if args.gate.is_none() {
        build.args(["-p", "vmsilo-gate"]);
    }
    sh(&mut build)?;
    let target = crate::util::target_dir().join("release");
    let client = target.join("vmsilo-test-client");
    let gate = args
        .gate
        .clone()
        .unwrap_or_else(|| target.join("vmsilo-gate"));

    section("bench gate: weston headless and the gate");
    let weston = Weston::start(WestonOptions::default()).context("starting weston headless")?;
    let dir = ScratchDir::new("bench-gate").context("scratch directory")?;
    let (gate_proc, listen, gate_log) = start_gate(&gate, &weston, dir.path())?;
    let listen_str = listen.to_string_lossy().into_owned();
    println!(
        "weston {} ({}x{}), gate {} listening on {}",
        weston.socket_path().display(),
        1024,
        768,
        gate.display(),
        listen.display()
    );

    section(&format!(
        "bench gate: {} rounds of {} frames, direct and through the gate",
        args.rounds, args.frames
    ));
    let (mut direct, mut gated) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let order: [bool; 2] = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for through_gate in order {
            let display = if through_gate {
                listen_str.as_str()
            } else {
                weston.display()
            };
            let r = client_bench(&weston, &client, display, args.frames).with_context(|| {
                format!(
                    "gate log:\n{}",
                    tail(&std::fs::read_to_string(&gate_log).unwrap_or_default(), 30)
                )
            })?;
            println!(
                "round {round} {:7}: fps {:6.2}  frame p50 {:6.2} ms p99 {:6.2} ms  sync p50 {:5} us p99 {:5} us",
                if through_gate { "gate" } else { "direct" },
                r.fps,
                r.frame_p50_us / 1000.0,
                r.frame_p99_us / 1000.0,
                r.sync_p50_us,
                r.sync_p99_us
            );
            if through_gate {
                gated.push(r);
            } else {
                direct.push(r);
            }
        }
    }
    let m = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
    let (d_fps, g_fps) = (m(&direct, |r| r.fps), m(&gated, |r| r.fps));
    let (d_p50, g_p50) = (
        m(&direct, |r| r.frame_p50_us),
        m(&gated, |r| r.frame_p50_us),
    );
    let (d_p99, g_p99) = (
        m(&direct, |r| r.frame_p99_us),
        m(&gated, |r| r.frame_p99_us),
    );
    let (d_s50, g_s50) = (m(&direct, |r| r.sync_p50_us), m(&gated, |r| r.sync_p50_us));
    let (d_s99, g_s99) = (m(&direct, |r| r.sync_p99_us), m(&gated, |r| r.sync_p99_us));
    let added_p99_ms = (g_p99 - d_p99) / 1000.0;
    let sync_added_p99_ms = (g_s99 - d_s99) / 1000.0;
    let fps_ratio = g_fps / d_fps;

    section("bench gate: RSS of the gate with one client connected");
    let (parent_kib, children_kib, nchildren) =
        gate_rss(&weston, &client, gate_proc.0.id(), &listen)?;
    let rss_kib = parent_kib + children_kib;
    println!(
        "gate RSS: {parent_kib} KiB (parent) + {children_kib} KiB ({nchildren} per-client process{}) = {rss_kib} KiB",
        if nchildren == 1 { "" } else { "es" }
    );
    drop(gate_proc);

    println!();
    println!("median over {} rounds       direct      gate", args.rounds);
    println!("fps                       {d_fps:8.2}  {g_fps:8.2}");
    println!(
        "frame round trip p50 ms   {:8.3}  {:8.3}",
        d_p50 / 1000.0,
        g_p50 / 1000.0
    );
    println!(
        "frame round trip p99 ms   {:8.3}  {:8.3}",
        d_p99 / 1000.0,
        g_p99 / 1000.0
    );
    println!(
        "sync round trip p50 ms    {:8.3}  {:8.3}",
        d_s50 / 1000.0,
        g_s50 / 1000.0
    );
    println!(
        "sync round trip p99 ms    {:8.3}  {:8.3}",
        d_s99 / 1000.0,
        g_s99 / 1000.0
    );
    println!(
        "  goal: added frame p99 < {GOAL_P99_ADDED_MS} ms: {added_p99_ms:.3} ms -> {} (sync p99 added {sync_added_p99_ms:.3} ms)",
        met(added_p99_ms < GOAL_P99_ADDED_MS)
    );
    println!(
        "  goal: fps ratio >= {GOAL_FPS_RATIO}: {fps_ratio:.3} -> {}",
        met(fps_ratio >= GOAL_FPS_RATIO)
    );
    println!(
        "  goal: RSS < {GOAL_RSS_KIB} KiB: {rss_kib} KiB -> {}",
        met(rss_kib < GOAL_RSS_KIB)
    );
    println!(
        "gate_p99_added_ms={added_p99_ms:.3} gate_fps_ratio={fps_ratio:.3} gate_rss_kib={rss_kib} \
         gate_sync_p99_added_ms={sync_added_p99_ms:.3} direct_fps={d_fps:.2} gate_fps={g_fps:.2} \
         direct_frame_p99_ms={:.3} gate_frame_p99_ms={:.3} direct_sync_p99_us={d_s99:.0} \
         gate_sync_p99_us={g_s99:.0} gate_rss_parent_kib={parent_kib} gate_rss_children_kib={children_kib}",
        d_p99 / 1000.0,
        g_p99 / 1000.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parses_the_client_line_and_medians() {
        let r = parse_run(
            "frames=120 fps=38.83 frame_p50_us=25208 frame_p99_us=29881 sync_p50_us=10 sync_p99_us=27",
        )
        .unwrap();
        assert_eq!(
            (r.fps, r.frame_p99_us, r.sync_p50_us),
            (38.83, 29881.0, 10.0)
        );
        assert!(parse_run("frames=3").is_none());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn test_args() {
        let a = parse_args(&["3".into(), "50".into(), "--gate".into(), "/x".into()]).unwrap();
        assert_eq!((a.rounds, a.frames), (3, 50));
        assert_eq!(a.gate, Some(PathBuf::from("/x")));
        assert!(parse_args(&["x".into()]).is_err());
    }
}
