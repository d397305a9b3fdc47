//! DNS resolution of ServiceEntry hosts (docs/architecture.md, "DNS resolution"): A and AAAA
//! looked up separately with their own TTLs, every name once however many entries use it, a
//! bounded number in flight, published as a snapshot whenever the allowed addresses change.

pub mod state;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::rr::RData,
};
use tokio::{sync::watch, task::JoinSet, time::Instant};

use self::state::{Answer, NameState, Timing};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// Where answers come from: hickory in the daemon, a script in tests.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, name: String, family: Family) -> Pin<Box<dyn Future<Output = Answer> + Send>>;
}

/// Real DNS through hickory-resolver.
pub struct HickoryLookup {
    resolver: Arc<TokioResolver>,
    min_ttl: Duration,
}

impl HickoryLookup {
    /// `servers` empty: /etc/resolv.conf (and its search domains).
    pub fn new(servers: &[SocketAddr], min_ttl: Duration) -> anyhow::Result<Self> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let mut configs = Vec::new();
            for s in servers {
                // UDP, with TCP only for truncated answers: a TCP connection per query would
                // make a forking server such as dnsmasq the bottleneck.
                let mut c = NameServerConfig::udp(s.ip());
                for conn in &mut c.connections {
                    conn.port = s.port();
                }
                configs.push(c);
            }
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(configs),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        // We schedule refreshes ourselves at each answer's TTL: every lookup must ask the server.
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        opts.try_tcp_on_error = true;
        Ok(Self {
            resolver: Arc::new(builder.build()?),
            min_ttl,
        })
    }
}

/// Names with a dot are queried as absolute names, so search domains (ndots:5 in
/// Kubernetes) do not turn one lookup into six.
fn query_name(name: &str) -> String {
    if name.contains('.') && !name.ends_with('.') {
        format!("{name}.")
    } else {
        name.to_owned()
    }
}

impl Lookup for HickoryLookup {
    fn lookup(&self, name: String, family: Family) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
        let resolver = Arc::clone(&self.resolver);
        let min_ttl = self.min_ttl;
        Box::pin(async move {
            let q = query_name(&name);
            let result = match family {
                Family::V4 => resolver.ipv4_lookup(q.as_str()).await,
                Family::V6 => resolver.ipv6_lookup(q.as_str()).await,
            };
            match result {
                Ok(lookup) => {
                    let addrs = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None,
                        })
                        .collect();
                    let ttl = lookup
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    Answer::Records { addrs, ttl }
                }
                Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => Answer::Records {
                    addrs: Vec::new(),
                    ttl: nr
                        .negative_ttl
                        .map_or(min_ttl, |t| Duration::from_secs(u64::from(t))),
                },
                Err(e) => Answer::Failed(e.to_string()),
            }
        })
    }
}

/// What the resolver publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Allowed addresses per name (current answers plus stale ones within their grace).
    pub addrs: BTreeMap<String, Vec<IpAddr>>,
    /// Every current name has had at least one lookup finish.
    pub complete: bool,
    /// Names whose latest lookup failed, with the error.
    pub failing: BTreeMap<String, String>,
    /// Allowed addresses that left the answers (or were carried over), with their deadline.
    pub stale: BTreeMap<String, Vec<(IpAddr, Instant)>>,
}

struct Task {
    lookup: Arc<dyn Lookup>,
    timing: Timing,
    concurrency: usize,
    states: HashMap<(String, Family), NameState>,
    succeeded: BTreeSet<(String, Family)>,
    inflight: BTreeSet<(String, Family)>,
    /// Lookups to make, by time. Entries whose state is gone or rescheduled are skipped when
    /// popped. New names are queued at their creation time, so they go before refreshes.
    queue: BTreeSet<(Instant, (String, Family))>,
    unattempted: usize,
    jobs: JoinSet<Answer>,
    /// The key of each running lookup, so that one that panics is still accounted for.
    job_keys: HashMap<tokio::task::Id, (String, Family)>,
    /// Addresses a previous run allowed, per name, with the time each may still stay: used
    /// once, when the first name set arrives, and never longer than the stale grace.
    seeds: BTreeMap<String, Vec<(IpAddr, Duration)>>,
    /// Lookups that panicked; they count as failed lookups.
    panics: Arc<std::sync::atomic::AtomicU64>,
}

/// Minimum interval between snapshots while lookups are still in flight.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// How often stale addresses are checked for expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

