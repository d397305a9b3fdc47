//! Benchmark body for `cargo xtask bench`: parse, validate and compile N ServiceEntries.
//!
//! ```text
//! serviceentry_bench generate DIR N   write N entries (100 per file, mixed resolutions)
//! serviceentry_bench run DIR          load + validate + compile DIR; print one JSON line
//! ```
//! Generation is a separate process so that the measured run's peak RSS is its own.

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use enforcer::{
    policy::compile::{ConfigAllows, compile},
    serviceentry::{load_paths, source::DEFAULT_MAX_FILE_BYTES},
};

/// One entry of a realistic mix: DNS hosts, STATIC endpoints, NONE with CIDRs.
fn entry(i: usize) -> String {
    let (a, b) = (i / 250 % 250, i % 250);
    match i % 4 {
        0 => format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api-{i}\n  namespace: team-{}\nspec:\n  hosts:\n  - api-{i}.example.com\n  location: MESH_EXTERNAL\n  ports:\n  - number: 443\n    name: https\n    protocol: TLS\n  resolution: DNS\n",
            i % 50
        ),
        1 => format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db-{i}\n  namespace: team-{}\nspec:\n  hosts:\n  - db-{i}.internal.example\n  addresses:\n  - 10.{a}.{b}.1\n  ports:\n  - number: 5432\n    name: postgres\n    protocol: TCP\n  resolution: STATIC\n  endpoints:\n  - address: 10.{a}.{b}.10\n  - address: 10.{a}.{b}.11\n    ports:\n      postgres: 6432\n",
            i % 50
        ),
        2 => format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: range-{i}\n  namespace: team-{}\nspec:\n  hosts:\n  - range-{i}.partner.example\n  addresses:\n  - 172.{}.{b}.0/24\n  ports:\n  - number: 8443\n    name: https\n    protocol: HTTPS\n  - number: 53\n    name: dns\n    protocol: UDP\n  resolution: NONE\n",
            i % 50,
            16 + a % 16
        ),
        _ => format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  namespace: team-{}\n  labels:\n    app: svc-{i}\nspec:\n  hosts:\n  - svc-{i}.example.org\n  ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  - number: 443\n    name: https\n    protocol: HTTPS\n    targetPort: 8443\n  resolution: DNS\n  endpoints:\n  - address: eu-{i}.example.org\n    ports:\n      https: 9443\n  - address: 192.0.{}.{}\n",
            i % 50,
            a % 256,
            b
        ),
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("generate") => {
            let dir = PathBuf::from(args.get(2).ok_or("DIR")?);
            let n: usize = args.get(3).ok_or("N")?.parse()?;
            std::fs::create_dir_all(&dir)?;
            for (f, chunk) in (0..n).collect::<Vec<_>>().chunks(100).enumerate() {
                let mut text = String::new();
                for i in chunk {
                    let _ = write!(text, "---\n{}", entry(*i));
                }
                std::fs::write(dir.join(format!("entries-{f:04}.yaml")), text)?;
            }
        }
        Some("run") => {
            let dir = PathBuf::from(args.get(2).ok_or("DIR")?);
            let start = Instant::now();
            let report = load_paths(&[dir], DEFAULT_MAX_FILE_BYTES);
            let loaded = start.elapsed();
            let policy = compile(&ConfigAllows::default(), &report.entries);
            let total = start.elapsed();
            let invalid = report.entries.iter().filter(|e| !e.is_valid()).count();
            println!(
                "{{\"entries\": {}, \"invalid\": {invalid}, \"errors\": {}, \"statics\": {}, \"hostnames\": {}, \"load_validate_ms\": {:.1}, \"total_ms\": {:.1}, \"peak_rss_kib\": {}}}",
                report.entries.len(),
                report.error_count(),
                policy.statics.len(),
                policy.hostnames.len(),
                loaded.as_secs_f64() * 1e3,
                total.as_secs_f64() * 1e3,
                peak_rss_kib()
            );
        }
        _ => return Err("usage: serviceentry_bench generate DIR N | run DIR".into()),
    }
    Ok(())
}
