use super::*;

fn sidecar(yaml: &str) -> (Option<Sidecar>, Vec<Issue>) {
    let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
    decode(&v)
}

fn errors(issues: &[Issue]) -> Vec<&str> {
    issues
        .iter()
        .filter(|i| i.severity == crate::serviceentry::Severity::Error)
        .map(|i| i.rule)
        .collect()
}

const HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: prod-us1, creationTimestamp: '2026-01-01T00:00:00Z'}\n";

/// Istio's documentation example: a namespace-wide Sidecar importing its own namespace,
/// prod-apis and istio-system.
#[test]
fn the_documented_namespace_default() {
    let (s, issues) = sidecar(&format!(
        "{HEAD}spec:\n  egress:\n  - hosts: [prod-us1/*, prod-apis/*, istio-system/*]\n"
    ));
    assert!(errors(&issues).is_empty(), "{issues:?}");
    let s = s.unwrap();
    assert_eq!(s.selector, None);
    assert!(s.imports("prod-us1", "prod-us1", "api.example.com"));
    assert!(s.imports("prod-us1", "prod-apis", "*.example.com"));
    assert!(!s.imports("prod-us1", "other", "api.example.com"));
}

#[test]
fn host_forms() {
    let (s, issues) = sidecar(&format!(
        "{HEAD}spec:\n  egress:\n  - hosts: ['./*.foo.com', '*/bar.example.com', 'shop/*']\n"
    ));
    assert!(errors(&issues).is_empty(), "{issues:?}");
    let s = s.unwrap();
    // `.` is the workload's namespace.
    assert!(s.imports("prod-us1", "prod-us1", "a.foo.com"));
    assert!(s.imports("prod-us1", "prod-us1", "*.a.foo.com"));
    assert!(s.imports("prod-us1", "prod-us1", "*.foo.com"));
    assert!(!s.imports("prod-us1", "other", "a.foo.com"));
    // Exact names match exactly; a wildcard host is not covered by one of its names.
    assert!(s.imports("prod-us1", "anything", "bar.example.com"));
    assert!(!s.imports("prod-us1", "anything", "*.example.com"));
    assert!(s.imports("prod-us1", "shop", "whatever.io"));
}

/// Istio 1.31: `~ns/host` excludes, a bare `~` is any namespace.
#[test]
fn exclusions() {
    let (s, issues) = sidecar(&format!(
        "{HEAD}spec:\n  egress:\n  - hosts: ['*/*', '~legacy/*', '~/*.internal.example.com']\n"
    ));
    assert!(errors(&issues).is_empty(), "{issues:?}");
    assert!(issues.iter().any(|i| i.rule == "sidecar-exclusion"));
    let s = s.unwrap();
    assert!(s.imports("a", "b", "api.example.com"));
    assert!(!s.imports("a", "legacy", "api.example.com"));
    assert!(!s.imports("a", "b", "db.internal.example.com"));
    // `~/*` alone imports nothing.
    let (none, _) = sidecar(&format!("{HEAD}spec:\n  egress:\n  - hosts: ['~/*']\n"));
    assert!(!none.unwrap().imports("a", "a", "x.example.com"));
}

#[test]
fn no_egress_imports_everything_and_selectors_decode() {
    let (s, issues) = sidecar(&format!(
        "{HEAD}spec:\n  workloadSelector: {{labels: {{app: web}}}}\n  outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}\n"
    ));
    assert!(errors(&issues).is_empty(), "{issues:?}");
    assert!(issues.iter().any(|i| i.rule == "sidecar-ignored"));
    let s = s.unwrap();
    assert_eq!(s.egress, None);
    assert!(s.imports("a", "z", "anything.example.com"));
    assert_eq!(s.selector.unwrap()["app"], "web");
}

#[test]
fn invalid_sidecars_are_refused_with_the_field() {
    let bad = |spec: &str| {
        let (s, issues) = sidecar(&format!("{HEAD}spec:\n{spec}"));
        // Still claims its workloads, importing nothing.
        let s = s.expect("an invalid Sidecar still claims its workloads");
        assert!(
            !s.imports("prod-us1", "prod-us1", "a.example.com"),
            "{spec}"
        );
        errors(&issues)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(bad("  {}\n"), ["sidecar-empty"]);
    assert_eq!(bad("  egress:\n  - hosts: [noslash]\n"), ["sidecar-host"]);
    assert_eq!(bad("  egress:\n  - hosts: [a/b/c]\n"), ["sidecar-host"]);
    assert_eq!(
        bad("  egress:\n  - hosts: ['BAD_NS/*']\n"),
        ["sidecar-host"]
    );
    assert_eq!(bad("  egress:\n  - hosts: []\n"), ["sidecar-no-hosts"]);
    assert_eq!(
        bad(
            "  egress:\n  - hosts: ['*/*']\n  - hosts: ['*/*']\n    port: {number: 80, protocol: HTTP, name: http}\n"
        ),
        ["sidecar-catch-all-last"]
    );
    assert_eq!(bad("  egress: 7\n"), ["sidecar-decode"]);
    let (none, issues) = sidecar("spec: {egress: [{hosts: ['*/*']}]}\n");
    assert!(none.is_none());
    assert_eq!(errors(&issues), ["sidecar-metadata"]);
}

#[test]
fn partial_wildcards_in_the_first_label() {
    let (s, issues) = sidecar(&format!(
        "{HEAD}spec:\n  egress:\n  - hosts: ['prod/*x.example.com']\n"
    ));
    assert!(errors(&issues).is_empty(), "{issues:?}");
    let s = s.unwrap();
    assert!(s.imports("a", "prod", "ax.example.com"));
    assert!(!s.imports("a", "prod", "ay.example.com"));
}
