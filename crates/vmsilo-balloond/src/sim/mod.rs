//! The policy simulator behind `cargo xtask bench balloond`: the host/guest memory model of
//! [`model`], the evaluation scenarios of `docs/vmsilo-balloond.md` ("The simulator") in [`scenarios`], and the metrics
//! M1–M9 computed for every (scenario, policy) run. The `vmsilo` and `chromeos` policies are
//! the daemon's policy core, unchanged; `qmemman` and `mom` are the baselines of [`policies`].

pub mod model;
pub mod policies;
pub mod scenarios;

use std::collections::{BTreeMap, BTreeSet};

use crate::host::HostSample;
use model::{Guest, Host};
use policies::{SimPolicy, VmView};

const MIB: f64 = 1048576.0;
/// Simulation step (s).
pub const DT: f64 = 0.1;
/// Sampling period for tick-based metrics (the daemon's default poll interval, s).
pub const SAMPLE_TICK: f64 = 2.0;

/// Which host figure the policy is given as "available".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// `/proc/meminfo` `MemAvailable`.
    MemAvailable,
    /// ChromeOS resourced's formula (counts ¼ of swappable anon).
    ChromeOs,
}

/// The simulated machine.
#[derive(Debug, Clone)]
pub struct World {
    /// The host.
    pub host: Host,
    /// The running guests.
    pub guests: Vec<Guest>,
}

impl World {
    /// A guest by name.
    pub fn guest(&mut self, name: &str) -> &mut Guest {
        let i = self
            .guests
            .iter()
            .position(|g| g.name == name)
            .unwrap_or_else(|| panic!("scenario bug: no guest {name}"));
        &mut self.guests[i]
    }

    fn rss(&self) -> f64 {
        self.guests.iter().map(Guest::rss).sum()
    }

    /// Host `MemAvailable` (MiB).
    pub fn host_available(&self) -> f64 {
        self.host.mem_available(self.rss())
    }
}

/// What a scenario can ask of the runner besides changing the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A VM appeared (the scenario pushed it to `world.guests`).
    Added(String),
    /// A VM went away (the scenario removed it).
    Removed(String),
    /// The daemon restarts.
    RestartDaemon,
}

type Setup = Box<dyn Fn() -> World>;
type Drive = Box<dyn Fn(&mut World, f64, &mut Vec<Control>)>;

/// One scenario.
pub struct Scenario {
    /// Reference number (1–16).
    pub id: u32,
    /// Variant label (e.g. `N=3`).
    pub variant: String,
    /// What it tests.
    pub title: &'static str,
    /// Length (s).
    pub duration: f64,
    /// Inputs are constant from here on (for oscillation and settling).
    pub steady_from: Option<f64>,
    /// Time of the step whose settling M6 measures.
    pub step_at: Option<f64>,
    /// Builds the initial world.
    pub setup: Setup,
    /// Called every step before the world advances.
    pub drive: Drive,
    /// Policies to run (labels understood by [`make_policy`]).
    pub policies: Vec<&'static str>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("id", &self.id)
            .field("variant", &self.variant)
            .finish_non_exhaustive()
    }
}

/// Builds a policy by label: `vmsilo`, `vmsilo-shared`, `vmsilo-available`,
/// `vmsilo-cros-host`, `vmsilo-bias=<MiB>`, `chromeos`, `qmemman`, `mom`.
pub fn make_policy(label: &str) -> (Box<dyn SimPolicy>, HostMode) {
    use crate::balancer::{BalancerParams, MultiVmMode};
    use crate::policy::GuestAvailableSource;
    let default = BalancerParams::default();
    let core =
        |p: BalancerParams| -> Box<dyn SimPolicy> { Box::new(policies::CorePolicy::new(label, p)) };
    match label {
        "vmsilo" => (core(default), HostMode::MemAvailable),
        "vmsilo-shared" => (
            core(BalancerParams {
                mode: MultiVmMode::Shared,
                ..default
            }),
            HostMode::MemAvailable,
        ),
        "vmsilo-available" => {
            let mut p = default;
            p.policy.guest_available = GuestAvailableSource::Available;
            (core(p), HostMode::MemAvailable)
        }
        "vmsilo-cros-host" => (core(default), HostMode::ChromeOs),
        "chromeos" => (
            core(BalancerParams::chromeos_faithful(0)),
            HostMode::MemAvailable,
        ),
        "qmemman" => (
            Box::new(policies::Qmemman::default()),
            HostMode::MemAvailable,
        ),
        "mom" => (Box::new(policies::Mom::default()), HostMode::MemAvailable),
        other => {
            let bias: u64 = other
                .strip_prefix("vmsilo-bias=")
                .and_then(|b| b.parse().ok())
                .unwrap_or_else(|| panic!("unknown policy label {other}"));
            let mut p = default;
            p.policy.guest_bias = bias << 20;
            (core(p), HostMode::MemAvailable)
        }
    }
}

