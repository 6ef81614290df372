//! Finding and reading the configuration file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use vmsilo_config::{Format, ValidConfig, load_str};

use crate::CliError;

/// The default configuration file.
pub const DEFAULT_TOML: &str = "/etc/vmsilo/vmsilo.toml";
/// Used when [`DEFAULT_TOML`] does not exist (what the NixOS module installs).
pub const DEFAULT_JSON: &str = "/etc/vmsilo/vmsilo.json";

/// The configuration path: the explicit one (`--config` or `VMSILO_CONFIG`), else
/// [`DEFAULT_TOML`] if it exists, else [`DEFAULT_JSON`] if it exists.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    for candidate in [DEFAULT_TOML, DEFAULT_JSON] {
        if Path::new(candidate).exists() {
            return Ok(candidate.into());
        }
    }
    Err(CliError::NoConfig {
        tried: format!("{DEFAULT_TOML}, {DEFAULT_JSON}"),
    })
}

/// Reads and validates the configuration at `path` (format from the extension).
pub fn load(path: &Path) -> Result<ValidConfig, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == ErrorKind::NotFound {
            CliError::ConfigMissing {
                path: path.to_owned(),
            }
        } else {
            CliError::ReadConfig {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    load_str(&text, Format::from_path(path)).map_err(|error| CliError::Config {
        path: path.to_owned(),
        error,
    })
}

/// [`resolve`] then [`load`]; returns the path too, for messages.
pub fn resolve_and_load(explicit: Option<&Path>) -> Result<(PathBuf, ValidConfig), CliError> {
    let path = resolve(explicit)?;
    let cfg = load(&path)?;
    Ok((path, cfg))
}
