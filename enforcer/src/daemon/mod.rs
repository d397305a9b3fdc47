//! The long-running daemon: loads the policy (config + ServiceEntries), keeps DNS answers
//! fresh, and keeps the kernel maps equal to the result, through reloads and restarts.
//! Enforcement stays pinned when it exits (fail closed).

mod carry;
mod cgroup_names;
mod cluster;
mod dns_proxy;
mod events;
mod heap;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod policy;
mod reload;
mod scoping;
mod sd_listen;
mod sd_notify;
mod watch;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, RwLock, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::task::block_in_place;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch as tokio_watch},
};
use tracing::{error, info, warn};

use self::{events::EventIndex, policy::LoadedPolicy};
use crate::{
    config::{Config, DnsMode, ForeignSockets, Mode},
    dataplane::{
        Dataplane,
        cgroup::{self, Cgroup},
    },
    exit::{Failure, OrFailure as _},
    logging,
    policy::allow_spec::AllowSpec,
    resolve::{
        self, Family, HickoryLookup, Lookup, Resolved,
        state::{Answer, Timing},
    },
    scope::table::{PolicyTable, Subject},
    serviceentry::cache::FileCache,
};

pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub allow: Vec<AllowSpec>,
    pub once: bool,
    /// `--listen`: overrides `http.listen` ("" = no endpoint).
    pub listen: Option<String>,
    /// `--kubeconfig`: watch the API server with this file (`kubernetes.*`).
    pub kubeconfig: Option<PathBuf>,
}

impl RunOptions {
    /// The inputs of a policy load, with what the API server holds (if watched).
    fn inputs<'a>(
        &'a self,
        cluster: Option<&'a cluster::Cluster>,
        policies: Option<&'a crate::scope::table::PolicyTable>,
    ) -> policy::Inputs<'a> {
        policy::Inputs {
            config: self.config.as_deref(),
            allow: &self.allow,
            kubeconfig: self.kubeconfig.as_deref(),
            cluster: cluster.map_or(&[][..], |c| c.current.entries.as_slice()),
            api_server: cluster
                .filter(|c| c.self_enforced)
                .map_or(&[][..], |c| c.addresses.as_slice()),
            policies,
            sidecars: cluster.map_or(&[][..], |c| c.current.sidecars.as_slice()),
            sidecars_known: cluster
                .is_some_and(|c| c.current.sidecars_synced || c.current.sidecars_recorded),
            pods: cluster.map_or(&[][..], |c| c.current.pods.as_slice()),
        }
    }
}

/// Counts DNS lookups and failures for `/metrics` around the real resolver.
struct CountingLookup<L> {
    inner: L,
    metrics: Arc<metrics::DaemonMetrics>,
}

