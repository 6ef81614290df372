//! `cargo xtask bench vm-run [ROUNDS] [COLD-STARTS]`: how long `vm-run` takes, and how much of
//! it is vmsilo's host side.
//!
//! Sets up what the demo does (a QEMU/TCG VM `bench` with the test guest and its agent, the
//! command service under `systemd-socket-activate`, vmsilo built in release mode), then:
//!
//! - **cold start**: `vm-run -w bench true` on a stopped VM, wall time, `COLD-STARTS` times
//!   (default 3; the guest is powered off with `vm-run bench poweroff -f` in between);
//! - **warm**, `ROUNDS` rounds (default 50) after a warm-up, each measuring, interleaved:
//!   - `vm-run -w bench true` as a process (spawn to exit): what a user waits for;
//!   - the baseline: the same request straight to the agent over the VM's hybrid-vsock socket
//!     (`CONNECT 5000`), in process (`crates/vmsilo/examples/vm_run_probe.rs`): the time in
//!     the guest and its vsock transport, no vmsilo host component;
//!   - the same request through the command socket in process (status exchange + splice);
//!   - spawning `/bin/true`: what any process start costs on this host.
//!
//! The guest under TCG takes milliseconds per command, with variance larger than the host's
//! share, so the same three measurements are repeated with the agent on this host (the
//! release `vmsilo-guest --unix`, behind a stand-in for vhost-device-vsock that both paths
//! use alike; a second command service for a VM `local` that is never started). There,
//! host-side overhead = p50(vm-run) − p50(direct): the command service, the splice and the
//! vm-run process itself; the service alone = p50(in process) − p50(direct). Target: host-side
//! overhead under 2 ms at p50. Ends with one `key=value` line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::demo::{Sandbox, build_vmsilo, guest_image, is_root};
use crate::util::section;

const TARGET_MS: f64 = 2.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Series {
    name: &'static str,
    values: Vec<f64>,
}

