//! A world for DNS-aware mode: the workload's network namespace (the test's own, with the
//! target addresses on its `lo`) joined by a veth pair to a namespace that stands for the node,
//! where the daemon, its DNS proxy and the upstream DNS server (dnsmasq) run. Workloads resolve
//! through `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` puts in place, so real resolvers
//! (glibc's `getent`, curl, Python, dig) run unchanged.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Daemon, Env, Netns, run, spawn_daemon, sys};

/// The proxy's addresses, on the node's `lo`.
pub const PROXY4: &str = "198.18.20.53";
pub const PROXY6: &str = "fd00:20::53";
/// The upstream dnsmasq, on the node's `lo` (and the node's 127.0.0.53, as a resolved stub).
pub const UPSTREAM4: &str = "198.18.30.53";
pub const UPSTREAM6: &str = "fd00:30::53";
/// A second resolver on the node that workloads must never reach directly.
pub const ROGUE4: &str = "198.18.31.53";
/// Where `start_rotor` servers listen (port 53), on the node's `lo`.
pub const ROTOR4: &str = "198.18.32.53";
pub const ROTOR4_B: &str = "198.18.33.53";

/// Short lifetimes, for tests that watch learned rules expire.
pub const DNS_TIMING: &str = "minTtl: 1s, maxTtl: 30s, staleGrace: 3s";

const NODE_VETH4: &str = "198.18.10.1";
const NODE_VETH6: &str = "fd00:10::1";

fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// dnsmasq in the node namespace on port 53, logging every query it receives.
pub struct Upstream {
    child: Child,
    pub hosts: PathBuf,
    pub log: PathBuf,
}

