//! Harness for the end-to-end suite: every test gets its own network namespace (test addresses
//! on its `lo`), its own cgroup, its own bpffs mount for pins, and a real `egress-enforcer`
//! daemon. Everything is torn down in `Drop`, so a failing test cleans up too.
//!
//! The tests need root and a BPF-capable kernel; without them they fail (never skip).

pub mod dnsworld;
pub mod fake_apiserver;
pub mod sys;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Addresses put on the test namespace's `lo`; traffic only ever goes to these (and loopback).
pub const NETNS_ADDRS: &[&str] = &[
    "198.18.0.1/32",
    "198.18.0.2/32",
    "198.18.0.3/32",
    "198.18.1.7/32",
    "198.18.2.7/32",
    "fd00::1/128",
    "fd00::2/128",
    "fd00:1::5/128",
    // Other /16s than the addresses above (CIDR rules are skipped by region).
    "198.19.0.7/32",
    "fd01::7/128",
    "198.18.0.53/32",
    "198.18.0.54/32",
    // The cloud metadata address, only ever inside the test namespace.
    "169.254.169.254/32",
];

fn target_dir() -> PathBuf {
    // <target>/debug/deps/<test binary>
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// The binary under test: `EE_BIN`, else `egress-enforcer` next to this test's target dir.
pub fn enforcer_bin() -> PathBuf {
    let p = std::env::var_os("EE_BIN")
        .map_or_else(|| target_dir().join("egress-enforcer"), PathBuf::from);
    assert!(
        p.exists(),
        "{} not found: build it first (`cargo xtask test` does)",
        p.display()
    );
    p
}

pub fn probe_bin() -> PathBuf {
    let p = target_dir().join("ee-probe");
    assert!(
        p.exists(),
        "{} not found: build the e2e crate's binaries",
        p.display()
    );
    p
}

/// A binary of this crate, built next to the test binaries.
pub fn crate_bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the e2e crate's binaries",
        p.display()
    );
    p
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the end-to-end tests load BPF programs, create cgroups and network namespaces: run them \
         as root (cargo xtask test checks this up front)"
    );
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .expect("no cgroup2 mount: the suite needs cgroup v2")
}

/// A network namespace with the test addresses on its `lo`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let _ignored = run(Command::new("ip").args(["netns", "del", name]));
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Self {
            name: name.to_owned(),
        };
        run_ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        for a in NETNS_ADDRS {
            let mut args = vec!["-n", name, "addr", "add", a, "dev", "lo"];
            if a.contains(':') {
                args.push("nodad");
            }
            run_ok(Command::new("ip").args(&args));
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ignored = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A running daemon whose stderr (JSON log lines) is collected in the background.
pub struct Daemon {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// JSON log records (non-JSON lines are ignored).
    pub fn records(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Deny/audit event records.
    pub fn events(&self) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["target"] == "egress_enforcer::event")
            .collect()
    }

    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        loop {
            if pred(&self.records()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited ({status}) while waiting for {what}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                self.lines().join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_ready(&mut self) {
        self.wait_for("the daemon to enforce", Duration::from_secs(30), |r| {
            r.iter().any(|r| r["message"] == "enforcing")
        });
    }

    /// Where the daemon serves /healthz, /readyz and /metrics (from its start-up log).
    pub fn http_addr(&mut self) -> std::net::SocketAddr {
        self.wait_for("the endpoint address", Duration::from_secs(10), |r| {
            r.iter().any(|r| r["listen"].is_string())
        });
        self.records()
            .iter()
            .find_map(|r| r["listen"].as_str()?.parse().ok())
            .expect("a listen address in the log")
    }

    /// Waits up to `timeout` for the process to exit; once it has, every line it wrote is in
    /// `lines()`. `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                if let Some(reader) = self.reader.take() {
                    let _ignored = reader.join();
                }
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn stop(mut self, sig: i32) -> std::process::ExitStatus {
        self.signal(sig);
        self.child.wait().expect("wait for daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ignored = self.child.kill();
            let _ignored = self.child.wait();
        }
    }
}

/// Result of one probe run: its pid and one result per operation.
#[derive(Debug)]
pub struct Probe {
    pub pid: u32,
    pub results: Vec<(String, String)>,
}

impl Probe {
    pub fn result(&self, op: &str) -> &str {
        self.results.iter().find(|(o, _)| o == op).map_or_else(
            || panic!("no result for {op} in {self:?}"),
            |(_, r)| r.as_str(),
        )
    }
}

pub fn parse_probe(stdout: &str) -> Probe {
    let mut pid = 0;
    let mut results = Vec::new();
    for line in stdout.lines() {
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.trim().parse().expect("probe pid");
        } else if line == "started" {
        } else if let Some((op, r)) = line.rsplit_once(' ') {
            results.push((op.to_owned(), r.to_owned()));
        }
    }
    Probe { pid, results }
}

