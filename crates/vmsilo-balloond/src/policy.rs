//! ChromeOS's `BalanceAvailableBalloonPolicy`, ported as a pure function over per-VM state.
//!
//! The policy moves a balloon so that the guest's headroom above its critical level (minus a bias
//! that grows with balloon fullness) equals the host's headroom above its critical level, taking
//! half of the difference each tick (inflating by X gives the host X and takes X from the guest).
//! The steps follow ChromiumOS platform2 `vm_tools/concierge/balloon_policy.cc`
//! (`BalanceAvailableBalloonPolicy::ComputeBalloonDeltaImpl`); `docs/vmsilo-balloond.md`
//! ("BalanceAvailable") lists them and where vmsilo deviates.
//!
//! Everything here is signed 64-bit byte arithmetic with truncating division, as in ChromeOS, but
//! saturating: the numbers come from a guest and a guest is hostile, so nothing may overflow or
//! panic whatever it reports.

use serde::{Deserialize, Serialize};

/// One mebibyte in bytes, signed (policy arithmetic is signed).
pub const MIB: i64 = 1 << 20;
/// ChromeOS's initial guess of the guest's critical available level (`400 MiB`): above the zone
/// min margin of large guests and above Android LMKD's kill level.
pub const INITIAL_GUEST_CRITICAL: u64 = 400 << 20;
/// The learning rule only fires while the balloon is less than this full (percent).
pub const FULLNESS_GATE_PERCENT: i64 = 95;
/// `MAX_CRITICAL_DELTA`: how far past either side's headroom a single move may go.
pub const MAX_CRITICAL_DELTA: i64 = 10 * MIB;
/// A side within this of its critical level always gets a move, whatever the deadband says.
pub const NEAR_CRITICAL: i64 = MIB;
/// The deadband: act only when `|delta| * 100 / headroom` is greater than this (integer division,
/// so the effective threshold is 2 %).
pub const DEADBAND_QUOTIENT: i64 = 1;

/// Which guest figure counts as "available".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GuestAvailableSource {
    /// ChromeOS: `free_memory + disk_caches`. Counts tmpfs/shmem as if it were reclaimable.
    #[default]
    FreePlusCaches,
    /// The guest's own `available_memory` (`MemAvailable`), which excludes shmem.
    Available,
}

impl GuestAvailableSource {
    /// The spelling used on the command line and in the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FreePlusCaches => "free-plus-caches",
            Self::Available => "available",
        }
    }
}

/// How the two clamp bounds are applied when they cross (host and guest both short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClampMode {
    /// `if raw < lo { lo } else if raw > hi { hi } else { raw }`: when `lo > hi` the lower bound
    /// wins, i.e. the host is protected (what libc++ `std::clamp` does in practice).
    #[default]
    CrossingSafe,
    /// crosvm's Rust original: a negative delta is only bounded below, a positive one only above.
    BySign,
}

/// The policy's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyParams {
    /// `guestAvailableBias` in bytes, scaled by balloon fullness.
    pub guest_bias: u64,
    /// The starting guest critical level (ChromeOS: 400 MiB).
    pub initial_guest_critical: u64,
    /// Which guest figure counts as available.
    pub guest_available: GuestAvailableSource,
    /// How crossing clamp bounds are resolved.
    pub clamp: ClampMode,
    /// Initialise the fullness denominator from the VM's RAM size when the VMM reports it,
    /// instead of from the guest's `total_memory` (which shrinks with the balloon on guests
    /// without `DEFLATE_ON_OOM`).
    pub max_balloon_from_ram: bool,
}

impl Default for PolicyParams {
    fn default() -> Self {
        Self {
            guest_bias: 300 << 20,
            initial_guest_critical: INITIAL_GUEST_CRITICAL,
            guest_available: GuestAvailableSource::FreePlusCaches,
            clamp: ClampMode::CrossingSafe,
            max_balloon_from_ram: true,
        }
    }
}

/// What the policy remembers about one VM between ticks. Create it when the VM appears, drop it
/// when the VM goes away or restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Largest balloon ever seen (the fullness denominator); 0 until the first sample.
    pub max_balloon: u64,
    /// The learned guest critical level: starts at the initial guess and only ever decreases.
    pub guest_critical: u64,
    /// The previous sample's guest available and fullness, for the learning rule. `None` until
    /// the first sample (ChromeOS leaves it undefined in C++ and 0 in the Rust original, which
    /// lets a low first sample set the critical level to 0 for good).
    pub prev: Option<(i64, i64)>,
}

