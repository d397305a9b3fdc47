//! From observations to ServiceEntries (docs/architecture.md, "Learn mode"): which
//! observations count (`--since`, `--namespace`, `--cgroup`, `--exclude`), how they group
//! (one entry per name, or per registrable domain, optionally folded into a wildcard), and
//! the entries Istio accepts for each group. Pure; the output depends only on its inputs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use super::store::{Observation, Transport};
use crate::serviceentry::names::validate_fqdn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Group {
    /// One entry per name.
    #[default]
    Host,
    /// One entry per registrable domain (`api.example.co.uk` → `example.co.uk`).
    Domain,
}

/// What is left out because the policy already covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exclude {
    /// What the current policy allows the observing workload (the default).
    #[default]
    Allowed,
    /// Any name or address the policy registers, on any port.
    Registered,
    /// Nothing: every observation.
    None,
}

/// The policy in force, as the exclusion asks it.
pub trait Policy {
    /// The workload of `o` may reach its address on its port and protocol.
    fn allows(&self, o: &Observation) -> bool;
    /// The policy names `o`'s address or one of its names at all.
    fn registers(&self, o: &Observation) -> bool;
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Unix seconds: only observations last seen at or after.
    pub since: Option<u64>,
    /// Only pods in these namespaces.
    pub namespaces: Vec<String>,
    /// Only these cgroups and their descendants.
    pub cgroups: Vec<String>,
    pub group: Group,
    /// With [`Group::Domain`]: several names of one domain become `*.domain`.
    pub wildcard: bool,
    pub exclude: Exclude,
    /// `namespace/name` of the entries in force: a new entry never takes one (`-2`, `-3`…).
    pub taken: BTreeSet<String>,
}

/// What went into one port of an entry.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub observations: u64,
    pub count: u64,
    pub denied: u64,
    pub first: u64,
    pub last: u64,
    pub addrs: BTreeSet<IpAddr>,
    pub workloads: BTreeSet<String>,
}

impl Tally {
    fn add(&mut self, o: &Observation) {
        self.first = if self.observations == 0 {
            o.first_seen
        } else {
            self.first.min(o.first_seen)
        };
        self.last = self.last.max(o.last_seen);
        self.observations += 1;
        self.count = self.count.saturating_add(o.count);
        self.denied = self.denied.saturating_add(o.denied);
        self.addrs.insert(o.addr);
        self.workloads.insert(workload(o));
    }

    fn merge(&mut self, t: &Tally) {
        self.first = if self.observations == 0 {
            t.first
        } else {
            self.first.min(t.first)
        };
        self.last = self.last.max(t.last);
        self.observations += t.observations;
        self.count = self.count.saturating_add(t.count);
        self.denied = self.denied.saturating_add(t.denied);
        self.addrs.extend(&t.addrs);
        self.workloads.extend(t.workloads.iter().cloned());
    }
}

fn workload(o: &Observation) -> String {
    match &o.pod {
        Some(p) => format!("pod {p}"),
        None => o.cgroup.clone(),
    }
}

pub type Ports = BTreeMap<(u16, Transport), Tally>;

/// The resolution of a drafted entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Dns,
    /// With `addresses`, or for a wildcard (the workloads' own answers).
    None,
}

/// One ServiceEntry to write.
#[derive(Debug, Clone)]
pub struct Draft {
    pub name: String,
    /// Its pod's namespace (then exported there alone), or none.
    pub namespace: Option<String>,
    pub hosts: Vec<String>,
    pub addresses: Vec<IpAddr>,
    pub resolution: Resolution,
    /// HTTP and TLS may be guessed from the port (not for addresses: Istio would route
    /// HTTP by a Host header that no client sends for a made-up host).
    pub guess_protocols: bool,
    pub ports: Ports,
    /// Why this entry is not one with its neighbours.
    pub note: Option<&'static str>,
}

/// The Istio protocol and port name for a port seen in use. egress-enforcer only tells TCP
/// from UDP; HTTP and TLS are guessed from the well-known ports (they let several hosts
/// share an entry, as Istio requires).
pub fn protocol(port: u16, t: Transport, guess: bool) -> (&'static str, String) {
    match (t, port) {
        (Transport::Tcp, _) if !guess => ("TCP", format!("tcp-{port}")),
        (Transport::Udp, _) => ("UDP", format!("udp-{port}")),
        (Transport::Tcp, 80 | 8080) => ("HTTP", format!("http-{port}")),
        (Transport::Tcp, 443 | 8443) => ("TLS", format!("tls-{port}")),
        (Transport::Tcp, _) => ("TCP", format!("tcp-{port}")),
    }
}

fn shareable(ports: &Ports) -> bool {
    ports
        .keys()
        .all(|(p, t)| matches!(protocol(*p, *t, true).0, "HTTP" | "TLS"))
}

