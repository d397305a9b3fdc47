//! End-to-end: configuration changes, reloads and bad input never lose the policy in force.

use std::time::Duration;

use e2e::{Env, run};

const ALLOWED: &str = "tcp:198.18.0.1:8080";
const DENIED: &str = "tcp:198.18.0.3:8080";
const RULES: &[&str] = &["198.18.0.1:8080/tcp"];

fn assert_enforcing(env: &Env, when: &str) {
    let p = env.probe_in_cgroup(&[ALLOWED, DENIED]);
    assert_eq!(p.result(ALLOWED), "ok", "{when}");
    assert_eq!(p.result(DENIED), "EPERM", "{when}");
}

/// Replaces the config the way a careful operator does (write, then rename over), so that the
/// daemon's file watcher never reads half a file.
fn rewrite_config(env: &Env, yaml: &str) {
    let tmp = env.config.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("config");
    std::fs::rename(&tmp, &env.config).expect("config");
}

fn base_config(env: &Env, mode: &str, cgroup: &str) -> String {
    format!(
        "mode: {mode}\ncgroups: [{cgroup}]\nbpffs: {}\nlog: {{format: json}}\nallow: {{dnsServers: []}}\nhttp: {{listen: '127.0.0.1:0'}}\ndns: {{mode: resolve}}\n",
        env.bpffs.display()
    )
}

