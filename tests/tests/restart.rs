//! End-to-end: what a restart keeps. DNS-derived rules of names still configured carry over
//! (also into migrated maps) while DNS is down, for at most `dns.staleGrace`; rules of
//! entries removed while the daemon was down go at once.

use std::time::{Duration, Instant};

use e2e::{Env, env_with_dns, service_entry as se};

const API: &str =
    "hosts: [api.ee.test]\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: DNS";
const FIXED: &str = "hosts: [fixed.ee.test]\naddresses: [198.18.0.2]\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: 198.18.0.2}]";
const API_OP: &str = "tcp:198.18.0.1:8080";
const FIXED_OP: &str = "tcp:198.18.0.2:8080";
const DENIED_OP: &str = "tcp:198.18.0.3:8080";
const WAIT: Duration = Duration::from_secs(10);

/// A daemon enforcing API (from DNS) and FIXED (static); returns with both allowed.
fn running(test: &str, grace: &str) -> (Env, e2e::Dns, e2e::Daemon) {
    let (env, dns) = env_with_dns(test, "enforce", "", grace);
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    env.write_se("fixed.yaml", &se("fixed", FIXED));
    let d = env.start_daemon(&[]);
    env.wait_probe(API_OP, "ok", WAIT);
    env.wait_probe(FIXED_OP, "ok", WAIT);
    (env, dns, d)
}

fn append_config(env: &Env, line: &str) {
    let mut cfg = std::fs::read_to_string(&env.config).expect("config");
    cfg.push_str(line);
    std::fs::write(&env.config, cfg).expect("config");
}

#[test]
fn migration_carries_dns_rules_while_dns_is_down() {
    let (env, dns, d) = running("carry-migrate", "60s");
    let probe = env.probe_loop(&[API_OP, DENIED_OP]);
    d.stop(libc::SIGTERM);
    dns.pause(true);
    append_config(&env, "maps: {exactRules: 70000}\n");
    let mut d = env.start_daemon(&[]);
    d.wait_for("the migration", WAIT, |r| {
        r.iter().any(|r| r["message"] == "migrated to new maps")
    });
    probe.finish_steady(
        &[(API_OP, "ok"), (DENIED_OP, "EPERM")],
        "across a migration with DNS down",
    );
    // After the swap, the new maps hold the DNS-derived rule (DNS is still down).
    let p = env.probe_in_cgroup(&[API_OP, DENIED_OP]);
    assert_eq!(p.result(API_OP), "ok", "DNS-derived rule in the new maps");
    assert_eq!(p.result(DENIED_OP), "EPERM");
    let sources = env.column("rules", "rule");
    assert!(
        sources.contains(&"198.18.0.1:8080/tcp".to_owned()),
        "{sources:?}"
    );
    dns.pause(false);
}

#[test]
fn entries_removed_while_stopped_are_revoked_at_start_and_carried_rules_expire() {
    let (env, dns, d) = running("carry-revoke", "3s");
    d.stop(libc::SIGTERM);
    dns.pause(true);
    env.remove_se("fixed.yaml");
    let mut d = env.start_daemon(&[]);
    // The grace counts from after "enforcing", which start_daemon has just seen.
    let started = Instant::now();
    // Right after start (DNS still down, nothing answered): the removed entry is gone, the
    // name still configured keeps its last answer.
    let p = env.probe_in_cgroup(&[API_OP, FIXED_OP]);
    assert_eq!(
        p.result(FIXED_OP),
        "EPERM",
        "removed STATIC entry revoked at start"
    );
    assert_eq!(
        p.result(API_OP),
        "ok",
        "carried answer of a configured name"
    );
    assert!(
        d.records()
            .iter()
            .any(|r| r["message"] == "enforcing" && r["carried"] == 1),
        "one address carried: {:#?}",
        d.records()
    );
    // Never answered again: denied once staleGrace (3 s) after start has passed, not before.
    let gone = env.wait_probe(API_OP, "EPERM", Duration::from_secs(15));
    let after_start = started.elapsed();
    assert!(
        after_start >= Duration::from_millis(2900),
        "carried rule expired {after_start:?} after start, before the 3 s grace (waited {gone:?})"
    );
    d.wait_for("the failed lookups", WAIT, |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("DNS lookup failed"))
        })
    });
    dns.pause(false);
}

/// The record of answers is gone (deleted, or an upgrade from a version without it): the
/// kernel's own marks still tell DNS-derived rules from static ones.
#[test]
fn without_the_record_only_dns_rules_carry() {
    let (env, dns, d) = running("carry-norecord", "60s");
    d.stop(libc::SIGTERM);
    dns.pause(true);
    let records: Vec<_> = std::fs::read_dir("/run/egress-enforcer")
        .expect("state dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy().contains(&env.name)
                && p.to_string_lossy().ends_with(".answers.json")
        })
        .collect();
    assert_eq!(records.len(), 1, "one record for this daemon: {records:?}");
    std::fs::remove_file(&records[0]).expect("remove record");
    env.remove_se("fixed.yaml");
    let _d = env.start_daemon(&[]);
    let p = env.probe_in_cgroup(&[API_OP, FIXED_OP]);
    assert_eq!(p.result(API_OP), "ok", "marked as from DNS: carried");
    assert_eq!(p.result(FIXED_OP), "EPERM", "static, removed: revoked");
    dns.pause(false);
}

#[test]
fn a_removed_allow_flag_is_revoked_at_start() {
    let env = Env::new("carry-allow", "enforce", "");
    let d = env.start_daemon(&["198.18.0.1:8080/tcp", "198.18.0.2:8080/tcp"]);
    d.stop(libc::SIGTERM);
    let _d = env.start_daemon(&["198.18.0.1:8080/tcp"]);
    let p = env.probe_in_cgroup(&[API_OP, FIXED_OP]);
    assert_eq!(p.result(API_OP), "ok");
    assert_eq!(p.result(FIXED_OP), "EPERM", "--allow dropped on restart");
}
