//! Command-line definitions (clap derive), and the multi-call entry points.
//!
//! One binary serves several names: `vmsilo <subcommand>`, and `vm-run`, `vm-start`, `vm-stop`,
//! `vm-start-debug`, `vm-shell`, `vmsilo-generator` (symlinks to `vmsilo`) which are the
//! subcommands `run`, `start`, `stop`, `start-debug`, `shell`, `generator` under their own name.
//! [`parse_from`] picks the entry point from `argv[0]`; [`multi_call_command`] gives the clap
//! definition of each name (for help, completion scripts and man pages).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// vmsilo: run untrusted programs in small VMs.
#[derive(Debug, Parser)]
#[command(name = "vmsilo", version, about, propagate_version = true)]
pub struct Cli {
    /// Options of every command.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command has.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file (.json is read as JSON, anything else as TOML). Default:
    /// /etc/vmsilo/vmsilo.toml, else /etc/vmsilo/vmsilo.json.
    #[arg(long, global = true, env = "VMSILO_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration; print one line per VM, or every problem found (exit 2).
    Check(CheckArgs),
    /// The global clipboard between VMs and the host: copy, paste, to-host, from-host,
    /// status, wipe (see docs/clipboard.md).
    Clipboard(crate::commands::clipboard::ClipboardArgs),
    /// Print how a VM is launched: the backends to start and the VMM command line.
    Plan(PlanArgs),
    /// Write the systemd units and the polkit rule the configuration turns into.
    Units(UnitsArgs),
    /// Set up (`up`) or undo (`down`) the host's TAPs, bridge ports, forwarding and NAT on hosts
    /// without the NixOS module: what `vmsilo-net.service` runs (as root).
    Net(NetArgs),
    /// Show the VMs: state, uptime, memory, PID, command socket.
    Status(StatusArgs),
    /// Run a command in a VM, starting the VM if needed (also `vm-run <vm> <command>`).
    Run(VmRunArgs),
    /// Start a VM through systemd (also `vm-start <vm>`).
    Start(VmArg),
    /// Stop a VM through systemd: the guest gets an ACPI power button (also `vm-stop <vm>`).
    Stop(VmArg),
    /// Run a VM in the foreground with its console and the VMM's output on this terminal, without
    /// systemd (also `vm-start-debug <vm>`).
    StartDebug(RunArgs),
    /// Attach to a running VM's serial console, or ssh to it (also `vm-shell <vm>`).
    Shell(ShellArgs),
    /// Run a VM: the process `vmsilo-<vm>-vm.service` runs (as root).
    VmService(RunArgs),
    /// Serve a VM's command socket (socket activation): start the VM on demand and connect
    /// each vm-run to the guest agent; what `vmsilo-<vm>-command.service` runs.
    CommandService(CommandServiceArgs),
    /// Write host .desktop files that launch a VM's guest programs through vm-run.
    DesktopEntries(DesktopEntriesArgs),
    /// systemd generator: write the units into NORMAL (also `vmsilo-generator`).
    #[command(hide = true)]
    Generator(GeneratorArgs),
    /// Write shell completion scripts for vmsilo and the vm-* commands.
    Completions(CompletionsArgs),
    /// Write man pages for vmsilo, its subcommands and the vm-* commands.
    Man(ManArgs),
    /// Print the configured VM names, one per line (used by shell completion).
    #[command(hide = true)]
    ListVms,
    /// Copy the home template into a new shared home: what vm-service runs as the configured
    /// user, with the home directory on descriptor 3.
    #[command(hide = true)]
    FillHome(FillHomeArgs),
    /// Relay a VM's vhost-user sound connection to vhost-device-sound without the capture
    /// stream: what vm-service runs for a VM with `sound.capture = false`.
    #[command(hide = true)]
    SoundFilter(SoundFilterArgs),
}

/// `vmsilo sound-filter` (internal).
#[derive(Debug, Args)]
pub struct SoundFilterArgs {
    /// The socket the VMM connects to.
    #[arg(long, value_name = "SOCKET")]
    pub listen: PathBuf,
    /// vhost-device-sound's socket.
    #[arg(long, value_name = "SOCKET")]
    pub device: PathBuf,
}

/// `vmsilo fill-home` (internal).
#[derive(Debug, Args)]
pub struct FillHomeArgs {
    /// The home template to copy.
    #[arg(long, value_name = "DIR")]
    pub template: PathBuf,
}

