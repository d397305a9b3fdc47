//! This node's pods as scoping needs them: identity, namespace and labels, from metadata-only
//! watches (docs/kubernetes.md, "Pods and cgroups").

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use serde::{Deserialize, Serialize};

use super::store::{Key, Rejected};

/// A mirror pod (of a static pod) carries the kubelet's UID of the real pod here: the
/// cgroup is named after that one.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    /// The UID its cgroup is named after (a static pod's manifest hash for mirror pods).
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

pub fn decode(obj: &PartialObjectMeta<Pod>) -> (Key, Result<PodMeta, Rejected>) {
    let m = &obj.metadata;
    let key = (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    );
    // Only the kubelet writes a real one (a manifest hash, 32 hex digits); anything else
    // could name another pod's cgroup.
    let mirror = m
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR_ANNOTATION))
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let uid = mirror
        .cloned()
        .or_else(|| m.uid.clone())
        .unwrap_or_default();
    if key.0.is_empty() || key.1.is_empty() || uid.is_empty() {
        return (
            key,
            Err(Rejected {
                resource_version: m.resource_version.clone().unwrap_or_default(),
                errors: vec!["metadata: a pod needs a namespace, a name and a uid".to_owned()],
            }),
        );
    }
    let pod = PodMeta {
        namespace: key.0.clone(),
        name: key.1.clone(),
        uid,
        labels: m.labels.clone().unwrap_or_default(),
    };
    (key, Ok(pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> PartialObjectMeta<Pod> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_mirror_pod_is_known_by_its_static_pods_uid() {
        let (_, p) = decode(&meta(
            r#"{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"etcd-n1","namespace":"kube-system","uid":"0b7c5c55-0000-4000-8000-000000000001","labels":{"component":"etcd"},"annotations":{"kubernetes.io/config.mirror":"3f1d4b8a6e2c4d0f9a7b5c3e1d2f4a6b"}}}"#,
        ));
        let p = p.unwrap();
        assert_eq!(p.uid, "3f1d4b8a6e2c4d0f9a7b5c3e1d2f4a6b");
        assert_eq!(p.labels["component"], "etcd");
        let (_, bad) = decode(&meta(
            r#"{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"x","namespace":"y"}}"#,
        ));
        assert!(bad.is_err());
        // Anything but a manifest hash would let a pod name another pod's cgroup.
        let (_, forged) = decode(&meta(
            r#"{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"x","namespace":"y","uid":"0b7c5c55-0000-4000-8000-000000000002","annotations":{"kubernetes.io/config.mirror":"11111111-1111-4111-8111-111111111111"}}}"#,
        ));
        assert_eq!(forged.unwrap().uid, "0b7c5c55-0000-4000-8000-000000000002");
    }
}
