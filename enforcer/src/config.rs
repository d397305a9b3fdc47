//! Daemon configuration (`/etc/egress-enforcer/config.yaml`; every key is documented in
//! config/config.yaml).
//!
//! Every key is optional. Unknown keys are rejected (a typo must not silently weaken policy),
//! and errors name the file and, where the YAML parser knows it, the line.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Component, Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/egress-enforcer/config.yaml";
pub const DEFAULT_SERVICEENTRIES: &str = "/etc/egress-enforcer/serviceentries";
/// The examples in this source checkout. Used when no config file exists and
/// /etc/egress-enforcer/serviceentries does not either, so `cargo xtask run` works as is.
pub const CHECKOUT_SERVICEENTRIES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../config/serviceentries");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// Sockets made outside the enforced cgroups and used inside them (docs/threat-model.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForeignSockets {
    /// Programs on the cgroup root decide for them by the calling task: every connect() and
    /// unconnected sendmsg() on the host pays a cgroup lookup (bench/RESULTS.md).
    #[default]
    Enforce,
    /// No programs on the root: a socket made before its process joined an enforced cgroup,
    /// or received from outside, is not checked.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    /// Files and directories (walked for *.yaml / *.yml) holding ServiceEntries.
    pub service_entries: Vec<PathBuf>,
    /// cgroup v2 directories, relative to the cgroup2 mount.
    pub cgroups: Vec<String>,
    pub bpffs: PathBuf,
    pub allow: Allow,
    pub foreign_sockets: ForeignSockets,
    pub dns: Dns,
    pub maps: MapSizes,
    pub limits: Limits,
    pub log: Log,
    pub http: Http,
    pub kubernetes: Kubernetes,
    pub policies: Policies,
    pub learn: Learn,
}

/// One allowlist per unit on a host (docs/architecture.md, "Scoping"). Without units every
/// enforced cgroup shares one policy, as before.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policies {
    /// What an enforced cgroup outside every unit (and pod) may use; unset: `deny` with
    /// units or `kubernetes.pods`, else `all`.
    pub default: Option<DefaultPolicy>,
    /// The mesh default for entries without `exportTo` (Istio's meshConfig
    /// `defaultServiceExportTo`).
    pub default_export_to: Vec<String>,
    pub units: Vec<Unit>,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            default: None,
            default_export_to: vec!["*".to_owned()],
            units: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    /// Every ServiceEntry of `serviceEntries` and the API server, whatever its `exportTo`.
    #[default]
    All,
    /// Only `allow.*` and `--allow`: no ServiceEntry.
    Deny,
}

/// A cgroup (a systemd unit, or any cgroup below `cgroups`) with its own allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Unit {
    /// Relative to the cgroup2 mount, e.g. `system.slice/nginx.service`; its descendants
    /// share its policy.
    pub cgroup: String,
    /// The ServiceEntries (of `serviceEntries` and the API server) exported to these
    /// namespaces.
    pub namespaces: Vec<String>,
    /// Files and directories whose ServiceEntries are this unit's (and no one else's, unless
    /// they are also under `serviceEntries`).
    pub service_entries: Vec<PathBuf>,
}

/// ServiceEntries from the Kubernetes API server (docs/kubernetes.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Kubernetes {
    /// Watch `serviceentries.networking.istio.io` in every namespace, in addition to the
    /// `serviceEntries` files.
    pub api_server: bool,
    /// A kubeconfig file; empty: the pod's service account (in-cluster).
    pub kubeconfig: PathBuf,
    /// Scope every pod on this node as Istio would: the entries exported to its namespace,
    /// narrowed by its Sidecar (watches Sidecars and this node's pods).
    pub pods: bool,
    /// This node's name; empty: `$NODE_NAME` (the downward API).
    pub node_name: String,
    /// Istio's `rootNamespace`: its selector-less Sidecar applies mesh-wide.
    pub root_namespace: String,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Self {
            api_server: false,
            kubeconfig: PathBuf::new(),
            pods: false,
            node_name: String::new(),
            root_namespace: "istio-system".to_owned(),
        }
    }
}

impl Kubernetes {
    pub fn kubeconfig(&self) -> Option<&Path> {
        (!self.kubeconfig.as_os_str().is_empty()).then_some(self.kubeconfig.as_path())
    }
}

