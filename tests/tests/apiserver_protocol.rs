//! The fake API server speaks the real protocol: its documents deserialize into the
//! Kubernetes API types (and serialize back unchanged, which catches misspelled keys), kube's
//! own client lists, pages and watches it, and kubectl reads it. No root needed.

use std::{process::Command, time::Duration};

use e2e::fake_apiserver::{FakeApiServer, fixtures};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResourceList, APIVersions, Status,
};
use kube::{
    Client,
    api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery::ApiResource,
};
use serde_json::{Value, json};

/// `v` deserializes into `T` and serializes back to the same JSON (k8s-openapi adds the
/// `apiVersion` that the real server leaves out of some discovery documents).
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{} does not deserialize: {e}", std::any::type_name::<T>()));
    let mut back = serde_json::to_value(&typed).expect("serializes");
    strip_type_meta(&mut back, v);
    assert_eq!(
        &back,
        v,
        "{} changes on a round trip: a key the type does not know",
        std::any::type_name::<T>()
    );
}

/// Removes the `apiVersion` and `kind` that k8s-openapi writes on every typed object (nested
/// ones included) where the original has none: the real server leaves them out of discovery
/// documents.
fn strip_type_meta(back: &mut Value, original: &Value) {
    match (back, original) {
        (Value::Object(b), Value::Object(o)) => {
            for k in ["apiVersion", "kind"] {
                if !o.contains_key(k) {
                    b.remove(k);
                }
            }
            for (k, bv) in b.iter_mut() {
                if let Some(ov) = o.get(k) {
                    strip_type_meta(bv, ov);
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => {
            for (bv, ov) in b.iter_mut().zip(o) {
                strip_type_meta(bv, ov);
            }
        }
        _ => {}
    }
}

#[test]
fn discovery_documents_are_the_real_types() {
    let versions = ["v1".to_owned(), "v1beta1".to_owned(), "v1alpha3".to_owned()];
    round_trips::<APIVersions>(&fixtures::api_versions());
    round_trips::<APIGroupList>(&fixtures::api_group_list(&versions));
    round_trips::<APIGroup>(&fixtures::api_group(&versions));
    for v in &versions {
        round_trips::<APIResourceList>(&fixtures::istio_resources(v));
    }
    round_trips::<APIResourceList>(&fixtures::core_resources());
    round_trips::<Status>(&e2e::fake_apiserver::status_object(
        410,
        "Expired",
        "too old resource version: 5 (10)",
    ));
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(fixtures::pod(
        "payments",
        "web-0",
        "4b1c9f7e-1111-4aaa-8bbb-000000000001",
        "node-a",
        json!({"app": "web"}),
    ))
    .expect("a Pod");
    assert_eq!(
        pod.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-a")
    );
}

fn api_spec() -> Value {
    json!({
        "hosts": ["api.example.com"],
        "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
        "resolution": "DNS",
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn client(server: &FakeApiServer, dir: &std::path::Path) -> Client {
    let file = Kubeconfig::read_from(server.kubeconfig(dir)).expect("the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .expect("a client config");
    Client::try_from(config).expect("a client")
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ee-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("a temp dir");
    d
}

/// kube's client against the fake: discovery, a list in pages, a watch with every kind of
/// frame, and 410 as an ERROR frame in a 200 response.
#[test]
fn kube_lists_pages_and_watches_the_fake() {
    let server = FakeApiServer::start(&["v1", "v1alpha3"]);
    for i in 0..5 {
        server.apply(
            "serviceentries",
            fixtures::service_entry("payments", &format!("api-{i}"), api_spec()),
        );
    }
    let dir = tempdir("kube-protocol");
    runtime().block_on(async {
        let client = client(&server, &dir).await;
        let group = kube::discovery::group(&client, "networking.istio.io")
            .await
            .unwrap();
        assert_eq!(group.preferred_version_or_latest(), "v1");
        let (ar, caps) = group.recommended_kind("ServiceEntry").unwrap();
        assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);

        // Pages of two, each a consistent part of one list.
        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let token = first.metadata.continue_.clone().expect("a continue token");
        let mut names: Vec<String> = first
            .items
            .iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect();
        let mut next = Some(token);
        while let Some(t) = next {
            let page = api
                .list(&ListParams::default().limit(2).continue_token(&t))
                .await
                .unwrap();
            names.extend(page.items.iter().filter_map(|o| o.metadata.name.clone()));
            next = page.metadata.continue_.filter(|c| !c.is_empty());
        }
        assert_eq!(names, ["api-0", "api-1", "api-2", "api-3", "api-4"]);
        let rv = first.metadata.resource_version.clone().unwrap();

        let mut stream = api
            .watch(&WatchParams::default().timeout(10), &rv)
            .await
            .unwrap()
            .boxed();
        server.apply(
            "serviceentries",
            fixtures::service_entry(
                "payments",
                "api-0",
                json!({"hosts": ["changed.example.com"]}),
            ),
        );
        server.delete("serviceentries", "payments", "api-1");
        server.bookmark();
        let mut kinds = Vec::new();
        while kinds.len() < 3 {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
                .await
                .expect("an event within 5 s")
                .unwrap()
                .expect("the stream goes on");
            kinds.push(match ev {
                WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.name.unwrap()),
                WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.unwrap()),
                WatchEvent::Bookmark(b) => {
                    assert_eq!(
                        b.metadata.resource_version,
                        server.resource_version().to_string()
                    );
                    "BOOKMARK".to_owned()
                }
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(kinds, ["MODIFIED api-0", "DELETED api-1", "BOOKMARK"]);

        // A watch from a compacted version: 200, then one ERROR frame with 410 Expired.
        server.expire(|s| {
            s.apply(
                "serviceentries",
                fixtures::service_entry("payments", "late", api_spec()),
            );
        });
        let mut old = api
            .watch(&WatchParams::default().timeout(10), &rv)
            .await
            .expect("the watch itself is a 200")
            .boxed();
        match old.try_next().await.unwrap() {
            Some(WatchEvent::Error(e)) => {
                assert_eq!(e.code, 410);
                assert_eq!(e.reason, "Expired");
            }
            other => panic!("want an ERROR frame, got {other:?}"),
        }

        // Another served version shows the same objects under its own apiVersion.
        let alpha = ApiResource {
            version: "v1alpha3".into(),
            api_version: "networking.istio.io/v1alpha3".into(),
            ..ar.clone()
        };
        let listed = Api::<DynamicObject>::all_with(client.clone(), &alpha)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            listed
                .items
                .iter()
                .all(|o| o.types.as_ref().unwrap().api_version == "networking.istio.io/v1alpha3")
        );
    });
    let uris: Vec<String> = server.requests().into_iter().map(|r| r.uri).collect();
    assert!(
        uris.iter()
            .any(|u| u.contains("watch=true") && u.contains("resourceVersion=")),
        "{uris:?}"
    );
}

/// Faults come back as the real server's Status objects, which kube turns into typed errors.
#[test]
fn faults_are_status_objects() {
    let server = FakeApiServer::start(&["v1"]);
    let dir = tempdir("kube-faults");
    runtime().block_on(async {
        let client = client(&server, &dir).await;
        let ar = kube::discovery::pinned_kind(
            &client,
            &kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "ServiceEntry"),
        )
        .await
        .unwrap()
        .0;
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        for code in [403u16, 500] {
            server.fail("serviceentries", code);
            match api.list(&ListParams::default()).await {
                Err(kube::Error::Api(s)) => assert_eq!(s.code, code),
                other => panic!("want a {code} Status, got {other:?}"),
            }
            server.heal("serviceentries");
        }
        assert!(api.list(&ListParams::default()).await.is_ok());
        // A version the server does not serve is a 404 at discovery.
        assert!(
            kube::discovery::pinned_kind(
                &client,
                &kube::api::GroupVersionKind::gvk("networking.istio.io", "v1beta1", "ServiceEntry"),
            )
            .await
            .is_err()
        );
    });
}

/// Pods: metadata only when asked (as the daemon asks), and only this node's.
#[test]
fn pods_by_node_as_metadata() {
    let server = FakeApiServer::start(&["v1"]);
    server.apply(
        "pods",
        fixtures::pod(
            "payments",
            "web-0",
            "4b1c9f7e-1111-4aaa-8bbb-000000000001",
            "node-a",
            json!({"app": "web"}),
        ),
    );
    server.apply(
        "pods",
        fixtures::pod(
            "payments",
            "web-1",
            "4b1c9f7e-1111-4aaa-8bbb-000000000002",
            "node-b",
            json!({"app": "web"}),
        ),
    );
    let dir = tempdir("kube-pods");
    runtime().block_on(async {
        let client = client(&server, &dir).await;
        let api: Api<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Pod>> =
            Api::all(client);
        let listed = api
            .list_metadata(&ListParams::default().fields("spec.nodeName=node-a"))
            .await
            .unwrap();
        let names: Vec<_> = listed
            .items
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        assert_eq!(names, ["web-0"]);
        assert_eq!(
            listed.items[0].metadata.labels.as_ref().unwrap()["app"],
            "web"
        );
    });
}

/// kubectl, a real client, reads the fake: discovery (falling back from aggregated
/// discovery), a list, and a watch.
#[test]
fn kubectl_reads_the_fake() {
    let server = FakeApiServer::start(&["v1", "v1beta1", "v1alpha3"]);
    server.apply(
        "serviceentries",
        fixtures::service_entry("payments", "api", api_spec()),
    );
    let dir = tempdir("kubectl");
    let kubeconfig = server.kubeconfig(&dir);
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .env("KUBECACHEDIR", dir.join("cache"))
            .output()
            .expect("kubectl runs (it comes with the machine image)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = kubectl(&[
        "get",
        "serviceentries.networking.istio.io",
        "-A",
        "-o",
        "json",
    ]);
    assert!(ok, "kubectl get failed: {err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "api");
    assert_eq!(list["items"][0]["spec"]["hosts"][0], "api.example.com");

    let (ok, out, err) = kubectl(&[
        "get",
        "se",
        "-n",
        "payments",
        "api",
        "-o",
        "jsonpath={.spec.ports[0].number}",
    ]);
    assert!(ok && out == "443", "kubectl get one object: {out} {err}");
    let (ok, _, err) = kubectl(&["get", "se", "-n", "payments", "nope"]);
    assert!(!ok && err.contains("NotFound"), "a missing object: {err}");

    // A watch: kubectl prints the object, then the change, then stops at its timeout.
    let watcher = std::thread::spawn({
        let kubeconfig = kubeconfig.clone();
        let cache = dir.join("cache");
        move || {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "get",
                    "se",
                    "-A",
                    "--watch",
                    "-o",
                    "json",
                    "--request-timeout=4s",
                ])
                .env("KUBECACHEDIR", cache)
                .output()
                .expect("kubectl watch")
        }
    });
    // kubectl lists first; change the object once its watch is open.
    let start = std::time::Instant::now();
    while server.count_requests("watch=true") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "kubectl never started watching"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.apply(
        "serviceentries",
        fixtures::service_entry("payments", "api", json!({"hosts": ["moved.example.com"]})),
    );
    let out = watcher.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("api.example.com") && text.contains("moved.example.com"),
        "kubectl saw the object and its change: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
