//! Guest images: the installed Debian kernel plus an initramfs built from host files.
//!
//! An image is built from:
//! - the newest `/boot/vmlinuz-<version>` that has `/lib/modules/<version>`
//!   (`$VMSILO_GUEST_KERNEL=/path/to/vmlinuz-<version>` overrides it, and
//!   `$VMSILO_GUEST_MODULES` the modules directory);
//! - the modules [`BASE_MODULES`] and any added with [`ImageSpec::module`], with their
//!   dependencies, in the load order `modules.dep` gives (compressed modules are unpacked on the
//!   host with `xz`, `zstd` or `gzip`);
//! - `busybox` (from `busybox-static`) and a link per applet in `/bin`;
//! - optionally vmsilo's guest agent at `/bin/vmsilo-guest` ([`ImageSpec::agent`]);
//! - extra programs at their host paths ([`ImageSpec::program`]), each with the shared
//!   libraries `ldd` reports;
//! - extra files and `/init` hooks ([`ImageSpec::file`], [`ImageSpec::init_hook`]);
//! - the `/init` script (`src/init.sh`), which understands these kernel parameters:
//!
//! | parameter | effect |
//! |---|---|
//! | `vmsilo.ifname=<name>,<mac>` | rename the interface with that MAC to `<name>` |
//! | `vmsilo.addr=<name>,<cidr>` | add an IPv4 or IPv6 address (repeatable), bring the link up |
//! | `vmsilo.route=<name>,<dest-cidr>,<gateway>` | add a route; `<dest-cidr>` may be `default` |
//! | `vmsilo.nameserver=<ip>` | add a `nameserver` line to `/etc/resolv.conf` |
//! | `vmsilo.autoshutdown=<secs>` | for the agent (it reads `/proc/cmdline` itself) |
//! | `vmsilo.test.noagent` | don't start `/bin/vmsilo-guest` even if the image has it |
//!
//! Images are cached under `<target>/vmsilo-guest-images/<hash>/` (files `vmlinuz`,
//! `initrd.img` and `manifest.txt`), where `<hash>` is the SHA-1 of the kernel and of the
//! uncompressed initramfs, i.e. of every input. A build that finds its directory reuses it; two
//! processes building the same image at once each write a temporary directory and rename it
//! into place, so readers only ever see complete images. Building a new image deletes images
//! unused for [`PRUNE_AFTER_DAYS`] days.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::{Duration, SystemTime};

use sha1::{Digest, Sha1};

use crate::cpio::{self, Entry};
use crate::tools::find_tool;
use crate::{Error, Result, io_err, target_dir};

/// The `/init` script of every image.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Modules every image carries (with their dependencies) when the kernel has them as modules.
/// `virtiofs` is optional (skipped when the kernel lacks it); the others must exist.
pub const BASE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_balloon",
    "vsock",
    "vmw_vsock_virtio_transport",
    "virtiofs",
];
const OPTIONAL_MODULES: &[&str] = &["virtiofs"];

/// Where the guest agent lands in the guest.
pub const AGENT_GUEST_PATH: &str = "/bin/vmsilo-guest";

/// Bumped when the image layout changes in a way the inputs don't show.
const FORMAT: &str = "vmsilo-guest-image v1";

/// A kernel to boot and the modules that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The bzImage, e.g. `/boot/vmlinuz-6.1.0-56-amd64`.
    pub image: PathBuf,
    /// The version, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// Its modules directory, e.g. `/lib/modules/6.1.0-56-amd64`.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// Picks the guest kernel: `$VMSILO_GUEST_KERNEL` if set, otherwise the newest
    /// `/boot/vmlinuz-*` whose `/lib/modules/<version>` exists.
    pub fn find() -> Result<Kernel> {
        let modules_override = std::env::var_os("VMSILO_GUEST_MODULES")
            .filter(|m| !m.is_empty())
            .map(PathBuf::from);
        if let Some(path) = std::env::var_os("VMSILO_GUEST_KERNEL").filter(|k| !k.is_empty()) {
            let image = PathBuf::from(path);
            let version = image
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned);
            let modules_dir = match (modules_override, &version) {
                (Some(m), _) => m,
                (None, Some(v)) => Path::new("/lib/modules").join(v),
                (None, None) => {
                    return Err(Error::Image(format!(
                        "VMSILO_GUEST_KERNEL={}: the file is not named vmlinuz-<version>; \
                         set VMSILO_GUEST_MODULES to its modules directory",
                        image.display()
                    )));
                }
            };
            let version = version.unwrap_or_else(|| {
                modules_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            return Ok(Kernel {
                image,
                version,
                modules_dir,
            });
        }
        Self::find_in(
            Path::new("/boot"),
            Path::new("/lib/modules"),
            modules_override,
        )
    }

    fn find_in(boot: &Path, modules: &Path, modules_override: Option<PathBuf>) -> Result<Kernel> {
        let entries = std::fs::read_dir(boot).map_err(io_err(format!(
            "listing {} for guest kernels (install linux-image-amd64: `cargo xtask setup`)",
            boot.display()
        )))?;
        let mut versions: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .map(str::to_owned)
            })
            .filter(|v| modules_override.is_some() || modules.join(v).join("modules.dep").is_file())
            .collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        let version = versions.pop().ok_or_else(|| {
            Error::Image(format!(
                "no {}/vmlinuz-<version> with a matching {}/<version>/modules.dep: \
                 install linux-image-amd64 (`cargo xtask setup`) or set VMSILO_GUEST_KERNEL",
                boot.display(),
                modules.display()
            ))
        })?;
        Ok(Kernel {
            image: boot.join(format!("vmlinuz-{version}")),
            modules_dir: modules_override.unwrap_or_else(|| modules.join(&version)),
            version,
        })
    }
}

