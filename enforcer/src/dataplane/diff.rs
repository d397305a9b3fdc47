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

/// A diff against rules listed one by one rather than held: what changes is copied out
/// (never the whole list), and [`patch`] turns `live` into the listed rules in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<K, V> {
    /// Keys to insert, or whose value changes, with the new value; sorted by key.
    pub upserts: Vec<(K, V)>,
    /// How many of `upserts` are keys `live` does not hold.
    pub inserted: usize,
    /// Indices into `live` of keys to remove, ascending.
    pub removals: Vec<u32>,
    pub unchanged: usize,
}

/// The rules listed out of order, or a key twice: the list is not what the caller promised.
#[derive(Debug, thiserror::Error)]
#[error("desired rules listed out of key order")]
pub struct OutOfOrder;

/// [`diff`] of `live` against `desired` given as an iterator (sorted by key, each key once).
pub fn diff_listed<K: Ord + Copy, V: PartialEq + Copy>(
    live: &[(K, V)],
    desired: impl IntoIterator<Item = (K, V)>,
) -> Result<Changes<K, V>, OutOfOrder> {
    let (mut upserts, mut inserted) = (Vec::new(), 0);
    let (removals, unchanged) = walk(live, desired, |rule, new| {
        upserts.push(rule);
        inserted += usize::from(new);
    })?;
    Ok(Changes {
        upserts,
        inserted,
        removals,
        unchanged,
    })
}

/// The indices into `live` of keys `desired` (sorted, each key once) does not hold: what
/// [`diff_listed`] removes, without copying what it would add.
pub fn removals_listed<K: Ord + Copy, V: PartialEq + Copy>(
    live: &[(K, V)],
    desired: impl IntoIterator<Item = (K, V)>,
) -> Result<Vec<u32>, OutOfOrder> {
    walk(live, desired, |_, _| {}).map(|(removals, _)| removals)
}

/// Walks `desired` beside `live`: `upsert` gets each rule to write and whether its key is
/// new; returns the removals and how many rules are unchanged.
fn walk<K: Ord + Copy, V: PartialEq + Copy>(
    live: &[(K, V)],
    desired: impl IntoIterator<Item = (K, V)>,
    mut upsert: impl FnMut((K, V), bool),
) -> Result<(Vec<u32>, usize), OutOfOrder> {
    let (mut removals, mut unchanged) = (Vec::new(), 0);
    let mut l = 0;
    let mut last: Option<K> = None;
    for (k, v) in desired {
        if last.is_some_and(|p| p >= k) {
            return Err(OutOfOrder);
        }
        last = Some(k);
        while l < live.len() && live[l].0 < k {
            removals.push(l as u32);
            l += 1;
        }
        if l < live.len() && live[l].0 == k {
            if live[l].1 == v {
                unchanged += 1;
            } else {
                upsert((k, v), false);
            }
            l += 1;
        } else {
            upsert((k, v), true);
        }
    }
    removals.extend((l..live.len()).map(|i| i as u32));
    Ok((removals, unchanged))
}

impl<K, V> Changes<K, V> {
    /// How many rules `live` holds once patched.
    pub fn len_after(&self, live: usize) -> usize {
        live - self.removals.len() + self.inserted
    }

    /// As [`Diff::removals_first`].
    pub fn removals_first(&self, live: usize, capacity: usize) -> bool {
        removals_first(live, self.upserts.len(), capacity)
    }
}

