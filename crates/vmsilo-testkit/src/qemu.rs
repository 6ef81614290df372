//! Starting QEMU/TCG guests and driving them: readiness, shell commands over the serial
//! console, vsock, QMP, shutdown, and cleanup on drop.
//!
//! Every guest gets its own [`ScratchDir`] holding its sockets and logs:
//! `<name>-console.socket` (serial), `<name>-qmp.socket`, and with [`QemuBuilder::vsock`]
//! `<name>-vhost-vsock.socket` (vhost-user, between QEMU and `vhost-device-vsock`) and
//! `<name>-vsock.socket` (the hybrid-vsock socket tests use), with
//! [`QemuBuilder::virtiofs`] `<name>-fs-<tag>.socket`, plus `console.log`, `qemu.stderr`,
//! `qemu.cmdline` and backend logs.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::{Console, WaitEnd, tail_lines};
use crate::image::GuestImage;
use crate::qmp::Qmp;
use crate::scratch::ScratchDir;
use crate::tools::{find_tool, vhost_device_vsock};
use crate::{Error, INIT_FAILED_LINE, READY_LINE, Result, io_err};
use vmsilo_proto::hybrid;

/// Default time from QEMU start to `VMSILO-READY` (a TCG boot takes about 10 s on an idle
/// machine; CI runs two at once on two cores).
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Console lines quoted in error messages.
const TAIL_LINES: usize = 100;
/// Longest command [`Guest::run`] accepts (the tty line buffer holds 4095 bytes).
const MAX_COMMAND: usize = 3000;

/// Options of the virtio-balloon device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// `free-page-reporting=on`: the guest hands freed pages back on its own.
    pub free_page_reporting: bool,
    /// `deflate-on-oom=on`: the guest takes pages back from the balloon before OOM-killing.
    pub deflate_on_oom: bool,
}

#[derive(Debug, Clone)]
enum Nic {
    VhostUser {
        socket: PathBuf,
        mac: String,
    },
    Tap {
        ifname: String,
        mac: String,
        msix: bool,
    },
}

/// Configures and starts one QEMU/TCG guest.
///
/// Always present: `-accel tcg`, `-nodefaults`, `-no-reboot`, shared guest RAM
/// (`memory-backend-memfd,share=on`, needed by every vhost-user device), the serial console on
/// a unix socket, a QMP socket, and the kernel parameters `console=ttyS0 panic=-1` (a
/// panicking guest reboots, which `-no-reboot` turns into QEMU exiting, instead of spinning a
/// host CPU forever).
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    image: GuestImage,
    name: String,
    memory_mib: u32,
    cpus: u32,
    params: Vec<String>,
    nics: Vec<Nic>,
    vsock_cid: Option<u32>,
    balloon: Option<BalloonOptions>,
    fs: Vec<(PathBuf, String)>,
    virtiofs: Vec<(PathBuf, String)>,
    netns: Option<String>,
    ready_timeout: Duration,
    qemu_args: Vec<String>,
}

impl QemuBuilder {
    /// A guest named `guest` with 256 MiB and 1 vCPU booting `image`.
    pub fn new(image: &GuestImage) -> Self {
        QemuBuilder {
            image: image.clone(),
            name: "guest".into(),
            memory_mib: 256,
            cpus: 1,
            params: Vec::new(),
            nics: Vec::new(),
            vsock_cid: None,
            balloon: None,
            fs: Vec::new(),
            virtiofs: Vec::new(),
            netns: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            qemu_args: Vec::new(),
        }
    }

    /// The guest's name in messages and socket names: 1–16 of `[a-z0-9-]`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Guest RAM in MiB (default 256).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// vCPUs (default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Appends a kernel parameter (no spaces or quotes), e.g. `vmsilo.addr=lan,10.0.0.2/24`.
    pub fn kernel_param(mut self, param: impl Into<String>) -> Self {
        self.params.push(param.into());
        self
    }

    /// A virtio-net NIC backed by the vhost-user-net backend listening on `socket` (it must
    /// be listening before [`start`](Self::start)). Uses `vectors=0`: QEMU 7.2 under TCG
    /// crashes when vhost-user-net uses MSI-X.
    pub fn vhost_user_net(mut self, socket: impl Into<PathBuf>, mac: impl Into<String>) -> Self {
        self.nics.push(Nic::VhostUser {
            socket: socket.into(),
            mac: mac.into(),
        });
        self
    }