impl Upstream {
    fn start(node: &str, dir: &Path, name: &str, listen: &[&str], extra: &[String]) -> Self {
        // Not next to the config: the daemon watches that directory, and a query log written
        // there would wake it on every query.
        let dir = dir.join("dnsmasq");
        std::fs::create_dir_all(&dir).expect("dnsmasq dir");
        let hosts = dir.join(format!("{name}-hosts"));
        let log = dir.join(format!("{name}-queries.log"));
        std::fs::write(&hosts, "").expect("hosts file");
        let _ignored = std::fs::remove_file(&log);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{node}"))
            .args([
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--pid-file=",
                "--log-queries=extra",
                "--local=/ee.test/",
                "--local-ttl=1",
                "--neg-ttl=1",
            ])
            .args(listen.iter().map(|a| format!("--listen-address={a}")))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--log-facility={}", log.display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (cargo xtask setup installs it)");
        let up = Self { child, hosts, log };
        let start = Instant::now();
        while !sys::listens_on(up.child.id(), 53).unwrap_or(false) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "dnsmasq {name} did not start listening"
            );
            thread::sleep(Duration::from_millis(20));
        }
        up
    }

    /// Replaces the records: `(name, ip)`; dnsmasq re-reads its hosts file on SIGHUP.
    pub fn set(&self, records: &[(&str, &str)]) {
        let text: String = records.iter().map(|(n, a)| format!("{a} {n}\n")).collect();
        std::fs::write(&self.hosts, text).expect("hosts file");
        let before = self.log_text().matches("read ").count();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        let start = Instant::now();
        while self.log_text().matches("read ").count() <= before {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "dnsmasq did not reload"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether a query for `name` reached this server.
    pub fn was_asked(&self, name: &str) -> bool {
        self.log_text()
            .lines()
            .any(|l| l.contains("query[") && l.contains(&format!(" {name} from")))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ignored = self.child.kill();
        let _ignored = self.child.wait();
    }
}

/// A running `ee-dns-rotor`, killed when dropped.
pub struct Rotor(Child);

impl Drop for Rotor {
    fn drop(&mut self) {
        let _ignored = self.0.kill();
        let _ignored = self.0.wait();
    }
}

pub struct DnsWorld {
    pub env: Env,
    pub node: Netns,
    pub upstream: Upstream,
    pub rogue: Upstream,
    resolv_dirs: Vec<PathBuf>,
    proxy_mode: bool,
}

impl DnsWorld {
    /// `dns` holds the `dns:` keys besides `mode` and `proxy` (e.g. [`DNS_TIMING`]),
    /// `proxy_extra` more `dns.proxy` keys (", key: value"), `extra` more config lines.
    pub fn new(test: &str, mode: &str, dns: &str, proxy_extra: &str, extra: &str) -> Self {
        let se_dir = std::env::temp_dir()
            .join(format!("ee-{test}-{}", std::process::id()))
            .join("se");
        // `dns` may choose the mode itself (resolve mode, for comparisons).
        let proxy_mode = !dns.contains("mode:") || dns.contains("mode: proxy");
        let mode_key = if dns.contains("mode:") {
            ""
        } else {
            "mode: proxy, "
        };
        // The servers workloads may ask (the proxy forwards to no other), and the daemon's
        // own resolver, unless the test says.
        let allow = if extra.contains("allow:") {
            String::new()
        } else {
            format!(
                "allow: {{dnsServers: [{UPSTREAM4}, '{UPSTREAM6}', 127.0.0.53, {ROTOR4}, {ROTOR4_B}]}}\n"
            )
        };
        let servers = if dns.contains("servers:") {
            String::new()
        } else {
            format!(", servers: ['{UPSTREAM4}']")
        };
        let config = format!(
            "{allow}dns: {{{mode_key}{dns}{servers}, proxy: {{address: {PROXY4}, address6: '{PROXY6}'{proxy_extra}}}}}\nserviceEntries: [{}]\n{extra}",
            se_dir.display()
        );
        let env = Env::new(test, mode, &config);
        std::fs::create_dir_all(&se_dir).expect("se dir");
        let node = Netns::new(&format!("{}-n", env.netns.name));
        let (n, w) = (node.name.as_str(), env.netns.name.as_str());
        // Interface names have at most 15 bytes and live in the namespaces (gone with them).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{}x{k}", std::process::id() % 1_000_000);
        let (veth_n, veth_w) = (format!("een{tag}"), format!("eew{tag}"));
        ip(&[
            "link", "add", &veth_n, "netns", n, "type", "veth", "peer", "name", &veth_w, "netns", w,
        ]);
        for (ns, dev, a4, a6) in [
            (n, &veth_n, NODE_VETH4, NODE_VETH6),
            (w, &veth_w, "198.18.10.2", "fd00:10::2"),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{a4}/24"), "dev", dev]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        for a in [PROXY4, UPSTREAM4, ROGUE4, ROTOR4, ROTOR4_B] {
            ip(&["-n", n, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        for a in [PROXY6, UPSTREAM6] {
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        }
        // The workload reaches the node's addresses through the veth, as a pod reaches its node.
        ip(&["-n", w, "route", "add", "default", "via", NODE_VETH4]);
        ip(&["-n", w, "-6", "route", "add", "default", "via", NODE_VETH6]);
        // app.ee.test is a CNAME for a name in another domain, as a CDN's would be.
        let upstream = Upstream::start(
            n,
            &env.dir,
            "upstream",
            &[UPSTREAM4, UPSTREAM6, "127.0.0.53"],
            &["--cname=app.ee.test,edge.cdnhost.test".to_owned()],
        );
        let rogue = Upstream::start(n, &env.dir, "rogue", &[ROGUE4], &[]);
        let mut world = Self {
            env,
            node,
            upstream,
            rogue,
            resolv_dirs: Vec::new(),
            proxy_mode,
        };
        world.set_resolv_conf(
            &world.env.netns.name.clone(),
            &format!("nameserver {UPSTREAM4}\n"),
        );
        world.set_resolv_conf(&world.node.name.clone(), "nameserver 127.0.0.53\n");
        world
    }

    /// A rotating-answer DNS server (`ee-dns-rotor`) in the node namespace on `listen:53`.
    pub fn start_rotor(&self, rotor_bin: &Path, listen: &str, args: &[&str]) -> Rotor {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node.name])
            .arg(rotor_bin)
            .args(["--listen", &format!("{listen}:53")])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("ee-dns-rotor");
        let start = Instant::now();
        // Up once it answers: a query from the node namespace, outside any enforced cgroup.
        loop {
            let out = run(Command::new("ip")
                .args(["netns", "exec", &self.node.name])
                .args([
                    "dig",
                    "+short",
                    "+tries=1",
                    "+time=1",
                    &format!("@{listen}"),
                    "probe.rotor.test",
                ]));
            if out.status.success() && !out.stdout.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "ee-dns-rotor did not answer"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Rotor(child)
    }

    /// A CDN-like host: `cdn.rot.test` (a ServiceEntry, port 8080) served by a rotating
    /// server whose every answer is a fresh address of 198.18.100.0/24 with TTL 0 or 1, all
    /// of them local in the workload's namespace; the workload resolves through it. Call before
    /// the daemon starts.
    pub fn rotating_cdn(&mut self, rotor_bin: &Path) -> Rotor {
        let rotor = self.start_rotor(
            rotor_bin,
            ROTOR4,
            &["--net", "198.18.100.0/24", "--ttl", "0-1"],
        );
        self.local_net("198.18.100.0/24");
        let ns = self.env.netns.name.clone();
        self.set_resolv_conf(&ns, &format!("nameserver {ROTOR4}\n"));
        self.env.write_se(
            "cdn.yaml",
            &crate::service_entry(
                "cdn",
                "hosts: [cdn.rot.test]\nports: [{number: 8080, name: p, protocol: TLS}]\nresolution: DNS",
            ),
        );
        rotor
    }

    /// `ee-dns-load resolve-connect` against `rotating_cdn`'s host, as the enforced workload.
    pub fn resolve_connect(&self, load_bin: &Path, iters: usize) -> Output {
        let load = load_bin.to_str().expect("utf-8 path");
        let n = iters.to_string();
        self.workload(&[
            load,
            "resolve-connect",
            "--name",
            "cdn.rot.test",
            "--port",
            "8080",
            "--iters",
            &n,
        ])
    }

    /// Makes every address of `net` local on the workload's `lo` (one listener on 0.0.0.0
    /// then accepts connections to any answer of a rotating server).
    pub fn local_net(&self, net: &str) {
        ip(&[
            "-n",
            &self.env.netns.name,
            "route",
            "add",
            "local",
            net,
            "dev",
            "lo",
        ]);
    }

    /// What `ip netns exec NS` shows as /etc/resolv.conf.
    pub fn set_resolv_conf(&mut self, ns: &str, text: &str) {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        std::fs::write(dir.join("resolv.conf"), text).expect("resolv.conf");
        if !self.resolv_dirs.contains(&dir) {
            self.resolv_dirs.push(dir);
        }
    }

    /// The daemon, started in the node namespace.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with_sockets(&[])
    }

    /// The daemon, passed `sockets` as systemd's socket activation passes them (descriptors
    /// from 3, `LISTEN_FDS`, and `LISTEN_PID` set to the daemon's own pid by a shell that
    /// `exec`s it).
    pub fn start_daemon_with_sockets(&self, sockets: &[std::os::fd::RawFd]) -> Daemon {
        self.start_daemon_as(&[], sockets)
    }

    /// The daemon, run through `wrapper` (e.g. setpriv with a capability set).
    pub fn start_daemon_as(&self, wrapper: &[String], sockets: &[std::os::fd::RawFd]) -> Daemon {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.node.name))
            .args(wrapper)
            .arg(crate::enforcer_bin())
            .arg("--config")
            .arg(&self.env.config)
            .arg("run")
            .env("RUST_LOG", "info");
        if !sockets.is_empty() {
            cmd.env("LISTEN_FDS", sockets.len().to_string());
            let fds = sockets.to_vec();
            // SAFETY: only dup2 between fork and exec (async-signal-safe); through high
            // numbers first, so that no source is overwritten before it is copied.
            unsafe {
                cmd.pre_exec(move || {
                    for (i, fd) in fds.iter().enumerate() {
                        if libc::dup2(*fd, 100 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    for i in 0..fds.len() {
                        if libc::dup2(100 + i as i32, 3 + i as i32) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::close(100 + i as i32);
                    }
                    Ok(())
                });
            }
        }
        let mut d = spawn_daemon(cmd);
        d.wait_ready();
        if self.proxy_mode {
            d.wait_for("the DNS proxy", Duration::from_secs(10), |r| {
                r.iter()
                    .any(|r| r["message"] == "DNS proxy answering (DNS-aware mode)")
            });
        }
        d
    }

    /// Runs `argv` in the enforced cgroup, in namespace `ns` (with its resolv.conf).
    pub fn run_in(&self, ns: &str, argv: &[&str]) -> Output {
        self.run_in_cgroup(&self.env.cgroup.clone(), ns, argv)
    }

    /// Runs `argv` in another enforced cgroup (a unit below the test's), in namespace `ns`.
    pub fn run_in_cgroup(&self, cgroup: &str, ns: &str, argv: &[&str]) -> Output {
        run(self
            .env
            .cmd()
            .args(["exec", "--cgroup", cgroup, "--", "ip", "netns", "exec", ns])
            .args(argv))
    }

    /// Runs `argv` as an enforced workload in its own network namespace.
    pub fn workload(&self, argv: &[&str]) -> Output {
        self.run_in(&self.env.netns.name.clone(), argv)
    }

    /// Runs `argv` as an enforced workload in the daemon's namespace (the systemd case).
    pub fn host_workload(&self, argv: &[&str]) -> Output {
        self.run_in(&self.node.name.clone(), argv)
    }

    /// The proxy's sockets (UDP and TCP on both addresses), bound in the node namespace as a
    /// `.socket` unit would hold them.
    pub fn proxy_sockets(&self) -> Vec<std::os::fd::OwnedFd> {
        let node = self.node.name.clone();
        thread::spawn(move || {
            let ns = sys::open_netns(&node).expect("node netns");
            sys::enter_netns(&ns).expect("setns");
            let mut out: Vec<std::os::fd::OwnedFd> = Vec::new();
            for a in [format!("{PROXY4}:15053"), format!("[{PROXY6}]:15053")] {
                out.push(std::net::UdpSocket::bind(&a).expect("bind udp").into());
                out.push(std::net::TcpListener::bind(&a).expect("bind tcp").into());
            }
            out
        })
        .join()
        .expect("binding thread")
    }

    /// Bytes waiting in the proxy's UDP receive queue (IPv4), from the node's /proc/net/udp.
    pub fn proxy_udp_queue(&self) -> u64 {
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.node.name,
            "cat",
            "/proc/net/udp",
        ]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // local_address ends in the port (hex); tx_queue:rx_queue
                (f.get(1)?.ends_with(&format!(":{:04X}", 15053))).then(|| {
                    let rx = f.get(4)?.split(':').nth(1)?;
                    u64::from_str_radix(rx, 16).ok()
                })?
            })
            .sum()
    }

    /// GET `path` from the daemon's endpoint, which listens in the node namespace.
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> String {
        let out = run(Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                "curl",
                "-sf",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{addr}{path}")));
        assert!(
            out.status.success(),
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `getent ahosts NAME` in the workload namespace: the addresses glibc returned.
    pub fn getent(&self, ns: &str, name: &str) -> Vec<String> {
        let out = self.run_in(ns, &["getent", "ahosts", name]);
        let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        addrs.dedup();
        addrs
    }
}

impl Drop for DnsWorld {
    fn drop(&mut self) {
        for d in &self.resolv_dirs {
            let _ignored = std::fs::remove_dir_all(d);
        }
    }
}
