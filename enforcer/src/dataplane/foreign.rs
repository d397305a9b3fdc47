//! The programs on the cgroup root for sockets made outside the enforced cgroups
//! (docs/architecture.md, "Sockets from outside"), and the kernel's list of enforced cgroups
//! they consult.

use std::{
    collections::HashSet,
    fs::{self, File},
    os::fd::AsFd as _,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use enforcer_common::{FOREIGN_PROGRAM_NAMES, map_names};

use super::{
    Dataplane, attach_program, cgroup::Cgroup, mapped_word::MappedWord, pin_replacing, take_map,
};

/// The enforced cgroups' ids, the generation that invalidates the root programs' cache, and
/// the cache.
pub struct RootMaps {
    roots: HashMap<MapData, u64, u8>,
    /// `ROOTS_GEN`, written through a mapping so that a program never reads it half written.
    generation: MappedWord,
    cache: Array<MapData, u64>,
}

impl RootMaps {
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let generation: Array<MapData, u32> = take_map(ebpf, map_names::ROOTS_GEN)?;
        Ok(Self {
            roots: take_map(ebpf, map_names::ENFORCED_ROOTS)?,
            generation: MappedWord::map(generation.map().fd().as_fd())
                .context("mapping ROOTS_GEN")?,
            cache: take_map(ebpf, map_names::TASK_CGROUPS)?,
        })
    }

    /// Empties the cache: done before publishing every `ROOTS_GEN_CLEAR_EVERY`-th generation,
    /// so that an answer tagged with a generation is gone before the 23-bit generation comes
    /// round to it again.
    fn clear_cache(&mut self) -> anyhow::Result<()> {
        for slot in 0..enforcer_common::TASK_CGROUP_SLOTS {
            self.cache
                .set(slot, 0, 0)
                .context("emptying TASK_CGROUPS")?;
        }
        Ok(())
    }

    /// Makes `ENFORCED_ROOTS` hold exactly `want`.
    fn write_roots(&mut self, want: &HashSet<u64>) -> anyhow::Result<()> {
        for id in want {
            self.roots
                .insert(id, 1, 0)
                .context("writing ENFORCED_ROOTS")?;
        }
        let stale: Vec<u64> = self
            .roots
            .keys()
            .flatten()
            .filter(|k| !want.contains(k))
            .collect();
        for id in stale {
            let _ignored = self.roots.remove(&id);
        }
        Ok(())
    }
}

/// The generation after `generation`, as the slots keep it.
fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & enforcer_common::ROOTS_GEN_MASK
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
        let generation = next_generation(m.generation.load());
        // Before the set changes: a clear that fails leaves everything as it was.
        if generation.is_multiple_of(enforcer_common::ROOTS_GEN_CLEAR_EVERY) {
            m.clear_cache()?;
        }
        let written = m.write_roots(&want);
        // Published even when the set was written only in part: no answer cached under the
        // old set may stand after any change to it.
        m.generation.store(generation);
        written
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache is emptied when the generation wraps to 0 and half way round, never more
    /// than a half turn apart.
    #[test]
    fn the_generation_wraps_where_the_slots_do_and_clears_on_the_way() {
        let mask = enforcer_common::ROOTS_GEN_MASK;
        assert_eq!(next_generation(mask), 0);
        assert_eq!(next_generation(mask - 1), mask);
        assert_eq!(next_generation(u32::MAX), 0);
        let clears: Vec<u32> = (0..=mask)
            .map(next_generation)
            .filter(|g| g.is_multiple_of(enforcer_common::ROOTS_GEN_CLEAR_EVERY))
            .collect();
        assert_eq!(clears, [enforcer_common::ROOTS_GEN_CLEAR_EVERY, 0]);
    }
}
