//! `/metrics`: the daemon's own counters plus the kernel's verdict counters, read at scrape
//! time and written in the Prometheus text format by prometheus-client. Rendering is pure (a
//! snapshot in, text out) so that it is tested without a kernel.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use enforcer_common::{NUM_HOOKS, NUM_PROTO_CLASSES, NUM_VERDICTS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::dataplane::{
    stats::Stats,
    verdicts::{PROTO_CLASS_NAMES, hook_name, possible, verdict_name},
};

/// What the daemon counts as it works; shared between the daemon and the HTTP server.
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// A failed reload whose undo failed too (the kernel may hold a mix: alert on it).
    pub rollback_failures: AtomicU64,
    /// Applies of the policy to the maps that failed (retried).
    pub apply_failures: AtomicU64,
    pub dns_lookups: AtomicU64,
    pub dns_failures: AtomicU64,
    /// Lookup tasks that panicked (counted as failed lookups too).
    pub dns_panics: std::sync::Arc<AtomicU64>,
    rules_exact: AtomicU64,
    rules_prefix: AtomicU64,
    ready: AtomicBool,
    /// Why the daemon is not ready yet, for `/readyz`.
    not_ready: Mutex<Option<String>>,
    /// Why the API server's latest objects are not in force (a reload of them failed).
    behind: Mutex<Option<String>>,
    last_apply: Mutex<Option<Instant>>,
    /// DNS-aware mode's proxy, once it runs.
    pub dns_proxy: std::sync::OnceLock<std::sync::Arc<crate::dnsproxy::server::ProxyMetrics>>,
    /// The API server source, when watched.
    pub cluster: std::sync::OnceLock<std::sync::Arc<crate::cluster::status::Status>>,
    /// Learn mode's observations, when on.
    pub observe: std::sync::OnceLock<std::sync::Arc<super::observe::Observer>>,
}

impl DaemonMetrics {
    /// Records a successful apply of `exact` + `prefix` rules.
    pub fn applied(&self, exact: usize, prefix: usize, at: Instant) {
        self.rules_exact.store(exact as u64, Ordering::Relaxed);
        self.rules_prefix.store(prefix as u64, Ordering::Relaxed);
        if let Ok(mut last) = self.last_apply.lock() {
            *last = Some(at);
        }
    }

