//! Turning a [`Request`] into a running process: validation, the account to run as, the
//! environment, the working directory, the `PATH` lookup (so that "command not found" (127)
//! and "not executable" (126) are told apart before anything is spawned), and the spawn itself
//! with pipes or a pseudo-terminal.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use vmsilo_proto::{ErrorCode, ErrorFrame, Mode, Request, WindowSize};

use crate::sys;
use crate::users::{self, Account};

/// `PATH` for commands when neither the agent's environment nor the request has one: NixOS
/// directories first, then the FHS ones.
pub const DEFAULT_PATH: &str = "/run/wrappers/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment variables of the agent that must not leak into commands (socket activation).
const AGENT_ONLY_ENV: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// How commands are started.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// The account commands run as when the request names none; `None`: the agent's own.
    pub default_user: Option<String>,
    /// Where `passwd` and `group` live (`/etc`).
    pub etc_dir: PathBuf,
    /// The environment every command starts from (the agent's, minus socket-activation
    /// variables), before per-user and per-request additions.
    pub base_env: Vec<(OsString, OsString)>,
}

impl ExecConfig {
    /// The agent's own environment as the base, `/etc` for accounts.
    pub fn from_process(default_user: Option<String>) -> Self {
        Self {
            default_user,
            etc_dir: PathBuf::from("/etc"),
            base_env: std::env::vars_os()
                .filter(|(k, _)| !AGENT_ONLY_ENV.iter().any(|a| OsStr::new(a) == k))
                .collect(),
        }
    }
}

/// A request checked and resolved, ready to spawn.
#[derive(Debug)]
pub struct Prepared {
    /// The executable found for `argv[0]`.
    pub program: PathBuf,
    /// `argv`, unchanged (so `argv[0]` is what the user typed).
    pub argv: Vec<OsString>,
    /// The complete environment.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// The account to switch to, if it differs from the agent's.
    pub switch_to: Option<Account>,
    /// The account the command runs as, if known.
    pub account: Option<Account>,
    /// Detached or attached.
    pub mode: Mode,
    /// Pseudo-terminal size, when one is wanted.
    pub tty: Option<WindowSize>,
}

/// A spawned command and the agent's ends of its stdio.
#[derive(Debug)]
pub struct Spawned {
    /// The process.
    pub child: Child,
    /// Readable once it exits.
    pub pidfd: OwnedFd,
    /// Where its stdin goes (a pipe, or the pty master), non-blocking.
    pub stdin: Option<OwnedFd>,
    /// Its stdout (a pipe, or the pty master), non-blocking.
    pub stdout: Option<OwnedFd>,
    /// Its stderr pipe (none in tty mode), non-blocking.
    pub stderr: Option<OwnedFd>,
    /// The pty master, for window-size changes.
    pub pty: Option<OwnedFd>,
}

fn refuse(code: ErrorCode, message: impl std::fmt::Display) -> ErrorFrame {
    ErrorFrame::new(code, format!("vmsilo-guest: {message}"))
}

fn display(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks the request's shape: a command, no NUL bytes, valid variable names, tty only when
/// attached.
pub fn validate(req: &Request) -> Result<(), ErrorFrame> {
    let bad = |m: String| Err(refuse(ErrorCode::BadRequest, m));
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return bad("empty command".into());
    }
    if let Some(i) = req.argv.iter().position(|a| a.contains(&0)) {
        return bad(format!("argument {i} contains a NUL byte"));
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) {
            return bad(format!(
                "invalid environment variable name {:?}",
                display(k)
            ));
        }
        if v.contains(&0) {
            return bad(format!(
                "environment variable {} contains a NUL byte",
                display(k)
            ));
        }
    }
    if req
        .cwd
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.contains(&0))
    {
        return bad("invalid working directory".into());
    }
    if req.tty.is_some() && req.mode == Mode::Detached {
        return bad("a terminal (tty) needs attached mode".into());
    }
    if let Some(user) = &req.user
        && (user.is_empty() || user.contains(['\0', ':', '/']))
    {
        return bad(format!("invalid user name {user:?}"));
    }
    Ok(())
}

fn set_env(env: &mut Vec<(OsString, OsString)>, key: &OsStr, value: &OsStr) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_owned(),
        None => env.push((key.to_owned(), value.to_owned())),
    }
}

fn get_env<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsStr> {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_os_str())
}

