//! `vmsilo desktop-entries --vm NAME [--color C] [--from DIR]... [--entries FILE.json] --out DIR`:
//! host `.desktop` files that launch a VM's guest programs through `vm-run`. The NixOS module
//! runs exactly this at build time for each VM (`--from <package>/share/applications` per
//! guest package, `--entries` for `guestDesktopEntries`). The rewriting is in
//! [`crate::desktop`].

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::CliError;
use crate::cli::DesktopEntriesArgs;
use crate::desktop::{self, ExtraEntry};

/// Largest `.desktop` file read.
const MAX_FILE: u64 = 1 << 20;

/// The `.desktop` files under `dir` with their desktop file IDs (`kde4/a.desktop` →
/// `kde4-a.desktop`), sorted; a missing directory has none.
fn desktop_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, CliError> {
    fn walk(
        dir: &Path,
        prefix: &str,
        depth: u32,
        out: &mut Vec<(String, PathBuf)>,
    ) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            // Follows symlinks: Nix profiles are made of them.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() && depth < 8 {
                walk(&path, &format!("{prefix}{name}-"), depth + 1, out)?;
            } else if meta.is_file() && name.ends_with(".desktop") {
                out.push((format!("{prefix}{name}"), path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    match walk(dir, "", 0, &mut out) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound && !dir.exists() => {}
        Err(source) => {
            return Err(CliError::Io {
                what: "read",
                path: dir.to_owned(),
                source,
            });
        }
    }
    out.sort();
    Ok(out)
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE)
        .read_to_string(&mut text)?;
    Ok(text)
}

fn check_vm(vm: &str) -> Result<(), CliError> {
    let ok = vm.starts_with(|c: char| c.is_ascii_alphanumeric())
        && vm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--vm {vm:?}: a VM name is letters, digits, '-' and '_', starting with a letter or \
             digit"
        )))
    }
}

/// Writes the entries.
pub fn run(args: &DesktopEntriesArgs) -> Result<(), CliError> {
    let vm = args.vm.as_str();
    check_vm(vm)?;
    if let Some(c) = &args.color {
        c.parse::<vmsilo_config::color::Color>()
            .map_err(|e| CliError::Usage(format!("--color {c:?}: {e}")))?;
    }
    let color = args.color.as_deref();
    let extras: Vec<ExtraEntry> = match &args.entries {
        None => Vec::new(),
        Some(path) => {
            let text = read_limited(path).map_err(|source| CliError::Io {
                what: "read",
                path: path.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| {
                CliError::Usage(format!(
                    "{}: expected a JSON list of {{name, exec, icon, categories}}: {e}",
                    path.display()
                ))
            })?
        }
    };
    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Io {
        what: "create",
        path: args.out.clone(),
        source,
    })?;

    let mut written: BTreeSet<String> = BTreeSet::new();
    let mut skipped = 0usize;
    let write = |name: &str, text: &str| -> Result<(), CliError> {
        let path = args.out.join(name);
        std::fs::write(&path, text).map_err(|source| CliError::Io {
            what: "write",
            path,
            source,
        })
    };
    for dir in &args.from {
        for (id, path) in desktop_files(dir)? {
            let name = format!("vmsilo-{vm}-{id}");
            if written.contains(&name) {
                eprintln!(
                    "vmsilo: {}: skipped: an earlier directory has {id} too",
                    path.display()
                );
                skipped += 1;
                continue;
            }
            let text = match read_limited(&path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("vmsilo: {}: skipped: cannot read it: {e}", path.display());
                    skipped += 1;
                    continue;
                }
            };
            match desktop::rewrite(&text, vm, color, &path.display().to_string()) {
                Ok(out) => {
                    write(&name, &out)?;
                    written.insert(name);
                }
                Err(why) => {
                    if !matches!(why, desktop::Skip::Hidden) {
                        eprintln!("vmsilo: {}: skipped: {why}", path.display());
                    }
                    skipped += 1;
                }
            }
        }
    }
    for e in &extras {
        let base = format!("vmsilo-{vm}-{}", desktop::slug(&e.name));
        let mut name = format!("{base}.desktop");
        let mut n = 2;
        while written.contains(&name) {
            name = format!("{base}-{n}.desktop");
            n += 1;
        }
        let text = desktop::extra_entry(e, vm, color)
            .map_err(|why| CliError::Usage(format!("entry {:?}: {why}", e.name)))?;
        write(&name, &text)?;
        written.insert(name);
    }
    eprintln!(
        "vmsilo: VM {vm:?}: wrote {} desktop entr{} to {}{}",
        written.len(),
        if written.len() == 1 { "y" } else { "ies" },
        args.out.display(),
        if skipped > 0 {
            format!(" ({skipped} skipped)")
        } else {
            String::new()
        }
    );
    Ok(())
}
