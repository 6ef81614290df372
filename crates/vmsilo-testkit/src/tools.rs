//! Finding host programs, and building workspace binaries with a nested cargo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::{Error, Result, io_err, target_dir, workspace_root};

/// The package of vmsilo's guest agent, and its binary.
pub const AGENT_PACKAGE: &str = "vmsilo-guest";

fn cargo_home_bin() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `program` on `PATH`, then in `$CARGO_HOME/bin` (`~/.cargo/bin`), then in `/sbin` and
/// `/usr/sbin`. A `program` with a `/` is taken as a path.
pub fn find_tool(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(Error::MissingTool {
                tool: program.into(),
                looked: "not an executable file".into(),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(cargo_home_bin());
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| Error::MissingTool {
            tool: program.into(),
            looked: "on PATH, in ~/.cargo/bin, /usr/sbin and /sbin".into(),
        })
}

/// The `vhost-device-vsock` binary (crates.io; `cargo xtask setup` installs it into
/// `~/.cargo/bin`). `$VMSILO_VHOST_DEVICE_VSOCK` overrides the search.
pub fn vhost_device_vsock() -> Result<PathBuf> {
    match std::env::var("VMSILO_VHOST_DEVICE_VSOCK") {
        Ok(p) if !p.is_empty() => find_tool(&p),
        _ => find_tool("vhost-device-vsock"),
    }
}

/// Builds binary `bin` of workspace package `package` and returns its path.
///
/// Runs `cargo build -p <package> --bin <bin>` with its own target directory,
/// `<target>/testkit-bin`, so it never waits for the build lock a running `cargo test` holds.
/// The dev profile is used without debug info (small binaries make small guest images).
/// Built once per test process; cargo itself makes later calls cheap when nothing changed.
///
/// Returns [`Error::NoSuchPackage`] when the workspace has no such package.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Option<HashMap<(String, String), PathBuf>>> = Mutex::new(None);
    let key = (package.to_owned(), bin.to_owned());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = built.get_or_insert_with(HashMap::new).get(&key) {
        return Ok(p.clone());
    }
    let target = target_dir().join("testkit-bin");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--target-dir",
        ])
        .arg(&target)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_PROFILE_DEV_STRIP", "debuginfo")
        .output()
        .map_err(io_err(format!("running {}", Path::new(&cargo).display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("did not match any packages") {
            return Err(Error::NoSuchPackage(package.into()));
        }
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        return Err(Error::Build {
            package: package.into(),
            bin: bin.into(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let path = target.join("debug").join(bin);
    if !is_executable(&path) {
        return Err(Error::Build {
            package: package.into(),
            bin: bin.into(),
            stderr: format!("cargo succeeded but {} is missing", path.display()),
        });
    }
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, path.clone());
    Ok(path)
}

/// Builds vmsilo's guest agent (`vmsilo-guest` from `crates/vmsilo-guest`) for
/// [`ImageSpec::agent`](crate::ImageSpec::agent). See [`workspace_binary`].
pub fn agent_binary() -> Result<PathBuf> {
    workspace_binary(AGENT_PACKAGE, AGENT_PACKAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_finds_sh_and_reports_missing_tools_with_the_fix() {
        assert!(find_tool("sh").is_ok());
        let err = find_tool("vmsilo-no-such-tool").unwrap_err().to_string();
        assert!(err.contains("vmsilo-no-such-tool"), "{err}");
        assert!(err.contains("cargo xtask setup"), "{err}");
        assert!(find_tool("/nonexistent/x").is_err());
    }

    #[test]
    fn test_unknown_package_is_reported_as_such() {
        let err = workspace_binary("vmsilo-no-such-package", "x").unwrap_err();
        assert!(matches!(err, Error::NoSuchPackage(_)), "{err}");
    }
}