    /// The first full apply is done: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = None;
        }
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Not ready (yet), and why: `/readyz` answers 503 with this reason.
    pub fn set_not_ready(&self, reason: String) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = Some(reason);
        }
    }

    /// The API server's latest objects could not be put in force (`Some(why)`), or now are.
    pub fn set_behind(&self, why: Option<String>) {
        if let Ok(mut b) = self.behind.lock() {
            *b = why;
        }
    }

    /// `Ok` once ready and, with the API server watched, listed, in sync with it and with
    /// its latest objects in force; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_ready() {
            if let Some(why) = self.behind.lock().ok().and_then(|b| b.clone()) {
                return Err(format!(
                    "the API server's latest ServiceEntries are not in force (the previous policy stays): {why}"
                ));
            }
            return match self.cluster.get() {
                Some(c) => c.readiness(Instant::now()),
                None => Ok(()),
            };
        }
        Err(self
            .not_ready
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "the first full apply is not done yet".to_owned()))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn snapshot(&self, now: Instant) -> Values {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Values {
            reloads: get(&self.reloads),
            reload_failures: get(&self.reload_failures),
            rollback_failures: get(&self.rollback_failures),
            apply_failures: get(&self.apply_failures),
            dns_lookups: get(&self.dns_lookups),
            dns_failures: get(&self.dns_failures),
            dns_panics: get(&self.dns_panics),
            rules_exact: get(&self.rules_exact),
            rules_prefix: get(&self.rules_prefix),
            ready: self.is_ready(),
            proxy: self.dns_proxy.get().map(|p| ProxyValues {
                verdicts: p.verdicts.each_ref().map(get),
                learned_rules: get(&p.learned_rules),
                commit_failures: get(&p.commit_failures),
                latency: p.latency.clone(),
                commit: p.commit.clone(),
            }),
            observe: self.observe.get().map(|o| {
                let m = &o.metrics;
                [
                    &m.recorded,
                    &m.observations,
                    &m.dropped,
                    &m.load_errors,
                    &m.save_errors,
                ]
                .map(get)
            }),
            apply_age_secs: self
                .last_apply
                .lock()
                .ok()
                .and_then(|l| *l)
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            cluster: self
                .cluster
                .get()
                .map(|c| c.report(now))
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
struct ProxyValues {
    verdicts: [u64; 5],
    learned_rules: u64,
    commit_failures: u64,
    latency: prometheus_client::metrics::histogram::Histogram,
    commit: prometheus_client::metrics::histogram::Histogram,
}

#[derive(Debug, Clone)]
struct Values {
    reloads: u64,
    reload_failures: u64,
    rollback_failures: u64,
    apply_failures: u64,
    dns_lookups: u64,
    dns_failures: u64,
    dns_panics: u64,
    rules_exact: u64,
    rules_prefix: u64,
    ready: bool,
    proxy: Option<ProxyValues>,
    /// Learn mode: recorded, in the store, dropped, load errors, save errors.
    observe: Option<[u64; 5]>,
    apply_age_secs: Option<f64>,
    cluster: Vec<crate::cluster::status::ResourceReport>,
}

/// One scrape's data, encoded by prometheus-client.
#[derive(Debug)]
struct Scrape {
    verdicts: HashMap<(&'static str, &'static str, &'static str), u64>,
    events_dropped: u64,
    values: Values,
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Every hook × protocol × verdict series exists from the start, so rates and alerts
        // work before the first event of a kind.
        {
            let mut family = enc.encode_descriptor(
                "egress_enforcer_verdicts",
                "Connect/sendmsg verdicts by the kernel programs",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for h in 0..NUM_HOOKS {
                for p in 0..NUM_PROTO_CLASSES {
                    for v in 0..NUM_VERDICTS {
                        if !possible(h, p, v as u8) {
                            continue;
                        }
                        let key = (
                            hook_name(h),
                            PROTO_CLASS_NAMES[p as usize],
                            verdict_name(v as u8),
                        );
                        let labels = [("hook", key.0), ("proto", key.1), ("verdict", key.2)];
                        let value = self.verdicts.get(&key).copied().unwrap_or(0);
                        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        counter(
            &mut enc,
            "egress_enforcer_events_dropped",
            "Deny/audit events lost because the ring buffer was full",
            self.events_dropped,
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut family = enc.encode_descriptor(
                "egress_enforcer_rules",
                "Rules in the kernel maps after the last apply, by kind",
                None,
                g.metric_type(),
            )?;
            for (kind, n) in [
                ("exact", self.values.rules_exact),
                ("prefix", self.values.rules_prefix),
            ] {
                ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&[("kind", kind)])?)?;
            }
        }
        counter(
            &mut enc,
            "egress_enforcer_dns_lookups",
            "DNS lookups made (A and AAAA count separately)",
            self.values.dns_lookups,
        )?;
        counter(
            &mut enc,
            "egress_enforcer_dns_lookup_failures",
            "DNS lookups that failed (the last good answer was kept)",
            self.values.dns_failures,
        )?;
        counter(
            &mut enc,
            "egress_enforcer_dns_lookup_panics",
            "DNS lookup tasks that panicked (retried like failed lookups)",
            self.values.dns_panics,
        )?;
        counter(
            &mut enc,
            "egress_enforcer_apply_failures",
            "Applies of the policy to the kernel maps that failed (retried)",
            self.values.apply_failures,
        )?;
        counter(
            &mut enc,
            "egress_enforcer_reload_rollback_failures",
            "Failed reloads whose rollback failed too: the kernel may hold a mix of policies",
            self.values.rollback_failures,
        )?;
        counter(
            &mut enc,
            "egress_enforcer_reloads",
            "Reloads applied (SIGHUP or a changed file)",
            self.values.reloads,
        )?;
        counter(
            &mut enc,
            "egress_enforcer_reload_failures",
            "Reloads rejected; the policy in force was kept",
            self.values.reload_failures,
        )?;
        if let Some(p) = &self.values.proxy {
            encode_proxy(&mut enc, p)?;
        }
        if !self.values.cluster.is_empty() {
            encode_cluster(&mut enc, &self.values.cluster)?;
        }
        if let Some(o) = self.values.observe {
            encode_observe(&mut enc, o)?;
        }
        let ready = ConstGauge::new(i64::from(self.values.ready));
        ready.encode(enc.encode_descriptor(
            "egress_enforcer_ready",
            "1 once the first full apply is done",
            None,
            ready.metric_type(),
        )?)?;
        // Absent until the first apply: a made-up age would be worse than none.
        if let Some(age) = self.values.apply_age_secs {
            let g = ConstGauge::new(age);
            g.encode(enc.encode_descriptor(
                "egress_enforcer_last_apply_age_seconds",
                "Seconds since the rule maps were last brought up to date",
                None,
                g.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// One gauge of a watched resource.
type Gauge = fn(&crate::cluster::status::ResourceReport) -> f64;

/// The API server source's series, one per watched resource.
fn encode_cluster(
    enc: &mut DescriptorEncoder<'_>,
    resources: &[crate::cluster::status::ResourceReport],
) -> Result<(), std::fmt::Error> {
    let gauges: [(&str, &str, Gauge); 4] = [
        (
            "egress_enforcer_kube_synced",
            "1 once the resource has been listed completely from the API server",
            |r| f64::from(u8::from(r.synced)),
        ),
        (
            "egress_enforcer_kube_sync_age_seconds",
            "0 while the watch is healthy; else seconds since the daemon was last in sync with \
             the API server (the last policy stays in force meanwhile)",
            |r| r.sync_age_seconds,
        ),
        (
            "egress_enforcer_kube_objects",
            "Objects of the resource the daemon holds",
            |r| r.objects as f64,
        ),
        (
            "egress_enforcer_kube_rejected_objects",
            "Objects whose newest version failed validation (an older valid one stays in force)",
            |r| r.rejected.len() as f64,
        ),
    ];
    for (name, help, value) in gauges {
        let mut family =
            enc.encode_descriptor(name, help, None, ConstGauge::new(0.0).metric_type())?;
        for r in resources {
            ConstGauge::new(value(r))
                .encode(family.encode_family(&[("resource", r.resource.as_str())])?)?;
        }
    }
    let mut family = enc.encode_descriptor(
        "egress_enforcer_kube_watch_errors",
        "Failed lists, watches and discoveries (each retried with backoff)",
        None,
        ConstCounter::new(0u64).metric_type(),
    )?;
    for r in resources {
        ConstCounter::new(r.errors)
            .encode(family.encode_family(&[("resource", r.resource.as_str())])?)?;
    }
    Ok(())
}

/// DNS-aware mode's series: queries by verdict, latency, learned rules.
fn encode_proxy(enc: &mut DescriptorEncoder<'_>, p: &ProxyValues) -> Result<(), std::fmt::Error> {
    {
        let mut family = enc.encode_descriptor(
            "egress_enforcer_dns_proxy_queries",
            "Queries the DNS proxy answered, by verdict (allowed: registered, answer allowed; \
             refused: unregistered; passthrough; servfail; audit: unregistered, forwarded)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for ((_, name), n) in crate::dnsproxy::server::VERDICTS.iter().zip(p.verdicts) {
            ConstCounter::new(n).encode(family.encode_family(&[("verdict", *name)])?)?;
        }
    }
    p.latency.encode(enc.encode_descriptor(
        "egress_enforcer_dns_proxy_latency_seconds",
        "From a query's arrival at the proxy to its answer (upstream time and commit included)",
        None,
        p.latency.metric_type(),
    )?)?;
    p.commit.encode(enc.encode_descriptor(
        "egress_enforcer_dns_proxy_commit_seconds",
        "From an upstream answer parsed to its addresses allowed in the kernel",
        None,
        p.commit.metric_type(),
    )?)?;
    let g = ConstGauge::new(i64::try_from(p.learned_rules).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(
        "egress_enforcer_dns_learned_rules",
        "Rules learned from DNS answers in the kernel (address, port, protocol)",
        None,
        g.metric_type(),
    )?)?;
    counter(
        enc,
        "egress_enforcer_dns_proxy_commit_failures",
        "Answers that could not be allowed in the kernel (the workload got SERVFAIL)",
        p.commit_failures,
    )
}

fn encode_observe(
    enc: &mut DescriptorEncoder<'_>,
    [recorded, observations, dropped, load_errors, save_errors]: [u64; 5],
) -> Result<(), std::fmt::Error> {
    counter(
        enc,
        "egress_enforcer_observations_recorded",
        "Learn mode: audit and deny events recorded as observations",
        recorded,
    )?;
    let g = ConstGauge::new(i64::try_from(observations).unwrap_or(i64::MAX));
    g.encode(enc.encode_descriptor(
        "egress_enforcer_observations",
        "Learn mode: observations in the store (workload, address, port, protocol)",
        None,
        g.metric_type(),
    )?)?;
    counter(
        enc,
        "egress_enforcer_observations_dropped",
        "Learn mode: observations let go, least recently seen first, to stay within learn.maxObservations and learn.maxStoreBytes",
        dropped,
    )?;
    let c = ConstCounter::new(0u64);
    let mut family = enc.encode_descriptor(
        "egress_enforcer_observation_store_errors",
        "Learn mode: the store could not be read (it was replaced) or written (retried)",
        None,
        c.metric_type(),
    )?;
    for (op, n) in [("load", load_errors), ("save", save_errors)] {
        ConstCounter::new(n).encode(family.encode_family(&[("op", op)])?)?;
    }
    Ok(())
}

/// The `/metrics` body for these kernel counters and daemon counters.
pub fn render(stats: &Stats, daemon: &DaemonMetrics, now: Instant) -> String {
    let scrape = Scrape {
        verdicts: stats
            .counters
            .iter()
            .map(|c| ((c.hook, c.proto, c.verdict), c.count))
            .collect(),
        events_dropped: stats.events_dropped,
        values: daemon.snapshot(now),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _infallible = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dataplane::stats::Counter;

    fn sample(body: &str, series: &str) -> Option<f64> {
        body.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    #[test]
    fn kernel_counters_and_daemon_counters_are_exported() {
        let stats = Stats {
            counters: vec![Counter {
                hook: "connect4",
                proto: "tcp",
                verdict: "deny",
                count: 3,
            }],
            events_dropped: 2,
        };
        let d = DaemonMetrics::default();
        d.reloads.fetch_add(4, Ordering::Relaxed);
        d.reload_failures.fetch_add(1, Ordering::Relaxed);
        d.dns_lookups.fetch_add(10, Ordering::Relaxed);
        d.dns_failures.fetch_add(2, Ordering::Relaxed);
        let t0 = Instant::now();
        d.applied(7, 1, t0);
        d.set_ready();
        let body = render(&stats, &d, t0 + Duration::from_secs(5));
        let v = |s: &str| sample(&body, s);
        assert_eq!(
            v(r#"egress_enforcer_verdicts_total{hook="connect4",proto="tcp",verdict="deny"}"#),
            Some(3.0),
            "{body}"
        );
        // Series that saw nothing are there, at zero.
        assert_eq!(
            v(r#"egress_enforcer_verdicts_total{hook="sendmsg6",proto="udp",verdict="audit"}"#),
            Some(0.0)
        );
        assert_eq!(
            body.lines()
                .filter(|l| l.starts_with("egress_enforcer_verdicts_total{"))
                .count(),
            // connect/sendmsg: tcp, udp, other, icmp x 4 verdicts, and redirects of tcp and
            // udp (not on the root); sock_create: icmp, raw, other x deny, audit; egress: icmp
            // x 4 and source routes (other) x 2; setsockopt: 2.
            4 * 18 + 4 * 16 + 6 + 6 + 2
        );
        assert_eq!(v("egress_enforcer_events_dropped_total"), Some(2.0));
        assert_eq!(v(r#"egress_enforcer_rules{kind="exact"}"#), Some(7.0));
        assert_eq!(v(r#"egress_enforcer_rules{kind="prefix"}"#), Some(1.0));
        assert_eq!(v("egress_enforcer_dns_lookups_total"), Some(10.0));
        assert_eq!(v("egress_enforcer_dns_lookup_failures_total"), Some(2.0));
        assert_eq!(v("egress_enforcer_reloads_total"), Some(4.0));
        assert_eq!(v("egress_enforcer_reload_failures_total"), Some(1.0));
        assert_eq!(v("egress_enforcer_ready"), Some(1.0));
        assert_eq!(v("egress_enforcer_last_apply_age_seconds"), Some(5.0));
        assert!(
            body.contains("# TYPE egress_enforcer_verdicts counter"),
            "{body}"
        );
    }

    #[test]
    fn before_the_first_apply_there_is_no_age_and_not_ready() {
        let body = render(&Stats::default(), &DaemonMetrics::default(), Instant::now());
        assert_eq!(sample(&body, "egress_enforcer_ready"), Some(0.0));
        assert!(
            !body.contains("egress_enforcer_last_apply_age_seconds"),
            "{body}"
        );
    }
}