impl PolicyState {
    /// Fresh state for a newly discovered VM.
    pub fn new(params: &PolicyParams) -> Self {
        Self {
            max_balloon: 0,
            guest_critical: params.initial_guest_critical,
            prev: None,
        }
    }
}

/// The inputs of one policy evaluation for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyInput {
    /// Bytes held by the balloon now.
    pub actual: u64,
    /// The guest's available figure (free + caches, or `available_memory`), already chosen.
    pub guest_available: u64,
    /// The guest's `total_memory`.
    pub total: u64,
    /// The VM's RAM size when known.
    pub ram_size: Option<u64>,
    /// The host's available memory (possibly the sequential estimate).
    pub host_available: i64,
    /// The host's critical level.
    pub host_critical: i64,
    /// Whether this sample may teach the learning rule. `false` right after the balloon
    /// stalled or shrank by itself: a guest that "survived" a low level only because
    /// deflate-on-OOM handed it the balloon's pages did not show that it copes at that level.
    pub learn: bool,
}

/// Which clamp bound, if any, limited the move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clamp {
    /// The raw delta was within the bounds.
    None,
    /// Limited by the host's headroom (never deflate more than host headroom + 10 MiB).
    Host,
    /// Limited by the guest's headroom (never inflate more than guest headroom + 10 MiB).
    Guest,
}

/// Why the policy did or did not act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// The guest is within 1 MiB of (or below) its critical level.
    GuestCritical,
    /// The host is within 1 MiB of (or below) its critical level.
    HostCritical,
    /// The move is at least 2 % of the guest's or the host's headroom.
    Significant,
    /// The move is less than 2 % of both headrooms: no change.
    Deadband,
}

/// Everything the policy computed, so that a decision can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOutcome {
    /// Guest available as used by the policy.
    pub guest_available: i64,
    /// Balloon fullness in percent of the largest balloon seen.
    pub full_percent: i64,
    /// The bias applied (bytes).
    pub bias: i64,
    /// The guest critical level after learning.
    pub guest_critical: u64,
    /// Whether the learning rule lowered the guest critical level this time.
    pub learned: bool,
    /// Guest headroom above critical, minus bias.
    pub guest_above: i64,
    /// Host headroom above critical.
    pub host_above: i64,
    /// Half the headroom difference, before clamping (positive = inflate).
    pub raw_delta: i64,
    /// The lower clamp bound.
    pub lower: i64,
    /// The upper clamp bound.
    pub upper: i64,
    /// Which bound limited the move.
    pub clamp: Clamp,
    /// Why the policy acted or not.
    pub trigger: Trigger,
    /// The balloon change to make (0 inside the deadband; never below `-actual`).
    pub delta: i64,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `|raw| * 100 / headroom > 1`, saturating; `headroom` is at least [`NEAR_CRITICAL`] here.
fn significant(raw: i64, headroom: i64) -> bool {
    raw.saturating_abs().saturating_mul(100) / headroom.max(1) > DEADBAND_QUOTIENT
}