/// `auto` (the nameservers in /etc/resolv.conf) or a list of IPs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum DnsServers {
    Keyword(String),
    List(Vec<String>),
}

/// How the daemon resolves ServiceEntry hosts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Dns {
    /// "IP", "IP:PORT" or "[IPv6]:PORT"; empty: /etc/resolv.conf.
    pub servers: Vec<String>,
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub min_ttl: Duration,
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub max_ttl: Duration,
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub stale_grace: Duration,
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// Who resolves ServiceEntry hosts: the daemon, or the workloads through the proxy.
    pub mode: DnsMode,
    pub proxy: DnsProxy,
}

/// `dns.mode` (docs/architecture.md, "DNS-aware mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DnsMode {
    /// The daemon looks hosts up itself and allows its own answers.
    Resolve,
    /// Every query of an enforced workload goes through the daemon's proxy, which allows
    /// what the answers say before the workload sees them. The default: see the README's
    /// "DNS-aware mode" for the measured reason.
    #[default]
    Proxy,
}

/// What the proxy answers for a name no ServiceEntry registers (enforce mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unregistered {
    #[default]
    Nxdomain,
    Refused,
}

/// `dns.proxy`: the DNS proxy of DNS-aware mode.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsProxy {
    /// IPv4 address the kernel sends queries to and the proxy listens on; every enforced
    /// workload must reach it (another network namespace cannot reach 127.0.0.1 here).
    pub address: String,
    /// IPv6 address, or "" for none (queries to IPv6 servers then fail at once).
    pub address6: String,
    pub port: u16,
    /// Servers to forward to ("IP", "IP:PORT"); empty: the server the workload asked.
    pub upstreams: Vec<String>,
    /// Domains forwarded without creating rules (with every name under them).
    pub passthrough: Vec<String>,
    pub unregistered: Unregistered,
    /// cgroups (relative to the cgroup2 mount, with their descendants) whose queries are
    /// neither redirected nor denied: DNS servers that run as workloads.
    pub exempt_cgroups: Vec<String>,
    /// How long to wait for an upstream answer before answering SERVFAIL.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub timeout: Duration,
}

impl Default for DnsProxy {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".to_owned(),
            address6: "::1".to_owned(),
            port: 15053,
            upstreams: Vec::new(),
            passthrough: vec!["cluster.local".to_owned()],
            unregistered: Unregistered::Nxdomain,
            exempt_cgroups: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }
}

impl DnsProxy {
    /// The IPv4 listen address (validated in `parse`).
    pub fn address4(&self) -> std::net::Ipv4Addr {
        self.address
            .parse()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
    }

    /// The IPv6 listen address, if any (validated in `parse`).
    pub fn address6(&self) -> Option<std::net::Ipv6Addr> {
        self.address6.parse().ok()
    }

    /// `upstreams` as socket addresses (validated in `parse`).
    pub fn upstream_addrs(&self) -> Vec<SocketAddr> {
        self.upstreams
            .iter()
            .filter_map(|s| parse_dns_server(s).ok())
            .collect()
    }

