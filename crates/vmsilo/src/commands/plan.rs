//! `vmsilo plan <vm>`: print how a VM is launched.

use std::io::Write;
use std::path::Path;

use vmsilo_config::plan::{self, PlanOptions, render_text};
use vmsilo_config::{Dirs, ValidConfig};

use crate::CliError;
use crate::cli::PlanArgs;
use crate::config_file;
use crate::users::{self, UserIds};

/// The configured user's ids: from the command line, else `/etc/passwd`.
fn user_ids(cfg: &ValidConfig, args: &PlanArgs) -> Result<UserIds, CliError> {
    if let (Some(uid), Some(gid)) = (args.uid, args.gid) {
        return Ok(UserIds { uid, gid });
    }
    let found = users::lookup_file(Path::new("/etc/passwd"), &cfg.user).map_err(|source| {
        CliError::ReadPasswd {
            user: cfg.user.clone(),
            source,
        }
    })?;
    let ids = found.ok_or_else(|| CliError::UnknownUser {
        user: cfg.user.clone(),
    })?;
    Ok(UserIds {
        uid: args.uid.unwrap_or(ids.uid),
        gid: args.gid.unwrap_or(ids.gid),
    })
}

/// Runs `vmsilo plan`.
pub fn run(config: Option<&Path>, args: &PlanArgs) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    // An unknown VM is reported before the user lookup, which may fail on another host.
    plan::find_vm(&cfg, &args.vm)?;
    let ids = user_ids(&cfg, args)?;
    let opts = PlanOptions {
        dirs: Dirs {
            run_dir: args.run_dir.clone(),
            vm_switch_dir: args.vm_switch_dir.clone(),
            state_dir: args.state_dir.clone(),
        },
        uid: ids.uid,
        gid: ids.gid,
        wayland_socket: args.wayland_socket.clone(),
    };
    let p = plan::build(&cfg, &args.vm, &opts)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&p).map_err(|e| CliError::Output(e.into()))?;
        s.push('\n');
        s
    } else {
        render_text(&p)
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(CliError::Output)
}
