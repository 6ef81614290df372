//! vmsilo-clipd: the two-level clipboard between VMs, as Qubes does it.
//!
//! Each VM has a clipboard of its own, served by its gate (`vmsilo-gate`'s data device).
//! One clipd runs per user session and holds the **global slot**: a copy chord in a VM
//! window (Ctrl+Shift+C) copies that VM's clipboard into the slot, a paste chord in another
//! VM's window (Ctrl+Shift+V) makes the slot that VM's clipboard and wipes the slot. The
//! `vmsilo clipboard` CLI does the same from the host and moves the slot to and from the
//! host's own clipboard.
//!
//! Layout:
//! - [`wire`]: the encoding every clipboard seam shares (clipd's and the gate's parent ⇄
//!   child messages), sans-IO, std only.
//! - [`proto`]: the wire messages (gate ⇄ clipd, CLI ⇄ clipd), sans-IO, std only.
//! - [`core`]: sans-IO: the slot, the policy, the size cap, the MIME allowlist, the wipe.
//! - [`seqpacket`]: `SOCK_SEQPACKET` + `SCM_RIGHTS` send and receive of any
//!   [`wire::Message`], for clipd and the gate alike.
//! - [`chan`]: clipd's socket: [`proto::Msg`] over [`seqpacket`], the CLI client, content
//!   fds.
//! - [`daemon`]: the daemon's loop (socket, peer checks, transfers, notifications).
//!
//! The crate has no unsafe code: adopting received descriptors is vmsilo-sys's.
#![forbid(unsafe_code)]

pub mod chan;
pub mod core;
pub mod daemon;
pub mod proto;
pub mod seqpacket;
pub mod wire;

/// The socket's file name in the user's runtime directory.
pub const SOCKET_NAME: &str = "vmsilo-clipd.socket";

/// The default socket: `$XDG_RUNTIME_DIR/vmsilo-clipd.socket`.
pub fn default_socket() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(&d).join(SOCKET_NAME))
}
