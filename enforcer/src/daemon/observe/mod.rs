//! Learn mode's recording side (docs/architecture.md, "Learn mode"): every audit or deny
//! event the event reader explains becomes an observation, with the names the workload
//! resolved for the address (the DNS proxy notes every answer it relays); the store is
//! saved every `learn.saveEvery` and at shutdown. Pure aggregation lives in `learn`.

pub mod file;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tracing::{info, warn};

use crate::{
    config::Learn,
    dataplane::events::EventRecord,
    learn::{
        names::RecentNames,
        store::{Key, Sighting, Store, Transport},
    },
};

/// Addresses whose answered names are remembered.
const NAMES: usize = 16_384;

#[derive(Debug, Default)]
pub struct ObserveMetrics {
    pub recorded: AtomicU64,
    pub observations: AtomicU64,
    pub dropped: AtomicU64,
    pub load_errors: AtomicU64,
    pub save_errors: AtomicU64,
}

#[derive(Debug)]
pub struct Observer {
    store: Mutex<Store>,
    names: Arc<Mutex<RecentNames>>,
    path: PathBuf,
    dirty: AtomicBool,
    /// The last save failed (warned once until one succeeds).
    failing: AtomicBool,
    pub metrics: ObserveMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Observer {
    /// Opens the store; whatever is wrong with it is reported, never fatal.
    pub fn open(cfg: &Learn) -> Arc<Self> {
        let metrics = ObserveMetrics::default();
        let limits = cfg.limits();
        let path = &cfg.store;
        let store = match file::load(path, limits) {
            file::Loaded::Store(s, skipped) => {
                info!(store = %path.display(), observations = s.len(), "learn mode: observations restored");
                if let Some(first) = skipped.first {
                    metrics.load_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        store = %path.display(),
                        skipped = skipped.count,
                        "learn mode: {} observations in the store were not in normal form and are left out (the first: {first})",
                        skipped.count
                    );
                }
                s
            }
            file::Loaded::Missing => Store::new(limits),
            file::Loaded::Replaced { error, kept } => {
                metrics.load_errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    store = %path.display(),
                    kept = %kept.map_or_else(|| "(could not be moved)".to_owned(), |k| k.display().to_string()),
                    "learn mode: the observation store is unreadable ({error}); starting a new one"
                );
                Store::new(limits)
            }
            file::Loaded::Unreadable(e) => {
                metrics.load_errors.fetch_add(1, Ordering::Relaxed);
                warn!(store = %path.display(), "learn mode: cannot read the observation store ({e}); starting a new one");
                Store::new(limits)
            }
        };
        metrics
            .observations
            .store(store.len() as u64, Ordering::Relaxed);
        metrics.dropped.store(store.dropped(), Ordering::Relaxed);
        Arc::new(Self {
            store: Mutex::new(store),
            names: Arc::new(Mutex::new(RecentNames::new(NAMES))),
            path: path.clone(),
            dirty: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            metrics,
        })
    }

    /// Where the DNS proxy notes the names it answers.
    pub fn names(&self) -> Arc<Mutex<RecentNames>> {
        Arc::clone(&self.names)
    }

    /// The names answered to the workload in `cgroup` with `addr`.
    pub fn names_of(&self, cgroup: u64, addr: IpAddr) -> Vec<String> {
        lock(&self.names).names_of(cgroup, addr)
    }

    /// One explained event, `count` times; socket refusals and ICMP are not destinations a
    /// ServiceEntry port can name, and are left out.
    pub fn record(
        &self,
        ev: &EventRecord,
        count: u64,
        cgroup: &str,
        pod: Option<&str>,
        hosts: &[String],
    ) {
        let Some(proto) = Transport::parse(&ev.proto).filter(|_| ev.socket.is_none()) else {
            return;
        };
        let sighting = Sighting {
            key: Key {
                cgroup: cgroup.to_owned(),
                addr: ev.addr.to_canonical(),
                port: ev.port,
                proto,
            },
            pod,
            hosts,
            now: unix_now(),
            count,
            denied: ev.verdict == "deny",
        };
        let mut store = lock(&self.store);
        store.record(&sighting);
        self.metrics.recorded.fetch_add(count, Ordering::Relaxed);
        self.metrics
            .observations
            .store(store.len() as u64, Ordering::Relaxed);
        self.metrics
            .dropped
            .store(store.dropped(), Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes the store if anything changed since the last write.
    pub fn save(&self) {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let encoded = lock(&self.store).encode();
        match encoded
            .map_err(anyhow::Error::from)
            .and_then(|bytes| file::save(&self.path, &bytes))
        {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    info!(store = %self.path.display(), "learn mode: the observation store is written again");
                }
            }
            Err(e) => {
                self.dirty.store(true, Ordering::Relaxed);
                self.metrics.save_errors.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    warn!("learn mode: cannot save observations (kept in memory, retried): {e:#}");
                }
            }
        }
    }
}

/// Saves the store every `every` (on the blocking pool: it writes and syncs a file).
pub async fn keep_saved(observer: Arc<Observer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let o = Arc::clone(&observer);
        let _ = tokio::task::spawn_blocking(move || o.save()).await;
    }
}
