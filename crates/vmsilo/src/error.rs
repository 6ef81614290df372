//! Errors of the vmsilo tool and their exit codes (docs/exit-codes.md).

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use vmsilo_config::{ConfigError, PlanError};

/// Success.
pub const EXIT_OK: u8 = 0;
/// A runtime failure (I/O, a process that would not start, ...).
pub const EXIT_FAILURE: u8 = 1;
/// A usage or configuration error: fix the command line or the configuration.
pub const EXIT_USAGE: u8 = 2;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No configuration file exists at the default locations.
    #[error("no configuration file: tried {tried}; pass --config PATH or set VMSILO_CONFIG")]
    NoConfig {
        /// The paths looked at.
        tried: String,
    },
    /// The configuration file does not exist.
    #[error("{}: no such configuration file", path.display())]
    ConfigMissing {
        /// The path.
        path: PathBuf,
    },
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {}", path.display())]
    ReadConfig {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configuration is malformed or invalid.
    #[error("{}: {error}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The problems.
        error: ConfigError,
    },
    /// The plan cannot be built.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The configured user does not exist here.
    #[error(
        "user {user:?} (the configuration's `user`) is not in /etc/passwd: create it, or pass --uid and --gid"
    )]
    UnknownUser {
        /// The user name.
        user: String,
    },
    /// /etc/passwd could not be read.
    #[error("cannot read /etc/passwd to resolve user {user:?}; pass --uid and --gid")]
    ReadPasswd {
        /// The user name.
        user: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// A file or directory operation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done ("create", "write", ...).
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A usage error with its explanation (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Running a VM failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// Blocking the stop signals failed.
    #[error("cannot block signals")]
    BlockSignals(#[source] nix::Error),
    /// `vmsilo check --strict` found host problems (printed before).
    #[error(
        "{count} host problem{} (see above): this host cannot run the configuration as it is",
        if *count == 1 { "" } else { "s" }
    )]
    HostProblems {
        /// How many.
        count: usize,
    },
    /// systemd is not running, so a VM cannot be started or stopped through it.
    #[error(
        "cannot {verb} VM {vm:?}: systemd is not running on this machine ({} does not exist); \
         {instead}",
        dir.display()
    )]
    NoSystemd {
        /// `start` or `stop`.
        verb: &'static str,
        /// The VM.
        vm: String,
        /// systemd's runtime directory.
        dir: PathBuf,
        /// What to do instead.
        instead: String,
    },
    /// A program could not be run.
    #[error("cannot run {program}")]
    RunProgram {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// systemctl refused (its error, explained for this VM).
    #[error("{0}")]
    Systemctl(String),
    /// `vmsilo fill-home` failed (the message is the home module's).
    #[error("{0}")]
    FillHome(crate::runtime::home::HomeError),
    /// The command service stopped on an error (the message is the service's).
    #[error("{0}")]
    CommandService(String),
    /// `vmsilo sound-filter` failed.
    #[error(transparent)]
    SoundFilter(#[from] SoundFilterError),
    /// `vmsilo clipboard` failed.
    #[error(transparent)]
    Clipboard(#[from] ClipboardError),
    /// `vm-shell` failed.
    #[error(transparent)]
    Shell(#[from] ShellError),
    /// `vm-run` failed.
    #[error(transparent)]
    VmRun(#[from] VmRunError),
    /// `vmsilo net` failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A command ran but asks for this exit status (vm-service's documented codes).
    #[error("exit status {0}")]
    Exit(u8),
}

impl CliError {
    /// The exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// The exit status for this error, as a number.
    pub fn code(&self) -> u8 {
        match self {
            CliError::NoConfig { .. }
            | CliError::ConfigMissing { .. }
            | CliError::Config { .. }
            | CliError::Plan(_)
            | CliError::UnknownUser { .. }
            | CliError::Usage(_) => EXIT_USAGE,
            CliError::ReadConfig { .. }
            | CliError::ReadPasswd { .. }
            | CliError::Output(_)
            | CliError::Io { .. }
            | CliError::Net(_)
            | CliError::BlockSignals(_)
            | CliError::HostProblems { .. }
            | CliError::NoSystemd { .. }
            | CliError::RunProgram { .. }
            | CliError::Systemctl(_)
            | CliError::FillHome(_)
            | CliError::CommandService(_)
            | CliError::SoundFilter(_)
            | CliError::VmRun(_)
            | CliError::Shell(_)
            | CliError::Clipboard(_) => EXIT_FAILURE,
            CliError::Runtime(e) => e.exit_code(),
            CliError::Exit(code) => *code,
        }
    }

    /// The lines printed on stderr, each to be prefixed with `vmsilo: `.
    pub fn lines(&self) -> Vec<String> {
        match self {
            CliError::Config {
                path,
                error: ConfigError::Invalid(diags),
            } => {
                let mut out: Vec<String> = diags.iter().map(ToString::to_string).collect();
                let n = diags.len();
                out.push(format!(
                    "{}: {n} problem{} found",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                ));
                out
            }
            other => {
                let mut line = other.to_string();
                let mut src = std::error::Error::source(other);
                while let Some(s) = src {
                    line.push_str(&format!(": {s}"));
                    src = s.source();
                }
                vec![line]
            }
        }
    }

    /// Prints the error on stderr (nothing for [`CliError::Exit`], whose command has already
    /// said why).
    pub fn report(&self) {
        if matches!(self, CliError::Exit(_)) {
            return;
        }
        for line in self.lines() {
            eprintln!("vmsilo: {line}");
        }
    }
}

fn plural(n: &usize) -> &'static str {
    if *n == 1 { "" } else { "s" }
}

/// Why `vmsilo net` failed (besides configuration and file errors, which are [`CliError`]'s).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The record is not one `vmsilo net` wrote.
    #[error(
        "{} is not a record of vmsilo net ({error}): remove it (what it listed is then left in \
         place)",
        path.display()
    )]
    BadRecord {
        /// The record.
        path: PathBuf,
        /// Why it does not parse (in the message, before the advice).
        error: serde_json::Error,
    },
    /// The record could not be encoded.
    #[error(transparent)]
    EncodeRecord(serde_json::Error),
    /// Another `vmsilo net` holds the lock.
    #[error("another `vmsilo net` is running ({} is locked): wait for it", lock.display())]
    Locked {
        /// The lock file.
        lock: PathBuf,
    },
    /// No rtnetlink socket.
    #[error("cannot open an rtnetlink socket")]
    OpenRtnl(#[source] std::io::Error),
    /// The host's network could not be observed (the message is the observer's).
    #[error("{0}")]
    Observe(String),
    /// NAT is configured but nft is missing.
    #[error(
        "hostNetworking.nat: nft is not installed (not found in PATH): install nftables (Debian: \
         apt install nftables); nothing was changed"
    )]
    NoNft,
    /// The host's network conflicts with the configuration (the problems are printed first).
    #[error(
        "{count} problem{} with the host's network: nothing was changed",
        plural(count)
    )]
    Conflicts {
        /// How many.
        count: usize,
    },
    /// Some operations of `down` failed (printed first); the record keeps them.
    #[error(
        "{count} operation{} failed; run `vmsilo net down` again once fixed ({} keeps what is \
         left)",
        plural(count),
        record.display()
    )]
    DownFailed {
        /// How many.
        count: usize,
        /// The record.
        record: PathBuf,
    },
    /// An operation of `up` failed; the run's earlier operations were undone.
    #[error("{error}; what this run changed was rolled back")]
    RolledBack {
        /// The failed operation's error.
        error: String,
    },
}

