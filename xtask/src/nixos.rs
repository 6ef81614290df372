//! The NixOS side: `nix-instantiate --parse` on every `.nix` file, and the JSON fixtures the
//! module produces for the seed's examples (`cargo xtask nixos-fixture [--check]`), with the
//! module checks and the check that `nix/package.nix` refuses a too-old Rust.
//!
//! Evaluating the module needs a nixpkgs tree, which CI machines do not have (no network but the
//! package registries). Where one exists (`NIXPKGS=PATH`, or `/opt/nixpkgs-24.05`), the fixture
//! is regenerated or compared; elsewhere the committed fixture is what the test suite checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{section, sh, workspace_root};

/// A configuration the module is evaluated with, and where its JSON is kept.
struct Fixture {
    /// The NixOS configuration module, relative to the workspace root.
    configuration: &'static str,
    /// The committed JSON, relative to the workspace root.
    json: &'static str,
}

/// The configurations `nixos-fixture` evaluates: the seed's quick start
/// (`examples/nixos-configuration.nix`), every other configuration example of the seed's README
/// (`seed-readme-examples.nix`), and the two that cannot join it (`seed-readme-examples-2.nix`:
/// the colour example reuses the quick start's VM names, the pciDevices example the device of
/// the PCI passthrough example).
const FIXTURES: &[Fixture] = &[
    Fixture {
        configuration: "examples/nixos-configuration.nix",
        json: "nix/tests/seed-example.json",
    },
    Fixture {
        configuration: "nix/tests/seed-readme-examples.nix",
        json: "nix/tests/seed-readme-examples.json",
    },
    Fixture {
        configuration: "nix/tests/seed-readme-examples-2.nix",
        json: "nix/tests/seed-readme-examples-2.json",
    },
];

#[derive(Debug, Args)]
pub struct FixtureArgs {
    /// Compare with the committed fixture instead of rewriting it.
    #[arg(long)]
    pub check: bool,
}

/// Every `.nix` file of the repository (outside `target/`).
fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            nix_files(&path, out)?;
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
    Ok(())
}