/// Compares kernel versions chunk by chunk, numbers numerically (`6.10` > `6.9`).
fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// Module name as the kernel spells it: file stem without `.ko*`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module name -> (path relative to the modules dir, its dependencies' paths).
fn parse_modules_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let module = module.trim();
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(module), (module.to_owned(), deps)))
        })
        .collect()
}

/// The module files to load, dependencies first, for `wanted` (names). Names missing from
/// `modules.dep` are returned separately.
fn resolve_modules(
    dep: &HashMap<String, (String, Vec<String>)>,
    wanted: &[String],
) -> (Vec<String>, Vec<String>) {
    fn visit(
        dep: &HashMap<String, (String, Vec<String>)>,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        if let Some((path, deps)) = dep.get(name) {
            // modules.dep lists what `name` needs, nearest last: modprobe loads it in reverse.
            for d in deps.iter().rev() {
                visit(dep, &module_name(d), seen, order);
            }
            order.push(path.clone());
        }
    }
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut missing = Vec::new();
    for w in wanted {
        let name = module_name(w);
        if dep.contains_key(&name) {
            visit(dep, &name, &mut seen, &mut order);
        } else {
            missing.push(name);
        }
    }
    (order, missing)
}

/// The shared libraries (and loader) `ldd` reports for `program`; empty for static binaries.
fn ldd_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io_err("running ldd (part of libc-bin)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries: "not a dynamic executable" (exit 1).
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(Error::Image(format!(
            "ldd {} failed: {}",
            program.display(),
            all.trim()
        )));
    }
    parse_ldd(&text).map_err(|lib| {
        Error::Image(format!(
            "{} needs {lib}, which ldd cannot find on this machine",
            program.display()
        ))
    })
}

fn parse_ldd(text: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            continue;
        }
        let candidate = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_owned());
                }
                rest.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        if let Some(path) = candidate.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// What goes into a guest image. Build it with [`ImageSpec::build`].
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    kernel: Option<Kernel>,
    agent: Option<PathBuf>,
    programs: Vec<String>,
    modules: Vec<String>,
    files: Vec<(String, Vec<u8>, u32)>,
    hooks: Vec<(String, String)>,
}

impl ImageSpec {
    /// The base image: kernel, virtio modules, busybox and `/init`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Boots this kernel instead of [`Kernel::find`]'s.
    pub fn kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Adds vmsilo's guest agent (see [`agent_binary`](crate::agent_binary)) as
    /// `/bin/vmsilo-guest`, with its libraries. `/init` starts it in the background (no
    /// arguments, output in `/run/vmsilo-guest.log`) before printing `VMSILO-READY`.
    pub fn agent(mut self, binary: impl Into<PathBuf>) -> Self {
        self.agent = Some(binary.into());
        self
    }

    /// Adds a host program (a name looked up on `PATH`, or a path) at its host path, with the
    /// libraries `ldd` reports. Added programs come before busybox applets on the guest's `PATH`.
    pub fn program(mut self, program: impl Into<String>) -> Self {
        self.programs.push(program.into());
        self
    }

    /// Adds a kernel module (and its dependencies) to the ones `/init` loads.
    pub fn module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    /// Adds a file at absolute guest path `path` with permission bits `mode`.
    pub fn file(
        mut self,
        path: impl Into<String>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.files.push((path.into(), contents.into(), mode));
        self
    }

