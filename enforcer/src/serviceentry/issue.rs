//! What validation reports: errors reject a resource, warnings and notices do not.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Informational: something egress-enforcer does not act on (yet).
    Notice,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Notice => "notice",
        })
    }
}

/// One finding about one field. `rule` names the check (stable, for grepping and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    /// Field path such as `spec.ports[1].targetPort`; empty for the whole resource.
    pub path: String,
    pub rule: &'static str,
    pub message: String,
}

impl Issue {
    pub fn error(path: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            path: path.into(),
            rule,
            message: message.into(),
        }
    }

    pub fn warning(
        path: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(path, rule, message)
        }
    }

    pub fn notice(path: impl Into<String>, rule: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Notice,
            ..Self::error(path, rule, message)
        }
    }
}

/// `path: message [rule]`, without the path when the issue is about the whole resource.
impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{} [{}]", self.message, self.rule)
    }
}

/// `parent.field`, `parent[3]`, or `parent["odd/key"]` for keys that are not identifiers.
pub fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

pub fn key(parent: &str, k: &str) -> String {
    let simple = !k.is_empty()
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if simple {
        join(parent, k)
    } else {
        format!("{parent}[{k:?}]")
    }
}
