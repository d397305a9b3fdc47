//! The observation store (docs/architecture.md, "Learn mode"): what enforced workloads
//! reached or tried to reach, one record per workload, address, port and protocol, with the
//! names they resolved for it, when and how often. Bounded in entries and in bytes, the
//! least recently seen leaving first (counted); saved as one JSON document that a corrupt
//! or truncated copy can never be half-read from. Pure: the daemon does the file I/O.

use std::{collections::VecDeque, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::lru::{Grouped, Lru};

/// Names remembered per observation (the most recently resolved ones).
pub const MAX_HOSTS: usize = 4;
/// Longest cgroup path and pod name accepted from a store file.
const MAX_CGROUP: usize = 4096;
const MAX_POD: usize = 317;
/// Per entry, beyond its strings: field names, numbers, punctuation (an upper bound).
const FIXED_BYTES: usize = 192;
const FORMAT: &str = "egress-enforcer/observations";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// What makes two sightings the same observation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The workload's cgroup, relative to the cgroup2 mount.
    pub cgroup: String,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Transport,
}

impl Grouped for Key {
    type Group = String;
    fn group(&self) -> String {
        self.cgroup.clone()
    }
}

/// What is known about one observation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    /// `namespace/name` of the pod the cgroup belongs to.
    pub pod: Option<String>,
    /// Names resolved to the address, least recent first.
    pub hosts: VecDeque<String>,
    /// Unix seconds.
    pub first: u64,
    pub last: u64,
    pub count: u64,
    /// Of `count`, how many were refused (enforce mode); the rest were audited.
    pub denied: u64,
}

/// One sighting, as the daemon reports it.
#[derive(Debug, Clone)]
pub struct Sighting<'a> {
    pub key: Key,
    pub pod: Option<&'a str>,
    pub hosts: &'a [String],
    pub now: u64,
    pub count: u64,
    pub denied: bool,
}

/// One observation in the store file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Observation {
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Transport,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    pub count: u64,
    #[serde(default)]
    pub denied: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    format: String,
    version: u32,
    dropped: u64,
    observations: Vec<Observation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_observations: usize,
    pub max_bytes: usize,
    /// Observations one workload (cgroup) may hold: past it, its own oldest go, so that a
    /// workload flooding distinct destinations cannot push the others' out.
    pub max_per_workload: usize,
}

/// Observations a store file held that were not in normal form: left out, counted as
/// dropped, reported with the first reason.
#[derive(Debug, Default)]
pub struct Skipped {
    pub count: usize,
    pub first: Option<StoreError>,
}

/// Why a store file was not read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{size} bytes, more than the {limit} a store of this size can hold")]
    TooLarge { size: u64, limit: u64 },
    #[error("truncated: {0}")]
    Truncated(serde_json::Error),
    #[error("not a valid store: {0}")]
    Syntax(serde_json::Error),
    #[error("format {format:?} version {version}: this daemon reads {FORMAT:?} version {VERSION}")]
    Format { format: String, version: u32 },
    #[error("observations[{index}].{field}: {why}")]
    Invalid {
        index: usize,
        field: &'static str,
        why: String,
    },
}

#[derive(Debug, Clone)]
pub struct Store {
    lru: Lru<Key, (Seen, usize)>,
    bytes: usize,
    dropped: u64,
    limits: Limits,
}

fn json_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len() * 6 + 2, |j| j.len())
}

