//! The escape matrix (docs/threat-model.md): every way out of an enforced cgroup we know,
//! tried by `ee-escape` as root, as an unprivileged user and as an unprivileged user holding
//! CAP_NET_RAW, on IPv4 and IPv6, to a registered and to an unregistered destination. Every
//! path to an unregistered destination must fail and be counted; every registered one must
//! work (or be refused outright when its kind of socket is).

use std::{collections::BTreeMap, process::Command};

use e2e::{Env, crate_bin, run, service_entry};

/// Registered: 198.18.0.1 and fd00::1 (TCP 9000 and UDP 9000, and ICMP when ping is on).
const REGISTERED: [&str; 2] = ["198.18.0.1:9000", "[fd00::1]:9000"];
const UNREGISTERED: [&str; 2] = ["198.18.0.2:9000", "[fd00::2]:9000"];

/// As which user the attacker runs.
const USERS: [(&str, Option<&str>); 3] = [
    ("root", None),
    ("nobody", Some("65534")),
    ("nobody+net_raw", Some("65534:net_raw")),
];

/// Paths that the cgroup hooks decide per destination.
const DECIDED: &[&str] = &[
    "tcp",
    "udp",
    "mptcp",
    "tfo",
    "sendmmsg",
    "uring-connect",
    "uring-sendmsg",
];

/// Paths refused when the socket is created, whatever the destination.
const RAW: &[&str] = &["raw-udp", "raw-tcp", "raw-icmp", "ip-raw"];
const PACKET: &[&str] = &["packet-raw", "packet-dgram"];
const PING: &[&str] = &["ping-connect", "ping-sendto"];
/// Sockets made outside the cgroup: before the attacker joined it, or by another process.
const OUTSIDE: &[&str] = &["before-join", "before-join-udp", "scm-tcp", "scm-udp"];
/// UDP to the destination through an unregistered first hop (IPv4 LSRR, IPv6 segment
/// routing), set on the socket or (IPv4) given with the message.
const SOURCE_ROUTED: &[&str] = &["srcroute", "srcroute-cmsg"];

/// One entry per protocol: Istio allows a port number once per entry.
fn registry_yaml() -> String {
    ["TCP", "UDP"]
        .map(|p| {
            service_entry(
                &format!("registered-{}", p.to_lowercase()),
                &format!("hosts: [registered.test]\naddresses: [198.18.0.1, \"fd00::1\"]\nresolution: NONE\nlocation: MESH_EXTERNAL\nports:\n- {{number: 9000, name: p, protocol: {p}}}\n"),
            )
        })
        .join("---\n")
}

fn env(test: &str, allow: &str) -> Env {
    let env = Env::new(
        test,
        "enforce",
        &format!("allow: {{dnsServers: [], {allow}}}\n"),
    );
    env.write_se("registered.yaml", &registry_yaml());
    let cfg = std::fs::read_to_string(&env.config).expect("config")
        + &format!("serviceEntries: [{}]\n", env.dir.join("se").display());
    std::fs::write(&env.config, cfg).expect("config");
    env
}

fn attack(env: &Env, user: Option<&str>, paths: &[&str]) -> BTreeMap<String, String> {
    attack_from(env, &env.cgroup_path, user, paths)
}