/// Resolves the account a request runs as. `Ok(None)`: the agent's own identity.
pub fn resolve_account(req: &Request, cfg: &ExecConfig) -> Result<Option<Account>, ErrorFrame> {
    let Some(name) = req.user.as_ref().or(cfg.default_user.as_ref()) else {
        return Ok(None);
    };
    match users::lookup(&cfg.etc_dir, name) {
        Ok(Some(account)) => Ok(Some(account)),
        Ok(None) => Err(refuse(
            ErrorCode::UnknownUser,
            format!("user {name:?} does not exist in the guest"),
        )),
        Err(e) => Err(refuse(
            ErrorCode::Internal,
            format!(
                "failed to read the guest's accounts in {}: {e}",
                cfg.etc_dir.display()
            ),
        )),
    }
}

/// Validates and resolves everything about a request that can fail before spawning.
pub fn prepare(req: &Request, cfg: &ExecConfig) -> Result<Prepared, ErrorFrame> {
    validate(req)?;
    let account = resolve_account(req, cfg)?;
    let euid = nix::unistd::geteuid().as_raw();
    let switch_to = match &account {
        Some(a) if a.uid != euid => {
            if euid != 0 {
                return Err(refuse(
                    ErrorCode::PermissionDenied,
                    format!(
                        "cannot run commands as {:?}: the agent runs as uid {euid}, not root",
                        a.name
                    ),
                ));
            }
            Some(a.clone())
        }
        _ => None,
    };

    let mut env = cfg.base_env.clone();
    if let Some(a) = &account {
        set_env(&mut env, OsStr::new("HOME"), a.home.as_os_str());
        set_env(&mut env, OsStr::new("USER"), OsStr::new(&a.name));
        set_env(&mut env, OsStr::new("LOGNAME"), OsStr::new(&a.name));
        set_env(&mut env, OsStr::new("SHELL"), a.shell.as_os_str());
        let runtime = PathBuf::from(format!("/run/user/{}", a.uid));
        if runtime.is_dir() {
            set_env(&mut env, OsStr::new("XDG_RUNTIME_DIR"), runtime.as_os_str());
        }
    }
    if get_env(&env, "PATH").is_none() {
        set_env(&mut env, OsStr::new("PATH"), OsStr::new(DEFAULT_PATH));
    }
    if req.tty.is_some() && get_env(&env, "TERM").is_none() {
        set_env(&mut env, OsStr::new("TERM"), OsStr::new("xterm-256color"));
    }
    for (k, v) in &req.env {
        set_env(&mut env, OsStr::from_bytes(k), OsStr::from_bytes(v));
    }

    let cwd = match &req.cwd {
        Some(dir) => PathBuf::from(OsStr::from_bytes(dir)),
        None => account
            .as_ref()
            .map(|a| a.home.clone())
            .or_else(|| get_env(&env, "HOME").map(PathBuf::from))
            .filter(|h| h.is_dir())
            .unwrap_or_else(|| PathBuf::from("/")),
    };
    match fs::metadata(&cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("working directory {}: Not a directory", cwd.display()),
            ));
        }
        Err(e) => {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("working directory {}: {}", cwd.display(), os_message(&e)),
            ));
        }
    }

    let argv: Vec<OsString> = req
        .argv
        .iter()
        .map(|a| OsString::from_vec(a.clone()))
        .collect();
    let path = get_env(&env, "PATH").unwrap_or(OsStr::new(DEFAULT_PATH));
    let program = find_program(&argv[0], path, &cwd)?;
    Ok(Prepared {
        program,
        argv,
        env,
        cwd,
        switch_to,
        account,
        mode: req.mode,
        tty: req.tty,
    })
}