#[test]
fn bad_allow_flag_is_a_user_error_naming_the_value() {
    let env = Env::new("badflag", "enforce", "");
    let out = run(env.cmd().args(["run", "--allow", "198.18.0.1:99999/tcp"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow") && err.contains("99999"), "{err}");
}

#[test]
fn bad_config_is_a_user_error_naming_file_and_line() {
    let env = Env::new("badcfg", "enforce", "mod: audit\n");
    let out = run(env.cmd().args(["run"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&env.config).expect("config");
    let line = text
        .lines()
        .position(|l| l.starts_with("mod:"))
        .expect("mod line")
        + 1;
    assert!(
        err.contains(&format!("{}:{line}", env.config.display())),
        "{err}"
    );
    assert!(err.contains("mod"), "{err}");
}

fn pinned_max_entries(env: &Env, map: &str) -> u64 {
    let path = env.bpffs.join("egress-enforcer/maps").join(map);
    let out = run(std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&path));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["max_entries"].as_u64().unwrap_or(0)
}

#[test]
fn restart_with_resized_maps_migrates_without_a_window() {
    let env = Env::new("resize", "enforce", "");
    let d = env.start_daemon(RULES);
    assert_eq!(pinned_max_entries(&env, "RULES_EXACT"), 65536);
    let probe = env.probe_loop(&[ALLOWED, DENIED]);
    std::thread::sleep(Duration::from_millis(200));
    d.stop(libc::SIGTERM);
    let cfg = base_config(&env, "enforce", &env.cgroup) + "maps: {exactRules: 1024}\n";
    rewrite_config(&env, &cfg);
    let mut d = env.start_daemon(RULES);
    d.wait_for("the migration", Duration::from_secs(10), |r| {
        r.iter().any(|r| r["message"] == "migrated to new maps")
    });
    std::thread::sleep(Duration::from_millis(200));
    probe.finish_steady(
        &[(ALLOWED, "ok"), (DENIED, "EPERM")],
        "across the migration",
    );
    assert_eq!(pinned_max_entries(&env, "RULES_EXACT"), 1024);
    assert!(!env.bpffs.join("egress-enforcer/maps-next").exists());
    assert_enforcing(&env, "after the migration");
    let rules = env.inspect("rules")["rules"].as_array().map(Vec::len);
    assert_eq!(rules, Some(1));
}

#[test]
fn rules_over_capacity_are_refused_before_anything_changes() {
    let env = Env::new("overcap", "enforce", "maps: {exactRules: 2}\n");
    let d = env.start_daemon(RULES);
    d.stop(libc::SIGTERM);
    let out = run(env.cmd().args([
        "run",
        "--allow",
        "198.18.0.2:1/tcp",
        "--allow",
        "198.18.0.2:2/tcp",
        "--allow",
        "198.18.0.2:3/tcp",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("maps.exactRules"), "{err}");
    assert_enforcing(&env, "after a refused over-capacity start");
}

#[test]
fn sighup_reloads_mode_and_a_bad_reload_keeps_the_policy() {
    let env = Env::new("sighup", "enforce", "");
    let mut d = env.start_daemon(RULES);
    assert_enforcing(&env, "before reload");

    // A broken config: the daemon logs why and keeps enforcing.
    rewrite_config(&env, "mode: [this is not a mode\n");
    d.signal(libc::SIGHUP);
    d.wait_for("the reload error", Duration::from_secs(10), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload failed") && m.contains("config.yaml"))
        })
    });
    // (exec reads the config too, so the good one goes back before probing; the daemon has
    // not reloaded it.)
    rewrite_config(&env, &base_config(&env, "enforce", &env.cgroup));
    assert_enforcing(&env, "after a failed reload");

    // A good config switches to audit mode in place.
    rewrite_config(&env, &base_config(&env, "audit", &env.cgroup));
    d.signal(libc::SIGHUP);
    // The file watcher also reloads on each rewrite, so an earlier "reloaded" record (of the
    // restored enforce config) may exist: wait for the one that switched to audit.
    d.wait_for("the reload to audit", Duration::from_secs(10), |r| {
        r.iter()
            .any(|r| r["message"] == "reloaded" && r["mode"] == "Audit")
    });
    let p = env.probe_in_cgroup(&[ALLOWED, DENIED]);
    assert_eq!(p.result(DENIED), "ok", "audit mode after reload");
    assert!(
        env.counters()
            .contains_key(&("connect4".into(), "tcp".into(), "audit".into()))
    );
}

/// Reloads to audit mode with `cgroups` and a new CIDR (198.18.0.3/32), and waits for the
/// refusal, whose message mentions `cause`.
fn refused_reload_to_audit(env: &Env, d: &mut e2e::Daemon, cgroups: &str, cause: &str) {
    let cfg = base_config(env, "audit", cgroups).replace(
        "allow: {dnsServers: []}",
        "allow: {dnsServers: [], cidrs: [198.18.0.3/32]}",
    );
    rewrite_config(env, &cfg);
    d.signal(libc::SIGHUP);
    let refusals = |r: &[serde_json::Value]| {
        r.iter()
            .filter(|r| {
                r["message"].as_str().is_some_and(|m| {
                    m.contains("reload could not be applied, keeping the previous policy")
                        && m.contains(cause)
                })
            })
            .count()
    };
    d.wait_for("the refused reload", Duration::from_secs(10), |r| {
        refusals(r) > 0
    });
    // The file watcher and SIGHUP may each have started a reload, and the second may still
    // be running. Reloads run one after another: once one more, asked for now, is refused,
    // none is left in flight to race the checks that follow.
    let seen = refusals(&d.records());
    d.signal(libc::SIGHUP);
    d.wait_for("a settled refused reload", Duration::from_secs(10), |r| {
        refusals(r) > seen
    });
}

/// A reload to audit mode, with a new cgroup, a new CIDR and a cgroup that cannot be
/// created: refused as a whole, so the kernel keeps enforce mode, the old rules and links.
#[test]
fn a_reload_that_fails_midway_changes_nothing_in_the_kernel() {
    let env = Env::new("reload-atomic", "enforce", "");
    let mut d = env.start_daemon(RULES);
    assert_enforcing(&env, "before the reload");
    let added = format!("{}-new", env.cgroup);
    // A name longer than NAME_MAX: mkdir fails with ENAMETOOLONG.
    let broken = format!("{}-{}", env.cgroup, "x".repeat(300));
    refused_reload_to_audit(
        &env,
        &mut d,
        &format!("{}, {added}, {broken}", env.cgroup),
        "",
    );
    // Probed with the failed config still in place (no reload of the old one has happened).
    assert_enforcing(&env, "after a refused reload to audit mode");
    assert_eq!(
        env.column("links", "cgroup"),
        vec![format!("/{}", env.cgroup); 7],
        "no cgroup of the refused config was attached"
    );
    let added_path = env.cgroup_path.with_file_name(format!(
        "{}-new",
        env.cgroup.rsplit('/').next().unwrap_or_default()
    ));
    // A refused reload still running (see `refused_reload_to_audit`) may hold the directory
    // for a moment; none may leave it behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while added_path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !added_path.exists(),
        "the cgroup the refused reload created is removed again"
    );
    let rules = env.column("rules", "rule");
    assert_eq!(
        rules,
        vec!["198.18.0.1:8080/tcp".to_owned()],
        "rules as before"
    );
    assert_eq!(
        env.inspect("rules")["mode"],
        "enforce",
        "mode in the kernel"
    );
    assert!(
        !env.counters().keys().any(|(_, _, v)| v == "audit"),
        "no audit verdict: {:?}",
        env.counters()
    );
    drop(d);
    let _ = std::fs::remove_dir(added_path);
}

/// The same refused reload, but failing in the kernel after three of the programs were
/// attached to the new cgroup: all of it is undone, and the reload's rules were never in
/// force, not even while it ran (the file watcher and SIGHUP each start one, so one may
/// still be running when the test probes).
#[test]
fn a_reload_whose_attach_fails_in_the_kernel_is_rolled_back() {
    let env = Env::new("reload-undo", "enforce", "");
    let mut d = env.start_daemon(RULES);
    let leaf = env.cgroup.rsplit('/').next().unwrap_or_default();
    let added_path = env.cgroup_path.with_file_name(format!("{leaf}-new"));
    std::fs::create_dir_all(&added_path).expect("cgroup");
    // A program attached without flags (exclusive) to the new cgroup's sendmsg6 hook: ours
    // cannot join it there, after connect4, connect6 and sendmsg4 already did.
    let program = env.bpffs.join("egress-enforcer/programs/sendmsg6");
    let foreign = run(std::process::Command::new("bpftool")
        .args(["cgroup", "attach"])
        .arg(&added_path)
        .args(["sendmsg6", "pinned"])
        .arg(&program));
    assert!(
        foreign.status.success(),
        "bpftool attach: {}",
        String::from_utf8_lossy(&foreign.stderr)
    );
    let cgroups = format!("{}, {}-new", env.cgroup, env.cgroup);
    refused_reload_to_audit(&env, &mut d, &cgroups, "sendmsg6");
    assert_enforcing(&env, "after a reload that failed in the kernel");
    assert_eq!(env.inspect("rules")["mode"], "enforce");
    assert_eq!(
        env.column("rules", "rule"),
        vec!["198.18.0.1:8080/tcp".to_owned()]
    );
    assert_eq!(
        env.column("links", "cgroup"),
        vec![format!("/{}", env.cgroup); 7]
    );
    assert_eq!(
        e2e::attached_programs(&added_path).len(),
        1,
        "only the foreign program is left on the new cgroup"
    );
    assert!(!d.records().iter().any(|r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("rolling it back failed"))
    }));
    drop(d);
    let _ = run(std::process::Command::new("bpftool")
        .args(["cgroup", "detach"])
        .arg(&added_path)
        .args(["sendmsg6", "pinned"])
        .arg(&program));
    let _ = std::fs::remove_dir(&added_path);
}

