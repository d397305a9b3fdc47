//! A map that remembers which key was touched least recently, overall and within each
//! key's group (a workload), so a bounded table can let the oldest entry go first in
//! O(log n), and one group past its quota lose its own oldest rather than everyone's
//! (docs/architecture.md, "Learn mode").

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// A key that belongs to a group.
pub trait Grouped {
    type Group: Hash + Eq + Clone;
    fn group(&self) -> Self::Group;
}

#[derive(Debug, Clone)]
pub struct Lru<K: Grouped, V> {
    map: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    groups: HashMap<K::Group, BTreeMap<u64, K>>,
    next: u64,
}

impl<K: Grouped, V> Default for Lru<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            groups: HashMap::new(),
            next: 0,
        }
    }
}

impl<K: Grouped + Hash + Eq + Clone, V> Lru<K, V> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries in `k`'s group.
    pub fn group_len(&self, g: &K::Group) -> usize {
        self.groups.get(g).map_or(0, BTreeMap::len)
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// The value for `k`, made the most recent; `make` builds it when absent.
    pub fn touch(&mut self, k: &K, make: impl FnOnce() -> V) -> &mut V {
        let seq = self.next;
        self.next += 1;
        let slot = self.map.entry(k.clone()).or_insert_with(|| (make(), seq));
        let group = self.groups.entry(k.group()).or_default();
        if slot.1 != seq {
            self.order.remove(&slot.1);
            group.remove(&slot.1);
            slot.1 = seq;
        }
        self.order.insert(seq, k.clone());
        group.insert(seq, k.clone());
        &mut slot.0
    }

    fn remove(&mut self, seq: u64, k: K) -> Option<(K, V)> {
        self.order.remove(&seq);
        let g = k.group();
        if let Some(group) = self.groups.get_mut(&g) {
            group.remove(&seq);
            if group.is_empty() {
                self.groups.remove(&g);
            }
        }
        let (v, _) = self.map.remove(&k)?;
        Some((k, v))
    }

    /// Removes and returns the least recently touched entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (seq, k) = self.order.first_key_value().map(|(s, k)| (*s, k.clone()))?;
        self.remove(seq, k)
    }

    /// Removes and returns the least recently touched entry of group `g`.
    pub fn pop_oldest_in(&mut self, g: &K::Group) -> Option<(K, V)> {
        let (seq, k) = self
            .groups
            .get(g)?
            .first_key_value()
            .map(|(s, k)| (*s, k.clone()))?;
        self.remove(seq, k)
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order
            .values()
            .filter_map(|k| self.map.get_key_value(k).map(|(k, (v, _))| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct K(&'static str, u32);

    impl Grouped for K {
        type Group = &'static str;
        fn group(&self) -> &'static str {
            self.0
        }
    }

    #[test]
    fn the_least_recently_touched_goes_first() {
        let mut l: Lru<K, u32> = Lru::default();
        *l.touch(&K("a", 1), || 0) += 1;
        *l.touch(&K("b", 1), || 0) += 1;
        *l.touch(&K("a", 1), || 0) += 1;
        assert_eq!(l.len(), 2);
        assert_eq!(l.iter().map(|(k, _)| k.0).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(l.pop_oldest(), Some((K("b", 1), 1)));
        assert_eq!(l.pop_oldest(), Some((K("a", 1), 2)));
        assert_eq!(l.pop_oldest(), None);
        assert!(l.is_empty() && l.groups.is_empty());
    }

    #[test]
    fn a_group_loses_its_own_oldest() {
        let mut l: Lru<K, ()> = Lru::default();
        l.touch(&K("a", 1), || ());
        l.touch(&K("b", 1), || ());
        l.touch(&K("b", 2), || ());
        l.touch(&K("b", 1), || ());
        assert_eq!(l.group_len(&"b"), 2);
        assert_eq!(l.pop_oldest_in(&"b"), Some((K("b", 2), ())));
        assert_eq!(l.group_len(&"b"), 1);
        assert_eq!(l.pop_oldest(), Some((K("a", 1), ())));
        assert_eq!(l.group_len(&"a"), 0);
        assert_eq!(l.len(), 1);
    }
}
