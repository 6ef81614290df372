//! Supervision, steps 5-7 of the runtime (`mod.rs`): starting the VMM and connecting its
//! console, relaying the console, stop requests (power button, then a hard stop), the VMM's exit status and the
//! teardown of everything a run created.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use vmsilo_config::model::Vmm;
use vmsilo_config::plan::ConsoleListener;

use super::error::{EndReason, StartError};
use super::procs::{Identity, Proc, WaitError};
use super::state::Phase;
use super::{ESCAPE, Runtime, RuntimeError, console, control, exit, procs, remove_file_quiet};

/// How one VMM run ended.
pub(super) enum Ended {
    Status(ExitStatus),
    StoppedHard,
}

/// Grace period for backends and a VMM being stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a QMP or crosvm control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most console reads (of up to 16 KiB) relayed per wakeup of the runtime's loop.
const CONSOLE_READS_PER_WAKEUP: usize = 64;
fn vmm_name(vmm: Vmm) -> &'static str {
    match vmm {
        Vmm::Crosvm => "crosvm",
        Vmm::Qemu => "QEMU",
    }
}

impl Runtime {
    /// Starts the VMM, connects its console, reports readiness and relays until it exits.
    pub(super) fn run_vmm(&mut self) -> Result<Ended, StartError> {
        let paths = self.o.plan.paths.clone();
        let name = vmm_name(self.o.plan.vmm);
        if !self.o.debug {
            let u = &self.o.plan.user;
            let pty = console::Pty::open(u.uid, u.gid).map_err(StartError::Pty)?;
            let link = PathBuf::from(&paths.console);
            self.files.push(link.clone());
            console::link(&pty.path, &link).map_err(|source| StartError::Io {
                what: "link the console at",
                path: link.clone(),
                source,
            })?;
            self.pty = Some(pty);
        }
        let listener = match paths.console_listener {
            ConsoleListener::Runtime => {
                let l = UnixListener::bind(&paths.console_socket).map_err(|source| {
                    StartError::Console {
                        what: "listen on the console socket",
                        path: paths.console_socket.clone(),
                        source,
                    }
                })?;
                l.set_nonblocking(true).map_err(StartError::ConsoleSocket)?;
                Some(l)
            }
            ConsoleListener::Vmm => None,
        };
        let argv = self.o.plan.argv.clone();
        let vmm = procs::spawn(name, &argv, &Default::default(), Identity::Inherit)
            .map_err(StartError::Spawn)?;
        self.vmm = Some(vmm);
        self.set_phase(Phase::Starting);
        self.sd_notify("STATUS=Starting the VMM");

        let stream = self.connect_console(listener, &paths.console_socket)?;
        stream
            .set_nonblocking(true)
            .map_err(StartError::ConsoleSocket)?;
        self.console = Some(stream);
        let control = paths
            .control_socket
            .as_ref()
            .or(paths.qmp_socket.as_ref())
            .map(PathBuf::from);
        if let Some(c) = control {
            self.wait_vmm_path(&c, "control socket")?;
        }
        self.ever_ready = true;
        self.set_phase(Phase::Running);
        self.sd_notify(&format!(
            "READY=1\nSTATUS=Running ({name} pid {})",
            self.vmm.as_ref().map_or(0, Proc::pid)
        ));
        if self.o.debug {
            eprintln!(
                "vmsilo: VM {:?} is running; CTRL+] powers it off (twice: stops it hard)",
                self.o.plan.vm
            );
        }
        Ok(self.supervise())
    }

    fn vmm_exited_early(&self, status: ExitStatus) -> StartError {
        StartError::VmmExitedEarly {
            vmm: vmm_name(self.o.plan.vmm),
            status: procs::describe(status),
            vm: self.o.plan.vm.clone(),
        }
    }

