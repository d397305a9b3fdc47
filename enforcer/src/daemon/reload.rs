//! Reloads: the new policy takes effect entirely or the kernel keeps the old one
//! (docs/architecture.md, "Reloads").

use std::{path::PathBuf, sync::atomic::Ordering};

use tracing::{error, info, warn};

use super::{Daemon, kernel_config, names, policy, resolve_cgroups};
use crate::dataplane::cgroup::Cgroup;

/// The cgroups of a config about to be reloaded, created but not attached yet, and what a
/// rollback needs.
struct Prepared {
    all: Vec<Cgroup>,
    /// Enforced before this reload.
    before: Vec<Cgroup>,
    /// Not enforced before this reload.
    added: Vec<Cgroup>,
    /// Directories this reload created (removed again on failure).
    created: Vec<PathBuf>,
    /// The kernel config entry before the reload.
    old_config: enforcer_common::Config,
}

impl Daemon {
    /// Re-reads everything; a bad config or any invalid ServiceEntry changes nothing.
    /// Returns whether the watched paths may have changed (after a failure they may: the
    /// config on disk may name new ones). While the API server's latest objects wait for a
    /// reload that failed, `/readyz` says so.
    pub(super) fn reload(&mut self) -> bool {
        let before = self.metrics.reload_failures.load(Ordering::Relaxed)
            + self.metrics.rollback_failures.load(Ordering::Relaxed);
        let paths_changed = self.reload_once();
        super::heap::give_back();
        let failed = self.metrics.reload_failures.load(Ordering::Relaxed)
            + self.metrics.rollback_failures.load(Ordering::Relaxed)
            > before;
        if let Some(c) = &mut self.cluster {
            if failed && c.pending {
                self.metrics.set_behind(Some(
                    "the last reload failed (see the log and egress_enforcer_reload_failures_total)"
                        .to_owned(),
                ));
            } else if !failed {
                c.pending = false;
                c.status.in_force(c.current.generation);
                self.metrics.set_behind(None);
            }
        }
        paths_changed || failed
    }

