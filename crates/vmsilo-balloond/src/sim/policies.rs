//! The policies compared by the simulator. `vmsilo` and `chromeos` run the real policy core
//! ([`crate::balancer::Balancer`]) unchanged; `qmemman` and `mom` are small re-implementations of
//! Qubes' qmemman (`QubesOS/qubes-core-admin`, `qubes/qmemman/algo.py`) and oVirt MOM
//! (`oVirt/mom`, `doc/balloon.rules`), adapted to a
//! host whose free memory is `MemAvailable` above the critical level.

use std::collections::{BTreeMap, VecDeque};

use crate::balancer::{Balancer, BalancerParams, Reason, VmInput};
use crate::host::HostSample;
use crate::stall::Millis;
use crate::stats::BalloonSample;

const MIB: f64 = 1048576.0;

/// What a policy sees of one VM at a tick.
#[derive(Debug, Clone)]
pub struct VmView {
    /// VM name.
    pub name: String,
    /// Stats, or `None` when the VM does not answer.
    pub sample: Option<BalloonSample>,
    /// RAM (MiB), known to the baselines (their config has it).
    pub ram_mib: f64,
}

/// A policy's output for one tick.
#[derive(Debug, Clone, Default)]
pub struct PolicyOut {
    /// Balloon targets to send (VM name, bytes).
    pub adjusts: Vec<(String, u64)>,
    /// Stall back-offs (VM name, true when triggered by a spontaneous shrink).
    pub stalls: Vec<(String, bool)>,
}

/// A balloon policy under simulation.
pub trait SimPolicy {
    /// Short name for the table.
    fn name(&self) -> String;
    /// Tick period (ms).
    fn interval_ms(&self) -> Millis;
    /// A VM appeared (or restarted under the same name).
    fn add_vm(&mut self, name: &str);
    /// A VM went away.
    fn remove_vm(&mut self, name: &str);
    /// The daemon restarts: forget everything about the VMs (they keep running).
    fn restart(&mut self, names: &[String]);
    /// One tick.
    fn tick(&mut self, now: Millis, host: &HostSample, vms: &[VmView]) -> PolicyOut;
    /// The learned guest critical level of `name` (MiB), when the policy has one.
    fn guest_critical(&self, _name: &str) -> Option<f64> {
        None
    }
}

/// The real policy core.
#[derive(Debug)]
pub struct CorePolicy {
    label: String,
    params: BalancerParams,
    balancer: Balancer,
}

impl CorePolicy {
    /// Wraps a balancer with `params` under `label`.
    pub fn new(label: &str, params: BalancerParams) -> Self {
        Self {
            label: label.to_owned(),
            params,
            balancer: Balancer::new(params),
        }
    }
}

impl SimPolicy for CorePolicy {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn interval_ms(&self) -> Millis {
        self.params.poll_interval_ms
    }

    fn add_vm(&mut self, name: &str) {
        self.balancer.add_vm(name);
    }

    fn remove_vm(&mut self, name: &str) {
        self.balancer.remove_vm(name);
    }

    fn restart(&mut self, names: &[String]) {
        self.balancer = Balancer::new(self.params);
        for n in names {
            self.balancer.add_vm(n);
        }
    }

    fn tick(&mut self, now: Millis, host: &HostSample, vms: &[VmView]) -> PolicyOut {
        let mut inputs = BTreeMap::new();
        for v in vms {
            if !self.balancer.wants_stats(&v.name, now) {
                continue;
            }
            let input = match v.sample {
                Some(s) => VmInput::Sample(s),
                None => VmInput::Failed("no reply within the request timeout".into()),
            };
            inputs.insert(v.name.clone(), input);
        }
        let report = self.balancer.tick(now, host, &inputs);
        let mut out = PolicyOut::default();
        for d in report.decisions {
            if d.reason == Reason::StallBackoff {
                out.stalls
                    .push((d.vm.clone(), d.detail.contains("shrank by itself")));
            }
            if d.send
                && let Some(t) = d.target
            {
                out.adjusts.push((d.vm, t));
            }
        }
        out
    }

