//! The long-running daemon: wires config, policy and dataplane together, then serves events
//! and signals until told to stop. Enforcement stays pinned when it exits (fail closed).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    cli::{Failure, OrFailure as _},
    config::{Config, Mode},
    dataplane::{
        Dataplane,
        cgroup::{self, Cgroup},
        events,
    },
    logging,
    policy::{
        allow_spec::{AllowSpec, Proto},
        rules::DesiredRules,
    },
};

/// Rules from `--allow` flags plus the config's `allow.cidrs` (any port, TCP and UDP).
pub fn desired_rules(cfg: &Config, allow: &[AllowSpec]) -> DesiredRules {
    let mut specs: Vec<AllowSpec> = allow.to_vec();
    for net in cfg.allowed_cidrs() {
        for proto in [Proto::Tcp, Proto::Udp] {
            specs.push(AllowSpec {
                net,
                port: 0,
                proto,
            });
        }
    }
    let mut rules = DesiredRules::from_specs(&specs);
    let first_cidr = allow.len();
    for (i, spec) in specs.iter().enumerate().skip(first_cidr) {
        if let Ok(id) = u32::try_from(i + 1) {
            rules.sources.insert(id, format!("allow.cidrs {spec}"));
        }
    }
    rules
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

const fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::Enforce => enforcer_common::MODE_ENFORCE,
        Mode::Audit => enforcer_common::MODE_AUDIT,
    }
}

pub fn run(config_path: Option<&Path>, cfg: Config, allow: Vec<AllowSpec>) -> Result<(), Failure> {
    logging::init(cfg.log.format);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .runtime()?;
    rt.block_on(serve(config_path, cfg, allow))
}

/// Loads, applies and attaches: rules go into the maps before any link exists, so a workload
/// never runs under an empty allow-list on first start; on a restart the pinned maps still
/// hold the previous rules and the diff only adds/removes what changed.
fn start(cfg: &Config, allow: &[AllowSpec]) -> Result<(Dataplane, Vec<Cgroup>, PathBuf), Failure> {
    let (mount, cgroups) = resolve_cgroups(cfg).runtime()?;
    let rules = desired_rules(cfg, allow);
    let mut dp =
        Dataplane::load(&cfg.bpffs, &cfg.maps, logging::kernel_debug_enabled()).runtime()?;
    // Rules first: apply checks capacity before writing anything, so a refused start leaves
    // the pinned policy (rules and mode) exactly as it was.
    let applied = dp.maps.apply(&rules).user()?;
    dp.maps
        .write_config(mode_code(cfg.mode), cfg.allow.loopback)
        .runtime()?;
    dp.attach(&cgroups).runtime()?;
    for (id, source) in &rules.sources {
        tracing::debug!(rule_id = id, source = %source, "rule source");
    }
    info!(
        mode = ?cfg.mode,
        rules = rules.len(),
        added = applied.added,
        removed = applied.removed,
        unchanged = applied.unchanged,
        cgroups = ?cgroups.iter().map(Cgroup::display).collect::<Vec<_>>(),
        pins = %dp.layout().root.display(),
        "enforcing"
    );
    Ok((dp, cgroups, mount))
}

async fn serve(
    config_path: Option<&Path>,
    cfg: Config,
    allow: Vec<AllowSpec>,
) -> Result<(), Failure> {
    let (mut dp, cgroups, mount) = start(&cfg, &allow)?;
    if let Some(rb) = dp.take_events() {
        let roots = cgroups.clone();
        tokio::spawn(async move {
            if let Err(e) = consume_events(rb, mount, roots).await {
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

    let mut term = signal(SignalKind::terminate()).runtime()?;
    let mut int = signal(SignalKind::interrupt()).runtime()?;
    let mut hup = signal(SignalKind::hangup()).runtime()?;
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match reload(config_path, &current, &allow, &mut dp) {
                    Ok(next) => current = next,
                    Err(e) => error!("reload failed, keeping the policy in force: {e:#}"),
                }
            }
        }
    }
    info!("stopping; enforcement stays pinned (run `egress-enforcer uninstall` to remove it)");
    Ok(())
}

/// SIGHUP: re-read the config and apply mode, loopback, cidrs and cgroups. A bad config
/// changes nothing.
fn reload(
    config_path: Option<&Path>,
    current: &Config,
    allow: &[AllowSpec],
    dp: &mut Dataplane,
) -> anyhow::Result<Config> {
    let next = Config::load(config_path)?;
    if next.bpffs != current.bpffs || next.maps != current.maps {
        warn!("bpffs and maps changes take effect at the next restart");
    }
    let rules = desired_rules(&next, allow);
    let (_, cgroups) = resolve_cgroups(&next)?;
    let applied = dp.maps.apply(&rules)?;
    dp.maps
        .write_config(mode_code(next.mode), next.allow.loopback)?;
    if next.cgroups != current.cgroups {
        dp.attach(&cgroups)?;
    }
    info!(
        mode = ?next.mode,
        added = applied.added,
        removed = applied.removed,
        unchanged = applied.unchanged,
        "reloaded"
    );
    Ok(next)
}

async fn consume_events(
    rb: RingBuf<MapData>,
    mount: PathBuf,
    roots: Vec<Cgroup>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(rb) }
        .map_err(|_| anyhow::anyhow!("cannot poll the events ring buffer"))?;
    let mut cgroup_paths: HashMap<u64, String> = HashMap::new();
    loop {
        let mut guard = fd.readable_mut().await?;
        let rb = guard.get_inner_mut();
        while let Some(item) = rb.next() {
            let Some(ev) = events::decode(&item) else {
                warn!(len = item.len(), "undecodable event (ABI mismatch?)");
                continue;
            };
            let cgroup = cgroup_paths
                .entry(ev.cgroup_id)
                .or_insert_with(|| {
                    cgroup::path_for_id(&mount, &roots, ev.cgroup_id)
                        .unwrap_or_else(|| format!("id:{}", ev.cgroup_id))
                })
                .clone();
            let msg = if ev.verdict == "deny" {
                "connection denied"
            } else {
                "connection allowed by audit mode"
            };
            warn!(
                target: "egress_enforcer::event",
                verdict = ev.verdict,
                pid = ev.pid,
                tid = ev.tid,
                comm = %ev.comm,
                cgroup = %cgroup,
                hook = ev.hook,
                proto = %ev.proto,
                dst = %ev.addr,
                port = ev.port,
                "{msg}"
            );
        }
        guard.clear_ready();
    }
}

async fn forward_kernel_log(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<()> {
    // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
    let mut fd = unsafe { AsyncFd::register(logger) }
        .map_err(|_| anyhow::anyhow!("cannot poll the kernel log ring buffer"))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_from_config_allow_any_port_both_protocols() {
        let cfg = Config::parse("allow: {cidrs: [10.96.0.0/12]}", Path::new("c")).unwrap();
        let allow: Vec<AllowSpec> = vec!["198.18.0.1:80/tcp".parse().unwrap()];
        let r = desired_rules(&cfg, &allow);
        assert_eq!(r.exact.len(), 1);
        assert_eq!(r.prefix.len(), 2);
        assert!(r.prefix.keys().all(|(_, k)| k.port == 0));
        assert_eq!(
            r.sources.get(&1).map(String::as_str),
            Some("--allow 198.18.0.1:80/tcp")
        );
        assert!(
            r.sources
                .get(&2)
                .is_some_and(|s| s.starts_with("allow.cidrs"))
        );
    }
}