impl<L: Lookup> Lookup for CountingLookup<L> {
    fn lookup(
        &self,
        name: String,
        family: Family,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Answer> + Send>> {
        let metrics = Arc::clone(&self.metrics);
        let answer = self.inner.lookup(name, family);
        Box::pin(async move {
            let a = answer.await;
            metrics.dns_lookups.fetch_add(1, Ordering::Relaxed);
            if matches!(a, Answer::Failed(_)) {
                metrics.dns_failures.fetch_add(1, Ordering::Relaxed);
            }
            a
        })
    }
}

/// Quiet time after a file change before reloading: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// The kernel's config entry for `cfg` (the dataplane adds the ABI version and skip bits).
fn kernel_config(cfg: &Config, table: &PolicyTable) -> enforcer_common::Config {
    let proxy = &cfg.dns.proxy;
    let words = |o: [u8; 16]| {
        [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
    };
    enforcer_common::Config {
        abi_version: 0,
        skip: 0,
        mode: match cfg.mode {
            Mode::Enforce => enforcer_common::MODE_ENFORCE,
            Mode::Audit => enforcer_common::MODE_AUDIT,
        },
        allow_loopback: u32::from(cfg.allow.loopback),
        dns: if cfg.dns.mode == DnsMode::Proxy {
            let mut dns = enforcer_common::DNS_REDIRECT;
            if !proxy.exempt_cgroups.is_empty() {
                dns |= enforcer_common::DNS_HAS_EXEMPT;
            }
            if proxy.address4().is_loopback() {
                dns |= enforcer_common::DNS_LOCAL_PROXY4;
            }
            if proxy.address6().is_some_and(|a| a.is_loopback()) {
                dns |= enforcer_common::DNS_LOCAL_PROXY6;
            }
            dns
        } else {
            0
        },
        proxy_port: proxy.port,
        pad: 0,
        proxy4: u32::from_ne_bytes(proxy.address4().octets()),
        proxy6: proxy.address6().map_or([0; 4], |a| words(a.octets())),
        sockets: if cfg.allow.raw_sockets {
            enforcer_common::SOCKETS_ALLOW_RAW
        } else {
            0
        } | if cfg.allow.ping {
            enforcer_common::SOCKETS_ALLOW_PING
        } else {
            0
        } | if cfg.foreign_sockets == ForeignSockets::Enforce {
            enforcer_common::SOCKETS_FOREIGN
        } else {
            0
        },
        netns_cookie: crate::dnsproxy::server::own_netns_cookie(),
        // A cgroup in no unit: the default's policy, or none (only rules for everyone).
        default_policy: table
            .id(&Subject::Default)
            .unwrap_or(enforcer_common::POLICY_UNMAPPED),
        table_mask: 0,
    }
}

/// Which ways out are closed; a warning when one that should be is not.
fn log_protections(dp: &Dataplane, cfg: &Config) {
    let p = crate::dataplane::protections::describe(
        kernel_config(cfg, &PolicyTable::default()).sockets,
        dp.lsm.as_ref().map(|_| ()).map_err(String::as_str),
    );
    info!(
        raw_sockets = %p.raw_sockets,
        packet_sockets = %p.packet_sockets,
        ping = %p.ping,
        other_protocols = %p.other_protocols,
        outside_sockets = %p.outside_sockets,
        "protections"
    );
    if p.outside_sockets.starts_with("NOT") {
        warn!(
            "sockets made outside the enforced cgroups are not checked (foreignSockets: off): a \
             process can take an unchecked socket in with it (docs/threat-model.md)"
        );
    }
    if p.packet_sockets.starts_with("NOT") {
        warn!(
            "packet sockets are not refused in enforced cgroups: a workload holding CAP_NET_RAW \
             can send any frame (docs/threat-model.md)"
        );
    }
}

fn resolve_cgroups(cfg: &Config) -> anyhow::Result<(PathBuf, Vec<Cgroup>)> {
    let mount = cgroup::cgroup2_mount()?;
    let cgroups = cfg
        .cgroups
        .iter()
        .map(|c| Cgroup::resolve(&mount, c))
        .collect::<anyhow::Result<_>>()?;
    Ok((mount, cgroups))
}

fn timing(cfg: &Config) -> Timing {
    Timing {
        min_ttl: cfg.dns.min_ttl,
        max_ttl: cfg.dns.max_ttl,
        stale_grace: cfg.dns.stale_grace,
    }
}

/// The names the daemon looks up itself: none in DNS-aware mode, where the workloads' own
/// answers are what is allowed.
fn names(p: &LoadedPolicy) -> BTreeSet<String> {
    if dns_proxy::enabled(&p.config) {
        return BTreeSet::new();
    }
    p.compiled.hostnames.keys().cloned().collect()
}

/// The previous run's answers for names still configured, to keep in force until answered
/// (or `dns.staleGrace` has passed).
fn carried_answers(policy: &LoadedPolicy, dp: &Dataplane) -> carry::Seeds {
    let live = dp.rules_in_force();
    let record = match carry::read(&dp.layout().root) {
        Ok(r) => r,
        Err(e) => {
            warn!("the record of the previous run's DNS answers is unreadable: {e}");
            None
        }
    };
    if record.is_none() && live.is_some_and(|l| !l.is_empty()) {
        info!(
            "no record of the previous run's DNS answers: live DNS-derived rules on a name's ports are kept for dns.staleGrace"
        );
    }
    carry::carried(
        &policy.compiled,
        record.as_ref(),
        live,
        std::time::SystemTime::now(),
        policy.config.dns.stale_grace,
    )
}

/// A failed apply: the config asks for more than the maps hold (exit 1), or the kernel
/// refused (exit 2).
fn apply_failure(e: anyhow::Error) -> Failure {
    if e.downcast_ref::<crate::dataplane::maps::CapacityError>()
        .is_some()
    {
        Failure::User(e)
    } else {
        Failure::Runtime(e)
    }
}

/// When to try a full apply again after one failed: exponential backoff from 0.5 s to 30 s.
/// Not armed (`at` is `None`) until a failure, so waiting on it never spins.
struct Retry {
    at: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            at: None,
            backoff: Duration::from_millis(500),
        }
    }
}

