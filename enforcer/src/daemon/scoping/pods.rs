//! Pods' cgroups on this node: the kubelet's tree under each enforced `kubepods` cgroup,
//! read for pod directories (directly, or in a QoS class directory) and the container
//! cgroups right below them (docs/kubernetes.md, "Pods and cgroups").

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::scope::kubelet::pod_of;

/// One pod's policy, and its name for `inspect` and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    pub policy: u32,
    /// `namespace/name`.
    pub pod: String,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Found {
    /// cgroup id → policy, for the pods the daemon knows.
    pub mapped: BTreeMap<u64, u32>,
    /// cgroup id → path (relative to the mount) and pod, for the record.
    pub names: BTreeMap<u64, (String, String)>,
    /// Directories where new pods or containers appear.
    pub watch: Vec<PathBuf>,
}

fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Scans `kubepods`: `(root, dir)` pairs, `dir` being an enforced kubepods cgroup and `root`
/// its parent (both relative to `mount`).
pub fn scan(
    mount: &Path,
    kubepods: &[(String, String)],
    pods: &BTreeMap<String, PodPolicy>,
) -> Found {
    let mut found = Found::default();
    for (root, dir) in kubepods {
        found.watch.push(mount.join(dir));
        for child in subdirs(&mount.join(dir)) {
            let rel = format!("{dir}/{child}");
            match pod_of(root, &rel) {
                Some(_) => pod_dir(mount, root, &rel, pods, &mut found),
                // A QoS class directory (anything else below kubepods names no pod).
                None => {
                    found.watch.push(mount.join(&rel));
                    for p in subdirs(&mount.join(&rel)) {
                        pod_dir(mount, root, &format!("{rel}/{p}"), pods, &mut found);
                    }
                }
            }
        }
    }
    found
}

/// A pod's directory and the containers in it.
fn pod_dir(
    mount: &Path,
    root: &str,
    rel: &str,
    pods: &BTreeMap<String, PodPolicy>,
    found: &mut Found,
) {
    let Some(pc) = pod_of(root, rel).filter(|p| p.pod_level) else {
        return;
    };
    found.watch.push(mount.join(rel));
    let Some(pp) = pods.get(&pc.uid) else {
        return;
    };
    let mut map = |rel: String| {
        if let Ok(m) = std::fs::metadata(mount.join(&rel)) {
            found.mapped.insert(m.ino(), pp.policy);
            found.names.insert(m.ino(), (rel, pp.pod.clone()));
        }
    };
    map(rel.to_owned());
    for c in subdirs(&mount.join(rel)) {
        map(format!("{rel}/{c}"));
    }
}
