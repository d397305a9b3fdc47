//! ServiceEntries + daemon config → what to allow: static IP/CIDR rules, and hostnames whose
//! DNS answers are allowed. Follows the table in docs/architecture.md, "ServiceEntry semantics"; pure, no I/O.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use enforcer_common::{RuleKey, RuleValue, VSET_EVERYONE};
use serde::Serialize;

use super::{
    allow_spec::{AllowSpec, Net, Proto},
    rules::{DesiredRules, InKeyOrder, Listed, describe, exact_key},
    statics::Statics,
    visibility::{EntryScope, Visibility},
};
use crate::serviceentry::{
    Issue, Loaded,
    model::{Protocol, Resolution, ServiceEntry, WorkloadEntry},
    names,
};

/// A destination port and protocol; port 0 means any port.
pub type Target = (u16, Proto);

/// Inputs from the daemon config that the compiler turns into rules as well.
#[derive(Debug, Clone, Default)]
pub struct ConfigAllows {
    /// `--allow` flags.
    pub specs: Vec<AllowSpec>,
    /// `allow.cidrs`: any port, TCP and UDP.
    pub cidrs: Vec<Net>,
    /// DNS servers the workloads use: port 53, TCP and UDP.
    pub dns_servers: Vec<IpAddr>,
    /// DNS-aware mode: the workloads' answers are allowed, wildcard and DYNAMIC_DNS hosts too.
    pub dns_aware: bool,
    /// `allow.ping`: every registered address (ServiceEntries, `allow.cidrs`) may be pinged.
    pub ping: bool,
    /// The Kubernetes API server the daemon watches: TCP to it stays allowed, so that the
    /// policy can never lock out its own source (docs/kubernetes.md).
    pub api_server: Vec<std::net::SocketAddr>,
}

/// Something that does not make an entry invalid but that the user should know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub entry: String,
    pub issue: Issue,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Rule id → where the rule comes from, e.g. `ServiceEntry default/api (se.yaml:3)`.
    pub sources: BTreeMap<u32, String>,
    /// Static destinations and the rule ids that allow them (subsumed ones merged away).
    pub statics: Statics,
    /// Hostname → targets and rule ids; every A/AAAA answer for the name gets these.
    pub hostnames: BTreeMap<String, BTreeMap<Target, BTreeSet<u32>>>,
    /// Only learned in DNS-aware mode: `*.suffix` hosts (keyed by the suffix) and the hosts of
    /// DYNAMIC_DNS entries (which may be wildcards too, keyed `*.suffix`).
    pub wildcards: BTreeMap<String, BTreeMap<Target, BTreeSet<u32>>>,
    pub dynamic: BTreeMap<String, BTreeMap<Target, BTreeSet<u32>>>,
    /// Every host of a valid entry, as written (lowercase, `*.` kept): names the DNS proxy
    /// answers, whether or not their answers create rules.
    pub registered: BTreeSet<String>,
    pub notices: Vec<Notice>,
    /// Scoping: who may use each rule id's addresses and endpoints (absent: everyone) ...
    pub scoped: BTreeMap<u32, Visibility>,
    /// ... and each of its hosts' answers, where that differs (keyed by rule id and host).
    pub scoped_hosts: BTreeMap<(u32, String), Visibility>,
}