impl Retry {
    fn due(&self) -> bool {
        self.at.is_none_or(|t| tokio::time::Instant::now() >= t)
    }

    /// Schedules the next try; returns the wait.
    fn failed(&mut self) -> Duration {
        let wait = self.backoff;
        self.at = Some(tokio::time::Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        wait
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// Wakes the loop when a scheduled try comes due; once it has, other events wake it.
    async fn wait(&self) {
        match self.at {
            Some(t) if t > tokio::time::Instant::now() => tokio::time::sleep_until(t).await,
            _ => std::future::pending().await,
        }
    }
}

pub fn run(opts: RunOptions) -> Result<(), Failure> {
    // The config alone first: its log format, and the maps the programs are loaded with.
    // Errors in it are reported on stderr like every other user error.
    let cfg = crate::config::Config::load(opts.config.as_deref())
        .map_err(|e| Failure::User(policy::LoadError(vec![format!("{e:#}")]).into()))?;
    logging::init(cfg.log.format);
    // Before any thread exists: this unsets the activation variables.
    let inherited = sd_listen::take();
    // Two workers: parsing, map writes and cgroup walks run in `block_in_place` or on the
    // blocking pool, and the other worker keeps serving events, DNS and /healthz meanwhile.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .runtime()?;
    rt.block_on(Daemon::serve(opts, cfg, inherited))
}

/// The first policy load and the programs' load, side by side: the verifier and the maps'
/// allocation take the kernel about as long as a large policy takes to parse
/// (docs/architecture.md, "Start"). A bad policy still stops the start as a user error, and
/// a pin directory this start created goes again ([`Dataplane`]'s drop).
fn first_load(
    opts: &RunOptions,
    cfg: &crate::config::Config,
) -> Result<(LoadedPolicy, FileCache, Dataplane), Failure> {
    let t0 = std::time::Instant::now();
    let mut files = FileCache::default();
    let load_dp = |c: &crate::config::Config| {
        Dataplane::load(&c.bpffs, &c.maps, logging::kernel_debug_enabled())
    };
    let (policy, dp) = std::thread::scope(|s| {
        let dp = s.spawn(|| load_dp(cfg));
        let policy = policy::load_cached(&opts.inputs(None, None), &mut files);
        let dp = dp
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("loading the programs panicked")));
        (policy, dp)
    });
    let first = policy.map_err(|e| Failure::User(e.into()))?;
    tracing::debug!(
        ms = t0.elapsed().as_millis(),
        "start: policy and programs loaded"
    );
    let mut dp = dp.runtime()?;
    // The config file changed in the meantime: the programs go with the policy's config.
    if (&first.config.bpffs, &first.config.maps) != (&cfg.bpffs, &cfg.maps) {
        drop(dp);
        dp = load_dp(&first.config).runtime()?;
    }
    Ok((first, files, dp))
}