/// `vmsilo check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub host: HostArgs,

    /// Where vmsilo sets up the host (not NixOS): fail (exit 1) when TAPs, bridges, NAT or
    /// PCI passthrough cannot work on this host, instead of warning.
    #[arg(long)]
    pub strict: bool,

    /// Root of the sysfs tree looked at for PCI devices, IOMMU groups and vfio-pci.
    #[arg(
        long,
        env = "VMSILO_SYSFS_ROOT",
        value_name = "DIR",
        default_value = "/sys"
    )]
    pub sysfs_root: PathBuf,
}

/// Who sets up the host's network and PCI devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostSetup {
    /// The NixOS module when /etc/NIXOS exists, else vmsilo.
    Auto,
    /// The NixOS module (`programs.vmsilo`): no vmsilo-net.service.
    Nixos,
    /// vmsilo itself: vmsilo-net.service, vfio-pci binding at VM start.
    Vmsilo,
}

/// `--host-setup`.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// Who sets up TAPs, bridges, NAT and vfio-pci: the NixOS module, or vmsilo (hosts
    /// without it). `auto`: the NixOS module when /etc/NIXOS exists.
    #[arg(
        long,
        env = "VMSILO_HOST_SETUP",
        value_name = "WHO",
        default_value = "auto"
    )]
    pub host_setup: HostSetup,
}

impl HostArgs {
    /// Whether vmsilo sets up the host itself (not the NixOS module).
    pub fn vmsilo_sets_up(&self) -> bool {
        match self.host_setup {
            HostSetup::Nixos => false,
            HostSetup::Vmsilo => true,
            HostSetup::Auto => !Path::new("/etc/NIXOS").exists(),
        }
    }
}

/// `vmsilo net`.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// up: create what the configuration asks for (idempotent, undoes what it no longer asks
    /// for); down: undo what `up` did.
    #[arg(value_enum)]
    pub action: NetAction,

    /// Print the operations instead of carrying them out.
    #[arg(long)]
    pub dry_run: bool,

    /// Directory of the record of what `up` changed (`net.json`).
    #[arg(long, env = "VMSILO_RUN_DIR", value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_RUN_DIR)]
    pub run_dir: String,

    #[command(flatten)]
    pub user: UserArgs,

    #[command(flatten)]
    pub host: HostArgs,
}

/// `vmsilo net up|down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetAction {
    /// Set up TAPs, addresses, bridge ports, forwarding and NAT.
    Up,
    /// Undo what `up` set up.
    Down,
}

/// The three runtime directories, shared by every command that touches a running VM.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// Directory of sockets and consoles.
    #[arg(long, env = "VMSILO_RUN_DIR", value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_RUN_DIR)]
    pub run_dir: String,

    /// Directory of vm-switch networks.
    #[arg(long, value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_VM_SWITCH_DIR)]
    pub vm_switch_dir: String,

    /// Directory of persistent state (overlay images).
    #[arg(long, value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_STATE_DIR)]
    pub state_dir: String,
}

/// The configured user's ids, when /etc/passwd should not be asked.
#[derive(Debug, Clone, Args)]
pub struct UserArgs {
    /// The configured user's uid (default: looked up in /etc/passwd).
    #[arg(long)]
    pub uid: Option<u32>,

    /// The configured user's gid (default: looked up in /etc/passwd).
    #[arg(long)]
    pub gid: Option<u32>,

    /// The user's Wayland socket (default: `/run/user/<uid>/wayland-0`).
    #[arg(long, value_name = "PATH")]
    pub wayland_socket: Option<String>,
}

/// `vmsilo plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The VM.
    pub vm: String,

    /// Print the plan as JSON (argv, backends, runtime paths, derived values).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub dirs: DirArgs,

    #[command(flatten)]
    pub user: UserArgs,
}

/// `vmsilo units`.
#[derive(Debug, Args)]
pub struct UnitsArgs {
    /// Output directory: units go to DIR/systemd/, the polkit rule to DIR/polkit/50-vmsilo.rules.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    #[command(flatten)]
    pub bins: BinArgs,
}

/// Where the units' programs are. Default: this executable, and `vm-switch` /
/// `vmsilo-balloond` in the same directory.
#[derive(Debug, Clone, Args)]
pub struct BinArgs {
    /// The vmsilo executable named in ExecStart= lines.
    #[arg(long, env = "VMSILO_BIN", value_name = "PATH")]
    pub vmsilo_bin: Option<PathBuf>,

    /// The vm-switch executable.
    #[arg(long, env = "VMSILO_VM_SWITCH_BIN", value_name = "PATH")]
    pub vm_switch_bin: Option<PathBuf>,

    /// The vmsilo-balloond executable.
    #[arg(long, env = "VMSILO_BALLOOND_BIN", value_name = "PATH")]
    pub balloond_bin: Option<PathBuf>,