/// Metrics of one run (M1–M9, defined in `docs/vmsilo-balloond.md`, "The simulator").
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// M1: lowest host MemAvailable (MiB).
    pub min_host_avail: f64,
    /// M1: ∫ max(0, critical − available) dt (MiB·s).
    pub host_deficit: f64,
    /// Samples (every 2 s) with host available below critical.
    pub below_crit_ticks: u64,
    /// Longest run of consecutive such samples.
    pub below_crit_run: u64,
    /// M2: guest OOM kills.
    pub guest_oom: u64,
    /// M2: deflate-on-OOM events.
    pub doo_events: u64,
    /// Host OOM kills.
    pub host_oom: u64,
    /// M3: guest-seconds with free + cache below min(400 MiB, 20 % RAM).
    pub guest_low_s: f64,
    /// M4: Adjust commands.
    pub adjusts: u64,
    /// M4: bytes moved (MiB).
    pub moved: f64,
    /// M5: largest per-VM count of delta sign changes per minute in the steady window.
    pub flips_per_min: f64,
    /// M5: sign changes ≥ 2/min in the steady window.
    pub oscillating: bool,
    /// M6: settling time after the step (s), `None` without a step or when never settled.
    pub settle_s: Option<f64>,
    /// M7: mean |guest headroom − host headroom| (MiB).
    pub imbalance: f64,
    /// M7: mean spread of guest headroom across VMs (MiB).
    pub spread: f64,
    /// M8: stall back-offs.
    pub stalls: u64,
    /// M8: back-offs while the guest was not stuck (nor deflating on OOM) in the last 5 s.
    pub false_stalls: u64,
    /// M8: longest time from stall onset to back-off (s).
    pub detect_s: Option<f64>,
    /// M8: stuck episodes longer than 20 s never backed off from.
    pub missed_stalls: u64,
    /// M9: host swap-out (MiB).
    pub host_swap: f64,
    /// Adjusts sent to a VM while it did not answer.
    pub adjusts_to_unresponsive: u64,
    /// Largest total |delta| of the first tick after a daemon restart (MiB).
    pub restart_swing: Option<f64>,
    /// Final learned guest critical level of the first guest (MiB).
    pub guest_critical: Option<f64>,
    /// Live host "tabs" (processes started by the scenario) at the end.
    pub host_survivors: usize,
    /// Live guest "apps" at the end.
    pub guest_survivors: usize,
}

