//! The tick engine: one host sample plus every VM's stats in, one explained decision per VM out.
//!
//! This is the policy core the daemon and the simulator share unchanged. It is sans-IO: the
//! caller reads the host, asks the VMMs for stats, passes the results in with the current time,
//! and sends the `Adjust` requests the decisions call for.
//!
//! Multi-VM mode: by default VMs are evaluated **sequentially** by name, each seeing the host
//! estimate updated by the previous VMs' moves (Gauss–Seidel), which converges for any number of
//! VMs. ChromeOS evaluates every VM against the **same** host sample, which oscillates with three
//! or more similar VMs; that mode is available as [`MultiVmMode::Shared`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::host::{HostSample, host_critical};
use crate::policy::{
    Clamp, GuestAvailableSource, PolicyOutcome, PolicyParams, PolicyState, Trigger,
    balance_available,
};
use crate::stall::{Millis, StallEvent, StallParams, StallTracker};
use crate::stats::BalloonSample;

/// How several VMs share one host sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MultiVmMode {
    /// Each VM sees the host estimate updated by the moves decided for the VMs before it.
    #[default]
    Sequential,
    /// ChromeOS: every VM sees the same host sample.
    Shared,
}

impl MultiVmMode {
    /// The spelling used on the command line and in the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::Shared => "shared",
        }
    }
}

/// Everything that tunes the tick engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancerParams {
    /// The BalanceAvailable parameters.
    pub policy: PolicyParams,
    /// Sequential (default) or ChromeOS shared host sample.
    pub mode: MultiVmMode,
    /// Host critical level in percent of `MemTotal`.
    pub critical_host_percent: u32,
    /// Never leave a guest less than this (RAM minus balloon); 0 disables the floor.
    pub min_guest_memory: u64,
    /// Stall detection; `None` disables it (ChromeOS BalanceAvailable has none).
    pub stall: Option<StallParams>,
    /// Veto deflations while host PSI `full avg10` is at least this (percent).
    pub psi_full_threshold: Option<f64>,
    /// Veto inflations while the guest is below its critical level, unless the host is too.
    pub protect_guest: bool,
    /// The poll interval (for the stats back-off of unresponsive VMs).
    pub poll_interval_ms: Millis,
    /// After this many consecutive stats failures, poll the VM less and less often.
    pub failure_backoff_after: u32,
    /// Longest pause between stats requests to an unresponsive VM.
    pub max_stats_backoff_ms: Millis,
    /// Re-send an unchanged, not yet reached target after this long.
    pub resend_after_ms: Millis,
    /// Do not let the learning rule lower the guest critical level for this long after a stall
    /// or a spontaneous shrink (0: always learn, as ChromeOS does).
    pub no_learning_after_stall_ms: Millis,
    /// After a move, wait for guest statistics taken after it before deciding again: QEMU's
    /// statistics are polled and may predate the move, and deciding on them counts the move
    /// twice and oscillates. Statistics with a stamp (QEMU) must have a newer stamp than at the
    /// move; statistics collected on request (crosvm) must be this long after it. 0 disables
    /// the wait.
    pub stats_settle_ms: Millis,
    /// Give up waiting for newer statistics after this long (a guest whose statistics never
    /// change is decided on what it last reported).
    pub stats_stale_max_ms: Millis,
}

impl Default for BalancerParams {
    fn default() -> Self {
        Self {
            policy: PolicyParams::default(),
            mode: MultiVmMode::Sequential,
            critical_host_percent: 5,
            min_guest_memory: 256 << 20,
            stall: Some(StallParams::default()),
            psi_full_threshold: Some(10.0),
            protect_guest: true,
            poll_interval_ms: 2_000,
            failure_backoff_after: 3,
            max_stats_backoff_ms: 60_000,
            resend_after_ms: 30_000,
            no_learning_after_stall_ms: 30_000,
            stats_settle_ms: 500,
            stats_stale_max_ms: 60_000,
        }
    }
}

impl BalancerParams {
    /// ChromeOS as shipped: shared host sample, bias 0 by default, no stall detection, no floor,
    /// no vetoes, `total_memory`-based fullness, 1 s ticks. `bias` is the guest bias to use.
    pub fn chromeos_faithful(bias: u64) -> Self {
        Self {
            policy: PolicyParams {
                guest_bias: bias,
                max_balloon_from_ram: false,
                ..PolicyParams::default()
            },
            mode: MultiVmMode::Shared,
            critical_host_percent: 5,
            min_guest_memory: 0,
            stall: None,
            psi_full_threshold: None,
            protect_guest: false,
            poll_interval_ms: 1_000,
            failure_backoff_after: u32::MAX,
            max_stats_backoff_ms: 0,
            resend_after_ms: 0,
            no_learning_after_stall_ms: 0,
            stats_settle_ms: 0,
            stats_stale_max_ms: 0,
        }
    }
}

