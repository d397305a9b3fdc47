//! How current each watched resource is, for `/readyz`, `/metrics`, the log and `inspect`
//! (docs/kubernetes.md, "When the API server is away").

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::store::Rejected;

/// One watched resource's state.
#[derive(Debug, Clone, Default)]
pub struct ResourceStatus {
    /// The version discovery chose (`v1`, `v1beta1`, `v1alpha3`), once found.
    pub version: Option<String>,
    /// A complete list has been received.
    pub synced: bool,
    /// Since when the watch has failed without a success in between, and the last error.
    pub failing: Option<(Instant, String)>,
    /// The last moment the daemon knew it was in sync (an event, a list, a resumed watch).
    pub last_ok: Option<Instant>,
    pub errors: u64,
    pub objects: usize,
    pub rejected: Vec<RejectedRow>,
}

/// A refused object, for `inspect cluster` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RejectedRow {
    pub object: String,
    #[serde(flatten)]
    pub rejected: Rejected,
    /// An older valid version is in force.
    pub older_in_force: bool,
}

/// Every watched resource, by name (`serviceentries`).
#[derive(Debug, Default)]
pub struct Status {
    resources: Mutex<Vec<(&'static str, ResourceStatus)>>,
    /// Snapshots published, and the last one the policy in force was compiled from: until
    /// they meet, the API server's latest objects are not enforced yet.
    published: std::sync::atomic::AtomicU64,
    in_force: std::sync::atomic::AtomicU64,
}

/// The JSON `inspect cluster` reads.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ResourceReport {
    pub resource: String,
    pub version: Option<String>,
    pub synced: bool,
    /// Seconds since the daemon was last known in sync; 0 while the watch is healthy.
    pub sync_age_seconds: f64,
    pub last_error: Option<String>,
    pub errors: u64,
    pub objects: usize,
    pub rejected: Vec<RejectedRow>,
}

impl Status {
    pub fn new(resources: &[&'static str]) -> Self {
        Self {
            resources: Mutex::new(
                resources
                    .iter()
                    .map(|r| (*r, ResourceStatus::default()))
                    .collect(),
            ),
            ..Self::default()
        }
    }

    /// A new snapshot is out; returns its generation.
    pub fn published(&self) -> u64 {
        self.published
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// The policy in force was compiled from the snapshot of `generation`.
    pub fn in_force(&self, generation: u64) {
        self.in_force
            .fetch_max(generation, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes one resource's state.
    pub fn update(&self, resource: &str, f: impl FnOnce(&mut ResourceStatus)) {
        if let Ok(mut all) = self.resources.lock()
            && let Some((_, s)) = all.iter_mut().find(|(r, _)| *r == resource)
        {
            f(s);
        }
    }

    /// A request for the resource succeeded, or the watch delivered something: it is in
    /// sync now. Ending a failing spell is logged.
    pub fn ok(&self, resource: &str, now: Instant) {
        let mut recovered = None;
        self.update(resource, |s| {
            recovered = s
                .failing
                .take()
                .map(|(since, _)| now.saturating_duration_since(since));
            s.last_ok = Some(now);
        });
        if let Some(after) = recovered {
            tracing::info!(
                resource,
                failing_for = format!("{:.1}s", after.as_secs_f64()),
                "in sync with the API server again"
            );
        }
    }

    /// The watch failed; returns whether this starts a failing spell (worth a warning).
    pub fn failed(&self, resource: &str, error: String, now: Instant) -> bool {
        let mut first = false;
        self.update(resource, |s| {
            s.errors += 1;
            first = s.failing.is_none();
            let since = s.failing.as_ref().map_or(now, |(t, _)| *t);
            s.failing = Some((since, error));
        });
        first
    }

    pub fn all(&self) -> Vec<(&'static str, ResourceStatus)> {
        self.resources.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Ready once every resource has been listed completely and none is failing; the
    /// reason otherwise names the resource, how long ago it was in sync, and the error.
    pub fn readiness(&self, now: Instant) -> Result<(), String> {
        use std::sync::atomic::Ordering::SeqCst;
        let behind = self.published.load(SeqCst) > self.in_force.load(SeqCst);
        for (r, s) in self.all() {
            if !s.synced {
                let why = s
                    .failing
                    .as_ref()
                    .map(|(_, e)| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!("{r}: not listed from the API server yet{why}"));
            }
            if let Some((_, e)) = &s.failing {
                return Err(format!(
                    "{r}: out of sync with the API server for {:.0} s (the last policy stays in force): {e}",
                    sync_age(&s, now).as_secs_f64()
                ));
            }
        }
        if behind {
            return Err("the API server's latest objects are not in force yet".to_owned());
        }
        Ok(())
    }

    pub fn report(&self, now: Instant) -> Vec<ResourceReport> {
        self.all()
            .into_iter()
            .map(|(r, s)| ResourceReport {
                resource: r.to_owned(),
                version: s.version.clone(),
                synced: s.synced,
                sync_age_seconds: sync_age(&s, now).as_secs_f64(),
                last_error: s.failing.as_ref().map(|(_, e)| e.clone()),
                errors: s.errors,
                objects: s.objects,
                rejected: s.rejected.clone(),
            })
            .collect()
    }
}

/// 0 while healthy; otherwise the time since the last moment known in sync (or since the
/// failures began, if it never was).
pub fn sync_age(s: &ResourceStatus, now: Instant) -> Duration {
    match (&s.failing, s.last_ok) {
        (None, _) if s.synced => Duration::ZERO,
        (_, Some(ok)) => now.saturating_duration_since(ok),
        (Some((since, _)), None) => now.saturating_duration_since(*since),
        (None, None) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_the_first_list_and_reports_failures() {
        let st = Status::new(&["serviceentries"]);
        let t0 = Instant::now();
        let e = st.readiness(t0).unwrap_err();
        assert!(e.contains("not listed"), "{e}");
        assert!(st.failed("serviceentries", "403 Forbidden".into(), t0));
        assert!(!st.failed("serviceentries", "403 Forbidden".into(), t0));
        assert!(st.readiness(t0).unwrap_err().contains("403"));
        st.update("serviceentries", |s| s.synced = true);
        st.ok("serviceentries", t0);
        assert_eq!(st.readiness(t0), Ok(()));
        assert_eq!(st.report(t0)[0].sync_age_seconds, 0.0);
        st.failed("serviceentries", "connection refused".into(), t0);
        let later = t0 + Duration::from_secs(42);
        let e = st.readiness(later).unwrap_err();
        assert!(
            e.contains("42 s") && e.contains("connection refused"),
            "{e}"
        );
        let r = &st.report(later)[0];
        assert_eq!(r.sync_age_seconds, 42.0);
        assert_eq!(r.errors, 3);
    }
}
