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

impl<K, V> Diff<K, V> {
    /// Number of entries the map holds at its fullest if upserts go in before removals.
    pub fn peak_entries(&self, live: usize) -> usize {
        live + self.upserts.len()
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
        assert_eq!(d.peak_entries(3), 5);
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
