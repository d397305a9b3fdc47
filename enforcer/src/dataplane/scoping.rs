//! The scoping maps (docs/architecture.md, "Scoping"): visibility sets in `VSETS` and the
//! cgroup → policy map. Sets are written before any rule names them and cleared after none
//! does; cgroups gain their new policy before stale mappings go.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::maps::IterableMap as _;
use enforcer_common::{POLICY_WORDS, PolicyBits};

use super::{
    batch::{self, Batch},
    maps::Maps,
};

impl Maps {
    /// Every non-empty set in `VSETS` (a previous run's, after a restart).
    pub fn visibility_sets(&self) -> anyhow::Result<Vec<(u32, PolicyBits)>> {
        use std::os::fd::AsFd as _;
        let words: Vec<(u32, u64)> =
            match batch::dump(self.vsets.map().fd().as_fd()).context("reading VSETS")? {
                Batch::Done(w) => w,
                Batch::Unsupported => (0..self.vsets.len())
                    .map(|i| Ok((i, self.vsets.get(&i, 0).context("reading VSETS")?)))
                    .collect::<anyhow::Result<_>>()?,
            };
        let mut sets: BTreeMap<u32, PolicyBits> = BTreeMap::new();
        for (i, word) in words.into_iter().filter(|(_, w)| *w != 0) {
            sets.entry(i / POLICY_WORDS)
                .or_insert([0; POLICY_WORDS as usize])[(i % POLICY_WORDS) as usize] = word;
        }
        Ok(sets.into_iter().collect())
    }

    pub fn write_sets(&mut self, sets: &[(u32, PolicyBits)]) -> anyhow::Result<()> {
        for (id, bits) in sets {
            for (w, word) in bits.iter().enumerate() {
                self.vsets
                    .set(id * POLICY_WORDS + w as u32, *word, 0)
                    .with_context(|| format!("writing visibility set {id}"))?;
            }
        }
        Ok(())
    }

    /// Empties sets no rule names any more: a rule still naming one is usable by nobody.
    pub fn clear_sets(&mut self, ids: &[u32]) -> anyhow::Result<()> {
        let empty: Vec<(u32, PolicyBits)> = ids
            .iter()
            .map(|id| (*id, [0; POLICY_WORDS as usize]))
            .collect();
        self.write_sets(&empty)
    }

    pub fn cgroup_policies(&self) -> anyhow::Result<BTreeMap<u64, u32>> {
        self.cgroup_policy
            .iter()
            .map(|r| r.context("reading CGROUP_POLICY"))
            .collect()
    }

    /// Makes CGROUP_POLICY equal to `desired` given that it holds `live`: new and changed
    /// mappings first, then the ones that went. Returns how many changed.
    pub fn sync_cgroup_policies(
        &mut self,
        live: &BTreeMap<u64, u32>,
        desired: &BTreeMap<u64, u32>,
    ) -> anyhow::Result<usize> {
        let mut changed = 0;
        for (id, policy) in desired {
            if live.get(id) != Some(policy) {
                self.cgroup_policy
                    .insert(id, policy, 0)
                    .with_context(|| format!("mapping cgroup {id} to policy {policy}"))?;
                changed += 1;
            }
        }
        for id in live.keys().filter(|id| !desired.contains_key(id)) {
            match self.cgroup_policy.remove(id) {
                Ok(()) => changed += 1,
                // Already gone: nothing to undo.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("unmapping cgroup {id}")),
            }
        }
        Ok(changed)
    }
}