/// A probe looping over its operations until `finish`.
pub struct LoopProbe {
    child: Child,
    reader: BufReader<std::process::ChildStdout>,
    stop: PathBuf,
}

impl LoopProbe {
    /// Stops the loop and returns its tallies: (op, "result=count,...").
    pub fn finish(mut self) -> Vec<(String, String)> {
        use std::io::Read as _;
        std::fs::write(&self.stop, b"stop").expect("stop file");
        let mut out = String::new();
        let _ignored = self.reader.read_to_string(&mut out);
        let status = self.child.wait().expect("wait probe");
        assert!(status.success(), "probe loop failed: {status}");
        parse_probe(&out).results
    }
}

impl LoopProbe {
    /// Stops the loop and asserts that each `(op, result)` pair held on every iteration
    /// `during` what the test did meanwhile (one result only, e.g. `ok=812`).
    pub fn finish_steady(self, want: &[(&str, &str)], during: &str) {
        let results = self.finish();
        for (op, result) in want {
            let tally = results
                .iter()
                .find(|(o, _)| o == op)
                .map(|(_, r)| r.as_str())
                .unwrap_or_default();
            assert!(
                tally.starts_with(&format!("{result}=")) && !tally.contains(','),
                "{op} {during}: {tally} (want only {result})"
            );
        }
    }
}

impl Drop for LoopProbe {
    fn drop(&mut self) {
        let _ignored = std::fs::write(&self.stop, b"stop");
        let _ignored = self.child.wait();
    }
}

/// A real DNS server (dnsmasq) on 127.0.0.1 for the daemon's lookups, answering from a hosts
/// file the test rewrites. Names under `ee.test` that are not in the file get NXDOMAIN.
pub struct Dns {
    pub port: u16,
    hosts: PathBuf,
    child: Child,
}

impl Dns {
    /// Test server: names under `ee.test` only, `ttl_secs` for answers and NXDOMAIN.
    pub fn start(dir: &Path, ttl_secs: u32) -> Self {
        Self::start_with(dir, ttl_secs, &["ee.test"])
            .expect("dnsmasq (installed by cargo xtask setup)")
    }

