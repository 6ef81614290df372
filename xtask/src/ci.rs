//! `cargo xtask ci`: the one command CI runs (`.ci/run` calls it).
//!
//! Order: setup, `cargo fmt --check`, clippy with `-D warnings`, then the test tiers:
//! 1. hermetic unit tests and component tests with in-process peers (`cargo nextest run`);
//! 2. end-to-end tests that boot QEMU guests (`#[ignore]`d tests, run here with
//!    `--run-ignored only`; they are `#[ignore]`d only so that a plain `cargo test` on a machine
//!    without QEMU stays green). The guest images are built first (`cargo xtask guest-image`).

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::util::{cargo, output, sh, target_dir};

#[derive(Debug, Args)]
pub struct CiArgs {
    /// Skip `cargo xtask setup` (the machine is known to be set up).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip the end-to-end tier.
    #[arg(long)]
    pub no_e2e: bool,
}

/// Runs every check and test tier, stopping at the first failure.
fn run_ci(args: &CiArgs) -> Result<()> {
    if !args.no_setup {
        crate::setup::run()?;
    }
    ci_section("ci: cargo fmt --check");
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    ci_section("ci: cargo clippy -D warnings");
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::nixos::parse_all()?;
    crate::nixos::fixture(&crate::nixos::FixtureArgs { check: true })?;
    ci_section("ci: fuzz targets build (cargo +nightly fuzz build)");
    // Through the rustup proxy (`cargo`), not $CARGO: `+nightly` picks the toolchain. cargo-fuzz
    // finds fuzz/ under the workspace root (the current directory of `sh`).
    sh(Command::new("cargo").args(["+nightly", "fuzz", "build"]))?;
    if std::env::var_os("CI").is_some() {
        // On CI the fuzz build only proves the targets link; its own target directory (the
        // whole dependency tree again, with sanitizers) is not needed for the test tiers.
        let fuzz_target = crate::util::workspace_root().join("fuzz/target");
        std::fs::remove_dir_all(&fuzz_target).ok();
    }
    ci_section("ci: tier 1+2 - unit and component tests");
    sh(nextest().args(["--workspace"]))?;
    if !args.no_e2e {
        crate::guest_image::prebuild()?;
        ci_section("ci: tier 3 - end-to-end tests with QEMU guests");
        // .config/nextest.toml puts every `e2e*` test binary into a test group that boots at
        // most two QEMU guests at a time, with a generous per-test timeout.
        sh(nextest().args(["--workspace", "--run-ignored", "only"]))?;
    }
    ci_section("ci: all checks passed");
    Ok(())
}

/// A section header with the free space where the build goes: a CI machine that ran out of
/// disk (a linker's "No space left on device") shows in the log how fast it went.
fn ci_section(title: &str) {
    let dir = target_dir();
    let probe = if dir.exists() {
        dir
    } else {
        crate::util::workspace_root()
    };
    let free = output(
        Command::new("df")
            .args(["-h", "--output=avail"])
            .arg(&probe),
    )
    .and_then(|out| out.lines().nth(1).map(|l| l.trim().to_owned()))
    .unwrap_or_else(|| "?".to_owned());
    crate::util::section(&format!("{title}  [disk free: {free}]"));
}

fn nextest() -> Command {
    let mut cmd = cargo();
    cmd.args(["nextest", "run", "--no-fail-fast"]);
    cmd
}

pub fn run(args: &CiArgs) -> Result<()> {
    run_ci(args)
}
