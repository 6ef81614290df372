//! Reading a configuration tree (JSON or TOML, both turned into a [`serde_json::Value`]) into
//! typed structs, collecting every problem with its field path instead of stopping at the first.
//!
//! serde's own `deny_unknown_fields` stops at the first unknown key and cannot suggest the
//! intended one; this reader reports them all, each with a "did you mean" hint.
//!
//! A table's accepted keys are not listed anywhere: they are the keys its reader looks up
//! ([`Reader::object`] hands the reader a [`Table`] that records them), so the keys the code
//! reads and the keys the configuration may hold cannot drift apart.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::diag::{Diagnostic, Scope, Seg, did_you_mean, format_path};

/// Walks a value tree, tracking the current field path and collecting diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub(crate) diags: Vec<Diagnostic>,
    path: Vec<Seg>,
    vm: Option<(usize, Option<String>)>,
}

impl Reader {
    /// Starts reading `nixosVms[index]`: paths are reported relative to the VM from now on.
    pub(crate) fn enter_vm(&mut self, index: usize) {
        self.vm = Some((index, None));
        self.path.clear();
    }

    /// Names the VM being read, for nicer messages.
    pub(crate) fn set_vm_name(&mut self, name: &str) {
        if let Some((_, n)) = &mut self.vm {
            *n = Some(name.to_owned());
        }
    }

    /// Done with the VM; back to global paths.
    pub(crate) fn leave_vm(&mut self) {
        self.vm = None;
        self.path.clear();
    }

    /// Runs `f` one step further down the path.
    pub(crate) fn at<T>(&mut self, seg: Seg, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(seg);
        let out = f(self);
        self.path.pop();
        out
    }

    /// Runs `f` at the key `key` below the current path.
    pub(crate) fn at_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.at(Seg::Key(key.to_owned()), f)
    }

    fn scope(&self) -> Scope {
        match &self.vm {
            None => Scope::Global,
            Some((index, name)) => Scope::Vm {
                index: *index,
                name: name.clone(),
            },
        }
    }

    /// Records a problem at the current path.
    pub(crate) fn error(&mut self, value: Option<&Value>, message: impl Into<String>) {
        let d = Diagnostic {
            scope: self.scope(),
            path: format_path(&self.path),
            value: value.map(render),
            message: message.into(),
        };
        self.diags.push(d);
    }

    /// Reads the table `v` with `read`, then reports each key of `v` that `read` did not look up
    /// as unknown (with a suggestion among the keys it did look up). The unknown keys are
    /// reported before whatever `read` reported, as if checked first. A reader must look up
    /// every key it accepts whatever the input (before any early return), so that its keys
    /// are the same for every table.
    pub(crate) fn object<'v, T>(
        &mut self,
        v: &'v Value,
        read: impl FnOnce(&mut Self, &Table<'v>) -> Option<T>,
    ) -> Option<T> {
        let Value::Object(map) = v else {
            self.type_error(v, "a table (object)");
            return None;
        };
        let start = self.diags.len();
        let table = Table {
            map,
            read: RefCell::default(),
        };
        let out = read(self, &table);
        let read_keys = table.read.into_inner();
        let known: Vec<&str> = read_keys.iter().map(String::as_str).collect();
        let before = self.diags.len();
        for (key, val) in map {
            if !known.contains(&key.as_str()) {
                self.unknown_key(key, val, &known);
            }
        }
        let added = self.diags.len() - before;
        self.diags[start..].rotate_right(added);
        out
    }

    /// Reports `key` as an unknown option among `known`.
    pub(crate) fn unknown_key(&mut self, key: &str, val: &Value, known: &[&str]) {
        let msg = match did_you_mean(key, known) {
            Some(s) => format!("unknown option {key:?}; did you mean {s:?}?"),
            None => {
                let mut sorted: Vec<&str> = known.to_vec();
                sorted.sort_unstable();
                format!(
                    "unknown option {key:?}; known options here: {}",
                    sorted.join(", ")
                )
            }
        };
        self.at_key(key, |r| r.error(Some(val), msg));
    }

    /// Reports that `v` has the wrong type.
    pub(crate) fn type_error(&mut self, v: &Value, expected: &str) {
        let msg = format!("expected {expected}, found {}", describe(v));
        self.error(Some(v), msg);
    }

    /// Reads an optional field: `None` when it is absent (or unreadable, which is reported).
    pub(crate) fn field<T: FromValue>(&mut self, obj: &impl Fields, key: &str) -> Option<T> {
        let v = obj.lookup(key)?;
        self.at_key(key, |r| T::from_value(r, v))
    }

    /// Reads a field with a default for when it is absent or unreadable.
    pub(crate) fn field_or<T: FromValue>(&mut self, obj: &impl Fields, key: &str, default: T) -> T {
        self.field(obj, key).unwrap_or(default)
    }

    /// Reads a field that may be absent or `null` (both give `None`).
    pub(crate) fn nullable<T: FromValue>(&mut self, obj: &impl Fields, key: &str) -> Option<T> {
        match obj.lookup(key) {
            None | Some(Value::Null) => None,
            Some(v) => self.at_key(key, |r| T::from_value(r, v)),
        }
    }
}