    /// A dnsmasq on a free port of 127.0.0.1 that answers only from its hosts file in `dir`
    /// and with NXDOMAIN for other names under `local_domains`; it forwards nothing.
    pub fn start_with(dir: &Path, ttl_secs: u32, local_domains: &[&str]) -> anyhow::Result<Self> {
        let hosts = dir.join("dns-hosts");
        if !hosts.exists() {
            std::fs::write(&hosts, "")?;
        }
        // A free port: bind, read it, release, and let dnsmasq bind it. Another process may
        // take it in between (tests run in parallel): then dnsmasq exits, or the port answers
        // but is not dnsmasq's, and the next port is tried.
        for _ in 0..10 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--user=root",
                    "--pid-file=",
                    "--cache-size=10000",
                    "--dns-forward-max=1000",
                ])
                .args(local_domains.iter().map(|d| format!("--local=/{d}/")))
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", hosts.display()))
                .arg(format!("--local-ttl={ttl_secs}"))
                .arg(format!("--neg-ttl={ttl_secs}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting dnsmasq: {e}"))?;
            let mut dns = Self {
                port,
                hosts: hosts.clone(),
                child,
            };
            if dns.wait_listening()? {
                return Ok(dns);
            }
        }
        anyhow::bail!("dnsmasq found no free port in 10 tries")
    }

    /// Waits until this dnsmasq listens on its TCP port; `false` if it exited (port taken).
    fn wait_listening(&mut self) -> anyhow::Result<bool> {
        let start = Instant::now();
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            if sys::listens_on(self.child.id(), self.port)? {
                return Ok(true);
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "dnsmasq did not start listening on port {}",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces all records: `(name, ip)` pairs; dnsmasq re-reads the file on SIGHUP.
    pub fn set(&self, records: &[(&str, &str)]) {
        let text: String = records
            .iter()
            .map(|(n, ip)| format!("{ip} {n}\n"))
            .collect();
        std::fs::write(&self.hosts, text).expect("hosts file");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        thread::sleep(Duration::from_millis(50));
    }

    /// Simulates an outage (the server stops answering) and its end.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Config lines pointing the daemon at this server, with short TTLs for tests.
    pub fn config(&self, min_ttl: &str, max_ttl: &str, grace: &str) -> String {
        format!(
            "dns: {{mode: resolve, servers: ['127.0.0.1:{}'], minTtl: {min_ttl}, maxTtl: {max_ttl}, staleGrace: {grace}}}\n",
            self.port
        )
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.pause(false);
        let _ignored = self.child.kill();
        let _ignored = self.child.wait();
    }
}

/// setpriv's arguments to run a command as root with a bounding set of exactly `caps`
/// (setpriv's names, e.g. `net_admin`): what a container with `drop: [ALL]` and `add:` or a
/// unit's `CapabilityBoundingSet=` leaves the daemon.
pub fn only_capabilities(caps: &[String]) -> Vec<String> {
    let bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".to_owned(),
        format!("--bounding-set=-all{bounding}"),
        "--inh-caps=-all".to_owned(),
    ]
}

/// Starts a daemon command (of any wrapping) with its log records captured; does not wait.
pub fn spawn_daemon(mut cmd: Command) -> Daemon {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn daemon");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = Arc::clone(&lines);
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    Daemon {
        child,
        lines,
        reader: Some(reader),
    }
}

/// One test's world: netns, cgroup, bpffs mount, config file, daemon.
pub struct Env {
    pub name: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup: String,
    pub cgroup_path: PathBuf,
    pub config: PathBuf,
    pub netns: Netns,
}

