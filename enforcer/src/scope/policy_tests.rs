use std::path::Path;

use super::*;
use crate::{
    policy::visibility::Visibility,
    scope::table::{PolicyTable, Subject},
};
use crate::{
    scope::sidecar::{Sidecar, decode},
    serviceentry::{LoadReport, source::load_text},
};

fn entries(yaml: &str) -> Vec<Loaded> {
    let mut r = LoadReport::default();
    load_text(yaml, Path::new("se.yaml"), &mut r);
    assert_eq!(r.error_count(), 0, "{r:#?}");
    r.entries
}

fn se(ns: &str, name: &str, hosts: &str, export: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: {hosts}\n  ports: [{{number: 443, name: https, protocol: TLS}}]\n  resolution: NONE\n{export}"
    )
}

fn sidecar(ns: &str, name: &str, created: &str, spec: &str) -> Sidecar {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
        "metadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}\nspec:\n{spec}"
    ))
    .unwrap();
    decode(&v).0.unwrap()
}

/// The hosts a view holds, as `entry-name/host`.
fn names(es: &[Loaded], view: &BTreeSet<HostRef>) -> Vec<String> {
    view.iter()
        .map(|(i, j)| {
            format!(
                "{}/{}",
                es[*i].entry.metadata.name, es[*i].entry.spec.hosts[*j]
            )
        })
        .collect()
}

fn key(ns: &str, sidecar: Option<&str>) -> PolicyKey {
    PolicyKey {
        namespace: ns.to_owned(),
        sidecar: sidecar.map(str::to_owned),
    }
}

#[test]
fn export_to_limits_the_namespaces() {
    let es = entries(
        &(se(
            "payments",
            "pay",
            "[pay.example.com]",
            "  exportTo: ['.']\n",
        ) + &se("shared", "all", "[all.example.com]", "")
            + &se(
                "shared",
                "two",
                "[two.example.com]",
                "  exportTo: [payments, shop]\n",
            )
            + &se(
                "shared",
                "none",
                "[none.example.com]",
                "  exportTo: ['~']\n",
            )),
    );
    let sidecars = Sidecars::default();
    let scope = Scope::new(&es, &["*".to_owned()], &sidecars);
    let view = |ns| names(&es, &scope.visible(&key(ns, None)));
    assert_eq!(
        view("payments"),
        [
            "pay/pay.example.com",
            "all/all.example.com",
            "two/two.example.com"
        ]
    );
    assert_eq!(view("shop"), ["all/all.example.com", "two/two.example.com"]);
    assert_eq!(view("web"), ["all/all.example.com"]);
    // The mesh default applies to entries without exportTo.
    let private = Scope::new(&es, &[".".to_owned()], &sidecars);
    assert_eq!(
        names(&es, &private.visible(&key("web", None))),
        Vec::<String>::new()
    );
    assert_eq!(
        names(&es, &private.visible(&key("shared", None))),
        ["all/all.example.com"]
    );
}

#[test]
fn sidecars_narrow_a_view_and_policies_share_ids() {
    let es = entries(
        &(se(
            "payments",
            "pay",
            "[pay.example.com, '*.pay.example.com']",
            "",
        ) + &se("shop", "shop", "[shop.example.com]", "")
            + &se("istio-system", "mesh", "[telemetry.example.com]", "")),
    );
    let sidecars = Sidecars::new(
        [
            // Mesh-wide: own namespace and istio-system only.
            sidecar(
                "istio-system",
                "default",
                "2026-01-01T00:00:00Z",
                "  egress:\n  - hosts: ['./*', 'istio-system/*']\n",
            ),
            // The payments web workloads also reach shop's API.
            sidecar(
                "payments",
                "web",
                "2026-01-02T00:00:00Z",
                "  workloadSelector: {labels: {app: web}}\n  egress:\n  - hosts: ['./pay.example.com', 'shop/*', 'istio-system/*']\n",
            ),
        ],
        "istio-system",
    );
    let scope = Scope::new(&es, &["*".to_owned()], &sidecars);
    let labels = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let web = scope.key("payments", &labels(&[("app", "web")]));
    let db = scope.key("payments", &labels(&[("app", "db")]));
    let shop = scope.key("shop", &labels(&[]));
    assert_eq!(web.sidecar.as_deref(), Some("payments/web"));
    assert_eq!(db.sidecar.as_deref(), Some("istio-system/default"));
    assert_eq!(
        names(&es, &scope.visible(&web)),
        [
            "pay/pay.example.com",
            "shop/shop.example.com",
            "mesh/telemetry.example.com"
        ],
        "an exact import does not bring the wildcard host"
    );
    assert_eq!(
        names(&es, &scope.visible(&db)),
        [
            "pay/pay.example.com",
            "pay/*.pay.example.com",
            "mesh/telemetry.example.com"
        ],
        "the mesh-wide Sidecar's . is the workload's namespace"
    );
    assert_eq!(
        names(&es, &scope.visible(&shop)),
        ["shop/shop.example.com", "mesh/telemetry.example.com"]
    );
    // Per host, the policies that may use it; the default is not among the subjects, so
    // nothing is everyone's.
    let table = PolicyTable::assign(
        &PolicyTable::default(),
        [web.clone(), db.clone(), shop].map(Subject::Workload),
    )
    .unwrap();
    let scopes = table.entry_scopes(&scope);
    let id = |k: &PolicyKey| table.id(&Subject::Workload(k.clone())).unwrap();
    assert_eq!(
        scopes[0].hosts[0],
        Visibility::Only([id(&web), id(&db)].into())
    );
}