/// Runs `scn` with the policy `label`.
pub fn run(scn: &Scenario, label: &str) -> Metrics {
    let (mut policy, host_mode) = make_policy(label);
    let mut w = (scn.setup)();
    for g in &w.guests {
        policy.add_vm(&g.name);
    }
    let steps = (scn.duration / DT).round() as u64;
    let interval = policy.interval_ms().max(100);
    let mut m = Metrics {
        min_host_avail: f64::MAX,
        ..Metrics::default()
    };
    let mut run_len = 0u64;
    let mut removed_oom = 0u64;
    let mut removed_doo = 0u64;
    let mut flips: BTreeMap<String, (i8, u64)> = BTreeMap::new();
    let mut balloon_trace: Vec<(f64, Vec<f64>)> = Vec::new();
    let mut imb_n = 0u64;
    let mut spread_n = 0u64;
    let mut last_stuck: BTreeMap<String, f64> = BTreeMap::new();
    let mut missed_episode: BTreeSet<String> = BTreeSet::new();
    let mut restart_pending = false;
    let mut controls = Vec::new();
    let host_procs0 = w.host.procs.len();
    let guest_procs0: usize = w.guests.iter().map(|g| g.procs.len()).sum();
    for k in 0..steps {
        let t = k as f64 * DT;
        let now_ms = k * 100;
        controls.clear();
        let oom_before: u64 = w.guests.iter().map(|g| g.oom_kills).sum();
        let doo_before: u64 = w.guests.iter().map(|g| g.doo_events).sum();
        (scn.drive)(&mut w, t, &mut controls);
        let oom_after: u64 = w.guests.iter().map(|g| g.oom_kills).sum();
        let doo_after: u64 = w.guests.iter().map(|g| g.doo_events).sum();
        // Guests removed by the scenario keep their counts.
        removed_oom += oom_before.saturating_sub(oom_after);
        removed_doo += doo_before.saturating_sub(doo_after);
        for c in &controls {
            match c {
                Control::Added(n) => policy.add_vm(n),
                Control::Removed(n) => policy.remove_vm(n),
                Control::RestartDaemon => {
                    let names: Vec<String> = w.guests.iter().map(|g| g.name.clone()).collect();
                    policy.restart(&names);
                    restart_pending = true;
                }
            }
        }
        for g in &mut w.guests {
            g.step(t, DT);
        }
        let rss = w.rss();
        w.host.step(rss, DT);

        // Metrics sampled every step.
        let crit = w.host.total * 0.05;
        let avail = w.host.mem_available(rss);
        m.min_host_avail = m.min_host_avail.min(avail);
        m.host_deficit += (crit - avail).max(0.0) * DT;
        for g in &w.guests {
            let refc = (g.ram * 0.2).min(400.0);
            if g.free() + g.cache < refc {
                m.guest_low_s += DT;
            }
            if g.stuck {
                last_stuck.insert(g.name.clone(), t);
                if let Some(s) = g.stuck_since
                    && t - s > 20.0
                    && missed_episode.insert(format!("{}@{s}", g.name))
                {
                    m.missed_stalls += 1;
                }
            }
        }
        if now_ms % 1000 == 0 {
            let ha = avail - crit;
            let heads: Vec<f64> = w
                .guests
                .iter()
                .map(|g| g.free() + g.cache - (g.ram * 0.2).min(400.0))
                .collect();
            for h in &heads {
                m.imbalance += (h - ha).abs();
                imb_n += 1;
            }
            if heads.len() > 1 {
                let max = heads.iter().copied().fold(f64::MIN, f64::max);
                let min = heads.iter().copied().fold(f64::MAX, f64::min);
                m.spread += max - min;
                spread_n += 1;
            }
            balloon_trace.push((t, w.guests.iter().map(|g| g.balloon).collect()));
        }
        if now_ms % 2000 == 0 {
            if avail < crit {
                m.below_crit_ticks += 1;
                run_len += 1;
                m.below_crit_run = m.below_crit_run.max(run_len);
            } else {
                run_len = 0;
            }
        }

        // Policy tick.
        if now_ms % interval != 0 {
            continue;
        }
        let host_avail = match host_mode {
            HostMode::MemAvailable => avail,
            HostMode::ChromeOs => w.host.chromeos_available(rss),
        };
        let sample = HostSample {
            mem_total: (w.host.total * MIB) as u64,
            mem_available: (host_avail.max(0.0) * MIB) as u64,
            psi_full_avg10: None,
            psi_some_avg10: None,
        };
        let views: Vec<VmView> = w
            .guests
            .iter()
            .map(|g| VmView {
                name: g.name.clone(),
                sample: g.responsive.then(|| stats_of(g)),
                ram_mib: g.ram,
            })
            .collect();
        let out = policy.tick(now_ms, &sample, &views);
        if restart_pending {
            restart_pending = false;
            let swing: f64 = out
                .adjusts
                .iter()
                .filter_map(|(n, target)| {
                    let g = w.guests.iter().find(|g| &g.name == n)?;
                    Some((*target as f64 / MIB - g.balloon).abs())
                })
                .sum();
            m.restart_swing = Some(m.restart_swing.unwrap_or(0.0).max(swing));
        }
        for (name, spontaneous) in &out.stalls {
            m.stalls += 1;
            let Some(g) = w.guests.iter().find(|g| &g.name == name) else {
                continue;
            };
            let recent_doo = g.last_doo.is_some_and(|d| t - d <= 5.0);
            let recent_stuck = last_stuck.get(name).is_some_and(|s| t - s <= 5.0);
            if !(recent_stuck || (*spontaneous && recent_doo)) {
                m.false_stalls += 1;
            }
            let onset = if g.stuck {
                g.stuck_since
            } else if *spontaneous {
                g.last_doo
            } else {
                None
            };
            if let Some(o) = onset {
                let d = t - o;
                m.detect_s = Some(m.detect_s.map_or(d, |x: f64| x.max(d)));
            }
            // A back-off ends the stuck episode.
            if let Some(s) = g.stuck_since {
                missed_episode.insert(format!("{}@{s}", g.name));
            }
        }
        for (name, target) in out.adjusts {
            let Some(g) = w.guests.iter_mut().find(|g| g.name == name) else {
                continue;
            };
            if !g.responsive {
                m.adjusts_to_unresponsive += 1;
                continue;
            }
            let target = (target as f64 / MIB).clamp(0.0, g.ram);
            let delta = target - g.balloon;
            m.adjusts += 1;
            m.moved += delta.abs();
            let sign: i8 = if delta > 0.5 {
                1
            } else if delta < -0.5 {
                -1
            } else {
                0
            };
            g.target = target;
            if sign != 0 && scn.steady_from.is_some_and(|s| t >= s) {
                let e = flips.entry(name).or_insert((0, 0));
                if e.0 != 0 && e.0 != sign {
                    e.1 += 1;
                }
                e.0 = sign;
            }
        }
    }
    m.guest_oom = removed_oom + w.guests.iter().map(|g| g.oom_kills).sum::<u64>();
    m.doo_events = removed_doo + w.guests.iter().map(|g| g.doo_events).sum::<u64>();
    m.host_oom = w.host.oom_kills;
    m.host_swap = w.host.swap_out_total;
    if imb_n > 0 {
        m.imbalance /= imb_n as f64;
    }
    if spread_n > 0 {
        m.spread /= spread_n as f64;
    }
    if let Some(s) = scn.steady_from {
        let minutes = ((scn.duration - s) / 60.0).max(1.0 / 60.0);
        m.flips_per_min = flips
            .values()
            .map(|f| f.1 as f64 / minutes)
            .fold(0.0, f64::max);
        m.oscillating = m.flips_per_min >= 2.0;
    }
    if let (Some(step), Some((_, last))) = (scn.step_at, balloon_trace.last()) {
        let rams: Vec<f64> = w.guests.iter().map(|g| g.ram).collect();
        let within = |b: &Vec<f64>| {
            b.len() == last.len()
                && b.iter()
                    .zip(last)
                    .zip(&rams)
                    .all(|((x, y), r)| (x - y).abs() <= 0.05 * r)
        };
        let mut settled_at = None;
        for (t, b) in balloon_trace.iter().filter(|(t, _)| *t >= step) {
            if within(b) {
                settled_at.get_or_insert(*t);
            } else {
                settled_at = None;
            }
        }
        m.settle_s = settled_at.map(|t| t - step);
    }
    m.guest_critical = w
        .guests
        .first()
        .and_then(|g| policy.guest_critical(&g.name));
    m.host_survivors = w
        .host
        .procs
        .iter()
        .skip(host_procs0)
        .filter(|p| p.alive)
        .count();
    let total_procs: usize = w.guests.iter().map(|g| g.procs.len()).sum();
    m.guest_survivors = if total_procs > guest_procs0 {
        w.guests
            .iter()
            .flat_map(|g| g.procs.iter().skip(1))
            .filter(|p| p.alive)
            .count()
    } else {
        0
    };
    m
}

