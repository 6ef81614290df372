//! VM discovery: the VMs are the control sockets in the runtime directory.
//!
//! `<vm>-control.socket` is crosvm's control socket, `<vm>-qmp.socket` QEMU's QMP monitor; the VM
//! name is the prefix. The directory is watched with inotify, and rescanned on every event and
//! every tick (a symlinked socket can be replaced without an event in this directory). A socket
//! whose identity (device, inode) changed is a restarted VM and gets fresh state.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::vmm::VmmKind;

/// Longest VM name accepted from a file name.
pub const MAX_NAME: usize = 64;

/// A VM control socket found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The VMM behind the socket.
    pub kind: VmmKind,
    /// The socket path (as found; may be a symlink).
    pub path: PathBuf,
    /// Device and inode of the socket (after following symlinks): its identity.
    pub id: (u64, u64),
}

/// What changed between two scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new VM.
    Added(String, Found),
    /// A VM whose socket was replaced: a restart.
    Replaced(String, Found),
    /// A VM whose socket disappeared.
    Removed(String),
}

/// Splits a file name into VM name and VMM kind, or `None` for other files. The names are
/// vmsilo-config's ([`vmsilo_config::paths::parse_vmm_socket_name`]), the ones the runtime
/// creates.
pub fn parse_socket_name(file: &str) -> Option<(&str, VmmKind)> {
    let (name, vmm) = vmsilo_config::paths::parse_vmm_socket_name(file)?;
    let kind = VmmKind::from(vmm);
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    valid.then_some((name, kind))
}

/// Lists the VM sockets in `dir`. Files that are not sockets (after following symlinks) are
/// ignored; when a VM has both a crosvm and a QMP socket, the crosvm one wins.
pub fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, Found>> {
    let mut out: BTreeMap<String, Found> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let file = entry.file_name();
        let Some((name, kind)) = file.to_str().and_then(parse_socket_name) else {
            continue;
        };
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_socket() {
            continue;
        }
        let found = Found {
            kind,
            path,
            id: (meta.dev(), meta.ino()),
        };
        match out.get(name) {
            Some(existing) if existing.kind == VmmKind::Crosvm => {}
            _ => {
                out.insert(name.to_owned(), found);
            }
        }
    }
    Ok(out)
}

/// The changes that turn `old` into `new`, in name order. A VM whose socket file is in `gone`
/// (deleted or moved away since the last scan) and is present again is a restart even if the
/// new socket has the same identity.
pub fn diff(
    old: &BTreeMap<String, Found>,
    new: &BTreeMap<String, Found>,
    gone: &BTreeSet<String>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for (name, f) in new {
        let file = f.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match old.get(name) {
            None => changes.push(Change::Added(name.clone(), f.clone())),
            Some(o) if o != f || gone.contains(file) => {
                changes.push(Change::Replaced(name.clone(), f.clone()));
            }
            Some(_) => {}
        }
    }
    for name in old.keys() {
        if !new.contains_key(name) {
            changes.push(Change::Removed(name.clone()));
        }
    }
    changes
}

/// An inotify watch on the runtime directory.
#[derive(Debug)]
pub struct Watcher {
    inotify: Inotify,
    dir: PathBuf,
    ok: bool,
}

impl Watcher {
    /// Watches `dir` for sockets appearing, disappearing and being renamed.
    pub fn new(dir: &Path) -> nix::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut w = Self {
            inotify,
            dir: dir.to_owned(),
            ok: false,
        };
        w.rewatch()?;
        Ok(w)
    }

    fn rewatch(&mut self) -> nix::Result<()> {
        self.inotify.add_watch(
            &self.dir,
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_DELETE_SELF
                | AddWatchFlags::IN_MOVE_SELF
                | AddWatchFlags::IN_ONLYDIR,
        )?;
        self.ok = true;
        Ok(())
    }

    /// The inotify descriptor, for `poll`.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.inotify.as_fd()
    }

    /// Reads all pending events. Returns `None` when there were none, otherwise the names of
    /// the files deleted or moved away (then rescan: a socket deleted and re-created at once
    /// may get the same inode number, and is still a restarted VM).
    pub fn drain(&mut self) -> Option<BTreeSet<String>> {
        let mut any = false;
        let mut gone = BTreeSet::new();
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    any = true;
                    for e in &events {
                        if e.mask.intersects(
                            AddWatchFlags::IN_IGNORED
                                | AddWatchFlags::IN_DELETE_SELF
                                | AddWatchFlags::IN_MOVE_SELF,
                        ) {
                            self.ok = false;
                        }
                        if e.mask
                            .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                            && let Some(name) = e.name.as_ref().and_then(|n| n.to_str())
                        {
                            gone.insert(name.to_owned());
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        any.then_some(gone)
    }

    /// Re-arms the watch if the directory was removed and has come back. Returns whether the
    /// directory is watched.
    pub fn ensure(&mut self) -> bool {
        if !self.ok
            && self.dir.is_dir()
            && let Ok(fresh) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        {
            self.inotify = fresh;
            let _ = self.rewatch();
        }
        self.ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_socket_names() {
        assert_eq!(
            parse_socket_name("banking-control.socket"),
            Some(("banking", VmmKind::Crosvm))
        );
        assert_eq!(
            parse_socket_name("work-vm_2-qmp.socket"),
            Some(("work-vm_2", VmmKind::Qemu))
        );
        for bad in [
            "-control.socket",
            "banking-command.socket",
            "banking-vsock.socket",
            "balloond.status",
            ".hidden-qmp.socket",
            "a b-qmp.socket",
            "banking-control.socket.tmp",
        ] {
            assert_eq!(parse_socket_name(bad), None, "{bad}");
        }
        let long = format!("{}-qmp.socket", "x".repeat(65));
        assert_eq!(parse_socket_name(&long), None);
    }

    fn found(kind: VmmKind, ino: u64) -> Found {
        Found {
            kind,
            path: PathBuf::from("/x"),
            id: (1, ino),
        }
    }

    #[test]
    fn test_diff_added_replaced_removed() {
        let old = BTreeMap::from([
            ("a".to_owned(), found(VmmKind::Crosvm, 1)),
            ("b".to_owned(), found(VmmKind::Crosvm, 2)),
            ("c".to_owned(), found(VmmKind::Qemu, 3)),
        ]);
        let new = BTreeMap::from([
            ("a".to_owned(), found(VmmKind::Crosvm, 1)),
            ("b".to_owned(), found(VmmKind::Crosvm, 9)),
            ("d".to_owned(), found(VmmKind::Qemu, 4)),
        ]);
        assert_eq!(
            diff(&old, &new, &BTreeSet::new()),
            [
                Change::Replaced("b".into(), found(VmmKind::Crosvm, 9)),
                Change::Added("d".into(), found(VmmKind::Qemu, 4)),
                Change::Removed("c".into()),
            ]
        );
    }

    #[test]
    fn test_deleted_and_recreated_with_the_same_inode_is_a_restart() {
        let mut f = found(VmmKind::Qemu, 5);
        f.path = PathBuf::from("/run/vmsilo/a-qmp.socket");
        let old = BTreeMap::from([("a".to_owned(), f.clone())]);
        let gone = BTreeSet::from(["a-qmp.socket".to_owned()]);
        assert_eq!(
            diff(&old, &old.clone(), &gone),
            [Change::Replaced("a".into(), f)]
        );
        assert!(diff(&old, &old.clone(), &BTreeSet::new()).is_empty());
    }
}
