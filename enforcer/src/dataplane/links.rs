//! The pinned cgroup links: listing them for `inspect`, and removing them (which detaches).

use std::{fs, path::Path};

use super::ALL_PROGRAMS;
use anyhow::Context as _;
use aya::programs::{links::PinnedLink, loaded_programs};
use serde::Serialize;

use super::pins::{PinLayout, unescape_cgroup};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkRow {
    /// cgroup path relative to the cgroup2 mount, with a leading `/`.
    pub cgroup: String,
    pub hook: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// Instructions the verifier processed when the program was loaded.
    pub verified_insns: Option<u32>,
    /// Runs and total run time of the program since `kernel.bpf_stats_enabled` was switched on
    /// (both stay 0 while it is off).
    pub run_count: Option<u64>,
    pub run_time_ns: Option<u64>,
    /// Set when the pin exists but the kernel object could not be read.
    pub error: Option<String>,
}

/// Pinned link directories: (directory name, cgroup relative path if the name is ours).
pub fn cgroup_dirs(layout: &PinLayout) -> Vec<(String, Option<String>)> {
    let Ok(rd) = fs::read_dir(layout.links_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .map(|name| {
            let rel = unescape_cgroup(&name);
            (name, rel)
        })
        .collect();
    out.sort();
    out
}

/// Every program that may be pinned, in display order.
fn known_programs() -> impl Iterator<Item = &'static str> {
    ALL_PROGRAMS
        .iter()
        .copied()
        .chain([enforcer_common::LSM_PROGRAM_NAME])
}

pub fn list(layout: &PinLayout) -> Vec<LinkRow> {
    let mut rows = Vec::new();
    for (dir, rel) in cgroup_dirs(layout) {
        let cgroup = rel.map_or_else(|| format!("?{dir}"), |r| format!("/{r}"));
        rows.extend(rows_in(layout, &layout.links_dir().join(&dir), &cgroup));
    }
    rows
}

/// The links on the cgroup root (programs for sockets from outside the enforced cgroups).
pub fn list_host(layout: &PinLayout) -> Vec<LinkRow> {
    rows_in(layout, &layout.host_links_dir(), "(cgroup root)")
}

fn rows_in(layout: &PinLayout, link_dir: &Path, cgroup: &str) -> Vec<LinkRow> {
    let mut rows = Vec::new();
    {
        let Ok(rd) = fs::read_dir(link_dir) else {
            return rows;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort_by_key(|n| known_programs().position(|p| p == n).unwrap_or(usize::MAX));
        for hook in names {
            let path = link_dir.join(&hook);
            let row = match read_link(&path, &layout.programs_dir()) {
                Ok(l) => LinkRow {
                    cgroup: cgroup.to_owned(),
                    hook,
                    link_id: Some(l.link_id),
                    program_id: Some(l.program_id),
                    verified_insns: l.verified_insns,
                    run_count: l.run_count,
                    run_time_ns: l.run_time_ns,
                    error: None,
                },
                Err(e) => LinkRow {
                    cgroup: cgroup.to_owned(),
                    hook,
                    link_id: None,
                    program_id: None,
                    verified_insns: None,
                    run_count: None,
                    run_time_ns: None,
                    error: Some(format!("{e:#}")),
                },
            };
            rows.push(row);
        }
    }
    rows
}

struct LinkInfo {
    link_id: u32,
    program_id: u32,
    verified_insns: Option<u32>,
    run_count: Option<u64>,
    run_time_ns: Option<u64>,
}

/// The link's program: from our program pins (no privilege beyond reading bpffs), else by
/// walking the loaded programs (needs CAP_SYS_ADMIN; for links attached before program pins).
fn program_info(programs_dir: &Path, id: u32) -> Option<aya::programs::ProgramInfo> {
    known_programs()
        .filter_map(|name| aya::programs::ProgramInfo::from_pin(programs_dir.join(name)).ok())
        .find(|p| p.id() == id)
        .or_else(|| loaded_programs().flatten().find(|p| p.id() == id))
}

fn read_link(path: &Path, programs_dir: &Path) -> anyhow::Result<LinkInfo> {
    let link = aya::programs::links::FdLink::from(PinnedLink::from_pin(path)?);
    let info = link.info()?;
    let prog = program_info(programs_dir, info.program_id());
    Ok(LinkInfo {
        link_id: info.id(),
        program_id: info.program_id(),
        verified_insns: prog.as_ref().and_then(|p| p.verified_instruction_count()),
        run_count: prog.as_ref().map(aya::programs::ProgramInfo::run_count),
        run_time_ns: prog
            .as_ref()
            .map(|p| u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX)),
    })
}

/// Unpins every link in one cgroup's directory and removes it. The kernel detaches a link when
/// its last reference (pin or fd) goes away.
pub fn remove_cgroup_dir(dir: &Path) -> anyhow::Result<()> {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            fs::remove_file(e.path())
                .with_context(|| format!("unpinning {}", e.path().display()))?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}