/// What the caller got from one VM this tick.
// One per VM per tick, built and consumed at once: boxing the sample would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum VmInput {
    /// Fresh stats.
    Sample(BalloonSample),
    /// The stats request failed (timeout, error reply, VMM gone); the text says why.
    Failed(String),
    /// The previous request to this VM is still outstanding; no new one was made.
    Busy,
}

/// The main reason behind a decision, for `--status` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The move is under 2 % of both headrooms: nothing to do.
    Deadband,
    /// Guest has more headroom than the host: inflate.
    Inflate,
    /// Inflation limited to the guest's headroom + 10 MiB.
    InflateClamped,
    /// Host has more headroom than the guest: deflate.
    Deflate,
    /// Deflation limited to the host's headroom + 10 MiB.
    DeflateClamped,
    /// The host is within 1 MiB of (or below) its critical level.
    HostCritical,
    /// The guest is within 1 MiB of (or below) its critical level.
    GuestCritical,
    /// The policy wants to deflate but the balloon is already empty.
    BalloonEmpty,
    /// The inflation stalled, or the balloon shrank by itself: backed off by 128 MiB.
    StallBackoff,
    /// The policy wants to inflate but inflation is blocked after a stall.
    InflateBlocked,
    /// The policy wants to deflate but host memory pressure (PSI) is high.
    PsiVeto,
    /// The policy wants to inflate but the guest is below its critical level.
    GuestProtected,
    /// The target was capped to leave the guest its minimum memory.
    GuestFloor,
    /// The guest did not report the statistics the policy needs.
    StatsMissing,
    /// The guest's statistics predate the last move: wait for fresh ones.
    StatsStale,
    /// The stats request failed.
    StatsFailed,
    /// The previous request is still outstanding.
    Unresponsive,
}

impl Reason {
    /// The kebab-case name used in the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadband => "deadband",
            Self::Inflate => "inflate",
            Self::InflateClamped => "inflate-clamped",
            Self::Deflate => "deflate",
            Self::DeflateClamped => "deflate-clamped",
            Self::HostCritical => "host-critical",
            Self::GuestCritical => "guest-critical",
            Self::BalloonEmpty => "balloon-empty",
            Self::StallBackoff => "stall-backoff",
            Self::InflateBlocked => "inflate-blocked",
            Self::PsiVeto => "psi-veto",
            Self::GuestProtected => "guest-protected",
            Self::GuestFloor => "guest-floor",
            Self::StatsMissing => "stats-missing",
            Self::StatsStale => "stats-stale",
            Self::StatsFailed => "stats-failed",
            Self::Unresponsive => "unresponsive",
        }
    }
}

/// One VM's decision for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The VM's name.
    pub vm: String,
    /// Tick number.
    pub tick: u64,
    /// When (caller's clock, ms).
    pub at_ms: Millis,
    /// Balloon size seen this tick.
    pub actual: Option<u64>,
    /// The balloon size wanted after this tick.
    pub target: Option<u64>,
    /// Whether an `Adjust` to `target` must be sent now.
    pub send: bool,
    /// `target - actual`.
    pub delta: i64,
    /// Main reason.
    pub reason: Reason,
    /// Human explanation with the numbers.
    pub detail: String,
    /// The full policy computation, when it ran.
    pub policy: Option<PolicyOutcome>,
}

/// Per-VM counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Successful stats reads.
    pub stats_ok: u64,
    /// Failed stats reads (including busy ticks).
    pub stats_failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// `Adjust` requests decided.
    pub adjusts: u64,
    /// `Adjust` requests the VMM rejected or did not answer.
    pub adjust_failures: u64,
    /// Sum of |target - actual| over the adjusts.
    pub bytes_moved: u64,
}

/// Everything the engine keeps about one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    /// Bumped every time a VM of this name (re)appears.
    pub generation: u64,
    /// BalanceAvailable state.
    pub policy: PolicyState,
    /// Stall detection state.
    pub stall: StallTracker,
    /// Last good sample and its time.
    pub last_sample: Option<(Millis, BalloonSample)>,
    /// Last target sent and when.
    pub last_sent: Option<(u64, Millis)>,
    /// When the last `Adjust` was decided, and the statistics' stamp then.
    pub last_move: Option<(Millis, Option<u64>)>,
    /// Last decision.
    pub last_decision: Option<Decision>,
    /// Counters.
    pub counters: Counters,
    /// Do not request stats before this time (back-off for unresponsive VMs).
    pub next_stats_at: Millis,
}

/// The result of one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickReport {
    /// Tick number (from 1).
    pub tick: u64,
    /// When (caller's clock, ms).
    pub at_ms: Millis,
    /// The host sample used.
    pub host: HostSample,
    /// Host critical level (bytes).
    pub host_critical: u64,
    /// Host available minus critical at the start of the tick.
    pub host_above: i64,
    /// One decision per VM that had input this tick, in name order.
    pub decisions: Vec<Decision>,
}