/// Makes `live` the desired rules `d` was computed against, in place: the removed rules go,
/// then the upserts are merged in from the back. `live` grows by the inserted rules only,
/// never to a second copy.
pub fn patch<K: Ord + Copy, V: Copy>(live: &mut Vec<(K, V)>, d: &Changes<K, V>) {
    let mut gone = d.removals.iter().map(|i| *i as usize).peekable();
    let mut kept = 0;
    for i in 0..live.len() {
        if gone.next_if_eq(&i).is_some() {
            continue;
        }
        live[kept] = live[i];
        kept += 1;
    }
    live.truncate(kept);
    let Some(fill) = d.upserts.first().copied() else {
        return;
    };
    live.reserve_exact(d.inserted);
    live.resize(kept + d.inserted, fill);
    let (mut r, mut u, mut w) = (kept, d.upserts.len(), kept + d.inserted);
    while u > 0 {
        let up = d.upserts[u - 1];
        w -= 1;
        if r > 0 && live[r - 1].0 > up.0 {
            live[w] = live[r - 1];
            r -= 1;
            continue;
        }
        if r > 0 && live[r - 1].0 == up.0 {
            r -= 1;
        }
        live[w] = up;
        u -= 1;
    }
}

fn removals_first(live: usize, upserts: usize, capacity: usize) -> bool {
    live + upserts > capacity
}

impl Diff {
    /// Upserts go first, so that a rule present before and after is never missing and a
    /// replaced rule never lapses; only when the map cannot hold the live entries plus the
    /// upserts at once do the removals (of rules that are going away anyway) go first.
    pub fn removals_first(&self, live: usize, capacity: usize) -> bool {
        removals_first(live, self.upserts.len(), capacity)
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

    /// Listed and patched, `live` becomes `want`, and the diff names what [`diff`] names.
    fn check_listed(live: &[(u8, u8)], want: &[(u8, u8)]) {
        let d = diff_listed(live, want.iter().copied()).unwrap();
        let whole = diff(live, want);
        assert_eq!(
            removals_listed(live, want.iter().copied()).unwrap(),
            whole.removals
        );
        assert_eq!(d.removals, whole.removals);
        assert_eq!(d.unchanged, whole.unchanged);
        let upserts: Vec<(u8, u8)> = at(want, &whole.upserts).into_iter().copied().collect();
        assert_eq!(d.upserts, upserts);
        let mut patched = live.to_vec();
        patch(&mut patched, &d);
        assert_eq!(patched, want, "from {live:?}");
        assert_eq!(d.len_after(live.len()), want.len());
    }

    #[test]
    fn a_listed_diff_patches_live_into_the_desired_rules() {
        check_listed(&[(1, 1), (2, 2), (3, 3)], &[(2, 2), (3, 30), (4, 4)]);
        check_listed(&[], &[(1, 1), (2, 2)]);
        check_listed(&[(1, 1), (2, 2)], &[]);
        check_listed(&[(5, 5)], &[(1, 1), (5, 6), (9, 9)]);
        check_listed(&[(1, 1), (3, 3), (5, 5)], &[(0, 0), (2, 2), (4, 4), (6, 6)]);
        // Every pair of subsets of eight keys, with values changed on some.
        for a in 0u16..256 {
            for b in (0u16..256).step_by(7) {
                let live: Vec<(u8, u8)> = (0..8)
                    .filter(|i| a & (1 << i) != 0)
                    .map(|i| (i, i))
                    .collect();
                let want: Vec<(u8, u8)> = (0..8)
                    .filter(|i| b & (1 << i) != 0)
                    .map(|i| {
                        (
                            i,
                            if (a ^ b) & (1 << ((i + 3) % 8)) != 0 {
                                i + 1
                            } else {
                                i
                            },
                        )
                    })
                    .collect();
                check_listed(&live, &want);
            }
        }
    }

    #[test]
    fn a_list_out_of_order_or_with_a_key_twice_is_refused() {
        assert!(diff_listed(&[(1u8, 1u8)], [(2, 2), (1, 1)]).is_err());
        assert!(diff_listed(&[(1u8, 1u8)], [(2, 2), (2, 3)]).is_err());
    }

    #[test]
    fn from_and_to_empty() {
        assert_eq!(diff(&[], &[(1u8, 1u8)]).upserts, vec![0]);
        assert_eq!(diff(&[(1u8, 1u8)], &[]).removals, vec![0]);
    }
}