/// [`attack`] from the cgroup at `cgroup`.
fn attack_from(
    env: &Env,
    cgroup: &std::path::Path,
    user: Option<&str>,
    paths: &[&str],
) -> BTreeMap<String, String> {
    let mut cmd = Command::new(crate_bin("ee-escape"));
    cmd.args(["--netns", &env.netns.name, "--join"]).arg(cgroup);
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    for p in paths {
        for a in REGISTERED.iter().chain(&UNREGISTERED) {
            cmd.arg(format!("{p}:{a}"));
        }
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "ee-escape failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Checks every attempt of `paths` against `want(path, registered, user)`.
fn expect(
    got: &BTreeMap<String, String>,
    user: &str,
    paths: &[&str],
    want: impl Fn(&str, bool) -> &'static str,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for p in paths {
        for (registered, addrs) in [(true, &REGISTERED), (false, &UNREGISTERED)] {
            for a in addrs {
                let key = format!("{p}:{a}");
                let w = want(p, registered);
                let g = got.get(&key).map_or("missing", String::as_str);
                if g != w {
                    wrong.push(format!("{user}: {key}: got {g}, want {w}"));
                }
            }
        }
    }
    wrong
}

fn count(c: &BTreeMap<(String, String, String), u64>, hook: &str, proto: &str, v: &str) -> u64 {
    c.get(&(hook.to_owned(), proto.to_owned(), v.to_owned()))
        .copied()
        .unwrap_or(0)
}

fn delta(
    before: &BTreeMap<(String, String, String), u64>,
    after: &BTreeMap<(String, String, String), u64>,
    hook: &str,
    proto: &str,
) -> u64 {
    count(after, hook, proto, "deny") - count(before, hook, proto, "deny")
}

/// With the defaults: raw, packet, ping and UDP-Lite sockets cannot be made; TCP, UDP and
/// their variants reach only registered destinations.
#[test]
fn default_config_closes_every_path() {
    let env = env("escape-default", "");
    let d = env.start_daemon(&[]);
    // Packet sockets need BPF LSM: what the daemon says about it must be what happens.
    let said = d
        .records()
        .iter()
        .find(|r| r["message"] == "protections")
        .map(|r| r["packet_sockets"].as_str().unwrap_or_default().to_owned())
        .expect("the daemon logs its protections");
    let lsm = said == "refused (BPF LSM)";
    let shown = env.inspect("protections")["protections"]["packet_sockets"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        shown.starts_with("NOT refused"),
        !lsm,
        "inspect says {shown:?}, the log {said:?}"
    );
    let mut all: Vec<&str> = DECIDED.to_vec();
    all.extend(
        RAW.iter()
            .chain(PACKET)
            .chain(PING)
            .chain(OUTSIDE)
            .chain(SOURCE_ROUTED),
    );
    all.push("udplite");
    let mut wrong = Vec::new();
    for (user, arg) in USERS {
        let before = env.counters();
        let got = attack(&env, arg, &all);
        let after = env.counters();
        wrong.extend(expect(&got, user, DECIDED, |_, reg| {
            if reg { "ok" } else { "EPERM" }
        }));
        wrong.extend(expect(&got, user, OUTSIDE, |_, reg| {
            if reg { "ok" } else { "EPERM" }
        }));
        wrong.extend(expect(&got, user, &["srcroute"], |_, _| "EPERM"));
        // Per message, Linux takes only IPv4 options (IPv6 accepts just the Mobile IPv6 type 2
        // header, which does not reroute, and refuses a segment route with EINVAL).
        for (a, want) in [
            (REGISTERED[0], "EPERM"),
            (UNREGISTERED[0], "EPERM"),
            (REGISTERED[1], "errno-22"),
            (UNREGISTERED[1], "errno-22"),
        ] {
            let key = format!("srcroute-cmsg:{a}");
            let g = got.get(&key).map_or("missing", String::as_str);
            if g != want {
                wrong.push(format!("{user}: {key}: got {g}, want {want}"));
            }
        }
        wrong.extend(expect(&got, user, RAW, |_, _| "EPERM"));
        wrong.extend(expect(&got, user, PING, |_, _| "EPERM"));
        wrong.extend(expect(&got, user, &["udplite"], |_, _| "EPERM"));
        if lsm || user == "nobody" {
            wrong.extend(expect(&got, user, PACKET, |_, _| "EPERM"));
        } else {
            // The gap the daemon reported: packet sockets reach anything.
            wrong.extend(expect(&got, user, PACKET, |_, _| "ok"));
        }
        // Counted: everything the enforcer refused (the kernel refuses raw and packet
        // sockets to a user without CAP_NET_RAW before any hook runs).
        let privileged = user != "nobody";
        let per_path = 4; // two families, two destinations
        let raw_refused = RAW.len() + if lsm { PACKET.len() } else { 0 };
        // Source routes: the setsockopt program runs before the kernel's own checks (4 for
        // everyone); per message, the kernel wants CAP_NET_RAW before the egress program sees
        // a packet, and the unregistered destination is refused by sendmsg4 first (1).
        let options = delta(&before, &after, "setsockopt", "other");
        let routed = delta(&before, &after, "egress", "other");
        let want_routed = u64::from(privileged);
        if options != 4 || routed != want_routed {
            wrong.push(format!(
                "{user}: source routes refused: setsockopt {options} (want 4), egress {routed} (want {want_routed})"
            ));
        }
        let checks = [
            (
                "sock_create",
                "raw",
                if privileged {
                    raw_refused * per_path
                } else {
                    0
                },
            ),
            ("sock_create", "icmp", PING.len() * per_path),
            ("sock_create", "other", per_path),
        ];
        for (hook, proto, want) in checks {
            let got = delta(&before, &after, hook, proto);
            if got != want as u64 {
                wrong.push(format!(
                    "{user}: {hook}/{proto} denials: got {got}, want {want}"
                ));
            }
        }
        // tcp, mptcp, tfo, uring-connect: one connect each per unregistered destination;
        // udp, uring-sendmsg one sendmsg, sendmmsg two.
        let connects =
            delta(&before, &after, "connect4", "tcp") + delta(&before, &after, "connect6", "tcp");
        let sends =
            delta(&before, &after, "sendmsg4", "udp") + delta(&before, &after, "sendmsg6", "udp");
        if connects != 8 || sends < 6 {
            wrong.push(format!(
                "{user}: connect denials {connects} (want 8), sendmsg denials {sends} (want >= 6)"
            ));
        }
        // Sockets from outside: decided by the programs on the cgroup root, two connects and
        // two sends per family. MPTCP connects through a subflow the kernel makes itself
        // (no creation hook sees it), so its denial is counted here too: 10.
        let foreign: u64 = [
            ("foreign_connect4", "tcp"),
            ("foreign_connect6", "tcp"),
            ("foreign_sendmsg4", "udp"),
            ("foreign_sendmsg6", "udp"),
        ]
        .iter()
        .map(|(h, p)| delta(&before, &after, h, p))
        .sum();
        if foreign != 10 {
            let changed: Vec<_> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .collect();
            wrong.push(format!(
                "{user}: denials of sockets from outside {foreign} (want 10); changed: {changed:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `allow.ping`: ping sockets work, and echo requests reach only registered addresses,
/// whether sent with connect() or sendto(), by root or by anyone in ping_group_range.
#[test]
fn ping_reaches_only_registered_addresses() {
    let env = env("escape-ping", "ping: true");
    let _d = env.start_daemon(&[]);
    let mut wrong = Vec::new();
    for (user, arg) in USERS {
        let before = env.counters();
        let got = attack(&env, arg, PING);
        let after = env.counters();
        wrong.extend(expect(&got, user, &["ping-connect"], |_, reg| {
            if reg { "ok" } else { "EPERM" }
        }));
        // IPv6 ping's sendmsg drops the egress verdict's error (icmpv6_push_pending_frames
        // ignores what ip6_push_pending_frames returns): the echo is dropped, the call succeeds.
        for (a, reg) in REGISTERED
            .iter()
            .map(|a| (a, true))
            .chain(UNREGISTERED.iter().map(|a| (a, false)))
        {
            let key = format!("ping-sendto:{a}");
            let want = match (reg, a.starts_with('[')) {
                (true, _) => "ok",
                (false, false) => "EPERM",
                (false, true) => "lost",
            };
            let g = got.get(&key).map_or("missing", String::as_str);
            if g != want {
                wrong.push(format!("{user}: {key}: got {g}, want {want}"));
            }
        }
        // connect: the connect hooks; sendto: the egress program. Two families each.
        let connects =
            delta(&before, &after, "connect4", "icmp") + delta(&before, &after, "connect6", "icmp");
        let echoes = delta(&before, &after, "egress", "icmp");
        if connects != 2 || echoes != 2 {
            wrong.push(format!(
                "{user}: ping denials: connect {connects}, egress {echoes} (want 2 and 2)"
            ));
        }
    }
    // Raw sockets stay refused: ping does not open them.
    let got = attack(&env, None, &["raw-icmp"]);
    wrong.extend(expect(&got, "root", &["raw-icmp"], |_, _| "EPERM"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `foreignSockets: off` gives up exactly what it says: sockets from outside reach anything,
/// sockets made inside stay enforced.
#[test]
fn foreign_sockets_off_leaves_only_outside_sockets_unchecked() {
    let env = env("escape-foreign-off", "");
    let cfg = std::fs::read_to_string(&env.config).expect("config") + "foreignSockets: off\n";
    std::fs::write(&env.config, cfg).expect("config");
    let _d = env.start_daemon(&[]);
    let shown = env.inspect("protections")["protections"]["outside_sockets"].clone();
    assert_eq!(shown, "NOT checked (foreignSockets: off)");
    let got = attack(&env, None, &["before-join", "scm-udp", "tcp"]);
    let mut wrong = expect(&got, "root", &["before-join", "scm-udp"], |_, _| "ok");
    wrong.extend(expect(&got, "root", &["tcp"], |_, reg| {
        if reg { "ok" } else { "EPERM" }
    }));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `allow.rawSockets`: raw and packet sockets can be made, and their traffic is not checked
/// (documented), while TCP and UDP stay enforced.
#[test]
fn raw_sockets_switch_opens_only_raw_sockets() {
    let env = env("escape-raw", "rawSockets: true");
    let _d = env.start_daemon(&[]);
    let got = attack(
        &env,
        None,
        &["raw-udp", "ip-raw", "packet-dgram", "tcp", "ping-sendto"],
    );
    let mut wrong = expect(
        &got,
        "root",
        &["raw-udp", "ip-raw", "packet-dgram"],
        |_, _| "ok",
    );
    wrong.extend(expect(&got, "root", &["tcp"], |_, reg| {
        if reg { "ok" } else { "EPERM" }
    }));
    wrong.extend(expect(&got, "root", &["ping-sendto"], |_, _| "EPERM"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A socket made before joining keeps being refused while the daemon restarts with other map
/// sizes (a migration to new maps, the programs on the cgroup root included): no datagram to
/// the unregistered address gets out at any moment, and the registered one keeps working.
#[test]
fn sockets_from_outside_stay_refused_across_a_migration() {
    use std::io::{BufRead as _, BufReader};
    let env = env("escape-migrate", "");
    let d = env.start_daemon(&[]);
    let stop = env.dir.join("stop-escape");
    let mut child = Command::new(crate_bin("ee-escape"))
        .args(["--netns", &env.netns.name, "--join"])
        .arg(&env.cgroup_path)
        .arg("--until")
        .arg(&stop)
        .arg(format!("before-join-udp:{}", UNREGISTERED[0]))
        .arg(format!("before-join-udp:{}", REGISTERED[0]))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ee-escape");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("joined"),
        "the attacker did not start"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    d.stop(libc::SIGTERM);
    let cfg =
        std::fs::read_to_string(&env.config).expect("config") + "maps: {nativeSockets: 128}\n";
    std::fs::write(&env.config, cfg).expect("config");
    let mut d = env.start_daemon(&[]);
    d.wait_for("the migration", std::time::Duration::from_secs(10), |r| {
        r.iter().any(|r| r["message"] == "migrated to new maps")
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::write(&stop, "").expect("stop file");
    let tallies: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().expect("ee-escape").success());
    let of = |op: &str| -> Vec<String> {
        tallies
            .iter()
            .filter(|l| l.starts_with(&format!("{op} ")))
            .cloned()
            .collect()
    };
    let unregistered = format!("before-join-udp:{}", UNREGISTERED[0]);
    let registered = format!("before-join-udp:{}", REGISTERED[0]);
    let bad = of(&unregistered);
    assert!(
        bad.len() == 1 && bad[0].starts_with(&format!("{unregistered} EPERM ")),
        "the unregistered address, across the restart: {tallies:?}"
    );
    let good = of(&registered);
    assert!(
        good.len() == 1 && good[0].starts_with(&format!("{registered} ok ")),
        "the registered address, across the restart: {tallies:?}"
    );
}

/// A cgroup that a reload adds to `cgroups`: before it, its tasks' sockets from outside go
/// through (the cgroup is not enforced, and the programs on the cgroup root remember that
/// answer per cgroup); after it, without a restart, they are refused. The daemon's change of
/// the enforced set must retire the remembered answer (docs/architecture.md, "Sockets from
/// outside").
#[test]
fn a_cgroup_enforced_by_a_reload_refuses_its_tasks_sockets_from_outside() {
    let env = env("escape-late", "");
    let late = format!("{}-late", env.cgroup);
    let late_path = e2e::cgroup2_mount().join(&late);
    std::fs::create_dir_all(&late_path).expect("the late cgroup");
    let mut d = env.start_daemon(&[]);
    let paths = ["before-join-udp"];
    let before = attack_from(&env, &late_path, None, &paths);
    let wrong = expect(&before, "before the reload", &paths, |_, _| "ok");
    let cfg = std::fs::read_to_string(&env.config)
        .expect("config")
        .replace(
            &format!("cgroups: [{}]", env.cgroup),
            &format!("cgroups: [{}, {late}]", env.cgroup),
        );
    assert!(
        cfg.contains(&late),
        "the config names the cgroups as expected"
    );
    // Renamed into place: the file watcher must never read half of it.
    let tmp = env.dir.join("config.yaml.new");
    std::fs::write(&tmp, cfg).expect("config");
    std::fs::rename(&tmp, &env.config).expect("config");
    d.signal(libc::SIGHUP);
    // A reload that read the new file has ended (and with it the change of the enforced set
    // and of its generation), whether the file watcher's or this signal's.
    d.wait_for(
        "a reload after SIGHUP",
        std::time::Duration::from_secs(10),
        |r| {
            let hup = r.iter().position(|r| r["message"] == "SIGHUP: reloading");
            hup.is_some_and(|i| r[i..].iter().any(|r| r["message"] == "reloaded"))
        },
    );
    let out = run(Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&late_path));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sendmsg4"),
        "the reload did not attach to {late}: {out:?}"
    );
    let after = attack_from(&env, &late_path, None, &paths);
    let mut wrong = wrong;
    wrong.extend(expect(
        &after,
        "after the reload",
        &paths,
        |_, registered| {
            if registered { "ok" } else { "EPERM" }
        },
    ));
    drop(d);
    let _ignored = e2e::remove_cgroup_tree(&late_path);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