fn entry_bytes(key: &Key, seen: &Seen) -> usize {
    FIXED_BYTES
        + json_len(&key.cgroup)
        + seen.pod.as_deref().map_or(0, json_len)
        + seen.hosts.iter().map(|h| json_len(h) + 1).sum::<usize>()
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            lru: Lru::default(),
            bytes: 0,
            dropped: 0,
            limits,
        }
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Observations let go to stay within the limits, since the store began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The size of the saved store, within a few bytes (an upper bound).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a sighting; true if it made a new observation. What the store file could not
    /// hold is left out here (names not in normal form, an over-long cgroup path is cut), so
    /// that what is saved always reads back.
    pub fn record(&mut self, s: &Sighting<'_>) -> bool {
        let mut key = s.key.clone();
        key.addr = key.addr.to_canonical();
        if key.cgroup.len() > MAX_CGROUP || key.cgroup.contains('\0') {
            key.cgroup = cut(&key.cgroup.replace('\0', "?"), MAX_CGROUP);
        }
        let pod = s.pod.filter(|p| valid_pod(p));
        let mut new = false;
        let (seen, size) = self.lru.touch(&key, || {
            new = true;
            let seen = Seen {
                first: s.now,
                ..Seen::default()
            };
            (seen, 0)
        });
        seen.last = seen.last.max(s.now);
        seen.first = seen.first.min(s.now);
        seen.count = seen.count.saturating_add(s.count);
        if s.denied {
            seen.denied = seen.denied.saturating_add(s.count);
        }
        if let Some(pod) = pod {
            seen.pod = Some(pod.to_owned());
        }
        for h in s.hosts.iter().filter(|h| valid_host(h)) {
            seen.hosts.retain(|x| x != h);
            seen.hosts.push_back(h.clone());
            if seen.hosts.len() > MAX_HOSTS {
                seen.hosts.pop_front();
            }
        }
        let old = std::mem::replace(size, entry_bytes(&key, seen));
        self.bytes = (self.bytes + *size).saturating_sub(old);
        self.shrink(&key.cgroup);
        new
    }

    fn shrink(&mut self, workload: &String) {
        while self.lru.group_len(workload) > self.limits.max_per_workload.max(1) {
            let Some((_, (_, size))) = self.lru.pop_oldest_in(workload) else {
                break;
            };
            self.bytes -= size;
            self.dropped += 1;
        }
        while self.lru.len() > self.limits.max_observations.max(1)
            || (self.bytes > self.limits.max_bytes && self.lru.len() > 1)
        {
            let Some((_, (_, size))) = self.lru.pop_oldest() else {
                break;
            };
            self.bytes -= size;
            self.dropped += 1;
        }
    }

    /// Every observation, least recently seen first.
    pub fn observations(&self) -> Vec<Observation> {
        self.lru
            .iter()
            .map(|(k, (s, _))| Observation {
                cgroup: k.cgroup.clone(),
                pod: s.pod.clone(),
                addr: k.addr,
                port: k.port,
                proto: k.proto,
                hosts: s.hosts.iter().cloned().collect(),
                first_seen: s.first,
                last_seen: s.last,
                count: s.count,
                denied: s.denied,
            })
            .collect()
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let file = File {
            format: FORMAT.to_owned(),
            version: VERSION,
            dropped: self.dropped,
            observations: self.observations(),
        };
        let mut out = serde_json::to_vec_pretty(&file)?;
        out.push(b'\n');
        Ok(out)
    }

    /// The largest file [`Store::decode`] reads with these limits (a store saved under
    /// limits up to 16 times larger still reads, and is trimmed to these).
    pub fn max_file_bytes(limits: Limits) -> u64 {
        (limits.max_bytes as u64).saturating_mul(16).max(64 << 20)
    }

    /// Reads a saved store. Time linear in the size; observations beyond the limits go
    /// (oldest first, counted as dropped), as if they had been recorded under them; one not
    /// in normal form is left out (counted as dropped too, and in [`Skipped`]).
    pub fn decode(bytes: &[u8], limits: Limits) -> Result<(Self, Skipped), StoreError> {
        let limit = Self::max_file_bytes(limits);
        if bytes.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                size: bytes.len() as u64,
                limit,
            });
        }
        let file: File = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() {
                StoreError::Truncated(e)
            } else {
                StoreError::Syntax(e)
            }
        })?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(StoreError::Format {
                format: file.format,
                version: file.version,
            });
        }
        let mut skipped = Skipped::default();
        let mut obs: Vec<Observation> = Vec::with_capacity(file.observations.len());
        for (index, o) in file.observations.into_iter().enumerate() {
            match check(&o) {
                Ok(()) => obs.push(o),
                Err((field, why)) => {
                    skipped.count += 1;
                    skipped
                        .first
                        .get_or_insert(StoreError::Invalid { index, field, why });
                }
            }
        }
        obs.sort_by_key(|o| o.last_seen);
        let mut store = Self::new(limits);
        store.dropped = file.dropped.saturating_add(skipped.count as u64);
        for o in obs {
            store.restore(o);
        }
        Ok((store, skipped))
    }

    fn restore(&mut self, o: Observation) {
        let key = Key {
            cgroup: o.cgroup,
            addr: o.addr.to_canonical(),
            port: o.port,
            proto: o.proto,
        };
        let seen = Seen {
            pod: o.pod,
            hosts: o.hosts.into(),
            first: o.first_seen,
            last: o.last_seen,
            count: o.count,
            denied: o.denied,
        };
        let size = entry_bytes(&key, &seen);
        if let Some((old, old_size)) = self.lru.get(&key).cloned() {
            // Written by hand with a duplicate: one observation, counts together.
            let merged = Seen {
                first: old.first.min(seen.first),
                last: old.last.max(seen.last),
                count: old.count.saturating_add(seen.count),
                denied: old.denied.saturating_add(seen.denied),
                ..seen
            };
            self.bytes -= old_size;
            *self.lru.touch(&key, Default::default) = (merged, size);
        } else {
            *self.lru.touch(&key, Default::default) = (seen, size);
        }
        self.bytes += size;
        self.shrink(&key.cgroup);
    }
}