    fn validate(&self) -> anyhow::Result<()> {
        let v4: std::net::Ipv4Addr = self.address.parse().map_err(|_| {
            anyhow::anyhow!(
                "dns.proxy.address: {:?} is not an IPv4 address",
                self.address
            )
        })?;
        if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
            bail!("dns.proxy.address: {v4} cannot be listened on by one proxy");
        }
        if !self.address6.is_empty() {
            let v6: std::net::Ipv6Addr = self.address6.parse().map_err(|_| {
                anyhow::anyhow!(
                    "dns.proxy.address6: {:?} is not an IPv6 address (\"\" for none)",
                    self.address6
                )
            })?;
            if v6.is_unspecified() || v6.is_multicast() || v6.to_ipv4_mapped().is_some() {
                bail!("dns.proxy.address6: {v6} cannot be listened on by one proxy");
            }
        }
        if self.port == 0 || self.port == 53 {
            bail!(
                "dns.proxy.port: {} is not usable (53 is the port queries are redirected from)",
                self.port
            );
        }
        for u in &self.upstreams {
            parse_dns_server(u).with_context(|| format!("dns.proxy.upstreams: {u:?}"))?;
        }
        for d in &self.passthrough {
            crate::dnsproxy::names::normalize(d)
                .with_context(|| format!("dns.proxy.passthrough: {d:?}"))?;
        }
        for c in &self.exempt_cgroups {
            let rel =
                cgroup_relative(c).with_context(|| format!("dns.proxy.exemptCgroups: {c:?}"))?;
            if rel.is_empty() {
                bail!(
                    "dns.proxy.exemptCgroups: {c:?} is the root cgroup: it would exempt every process"
                );
            }
        }
        if self.timeout.is_zero() {
            bail!("dns.proxy.timeout: must be more than 0");
        }
        Ok(())
    }
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            stale_grace: Duration::from_secs(120),
            concurrency: 32,
            mode: DnsMode::Proxy,
            proxy: DnsProxy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// ServiceEntry files larger than this are rejected.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: crate::serviceentry::source::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Allow {
    pub loopback: bool,
    /// DNS servers the workloads use: allowed on 53/udp and 53/tcp.
    pub dns_servers: DnsServers,
    pub cidrs: Vec<String>,
    /// Raw, packet and XDP sockets may be created in enforced cgroups. Their traffic is not
    /// checked: this gives up enforcement for whatever holds `CAP_NET_RAW` there.
    pub raw_sockets: bool,
    /// Ping sockets (`SOCK_DGRAM`, ICMP) may be created; echo requests then go only to
    /// destinations with an ICMP rule, which every registered address gets.
    pub ping: bool,
}

/// Capacity of the kernel maps. Fixed when the maps are first created and pinned: a daemon
/// restarted with other sizes refuses to reuse maps of the wrong size rather than truncate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MapSizes {
    pub exact_rules: u32,
    pub prefix_rules: u32,
    /// Bytes; a power of two, at least one page.
    pub event_buffer: u32,
    /// Addresses learned from DNS answers (DNS-aware mode), per port and protocol.
    pub learned_rules: u32,
    /// Sockets redirected to the DNS proxy that the kernel remembers (least recently used
    /// go first).
    pub dns_sockets: u32,
    /// Sockets made in enforced cgroups that the kernel remembers as such (least recently
    /// used go first; one forgotten is checked twice, by the same rules).
    pub native_sockets: u32,
    /// Distinct visibility sets (which policies may use a rule): scoping only.
    pub visibility_sets: u32,
    /// cgroups mapped to a policy (pods, their containers, host units): scoping only.
    pub cgroup_policies: u32,
}

/// Learn mode's observations (docs/architecture.md, "Learn mode").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Learn {
    /// Record what enforced workloads reached (audit mode) or were refused (enforce mode).
    pub enabled: bool,
    /// Where observations are kept across restarts.
    pub store: PathBuf,
    /// Observations kept at most (the least recently seen go first).
    pub max_observations: usize,
    /// Observations one workload (cgroup) may hold: past it, its own oldest go first.
    pub max_per_workload: usize,
    /// The store's size at most, in memory and on disk.
    pub max_store_bytes: usize,
    /// How often new observations are written to the store (and at shutdown).
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub save_every: Duration,
}

pub const DEFAULT_OBSERVATIONS: &str = "/var/lib/egress-enforcer/observations.json";

impl Default for Learn {
    fn default() -> Self {
        Self {
            enabled: true,
            store: PathBuf::from(DEFAULT_OBSERVATIONS),
            max_observations: 10_000,
            max_per_workload: 2_500,
            max_store_bytes: 4 << 20,
            save_every: Duration::from_secs(10),
        }
    }
}

impl Learn {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=1_000_000).contains(&self.max_observations) {
            bail!("learn.maxObservations: must be 1 to 1000000");
        }
        if !(1..=self.max_observations).contains(&self.max_per_workload) {
            bail!("learn.maxPerWorkload: must be 1 to learn.maxObservations");
        }
        if !((64 << 10)..=(1 << 30)).contains(&self.max_store_bytes) {
            bail!("learn.maxStoreBytes: must be 65536 to 1073741824");
        }
        if self.save_every < Duration::from_secs(1) {
            bail!("learn.saveEvery: must be at least 1s");
        }
        if self.enabled && self.store.as_os_str().is_empty() {
            bail!("learn.store: a file is needed (or learn.enabled: false)");
        }
        Ok(())
    }

    pub fn limits(&self) -> crate::learn::store::Limits {
        crate::learn::store::Limits {
            max_observations: self.max_observations,
            max_bytes: self.max_store_bytes,
            max_per_workload: self.max_per_workload,
        }
    }
}

