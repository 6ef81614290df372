//! The wire protocol between vmsilo's host side (`vm-run`) and the guest agent `vmsilo-guest`.
//!
//! - [`frame`]: length-prefixed frames with a hard size limit (sans-IO encoder and decoder);
//! - [`message`]: what each frame type means, with a version handshake whose layout never
//!   changes so that mismatched peers can always say so;
//! - [`client`]: a small blocking client for the host side (`run_detached`, `run_attached`);
//! - [`hybrid`]: the `CONNECT <port>` handshake of hybrid vsock (vhost-device-vsock under QEMU);
//! - [`text`]: escaping guest-chosen text before the host prints it;
//! - [`port_file`]: the vm-switch port file, shared by the runtime that writes it and vm-switch
//!   that reads it (host-only; its TOML text behind the `port-file` feature).
//!
//! The format is described in `docs/protocol.md`. A connection looks like this:
//!
//! ```text
//! host                                   agent
//! Hello{version} Request  ───────────►
//!                         ◄───────────   HelloReply{version}
//!                         ◄───────────   Started{pid} | Error{code, message}
//! (attached only)
//! Stdin / StdinEof / Signal / Resize ─►
//!                         ◄───────────   Stdout / Stderr ... Exit{status}
//! ```

#![forbid(unsafe_code)]

pub mod client;
pub mod frame;
pub mod hybrid;
pub mod message;
pub mod port_file;
pub mod text;

pub use frame::{FrameDecoder, FrameError, MAX_DATA_CHUNK, MAX_FRAME_LEN, RawFrame};
pub use message::{
    DecodeError, EncodeError, ErrorCode, ErrorFrame, ExitStatus, Message, Mode, Request, Signal,
    Started, WindowSize,
};

/// The protocol version this build speaks. Bump it with any change to a postcard payload or
/// to the meaning of a frame; the fixed-layout frames (`Hello`, `HelloReply`, `Error`) and the
/// frame header never change.
pub const PROTOCOL_VERSION: u16 = 1;

/// The vsock port the guest agent listens on.
pub const AGENT_PORT: u32 = 5000;

/// The host's vsock CID (`VMADDR_CID_HOST`); the agent accepts connections from it only.
pub const HOST_CID: u32 = 2;
