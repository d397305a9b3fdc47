//! `egress-enforcer check`: validate ServiceEntry files like Istio would, and optionally show
//! the rules they compile to.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{Failure, OrFailure as _};
use crate::{
    config::Config,
    policy::compile::{CompiledPolicy, ConfigAllows, Notice, compile},
    serviceentry::{Issue, LoadReport, Severity, load_paths, source::DEFAULT_MAX_FILE_BYTES},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files and directories (walked for *.yaml and *.yml)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Also print the rules the valid entries compile to
    #[arg(long)]
    pub rules: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Reject files larger than this many bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    pub max_file_size: u64,
}

#[derive(Serialize)]
struct JsonIssue<'a> {
    origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<String>,
    #[serde(flatten)]
    issue: &'a Issue,
}

#[derive(Serialize)]
struct JsonEntry {
    entry: String,
    origin: String,
    valid: bool,
}

#[derive(Serialize)]
struct JsonRule {
    destination: String,
    port: String,
    proto: String,
    sources: Vec<String>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    files: usize,
    entries: Vec<JsonEntry>,
    issues: Vec<JsonIssue<'a>>,
    errors: usize,
    warnings: usize,
    notices: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<JsonRule>>,
}

fn rule_rows(p: &CompiledPolicy) -> Vec<JsonRule> {
    let names = |ids: &mut dyn Iterator<Item = u32>| -> Vec<String> {
        ids.filter_map(|id| p.sources.get(&id).cloned()).collect()
    };
    let port = |p: u16| {
        if p == 0 {
            "*".to_owned()
        } else {
            p.to_string()
        }
    };
    let mut rows: Vec<JsonRule> = p
        .statics
        .iter()
        .map(|(s, ids)| JsonRule {
            destination: s.net.to_string(),
            port: port(s.port),
            proto: s.proto.to_string(),
            sources: names(&mut ids.iter()),
        })
        .collect();
    for (host, targets) in &p.hostnames {
        for ((p_, proto), ids) in targets {
            rows.push(JsonRule {
                destination: format!("{host} (DNS)"),
                port: port(*p_),
                proto: proto.to_string(),
                sources: names(&mut ids.iter().copied()),
            });
        }
    }
    rows
}

fn all_issues<'a>(report: &'a LoadReport, notices: &'a [Notice]) -> Vec<JsonIssue<'a>> {
    let mut out: Vec<JsonIssue<'a>> = report
        .problems
        .iter()
        .map(|(o, i)| JsonIssue {
            origin: o.to_string(),
            entry: None,
            issue: i,
        })
        .collect();
    for e in &report.entries {
        for i in &e.issues {
            out.push(JsonIssue {
                origin: e.origin.to_string(),
                entry: Some(e.id()),
                issue: i,
            });
        }
    }
    // One table, not a search per notice: large sets draw a notice per entry.
    let mut origins: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for e in &report.entries {
        origins
            .entry(e.id())
            .or_insert_with(|| e.origin.to_string());
    }
    for n in notices {
        out.push(JsonIssue {
            origin: origins.get(&n.entry).cloned().unwrap_or_default(),
            entry: Some(n.entry.clone()),
            issue: &n.issue,
        });
    }
    out
}

fn render_text(
    report: &LoadReport,
    issues: &[JsonIssue<'_>],
    rules: Option<&[JsonRule]>,
) -> String {
    let mut out = String::new();
    for e in &report.entries {
        let status = if e.is_valid() { "valid" } else { "INVALID" };
        let _ = writeln!(out, "{}: ServiceEntry {}: {status}", e.origin, e.id());
        for i in issues.iter().filter(|i| {
            i.entry.as_deref() == Some(e.id().as_str()) && i.origin == e.origin.to_string()
        }) {
            let path = if i.issue.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", i.issue.path)
            };
            let _ = writeln!(
                out,
                "  {:<7} {path}{} [{}]",
                i.issue.severity.to_string(),
                i.issue.message,
                i.issue.rule
            );
        }
    }
    for i in issues.iter().filter(|i| i.entry.is_none()) {
        let _ = writeln!(
            out,
            "{}: {}: {} [{}]",
            i.origin, i.issue.severity, i.issue.message, i.issue.rule
        );
    }
    if let Some(rows) = rules {
        let _ = writeln!(out, "\nrules ({}):", rows.len());
        let _ = writeln!(
            out,
            "  {:<44} {:<6} {:<5} SOURCE",
            "DESTINATION", "PORT", "PROTO"
        );
        for r in rows {
            let _ = writeln!(
                out,
                "  {:<44} {:<6} {:<5} {}",
                r.destination,
                r.port,
                r.proto,
                r.sources.join(", ")
            );
        }
    }
    let valid = report.entries.iter().filter(|e| e.is_valid()).count();
    let count = |s: Severity| issues.iter().filter(|i| i.issue.severity == s).count();
    let _ = writeln!(
        out,
        "\n{} files, {} ServiceEntries ({valid} valid, {} invalid): {} errors, {} warnings, {} notices",
        report.files.len(),
        report.entries.len(),
        report.entries.len() - valid,
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Notice),
    );
    out
}

pub fn check(config: Option<&Path>, args: Args) -> Result<bool, Failure> {
    let report = load_paths(&args.paths, args.max_file_size);
    // The config only matters for --rules (allow.cidrs); a missing default config is fine.
    let cfg = if args.rules {
        Config::load(config).user()?
    } else {
        Config::default()
    };
    let allows = ConfigAllows {
        cidrs: cfg.allowed_cidrs(),
        dns_aware: cfg.dns.mode == crate::config::DnsMode::Proxy,
        ping: cfg.allow.ping,
        ..ConfigAllows::default()
    };
    let policy = compile(&allows, &report.entries);
    let issues = all_issues(&report, &policy.notices);
    let rules = args.rules.then(|| rule_rows(&policy));
    let errors = issues
        .iter()
        .filter(|i| i.issue.severity == Severity::Error)
        .count();
    match args.output {
        Output::Text => print!("{}", render_text(&report, &issues, rules.as_deref())),
        Output::Json => {
            let count = |s: Severity| issues.iter().filter(|i| i.issue.severity == s).count();
            let json = JsonReport {
                files: report.files.len(),
                entries: report
                    .entries
                    .iter()
                    .map(|e| JsonEntry {
                        entry: e.id(),
                        origin: e.origin.to_string(),
                        valid: e.is_valid(),
                    })
                    .collect(),
                errors,
                warnings: count(Severity::Warning),
                notices: count(Severity::Notice),
                issues,
                rules,
            };
            println!("{}", serde_json::to_string_pretty(&json).runtime()?);
        }
    }
    Ok(errors == 0)
}
