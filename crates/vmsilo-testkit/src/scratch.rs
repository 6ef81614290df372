//! Per-test scratch directories with short paths (unix socket paths must stay under 108 bytes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Error, Result, io_err};

/// Longest scratch directory path we hand out; leaves room for `<name>-vhost-vsock.socket_65535`
/// and similar socket names under it.
const MAX_DIR_LEN: usize = 60;

/// A fresh directory under the temporary directory, removed (recursively) when dropped.
///
/// Set `VMSILO_TESTKIT_KEEP=1` to keep it for debugging; its path is then printed on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/vmsilo-tk-<pid>-<n>-<label>`; `label` is cut to 16 characters.
    ///
    /// `<tmp>` is `$TMPDIR` when that gives a short enough path, otherwise `/tmp`.
    pub fn new(label: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(16)
            .collect();
        let leaf = format!("vmsilo-tk-{}-{n}-{label}", std::process::id());
        let mut path = std::env::temp_dir().join(&leaf);
        if path.as_os_str().len() > MAX_DIR_LEN {
            path = Path::new("/tmp").join(&leaf);
        }
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .map_err(io_err(format!("removing stale {}", path.display())))?;
        }
        std::fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok(ScratchDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `dir/name`, checked to fit in a unix socket address.
    pub fn socket_path(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        // sun_path is 108 bytes including the terminating NUL.
        if p.as_os_str().len() >= 108 {
            return Err(Error::Usage(format!(
                "unix socket path {} is {} bytes, more than the 107 a socket address holds",
                p.display(),
                p.as_os_str().len()
            )));
        }
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::env::var_os("VMSILO_TESTKIT_KEEP").is_some_and(|v| v != "0" && !v.is_empty()) {
            eprintln!("vmsilo-testkit: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_scratch_dirs_are_short_unique_and_removed() {
        let a = ScratchDir::new("a/b c with a very long label indeed").unwrap();
        let b = ScratchDir::new("a").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().as_os_str().len() <= MAX_DIR_LEN);
        let leaf = a.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(leaf.ends_with("a_b_c_with_a_ver"), "{leaf}");
        let sock = a.socket_path("x-vhost-vsock.socket_65535").unwrap();
        assert!(sock.as_os_str().len() < 108);
        assert!(a.socket_path(&"y".repeat(120)).is_err());
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }
}