#[test]
fn cgroups_dropped_from_the_config_are_detached_on_restart() {
    let env = Env::new("regroup", "enforce", "");
    let d = env.start_daemon(RULES);
    assert_eq!(env.kernel_attached().len(), 7);
    d.stop(libc::SIGTERM);

    let other = format!("{}-b", env.cgroup);
    rewrite_config(&env, &base_config(&env, "enforce", &other));
    let d = env.start_daemon(RULES);
    assert!(
        env.kernel_attached().is_empty(),
        "old cgroup detached: {:?}",
        env.kernel_attached()
    );
    assert_eq!(env.column("links", "cgroup"), vec![format!("/{other}"); 7]);
    drop(d);
    let _ = run(env.cmd().args(["uninstall"]));
    let path = env
        .cgroup_path
        .with_file_name(other.rsplit('/').next().unwrap_or_default());
    let _ = std::fs::remove_dir(path);
}

#[test]
fn kernel_debug_log_only_at_debug_level() {
    let kernel = |d: &e2e::Daemon| {
        d.records()
            .into_iter()
            .filter(|r| r["target"] == "enforcer::programs")
            .count()
    };
    let env = Env::new("kdebug", "enforce", "");
    let d = env.start_daemon_with_log(RULES, "info,enforcer=debug");
    assert_enforcing(&env, "with kernel debug logging");
    let mut d = d;
    d.wait_for("a kernel debug record", Duration::from_secs(10), |r| {
        r.iter().any(|r| {
            r["target"] == "enforcer::programs"
                && r["message"].as_str().is_some_and(|m| m.contains("8080"))
        })
    });
    d.stop(libc::SIGTERM);

    let mut d = env.start_daemon(RULES);
    assert_enforcing(&env, "without kernel debug logging");
    // The denied connect's event comes through once the daemon has read what the kernel
    // wrote for it; debug records would have been written at the same time.
    d.wait_for("the denial's event", Duration::from_secs(10), |r| {
        r.iter().any(|r| r["target"] == "egress_enforcer::event")
    });
    assert_eq!(kernel(&d), 0, "kernel debug messages are off at info level");
}

#[test]
fn prefix_and_any_port_rules_added_and_removed_by_a_reload_take_effect() {
    // The kernel leaves out lookups for kinds of rule that do not exist (`Config::skip`): the
    // first prefix or any-port rule must switch them back on, and the last one's removal
    // must not leave a stale allowance behind.
    let env = Env::new("skips", "enforce", "");
    let _d = env.start_daemon(RULES);
    let in_cidr = "tcp:198.18.1.7:8080";
    let any_port = "tcp:198.18.2.7:9999";
    let p = env.probe_in_cgroup(&[in_cidr, any_port]);
    assert_eq!((p.result(in_cidr), p.result(any_port)), ("EPERM", "EPERM"));

    let plain = base_config(&env, "enforce", &env.cgroup);
    let wider = plain.replace(
        "allow: {dnsServers: []}",
        "allow: {dnsServers: [], cidrs: [198.18.1.0/24, 198.18.2.7/32]}",
    );
    assert_ne!(plain, wider);
    rewrite_config(&env, &wider);
    env.wait_probe(in_cidr, "ok", Duration::from_secs(10));
    env.wait_probe(any_port, "ok", Duration::from_secs(10));
    assert_enforcing(&env, "with a prefix and an any-port rule");

    rewrite_config(&env, &plain);
    env.wait_probe(in_cidr, "EPERM", Duration::from_secs(10));
    env.wait_probe(any_port, "EPERM", Duration::from_secs(10));
    assert_enforcing(&env, "after they are removed again");
}