/// The health and metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Http {
    /// `IP:PORT` to serve `/healthz`, `/readyz` and `/metrics` on; empty = no endpoint.
    pub listen: String,
}

/// Loopback only by default: the metrics name destinations and rule counts, which are not for
/// every neighbour on the network.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9477";

impl Default for Http {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.to_owned(),
        }
    }
}

impl Http {
    /// The address to listen on, `None` when the endpoint is switched off.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            service_entries: vec![PathBuf::from(DEFAULT_SERVICEENTRIES)],
            cgroups: vec!["egress-enforcer".to_owned()],
            bpffs: PathBuf::from("/sys/fs/bpf"),
            allow: Allow::default(),
            foreign_sockets: ForeignSockets::default(),
            dns: Dns::default(),
            maps: MapSizes::default(),
            limits: Limits::default(),
            log: Log::default(),
            http: Http::default(),
            kubernetes: Kubernetes::default(),
            policies: Policies::default(),
            learn: Learn::default(),
        }
    }
}

impl Default for Allow {
    fn default() -> Self {
        Self {
            loopback: true,
            dns_servers: DnsServers::Keyword("auto".to_owned()),
            cidrs: Vec::new(),
            raw_sockets: false,
            ping: false,
        }
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            exact_rules: 65_536,
            prefix_rules: 16_384,
            event_buffer: 256 * 1024,
            learned_rules: 65_536,
            dns_sockets: 65_536,
            native_sockets: 65_536,
            visibility_sets: 4096,
            cgroup_policies: 16_384,
        }
    }
}