fn under(cgroup: &str, root: &str) -> bool {
    let (c, r) = (cgroup.trim_matches('/'), root.trim_matches('/'));
    r.is_empty() || c == r || c.strip_prefix(r).is_some_and(|rest| rest.starts_with('/'))
}

fn selected(o: &Observation, opts: &Options, policy: &dyn Policy) -> bool {
    let ns = o
        .pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map(|(n, _)| n);
    o.port != 0
        && opts.since.is_none_or(|s| o.last_seen >= s)
        && (opts.namespaces.is_empty()
            || ns.is_some_and(|n| opts.namespaces.iter().any(|x| x == n)))
        && (opts.cgroups.is_empty() || opts.cgroups.iter().any(|c| under(&o.cgroup, c)))
        && match opts.exclude {
            Exclude::Allowed => !policy.allows(o),
            Exclude::Registered => !policy.registers(o),
            Exclude::None => true,
        }
}

/// The registrable domain of a name under a known public suffix (`api.example.co.uk` →
/// `example.co.uk`); under an unknown one (`svc.cluster.local`, `corp.internal`) the name
/// itself, so that nothing is grouped or folded across a private namespace's whole tree.
pub fn registrable(host: &str) -> &str {
    match psl::domain(host.as_bytes()) {
        Some(d) if d.suffix().is_known() => std::str::from_utf8(d.as_bytes()).unwrap_or(host),
        _ => host,
    }
}

/// The namespace an observation's entry goes to: its pod's (exported there alone), or none.
fn namespace_of(o: &Observation) -> Option<String> {
    let pod = o.pod.as_deref().filter(|p| super::store::valid_pod(p))?;
    let (ns, _) = pod.split_once('/')?;
    Some(ns.to_owned())
}

/// Ports by name and by nameless address, for one namespace.
#[derive(Default)]
struct Seen {
    hosts: BTreeMap<String, Ports>,
    addrs: BTreeMap<IpAddr, Ports>,
}

