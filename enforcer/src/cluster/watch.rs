//! One resource from the API server: discovery of the served version, then list and watch
//! (kube's watcher, with the daemon's own backoff) into a [`Store`] of last valid versions.
//! A relist (after `410 Gone`, or a failed list) is buffered and swapped in whole.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use kube::{api::Api, discovery::ApiResource, runtime::watcher};
use tracing::{info, warn};

use super::{
    status::{RejectedRow, Status},
    store::{Change, Key, Rejected, Store},
};

pub const GROUP: &str = "networking.istio.io";
/// In order of preference: the first one the server serves is used.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
pub const SERVICEENTRIES: &str = "serviceentries";
pub const SIDECARS: &str = "sidecars";
pub const PODS: &str = "pods";

/// The first of [`VERSIONS`] whose resources include `kind`.
pub fn pick_version<'a>(
    served: impl IntoIterator<Item = (&'a str, Vec<String>)>,
    kind: &str,
) -> Option<&'static str> {
    let served: Vec<(&str, Vec<String>)> = served.into_iter().collect();
    VERSIONS.into_iter().find(|v| {
        served
            .iter()
            .any(|(sv, kinds)| sv == v && kinds.iter().any(|k| k == kind))
    })
}

async fn discover(client: &kube::Client, kind: &str) -> anyhow::Result<ApiResource> {
    let group = kube::discovery::group(client, GROUP).await?;
    let served: Vec<(String, Vec<String>)> = group
        .versions()
        .map(|v| {
            let kinds = group
                .versioned_resources(v)
                .into_iter()
                .map(|(ar, _)| ar.kind)
                .collect();
            (v.to_owned(), kinds)
        })
        .collect();
    let version = pick_version(served.iter().map(|(v, k)| (v.as_str(), k.clone())), kind)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{GROUP} serves no {kind} in {} (is Istio's CRD installed?)",
                VERSIONS.join(", ")
            )
        })?;
    group
        .versioned_resources(version)
        .into_iter()
        .map(|(ar, _)| ar)
        .find(|ar| ar.kind == kind)
        .ok_or_else(|| anyhow::anyhow!("{kind} vanished from {GROUP}/{version}"))
}

/// Discovery, retried with backoff until it succeeds.
pub async fn discover_until_found(
    client: &kube::Client,
    kind: &str,
    resource: &'static str,
    status: &Status,
) -> ApiResource {
    let mut backoff = Backoff::default();
    loop {
        match discover(client, kind).await {
            Ok(ar) => {
                status.update(resource, |s| s.version = Some(ar.version.clone()));
                info!(resource, version = %ar.version, "watching the API server");
                return ar;
            }
            Err(e) => {
                let msg = format!("discovery: {e:#}");
                if status.failed(resource, msg.clone(), std::time::Instant::now()) {
                    warn!("{msg} (retrying with backoff; the policy in force stays)");
                }
                tokio::time::sleep(backoff.wait()).await;
            }
        }
    }
}

/// Waits between failed attempts: 0.8 s doubling to 30 s, each stretched by up to a quarter
/// so that the nodes of a cluster do not retry in step.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(800))
    }
}

impl Backoff {
    pub fn wait(&mut self) -> Duration {
        let base = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// Lists and watches one resource until the daemon stops, keeping the last valid version of
/// each object in a store; `publish` sees the store after every event (`true`: the set in
/// force changed). A relist is buffered and swapped in whole.
pub async fn follow<K, T>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    status: Arc<Status>,
    mut decode: impl FnMut(&K) -> (Key, Result<T, Rejected>),
    mut publish: impl FnMut(&Store<T>, bool),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Clone + PartialEq,
{
    // kube's own backoff resets on any item, and `Init` comes before every list attempt: a
    // failing relist would be retried at the shortest interval forever. Only real progress
    // (objects or a complete list) resets this one.
    let mut events = watcher(api, config).boxed();
    let mut backoff = Backoff::default();
    let mut store: Store<T> = Store::default();
    while let Some(event) = events.next().await {
        let now = std::time::Instant::now();
        let event = match event {
            Ok(watcher::Event::Init) => {
                store.begin_relist();
                continue;
            }
            Ok(e) => e,
            Err(e) => {
                let msg = format!("{e}");
                // A new failing spell (a request succeeded since the last failure, which
                // the client layer records) starts again from the shortest wait.
                if status.failed(resource, msg.clone(), now) {
                    backoff = Backoff::default();
                    warn!(
                        resource,
                        "watch failed, retrying with backoff (the policy in force stays): {msg}"
                    );
                }
                tokio::time::sleep(backoff.wait()).await;
                continue;
            }
        };
        backoff = Backoff::default();
        status.ok(resource, now);
        let changed = match event {
            watcher::Event::Init => continue,
            watcher::Event::InitApply(o) => {
                let (key, decoded) = decode(&o);
                store.apply(key, decoded);
                continue;
            }
            watcher::Event::InitDone => {
                let first = !store.synced();
                store.finish_relist() || first
            }
            watcher::Event::Apply(o) => {
                let (key, decoded) = decode(&o);
                store.apply(key, decoded) != Change::Same
            }
            watcher::Event::Delete(o) => store.delete(&object_key(&o)) == Change::Changed,
        };
        publish(&store, changed);
    }
}

/// `namespace/name` of any object.
pub fn object_key(obj: &impl kube::Resource) -> Key {
    let m = obj.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// The store's refused objects, for the status.
pub fn rejected_rows<T: Clone + PartialEq>(store: &Store<T>) -> Vec<RejectedRow> {
    store
        .rejected()
        .map(|(k, r, older)| RejectedRow {
            object: format!("{}/{}", k.0, k.1),
            rejected: r.clone(),
            older_in_force: older,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_preferred_version_serving_the_kind() {
        let served = |list: &[(&'static str, &[&str])]| {
            list.iter()
                .map(|(v, kinds)| (*v, kinds.iter().map(|k| (*k).to_owned()).collect()))
                .collect::<Vec<(&str, Vec<String>)>>()
        };
        let all = served(&[
            ("v1alpha3", &["ServiceEntry", "Sidecar"]),
            ("v1", &["ServiceEntry"]),
        ]);
        assert_eq!(pick_version(all, "ServiceEntry"), Some("v1"));
        let old = served(&[("v1alpha3", &["ServiceEntry"]), ("v1beta1", &["Gateway"])]);
        assert_eq!(pick_version(old, "ServiceEntry"), Some("v1alpha3"));
        assert_eq!(
            pick_version(served(&[("v2", &["ServiceEntry"])]), "ServiceEntry"),
            None
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| b.wait()).collect();
        assert!(waits[0] >= Duration::from_millis(800) && waits[0] <= Duration::from_millis(1000));
        assert!(waits[1] >= Duration::from_millis(1600));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(37_500)));
        assert!(waits[9] >= Duration::from_secs(30));
    }
}
