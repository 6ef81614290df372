//! The command line: flags, validation into a [`Config`], startup order and exit codes
//! (0 ok, 1 runtime failure, 2 usage or configuration error; see docs/exit-codes.md).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::Parser;

use crate::conn::Limits;
use crate::identity::{Identity, Rgb};
use crate::policy::Policy;
use crate::server::{self, ClientConfig, Config, Parent};
use crate::{logger, sandbox, secctx};

/// Exit code: runtime failure.
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: i32 = 2;

/// vmsilo-gate: the per-VM Wayland proxy between a VM's guest applications and the user's
/// compositor.
#[derive(Debug, Parser)]
#[command(name = "vmsilo-gate", version)]
pub struct Args {
    /// The VM's name (shown in the frame, the title prefix and the security context).
    #[arg(long, required_unless_present = "print_policy")]
    pub vm: Option<String>,
    /// The VM's frame colour, #rrggbb.
    #[arg(long, required_unless_present = "print_policy")]
    pub color: Option<String>,
    /// The socket guests connect to (created 0600; its directory must exist).
    #[arg(long, required_unless_present = "print_policy")]
    pub listen: Option<PathBuf>,
    /// The compositor's socket: an absolute path, or a name in $XDG_RUNTIME_DIR (default:
    /// $WAYLAND_DISPLAY, else wayland-0).
    #[arg(long)]
    pub compositor: Option<String>,
    /// Where the security-context socket goes (default: the --listen socket's directory).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Offer an off-default global (repeatable).
    #[arg(long = "allow", value_name = "IFACE")]
    pub allow: Vec<String>,
    /// Hide an app-default or accelerated-rendering global (repeatable).
    #[arg(long = "deny", value_name = "IFACE")]
    pub deny: Vec<String>,
    /// Do not wrap guest toplevels in the VM's frame.
    #[arg(long)]
    pub no_frame: bool,
    /// Simultaneous clients; more connections are closed at once.
    #[arg(long, default_value_t = 64)]
    pub max_clients: usize,
    /// Objects one client may hold; more cut it off.
    #[arg(long, default_value_t = Limits::default().max_objects)]
    pub max_objects: usize,
    /// File descriptors one client process may hold (bounds fds in flight).
    #[arg(long, default_value_t = Limits::default().max_fds)]
    pub max_fds: usize,
    /// Log every Wayland message (wl-proxy's log) and debug lines.
    #[arg(long)]
    pub debug: bool,
    /// Do not install the seccomp filter (debugging only).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Print the policy table (with --allow/--deny applied) and exit.
    #[arg(long)]
    pub print_policy: bool,
}

/// Resolves the compositor socket like libwayland: an absolute path as is, a name under
/// `$XDG_RUNTIME_DIR`; the default name is `$WAYLAND_DISPLAY`, else `wayland-0`.
pub fn resolve_compositor(
    arg: Option<&str>,
    wayland_display: Option<&str>,
    xdg_runtime_dir: Option<&str>,
) -> Result<PathBuf, String> {
    let name = arg
        .or(wayland_display.filter(|s| !s.is_empty()))
        .unwrap_or("wayland-0");
    if name.starts_with('/') {
        return Ok(PathBuf::from(name));
    }
    match xdg_runtime_dir.filter(|s| !s.is_empty()) {
        Some(dir) => Ok(Path::new(dir).join(name)),
        None => Err(format!(
            "the compositor socket {name:?} is not an absolute path and XDG_RUNTIME_DIR is not set: pass --compositor /path/to/socket"
        )),
    }
}

fn usage(msg: impl std::fmt::Display) -> i32 {
    eprintln!("vmsilo-gate: {msg}");
    EXIT_USAGE
}

/// Builds the configuration from the arguments and the environment (usage errors as text).
pub fn config(args: &Args) -> Result<Config, String> {
    let policy = Policy::with_overrides(&args.allow, &args.deny).map_err(|e| e.to_string())?;
    let vm = args.vm.clone().ok_or("--vm is required")?;
    if vm.is_empty()
        || vm.len() > 64
        || !vm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "--vm {vm:?}: a VM name is 1-64 ASCII letters, digits, '-' or '_'"
        ));
    }
    let color = Rgb::parse_hex(args.color.as_deref().ok_or("--color is required")?)
        .map_err(|e| format!("--color: {e}"))?;
    let listen = args.listen.clone().ok_or("--listen is required")?;
    let compositor = resolve_compositor(
        args.compositor.as_deref(),
        std::env::var("WAYLAND_DISPLAY").ok().as_deref(),
        std::env::var("XDG_RUNTIME_DIR").ok().as_deref(),
    )?;
    let state_dir = match &args.state_dir {
        Some(d) => d.clone(),
        None => listen
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    if args.max_clients == 0 || args.max_objects == 0 || args.max_fds < 16 {
        return Err(
            "--max-clients and --max-objects must be at least 1, --max-fds at least 16".into(),
        );
    }
    Ok(Config {
        client: ClientConfig {
            identity: Rc::new(Identity { vm, color }),
            policy: Rc::new(policy),
            limits: Limits {
                max_objects: args.max_objects,
                max_fds: args.max_fds,
                ..Limits::default()
            },
            frame: !args.no_frame,
            debug: args.debug,
        },
        listen,
        compositor,
        state_dir,
        max_clients: args.max_clients,
        sandbox: !args.no_sandbox,
    })
}