    /// Adds a shell snippet that `/init` sources (in the order added) after network and agent
    /// setup and before it prints `VMSILO-READY`. A failing snippet (non-zero status) makes
    /// `/init` print `VMSILO-INIT-FAILED`. Start long-running things in the background (`&`);
    /// never `exit`, that would end PID 1.
    pub fn init_hook(mut self, script: impl Into<String>) -> Self {
        let n = self.hooks.len();
        self.hooks.push((format!("{n:02}.sh"), script.into()));
        self
    }

    /// Builds the image, or finds it in the cache. Safe to call from several processes at once.
    pub fn build(&self) -> Result<GuestImage> {
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => Kernel::find()?,
        };
        let (tree, manifest) = self.tree(&kernel)?;
        let mut initrd = Vec::with_capacity(32 << 20);
        cpio::write_archive(tree.iter().map(|(p, e)| (p.as_str(), e)), &mut initrd);
        let vmlinuz = std::fs::read(&kernel.image).map_err(io_err(format!(
            "reading guest kernel {} (on Ubuntu /boot/vmlinuz-* is readable by root only; \
             copy it or set VMSILO_GUEST_KERNEL)",
            kernel.image.display()
        )))?;
        let mut hasher = Sha1::new();
        hasher.update(FORMAT.as_bytes());
        hasher.update((vmlinuz.len() as u64).to_le_bytes());
        hasher.update(&vmlinuz);
        hasher.update(&initrd);
        let hash: String = hasher.finalize().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });

        let root = images_dir();
        let dir = root.join(&hash);
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            dir: dir.clone(),
            hash: hash.clone(),
            kernel_version: kernel.version.clone(),
            has_agent: self.agent.is_some(),
        };
        if image.initrd.is_file() && image.kernel.is_file() {
            // Mark it as used, for pruning.
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.set_modified(SystemTime::now());
            }
            return Ok(image);
        }
        prune(&root, Duration::from_secs(PRUNE_AFTER_DAYS * 24 * 3600));
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tmp = root.join(format!(
            ".tmp-{hash}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, AtomicOrdering::Relaxed)
        ));
        let write = |name: &str, data: &[u8]| {
            let p = tmp.join(name);
            std::fs::write(&p, data).map_err(io_err(format!("writing {}", p.display())))
        };
        std::fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let written = write("vmlinuz", &vmlinuz)
            .and_then(|()| write("initrd.img", &initrd))
            .and_then(|()| write("manifest.txt", manifest.as_bytes()));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process won the race: its image is identical.
            if !image.initrd.is_file() {
                return Err(io_err(format!(
                    "moving {} to {}",
                    tmp.display(),
                    dir.display()
                ))(e));
            }
        }
        Ok(image)
    }

    /// The initramfs tree and a human-readable manifest.
    fn tree(&self, kernel: &Kernel) -> Result<(BTreeMap<String, Entry>, String)> {
        let mut tree = Tree::default();
        let mut manifest = format!(
            "{FORMAT}\nkernel {} ({})\n",
            kernel.version,
            kernel.image.display()
        );
        for d in [
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "lib",
            "lib64",
            "etc/vmsilo/init.d",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
            "root",
            "mnt",
            "var/log",
            "lib/modules/vmsilo",
        ] {
            tree.dir(d);
        }
        tree.insert(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        tree.file("init", INIT_SCRIPT.as_bytes().to_vec(), 0o755);
        tree.file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        );
        tree.file("etc/group", b"root:x:0:\n".to_vec(), 0o644);
        tree.file(
            "etc/hosts",
            b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
            0o644,
        );

        // Modules.
        let dep_path = kernel.modules_dir.join("modules.dep");
        let dep_text = std::fs::read_to_string(&dep_path)
            .map_err(io_err(format!("reading {}", dep_path.display())))?;
        let builtin =
            std::fs::read_to_string(kernel.modules_dir.join("modules.builtin")).unwrap_or_default();
        let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
        let dep = parse_modules_dep(&dep_text);
        let wanted: Vec<String> = BASE_MODULES
            .iter()
            .map(|m| (*m).to_owned())
            .chain(self.modules.iter().cloned())
            .collect();
        let (order, missing) = resolve_modules(&dep, &wanted);
        let missing: Vec<String> = missing
            .into_iter()
            .filter(|m| !builtin.contains(m) && !OPTIONAL_MODULES.contains(&m.as_str()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Image(format!(
                "kernel {} has no module {} (not in {})",
                kernel.version,
                missing.join(", "),
                dep_path.display()
            )));
        }
        let mut list = String::new();
        for rel in &order {
            let name = format!("{}.ko", module_name(rel));
            let data = read_module(&kernel.modules_dir.join(rel))?;
            let _ = writeln!(manifest, "module {name} {} bytes", data.len());
            tree.file(&format!("lib/modules/vmsilo/{name}"), data, 0o644);
            list.push_str(&name);
            list.push('\n');
        }
        tree.file("etc/vmsilo/modules", list.into_bytes(), 0o644);

        // Busybox and its applets.
        let busybox = find_tool("busybox").map_err(|_| {
            Error::Image("busybox not found: install busybox-static (`cargo xtask setup`)".into())
        })?;
        let applets = Command::new(&busybox)
            .arg("--list")
            .output()
            .map_err(io_err(format!("running {} --list", busybox.display())))?;
        if !applets.status.success() {
            return Err(Error::Image(format!("{} --list failed", busybox.display())));
        }
        self.add_binary(&mut tree, &mut manifest, &busybox, "/bin/busybox")?;
        for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
            // `busybox --list` includes "busybox" itself: a link would replace the binary
            // with a self-referencing symlink (ELOOP at boot).
            if applet != "busybox" && !applet.contains('/') {
                tree.insert_if_absent(
                    &format!("bin/{applet}"),
                    Entry::Symlink {
                        target: "busybox".into(),
                    },
                );
            }
        }

        // Agent and extra programs; these override applets of the same name.
        if let Some(agent) = &self.agent {
            self.add_binary(&mut tree, &mut manifest, agent, AGENT_GUEST_PATH)?;
        }
        for program in &self.programs {
            let host = find_tool(program)
                .map_err(|e| Error::Image(format!("extra program {program}: {e}")))?;
            let guest = host.to_string_lossy().into_owned();
            self.add_binary(&mut tree, &mut manifest, &host, &guest)?;
        }

        for (path, contents, mode) in &self.files {
            let rel = guest_rel(path)?;
            let _ = writeln!(manifest, "file {path} {} bytes", contents.len());
            tree.file(rel, contents.clone(), *mode);
        }
        for (name, script) in &self.hooks {
            let _ = writeln!(manifest, "init hook {name}");
            tree.file(
                &format!("etc/vmsilo/init.d/{name}"),
                script.clone().into_bytes(),
                0o644,
            );
        }
        Ok((tree.0, manifest))
    }

    fn add_binary(
        &self,
        tree: &mut Tree,
        manifest: &mut String,
        host: &Path,
        guest: &str,
    ) -> Result<()> {
        let data = std::fs::read(host).map_err(io_err(format!("reading {}", host.display())))?;
        let _ = writeln!(
            manifest,
            "program {guest} <- {} ({} bytes)",
            host.display(),
            data.len()
        );
        tree.file(guest_rel(guest)?, data, 0o755);
        for lib in ldd_libraries(host)? {
            let lib_guest = lib.to_string_lossy().into_owned();
            let data = std::fs::read(&lib).map_err(io_err(format!("reading {}", lib.display())))?;
            let _ = writeln!(manifest, "  library {lib_guest} ({} bytes)", data.len());
            tree.file(guest_rel(&lib_guest)?, data, 0o755);
        }
        Ok(())
    }
}