fn cut(s: &str, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn valid_host(h: &str) -> bool {
    crate::dnsproxy::names::normalize(h).is_ok_and(|n| n == h)
}

/// `namespace/name` as Kubernetes names them: a lowercase RFC 1123 label, then a lowercase
/// RFC 1123 subdomain (the namespace is written into suggested entries).
pub fn valid_pod(p: &str) -> bool {
    let lower = |s: &str| !s.bytes().any(|c| c.is_ascii_uppercase());
    p.len() <= MAX_POD
        && p.split_once('/').is_some_and(|(ns, name)| {
            crate::serviceentry::names::is_dns1123_label(ns)
                && lower(ns)
                && !name.is_empty()
                && name.len() <= 253
                && lower(name)
                && name
                    .split('.')
                    .all(crate::serviceentry::names::is_dns1123_label)
        })
}

fn check(o: &Observation) -> Result<(), (&'static str, String)> {
    if o.cgroup.len() > MAX_CGROUP || o.cgroup.contains('\0') {
        return Err(("cgroup", format!("at most {MAX_CGROUP} bytes, no NUL")));
    }
    if let Some(p) = &o.pod
        && !valid_pod(p)
    {
        return Err(("pod", "not NAMESPACE/NAME".to_owned()));
    }
    if o.hosts.len() > MAX_HOSTS {
        return Err(("hosts", format!("at most {MAX_HOSTS} names")));
    }
    for h in &o.hosts {
        match crate::dnsproxy::names::normalize(h) {
            Ok(n) if n == *h => {}
            Ok(_) => return Err(("hosts", format!("{h:?} is not in normal form"))),
            Err(e) => return Err(("hosts", format!("{h:?}: {e}"))),
        }
    }
    if o.hosts
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        != o.hosts.len()
    {
        return Err(("hosts", "a name twice".to_owned()));
    }
    if o.count == 0 || o.denied > o.count {
        return Err(("count", "at least 1, and no fewer than denied".to_owned()));
    }
    if o.first_seen > o.last_seen {
        return Err(("firstSeen", "after lastSeen".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
