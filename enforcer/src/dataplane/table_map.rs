//! The exact rules' two maps, `RULES_TABLE` and its overflow `RULES_EXACT`, seen as one rule
//! map (docs/architecture.md, "Rule maps"): where a rule goes is [`Table`]'s business, the
//! writes are made here in the order that keeps every read of the programs whole.

use std::{collections::BTreeMap, os::fd::AsFd as _};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, IterableMap as _, MapData};
use enforcer_common::{RuleKey, RuleValue, SLOT_LIVE, TableSlot};

use super::{
    batch::{self, Batch},
    table::{SlotWrites, Table, slot as slot_of},
    table_mmap,
};

/// Slots of a table for `rules` exact rules: a power of two at least 1.5 times as large, so
/// that a lookup rarely reads more than a slot or two.
pub fn table_slots(rules: u32) -> u32 {
    (u64::from(rules) * 3 / 2)
        .max(64)
        .next_power_of_two()
        .min(1 << 31) as u32
}

/// The occupancy, every rule sorted, and live duplicates to kill.
type ReadBack = (Table, Vec<(RuleKey, RuleValue)>, SlotWrites);

pub struct ExactRules {
    table: Array<MapData, TableSlot>,
    overflow: HashMap<MapData, RuleKey, RuleValue>,
    /// `OVERFLOW_HOMES`.
    homes: Array<MapData, u64>,
    /// The table's occupancy and the `OVERFLOW_HOMES` words not zero; `None` until read, and
    /// after a write failed midway.
    model: Option<(Table, BTreeMap<u32, u64>)>,
    /// Maps created by this run and not yet applied to: no attached program reads them, so a
    /// rule is written live at once, without the taken step that keeps a concurrent read
    /// whole.
    unread: bool,
}

impl ExactRules {
    pub fn new(
        table: Array<MapData, TableSlot>,
        overflow: HashMap<MapData, RuleKey, RuleValue>,
        homes: Array<MapData, u64>,
    ) -> Self {
        Self {
            table,
            overflow,
            homes,
            model: None,
            unread: false,
        }
    }

    /// Maps just created: every slot empty, no overflow, nothing to read.
    pub fn created_empty(&mut self) {
        self.model = Some((Table::new(self.table.len()), BTreeMap::new()));
        self.unread = true;
    }

    /// The first apply is over: the programs may be attached and read the maps from now on.
    pub fn applied(&mut self) {
        self.unread = false;
    }

    /// What the programs mask a home slot with.
    pub fn mask(&self) -> anyhow::Result<u32> {
        Ok(self.table.len().saturating_sub(1))
    }

    /// How many exact rules the config allows (the overflow map can take them all).
    pub fn capacity(&self) -> anyhow::Result<usize> {
        Ok(self.overflow.map().info()?.max_entries() as usize)
    }

    /// Rules in the overflow map, as of the last apply.
    pub fn overflowing(&self) -> usize {
        self.model.as_ref().map_or(0, |(t, _)| t.overflowing())
    }

    fn read_homes(&self) -> anyhow::Result<BTreeMap<u32, u64>> {
        let mut words = BTreeMap::new();
        for (i, w) in self.homes.iter().enumerate() {
            let w = w.context("reading OVERFLOW_HOMES")?;
            if w != 0 {
                words.insert(i as u32, w);
            }
        }
        Ok(words)
    }

    /// Writes the words of `want` that differ from `written` (a word absent is zero).
    fn write_homes(
        &mut self,
        written: &BTreeMap<u32, u64>,
        want: &BTreeMap<u32, u64>,
    ) -> anyhow::Result<()> {
        let words: std::collections::BTreeSet<u32> =
            written.keys().chain(want.keys()).copied().collect();
        for w in words {
            let new = want.get(&w).copied().unwrap_or(0);
            if written.get(&w).copied().unwrap_or(0) != new {
                self.homes
                    .set(w, new, 0)
                    .context("writing OVERFLOW_HOMES")?;
            }
        }
        Ok(())
    }

