//! vmsilo's configuration model.
//!
//! This crate is sans-IO: it parses configuration text handed to it, validates it and derives
//! values from it, but never touches the file system, the network or the clock. Everything that
//! reads a value typed by a user (sizes such as `300m`, durations such as `2s`) goes through the
//! parsers here, so every vmsilo component accepts the same spellings.
//!
//! The pipeline, and the entry points other crates use:
//!
//! 1. [`load_str`] (text → [`ValidConfig`]): [`model::parse_str`] reads TOML or JSON into a
//!    [`Config`] (types, formats, unknown keys with "did you mean"), then [`validate()`]
//!    checks every cross-field rule. Both report *all* problems as [`Diagnostic`]s with field
//!    paths.
//! 2. [`mod@derive`]: MACs, TAP names, vsock CIDs, the shared home, the `vmsilo.*` kernel parameters.
//! 3. [`paths::Dirs`]: every runtime path (`/run/vmsilo/<vm>-command.socket`, ...).
//! 4. [`plan::build`] (valid config + VM name + [`plan::PlanOptions`] → [`plan::LaunchPlan`]):
//!    the VMM argv, the backends to start first, and everything the runtime needs.
//!
//! Threading: none; everything is plain data and pure functions. Trust: the configuration is
//! written by the administrator, but it is still never trusted not to be malformed: nothing
//! here panics on any input.

#![forbid(unsafe_code)]

pub mod color;
pub mod derive;
pub mod diag;
pub mod measure;
pub mod model;
pub mod net;
pub mod paths;
pub mod pci;
pub mod plan;
mod qemu_caps;
pub mod validate;
mod value;

pub use diag::{Diagnostic, Diagnostics, Scope};
pub use model::{Config, ConfigError, Format, Vm, Vmm};
pub use paths::Dirs;
pub use plan::{LaunchPlan, PlanError, PlanOptions};
pub use validate::{
    LeftOutVm, ValidConfig, load_str, load_str_lenient, load_tree, load_tree_lenient, validate,
};
