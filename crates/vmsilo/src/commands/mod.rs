//! One module per subcommand.

use std::path::Path;

use vmsilo_config::plan::PlanOptions;
use vmsilo_config::{Dirs, ValidConfig};

use crate::CliError;
use crate::cli::{Cli, Command, DirArgs, UserArgs};
use crate::users::{self, UserIds};

pub mod check;
pub mod clipboard;
pub mod command_service;
pub mod completions;
pub mod desktop_entries;
pub mod generator;
pub mod net;
pub mod plan;
pub mod run;
pub mod shell;
pub mod sound_filter;
pub mod status;
pub mod systemctl;
pub mod units;
pub mod vm_service;

/// Runs the subcommand.
pub fn dispatch(cli: Cli) -> Result<(), CliError> {
    let config = cli.global.config.as_deref();
    match cli.command {
        Command::Check(args) => check::run(config, &args),
        Command::Clipboard(args) => clipboard::run(config, &args),
        Command::Plan(args) => plan::run(config, &args),
        Command::Units(args) => units::run(config, &args),
        Command::Net(args) => net::run(config, &args),
        Command::Generator(args) => generator::run(config, &args),
        Command::Status(args) => status::run(config, &args),
        Command::Run(args) => run::run(config, &args),
        Command::CommandService(args) => command_service::run(config, &args),
        Command::DesktopEntries(args) => desktop_entries::run(&args),
        Command::Start(args) => systemctl::run(config, systemctl::Verb::Start, &args.vm),
        Command::Stop(args) => systemctl::run(config, systemctl::Verb::Stop, &args.vm),
        Command::StartDebug(args) => vm_service::run(config, &args, true),
        Command::VmService(args) => vm_service::run(config, &args, false),
        Command::Shell(args) => shell::run(config, &args),
        Command::Completions(args) => completions::completions(&args),
        Command::Man(args) => completions::man(&args),
        Command::ListVms => completions::list_vms(config),
        Command::SoundFilter(args) => sound_filter::run(&args),
        Command::FillHome(args) => {
            let home = crate::runtime::home::inherited_home().map_err(CliError::FillHome)?;
            crate::runtime::home::fill(&args.template, &home).map_err(CliError::FillHome)
        }
    }
}

/// The configured user's ids: from the command line, else `/etc/passwd`.
pub fn user_ids(cfg: &ValidConfig, args: &UserArgs) -> Result<UserIds, CliError> {
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

/// Plan options from the command line's directories and user.
pub fn plan_options(
    cfg: &ValidConfig,
    dirs: &DirArgs,
    user: &UserArgs,
) -> Result<PlanOptions, CliError> {
    let ids = user_ids(cfg, user)?;
    Ok(PlanOptions {
        dirs: Dirs {
            run_dir: dirs.run_dir.clone(),
            vm_switch_dir: dirs.vm_switch_dir.clone(),
            state_dir: dirs.state_dir.clone(),
        },
        uid: ids.uid,
        gid: ids.gid,
        wayland_socket: user.wayland_socket.clone(),
    })
}
