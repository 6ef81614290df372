//! Real headless Wayland compositors for tests: weston 10 (as root) and sway (as a non-root test
//! user), screenshots decoded into an [`Image`] whose pixels tests count, and weston's protocol
//! trace.
//!
//! - [`Weston::start`] runs `weston --backend=headless-backend.so --use-pixman --idle-time=0
//!   --debug` on a socket in a fresh 0700 `XDG_RUNTIME_DIR`, with a black background and no
//!   panel, and waits for its socket. [`Weston::screenshot`] runs `weston-screenshooter`,
//!   [`Weston::proto_trace`] runs `weston-debug proto` in the background.
//! - [`Sway::start`] runs sway headless (`WLR_BACKENDS=headless WLR_RENDERER=pixman`) as
//!   [`TEST_USER`] (created with `useradd` when missing: sway refuses to run as root), with
//!   no wallpaper, no borders and no Xwayland. [`Sway::screenshot`] runs `grim` as that
//!   user.
//! - [`Image`]: RGB8 pixels decoded from PNG; [`Image::count`], [`Image::bbox`] and
//!   [`Image::count_in`] find exact colours (the pixman renderers copy shm pixels unchanged).
//!
//! Both compositors are killed when dropped (also when the test panics), and every error
//! quotes the end of the compositor's log.
//!
//! ```no_run
//! use std::time::Duration;
//! use vmsilo_testkit::wayland::{Compositor, Weston, WestonOptions};
//!
//! # fn main() -> Result<(), vmsilo_testkit::Error> {
//! let weston = Weston::start(WestonOptions::default())?;
//! let trace = weston.proto_trace()?;
//! let _client = weston.command("weston-simple-shm").spawn().expect("weston-simple-shm");
//! trace.wait_for("wl_surface", Duration::from_secs(30))?;
//! let shot = weston.screenshot()?;
//! assert!(shot.bbox_not([0, 0, 0]).is_some());
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::console::tail_lines;
use crate::scratch::ScratchDir;
use crate::tools::find_tool;
use crate::{Error, Result, io_err};

/// The non-root user [`Sway`] runs as (created when missing).
pub const TEST_USER: &str = "vmsilo-test";
/// The colour of an empty sway output without a wallpaper (sway clears to 0.25 grey).
pub const SWAY_BACKGROUND: Rgb = [0x3f, 0x3f, 0x3f];
/// Time for a compositor to create its socket (a cold, loaded CI machine included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for one screenshot.
const SHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Compositor log lines quoted in errors.
const LOG_TAIL: usize = 40;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Parses `#rrggbb` (the `#` is optional).
pub fn parse_rgb(s: &str) -> Option<Rgb> {
    let hex = s.strip_prefix('#').unwrap_or(s);
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// An axis-aligned rectangle in image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// A decoded screenshot: 8-bit RGB, rows top to bottom.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({}x{})", self.width, self.height)
    }
}

impl Image {
    /// An image from RGB8 rows; `None` when `rgb` is not `width * height * 3` bytes.
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Option<Image> {
        (rgb.len() as u64 == u64::from(width) * u64::from(height) * 3).then_some(Image {
            width,
            height,
            rgb,
        })
    }

    /// Decodes a PNG (8-bit RGB or RGBA, what weston-screenshooter and grim write; see
    /// [`crate::png`]); alpha is dropped.
    pub fn from_png(bytes: &[u8]) -> Result<Image> {
        let img = crate::png::decode(bytes)?;
        let rgb: Vec<u8> = img
            .rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        let (w, h) = (u32::try_from(img.width), u32::try_from(img.height));
        match (w, h) {
            (Ok(w), Ok(h)) => Image::from_rgb(w, h, rgb),
            _ => None,
        }
        .ok_or_else(|| Error::Wayland("decoding PNG: inconsistent size".into()))
    }