/// The virtio-balloon statistics a guest would report.
pub fn stats_of(g: &Guest) -> crate::stats::BalloonSample {
    let b = |mib: f64| (mib.max(0.0) * MIB) as u64;
    crate::stats::BalloonSample {
        stats: crate::stats::GuestStats {
            swap_in: Some(0),
            swap_out: Some(0),
            major_faults: Some(0),
            minor_faults: Some(0),
            free_memory: Some(b(g.free())),
            total_memory: Some(b(g.mem_total())),
            available_memory: Some(b(g.available())),
            disk_caches: Some(b(g.cache + g.shmem)),
            hugetlb_allocations: Some(0),
            hugetlb_failures: Some(0),
            shared_memory: None,
            unevictable_memory: None,
        },
        balloon_actual: b(g.balloon),
        ram_size: None,
        stats_age_ms: 0,
        stats_stamp: None,
    }
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario number.
    pub id: u32,
    /// Scenario variant.
    pub variant: String,
    /// Scenario title.
    pub title: &'static str,
    /// Policy label.
    pub policy: String,
    /// The metrics.
    pub m: Metrics,
}

/// Runs every scenario with every policy it lists.
pub fn run_all() -> Vec<Row> {
    let mut rows = Vec::new();
    for scn in scenarios::all() {
        for p in &scn.policies {
            rows.push(Row {
                id: scn.id,
                variant: scn.variant.clone(),
                title: scn.title,
                policy: (*p).to_owned(),
                m: run(&scn, p),
            });
        }
    }
    rows
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"))
}

