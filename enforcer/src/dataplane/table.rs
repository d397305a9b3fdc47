//! Where exact rules go in `RULES_TABLE`, the programs' open-addressed table
//! (docs/architecture.md, "Rule maps"), and the slot writes that put them there. Pure: the
//! table map module makes the writes.
//!
//! A rule lives within [`TABLE_PROBES`] slots of its home ([`table_home`]); with no free slot
//! there it goes to the overflow hash map. A slot freed by an apply is not reused by the same
//! apply: a rule present before and after, or one whose value changes, is never missing.

use std::collections::{BTreeMap, HashSet};

use enforcer_common::{
    RuleKey, RuleValue, SLOT_DEAD, SLOT_EMPTY, SLOT_LIVE, SLOT_TAKEN, TABLE_PROBES, TableSlot,
    overflow_bit, table_hash, table_home,
};

/// What the daemon knows of each slot: 0 empty, 1 dead (or taken by a write that did not
/// finish: free either way), else live with the key's fingerprint (bit 31 set). Four bytes a
/// slot instead of the slot's 48.
const FREE_EMPTY: u32 = 0;
const FREE_DEAD: u32 = 1;
const LIVE_BIT: u32 = 1 << 31;

fn fingerprint(key: &RuleKey) -> u32 {
    LIVE_BIT | (table_hash(key) >> 33) as u32
}

/// The table's occupancy as this daemon wrote it (the pin lock makes it the only writer).
pub struct Table {
    mask: u32,
    slots: Vec<u32>,
    /// Rules in the overflow map.
    overflow: HashSet<RuleKey>,
}

/// Slot writes of one step, in order.
pub type SlotWrites = Vec<(u32, TableSlot)>;

/// The writes that add or change rules: the slots written taken, then the same slots live,
/// then the slots of replaced values dead; overflow rules are written between the first two.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Additions {
    pub taken: SlotWrites,
    pub live: SlotWrites,
    pub overflow: Vec<(RuleKey, RuleValue)>,
    pub dead: SlotWrites,
}

/// The writes that remove rules.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removals {
    pub dead: SlotWrites,
    pub overflow: Vec<RuleKey>,
}

/// Reads a slot's key from the kernel, when two live slots near a key's home share its
/// fingerprint.
pub type ReadKey<'a> = dyn FnMut(u32) -> anyhow::Result<RuleKey> + 'a;

pub fn slot(key: RuleKey, value: RuleValue, state: u32) -> TableSlot {
    TableSlot {
        key,
        value,
        state,
        pad: 0,
    }
}

impl Table {
    /// An empty table of `slots` slots (a power of two).
    pub fn new(slots: u32) -> Self {
        Self {
            mask: slots.saturating_sub(1),
            slots: vec![FREE_EMPTY; slots as usize],
            overflow: HashSet::new(),
        }
    }

    /// The table as read back from the kernel: every slot, and the overflow map's keys. Returns
    /// the live rules and the slots of live duplicates (an apply cut short between writing a
    /// changed rule's new slot and killing its old one), which must be written dead.
    pub fn from_kernel(
        slots: impl IntoIterator<Item = TableSlot>,
        overflow: impl IntoIterator<Item = RuleKey>,
    ) -> (Self, Vec<(RuleKey, RuleValue)>, SlotWrites) {
        let mut states = Vec::new();
        let mut live = Vec::new();
        let mut seen = HashSet::new();
        let mut duplicates = Vec::new();
        for (i, s) in slots.into_iter().enumerate() {
            states.push(match s.state {
                SLOT_EMPTY => FREE_EMPTY,
                SLOT_LIVE if seen.insert(s.key) => {
                    live.push((s.key, s.value));
                    fingerprint(&s.key)
                }
                SLOT_LIVE => {
                    duplicates.push((i as u32, slot(s.key, s.value, SLOT_DEAD)));
                    FREE_DEAD
                }
                _ => FREE_DEAD,
            });
        }
        let mask = (states.len() as u32).saturating_sub(1);
        (
            Self {
                mask,
                slots: states,
                overflow: overflow.into_iter().collect(),
            },
            live,
            duplicates,
        )
    }

    /// No rule in a slot or in the overflow map.
    pub fn is_empty(&self) -> bool {
        self.overflow.is_empty() && self.slots.iter().all(|s| *s & LIVE_BIT == 0)
    }

