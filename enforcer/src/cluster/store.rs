//! The objects of one watched resource as the daemon holds them: the last valid version of
//! each, and why a newer version was rejected (docs/kubernetes.md, "A bad edit never
//! revokes"). Pure: fed with watch events already decoded.

use std::collections::BTreeMap;

/// `namespace/name`.
pub type Key = (String, String);

/// A version of an object that failed decoding or validation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejected {
    pub resource_version: String,
    pub errors: Vec<String>,
}

/// One object: what is in force, and what was refused since.
#[derive(Debug, Clone)]
struct Slot<T> {
    valid: Option<T>,
    rejected: Option<Rejected>,
}

/// What an event did to the set in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The set in force changed (or will at the end of the relist).
    Changed,
    /// The object was refused; the version in force (if any) stays.
    Refused,
    /// Nothing in force changed.
    Same,
}

/// Last valid versions by key; during a relist the listed objects go into a second map that
/// replaces the first in one step when the list is complete.
#[derive(Debug, Clone)]
pub struct Store<T> {
    live: BTreeMap<Key, Slot<T>>,
    relist: Option<BTreeMap<Key, Slot<T>>>,
    /// A complete list has been seen.
    synced: bool,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Self {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: Clone + PartialEq> Store<T> {
    /// A relist starts: objects not listed again are gone when it ends.
    pub fn begin_relist(&mut self) {
        self.relist = Some(BTreeMap::new());
    }

    /// The relist is complete: its objects replace the set in force. Returns whether the
    /// set in force changed.
    pub fn finish_relist(&mut self) -> bool {
        let Some(listed) = self.relist.take() else {
            return false;
        };
        let before: Vec<(&Key, Option<&T>)> = self
            .live
            .iter()
            .map(|(k, s)| (k, s.valid.as_ref()))
            .collect();
        let after: Vec<(&Key, Option<&T>)> =
            listed.iter().map(|(k, s)| (k, s.valid.as_ref())).collect();
        let changed = before != after;
        self.live = listed;
        self.synced = true;
        changed
    }

    /// An object was added or modified. A refused version keeps the last valid one in force,
    /// including across a relist.
    pub fn apply(&mut self, key: Key, decoded: Result<T, Rejected>) -> Change {
        let previous = self
            .relist
            .as_ref()
            .and_then(|r| r.get(&key))
            .or_else(|| self.live.get(&key))
            .and_then(|s| s.valid.clone());
        let slot = match decoded {
            Ok(v) => Slot {
                valid: Some(v),
                rejected: None,
            },
            Err(r) => Slot {
                valid: previous.clone(),
                rejected: Some(r),
            },
        };
        let change = if slot.rejected.is_some() {
            Change::Refused
        } else if self.relist.is_some() || slot.valid != previous {
            Change::Changed
        } else {
            Change::Same
        };
        match &mut self.relist {
            Some(r) => r.insert(key, slot),
            None => self.live.insert(key, slot),
        };
        change
    }

    /// An object was deleted: whatever version was in force goes.
    pub fn delete(&mut self, key: &Key) -> Change {
        let removed = match &mut self.relist {
            Some(r) => r.remove(key),
            None => self.live.remove(key),
        };
        match removed {
            Some(s) if s.valid.is_some() => Change::Changed,
            _ => Change::Same,
        }
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The versions in force.
    pub fn valid(&self) -> impl Iterator<Item = (&Key, &T)> {
        self.live
            .iter()
            .filter_map(|(k, s)| s.valid.as_ref().map(|v| (k, v)))
    }

    /// Objects whose newest version was refused, with whether an older one is in force.
    pub fn rejected(&self) -> impl Iterator<Item = (&Key, &Rejected, bool)> {
        self.live
            .iter()
            .filter_map(|(k, s)| s.rejected.as_ref().map(|r| (k, r, s.valid.is_some())))
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> Key {
        ("payments".to_owned(), n.to_owned())
    }

    fn bad(rv: &str) -> Result<u32, Rejected> {
        Err(Rejected {
            resource_version: rv.to_owned(),
            errors: vec!["spec.hosts: required".to_owned()],
        })
    }

    fn in_force(s: &Store<u32>) -> Vec<(String, u32)> {
        s.valid().map(|(k, v)| (k.1.clone(), *v)).collect()
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_version() {
        let mut s = Store::default();
        assert_eq!(s.apply(key("api"), Ok(1)), Change::Changed);
        assert_eq!(s.apply(key("api"), bad("7")), Change::Refused);
        assert_eq!(in_force(&s), [("api".to_owned(), 1)]);
        let rejected: Vec<_> = s.rejected().collect();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].2, "the older version is in force");
        assert_eq!(s.apply(key("api"), Ok(2)), Change::Changed);
        assert_eq!(
            s.rejected().count(),
            0,
            "a valid version clears the refusal"
        );
        assert_eq!(s.apply(key("api"), Ok(2)), Change::Same);
    }

    #[test]
    fn an_object_invalid_from_the_start_allows_nothing() {
        let mut s = Store::default();
        assert_eq!(s.apply(key("api"), bad("3")), Change::Refused);
        assert!(in_force(&s).is_empty());
        let rejected: Vec<_> = s.rejected().collect();
        assert!(!rejected[0].2);
    }

    #[test]
    fn a_relist_swaps_in_at_its_end_and_drops_what_is_gone() {
        let mut s = Store::default();
        s.apply(key("a"), Ok(1));
        s.apply(key("b"), Ok(1));
        s.begin_relist();
        assert!(!s.synced());
        s.apply(key("a"), Ok(2));
        assert_eq!(
            in_force(&s),
            [("a".to_owned(), 1), ("b".to_owned(), 1)],
            "nothing changes before the list is complete"
        );
        assert!(s.finish_relist());
        assert!(s.synced());
        assert_eq!(
            in_force(&s),
            [("a".to_owned(), 2)],
            "b was not listed again"
        );
    }

    #[test]
    fn an_object_refused_at_relist_keeps_its_version_from_before() {
        let mut s = Store::default();
        s.apply(key("a"), Ok(1));
        s.begin_relist();
        s.apply(key("a"), bad("9"));
        assert!(!s.finish_relist(), "the set in force is the same");
        assert_eq!(in_force(&s), [("a".to_owned(), 1)]);
        assert_eq!(s.rejected().count(), 1);
    }

    #[test]
    fn deletes_remove_and_unknown_deletes_change_nothing() {
        let mut s = Store::default();
        s.apply(key("a"), Ok(1));
        assert_eq!(s.delete(&key("zz")), Change::Same);
        assert_eq!(s.delete(&key("a")), Change::Changed);
        assert!(s.is_empty());
        s.apply(key("r"), bad("1"));
        assert_eq!(
            s.delete(&key("r")),
            Change::Same,
            "a refused object allowed nothing"
        );
    }

    #[test]
    fn an_empty_relist_empties_the_set() {
        let mut s = Store::default();
        s.apply(key("a"), Ok(1));
        s.begin_relist();
        assert!(s.finish_relist());
        assert!(s.is_empty());
        assert!(!s.finish_relist(), "no relist in progress");
    }
}
