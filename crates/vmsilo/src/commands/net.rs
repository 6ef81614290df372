//! `vmsilo net up|down`: the host's TAPs, bridge ports, forwarding and NAT on hosts without
//! the NixOS module (what `vmsilo-net.service` runs). The decisions are in
//! [`crate::hostnet`]; this module reads the record `<run>/net.json`, takes the lock
//! `<run>/net.lock`, observes, plans, carries the plan out (rolling back a failed `up`) and
//! writes the record.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::CliError;
use crate::cli::{NetAction, NetArgs};
use crate::commands::user_ids;
use crate::config_file;
use crate::error::NetError;
use crate::hostnet::{self, Op, Plan, Record, io};
use crate::runtime::state::{LockError, VmLock};

/// `<run>/net.json`: what `vmsilo net up` changed.
pub fn record_path(run_dir: &str) -> PathBuf {
    PathBuf::from(vmsilo_config::Dirs::with_run_dir(run_dir).net_record())
}

/// Largest record read.
const MAX_RECORD: u64 = 1024 * 1024;

fn read_record(path: &Path) -> Result<Record, CliError> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Record::default()),
        Err(source) => {
            return Err(CliError::Io {
                what: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut text = String::new();
    f.take(MAX_RECORD)
        .read_to_string(&mut text)
        .map_err(|source| CliError::Io {
            what: "read",
            path: path.to_owned(),
            source,
        })?;
    serde_json::from_str(&text).map_err(|error| {
        NetError::BadRecord {
            path: path.to_owned(),
            error,
        }
        .into()
    })
}

fn write_record(path: &Path, record: &Record) -> Result<(), CliError> {
    let io_err = |source| CliError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    };
    if record.changes.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err(e)),
            _ => Ok(()),
        };
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).map_err(NetError::EncodeRecord)?;
    std::fs::write(&tmp, text + "\n").map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)
}

fn run_ops(rtnl: &mut io::Rtnl, ops: &[Op]) -> Result<(), (usize, String)> {
    for (n, op) in ops.iter().enumerate() {
        io::apply(rtnl, op).map_err(|e| (n, e))?;
    }
    Ok(())
}

/// Runs `vmsilo net`.
pub fn run(config: Option<&Path>, args: &NetArgs) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    if !args.host.vmsilo_sets_up() && args.action == NetAction::Up {
        eprintln!(
            "vmsilo: the NixOS module sets up TAPs, bridges and NAT on this host (/etc/NIXOS \
             exists): nothing to do (pass --host-setup vmsilo to do it anyway)"
        );
        return Ok(());
    }
    let dir = Path::new(&args.run_dir);
    if !args.dry_run && !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .map_err(|source| CliError::Io {
                what: "create",
                path: dir.to_owned(),
                source,
            })?;
    }
    let _lock = if args.dry_run {
        None
    } else {
        let lock = PathBuf::from(vmsilo_config::Dirs::with_run_dir(&args.run_dir).net_lock());
        Some(VmLock::take(&lock).map_err(|e| match e {
            LockError::Held => NetError::Locked { lock }.into(),
            LockError::Io(source) => CliError::Io {
                what: "create the lock",
                path: lock,
                source,
            },
        })?)
    };
    let path = record_path(&args.run_dir);
    let record = read_record(&path)?;
    let mut rtnl = io::Rtnl::open().map_err(NetError::OpenRtnl)?;
    let obs = io::observe(&mut rtnl).map_err(NetError::Observe)?;
    let plan: Plan = match args.action {
        NetAction::Up => {
            let uid = user_ids(&cfg, &args.user)?.uid;
            let desired = hostnet::desired(&cfg, uid);
            if desired.nat.is_some() && crate::runtime::checks::find_program("nft").is_none() {
                return Err(NetError::NoNft.into());
            }
            match hostnet::plan_up(&desired, &obs, &record) {
                Ok(p) => p,
                Err(errors) => {
                    for e in &errors {
                        eprintln!("vmsilo: {e}");
                    }
                    return Err(NetError::Conflicts {
                        count: errors.len(),
                    }
                    .into());
                }
            }
        }
        NetAction::Down => hostnet::plan_down(&obs, &record),
    };
    if args.dry_run {
        for op in &plan.ops {
            println!("{op}");
        }
        return Ok(());
    }
    if args.action == NetAction::Down {
        // Best effort: everything that can be undone is, even past a failure.
        let failures: Vec<String> = plan
            .ops
            .iter()
            .filter_map(|op| io::apply(&mut rtnl, op).err())
            .collect();
        if failures.is_empty() {
            return write_record(&path, &plan.record);
        }
        for f in &failures {
            eprintln!("vmsilo: {f}");
        }
        // The record stays: `down` again retries what is left (it skips what is gone).
        return Err(NetError::DownFailed {
            count: failures.len(),
            record: path,
        }
        .into());
    }
    match run_ops(&mut rtnl, &plan.ops) {
        Ok(()) => write_record(&path, &plan.record),
        Err((failed, e)) => {
            // Roll back this run's operations, newest first; the earlier record stays true.
            for op in plan.ops[..failed].iter().rev() {
                if let Some(inv) = hostnet::inverse(op, obs.ip_forward)
                    && let Err(e2) = io::apply(&mut rtnl, &inv)
                {
                    eprintln!("vmsilo: rolling back: {e2}");
                }
            }
            Err(NetError::RolledBack { error: e }.into())
        }
    }
}