impl Task {
    fn snapshot(&self) -> Resolved {
        let mut r = Resolved {
            complete: self.unattempted == 0,
            ..Resolved::default()
        };
        for ((name, family), s) in &self.states {
            let slot = r.addrs.entry(name.clone()).or_default();
            slot.extend(s.allowed());
            let stale: Vec<(IpAddr, Instant)> = s.stale().collect();
            if !stale.is_empty() {
                r.stale.entry(name.clone()).or_default().extend(stale);
            }
            if s.failing()
                && let Some(e) = &s.last_error
            {
                r.failing.insert(format!("{name} ({family:?})"), e.clone());
            }
        }
        for v in r.addrs.values_mut() {
            v.sort();
            v.dedup();
        }
        r
    }

    fn set_names(&mut self, names: &BTreeSet<String>, now: Instant) {
        self.states.retain(|(n, _), _| names.contains(n));
        self.succeeded.retain(|(n, _)| names.contains(n));
        for n in names {
            for f in [Family::V4, Family::V6] {
                let key = (n.clone(), f);
                if !self.states.contains_key(&key) {
                    let grace = self.timing.stale_grace;
                    let seeds = self.seeds.get(n).into_iter().flatten();
                    let seeds = seeds
                        .filter(|(a, _)| a.is_ipv4() == (f == Family::V4))
                        .map(|(a, left)| (*a, now + (*left).min(grace)));
                    let state = NameState::seeded(now, seeds);
                    self.states.insert(key.clone(), state);
                    self.queue.insert((now, key));
                }
            }
        }
        self.unattempted = self.states.values().filter(|s| !s.attempted).count();
        self.seeds.clear();
    }

    fn start_due(&mut self, now: Instant) {
        while self.inflight.len() < self.concurrency {
            let Some((at, key)) = self.queue.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.queue.pop_first();
            // Skip entries of removed names and ones already in flight.
            if !self.states.contains_key(&key) || self.inflight.contains(&key) {
                continue;
            }
            self.inflight.insert(key.clone());
            let fut = self.lookup.lookup(key.0.clone(), key.1);
            let handle = self.jobs.spawn(fut);
            self.job_keys.insert(handle.id(), key);
        }
    }

    /// The next queued lookup, if a slot is free for it (otherwise a finishing lookup wakes
    /// the loop), and at least every EXPIRY_TICK while stale addresses wait to expire.
    fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let lookup = (self.inflight.len() < self.concurrency)
            .then(|| self.queue.first().map(|(t, _)| *t))
            .flatten();
        let expiry = Some(now + EXPIRY_TICK);
        lookup.into_iter().chain(expiry).min()
    }

    /// A lookup task ended. One that panicked (or was cancelled) is a failed lookup: the
    /// name backs off and is looked up again, never left in flight forever.
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Answer), tokio::task::JoinError>,
        now: Instant,
    ) -> bool {
        let (id, answer) = match done {
            Ok(ok) => ok,
            Err(e) => {
                self.panics
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("a DNS lookup task failed: {e}");
                (e.id(), Answer::Failed(format!("lookup task failed: {e}")))
            }
        };
        match self.job_keys.remove(&id) {
            Some(key) => self.complete(key, answer, now),
            None => false,
        }
    }

    /// Records an answer; returns whether the daemon needs a new snapshot.
    fn complete(&mut self, key: (String, Family), answer: Answer, now: Instant) -> bool {
        self.inflight.remove(&key);
        let first_success =
            matches!(answer, Answer::Records { .. }) && self.succeeded.insert(key.clone());
        let Some(s) = self.states.get_mut(&key) else {
            return false;
        };
        let (was_failing, was_attempted) = (s.failing(), s.attempted);
        let changed = s.apply(now, answer, &self.timing);
        let flipped = was_failing != s.failing();
        self.queue.insert((s.next_lookup(), key));
        if !was_attempted {
            self.unattempted = self.unattempted.saturating_sub(1);
        }
        changed || flipped || (self.unattempted == 0 && (!was_attempted || first_success))
    }
}

