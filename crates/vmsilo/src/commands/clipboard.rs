//! `vmsilo clipboard`: the global clipboard from the host. `copy`/`paste` move a VM's
//! clipboard into and out of vmsilo-clipd's slot (as the chords do); `to-host`/`from-host`
//! move the slot to and from the host's own clipboard through the user's Wayland connection
//! (wl-copy/wl-paste of wl-clipboard); `daemon` runs vmsilo-clipd with the configured policy.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{Args, Subcommand};
use vmsilo_clipd::chan::{self, Client};
use vmsilo_clipd::proto::{Msg, Outcome};

use crate::CliError;
use crate::config_file;
use crate::error::ClipboardError;

/// `vmsilo clipboard`.
#[derive(Debug, Args)]
pub struct ClipboardArgs {
    /// vmsilo-clipd's socket (default: $XDG_RUNTIME_DIR/vmsilo-clipd.socket).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub action: ClipboardAction,
}

/// `vmsilo clipboard <action>`.
#[derive(Debug, Subcommand)]
pub enum ClipboardAction {
    /// Copy a VM's clipboard into the global clipboard.
    Copy {
        /// The VM.
        vm: String,
    },
    /// Paste the global clipboard into a VM's clipboard (and empty it).
    Paste {
        /// The VM.
        vm: String,
        /// Confirm without asking when the policy says `ask`.
        #[arg(long)]
        yes: bool,
    },
    /// Paste the global clipboard into the host's clipboard (wl-copy; and empty it).
    ToHost {
        /// Confirm without asking when the policy says `ask`.
        #[arg(long)]
        yes: bool,
    },
    /// Copy the host's clipboard (wl-paste) into the global clipboard.
    FromHost {
        /// The MIME type to take.
        #[arg(long, default_value = "text/plain;charset=utf-8")]
        mime: String,
    },
    /// Show what the global clipboard holds (metadata only).
    Status,
    /// Empty the global clipboard.
    Wipe,
    /// Run vmsilo-clipd with the configured `clipboard` settings (the user service runs
    /// this).
    Daemon,
}

/// How long clipd may take to answer (it waits up to 3 s for a VM).
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest host clipboard content read (clipd applies its own, smaller cap).
const MAX_HOST: u64 = 64 << 20;

fn socket(args: &ClipboardArgs) -> Result<PathBuf, CliError> {
    args.socket
        .clone()
        .or_else(vmsilo_clipd::default_socket)
        .ok_or_else(|| {
            CliError::Usage(
                "XDG_RUNTIME_DIR is not set: pass --socket /run/user/<uid>/vmsilo-clipd.socket"
                    .into(),
            )
        })
}

fn connect(path: &Path) -> Result<Client, CliError> {
    Client::connect(path).map_err(|error| {
        ClipboardError::Unreachable {
            path: path.to_owned(),
            error,
        }
        .into()
    })
}

fn ask(text: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{text} — go ahead? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && line.trim().eq_ignore_ascii_case("y")
}

/// Sends `msg`; on `ask`, asks on the terminal and sends `confirmed` instead.
fn request(
    c: &Client,
    msg: Msg,
    confirmed: Option<Msg>,
) -> Result<(Msg, Option<std::os::fd::OwnedFd>), CliError> {
    let io = |e: std::io::Error| CliError::from(ClipboardError::Request(e));
    let (reply, fd) = c.request(&msg, None, REPLY_TIMEOUT).map_err(io)?;
    if let (
        Msg::Reply {
            outcome: Outcome::NeedConfirm,
            text,
        },
        Some(confirmed),
    ) = (&reply, confirmed)
    {
        if ask(text) {
            return c.request(&confirmed, None, REPLY_TIMEOUT).map_err(io);
        }
        return Err(ClipboardError::NotConfirmed { text: text.clone() }.into());
    }
    Ok((reply, fd))
}

fn outcome(reply: Msg) -> Result<(), CliError> {
    match reply {
        Msg::Reply {
            outcome: Outcome::Ok,
            text,
        } => {
            println!("{text}");
            Ok(())
        }
        Msg::Reply { text, .. } => Err(ClipboardError::Refused(text).into()),
        other => Err(ClipboardError::Unexpected(format!("{other:?}")).into()),
    }
}

