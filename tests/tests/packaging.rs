//! The shipped systemd unit is valid for systemd itself.

use std::process::Command;

use e2e::{enforcer_bin, run};

#[test]
fn systemd_unit_verifies() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/systemd/egress-enforcer.service");
    let text = std::fs::read_to_string(&unit).expect("the unit file");
    for key in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "ReadWritePaths=/sys/fs/bpf /sys/fs/cgroup",
    ] {
        assert!(text.contains(key), "{} lacks {key}", unit.display());
    }
    // Verify against the binary just built, so that ExecStart points at something real.
    let dir = std::env::temp_dir().join(format!("ee-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("egress-enforcer.service");
    let bin = enforcer_bin();
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/egress-enforcer", &bin.display().to_string()),
    )
    .expect("unit copy");
    // The socket unit of DNS-aware mode, verified with the service it starts.
    let socket = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/systemd/egress-enforcer.socket");
    let socket_text = std::fs::read_to_string(&socket).expect("the socket unit");
    for key in [
        "ListenDatagram=127.0.0.1:15053",
        "ListenStream=127.0.0.1:15053",
        "Service=egress-enforcer.service",
    ] {
        assert!(
            socket_text.contains(key),
            "{} lacks {key}",
            socket.display()
        );
    }
    let socket_copy = dir.join("egress-enforcer.socket");
    std::fs::write(&socket_copy, socket_text).expect("socket copy");
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .arg(&socket_copy));
    let _ = std::fs::remove_dir_all(&dir);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{report}"
    );
    // Warnings (unknown keys, bad values) do not fail verify: none may be printed.
    let warnings: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("egress-enforcer.service") || l.contains("egress-enforcer.socket"))
        .collect();
    assert!(
        warnings.is_empty(),
        "systemd-analyze verify warned:\n{report}"
    );
}

/// The unit's `CapabilityBoundingSet=`, as setpriv names the capabilities.
fn unit_capabilities() -> Vec<String> {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/systemd/egress-enforcer.service");
    let text = std::fs::read_to_string(unit).expect("the unit file");
    text.lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// systemd cannot run here (PID 1 is not systemd), so the unit's capability set is given to
/// the daemon directly: it must create its (missing) cgroup, attach and enforce with it.
#[test]
fn systemd_unit_capabilities_suffice() {
    use e2e::{Env, only_capabilities, spawn_daemon};
    use std::time::Duration;

    let caps = unit_capabilities();
    let env = Env::new("unit-caps", "enforce", "");
    env.premount_bpffs();
    // Directly below the cgroup2 root, like the default `cgroups: [egress-enforcer]`.
    let cgroup = format!("ee-unit-{}", std::process::id());
    let root = e2e::cgroup2_mount();
    let cfg = std::fs::read_to_string(&env.config)
        .expect("config")
        .replace(
            &format!("cgroups: [{}]", env.cgroup),
            &format!("cgroups: [{cgroup}]"),
        );
    std::fs::write(&env.config, cfg).expect("config");
    assert!(!root.join(&cgroup).exists());
    let start = |caps: &[String]| {
        let wrapper = only_capabilities(caps);
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(enforcer_bin())
            .arg("--config")
            .arg(&env.config)
            .args(["run", "--allow", "198.18.0.1:8080/tcp"])
            .env("RUST_LOG", "info");
        spawn_daemon(cmd)
    };
    // Where the cgroup2 root is not writable by its owner (hybrid hierarchies), creating a
    // cgroup takes CAP_DAC_OVERRIDE: without it the daemon must refuse to start.
    use std::os::unix::fs::PermissionsExt as _;
    let root_mode = std::fs::metadata(&root)
        .expect("cgroup root")
        .permissions()
        .mode();
    if root_mode & 0o200 == 0 {
        let fewer: Vec<String> = caps
            .iter()
            .filter(|c| *c != "dac_override")
            .cloned()
            .collect();
        let mut d = start(&fewer);
        // wait_exit also joins the log reader: every line is in `lines()` afterwards.
        let status = d
            .wait_exit(Duration::from_secs(30))
            .expect("the daemon exits without CAP_DAC_OVERRIDE");
        assert!(
            !status.success(),
            "started without CAP_DAC_OVERRIDE on a 0{root_mode:o} root"
        );
        assert!(
            d.lines().join("\n").contains("creating cgroup"),
            "{:?}",
            d.lines()
        );
    }
    let mut d = start(&caps);
    d.wait_ready();
    let p = env.probe_in_cgroup_named(&cgroup, &["tcp:198.18.0.1:8080", "tcp:198.18.0.3:8080"]);
    assert_eq!(p.result("tcp:198.18.0.1:8080"), "ok");
    assert_eq!(p.result("tcp:198.18.0.3:8080"), "EPERM");
    d.stop(libc::SIGTERM);
    let _ignored = run(env.cmd().args(["uninstall", "--force"]));
    for _ in 0..50 {
        if std::fs::remove_dir(root.join(&cgroup)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// DNS-aware mode (the default) with exactly the unit's capabilities: the DNS programs attach
/// (one of them a cgroup_skb program), the proxy registers its socket with the kernel, and a
/// workload's query is answered and allowed.
#[test]
fn systemd_unit_capabilities_suffice_for_dns_aware_mode() {
    use e2e::dnsworld::{DNS_TIMING, DnsWorld};

    let w = DnsWorld::new("unit-caps-dns", "enforce", DNS_TIMING, "", "");
    w.env.premount_bpffs();
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se(
        "api.yaml",
        &e2e::service_entry(
            "api",
            "hosts: [api.ee.test]\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: DNS",
        ),
    );
    let _d = w.start_daemon_as(&e2e::only_capabilities(&unit_capabilities()), &[]);
    let ns = w.env.netns.name.clone();
    assert_eq!(w.getent(&ns, "api.ee.test"), ["198.18.0.1"]);
}
