use std::path::Path;

use super::*;
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
    // Two namespaces with the same view (nothing of their own) share one id.
    let p = Policies::assign(
        &scope,
        [
            web.clone(),
            db.clone(),
            shop,
            key("a", Some("istio-system/default")),
            key("b", Some("istio-system/default")),
        ],
    );
    assert_eq!(p.views.len(), 4);
    assert_eq!(
        p.ids[&key("a", Some("istio-system/default"))],
        p.ids[&key("b", Some("istio-system/default"))]
    );
    assert_ne!(p.ids[&web], p.ids[&db]);
    let users: Vec<u32> = p.using((0, 0)).collect();
    assert_eq!(users, [p.ids[&web], p.ids[&db]]);
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
        ["local/api.example.com", "global/api.example.com"],
        "from neither: both (Istio picks one arbitrarily)"
    );
}
