//! Deny and audit events: read from the kernel ring buffer, explained (which hostnames and
//! ServiceEntries own the address, and for a denial the nearest entry that allows it on
//! another port), aggregated (identical events within a second become one line with a count)
//! and logged through tracing. The kernel counts repeats itself ([`windows`]).

mod windows;

use std::{
    collections::HashMap,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, task::block_in_place, time::Instant};
use tracing::warn;

use super::{cgroup_names::CgroupNames, observe::Observer};
use crate::{
    dataplane::{
        cgroup::{self, Cgroup},
        event_windows::EventWindows,
        events::{EventRecord, decode},
    },
    policy::{
        allow_spec::{AllowSpec, Net},
        compile::{CompiledPolicy, Target},
    },
    resolve::Resolved,
};

/// Who allows an address, on which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    host: Option<String>,
    sources: Vec<String>,
    targets: Vec<Target>,
}

/// Who owns an address, rebuilt after every apply: the names resolved to it, and the
/// compiled policy itself for static rules (looked up by address when an event comes: a copy
/// per address would cost more than the rules themselves at a million of them).
#[derive(Default)]
pub struct EventIndex {
    /// Addresses of resolved names.
    by_addr: HashMap<IpAddr, Vec<Owner>>,
    policy: Arc<CompiledPolicy>,
    /// The static networks that are not one address (few; scanned).
    nets: Vec<AllowSpec>,
    /// DNS-aware mode: the names the workloads resolved to an address, asked at explain time
    /// (they change with every answer), and the rule sources to name their entries.
    learned: Option<(
        std::sync::Arc<crate::dnsproxy::server::Proxy>,
        std::collections::BTreeMap<u32, String>,
    )>,
    /// Pod scoping: pod UID → `namespace/name`, and where the kubelet's trees start.
    pods: std::collections::BTreeMap<String, String>,
    kubelet_roots: Vec<String>,
}

/// What the index says about one destination.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    pub hosts: Vec<String>,
    pub entries: Vec<String>,
    /// For a denial: the owners' allowed ports, e.g. `ServiceEntry default/api (se.yaml:3) allows 443/tcp`.
    pub nearest: Option<String>,
}

fn fmt_target((port, proto): &Target) -> String {
    if *port == 0 {
        format!("*/{proto}")
    } else {
        format!("{port}/{proto}")
    }
}

impl EventIndex {
    pub fn build(compiled: Arc<CompiledPolicy>, resolved: &Resolved) -> Self {
        let names = |ids: &mut dyn Iterator<Item = u32>| source_names(&compiled, ids);
        let mut idx = Self::default();
        for (host, targets) in &compiled.hostnames {
            let Some(addrs) = resolved.addrs.get(host) else {
                continue;
            };
            let owner = Owner {
                host: Some(host.clone()),
                sources: names(&mut targets.values().flatten().copied()),
                targets: targets.keys().copied().collect(),
            };
            for a in addrs {
                idx.by_addr.entry(*a).or_default().push(owner.clone());
            }
        }
        idx.nets = compiled
            .statics
            .keys()
            .filter(|s| !s.net.is_host())
            .copied()
            .collect();
        idx.policy = compiled;
        idx
    }

    /// The static rules for this address: its own are adjacent in `statics`, which sorts by
    /// network first (address, then prefix length), then port and protocol.
    fn static_owners(&self, addr: IpAddr) -> Vec<Owner> {
        let addr = addr.to_canonical();
        let Ok(net) = Net::new(addr, if addr.is_ipv4() { 32 } else { 128 }) else {
            return Vec::new();
        };
        let exact = self.policy.statics.of_net(net);
        let nets = self
            .nets
            .iter()
            .filter(|s| s.net.contains(addr))
            .filter_map(|s| self.policy.statics.get_key_value(s));
        exact
            .chain(nets)
            .map(|(spec, ids)| Owner {
                host: None,
                sources: source_names(&self.policy, &mut ids.iter()),
                targets: vec![(spec.port, spec.proto)],
            })
            .collect()
    }

    /// Adds DNS-aware mode's learned names.
    pub fn with_learned(
        mut self,
        proxy: Option<std::sync::Arc<crate::dnsproxy::server::Proxy>>,
        compiled: &CompiledPolicy,
    ) -> Self {
        self.learned = proxy.map(|p| (p, compiled.sources.clone()));
        self
    }

