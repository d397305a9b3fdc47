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

fn rewrite_config(env: &Env, yaml: &str) {
    std::fs::write(&env.config, yaml).expect("config");
}

fn base_config(env: &Env, mode: &str, cgroup: &str) -> String {
    format!(
        "mode: {mode}\ncgroups: [{cgroup}]\nbpffs: {}\nlog: {{format: json}}\n",
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
    assert!(
        err.contains(&format!("{}:5", env.config.display())),
        "{err}"
    );
    assert!(err.contains("mod"), "{err}");
}

#[test]
fn restart_with_incompatible_map_sizes_keeps_the_old_enforcement() {
    let env = Env::new("resize", "enforce", "");
    let d = env.start_daemon(RULES);
    d.stop(libc::SIGTERM);
    let cfg = base_config(&env, "enforce", &env.cgroup) + "maps: {exactRules: 1024}\n";
    rewrite_config(&env, &cfg);
    let out = run(env.cmd().args(["run", "--allow", "198.18.0.3:8080/tcp"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RULES_EXACT") && err.contains("1024"), "{err}");
    assert_enforcing(
        &env,
        "after a refused restart, the pinned policy is untouched",
    );
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
    d.wait_for("the reload", Duration::from_secs(10), |r| {
        r.iter().any(|r| r["message"] == "reloaded")
    });
    let p = env.probe_in_cgroup(&[ALLOWED, DENIED]);
    assert_eq!(p.result(DENIED), "ok", "audit mode after reload");
    assert!(
        env.counters()
            .contains_key(&("connect4".into(), "tcp".into(), "audit".into()))
    );
}

#[test]
fn cgroups_dropped_from_the_config_are_detached_on_restart() {
    let env = Env::new("regroup", "enforce", "");
    let d = env.start_daemon(RULES);
    assert_eq!(env.kernel_attached().len(), 4);
    d.stop(libc::SIGTERM);

    let other = format!("{}-b", env.cgroup);
    rewrite_config(&env, &base_config(&env, "enforce", &other));
    let d = env.start_daemon(RULES);
    assert!(
        env.kernel_attached().is_empty(),
        "old cgroup detached: {:?}",
        env.kernel_attached()
    );
    let links = env.inspect("links");
    let cgroups: Vec<&str> = links["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l["cgroup"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(cgroups, vec![format!("/{other}").as_str(); 4]);
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

    let d = env.start_daemon(RULES);
    assert_enforcing(&env, "without kernel debug logging");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(kernel(&d), 0, "kernel debug messages are off at info level");
}
