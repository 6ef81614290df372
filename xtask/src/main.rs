//! `cargo xtask <task>`: everything a developer or CI does to this repository, in Rust.
//!
//! - `setup`: install what a fresh Debian/Ubuntu machine lacks (idempotent).
//! - `ci`: setup, then every check and every test tier; `.ci/run` calls exactly this.
//! - `demo`: setup, build, and the whole command path with a real VM, step by step.
//! - `guest-image`: build the e2e test guest image; prints its directory last.
//! - `verify-crosvm --crosvm PATH`: check vmsilo's crosvm-facing code against a real crosvm.
//! - `bench <name>`: a benchmark that prints its figures beside a baseline and ends with one
//!   `key=value` summary line.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_balloond;
mod bench_gate;
mod bench_guest_agent;
mod bench_vm_run;
mod bench_vm_switch;
mod ci;
mod demo;
mod guest_image;
mod nixos;
mod setup;
mod util;
mod verify_crosvm;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "vmsilo developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what this machine lacks: Debian packages and cargo tools (idempotent).
    Setup,
    /// Run setup, formatting and lint checks, then every test tier.
    Ci(ci::CiArgs),
    /// Install what is missing, build vmsilo and a test guest, run a VM through socket
    /// activation and commands in it with vm-run, printing each step (needs root).
    Demo(demo::DemoArgs),
    /// Run a benchmark; `cargo xtask bench list` lists them.
    Bench(bench::BenchArgs),
    /// Build the e2e test guest image (cached); prints its directory as the last line.
    GuestImage(guest_image::GuestImageArgs),
    /// Evaluate the NixOS module for the seed's examples and write (or `--check`) the JSON
    /// fixtures `nix/tests/seed-example.json`, `seed-readme-examples.json` and
    /// `seed-readme-examples-2.json`; needs a nixpkgs tree (`NIXPKGS=PATH`).
    NixosFixture(nixos::FixtureArgs),
    /// Check vmsilo's crosvm plans, control-socket clients, vm-service and vm-switch against a
    /// real crosvm binary (needs root and /dev/kvm; not run in CI).
    VerifyCrosvm(verify_crosvm::VerifyCrosvmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Ci(args) => ci::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::GuestImage(args) => guest_image::run(&args),
        Task::NixosFixture(args) => nixos::fixture(&args),
        Task::VerifyCrosvm(args) => verify_crosvm::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