    pub fn slots(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// Rules in the overflow map.
    pub fn overflowing(&self) -> usize {
        self.overflow.len()
    }

    /// The `OVERFLOW_HOMES` words that are not zero: the regions of the overflowing rules'
    /// homes.
    pub fn overflow_words(&self) -> BTreeMap<u32, u64> {
        let mut words = BTreeMap::new();
        for key in &self.overflow {
            let (word, bit) = overflow_bit(table_home(key, self.mask));
            *words.entry(word).or_insert(0) |= 1u64 << bit;
        }
        words
    }

    fn window(&self, key: &RuleKey) -> impl Iterator<Item = u32> + use<> {
        let (home, mask) = (table_home(key, self.mask), self.mask);
        (0..TABLE_PROBES.min(mask + 1)).map(move |i| home.wrapping_add(i) & mask)
    }

    /// The live slot holding `key`.
    fn find(&self, key: &RuleKey, read: &mut ReadKey<'_>) -> anyhow::Result<u32> {
        let fp = fingerprint(key);
        let candidates: Vec<u32> = self
            .window(key)
            .filter(|&i| self.slots[i as usize] == fp)
            .collect();
        if let [only] = candidates[..] {
            return Ok(only);
        }
        for i in candidates {
            if read(i)? == *key {
                return Ok(i);
            }
        }
        anyhow::bail!("an exact rule is missing from RULES_TABLE")
    }

    /// A free slot for `key`, taken in the mirror; `None`: the rule overflows.
    fn place(&mut self, key: &RuleKey) -> Option<u32> {
        let i = self
            .window(key)
            .find(|&i| self.slots[i as usize] & LIVE_BIT == 0)?;
        self.slots[i as usize] = fingerprint(key);
        Some(i)
    }

    /// Places `entries`, all new to the table, for a table no program reads yet (written
    /// without the taken step). Returns `slot << 32 | entry index` for the placed ones, in
    /// slot order but for the last homes, whose probes may wrap to the first slots, and the
    /// overflowing rules. Placing in the order of the home slots walks the occupancy from one
    /// end to the other rather than at random; integers sort a million rules cheaply.
    pub fn place_all_new(
        &mut self,
        entries: &[(RuleKey, RuleValue)],
    ) -> (Vec<u64>, Vec<(RuleKey, RuleValue)>) {
        let mut order: Vec<u64> = entries
            .iter()
            .enumerate()
            .map(|(n, (k, _))| u64::from(table_home(k, self.mask)) << 32 | n as u64)
            .collect();
        order.sort_unstable();
        let mut overflow = Vec::new();
        order.retain_mut(|o| {
            let n = (*o & u64::from(u32::MAX)) as usize;
            let Some(&(k, v)) = entries.get(n) else {
                return false;
            };
            match self.place(&k) {
                Some(i) => {
                    *o = u64::from(i) << 32 | n as u64;
                    true
                }
                None => {
                    self.overflow.insert(k);
                    overflow.push((k, v));
                    false
                }
            }
        });
        (order, overflow)
    }

    /// Adds rules and changes values: `entries` are (key, new value, the value in force if
    /// the key has one).
    pub fn add(
        &mut self,
        entries: &[(RuleKey, RuleValue, Option<RuleValue>)],
        read: &mut ReadKey<'_>,
    ) -> anyhow::Result<Additions> {
        let mut out = Additions::default();
        // Old slots are looked up before any new one is taken, and marked dead after all
        // are: a slot freed here is not given to another rule before it is dead.
        let mut replaced = Vec::new();
        for (key, value, old) in entries {
            if let Some(old) = old {
                if self.overflow.contains(key) {
                    // A hash map update replaces the value at once.
                    out.overflow.push((*key, *value));
                    continue;
                }
                replaced.push((self.find(key, read)?, slot(*key, *old, SLOT_DEAD)));
            }
            match self.place(key) {
                Some(i) => {
                    out.taken.push((i, slot(*key, *value, SLOT_TAKEN)));
                    out.live.push((i, slot(*key, *value, SLOT_LIVE)));
                }
                None => {
                    self.overflow.insert(*key);
                    out.overflow.push((*key, *value));
                }
            }
        }
        for (i, s) in replaced {
            self.slots[i as usize] = FREE_DEAD;
            out.dead.push((i, s));
        }
        Ok(out)
    }

    /// Removes rules: (key, the value in force).
    pub fn remove(
        &mut self,
        entries: &[(RuleKey, RuleValue)],
        read: &mut ReadKey<'_>,
    ) -> anyhow::Result<Removals> {
        let mut out = Removals::default();
        for (key, value) in entries {
            if self.overflow.remove(key) {
                out.overflow.push(*key);
                continue;
            }
            let i = self.find(key, read)?;
            self.slots[i as usize] = FREE_DEAD;
            out.dead.push((i, slot(*key, *value, SLOT_DEAD)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn key(n: u32) -> RuleKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&n.to_be_bytes());
        RuleKey {
            policy: 0,
            port: 443,
            proto: 6,
            pad: 0,
            addr,
        }
    }

    fn val(id: u32) -> RuleValue {
        RuleValue {
            rule_id: id,
            ..RuleValue::default()
        }
    }

    /// The kernel's table after the writes, and the lookup the programs make.
    struct Kernel {
        slots: Vec<TableSlot>,
        overflow: HashMap<RuleKey, RuleValue>,
        words: BTreeMap<u32, u64>,
    }

    impl Kernel {
        fn new(n: u32) -> Self {
            Self {
                slots: vec![TableSlot::default(); n as usize],
                overflow: HashMap::new(),
                words: BTreeMap::new(),
            }
        }

        fn write(&mut self, w: &SlotWrites) {
            for (i, s) in w {
                self.slots[*i as usize] = *s;
            }
        }

        fn apply_add(&mut self, a: &Additions) {
            self.write(&a.taken);
            self.overflow.extend(a.overflow.iter().copied());
            self.write(&a.live);
            self.write(&a.dead);
        }

        fn apply_remove(&mut self, r: &Removals) {
            self.write(&r.dead);
            for k in &r.overflow {
                self.overflow.remove(k);
            }
        }

        /// What `exact_vset` in the programs does.
        fn lookup(&self, k: &RuleKey) -> Option<RuleValue> {
            let mask = self.slots.len() as u32 - 1;
            let home = table_home(k, mask);
            for i in 0..TABLE_PROBES {
                let s = &self.slots[(home.wrapping_add(i) & mask) as usize];
                if s.state == SLOT_EMPTY {
                    break;
                }
                if s.state == SLOT_LIVE && s.key == *k {
                    return Some(s.value);
                }
            }
            let (word, bit) = overflow_bit(home);
            let words = self.words.get(&word).copied().unwrap_or(0);
            if (words >> bit) & 1 == 0 {
                return None;
            }
            self.overflow.get(k).copied()
        }

        fn read(&self) -> impl FnMut(u32) -> anyhow::Result<RuleKey> + '_ {
            |i| Ok(self.slots[i as usize].key)
        }
    }

    #[test]
    fn a_million_sequential_addresses_fit_with_few_overflowing() {
        let mut t = Table::new(1 << 21);
        let entries: Vec<_> = (0..1_000_000).map(|n| (key(n), val(n), None)).collect();
        let a = t.add(&entries, &mut |_| unreachable!()).unwrap();
        // Linear probing at load 0.48: all but about 0.4 % within 8 slots of home.
        assert!(a.overflow.len() < 5_000, "{} overflow", a.overflow.len());
        // Their homes' regions: a miss elsewhere never reads the overflow map.
        let regions: u32 = t.overflow_words().values().map(|w| w.count_ones()).sum();
        assert!(regions < 5_000, "{regions} of 32768 regions");
        assert_eq!(a.taken.len() + a.overflow.len(), 1_000_000);
    }

    #[test]
    fn rules_added_changed_and_removed_are_found_where_the_programs_look() {
        for (slots, rules) in [(64u32, 40u32), (16, 20), (32, 16)] {
            added_changed_removed(slots, rules);
        }
    }

    /// A new table filled at once: every rule found by the programs' lookup, the slots in
    /// order but for wrapped probes, and a table later changed by `add` as usual.
    #[test]
    fn a_new_table_placed_at_once_is_what_lookups_find() {
        for (slots, rules) in [(64, 40), (64, 100), (1024, 1000)] {
            let mut t = Table::new(slots);
            let mut k = Kernel::new(slots);
            let entries: Vec<_> = (0..rules).map(|n| (key(n), val(n))).collect();
            let (order, overflow) = t.place_all_new(&entries);
            assert_eq!(order.len() + overflow.len(), rules as usize);
            let placed: Vec<u32> = order.iter().map(|o| (*o >> 32) as u32).collect();
            let head = placed
                .windows(2)
                .position(|w| w[1] < w[0])
                .map_or(placed.len(), |p| p + 1);
            let wrapped = &placed[head..];
            assert!(
                wrapped.is_sorted() && wrapped.iter().all(|i| *i < TABLE_PROBES),
                "slots in order but for wrapped probes: {wrapped:?}"
            );
            for o in &order {
                let (i, n) = ((*o >> 32) as u32, (*o & 0xffff_ffff) as usize);
                let (key, value) = entries[n];
                k.slots[i as usize] = slot(key, value, SLOT_LIVE);
            }
            k.overflow.extend(overflow.iter().copied());
            k.words = t.overflow_words();
            for n in 0..rules {
                assert_eq!(k.lookup(&key(n)), Some(val(n)), "rule {n} of {rules}");
            }
            assert_eq!(t.overflowing(), overflow.len());
            let more = t
                .add(&[(key(rules), val(rules), None)], &mut k.read())
                .unwrap();
            k.apply_add(&more);
            k.words = t.overflow_words();
            assert_eq!(k.lookup(&key(rules)), Some(val(rules)));
        }
    }

    fn added_changed_removed(slots: u32, rules: u32) {
        let mut t = Table::new(slots);
        let mut k = Kernel::new(slots);
        let entries: Vec<_> = (0..rules).map(|n| (key(n), val(n), None)).collect();
        let a = t.add(&entries, &mut k.read()).unwrap();
        assert_eq!(a.overflow.len() as u32, rules.saturating_sub(slots));
        k.words = t.overflow_words();
        k.apply_add(&a);
        for n in 0..rules {
            assert_eq!(k.lookup(&key(n)), Some(val(n)), "rule {n}");
        }
        // Change every value: each changed rule gets a new slot (or the overflow) before its
        // old slot dies.
        let changes: Vec<_> = (0..rules)
            .map(|n| (key(n), val(n + 100), Some(val(n))))
            .collect();
        let a = t.add(&changes, &mut k.read()).unwrap();
        for (i, _) in &a.taken {
            assert!(
                a.dead.iter().all(|(d, _)| d != i),
                "a slot freed by this apply is reused by it"
            );
        }
        k.words = t.overflow_words();
        k.apply_add(&a);
        for n in 0..rules {
            assert_eq!(k.lookup(&key(n)), Some(val(n + 100)), "rule {n}");
        }
        let gone: Vec<_> = (0..rules / 2).map(|n| (key(n), val(n + 100))).collect();
        let r = t.remove(&gone, &mut k.read()).unwrap();
        k.apply_remove(&r);
        k.words = t.overflow_words();
        for n in 0..rules {
            let want = (n >= rules / 2).then(|| val(n + 100));
            assert_eq!(k.lookup(&key(n)), want, "rule {n}");
        }
        // What the kernel holds reads back as the same rules.
        let (t2, mut live, dups) = Table::from_kernel(k.slots.clone(), k.overflow.keys().copied());
        live.extend(k.overflow.iter().map(|(k, v)| (*k, *v)));
        live.sort();
        let want: Vec<_> = (rules / 2..rules).map(|n| (key(n), val(n + 100))).collect();
        assert_eq!(live, want);
        assert!(dups.is_empty());
        assert_eq!(t2.overflowing(), t.overflowing());
        assert_eq!(t2.overflow_words(), t.overflow_words());
    }

    #[test]
    fn a_half_done_change_reads_back_with_its_duplicate_to_kill() {
        let k1 = key(1);
        let slots = vec![
            slot(k1, val(1), SLOT_LIVE),
            slot(k1, val(2), SLOT_LIVE),
            slot(key(2), val(3), SLOT_TAKEN),
            TableSlot::default(),
        ];
        let (t, live, dups) = Table::from_kernel(slots, []);
        assert_eq!(live, vec![(k1, val(1))]);
        assert_eq!(dups, vec![(1, slot(k1, val(2), SLOT_DEAD))]);
        assert_eq!(t.slots[2], FREE_DEAD);
    }

    #[test]
    fn every_state_change_a_reader_can_race_leaves_the_key_alone() {
        let mut t = Table::new(16);
        let mut k = Kernel::new(16);
        let a = t.add(&[(key(7), val(1), None)], &mut k.read()).unwrap();
        // taken → live: the same key and value, only the state differs.
        for ((i, taken), (j, live)) in a.taken.iter().zip(&a.live) {
            assert_eq!((i, taken.key, taken.value), (j, live.key, live.value));
        }
        k.apply_add(&a);
        let r = t.remove(&[(key(7), val(1))], &mut k.read()).unwrap();
        let (i, dead) = r.dead[0];
        assert_eq!((dead.key, dead.value), (key(7), val(1)));
        assert_eq!(k.slots[i as usize].key, key(7));
    }
}