/// Every entry the observations call for, sorted by namespace and name, names unique in
/// their namespace.
pub fn suggest(obs: &[Observation], opts: &Options, policy: &dyn Policy) -> Vec<Draft> {
    let mut by_ns: BTreeMap<Option<String>, Seen> = BTreeMap::new();
    for o in obs.iter().filter(|o| selected(o, opts, policy)) {
        let seen = by_ns.entry(namespace_of(o)).or_default();
        let names: Vec<&String> = o
            .hosts
            .iter()
            .filter(|h| validate_fqdn(h).is_ok())
            .collect();
        if names.is_empty() {
            let t = seen.addrs.entry(o.addr).or_default();
            t.entry((o.port, o.proto)).or_default().add(o);
        }
        for h in names {
            let t = seen.hosts.entry(h.clone()).or_default();
            t.entry((o.port, o.proto)).or_default().add(o);
        }
    }
    let mut out = Vec::new();
    for (ns, seen) in by_ns {
        let mut drafts = Vec::new();
        for ((domain, _), hosts) in groups(seen.hosts, opts) {
            drafts.extend(named(&domain, hosts, opts));
        }
        for (addr, ports) in seen.addrs {
            drafts.push(Draft {
                name: format!("addr-{}", addr_label(addr)),
                namespace: None,
                hosts: vec![format!("{}.unnamed.invalid", addr_label(addr))],
                addresses: vec![addr],
                resolution: Resolution::None,
                guess_protocols: false,
                ports,
                note: Some(
                    "no workload resolved a name for this address: it is allowed by address",
                ),
            });
        }
        let mut drafts: Vec<Draft> = drafts.into_iter().flat_map(split_udp).collect();
        for d in &mut drafts {
            d.namespace.clone_from(&ns);
        }
        let prefix = format!("{}/", ns.as_deref().unwrap_or("default"));
        let taken: BTreeSet<String> = opts
            .taken
            .iter()
            .filter_map(|id| id.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        unique_names(&mut drafts, &taken);
        out.extend(drafts);
    }
    out
}

/// A domain (or a name) and the ports its names share (empty: any).
type GroupKey = (String, Vec<(u16, Transport)>);

/// (Group, ports shared) → (host → ports). Names of one domain share an entry only where
/// they were seen on the same ports (an entry allows each host every port in it); a
/// wildcard takes every port its names were seen on.
fn groups(
    by_host: BTreeMap<String, Ports>,
    opts: &Options,
) -> BTreeMap<GroupKey, BTreeMap<String, Ports>> {
    let mut out: BTreeMap<GroupKey, BTreeMap<String, Ports>> = BTreeMap::new();
    for (h, ports) in by_host {
        let key = match opts.group {
            Group::Host => (h.clone(), Vec::new()),
            Group::Domain if opts.wildcard => (registrable(&h).to_owned(), Vec::new()),
            Group::Domain => (registrable(&h).to_owned(), ports.keys().copied().collect()),
        };
        out.entry(key).or_default().insert(h, ports);
    }
    out
}

fn merged(hosts: &BTreeMap<String, Ports>) -> Ports {
    let mut all = Ports::new();
    for ports in hosts.values() {
        for (k, t) in ports {
            all.entry(*k).or_default().merge(t);
        }
    }
    all
}

fn single(host: &str, ports: Ports, note: Option<&'static str>) -> Draft {
    Draft {
        name: name_label(host),
        namespace: None,
        hosts: vec![host.to_owned()],
        addresses: Vec::new(),
        resolution: Resolution::Dns,
        guess_protocols: true,
        ports,
        note,
    }
}

/// The entries for one group of names.
fn named(domain: &str, hosts: BTreeMap<String, Ports>, opts: &Options) -> Vec<Draft> {
    if hosts.len() == 1 {
        return hosts
            .into_iter()
            .map(|(h, p)| single(&h, p, None))
            .collect();
    }
    let ports = merged(&hosts);
    if opts.wildcard {
        let mut names = vec![format!("*.{domain}")];
        names.extend(hosts.contains_key(domain).then(|| domain.to_owned()));
        return vec![Draft {
            name: name_label(&format!("wildcard-{domain}")),
            namespace: None,
            hosts: names,
            addresses: Vec::new(),
            resolution: Resolution::None,
            guess_protocols: true,
            ports,
            note: Some(
                "folded into a wildcard: allowed are the addresses the workloads' own DNS answers give (DNS-aware mode)",
            ),
        }];
    }
    if shareable(&ports) {
        return vec![Draft {
            name: name_label(domain),
            namespace: None,
            hosts: hosts.into_keys().collect(),
            addresses: Vec::new(),
            resolution: Resolution::Dns,
            guess_protocols: true,
            ports,
            note: None,
        }];
    }
    hosts
        .into_iter()
        .map(|(h, p)| {
            let note = "one entry per name: Istio lets several hosts share an entry only on HTTP and TLS ports";
            single(&h, p, Some(note))
        })
        .collect()
}

/// Istio refuses two ports with one number in an entry: UDP ports whose number is also
/// used by TCP go into an entry of their own.
fn split_udp(mut d: Draft) -> Vec<Draft> {
    let clash: Vec<(u16, Transport)> = d
        .ports
        .keys()
        .filter(|(p, t)| *t == Transport::Udp && d.ports.contains_key(&(*p, Transport::Tcp)))
        .copied()
        .collect();
    if clash.is_empty() {
        return vec![d];
    }
    let mut udp = d.clone();
    udp.ports = clash
        .iter()
        .filter_map(|k| d.ports.remove(k).map(|t| (*k, t)))
        .collect();
    udp.name = with_suffix(&d.name, "-udp");
    udp.note = Some("UDP on a port number TCP also uses: Istio wants one entry per port number");
    vec![d, udp]
}

/// A Kubernetes name from free text: lowercase letters, digits and dashes, at most 63.
pub fn name_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out = out.trim_matches('-').to_owned();
    if out.len() > 63 {
        let hash = fnv1a(s.as_bytes());
        out.truncate(54);
        out = format!("{}-{hash:08x}", out.trim_end_matches('-'));
    }
    if out.is_empty() {
        out = "entry".to_owned();
    }
    out
}

/// `base` and `suffix`, `base` shortened so that the whole stays a DNS label.
fn with_suffix(base: &str, suffix: &str) -> String {
    let keep = 63usize.saturating_sub(suffix.len());
    let b = base
        .get(..keep.min(base.len()))
        .unwrap_or(base)
        .trim_end_matches('-');
    format!("{b}{suffix}")
}

fn fnv1a(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5, |h: u32, c| {
        (h ^ u32::from(*c)).wrapping_mul(0x0100_0193)
    })
}

fn addr_label(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// Sorted by name; a name taken already, or twice, gets `-2`, `-3`… in that order. Linear:
/// each base name remembers where its search for a free suffix stopped.
fn unique_names(drafts: &mut [Draft], before: &BTreeSet<String>) {
    drafts.sort_by(|a, b| (&a.name, &a.hosts).cmp(&(&b.name, &b.hosts)));
    let mut taken: HashSet<String> = drafts.iter().map(|d| d.name.clone()).collect();
    taken.extend(before.iter().cloned());
    let mut seen: HashSet<String> = before.iter().cloned().collect();
    let mut next: HashMap<String, u32> = HashMap::new();
    for d in drafts.iter_mut() {
        if seen.insert(d.name.clone()) {
            continue;
        }
        let base = d.name.clone();
        let n = next.entry(base.clone()).or_insert(2);
        while taken.contains(&with_suffix(&base, &format!("-{n}"))) {
            *n += 1;
        }
        d.name = with_suffix(&base, &format!("-{n}"));
        *n += 1;
        taken.insert(d.name.clone());
        seen.insert(d.name.clone());
    }
}

#[cfg(test)]
#[path = "suggest_tests.rs"]
mod tests;
