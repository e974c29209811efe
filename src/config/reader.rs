//! Walking a TOML table: typed reads of keys with defaults and ranges,
//! every problem collected (with its key and what was expected) instead of
//! stopping at the first.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::{Table, Value};

use super::Problem;

/// Walks a TOML table, collecting problems instead of stopping at the first.
pub(super) struct Reader<'a> {
    pub(super) problems: &'a mut Vec<Problem>,
    /// Deprecated keys still honoured: (key, what to write instead).
    pub(super) warnings: Vec<Problem>,
}

impl Reader<'_> {
    pub(super) fn problem(&mut self, key: &str, expected: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            expected: expected.into(),
        });
    }

    pub(super) fn table<'t>(&mut self, root: &'t Table, key: &str) -> Option<&'t Table> {
        match root.get(key) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                self.problem(key, "expected a table ([section])");
                None
            }
        }
    }

    /// The entries of an array of tables (`[[key]]`) in `parent`, each with
    /// its name for messages (`{section}[0]`, …). Missing: `None`, plus a
    /// problem if `required` says what was expected.
    pub(super) fn entries<'t>(
        &mut self,
        parent: &'t Table,
        key: &str,
        section: &str,
        required: Option<&str>,
    ) -> Option<Vec<(String, &'t Table)>> {
        let list = match parent.get(key) {
            None => {
                if let Some(what) = required {
                    self.problem(section, what);
                }
                return None;
            }
            Some(Value::Array(a)) if !a.is_empty() || required.is_none() => a,
            Some(_) => {
                let what = required.unwrap_or("expected [[...]] entries");
                self.problem(section, what);
                return None;
            }
        };
        let mut out = Vec::new();
        for (i, v) in list.iter().enumerate() {
            let name = format!("{section}[{i}]");
            match v.as_table() {
                Some(t) => out.push((name, t)),
                None => self.problem(&name, "expected a table"),
            }
        }
        Some(out)
    }

    /// An optional PEM file (`ca_file` keys): must exist when given.
    pub(super) fn pem_file(&mut self, t: &Table, section: &str, key: &str) -> Option<PathBuf> {
        let path = self
            .string(Some(t), section, key, None)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)?;
        if !path.is_file() {
            self.problem(
                &format!("{section}.{key}"),
                format!(
                    "expected a readable PEM file, {} does not exist",
                    path.display()
                ),
            );
        }
        Some(path)
    }

    /// A key that moved from `[old]` to `[new]`: where to read it (the new
    /// place wins), with a warning when only the old one is used.
    pub(super) fn moved<'t>(
        &mut self,
        old: Option<&'t Table>,
        new: Option<&'t Table>,
        old_section: &'static str,
        new_section: &'static str,
        key: &str,
    ) -> (&'static str, Option<&'t Table>) {
        let in_old = old.is_some_and(|t| t.contains_key(key));
        let in_new = new.is_some_and(|t| t.contains_key(key));
        if in_old {
            self.warnings.push(Problem {
                key: format!("{old_section}.{key}"),
                expected: if in_new {
                    format!("deprecated and ignored: [{new_section}] {key} is used")
                } else {
                    format!("deprecated: move it to [{new_section}] {key}")
                },
            });
        }
        if in_old && !in_new {
            (old_section, old)
        } else {
            (new_section, new)
        }
    }

    pub(super) fn unknown_keys(&mut self, t: &Table, section: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.as_str()) {
                let full = if section.is_empty() {
                    k.clone()
                } else {
                    format!("{section}.{k}")
                };
                self.problem(
                    &full,
                    format!("unknown key (known keys here: {})", known.join(", ")),
                );
            }
        }
    }

    pub(super) fn string(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: Option<&str>,
    ) -> Option<String> {
        match t.and_then(|t| t.get(key)) {
            None => default.map(str::to_string),
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    &format!("{section}.{key}"),
                    format!("expected a string, found {}", other.type_str()),
                );
                default.map(str::to_string)
            }
        }
    }

    pub(super) fn int(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match t.and_then(|t| t.get(key)) {
            None => default,
            Some(Value::Integer(i)) if (min..=max).contains(i) => *i,
            Some(v) => {
                self.problem(
                    &format!("{section}.{key}"),
                    format!("expected an integer from {min} to {max}, found {v}"),
                );
                default
            }
        }
    }

    /// An integer of seconds, as a duration.
    pub(super) fn secs(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> std::time::Duration {
        std::time::Duration::from_secs(self.int(t, section, key, default, min, max) as u64)
    }

    pub(super) fn boolean(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: bool,
    ) -> bool {
        match t.and_then(|t| t.get(key)) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.problem(
                    &format!("{section}.{key}"),
                    format!("expected true or false, found {v}"),
                );
                default
            }
        }
    }

    pub(super) fn addr(
        &mut self,
        t: Option<&Table>,
        section: &str,
        key: &str,
        default: &str,
    ) -> SocketAddr {
        let s = self
            .string(t, section, key, Some(default))
            .unwrap_or_default();
        s.parse().unwrap_or_else(|_| {
            self.problem(
                &format!("{section}.{key}"),
                format!("expected an address like \"0.0.0.0:8887\", found {s:?}"),
            );
            default.parse().expect("default address is valid")
        })
    }
}
