//! Host units' cgroups: which exist now (their ids are inode numbers, new each time systemd
//! creates the cgroup), and where to watch for them.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::scope::table::{PolicyTable, Subject};

fn units(table: &PolicyTable) -> impl Iterator<Item = (&str, u32)> {
    table.policies.iter().filter_map(|a| match &a.subject {
        Subject::Unit(c) => Some((c.as_str(), a.id)),
        _ => None,
    })
}

/// cgroup id → policy of every unit whose cgroup exists.
pub fn present(mount: &Path, table: &PolicyTable) -> BTreeMap<u64, u32> {
    units(table)
        .filter_map(|(c, policy)| Some((std::fs::metadata(mount.join(c)).ok()?.ino(), policy)))
        .collect()
}

/// cgroup id → unit path, for the record.
pub fn paths_by_id(mount: &Path, table: &PolicyTable) -> BTreeMap<u64, String> {
    units(table)
        .filter_map(|(c, _)| Some((std::fs::metadata(mount.join(c)).ok()?.ino(), c.to_owned())))
        .collect()
}

/// The directories to watch: each unit cgroup's parent, or its nearest existing ancestor
/// while the parent is missing (a slice not started yet).
pub fn targets(mount: &Path, table: &PolicyTable) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = units(table)
        .filter_map(|(c, _)| {
            let path = mount.join(c);
            path.ancestors()
                .skip(1)
                .find(|a| a.is_dir())
                .map(Path::to_path_buf)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