struct Daemon {
    opts: RunOptions,
    current: LoadedPolicy,
    dp: Dataplane,
    resolved: Resolved,
    index: Arc<RwLock<EventIndex>>,
    names_tx: tokio_watch::Sender<BTreeSet<String>>,
    metrics: Arc<metrics::DaemonMetrics>,
    /// The kernel holds the full policy (the first full apply, or a re-apply after a failed
    /// rollback, succeeded).
    ready: bool,
    retry: Retry,
    /// DNS-aware mode's proxy.
    proxy: Option<Arc<crate::dnsproxy::server::Proxy>>,
    /// The API server source, when `kubernetes.apiServer` is on.
    cluster: Option<cluster::Cluster>,
    scoping: scoping::Scoping,
    /// Reports unit and pod cgroups appearing and going (scoping only).
    cgroup_watch: Option<scoping::watch::CgroupWatch>,
    cgroups_tx: mpsc::Sender<()>,
    /// The ServiceEntry files as last read: a reload parses only those that changed.
    files: FileCache,
}

impl Daemon {
    async fn serve(
        opts: RunOptions,
        cfg: crate::config::Config,
        inherited: Vec<sd_listen::Inherited>,
    ) -> Result<(), Failure> {
        // Handlers first: a SIGHUP (e.g. systemd's reload) during start-up must not kill us.
        let mut term = signal(SignalKind::terminate()).runtime()?;
        let mut int = signal(SignalKind::interrupt()).runtime()?;
        let mut hup = signal(SignalKind::hangup()).runtime()?;
        let listen = match &opts.listen {
            Some(l) if l.is_empty() => None,
            Some(l) => Some(
                l.parse::<std::net::SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("--listen: {l:?} is not IP:PORT: {e}"))
                    .user()?,
            ),
            None => cfg.http.listen_addr(),
        };
        // Bound first, so that a taken port is reported before anything changes.
        let listener = match listen {
            Some(addr) => Some(http::bind(addr).await.user()?),
            None => None,
        };
        let (mut first, mut files, mut dp) = block_in_place(|| first_load(&opts, &cfg))?;
        for r in &first.remarks {
            warn!("{r}");
        }
        let proxy_sockets = if dns_proxy::enabled(&first.config) {
            Some(dns_proxy::bind(&first.config, inherited).user()?)
        } else {
            None
        };
        // The previous run's objects from the API server are compiled in at once: a restart
        // loses no rule while the API server is away.
        let cluster = if first.config.kubernetes.api_server {
            let pins = crate::dataplane::pins::PinLayout::new(&first.config.bpffs);
            let c = cluster::Cluster::start(&first.config, &pins.root)
                .await
                .user()?;
            first = policy::load_cached(&opts.inputs(Some(&c), None), &mut files)
                .map_err(|e| Failure::User(e.into()))?;
            info!(server = %c.server, recorded = c.current.entries.len(), "watching ServiceEntries in the API server");
            Some(c)
        } else {
            None
        };
        // Policy ids as the previous run left them: every subject keeps its id.
        let recorded =
            scoping::recorded(&crate::dataplane::pins::PinLayout::new(&first.config.bpffs).root);
        if !recorded.is_empty() {
            first =
                policy::load_cached(&opts.inputs(cluster.as_ref(), Some(&recorded)), &mut files)
                    .map_err(|e| Failure::User(e.into()))?;
        }
        let (mount, cgroups) = resolve_cgroups(&first.config).runtime()?;
        let t0 = std::time::Instant::now();
        // Static rules go in at once and never wait for DNS, together with what the previous
        // run allowed for names still configured; everything else goes now (docs/architecture.md,
        // "Restart and migration").
        let seeds = carried_answers(&first, &dp);
        dp.forget_previous();
        let mut desired = first.compiled.desired_rules_listed(|h| {
            seeds
                .get(h)
                .map(|v| v.iter().map(|(a, _)| *a).collect())
                .unwrap_or_default()
        });
        desired.scoping = first.config.scoping();
        let mut scope = scoping::Scoping::start(&dp.maps, &first.config, &mount, &dp.layout().root)
            .runtime()?;
        let started = std::time::Instant::now();
        tracing::debug!(ms = t0.elapsed().as_millis(), "start: desired rules");
        let staged = scope
            .stage(&mut dp.maps, &mut desired)
            .map_err(apply_failure)?;
        let applied = dp.maps.apply(&mut desired).map_err(apply_failure)?;
        let (exact_rules, prefix_rules) = (applied.exact, applied.prefix);
        scope
            .finish(&mut dp.maps, staged, &placement(&first))
            .map_err(apply_failure)?;
        let apply_ms = started.elapsed().as_secs_f64() * 1000.0;
        dp.maps
            .write_config(kernel_config(&first.config, &first.table))
            .runtime()?;
        let extras = crate::dataplane::Extras {
            dns_aware: proxy_sockets.is_some(),
        };
        dp.set_extras(extras);
        dp.set_foreign(
            (first.config.foreign_sockets == ForeignSockets::Enforce).then(|| mount.clone()),
        );
        tracing::debug!(ms = t0.elapsed().as_millis(), "start: rules written");
        dp.attach(&cgroups).runtime()?;
        tracing::debug!(ms = t0.elapsed().as_millis(), "start: attached");
        let metrics = Arc::new(metrics::DaemonMetrics::default());
        if let Some(c) = &cluster {
            let _ = metrics.cluster.set(Arc::clone(&c.status));
            tokio::spawn(cluster::publish_status(
                Arc::clone(&c.status),
                dp.layout().root.clone(),
            ));
        }
        let observer = first
            .config
            .learn
            .enabled
            .then(|| observe::Observer::open(&first.config.learn));
        if let Some(o) = &observer {
            let _ = metrics.observe.set(Arc::clone(o));
            tokio::spawn(observe::keep_saved(
                Arc::clone(o),
                first.config.learn.save_every,
            ));
        }
        let proxy = match proxy_sockets {
            Some(s) => {
                let names = observer.as_ref().map(|o| o.names());
                Some(dns_proxy::start(&first, s, dp.layout(), &metrics, names).runtime()?)
            }
            None => None,
        };
        if let Err(e) = crate::dataplane::sources::write(&dp.layout().root, &desired.sources) {
            warn!("cannot record rule sources for `inspect`: {e:#}");
        }
        info!(
            mode = ?first.config.mode,
            entries = first.entries,
            static_rules = exact_rules + prefix_rules,
            hostnames = first.compiled.hostnames.len(),
            carried = seeds.values().map(Vec::len).sum::<usize>(),
            added = applied.added,
            removed = applied.removed,
            apply_ms = format!("{apply_ms:.1}"),
            cgroups = ?cgroups.iter().map(Cgroup::display).collect::<Vec<_>>(),
            pins = %dp.layout().root.display(),
            "enforcing"
        );
        log_protections(&dp, &first.config);
        for cg in cgroups.iter().filter(|c| c.populated() == Some(false)) {
            info!(
                cgroup = %cg.display(),
                "no process is in this enforced cgroup yet: if the workload is already running, \
                 it runs elsewhere (its cgroup: `grep ^0:: /proc/PID/cgroup`)"
            );
        }