    #[command(flatten)]
    pub host: HostArgs,
}

/// `vmsilo-generator NORMAL [EARLY LATE]` (systemd.generator(7)).
#[derive(Debug, Args)]
pub struct GeneratorArgs {
    /// Directory for units of normal priority (the only one written).
    pub normal: PathBuf,
    /// Directory for units that override /etc (unused).
    pub early: Option<PathBuf>,
    /// Directory for units of low priority (unused).
    pub late: Option<PathBuf>,

    #[command(flatten)]
    pub bins: BinArgs,
}

/// A VM name.
#[derive(Debug, Args)]
pub struct VmArg {
    /// The VM.
    #[arg(value_name = "VM")]
    pub vm: String,
}

/// `vmsilo vm-service` and `vm-start-debug`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The VM.
    #[arg(value_name = "VM")]
    pub vm: String,

    #[command(flatten)]
    pub dirs: DirArgs,

    #[command(flatten)]
    pub user: UserArgs,

    /// Copied into a shared home the first time it is used (when the home does not exist or
    /// is empty).
    #[arg(long, value_name = "DIR", default_value = crate::runtime::DEFAULT_HOME_TEMPLATE)]
    pub home_template: PathBuf,

    /// Root of the sysfs tree used to check PCI devices' IOMMU groups.
    #[arg(
        long,
        env = "VMSILO_SYSFS_ROOT",
        value_name = "DIR",
        default_value = "/sys"
    )]
    pub sysfs_root: PathBuf,

    /// How long the guest gets to power off after the ACPI power button before the VMM is
    /// stopped hard.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,

    /// How long to wait for each backend's, vm-switch's and the VMM's sockets to appear.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub socket_timeout: std::time::Duration,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    vmsilo_config::measure::parse_duration(text).map_err(|e| e.to_string())
}

/// `vmsilo command-service`.
#[derive(Debug, Clone, Args)]
pub struct CommandServiceArgs {
    /// The VM, and the options for the `vmsilo vm-service` this service runs itself when
    /// systemd is not running.
    #[command(flatten)]
    pub run: RunArgs,

    /// How long a connection waits for the guest agent to answer (while the VM starts and
    /// boots) before it gets an error.
    #[arg(
        long,
        env = "VMSILO_AGENT_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub agent_timeout: Duration,
}

/// `vm-run` (`vmsilo run`).
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: the command's own with --wait (128+N if signal N killed it), 127 \
                  command not found, 126 not executable; 0 once a detached command has \
                  started; 1 when vmsilo failed (the VM did not start, ...); 2 for a usage \
                  error or a VM that is not configured."
)]
pub struct VmRunArgs {
    /// Wait for the command: attach stdin, stdout and stderr, forward signals and the
    /// terminal size, and exit with its status.
    #[arg(short = 'w', long)]
    pub wait: bool,

    /// With --wait: give the command a terminal in the guest (the default when stdin and
    /// stdout are terminals).
    #[arg(short = 't', long, requires = "wait", conflicts_with = "no_tty")]
    pub tty: bool,

    /// With --wait: no terminal in the guest, even when stdin and stdout are terminals.
    #[arg(short = 'T', long)]
    pub no_tty: bool,

    /// With --wait: give the command an empty stdin instead of this one.
    #[arg(short = 'n', long, requires = "wait")]
    pub no_stdin: bool,