/// Scenario 16 ("competing anchors"): every policy's totals over the runs of scenarios 1–15
/// it took part in, and its [`cost`].
pub fn render_totals(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- 16: competing anchors, totals over the runs each policy took part in (cost: see docs)"
    );
    let _ = writeln!(
        out,
        "{:<17} {:>4} {:>9} {:>10} {:>6} {:>7} {:>6} {:>8} {:>5} {:>6} {:>7}",
        "policy",
        "runs",
        "oom/hOOM",
        "deficit",
        "<crit",
        "lowS",
        "adj",
        "movedGiB",
        "osc",
        "missed",
        "cost"
    );
    let mut policies: Vec<&str> = Vec::new();
    for r in rows {
        if !policies.contains(&r.policy.as_str()) {
            policies.push(&r.policy);
        }
    }
    for p in policies {
        let mine: Vec<&Metrics> = rows
            .iter()
            .filter(|r| r.policy == p)
            .map(|r| &r.m)
            .collect();
        let sum = |f: &dyn Fn(&Metrics) -> f64| mine.iter().map(|m| f(m)).sum::<f64>();
        let _ = writeln!(
            out,
            "{:<17} {:>4} {:>9} {:>10.0} {:>6.0} {:>7.0} {:>6.0} {:>8.1} {:>5.0} {:>6.0} {:>7.1}",
            p,
            mine.len(),
            format!(
                "{:.0}/{:.0}",
                sum(&|m| m.guest_oom as f64),
                sum(&|m| m.host_oom as f64)
            ),
            sum(&|m| m.host_deficit),
            sum(&|m| m.below_crit_ticks as f64),
            sum(&|m| m.guest_low_s),
            sum(&|m| m.adjusts as f64),
            sum(&|m| m.moved) / 1024.0,
            sum(&|m| f64::from(u8::from(m.oscillating))),
            sum(&|m| m.missed_stalls as f64),
            sum(&cost),
        );
    }
    out
}