    fn guest_critical(&self, name: &str) -> Option<f64> {
        self.balancer
            .vm(name)
            .map(|e| e.policy.guest_critical as f64 / MIB)
    }
}

fn mib(v: Option<u64>) -> Option<f64> {
    v.map(|b| b as f64 / MIB)
}

/// Qubes qmemman, adapted: the memory pool is host `MemAvailable` above the critical level
/// (Xen free memory above `XEN_FREE_MEM_LEFT` in Qubes); a VM's allocation is RAM − balloon.
#[derive(Debug, Default)]
pub struct Qmemman {}

/// `CACHE_FACTOR`.
const CACHE_FACTOR: f64 = 1.3;
/// `MIN_PREFMEM` (MiB).
const MIN_PREFMEM: f64 = 200.0;
/// `MIN_TOTAL_MEMORY_TRANSFER` (MiB).
const MIN_TOTAL_TRANSFER: f64 = 150.0;
/// `MIN_MEM_CHANGE_WHEN_UNDER_PREF` (MiB).
const MIN_CHANGE_UNDER_PREF: f64 = 15.0;

impl SimPolicy for Qmemman {
    fn name(&self) -> String {
        "qmemman".into()
    }
    fn interval_ms(&self) -> Millis {
        // Qubes reacts to meminfo changes (100 ms writer, 30 MB hysteresis); 1 s is close.
        1000
    }
    fn add_vm(&mut self, _: &str) {}
    fn remove_vm(&mut self, _: &str) {}
    fn restart(&mut self, _: &[String]) {}

    fn tick(&mut self, _now: Millis, host: &HostSample, vms: &[VmView]) -> PolicyOut {
        let crit = host.mem_total as f64 * 0.05;
        let pool = host.mem_available as f64 - crit;
        struct D {
            name: String,
            ram: f64,
            actual: f64,
            pref: f64,
        }
        let doms: Vec<D> = vms
            .iter()
            .filter_map(|v| {
                let s = v.sample?;
                let free = mib(s.stats.free_memory)?;
                let cached = mib(s.stats.disk_caches)?;
                let total = mib(s.stats.total_memory)?;
                let balloon = s.balloon_actual as f64 / MIB;
                // Ballooned pages count as used in a DEFLATE_ON_OOM guest's MemTotal.
                let used = (total - free - cached - balloon).max(0.0);
                let ram = v.ram_mib;
                Some(D {
                    name: v.name.clone(),
                    ram,
                    actual: ram - balloon,
                    pref: (used * CACHE_FACTOR).clamp(MIN_PREFMEM, ram),
                })
            })
            .collect();
        if doms.is_empty() {
            return PolicyOut::default();
        }
        let pool_mib = pool / MIB;
        let needed: f64 = doms.iter().map(|d| d.pref - d.actual).sum();
        let total_available = pool_mib - needed;
        let mut targets: Vec<(usize, f64)> = Vec::new();
        if total_available > 0.0 {
            let sum_pref: f64 = doms.iter().map(|d| d.pref).sum();
            for (i, d) in doms.iter().enumerate() {
                let t = 0.999 * (d.pref + d.pref / sum_pref * total_available);
                targets.push((i, t.min(d.ram)));
            }
        } else {
            // Low memory: donors to pref; acceptors share what is left (as coded in algo.py,
            // donors' excess is subtracted, so it reaches acceptors only in a later round).
            let donors: Vec<usize> = (0..doms.len())
                .filter(|&i| doms[i].actual > doms[i].pref + 10.0)
                .collect();
            let excess: f64 = donors.iter().map(|&i| doms[i].actual - doms[i].pref).sum();
            for &i in &donors {
                targets.push((i, doms[i].pref));
            }
            let s = pool_mib - excess;
            let acceptors: Vec<usize> = (0..doms.len())
                .filter(|&i| doms[i].actual < doms[i].pref)
                .collect();
            if s > 0.0 {
                let sum_pref: f64 = acceptors.iter().map(|&i| doms[i].pref).sum();
                for &i in &acceptors {
                    let d = &doms[i];
                    let t = 0.999 * (d.actual + d.pref / sum_pref.max(1.0) * s);
                    targets.push((i, t.min(d.ram)));
                }
            }
        }
        // Significance filter.
        let transfer: f64 = targets
            .iter()
            .map(|&(i, t)| (t - doms[i].actual).abs())
            .sum();
        let under_pref_gain = targets.iter().any(|&(i, t)| {
            doms[i].actual < doms[i].pref && t - doms[i].actual > MIN_CHANGE_UNDER_PREF
        });
        let significant =
            pool_mib < -15.0 || under_pref_gain || transfer + pool_mib.abs() > MIN_TOTAL_TRANSFER;
        let mut out = PolicyOut::default();
        if !significant {
            return out;
        }
        for (i, t) in targets {
            let d = &doms[i];
            let balloon = (d.ram - t).clamp(0.0, d.ram);
            if (t - d.actual).abs() >= 1.0 {
                out.adjusts.push((d.name.clone(), (balloon * MIB) as u64));
            }
        }
        out
    }
}