    fn reload_once(&mut self) -> bool {
        let inputs = self
            .opts
            .inputs(self.cluster.as_ref(), Some(&self.current.table));
        let next = match policy::load_cached(&inputs, &mut self.files) {
            Ok(p) => p,
            Err(e) => {
                error!("reload failed, keeping the policy in force: {e}");
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        for r in &next.remarks {
            warn!("{r}");
        }
        let (old, new) = (&self.current.config, &next.config);
        let (op, np) = (&old.dns.proxy, &new.dns.proxy);
        if new.dns.mode != old.dns.mode
            || (op.address4(), op.address6(), op.port) != (np.address4(), np.address6(), np.port)
            || new.foreign_sockets != old.foreign_sockets
            || new.kubernetes != old.kubernetes
        {
            error!(
                "reload refused, keeping the policy in force: dns.mode, dns.proxy.{{address, address6, port}}, foreignSockets and kubernetes take effect only at a restart"
            );
            self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if new.bpffs != old.bpffs || new.maps != old.maps || new.dns != old.dns {
            warn!("bpffs, maps and dns changes take effect at the next restart");
        }
        let mode = new.mode;
        let paths_changed = new.service_entries != old.service_entries;
        // Everything that can fail without touching the kernel goes first.
        let prepared = match self.prepare(new) {
            Ok(p) => p,
            Err((e, created)) => {
                remove_created(&created);
                self.refused(&e, &[]);
                return false;
            }
        };
        let previous = std::mem::replace(&mut self.current, next);
        if let Err(e) = self.switch(&prepared) {
            self.current = previous;
            let failures = self.restore(&prepared);
            self.refused(&e, &failures);
            return false;
        }
        // Only now that the new policy is whole do cgroups leave enforcement.
        if let Err(e) = self.dp.detach_except(&prepared.all) {
            error!("detaching cgroups no longer configured failed (they stay enforced): {e:#}");
        }
        self.names_tx.send_replace(names(&self.current));
        if let Some(proxy) = &self.proxy
            && let Err(e) = proxy.update(super::dns_proxy::settings(&self.current))
        {
            error!(
                "DNS proxy: revoking learned rules the new policy no longer allows failed: {e:#}"
            );
        }
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.record(&self.dp.layout().root);
        }
        info!(
            mode = ?mode,
            entries = self.current.entries,
            from_files = self.current.from_files,
            hostnames = self.current.compiled.hostnames.len(),
            policies = self.current.table.policies.len(),
            pods = self.current.pods.len(),
            "reloaded"
        );
        paths_changed
    }

    /// Resolves and creates the new config's cgroups. On failure, the directories created so
    /// far come back with the error.
    fn prepare(
        &self,
        new: &crate::config::Config,
    ) -> Result<Prepared, (anyhow::Error, Vec<PathBuf>)> {
        let mut created = Vec::new();
        let (_, all) = resolve_cgroups(new).map_err(|e| (e, Vec::new()))?;
        let (_, before) = resolve_cgroups(&self.current.config).map_err(|e| (e, Vec::new()))?;
        let added: Vec<Cgroup> = all
            .iter()
            .filter(|c| !before.contains(c))
            .cloned()
            .collect();
        for cg in &added {
            let missing = first_missing(&cg.path);
            if let Err(e) = cg.create() {
                return Err((e, created));
            }
            created.extend(missing);
        }
        let old_config = self
            .dp
            .maps
            .read_config()
            .map_err(|e| (e, created.clone()))?;
        Ok(Prepared {
            all,
            before,
            added,
            created,
            old_config,
        })
    }

    /// New cgroups, then rules, then the mode: each step fails before the next one starts.
    /// New cgroups go first because attaching is what fails in practice (another program
    /// holds a hook): a reload refused there has written nothing, so no call in the meantime
    /// sees its rules. Until the rules follow, a new cgroup runs under the old rules, which is
    /// stricter for it than no enforcement.
    fn switch(&mut self, p: &Prepared) -> anyhow::Result<()> {
        self.dp.attach_new(&p.added)?;
        self.apply()?;
        self.dp
            .maps
            .write_config(kernel_config(&self.current.config, &self.current.table))
    }

    /// Puts back what a failed reload may have changed: links of added cgroups, the mode and
    /// loopback switch, and the rules (the skip bits follow the rules). Returns what could
    /// not be undone.
    fn restore(&mut self, p: &Prepared) -> Vec<String> {
        let mut failures = Vec::new();
        if !p.added.is_empty()
            && let Err(e) = self.dp.detach_except(&p.before)
        {
            failures.push(format!("detaching added cgroups: {e:#}"));
        }
        remove_created(&p.created);
        let old = &p.old_config;
        if let Err(e) = self.dp.maps.write_config(*old) {
            failures.push(format!("restoring the mode: {e:#}"));
        }
        if let Err(e) = self.apply() {
            failures.push(format!("restoring the rules: {e:#}"));
        }
        failures
    }

    /// Logs a refused reload after its rollback. If the rollback failed, the kernel may hold
    /// a mix of both policies: the daemon is not ready until a full apply of the policy in
    /// force succeeds (retried with backoff).
    fn refused(&mut self, e: &anyhow::Error, rollback_failures: &[String]) {
        self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
        if rollback_failures.is_empty() {
            error!("reload could not be applied, keeping the previous policy: {e:#}");
            return;
        }
        self.metrics
            .rollback_failures
            .fetch_add(1, Ordering::Relaxed);
        error!(
            "reload could not be applied, and rolling it back failed ({}): {e:#}",
            rollback_failures.join("; ")
        );
        self.not_ready(&anyhow::anyhow!(
            "rolling back a failed reload failed: {}",
            rollback_failures.join("; ")
        ));
    }
}

/// The outermost directory of `path` that does not exist yet (what `create_dir_all` makes).
fn first_missing(path: &std::path::Path) -> Option<PathBuf> {
    let mut missing = None;
    for dir in path.ancestors() {
        if dir.exists() {
            break;
        }
        missing = Some(dir.to_path_buf());
    }
    missing
}

/// Removes cgroup directories a failed reload created (innermost first; a new cgroup holds
/// no process, so rmdir succeeds).
fn remove_created(created: &[PathBuf]) {
    for top in created {
        let mut dirs: Vec<PathBuf> = walkdirs(top);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d) {
                warn!(path = %d.display(), "removing a cgroup created by a failed reload: {e}");
            }
        }
    }
}

/// `top` and its subdirectories (cgroup interface files are not directories).
fn walkdirs(top: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![top.to_path_buf()];
    let mut i = 0;
    while let Some(dir) = out.get(i).cloned() {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    out
}
