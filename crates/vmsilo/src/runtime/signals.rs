//! Signals as events: SIGTERM, SIGINT and SIGHUP (stop the VM) and SIGCHLD (a child exited)
//! are blocked and read from a signalfd, so the runtime handles them in its poll loop. Children
//! start with an empty signal mask (the standard library resets it before exec).

use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The blocked signals and their descriptor.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
    stops: Cell<u32>,
}

impl Signals {
    /// Blocks the signals (for this thread, before any child starts) and opens the signalfd.
    pub fn block() -> nix::Result<Signals> {
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            set.add(s);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals {
            fd,
            stops: Cell::new(0),
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads every pending signal; returns how many stop signals (TERM, INT, HUP) have arrived
    /// in total.
    pub fn drain(&self) -> u32 {
        while let Ok(Some(info)) = self.fd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            if [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
                .iter()
                .any(|s| *s as i32 == signo)
            {
                self.stops.set(self.stops.get().saturating_add(1));
            }
        }
        self.stops.get()
    }

    /// Whether a stop signal has arrived.
    pub fn stop_requested(&self) -> bool {
        self.drain() > 0
    }

    /// Counts a stop request that did not come as a signal (CTRL+] in `vm-start-debug`).
    pub fn request_stop(&self) {
        self.stops.set(self.stops.get().saturating_add(1));
    }
}
