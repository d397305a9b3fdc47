//! Scoping's kernel memory (docs/architecture.md, "Scoping"): the same rules for one
//! namespace, and visible to 100 namespaces through 100 host units (100 policies, 100
//! distinct visibility sets), side by side in one run. A rule is stored once whatever the
//! number of policies that may use it; scoping adds `VSETS` and `CGROUP_POLICY`.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path, process::Command, time::Duration};

use anyhow::Context as _;

use crate::{
    bench::Row,
    bench_daemon::{Daemon, cleanup, fresh_dir},
};

const NAMESPACES: usize = 100;
const PER_ENTRY: usize = 4_000;

/// Entries of `PER_ENTRY` endpoints; with `scoped`, entry i lives in namespace `ns{i % 100}`
/// and is exported to it and the next one.
fn entries(rules: usize, scoped: bool) -> String {
    let mut out = String::new();
    let addrs: Vec<Ipv4Addr> = (0..rules)
        .map(|n| {
            let [_, a, b, c] = (n as u32).to_be_bytes();
            Ipv4Addr::new(100, 64 + a % 64, b, c)
        })
        .collect();
    for (i, chunk) in addrs.chunks(PER_ENTRY).enumerate() {
        let (ns, export) = if scoped {
            let ns = i % NAMESPACES;
            (
                format!(", namespace: ns{ns}"),
                format!("  exportTo: ['.', ns{}]\n", (ns + 1) % NAMESPACES),
            )
        } else {
            (String::new(), String::new())
        };
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: e{i}{ns}}}\nspec:\n  hosts: [e{i}.bench.test]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n{export}  endpoints:\n"
        );
        for a in chunk {
            let _ = writeln!(out, "  - {{address: {a}}}");
        }
    }
    out
}

/// Kernel memory of every pinned map (`bytes_memlock`, which this kernel reports from the
/// maps' real usage).
fn kernel_memory(dir: &Path) -> anyhow::Result<u64> {
    let maps = dir.join("bpffs/egress-enforcer/maps");
    let mut bytes = 0;
    for e in std::fs::read_dir(&maps)? {
        let path = e?.path();
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path)
            .output()
            .context("bpftool map show")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bpftool map show {}", path.display()))?;
        bytes += v["bytes_memlock"].as_u64().context("bytes_memlock")?;
    }
    Ok(bytes)
}

fn one(bin: &Path, rules: usize, scoped: bool) -> anyhow::Result<(u64, u64)> {
    let name = if scoped {
        "scoped-memory"
    } else {
        "unscoped-memory"
    };
    let dir = fresh_dir(name)?;
    std::fs::write(dir.join("se/entries.yaml"), entries(rules, scoped))?;
    let cgroup = format!("ee-bench-{name}");
    let mut config = format!(
        "cgroups: [{cgroup}]\nbpffs: {}\nserviceEntries: [{}]\nallow: {{dnsServers: []}}\ndns: {{mode: resolve}}\nlog: {{format: json}}\nhttp: {{listen: ''}}\nmaps: {{exactRules: {}}}\nlimits: {{maxFileBytes: 1073741824}}\n",
        dir.join("bpffs").display(),
        dir.join("se").display(),
        rules + 1024,
    );
    if scoped {
        config.push_str("policies:\n  default: deny\n  units:\n");
        for u in 0..NAMESPACES {
            let _ = writeln!(config, "  - {{cgroup: {cgroup}/u{u}, namespaces: [ns{u}]}}");
        }
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, config)?;
    let mut d = Daemon::start(bin, &path)?;
    let (_, line) = d.wait_for_line("\"enforcing\"", Duration::from_secs(300))?;
    let rules = crate::bench_kernel::log_number(&line, "static_rules").context("static_rules")?;
    d.wait_for("first full apply done", Duration::from_secs(300))?;
    let measured = kernel_memory(&dir);
    d.stop();
    cleanup(&dir);
    Ok((measured?, rules as u64))
}

pub fn memory_rows(bin: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    let rules = if quick { 100_000 } else { 1_000_000 };
    let (flat, flat_rules) = one(bin, rules, false)?;
    let (scoped, scoped_rules) = one(bin, rules, true)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(vec![
        Row {
            case: format!("kernel memory: {rules} rules for one namespace"),
            median: mib(flat),
            unit: "MiB",
            target: None,
            detail: format!("every pinned map's bytes_memlock; {flat_rules} exact rules"),
        },
        Row {
            case: format!(
                "kernel memory: {rules} rules visible to {NAMESPACES} namespaces ({NAMESPACES} policies)"
            ),
            median: mib(scoped),
            unit: "MiB",
            target: Some((2.0 * mib(flat) * 100.0).round() / 100.0),
            detail: format!(
                "{:.2}× the one-namespace figure (target ≤ 2×); {scoped_rules} exact rules, \
                 each once with its visibility set ({NAMESPACES} host units, each entry \
                 exported to 2 namespaces); the hash maps are preallocated to \
                 maps.exactRules, so what scoping must not do is multiply the rule count",
                scoped as f64 / flat as f64
            ),
        },
    ])
}