impl Series {
    fn new(name: &'static str) -> Series {
        Series {
            name,
            values: Vec::new(),
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn p(&self, q: f64) -> f64 {
        pct(&self.sorted(), q)
    }

    fn row(&self) {
        let v = self.sorted();
        println!(
            "{:44} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            self.name,
            pct(&v, 0.5),
            pct(&v, 0.9),
            pct(&v, 0.99),
            v.first().copied().unwrap_or(f64::NAN)
        );
    }
}

/// Runs `vm-run ARGS` and returns its wall time; fails unless it exits 0.
fn vm_run(sb: &Sandbox, args: &[&str]) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(&sb.vm_run)
        .arg("--run-dir")
        .arg(sb.run_dir())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running vm-run")?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "vm-run {} failed with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

fn wait_state(sb: &Sandbox, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if sb.state()? == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("VM {} did not become {want}", sb.vm);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills a helper process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_socket(path: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The measurements of one setup.
struct Warm {
    spawn: Series,
    direct: Series,
    service: Series,
    ready: Series,
    vm_run: Series,
}

impl Warm {
    fn table(&self, title: &str) {
        println!("\n{title}");
        println!(
            "{:44} {:>8} {:>8} {:>8} {:>8}",
            "(ms)", "p50", "p90", "p99", "min"
        );
        for s in [
            &self.spawn,
            &self.direct,
            &self.service,
            &self.ready,
            &self.vm_run,
        ] {
            s.row();
        }
    }

    /// p50(vm-run) − p50(direct), p50(in process) − p50(direct).
    fn overheads(&self) -> (f64, f64) {
        (
            self.vm_run.p(0.5) - self.direct.p(0.5),
            self.service.p(0.5) - self.direct.p(0.5),
        )
    }
}

/// `rounds` interleaved rounds of: the probe (direct, command socket), vm-run, /bin/true.
fn measure(sb: &Sandbox, probe_bin: &Path, rounds: usize) -> Result<Warm> {
    let args = ["-w", sb.vm.as_str(), "true"];
    for _ in 0..5 {
        vm_run(sb, &args)?;
        probe(probe_bin, sb)?;
    }
    let mut w = Warm {
        spawn: Series::new("spawn /bin/true on the host (baseline)"),
        direct: Series::new("direct to the agent, in process (baseline)"),
        service: Series::new("through the command socket, in process"),
        ready: Series::new("  of which: connect to Ready"),
        vm_run: Series::new("vm-run -w VM true (process)"),
    };
    for _ in 0..rounds {
        let (d, s, r) = probe(probe_bin, sb)?;
        w.direct.values.push(d);
        w.service.values.push(s);
        w.ready.values.push(r);
        w.vm_run.values.push(ms(vm_run(sb, &args)?));
        let t = Instant::now();
        let st = Command::new("/bin/true").status().context("/bin/true")?;
        if !st.success() {
            bail!("/bin/true failed");
        }
        w.spawn.values.push(ms(t.elapsed()));
    }
    Ok(w)
}

/// One round of the in-process probe: (direct, service, connect-to-Ready) in ms.
fn probe(probe: &Path, sb: &Sandbox) -> Result<(f64, f64, f64)> {
    let hybrid = sb.run_dir().join(format!("{}-vsock.socket", sb.vm));
    let out = Command::new(probe)
        .arg(sb.command_socket())
        .arg(&hybrid)
        .arg("1")
        .output()
        .context("running vm_run_probe")?;
    if !out.status.success() {
        bail!(
            "vm_run_probe failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    match v.as_slice() {
        [d, s, r] => Ok((*d, *s, *r)),
        _ => bail!("vm_run_probe printed {text:?}"),
    }
}

/// The release guest agent, for the host-only measurements.
fn build_agent() -> Result<PathBuf> {
    crate::util::sh(crate::util::cargo().args([
        "build",
        "--release",
        "-p",
        "vmsilo-guest",
        "--bin",
        "vmsilo-guest",
    ]))
    .context("building vmsilo-guest")?;
    Ok(crate::util::target_dir().join("release/vmsilo-guest"))
}

pub fn run(args: &[String]) -> Result<()> {
    let rounds: usize = match args.first() {
        Some(r) => r.parse().context("ROUNDS must be a number")?,
        None => 50,
    };
    let colds: usize = match args.get(1) {
        Some(c) => c.parse().context("COLD-STARTS must be a number")?,
        None => 3,
    };
    if !is_root() {
        bail!("cargo xtask bench vm-run must run as root (vm-service runs QEMU as root)");
    }
    section("bench vm-run: building (release) and the guest image");
    let vmsilo = build_vmsilo(true, &["vm_run_probe"])?;
    let probe_bin: PathBuf = vmsilo
        .parent()
        .map(|d| d.join("examples/vm_run_probe"))
        .context("release directory")?;
    let image = guest_image()?;
    let mut sb = Sandbox::create("bench", "bench", &vmsilo, &image, false)?;
    sb.activate(None)?;

    section(&format!("bench vm-run: {colds} cold starts"));
    let mut cold = Series::new("cold start: vm-run -w bench true (stopped VM)");
    for i in 0..colds {
        if i > 0 {
            vm_run(&sb, &["bench", "poweroff", "-f"])?;
            wait_state(&sb, "stopped")?;
        }
        let t = vm_run(&sb, &["-w", "bench", "true"])?;
        eprintln!("cold start {}: {:.2} s", i + 1, t.as_secs_f64());
        cold.values.push(ms(t));
    }

    section(&format!("bench vm-run: {rounds} warm rounds in the VM"));
    let vm = measure(&sb, &probe_bin, rounds)?;
    sb.stop_activator(Duration::from_secs(90));

    section(&format!(
        "bench vm-run: {rounds} warm rounds with the agent on this host"
    ));
    let agent = build_agent()?;
    let mut local = Sandbox::create("bench-local", "local", &vmsilo, &image, false)?;
    local.activate(None)?;
    let agent_socket = local.dir.join("agent.sock");
    let _agent = Killed(
        Command::new(&agent)
            .arg("--unix")
            .arg(&agent_socket)
            .args(["--idle-shutdown", "off"])
            .stderr(Stdio::null())
            .spawn()
            .context("starting vmsilo-guest --unix")?,
    );
    wait_socket(&agent_socket)?;
    let front = local.run_dir().join("local-vsock.socket");
    let _front = Killed(
        Command::new(&probe_bin)
            .arg("front")
            .arg(&front)
            .arg(&agent_socket)
            .spawn()
            .context("starting the vsock stand-in")?,
    );
    wait_socket(&front)?;
    let host = measure(&local, &probe_bin, rounds)?;

    vm.table("in the VM (QEMU/TCG guest, hybrid vsock through vhost-device-vsock):");
    host.table("host only (the agent on this host, no VM):");
    let (host_overhead, service_overhead) = host.overheads();
    let (vm_overhead, _) = vm.overheads();
    println!(
        "\nhost-side overhead at p50 (vm-run - direct, host only): {host_overhead:.2} ms, of \
         which the command service and splice {service_overhead:.2} ms (connect to Ready \
         {:.2} ms); the rest is the vm-run process itself: starting it, parsing, its threads \
         (spawning /bin/true alone: {:.2} ms)",
        host.ready.p(0.5),
        host.spawn.p(0.5)
    );
    println!(
        "in the VM: vm-run {:.2} ms at p50, direct {:.2} ms (time in the guest and its vsock \
         transport); the difference there ({vm_overhead:.2} ms) is within the guest's noise",
        vm.vm_run.p(0.5),
        vm.direct.p(0.5)
    );
    let cold_sorted = cold.sorted();
    println!(
        "cold start (stopped VM to command done, QEMU/TCG): {} (median {:.2} s)",
        cold.values
            .iter()
            .map(|v| format!("{:.2} s", v / 1000.0))
            .collect::<Vec<_>>()
            .join(", "),
        pct(&cold_sorted, 0.5) / 1000.0
    );
    println!(
        "target: host-side overhead under {TARGET_MS} ms at p50: {}",
        if host_overhead < TARGET_MS {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "warm_p50_ms={:.2} warm_p99_ms={:.2} direct_p50_ms={:.2} direct_p99_ms={:.2} \
         host_overhead_p50_ms={host_overhead:.2} service_overhead_p50_ms={service_overhead:.2} \
         ready_p50_ms={:.2} local_vm_run_p50_ms={:.2} local_direct_p50_ms={:.2} \
         spawn_true_p50_ms={:.2} host_overhead_minus_spawn_p50_ms={:.2} \
         vm_overhead_p50_ms={vm_overhead:.2} cold_start_s={:.2} \
         rounds={rounds} cold_starts={colds} target_ms={TARGET_MS}",
        vm.vm_run.p(0.5),
        vm.vm_run.p(0.99),
        vm.direct.p(0.5),
        vm.direct.p(0.99),
        host.ready.p(0.5),
        host.vm_run.p(0.5),
        host.direct.p(0.5),
        host.spawn.p(0.5),
        host_overhead - host.spawn.p(0.5),
        pct(&cold_sorted, 0.5) / 1000.0
    );
    Ok(())
}
