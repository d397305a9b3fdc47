//! Difference between the rules a map holds and the rules it should hold.

/// Positions, not copies: at a million rules a diff is 4 bytes a changed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Indices into `desired` of keys to insert, or whose value changes.
    pub upserts: Vec<u32>,
    /// Indices into `live` of keys to remove.
    pub removals: Vec<u32>,
    pub unchanged: usize,
}

/// `live` and `desired` are sorted by key, each key once; a merge of the two sorted sequences
/// is linear and allocates only the result.
pub fn diff<K: Ord, V: PartialEq>(live: &[(K, V)], desired: &[(K, V)]) -> Diff {
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    let mut unchanged = 0;
    let mut l = 0;
    for (d, (k, v)) in desired.iter().enumerate() {
        while l < live.len() && live[l].0 < *k {
            removals.push(l as u32);
            l += 1;
        }
        if l < live.len() && live[l].0 == *k {
            if live[l].1 == *v {
                unchanged += 1;
            } else {
                upserts.push(d as u32);
            }
            l += 1;
        } else {
            upserts.push(d as u32);
        }
    }
    removals.extend((l..live.len()).map(|i| i as u32));
    Diff {
        upserts,
        removals,
        unchanged,
    }
}

impl Diff {
    /// Upserts go first, so that a rule present before and after is never missing and a
    /// replaced rule never lapses; only when the map cannot hold the live entries plus the
    /// upserts at once do the removals (of rules that are going away anyway) go first.
    pub fn removals_first(&self, live: usize, capacity: usize) -> bool {
        live + self.upserts.len() > capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(v: &'a [(u8, u8)], idx: &[u32]) -> Vec<&'a (u8, u8)> {
        idx.iter().map(|i| &v[*i as usize]).collect()
    }

    #[test]
    fn adds_updates_and_removes() {
        let (live, want) = ([(1, 1), (2, 2), (3, 3)], [(2, 2), (3, 30), (4, 4)]);
        let d = diff(&live, &want);
        assert_eq!(at(&want, &d.upserts), [&(3, 30), &(4, 4)]);
        assert_eq!(at(&live, &d.removals), [&(1, 1)]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn removals_go_first_only_when_the_map_would_overflow() {
        let d = diff(&[(1, 1), (2, 2)], &[(2, 2), (3, 3)]);
        assert!(!d.removals_first(2, 3));
        assert!(d.removals_first(2, 2));
    }

    #[test]
    fn interleaved_keys_merge_in_one_pass() {
        let live = [(1, 1), (3, 3), (5, 5), (7, 7), (9, 9)];
        let want = [(0, 0), (3, 30), (5, 5), (6, 6), (10, 10)];
        let d = diff(&live, &want);
        assert_eq!(
            at(&want, &d.upserts),
            [&(0, 0), &(3, 30), &(6, 6), &(10, 10)]
        );
        assert_eq!(at(&live, &d.removals), [&(1, 1), &(7, 7), &(9, 9)]);
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn identical_sets_give_an_empty_diff() {
        let d = diff(&[(1, 1)], &[(1, 1)]);
        assert!(d.upserts.is_empty() && d.removals.is_empty());
        assert_eq!(d.unchanged, 1);
    }

    #[test]
    fn from_and_to_empty() {
        assert_eq!(diff(&[], &[(1u8, 1u8)]).upserts, vec![0]);
        assert_eq!(diff(&[(1u8, 1u8)], &[]).removals, vec![0]);
    }
}
