//! `cargo xtask guest-image`: build the e2e test guest image (or find it in the cache) and
//! print its directory as the last line of output.
//!
//! The directory holds `vmlinuz`, `initrd.img` and `manifest.txt`. This runs exactly the code
//! the e2e tests run (`vmsilo_testkit::ImageSpec`), so a warm cache here is a warm cache there.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vmsilo_testkit::{GuestImage, ImageSpec};

use crate::util::{section, workspace_root};

#[derive(Debug, Args)]
pub struct GuestImageArgs {
    /// Put this guest agent binary into the image as /bin/vmsilo-guest.
    #[arg(long, value_name = "PATH", conflicts_with = "with_agent")]
    pub agent: Option<PathBuf>,
    /// Build vmsilo-guest (crates/vmsilo-guest) and put it into the image.
    #[arg(long)]
    pub with_agent: bool,
    /// Add a host program and the libraries ldd reports (repeatable), e.g. `--extra iperf3`.
    #[arg(long = "extra", value_name = "PROGRAM")]
    pub extra: Vec<String>,
    /// Add a kernel module and its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
}

fn build(spec: &ImageSpec) -> Result<GuestImage> {
    let image = spec.build().context("building the guest image")?;
    eprintln!(
        "guest image {} (kernel {}{})\n  {}\n  {}",
        image.hash,
        image.kernel_version,
        if image.has_agent {
            ", with vmsilo-guest"
        } else {
            ""
        },
        image.kernel.display(),
        image.initrd.display()
    );
    Ok(image)
}

pub fn run(args: &GuestImageArgs) -> Result<()> {
    let mut spec = ImageSpec::new();
    if let Some(agent) = &args.agent {
        spec = spec.agent(agent);
    } else if args.with_agent {
        spec = spec.agent(vmsilo_testkit::agent_binary().context("building vmsilo-guest")?);
    }
    for program in &args.extra {
        spec = spec.program(program);
    }
    for module in &args.modules {
        spec = spec.module(module);
    }
    let image = build(&spec)?;
    println!("{}", image.dir.display());
    Ok(())
}

/// For `cargo xtask ci`, before the e2e tier: builds the base image, the image with the guest
/// agent when the workspace has it, and vm-switch and vmsilo-balloond for the tests that start
/// them, so setup problems show up once, clearly, and the tests start with a warm cache.
pub fn prebuild() -> Result<()> {
    section("ci: e2e guest images");
    build(&ImageSpec::new())?;
    if workspace_root()
        .join("crates/vmsilo-guest/Cargo.toml")
        .is_file()
    {
        let agent = vmsilo_testkit::agent_binary().context("building vmsilo-guest")?;
        build(&ImageSpec::new().agent(agent))?;
    }
    // The other binaries the e2e tests start (target/testkit-bin): built here, so that no
    // test spends its time limit compiling them on a loaded machine.
    for package in ["vm-switch", "vmsilo-balloond", "vmsilo-gate"] {
        if workspace_root()
            .join(format!("crates/{package}/Cargo.toml"))
            .is_file()
        {
            vmsilo_testkit::workspace_binary(package, package)
                .with_context(|| format!("building {package}"))?;
        }
    }
    Ok(())
}