/// How the resolver starts: addresses carried over from a previous run, and where to count
/// lookup tasks that panic.
#[derive(Default)]
pub struct Start {
    /// Allowed from the start, each for the time given but at most `timing.stale_grace`.
    pub seeds: BTreeMap<String, Vec<(IpAddr, Duration)>>,
    pub panics: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts the resolver. It follows the name set in `names` and publishes snapshots; it stops
/// when `names`' sender is dropped.
pub fn spawn(
    lookup: Arc<dyn Lookup>,
    timing: Timing,
    concurrency: usize,
    mut names: watch::Receiver<BTreeSet<String>>,
    start: Start,
) -> watch::Receiver<Resolved> {
    let mut task = Task {
        lookup,
        timing,
        concurrency: concurrency.max(1),
        states: HashMap::new(),
        succeeded: BTreeSet::new(),
        inflight: BTreeSet::new(),
        queue: BTreeSet::new(),
        unattempted: 0,
        jobs: JoinSet::new(),
        job_keys: HashMap::new(),
        seeds: start.seeds,
        panics: start.panics,
    };
    task.set_names(&names.borrow_and_update(), Instant::now());
    let (tx, rx) = watch::channel(task.snapshot());
    tokio::spawn(async move {
        // During a burst of answers, publish at most every PUBLISH_EVERY (each snapshot walks
        // every name); the last answer of a burst is always published at once.
        let mut pending = false;
        let mut last_publish = Instant::now();
        loop {
            let now = Instant::now();
            task.start_due(now);
            let wake = task.next_wakeup(now);
            // Publishing walks every name: do it only when something the daemon acts on
            // changed (allowed addresses, failures, completeness, the name set).
            let dirty = tokio::select! {
                changed = names.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let set = names.borrow_and_update().clone();
                    task.set_names(&set, Instant::now());
                    true
                }
                Some(done) = task.jobs.join_next_with_id(), if !task.jobs.is_empty() => {
                    task.finished(done, Instant::now())
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    let mut any = false;
                    for s in task.states.values_mut() {
                        any |= s.expire(now);
                    }
                    any
                }
            };
            pending |= dirty;
            let burst = !task.jobs.is_empty() && last_publish.elapsed() < PUBLISH_EVERY;
            if pending && !burst {
                pending = false;
                last_publish = Instant::now();
                let snap = task.snapshot();
                tx.send_if_modified(|cur| {
                    let changed = *cur != snap;
                    if changed {
                        *cur = snap;
                    }
                    changed
                });
            }
        }
    });
    rx
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a table the test edits; counts lookups.
    #[derive(Default)]
    struct Script {
        answers: Mutex<HashMap<(String, Family), Answer>>,
        calls: Mutex<Vec<(String, Family)>>,
    }

