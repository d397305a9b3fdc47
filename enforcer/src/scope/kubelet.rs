//! Pods in the kubelet's cgroup tree: which directory is a pod's and which pod it is, for the
//! systemd and cgroupfs drivers, every QoS class, containerd, CRI-O and cri-dockerd, and
//! nested layouts (kind nodes, a `cgroupRoot`). Pure: it reads paths, not the filesystem
//! (docs/kubernetes.md, "Pods and cgroups").
//!
//! The kubelet names a pod's cgroup `pod<UID>` (cgroupfs) or `…-pod<UID with _ for ->.slice`
//! (systemd), under `kubepods`, `kubepods/burstable` or `kubepods/besteffort` (Guaranteed pods
//! sit directly under `kubepods`). A static pod's UID is the 32-hex hash of its manifest,
//! which its mirror pod in the API carries in the `kubernetes.io/config.mirror` annotation.

/// A pod's QoS class, from the directory its cgroup sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup directory is, as far as pods go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID as the API shows it (with `-`), or a static pod's 32-hex hash.
    pub uid: String,
    pub qos: Qos,
    /// The directory is the pod's own; otherwise it is below it (a container, the sandbox,
    /// CRI-O's conmon, or anything a container made).
    pub pod_level: bool,
}

/// The pod a cgroup path (relative to the cgroup2 mount) belongs to, if it is inside one.
/// `root` is where the kubelet's `kubepods` directory lives (`""` on a node, the node
/// container's `…/kubelet.slice` for kind): only the exact chain `root/kubepods[/qos]/pod`
/// counts, so a look-alike directory elsewhere (a user's delegated subtree) names no pod.
pub fn pod_of(root: &str, path: &str) -> Option<PodCgroup> {
    let root = root.trim_matches('/');
    let path = path.trim_matches('/');
    let rest = if root.is_empty() {
        path
    } else {
        path.strip_prefix(root)?.strip_prefix('/')?
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if !is_kubepods(parts.first()?) {
        return None;
    }
    let (qos, at) = match parts.get(1) {
        Some(d) if is_qos(d, "burstable") => (Qos::Burstable, 2),
        Some(d) if is_qos(d, "besteffort") => (Qos::BestEffort, 2),
        _ => (Qos::Guaranteed, 1),
    };
    let uid = uid_of(parts.get(at)?)?;
    Some(PodCgroup {
        uid,
        qos,
        pod_level: at + 1 == parts.len(),
    })
}

/// `kubepods`, `kubepods.slice`, or with a `cgroupRoot` prefix (`kubelet-kubepods.slice`).
pub fn is_kubepods(dir: &str) -> bool {
    let d = dir.strip_suffix(".slice").unwrap_or(dir);
    d == "kubepods" || d.ends_with("-kubepods")
}

fn is_qos(dir: &str, class: &str) -> bool {
    let d = dir.strip_suffix(".slice").unwrap_or(dir);
    d == class || d.ends_with(&format!("kubepods-{class}"))
}

/// The UID in a pod directory's name: `pod<uid>` or `<prefix>-pod<uid>.slice`.
fn uid_of(dir: &str) -> Option<String> {
    let (name, systemd) = match dir.strip_suffix(".slice") {
        Some(n) => (n, true),
        None => (dir, false),
    };
    let tail = if systemd {
        name.rsplit_once("-pod").map(|(_, t)| t)?
    } else {
        name.strip_prefix("pod")?
    };
    let uid: String = tail
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    (is_uuid(&uid) || is_hash(&uid)).then_some(uid)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 8-4-4-4-12 lowercase hex.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && is_hex(g))
}

/// A static pod's config hash.
fn is_hash(s: &str) -> bool {
    s.len() == 32 && is_hex(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4b1c9f7e-1111-4aaa-8bbb-000000000001";
    const SYSTEMD_UID: &str = "4b1c9f7e_1111_4aaa_8bbb_000000000001";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pod(uid: &str, qos: Qos, pod_level: bool) -> Option<PodCgroup> {
        Some(PodCgroup {
            uid: uid.to_owned(),
            qos,
            pod_level,
        })
    }

    #[test]
    fn systemd_driver_every_qos_class_and_runtime() {
        let burst = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice"
        );
        assert_eq!(pod_of("", &burst), pod(UID, Qos::Burstable, true));
        for leaf in [
            format!("cri-containerd-{CID}.scope"),
            format!("crio-{CID}.scope"),
            format!("crio-{CID}.scope/container"),
            format!("crio-conmon-{CID}.scope"),
            format!("docker-{CID}.scope"),
        ] {
            assert_eq!(
                pod_of("", &format!("{burst}/{leaf}")),
                pod(UID, Qos::Burstable, false),
                "{leaf}"
            );
        }
        let best = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice"
        );
        assert_eq!(pod_of("", &best), pod(UID, Qos::BestEffort, true));
        let guaranteed = format!("kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice");
        assert_eq!(pod_of("", &guaranteed), pod(UID, Qos::Guaranteed, true));
    }

    #[test]
    fn cgroupfs_driver() {
        assert_eq!(
            pod_of("", &format!("kubepods/burstable/pod{UID}")),
            pod(UID, Qos::Burstable, true)
        );
        assert_eq!(
            pod_of("", &format!("kubepods/besteffort/pod{UID}/{CID}")),
            pod(UID, Qos::BestEffort, false)
        );
        assert_eq!(
            pod_of("", &format!("kubepods/pod{UID}/crio-{CID}")),
            pod(UID, Qos::Guaranteed, false)
        );
    }

    /// kind: the node is a container whose kubelet has `cgroupRoot: /kubelet`, seen from the
    /// host several levels down.
    #[test]
    fn nested_layouts_and_static_pods() {
        let kind = format!(
            "system.slice/docker-{CID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{SYSTEMD_UID}.slice/cri-containerd-{CID}.scope"
        );
        let node = format!("system.slice/docker-{CID}.scope/kubelet.slice");
        assert_eq!(pod_of(&node, &kind), pod(UID, Qos::Burstable, false));
        assert_eq!(pod_of("", &kind), None, "not under the kubelet's root");
        let hash = "6f0d1b1e6c3f4a5bb0c1d2e3f4a5b6c7";
        assert_eq!(
            pod_of(
                "",
                &format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice"
                )
            ),
            pod(hash, Qos::Burstable, true)
        );
    }

    #[test]
    fn not_pods() {
        for p in [
            "kubepods.slice",
            "kubepods.slice/kubepods-burstable.slice",
            "system.slice/podman.service",
            "user.slice/user-1000.slice",
            // A pod-looking name outside kubepods.
            &format!("system.slice/pod{UID}"),
            // Not a UID.
            "kubepods/burstable/podcast",
            "kubepods/burstable/pod1234",
            // A look-alike in a user's delegated subtree.
            &format!("user.slice/user-1000.slice/user@1000.service/app.slice/kubepods/pod{UID}"),
            // Deeper than the kubelet makes it.
            &format!("kubepods/burstable/extra/pod{UID}"),
        ] {
            assert_eq!(pod_of("", p), None, "{p}");
        }
    }
}
