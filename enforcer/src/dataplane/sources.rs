//! Rule id → source names (`ServiceEntry shop/api (se.yaml:3)`, `--allow …`), written by the
//! daemon after every apply so that `inspect` can name the entry behind a kernel rule. The
//! kernel maps hold only ids; bpffs cannot hold plain files, so the table lives in
//! /run/egress-enforcer, one file per pin directory.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub const STATE_DIR: &str = "/run/egress-enforcer";

/// The daemon's last DNS answers per name (see `daemon::carry`).
pub const ANSWERS: &str = "answers";

/// DNS-aware mode's learned addresses (see `dnsproxy::journal`).
pub const LEARNED: &str = "learned";

/// The API server's objects in force, for the next start (see `cluster::record`).
pub const CLUSTER: &str = "cluster";

/// The API server source's sync state, for `inspect cluster`.
pub const CLUSTER_STATUS: &str = "cluster-status";

/// Policy ids and the cgroups mapped to them (see `daemon::scoping`), for restarts and `inspect`.
pub const POLICIES: &str = "policies";

/// The table's file for the pins under `pin_root`.
pub fn path_for(pin_root: &Path) -> PathBuf {
    state_file(pin_root, "sources")
}

/// A state file of the daemon whose pins are under `pin_root`: `<dir>/<flat root>.<kind>.json`.
/// The flat name encodes every byte other than letters, digits and `-` as `_xx`, so two pin
/// directories never share a file.
pub fn state_file(pin_root: &Path, kind: &str) -> PathBuf {
    use std::fmt::Write as _;
    let mut name = String::new();
    for b in pin_root.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || *b == b'-' {
            name.push(char::from(*b));
        } else {
            let _ = write!(name, "_{b:02x}");
        }
    }
    Path::new(STATE_DIR).join(format!("{name}.{kind}.json"))
}

/// Written to a temporary file and renamed, so readers never see half a table.
pub fn write(pin_root: &Path, sources: &BTreeMap<u32, String>) -> anyhow::Result<()> {
    write_state(&path_for(pin_root), sources)
}

/// Writes a state file atomically (temporary file, then rename).
pub fn write_state(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = path.parent().unwrap_or(Path::new(STATE_DIR));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Empty when the daemon has not written one (e.g. never ran since boot).
pub fn read(pin_root: &Path) -> BTreeMap<u32, String> {
    std::fs::read(path_for(pin_root))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn remove(pin_root: &Path) {
    let _ignored = std::fs::remove_file(path_for(pin_root));
    for kind in [ANSWERS, LEARNED, CLUSTER, CLUSTER_STATUS] {
        let _ignored = std::fs::remove_file(state_file(pin_root, kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_flat_and_distinct() {
        let a = path_for(Path::new("/sys/fs/bpf/egress-enforcer"));
        let b = path_for(Path::new("/tmp/x/bpffs/egress-enforcer"));
        assert_ne!(a, b);
        let (c, d) = (Path::new("/x/y"), Path::new("/x_y"));
        assert_ne!(path_for(c), path_for(d), "one-to-one");
        assert_eq!(a.parent(), Some(Path::new(STATE_DIR)));
        assert!(!a.file_name().unwrap().to_string_lossy().contains('/'));
    }
}
