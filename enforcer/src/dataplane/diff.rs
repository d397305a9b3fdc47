//! Difference between the rules a map holds and the rules it should hold.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Keys to insert, or whose value changes.
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
    pub unchanged: usize,
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    live: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let mut upserts = Vec::new();
    let mut unchanged = 0;
    for (k, v) in desired {
        match live.get(k) {
            Some(old) if old == v => unchanged += 1,
            _ => upserts.push((k.clone(), v.clone())),
        }
    }
    let removals = live
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    Diff {
        upserts,
        removals,
        unchanged,
    }
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<K, V> {
    Put(K, V),
    Delete(K),
}

impl<K: Clone, V: Clone> Diff<K, V> {
    /// The writes in the order to make them. Upserts go first so that a rule present before
    /// and after is never missing and a replaced rule never lapses; only when the map cannot
    /// hold the live entries plus the upserts at once do the removals (of rules that are going
    /// away anyway) go first.
    pub fn ordered(&self, live: usize, capacity: usize) -> Vec<Op<K, V>> {
        let puts = self
            .upserts
            .iter()
            .map(|(k, v)| Op::Put(k.clone(), v.clone()));
        let dels = self.removals.iter().map(|k| Op::Delete(k.clone()));
        if live + self.upserts.len() > capacity {
            dels.chain(puts).collect()
        } else {
            puts.chain(dels).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(u8, u8)]) -> BTreeMap<u8, u8> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn adds_updates_and_removes() {
        let d = diff(
            &m(&[(1, 1), (2, 2), (3, 3)]),
            &m(&[(2, 2), (3, 30), (4, 4)]),
        );
        assert_eq!(d.upserts, vec![(3, 30), (4, 4)]);
        assert_eq!(d.removals, vec![1]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn upserts_go_before_removals_when_they_fit() {
        let d = diff(&m(&[(1, 1), (2, 2)]), &m(&[(2, 2), (3, 3)]));
        assert_eq!(d.ordered(2, 3), vec![Op::Put(3, 3), Op::Delete(1)]);
    }

    #[test]
    fn removals_go_first_only_when_the_map_would_overflow() {
        let d = diff(&m(&[(1, 1), (2, 2)]), &m(&[(2, 2), (3, 3)]));
        assert_eq!(d.ordered(2, 2), vec![Op::Delete(1), Op::Put(3, 3)]);
    }

    #[test]
    fn identical_sets_give_an_empty_diff() {
        let d = diff(&m(&[(1, 1)]), &m(&[(1, 1)]));
        assert!(d.upserts.is_empty() && d.removals.is_empty());
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn from_and_to_empty() {
        assert_eq!(diff(&m(&[]), &m(&[(1, 1)])).upserts.len(), 1);
        assert_eq!(diff(&m(&[(1, 1)]), &m(&[])).removals, vec![1]);
    }
}