/// The whole program; returns the exit code.
pub fn main() -> i32 {
    let args = Args::parse();
    logger::init(if args.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    });
    if args.print_policy {
        return match Policy::with_overrides(&args.allow, &args.deny) {
            Ok(p) => {
                print!("{}", p.render());
                0
            }
            Err(e) => usage(e),
        };
    }
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let listener = match server::bind_listener(&cfg.listen) {
        Ok(l) => l,
        Err(e @ server::ServerError::NoDir(_)) | Err(e @ server::ServerError::NotASocket(_)) => {
            return usage(e);
        }
        Err(e) => {
            eprintln!("vmsilo-gate: {e}");
            return EXIT_RUNTIME;
        }
    };
    let listen_path = cfg.listen.clone();
    let remove_listen = |code: i32| {
        let _ = std::fs::remove_file(&listen_path);
        code
    };
    if !cfg.state_dir.is_dir() {
        return remove_listen(usage(format!(
            "--state-dir {}: not a directory (create it first)",
            cfg.state_dir.display()
        )));
    }
    let signals = match server::signal_fd() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmsilo-gate: {e}");
            return remove_listen(EXIT_RUNTIME);
        }
    };
    let sec = match secctx::setup(
        &cfg.compositor,
        &cfg.state_dir,
        &cfg.client.identity,
        cfg.client.debug,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmsilo-gate: VM {:?}: {e}", cfg.client.identity.vm);
            return remove_listen(EXIT_RUNTIME);
        }
    };
    if cfg.sandbox {
        if let Err(e) = sandbox::apply() {
            eprintln!(
                "vmsilo-gate: could not install the seccomp filter: {e} (run with --no-sandbox to debug)"
            );
            return remove_listen(EXIT_RUNTIME);
        }
    } else {
        log::warn!("--no-sandbox: running without the seccomp filter");
    }
    let vm = cfg.client.identity.vm.clone();
    let listen = cfg.listen.clone();
    let mut parent = Parent::new(cfg, listener, sec);
    eprintln!("vmsilo-gate: VM {vm:?}: listening on {}", listen.display());
    match parent.run(&signals) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmsilo-gate: VM {vm:?}: {e}");
            EXIT_RUNTIME
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_compositor_is_resolved_like_libwayland() {
        assert_eq!(
            resolve_compositor(Some("/tmp/x"), Some("wayland-1"), None).unwrap(),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(
            resolve_compositor(None, Some("wayland-1"), Some("/run/user/1000")).unwrap(),
            PathBuf::from("/run/user/1000/wayland-1")
        );
        assert_eq!(
            resolve_compositor(None, None, Some("/run/user/1000")).unwrap(),
            PathBuf::from("/run/user/1000/wayland-0")
        );
        assert_eq!(
            resolve_compositor(None, Some(""), Some("/r")).unwrap(),
            PathBuf::from("/r/wayland-0")
        );
        assert!(
            resolve_compositor(Some("wayland-1"), None, None)
                .unwrap_err()
                .contains("XDG_RUNTIME_DIR")
        );
    }

    #[test]
    fn test_bad_arguments_are_usage_errors() {
        let parse = |v: &[&str]| Args::try_parse_from(v).unwrap();
        let base = [
            "vmsilo-gate",
            "--vm",
            "work",
            "--color",
            "#2ecc71",
            "--listen",
            "/tmp/s",
            "--compositor",
            "/tmp/c",
        ];
        assert!(config(&parse(&base)).is_ok());
        let mut bad = base.to_vec();
        bad[2] = "a/b";
        assert!(config(&parse(&bad)).unwrap_err().contains("VM name"));
        let mut bad = base.to_vec();
        bad[4] = "red";
        assert!(config(&parse(&bad)).unwrap_err().contains("--color"));
        let mut bad = base.to_vec();
        bad.extend(["--allow", "zwlr_screencopy_manager_v1"]);
        assert!(config(&parse(&bad)).unwrap_err().contains("cannot allow"));
        assert!(Args::try_parse_from(["vmsilo-gate", "--vm", "x"]).is_err());
        assert!(Args::try_parse_from(["vmsilo-gate", "--print-policy"]).is_ok());
    }
}