    fn wait_vmm_path(&mut self, path: &Path, what: &'static str) -> Result<(), StartError> {
        let timeout = self.o.socket_timeout;
        let vmm = self.vmm.as_mut().expect("VMM started");
        match procs::wait_for_path(path, Some(vmm), timeout, &self.signals) {
            Ok(()) => Ok(()),
            Err(WaitError::Exited(s)) => Err(self.vmm_exited_early(s)),
            Err(WaitError::Interrupted) => Err(StartError::Interrupted),
            Err(WaitError::Timeout) => Err(StartError::VmmTimeout {
                vmm: vmm_name(self.o.plan.vmm),
                what,
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    fn connect_console(
        &mut self,
        listener: Option<UnixListener>,
        socket: &str,
    ) -> Result<UnixStream, StartError> {
        let deadline = Instant::now() + self.o.socket_timeout;
        if listener.is_none() {
            self.wait_vmm_path(Path::new(socket), "console socket")?;
        }
        loop {
            let attempt = match &listener {
                Some(l) => l.accept().map(|(s, _)| s),
                None => UnixStream::connect(socket),
            };
            match attempt {
                Ok(s) => return Ok(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::ConnectionRefused | ErrorKind::NotFound
                    ) => {}
                Err(source) => {
                    return Err(StartError::Console {
                        what: "connect the console",
                        path: socket.to_owned(),
                        source,
                    });
                }
            }
            if let Some(s) = self.vmm.as_mut().and_then(Proc::poll) {
                return Err(self.vmm_exited_early(s));
            }
            if self.signals.stop_requested() {
                return Err(StartError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(StartError::ConsoleTimeout {
                    vmm: vmm_name(self.o.plan.vmm),
                    socket: socket.to_owned(),
                    timeout: self.o.socket_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Presses the power button; false if the VMM could not be asked.
    fn power_button(&mut self) -> bool {
        let p = &self.o.plan.paths;
        let result = match (&p.qmp_socket, &p.control_socket) {
            (Some(qmp), _) => {
                control::qmp(Path::new(qmp), "system_powerdown", CONTROL_TIMEOUT).map(|_| ())
            }
            (None, Some(ctl)) => control::crosvm(
                Path::new(ctl),
                vmsilo_vmm::crosvm::Request::Powerbtn,
                CONTROL_TIMEOUT,
            ),
            (None, None) => Err(control::ControlError::NoSocket),
        };
        match result {
            Ok(()) => {
                self.log(&format!(
                    "stopping: ACPI power button pressed; the guest has {} to power off",
                    vmsilo_config::measure::format_duration(self.o.shutdown_timeout)
                ));
                true
            }
            Err(e) => {
                self.log(&format!(
                    "cannot press the power button ({e}): stopping the VMM hard"
                ));
                false
            }
        }
    }

    /// Stops the VMM without the guest: QMP `quit` / crosvm `"Exit"`, then SIGKILL.
    fn hard_stop(&mut self) {
        let p = self.o.plan.paths.clone();
        let asked = match (&p.qmp_socket, &p.control_socket) {
            (Some(qmp), _) => control::qmp(Path::new(qmp), "quit", CONTROL_TIMEOUT).is_ok(),
            (None, Some(ctl)) => control::crosvm(
                Path::new(ctl),
                vmsilo_vmm::crosvm::Request::Exit,
                CONTROL_TIMEOUT,
            )
            .is_ok(),
            _ => false,
        };
        if let Some(vmm) = self.vmm.as_mut() {
            if !asked {
                vmm.signal(nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while vmm.poll().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if vmm.poll().is_none() {
                vmm.stop(Duration::ZERO);
            }
        }
    }

    fn begin_stop(&mut self) -> Instant {
        self.stopping = true;
        self.set_phase(Phase::Stopping);
        self.sd_notify("STOPPING=1\nSTATUS=Stopping: power button pressed");
        if self.power_button() {
            Instant::now() + self.o.shutdown_timeout
        } else {
            Instant::now()
        }
    }

    /// Relays the console until the VMM exits; handles stop requests.
    fn supervise(&mut self) -> Ended {
        let mut handled_stops = 0;
        let mut deadline: Option<Instant> = None;
        let mut stdin_open = self.o.debug;
        let _raw = if self.o.debug {
            crate::term::RawMode::enter(std::io::stdin().as_fd())
        } else {
            None
        };
        let mut console_open = true;
        let mut warned: Vec<bool> = vec![false; self.backends.len()];
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(s) = self.vmm.as_mut().and_then(Proc::poll) {
                // Let the last console output through.
                self.pump_console(&mut buf);
                return Ended::Status(s);
            }
            let mut graphics_gone = false;
            for (i, b) in self.backends.iter_mut().enumerate() {
                if let Some(s) = b.poll()
                    && !warned[i]
                {
                    warned[i] = true;
                    graphics_gone |= b.name == vmsilo_config::plan::GATE || b.name == "waypipe";
                    // Nothing restarts it behind the user's back: a gate that died may have
                    // been broken by the guest, and only the gate may reach the compositor.
                    let what = if b.name == vmsilo_config::plan::GATE || b.name == "waypipe" {
                        format!(
                            "the VM's windows are gone and no new one can open (the VM keeps \
                             running without graphics): `vm-stop {vm}` and `vm-start {vm}` \
                             restore them",
                            vm = self.o.plan.vm
                        )
                    } else {
                        "its device stops working until the VM restarts".to_owned()
                    };
                    eprintln!(
                        "vmsilo: VM {:?}: {} exited with {} while the VM runs: {what}",
                        self.o.plan.vm,
                        b.name,
                        procs::describe(s)
                    );
                }
            }
            if graphics_gone {
                self.close_graphics(&mut warned);
            }
            let stops = self.signals.drain();
            if stops > handled_stops {
                handled_stops = stops;
                if self.stopping {
                    self.log("stopping hard (second stop request)");
                    self.hard_stop();
                    return Ended::StoppedHard;
                }
                deadline = Some(self.begin_stop());
            }
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                self.log("the guest did not power off in time: stopping the VMM hard");
                self.hard_stop();
                return Ended::StoppedHard;
            }
            // Wait for console traffic, a signal or a timer tick.
            let (sig_ready, console_ready, input_ready) = {
                let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
                let console_fd = self
                    .console
                    .as_ref()
                    .filter(|_| console_open)
                    .map(|s| s.as_fd());
                let stdin = std::io::stdin();
                let input_fd = if self.o.debug {
                    stdin_open.then(|| stdin.as_fd())
                } else {
                    self.pty.as_ref().map(|p| p.master.as_fd())
                };
                let ci = console_fd.map(|fd| {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    fds.len() - 1
                });
                let ii = input_fd.map(|fd| {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    fds.len() - 1
                });
                let _ = poll(&mut fds, 200u16);
                let ready = |i: Option<usize>| {
                    i.and_then(|i| fds[i].revents())
                        .is_some_and(|r| !r.is_empty())
                };
                (ready(Some(0)), ready(ci), ready(ii))
            };
            let _ = sig_ready;
            if console_ready && !self.pump_console(&mut buf) {
                console_open = false;
            }
            if input_ready {
                match self.pump_input(&mut buf) {
                    Input::Ok => {}
                    Input::Closed => stdin_open = false,
                    Input::Escape => {
                        self.signals.request_stop();
                    }
                }
            }
        }
    }

    /// The gate or waypipe died: close the rest of the path too, so that a guest's waypipe
    /// stream is refused at once (vhost-device-vsock answers a connection to a missing
    /// `<vsock>_6000` with a reset) instead of being accepted by a waypipe client that can
    /// no longer reach a gate. `warned` marks the waypipe stopped here as reported.
    fn close_graphics(&mut self, warned: &mut [bool]) {
        if let Some(link) = self.o.plan.paths.waypipe_vsock_link.clone() {
            remove_file_quiet(Path::new(&link));
        }
        for (i, b) in self.backends.iter_mut().enumerate() {
            if b.name == "waypipe" && !warned[i] {
                warned[i] = true;
                b.signal(nix::sys::signal::Signal::SIGTERM);
                eprintln!(
                    "vmsilo: VM {:?}: stopped waypipe: the VM's windows stay closed until it \
                     restarts",
                    self.o.plan.vm
                );
            }
        }
    }

    /// Copies guest output to the PTY (or stdout); false once the console stream closed.
    /// Copies at most [`CONSOLE_READS_PER_WAKEUP`] reads, so that a guest that never stops
    /// writing cannot keep the loop from handling a stop request.
    fn pump_console(&mut self, buf: &mut [u8]) -> bool {
        let Some(stream) = self.console.as_mut() else {
            return false;
        };
        for _ in 0..CONSOLE_READS_PER_WAKEUP {
            match stream.read(buf) {
                Ok(0) => return false,
                Ok(n) => {
                    if let Some(pty) = self.pty.as_mut() {
                        pty.write_output(&buf[..n]);
                    } else {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Copies user input (PTY or stdin) to the guest.
    fn pump_input(&mut self, buf: &mut [u8]) -> Input {
        let n = if let Some(pty) = self.pty.as_mut() {
            match pty.read_input(buf) {
                Ok(n) => n,
                Err(_) => return Input::Ok,
            }
        } else {
            match std::io::stdin().lock().read(buf) {
                Ok(0) | Err(_) => return Input::Closed,
                Ok(n) => n,
            }
        };
        let mut data = &buf[..n];
        let mut escape = false;
        if self.o.debug
            && let Some(i) = data.iter().position(|&b| b == ESCAPE)
        {
            data = &data[..i];
            escape = true;
        }
        if let Some(stream) = self.console.as_mut() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(data);
            let _ = stream.set_nonblocking(true);
        }
        if escape { Input::Escape } else { Input::Ok }
    }

    pub(super) fn outcome(&mut self, ended: Ended) -> Result<u8, RuntimeError> {
        let vm = self.o.plan.vm.clone();
        let ended_with = |reason: EndReason| {
            Err(RuntimeError::Ended {
                vm: vm.clone(),
                reason,
            })
        };
        let status = match ended {
            Ended::StoppedHard => return Ok(exit::STOPPED_HARD),
            Ended::Status(s) => s,
        };
        let name = vmm_name(self.o.plan.vmm);
        match (self.o.plan.vmm, status.code()) {
            (_, Some(0)) => {
                self.log(&format!("{name} exited: the guest powered off"));
                Ok(0)
            }
            (Vmm::Crosvm, Some(32)) => ended_with(EndReason::Rebooted),
            (Vmm::Crosvm, Some(33)) => ended_with(EndReason::CrosvmCrashed),
            (Vmm::Crosvm, Some(34)) => ended_with(EndReason::GuestPanic),
            (Vmm::Crosvm, Some(36)) => ended_with(EndReason::Watchdog),
            (Vmm::Crosvm, Some(c)) => ended_with(EndReason::CrosvmStatus(c)),
            (_, _) if self.stopping => {
                self.log(&format!(
                    "{name} exited with {} while stopping",
                    procs::describe(status)
                ));
                Ok(0)
            }
            (_, _) => ended_with(EndReason::VmmCrashed {
                vmm: name,
                status: procs::describe(status),
            }),
        }
    }

    /// Stops every process and removes every file this run created.
    pub(super) fn teardown(&mut self) {
        self.console = None;
        if let Some(mut vmm) = self.vmm.take()
            && vmm.poll().is_none()
        {
            vmm.stop(STOP_GRACE);
        }
        for mut b in self.backends.drain(..).rev() {
            b.stop(STOP_GRACE);
        }
        self.pty = None;
        for f in std::mem::take(&mut self.files) {
            remove_file_quiet(&f);
        }
        for b in &self.o.plan.backends {
            // What the backends may have left: their socket, and virtiofsd's lock file
            // `<socket>.pid`.
            let s = Path::new(&b.socket);
            if s.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_socket())
            {
                remove_file_quiet(s);
            }
            remove_file_quiet(&PathBuf::from(format!("{}.pid", b.socket)));
        }
    }
}
enum Input {
    Ok,
    Closed,
    Escape,
}
