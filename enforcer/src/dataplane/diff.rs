//! Difference between the rules a map holds and the rules it should hold.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Keys to insert, or whose value changes.
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
    pub unchanged: usize,
}

/// `live` is the map's content sorted by key (as the dump gives it after a sort); a merge of the
/// two sorted sequences is linear and allocates only the result, which matters at a million
/// rules.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    live: &[(K, V)],
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    let mut unchanged = 0;
    let mut live = live.iter().peekable();
    for (k, v) in desired {
        while let Some((lk, _)) = live.next_if(|(lk, _)| lk < k) {
            removals.push(lk.clone());
        }
        match live.next_if(|(lk, _)| lk == k) {
            Some((_, lv)) if lv == v => unchanged += 1,
            _ => upserts.push((k.clone(), v.clone())),
        }
    }
    removals.extend(live.map(|(k, _)| k.clone()));
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

    fn sorted(pairs: &[(u8, u8)]) -> Vec<(u8, u8)> {
        m(pairs).into_iter().collect()
    }

    #[test]
    fn adds_updates_and_removes() {
        let d = diff(
            &sorted(&[(1, 1), (2, 2), (3, 3)]),
            &m(&[(2, 2), (3, 30), (4, 4)]),
        );
        assert_eq!(d.upserts, vec![(3, 30), (4, 4)]);
        assert_eq!(d.removals, vec![1]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn upserts_go_before_removals_when_they_fit() {
        let d = diff(&sorted(&[(1, 1), (2, 2)]), &m(&[(2, 2), (3, 3)]));
        assert_eq!(d.ordered(2, 3), vec![Op::Put(3, 3), Op::Delete(1)]);
    }

    #[test]
    fn removals_go_first_only_when_the_map_would_overflow() {
        let d = diff(&sorted(&[(1, 1), (2, 2)]), &m(&[(2, 2), (3, 3)]));
        assert_eq!(d.ordered(2, 2), vec![Op::Delete(1), Op::Put(3, 3)]);
    }

    #[test]
    fn interleaved_keys_merge_in_one_pass() {
        let d = diff(
            &sorted(&[(1, 1), (3, 3), (5, 5), (7, 7), (9, 9)]),
            &m(&[(0, 0), (3, 30), (5, 5), (6, 6), (10, 10)]),
        );
        assert_eq!(d.upserts, vec![(0, 0), (3, 30), (6, 6), (10, 10)]);
        assert_eq!(d.removals, vec![1, 7, 9]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn identical_sets_give_an_empty_diff() {
        let d = diff(&sorted(&[(1, 1)]), &m(&[(1, 1)]));
        assert!(d.upserts.is_empty() && d.removals.is_empty());
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn from_and_to_empty() {
        assert_eq!(diff(&sorted(&[]), &m(&[(1, 1)])).upserts.len(), 1);
        assert_eq!(diff(&sorted(&[(1, 1)]), &m(&[])).removals, vec![1]);
    }
}