#[test]
fn a_host_in_several_namespaces_comes_from_the_workloads_own() {
    let es = entries(
        &(se("payments", "local", "[api.example.com]", "")
            + &se("shared", "global", "[api.example.com]", "")),
    );
    let sidecars = Sidecars::default();
    let scope = Scope::new(&es, &["*".to_owned()], &sidecars);
    assert_eq!(
        names(&es, &scope.visible(&key("payments", None))),
        ["local/api.example.com"]
    );
    assert_eq!(
        names(&es, &scope.visible(&key("web", None))),
        ["global/api.example.com"],
        "from neither: the oldest entry's namespace (no timestamps here: by name)"
    );
    let dated = entries(
        &(se("payments", "local", "[api.example.com]", "").replace(
            "namespace: payments}",
            "namespace: payments, creationTimestamp: '2026-01-01T00:00:00Z'}",
        ) + &se("shared", "global", "[api.example.com]", "").replace(
            "namespace: shared}",
            "namespace: shared, creationTimestamp: '2026-02-01T00:00:00Z'}",
        )),
    );
    let scope = Scope::new(&dated, &["*".to_owned()], &sidecars);
    assert_eq!(
        names(&dated, &scope.visible(&key("web", None))),
        ["local/api.example.com"],
        "the older entry keeps the host: a newer one elsewhere cannot take it over"
    );
}

#[test]
fn units_see_their_own_paths_and_their_namespaces_exports() {
    let text = se("web", "site", "[site.example.com]", "  exportTo: [\".\"]\n")
        + &se("api", "partner", "[partner.example.com]", "")
        + &se("ops", "metrics", "[metrics.example.com]", "");
    let mut es = entries(&text);
    // The third entry sits in the ops unit's own directory.
    es[2].origin.file = "/etc/ops/m.yaml".into();
    let sidecars = Sidecars::default();
    let units = [
        UnitScope {
            cgroup: "system.slice/web.service".into(),
            namespaces: vec!["web".into()],
            paths: vec![],
        },
        UnitScope {
            cgroup: "system.slice/ops.service".into(),
            namespaces: vec![],
            paths: vec!["/etc/ops".into()],
        },
    ];
    let scope =
        Scope::new(&es, &["*".to_owned()], &sidecars).with_units(&units, vec![true, true, false]);
    let unit = |c: &str| Subject::Unit(c.to_owned());
    let seen = |s: &Subject| names(&es, &scope.visible_to(s));
    assert_eq!(
        seen(&unit("system.slice/web.service")),
        ["site/site.example.com", "partner/partner.example.com"]
    );
    assert_eq!(
        seen(&unit("system.slice/ops.service")),
        ["metrics/metrics.example.com"],
        "its own path only: it names no namespace"
    );
    assert_eq!(
        seen(&Subject::Default),
        ["site/site.example.com", "partner/partner.example.com"],
        "the default ignores exportTo but not units' own paths"
    );
    let table = PolicyTable::assign(
        &PolicyTable::default(),
        [
            Subject::Default,
            unit("system.slice/web.service"),
            unit("system.slice/ops.service"),
        ],
    )
    .unwrap();
    let scopes = table.entry_scopes(&scope);
    let id = |s: &Subject| table.id(s).unwrap();
    let web_and_default =
        Visibility::Only([id(&Subject::Default), id(&unit("system.slice/web.service"))].into());
    assert_eq!(scopes[0].entry, web_and_default);
    assert_eq!(scopes[1].entry, web_and_default);
    assert_eq!(
        scopes[2].entry,
        Visibility::Only([id(&unit("system.slice/ops.service"))].into())
    );
    // Seen by all three: everyone's, no policy lookup in the kernel.
    es[2].origin.file = "/etc/shared/m.yaml".into();
    let units = [UnitScope {
        cgroup: "system.slice/web.service".into(),
        namespaces: vec!["ops".into()],
        paths: vec![],
    }];
    let scope = Scope::new(&es, &["*".to_owned()], &sidecars).with_units(&units, vec![true; 3]);
    let table = PolicyTable::assign(
        &PolicyTable::default(),
        [Subject::Default, unit("system.slice/web.service")],
    )
    .unwrap();
    assert_eq!(table.entry_scopes(&scope)[2].entry, Visibility::Everyone);
}
