//! `vmsilo vm-service <vm>` (what `vmsilo-<vm>-vm.service` runs) and `vm-start-debug <vm>`: build
//! the plan and hand it to [`crate::runtime`].

use std::path::Path;

use vmsilo_config::plan;

use crate::CliError;
use crate::cli::RunArgs;
use crate::config_file;
use crate::runtime::{self, RunOptions, exit};

/// Runs the VM in this process until it stops.
pub fn run(config: Option<&Path>, args: &RunArgs, debug: bool) -> Result<(), CliError> {
    let (_, cfg) = config_file::resolve_and_load(config)?;
    let vm = plan::find_vm(&cfg, &args.vm)?.clone();
    let opts = super::plan_options(&cfg, &args.dirs, &args.user)?;
    let p = plan::build(&cfg, &args.vm, &opts)?;
    let o = RunOptions {
        plan: p,
        vm,
        run_dir: args.dirs.run_dir.clone(),
        sysfs_root: args.sysfs_root.clone(),
        isolated_pci: cfg.isolated_pci_devices.clone(),
        home_template: args.home_template.clone(),
        shutdown_timeout: args.shutdown_timeout,
        socket_timeout: args.socket_timeout,
        debug,
    };
    match runtime::run(o)? {
        0 => Ok(()),
        exit::STOPPED_HARD => {
            eprintln!(
                "vmsilo: VM {:?}: stopped hard: the guest did not power off within {} (exit \
                 status {})",
                args.vm,
                vmsilo_config::measure::format_duration(args.shutdown_timeout),
                exit::STOPPED_HARD
            );
            Err(CliError::Exit(exit::STOPPED_HARD))
        }
        code => Err(CliError::Exit(code)),
    }
}