impl Config {
    /// Reads `path`; a missing file at the default location means "all defaults", a missing
    /// file that was asked for explicitly is an error.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        // A config is small; anything this large is a mistake (or hostile).
        const MAX_CONFIG_BYTES: u64 = 1 << 20;
        if let Ok(m) = std::fs::metadata(path)
            && m.len() > MAX_CONFIG_BYTES
        {
            bail!(
                "{}: {} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a config file",
                path.display(),
                m.len()
            );
        }
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::builtin()),
            Err(e) => Err(e).with_context(|| format!("reading config {}", path.display())),
        }
    }

    /// The embedded default used when no config file exists: the defaults, with the checkout's
    /// example ServiceEntries when there are none under /etc.
    pub fn builtin() -> Self {
        let mut c = Self::default();
        if !Path::new(DEFAULT_SERVICEENTRIES).exists()
            && Path::new(CHECKOUT_SERVICEENTRIES).is_dir()
        {
            c.service_entries = vec![PathBuf::from(CHECKOUT_SERVICEENTRIES)];
        }
        c
    }

    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        // Hostile nesting or aliasing is rejected in linear time first; the typed decoding
        // below (which names the line of a bad key) then only sees bounded input.
        if let Err(e) = crate::k8syaml::single(text, &crate::k8syaml::Limits::default()) {
            let at = e.line.map(|l| format!(":{l}")).unwrap_or_default();
            bail!("{}{at}: {}", path.display(), e.message);
        }
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                anyhow::anyhow!("{}{at}: {e}", path.display())
            })?
        };
        config
            .validate()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.cgroups.is_empty() {
            bail!("cgroups: at least one cgroup is needed");
        }
        for c in &self.cgroups {
            cgroup_relative(c).with_context(|| format!("cgroups: {c:?}"))?;
        }
        if !self.bpffs.is_absolute() {
            bail!(
                "bpffs: must be an absolute path, got {}",
                self.bpffs.display()
            );
        }
        for cidr in &self.allow.cidrs {
            crate::policy::allow_spec::parse_cidr(cidr)
                .with_context(|| format!("allow.cidrs: {cidr:?}"))?;
        }
        for s in &self.dns.servers {
            parse_dns_server(s).with_context(|| format!("dns.servers: {s:?}"))?;
        }
        match &self.allow.dns_servers {
            DnsServers::Keyword(k) if k == "auto" => {}
            DnsServers::Keyword(k) => {
                bail!("allow.dnsServers: {k:?} is neither `auto` nor a list of IPs")
            }
            DnsServers::List(l) => {
                for ip in l {
                    ip.parse::<IpAddr>().map_err(|_| {
                        anyhow::anyhow!("allow.dnsServers: {ip:?} is not an IP address")
                    })?;
                }
            }
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            bail!(
                "http.listen: {:?} is not IP:PORT (e.g. 127.0.0.1:9477; \"\" switches the endpoint off)",
                self.http.listen
            );
        }
        if self.dns.min_ttl > self.dns.max_ttl {
            bail!("dns: minTtl must not be larger than maxTtl");
        }
        if self.dns.concurrency == 0 {
            bail!("dns.concurrency must be at least 1");
        }
        self.dns.proxy.validate()?;
        let m = &self.maps;
        if m.exact_rules == 0 || m.prefix_rules == 0 || m.learned_rules == 0 {
            bail!("maps: exactRules, prefixRules and learnedRules must be at least 1");
        }
        if m.dns_sockets < 64 {
            bail!("maps.dnsSockets: must be at least 64");
        }
        if m.native_sockets < 64 {
            bail!("maps.nativeSockets: must be at least 64");
        }
        if !(2..=1 << 20).contains(&m.visibility_sets) || m.cgroup_policies == 0 {
            bail!(
                "maps.visibilitySets must be within 2..=1048576 and maps.cgroupPolicies at least 1"
            );
        }
        if !m.event_buffer.is_power_of_two() || m.event_buffer < 4096 {
            bail!("maps.eventBuffer: must be a power of two of at least 4096 bytes");
        }
        if self.kubernetes.pods {
            if !self.kubernetes.api_server {
                bail!(
                    "kubernetes.pods: needs kubernetes.apiServer (pods and Sidecars come from it)"
                );
            }
            if self.kubepods_cgroups().is_empty() {
                bail!(
                    "kubernetes.pods: none of `cgroups` is the kubelet's kubepods cgroup \
                     (kubepods.slice with the systemd driver, kubepods with cgroupfs)"
                );
            }
            if !crate::serviceentry::names::is_dns1123_label(&self.kubernetes.root_namespace) {
                bail!(
                    "kubernetes.rootNamespace: {:?} is not a namespace name",
                    self.kubernetes.root_namespace
                );
            }
        }
        self.learn.validate()?;
        self.policies.validate(&self.cgroups)
    }

    /// Policies per unit or per pod are in use.
    pub fn scoping(&self) -> bool {
        !self.policies.units.is_empty() || self.kubernetes.pods
    }

    /// What a cgroup in no unit and no pod may use: unset, `deny` as soon as units or pods
    /// are scoped (a unit's new cgroup runs on the default until it is mapped), else `all`.
    pub fn default_policy(&self) -> DefaultPolicy {
        self.policies.default.unwrap_or(if self.scoping() {
            DefaultPolicy::Deny
        } else {
            DefaultPolicy::All
        })
    }

    /// The enforced cgroups that are the kubelet's `kubepods`, each with its parent (where
    /// the kubelet's tree starts), relative to the cgroup2 mount.
    pub fn kubepods_cgroups(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .cgroups
            .iter()
            .filter_map(|c| cgroup_relative(c).ok())
            .filter_map(|c| {
                let (root, last) = c.rsplit_once('/').unwrap_or(("", c.as_str()));
                crate::scope::kubelet::is_kubepods(last).then(|| (root.to_owned(), c.clone()))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every path ServiceEntries are read from: `serviceEntries`, then the units' own.
    pub fn all_entry_paths(&self) -> Vec<PathBuf> {
        let mut out = self.service_entries.clone();
        for p in self.policies.units.iter().flat_map(|u| &u.service_entries) {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// The daemon's resolvers from `dns.servers` (validated in `parse`).
    pub fn dns_servers(&self) -> Vec<SocketAddr> {
        self.dns
            .servers
            .iter()
            .filter_map(|s| parse_dns_server(s).ok())
            .collect()
    }

    /// The workloads' DNS servers to allow: the list, or resolv.conf's nameservers.
    pub fn allowed_dns_servers(&self) -> Vec<IpAddr> {
        match &self.allow.dns_servers {
            DnsServers::List(l) => l.iter().filter_map(|s| s.parse().ok()).collect(),
            DnsServers::Keyword(_) => std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| resolv_conf_nameservers(&t))
                .unwrap_or_default(),
        }
    }

    /// `allow.cidrs` as parsed networks (validated in `parse`).
    pub fn allowed_cidrs(&self) -> Vec<crate::policy::allow_spec::Net> {
        self.allow
            .cidrs
            .iter()
            .filter_map(|c| crate::policy::allow_spec::parse_cidr(c).ok())
            .collect()
    }
}

impl Policies {
    /// Units name distinct cgroups below an enforced one, and valid namespaces.
    fn validate(&self, enforced: &[String]) -> anyhow::Result<()> {
        for e in &self.default_export_to {
            if e != "*" && e != "." && e != "~" && !crate::serviceentry::names::is_dns1123_label(e)
            {
                bail!("policies.defaultExportTo: {e:?} is not \"*\", \".\", \"~\" or a namespace");
            }
        }
        if self.default_export_to.len() > 1
            && self.default_export_to.iter().any(|e| e == "*" || e == "~")
        {
            bail!("policies.defaultExportTo: \"*\" and \"~\" stand alone");
        }
        let max = (enforcer_common::MAX_POLICIES - 2) as usize;
        if self.units.len() > max {
            bail!("policies.units: {} units, at most {max}", self.units.len());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, u) in self.units.iter().enumerate() {
            let at = format!("policies.units[{i}]");
            let cg = cgroup_relative(&u.cgroup)
                .with_context(|| format!("{at}.cgroup: {:?}", u.cgroup))?;
            if cg.is_empty() {
                bail!("{at}.cgroup: required (a cgroup below one of `cgroups`)");
            }
            let under = |root: &String| {
                root.is_empty() || cg == *root || cg.starts_with(&format!("{root}/"))
            };
            if !enforced
                .iter()
                .map(|c| cgroup_relative(c).unwrap_or_default())
                .any(|r| under(&r))
            {
                bail!(
                    "{at}.cgroup: {cg:?} is not below any of `cgroups` ({}), so nothing would enforce it",
                    enforced.join(", ")
                );
            }
            if !seen.insert(cg.clone()) {
                bail!("{at}.cgroup: {cg:?} is named by another unit");
            }
            for n in &u.namespaces {
                if !crate::serviceentry::names::is_dns1123_label(n) {
                    bail!("{at}.namespaces: {n:?} is not a namespace name (a DNS-1123 label)");
                }
            }
        }
        Ok(())
    }

    /// The units' cgroups, normalised like `cgroups` (validated in `parse`).
    pub fn unit_cgroups(&self) -> Vec<String> {
        self.units
            .iter()
            .map(|u| cgroup_relative(&u.cgroup).unwrap_or_default())
            .collect()
    }
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`; port 53 when none is given.
pub fn parse_dns_server(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| anyhow::anyhow!("expected IP, IP:PORT or [IPv6]:PORT"))
}

/// `nameserver` lines of resolv.conf(5); zone suffixes (`fe80::1%eth0`) are dropped.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            w.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

/// Normalises a configured cgroup to a path relative to the cgroup2 mount ("" = the root).
/// Rejects `..` so a config cannot point outside the hierarchy, and a filesystem path under
/// `/sys/fs/cgroup`: taken as relative, it would name a new, empty cgroup that the daemon
/// creates and enforces while the workload it was meant for runs unchecked.
pub fn cgroup_relative(dir: &str) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for c in Path::new(dir).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(p.to_str().context("not UTF-8")?.to_owned()),
            Component::ParentDir | Component::Prefix(_) => bail!("must not contain '..'"),
        }
    }
    if parts.starts_with(&CGROUP_FS.map(str::to_owned)) {
        bail!("{}", filesystem_path_error("/sys/fs/cgroup"));
    }
    Ok(parts.join("/"))
}

/// Why a cgroup written as a path under `mount` is refused, and what to write instead.
pub fn filesystem_path_error(mount: &str) -> String {
    format!(
        "is a filesystem path: cgroups are written relative to the cgroup2 mount, and this \
         would name a cgroup `{mount}/…` below it, which no process is in; write the part \
         after the mount point (for /sys/fs/cgroup/system.slice, `system.slice`; with cgroup2 \
         at /sys/fs/cgroup/unified, the part after that: `grep ^0:: /proc/PID/cgroup` shows a \
         process's)"
    )
}

/// Where every distribution mounts its cgroup filesystems.
const CGROUP_FS: [&str; 3] = ["sys", "fs", "cgroup"];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("c.yaml"))
    }

    #[test]
    fn hostile_nesting_is_rejected_naming_the_file() {
        let deep = format!("mode: {}", "[".repeat(1 << 20));
        let e = parse(&deep).unwrap_err().to_string();
        assert!(
            e.starts_with("c.yaml:1: ") && e.contains("recursion limit"),
            "{e}"
        );
        let block = format!("allow:\n  cidrs:\n  {}", "- ".repeat(1 << 16));
        let e = parse(&block).unwrap_err().to_string();
        assert!(e.contains("deeper than"), "{e}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_are_camel_case() {
        let c = parse(
            "mode: audit\ncgroups: [a/b, c]\nbpffs: /x\nallow: {loopback: false, cidrs: [10.0.0.0/8]}\nmaps: {exactRules: 10}\nlog: {format: json}\n",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Audit);
        assert_eq!(c.cgroups, ["a/b", "c"]);
        assert!(!c.allow.loopback);
        assert_eq!(c.maps.exact_rules, 10);
        assert_eq!(c.maps.prefix_rules, MapSizes::default().prefix_rules);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn http_listen_defaults_to_loopback_and_can_be_switched_off() {
        let c = parse("").unwrap();
        assert_eq!(
            c.http.listen_addr(),
            Some(DEFAULT_HTTP_LISTEN.parse().unwrap())
        );
        assert_eq!(
            parse("http: {listen: '[::1]:9000'}")
                .unwrap()
                .http
                .listen_addr(),
            Some("[::1]:9000".parse().unwrap())
        );
        assert_eq!(
            parse("http: {listen: ''}").unwrap().http.listen_addr(),
            None
        );
        let err = format!("{:#}", parse("http: {listen: localhost}").unwrap_err());
        assert!(err.contains("http.listen"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err = parse("mode: enforce\nmod: audit\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:2:"), "{err}");
        assert!(err.contains("mod"), "{err}");
    }

    #[test]
    fn dns_settings() {
        let c = parse("dns: {servers: [192.0.2.53, '127.0.0.1:5353', '[::1]:53'], minTtl: 1s, maxTtl: 2m, staleGrace: 500ms}\nallow: {dnsServers: [192.0.2.53]}").unwrap();
        assert_eq!(c.dns_servers().len(), 3);
        assert_eq!(c.dns_servers()[0].port(), 53);
        assert_eq!(c.dns.max_ttl, Duration::from_secs(120));
        assert_eq!(c.dns.stale_grace, Duration::from_millis(500));
        assert_eq!(
            c.allowed_dns_servers(),
            ["192.0.2.53".parse::<IpAddr>().unwrap()]
        );
        assert!(parse("dns: {minTtl: 5}").is_err());
        assert!(parse("dns: {minTtl: 10m, maxTtl: 1m}").is_err());
        assert!(parse("dns: {servers: [nameserver.example]}").is_err());
        assert!(parse("allow: {dnsServers: manual}").is_err());
        assert!(parse("allow: {dnsServers: [not-an-ip]}").is_err());
    }

    #[test]
    fn dns_proxy_settings() {
        let c = parse(
            "dns: {mode: proxy, proxy: {address: 169.254.20.53, address6: '', port: 5353, upstreams: [198.18.0.53, '[fd00::53]:5353'], passthrough: [cluster.local, Svc.Example.], unregistered: refused, exemptCgroups: [kubepods/coredns], timeout: 1s}}",
        )
        .unwrap();
        assert_eq!(c.dns.mode, DnsMode::Proxy);
        let p = &c.dns.proxy;
        assert_eq!(p.address4(), std::net::Ipv4Addr::new(169, 254, 20, 53));
        assert_eq!(p.address6(), None);
        assert_eq!(p.upstream_addrs()[0].port(), 53);
        assert_eq!(p.unregistered, Unregistered::Refused);
        for bad in [
            "dns: {mode: proxied}",
            "dns: {proxy: {address: '::1'}}",
            "dns: {proxy: {address: 0.0.0.0}}",
            "dns: {proxy: {address6: 127.0.0.1}}",
            "dns: {proxy: {address6: '::ffff:127.0.0.1'}}",
            "dns: {proxy: {port: 0}}",
            "dns: {proxy: {upstreams: [resolver.example]}}",
            "dns: {proxy: {passthrough: ['*.cluster.local']}}",
            "dns: {proxy: {exemptCgroups: [../x]}}",
            "dns: {proxy: {exemptCgroups: [/]}}",
            "dns: {proxy: {timeout: 0s}}",
            "dns: {proxy: {unregistered: drop}}",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(format!("{e:#}").contains("dns"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn resolv_conf() {
        let ips = resolv_conf_nameservers(
            "# x\nsearch a.b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:5\nnameserver bogus\n",
        );
        assert_eq!(
            ips,
            [
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("mode: permissive").is_err());
        assert!(parse("cgroups: []").is_err());
        assert!(parse("cgroups: [../escape]").is_err());
        assert!(parse("bpffs: relative").is_err());
        assert!(parse("allow: {cidrs: [10.0.0.0/33]}").is_err());
        assert!(parse("maps: {eventBuffer: 5000}").is_err());
    }

    #[test]
    fn policies_are_checked_against_the_enforced_cgroups() {
        let base = "cgroups: [system.slice]\ndns: {mode: resolve}\n";
        let ok = parse(&format!(
            "{base}policies:\n  units:\n  - {{cgroup: /system.slice/a.service, namespaces: [web]}}\n  - {{cgroup: system.slice/b.service, serviceEntries: [/etc/b]}}\n"
        ))
        .unwrap();
        assert_eq!(
            ok.policies.unit_cgroups(),
            ["system.slice/a.service", "system.slice/b.service"]
        );
        assert_eq!(
            ok.default_policy(),
            DefaultPolicy::Deny,
            "a restarted unit's new cgroup must not get everything until it is mapped"
        );
        assert!(ok.all_entry_paths().contains(&PathBuf::from("/etc/b")));
        for (bad, want) in [
            (
                "  - {cgroup: user.slice/x.service}\n",
                "not below any of `cgroups`",
            ),
            (
                "  - {cgroup: system.slice/a}\n  - {cgroup: system.slice/a/}\n",
                "named by another unit",
            ),
            (
                "  - {cgroup: system.slice/a, namespaces: [Web_1]}\n",
                "not a namespace name",
            ),
            ("  - {cgroup: ''}\n", "required"),
        ] {
            let e = format!(
                "{:#}",
                parse(&format!("{base}policies:\n  units:\n{bad}")).unwrap_err()
            );
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(
            parse("cgroups: [system.slice]\npolicies: {units: [{cgroup: system.slice/a}]}\n")
                .is_ok(),
            "DNS-aware mode (the default) scopes learned rules too"
        );
        let e = format!(
            "{:#}",
            parse("cgroups: [kubepods.slice]\ndns: {mode: resolve}\nkubernetes: {pods: true}\n")
                .unwrap_err()
        );
        assert!(e.contains("needs kubernetes.apiServer"), "{e}");
        let e = format!("{:#}", parse("cgroups: [system.slice]\ndns: {mode: resolve}\nkubernetes: {apiServer: true, pods: true}\n").unwrap_err());
        assert!(e.contains("kubepods"), "{e}");
        let k = parse("cgroups: [kind/kubelet.slice/kubelet-kubepods.slice, kubepods]\ndns: {mode: resolve}\nkubernetes: {apiServer: true, pods: true}\n").unwrap();
        assert_eq!(
            k.default_policy(),
            DefaultPolicy::Deny,
            "fail closed for pods"
        );
        assert_eq!(
            k.kubepods_cgroups(),
            [
                (String::new(), "kubepods".to_owned()),
                (
                    "kind/kubelet.slice".to_owned(),
                    "kind/kubelet.slice/kubelet-kubepods.slice".to_owned()
                )
            ]
        );
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let text = include_str!("../../config/config.yaml");
        assert_eq!(parse(text).unwrap(), Config::default());
        let builtin = Config::builtin();
        assert!(
            builtin
                .service_entries
                .iter()
                .all(|p| p.is_dir() || p == Path::new(DEFAULT_SERVICEENTRIES))
        );
    }

    #[test]
    fn missing_default_file_is_defaults_but_explicit_missing_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/ee.yaml"))).is_err());
    }
}
