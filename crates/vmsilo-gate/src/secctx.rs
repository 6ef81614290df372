//! The gate's own compositor connection (parent only): probes the compositor's globals on a
//! private registry and, if it offers `wp_security_context_manager_v1`, creates a security
//! context for the VM: a listening socket in the state directory that the compositor accepts
//! on, tagged with sandbox engine `vmsilo`, app id `vmsilo.<vm>` and instance id `<vm>`.
//! Client children then connect to that socket, so the compositor knows every guest
//! connection's VM. The connection stays open (and polled) for the gate's lifetime; the write
//! end of the close pipe dies with the parent, which tells the compositor to stop listening.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wl_proxy::object::Object;
use wl_proxy::protocols::ObjectInterface;
use wl_proxy::protocols::security_context_v1::wp_security_context_manager_v1::WpSecurityContextManagerV1;
use wl_proxy::protocols::wayland::wl_callback::{WlCallback, WlCallbackHandler};
use wl_proxy::protocols::wayland::wl_registry::{WlRegistry, WlRegistryHandler};
use wl_proxy::state::{State, StateError};

use crate::identity::Identity;
use crate::server::{BASELINE, ServerError};

/// The sandbox engine name the gate registers.
pub const SANDBOX_ENGINE: &str = "vmsilo";

/// How long the compositor has to answer a roundtrip at startup.
pub const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// A live security context.
pub struct SecCtx {
    state: Rc<State>,
    path: PathBuf,
    _close_w: OwnedFd,
}

impl SecCtx {
    /// The socket children connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The compositor connection's poll fd.
    pub fn poll_fd(&self) -> Rc<OwnedFd> {
        self.state.poll_fd().clone()
    }

    /// Flushes before the parent sleeps.
    pub fn before_poll(&self) -> Result<(), StateError> {
        self.state.before_poll()
    }

    /// Reads (and ignores) what the compositor sent.
    pub fn dispatch(&self) -> Result<(), StateError> {
        self.state.dispatch_available().map(|_| ())
    }
}

impl Drop for SecCtx {
    fn drop(&mut self) {
        self.state.destroy();
    }
}

/// A registry handler that collects the globals: (name, interface, version).
#[derive(Default)]
pub(crate) struct Globals(pub(crate) Rc<RefCell<Vec<(u32, ObjectInterface, u32)>>>);

impl WlRegistryHandler for Globals {
    fn handle_global(
        &mut self,
        _slf: &Rc<WlRegistry>,
        name: u32,
        interface: ObjectInterface,
        version: u32,
    ) {
        self.0.borrow_mut().push((name, interface, version));
    }

    fn handle_global_remove(&mut self, _slf: &Rc<WlRegistry>, name: u32) {
        self.0.borrow_mut().retain(|g| g.0 != name);
    }
}

/// A callback handler that sets its flag on `done`.
pub(crate) struct Done(pub(crate) Rc<Cell<bool>>);

impl WlCallbackHandler for Done {
    fn handle_done(&mut self, _slf: &Rc<WlCallback>, _callback_data: u32) {
        self.0.set(true);
    }
}

fn roundtrip(state: &Rc<State>) -> Result<(), String> {
    let done = Rc::new(Cell::new(false));
    let cb = state.display().new_send_sync();
    cb.set_handler(Done(done.clone()));
    let deadline = Instant::now() + ROUNDTRIP_TIMEOUT;
    while !done.get() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the compositor did not answer within {} s",
                ROUNDTRIP_TIMEOUT.as_secs()
            ));
        }
        state.dispatch(Some(left)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Connects to the compositor at `compositor`; if it offers a security context manager,
/// creates the VM's context with its listening socket in `state_dir` and returns it. `None`
/// means the compositor has none (logged once): children connect directly.
pub fn setup(
    compositor: &Path,
    state_dir: &Path,
    identity: &Identity,
    debug: bool,
) -> Result<Option<SecCtx>, ServerError> {
    let stream = UnixStream::connect(compositor).map_err(|source| ServerError::Compositor {
        path: compositor.to_path_buf(),
        source,
    })?;
    let err = |m: String| ServerError::SecurityContext(m);
    let state = State::builder(BASELINE)
        .with_server_fd(&Rc::new(OwnedFd::from(stream)))
        .with_logging(debug)
        .build()
        .map_err(|e| err(format!("compositor connection: {e}")))?;
    let result = (|| {
        let globals = Rc::new(RefCell::new(Vec::new()));
        let registry = state.display().new_send_get_registry();
        registry.set_handler(Globals(globals.clone()));
        roundtrip(&state).map_err(|e| err(format!("listing the compositor's globals: {e}")))?;
        let found = globals
            .borrow()
            .iter()
            .find(|g| g.1 == ObjectInterface::WpSecurityContextManagerV1)
            .copied();
        let Some((name, _, _)) = found else {
            log::info!(
                "the compositor offers no wp_security_context_manager_v1: guest connections go to it directly, untagged"
            );
            return Ok(None);
        };
        let path = state_dir.join(format!("{}.secctx.sock", identity.vm));
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                return Err(err(format!(
                    "{} exists and is not a socket: remove it or choose another --state-dir",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(&path);
        }
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let listener = std::os::unix::net::UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = listener.map_err(|e| err(format!("binding {}: {e}", path.display())))?;
        let (close_r, close_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| err(format!("creating the close pipe: {e}")))?;
        let manager = state.create_object::<WpSecurityContextManagerV1>(1);
        let obj: Rc<dyn Object> = manager.clone();
        registry.send_bind(name, obj);
        let ctx =
            manager.new_send_create_listener(&Rc::new(OwnedFd::from(listener)), &Rc::new(close_r));
        ctx.send_set_sandbox_engine(SANDBOX_ENGINE);
        ctx.send_set_app_id(&format!("vmsilo.{}", identity.vm));
        ctx.send_set_instance_id(&identity.vm);
        ctx.send_commit();
        ctx.send_destroy();
        manager.send_destroy();
        roundtrip(&state).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            err(format!("creating the context: {e}"))
        })?;
        log::info!(
            "security context created: engine {SANDBOX_ENGINE:?}, app id \"vmsilo.{}\", instance {:?}, socket {}",
            identity.vm,
            identity.vm,
            path.display()
        );
        Ok(Some(SecCtx {
            state: state.clone(),
            path,
            _close_w: close_w,
        }))
    })();
    if !matches!(result, Ok(Some(_))) {
        state.destroy();
    }
    result
}

impl std::fmt::Debug for SecCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecCtx").finish_non_exhaustive()
    }
}
