//! `vmsilo units --out DIR`: write the generator's units (DIR/systemd/) and the polkit rule
//! (DIR/polkit/50-vmsilo.rules) for inspection or for systems without the NixOS module.

use std::path::{Path, PathBuf};

use crate::CliError;
use crate::cli::{BinArgs, UnitsArgs};
use crate::config_file;
use crate::systemd_units::{self, Contents, Generated, UnitOptions};

/// Makes `p` absolute (relative to the current directory), without resolving symlinks.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

fn path_string(p: &Path) -> Result<String, CliError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("{}: paths in units must be UTF-8", p.display())))
}

/// The programs the units run: the explicit paths, else this executable and its neighbours
/// `vm-switch` and `vmsilo-balloond`.
pub fn unit_options(bins: &BinArgs, config_path: &Path) -> Result<UnitOptions, CliError> {
    let exe = match &bins.vmsilo_bin {
        Some(p) => absolute(p),
        None => std::env::current_exe().map_err(|source| CliError::Io {
            what: "find the path of",
            path: "this executable (/proc/self/exe)".into(),
            source,
        })?,
    };
    let dir = exe.parent().map(Path::to_owned).unwrap_or_default();
    let neighbour = |given: &Option<PathBuf>, name: &str| {
        given
            .as_deref()
            .map(absolute)
            .unwrap_or_else(|| dir.join(name))
    };
    Ok(UnitOptions {
        vmsilo_bin: path_string(&exe)?,
        vm_switch_bin: path_string(&neighbour(&bins.vm_switch_bin, "vm-switch"))?,
        balloond_bin: path_string(&neighbour(&bins.balloond_bin, "vmsilo-balloond"))?,
        config_path: path_string(&absolute(config_path))?,
        host_network: bins.host.vmsilo_sets_up(),
    })
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.to_owned();
    move |source| CliError::Io { what, path, source }
}

/// Writes generated files under `dir` (which must exist): files are replaced, symlinks
/// recreated.
pub fn write_files(dir: &Path, files: &[Generated]) -> Result<(), CliError> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        match &f.contents {
            Contents::File(text) => {
                std::fs::write(&path, text).map_err(io("write", &path))?;
            }
            Contents::Symlink(target) => {
                if path.symlink_metadata().is_ok() {
                    std::fs::remove_file(&path).map_err(io("replace", &path))?;
                }
                std::os::unix::fs::symlink(target, &path).map_err(io("create the link", &path))?;
            }
        }
    }
    Ok(())
}

/// Runs `vmsilo units`.
pub fn run(config: Option<&Path>, args: &UnitsArgs) -> Result<(), CliError> {
    let (path, cfg) = config_file::resolve_and_load(config)?;
    let opts = unit_options(&args.bins, &path)?;
    let files = systemd_units::render(&cfg, &opts);
    if files.is_empty() {
        eprintln!(
            "vmsilo: {}: enable = false: no units to write",
            path.display()
        );
    }
    let systemd = args.out.join("systemd");
    std::fs::create_dir_all(&systemd).map_err(io("create", &systemd))?;
    write_files(&systemd, &files)?;
    let polkit = args.out.join("polkit");
    std::fs::create_dir_all(&polkit).map_err(io("create", &polkit))?;
    let rule = polkit.join("50-vmsilo.rules");
    std::fs::write(&rule, systemd_units::polkit_rule(&cfg, &opts)).map_err(io("write", &rule))?;
    Ok(())
}
