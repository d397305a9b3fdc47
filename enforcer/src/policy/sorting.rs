//! Sorting a million rules on every reload, in less time than a plain sort: the daemon's
//! rules are mostly in order already, and the machine has more than one core.

/// Sorts by key, cheaply when most of `items` is sorted already: the static rules come in
/// key order ([`Statics::in_kernel_order`](super::statics::Statics::in_kernel_order)), with
/// DNS answers behind them. Only the unsorted tail is sorted, then merged in.
pub fn sort_mostly_sorted<K: Ord + Copy, V: Copy>(items: &mut Vec<(K, V)>) {
    let head = items
        .windows(2)
        .position(|w| w[0].0 > w[1].0)
        .map_or(items.len(), |i| i + 1);
    if head == items.len() {
        return;
    }
    if head < items.len() / 2 {
        items.sort_unstable_by_key(|a| a.0);
        return;
    }
    let mut tail = items.split_off(head);
    tail.sort_unstable_by_key(|a| a.0);
    merge_back(items, &tail, |a| a.0);
}

/// Below this, one thread sorts faster than two plus the merge.
const PARALLEL_FROM: usize = 1 << 16;

/// Sorts the two halves on two threads, then merges them: the static rules of a reload are
/// sorted in about half the time on two cores. Each half is sorted by the standard library's
/// stable sort, which merges the runs it finds: the endpoints of one ServiceEntry are often
/// listed in order, and then a million of them sort in a few passes. Needs room for about
/// as many items again.
pub fn par_sort<T: Ord + Copy + Send>(items: &mut Vec<T>) {
    if items.len() < PARALLEL_FROM {
        items.sort();
        return;
    }
    let mid = items.len() / 2;
    let both = std::thread::scope(|s| {
        let (left, right) = items.split_at_mut(mid);
        let other = std::thread::Builder::new().spawn_scoped(s, move || left.sort());
        right.sort();
        other.is_ok()
    });
    if !both {
        // No second thread (a tasks limit): the sorted right half is one run for this sort.
        items.sort();
        return;
    }
    let right = items.split_off(mid);
    merge_back(items, &right, |a| *a);
}

/// Appends sorted `tail` to sorted `items`, merged from the back, in place.
fn merge_back<T: Copy, K: Ord>(items: &mut Vec<T>, tail: &[T], key: impl Fn(&T) -> K) {
    let head = items.len();
    items.extend_from_slice(tail);
    let (mut i, mut j) = (head, tail.len());
    for w in (0..items.len()).rev() {
        if j == 0 {
            break;
        }
        if i > 0 && key(&items[i - 1]) > key(&tail[j - 1]) {
            items[w] = items[i - 1];
            i -= 1;
        } else {
            items[w] = tail[j - 1];
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mostly_sorted_input_sorts_like_any_other() {
        let cases: [&[u32]; 7] = [
            &[],
            &[1],
            &[1, 2, 3, 4],
            &[1, 3, 5, 7, 9, 2, 8, 0],
            &[1, 3, 5, 7, 9, 11, 4, 4, 12],
            &[5, 4, 3, 2, 1],
            &[2, 2, 2, 1],
        ];
        for case in cases {
            let mut items: Vec<(u32, usize)> = case.iter().map(|k| (*k, 0)).collect();
            sort_mostly_sorted(&mut items);
            let mut want = case.to_vec();
            want.sort_unstable();
            let got: Vec<u32> = items.iter().map(|(k, _)| *k).collect();
            assert_eq!(got, want, "{case:?}");
        }
    }

    #[test]
    fn parallel_sort_sorts_large_inputs() {
        // A fixed pseudo-random permutation with repeats, large enough for two threads.
        let n = PARALLEL_FROM as u64 * 2 + 7;
        let mut items: Vec<u64> = (0..n).map(|i| (i * 2_654_435_761) % 100_003).collect();
        let mut want = items.clone();
        want.sort_unstable();
        par_sort(&mut items);
        assert_eq!(items, want);
    }
}
