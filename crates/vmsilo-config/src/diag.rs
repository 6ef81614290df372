//! Configuration problems ("diagnostics"): what is wrong, where, and with which value.
//!
//! Every problem found while reading or validating a configuration becomes one [`Diagnostic`].
//! Reading and validation never stop at the first problem: they return all of them, so a user
//! fixes a configuration in one round.

use std::fmt;

use serde::Serialize;

/// Which part of the configuration a problem is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Scope {
    /// A global option (`user`, `hostNetworking.nat.enable`, ...).
    Global,
    /// An option of one VM, `nixosVms[index]`.
    Vm {
        /// Position in `nixosVms`.
        index: usize,
        /// The VM's name, when it could be read.
        name: Option<String>,
    },
}

/// One problem in a configuration.
///
/// Displayed as `VM "banking": network.interfaces.wan.tap: hostAddress and bridge are mutually
/// exclusive` (or without the `VM "…": ` prefix for global options). Command-line tools prefix it
/// with their own name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnostic {
    /// Where: global, or which VM.
    pub scope: Scope,
    /// The field path relative to the scope, e.g. `network.interfaces.wan.tap.bridge`. Empty
    /// when the problem concerns the VM (or the whole file) as such.
    pub path: String,
    /// The offending value as written (JSON notation), when there is one.
    pub value: Option<String>,
    /// What is wrong and, where it helps, what to do instead.
    pub message: String,
}

impl Diagnostic {
    /// The absolute field path, e.g. `nixosVms[0].network.interfaces.wan.tap.bridge`.
    pub fn full_path(&self) -> String {
        match &self.scope {
            Scope::Global => self.path.clone(),
            Scope::Vm { index, .. } if self.path.is_empty() => format!("nixosVms[{index}]"),
            Scope::Vm { index, .. } => format!("nixosVms[{index}].{}", self.path),
        }
    }

    /// The location for humans: `nixosVms[0] (VM "banking"): network.interfaces.wan.tap.bridge`.
    pub fn location(&self) -> String {
        match &self.scope {
            Scope::Global => self.path.clone(),
            Scope::Vm { index, name } => {
                let mut s = format!("nixosVms[{index}]");
                if let Some(name) = name {
                    s.push_str(&format!(" (VM {name:?})"));
                }
                if !self.path.is_empty() {
                    s.push_str(": ");
                    s.push_str(&self.path);
                }
                s
            }
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Global => {}
            Scope::Vm {
                name: Some(name), ..
            } => write!(f, "VM {name:?}: ")?,
            Scope::Vm { index, name: None } => write!(f, "nixosVms[{index}]: ")?,
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A list of problems; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether there is no problem.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// The problems in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Formats a path the way users write it: `network.interfaces.wan.routes."0.0.0.0/0".via`,
/// `sharedDirectories[1].tag`. Keys that are not plain identifiers are quoted.
pub(crate) fn format_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let plain = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if plain {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Suggests the known name closest to `unknown`, if one is close enough to be a likely typo:
/// the same name in another case or spelling convention (`log_level` for `logLevel`), or one
/// within a small edit distance.
pub fn did_you_mean<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let unknown_norm = norm(unknown);
    if let Some(k) = known.iter().find(|k| norm(k) == unknown_norm) {
        return Some(k);
    }
    let mut best: Option<(&str, f64)> = None;
    for k in known {
        let score = strsim::jaro_winkler(&unknown_norm, &norm(k));
        if score >= 0.85 && best.is_none_or(|(_, s)| score > s) {
            best = Some((k, score));
        }
    }
    if best.is_none() {
        for k in known {
            if strsim::damerau_levenshtein(unknown, k) <= 2 && unknown.len() > 3 {
                return Some(k);
            }
        }
    }
    best.map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_diagnostic_display_and_paths() {
        let d = Diagnostic {
            scope: Scope::Vm {
                index: 0,
                name: Some("banking".into()),
            },
            path: "network.interfaces.wan.tap".into(),
            value: None,
            message: "hostAddress and bridge are mutually exclusive".into(),
        };
        assert_eq!(
            d.to_string(),
            "VM \"banking\": network.interfaces.wan.tap: hostAddress and bridge are mutually exclusive"
        );
        assert_eq!(d.full_path(), "nixosVms[0].network.interfaces.wan.tap");
        assert_eq!(
            d.location(),
            "nixosVms[0] (VM \"banking\"): network.interfaces.wan.tap"
        );
        let g = Diagnostic {
            scope: Scope::Global,
            path: "user".into(),
            value: None,
            message: "is required".into(),
        };
        assert_eq!(g.to_string(), "user: is required");
    }

    #[test]
    fn test_format_path_quotes_odd_keys() {
        let segs = vec![
            Seg::Key("routes".into()),
            Seg::Key("0.0.0.0/0".into()),
            Seg::Key("via".into()),
            Seg::Key("disks".into()),
            Seg::Index(2),
        ];
        assert_eq!(format_path(&segs), "routes.\"0.0.0.0/0\".via.disks[2]");
    }

    #[test]
    fn test_did_you_mean() {
        let known = ["memory", "cpus", "logLevel", "autoShutdown", "hostAddress"];
        assert_eq!(did_you_mean("memroy", &known), Some("memory"));
        assert_eq!(did_you_mean("log_level", &known), Some("logLevel"));
        assert_eq!(did_you_mean("auto-shutdown", &known), Some("autoShutdown"));
        assert_eq!(did_you_mean("cpu", &known), Some("cpus"));
        assert_eq!(did_you_mean("zzzzzz", &known), None);
    }
}
