//! `vmsilo-test-client`: a small Wayland client for vmsilo's display tests and benchmarks,
//! written on the raw wire protocol (no libwayland) so that it runs in the test guest with
//! nothing but glibc.
//!
//! It shows an `xdg_toplevel` filled with one solid colour from a `wl_shm` buffer, redraws on
//! every frame callback and prints `frames=N` about once a second; probes globals
//! (`--list-globals`, `--bind`); and measures round trips (`--bench N`). See [`HELP`].

#![forbid(unsafe_code)]

mod wire;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use wire::{Args, ClientError, Connection, DISPLAY, Event, Msg, Result};

const HELP: &str = "\
vmsilo-test-client: a Wayland test client (connects to $WAYLAND_DISPLAY)

usage: vmsilo-test-client [OPTIONS]

window (the default):
  --title T          xdg_toplevel title (default \"vmsilo-test-client\")
  --app-id A         xdg_toplevel app_id (default \"vmsilo-test-client\")
  --size WxH         buffer size in pixels (default 200x150, at most 4096x4096)
  --color '#rrggbb'  fill colour (default #ff00ff)
  --exit-after N     exit 0 after N frames were shown
  --report-ms MS     print frames=N every MS milliseconds (default 1000)
  --keyboard         bind wl_seat's keyboard and print `keyboard-enter`, `keyboard-leave` and
                     `key=K state=S` (evdev code, 1 pressed 0 released) as they come
probes:
  --list-globals     print `global name=N interface=I version=V` per global, then exit
  --bind IFACE       bind IFACE (at the advertised version, or an unadvertised name when
                     IFACE is not advertised), round-trip, print `bound ...` and exit 0
  --version V        with --bind: bind at version V
  --name N           with --bind: bind global name N
benchmark:
  --bench N          show the window, then time N frames (commit -> wl_callback.done) and
                     N wl_display.sync round trips; prints one line
                     `frames=N fps=F frame_p50_us=.. frame_p99_us=.. sync_p50_us=.. sync_p99_us=..`

exit codes: 0 done, 1 other failure, 2 usage, 3 wl_display.error received (printed as
`wl_display.error object=O code=C message=\"..\"`), 4 the compositor closed the connection
(printed as `disconnected`), 5 malformed message from the compositor.
";

/// `xdg_wm_base` version this client speaks (v1 requests and events only).
const XDG_WM_BASE_VERSION: u32 = 1;
/// `wl_compositor` version (v1 requests only).
const COMPOSITOR_VERSION: u32 = 1;
/// `WL_SHM_FORMAT_XRGB8888`.
const XRGB8888: u32 = 1;
/// Longest wait for any one answer from the compositor.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
struct Options {
    title: String,
    app_id: String,
    width: u32,
    height: u32,
    color: [u8; 3],
    exit_after: Option<u64>,
    report: Duration,
    list_globals: bool,
    bind: Option<String>,
    bind_version: Option<u32>,
    bind_name: Option<u32>,
    bench: Option<u32>,
    keyboard: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            title: "vmsilo-test-client".into(),
            app_id: "vmsilo-test-client".into(),
            width: 200,
            height: 150,
            color: [0xff, 0, 0xff],
            exit_after: None,
            report: Duration::from_secs(1),
            list_globals: false,
            bind: None,
            bind_version: None,
            bind_name: None,
            bench: None,
            keyboard: false,
        }
    }
}

fn parse_color(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#').unwrap_or(s);
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let b = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([b(0)?, b(2)?, b(4)?])
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h) = (w.parse().ok()?, h.parse().ok()?);
    ((1..=4096).contains(&w) && (1..=4096).contains(&h)).then_some((w, h))
}