/// The OS error text without std's " (os error N)" suffix.
fn os_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn is_executable(meta: &fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Finds `name` like `execvp` would: as a path when it contains a `/` (relative to `cwd`),
/// otherwise in each `PATH` directory. Refuses with 127 when nothing is found and 126 when
/// what is found is not an executable file.
pub fn find_program(name: &OsStr, path: &OsStr, cwd: &Path) -> Result<PathBuf, ErrorFrame> {
    let shown = name.to_string_lossy();
    if name.as_bytes().contains(&b'/') {
        let p = cwd.join(name);
        return match fs::metadata(&p) {
            Ok(m) if m.is_dir() => Err(refuse(
                ErrorCode::NotExecutable,
                format!("{shown}: Is a directory"),
            )),
            Ok(m) if !is_executable(&m) => Err(refuse(
                ErrorCode::NotExecutable,
                format!("{shown}: Permission denied"),
            )),
            Ok(_) => Ok(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(refuse(
                ErrorCode::CommandNotFound,
                format!("{shown}: No such file or directory"),
            )),
            Err(e) => Err(refuse(
                ErrorCode::NotExecutable,
                format!("{shown}: {}", os_message(&e)),
            )),
        };
    }
    let mut not_executable = None;
    for dir in path.as_bytes().split(|b| *b == b':') {
        // An empty PATH entry means the current directory, as in execvp.
        let dir = if dir.is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(name);
        match fs::metadata(&candidate) {
            Ok(m) if m.is_file() && is_executable(&m) => return Ok(candidate),
            Ok(m) if m.is_file() => {
                not_executable.get_or_insert(candidate);
            }
            _ => {}
        }
    }
    match not_executable {
        Some(p) => Err(refuse(
            ErrorCode::NotExecutable,
            format!("{}: Permission denied", p.display()),
        )),
        None => Err(refuse(
            ErrorCode::CommandNotFound,
            format!("{shown}: command not found"),
        )),
    }
}

fn set_cloexec_nonblock(fd: &OwnedFd, nonblock: bool) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    if nonblock {
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// Opens a pseudo-terminal pair of the given size. Both descriptors are close-on-exec from
/// the start, so no concurrently spawned process inherits them; the master is non-blocking.
fn open_pty(size: WindowSize) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    let pm = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&pm)?;
    unlockpt(&pm)?;
    let name = ptsname_r(&pm)?;
    // `try_clone_to_owned` duplicates with F_DUPFD_CLOEXEC.
    let master = pm.as_fd().try_clone_to_owned()?;
    drop(pm);
    let slave = OwnedFd::from(
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)?,
    );
    sys::set_window_size(slave.as_fd(), size.rows, size.cols)?;
    set_cloexec_nonblock(&master, true)?;
    Ok((master, slave))
}

/// Makes a descriptor non-blocking.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    set_cloexec_nonblock(fd, true)
}

/// Spawns a prepared command. Detached commands get `/dev/null` as stdin and share the agent's
/// stdout and stderr; attached ones get pipes, or a pseudo-terminal when a tty was asked for.
pub fn spawn(p: &Prepared) -> Result<Spawned, ErrorFrame> {
    let shown = p.argv[0].to_string_lossy().into_owned();
    let internal = |what: &str, e: io::Error| {
        refuse(
            ErrorCode::Internal,
            format!("failed to {what} for {shown}: {e}"),
        )
    };
    let mut cmd = Command::new(&p.program);
    cmd.arg0(&p.argv[0])
        .args(&p.argv[1..])
        .env_clear()
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&p.cwd);

    let mut master = None;
    match (p.mode, p.tty) {
        (Mode::Detached, _) => {
            cmd.stdin(Stdio::null());
        }
        (Mode::Attached, None) => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        (Mode::Attached, Some(size)) => {
            let (m, slave) = open_pty(size).map_err(|e| internal("open a pseudo-terminal", e))?;
            let clone = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| internal("duplicate the pseudo-terminal", e))
            };
            cmd.stdin(Stdio::from(clone(&slave)?))
                .stdout(Stdio::from(clone(&slave)?))
                .stderr(Stdio::from(slave));
            master = Some(m);
        }
    }
    sys::install_child_setup(
        &mut cmd,
        sys::ChildSetup {
            controlling_tty: master.is_some(),
            identity: p
                .switch_to
                .as_ref()
                .map(|a| (a.uid, a.gid, a.groups.clone())),
        },
    );

    let mut child = cmd.spawn().map_err(|e| spawn_error(&shown, &e))?;
    // The pty slave copies held by `cmd` must be closed in the agent, or the master never
    // sees the hangup when the command exits.
    drop(cmd);
    let pidfd = match sys::pidfd_open(child.id()) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(internal("watch the process", e));
        }
    };
    let mut spawned = Spawned {
        pidfd,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        pty: None,
        child,
    };
    if let Some(m) = master {
        let dup = |fd: &OwnedFd| fd.try_clone();
        spawned.stdin = Some(dup(&m).map_err(|e| internal("duplicate the pty", e))?);
        spawned.stdout = Some(dup(&m).map_err(|e| internal("duplicate the pty", e))?);
        spawned.pty = Some(m);
    }
    for fd in [&spawned.stdin, &spawned.stdout, &spawned.stderr]
        .into_iter()
        .flatten()
    {
        set_nonblocking(fd).map_err(|e| internal("set up the command's pipes", e))?;
    }
    Ok(spawned)
}

