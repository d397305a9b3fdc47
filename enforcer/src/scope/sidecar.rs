//! Istio's `Sidecar` resource as far as egress goes: which workloads it selects and which
//! hosts its `egress[].hosts` import (docs/kubernetes.md, "Sidecars"). Other fields draw a
//! notice: they shape Envoy's listeners, which egress-enforcer does not have.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::serviceentry::{Issue, names};

/// Which namespaces' hosts an `egress.hosts` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// `*`
    Any,
    /// `.`: the Sidecar's config namespace (for the mesh-wide one, the workload's).
    Own,
    Named(String),
}

/// One `namespace/host` of `egress[].hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostImport {
    pub namespaces: Namespaces,
    /// `*`, `*.suffix` or an exact name.
    pub host: String,
    /// `~ns/host` (Istio 1.31): an exclusion.
    pub exclude: bool,
}

impl HostImport {
    /// Whether this entry names `host` of a ServiceEntry in `host_ns`, for a workload whose
    /// config namespace is `own`. A wildcard ServiceEntry host is named only by an equal or
    /// wider wildcard (`*.foo.com` is not imported by `ns/bar.foo.com`).
    pub fn names(&self, own: &str, host_ns: &str, host: &str) -> bool {
        let ns = match &self.namespaces {
            Namespaces::Any => true,
            Namespaces::Own => host_ns == own,
            Namespaces::Named(n) => n == host_ns,
        };
        ns && host_subset_of(host, &self.host)
    }
}

/// Istio's `host.Name.SubsetOf`: every name `h` matches is matched by `of`.
pub fn host_subset_of(h: &str, of: &str) -> bool {
    if of == "*" {
        return true;
    }
    match of.strip_prefix('*') {
        // `*.foo.com` covers `a.foo.com`, `*.a.foo.com` and itself.
        Some(suffix) => h.ends_with(suffix),
        None => h == of,
    }
}

/// A decoded Sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sidecar {
    pub namespace: String,
    pub name: String,
    /// RFC 3339, compared as text (the API server writes one format).
    pub created: String,
    /// `workloadSelector.labels`; `Some(empty)` selects every workload but still ranks as a
    /// Sidecar with a selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// Every listener's hosts; `None` when there is no `egress` (which imports `*/*`).
    pub egress: Option<Vec<HostImport>>,
}

impl Sidecar {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether its egress hosts import `host` of an entry in `host_ns` for a workload in
    /// `own`: named by an import and by no exclusion.
    pub fn imports(&self, own: &str, host_ns: &str, host: &str) -> bool {
        let Some(egress) = &self.egress else {
            return true;
        };
        let named = |exclude: bool| {
            egress
                .iter()
                .any(|i| i.exclude == exclude && i.names(own, host_ns, host))
        };
        named(false) && !named(true)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    workload_selector: Option<Selector>,
    egress: Vec<Listener>,
    ingress: Vec<Value>,
    outbound_traffic_policy: Option<Value>,
    inbound_connection_pool: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Listener {
    port: Option<Value>,
    bind: Option<String>,
    capture_mode: Option<String>,
    hosts: Vec<String>,
}

/// Parses one `ns/host`; the error says what is wrong with it.
pub fn parse_host(s: &str) -> Result<HostImport, String> {
    let Some((ns, host)) = s.split_once('/') else {
        return Err(format!("{s:?} is not namespace/host"));
    };
    if host.contains('/') {
        return Err(format!("{s:?} has more than one /"));
    }
    let (exclude, ns) = match ns.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, ns),
    };
    let namespaces = match ns {
        "*" | "" if exclude => Namespaces::Any,
        "*" => Namespaces::Any,
        "." => Namespaces::Own,
        n if names::is_dns1123_label(n) => Namespaces::Named(n.to_owned()),
        n => return Err(format!("namespace {n:?} is not *, . or a DNS-1123 label")),
    };
    if host != "*" {
        // Istio accepts a partial wildcard in the first label (`*x.example.com`) too.
        let checked = if host.starts_with('*') {
            names::validate_wildcard_domain(host)
        } else {
            names::validate_fqdn(host)
        };
        checked.map_err(|e| format!("host {host:?}: {e}"))?;
    }
    Ok(HostImport {
        namespaces,
        host: host.to_owned(),
        exclude,
    })
}