/// `Ok(None)` means `--help` was given.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Options>> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| ClientError::Usage(format!("{name} needs a value")))
        };
        let bad = |name: &str, v: &str| ClientError::Usage(format!("bad {name} value {v:?}"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--title" => o.title = value("--title")?,
            "--app-id" => o.app_id = value("--app-id")?,
            "--size" => {
                let v = value("--size")?;
                (o.width, o.height) = parse_size(&v).ok_or_else(|| bad("--size", &v))?;
            }
            "--color" => {
                let v = value("--color")?;
                o.color = parse_color(&v).ok_or_else(|| bad("--color", &v))?;
            }
            "--exit-after" => {
                let v = value("--exit-after")?;
                o.exit_after = Some(v.parse().map_err(|_| bad("--exit-after", &v))?);
            }
            "--report-ms" => {
                let v = value("--report-ms")?;
                let ms: u64 = v.parse().map_err(|_| bad("--report-ms", &v))?;
                o.report = Duration::from_millis(ms.max(10));
            }
            "--list-globals" => o.list_globals = true,
            "--keyboard" => o.keyboard = true,
            "--bind" => o.bind = Some(value("--bind")?),
            "--version" => {
                let v = value("--version")?;
                o.bind_version = Some(v.parse().map_err(|_| bad("--version", &v))?);
            }
            "--name" => {
                let v = value("--name")?;
                o.bind_name = Some(v.parse().map_err(|_| bad("--name", &v))?);
            }
            "--bench" => {
                let v = value("--bench")?;
                let n: u32 = v.parse().map_err(|_| bad("--bench", &v))?;
                if n == 0 {
                    return Err(bad("--bench", &v));
                }
                o.bench = Some(n);
            }
            other => return Err(ClientError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    if o.title.len() > 1000 || o.app_id.len() > 1000 {
        return Err(ClientError::Usage(
            "--title and --app-id are limited to 1000 bytes".into(),
        ));
    }
    Ok(Some(o))
}

/// One advertised global.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Global {
    name: u32,
    interface: String,
    version: u32,
}

/// The client: a connection, its registry, and the objects of the window once created.
#[derive(Debug)]
struct Client {
    conn: Connection,
    registry: u32,
    globals: Vec<Global>,
    wm_base: Option<u32>,
}

impl Client {
    fn connect() -> Result<Client> {
        let path = wire::display_path()?;
        let mut conn = Connection::connect(&path)?;
        let registry = conn.new_id();
        conn.send(Msg::new(DISPLAY, 1).uint(registry))?;
        let mut c = Client {
            conn,
            registry,
            globals: Vec::new(),
            wm_base: None,
        };
        c.roundtrip()?;
        Ok(c)
    }

    /// Handles the events every mode needs: errors, id release, registry changes and pings.
    /// Returns the events it did not consume.
    fn common(&mut self, ev: Event) -> Result<Option<Event>> {
        if ev.object == DISPLAY {
            let mut a = Args::new(&ev, "wl_display event");
            match ev.opcode {
                0 => {
                    let object = a.uint()?;
                    let code = a.uint()?;
                    let message = a.string()?;
                    return Err(ClientError::Protocol {
                        object,
                        code,
                        message,
                    });
                }
                1 => {
                    let id = a.uint()?;
                    self.conn.release_id(id);
                }
                _ => {}
            }
            return Ok(None);
        }
        if ev.object == self.registry {
            let mut a = Args::new(&ev, "wl_registry event");
            match ev.opcode {
                0 => {
                    let name = a.uint()?;
                    let interface = a.string()?;
                    let version = a.uint()?;
                    if self.globals.len() < 10_000 {
                        self.globals.push(Global {
                            name,
                            interface,
                            version,
                        });
                    }
                }
                1 => {
                    let name = a.uint()?;
                    self.globals.retain(|g| g.name != name);
                }
                _ => {}
            }
            return Ok(None);
        }
        if Some(ev.object) == self.wm_base && ev.opcode == 0 {
            let serial = Args::new(&ev, "xdg_wm_base.ping").uint()?;
            self.conn.send(Msg::new(ev.object, 3).uint(serial))?;
            self.conn.flush()?;
            return Ok(None);
        }
        Ok(Some(ev))
    }

    /// The next event that [`Client::common`] does not consume; `Ok(None)` after `timeout`.
    fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            match self.conn.next_event(left)? {
                None => return Ok(None),
                Some(ev) => {
                    if let Some(ev) = self.common(ev)? {
                        return Ok(Some(ev));
                    }
                }
            }
        }
    }

    /// `wl_display.sync` and waits for its `done`; other events are handled or dropped.
    fn roundtrip(&mut self) -> Result<Duration> {
        let cb = self.conn.new_id();
        let start = Instant::now();
        self.conn.send(Msg::new(DISPLAY, 0).uint(cb))?;
        self.conn.flush()?;
        self.wait_done(cb)?;
        Ok(start.elapsed())
    }

    /// Waits for `wl_callback.done` on `cb`.
    fn wait_done(&mut self, cb: u32) -> Result<()> {
        loop {
            match self.next(Some(ANSWER_TIMEOUT))? {
                Some(ev) if ev.object == cb && ev.opcode == 0 => return Ok(()),
                Some(_) => {}
                None => {
                    return Err(ClientError::Failed(format!(
                        "no answer from the compositor within {} s",
                        ANSWER_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }

    fn global(&self, interface: &str) -> Option<&Global> {
        self.globals.iter().find(|g| g.interface == interface)
    }

    fn bind(&mut self, interface: &str, max_version: u32) -> Result<u32> {
        let g = self
            .global(interface)
            .cloned()
            .ok_or_else(|| ClientError::Failed(format!("the compositor offers no {interface}")))?;
        let id = self.conn.new_id();
        let version = g.version.min(max_version);
        self.conn.send(
            Msg::new(self.registry, 0)
                .uint(g.name)
                .string(interface)
                .uint(version)
                .uint(id),
        )?;
        Ok(id)
    }
}

/// The window's objects.
#[derive(Debug)]
struct Window {
    surface: u32,
    xdg_surface: u32,
    toplevel: u32,
    buffer: u32,
    width: u32,
    height: u32,
}

/// A memfd holding `width * height` XRGB8888 pixels of `color`.
fn shm_file(width: u32, height: u32, color: [u8; 3]) -> Result<(OwnedFd, usize)> {
    use std::os::unix::fs::FileExt;
    let size = width as usize * height as usize * 4;
    let fd = nix::sys::memfd::memfd_create(
        c"vmsilo-test-client",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| ClientError::Io("memfd_create".into(), e.into()))?;
    let file = std::fs::File::from(fd);
    let px = [color[2], color[1], color[0], 0xff];
    let row: Vec<u8> = px
        .iter()
        .copied()
        .cycle()
        .take(width as usize * 4)
        .collect();
    let mut data = Vec::with_capacity(size);
    for _ in 0..height {
        data.extend_from_slice(&row);
    }
    file.write_all_at(&data, 0)
        .map_err(|e| ClientError::Io("filling the shm buffer".into(), e))?;
    Ok((OwnedFd::from(file), size))
}

impl Window {
    /// Creates the toplevel, waits for its first configure and shows the first frame.
    fn open(c: &mut Client, o: &Options) -> Result<Window> {
        let compositor = c.bind("wl_compositor", COMPOSITOR_VERSION)?;
        let shm = c.bind("wl_shm", 1)?;
        let wm_base = c.bind("xdg_wm_base", XDG_WM_BASE_VERSION)?;
        c.wm_base = Some(wm_base);

        let (fd, size) = shm_file(o.width, o.height, o.color)?;
        let pool = c.conn.new_id();
        c.conn
            .send_with_fd(Msg::new(shm, 0).uint(pool).int(size as i32), fd)?;
        let buffer = c.conn.new_id();
        c.conn.send(
            Msg::new(pool, 0)
                .uint(buffer)
                .int(0)
                .int(o.width as i32)
                .int(o.height as i32)
                .int(o.width as i32 * 4)
                .uint(XRGB8888),
        )?;
        c.conn.send(Msg::new(pool, 1))?;

        let surface = c.conn.new_id();
        c.conn.send(Msg::new(compositor, 0).uint(surface))?;
        let xdg_surface = c.conn.new_id();
        c.conn
            .send(Msg::new(wm_base, 2).uint(xdg_surface).uint(surface))?;
        let toplevel = c.conn.new_id();
        c.conn.send(Msg::new(xdg_surface, 1).uint(toplevel))?;
        c.conn.send(Msg::new(toplevel, 2).string(&o.title))?;
        c.conn.send(Msg::new(toplevel, 3).string(&o.app_id))?;
        c.conn.send(Msg::new(surface, 6))?;
        c.conn.flush()?;
        let w = Window {
            surface,
            xdg_surface,
            toplevel,
            buffer,
            width: o.width,
            height: o.height,
        };
        // The first configure, then the first buffer.
        loop {
            match c.next(Some(ANSWER_TIMEOUT))? {
                Some(ev) if ev.object == xdg_surface && ev.opcode == 0 => {
                    let serial = Args::new(&ev, "xdg_surface.configure").uint()?;
                    c.conn.send(Msg::new(xdg_surface, 4).uint(serial))?;
                    break;
                }
                Some(ev) if ev.object == toplevel && ev.opcode == 1 => {
                    return Err(ClientError::Failed(
                        "the compositor closed the window before showing it".into(),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(ClientError::Failed(format!(
                        "no xdg_surface.configure within {} s",
                        ANSWER_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Ok(w)
    }

    /// Attaches the buffer, damages all of it, asks for a frame callback and commits.
    /// Returns the callback's id.
    fn draw(&self, c: &mut Client) -> Result<u32> {
        let cb = c.conn.new_id();
        c.conn
            .send(Msg::new(self.surface, 1).uint(self.buffer).int(0).int(0))?;
        c.conn.send(
            Msg::new(self.surface, 2)
                .int(0)
                .int(0)
                .int(self.width as i32)
                .int(self.height as i32),
        )?;
        c.conn.send(Msg::new(self.surface, 3).uint(cb))?;
        c.conn.send(Msg::new(self.surface, 6))?;
        c.conn.flush()?;
        Ok(cb)
    }

    /// Handles a window event that is not a frame callback. Returns false on `close`.
    fn event(&self, c: &mut Client, ev: &Event) -> Result<bool> {
        if ev.object == self.xdg_surface && ev.opcode == 0 {
            let serial = Args::new(ev, "xdg_surface.configure").uint()?;
            c.conn.send(Msg::new(self.xdg_surface, 4).uint(serial))?;
        } else if ev.object == self.toplevel && ev.opcode == 1 {
            return Ok(false);
        }
        Ok(true)
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `wl_seat` version this client speaks (v1: get_keyboard, no name event).
const SEAT_VERSION: u32 = 1;

fn run_window(o: &Options) -> Result<()> {
    let mut c = Client::connect()?;
    let w = Window::open(&mut c, o)?;
    let keyboard = if o.keyboard {
        let seat = c.bind("wl_seat", SEAT_VERSION)?;
        let kb = c.conn.new_id();
        c.conn.send(Msg::new(seat, 1).uint(kb))?;
        Some(kb)
    } else {
        None
    };
    let mut cb = w.draw(&mut c)?;
    say(&format!(
        "shown title={:?} app_id={:?} size={}x{}",
        o.title, o.app_id, w.width, w.height
    ));
    let mut frames: u64 = 0;
    let mut next_report = Instant::now() + o.report;
    loop {
        let left = next_report.saturating_duration_since(Instant::now());
        match c.next(Some(left))? {
            Some(ev) if ev.object == cb && ev.opcode == 0 => {
                frames += 1;
                if o.exit_after.is_some_and(|n| frames >= n) {
                    say(&format!("frames={frames}"));
                    return Ok(());
                }
                cb = w.draw(&mut c)?;
            }
            // wl_keyboard: 1 enter, 2 leave, 3 key (serial, time, key, state).
            Some(ev) if Some(ev.object) == keyboard => match ev.opcode {
                1 => say("keyboard-enter"),
                2 => say("keyboard-leave"),
                3 => {
                    let mut a = Args::new(&ev, "wl_keyboard.key");
                    let (_serial, _time) = (a.uint()?, a.uint()?);
                    let (key, state) = (a.uint()?, a.uint()?);
                    say(&format!("key={key} state={state}"));
                }
                _ => {}
            },
            Some(ev) if !w.event(&mut c, &ev)? => {
                say(&format!("frames={frames}"));
                say("closed");
                return Ok(());
            }
            _ => {}
        }
        if Instant::now() >= next_report {
            say(&format!("frames={frames}"));
            next_report = Instant::now() + o.report;
        }
    }
}

/// The `p`-quantile (0 < p <= 1) of `v` in microseconds, nearest-rank.
fn percentile_us(v: &mut [Duration], p: f64) -> u128 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1].as_micros()
}

fn run_bench(o: &Options, n: u32) -> Result<()> {
    let mut c = Client::connect()?;
    let w = Window::open(&mut c, o)?;
    // Warm up: the window is mapped and the compositor repaints regularly.
    for _ in 0..10 {
        let cb = w.draw(&mut c)?;
        c.wait_done(cb)?;
    }
    let mut frame = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let cb = w.draw(&mut c)?;
        c.wait_done(cb)?;
        frame.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let mut sync = Vec::with_capacity(n as usize);
    for _ in 0..n {
        sync.push(c.roundtrip()?);
    }
    let fps = f64::from(n) / elapsed.as_secs_f64().max(1e-9);
    say(&format!(
        "frames={n} fps={fps:.2} frame_p50_us={} frame_p99_us={} sync_p50_us={} sync_p99_us={}",
        percentile_us(&mut frame, 0.50),
        percentile_us(&mut frame, 0.99),
        percentile_us(&mut sync, 0.50),
        percentile_us(&mut sync, 0.99),
    ));
    Ok(())
}

fn run_list() -> Result<()> {
    let c = Client::connect()?;
    for g in &c.globals {
        say(&format!(
            "global name={} interface={} version={}",
            g.name, g.interface, g.version
        ));
    }
    Ok(())
}

fn run_bind(o: &Options, interface: &str) -> Result<()> {
    let mut c = Client::connect()?;
    let advertised = c.global(interface).cloned();
    let name = o
        .bind_name
        .or(advertised.as_ref().map(|g| g.name))
        .unwrap_or_else(|| {
            // The lowest name nobody advertised: a hidden global's, if the proxy hides one there.
            (1..)
                .find(|n| !c.globals.iter().any(|g| g.name == *n))
                .unwrap_or(u32::MAX)
        });
    let version = o
        .bind_version
        .or(advertised.as_ref().map(|g| g.version))
        .unwrap_or(1);
    say(&format!(
        "binding interface={interface} name={name} version={version} advertised={}",
        advertised.as_ref().map_or("no".to_owned(), |g| format!(
            "name={},version={}",
            g.name, g.version
        ))
    ));
    let id = c.conn.new_id();
    c.conn.send(
        Msg::new(c.registry, 0)
            .uint(name)
            .string(interface)
            .uint(version)
            .uint(id),
    )?;
    c.roundtrip()?;
    say(&format!(
        "bound interface={interface} name={name} version={version}"
    ));
    Ok(())
}

fn main() -> ExitCode {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("vmsilo-test-client: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let result = if o.list_globals {
        run_list()
    } else if let Some(iface) = &o.bind {
        run_bind(&o, iface)
    } else if let Some(n) = o.bench {
        run_bench(&o, n)
    } else {
        run_window(&o)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                ClientError::Protocol {
                    object,
                    code,
                    message,
                } => say(&format!(
                    "wl_display.error object={object} code={code} message={message:?}"
                )),
                ClientError::Disconnected => say("disconnected"),
                _ => {}
            }
            eprintln!("vmsilo-test-client: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Option<Options>> {
        parse_args(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn test_parses_the_window_options() {
        let o = args("--title t --app-id a --size 320x200 --color #2ecc71 --exit-after 5")
            .unwrap()
            .unwrap();
        assert_eq!((o.title.as_str(), o.app_id.as_str()), ("t", "a"));
        assert_eq!((o.width, o.height), (320, 200));
        assert_eq!(o.color, [0x2e, 0xcc, 0x71]);
        assert_eq!(o.exit_after, Some(5));
        assert!(!o.keyboard);
        assert!(args("--keyboard").unwrap().unwrap().keyboard);
        assert!(args("--help").unwrap().is_none());
    }

    #[test]
    fn test_rejects_bad_values_with_usage_errors() {
        for bad in [
            "--size 0x10",
            "--size 5000x10",
            "--size 10",
            "--color red",
            "--color #12345",
            "--bench 0",
            "--bench x",
            "--title",
            "--frobnicate",
        ] {
            let e = args(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn test_percentiles_are_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&mut v, 0.5), 50);
        assert_eq!(percentile_us(&mut v, 0.99), 99);
        assert_eq!(percentile_us(&mut [], 0.99), 0);
        assert_eq!(percentile_us(&mut [Duration::from_micros(7)], 0.99), 7);
    }
}
