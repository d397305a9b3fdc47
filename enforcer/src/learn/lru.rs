//! A map that remembers which key was touched least recently, so a bounded table can let
//! its oldest entry go first in O(log n) (docs/architecture.md, "Learn mode").

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

#[derive(Debug, Clone)]
pub struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    next: u64,
}

impl<K, V> Default for Lru<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    /// The value for `k`, made the most recent; `make` builds it when absent.
    pub fn touch(&mut self, k: &K, make: impl FnOnce() -> V) -> &mut V {
        let seq = self.next;
        self.next += 1;
        let slot = self.map.entry(k.clone()).or_insert_with(|| (make(), seq));
        if slot.1 != seq {
            self.order.remove(&slot.1);
            slot.1 = seq;
        }
        self.order.insert(seq, k.clone());
        &mut slot.0
    }

    /// Removes and returns the least recently touched entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, k) = self.order.pop_first()?;
        let (v, _) = self.map.remove(&k)?;
        Some((k, v))
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

    #[test]
    fn the_least_recently_touched_goes_first() {
        let mut l: Lru<&str, u32> = Lru::default();
        *l.touch(&"a", || 0) += 1;
        *l.touch(&"b", || 0) += 1;
        *l.touch(&"a", || 0) += 1;
        assert_eq!(l.len(), 2);
        assert_eq!(l.iter().map(|(k, _)| *k).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(l.pop_oldest(), Some(("b", 1)));
        assert_eq!(l.pop_oldest(), Some(("a", 2)));
        assert_eq!(l.pop_oldest(), None);
        assert!(l.is_empty());
    }
}