/// The tick engine.
#[derive(Debug, Clone)]
pub struct Balancer {
    params: BalancerParams,
    vms: BTreeMap<String, VmEntry>,
    next_generation: u64,
    ticks: u64,
}

fn mib(bytes: i64) -> String {
    let v = bytes / (1 << 20);
    if v > 0 {
        format!("+{v} MiB")
    } else {
        format!("{v} MiB")
    }
}

fn mibu(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Balancer {
    /// A balancer with no VMs.
    pub fn new(params: BalancerParams) -> Self {
        Self {
            params,
            vms: BTreeMap::new(),
            next_generation: 1,
            ticks: 0,
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &BalancerParams {
        &self.params
    }

    /// Adds a VM with fresh state, replacing any VM of the same name (a restart). Returns its
    /// generation, which distinguishes the new VM from the old one.
    pub fn add_vm(&mut self, name: &str) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.vms.insert(
            name.to_owned(),
            VmEntry {
                generation,
                policy: PolicyState::new(&self.params.policy),
                stall: StallTracker::default(),
                last_sample: None,
                last_sent: None,
                last_move: None,
                last_decision: None,
                counters: Counters::default(),
                next_stats_at: 0,
            },
        );
        generation
    }

    /// Forgets a VM.
    pub fn remove_vm(&mut self, name: &str) -> bool {
        self.vms.remove(name).is_some()
    }

    /// The VMs, in name order.
    pub fn vms(&self) -> impl Iterator<Item = (&str, &VmEntry)> {
        self.vms.iter().map(|(n, e)| (n.as_str(), e))
    }

    /// One VM's state.
    pub fn vm(&self, name: &str) -> Option<&VmEntry> {
        self.vms.get(name)
    }

    /// Number of ticks run.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Whether a stats request should be made to `name` at `now` (unresponsive VMs are polled
    /// less and less often, so requests do not pile up inside the VMM).
    pub fn wants_stats(&self, name: &str, now: Millis) -> bool {
        self.vms.get(name).is_some_and(|e| now >= e.next_stats_at)
    }

    /// Records that the `Adjust` for `name` failed, so the next tick sends it again.
    pub fn adjust_failed(&mut self, name: &str) {
        if let Some(e) = self.vms.get_mut(name) {
            e.last_sent = None;
            e.counters.adjust_failures += 1;
        }
    }

    fn record_failure(&mut self, name: &str, now: Millis) {
        let p = self.params;
        if let Some(e) = self.vms.get_mut(name) {
            e.counters.stats_failures += 1;
            e.counters.consecutive_failures = e.counters.consecutive_failures.saturating_add(1);
            let n = e.counters.consecutive_failures;
            if n >= p.failure_backoff_after {
                let exp = (n - p.failure_backoff_after).min(16);
                let delay = p
                    .poll_interval_ms
                    .saturating_mul(1 << exp)
                    .min(p.max_stats_backoff_ms);
                e.next_stats_at = now.saturating_add(delay);
            }
        }
    }

    /// Runs one tick at `now` with the host sample and whatever each VM returned. VMs absent
    /// from `inputs` (not polled this tick) get no decision.
    pub fn tick(
        &mut self,
        now: Millis,
        host: &HostSample,
        inputs: &BTreeMap<String, VmInput>,
    ) -> TickReport {
        self.ticks += 1;
        let tick = self.ticks;
        let p = self.params;
        let host_crit = host_critical(host.mem_total, p.critical_host_percent);
        let host_crit_i = to_i64(host_crit);
        let host_above = to_i64(host.mem_available).saturating_sub(host_crit_i);
        let mut host_estimate = to_i64(host.mem_available);
        let mut decisions = Vec::new();
        let names: Vec<String> = self.vms.keys().cloned().collect();
        for name in names {
            let Some(input) = inputs.get(&name) else {
                continue;
            };
            let sample = match input {
                VmInput::Sample(s) => *s,
                VmInput::Failed(why) => {
                    self.record_failure(&name, now);
                    decisions.push(self.no_sample(&name, tick, now, Reason::StatsFailed, why));
                    continue;
                }
                VmInput::Busy => {
                    self.record_failure(&name, now);
                    let why = "the previous request to this VM has not completed";
                    decisions.push(self.no_sample(&name, tick, now, Reason::Unresponsive, why));
                    continue;
                }
            };
            let h = match p.mode {
                MultiVmMode::Sequential => host_estimate,
                MultiVmMode::Shared => to_i64(host.mem_available),
            };
            let Some(entry) = self.vms.get_mut(&name) else {
                continue;
            };
            let d = decide(&p, entry, &name, tick, now, host, h, host_crit_i, &sample);
            if p.mode == MultiVmMode::Sequential
                && let (Some(t), Some(a)) = (d.target, d.actual)
            {
                host_estimate = host_estimate.saturating_add(to_i64(t) - to_i64(a));
            }
            decisions.push(d);
        }
        TickReport {
            tick,
            at_ms: now,
            host: *host,
            host_critical: host_crit,
            host_above,
            decisions,
        }
    }

    fn no_sample(
        &mut self,
        name: &str,
        tick: u64,
        now: Millis,
        reason: Reason,
        why: &str,
    ) -> Decision {
        let d = Decision {
            vm: name.to_owned(),
            tick,
            at_ms: now,
            actual: None,
            target: None,
            send: false,
            delta: 0,
            reason,
            detail: why.to_owned(),
            policy: None,
        };
        if let Some(e) = self.vms.get_mut(name) {
            e.last_decision = Some(d.clone());
        }
        d
    }
}

/// The guest-available figure the policy uses and the guest's total, or what is missing.
fn guest_figures(
    source: GuestAvailableSource,
    s: &BalloonSample,
) -> Result<(u64, u64), &'static str> {
    let st = &s.stats;
    let total = st.total_memory.ok_or("total_memory")?;
    let avail = match source {
        GuestAvailableSource::FreePlusCaches => {
            let free = st.free_memory.ok_or("free_memory")?;
            let cached = st.disk_caches.ok_or("disk_caches")?;
            free.saturating_add(cached)
        }
        GuestAvailableSource::Available => st.available_memory.ok_or("available_memory")?,
    };
    // A guest cannot have more available than it has memory; do not believe it if it says so.
    let limit = total.max(s.ram_size.unwrap_or(0));
    Ok((avail.min(limit), total))
}

#[allow(clippy::too_many_arguments)]
fn decide(
    p: &BalancerParams,
    e: &mut VmEntry,
    name: &str,
    tick: u64,
    now: Millis,
    host: &HostSample,
    host_available: i64,
    host_crit: i64,
    s: &BalloonSample,
) -> Decision {
    e.counters.stats_ok += 1;
    e.counters.consecutive_failures = 0;
    e.next_stats_at = 0;
    e.last_sample = Some((now, *s));
    let actual = s.balloon_actual;
    let stall_event = match &p.stall {
        Some(sp) => e.stall.observe(sp, now, actual),
        None => StallEvent::None,
    };
    let mut d = Decision {
        vm: name.to_owned(),
        tick,
        at_ms: now,
        actual: Some(actual),
        target: Some(actual),
        send: false,
        delta: 0,
        reason: Reason::Deadband,
        detail: String::new(),
        policy: None,
    };
    let (g_avail, total) = match guest_figures(p.policy.guest_available, s) {
        Ok(v) => v,
        Err(missing) => {
            d.reason = Reason::StatsMissing;
            d.detail = format!(
                "the guest did not report {missing} (balloon driver not up, or stats disabled)"
            );
            // A stall back-off still applies: it only needs the balloon size.
            if let StallEvent::Stalled { backoff_target, .. }
            | StallEvent::Shrank { backoff_target, .. } = stall_event
            {
                apply_stall(p, e, &mut d, now, actual, backoff_target, stall_event);
                finish(p, e, &mut d, now, actual);
            }
            e.last_decision = Some(d.clone());
            return d;
        }
    };
    let tainted = p.no_learning_after_stall_ms > 0
        && e.stall
            .last_stall_at
            .is_some_and(|at| now.saturating_sub(at) < p.no_learning_after_stall_ms);
    let stale = match e.last_move {
        Some((moved, stamp_then)) if p.stats_settle_ms > 0 => {
            let waited = now.saturating_sub(moved);
            let old = match (stamp_then, s.stats_stamp) {
                (Some(then), Some(stamp)) => stamp <= then,
                _ => now.saturating_sub(s.stats_age_ms) < moved.saturating_add(p.stats_settle_ms),
            };
            old && waited < p.stats_stale_max_ms
        }
        _ => false,
    };
    if stale {
        d.reason = Reason::StatsStale;
        d.detail = format!(
            "waiting for guest statistics newer than the last move ({} ms ago; these are {} ms old)",
            e.last_move.map_or(0, |(m, _)| now.saturating_sub(m)),
            s.stats_age_ms
        );
        if let StallEvent::Stalled { backoff_target, .. }
        | StallEvent::Shrank { backoff_target, .. } = stall_event
        {
            apply_stall(p, e, &mut d, now, actual, backoff_target, stall_event);
            finish(p, e, &mut d, now, actual);
        }
        e.last_decision = Some(d.clone());
        return d;
    }
    let out = balance_available(
        &mut e.policy,
        &p.policy,
        &crate::policy::PolicyInput {
            actual,
            guest_available: g_avail,
            total,
            ram_size: s.ram_size,
            host_available,
            host_critical: host_crit,
            learn: !tainted,
        },
    );
    d.policy = Some(out);
    let mut delta = out.delta;
    let (reason, detail) = explain(&out, actual);
    d.reason = reason;
    d.detail = detail;

    match stall_event {
        StallEvent::Stalled { backoff_target, .. } | StallEvent::Shrank { backoff_target, .. } => {
            apply_stall(p, e, &mut d, now, actual, backoff_target, stall_event);
            finish(p, e, &mut d, now, actual);
            e.last_decision = Some(d.clone());
            return d;
        }
        StallEvent::None | StallEvent::Reached => {}
    }

    if delta > 0 && e.stall.inflate_blocked(now) {
        d.reason = Reason::InflateBlocked;
        d.detail = format!(
            "wanted to inflate by {} but inflation is blocked for {} s after {} stall(s)",
            mib(delta),
            e.stall.blocked_for(now).div_ceil(1000),
            e.stall.consecutive
        );
        delta = 0;
    }
    if delta < 0
        && let (Some(limit), Some(psi)) = (p.psi_full_threshold, host.psi_full_avg10)
        && psi >= limit
    {
        d.reason = Reason::PsiVeto;
        d.detail = format!(
            "wanted to deflate by {} but host memory pressure is high (PSI full avg10 {psi:.1} % >= {limit:.1} %)",
            mib(delta)
        );
        delta = 0;
    }
    if delta > 0 && p.protect_guest && g_avail < out.guest_critical && out.host_above >= 0 {
        d.reason = Reason::GuestProtected;
        d.detail = format!(
            "wanted to inflate by {} but the guest's available {} is below its critical level {}",
            mib(delta),
            mibu(g_avail),
            mibu(out.guest_critical)
        );
        delta = 0;
    }
    let mut target = u64::try_from(to_i64(actual).saturating_add(delta).max(0)).unwrap_or(0);
    if p.min_guest_memory > 0 {
        let ram = s.ram_size.unwrap_or(total);
        let cap = ram.saturating_sub(p.min_guest_memory);
        if target > cap {
            let wanted = target;
            target = cap;
            if target != wanted {
                d.reason = Reason::GuestFloor;
                d.detail = format!(
                    "wanted a {} balloon; capped at {} so the guest keeps at least {} of {}",
                    mibu(wanted),
                    mibu(target),
                    mibu(p.min_guest_memory),
                    mibu(ram)
                );
            }
        }
    }
    d.target = Some(target);
    finish(p, e, &mut d, now, actual);
    e.last_decision = Some(d.clone());
    d
}

fn apply_stall(
    p: &BalancerParams,
    e: &mut VmEntry,
    d: &mut Decision,
    now: Millis,
    actual: u64,
    backoff_target: u64,
    ev: StallEvent,
) {
    let _ = p;
    d.reason = Reason::StallBackoff;
    d.target = Some(backoff_target);
    let block = e.stall.blocked_for(now).div_ceil(1000);
    d.detail = match ev {
        StallEvent::Stalled { rate_mib_s, .. } => format!(
            "inflation stalled at {rate_mib_s} MiB/s with {} still to go: deflating by {} to {}, \
             inflation blocked for {block} s (stall {} in a row)",
            mibu(e.stall.target_sent.unwrap_or(actual).saturating_sub(actual)),
            mibu(actual - backoff_target),
            mibu(backoff_target),
            e.stall.consecutive
        ),
        StallEvent::Shrank { from, to, .. } => format!(
            "the balloon shrank by itself from {} to {} (guest deflate-on-OOM): deflating to {}, \
             inflation blocked for {block} s (stall {} in a row)",
            mibu(from),
            mibu(to),
            mibu(backoff_target),
            e.stall.consecutive
        ),
        StallEvent::None | StallEvent::Reached => String::new(),
    };
}

/// Decides whether to send, updates the stall tracker and counters.
fn finish(p: &BalancerParams, e: &mut VmEntry, d: &mut Decision, now: Millis, actual: u64) {
    let target = d.target.unwrap_or(actual);
    d.delta = to_i64(target) - to_i64(actual);
    let in_flight = e
        .last_sent
        .is_some_and(|(t, at)| t == target && now.saturating_sub(at) < p.resend_after_ms);
    d.send = target != actual && !in_flight;
    if d.send {
        if let Some(sp) = &p.stall {
            e.stall.on_send(sp, now, actual, target);
        }
        e.last_sent = Some((target, now));
        e.last_move = Some((now, e.last_sample.and_then(|(_, s)| s.stats_stamp)));
        e.counters.adjusts += 1;
        e.counters.bytes_moved = e
            .counters
            .bytes_moved
            .saturating_add(actual.abs_diff(target));
    }
}

fn explain(out: &PolicyOutcome, actual: u64) -> (Reason, String) {
    let heads = format!(
        "guest headroom {} (available {} - critical {} - bias {}), host headroom {}",
        mib(out.guest_above),
        mibu(u64::try_from(out.guest_available).unwrap_or(0)),
        mibu(out.guest_critical),
        mibu(u64::try_from(out.bias).unwrap_or(0)),
        mib(out.host_above)
    );
    match out.trigger {
        Trigger::Deadband => (
            Reason::Deadband,
            format!(
                "move of {} is under 2 % of both headrooms; {heads}",
                mib(out.raw_delta)
            ),
        ),
        _ if out.delta == 0 && out.raw_delta < 0 && actual == 0 => (
            Reason::BalloonEmpty,
            format!(
                "wanted to deflate by {} but the balloon is empty; {heads}",
                mib(out.raw_delta)
            ),
        ),
        Trigger::HostCritical if out.delta > 0 => (
            Reason::HostCritical,
            format!(
                "host is within 1 MiB of its critical level or below: inflate by {}; {heads}",
                mib(out.delta)
            ),
        ),
        Trigger::GuestCritical if out.delta < 0 => (
            Reason::GuestCritical,
            format!(
                "guest is within 1 MiB of its critical level or below: deflate by {}; {heads}",
                mib(out.delta)
            ),
        ),
        _ => {
            let (reason, what) = match (out.delta > 0, out.clamp) {
                (true, Clamp::None) => (Reason::Inflate, "inflate"),
                (true, _) => (
                    Reason::InflateClamped,
                    "inflate, clamped to the guest's headroom + 10 MiB,",
                ),
                (false, Clamp::None) => (Reason::Deflate, "deflate"),
                (false, _) => (
                    Reason::DeflateClamped,
                    "deflate, clamped to the host's headroom + 10 MiB,",
                ),
            };
            (reason, format!("{what} by {}; {heads}", mib(out.delta)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::GuestStats;

    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    fn sample(actual: u64, free: u64, cached: u64, total: u64) -> BalloonSample {
        BalloonSample {
            stats: GuestStats {
                free_memory: Some(free),
                disk_caches: Some(cached),
                total_memory: Some(total),
                available_memory: Some(free),
                ..GuestStats::default()
            },
            balloon_actual: actual,
            ram_size: None,
            stats_age_ms: 0,
            stats_stamp: None,
        }
    }

    fn host(total: u64, avail: u64) -> HostSample {
        HostSample {
            mem_total: total,
            mem_available: avail,
            psi_full_avg10: None,
            psi_some_avg10: None,
        }
    }

    fn one(name: &str, input: VmInput) -> BTreeMap<String, VmInput> {
        BTreeMap::from([(name.to_owned(), input)])
    }

    fn faithful_with_stall() -> BalancerParams {
        BalancerParams {
            stall: Some(StallParams::default()),
            ..BalancerParams::chromeos_faithful(300 * M)
        }
    }

    #[test]
    fn test_worked_example_through_the_engine() {
        let mut b = Balancer::new(BalancerParams::chromeos_faithful(300 * M));
        b.add_vm("a");
        let r = b.tick(
            0,
            &host(32 * G, 3000 * M),
            &one("a", VmInput::Sample(sample(0, 1500 * M, 2500 * M, 8 * G))),
        );
        let d = &r.decisions[0];
        assert_eq!(d.reason, Reason::Inflate);
        assert!(d.send);
        assert_eq!(d.delta / (1 << 20), 1119);
        let actual = d.target.unwrap();
        let r = b.tick(
            1000,
            &host(32 * G, 4119 * M),
            &one(
                "a",
                VmInput::Sample(sample(actual, 381 * M, 2500 * M, 8 * G)),
            ),
        );
        assert_eq!(r.decisions[0].reason, Reason::Deadband);
        assert!(!r.decisions[0].send);
        assert!(r.decisions[0].detail.contains("under 2 %"));
    }

    #[test]
    fn test_failed_stats_leave_the_vm_untouched_and_back_off() {
        let mut b = Balancer::new(BalancerParams::default());
        b.add_vm("a");
        let mut attempts = Vec::new();
        for now in (0..20_000).step_by(2000) {
            if !b.wants_stats("a", now) {
                continue;
            }
            attempts.push(now);
            let r = b.tick(
                now,
                &host(32 * G, 8 * G),
                &one("a", VmInput::Failed("x".into())),
            );
            assert_eq!(r.decisions[0].reason, Reason::StatsFailed);
            assert!(!r.decisions[0].send);
            assert_eq!(r.decisions[0].target, None);
        }
        // Three failures start the back-off: 2 s, 4 s, 8 s ...
        assert_eq!(attempts, [0, 2000, 4000, 6000, 10_000, 18_000]);
        let e = b.vm("a").unwrap();
        assert_eq!(e.counters.stats_failures, 6);
        assert_eq!(e.counters.adjusts, 0);
    }

    #[test]
    fn test_inflation_never_sent_inside_a_block_window() {
        let mut b = Balancer::new(faithful_with_stall());
        b.add_vm("a");
        // Host under pressure, guest rich in free memory: inflate. The balloon never moves.
        let h = host(32 * G, 1000 * M);
        let mut now = 0;
        let mut sent = Vec::new();
        let mut stalled_at = None;
        for _ in 0..20 {
            let r = b.tick(
                now,
                &h,
                &one("a", VmInput::Sample(sample(512 * M, 4 * G, 0, 8 * G))),
            );
            let d = &r.decisions[0];
            if d.reason == Reason::StallBackoff {
                stalled_at.get_or_insert(now);
                assert_eq!(d.target, Some(384 * M));
            }
            if d.send {
                sent.push((now, d.target.unwrap(), d.reason));
            }
            let e = b.vm("a").unwrap();
            if d.send && d.target.unwrap() > 512 * M {
                assert!(!e.stall.inflate_blocked(now), "inflate sent while blocked");
            }
            now += 1000;
        }
        // First check 5 s after arming at t=0 finds no progress.
        assert_eq!(stalled_at, Some(5000));
        assert!(sent.contains(&(5000, 384 * M, Reason::StallBackoff)));
        let inflations_in_block: Vec<_> = sent
            .iter()
            .filter(|&&(t, target, _)| (5000..15_000).contains(&t) && target > 512 * M)
            .collect();
        assert!(inflations_in_block.is_empty(), "{sent:?}");
    }

    #[test]
    fn test_sequential_mode_updates_the_host_estimate() {
        let mut seq = Balancer::new(BalancerParams {
            min_guest_memory: 0,
            ..BalancerParams::default()
        });
        let mut shared = Balancer::new(BalancerParams {
            mode: MultiVmMode::Shared,
            min_guest_memory: 0,
            ..BalancerParams::default()
        });
        let mut inputs = BTreeMap::new();
        for name in ["a", "b", "c"] {
            seq.add_vm(name);
            shared.add_vm(name);
            inputs.insert(name.to_owned(), VmInput::Sample(sample(0, 3 * G, 0, 8 * G)));
        }
        let h = host(32 * G, 2 * G);
        let rs = seq.tick(0, &h, &inputs);
        let rh = shared.tick(0, &h, &inputs);
        let seq_deltas: Vec<i64> = rs.decisions.iter().map(|d| d.delta).collect();
        let shared_deltas: Vec<i64> = rh.decisions.iter().map(|d| d.delta).collect();
        // Shared: everyone takes the same half-difference.
        assert!(shared_deltas.iter().all(|&d| d == shared_deltas[0]));
        // Sequential: each later VM sees a richer host and inflates less.
        assert!(seq_deltas[0] == shared_deltas[0]);
        assert!(seq_deltas[1] < seq_deltas[0] && seq_deltas[2] < seq_deltas[1]);
        assert!(seq_deltas.iter().sum::<i64>() < shared_deltas.iter().sum::<i64>());
    }

    #[test]
    fn test_psi_veto_blocks_deflation_only() {
        let mut b = Balancer::new(BalancerParams::default());
        b.add_vm("a");
        let mut h = host(32 * G, 20 * G);
        h.psi_full_avg10 = Some(25.0);
        let r = b.tick(
            0,
            &h,
            &one("a", VmInput::Sample(sample(2 * G, 100 * M, 100 * M, 8 * G))),
        );
        assert_eq!(r.decisions[0].reason, Reason::PsiVeto);
        assert!(!r.decisions[0].send);
    }

    #[test]
    fn test_guest_floor_caps_inflation() {
        let mut b = Balancer::new(BalancerParams {
            min_guest_memory: 256 * M,
            policy: PolicyParams {
                initial_guest_critical: 100 * M,
                ..PolicyParams::default()
            },
            ..BalancerParams::default()
        });
        b.add_vm("a");
        let mut s = sample(0, 900 * M, 0, G);
        s.ram_size = Some(G);
        // Host far below critical: the policy wants everything the guest can give.
        let r = b.tick(0, &host(32 * G, 0), &one("a", VmInput::Sample(s)));
        let d = &r.decisions[0];
        assert!(d.target.unwrap() <= 768 * M, "{d:?}");
        assert_eq!(d.reason, Reason::GuestFloor);
    }

    #[test]
    fn test_missing_stats_do_not_move_the_balloon() {
        let mut b = Balancer::new(BalancerParams::default());
        b.add_vm("a");
        let mut s = sample(0, G, 0, 8 * G);
        s.stats.disk_caches = None;
        let r = b.tick(0, &host(32 * G, 0), &one("a", VmInput::Sample(s)));
        assert_eq!(r.decisions[0].reason, Reason::StatsMissing);
        assert!(!r.decisions[0].send);
        assert!(r.decisions[0].detail.contains("disk_caches"));
    }

    #[test]
    fn test_restart_under_the_same_name_starts_fresh() {
        let mut b = Balancer::new(BalancerParams::default());
        let g1 = b.add_vm("a");
        // Learn a lower critical level.
        for t in 0..3 {
            b.tick(
                t * 2000,
                &host(32 * G, 8 * G),
                &one("a", VmInput::Sample(sample(0, 100 * M, 0, G))),
            );
        }
        assert!(b.vm("a").unwrap().policy.guest_critical < 400 * M);
        let g2 = b.add_vm("a");
        assert_ne!(g1, g2);
        let e = b.vm("a").unwrap();
        assert_eq!(e.policy.guest_critical, 400 * M);
        assert_eq!(e.last_sent, None);
        assert_eq!(e.counters, Counters::default());
    }

    #[test]
    fn test_unchanged_in_flight_target_is_not_resent() {
        let mut b = Balancer::new(BalancerParams {
            stall: None,
            ..BalancerParams::default()
        });
        b.add_vm("a");
        let h = host(32 * G, 1000 * M);
        let s = sample(0, 900 * M, 0, 8 * G);
        let r1 = b.tick(0, &h, &one("a", VmInput::Sample(s)));
        assert!(r1.decisions[0].send);
        // The balloon has not moved yet; the same inputs give the same target: no re-send.
        let r2 = b.tick(2000, &h, &one("a", VmInput::Sample(s)));
        assert_eq!(r2.decisions[0].target, r1.decisions[0].target);
        assert!(!r2.decisions[0].send);
        // After the Adjust failed it is sent again.
        b.adjust_failed("a");
        let r3 = b.tick(4000, &h, &one("a", VmInput::Sample(s)));
        assert!(r3.decisions[0].send);
    }

    #[test]
    fn test_stats_older_than_the_last_move_are_not_acted_on() {
        let mut b = Balancer::new(BalancerParams {
            stall: None,
            ..BalancerParams::default()
        });
        b.add_vm("a");
        let h = host(32 * G, 1000 * M);
        let mut s = sample(0, 900 * M, 0, 8 * G);
        s.stats_stamp = Some(100);
        let r1 = b.tick(0, &h, &one("a", VmInput::Sample(s)));
        assert!(r1.decisions[0].send);
        // QEMU still returns the statistics it polled before the move (same stamp).
        s.balloon_actual = r1.decisions[0].target.unwrap();
        let r2 = b.tick(1000, &h, &one("a", VmInput::Sample(s)));
        assert_eq!(r2.decisions[0].reason, Reason::StatsStale);
        assert!(!r2.decisions[0].send);
        // New statistics: decide again.
        s.stats_stamp = Some(101);
        let r3 = b.tick(2000, &h, &one("a", VmInput::Sample(s)));
        assert_ne!(r3.decisions[0].reason, Reason::StatsStale);
        // Without stamps (crosvm), statistics collected 500 ms after the move are fresh.
        let mut c = Balancer::new(BalancerParams {
            stall: None,
            ..BalancerParams::default()
        });
        c.add_vm("c");
        let mut s = sample(0, 900 * M, 0, 8 * G);
        assert!(c.tick(0, &h, &one("c", VmInput::Sample(s))).decisions[0].send);
        s.stats_age_ms = 800;
        let r = c.tick(1000, &h, &one("c", VmInput::Sample(s)));
        assert_eq!(r.decisions[0].reason, Reason::StatsStale);
        s.stats_age_ms = 0;
        let r = c.tick(2000, &h, &one("c", VmInput::Sample(s)));
        assert_ne!(r.decisions[0].reason, Reason::StatsStale);
        // Statistics that never change are used after the maximum wait.
        let mut b2 = Balancer::new(BalancerParams {
            stall: None,
            ..BalancerParams::default()
        });
        b2.add_vm("d");
        let mut s = sample(0, 900 * M, 0, 8 * G);
        s.stats_stamp = Some(7);
        assert!(b2.tick(0, &h, &one("d", VmInput::Sample(s))).decisions[0].send);
        let r = b2.tick(30_000, &h, &one("d", VmInput::Sample(s)));
        assert_eq!(r.decisions[0].reason, Reason::StatsStale);
        let r = b2.tick(61_000, &h, &one("d", VmInput::Sample(s)));
        assert_ne!(r.decisions[0].reason, Reason::StatsStale);
    }

    #[test]
    fn test_equal_inputs_give_equal_decisions() {
        let run = || {
            let mut b = Balancer::new(BalancerParams::default());
            let mut inputs = BTreeMap::new();
            for (i, name) in ["x", "y"].iter().enumerate() {
                b.add_vm(name);
                inputs.insert(
                    (*name).to_owned(),
                    VmInput::Sample(sample(i as u64 * G, 2 * G, G, 8 * G)),
                );
            }
            (0..5)
                .map(|t| b.tick(t * 2000, &host(32 * G, 3 * G), &inputs))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