        metrics.applied(exact_rules, prefix_rules, std::time::Instant::now());
        drop(desired);
        heap::give_back();
        if let Some(listener) = listener {
            info!(listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "serving /healthz, /readyz and /metrics");
            let state = Arc::new(http::State::new(
                dp.layout().clone(),
                Arc::clone(&metrics),
                http::Expected {
                    extras,
                    foreign: first.config.foreign_sockets == ForeignSockets::Enforce,
                },
            ));
            tokio::spawn(http::watch_health(Arc::clone(&state)));
            tokio::spawn(http::serve(listener, state));
        }
        let lookup = CountingLookup {
            inner: HickoryLookup::new(&first.config.dns_servers(), first.config.dns.min_ttl)
                .runtime()?,
            metrics: Arc::clone(&metrics),
        };
        let (names_tx, names_rx) = tokio_watch::channel(names(&first));
        let mut resolved_rx = resolve::spawn(
            Arc::new(lookup),
            timing(&first.config),
            first.config.dns.concurrency,
            names_rx,
            resolve::Start {
                seeds,
                panics: Arc::clone(&metrics.dns_panics),
            },
        );

        let index = Arc::new(RwLock::new(EventIndex::default()));
        if let Some(rb) = dp.take_events() {
            let (idx, roots) = (Arc::clone(&index), cgroups.clone());
            let observer = observer.clone();
            tokio::spawn(async move {
                if let Err(e) = events::consume(rb, mount, roots, idx, observer).await {
                    error!("event reader stopped: {e:#}");
                }
            });
        }
        if logging::kernel_debug_enabled() {
            match dp.take_logger() {
                Ok(logger) => {
                    tokio::spawn(async move {
                        if let Err(e) = forward_kernel_log(logger).await {
                            warn!("kernel debug log reader stopped: {e:#}");
                        }
                    });
                }
                Err(e) => warn!("kernel debug log unavailable: {e:#}"),
            }
        }