impl Env {
    /// `mode` is `enforce` or `audit`; `extra` is appended to the generated config YAML.
    pub fn new(test: &str, mode: &str, extra: &str) -> Self {
        require_root();
        let pid = std::process::id();
        let name = format!("ee-{test}-{pid}");
        let dir = std::env::temp_dir().join(&name);
        let _ignored = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bpffs = dir.join("bpffs");
        let cgroup = format!("ee-e2e/{name}");
        let cgroup_path = cgroup2_mount().join(&cgroup);
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "mode: {mode}\ncgroups: [{cgroup}]\nbpffs: {}\nlog: {{format: json}}\n{}{}{}{}{extra}",
                bpffs.display(),
                // Each daemon keeps its observations in its own directory, saved often.
                if extra.contains("learn:") {
                    String::new()
                } else {
                    format!(
                        "learn: {{store: {}, saveEvery: 1s}}\n",
                        dir.join("observations.json").display()
                    )
                },
                // Tests run in parallel: each daemon's endpoint gets a free port of its own.
                if extra.contains("http:") {
                    ""
                } else {
                    "http: {listen: '127.0.0.1:0'}\n"
                },
                // Keep the host's resolv.conf out of the rule set unless a test sets `allow:`.
                if extra.contains("allow:") {
                    ""
                } else {
                    "allow: {dnsServers: []}\n"
                },
                // The daemons of parallel tests share the host's namespace: resolve mode
                // unless a test chooses (DNS-aware mode's tests have namespaces of their own).
                if extra.contains("dns:") {
                    ""
                } else {
                    "dns: {mode: resolve}\n"
                }
            ),
        )
        .expect("write config");
        let netns = Netns::new(&name);
        Self {
            name,
            dir,
            bpffs,
            cgroup,
            cgroup_path,
            config,
            netns,
        }
    }

    /// Mounts this test's bpffs before the daemon starts, as a host provides one (systemd
    /// mounts /sys/fs/bpf at boot); a daemon without CAP_SYS_ADMIN cannot mount its own.
    pub fn premount_bpffs(&self) {
        std::fs::create_dir_all(&self.bpffs).expect("bpffs dir");
        let dir = std::ffi::CString::new(self.bpffs.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: valid NUL-terminated strings; no data.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                dir.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount bpffs: {}", std::io::Error::last_os_error());
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(enforcer_bin());
        c.arg("--config").arg(&self.config);
        c
    }

    pub fn start_daemon(&self, allow: &[&str]) -> Daemon {
        self.start_daemon_with_log(allow, "info")
    }

    /// Starts the daemon with `RUST_LOG` set to `filter`.
    pub fn start_daemon_with_log(&self, allow: &[&str], filter: &str) -> Daemon {
        let mut cmd = self.cmd();
        cmd.arg("run");
        for a in allow {
            cmd.args(["--allow", a]);
        }
        cmd.env("RUST_LOG", filter);
        let mut d = spawn_daemon(cmd);
        d.wait_ready();
        d
    }

    fn probe_args(&self, ops: &[&str]) -> Vec<String> {
        let mut a = vec![
            "--netns".to_owned(),
            self.netns.name.clone(),
            "--serve".to_owned(),
        ];
        a.extend(ops.iter().map(|s| (*s).to_owned()));
        a
    }

    /// Runs the probe inside the enforced cgroup through `egress-enforcer exec`.
    pub fn probe_in_cgroup(&self, ops: &[&str]) -> Probe {
        self.probe_in_cgroup_named(&self.cgroup, ops)
    }

    /// Runs the probe inside another enforced cgroup of this test's daemon.
    pub fn probe_in_cgroup_named(&self, cgroup: &str, ops: &[&str]) -> Probe {
        let out = run(self
            .cmd()
            .args(["exec", "--cgroup", cgroup, "--"])
            .arg(probe_bin())
            .args(self.probe_args(ops)));
        assert!(
            out.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_probe(&String::from_utf8_lossy(&out.stdout))
    }

    /// Runs the probe in the test process's own cgroup (not enforced).
    pub fn probe_outside(&self, ops: &[&str]) -> Probe {
        let out = run(Command::new(probe_bin()).args(self.probe_args(ops)));
        assert!(
            out.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_probe(&String::from_utf8_lossy(&out.stdout))
    }

    /// Starts a looping probe in the cgroup, returning once it is running.
    pub fn probe_loop(&self, ops: &[&str]) -> LoopProbe {
        self.probe_loop_in(&self.cgroup, ops, true)
    }

    /// Starts a looping probe in another enforced cgroup. Only one probe in the namespace
    /// can `serve` (listen on the test addresses); the others connect to it.
    pub fn probe_loop_in(&self, cgroup: &str, ops: &[&str], serve: bool) -> LoopProbe {
        let stop = self
            .dir
            .join(format!("stop-{}-{}", cgroup.replace('/', "_"), ops.len()));
        let _ignored = std::fs::remove_file(&stop);
        let mut args = self.probe_args(ops);
        if !serve {
            args.retain(|a| a != "--serve");
        }
        args.extend(["--until".to_owned(), stop.display().to_string()]);
        let mut child = self
            .cmd()
            .args(["exec", "--cgroup", cgroup, "--"])
            .arg(probe_bin())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn probe loop");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("read probe");
            assert!(n > 0, "probe loop exited before starting");
            if line.trim() == "started" {
                break;
            }
        }
        LoopProbe {
            child,
            reader,
            stop,
        }
    }

    /// Writes a ServiceEntry file into `<dir>/se/` (created), the directory tests point
    /// `serviceEntries` at.
    pub fn write_se(&self, file: &str, yaml: &str) {
        let dir = self.dir.join("se");
        std::fs::create_dir_all(&dir).expect("se dir");
        // Write then rename, as a careful operator (or a ConfigMap update) would.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write se");
        std::fs::rename(&tmp, dir.join(file)).expect("rename se");
    }

    pub fn remove_se(&self, file: &str) {
        std::fs::remove_file(self.dir.join("se").join(file)).expect("remove se");
    }

    /// Repeats the probe until `op` gives `want` (rules follow DNS and files asynchronously).
    pub fn wait_probe(&self, op: &str, want: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.probe_in_cgroup(&[op]);
            if got.result(op) == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "{op} still gives {} (want {want}) after {timeout:?}",
                got.result(op)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn inspect(&self, what: &str) -> Value {
        let out = run(self.cmd().args(["inspect", what, "--json"]));
        assert!(
            out.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("inspect JSON")
    }

    /// One string field of every row of `inspect <what>`, e.g. `column("links", "hook")`.
    pub fn column(&self, what: &str, field: &str) -> Vec<String> {
        self.inspect(what)[what]
            .as_array()
            .unwrap_or_else(|| panic!("inspect {what} has no list"))
            .iter()
            .map(|row| row[field].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Non-zero counters as (hook, proto, verdict) -> count.
    pub fn counters(&self) -> std::collections::BTreeMap<(String, String, String), u64> {
        let v = self.inspect("stats");
        v["stats"]["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .map(|c| {
                (
                    (
                        c["hook"].as_str().unwrap_or_default().to_owned(),
                        c["proto"].as_str().unwrap_or_default().to_owned(),
                        c["verdict"].as_str().unwrap_or_default().to_owned(),
                    ),
                    c["count"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Attach types of the programs on our cgroup according to the kernel (bpftool), not our
    /// pins.
    pub fn kernel_attached(&self) -> Vec<String> {
        attached_programs(&self.cgroup_path)
    }
}

/// Attach types of the programs attached to the cgroup at `path`, as bpftool reports them. A
/// bpftool failure fails the test: "nothing attached" must never come from a broken tool.
pub fn attached_programs(path: &Path) -> Vec<String> {
    let out = run(Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bpftool cgroup show {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // bpftool prints nothing at all for a cgroup without programs.
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("bpftool output is not JSON ({e}): {text}"));
    v.as_array()
        .unwrap_or_else(|| panic!("bpftool output is not a list: {text}"))
        .iter()
        .map(|p| {
            p["attach_type"]
                .as_str()
                .unwrap_or_else(|| panic!("no attach_type in {p}"))
                .to_owned()
        })
        .collect()
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ignored = run(self.cmd().args(["uninstall", "--force"]));
        if let Ok(c) = std::ffi::CString::new(self.bpffs.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ignored = std::fs::remove_dir_all(&self.dir);
        // The cgroup can only go once its processes have exited.
        for _ in 0..50 {
            if remove_cgroup_tree(&self.cgroup_path).is_ok() || !self.cgroup_path.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes a cgroup and the cgroups below it, deepest first (a cgroup directory holds only
/// the kernel's files and its children).
pub fn remove_cgroup_tree(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(path)
}

/// A ServiceEntry document in namespace `shop` with the given spec (YAML, unindented).
pub fn service_entry(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

/// An env whose daemon reads `<dir>/se` and asks a dnsmasq of its own (TTL 1 s; the daemon's
/// minTtl 1 s, maxTtl 2 s, staleGrace `grace`).
pub fn env_with_dns(test: &str, mode: &str, extra: &str, grace: &str) -> (Env, Dns) {
    let env = Env::new(test, mode, extra);
    let dns = Dns::start(&env.dir, 1);
    let se_dir = env.dir.join("se");
    std::fs::create_dir_all(&se_dir).expect("se dir");
    let mut cfg = std::fs::read_to_string(&env.config)
        .expect("config")
        // Replaced by the full `dns:` block below.
        .replace("dns: {mode: resolve}\n", "");
    cfg.push_str(&format!("serviceEntries: [{}]\n", se_dir.display()));
    cfg.push_str(&dns.config("1s", "2s", grace));
    std::fs::write(&env.config, cfg).expect("config");
    (env, dns)
}

/// One HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of one series in a Prometheus text body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