/// Why `vmsilo sound-filter` stopped.
#[derive(Debug, thiserror::Error)]
pub enum SoundFilterError {
    /// Accepting a VMM connection failed.
    #[error("sound-filter: accepting on {} failed", path.display())]
    Accept {
        /// The listening socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// vhost-device-sound's socket does not answer.
    #[error(
        "sound-filter: cannot connect to vhost-device-sound at {}: {error} (is it running?)",
        path.display()
    )]
    ConnectDevice {
        /// vhost-device-sound's socket.
        path: PathBuf,
        /// Why (in the message, before the advice).
        error: std::io::Error,
    },
    /// The relay could not start.
    #[error("sound-filter: cannot start the relay")]
    StartRelay(#[source] std::io::Error),
    /// The listening socket could not be created.
    #[error("sound-filter: cannot listen on {}", path.display())]
    Listen {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why `vm-run` could not run the command (the command's own failures are its exit status).
#[derive(Debug, thiserror::Error)]
pub enum VmRunError {
    /// The signal relay thread could not start.
    #[error("cannot start the signal thread")]
    SignalThread(#[source] std::io::Error),
    /// The VM is configured, but its command socket does not exist.
    #[error(
        "VM {vm:?}: its command socket {socket} does not exist: the socket unit \
         vmsilo-{vm}.socket is not listening (`systemctl start vmsilo-{vm}.socket`; on NixOS the \
         module enables it); without systemd run the command service with \
         systemd-socket-activate (see docs/vm-run.md)"
    )]
    SocketNotListening {
        /// The VM.
        vm: String,
        /// Its command socket.
        socket: String,
    },
    /// No command socket, and no configuration to tell whether the VM exists.
    #[error(
        "VM {vm:?}: no command socket {socket}: is {vm:?} a configured VM (`vmsilo check` lists \
         them), and is vmsilo-{vm}.socket listening?"
    )]
    NoSocket {
        /// The VM.
        vm: String,
        /// Its command socket.
        socket: String,
    },
    /// The command socket is not this user's.
    #[error(
        "VM {vm:?}: permission denied on {socket}: the command socket belongs to the \
         configuration's user; run vm-run as that user"
    )]
    PermissionDenied {
        /// The VM.
        vm: String,
        /// Its command socket.
        socket: String,
    },
    /// A stale command socket.
    #[error(
        "VM {vm:?}: nothing listens on {socket} (a stale socket?): restart vmsilo-{vm}.socket \
         (`systemctl restart vmsilo-{vm}.socket`)"
    )]
    NothingListens {
        /// The VM.
        vm: String,
        /// Its command socket.
        socket: String,
    },
    /// Connecting the command socket failed otherwise.
    #[error("VM {vm:?}: cannot connect to {socket}")]
    Connect {
        /// The VM.
        vm: String,
        /// Its command socket.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An operation on the connected command socket failed.
    #[error("VM {vm:?}: command socket")]
    CommandSocket {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command service did not become ready.
    #[error("VM {vm:?}: {error} (systemctl status vmsilo-{vm}-command.service)")]
    NotReady {
        /// The VM.
        vm: String,
        /// Why, as the command client words it (in the message, before the advice).
        error: String,
    },
}

/// Why `vm-shell` could not attach (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// No address of the VM answers on the ssh port.
    #[error(
        "VM {vm:?}: no address answers on ssh port {port}: {tried}. Is the VM running (vmsilo \
         status) and sshd enabled with your key in its guestConfig (docs/runtime.md, \
         \"ssh into a VM\")? The console needs no setup: vm-shell {vm}"
    )]
    NoSsh {
        /// The VM.
        vm: String,
        /// The port.
        port: u16,
        /// What was tried, and why each failed.
        tried: String,
    },
    /// ssh could not be run.
    #[error("cannot run ssh")]
    RunSsh(#[source] std::io::Error),
    /// The VM has no console link: it is not running.
    #[error("VM {vm:?} is not running (no console at {link}): start it with `vm-start {vm}`")]
    NotRunning {
        /// The VM.
        vm: String,
        /// Its console link.
        link: String,
    },
    /// The console belongs to the configured user.
    #[error(
        "cannot open the console {link}: permission denied: it belongs to the configured user \
         ({user}); run vm-shell as them, or as root"
    )]
    NotYourConsole {
        /// The console link.
        link: String,
        /// The configured user.
        user: String,
    },
    /// The console could not be opened.
    #[error("cannot open the console {link}")]
    OpenConsole {
        /// The console link.
        link: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another vm-shell holds the console.
    #[error("another vm-shell is attached to VM {vm:?}'s console: detach it first (CTRL+])")]
    ConsoleBusy {
        /// The VM.
        vm: String,
    },
    /// The console could not be locked.
    #[error("cannot lock the console {link}")]
    LockConsole {
        /// The console link.
        link: String,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
    /// Relaying the console failed.
    #[error("console of VM {vm:?}")]
    Relay {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why `vmsilo clipboard` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClipboardError {
    /// vmsilo-clipd's socket does not answer.
    #[error(
        "could not reach vmsilo-clipd at {}: {error} (is it running? systemctl --user status \
         vmsilo-clipd)",
        path.display()
    )]
    Unreachable {
        /// Its socket.
        path: PathBuf,
        /// Why (in the message, before the advice).
        error: std::io::Error,
    },
    /// A request to vmsilo-clipd failed.
    #[error("vmsilo-clipd")]
    Request(#[source] std::io::Error),
    /// vmsilo-clipd asked for a confirmation nobody gave.
    #[error("{text} (not confirmed; pass --yes to confirm without a terminal)")]
    NotConfirmed {
        /// Its question.
        text: String,
    },
    /// vmsilo-clipd refused (its own words).
    #[error("{0}")]
    Refused(String),
    /// vmsilo-clipd answered with a message that does not answer the request.
    #[error("vmsilo-clipd answered with an unexpected {0}")]
    Unexpected(String),
    /// The content vmsilo-clipd handed over could not be read.
    #[error("could not read the content from vmsilo-clipd")]
    ReadContent,
    /// The host's content could not be put in a memfd.
    #[error("could not hold the content")]
    HoldContent(#[source] std::io::Error),
    /// wl-copy or wl-paste could not be run.
    #[error(
        "could not run {program}: {error} (install wl-clipboard; it reaches the host clipboard \
         through your Wayland session)"
    )]
    RunWl {
        /// wl-copy or wl-paste.
        program: &'static str,
        /// Why (in the message, before the advice).
        error: std::io::Error,
    },
    /// Talking to wl-copy or wl-paste failed.
    #[error("{what}")]
    Wl {
        /// What failed ("could not write to wl-copy", "wl-paste", ...).
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// wl-copy failed.
    #[error("wl-copy failed ({0})")]
    WlCopyFailed(std::process::ExitStatus),
    /// wl-paste failed: nothing of that type on the clipboard.
    #[error("wl-paste failed ({status}): the host clipboard holds nothing as {mime}")]
    WlPasteFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The type asked for.
        mime: String,
    },
    /// vmsilo-clipd could not be run.
    #[error("could not run vmsilo-clipd: {0} (is it on PATH? it is in the vmsilo package)")]
    RunClipd(std::io::Error),
}