/// Decodes and validates a Sidecar object; notices are for fields that have no meaning for
/// egress enforcement. An invalid Sidecar still claims the workloads it selects (all of its
/// namespace's, if its selector cannot be read), and imports nothing for them: dropping it
/// would give them the next Sidecar's view, or everything (fail closed). `None` only when the
/// object has no name or namespace.
pub fn decode(v: &Value) -> (Option<Sidecar>, Vec<Issue>) {
    let mut issues = Vec::new();
    let meta = |k: &str| {
        v.get("metadata")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (namespace, name) = (meta("namespace"), meta("name"));
    if namespace.is_empty() || name.is_empty() {
        issues.push(Issue::error(
            "metadata",
            "sidecar-metadata",
            "a Sidecar needs a name and a namespace",
        ));
        return (None, issues);
    }
    let claim_nothing = |selector, issues| {
        let s = Sidecar {
            namespace: namespace.clone(),
            name: name.clone(),
            created: meta("creationTimestamp"),
            selector,
            egress: Some(Vec::new()),
        };
        (Some(s), issues)
    };
    let spec: Spec = match v.get("spec").cloned().map(serde_yaml_ng::from_value) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            issues.push(Issue::error("spec", "sidecar-decode", e.to_string()));
            return claim_nothing(None, issues);
        }
        None => Spec::default(),
    };
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        issues.push(Issue::error(
            "spec",
            "sidecar-empty",
            "sidecar: empty configuration provided",
        ));
    }
    let mut imports = Vec::new();
    let last = spec.egress.len().saturating_sub(1);
    for (i, l) in spec.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        if l.port.is_none() && i != last {
            issues.push(Issue::error(
                &at,
                "sidecar-catch-all-last",
                "sidecar: the egress listener with empty port should be the last listener in the list",
            ));
        }
        if l.hosts.is_empty() {
            issues.push(Issue::error(
                format!("{at}.hosts"),
                "sidecar-no-hosts",
                "sidecar: egress listener must contain at least one host",
            ));
        }
        for (j, h) in l.hosts.iter().enumerate() {
            match parse_host(h) {
                Ok(imp) => imports.push(imp),
                Err(e) => issues.push(Issue::error(format!("{at}.hosts[{j}]"), "sidecar-host", e)),
            }
        }
        for (field, set) in [
            ("port", l.port.is_some()),
            ("bind", l.bind.is_some()),
            ("captureMode", l.capture_mode.is_some()),
        ] {
            if set {
                issues.push(Issue::notice(
                    format!("{at}.{field}"),
                    "sidecar-listener",
                    "shapes Envoy's listener only: the hosts are imported on every port their ServiceEntries declare",
                ));
            }
        }
    }
    for (field, set) in [
        ("ingress", !spec.ingress.is_empty()),
        (
            "outboundTrafficPolicy",
            spec.outbound_traffic_policy.is_some(),
        ),
        (
            "inboundConnectionPool",
            spec.inbound_connection_pool.is_some(),
        ),
    ] {
        if set {
            issues.push(Issue::notice(
                format!("spec.{field}"),
                "sidecar-ignored",
                "not used for egress enforcement",
            ));
        }
    }
    if imports.iter().any(|i| i.exclude) && imports.iter().any(|i| !i.exclude) {
        issues.push(Issue::notice(
            "spec.egress",
            "sidecar-exclusion",
            "~namespace/host excludes hosts since Istio 1.31 (before, it imported nothing): enforced as an exclusion",
        ));
    }
    if issues
        .iter()
        .any(|i| i.severity == crate::serviceentry::Severity::Error)
    {
        return claim_nothing(spec.workload_selector.map(|s| s.labels), issues);
    }
    let sidecar = Sidecar {
        namespace,
        name,
        created: meta("creationTimestamp"),
        selector: spec.workload_selector.map(|s| s.labels),
        egress: (!spec.egress.is_empty()).then_some(imports),
    };
    (Some(sidecar), issues)
}

#[cfg(test)]
#[path = "sidecar_tests.rs"]
mod tests;
