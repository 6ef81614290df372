//! `vmsilo sound-filter` (internal): the capture filter between the VMM and
//! vhost-device-sound of a VM with `sound.capture = false`.
//!
//! vhost-device-sound always offers a capture stream. The filter listens on the VM's sound
//! socket, connects each VMM connection to vhost-device-sound's socket and relays the
//! vhost-user messages with [`vhost_user_relay::Filter::SoundNoCapture`]: the capture ring never
//! reaches vhost-device-sound (so no recorded sample can reach the guest, whatever a hostile
//! driver asks), and the device configuration shows only the playback stream. Sound data
//! does not pass through the filter: the rings live in guest memory shared with the backend.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use vhost_user_relay::{Filter, Relay};

use crate::CliError;
use crate::cli::SoundFilterArgs;
use crate::error::SoundFilterError;

/// Serves the listening socket until the process is stopped: one VMM connection at a time.
pub fn run(args: &SoundFilterArgs) -> Result<(), CliError> {
    let listener = listen(&args.listen)?;
    for conn in listener.incoming() {
        let frontend = conn.map_err(|source| SoundFilterError::Accept {
            path: args.listen.clone(),
            source,
        })?;
        let device =
            UnixStream::connect(&args.device).map_err(|error| SoundFilterError::ConnectDevice {
                path: args.device.clone(),
                error,
            })?;
        let relay = Relay::start_filtered(frontend, device, Filter::SoundNoCapture)
            .map_err(SoundFilterError::StartRelay)?;
        relay.join();
    }
    Ok(())
}

fn listen(path: &Path) -> Result<UnixListener, CliError> {
    // A socket left by an earlier run; anything else at the path is an error from bind.
    if std::fs::symlink_metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    }) {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| {
        SoundFilterError::Listen {
            path: path.to_owned(),
            source,
        }
        .into()
    })
}