fn guest_rel(path: &str) -> Result<&str> {
    let rel = path
        .strip_prefix('/')
        .ok_or_else(|| Error::Usage(format!("guest path {path:?} must be absolute")))?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Error::Usage(format!(
            "guest path {path:?} is not a plain absolute path"
        )));
    }
    Ok(rel)
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = decompressor else {
        return std::fs::read(path).map_err(io_err(format!("reading {}", path.display())));
    };
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .map_err(io_err(format!(
            "running {tool} to unpack {}",
            path.display()
        )))?;
    if !out.status.success() {
        return Err(Error::Image(format!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// The initramfs under construction: paths without leading `/`, parents created on demand.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    fn dir(&mut self, path: &str) {
        let mut cur = String::new();
        for comp in path.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(comp);
            self.0
                .entry(cur.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.0.insert(path.to_owned(), entry);
    }

    fn insert_if_absent(&mut self, path: &str, entry: Entry) {
        if !self.0.contains_key(path) {
            self.insert(path, entry);
        }
    }

    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.insert(path, Entry::File { mode, data });
    }
}

/// Images not used for this many days are deleted when a new image is built.
pub const PRUNE_AFTER_DAYS: u64 = 14;

/// Removes image directories (and abandoned temporary directories) under `root` whose
/// modification time is older than `age`.
fn prune(root: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.filter_map(|e| e.ok()) {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age));
        if old && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `<target>/vmsilo-guest-images`.
pub fn images_dir() -> PathBuf {
    target_dir().join("vmsilo-guest-images")
}

/// A built guest image: a kernel and an initramfs in one cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The cache directory, `<target>/vmsilo-guest-images/<hash>`.
    pub dir: PathBuf,
    /// `dir/vmlinuz`.
    pub kernel: PathBuf,
    /// `dir/initrd.img` (an uncompressed newc cpio archive).
    pub initrd: PathBuf,
    /// The content hash naming `dir`.
    pub hash: String,
    /// The guest kernel's version.
    pub kernel_version: String,
    /// Whether the image has the guest agent.
    pub has_agent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kernel_versions_compare_numerically() {
        let mut v = vec![
            "6.1.0-9-amd64",
            "6.10.0-1-amd64",
            "6.1.0-56-amd64",
            "5.19.0-1-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.19.0-1-amd64",
                "6.1.0-9-amd64",
                "6.1.0-56-amd64",
                "6.10.0-1-amd64"
            ]
        );
    }

    #[test]
    fn test_newest_kernel_with_modules_is_picked() {
        let d = crate::ScratchDir::new("kernels").unwrap();
        let boot = d.path().join("boot");
        let mods = d.path().join("modules");
        std::fs::create_dir_all(&boot).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.12.0-1-amd64"] {
            std::fs::write(boot.join(format!("vmlinuz-{v}")), b"k").unwrap();
        }
        // 6.12 has no modules: skipped.
        for v in ["6.1.0-9-amd64", "6.1.0-56-amd64"] {
            std::fs::create_dir_all(mods.join(v)).unwrap();
            std::fs::write(mods.join(v).join("modules.dep"), b"").unwrap();
        }
        let k = Kernel::find_in(&boot, &mods, None).unwrap();
        assert_eq!(k.version, "6.1.0-56-amd64");
        assert_eq!(k.image, boot.join("vmlinuz-6.1.0-56-amd64"));
        assert_eq!(k.modules_dir, mods.join("6.1.0-56-amd64"));
        let err = Kernel::find_in(&mods, &mods, None).unwrap_err().to_string();
        assert!(err.contains("cargo xtask setup"), "{err}");
    }

    const DEP: &str = "\
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/fuse/fuse.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw-vsock-virtio-transport.ko.xz: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn test_modules_load_after_their_dependencies() {
        let dep = parse_modules_dep(DEP);
        let wanted: Vec<String> = [
            "virtio_pci",
            "virtio_net",
            "vmw_vsock_virtio_transport",
            "nope",
        ]
        .map(String::from)
        .to_vec();
        let (order, missing) = resolve_modules(&dep, &wanted);
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
            ]
        );
        assert_eq!(missing, ["nope"]);
        // Every module comes after everything it depends on.
        for (i, path) in order.iter().enumerate() {
            for d in &dep[&module_name(path)].1 {
                let j = order.iter().position(|p| p == d).unwrap();
                assert!(j < i, "{d} must load before {path}");
            }
        }
    }

    #[test]
    fn test_ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libssl.so.3",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err(),
            "libfoo.so.1"
        );
    }

    #[test]
    fn test_real_ldd_finds_the_loader_of_a_dynamic_program() {
        let libs = ldd_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
        let busybox = find_tool("busybox").unwrap();
        assert_eq!(ldd_libraries(&busybox).unwrap(), Vec::<PathBuf>::new());
    }

    #[test]
    fn test_guest_paths_must_be_plain_and_absolute() {
        assert_eq!(guest_rel("/usr/bin/x").unwrap(), "usr/bin/x");
        for bad in ["usr/bin/x", "/", "/a/../b", "/a//b", "/a/./b"] {
            assert!(guest_rel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_old_images_are_pruned_and_recent_ones_kept() {
        let d = crate::ScratchDir::new("prune").unwrap();
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        for dir in [&old, &new] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("initrd.img"), b"x").unwrap();
        }
        let long_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        prune(d.path(), Duration::from_secs(PRUNE_AFTER_DAYS * 24 * 3600));
        assert!(!old.exists());
        assert!(new.join("initrd.img").exists());
    }

    #[test]
    fn test_tree_creates_parents_before_children() {
        let mut t = Tree::default();
        t.file("a/b/c", vec![1], 0o644);
        t.dir("a-x");
        let keys: Vec<&String> = t.0.keys().collect();
        assert_eq!(keys, ["a", "a-x", "a/b", "a/b/c"]);
    }
}