/// oVirt MOM's balloon rules: sample every 5 s, average 10 samples, act every 10 s; shrink all
/// guests by up to 5 % while host free < 20 %, else grow them by 5 %.
#[derive(Debug, Default)]
pub struct Mom {
    host: VecDeque<f64>,
    guests: BTreeMap<String, VecDeque<(f64, f64)>>,
    ticks: u64,
}

const MOM_HISTORY: usize = 10;

impl SimPolicy for Mom {
    fn name(&self) -> String {
        "mom".into()
    }
    fn interval_ms(&self) -> Millis {
        5000
    }
    fn add_vm(&mut self, name: &str) {
        self.guests.insert(name.to_owned(), VecDeque::new());
    }
    fn remove_vm(&mut self, name: &str) {
        self.guests.remove(name);
    }
    fn restart(&mut self, names: &[String]) {
        *self = Self::default();
        for n in names {
            self.add_vm(n);
        }
    }

    fn tick(&mut self, _now: Millis, host: &HostSample, vms: &[VmView]) -> PolicyOut {
        fn push<T>(q: &mut VecDeque<T>, v: T) {
            q.push_back(v);
            if q.len() > MOM_HISTORY {
                q.pop_front();
            }
        }
        push(
            &mut self.host,
            host.mem_available as f64 / host.mem_total as f64,
        );
        for v in vms {
            if let Some(s) = v.sample
                && let Some(free) = mib(s.stats.free_memory)
            {
                let cur = v.ram_mib - s.balloon_actual as f64 / MIB;
                push(self.guests.entry(v.name.clone()).or_default(), (cur, free));
            }
        }
        self.ticks += 1;
        let mut out = PolicyOut::default();
        // Policy every other sample (10 s).
        if !self.ticks.is_multiple_of(2) {
            return out;
        }
        let host_free = self.host.iter().sum::<f64>() / self.host.len().max(1) as f64;
        for v in vms {
            let Some(s) = v.sample else { continue };
            let Some(hist) = self.guests.get(&v.name).filter(|h| !h.is_empty()) else {
                continue;
            };
            let n = hist.len() as f64;
            let avg_cur = hist.iter().map(|h| h.0).sum::<f64>() / n;
            let avg_unused = hist.iter().map(|h| h.1).sum::<f64>() / n;
            let used = avg_cur - avg_unused;
            let cur = v.ram_mib - s.balloon_actual as f64 / MIB;
            let balloon_min = 256.0_f64.min(v.ram_mib);
            let new = if host_free < 0.20 {
                let frac = if host_free <= 0.05 {
                    host_free - 0.05
                } else {
                    0.20 * host_free / 0.20
                };
                (0.95 * cur).max(used + frac * cur).max(balloon_min)
            } else {
                (1.05 * cur).min(v.ram_mib)
            };
            let new = new.min(v.ram_mib);
            if (new - cur).abs() > 0.0025 * cur {
                let balloon = (v.ram_mib - new).max(0.0);
                out.adjusts.push((v.name.clone(), (balloon * MIB) as u64));
            }
        }
        out
    }
}