    impl Lookup for Arc<Script> {
        fn lookup(
            &self,
            name: String,
            family: Family,
        ) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
            self.calls.lock().unwrap().push((name.clone(), family));
            let a = self
                .answers
                .lock()
                .unwrap()
                .get(&(name, family))
                .cloned()
                .unwrap_or(Answer::Records {
                    addrs: vec![],
                    ttl: Duration::from_secs(60),
                });
            Box::pin(async move { a })
        }
    }

    const T: Timing = Timing {
        min_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(300),
        stale_grace: Duration::from_secs(120),
    };

    fn set(script: &Script, name: &str, family: Family, a: Answer) {
        script
            .answers
            .lock()
            .unwrap()
            .insert((name.to_owned(), family), a);
    }

    fn rec(ips: &[&str], ttl: u64) -> Answer {
        Answer::Records {
            addrs: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    async fn settle(rx: &mut watch::Receiver<Resolved>) -> Resolved {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        rx.borrow_and_update().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn resolves_refreshes_at_ttl_and_follows_changes() {
        let script = Arc::new(Script::default());
        set(&script, "a.example", Family::V4, rec(&["192.0.2.1"], 30));
        set(&script, "a.example", Family::V6, rec(&["2001:db8::1"], 30));
        let (names_tx, names_rx) = watch::channel(BTreeSet::from(["a.example".to_owned()]));
        let mut rx = spawn(
            Arc::new(Arc::clone(&script)),
            T,
            4,
            names_rx,
            Start::default(),
        );
        let r = settle(&mut rx).await;
        assert!(r.complete);
        assert_eq!(r.addrs["a.example"].len(), 2);
        assert_eq!(script.calls.lock().unwrap().len(), 2);

        set(&script, "a.example", Family::V4, rec(&["192.0.2.9"], 30));
        tokio::time::advance(Duration::from_secs(29)).await;
        settle(&mut rx).await;
        assert_eq!(script.calls.lock().unwrap().len(), 2, "not before the TTL");
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = settle(&mut rx).await;
        assert_eq!(script.calls.lock().unwrap().len(), 4);
        assert_eq!(
            r.addrs["a.example"],
            [
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "192.0.2.9".parse().unwrap(),
                "2001:db8::1".parse().unwrap()
            ],
            "old address within grace"
        );
        tokio::time::advance(Duration::from_secs(121)).await;
        let r = settle(&mut rx).await;
        assert!(
            !r.addrs["a.example"].contains(&"192.0.2.1".parse().unwrap()),
            "gone after grace"
        );

        names_tx.send(BTreeSet::new()).unwrap();
        let r = settle(&mut rx).await;
        assert!(r.addrs.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_names_are_looked_up_once() {
        let script = Arc::new(Script::default());
        let names: BTreeSet<String> = (0..10).map(|i| format!("n{i}.example")).collect();
        let (_tx, names_rx) = watch::channel(names);
        let mut rx = spawn(
            Arc::new(Arc::clone(&script)),
            T,
            3,
            names_rx,
            Start::default(),
        );
        let r = settle(&mut rx).await;
        assert!(r.complete);
        assert_eq!(
            script.calls.lock().unwrap().len(),
            20,
            "each name and family exactly once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_addresses_and_are_reported() {
        let script = Arc::new(Script::default());
        set(&script, "a.example", Family::V4, rec(&["192.0.2.1"], 10));
        let (_tx, names_rx) = watch::channel(BTreeSet::from(["a.example".to_owned()]));
        let mut rx = spawn(
            Arc::new(Arc::clone(&script)),
            T,
            4,
            names_rx,
            Start::default(),
        );
        settle(&mut rx).await;
        set(
            &script,
            "a.example",
            Family::V4,
            Answer::Failed("timed out".into()),
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let r = settle(&mut rx).await;
        assert_eq!(
            r.addrs["a.example"],
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(r.failing.keys().any(|k| k.starts_with("a.example")));
        // Much later, still failing, still allowed (no grace applies to failures).
        tokio::time::advance(Duration::from_secs(3600)).await;
        let r = settle(&mut rx).await;
        assert_eq!(
            r.addrs["a.example"],
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
    }

    /// Panics on the first lookup of each name and family, then answers from the script.
    struct PanicsOnce {
        script: Arc<Script>,
        seen: Mutex<BTreeSet<(String, Family)>>,
    }

    impl Lookup for Arc<PanicsOnce> {
        fn lookup(
            &self,
            name: String,
            family: Family,
        ) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
            let first = self.seen.lock().unwrap().insert((name.clone(), family));
            let answer = self.script.lookup(name, family);
            Box::pin(async move {
                assert!(!first, "injected lookup panic");
                answer.await
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_panics_is_counted_and_retried() {
        let script = Arc::new(Script::default());
        set(&script, "a.example", Family::V4, rec(&["192.0.2.1"], 30));
        let lookup = Arc::new(PanicsOnce {
            script,
            seen: Mutex::default(),
        });
        let (_tx, names_rx) = watch::channel(BTreeSet::from(["a.example".to_owned()]));
        let start = Start::default();
        let panics = Arc::clone(&start.panics);
        let mut rx = spawn(Arc::new(lookup), T, 4, names_rx, start);
        let r = settle(&mut rx).await;
        assert_eq!(panics.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(r.complete, "a panicked lookup still counts as attempted");
        assert!(
            r.failing.keys().any(|k| k.starts_with("a.example")),
            "{r:?}"
        );
        // Retried after the 1 s backoff, and then answered.
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = settle(&mut rx).await;
        assert_eq!(
            r.addrs["a.example"],
            ["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        assert!(r.failing.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn seeds_are_allowed_at_once_and_only_for_the_grace() {
        let script = Arc::new(Script::default());
        set(
            &script,
            "a.example",
            Family::V4,
            Answer::Failed("down".into()),
        );
        let (_tx, names_rx) = watch::channel(BTreeSet::from(["a.example".to_owned()]));
        // A day left on the record: the grace still caps it; one with 10 s left keeps 10 s.
        let long = Duration::from_secs(86_400);
        let seeds = BTreeMap::from([
            (
                "a.example".to_owned(),
                vec![
                    ("192.0.2.1".parse().unwrap(), long),
                    ("2001:db8::1".parse().unwrap(), long),
                    ("192.0.2.2".parse().unwrap(), Duration::from_secs(10)),
                ],
            ),
            (
                "gone.example".to_owned(),
                vec![("192.0.2.7".parse().unwrap(), long)],
            ),
        ]);
        let start = Start {
            seeds,
            ..Start::default()
        };
        let mut rx = spawn(Arc::new(Arc::clone(&script)), T, 4, names_rx, start);
        let r = rx.borrow_and_update().clone();
        assert_eq!(r.addrs["a.example"].len(), 3, "before any answer");
        assert!(
            !r.addrs.contains_key("gone.example"),
            "only configured names"
        );
        assert_eq!(r.stale["a.example"].len(), 3, "with their deadlines");
        tokio::time::advance(Duration::from_secs(11)).await;
        let r = settle(&mut rx).await;
        assert_eq!(r.addrs["a.example"].len(), 2, "the short one is gone");
        tokio::time::advance(T.stale_grace - Duration::from_secs(12)).await;
        let r = settle(&mut rx).await;
        assert_eq!(r.addrs["a.example"].len(), 2, "still within the grace");
        tokio::time::advance(Duration::from_secs(2)).await;
        let r = settle(&mut rx).await;
        assert!(
            r.addrs["a.example"].is_empty(),
            "gone after the grace: {r:?}"
        );
    }

    #[test]
    fn absolute_query_names() {
        assert_eq!(query_name("api.example.com"), "api.example.com.");
        assert_eq!(query_name("api.example.com."), "api.example.com.");
        assert_eq!(query_name("short"), "short");
    }
}
