//! `vmsilo plan <vm>`: print how a VM is launched.

use std::io::Write;
use std::path::Path;

use vmsilo_config::plan::{self, render_text};

use crate::CliError;
use crate::cli::PlanArgs;
use crate::config_file;

/// Runs `vmsilo plan`.
pub fn run(config: Option<&Path>, args: &PlanArgs) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    // An unknown VM is reported before the user lookup, which may fail on another host.
    plan::find_vm(&cfg, &args.vm)?;
    let opts = super::plan_options(&cfg, &args.dirs, &args.user)?;
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
