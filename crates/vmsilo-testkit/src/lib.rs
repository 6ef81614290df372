//! Test support for vmsilo's end-to-end tests: real Linux guests under QEMU/TCG.
//!
//! Not shipped (`publish = false`). Every e2e test and benchmark of vmsilo boots its guests
//! through this crate, so they all share one guest image format, one `/init`, and one way of
//! starting, driving and cleaning up QEMU.
//!
//! # Pieces
//!
//! - [`image`]: builds a guest image, an initramfs made only from what a Debian machine has
//!   (the installed Debian kernel and its virtio modules, `busybox-static`, optional extra
//!   programs with the libraries `ldd` reports, and optionally vmsilo's guest agent), plus the
//!   kernel. Images are cached under `target/vmsilo-guest-images/<content-hash>/`.
//!   `cargo xtask guest-image` calls the same code.
//! - [`qemu`]: [`QemuBuilder`] starts `qemu-system-x86_64 -accel tcg` with shared guest memory,
//!   the serial console on a unix socket, a QMP socket, and any of vhost-user-net,
//!   vhost-user-vsock (through a `vhost-device-vsock` process it starts), virtio-balloon,
//!   tap networking (optionally inside a network namespace) and virtiofs (through a
//!   `virtiofsd` it starts, or one the test runs). [`Guest`] waits for the readiness line, runs shell
//!   commands over the serial console, connects to guest vsock ports, and kills QEMU and its
//!   backends when dropped (also when the test panics).
//! - [`qmp`]: a small QMP client with balloon helpers.
//! - [`png`]: a small PNG reader, to count pixels in compositor screenshots.
//! - [`hub`] (feature `hub`, on by default): a minimal vhost-user-net backend that forwards
//!   every frame from one port to all others (an L2 hub), for tests that need two guests on
//!   one network before vm-switch exists.
//! - [`wayland`]: headless weston (root) and sway (a non-root test user), screenshots decoded
//!   into pixels to count, and weston's protocol trace.
//! - [`workspace_binary`] and [`agent_binary`]: build another workspace crate's binary with a
//!   nested cargo (own target directory, so it never waits on the lock of the running
//!   `cargo test`).
//!
//! # The guest's `/init`
//!
//! It mounts proc/sys/dev, loads the virtio modules, applies the `vmsilo.*` kernel parameters
//! (see [`image`]), starts `/bin/vmsilo-guest` in the background when the image has the agent,
//! runs the image's init hooks, prints `VMSILO-READY` on the console, and then keeps an
//! interactive busybox shell on the console that [`Guest::run`] drives. On a setup error it
//! prints `VMSILO-INIT-FAILED` instead, and [`Guest::wait_ready`] fails at once.
//!
//! # Example: a guest with the agent and a vhost-user-net interface
//!
//! ```no_run
//! use std::time::Duration;
//! use vmsilo_testkit::{ImageSpec, QemuBuilder, agent_binary};
//!
//! # fn main() -> Result<(), vmsilo_testkit::Error> {
//! let image = ImageSpec::new().agent(agent_binary()?).build()?;
//! let guest = QemuBuilder::new(&image)
//!     .name("banking")
//!     .vhost_user_net("/run/vm-switch/lan/banking.sock", "52:54:00:00:00:02")
//!     .kernel_param("vmsilo.ifname=lan,52:54:00:00:00:02")
//!     .kernel_param("vmsilo.addr=lan,10.0.0.2/24")
//!     .vsock(3)
//!     .start()?;
//! let out = guest.run("ip -o addr show lan", Duration::from_secs(10))?;
//! assert!(out.stdout.contains("10.0.0.2/24"));
//! let _agent = guest.vsock_connect_timeout(5000, Duration::from_secs(10))?;
//! guest.shutdown(Duration::from_secs(30))?;
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/testing.md` for the whole picture.

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

mod console;
mod cpio;
#[cfg(feature = "hub")]
pub mod hub;
pub mod image;
pub mod png;
pub mod qemu;
pub mod qmp;
mod scratch;
mod tools;
pub mod wayland;

pub use image::{GuestImage, ImageSpec};
pub use qemu::{BalloonOptions, Guest, Output, QemuBuilder};
pub use qmp::Qmp;
pub use scratch::ScratchDir;
pub use tools::{agent_binary, find_tool, vhost_device_vsock, workspace_binary};

/// The line the guest's `/init` prints on the serial console when setup is done.
pub const READY_LINE: &str = "VMSILO-READY";
/// The line the guest's `/init` prints instead of [`READY_LINE`] when setup failed.
pub const INIT_FAILED_LINE: &str = "VMSILO-INIT-FAILED";

/// Everything that can go wrong in the test kit. `Debug` prints the same text as `Display`
/// (with the console excerpt), so `unwrap()` and `-> Result` tests show a readable message.
#[derive(thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on what.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The guest image could not be built.
    #[error("guest image: {0}")]
    Image(String),
    /// A host program the test kit needs is missing.
    #[error("{tool} not found ({looked}): run `cargo xtask setup`")]
    MissingTool {
        /// The program.
        tool: String,
        /// Where it was looked for.
        looked: String,
    },
    /// A nested `cargo build` of a workspace binary failed.
    #[error("cargo build -p {package} --bin {bin} failed:\n{stderr}")]
    Build {
        /// The package.
        package: String,
        /// The binary.
        bin: String,
        /// The tail of cargo's error output.
        stderr: String,
    },
    /// The package does not exist in this workspace (yet).
    #[error("package {0:?} is not part of this workspace")]
    NoSuchPackage(String),
    /// Something failed with a running or starting guest. `detail` carries the last lines of
    /// the guest console and of QEMU's stderr.
    #[error("guest {guest:?}: {what}{detail}")]
    Guest {
        /// The guest's name.
        guest: String,
        /// What failed.
        what: String,
        /// Console and QEMU stderr excerpts (starts with a newline, or empty).
        detail: String,
    },
    /// QEMU answered a QMP command with an error, or QMP itself failed.
    #[error("QMP: {0}")]
    Qmp(#[from] vmsilo_vmm::VmmError),
    /// QEMU's balloon did not reach the size asked for in time.
    #[error("QMP query-balloon: {0}")]
    BalloonTimeout(String),
    /// A vhost-user backend started by the test kit failed.
    #[error("vhost-user backend: {0}")]
    Backend(String),
    /// A compositor, screenshot or protocol trace of [`wayland`] failed; the text quotes the
    /// end of the compositor's log.
    #[error("{0}")]
    Wayland(String),
    /// Invalid input to the test kit (a bad name, a too long command, ...).
    #[error("{0}")]
    Usage(String),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The test kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The workspace root (the directory with the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// The cargo target directory: `$CARGO_TARGET_DIR` when set (relative paths are taken from
/// the workspace root), otherwise `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}
