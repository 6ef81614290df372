//! Every `unsafe` operation of vmsilo-clipd: taking ownership of descriptors the kernel
//! passed with `SCM_RIGHTS`.

/// Wraps a descriptor the kernel just installed in this process (received with
/// `SCM_RIGHTS`).
pub fn owned_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just received in an SCM_RIGHTS control message: the kernel installed it
    // in this process and nothing else refers to it, so this is its only owner.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