/// A table being read by [`Reader::object`]: every key looked up in it is one it accepts.
#[derive(Debug)]
pub(crate) struct Table<'v> {
    map: &'v Map<String, Value>,
    /// The keys looked up so far, in order.
    read: RefCell<Vec<String>>,
}

impl<'v> Table<'v> {
    /// The value at `key`, if any; `key` is accepted.
    pub(crate) fn get(&self, key: &str) -> Option<&'v Value> {
        let mut read = self.read.borrow_mut();
        if !read.iter().any(|k| k == key) {
            read.push(key.to_owned());
        }
        self.map.get(key)
    }

    /// Whether the table has `key`; `key` is accepted.
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// Something fields are read from: a [`Table`], or a free-form map whose keys the caller
/// checks itself.
pub(crate) trait Fields {
    /// The value at `key`, if any.
    fn lookup(&self, key: &str) -> Option<&Value>;
}

impl Fields for Table<'_> {
    fn lookup(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Fields for Map<String, Value> {
    fn lookup(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// A type that can be read from a configuration value.
pub(crate) trait FromValue: Sized {
    /// Reads `v`, reporting problems to `r`; `None` if it could not be read.
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self>;
}

impl FromValue for bool {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            _ => {
                r.type_error(v, "true or false");
                None
            }
        }
    }
}

impl FromValue for String {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(s.clone()),
            _ => {
                r.type_error(v, "a string");
                None
            }
        }
    }
}

/// Reads a whole number in `0..=max`.
pub(crate) fn read_uint(r: &mut Reader, v: &Value, max: u64) -> Option<u64> {
    read_ranged(r, v, 0, max, "")
}

/// Reads a whole number in `min..=max`; `unit` (e.g. `" MiB"`) follows the range in messages.
pub(crate) fn read_ranged(
    r: &mut Reader,
    v: &Value,
    min: u64,
    max: u64,
    unit: &str,
) -> Option<u64> {
    let Value::Number(n) = v else {
        r.type_error(v, "a whole number");
        return None;
    };
    match n.as_u64() {
        Some(x) if (min..=max).contains(&x) => Some(x),
        _ if n.is_f64() => {
            r.error(Some(v), format!("{n} is not a whole number"));
            None
        }
        _ => {
            r.error(
                Some(v),
                format!("{n} is out of range: expected {min} to {max}{unit}"),
            );
            None
        }
    }
}

impl FromValue for u64 {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        read_uint(r, v, u64::MAX)
    }
}

impl FromValue for u32 {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        read_uint(r, v, u64::from(u32::MAX)).and_then(|n| u32::try_from(n).ok())
    }
}

impl FromValue for Value {
    fn from_value(_: &mut Reader, v: &Value) -> Option<Self> {
        Some(v.clone())
    }
}

impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::Array(items) = v else {
            r.type_error(v, "a list");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(x) = r.at(Seg::Index(i), |r| T::from_value(r, item)) {
                out.push(x);
            }
        }
        Some(out)
    }
}

impl<T: FromValue> FromValue for BTreeMap<String, T> {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::Object(map) = v else {
            r.type_error(v, "a table (object)");
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, item) in map {
            if let Some(x) = r.at_key(k, |r| T::from_value(r, item)) {
                out.insert(k.clone(), x);
            }
        }
        Some(out)
    }
}

