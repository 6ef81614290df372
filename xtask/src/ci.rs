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

use crate::util::{cargo, section, sh};

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
    section("ci: cargo fmt --check");
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    section("ci: cargo clippy -D warnings");
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
    section("ci: fuzz targets build (cargo +nightly fuzz build)");
    // Through the rustup proxy (`cargo`), not $CARGO: `+nightly` picks the toolchain. cargo-fuzz
    // finds fuzz/ under the workspace root (the current directory of `sh`).
    sh(Command::new("cargo").args(["+nightly", "fuzz", "build"]))?;
    section("ci: tier 1+2 - unit and component tests");
    sh(nextest().args(["--workspace"]))?;
    if !args.no_e2e {
        crate::guest_image::prebuild()?;
        section("ci: tier 3 - end-to-end tests with QEMU guests");
        // .config/nextest.toml puts every `e2e*` test binary into a test group that boots at
        // most two QEMU guests at a time, with a generous per-test timeout.
        sh(nextest().args(["--workspace", "--run-ignored", "only"]))?;
    }
    section("ci: all checks passed");
    Ok(())
}

fn nextest() -> Command {
    let mut cmd = cargo();
    cmd.args(["nextest", "run", "--no-fail-fast"]);
    cmd
}

pub fn run(args: &CiArgs) -> Result<()> {
    run_ci(args)
}