/// Runs `vmsilo clipboard`.
pub fn run(config: Option<&Path>, args: &ClipboardArgs) -> Result<(), CliError> {
    match &args.action {
        ClipboardAction::Daemon => daemon(config, args),
        ClipboardAction::Copy { vm } => {
            let c = connect(&socket(args)?)?;
            outcome(request(&c, Msg::Copy { vm: vm.clone() }, None)?.0)
        }
        ClipboardAction::Paste { vm, yes } => {
            let c = connect(&socket(args)?)?;
            let confirmed = Msg::Paste {
                vm: vm.clone(),
                confirm: true,
            };
            let msg = Msg::Paste {
                vm: vm.clone(),
                confirm: *yes,
            };
            outcome(request(&c, msg, Some(confirmed))?.0)
        }
        ClipboardAction::ToHost { yes } => {
            let c = connect(&socket(args)?)?;
            let (reply, fd) = request(
                &c,
                Msg::ToHost { confirm: *yes },
                Some(Msg::ToHost { confirm: true }),
            )?;
            let (Msg::Data { mime, source }, Some(fd)) = (&reply, fd) else {
                return outcome(reply);
            };
            let data = match chan::read_memfd(fd, MAX_HOST as usize) {
                Ok(Ok(d)) => d,
                _ => {
                    return Err(ClipboardError::ReadContent.into());
                }
            };
            wl_copy(mime, &data)?;
            println!("{source} → host: {} bytes, {mime}", data.len());
            Ok(())
        }
        ClipboardAction::FromHost { mime } => {
            let data = wl_paste(mime)?;
            let memfd = chan::memfd_with(&data).map_err(ClipboardError::HoldContent)?;
            let c = connect(&socket(args)?)?;
            let (reply, _) = c
                .request(
                    &Msg::FromHost { mime: mime.clone() },
                    Some(memfd.as_fd()),
                    REPLY_TIMEOUT,
                )
                .map_err(ClipboardError::Request)?;
            outcome(reply)
        }
        ClipboardAction::Status => {
            let c = connect(&socket(args)?)?;
            match request(&c, Msg::Query, None)?.0 {
                Msg::Status { source, .. } if source.is_empty() => {
                    println!("the global clipboard is empty");
                    Ok(())
                }
                Msg::Status { source, mime, size } => {
                    println!("from {source}: {size} ({mime})");
                    Ok(())
                }
                other => outcome(other),
            }
        }
        ClipboardAction::Wipe => {
            let c = connect(&socket(args)?)?;
            outcome(request(&c, Msg::Wipe, None)?.0)
        }
    }
}

/// Puts `data` on the host's clipboard with wl-copy (it stays in the background serving it,
/// as wl-copy does).
fn wl_copy(mime: &str, data: &[u8]) -> Result<(), CliError> {
    let mut child = Command::new("wl-copy")
        .args(["--type", mime])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|error| ClipboardError::RunWl {
            program: "wl-copy",
            error,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(data).map_err(|source| ClipboardError::Wl {
            what: "could not write to wl-copy",
            source,
        })?;
    }
    let status = child.wait().map_err(|source| ClipboardError::Wl {
        what: "wl-copy",
        source,
    })?;
    if !status.success() {
        return Err(ClipboardError::WlCopyFailed(status).into());
    }
    Ok(())
}

/// Reads the host's clipboard as `mime` with wl-paste.
fn wl_paste(mime: &str) -> Result<Vec<u8>, CliError> {
    let mut child = Command::new("wl-paste")
        .args(["--no-newline", "--type", mime])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| ClipboardError::RunWl {
            program: "wl-paste",
            error,
        })?;
    let mut data = Vec::new();
    if let Some(out) = child.stdout.take() {
        out.take(MAX_HOST)
            .read_to_end(&mut data)
            .map_err(|source| ClipboardError::Wl {
                what: "could not read from wl-paste",
                source,
            })?;
    }
    let status = child.wait().map_err(|source| ClipboardError::Wl {
        what: "wl-paste",
        source,
    })?;
    if !status.success() {
        return Err(ClipboardError::WlPasteFailed {
            status,
            mime: mime.to_owned(),
        }
        .into());
    }
    Ok(data)
}

/// Replaces this process with vmsilo-clipd and the configured settings.
fn daemon(config: Option<&Path>, args: &ClipboardArgs) -> Result<(), CliError> {
    use std::os::unix::process::CommandExt;
    let (_, cfg) = config_file::resolve_and_load(config)?;
    if !cfg.clipboard.enable {
        return Err(CliError::Usage(
            "clipboard.enable is false in the configuration: vmsilo-clipd is not run".into(),
        ));
    }
    let mut cmd = Command::new("vmsilo-clipd");
    cmd.args(cfg.clipboard.clipd_args());
    if let Some(s) = &args.socket {
        cmd.arg("--socket").arg(s);
    }
    let e = cmd.exec();
    Err(ClipboardError::RunClipd(e).into())
}