        let (cgroups_tx, mut cgroups_rx) = mpsc::channel(1);
        let mut d = Self {
            opts,
            current: first,
            dp,
            resolved: resolved_rx.borrow_and_update().clone(),
            index,
            names_tx,
            metrics,
            ready: false,
            retry: Retry::default(),
            proxy,
            cluster,
            scoping: scope,
            cgroup_watch: None,
            cgroups_tx,
            files,
        };
        d.watch_cgroups();
        let mut rescan = tokio::time::interval(UNIT_RESCAN);
        let (fs_tx, mut fs_rx) = mpsc::channel(1);
        let mut watcher = d.watch(fs_tx.clone());
        let mut ever_ready = false;

        loop {
            if d.wants_full_apply() {
                if let Err(e) = block_in_place(|| d.full_apply()) {
                    if d.opts.once {
                        return Err(apply_failure(e));
                    }
                } else {
                    info!(
                        hostnames = d.resolved.addrs.len(),
                        failing = d.resolved.failing.len(),
                        "{}",
                        if ever_ready {
                            "full apply done, ready again"
                        } else {
                            "first full apply done"
                        }
                    );
                    if !ever_ready {
                        sd_notify::notify("READY=1\nSTATUS=enforcing");
                    }
                    ever_ready = true;
                    if d.opts.once {
                        info!("--once: exiting; the policy stays pinned");
                        return Ok(());
                    }
                }
            }
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                () = d.retry.wait(), if !d.ready => {}
                _ = hup.recv() => {
                    info!("SIGHUP: reloading");
                    if block_in_place(|| d.reload()) {
                        watcher = d.watch(fs_tx.clone());
                    }
                }
                Some(()) = fs_rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while fs_rx.try_recv().is_ok() {}
                    if block_in_place(|| d.reload()) {
                        watcher = d.watch(fs_tx.clone());
                    }
                }
                Some(()) = cgroups_rx.recv() => d.remap(),
                _ = rescan.tick(), if d.current.config.scoping() => d.remap(),
                Some(snapshot) = cluster::next(&mut d.cluster) => {
                    if let Some(c) = &mut d.cluster {
                        c.current = snapshot;
                        c.pending = true;
                    }
                    if block_in_place(|| d.reload()) {
                        watcher = d.watch(fs_tx.clone());
                    }
                }
                changed = resolved_rx.changed() => {
                    if changed.is_err() {
                        return Err(Failure::Runtime(anyhow::anyhow!("the DNS resolver stopped")));
                    }
                    d.resolved = resolved_rx.borrow_and_update().clone();
                    for (name, err) in &d.resolved.failing {
                        warn!(name = %name, "DNS lookup failed, keeping the last good answer: {err}");
                    }
                    if d.ready && let Err(e) = block_in_place(|| d.apply()) {
                        d.metrics.apply_failures.fetch_add(1, Ordering::Relaxed);
                        error!("applying DNS changes failed (the rules in force stay): {e:#}");
                    }
                }
            }
        }
        drop(watcher);
        if let Some(o) = &observer {
            block_in_place(|| o.save());
        }
        info!("stopping; enforcement stays pinned (run `egress-enforcer uninstall` to remove it)");
        Ok(())
    }

    /// Not ready, every name has had a lookup, and no retry is pending. `--once` also
    /// waits for the API server's first complete list.
    fn wants_full_apply(&self) -> bool {
        let listed = !self.opts.once || self.cluster.as_ref().is_none_or(|c| c.current.synced);
        !self.ready
            && listed
            && self.resolved.complete
            && self.resolved.addrs.len() == names(&self.current).len()
            && self.retry.due()
    }

    /// The apply that makes the daemon ready. On failure it stays not ready, says why, and
    /// schedules a retry; if the rules do not fit, the ones no longer wanted still go (a
    /// carried address must not outlive its grace because the new set is too large).
    fn full_apply(&mut self) -> anyhow::Result<()> {
        let applied = self.apply_everything();
        heap::give_back();
        let Err(e) = applied else {
            self.ready = true;
            self.retry.succeeded();
            self.metrics.set_ready();
            return Ok(());
        };
        if e.downcast_ref::<crate::dataplane::maps::CapacityError>()
            .is_some()
        {
            let desired = self.desired();
            if let Err(r) = self.dp.maps.remove_unwanted(&desired) {
                warn!("removing rules no longer wanted failed too: {r:#}");
            }
        }
        self.not_ready(&e);
        Err(e)
    }

    /// Rules, mode and loopback switch, and links exactly as the policy in force says: after
    /// a failed rollback any of them may differ.
    fn apply_everything(&mut self) -> anyhow::Result<()> {
        self.apply()?;
        let cfg = &self.current.config;
        self.dp
            .maps
            .write_config(kernel_config(cfg, &self.current.table))?;
        let (_, cgroups) = resolve_cgroups(cfg)?;
        self.dp.detach_except(&cgroups)
    }

    fn not_ready(&mut self, e: &anyhow::Error) {
        self.ready = false;
        let wait = self.retry.failed();
        let reason = format!("applying the policy failed (retrying in {wait:?}): {e:#}");
        error!("{reason}");
        self.metrics.apply_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.set_not_ready(reason);
    }

    fn watch(&self, tx: mpsc::Sender<()>) -> Option<watch::FileWatch> {
        let config_file = self
            .opts
            .config
            .clone()
            .or_else(|| Some(PathBuf::from(crate::config::DEFAULT_PATH)));
        // The paths of the config on disk too: after a reload refused for a bad file in a
        // newly named directory, fixing that file must be noticed.
        let mut paths = self.current.config.service_entries.clone();
        if let Ok(on_disk) = crate::config::Config::load(self.opts.config.as_deref()) {
            for p in on_disk.service_entries {
                if !paths.contains(&p) {
                    paths.push(p);
                }
            }
        }
        match watch::FileWatch::start(config_file.as_deref(), &paths, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!("watching files failed, only SIGHUP reloads: {e:#}");
                None
            }
        }
    }

    /// The rules of the policy in force with the current answers.
    fn desired(&self) -> crate::policy::rules::DesiredRules {
        let resolved = &self.resolved;
        let mut rules = self
            .current
            .compiled
            .desired_rules_listed(|h| resolved.addrs.get(h).cloned().unwrap_or_default());
        rules.scoping = self.current.config.scoping();
        rules
    }

    /// Makes the maps equal to the policy and the current DNS answers (which include what a
    /// previous run allowed for names not answered yet, within the grace).
    fn apply(&mut self) -> anyhow::Result<()> {
        let built = std::time::Instant::now();
        let mut desired = self.desired();
        tracing::debug!(ms = built.elapsed().as_millis(), "desired rules built");
        let started = std::time::Instant::now();
        let staged = self.scoping.stage(&mut self.dp.maps, &mut desired)?;
        let stats = self.dp.maps.apply(&mut desired)?;
        let (exact_rules, prefix_rules) = (stats.exact, stats.prefix);
        self.scoping
            .finish(&mut self.dp.maps, staged, &placement(&self.current))?;
        self.watch_cgroups();
        let resolved = &self.resolved;
        let apply_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.metrics
            .applied(exact_rules, prefix_rules, std::time::Instant::now());
        let root = &self.dp.layout().root;
        if let Err(e) = crate::dataplane::sources::write(root, &desired.sources) {
            warn!("cannot record rule sources for `inspect`: {e:#}");
        }
        if let Err(e) = carry::write(root, resolved) {
            warn!("cannot record the DNS answers for the next start: {e:#}");
        }
        if let Ok(mut idx) = self.index.write() {
            *idx = EventIndex::build(Arc::clone(&self.current.compiled), resolved)
                .with_learned(self.proxy.clone(), &self.current.compiled)
                .with_pods(&self.current.pods, &self.current.kubepods);
        }
        if stats.added + stats.removed > 0 {
            info!(
                rules = exact_rules + prefix_rules,
                added = stats.added,
                removed = stats.removed,
                apply_ms = format!("{apply_ms:.1}"),
                "rules updated"
            );
        }
        Ok(())
    }
}