    /// With pod scoping: events name the pod of the cgroup.
    pub fn with_pods(
        mut self,
        pods: &std::collections::BTreeMap<String, super::scoping::pods::PodPolicy>,
        kubepods: &[(String, String)],
    ) -> Self {
        self.pods = pods
            .iter()
            .map(|(uid, p)| (uid.clone(), p.pod.clone()))
            .collect();
        self.kubelet_roots = kubepods.iter().map(|(root, _)| root.clone()).collect();
        self
    }

    /// The pod (`namespace/name`) a cgroup path belongs to, if the daemon knows it.
    pub fn pod_of(&self, cgroup: &str) -> Option<&str> {
        self.kubelet_roots.iter().find_map(|root| {
            let pc = crate::scope::kubelet::pod_of(root, cgroup)?;
            self.pods.get(&pc.uid).map(String::as_str)
        })
    }

    /// The owners of `addr` through names a workload resolved to it.
    fn learned_owners(&self, addr: IpAddr) -> Vec<Owner> {
        let Some((proxy, sources)) = &self.learned else {
            return Vec::new();
        };
        proxy
            .owners_of(addr)
            .into_iter()
            .map(|(name, targets)| Owner {
                host: Some(name),
                sources: targets
                    .values()
                    .filter_map(|g| sources.get(&g.rule_id).cloned())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                targets: targets.keys().copied().collect(),
            })
            .collect()
    }

    pub fn explain(&self, addr: IpAddr, denied: bool) -> Explanation {
        let learned = self.learned_owners(addr);
        let statics = self.static_owners(addr);
        let mut owners: Vec<&Owner> = self
            .by_addr
            .get(&addr)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        owners.extend(learned.iter());
        owners.extend(statics.iter());
        let mut e = Explanation::default();
        for o in &owners {
            e.hosts.extend(o.host.clone());
            e.entries.extend(o.sources.iter().cloned());
        }
        e.hosts.sort();
        e.hosts.dedup();
        e.entries.sort();
        e.entries.dedup();
        if denied && !owners.is_empty() {
            let allowed: Vec<String> = owners
                .iter()
                .flat_map(|o| o.targets.iter())
                .map(fmt_target)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            e.nearest = Some(format!(
                "{} allows {}",
                e.entries.join(", "),
                allowed.join(", ")
            ));
        }
        e
    }
}

