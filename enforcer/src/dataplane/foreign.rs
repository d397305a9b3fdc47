//! The programs on the cgroup root for sockets made outside the enforced cgroups
//! (docs/architecture.md, "Sockets from outside"), and the kernel's list of enforced cgroups
//! they consult.

use std::{
    collections::HashSet,
    fs::{self, File},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use enforcer_common::{FOREIGN_PROGRAM_NAMES, map_names};

use super::{Dataplane, attach_program, cgroup::Cgroup, pin_replacing, take_map};

/// The enforced cgroups' ids and the generation that invalidates the root programs' cache.
pub struct RootMaps {
    roots: HashMap<MapData, u64, u8>,
    generation: Array<MapData, u32>,
}

impl RootMaps {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            roots: take_map(ebpf, map_names::ENFORCED_ROOTS)?,
            generation: take_map(ebpf, map_names::ROOTS_GEN)?,
        })
    }
}

impl Dataplane {
    /// Makes the kernel's set of enforced cgroups `cgroups`, then bumps the generation, which
    /// retires every cached answer (one cached before a cgroup became enforced would say "not
    /// enforced").
    pub(super) fn set_roots(&mut self, cgroups: &[Cgroup]) -> anyhow::Result<()> {
        let want: HashSet<u64> = cgroups
            .iter()
            .map(Cgroup::id)
            .collect::<anyhow::Result<_>>()?;
        let m = &mut self.root_maps;
        for id in &want {
            m.roots.insert(id, 1, 0).context("writing ENFORCED_ROOTS")?;
        }
        let stale: Vec<u64> = m
            .roots
            .keys()
            .flatten()
            .filter(|k| !want.contains(k))
            .collect();
        for id in stale {
            let _ignored = m.roots.remove(&id);
        }
        let generation = m.generation.get(&0, 0).context("reading ROOTS_GEN")?;
        m.generation
            .set(0, generation.wrapping_add(1) & (u32::MAX >> 1), 0)
            .context("writing ROOTS_GEN")?;
        Ok(())
    }

    /// Attaches the root programs to the cgroup2 `mount` root and pins the links (replacing
    /// an earlier run's, new before old), or with `None` removes them.
    pub(super) fn attach_host(&mut self, mount: Option<&Path>) -> anyhow::Result<()> {
        let dir = self.layout.host_links_dir();
        let Some(mount) = mount else {
            return super::links::remove_cgroup_dir(&dir);
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = File::open(mount).with_context(|| format!("opening {}", mount.display()))?;
        for name in FOREIGN_PROGRAM_NAMES {
            let link = attach_program(&mut self.ebpf, name, &root, &dir)
                .with_context(|| format!("attaching {name} to the cgroup root"))?;
            pin_replacing(link, &dir, name)?;
        }
        Ok(())
    }
}