    /// Reads and decodes a PNG file.
    pub fn load_png(path: &Path) -> Result<Image> {
        let bytes = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        Image::from_png(&bytes).map_err(|e| Error::Wayland(format!("{}: {e}", path.display())))
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixel at (`x`, `y`), `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<Rgb> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]])
    }

    fn pixels(&self) -> impl Iterator<Item = (u32, u32, Rgb)> + '_ {
        let w = self.width.max(1) as usize;
        self.rgb
            .chunks_exact(3)
            .enumerate()
            .map(move |(i, p)| ((i % w) as u32, (i / w) as u32, [p[0], p[1], p[2]]))
    }

    /// Pixels of exactly colour `rgb`.
    pub fn count(&self, rgb: Rgb) -> usize {
        self.pixels().filter(|&(_, _, p)| p == rgb).count()
    }

    /// Pixels of exactly colour `rgb` inside `rect` (clipped to the image).
    pub fn count_in(&self, rect: Rect, rgb: Rgb) -> usize {
        let x_end = rect.x.saturating_add(rect.w).min(self.width);
        let y_end = rect.y.saturating_add(rect.h).min(self.height);
        (rect.y..y_end)
            .flat_map(|y| (rect.x..x_end).map(move |x| (x, y)))
            .filter(|&(x, y)| self.pixel(x, y) == Some(rgb))
            .count()
    }

    /// The smallest rectangle holding every pixel for which `keep` is true.
    pub fn bbox_where(&self, keep: impl Fn(Rgb) -> bool) -> Option<Rect> {
        let mut b: Option<(u32, u32, u32, u32)> = None;
        for (x, y, p) in self.pixels() {
            if keep(p) {
                b = Some(match b {
                    None => (x, y, x, y),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
                });
            }
        }
        b.map(|(x0, y0, x1, y1)| Rect {
            x: x0,
            y: y0,
            w: x1 - x0 + 1,
            h: y1 - y0 + 1,
        })
    }

    /// The bounding box of the pixels of exactly colour `rgb`.
    pub fn bbox(&self, rgb: Rgb) -> Option<Rect> {
        self.bbox_where(|p| p == rgb)
    }

    /// The bounding box of every pixel that is not `background`.
    pub fn bbox_not(&self, background: Rgb) -> Option<Rect> {
        self.bbox_where(|p| p != background)
    }

    /// The most frequent colours, most frequent first (at most `n`), for error messages.
    pub fn top_colors(&self, n: usize) -> Vec<(String, usize)> {
        let mut counts = std::collections::HashMap::<Rgb, usize>::new();
        for (_, _, p) in self.pixels() {
            *counts.entry(p).or_default() += 1;
        }
        let mut v: Vec<(Rgb, usize)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(n)
            .map(|(c, k)| (format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]), k))
            .collect()
    }
}

/// Runs `cmd` with stdout and stderr captured; kills it after `limit`.
fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {what}")))?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Wayland(format!(
                    "{what} did not finish within {} s",
                    limit.as_secs()
                )));
            }
            Err(e) => return Err(io_err(format!("waiting for {what}"))(e)),
        }
    };
    Ok(Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    format!(
        "\n--- last lines of {} ---\n{}",
        path.display(),
        tail_lines(&text, LOG_TAIL)
    )
}

/// A compositor child process and its log; killed on drop.
#[derive(Debug)]
struct Proc {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Proc {
    /// Waits for `socket` to appear (found by `find`), failing early when the process exits.
    fn wait_socket(&mut self, find: impl Fn() -> Option<PathBuf>) -> Result<PathBuf> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(p) = find()
                && std::os::unix::net::UnixStream::connect(&p).is_ok()
            {
                return Ok(p);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Wayland(format!(
                    "{} exited with {status} before creating its socket{}",
                    self.name,
                    log_tail(&self.log)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Wayland(format!(
                    "{} created no socket within {} s{}",
                    self.name,
                    START_TIMEOUT.as_secs(),
                    log_tail(&self.log)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Wayland(format!(
                "{} exited with {status}{}",
                self.name,
                log_tail(&self.log)
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn open_log(path: &Path) -> Result<File> {
    File::create(path).map_err(io_err(format!("creating {}", path.display())))
}

/// What tests use of a running headless compositor, [`Weston`] or [`Sway`], so that one test
/// body can run against both.
pub trait Compositor {
    /// `"weston"` or `"sway"`.
    fn name(&self) -> &'static str;
    /// The `WAYLAND_DISPLAY` value (the socket name).
    fn display(&self) -> &str;
    /// The `XDG_RUNTIME_DIR` holding the socket (mode 0700, owned by [`Compositor::user`]).
    fn runtime_dir(&self) -> &Path;
    /// The socket's full path.
    fn socket_path(&self) -> PathBuf {
        self.runtime_dir().join(self.display())
    }
    /// A scratch directory (owned by root) that lives as long as the compositor.
    fn scratch(&self) -> &Path;
    /// The user the compositor runs as; `None` for the current user.
    fn user(&self) -> Option<&TestUser>;
    /// `program` with `XDG_RUNTIME_DIR` and `WAYLAND_DISPLAY` set for this compositor, as the
    /// compositor's user.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command;
    /// The compositor's log so far.
    fn log(&self) -> String;
    /// Fails (with the end of the log) if the compositor has exited.
    fn check_alive(&mut self) -> Result<()>;
    /// The colour of the empty output.
    fn background(&self) -> Rgb;
    /// A screenshot of the whole output, as PNG bytes.
    fn screenshot_png(&self) -> Result<Vec<u8>>;
    /// A screenshot of the whole output, decoded.
    fn screenshot(&self) -> Result<Image> {
        self.screenshot_png().and_then(|b| Image::from_png(&b))
    }
}

/// Options of [`Weston::start`].
#[derive(Debug, Clone)]
pub struct WestonOptions {
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Socket name under the runtime directory.
    pub socket: String,
}

impl Default for WestonOptions {
    fn default() -> Self {
        WestonOptions {
            width: 1024,
            height: 768,
            socket: "wayland-vmsilo".into(),
        }
    }
}

/// weston 10 headless (pixman renderer, debug protocols on), killed on drop.
#[derive(Debug)]
pub struct Weston {
    proc: Proc,
    dir: ScratchDir,
    runtime: PathBuf,
    socket: String,
}

impl Weston {
    /// Starts weston and waits for its socket. Its log is `<scratch>/weston.log`.
    pub fn start(opts: WestonOptions) -> Result<Weston> {
        if opts.socket.is_empty() || opts.socket.contains('/') {
            return Err(Error::Usage(format!(
                "weston socket name {:?} must be a plain file name",
                opts.socket
            )));
        }
        let weston = find_tool("weston")?;
        let dir = ScratchDir::new("weston")?;
        let runtime = dir.path().join("rt");
        std::fs::create_dir(&runtime).map_err(io_err(format!("creating {}", runtime.display())))?;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod 0700 {}", runtime.display())))?;
        let ini = dir.path().join("weston.ini");
        std::fs::write(
            &ini,
            "[core]\nidle-time=0\n\n[shell]\nbackground-color=0xff000000\npanel-position=none\nlocking=false\nanimation=none\nstartup-animation=none\n",
        )
        .map_err(io_err(format!("writing {}", ini.display())))?;
        let log = dir.path().join("weston.log");
        let stderr = open_log(&log)?;
        let child = Command::new(weston)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", dir.path())
            .arg("--backend=headless-backend.so")
            .arg("--use-pixman")
            .arg("--idle-time=0")
            .arg("--debug")
            .arg(format!("--config={}", ini.display()))
            .arg(format!("--socket={}", opts.socket))
            .arg(format!("--width={}", opts.width))
            .arg(format!("--height={}", opts.height))
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().map_err(io_err("duplicating the log"))?)
            .stderr(stderr)
            .spawn()
            .map_err(io_err("starting weston"))?;
        let mut proc = Proc {
            child,
            log,
            name: "weston",
        };
        let sock = runtime.join(&opts.socket);
        proc.wait_socket(|| Some(sock.clone()))?;
        Ok(Weston {
            proc,
            dir,
            runtime,
            socket: opts.socket,
        })
    }

    /// weston's process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Starts `weston-debug proto`, writing weston's protocol trace to a file.
    pub fn proto_trace(&self) -> Result<ProtoTrace> {
        let tool = find_tool("weston-debug")?;
        let path = self.dir.path().join(format!(
            "proto-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let file = open_log(&path)?;
        let child = self
            .command(tool)
            .arg("proto")
            .stdin(Stdio::null())
            .stdout(
                file.try_clone()
                    .map_err(io_err("duplicating the trace file"))?,
            )
            .stderr(file)
            .spawn()
            .map_err(io_err("starting weston-debug proto"))?;
        let trace = ProtoTrace {
            proc: Proc {
                child,
                log: path,
                name: "weston-debug proto",
            },
        };
        // weston's own `rq`/`ev` lines start only once the stream is bound; wait for the
        // first line (weston-debug's own requests are traced too) so nothing is missed.
        trace.wait_for("[proto]", START_TIMEOUT)?;
        Ok(trace)
    }
}

impl Compositor for Weston {
    fn name(&self) -> &'static str {
        "weston"
    }

    fn display(&self) -> &str {
        &self.socket
    }

    fn runtime_dir(&self) -> &Path {
        &self.runtime
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn user(&self) -> Option<&TestUser> {
        None
    }

    /// Black (`background-color` in the generated weston.ini).
    fn background(&self) -> Rgb {
        [0, 0, 0]
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", &self.runtime)
            .env("WAYLAND_DISPLAY", &self.socket);
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    fn check_alive(&mut self) -> Result<()> {
        self.proc.check_alive()
    }

    /// `weston-screenshooter` in a scratch directory (it writes `wayland-screenshot-*.png`
    /// into its working directory).
    fn screenshot_png(&self) -> Result<Vec<u8>> {
        let tool = find_tool("weston-screenshooter")?;
        let shots = ScratchDir::new("shot")?;
        let out = output_within(
            self.command(tool).current_dir(shots.path()),
            SHOT_TIMEOUT,
            "weston-screenshooter",
        )?;
        let found = std::fs::read_dir(shots.path())
            .map_err(io_err(format!("listing {}", shots.path().display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("wayland-screenshot-") && n.ends_with(".png"))
            });
        match found {
            Some(p) if out.status.success() => {
                std::fs::read(&p).map_err(io_err(format!("reading {}", p.display())))
            }
            _ => Err(Error::Wayland(format!(
                "weston-screenshooter ({}) wrote no screenshot: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                log_tail(&self.proc.log)
            ))),
        }
    }
}

/// A running `weston-debug proto` writing weston's protocol trace to a file; stopped on drop.
///
/// Lines look like `[time][proto] client 0x55.. rq xdg_toplevel@12.set_title("…")`.
#[derive(Debug)]
pub struct ProtoTrace {
    proc: Proc,
}

impl ProtoTrace {
    /// The trace so far.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = File::open(&self.proc.log).and_then(|f| BufReader::new(f).read_to_string(&mut s));
        s
    }

    /// The trace file.
    pub fn path(&self) -> &Path {
        &self.proc.log
    }

    /// Whether the trace so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }

    /// Waits until the trace contains `needle`; returns the first line containing it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                return Err(Error::Wayland(format!(
                    "weston's protocol trace has no {needle:?} after {} s; it ends with:\n{}",
                    timeout.as_secs(),
                    tail_lines(&text, LOG_TAIL)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client ids (`0x…`) of the trace lines that contain `needle`, without repeats.
    pub fn clients_with(&self, needle: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for line in self.text().lines().filter(|l| l.contains(needle)) {
            if let Some(id) = trace_client(line)
                && !ids.iter().any(|i| i == id)
            {
                ids.push(id.to_owned());
            }
        }
        ids
    }

    /// Every trace line of client `id` (as returned by [`ProtoTrace::clients_with`]).
    pub fn lines_of(&self, id: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| trace_client(l) == Some(id))
            .map(str::to_owned)
            .collect()
    }
}

/// The `0x…` client id of a weston proto trace line.
pub fn trace_client(line: &str) -> Option<&str> {
    let rest = &line[line.find("] client ")? + "] client ".len()..];
    rest.split_whitespace().next()
}

/// A system user for compositors that refuse root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestUser {
    /// The name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

fn id_of(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The user `name`, created as a system user without a home when missing (needs root).
pub fn test_user(name: &str) -> Result<TestUser> {
    if id_of(name, "-u").is_none() {
        let useradd = find_tool("useradd")?;
        let out = Command::new(useradd)
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(name)
            .output()
            .map_err(io_err(format!("running useradd {name}")))?;
        if !out.status.success() && id_of(name, "-u").is_none() {
            return Err(Error::Wayland(format!(
                "useradd {name} failed ({}): {}; tests need root to create it",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    match (id_of(name, "-u"), id_of(name, "-g")) {
        (Some(uid), Some(gid)) => Ok(TestUser {
            name: name.into(),
            uid,
            gid,
        }),
        _ => Err(Error::Wayland(format!(
            "user {name} has no uid/gid after useradd"
        ))),
    }
}

/// Options of [`Sway::start`].
#[derive(Debug, Clone)]
pub struct SwayOptions {
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// The user sway runs as (created when missing).
    pub user: String,
    /// Lines appended to the generated config.
    pub extra_config: String,
}

impl Default for SwayOptions {
    fn default() -> Self {
        SwayOptions {
            width: 1024,
            height: 768,
            user: TEST_USER.into(),
            extra_config: String::new(),
        }
    }
}

/// sway headless (pixman) running as a non-root test user, killed on drop.
#[derive(Debug)]
pub struct Sway {
    proc: Proc,
    dir: ScratchDir,
    runtime: PathBuf,
    socket: String,
    user: TestUser,
}

impl Sway {
    /// Starts sway as `opts.user` with its own 0700 runtime directory owned by that user.
    pub fn start(opts: SwayOptions) -> Result<Sway> {
        let sway = find_tool("sway")?;
        let user = test_user(&opts.user)?;
        let dir = ScratchDir::new("sway")?;
        let runtime = dir.path().join("rt");
        std::fs::create_dir(&runtime).map_err(io_err(format!("creating {}", runtime.display())))?;
        std::os::unix::fs::chown(&runtime, Some(user.uid), Some(user.gid))
            .map_err(io_err(format!("chown {} {}", user.name, runtime.display())))?;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("chmod 0700 {}", runtime.display())))?;
        let config = dir.path().join("sway.conf");
        std::fs::write(
            &config,
            format!(
                "xwayland disable\ndefault_border none\ndefault_floating_border none\n\
                 focus_follows_mouse no\noutput * resolution {}x{}\n{}\n",
                opts.width, opts.height, opts.extra_config
            ),
        )
        .map_err(io_err(format!("writing {}", config.display())))?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(format!("chmod {}", config.display())))?;
        let log = dir.path().join("sway.log");
        let stderr = open_log(&log)?;
        let child = Command::new(sway)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", &runtime)
            .env("WLR_BACKENDS", "headless")
            .env("WLR_RENDERER", "pixman")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .arg("-c")
            .arg(&config)
            .uid(user.uid)
            .gid(user.gid)
            .current_dir(&runtime)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().map_err(io_err("duplicating the log"))?)
            .stderr(stderr)
            .spawn()
            .map_err(io_err("starting sway"))?;
        let mut proc = Proc {
            child,
            log,
            name: "sway",
        };
        let rt = runtime.clone();
        let sock = proc.wait_socket(move || find_wayland_socket(&rt))?;
        let socket = sock
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("wayland-1")
            .to_owned();
        Ok(Sway {
            proc,
            dir,
            runtime,
            socket,
            user,
        })
    }

    /// The user sway runs as.
    pub fn user(&self) -> &TestUser {
        &self.user
    }

    /// Runs `swaymsg ARGS` (as the test user, on this sway's IPC socket) and returns its
    /// output, e.g. `ipc(&["-t", "get_tree"])` for the window tree as JSON.
    pub fn ipc(&self, args: &[&str]) -> Result<String> {
        let swaymsg = find_tool("swaymsg")?;
        let sock = std::fs::read_dir(&self.runtime)
            .map_err(io_err(format!("listing {}", self.runtime.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("sway-ipc.") && n.ends_with(".sock"))
            })
            .ok_or_else(|| {
                Error::Wayland(format!(
                    "no sway-ipc.*.sock in {}{}",
                    self.runtime.display(),
                    log_tail(&self.proc.log)
                ))
            })?;
        let out = output_within(
            self.command(swaymsg).env("SWAYSOCK", &sock).args(args),
            SHOT_TIMEOUT,
            "swaymsg",
        )?;
        if !out.status.success() {
            return Err(Error::Wayland(format!(
                "swaymsg {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                log_tail(&self.proc.log)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Compositor for Sway {
    fn name(&self) -> &'static str {
        "sway"
    }

    fn display(&self) -> &str {
        &self.socket
    }

    fn runtime_dir(&self) -> &Path {
        &self.runtime
    }

    fn scratch(&self) -> &Path {
        self.dir.path()
    }

    fn user(&self) -> Option<&TestUser> {
        Some(&self.user)
    }

    /// sway's clear colour (0.25 grey): no wallpaper, so no swaybg that could draw late.
    fn background(&self) -> Rgb {
        SWAY_BACKGROUND
    }

    /// Also runs `program` as [`Sway::user`], with `HOME` in the runtime directory.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("XDG_RUNTIME_DIR", &self.runtime)
            .env("WAYLAND_DISPLAY", &self.socket)
            .env("HOME", &self.runtime)
            .uid(self.user.uid)
            .gid(self.user.gid);
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }

    fn check_alive(&mut self) -> Result<()> {
        self.proc.check_alive()
    }

    /// `grim -t png -` as the test user.
    fn screenshot_png(&self) -> Result<Vec<u8>> {
        let grim = find_tool("grim")?;
        let out = output_within(
            self.command(grim)
                .args(["-t", "png", "-"])
                .current_dir(&self.runtime),
            SHOT_TIMEOUT,
            "grim",
        )?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(Error::Wayland(format!(
                "grim failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                log_tail(&self.proc.log)
            )));
        }
        Ok(out.stdout)
    }
}

/// The first `wayland-*` socket (not a `.lock`) in `dir`.
fn find_wayland_socket(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wayland-"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Image {
        // 4x3: a green 2x2 square at (1,1), the rest black, one blue pixel at (0,0).
        let mut rgb = vec![0u8; 4 * 3 * 3];
        let mut set = |x: usize, y: usize, c: Rgb| {
            let i = (y * 4 + x) * 3;
            rgb[i..i + 3].copy_from_slice(&c);
        };
        for (x, y) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            set(x, y, [0x2e, 0xcc, 0x71]);
        }
        set(0, 0, [0x34, 0x98, 0xdb]);
        Image::from_rgb(4, 3, rgb).unwrap()
    }

    #[test]
    fn test_parses_hex_colours_and_rejects_others() {
        assert_eq!(parse_rgb("#2ecc71"), Some([0x2e, 0xcc, 0x71]));
        assert_eq!(parse_rgb("3498DB"), Some([0x34, 0x98, 0xdb]));
        for bad in ["", "#", "#12345", "#1234567", "#gg0000", "red", "#+12345"] {
            assert_eq!(parse_rgb(bad), None, "{bad}");
        }
    }

    #[test]
    fn test_counts_and_boxes_exact_colours() {
        let img = sample();
        let green = [0x2e, 0xcc, 0x71];
        assert_eq!(img.count(green), 4);
        assert_eq!(img.count([0, 0, 0]), 7);
        assert_eq!(img.count([1, 2, 3]), 0);
        assert_eq!(
            img.bbox(green),
            Some(Rect {
                x: 1,
                y: 1,
                w: 2,
                h: 2
            })
        );
        assert_eq!(img.bbox([9, 9, 9]), None);
        assert_eq!(
            img.bbox_not([0, 0, 0]),
            Some(Rect {
                x: 0,
                y: 0,
                w: 3,
                h: 3
            })
        );
        let r = Rect {
            x: 2,
            y: 0,
            w: 10,
            h: 10,
        };
        assert_eq!(img.count_in(r, green), 2, "clipped to the image");
        assert_eq!(img.pixel(0, 0), Some([0x34, 0x98, 0xdb]));
        assert_eq!(img.pixel(4, 0), None);
        assert_eq!(img.top_colors(1), vec![("#000000".to_owned(), 7)]);
        assert!(Image::from_rgb(4, 3, vec![0; 5]).is_none());
    }

    /// A 2x1 RGBA PNG (filter type None); the CRC fields are not checked by the decoder.
    fn rgba_png() -> Vec<u8> {
        let raw = [0u8, 1, 2, 3, 255, 0x2e, 0xcc, 0x71, 0];
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (&b"IHDR"[..], &[0, 0, 0, 2, 0, 0, 0, 1, 8, 6, 0, 0, 0][..]),
            (b"IDAT", &z),
            (b"IEND", &[]),
        ] {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&[0; 4]);
        }
        png
    }

    #[test]
    fn test_decodes_rgba_pngs_to_rgb() {
        let img = Image::from_png(&rgba_png()).unwrap();
        assert_eq!((img.width(), img.height()), (2, 1));
        assert_eq!(img.pixel(0, 0), Some([1, 2, 3]));
        assert_eq!(
            img.pixel(1, 0),
            Some([0x2e, 0xcc, 0x71]),
            "alpha 0 is dropped"
        );
    }

    #[test]
    fn test_garbage_is_an_error_not_a_panic() {
        assert!(Image::from_png(b"").is_err());
        assert!(Image::from_png(b"\x89PNG\r\n\x1a\nxxxxxxxxxxxxxxxx").is_err());
        let png = rgba_png();
        assert!(Image::from_png(&png[..png.len() - 30]).is_err());
    }

    #[test]
    fn test_trace_client_ids() {
        let line =
            "[2026-12-06 04:50:14.198][proto] client 0x561c0e294810 rq wl_surface@3.commit()";
        assert_eq!(trace_client(line), Some("0x561c0e294810"));
        assert_eq!(trace_client("no client here"), None);
    }
}
