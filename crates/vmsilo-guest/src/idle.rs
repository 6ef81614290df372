//! The idle watchdog: power the guest off once no command started through the agent has been
//! running for a while.
//!
//! Two ways to know whether something runs:
//! - a long-lived agent (the test guest, or `vmsilo-guest` run as a plain service) knows its
//!   own connections and children, and feeds [`IdleWatchdog`] directly;
//! - under systemd socket activation with `Accept=yes` every connection is a separate agent
//!   process, so no single process knows. Each busy agent process then keeps a marker file in
//!   a state directory ([`BusyMarker`]), commands handed to the user's service manager run in
//!   `vmsilo-run-*.service` units, and a separate `vmsilo-guest idle-watchdog` process
//!   ([`scan_busy`]) looks at both.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Idle bookkeeping with an injectable clock: callers pass `now`.
#[derive(Debug, Clone)]
pub struct IdleWatchdog {
    after: Duration,
    idle_since: Option<Instant>,
}

impl IdleWatchdog {
    /// A watchdog that starts idle at `now`: with nothing to do, the guest powers off `after`
    /// from now.
    pub fn new(after: Duration, now: Instant) -> Self {
        Self {
            after,
            idle_since: Some(now),
        }
    }

    /// The configured idle time.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Records whether anything runs at `now`. Busy stops the clock; the first idle update
    /// after busy restarts it.
    pub fn update(&mut self, busy: bool, now: Instant) {
        if busy {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
    }

    /// When the guest should power off if nothing changes; `None` while busy.
    pub fn deadline(&self) -> Option<Instant> {
        self.idle_since.map(|t| t + self.after)
    }

    /// True once the guest has been idle for `after`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`, in clock ticks since boot),
/// which together with the pid identifies it even across pid reuse.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A marker file `<state-dir>/<pid>` that exists while this agent process has a connection or
/// a command running. It holds the process start time, so a marker left by a crashed agent
/// whose pid was reused is recognised as stale.
#[derive(Debug)]
pub struct BusyMarker {
    dir: PathBuf,
    path: PathBuf,
    content: String,
    present: bool,
}

impl BusyMarker {
    /// A marker for this process in `dir` (created on first use).
    pub fn new(dir: &Path) -> Self {
        let pid = std::process::id();
        let start = process_start_time(pid).unwrap_or(0);
        Self {
            dir: dir.to_path_buf(),
            path: dir.join(pid.to_string()),
            content: format!("{start}\n"),
            present: false,
        }
    }

    /// Creates or removes the marker.
    pub fn set(&mut self, busy: bool) -> io::Result<()> {
        if busy == self.present {
            return Ok(());
        }
        if busy {
            fs::create_dir_all(&self.dir)?;
            fs::write(&self.path, &self.content)?;
        } else {
            match fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.present = busy;
        Ok(())
    }
}

impl Drop for BusyMarker {
    fn drop(&mut self) {
        let _ = self.set(false);
    }
}

/// Counts the live markers in `dir`, removing stale ones (dead process, or pid reused).
pub fn live_markers(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut live = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let recorded = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match (process_start_time(pid), recorded) {
            (Some(actual), Some(recorded)) if actual == recorded => live += 1,
            // A marker being written right now may still be empty: count it.
            (Some(_), None) => live += 1,
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    live
}

/// Counts populated `vmsilo-run-*.service` cgroups of users' service managers under
/// `<cgroup-root>/user.slice/user-*.slice/user@*.service/app.slice/`: detached commands the
/// agent handed to systemd.
pub fn running_session_units(cgroup_root: &Path) -> usize {
    let mut count = 0;
    let users = cgroup_root.join("user.slice");
    for user in read_dirs(&users, |n| n.starts_with("user-") && n.ends_with(".slice")) {
        for manager in read_dirs(&user, |n| n.starts_with("user@") && n.ends_with(".service")) {
            let app = manager.join("app.slice");
            for unit in read_dirs(&app, |n| {
                n.starts_with("vmsilo-run-") && n.ends_with(".service")
            }) {
                let events = fs::read_to_string(unit.join("cgroup.events")).unwrap_or_default();
                if events.lines().any(|l| l.trim() == "populated 1") {
                    count += 1;
                }
            }
        }
    }
    count
}

fn read_dirs(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().is_some_and(&keep))
        .map(|e| e.path())
        .collect()
}

/// What the standalone watchdog looks at.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// The agents' marker directory.
    pub state_dir: PathBuf,
    /// Where cgroup v2 is mounted, to find running `vmsilo-run-*` units; `None`: don't look.
    pub cgroup_root: Option<PathBuf>,
}

/// True if an agent process is busy or a `vmsilo-run-*` unit runs.
pub fn scan_busy(cfg: &ScanConfig) -> bool {
    live_markers(&cfg.state_dir) > 0
        || cfg
            .cgroup_root
            .as_deref()
            .is_some_and(|root| running_session_units(root) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("vmsilo-guest-idle-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn test_watchdog_expires_only_after_an_idle_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = IdleWatchdog::new(5 * s, t0);
        assert!(!w.expired(t0 + 4 * s));
        w.update(true, t0 + 4 * s);
        assert_eq!(w.deadline(), None);
        assert!(!w.expired(t0 + 100 * s), "never while busy");
        w.update(false, t0 + 100 * s);
        w.update(false, t0 + 102 * s); // still idle: the clock keeps its start
        assert!(!w.expired(t0 + 104 * s));
        assert!(w.expired(t0 + 105 * s));
        assert_eq!(w.deadline(), Some(t0 + 105 * s));
    }

    #[test]
    fn test_parses_start_time_even_with_odd_command_names() {
        let stat =
            "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert!(process_start_time(std::process::id()).is_some());
    }

    #[test]
    fn test_markers_count_live_processes_and_drop_stale_ones() {
        let dir = tmpdir("markers");
        let mut m = BusyMarker::new(&dir);
        assert_eq!(live_markers(&dir), 0);
        m.set(true).unwrap();
        assert_eq!(live_markers(&dir), 1);
        // A dead pid, and a live pid with the wrong start time (reused pid).
        fs::write(dir.join("999999999"), "1\n").unwrap();
        fs::write(dir.join("1"), "1\n").unwrap();
        fs::write(dir.join("not-a-pid"), "").unwrap();
        assert_eq!(live_markers(&dir), 1);
        assert!(!dir.join("999999999").exists());
        m.set(false).unwrap();
        assert_eq!(live_markers(&dir), 0);
        m.set(true).unwrap();
        drop(m);
        assert_eq!(live_markers(&dir), 0, "dropping the marker removes it");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_finds_populated_vmsilo_units_in_a_cgroup_tree() {
        let root = tmpdir("cgroup");
        let app = root.join("user.slice/user-1000.slice/user@1000.service/app.slice");
        for (unit, populated) in [
            ("vmsilo-run-firefox-1.service", "0"),
            ("other.service", "1"),
        ] {
            fs::create_dir_all(app.join(unit)).unwrap();
            fs::write(
                app.join(unit).join("cgroup.events"),
                format!("populated {populated}\nfrozen 0\n"),
            )
            .unwrap();
        }
        assert_eq!(running_session_units(&root), 0);
        let unit = app.join("vmsilo-run-konsole-2.service");
        fs::create_dir_all(&unit).unwrap();
        fs::write(unit.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(running_session_units(&root), 1);
        let cfg = ScanConfig {
            state_dir: root.join("no-state"),
            cgroup_root: Some(root.clone()),
        };
        assert!(scan_busy(&cfg));
        let _ = fs::remove_dir_all(&root);
    }
}