    fn read_table(&self) -> anyhow::Result<Vec<TableSlot>> {
        batch::read_array(&self.table, "RULES_TABLE")
    }

    fn read_overflow(&self) -> anyhow::Result<Vec<(RuleKey, RuleValue)>> {
        let fd = self.overflow.map().fd().as_fd();
        Ok(match batch::dump(fd).context("reading RULES_EXACT")? {
            Batch::Done(entries) => entries,
            Batch::Unsupported => self
                .overflow
                .iter()
                .map(|r| r.context("reading RULES_EXACT"))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// Every exact rule, sorted by key, with the table's occupancy and the live duplicates an
    /// interrupted apply left.
    fn read(&self) -> anyhow::Result<ReadBack> {
        let overflow = self.read_overflow()?;
        let (table, mut live, duplicates) =
            Table::from_kernel(self.read_table()?, overflow.iter().map(|(k, _)| *k));
        live.extend(overflow);
        live.sort_unstable_by_key(|e| e.0);
        live.dedup_by_key(|e| e.0);
        Ok((table, live, duplicates))
    }

    /// Every exact rule, sorted by key.
    pub fn live(&self) -> anyhow::Result<Vec<(RuleKey, RuleValue)>> {
        Ok(self.read()?.1)
    }

    /// Reads the maps back (the occupancy too), and kills what an interrupted apply left.
    pub fn reread(&mut self) -> anyhow::Result<Vec<(RuleKey, RuleValue)>> {
        self.model = None;
        let (table, live, duplicates) = self.read()?;
        let written = self.read_homes()?;
        // Every overflowing rule's region marked (an apply cut short may have left one out).
        let want = union(&written, &table.overflow_words());
        self.write_homes(&written, &want)?;
        self.write_slots(&duplicates)?;
        self.model = Some((table, want));
        Ok(live)
    }

    fn write_slots(&mut self, w: &[(u32, TableSlot)]) -> anyhow::Result<()> {
        if w.is_empty() {
            return Ok(());
        }
        match batch::update(self.table.map().fd().as_fd(), w).context("writing RULES_TABLE")? {
            Batch::Done(()) => Ok(()),
            Batch::Unsupported => w
                .iter()
                .try_for_each(|(i, s)| Ok(self.table.set(*i, s, 0)?)),
        }
    }

    fn put_overflow(&mut self, entries: &[(RuleKey, RuleValue)]) -> anyhow::Result<()> {
        match batch::update(self.overflow.map().fd().as_fd(), entries)
            .context("writing RULES_EXACT")?
        {
            Batch::Done(()) => Ok(()),
            Batch::Unsupported => entries
                .iter()
                .try_for_each(|(k, v)| Ok(self.overflow.insert(k, v, 0)?)),
        }
    }

    fn del_overflow(&mut self, keys: &[RuleKey]) -> anyhow::Result<()> {
        match batch::delete(self.overflow.map().fd().as_fd(), keys)
            .context("removing from RULES_EXACT")?
        {
            Batch::Done(()) => Ok(()),
            Batch::Unsupported => keys.iter().try_for_each(|k| Ok(self.overflow.remove(k)?)),
        }
    }

    /// The occupancy, taken out for the length of a write: a write that fails midway leaves
    /// it unknown, and the next apply reads the maps.
    fn take_model(&mut self) -> anyhow::Result<(Table, BTreeMap<u32, u64>)> {
        match self.model.take() {
            Some(m) => Ok(m),
            None => {
                self.reread()?;
                self.model.take().context("RULES_TABLE occupancy")
            }
        }
    }

    /// Adds `entries` and changes their values; `live` is what the maps held before, sorted.
    pub fn put_many(
        &mut self,
        entries: &[(RuleKey, RuleValue)],
        live: &[(RuleKey, RuleValue)],
    ) -> anyhow::Result<()> {
        let (mut model, written) = self.take_model()?;
        let with_old: Vec<_> = entries
            .iter()
            .map(|(k, v)| (*k, *v, old_value(live, k)))
            .collect();
        let table = &self.table;
        let w = model.add(&with_old, &mut |i| Ok(table.get(&i, 0)?.key))?;
        if !self.unread {
            self.write_slots(&w.taken)?;
        }
        // A region's bit is set before its rule is in the overflow map.
        let wider = union(&written, &model.overflow_words());
        self.write_homes(&written, &wider)?;
        self.put_overflow(&w.overflow)?;
        self.write_slots(&w.live)?;
        self.write_slots(&w.dead)?;
        self.model = Some((model, wider));
        Ok(())
    }

    /// Writes `entries` into maps created empty by this run that no program reads yet, in
    /// one pass of the table's memory in slot order; `false` if the maps are not such (the
    /// caller writes through [`Self::put_many`]).
    pub fn fill_empty(&mut self, entries: &[(RuleKey, RuleValue)]) -> anyhow::Result<bool> {
        if !self.unread || !matches!(&self.model, Some((t, _)) if t.is_empty()) {
            return Ok(false);
        }
        let (mut model, written) = self.take_model()?;
        let (order, overflow) = model.place_all_new(entries);
        let want = model.overflow_words();
        self.write_homes(&written, &want)?;
        self.put_overflow(&overflow)?;
        let slots = order.iter().map(|o| {
            let (k, v) = entries[(*o & u64::from(u32::MAX)) as usize];
            ((*o >> 32) as u32, slot_of(k, v, SLOT_LIVE))
        });
        let fd = self.table.map().fd().as_fd();
        match table_mmap::write_sorted(fd, self.table.len(), slots.clone())
            .context("writing RULES_TABLE's memory")?
        {
            Batch::Done(()) => {}
            Batch::Unsupported => {
                let (mut slots, mut chunk) = (slots, Vec::with_capacity(batch::CHUNK));
                loop {
                    chunk.clear();
                    chunk.extend(slots.by_ref().take(batch::CHUNK));
                    if chunk.is_empty() {
                        break;
                    }
                    self.write_slots(&chunk)?;
                }
            }
        }
        self.model = Some((model, want));
        Ok(true)
    }

    /// Removes `keys`; `live` is what the maps held before, sorted.
    pub fn del_many(
        &mut self,
        keys: &[RuleKey],
        live: &[(RuleKey, RuleValue)],
    ) -> anyhow::Result<()> {
        let (mut model, written) = self.take_model()?;
        let with_old = keys
            .iter()
            .map(|k| {
                old_value(live, k)
                    .map(|v| (*k, v))
                    .context("removing an exact rule the maps do not hold")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let table = &self.table;
        let w = model.remove(&with_old, &mut |i| Ok(table.get(&i, 0)?.key))?;
        self.write_slots(&w.dead)?;
        self.del_overflow(&w.overflow)?;
        // A region's bit is cleared once no rule of it is in the overflow map.
        let narrower = model.overflow_words();
        self.write_homes(&written, &narrower)?;
        self.model = Some((model, narrower));
        Ok(())
    }
}

fn union(a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
    let mut out = a.clone();
    for (w, bits) in b {
        *out.entry(*w).or_insert(0) |= bits;
    }
    out
}

fn old_value(live: &[(RuleKey, RuleValue)], key: &RuleKey) -> Option<RuleValue> {
    live.binary_search_by_key(key, |e| e.0)
        .ok()
        .map(|i| live[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_powers_of_two_half_again_the_rules() {
        assert_eq!(table_slots(0), 64);
        assert_eq!(table_slots(65_536), 131_072);
        assert_eq!(table_slots(1_000_000), 2_097_152);
        assert_eq!(table_slots(1_400_000), 4_194_304);
        assert!(table_slots(u32::MAX).is_power_of_two());
    }
}
