//! DNS-aware mode's visibility sets (docs/architecture.md, "Scoping"): a learned rule may be
//! used by the policies of the names that allowed it. The proxy gives those sets ids in its
//! own range of `VSETS` (the daemon's rules use the other half), writes a new set before a
//! rule names it and empties a set once no learned rule does.

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::maps::{Array, IterableMap as _, MapData};
use enforcer_common::{POLICY_WORDS, PolicyBits, map_names};

use super::learned::{LearnedTable, Put};
use crate::{
    dataplane::{
        batch::{self, Batch},
        pins::PinLayout,
    },
    policy::visibility::Pool,
};

pub struct ProxySets {
    map: Array<MapData, u64>,
    pool: Pool,
}

impl ProxySets {
    /// Takes over the sets in `first..end` (a previous run's).
    pub fn open(layout: &PinLayout, (first, end): (u32, u32)) -> anyhow::Result<Self> {
        let path = layout.map(map_names::VSETS);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map: Array<MapData, u64> = aya::maps::Map::from_map_data(data)?.try_into()?;
        let words: Vec<(u32, u64)> = match batch::dump(map.map().fd().as_fd())? {
            Batch::Done(w) => w,
            Batch::Unsupported => (first * POLICY_WORDS..end * POLICY_WORDS)
                .map(|i| Ok((i, map.get(&i, 0)?)))
                .collect::<anyhow::Result<_>>()?,
        };
        let mut sets: std::collections::BTreeMap<u32, PolicyBits> = Default::default();
        for (i, w) in words.into_iter().filter(|(_, w)| *w != 0) {
            sets.entry(i / POLICY_WORDS)
                .or_insert([0; POLICY_WORDS as usize])[(i % POLICY_WORDS) as usize] = w;
        }
        Ok(Self {
            map,
            pool: Pool::new(first, end, sets),
        })
    }

    fn write(&mut self, id: u32, bits: &PolicyBits) -> anyhow::Result<()> {
        for (w, word) in (0u32..).zip(bits) {
            self.map
                .set(id * POLICY_WORDS + w, *word, 0)
                .with_context(|| format!("writing visibility set {id}"))?;
        }
        Ok(())
    }

    /// Gives each rule about to be written the set of the policies that may use it.
    pub fn assign(&mut self, puts: &mut [Put], learned: &LearnedTable) -> anyhow::Result<()> {
        for (key, value) in puts.iter_mut() {
            let vis = learned.visibility(key);
            let (id, new) = match self.pool.id(vis) {
                Ok(r) => r,
                // Sets no rule uses any more may still be held: let them go, then retry.
                Err(_) => {
                    self.release(learned)?;
                    self.pool.id(vis).context(
                        "DNS-aware mode's visibility sets are full (maps.visibilitySets)",
                    )?
                }
            };
            if new && let Some(bits) = vis.bits() {
                self.write(id, &bits)?;
            }
            value.vset = id;
        }
        Ok(())
    }

    /// Empties the sets no learned rule uses any more (call after their rules are gone).
    pub fn release(&mut self, learned: &LearnedTable) -> anyhow::Result<()> {
        for id in self.pool.keep(&learned.sets_in_use()) {
            self.write(id, &[0; POLICY_WORDS as usize])?;
        }
        Ok(())
    }
}
