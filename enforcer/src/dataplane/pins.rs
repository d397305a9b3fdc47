//! Where our objects live on the bpffs:
//!
//! ```text
//! <bpffs>/egress-enforcer/maps/<MAP>               rule maps, config, counters, events
//! <bpffs>/egress-enforcer/maps-next/<MAP>          only while migrating to resized maps
//! <bpffs>/egress-enforcer/links/<cgroup>/<hook>    one link per enforced cgroup and hook
//! <bpffs>/egress-enforcer/programs/<hook>          the programs the daemon last attached
//! ```
//!
//! The program pins are for reading only: `inspect` gets a program's statistics from them,
//! because looking a program up by id needs CAP_SYS_ADMIN, which the daemon does not need.
//!
//! `<cgroup>` is the cgroup's path relative to the cgroup2 mount with `%`, `/` and `.` escaped
//! (bpffs refuses names containing a dot), so that the directory name alone says which cgroup
//! the links enforce.

use std::path::{Path, PathBuf};

pub const DIR_NAME: &str = "egress-enforcer";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(bpffs: &Path) -> Self {
        Self {
            root: bpffs.join(DIR_NAME),
        }
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// New maps are built here when the pinned ones cannot be reused (other sizes or ABI), and
    /// renamed over `maps/` once programs using them are attached.
    pub fn staging_maps_dir(&self) -> PathBuf {
        self.root.join("maps-next")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Links on the cgroup root (programs for sockets from outside).
    pub fn host_links_dir(&self) -> PathBuf {
        self.root.join("host-links")
    }

    pub fn programs_dir(&self) -> PathBuf {
        self.root.join("programs")
    }

    pub fn cgroup_links_dir(&self, cgroup_relative: &str) -> PathBuf {
        self.links_dir().join(escape_cgroup(cgroup_relative))
    }

    pub fn link(&self, cgroup_relative: &str, program: &str) -> PathBuf {
        self.cgroup_links_dir(cgroup_relative).join(program)
    }
}

/// "" (the root cgroup) becomes "%2F"; otherwise `%` → `%25`, `/` → `%2F`, `.` → `%2E`.
pub fn escape_cgroup(relative: &str) -> String {
    if relative.is_empty() {
        return "%2F".to_owned();
    }
    relative
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('.', "%2E")
}

/// Inverse of [`escape_cgroup`]; `None` for names we did not produce.
pub fn unescape_cgroup(name: &str) -> Option<String> {
    if name == "%2F" {
        return Some(String::new());
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("%2F") => out.push('/'),
            Some("%25") => out.push('%'),
            Some("%2E") => out.push('.'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_round_trip() {
        for rel in [
            "",
            "a",
            "a/b",
            "100%/x",
            "kubepods.slice/kubepods-besteffort.slice",
        ] {
            let e = escape_cgroup(rel);
            assert!(!e.contains('/') && !e.contains('.'), "{e}");
            assert_eq!(unescape_cgroup(&e).as_deref(), Some(rel));
        }
        assert_eq!(unescape_cgroup("bad%zz"), None);
    }

    #[test]
    fn layout() {
        let l = PinLayout::new(Path::new("/sys/fs/bpf"));
        assert_eq!(
            l.map("CONFIG"),
            Path::new("/sys/fs/bpf/egress-enforcer/maps/CONFIG")
        );
        assert_eq!(
            l.link("a/b", "connect4"),
            Path::new("/sys/fs/bpf/egress-enforcer/links/a%2Fb/connect4")
        );
    }
}
