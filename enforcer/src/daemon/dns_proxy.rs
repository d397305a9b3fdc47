//! Wiring of DNS-aware mode into the daemon: binds the proxy's sockets, registers them with
//! the kernel, keeps the proxy's names and the exempt cgroups equal to the policy in force,
//! and ages learned rules (docs/architecture.md, "DNS-aware mode").

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Arc,
    time::Duration,
};

use hickory_proto::op::ResponseCode;
use tracing::{error, info, warn};

use super::{policy::LoadedPolicy, sd_listen::Inherited};
use crate::{
    config::{Config, DnsMode, Mode, Unregistered},
    dataplane::{cgroup, pins::PinLayout, sources},
    dnsproxy::sets::ProxySets,
    dnsproxy::{
        journal::Journal,
        kernel::KernelMaps,
        learned::LearnedTable,
        names::NameTable,
        server::{Lifetime, Proxy, Settings, Sockets, State},
    },
};

pub fn enabled(cfg: &Config) -> bool {
    cfg.dns.mode == DnsMode::Proxy
}

/// Binds the proxy's addresses, or takes the sockets systemd holds for them (socket
/// activation); done before anything changes in the kernel, so that a taken port is reported
/// as a config error. Inherited sockets that match no proxy address are closed, with a warning.
pub fn bind(cfg: &Config, mut inherited: Vec<Inherited>) -> anyhow::Result<Sockets> {
    let p = &cfg.dns.proxy;
    let sockets = Sockets::bind(p.address4(), p.address6(), p.port, |addr, stream| {
        let i = inherited
            .iter()
            .position(|s| s.addr == addr && s.stream == stream)?;
        info!(%addr, stream, "DNS proxy: socket from systemd");
        Some(inherited.swap_remove(i).fd)
    })?;
    for s in inherited {
        warn!(addr = %s.addr, stream = s.stream, "an inherited socket matches no dns.proxy address; closed");
    }
    Ok(sockets)
}

pub fn settings(policy: &LoadedPolicy) -> Settings {
    let cfg = &policy.config;
    let p = &cfg.dns.proxy;
    let own = (p.address4(), p.address6());
    let is_own = |a: &SocketAddr| match a.ip() {
        IpAddr::V4(v4) => v4 == own.0,
        IpAddr::V6(v6) => Some(v6) == own.1,
    };
    let mut fallback = cfg.dns_servers();
    if fallback.is_empty() {
        fallback = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| crate::config::resolv_conf_nameservers(&t))
            .unwrap_or_default()
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
    }
    fallback.retain(|a| !is_own(a));
    Settings {
        table: NameTable::build(&policy.compiled, &p.passthrough),
        audit: cfg.mode == Mode::Audit,
        unregistered: match p.unregistered {
            Unregistered::Nxdomain => ResponseCode::NXDomain,
            Unregistered::Refused => ResponseCode::Refused,
        },
        upstreams: p.upstream_addrs(),
        trusted: cfg.allowed_dns_servers(),
        fallback,
        timeout: p.timeout,
        lifetime: Lifetime {
            min_ttl: cfg.dns.min_ttl,
            max_ttl: cfg.dns.max_ttl,
            grace: cfg.dns.stale_grace,
        },
        own,
        netns_cookie: crate::dnsproxy::server::own_netns_cookie(),
    }
}

/// The cgroup ids exempt from the redirect: the configured ones that exist now. (The daemon's
/// own upstream sockets are exempt by cookie, whatever cgroup it runs in.)
fn exempt_ids(cfg: &Config, mount: &Path) -> Vec<u64> {
    cfg.dns
        .proxy
        .exempt_cgroups
        .iter()
        .filter_map(|c| {
            let rel = crate::config::cgroup_relative(c).ok()?;
            std::fs::metadata(mount.join(rel)).ok().map(|m| m.ino())
        })
        .collect()
}