/// Port targets of one ServiceEntry port: its number and targetPort, as TCP unless the
/// protocol is UDP.
fn port_targets(number: u32, target_port: u32, protocol: &str) -> Vec<Target> {
    let proto = if Protocol::parse(protocol) == Protocol::Udp {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    [number, target_port]
        .into_iter()
        .filter_map(|p| u16::try_from(p).ok().filter(|p| *p != 0))
        .map(|p| (p, proto))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Targets for an endpoint: the entry's, plus the endpoint's port overrides.
fn endpoint_targets(se: &ServiceEntry, we: &WorkloadEntry) -> Vec<Target> {
    let mut out: BTreeSet<Target> = BTreeSet::new();
    for p in &se.spec.ports {
        out.extend(port_targets(p.number, p.target_port, &p.protocol));
        if let Some(over) = we.ports.get(&p.name) {
            out.extend(port_targets(*over, 0, &p.protocol));
        }
    }
    out.into_iter().collect()
}

fn entry_targets(se: &ServiceEntry) -> Vec<Target> {
    se.spec
        .ports
        .iter()
        .flat_map(|p| port_targets(p.number, p.target_port, &p.protocol))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

struct Builder {
    policy: CompiledPolicy,
    /// Static destinations as they come, sorted into `policy.statics` at the end.
    statics: Vec<(AllowSpec, u32)>,
    dns_aware: bool,
    ping: bool,
    /// Scoping is on: `exportTo` is applied.
    scoped: bool,
}

/// A host as the tables key it: lowercase, without a trailing dot.
fn host_key(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn add_targets(
    table: &mut BTreeMap<String, BTreeMap<Target, BTreeSet<u32>>>,
    key: String,
    targets: &[Target],
    id: u32,
) {
    let slot = table.entry(key).or_default();
    for t in targets {
        slot.entry(*t).or_default().insert(id);
    }
}

impl Builder {
    /// With ping allowed, an entry that allows some port also allows ICMP echo.
    fn with_icmp(&self, mut targets: Vec<Target>) -> Vec<Target> {
        if self.ping && !targets.is_empty() {
            targets.push((0, Proto::Icmp));
        }
        targets
    }

    fn static_rule(&mut self, net: Net, target: Target, id: u32) {
        let spec = AllowSpec {
            net,
            port: target.0,
            proto: target.1,
        };
        self.statics.push((spec, id));
    }

    fn address(&mut self, entry: &str, text: &str, targets: &[Target], id: u32) {
        let net = match names::parse_prefix(text) {
            Some((addr, len)) => Net::new(addr, len).ok(),
            None => names::parse_ip(text)
                .and_then(|a| Net::new(a, if a.is_ipv4() { 32 } else { 128 }).ok()),
        };
        if let Some(net) = net {
            if net.is_v4_mapped() {
                self.notice(
                    entry,
                    "spec.addresses",
                    "v4-mapped",
                    format!(
                        "{text} is IPv4-mapped IPv6: only IPv4 traffic uses it, and an IPv6 \
                         address never matches IPv4 traffic, so it allows nothing; write the \
                         IPv4 address"
                    ),
                );
            }
            for t in targets {
                self.static_rule(net, *t, id);
            }
        }
    }

    /// One address, already parsed (a plain endpoint).
    fn host(&mut self, ip: IpAddr, targets: &[Target], id: u32) {
        if let Ok(net) = Net::new(ip, if ip.is_ipv4() { 32 } else { 128 }) {
            for t in targets {
                self.static_rule(net, *t, id);
            }
        }
    }

    fn hostname(&mut self, host: &str, targets: &[Target], id: u32) {
        add_targets(&mut self.policy.hostnames, host_key(host), targets, id);
    }

    /// A `*.suffix` host: learned from answers in DNS-aware mode, nothing otherwise.
    fn wildcard(&mut self, entry: &str, i: usize, host: &str, targets: &[Target], id: u32) {
        if self.dns_aware {
            let suffix = host_key(host.trim_start_matches("*."));
            add_targets(&mut self.policy.wildcards, suffix, targets, id);
        } else {
            self.notice(
                entry,
                &format!("spec.hosts[{i}]"),
                "dns-aware-mode",
                format!("wildcard host {host:?} cannot be resolved ahead of time: needs DNS-aware mode (dns.mode: proxy), not allowed"),
            );
        }
    }

    fn notice(&mut self, entry: &str, path: &str, rule: &'static str, msg: String) {
        self.policy.notices.push(Notice {
            entry: entry.to_owned(),
            issue: Issue::notice(path, rule, msg),
        });
    }

    fn entry(&mut self, loaded: &Loaded, id: u32) {
        let se = &loaded.entry;
        let spec = &se.spec;
        let name = loaded.id();
        let targets = self.with_icmp(entry_targets(se));
        if targets.is_empty() {
            self.notice(
                &name,
                "spec.ports",
                "no-ports",
                "no ports: this entry allows nothing".to_owned(),
            );
        }
        if !spec.export_to.is_empty() && !self.scoped {
            self.notice(
                &name,
                "spec.exportTo",
                "scoping",
                "exportTo applies to units (policies.units) and pods: without them the entry is \
                 allowed to every enforced cgroup"
                    .to_owned(),
            );
        }
        if spec.workload_selector.is_some() {
            self.notice(
                &name,
                "spec.workloadSelector",
                "scoping",
                "workloadSelector selects the entry's endpoints, not its clients: it does not \
                 narrow who may reach the entry"
                    .to_owned(),
            );
        }
        self.policy
            .registered
            .extend(spec.hosts.iter().map(|h| host_key(h)));
        let resolve_hosts = |b: &mut Self| {
            for (i, h) in spec.hosts.iter().enumerate() {
                if h.starts_with('*') {
                    b.wildcard(&name, i, h, &targets, id);
                } else {
                    b.hostname(h, &targets, id);
                }
            }
        };
        let addresses = |b: &mut Self| {
            for a in &spec.addresses {
                b.address(&name, a, &targets, id);
            }
        };
        match spec.resolution {
            Resolution::None if !spec.addresses.is_empty() => addresses(self),
            Resolution::None => resolve_hosts(self),
            Resolution::Static => {
                // Plain endpoints take the entry's targets (no port overrides).
                let t = self.with_icmp(entry_targets(se));
                for ip in spec.plain_endpoints.iter() {
                    self.host(*ip, &t, id);
                }
                for (i, we) in spec.endpoints().iter().enumerate() {
                    if we.address.starts_with("unix://") || we.address.is_empty() {
                        self.notice(
                            &name,
                            &format!("spec.endpoints[{i}]"),
                            "no-network",
                            "endpoint has no IP address: nothing to allow".to_owned(),
                        );
                        continue;
                    }
                    let t = self.with_icmp(endpoint_targets(se, we));
                    self.address(&name, &we.address, &t, id);
                }
                addresses(self);
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                if !spec.has_endpoints() {
                    resolve_hosts(self);
                }
                for we in spec.endpoints() {
                    let t = self.with_icmp(endpoint_targets(se, we));
                    if names::parse_ip(&we.address).is_some() {
                        self.address(&name, &we.address, &t, id);
                    } else {
                        self.hostname(&we.address, &t, id);
                    }
                }
                addresses(self);
            }
            Resolution::DynamicDns => {
                for (i, h) in spec.hosts.iter().enumerate() {
                    if !self.dns_aware {
                        self.notice(
                            &name,
                            &format!("spec.hosts[{i}]"),
                            "dns-aware-mode",
                            format!("DYNAMIC_DNS host {h:?} is only allowed in DNS-aware mode (dns.mode: proxy)"),
                        );
                    } else if h.starts_with('*') {
                        self.wildcard(&name, i, h, &targets, id);
                    } else {
                        add_targets(&mut self.policy.dynamic, host_key(h), &targets, id);
                    }
                }
            }
        }
    }

    /// Records who may use entry `id`'s rules.
    fn scope(&mut self, loaded: &Loaded, id: u32, scope: &EntryScope) {
        if scope.entry != Visibility::Everyone {
            self.policy.scoped.insert(id, scope.entry.clone());
        }
        for (h, vis) in loaded.entry.spec.hosts.iter().zip(&scope.hosts) {
            if *vis != scope.entry {
                self.policy
                    .scoped_hosts
                    .insert((id, host_key(h)), vis.clone());
            }
        }
    }

    /// Drops static rules covered by a broader one (a containing network on the same port, or
    /// on any port, same protocol) that everyone who may use them may use too, folding their
    /// rule ids into the broader rule.
    fn merge(&mut self) {
        self.policy.statics = Statics::from_pairs(std::mem::take(&mut self.statics));
        let folds = super::fold::covered(&self.policy);
        self.policy.statics.fold(&folds);
    }
}

/// Compiles the config's allows and every valid entry (invalid ones are the caller's to
/// report; they are skipped here). Rule ids: config sources first, then entries in order.
pub fn compile(config: &ConfigAllows, entries: &[Loaded]) -> CompiledPolicy {
    compile_scoped(config, entries, None)
}

/// [`compile`], with who may use each entry (`scopes[i]` for `entries[i]`; `None`: everyone,
/// no scoping). The config's allows are everyone's.
pub fn compile_scoped(
    config: &ConfigAllows,
    entries: &[Loaded],
    scopes: Option<&[EntryScope]>,
) -> CompiledPolicy {
    // Sized for every static rule: growing a vector of a million copies it and, for a
    // moment, holds it twice (the reload's peak).
    let extra = |e: &Loaded| {
        let spec = &e.entry.spec;
        let targets = entry_targets(&e.entry).len() + usize::from(config.ping);
        (spec.plain_endpoints.len() + spec.endpoints().len() + spec.addresses.len()) * targets
    };
    let statics = config.specs.len()
        + 3 * config.cidrs.len()
        + 2 * config.dns_servers.len()
        + config.api_server.len()
        + entries
            .iter()
            .filter(|e| e.is_valid())
            .map(extra)
            .sum::<usize>();
    let mut b = Builder {
        policy: CompiledPolicy::default(),
        statics: Vec::with_capacity(statics),
        dns_aware: config.dns_aware,
        ping: config.ping,
        scoped: scopes.is_some(),
    };
    let mut next_id = 1u32;
    let mut new_id = |b: &mut Builder, source: String| {
        let id = next_id;
        next_id = next_id.saturating_add(1);
        b.policy.sources.insert(id, source);
        id
    };
    for spec in &config.specs {
        let id = new_id(&mut b, format!("--allow {spec}"));
        b.static_rule(spec.net, (spec.port, spec.proto), id);
    }
    for net in &config.cidrs {
        let id = new_id(&mut b, format!("allow.cidrs {net}"));
        let icmp = config.ping.then_some(Proto::Icmp);
        for proto in [Proto::Tcp, Proto::Udp].into_iter().chain(icmp) {
            b.static_rule(*net, (0, proto), id);
        }
    }
    for ip in &config.dns_servers {
        let id = new_id(&mut b, format!("DNS server {ip}"));
        let net = Net::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).unwrap_or(Net {
            addr: *ip,
            prefix: 0,
        });
        for proto in [Proto::Tcp, Proto::Udp] {
            b.static_rule(net, (53, proto), id);
        }
    }
    for addr in &config.api_server {
        let id = new_id(&mut b, format!("Kubernetes API server {addr}"));
        let ip = addr.ip();
        let net = Net::new(ip, if ip.is_ipv4() { 32 } else { 128 }).unwrap_or(Net {
            addr: ip,
            prefix: 0,
        });
        b.static_rule(net, (addr.port(), Proto::Tcp), id);
    }
    for (i, loaded) in entries.iter().enumerate().filter(|(_, e)| e.is_valid()) {
        let id = new_id(
            &mut b,
            format!("ServiceEntry {} ({})", loaded.id(), loaded.origin.short()),
        );
        if let Some(scope) = scopes.and_then(|s| s.get(i)) {
            b.scope(loaded, id, scope);
        }
        b.entry(loaded, id);
    }
    debug_assert!(
        b.statics.len() <= statics || entries.iter().any(|e| !e.entry.spec.endpoints().is_empty()),
        "static rules outgrew their estimate"
    );
    b.merge();
    b.policy
}

impl CompiledPolicy {
    /// Who may use the rules of these ids: each id's policies.
    pub fn usable_by(&self, ids: impl IntoIterator<Item = u32>) -> Visibility {
        if self.scoped.is_empty() {
            return Visibility::Everyone;
        }
        ids.into_iter()
            .map(|id| self.scoped.get(&id).unwrap_or(&Visibility::Everyone))
            .fold(Visibility::Only(BTreeSet::new()), |acc, v| acc.union(v))
    }

    /// Who may use the answers for `host` allowed by these ids.
    pub fn host_usable_by(&self, host: &str, ids: impl IntoIterator<Item = u32>) -> Visibility {
        ids.into_iter()
            .map(|id| {
                self.scoped_hosts
                    .get(&(id, host.to_owned()))
                    .or_else(|| self.scoped.get(&id))
                    .unwrap_or(&Visibility::Everyone)
            })
            .fold(Visibility::Only(BTreeSet::new()), |acc, v| acc.union(v))
    }

    /// The kernel rules once hostnames are resolved; `resolve` gives the addresses currently
    /// allowed for a name (none: nothing is allowed for it yet).
    pub fn desired_rules(&self, resolve: impl Fn(&str) -> Vec<IpAddr>) -> DesiredRules {
        self.rules_besides(false, resolve)
    }

    /// The same rules as [`CompiledPolicy::desired_rules`]; when they can be, the static
    /// hosts' exact rules are [`Listed`] from this policy rather than copied
    /// (docs/architecture.md, "Reloads").
    pub fn desired_rules_listed(
        self: &Arc<Self>,
        resolve: impl Fn(&str) -> Vec<IpAddr>,
    ) -> DesiredRules {
        let listed = self.statics.host_keys_in_order() && self.scoped.is_empty();
        let mut rules = self.rules_besides(listed, resolve);
        if listed {
            // A scoped answer that repeats a static host merges into that host's rule, which
            // is everyone's (as `DesiredRules::seal` would merge them): its scope would only
            // hold a visibility set no rule names.
            rules.scoped.retain(|k, _| !self.is_static_host(k));
            rules.listed = Some(Listed(Arc::clone(self) as Arc<dyn InKeyOrder>));
        }
        rules
    }

    /// Whether `key` is the exact rule of a static host destination.
    fn is_static_host(&self, key: &RuleKey) -> bool {
        let spec = describe(None, key);
        self.statics.get(&spec).is_some() && exact_key(&spec) == Some(*key)
    }

    /// The desired rules, leaving out the static hosts' exact rules if `listed`.
    fn rules_besides(&self, listed: bool, resolve: impl Fn(&str) -> Vec<IpAddr>) -> DesiredRules {
        let mut rules = DesiredRules::with_capacity(if listed { 0 } else { self.statics.len() });
        rules.sources = self.sources.clone();
        for (spec, ids) in self.statics.in_kernel_order() {
            if listed && exact_key(spec).is_some() {
                continue;
            }
            rules.add_scoped(spec, ids.first(), 0, &self.usable_by(ids.iter()));
        }
        for (host, targets) in &self.hostnames {
            for ip in resolve(host) {
                let Ok(net) = Net::new(ip, if ip.is_ipv4() { 32 } else { 128 }) else {
                    continue;
                };
                for ((port, proto), ids) in targets {
                    let spec = AllowSpec {
                        net,
                        port: *port,
                        proto: *proto,
                    };
                    let id = ids.first().copied().unwrap_or(0);
                    let vis = self.host_usable_by(host, ids.iter().copied());
                    rules.add_scoped(&spec, id, enforcer_common::RULE_FLAG_DNS, &vis);
                }
            }
        }
        rules.seal()
    }
}

impl InKeyOrder for CompiledPolicy {
    fn exact_in_key_order(&self) -> Box<dyn Iterator<Item = (RuleKey, RuleValue)> + '_> {
        debug_assert!(self.statics.host_keys_in_order() && self.scoped.is_empty());
        Box::new(self.statics.host_keys().map(|(key, id)| {
            let value = RuleValue {
                rule_id: id,
                flags: 0,
                vset: VSET_EVERYONE,
                pad: 0,
            };
            (key, value)
        }))
    }

    fn any_port(&self) -> bool {
        self.statics.hosts_any_port()
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
