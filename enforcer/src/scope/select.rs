//! Which Sidecar applies to a workload, as Istio chooses (`PushContext.getSidecarScope`):
//! the oldest Sidecar of its namespace whose selector its labels match, else the oldest of
//! its namespace without a selector, else the mesh-wide one (the root namespace's without a
//! selector), else none.

use std::collections::BTreeMap;

use super::sidecar::Sidecar;

/// The Sidecars in force, ordered as Istio orders them.
#[derive(Debug, Clone, Default)]
pub struct Sidecars {
    by_ns: BTreeMap<String, Vec<Sidecar>>,
    root: String,
}

impl Sidecars {
    /// `root`: the mesh's root namespace (meshConfig `rootNamespace`, `istio-system`).
    pub fn new(all: impl IntoIterator<Item = Sidecar>, root: &str) -> Self {
        let mut by_ns: BTreeMap<String, Vec<Sidecar>> = BTreeMap::new();
        for s in all {
            by_ns.entry(s.namespace.clone()).or_default().push(s);
        }
        for list in by_ns.values_mut() {
            list.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
        }
        Self {
            by_ns,
            root: root.to_owned(),
        }
    }

    /// The Sidecar for a workload in `ns` with `labels`.
    pub fn for_workload(&self, ns: &str, labels: &BTreeMap<String, String>) -> Option<&Sidecar> {
        let own = self.by_ns.get(ns).map_or(&[][..], Vec::as_slice);
        let selected = own.iter().find(|s| {
            s.selector
                .as_ref()
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        });
        selected
            .or_else(|| own.iter().find(|s| s.selector.is_none()))
            .or_else(|| {
                self.by_ns
                    .get(&self.root)?
                    .iter()
                    .find(|s| s.selector.is_none())
            })
    }

    /// Sidecars Istio leaves undefined: more than one without a selector in a namespace.
    /// The oldest is used (as Istio does); the others draw a notice.
    pub fn shadowed(&self) -> Vec<(&Sidecar, &Sidecar)> {
        let mut out = Vec::new();
        for list in self.by_ns.values() {
            let mut plain = list.iter().filter(|s| s.selector.is_none());
            if let Some(first) = plain.next() {
                out.extend(plain.map(|s| (s, first)));
            }
        }
        out
    }

    pub fn all(&self) -> impl Iterator<Item = &Sidecar> {
        self.by_ns.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(ns: &str, name: &str, created: &str, selector: Option<&[(&str, &str)]>) -> Sidecar {
        Sidecar {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            created: created.to_owned(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            egress: None,
        }
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn istio_precedence() {
        let all = Sidecars::new(
            [
                sc("shop", "plain-new", "2026-02-01T00:00:00Z", None),
                sc("shop", "plain-old", "2026-01-01T00:00:00Z", None),
                sc(
                    "shop",
                    "web-b",
                    "2026-03-01T00:00:00Z",
                    Some(&[("app", "web")]),
                ),
                sc(
                    "shop",
                    "web-a",
                    "2026-03-01T00:00:00Z",
                    Some(&[("app", "web")]),
                ),
                sc("shop", "everyone", "2026-04-01T00:00:00Z", Some(&[])),
                sc("istio-system", "mesh", "2026-01-01T00:00:00Z", None),
                sc(
                    "istio-system",
                    "mesh-web",
                    "2025-01-01T00:00:00Z",
                    Some(&[("app", "web")]),
                ),
            ],
            "istio-system",
        );
        let pick = |ns: &str, l: &[(&str, &str)]| {
            all.for_workload(ns, &labels(l)).map(|s| s.name.as_str())
        };
        // A selector that matches wins over namespace-wide; the oldest, then the name, wins.
        assert_eq!(pick("shop", &[("app", "web"), ("v", "1")]), Some("web-a"));
        // An empty selector matches every workload and still ranks above namespace-wide.
        assert_eq!(pick("shop", &[("app", "db")]), Some("everyone"));
        // A namespace without its own: the mesh-wide default; its selector-ful one applies
        // only to the root namespace's workloads.
        assert_eq!(pick("other", &[("app", "web")]), Some("mesh"));
        assert_eq!(pick("istio-system", &[("app", "web")]), Some("mesh-web"));
        let none = Sidecars::new([sc("a", "x", "2026-01-01T00:00:00Z", None)], "istio-system");
        assert_eq!(none.for_workload("b", &labels(&[])), None);
        let shadowed: Vec<_> = all
            .shadowed()
            .iter()
            .map(|(s, by)| (s.name.clone(), by.name.clone()))
            .collect();
        assert!(shadowed.contains(&("plain-new".to_owned(), "plain-old".to_owned())));
    }

    #[test]
    fn namespace_wide_when_no_selector_matches() {
        let all = Sidecars::new(
            [
                sc(
                    "shop",
                    "web",
                    "2026-01-01T00:00:00Z",
                    Some(&[("app", "web")]),
                ),
                sc("shop", "default", "2026-05-01T00:00:00Z", None),
            ],
            "istio-system",
        );
        assert_eq!(
            all.for_workload("shop", &labels(&[("app", "db")]))
                .map(|s| s.name.as_str()),
            Some("default")
        );
    }
}