/// Starts the proxy on bound sockets, once the programs are attached.
pub fn start(
    policy: &LoadedPolicy,
    sockets: Sockets,
    layout: &PinLayout,
    metrics: &super::metrics::DaemonMetrics,
    names: Option<Arc<std::sync::Mutex<crate::learn::names::RecentNames>>>,
) -> anyhow::Result<Arc<Proxy>> {
    let cfg = &policy.config;
    let mut maps = KernelMaps::open(layout)?;
    let mount = cgroup::cgroup2_mount()?;
    maps.set_exempt(&exempt_ids(cfg, &mount))?;
    maps.clear_own()?;
    let mut learned = LearnedTable::new(cfg.maps.learned_rules as usize)
        .with_grace(u64::try_from(cfg.dns.stale_grace.as_nanos()).unwrap_or(u64::MAX));
    let left = maps.learned()?;
    let record = sources::state_file(&layout.root, sources::LEARNED);
    let (journal, mut entries) = Journal::open(&record)?;
    // No restored expiry beyond what a fresh answer could give (a clock stepped back since
    // the record was written would stretch it).
    let cap = crate::dnsproxy::kernel::after(
        crate::dnsproxy::kernel::monotonic_ns(),
        cfg.dns.max_ttl + cfg.dns.stale_grace,
    );
    for addrs in entries.values_mut() {
        for exp in addrs.values_mut() {
            *exp = (*exp).min(cap);
        }
    }
    learned.restore(&left, entries);
    warn_about_resolvers_outside();
    let settings = settings(policy);
    let mut sets = ProxySets::open(layout, super::scoping::ranges(cfg).1)?;
    // Rules the record justifies under this policy are rewritten (their expiry in this
    // boot's clock), the others go now.
    let (mut puts, deletes) = learned.retarget(&settings.table);
    sets.assign(&mut puts, &learned)?;
    maps.put(&puts)?;
    maps.delete(&deletes)?;
    sets.release(&learned)?;
    // The kernel redirects only while this socket is open: registering it is what turns
    // queries from failing at once into being answered.
    let first = sockets
        .udp
        .first()
        .ok_or_else(|| anyhow::anyhow!("no proxy socket"))?;
    maps.set_proxy_socket(first)?;
    let kept = learned.len();
    let state = State {
        learned,
        journal,
        maps,
        sets,
    };
    let proxy = Arc::new(Proxy::new(settings, state).with_names(names));
    let _already = metrics.dns_proxy.set(Arc::clone(&proxy.metrics));
    run_on_own_thread(Arc::clone(&proxy), sockets, cfg.clone(), mount)?;
    info!(
        address = %cfg.dns.proxy.address,
        address6 = %cfg.dns.proxy.address6,
        port = cfg.dns.proxy.port,
        kept,
        revoked = deletes.len(),
        "DNS proxy answering (DNS-aware mode)"
    );
    Ok(proxy)
}

/// Lookups that glibc hands to a service over a Unix socket (nss-resolve to systemd-resolved,
/// nscd) are made by that service, outside the enforced cgroups: they never reach the proxy.
fn warn_about_resolvers_outside() {
    let nss = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
    let resolve = nss.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("hosts:") && l.split_whitespace().any(|w| w == "resolve")
    });
    let nscd = std::path::Path::new("/var/run/nscd/socket").exists();
    if resolve || nscd {
        warn!(
            nss_resolve = resolve,
            nscd,
            "host lookups through nss-resolve or nscd are made outside the enforced cgroups: \
             they bypass the DNS proxy (names are not learned, unregistered names are not \
             refused); point enforced workloads at the DNS stub instead (docs/architecture.md, \
             \"DNS-aware mode\")"
        );
    }
}

/// The proxy runs on a thread and runtime of its own: a query is received, forwarded,
/// committed and answered without crossing threads, and nothing the daemon does (a reload
/// parsing files, a map apply) delays it.
fn run_on_own_thread(
    proxy: Arc<Proxy>,
    sockets: Sockets,
    cfg: Config,
    mount: std::path::PathBuf,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("dns-proxy".to_owned())
        .spawn(move || {
            rt.block_on(async move {
                for s in sockets.udp {
                    tokio::spawn(log_end("UDP", Arc::clone(&proxy).serve_udp(s)));
                }
                for l in sockets.tcp {
                    tokio::spawn(log_end("TCP", Arc::clone(&proxy).serve_tcp(l)));
                }
                age(proxy, cfg, mount).await;
            });
        })?;
    Ok(())
}

async fn log_end(what: &str, serve: impl std::future::Future<Output = anyhow::Result<()>>) {
    if let Err(e) = serve.await {
        error!("DNS proxy: the {what} listener stopped: {e:#}");
    }
}

/// Every second: expired learned rules go, and the exempt cgroups follow the ones that exist.
async fn age(proxy: Arc<Proxy>, cfg: Config, mount: std::path::PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut exempt = exempt_ids(&cfg, &mount);
    loop {
        tick.tick().await;
        if let Err(e) = proxy.sweep() {
            warn!("DNS proxy: removing expired learned rules: {e:#}");
        }
        let now = exempt_ids(&cfg, &mount);
        if now != exempt {
            match proxy.set_exempt(&now) {
                Ok(()) => exempt = now,
                Err(e) => error!("DNS proxy: updating the exempt cgroups: {e:#}"),
            }
        }
    }
}
