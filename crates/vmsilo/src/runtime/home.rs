//! The shared home: created on first use from the home template, owned by the configured user.

use std::io::ErrorKind;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;

/// What [`prepare`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The home existed with content: untouched.
    Existing,
    /// It existed but was empty: filled from the template.
    Filled,
    /// It did not exist: created (and filled from the template if there is one).
    Created,
}

/// Makes sure `home` exists, giving it the template's content the first time (when it is
/// missing or empty) and `uid`/`gid` ownership of everything copied. Symlinks in the template
/// are copied as symlinks; special files are skipped.
pub fn prepare(home: &Path, template: &Path, uid: u32, gid: u32) -> Result<Prepared, String> {
    let outcome = match std::fs::read_dir(home) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Ok(Prepared::Existing);
            }
            Prepared::Filled
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(parent) = home.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::create_dir(home)
                .map_err(|e| format!("cannot create {}: {e}", home.display()))?;
            std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod {}: {e}", home.display()))?;
            Prepared::Created
        }
        Err(e) => return Err(format!("cannot read {}: {e}", home.display())),
    };
    lchown(home, Some(uid), Some(gid))
        .map_err(|e| format!("cannot give {} to uid {uid}: {e}", home.display()))?;
    if template.is_dir() {
        copy_tree(template, home, uid, gid)?;
    }
    Ok(outcome)
}

/// Whether `dir` is an empty directory.
pub fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none())
}

fn copy_tree(from: &Path, to: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)
            .map_err(|e| format!("cannot stat {}: {e}", src.display()))?;
        let ft = meta.file_type();
        let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", dst.display());
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| fail("read link for", e))?;
            std::os::unix::fs::symlink(target, &dst).map_err(|e| fail("create", e))?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| fail("create", e))?;
            std::fs::set_permissions(&dst, meta.permissions()).map_err(|e| fail("chmod", e))?;
            copy_tree(&src, &dst, uid, gid)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| fail("copy to", e))?;
        } else {
            continue;
        }
        lchown(&dst, Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn test_home_is_created_from_the_template_once() {
        let dir = std::env::temp_dir().join(format!("vmsilo-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let template = dir.join("template");
        std::fs::create_dir_all(template.join(".config")).expect("mkdir");
        std::fs::write(template.join(".bashrc"), "PS1=vm\n").expect("write");
        std::fs::write(template.join(".config/x"), "1").expect("write");
        std::os::unix::fs::symlink(".bashrc", template.join("link")).expect("symlink");
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let home = dir.join("shared/vm");

        assert_eq!(prepare(&home, &template, uid, gid), Ok(Prepared::Created));
        assert_eq!(
            std::fs::read_to_string(home.join(".bashrc")).expect("copied"),
            "PS1=vm\n"
        );
        assert_eq!(
            std::fs::read_to_string(home.join(".config/x")).expect("copied"),
            "1"
        );
        assert_eq!(
            std::fs::read_link(home.join("link")).expect("link"),
            Path::new(".bashrc")
        );
        let meta = std::fs::metadata(&home).expect("home");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid, 0o700));

        // Second use: the user's changes stay.
        std::fs::write(home.join(".bashrc"), "changed").expect("write");
        assert_eq!(prepare(&home, &template, uid, gid), Ok(Prepared::Existing));
        assert_eq!(
            std::fs::read_to_string(home.join(".bashrc")).expect("kept"),
            "changed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