/// Maps an exec failure (reported by std through its close-on-exec pipe) to a refusal.
fn spawn_error(shown: &str, e: &io::Error) -> ErrorFrame {
    match e.raw_os_error() {
        // The file was found before spawning, so ENOENT now is its interpreter or loader.
        Some(libc::ENOENT) => refuse(
            ErrorCode::NotExecutable,
            format!(
                "{shown}: bad interpreter or missing dynamic loader: No such file or directory"
            ),
        ),
        Some(libc::EACCES) => refuse(
            ErrorCode::NotExecutable,
            format!("{shown}: Permission denied"),
        ),
        Some(libc::ENOEXEC) => refuse(
            ErrorCode::NotExecutable,
            format!("{shown}: cannot execute: Exec format error"),
        ),
        _ => refuse(
            ErrorCode::SpawnFailed,
            format!("failed to start {shown}: {}", os_message(e)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ExecConfig {
        ExecConfig {
            default_user: None,
            etc_dir: PathBuf::from("/nonexistent-etc"),
            base_env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        }
    }

    fn code(r: Result<Prepared, ErrorFrame>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn test_malformed_requests_are_refused() {
        let c = cfg();
        assert_eq!(
            code(prepare(&Request::attached([""]), &c)),
            ErrorCode::BadRequest
        );
        let mut r = Request::attached(["true"]);
        r.argv.clear();
        assert_eq!(code(prepare(&r, &c)), ErrorCode::BadRequest);
        assert_eq!(
            code(prepare(&Request::attached(["echo", "a\0b"]), &c)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(prepare(&Request::attached(["true"]).env("A=B", "c"), &c)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(prepare(
                &Request::detached(["true"]).tty(WindowSize { rows: 1, cols: 1 }),
                &c
            )),
            ErrorCode::BadRequest
        );
        let e = prepare(&Request::attached(["true"]).cwd("/nonexistent-dir"), &c).unwrap_err();
        assert_eq!(
            e.message,
            "vmsilo-guest: working directory /nonexistent-dir: No such file or directory"
        );
    }

    #[test]
    fn test_missing_and_unexecutable_commands_are_127_and_126() {
        let c = cfg();
        let e = prepare(&Request::attached(["no-such-command-xyz"]), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::CommandNotFound);
        assert_eq!(
            e.message,
            "vmsilo-guest: no-such-command-xyz: command not found"
        );
        let e = prepare(&Request::attached(["/nonexistent/cmd"]), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::CommandNotFound);
        let file = std::env::temp_dir().join(format!("vmsilo-noexec-{}", std::process::id()));
        fs::write(&file, "data").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let e = prepare(&Request::attached([file.as_os_str().as_bytes()]), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotExecutable);
        assert!(e.message.ends_with(": Permission denied"), "{}", e.message);
        let _ = fs::remove_file(&file);
        assert_eq!(
            code(prepare(&Request::attached(["/"]), &c)),
            ErrorCode::NotExecutable
        );
    }

    #[test]
    fn test_environment_layers_base_then_request() {
        let c = cfg();
        let p = prepare(
            &Request::attached(["sh"])
                .env("PATH", "/bin:/usr/bin")
                .env("FOO", "bar")
                .tty(WindowSize { rows: 2, cols: 3 }),
            &c,
        )
        .unwrap();
        assert_eq!(get_env(&p.env, "PATH"), Some(OsStr::new("/bin:/usr/bin")));
        assert_eq!(get_env(&p.env, "FOO"), Some(OsStr::new("bar")));
        assert_eq!(get_env(&p.env, "TERM"), Some(OsStr::new("xterm-256color")));
        assert_eq!(p.program, PathBuf::from("/bin/sh"));
        assert_eq!(p.cwd, PathBuf::from("/"));
    }

    #[test]
    fn test_unknown_users_are_refused() {
        let c = cfg();
        let e = prepare(&Request::attached(["true"]).user("bob"), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownUser);
        assert_eq!(
            e.message,
            "vmsilo-guest: user \"bob\" does not exist in the guest"
        );
        let e = prepare(&Request::attached(["true"]).user("a:b"), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn test_base_environment_drops_socket_activation_variables() {
        let c = ExecConfig::from_process(None);
        assert!(
            c.base_env
                .iter()
                .all(|(k, _)| !AGENT_ONLY_ENV.iter().any(|a| OsStr::new(a) == k))
        );
    }
}