/// The sources of these rule ids, sorted, once each.
fn source_names(compiled: &CompiledPolicy, ids: &mut dyn Iterator<Item = u32>) -> Vec<String> {
    let mut v: Vec<String> = ids
        .filter_map(|id| compiled.sources.get(&id).cloned())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Identity of an event for aggregation.
type Key = (
    &'static str,
    u32,
    String,
    u64,
    &'static str,
    String,
    IpAddr,
    u16,
);

fn key(ev: &EventRecord) -> Key {
    (
        ev.verdict,
        ev.pid,
        ev.comm.clone(),
        ev.cgroup_id,
        ev.hook,
        ev.proto.clone(),
        ev.addr,
        ev.port,
    )
}

/// Counts repeats of an event within a window after its first occurrence.
#[derive(Default)]
pub struct Aggregator {
    open: HashMap<Key, (Instant, u64, EventRecord)>,
    /// Events not logged because [`MAX_OPEN`] distinct ones were already open.
    suppressed: u64,
}

/// Distinct events logged per window at most: a flood of distinct destinations costs a summary
/// line, not a line each (and the map stays bounded).
pub const MAX_OPEN: usize = 1000;

impl Aggregator {
    /// Whether this event opens a new window (log it now) or is a repeat, and the summary of
    /// the window it replaces, if that one had repeats nobody has reported yet.
    pub fn offer(
        &mut self,
        ev: &EventRecord,
        now: Instant,
        window: Duration,
    ) -> (bool, Option<(EventRecord, u64)>) {
        let k = key(ev);
        if self.open.len() >= MAX_OPEN && !self.open.contains_key(&k) {
            self.suppressed += 1;
            return (false, None);
        }
        match self.open.get_mut(&k) {
            Some((start, n, _)) if now.duration_since(*start) < window => {
                *n += 1;
                (false, None)
            }
            _ => {
                let closed = self
                    .open
                    .insert(k, (now, 0, ev.clone()))
                    .filter(|(_, n, _)| *n > 0)
                    .map(|(_, n, e)| (e, n));
                (true, closed)
            }
        }
    }

    /// `n` more of `ev`, counted by the kernel: into its open window, or a window of their
    /// own (logged when it closes, as repeats). False when the cap left them out.
    pub fn add_repeats(&mut self, ev: &EventRecord, n: u64, now: Instant) -> bool {
        let k = key(ev);
        if let Some((_, count, _)) = self.open.get_mut(&k) {
            *count += n;
            return true;
        }
        if self.open.len() >= MAX_OPEN {
            self.suppressed += n;
            return false;
        }
        self.open.insert(k, (now, n, ev.clone()));
        true
    }

    /// How many events were not logged since the last call.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }

    /// Windows that have closed with repeats: (event, repeats).
    pub fn flush(&mut self, now: Instant, window: Duration) -> Vec<(EventRecord, u64)> {
        let mut out = Vec::new();
        self.open.retain(|_, (start, n, ev)| {
            if now.duration_since(*start) < window {
                return true;
            }
            if *n > 0 {
                out.push((ev.clone(), *n));
            }
            false
        });
        out
    }
}

const WINDOW: Duration = Duration::from_secs(1);
/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

fn log_socket_event(ev: &EventRecord, socket: &str, count: u64, cgroup: &str, pod: &str) {
    let msg = match (ev.verdict == "deny", count) {
        (true, 1) => "socket refused",
        (true, _) => "socket refused (repeated)",
        (false, 1) => "socket allowed by audit mode",
        (false, _) => "socket allowed by audit mode (repeated)",
    };
    warn!(
        target: "egress_enforcer::event",
        verdict = ev.verdict,
        count,
        pid = ev.pid,
        tid = ev.tid,
        comm = %ev.comm,
        cgroup = %cgroup,
        pod,
        hook = ev.hook,
        socket,
        proto = %ev.proto,
        "{msg}"
    );
}

fn log_connection_event(ev: &EventRecord, count: u64, cgroup: &str, pod: &str, x: Explanation) {
    let denied = ev.verdict == "deny";
    let msg = match (denied, count) {
        (true, 1) => "connection denied",
        (true, _) => "connection denied (repeated)",
        (false, 1) => "connection allowed by audit mode",
        (false, _) => "connection allowed by audit mode (repeated)",
    };
    warn!(
        target: "egress_enforcer::event",
        verdict = ev.verdict,
        count,
        pid = ev.pid,
        tid = ev.tid,
        comm = %ev.comm,
        cgroup = %cgroup,
        pod,
        hook = ev.hook,
        proto = %ev.proto,
        dst = %ev.addr,
        port = ev.port,
        hosts = %x.hosts.join(","),
        entries = %x.entries.join("; "),
        nearest = %x.nearest.unwrap_or_default(),
        "{msg}"
    );
}

/// Reads the ring buffer and logs events, with what the daemon knows about each one.
struct Reader {
    mount: PathBuf,
    roots: Vec<Cgroup>,
    index: Arc<RwLock<EventIndex>>,
    names: CgroupNames,
    agg: Aggregator,
    last_sweep: std::time::Instant,
    /// Learn mode: every explained event is an observation.
    observer: Option<Arc<Observer>>,
    kernel: EventWindows,
    windows: windows::Windows,
    last_advance: Instant,
}

/// How often cgroups that are gone leave the name cache.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Reader {
    fn still(&self, path: &str, id: u64) -> bool {
        std::fs::metadata(self.mount.join(path.trim_start_matches('/')))
            .is_ok_and(|m| m.ino() == id)
    }

    fn path_of(&mut self, id: u64) -> String {
        let (mount, roots) = (self.mount.clone(), &self.roots);
        let find = |id| cgroup::path_for_id(&mount, roots, id);
        let still = |p: &str, id: u64| {
            std::fs::metadata(mount.join(p.trim_start_matches('/'))).is_ok_and(|m| m.ino() == id)
        };
        self.names.name(id, std::time::Instant::now(), find, still)
    }

    fn log(&mut self, ev: &EventRecord, count: u64) -> anyhow::Result<()> {
        let cgroup = self.path_of(ev.cgroup_id);
        let idx = self
            .index
            .read()
            .map_err(|_| anyhow::anyhow!("event index poisoned"))?;
        let pod = idx.pod_of(&cgroup);
        if let Some(socket) = &ev.socket {
            log_socket_event(ev, socket, count, &cgroup, pod.unwrap_or_default());
            return Ok(());
        }
        let x = idx.explain(ev.addr, ev.verdict == "deny");
        if let Some(o) = &self.observer {
            // The names the workload's own answers gave first: they say what it meant.
            let mut hosts = o.names_of(ev.cgroup_id, ev.addr);
            for h in &x.hosts {
                if !hosts.contains(h) {
                    hosts.push(h.clone());
                }
            }
            o.record(ev, count, &cgroup, pod, &hosts);
        }
        log_connection_event(ev, count, &cgroup, pod.unwrap_or_default(), x);
        Ok(())
    }

    /// An event not logged (a flood of distinct ones) is still an observation, with the
    /// names the workloads' answers gave (the index's owners are left out: they cost a walk).
    fn observe_unlogged(&mut self, ev: &EventRecord, count: u64) -> anyhow::Result<()> {
        let Some(o) = self.observer.clone() else {
            return Ok(());
        };
        let cgroup = self.path_of(ev.cgroup_id);
        let idx = self
            .index
            .read()
            .map_err(|_| anyhow::anyhow!("event index poisoned"))?;
        let hosts = o.names_of(ev.cgroup_id, ev.addr);
        o.record(ev, count, &cgroup, idx.pod_of(&cgroup), &hosts);
        Ok(())
    }

    /// Repeats the kernel counted (an unlogged flood's are observations all the same).
    fn repeats(&mut self, ev: &EventRecord, n: u64, now: Instant) -> anyhow::Result<()> {
        if !self.agg.add_repeats(ev, n, now) {
            self.observe_unlogged(ev, n)?;
        }
        Ok(())
    }

    /// A new generation of kernel windows, and the counts of those now over.
    fn advance(&mut self, now: Instant) -> anyhow::Result<()> {
        let current = self.kernel.advance()?;
        for at in self.windows.over(current) {
            let slot = match self.kernel.read(at.0, at.1) {
                Ok(s) => s,
                Err(e) => {
                    warn!("cannot read an event repeat window: {e:#}");
                    continue;
                }
            };
            if let Some((ev, n)) = self.windows.settle(at, &slot) {
                self.repeats(&ev, n, now)?;
            }
        }
        Ok(())
    }

    /// Everything in the buffer now. Blocking (an unknown cgroup id walks the cgroup trees):
    /// called in `block_in_place`.
    fn drain(&mut self, rb: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        let now = Instant::now();
        while let Some(item) = rb.next() {
            let Some(ev) = decode(&item) else {
                warn!(len = item.len(), "undecodable event (ABI mismatch?)");
                continue;
            };
            drop(item);
            if let Some((old, n)) = self.windows.opened(&ev) {
                self.repeats(&old, n, now)?;
            }
            let suppressed = self.agg.suppressed;
            let (new, closed) = self.agg.offer(&ev, now, WINDOW);
            if self.agg.suppressed > suppressed {
                self.observe_unlogged(&ev, 1)?;
            }
            if let Some((old, repeats)) = closed {
                self.log(&old, repeats)?;
            }
            if new {
                self.log(&ev, 1)?;
            }
        }
        if now.duration_since(self.last_advance) >= WINDOW {
            self.last_advance = now;
            self.advance(now)?;
        }
        for (ev, repeats) in self.agg.flush(now, WINDOW) {
            self.log(&ev, repeats)?;
        }
        let suppressed = self.agg.take_suppressed();
        if suppressed > 0 {
            warn!(
                target: "egress_enforcer::event",
                suppressed,
                "{suppressed} deny/audit events not logged: more than {MAX_OPEN} distinct ones \
                 within a second (the verdict counters have them all)"
            );
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = std::time::Instant::now();
            let mut names = std::mem::take(&mut self.names);
            names.sweep(|p, id| self.still(p, id));
            self.names = names;
        }
        Ok(())
    }
}

