//! Cgroup id → path for event records, cached. Events carry only the id, and finding its path
//! walks the enforced cgroup trees, so answers are kept; but bounded: at most [`CAPACITY`]
//! entries, a found path is re-checked after [`RECHECK`] and dropped once the cgroup is gone,
//! and a failed lookup is retried after [`RETRY_FAILED`] instead of being remembered forever.
//! Pure: the caller passes the clock and the two filesystem operations.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

pub const CAPACITY: usize = 4096;
pub const RECHECK: Duration = Duration::from_secs(10);
pub const RETRY_FAILED: Duration = Duration::from_secs(5);

struct Entry {
    path: Option<String>,
    checked: Instant,
}

#[derive(Default)]
pub struct CgroupNames {
    entries: HashMap<u64, Entry>,
}

impl CgroupNames {
    /// The cgroup's path (with a leading `/`), or `id:N` when it cannot be found.
    /// `find` walks the trees for an id; `still` says whether a path still names the id.
    pub fn name(
        &mut self,
        id: u64,
        now: Instant,
        find: impl FnOnce(u64) -> Option<String>,
        still: impl Fn(&str, u64) -> bool,
    ) -> String {
        if let Some(e) = self.entries.get_mut(&id) {
            let age = now.duration_since(e.checked);
            match &e.path {
                Some(p) if age < RECHECK => return p.clone(),
                Some(p) if still(p, id) => {
                    e.checked = now;
                    return p.clone();
                }
                Some(_) => {}
                None if age < RETRY_FAILED => return unknown(id),
                None => {}
            }
            self.entries.remove(&id);
        }
        let path = find(id);
        self.make_room();
        let shown = path.clone().unwrap_or_else(|| unknown(id));
        self.entries.insert(id, Entry { path, checked: now });
        shown
    }

    /// Drops entries whose cgroup is gone (ids are never reused, so they would only take room).
    pub fn sweep(&mut self, still: impl Fn(&str, u64) -> bool) {
        self.entries
            .retain(|id, e| e.path.as_deref().is_some_and(|p| still(p, *id)));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// At capacity, the entry checked longest ago goes.
    fn make_room(&mut self) {
        if self.entries.len() < CAPACITY {
            return;
        }
        if let Some(oldest) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.checked)
            .map(|(id, _)| *id)
        {
            self.entries.remove(&oldest);
        }
    }
}

fn unknown(id: u64) -> String {
    format!("id:{id}")
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn found_paths_are_cached_and_rechecked() {
        let mut c = CgroupNames::default();
        let t0 = Instant::now();
        let walks = Cell::new(0);
        let find = |_| {
            walks.set(walks.get() + 1);
            Some("/a".to_owned())
        };
        assert_eq!(c.name(7, t0, find, |_, _| true), "/a");
        assert_eq!(
            c.name(7, t0 + Duration::from_secs(1), find, |_, _| panic!()),
            "/a"
        );
        assert_eq!(walks.get(), 1, "cached");
        // After RECHECK the path is checked (cheaply), not walked for.
        assert_eq!(c.name(7, t0 + RECHECK, find, |_, _| true), "/a");
        assert_eq!(walks.get(), 1);
        // The cgroup is gone (and another took its name): looked up again.
        let gone = |_| None;
        assert_eq!(c.name(7, t0 + RECHECK * 3, gone, |_, _| false), "id:7");
    }

    #[test]
    fn failures_are_retried_not_remembered() {
        let mut c = CgroupNames::default();
        let t0 = Instant::now();
        assert_eq!(c.name(9, t0, |_| None, |_, _| true), "id:9");
        let later = t0 + RETRY_FAILED / 2;
        assert_eq!(
            c.name(9, later, |_| panic!("retried too soon"), |_, _| true),
            "id:9"
        );
        let found = c.name(9, t0 + RETRY_FAILED, |_| Some("/b".to_owned()), |_, _| true);
        assert_eq!(found, "/b");
    }

    #[test]
    fn the_cache_is_bounded_and_swept() {
        let mut c = CgroupNames::default();
        let t0 = Instant::now();
        for id in 0..(CAPACITY as u64 + 100) {
            let at = t0 + Duration::from_millis(id);
            c.name(id, at, |i| Some(format!("/{i}")), |_, _| true);
        }
        assert_eq!(c.len(), CAPACITY);
        c.sweep(|_, id| id % 2 == 0);
        assert_eq!(c.len(), CAPACITY / 2);
    }
}