/// Implements [`FromValue`] for a type parsed from a string with `FromStr<Err = String>`.
macro_rules! from_str_value {
    ($t:ty, $what:expr) => {
        impl FromValue for $t {
            fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
                let Value::String(s) = v else {
                    r.type_error(v, $what);
                    return None;
                };
                match s.parse::<$t>() {
                    Ok(x) => Some(x),
                    Err(e) => {
                        r.error(Some(v), e.to_string());
                        None
                    }
                }
            }
        }
    };
}

from_str_value!(
    crate::net::Cidr,
    "an address with prefix length such as \"10.0.0.1/24\""
);
from_str_value!(
    crate::net::MacAddr,
    "a MAC address such as \"52:54:00:12:34:56\""
);
from_str_value!(crate::pci::PciAddress, "a PCI address such as \"01:00.0\"");
from_str_value!(
    crate::color::Color,
    "a colour such as \"red\" or \"#2ecc71\""
);
from_str_value!(
    crate::measure::ByteSize,
    "a size such as \"10G\" or \"300m\""
);

impl FromValue for IpAddr {
    fn from_value(r: &mut Reader, v: &Value) -> Option<Self> {
        let Value::String(s) = v else {
            r.type_error(v, "an IP address such as \"1.1.1.1\"");
            return None;
        };
        match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                r.error(Some(v), format!("{s:?} is not an IPv4 or IPv6 address"));
                None
            }
        }
    }
}

/// Describes a value's type for error messages: `a string ("yes")`.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => format!("a boolean ({})", render(v)),
        Value::Number(_) => format!("a number ({})", render(v)),
        Value::String(_) => format!("a string ({})", render(v)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table (object)".into(),
    }
}

/// Renders a value compactly for messages, cut at 80 characters.
pub(crate) fn render(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        let cut: String = s.chars().take(77).collect();
        format!("{cut}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn test_reader_reports_unknown_keys_with_paths_and_suggestions() {
        let mut r = Reader::default();
        let v = json!({"memroy": 5, "cpus": 2, "zzz": true});
        r.at_key("nixosVms", |r| {
            r.object(&v, |r, obj| {
                let _: Option<u32> = r.field(obj, "memory");
                assert_eq!(r.field::<u32>(obj, "cpus"), Some(2));
                Some(())
            })
            .expect("object");
        });
        let msgs: Vec<String> = r.diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "nixosVms.memroy: unknown option \"memroy\"; did you mean \"memory\"?",
                "nixosVms.zzz: unknown option \"zzz\"; known options here: cpus, memory",
            ]
        );
    }

    #[test]
    fn test_reader_type_errors_name_the_value() {
        let mut r = Reader::default();
        let v = json!({"a": "yes", "b": -3, "c": [1, "x"]});
        r.object(&v, |r, obj| {
            assert_eq!(r.field::<bool>(obj, "a"), None);
            assert_eq!(r.field::<u32>(obj, "b"), None);
            assert_eq!(r.field::<Vec<String>>(obj, "c"), Some(vec!["x".to_owned()]));
            Some(())
        })
        .expect("object");
        let msgs: Vec<String> = r.diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "a: expected true or false, found a string (\"yes\")",
                "b: -3 is out of range: expected 0 to 4294967295",
                "c[0]: expected a string, found a number (1)",
            ]
        );
    }

    /// The accepted keys are the ones looked up, wherever the lookup is; unknown keys come
    /// first even though they are found last.
    #[test]
    fn test_unknown_keys_are_the_ones_the_reader_did_not_look_up() {
        let mut r = Reader::default();
        let v = json!({"a": 1, "b": true, "late": 2, "zzz": 3});
        r.object(&v, |r, obj| {
            let _: Option<String> = r.field(obj, "a");
            if obj.contains_key("b") {
                let _: Option<bool> = r.field(obj, "b");
            }
            let _ = obj.get("late");
            Some(())
        });
        let msgs: Vec<String> = r.diags.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "zzz: unknown option \"zzz\"; known options here: a, b, late",
                "a: expected a string, found a number (1)",
            ]
        );
    }

    #[test]
    fn test_render_truncates() {
        let long = Value::String("x".repeat(200));
        assert_eq!(render(&long).chars().count(), 80);
    }
}