/// How often unit and pod cgroups are looked at even without an inotify report (a missed
/// event must not leave a new cgroup on the default policy for long).
const UNIT_RESCAN: Duration = Duration::from_secs(10);

/// Where the policy in force puts each policy: units by path, pods under kubepods.
fn placement(p: &LoadedPolicy) -> scoping::Placement<'_> {
    scoping::Placement {
        table: &p.table,
        pods: &p.pods,
        kubepods: &p.kubepods,
    }
}

impl Daemon {
    /// Watches where unit and pod cgroups appear (scoping only).
    fn watch_cgroups(&mut self) {
        let targets = self.scoping.watch_targets();
        if targets.is_empty() && self.cgroup_watch.is_none() {
            return;
        }
        if self.cgroup_watch.is_none() {
            match scoping::watch::CgroupWatch::start(self.cgroups_tx.clone()) {
                Ok(w) => self.cgroup_watch = Some(w),
                Err(e) => {
                    warn!(
                        "watching unit and pod cgroups failed, they are looked at every {UNIT_RESCAN:?}: {e:#}"
                    );
                    return;
                }
            }
        }
        if let Some(w) = &mut self.cgroup_watch {
            w.set_targets(targets);
        }
    }

    /// Maps unit and pod cgroups that appeared, forgets the ones that went.
    ///
    /// A directory that starts being watched may already hold a new cgroup (a slice and its
    /// unit made together): the scan repeats until the watched set stops changing.
    fn remap(&mut self) {
        for _ in 0..4 {
            let before = self.scoping.watch_targets().to_vec();
            match self
                .scoping
                .map_cgroups(&mut self.dp.maps, &placement(&self.current))
            {
                Ok(0) => {}
                Ok(n) => info!(changed = n, "cgroups mapped to their policies"),
                Err(e) => {
                    error!(
                        "mapping cgroups to policies failed (retried at the next change): {e:#}"
                    );
                }
            }
            self.watch_cgroups();
            if self.scoping.watch_targets() == before.as_slice() {
                break;
            }
        }
    }
}

async fn forward_kernel_log(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<()> {
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
    let mut fd = unsafe { tokio::io::unix::AsyncFd::register(logger) }
        .context("cannot poll the kernel log ring buffer")?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
