//! `exportTo`: which namespaces see a ServiceEntry, as Istio decides it
//! (`PushContext.IsServiceVisible`; docs/kubernetes.md, "Visibility").

use std::collections::BTreeSet;

/// The namespaces a ServiceEntry is exported to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTo {
    /// `"*"`: every namespace.
    All,
    /// `"."` (the entry's own namespace) and namespaces by name; empty after `"~"`.
    Some { own: bool, names: BTreeSet<String> },
}

impl ExportTo {
    /// The entry's `exportTo`, or the mesh default (`kubernetes.defaultExportTo`, like
    /// meshConfig `defaultServiceExportTo`) when it has none. Validation has already refused
    /// `~` or `*` combined with anything else.
    pub fn of(export_to: &[String], default: &[String]) -> Self {
        let list = if export_to.is_empty() {
            default
        } else {
            export_to
        };
        if list.iter().any(|e| e == "*") {
            return Self::All;
        }
        Self::Some {
            own: list.iter().any(|e| e == "."),
            names: list
                .iter()
                .filter(|e| *e != "." && *e != "~")
                .cloned()
                .collect(),
        }
    }

    /// Whether a workload in `client_ns` sees an entry of `entry_ns` exported this way.
    pub fn visible_to(&self, entry_ns: &str, client_ns: &str) -> bool {
        match self {
            Self::All => true,
            Self::Some { own, names } => {
                (*own && entry_ns == client_ns) || names.contains(client_ns)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(list: &[&str]) -> ExportTo {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        ExportTo::of(&list, &["*".to_owned()])
    }

    #[test]
    fn istio_visibility() {
        assert!(of(&[]).visible_to("a", "b"), "the mesh default is *");
        assert!(of(&["*"]).visible_to("a", "b"));
        assert!(of(&["."]).visible_to("a", "a"));
        assert!(!of(&["."]).visible_to("a", "b"));
        assert!(of(&["b", "c"]).visible_to("a", "c"));
        assert!(
            !of(&["b", "c"]).visible_to("a", "a"),
            "not its own namespace unless listed"
        );
        assert!(of(&[".", "b"]).visible_to("a", "a"));
        assert!(
            !of(&["~"]).visible_to("a", "a"),
            "~: nobody, not even itself"
        );
    }

    #[test]
    fn the_default_applies_only_to_entries_without_export_to() {
        let dot = ExportTo::of(&[], &[".".to_owned()]);
        assert!(dot.visible_to("a", "a") && !dot.visible_to("a", "b"));
        let own = ExportTo::of(&["b".to_owned()], &[".".to_owned()]);
        assert!(own.visible_to("a", "b") && !own.visible_to("a", "a"));
    }
}
