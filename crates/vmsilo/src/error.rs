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
    FillHome(String),
    /// The command service stopped on an error (the message is the service's).
    #[error("{0}")]
    CommandService(String),
    /// `vmsilo sound-filter` failed.
    #[error(transparent)]
    SoundFilter(#[from] crate::commands::sound_filter::SoundFilterError),
    /// `vmsilo clipboard` failed.
    #[error(transparent)]
    Clipboard(#[from] crate::commands::clipboard::ClipboardError),
    /// `vm-shell` failed.
    #[error(transparent)]
    Shell(#[from] crate::commands::shell::ShellError),
    /// `vm-run` failed.
    #[error(transparent)]
    VmRun(#[from] crate::commands::run::VmRunError),
    /// `vmsilo net` failed.
    #[error(transparent)]
    Net(#[from] crate::commands::net::NetError),
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