/// Renders the table.
pub fn render(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let header = [
        "scn",
        "policy",
        "minAvail",
        "deficit",
        "<crit",
        "oom/doo/hOOM",
        "lowS",
        "adj/GiB",
        "flip/min",
        "settle",
        "imbal",
        "spread",
        "stall/false/det/miss",
        "swap",
        "extra",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let m = &r.m;
            let mut extra = Vec::new();
            if let Some(c) = m.guest_critical
                && matches!(r.id, 8 | 10)
            {
                extra.push(format!("crit={c:.0}"));
            }
            if let Some(s) = m.restart_swing {
                extra.push(format!("swing={s:.0}"));
            }
            if m.adjusts_to_unresponsive > 0 || r.id == 7 {
                extra.push(format!("adj-to-hung={}", m.adjusts_to_unresponsive));
            }
            if r.id == 15 && r.variant.starts_with("lifecycle") {
                extra.push(format!(
                    "alive host={} guest={}",
                    m.host_survivors, m.guest_survivors
                ));
            }
            vec![
                format!(
                    "{}{}",
                    r.id,
                    if r.variant.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", r.variant)
                    }
                ),
                r.policy.clone(),
                format!("{:.0}", m.min_host_avail),
                format!("{:.0}", m.host_deficit),
                format!("{}/{}", m.below_crit_ticks, m.below_crit_run),
                format!("{}/{}/{}", m.guest_oom, m.doo_events, m.host_oom),
                format!("{:.0}", m.guest_low_s),
                format!("{}/{:.1}", m.adjusts, m.moved / 1024.0),
                if m.oscillating {
                    format!("{:.1}!", m.flips_per_min)
                } else {
                    format!("{:.1}", m.flips_per_min)
                },
                opt(m.settle_s),
                format!("{:.0}", m.imbalance),
                format!("{:.0}", m.spread),
                format!(
                    "{}/{}/{}/{}",
                    m.stalls,
                    m.false_stalls,
                    opt(m.detect_s),
                    m.missed_stalls
                ),
                format!("{:.0}", m.host_swap),
                extra.join(" "),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (w, x) in widths.iter_mut().zip(c) {
            *w = (*w).max(x.len());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (x, w) in c.iter().zip(&widths) {
            let _ = write!(s, "{x:<w$} ");
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    let mut last = None;
    for (r, c) in rows.iter().zip(&cells) {
        if last != Some((r.id, r.variant.clone())) {
            let _ = writeln!(out, "-- {} {}: {}", r.id, r.variant, r.title);
            last = Some((r.id, r.variant.clone()));
        }
        let _ = writeln!(out, "{}", line(c));
    }
    out
}

/// The goals of the issue, evaluated on the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Guest OOM kills of the default policy in scenarios 1–8.
    pub guest_oom_kills: u64,
    /// Scenario 2, default policy: 2-s ticks with host available below critical.
    pub host_below_critical_ticks_max: u64,
    /// Scenario runs where the default policy oscillates.
    pub oscillating_scenarios: u64,
    /// Which runs oscillate (for the report).
    pub oscillating_list: Vec<String>,
    /// Longest stall detection delay of the default policy (s).
    pub stall_detect_s_max: f64,
    /// Baselines the default beats (see [`beats`]).
    pub beats: Vec<(String, bool, String)>,
}

/// The cost of one run, the same formula for every policy: 10 per OOM kill (guest or host),
/// 1 per GiB·s the host spent below critical, 1 per guest-minute with free + cache below
/// min(400 MiB, 20 % RAM), 5 per stuck balloon never backed off from within 20 s, 5 per
/// oscillating run, 1 per 100 Adjust commands (VM exits).
pub fn cost(m: &Metrics) -> f64 {
    10.0 * (m.guest_oom + m.host_oom) as f64
        + m.host_deficit / 1024.0
        + m.guest_low_s / 60.0
        + 5.0 * m.missed_stalls as f64
        + 5.0 * f64::from(u8::from(m.oscillating))
        + m.adjusts as f64 / 100.0
}

/// Whether `vmsilo` beats `baseline`: lower total [`cost`] over the scenario runs both took
/// part in. Returns the verdict and the figures.
pub fn beats(rows: &[Row], baseline: &str) -> (bool, String) {
    let runs = |p: &str| -> BTreeMap<(u32, String), &Metrics> {
        rows.iter()
            .filter(|r| r.policy == p)
            .map(|r| ((r.id, r.variant.clone()), &r.m))
            .collect()
    };
    let mine = runs("vmsilo");
    let theirs = runs(baseline);
    let (mut a, mut b, mut n, mut wins, mut losses) = (0.0, 0.0, 0, 0, 0);
    for (k, m) in &mine {
        if let Some(t) = theirs.get(k) {
            let (ca, cb) = (cost(m), cost(t));
            a += ca;
            b += cb;
            n += 1;
            if ca + 0.5 < cb {
                wins += 1;
            } else if cb + 0.5 < ca {
                losses += 1;
            }
        }
    }
    let detail = format!(
        "cost vmsilo {a:.1} vs {baseline} {b:.1} over {n} runs (vmsilo better in {wins}, worse in {losses})"
    );
    (a < b, detail)
}

/// Evaluates the goals.
pub fn summarize(rows: &[Row]) -> Summary {
    let default: Vec<&Row> = rows.iter().filter(|r| r.policy == "vmsilo").collect();
    let guest_oom_kills = default
        .iter()
        .filter(|r| (1..=8).contains(&r.id))
        .map(|r| r.m.guest_oom)
        .sum();
    let host_below_critical_ticks_max = default
        .iter()
        .filter(|r| r.id == 2)
        .map(|r| r.m.below_crit_ticks)
        .max()
        .unwrap_or(0);
    let osc: Vec<String> = default
        .iter()
        .filter(|r| r.m.oscillating)
        .map(|r| {
            format!(
                "{}{}",
                r.id,
                if r.variant.is_empty() {
                    String::new()
                } else {
                    format!("({})", r.variant)
                }
            )
        })
        .collect();
    let stall_detect_s_max = default
        .iter()
        .filter_map(|r| r.m.detect_s)
        .fold(0.0, f64::max);
    let beats = ["chromeos", "qmemman", "mom"]
        .iter()
        .map(|b| {
            let (ok, d) = beats(rows, b);
            ((*b).to_owned(), ok, d)
        })
        .collect();
    Summary {
        guest_oom_kills,
        host_below_critical_ticks_max,
        oscillating_scenarios: osc.len() as u64,
        oscillating_list: osc,
        stall_detect_s_max,
        beats,
    }
}