    /// A virtio-net NIC on host tap device `ifname` (QEMU creates it when missing; needs root).
    pub fn tap(mut self, ifname: impl Into<String>, mac: impl Into<String>) -> Self {
        self.nics.push(Nic::Tap {
            ifname: ifname.into(),
            mac: mac.into(),
            msix: true,
        });
        self
    }

    /// [`tap`](Self::tap) with the device [`vhost_user_net`](Self::vhost_user_net) uses:
    /// `vectors=0` (legacy INTx interrupts instead of MSI-X), so that a comparison between the
    /// two backends is not one between interrupt modes.
    pub fn tap_intx(mut self, ifname: impl Into<String>, mac: impl Into<String>) -> Self {
        self.nics.push(Nic::Tap {
            ifname: ifname.into(),
            mac: mac.into(),
            msix: false,
        });
        self
    }

    /// A vhost-user-vsock device with guest CID `cid`, served by a `vhost-device-vsock`
    /// process the harness starts (and kills). Host side: [`Guest::vsock_connect`] and
    /// [`Guest::vsock_listen`].
    pub fn vsock(mut self, cid: u32) -> Self {
        self.vsock_cid = Some(cid);
        self
    }

    /// A virtio-balloon device (`id=balloon0`), driven through [`Guest::qmp`].
    pub fn balloon(self) -> Self {
        self.balloon_with(BalloonOptions::default())
    }

    /// A virtio-balloon device with options.
    pub fn balloon_with(mut self, options: BalloonOptions) -> Self {
        self.balloon = Some(options);
        self
    }

    /// A vhost-user-fs device with mount tag `tag`, backed by a virtiofsd the test started,
    /// listening on `socket` (see [`virtiofs`](Self::virtiofs) for one the harness starts). The guest mounts it with `mount -t virtiofs <tag> <dir>`.
    pub fn vhost_user_fs(mut self, socket: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        self.fs.push((socket.into(), tag.into()));
        self
    }

    /// Shares host directory `dir` with mount tag `tag` through a `virtiofsd` the harness
    /// starts (and kills) on `<name>-fs-<tag>.socket`; `cargo xtask setup` installs virtiofsd.
    /// The guest mounts it with `mount -t virtiofs <tag> <dir>`.
    pub fn virtiofs(mut self, dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        self.virtiofs.push((dir.into(), tag.into()));
        self
    }

    /// Runs QEMU in network namespace `name` (`ip netns exec`), e.g. so that
    /// [`tap`](Self::tap) devices live in a namespace the test created. Needs root.
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// How long [`start`](Self::start) waits for `VMSILO-READY` (default 120 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Extra raw QEMU arguments, appended last.
    pub fn qemu_arg(mut self, arg: impl Into<String>) -> Self {
        self.qemu_args.push(arg.into());
        self
    }

    /// Starts the guest and waits for `VMSILO-READY`.
    pub fn start(self) -> Result<Guest> {
        let timeout = self.ready_timeout;
        let mut guest = self.spawn()?;
        guest.wait_ready(timeout)?;
        Ok(guest)
    }