pub async fn consume(
    (rb, kernel): (RingBuf<MapData>, EventWindows),
    mount: PathBuf,
    roots: Vec<Cgroup>,
    index: Arc<RwLock<EventIndex>>,
    observer: Option<Arc<Observer>>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(rb) }.context("events: cannot poll the ring buffer")?;
    let mut reader = Reader {
        mount,
        roots,
        index,
        names: CgroupNames::default(),
        agg: Aggregator::default(),
        last_sweep: std::time::Instant::now(),
        observer,
        kernel,
        windows: windows::Windows::default(),
        last_advance: Instant::now(),
    };
    // The kernel wakes us only when the buffer is a quarter full (a wake-up per event would
    // cost more than the verdict itself), so it is also drained on this short timer.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                block_in_place(|| reader.drain(guard.get_inner_mut()))?;
                guard.clear_ready();
            }
            _ = tick.tick() => block_in_place(|| reader.drain(fd.get_mut()))?,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        policy::compile::{ConfigAllows, compile},
        serviceentry::source::{LoadReport, load_text},
    };

    fn policy() -> CompiledPolicy {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec: {hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], resolution: DNS}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: net}\nspec: {hosts: [n.example.com], addresses: [10.0.0.0/8], ports: [{number: 53, name: dns, protocol: UDP}], resolution: NONE}\n";
        let mut r = LoadReport::default();
        load_text(yaml, Path::new("se.yaml"), &mut r);
        compile(&ConfigAllows::default(), &r.entries)
    }

    fn resolved() -> Resolved {
        let mut r = Resolved::default();
        r.addrs.insert(
            "api.example.com".into(),
            vec!["198.51.100.7".parse().unwrap()],
        );
        r
    }

    #[test]
    fn explains_owners_and_the_nearest_entry() {
        let idx = EventIndex::build(Arc::new(policy()), &resolved());
        let x = idx.explain("198.51.100.7".parse().unwrap(), true);
        assert_eq!(x.hosts, ["api.example.com"]);
        assert_eq!(x.entries.len(), 1);
        assert!(x.entries[0].starts_with("ServiceEntry default/api"));
        assert!(
            x.nearest
                .as_deref()
                .is_some_and(|n| n.ends_with("allows 443/tcp")),
            "{x:?}"
        );
        let net = idx.explain("10.1.2.3".parse().unwrap(), true);
        assert!(net.entries[0].starts_with("ServiceEntry default/net"));
        assert!(
            net.nearest
                .as_deref()
                .is_some_and(|n| n.ends_with("allows 53/udp")),
            "{net:?}"
        );
        assert_eq!(
            idx.explain("192.0.2.1".parse().unwrap(), true),
            Explanation::default()
        );
    }

    fn ev(port: u16) -> EventRecord {
        EventRecord {
            ts_ns: 0,
            pid: 1,
            tid: 1,
            comm: "curl".into(),
            cgroup_id: 7,
            hook: "connect4",
            proto: "tcp".into(),
            addr: "192.0.2.1".parse().unwrap(),
            port,
            verdict: "deny",
            socket: None,
            window: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn identical_events_within_a_second_are_aggregated() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        assert!(a.offer(&ev(80), t0, WINDOW).0);
        assert!(!a.offer(&ev(80), t0 + Duration::from_millis(10), WINDOW).0);
        assert!(!a.offer(&ev(80), t0 + Duration::from_millis(900), WINDOW).0);
        assert!(
            a.offer(&ev(81), t0, WINDOW).0,
            "another port is another event"
        );
        assert!(a.flush(t0 + Duration::from_millis(999), WINDOW).is_empty());
        let flushed = a.flush(t0 + WINDOW, WINDOW);
        assert_eq!(
            flushed.len(),
            1,
            "only the window with repeats is reported again"
        );
        assert_eq!((flushed[0].0.port, flushed[0].1), (80, 2));
        assert!(a.offer(&ev(80), t0 + WINDOW, WINDOW).0, "a new window");
        // A window that closes by a new event, before any flush, reports its repeats then.
        assert!(
            !a.offer(&ev(80), t0 + WINDOW + Duration::from_millis(1), WINDOW)
                .0
        );
        let (new, closed) = a.offer(&ev(80), t0 + WINDOW * 2, WINDOW);
        assert!(new);
        assert_eq!(closed.map(|(e, n)| (e.port, n)), Some((80, 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_distinct_events_is_capped_and_counted() {
        let mut agg = Aggregator::default();
        let now = Instant::now();
        for port in 0..(MAX_OPEN as u16 + 50) {
            agg.offer(&ev(port), now, WINDOW);
        }
        assert_eq!(agg.open.len(), MAX_OPEN);
        assert_eq!(agg.take_suppressed(), 50);
        assert_eq!(agg.take_suppressed(), 0);
        // A repeat of a key already open is still counted in its window.
        let (new, _) = agg.offer(&ev(1), now, WINDOW);
        assert!(!new);
        assert_eq!(agg.take_suppressed(), 0);
        agg.flush(now + WINDOW, WINDOW);
        assert!(agg.open.is_empty(), "windows close");
    }
}
