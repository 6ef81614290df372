//! Finding and reading the configuration file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use vmsilo_config::{Format, ValidConfig, load_str, load_str_lenient};

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

/// Reads and validates the configuration at `path` (format from the extension). A VM whose
/// problems are all its own is left out ([`vmsilo_config::load_str_lenient`]; the others keep
/// working, and asking for the left-out one says why); `vmsilo check` uses [`load_strict`].
pub fn load(path: &Path) -> Result<ValidConfig, CliError> {
    let text = read(path)?;
    load_str_lenient(&text, Format::from_path(path)).map_err(|error| CliError::Config {
        path: path.to_owned(),
        error,
    })
}

/// [`load`] without leaving anything out: every problem fails the configuration.
pub fn load_strict(path: &Path) -> Result<ValidConfig, CliError> {
    let text = read(path)?;
    load_str(&text, Format::from_path(path)).map_err(|error| CliError::Config {
        path: path.to_owned(),
        error,
    })
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| {
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
    })
}

/// [`resolve`] then [`load`]; returns the path too, for messages.
pub fn resolve_and_load(explicit: Option<&Path>) -> Result<(PathBuf, ValidConfig), CliError> {
    let path = resolve(explicit)?;
    let cfg = load(&path)?;
    Ok((path, cfg))
}