    /// Starts QEMU (and its backends) without waiting for the guest; call
    /// [`Guest::wait_ready`] next. Lets a test boot several guests in parallel.
    pub fn spawn(self) -> Result<Guest> {
        let name = self.name.clone();
        if name.is_empty()
            || name.len() > 16
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::Usage(format!(
                "guest name {name:?}: use 1 to 16 characters of a-z, 0-9 and -"
            )));
        }
        if let Some(bad) = self
            .params
            .iter()
            .find(|p| p.is_empty() || p.contains(|c: char| c.is_whitespace() || c == '"'))
        {
            return Err(Error::Usage(format!(
                "kernel parameter {bad:?} is empty or has spaces or quotes"
            )));
        }
        let scratch = ScratchDir::new(&name)?;
        let console_sock = scratch.socket_path(&format!("{name}-console.socket"))?;
        let qmp_sock = scratch.socket_path(&format!("{name}-qmp.socket"))?;
        let mut guest = Guest {
            name: name.clone(),
            child: Mutex::new(None),
            pid: 0,
            backends: Vec::new(),
            console: Arc::new(Console::default()),
            serial: None,
            shell_seq: Mutex::new(0),
            reader: None,
            qmp_socket: qmp_sock.clone(),
            vsock_socket: None,
            qemu_stderr: scratch.path().join("qemu.stderr"),
            console_log: scratch.path().join("console.log"),
            exit: Mutex::new(None),
            scratch,
        };

        let mut args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-name".into(),
            // Named threads ("CPU 0/TCG"): benches tell the guest's own CPU time from QEMU's.
            format!("{name},debug-threads=on"),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.cpus.to_string(),
            "-object".into(),
            format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.memory_mib
            ),
            "-numa".into(),
            "node,memdev=mem".into(),
            "-kernel".into(),
            path_arg(&self.image.kernel),
            "-initrd".into(),
            path_arg(&self.image.initrd),
            "-append".into(),
            std::iter::once("console=ttyS0 panic=-1".to_owned())
                .chain(self.params.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
            "-chardev".into(),
            format!(
                "socket,id=console,path={},server=on,wait=on",
                path_arg(&console_sock)
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path_arg(&qmp_sock)),
        ];

        for (i, nic) in self.nics.iter().enumerate() {
            match nic {
                Nic::VhostUser { socket, mac } => {
                    args.extend([
                        "-chardev".into(),
                        format!("socket,id=net{i},path={}", path_arg(socket)),
                        "-netdev".into(),
                        format!("vhost-user,id=net{i},chardev=net{i},queues=1"),
                        "-device".into(),
                        format!("virtio-net-pci,netdev=net{i},mac={mac},vectors=0"),
                    ]);
                }
                Nic::Tap { ifname, mac, msix } => {
                    args.extend([
                        "-netdev".into(),
                        format!("tap,id=net{i},ifname={ifname},script=no,downscript=no"),
                        "-device".into(),
                        format!(
                            "virtio-net-pci,netdev=net{i},mac={mac}{}",
                            if *msix { "" } else { ",vectors=0" }
                        ),
                    ]);
                }
            }
        }
        if let Some(cid) = self.vsock_cid {
            let vhost_sock = guest
                .scratch
                .socket_path(&format!("{name}-vhost-vsock.socket"))?;
            let uds = guest.scratch.socket_path(&format!("{name}-vsock.socket"))?;
            // Room for "_<port>" of guest-to-host listeners.
            guest
                .scratch
                .socket_path(&format!("{name}-vsock.socket_4294967295"))?;
            let mut cmd = Command::new(vhost_device_vsock()?);
            cmd.arg("--vm").arg(format!(
                "guest-cid={cid},socket={},uds-path={}",
                path_arg(&vhost_sock),
                path_arg(&uds)
            ));
            let backend = start_backend(
                &guest.scratch,
                &mut cmd,
                "vhost-device-vsock.log",
                &vhost_sock,
            )?;
            guest.backends.push(backend);
            guest.vsock_socket = Some(uds);
            args.extend([
                "-chardev".into(),
                format!("socket,id=vsock,path={}", path_arg(&vhost_sock)),
                "-device".into(),
                "vhost-user-vsock-pci,chardev=vsock,vectors=0".into(),
            ]);
        }
        if let Some(b) = self.balloon {
            let mut dev = "virtio-balloon-pci,id=balloon0".to_owned();
            if b.free_page_reporting {
                dev.push_str(",free-page-reporting=on");
            }
            if b.deflate_on_oom {
                dev.push_str(",deflate-on-oom=on");
            }
            args.extend(["-device".into(), dev]);
        }
        let mut fs = self.fs.clone();
        for (dir, tag) in &self.virtiofs {
            if tag.is_empty()
                || tag.len() > 36
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::Usage(format!(
                    "virtiofs tag {tag:?}: use 1 to 36 characters of A-Z, a-z, 0-9, - and _"
                )));
            }
            let socket = guest
                .scratch
                .socket_path(&format!("{name}-fs-{tag}.socket"))?;
            let mut cmd = Command::new(find_tool("virtiofsd")?);
            cmd.arg("--socket-path")
                .arg(&socket)
                .arg("--shared-dir")
                .arg(dir)
                .args(["--sandbox", "none", "--log-level", "warn"]);
            let backend = start_backend(
                &guest.scratch,
                &mut cmd,
                &format!("virtiofsd-{tag}.log"),
                &socket,
            )?;
            guest.backends.push(backend);
            fs.push((socket, tag.clone()));
        }
        for (i, (socket, tag)) in fs.iter().enumerate() {
            args.extend([
                "-chardev".into(),
                format!("socket,id=fs{i},path={}", path_arg(socket)),
                "-device".into(),
                format!("vhost-user-fs-pci,chardev=fs{i},tag={tag},vectors=0"),
            ]);
        }
        args.extend(self.qemu_args.iter().cloned());

        let qemu = match std::env::var("VMSILO_QEMU") {
            Ok(q) if !q.is_empty() => find_tool(&q)?,
            _ => find_tool("qemu-system-x86_64")?,
        };
        // `ip netns exec` execs QEMU in place: the pid stays QEMU's.
        let (program, args) = match &self.netns {
            Some(ns) => {
                let mut a = vec!["netns".into(), "exec".into(), ns.clone()];
                a.push(path_arg(&qemu));
                a.extend(args);
                (find_tool("ip")?, a)
            }
            None => (qemu, args),
        };
        let stderr = File::create(&guest.qemu_stderr)
            .map_err(io_err(format!("creating {}", guest.qemu_stderr.display())))?;
        // QEMU stays in the test's process group, so whoever kills the test's group (nextest
        // on timeout, Ctrl-C) kills QEMU too; Drop kills it otherwise.
        let child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io_err(format!("starting {}", program.display())))?;
        guest.pid = child.id();
        *guest.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        std::fs::write(
            guest.scratch.path().join("qemu.cmdline"),
            format!("{} {}\n", program.display(), args.join(" ")),
        )
        .map_err(io_err("writing qemu.cmdline"))?;

        // QEMU waits (wait=on) until the console is connected, so no output is lost.
        let serial = guest.connect_console(&console_sock)?;
        let log = File::create(&guest.console_log)
            .map_err(io_err(format!("creating {}", guest.console_log.display())))?;
        let reader = serial
            .try_clone()
            .map_err(io_err("cloning the console socket"))?;
        let console = Arc::clone(&guest.console);
        guest.reader = Some(
            std::thread::Builder::new()
                .name(format!("console-{name}"))
                .spawn(move || console.pump(reader, Some(log)))
                .map_err(io_err("starting the console reader thread"))?,
        );
        guest.serial = Some(serial);
        Ok(guest)
    }
}