/// One BalanceAvailable evaluation (the steps of `balloon_policy.cc`, see the module docs). Updates `state` (largest balloon, learned
/// critical level, previous sample) and returns the move with every intermediate value.
pub fn balance_available(
    state: &mut PolicyState,
    params: &PolicyParams,
    input: &PolicyInput,
) -> PolicyOutcome {
    // 1. The fullness denominator: 3/4 of the guest's memory on the first sample.
    if state.max_balloon == 0 {
        let base = match (params.max_balloon_from_ram, input.ram_size) {
            (true, Some(ram)) => ram,
            _ => input.total,
        };
        state.max_balloon = u64::try_from(u128::from(base) * 3 / 4).unwrap_or(u64::MAX);
    }
    state.max_balloon = state.max_balloon.max(input.actual);

    // 2.-3. Guest available and balloon fullness.
    let g_avail = to_i64(input.guest_available);
    let actual = to_i64(input.actual);
    let full_percent = if state.max_balloon == 0 {
        0
    } else {
        i64::try_from(u128::from(input.actual) * 100 / u128::from(state.max_balloon))
            .unwrap_or(i64::MAX)
    };

    // 4. Learning rule: two low samples in a row with a non-full balloon mean the guest survived
    // at that level, so its real critical level is lower. Never on the first sample.
    let critical = to_i64(state.guest_critical);
    let mut learned = false;
    if let Some((prev_avail, prev_full)) = state.prev
        && input.learn
        && g_avail < critical
        && full_percent < FULLNESS_GATE_PERCENT
        && prev_avail < critical
        && prev_full < FULLNESS_GATE_PERCENT
    {
        state.guest_critical = u64::try_from(prev_avail.max(0)).unwrap_or(0);
        learned = true;
    }
    let critical = to_i64(state.guest_critical);

    // 5.-7. Bias, headrooms and the raw move.
    let bias = i64::try_from(
        u128::from(params.guest_bias) * u128::try_from(full_percent.max(0)).unwrap_or(0) / 100,
    )
    .unwrap_or(i64::MAX);
    let guest_above = g_avail.saturating_sub(critical).saturating_sub(bias);
    let host_above = input.host_available.saturating_sub(input.host_critical);
    let raw = guest_above.saturating_sub(host_above) / 2;

    // 8. Clamp, never panicking when the bounds cross.
    let lower = host_above
        .saturating_add(MAX_CRITICAL_DELTA)
        .saturating_neg();
    let upper = g_avail
        .saturating_sub(critical)
        .saturating_add(MAX_CRITICAL_DELTA);
    let (clamped, clamp) = match params.clamp {
        ClampMode::CrossingSafe => {
            if raw < lower {
                (lower, Clamp::Host)
            } else if raw > upper {
                (upper, Clamp::Guest)
            } else {
                (raw, Clamp::None)
            }
        }
        ClampMode::BySign => {
            if raw < 0 && raw < lower {
                (lower, Clamp::Host)
            } else if raw > 0 && raw > upper {
                (upper, Clamp::Guest)
            } else {
                (raw, Clamp::None)
            }
        }
    };

    // 9. Remember this sample for the learning rule (not a tainted one).
    state.prev = input.learn.then_some((g_avail, full_percent));

    // 10. Deadband on the unclamped move (faithful: ChromeOS tests `raw`, returns the clamp).
    let trigger = if guest_above < NEAR_CRITICAL {
        Trigger::GuestCritical
    } else if host_above < NEAR_CRITICAL {
        Trigger::HostCritical
    } else if significant(raw, guest_above) || significant(raw, host_above) {
        Trigger::Significant
    } else {
        Trigger::Deadband
    };

    // 11. Never below an empty balloon.
    let delta = if trigger == Trigger::Deadband {
        0
    } else {
        clamped.max(actual.saturating_neg())
    };

    PolicyOutcome {
        guest_available: g_avail,
        full_percent,
        bias,
        guest_critical: state.guest_critical,
        learned,
        guest_above,
        host_above,
        raw_delta: raw,
        lower,
        upper,
        clamp,
        trigger,
        delta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    fn params(bias_mib: u64) -> PolicyParams {
        PolicyParams {
            guest_bias: bias_mib * M,
            ..PolicyParams::default()
        }
    }

    fn input(actual_mib: u64, avail_mib: u64, host_avail_mib: i64) -> PolicyInput {
        PolicyInput {
            actual: actual_mib * M,
            guest_available: avail_mib * M,
            total: 8 * G,
            ram_size: None,
            host_available: host_avail_mib * MIB,
            // 5 % of 32 GiB, in bytes (1638.4 MiB).
            host_critical: (32 * G as i64) * 5 / 100,
            learn: true,
        }
    }

    #[test]
    fn test_worked_example_tick1_inflates_1119_mib_tick2_holds() {
        let p = params(300);
        let mut s = PolicyState::new(&p);
        // Tick 1: free 1500 + cached 2500, balloon 0, host available 3000 MiB.
        let out = balance_available(&mut s, &p, &input(0, 4000, 3000));
        assert_eq!(s.max_balloon, 6144 * M);
        assert_eq!(out.full_percent, 0);
        assert_eq!(out.bias, 0);
        assert_eq!(out.guest_above, 3600 * MIB);
        assert_eq!(out.trigger, Trigger::Significant);
        assert_eq!(out.clamp, Clamp::None);
        assert_eq!(out.delta / MIB, 1119);
        // Tick 2: the balloon reached its target and the host got the memory 1:1.
        let actual = u64::try_from(out.delta).unwrap();
        let mut i2 = input(0, 2881, 3000 + 1119);
        i2.actual = actual;
        let out2 = balance_available(&mut s, &p, &i2);
        assert_eq!(out2.full_percent, 18);
        assert_eq!(out2.bias, 54 * MIB);
        assert_eq!(out2.guest_above, 2427 * MIB);
        assert_eq!(out2.raw_delta / MIB, -26);
        assert_eq!(out2.trigger, Trigger::Deadband);
        assert_eq!(out2.delta, 0);
    }

    #[test]
    fn test_policy_table() {
        // (name, bias MiB, actual MiB, guest available MiB, host available MiB,
        //  expected delta MiB (truncated), expected clamp, expected trigger)
        let host_crit_mib = 1638; // 1638.4
        type Case = (&'static str, u64, u64, u64, i64, i64, Clamp, Trigger);
        let cases: &[Case] = &[
            (
                "balanced: no move",
                0,
                0,
                2000,
                2000 - 400 + host_crit_mib,
                0,
                Clamp::None,
                Trigger::Deadband,
            ),
            (
                "guest rich: inflate half the difference",
                0,
                0,
                3400,
                host_crit_mib + 1000,
                1000,
                Clamp::None,
                Trigger::Significant,
            ),
            (
                "host rich: deflate, never below empty",
                0,
                100,
                500,
                host_crit_mib + 5000,
                -100,
                Clamp::None,
                Trigger::Significant,
            ),
            (
                "host rich: deflate half the difference",
                0,
                4000,
                500,
                host_crit_mib + 2101,
                -1000,
                Clamp::None,
                Trigger::Significant,
            ),
            (
                "host below critical, the guest can cover it",
                0,
                0,
                3000,
                host_crit_mib - 1000,
                1800,
                Clamp::None,
                Trigger::HostCritical,
            ),
            (
                "host far below critical, the guest cannot cover it: bounds cross, host wins",
                0,
                0,
                600,
                host_crit_mib - 3000,
                2990,
                Clamp::Host,
                Trigger::HostCritical,
            ),
            (
                "guest below critical, host has 100 MiB: deflate clamped to host headroom + 10",
                0,
                2000,
                100,
                host_crit_mib + 101,
                -110,
                Clamp::Host,
                Trigger::GuestCritical,
            ),
            (
                "both short, bounds cross: host protected (lower bound wins)",
                0,
                1000,
                300,
                host_crit_mib - 100,
                90,
                Clamp::Host,
                Trigger::GuestCritical,
            ),
            (
                "1 % move is inside the deadband (integer quotient 1)",
                0,
                0,
                400 + 2000,
                host_crit_mib + 1960,
                0,
                Clamp::None,
                Trigger::Deadband,
            ),
            (
                "2.5 % move acts",
                0,
                0,
                400 + 2000,
                host_crit_mib + 1900,
                50,
                Clamp::None,
                Trigger::Significant,
            ),
        ];
        for &(name, bias, actual, avail, host, want, clamp, trigger) in cases {
            let p = params(bias);
            let mut s = PolicyState::new(&p);
            let out = balance_available(&mut s, &p, &input(actual, avail, host));
            assert_eq!(out.delta / MIB, want, "{name}: {out:?}");
            assert_eq!(out.clamp, clamp, "{name}: {out:?}");
            assert_eq!(out.trigger, trigger, "{name}: {out:?}");
        }
    }

    #[test]
    fn test_bias_scales_with_fullness() {
        let p = params(300);
        let mut s = PolicyState::new(&p);
        // 8 GiB guest: max balloon 6144 MiB; a 3072 MiB balloon is 50 % full.
        let out = balance_available(&mut s, &p, &input(3072, 2000, 5000));
        assert_eq!(out.full_percent, 50);
        assert_eq!(out.bias, 150 * MIB);
        assert_eq!(out.guest_above, (2000 - 400 - 150) * MIB);
    }

    #[test]
    fn test_max_balloon_prefers_ram_size_and_grows_with_actual() {
        let p = params(0);
        let mut s = PolicyState::new(&p);
        let mut i = input(0, 2000, 3000);
        i.total = 4 * G; // shrunk by a balloon on a guest without DEFLATE_ON_OOM
        i.ram_size = Some(8 * G);
        balance_available(&mut s, &p, &i);
        assert_eq!(s.max_balloon, 6 * G);
        i.actual = 7 * G;
        balance_available(&mut s, &p, &i);
        assert_eq!(s.max_balloon, 7 * G);

        let faithful = PolicyParams {
            max_balloon_from_ram: false,
            ..p
        };
        let mut s = PolicyState::new(&faithful);
        i.actual = 0;
        balance_available(&mut s, &faithful, &i);
        assert_eq!(s.max_balloon, 3 * G);
    }

    #[test]
    fn test_learning_needs_two_low_samples_and_never_fires_on_the_first() {
        let p = params(0);
        let mut s = PolicyState::new(&p);
        // First sample low: no learning (the crosvm original would set critical to 0 here).
        let out = balance_available(&mut s, &p, &input(0, 150, 3000));
        assert!(!out.learned);
        assert_eq!(s.guest_critical, INITIAL_GUEST_CRITICAL);
        // Second low sample: critical becomes the previous sample's available.
        let out = balance_available(&mut s, &p, &input(0, 120, 3000));
        assert!(out.learned);
        assert_eq!(s.guest_critical, 150 * M);
        // A higher sample never raises it again.
        balance_available(&mut s, &p, &input(0, 3000, 3000));
        assert_eq!(s.guest_critical, 150 * M);
    }

    #[test]
    fn test_tainted_samples_neither_learn_nor_count_as_previous() {
        let p = params(0);
        let mut s = PolicyState::new(&p);
        let mut i = input(0, 20, 3000);
        i.learn = false;
        balance_available(&mut s, &p, &i);
        assert_eq!(s.prev, None);
        let out = balance_available(&mut s, &p, &i);
        assert!(!out.learned);
        // The first clean sample after the taint is a first sample again.
        let out = balance_available(&mut s, &p, &input(0, 150, 3000));
        assert!(!out.learned);
        assert_eq!(s.guest_critical, INITIAL_GUEST_CRITICAL);
    }

    #[test]
    fn test_learning_is_gated_by_balloon_fullness() {
        let p = params(0);
        let mut s = PolicyState::new(&p);
        // 95 % of 6144 MiB = 5837 MiB: a full balloon explains the low level.
        balance_available(&mut s, &p, &input(6000, 150, 3000));
        let out = balance_available(&mut s, &p, &input(6000, 120, 3000));
        assert!(!out.learned);
        assert_eq!(s.guest_critical, INITIAL_GUEST_CRITICAL);
    }

    #[test]
    fn test_by_sign_clamp_keeps_sign() {
        let p = PolicyParams {
            clamp: ClampMode::BySign,
            ..params(0)
        };
        let mut s = PolicyState::new(&p);
        // Both short: raw is positive, so only the upper bound applies (guest protected).
        let out = balance_available(&mut s, &p, &input(1000, 300, 1638 - 100));
        assert_eq!(out.clamp, Clamp::Guest);
        assert_eq!(out.delta / MIB, -90);
    }

    #[test]
    fn test_hostile_numbers_never_panic() {
        let p = params(300);
        let extremes = [0, 1, M, u64::MAX / 2, u64::MAX - 1, u64::MAX];
        let hosts = [i64::MIN, -1, 0, i64::MAX];
        for &a in &extremes {
            for &g in &extremes {
                for &t in &extremes {
                    for &h in &hosts {
                        let mut s = PolicyState::new(&p);
                        let i = PolicyInput {
                            actual: a,
                            guest_available: g,
                            total: t,
                            ram_size: Some(t),
                            host_available: h,
                            host_critical: h / 3,
                            learn: true,
                        };
                        let out = balance_available(&mut s, &p, &i);
                        let out2 = balance_available(&mut s, &p, &i);
                        assert!(out.delta >= to_i64(a).saturating_neg());
                        assert!(out2.guest_critical <= out.guest_critical);
                    }
                }
            }
        }
    }

    /// The policy's invariants over a deterministic sweep of inputs: no negative target, deadband means
    /// no move, critical never rises, equal inputs give equal outputs.
    #[test]
    fn test_invariants_over_a_sweep() {
        let p = params(300);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut s = PolicyState::new(&p);
        for _ in 0..20_000 {
            let i = PolicyInput {
                actual: next() % (8 * G),
                guest_available: next() % (8 * G),
                total: 8 * G,
                ram_size: None,
                host_available: i64::try_from(next() % (32 * G)).unwrap() - 2 * G as i64,
                host_critical: 1638 * MIB,
                learn: true,
            };
            let before = s.clone();
            let out = balance_available(&mut s, &p, &i);
            let target = to_i64(i.actual) + out.delta;
            assert!(target >= 0, "{i:?} {out:?}");
            if out.trigger == Trigger::Deadband {
                assert_eq!(out.delta, 0);
            }
            assert!(s.guest_critical <= before.guest_critical);
            let mut again = before.clone();
            assert_eq!(balance_available(&mut again, &p, &i), out);
            assert_eq!(again, s);
        }
    }
}