    /// Set an environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Working directory in the guest (default: the user's home directory).
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Guest account to run the command as (default: the agent's user).
    #[arg(short = 'u', long, value_name = "NAME")]
    pub user: Option<String>,

    /// Print the command's process id in the guest (detached), and say when the VM starts.
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// How long the guest agent may take to answer once the command service connected to it
    /// (to say it speaks the protocol and that the command started) before vm-run gives up.
    #[arg(
        long,
        env = "VMSILO_ANSWER_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub answer_timeout: Duration,

    /// Directory of sockets and consoles.
    #[arg(long, env = "VMSILO_RUN_DIR", value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_RUN_DIR)]
    pub run_dir: String,

    /// The VM.
    #[arg(value_name = "VM")]
    pub vm: String,

    /// The command and its arguments, as in the guest.
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

/// `vmsilo desktop-entries`.
#[derive(Debug, Args)]
pub struct DesktopEntriesArgs {
    /// The VM the entries launch programs in.
    #[arg(long, value_name = "VM")]
    pub vm: String,

    /// The VM's colour (written as X-Vmsilo-Color).
    #[arg(long, value_name = "COLOR")]
    pub color: Option<String>,

    /// A directory of the guest's .desktop files, e.g. `<package>/share/applications`
    /// (repeatable; missing directories are skipped).
    #[arg(long = "from", value_name = "DIR")]
    pub from: Vec<PathBuf>,

    /// A JSON list of extra entries: `[{"name": ..., "exec": ..., "icon": ..., "categories":
    /// [...]}]`.
    #[arg(long, value_name = "FILE")]
    pub entries: Option<PathBuf>,

    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `vmsilo status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this VM.
    #[arg(value_name = "VM")]
    pub vm: Option<String>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Directory of sockets and consoles.
    #[arg(long, env = "VMSILO_RUN_DIR", value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_RUN_DIR)]
    pub run_dir: String,

    /// vmsilo-balloond's status socket (default: `<run-dir>/balloond.status`).
    #[arg(long, value_name = "PATH")]
    pub balloond_status: Option<PathBuf>,
}

/// `vm-shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The VM.
    #[arg(value_name = "VM")]
    pub vm: String,

    /// ssh as the guest user (`user`) to the first of the VM's addresses (any interface, TAPs
    /// first) that answers on the ssh port, instead of attaching to the console.
    #[arg(long)]
    pub ssh: bool,

    /// With --ssh: log in as root.
    #[arg(long, requires = "ssh")]
    pub root: bool,

    /// Directory of sockets and consoles.
    #[arg(long, env = "VMSILO_RUN_DIR", value_name = "DIR", default_value = vmsilo_config::paths::DEFAULT_RUN_DIR)]
    pub run_dir: String,

    /// With --ssh: extra arguments for ssh (after `--`).
    #[arg(last = true, value_name = "SSH-ARGS")]
    pub ssh_args: Vec<String>,
}

/// A shell for completion scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `vmsilo completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: Shell,

    /// Output directory (one file per command).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `vmsilo man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Output directory (section 1 pages).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The multi-call names and the subcommand each stands for.
pub const MULTI_CALL: &[(&str, &str)] = &[
    ("vm-run", "run"),
    ("vm-start", "start"),
    ("vm-stop", "stop"),
    ("vm-start-debug", "start-debug"),
    ("vm-shell", "shell"),
    ("vmsilo-generator", "generator"),
];

/// The clap definition of a multi-call name (`vm-start`, ...): the subcommand with the global
/// options, under its own name.
pub fn multi_call_command(name: &str) -> Option<clap::Command> {
    let (_, sub) = MULTI_CALL.iter().find(|(n, _)| *n == name)?;
    let root = Cli::command();
    let mut cmd = root.find_subcommand(sub)?.clone();
    // Global options are copied by hand: building the root to propagate them would also fix
    // the usage line to "vmsilo <sub>".
    for global in root.get_arguments().filter(|a| a.is_global_set()) {
        cmd = cmd.arg(global.clone());
    }
    Some(
        cmd.name(name.to_owned())
            .bin_name(name.to_owned())
            .display_name(name.to_owned())
            .version(env!("CARGO_PKG_VERSION"))
            .hide(false),
    )
}

/// What `argv[0]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `vmsilo ...`.
    Vmsilo,
    /// One of [`MULTI_CALL`].
    MultiCall(&'static str),
}

/// The entry point named by `argv[0]` (its file name).
pub fn entry(argv0: &std::ffi::OsStr) -> Entry {
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("vmsilo");
    match MULTI_CALL.iter().find(|(n, _)| *n == name) {
        Some((n, _)) => Entry::MultiCall(n),
        None => Entry::Vmsilo,
    }
}

/// Parses a command line for the entry point `argv[0]` names.
pub fn parse_from(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let argv0 = args.first().cloned().unwrap_or_else(|| "vmsilo".into());
    let Entry::MultiCall(name) = entry(&argv0) else {
        return Cli::try_parse_from(args);
    };
    if name == "vm-run"
        && let Some(cli) = parse_vm_run_quickly(&args)
    {
        return Ok(cli);
    }
    parse_multi_call(name, args)
}

/// Parses the command line of a multi-call name with its full definition.
fn parse_multi_call(name: &str, args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let cmd = multi_call_command(name).expect("every MULTI_CALL name is a subcommand");
    let m = cmd.try_get_matches_from(args)?;
    let config = m.get_one::<PathBuf>("config").cloned();
    let command = match name {
        "vm-run" => Command::Run(VmRunArgs::from_arg_matches(&m)?),
        "vm-start" => Command::Start(VmArg::from_arg_matches(&m)?),
        "vm-stop" => Command::Stop(VmArg::from_arg_matches(&m)?),
        "vm-start-debug" => Command::StartDebug(RunArgs::from_arg_matches(&m)?),
        "vm-shell" => Command::Shell(ShellArgs::from_arg_matches(&m)?),
        _ => Command::Generator(GeneratorArgs::from_arg_matches(&m)?),
    };
    Ok(Cli {
        global: GlobalArgs { config },
        command,
    })
}

/// Parses a `vm-run` command line with a definition of only its own options: building the
/// whole `vmsilo` definition costs more than everything else vm-run's host side does for a
/// warm command (`cargo xtask bench vm-run`). `None` for anything but a successful parse
/// (help, version, errors), which then goes through the full definition, so every message is
/// the same.
fn parse_vm_run_quickly(args: &[OsString]) -> Option<Cli> {
    let cmd = GlobalArgs::augment_args(VmRunArgs::augment_args(clap::Command::new("vm-run")));
    let m = cmd.try_get_matches_from(args).ok()?;
    Some(Cli {
        global: GlobalArgs::from_arg_matches(&m).ok()?,
        command: Command::Run(VmRunArgs::from_arg_matches(&m).ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        for (name, _) in MULTI_CALL {
            multi_call_command(name).expect(name).debug_assert();
        }
    }

    #[test]
    fn test_entry_from_argv0_uses_the_file_name() {
        assert_eq!(
            entry("/nix/store/x/bin/vm-start".as_ref()),
            Entry::MultiCall("vm-start")
        );
        assert_eq!(
            entry("vmsilo-generator".as_ref()),
            Entry::MultiCall("vmsilo-generator")
        );
        assert_eq!(entry("./vm-run".as_ref()), Entry::MultiCall("vm-run"));
        assert_eq!(entry("/usr/bin/vmsilo".as_ref()), Entry::Vmsilo);
        assert_eq!(entry("something-else".as_ref()), Entry::Vmsilo);
    }

    #[test]
    fn test_quick_vm_run_parse_matches_the_full_definition() {
        let lines: [&[&str]; 4] = [
            &["vm-run", "b", "firefox"],
            &[
                "vm-run", "--config", "/c", "-w", "-e", "A=1", "-C", "/tmp", "b", "ls", "-l",
            ],
            &[
                "vm-run",
                "-wtv",
                "--run-dir",
                "/r",
                "-u",
                "x",
                "b",
                "sh",
                "-c",
                "--",
                "x",
            ],
            &["vm-run", "-n", "-w", "-T", "b", "--", "--weird"],
        ];
        for line in lines {
            let args: Vec<OsString> = line.iter().map(OsString::from).collect();
            let quick = parse_vm_run_quickly(&args).expect("quick parse");
            let full = parse_multi_call("vm-run", args).expect("full parse");
            assert_eq!(format!("{quick:?}"), format!("{full:?}"), "{line:?}");
        }
        // Help and errors are left to the full definition.
        for line in [
            &["vm-run", "--help"][..],
            &["vm-run", "b"],
            &["vm-run", "-t", "b", "x"],
        ] {
            let args: Vec<OsString> = line.iter().map(OsString::from).collect();
            assert!(parse_vm_run_quickly(&args).is_none(), "{line:?}");
        }
    }

    #[test]
    fn test_multi_call_parses_as_the_subcommand_with_global_config() {
        let cli = parse_from(
            ["vm-start", "--config", "/x.toml", "banking"]
                .map(OsString::from)
                .to_vec(),
        )
        .expect("parses");
        assert_eq!(cli.global.config.as_deref(), Some(Path::new("/x.toml")));
        assert!(matches!(cli.command, Command::Start(VmArg { ref vm }) if vm == "banking"));

        let cli = parse_from(
            ["vm-shell", "--ssh", "--root", "b"]
                .map(OsString::from)
                .to_vec(),
        )
        .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Shell(ShellArgs {
                ssh: true,
                root: true,
                ..
            })
        ));

        let cli = parse_from(
            ["vmsilo-generator", "a", "b", "c"]
                .map(OsString::from)
                .to_vec(),
        )
        .expect("parses");
        assert!(
            matches!(cli.command, Command::Generator(GeneratorArgs { ref normal, .. }) if normal == Path::new("a"))
        );
        let err = parse_from(["vm-shell", "--root", "b"].map(OsString::from).to_vec())
            .expect_err("--root needs --ssh");
        assert!(err.to_string().contains("--ssh"), "{err}");
        let err = parse_from(["vm-stop"].map(OsString::from).to_vec()).expect_err("needs a VM");
        assert!(err.to_string().contains("vm-stop"), "{err}");
    }
}