fn path_arg(p: &Path) -> String {
    // QEMU option values use ',' as separator; scratch and image paths never contain one.
    p.to_string_lossy().into_owned()
}

/// Starts a backend process (output to `<scratch>/<log>`) and waits until it has created
/// `socket`.
fn start_backend(
    scratch: &ScratchDir,
    cmd: &mut Command,
    log: &str,
    socket: &Path,
) -> Result<Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let log_path = scratch.path().join(log);
    let log_file =
        File::create(&log_path).map_err(io_err(format!("creating {}", log_path.display())))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io_err("cloning a log file"))?)
        .stderr(log_file)
        .spawn()
        .map_err(io_err(format!("starting {program}")))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if socket.exists() {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(Error::Backend(format!(
                "{program} did not create {} ({}):\n{}",
                socket.display(),
                exited.map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
                tail_lines(&log, 30)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a command run with [`Guest::run`] printed (stdout and stderr together, as the console
/// shows them, `\r` removed) and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The output.
    pub stdout: String,
    /// The exit status (`$?`).
    pub status: i32,
}

impl Output {
    /// Whether the status is 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A running guest. Dropping it kills QEMU and the backends the harness started and removes
/// the scratch directory; when the test is panicking it first prints the console's last lines.
#[derive(Debug)]
pub struct Guest {
    name: String,
    child: Mutex<Option<Child>>,
    pid: u32,
    backends: Vec<Child>,
    console: Arc<Console>,
    serial: Option<UnixStream>,
    shell_seq: Mutex<u64>,
    reader: Option<JoinHandle<()>>,
    qmp_socket: PathBuf,
    vsock_socket: Option<PathBuf>,
    qemu_stderr: PathBuf,
    console_log: PathBuf,
    exit: Mutex<Option<ExitStatus>>,
    // Last: removed after the processes using it are gone.
    scratch: ScratchDir,
}

impl Guest {
    fn connect_console(&self, path: &Path) -> Result<UnixStream> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    if let Some(status) = self.try_exit() {
                        return Err(self.failure(&format!(
                            "QEMU exited ({status}) before its console socket was up"
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(self.failure(&format!(
                            "could not connect to the console socket {}: {e}",
                            path.display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The guest's scratch directory (sockets and logs).
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The QMP socket (one client at a time).
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// The hybrid-vsock socket, when the guest has a vsock device.
    pub fn vsock_socket(&self) -> Option<&Path> {
        self.vsock_socket.as_deref()
    }

    /// Everything the guest printed on its console so far.
    pub fn console_log(&self) -> String {
        self.console.text()
    }

    /// QEMU's exit status once it has exited (reaps it).
    fn try_exit(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if exit.is_none() {
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = child.as_mut() {
                *exit = c.try_wait().ok().flatten();
            }
        }
        *exit
    }

    /// Whether QEMU is still running.
    pub fn is_running(&self) -> bool {
        self.try_exit().is_none()
    }

    /// The last console lines and QEMU's stderr, for error messages.
    pub fn diagnostics(&self) -> String {
        let stderr = std::fs::read_to_string(&self.qemu_stderr).unwrap_or_default();
        let mut out = format!(
            "\n--- last {TAIL_LINES} console lines of guest {:?} (QEMU pid {}; set VMSILO_TESTKIT_KEEP=1 to keep {}) ---\n{}",
            self.name,
            self.pid,
            self.scratch.path().display(),
            self.console.tail(TAIL_LINES)
        );
        if !stderr.trim().is_empty() {
            out.push_str("--- QEMU stderr ---\n");
            out.push_str(&tail_lines(&stderr, 30));
        }
        out
    }

    fn failure(&self, what: &str) -> Error {
        Error::Guest {
            guest: self.name.clone(),
            what: what.to_owned(),
            detail: self.diagnostics(),
        }
    }

    /// Waits until the guest prints `VMSILO-READY`. Fails at once when `/init` reports
    /// `VMSILO-INIT-FAILED`, the kernel panics or QEMU exits, and after `timeout` otherwise;
    /// on failure QEMU and the backends are killed before this returns, and the error carries
    /// the console's last lines.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        #[derive(PartialEq)]
        enum Seen {
            Ready,
            InitFailed,
            Panic,
        }
        let seen = self.console.next_line(deadline, |line| {
            if line.contains(READY_LINE) {
                Some(Seen::Ready)
            } else if line.contains(INIT_FAILED_LINE) {
                Some(Seen::InitFailed)
            } else if line.contains("Kernel panic") {
                Some(Seen::Panic)
            } else {
                None
            }
        });
        let what = match seen {
            Ok(Seen::Ready) => return Ok(()),
            Ok(Seen::InitFailed) => "the guest's /init reported VMSILO-INIT-FAILED".to_owned(),
            Ok(Seen::Panic) => "the guest kernel panicked before VMSILO-READY".to_owned(),
            Err(WaitEnd::Closed) => {
                self.wait_exit(Duration::from_secs(5));
                match self.try_exit() {
                    Some(s) => format!("QEMU exited ({s}) before the guest printed {READY_LINE}"),
                    None => format!("the console closed before the guest printed {READY_LINE}"),
                }
            }
            Err(WaitEnd::Timeout) => format!("no {READY_LINE} line within {timeout:?}"),
        };
        self.kill();
        Err(self.failure(&what))
    }

    /// Waits for a console line containing `pattern` and returns it. Lines are consumed: the
    /// next call only sees later lines.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        match self
            .console
            .next_line(deadline, |l| l.contains(pattern).then(|| l.to_owned()))
        {
            Ok(line) => Ok(line),
            Err(WaitEnd::Timeout) => Err(self.failure(&format!(
                "no console line containing {pattern:?} within {timeout:?}"
            ))),
            Err(WaitEnd::Closed) => Err(self.failure(&format!(
                "the console closed (QEMU exited) before a line containing {pattern:?}"
            ))),
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<()> {
        let mut serial = self
            .serial
            .as_ref()
            .ok_or_else(|| Error::Usage("the guest has no console connection".into()))?;
        serial
            .write_all(bytes)
            .map_err(|e| self.failure(&format!("writing to the console: {e}")))
    }

    /// Runs `command` in the guest's shell (via `eval`, stdin from `/dev/null`, stderr into
    /// stdout) and returns its output and status. Commands run one at a time. On timeout the
    /// command gets a Ctrl-C and the error shows the console.
    ///
    /// Background jobs (`cmd &`) keep writing to the console; redirect their output.
    pub fn run(&self, command: &str, timeout: Duration) -> Result<Output> {
        if command.len() > MAX_COMMAND {
            return Err(Error::Usage(format!(
                "command of {} bytes is longer than {MAX_COMMAND}: put it in the image \
                 (ImageSpec::file) or send it in parts",
                command.len()
            )));
        }
        let mut seq = self
            .shell_seq
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *seq += 1;
        let n = *seq;
        let quoted = format!("'{}'", command.replace('\'', r"'\''"));
        // The markers are split by quotes in the echoed input line, so only the shell's
        // output matches them.
        let line = format!(
            "echo '@@VMSILO-B''EGIN-{n}@@'; eval {quoted} </dev/null 2>&1; echo \"@@VMSILO-E\"\"ND-{n}-$?@@\"\n"
        );
        let begin = format!("@@VMSILO-BEGIN-{n}@@");
        let end = format!("@@VMSILO-END-{n}-");
        self.send(line.as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut started = false;
        let mut out = String::new();
        let result = self.console.next_line(deadline, |l| {
            if !started {
                started = l.ends_with(&begin);
                return None;
            }
            if let Some(pos) = l.find(&end) {
                let status = l[pos + end.len()..]
                    .strip_suffix("@@")
                    .and_then(|s| s.parse::<i32>().ok());
                if let Some(status) = status {
                    out.push_str(&l[..pos]);
                    return Some(status);
                }
            }
            out.push_str(l);
            out.push('\n');
            None
        });
        match result {
            Ok(status) => Ok(Output {
                stdout: out,
                status,
            }),
            Err(end) => {
                let what = match end {
                    WaitEnd::Timeout => {
                        let _ = self.send(b"\x03");
                        format!("command {command:?} did not finish within {timeout:?}")
                    }
                    WaitEnd::Closed => {
                        format!("the console closed (QEMU exited) while running {command:?}")
                    }
                };
                Err(self.failure(&what))
            }
        }
    }

    /// [`run`](Self::run), failing unless the status is 0; returns the output.
    pub fn run_ok(&self, command: &str, timeout: Duration) -> Result<String> {
        let out = self.run(command, timeout)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(Error::Guest {
                guest: self.name.clone(),
                what: format!("command {command:?} exited with status {}", out.status),
                detail: format!(
                    "\n--- its output ---\n{}",
                    tail_lines(&out.stdout, TAIL_LINES)
                ),
            })
        }
    }

    /// Connects a new QMP session (see [`Qmp`]).
    pub fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(&self.qmp_socket)
    }

    fn vsock_uds(&self) -> Result<&Path> {
        self.vsock_socket.as_deref().ok_or_else(|| {
            Error::Usage(format!(
                "guest {:?} has no vsock device: add one with QemuBuilder::vsock",
                self.name
            ))
        })
    }

    /// Connects to guest vsock port `port` through the hybrid-vsock socket
    /// (`CONNECT <port>\n` → `OK <anything>\n`). Fails if nobody listens on the port yet, or
    /// if no answer comes within 60 s.
    ///
    /// Don't half-close (`shutdown(Write)`) the stream while you still expect data:
    /// vhost-device-vsock then closes the whole connection.
    pub fn vsock_connect(&self, port: u32) -> Result<UnixStream> {
        self.vsock_connect_until(port, Instant::now() + Duration::from_secs(60))
            .map_err(|(e, _)| e)
    }

    /// One attempt, waiting for the answer until `deadline`. An attempt still unanswered then
    /// is not closed but handed to [`hybrid::linger`]: a late answer to a closed socket crashes
    /// vhost-device-vsock 0.3's worker and with it the guest's vsock (see
    /// `vmsilo_proto::hybrid`). On failure, also how long to wait before trying again: 1 s
    /// while the guest's vsock device is not started (an attempt arriving while the guest's
    /// driver starts it can also end that worker), 100 ms otherwise.
    fn vsock_connect_until(
        &self,
        port: u32,
        deadline: Instant,
    ) -> std::result::Result<UnixStream, (Error, Duration)> {
        let retry = Duration::from_millis(100);
        let uds = self.vsock_uds().map_err(|e| (e, retry))?;
        let what = |e: &hybrid::HybridError| {
            let pause = match e {
                hybrid::HybridError::NotStarted { .. } => Duration::from_secs(1),
                _ => retry,
            };
            let e = Error::Guest {
                guest: self.name.clone(),
                what: format!("vsock port {port}: {e}"),
                detail: String::new(),
            };
            (e, pause)
        };
        let s = UnixStream::connect(uds).map_err(|e| {
            let e = Error::Guest {
                guest: self.name.clone(),
                what: format!("vsock port {port}: connecting to {}: {e}", uds.display()),
                detail: String::new(),
            };
            (e, retry)
        })?;
        let mut pending = hybrid::PendingConnect::send(s, port).map_err(|e| what(&e))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let age = pending.age();
                let _ = hybrid::linger(vec![pending]);
                let e = Error::Guest {
                    guest: self.name.clone(),
                    what: format!("vsock port {port}: CONNECT unanswered for {age:?}"),
                    detail: String::new(),
                };
                return Err((e, retry));
            }
            match pending.poll(left.min(Duration::from_secs(1))) {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(e) => return Err(what(&e)),
            }
        }
    }

    /// [`vsock_connect`](Self::vsock_connect), retried until `timeout` (for a listener the
    /// guest is still starting).
    pub fn vsock_connect_timeout(&self, port: u32, timeout: Duration) -> Result<UnixStream> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.vsock_connect_until(port, deadline) {
                Ok(s) => return Ok(s),
                Err((e, _)) if Instant::now() >= deadline || !self.is_running() => {
                    return Err(match e {
                        Error::Guest { guest, what, .. } => Error::Guest {
                            guest,
                            what: format!("{what} (retried for {timeout:?})"),
                            detail: self.diagnostics(),
                        },
                        other => other,
                    });
                }
                Err((_, pause)) => std::thread::sleep(pause),
            }
        }
    }

    /// Listens for guest connections to host port `port` (CID 2): vhost-device-vsock connects
    /// to `<vsock socket>_<port>`. Listen before the guest connects.
    pub fn vsock_listen(&self, port: u32) -> Result<UnixListener> {
        let mut path = self.vsock_uds()?.as_os_str().to_owned();
        path.push(format!("_{port}"));
        let path = PathBuf::from(path);
        let _ = std::fs::remove_file(&path);
        UnixListener::bind(&path).map_err(io_err(format!("listening on {}", path.display())))
    }

    fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Powers the guest off cleanly (`poweroff -f` in its shell) and waits until QEMU exits
    /// with status 0. Fails if it doesn't within `timeout` or the kernel panicked.
    pub fn shutdown(mut self, timeout: Duration) -> Result<()> {
        self.send(b"poweroff -f\n")?;
        let status = self.wait_exit(timeout);
        let panicked = self.console.text().contains("Kernel panic");
        let result = match status {
            Some(s) if s.success() && !panicked => Ok(()),
            Some(s) if panicked => {
                Err(self.failure(&format!("the kernel panicked; QEMU exited ({s})")))
            }
            Some(s) => Err(self.failure(&format!("QEMU exited with {s} on poweroff"))),
            None => Err(self.failure(&format!("QEMU still runs {timeout:?} after poweroff"))),
        };
        self.kill();
        result
    }

    /// Kills QEMU and the backends now (SIGKILL) and reaps them. Idempotent.
    pub fn kill(&mut self) {
        {
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                if let Ok(s) = c.wait() {
                    let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
                    exit.get_or_insert(s);
                }
            }
        }
        for b in &mut self.backends {
            let _ = b.kill();
            let _ = b.wait();
        }
        if let Some(s) = &self.serial {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() && self.reader.is_some() {
            eprintln!(
                "vmsilo-testkit: the test panicked with guest {:?} running{}",
                self.name,
                self.diagnostics()
            );
        }
        self.kill();
    }
}