/// `nix-instantiate --parse` on every `.nix` file: syntax and unbound variables.
pub fn parse_all() -> Result<()> {
    section("ci: nix-instantiate --parse on every .nix file");
    let mut files = Vec::new();
    nix_files(&workspace_root(), &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!("no .nix files found under {}", workspace_root().display());
    }
    for file in &files {
        sh(Command::new("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .stdout(std::process::Stdio::null()))?;
    }
    eprintln!("{} .nix files parse", files.len());
    Ok(())
}

/// The nixpkgs tree to evaluate against, if this machine has one.
pub fn nixpkgs_tree() -> Option<PathBuf> {
    let candidates = std::env::var_os("NIXPKGS")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/opt/nixpkgs-24.05")]);
    candidates
        .into_iter()
        .find(|p| p.join("nixos/lib/eval-config.nix").is_file())
}

/// `nix-instantiate --eval --strict --json` of `file` (relative to the workspace root) with
/// `nixpkgs` and the further `--arg NAME PATH` pairs; returns its stdout. `what` names the
/// evaluation in the error.
fn nix_eval_json(
    nixpkgs: &Path,
    file: &str,
    args: &[(&str, &Path)],
    what: &str,
) -> Result<Vec<u8>> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.current_dir(workspace_root())
        .args(["--eval", "--strict", "--json", "--readonly-mode"])
        .arg(file)
        .args(["--arg", "nixpkgs"])
        .arg(nixpkgs);
    for (name, value) in args {
        cmd.args(["--arg", name]).arg(value);
    }
    let out = cmd.output().context("run nix-instantiate")?;
    if !out.status.success() {
        bail!(
            "evaluating {what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Evaluates the module with one configuration and returns the pretty-printed JSON.
fn evaluate(nixpkgs: &Path, configuration: &str) -> Result<String> {
    let stdout = nix_eval_json(
        nixpkgs,
        "nix/tests/eval-json.nix",
        &[("configuration", &workspace_root().join(configuration))],
        &format!("nix/module.nix with {configuration}"),
    )?;
    // The expression returns the JSON text as a (JSON-quoted) string.
    let text: String = serde_json::from_slice(&stdout).context("nix output is a JSON string")?;
    let value: serde_json::Value = serde_json::from_str(&text).context("module JSON")?;
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

/// The files of boolean checks evaluated against the tree: the module's behaviour no fixture
/// shows (`enable = false` writes nothing, `enableBashIntegration = false` installs no completion,
/// the sharedDirectories `id` alias, PCI address forms, the guest agent option, package.nix's
/// Rust check), and the flake's wiring of its two nixpkgs inputs (`flake-inputs.nix`: vmsilo's
/// binaries from `nixpkgs-rust`, the system from `nixpkgs`).
const CHECK_FILES: &[&str] = &["nix/tests/module-checks.nix", "nix/tests/flake-inputs.nix"];

/// Evaluates one file of `CHECK_FILES` and fails naming every check that is false.
fn boolean_checks(nixpkgs: &Path, file: &str) -> Result<()> {
    section(&format!("nixos: {file} against {}", nixpkgs.display()));
    let stdout = nix_eval_json(nixpkgs, file, &[], file)?;
    let checks: std::collections::BTreeMap<String, bool> =
        serde_json::from_slice(&stdout).with_context(|| format!("{file}: a set of booleans"))?;
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(name, _)| name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("{file}: failed: {}", failed.join(", "));
    }
    eprintln!("{} checks of {file} hold", checks.len());
    Ok(())
}

/// What `nix/tests/package-rust.nix -A versions` reports of a nixpkgs tree's Rust.
struct RustVersions {
    /// Cargo.toml's `rust-version`.
    needed: String,
    /// The tree's `rustc.version`.
    rustc: String,
    /// `rustc` is older than `needed`.
    too_old: bool,
}

impl RustVersions {
    fn parse(json: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        let text = |key: &str| {
            v[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("`{key}` is not a string in {json}"))
        };
        Ok(Self {
            needed: text("needed")?,
            rustc: text("rustc")?,
            too_old: v["tooOld"]
                .as_bool()
                .with_context(|| format!("`tooOld` is not a boolean in {json}"))?,
        })
    }
}

/// `nix-instantiate --eval --strict --json --readonly-mode nix/tests/package-rust.nix -A attr`;
/// returns whether it succeeded, its stdout and its stderr.
fn package_rust_eval(nixpkgs: &Path, attr: &str) -> Result<(bool, String, String)> {
    let out = Command::new("nix-instantiate")
        .current_dir(workspace_root())
        .args(["--eval", "--strict", "--json", "--readonly-mode"])
        .arg("nix/tests/package-rust.nix")
        .args(["--arg", "nixpkgs"])
        .arg(nixpkgs)
        .args(["-A", attr])
        .output()
        .context("run nix-instantiate")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `nix/package.nix` against the tree: with a rustc older than Cargo.toml's rust-version (as
/// nixpkgs 24.05's) the package and the static guest agent must stop evaluation with a message
/// naming both versions and the flake input to use; with a new enough one they must evaluate
/// (their `.drv` paths are printed; nothing is built).
fn package_rust(nixpkgs: &Path) -> Result<()> {
    const FILE: &str = "nix/tests/package-rust.nix";
    section(&format!(
        "nixos: nix/package.nix and the Rust of {}",
        nixpkgs.display()
    ));
    let (ok, stdout, stderr) = package_rust_eval(nixpkgs, "versions")?;
    if !ok {
        bail!("evaluating {FILE} -A versions failed:\n{stderr}");
    }
    let v = RustVersions::parse(&stdout).with_context(|| format!("{FILE} -A versions output"))?;
    eprintln!(
        "workspace needs rustc >= {}; this nixpkgs has {}",
        v.needed, v.rustc
    );
    for attr in ["package", "guestAgent"] {
        let (ok, stdout, stderr) = package_rust_eval(nixpkgs, attr)?;
        if v.too_old {
            let expected = [
                format!("vmsilo needs rustc >= {}", v.needed),
                format!("has rustc {}", v.rustc),
                "nixpkgs-rust".to_owned(),
                "programs.vmsilo.guestAgentPackage".to_owned(),
            ];
            let missing: Vec<&String> = expected.iter().filter(|e| !stderr.contains(*e)).collect();
            if ok || !missing.is_empty() {
                bail!(
                    "{FILE} -A {attr}: with rustc {} (< {}) evaluation must stop with package.nix's message; \
                     succeeded: {ok}, message lacks {missing:?}; stderr:\n{stderr}",
                    v.rustc,
                    v.needed
                );
            }
            eprintln!("{attr}: refused with package.nix's message");
        } else {
            if !ok {
                bail!(
                    "{FILE} -A {attr}: rustc {} is new enough, yet evaluation failed:\n{stderr}",
                    v.rustc
                );
            }
            eprintln!("{attr}: {}", stdout.trim());
        }
    }
    Ok(())
}

/// `cargo xtask nixos-fixture [--check]`.
pub fn fixture(args: &FixtureArgs) -> Result<()> {
    let Some(nixpkgs) = nixpkgs_tree() else {
        if args.check {
            eprintln!(
                "skipped: no nixpkgs tree (set NIXPKGS=PATH); the committed fixtures are checked by the tests"
            );
            return Ok(());
        }
        bail!("no nixpkgs tree: set NIXPKGS=PATH to a nixpkgs checkout (24.05 or later)");
    };
    let mut stale = Vec::new();
    for f in FIXTURES {
        section(&format!(
            "nixos: evaluate nix/module.nix with {} against {}",
            f.configuration,
            nixpkgs.display()
        ));
        let json = evaluate(&nixpkgs, f.configuration)?;
        let path = workspace_root().join(f.json);
        if args.check {
            let old = std::fs::read_to_string(&path)
                .with_context(|| format!("read {} (run `cargo xtask nixos-fixture`)", f.json))?;
            // Store hashes change with every source change (the guest closure contains the
            // vmsilo package); what must not drift is everything else.
            if normalize_store_hashes(&old) == normalize_store_hashes(&json) {
                eprintln!("{} matches the module's evaluation", f.json);
            } else {
                eprintln!("{} is out of date", f.json);
                stale.push(f.json);
            }
        } else {
            std::fs::write(&path, json).with_context(|| format!("write {}", f.json))?;
            eprintln!("wrote {}", f.json);
        }
    }
    for file in CHECK_FILES {
        boolean_checks(&nixpkgs, file)?;
    }
    package_rust(&nixpkgs)?;
    if !stale.is_empty() {
        bail!(
            "{} out of date: run `cargo xtask nixos-fixture` and commit the result",
            stale.join(", ")
        );
    }
    Ok(())
}

/// Replaces the 32-character hash of every `/nix/store/<hash>-` path by `HASH`.
fn normalize_store_hashes(text: &str) -> String {
    const PREFIX: &str = "/nix/store/";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(PREFIX) {
        out.push_str(&rest[..pos + PREFIX.len()]);
        rest = &rest[pos + PREFIX.len()..];
        let hash_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if hash_len == 32 && rest.as_bytes().get(32) == Some(&b'-') {
            out.push_str("HASH");
            rest = &rest[32..];
        }
    }
    out.push_str(rest);
    out
}
