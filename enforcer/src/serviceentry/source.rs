//! Files → resources: directory walking, size limit, multi-document YAML, `kind: List`, kind
//! and apiVersion filtering. Every problem is tied to an [`Origin`].

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Serialize;
use serde_yaml_ng::Value;

use super::{decode::decode, issue::Issue, model::ServiceEntry, validate::validate};
use crate::k8syaml;

pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
pub const API_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Where a resource or a problem comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: PathBuf,
    /// 0-based index of the YAML document in the file.
    pub document: Option<usize>,
    /// Index in a `kind: List`'s `items`.
    pub item: Option<usize>,
    /// 1-based line, where known (the document's start, or the parser's error position).
    pub line: Option<usize>,
}

impl Origin {
    /// An object that is not from a file, e.g. `apiserver:serviceentries/payments/api`.
    pub fn named(name: impl Into<PathBuf>) -> Self {
        Self::file(&name.into())
    }

    fn file(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            document: None,
            item: None,
            line: None,
        }
    }
}

impl Origin {
    /// `file:line`, for rule sources.
    pub fn short(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{l}", self.file.display()),
            None => self.file.display().to_string(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        match (self.document, self.item) {
            (Some(d), Some(i)) => write!(f, " (document {d}, items[{i}])"),
            (Some(d), None) => write!(f, " (document {d})"),
            _ => Ok(()),
        }
    }
}

/// A ServiceEntry read from a file, with everything validation found.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub origin: Origin,
    pub entry: ServiceEntry,
    pub issues: Vec<Issue>,
}

impl Loaded {
    pub fn is_valid(&self) -> bool {
        !self
            .issues
            .iter()
            .any(|i| i.severity == super::Severity::Error)
    }

    /// `namespace/name`, how ServiceEntries are named in messages and rule sources.
    pub fn id(&self) -> String {
        format!(
            "{}/{}",
            self.entry.metadata.namespace(),
            self.entry.metadata.name
        )
    }
}

/// Everything read from a set of paths.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    pub entries: Vec<Loaded>,
    /// Problems not tied to one ServiceEntry (unreadable files, YAML syntax, other kinds).
    pub problems: Vec<(Origin, Issue)>,
}

impl LoadReport {
    pub fn error_count(&self) -> usize {
        let is_err = |i: &Issue| i.severity == super::Severity::Error;
        self.problems.iter().filter(|(_, i)| is_err(i)).count()
            + self
                .entries
                .iter()
                .flat_map(|e| &e.issues)
                .filter(|i| is_err(i))
                .count()
    }

    pub fn count(&self, severity: super::Severity) -> usize {
        self.problems
            .iter()
            .filter(|(_, i)| i.severity == severity)
            .count()
            + self
                .entries
                .iter()
                .flat_map(|e| &e.issues)
                .filter(|i| i.severity == severity)
                .count()
    }
}

fn is_yaml(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Hidden names are skipped: Kubernetes ConfigMap volumes hold `..data` directories whose
/// files are also linked at the top level, and editors leave `.x.swp` files.
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<(Origin, Issue)>, depth: usize) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            problems.push((
                Origin::file(dir),
                Issue::error("", "read", format!("cannot read directory: {e}")),
            ));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| !is_hidden(p))
        .collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            if depth > 0 {
                walk(&p, out, problems, depth - 1);
            }
        } else if is_yaml(&p) {
            out.push(p);
        }
    }
}

/// Files named directly are read whatever their extension; directories are walked (sorted,
/// up to 16 levels) for `*.yaml` and `*.yml`.
pub fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<(Origin, Issue)>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut files, &mut problems, 16);
        } else if p.exists() {
            files.push(p.clone());
        } else {
            problems.push((
                Origin::file(p),
                Issue::error("", "read", "no such file or directory"),
            ));
        }
    }
    // Paths may overlap (a unit's directory inside `serviceEntries`): each file once, first
    // place kept, so that rule ids do not depend on the overlap.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));
    (files, problems)
}

fn str_field<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.get(name).and_then(Value::as_str)
}

fn resource(v: &Value, origin: Origin, report: &mut LoadReport) {
    let kind = match v {
        Value::Null => return, // empty document
        Value::Mapping(_) => str_field(v, "kind"),
        _ => {
            report.problems.push((
                origin,
                Issue::error("", "not-a-resource", "document is not a mapping"),
            ));
            return;
        }
    };
    match kind {
        Some("ServiceEntry") => {
            let api = str_field(v, "apiVersion").unwrap_or_default();
            let (entry, mut issues) = decode(v);
            if !API_VERSIONS.contains(&api) {
                issues.insert(
                    0,
                    Issue::error(
                        "apiVersion",
                        "api-version",
                        format!(
                            "{api:?} is not a supported ServiceEntry apiVersion ({})",
                            API_VERSIONS.join(", ")
                        ),
                    ),
                );
            }
            issues.extend(validate(&entry));
            let mut loaded = Loaded {
                origin,
                entry,
                issues,
            };
            if loaded.is_valid() {
                loaded.entry.spec.compact();
            }
            report.entries.push(loaded);
        }
        Some("List") => {
            let items = v
                .get("items")
                .and_then(Value::as_sequence)
                .map_or(&[][..], Vec::as_slice);
            for (i, item) in items.iter().enumerate() {
                let o = Origin {
                    item: Some(i),
                    ..origin.clone()
                };
                resource(item, o, report);
            }
        }
        Some(other) => {
            let name = v
                .get("metadata")
                .map(|m| str_field(m, "name").unwrap_or_default())
                .unwrap_or_default();
            report.problems.push((
                origin,
                Issue::notice(
                    "kind",
                    "other-kind",
                    format!("skipped {other} {name:?}: not a ServiceEntry"),
                ),
            ));
        }
        None => report.problems.push((
            origin,
            Issue::notice(
                "kind",
                "no-kind",
                "skipped: no kind (not a Kubernetes resource)",
            ),
        )),
    }
}

/// One resource that is already a value (an object from the API server), with the same
/// decoding and validation as a file's.
pub fn load_value(v: &Value, origin: Origin) -> LoadReport {
    let mut report = LoadReport::default();
    resource(v, origin, &mut report);
    report
}

/// Parses one file's text: every document, every List item. YAML is read the way Kubernetes
/// reads it, with bounded cost (`crate::k8syaml`).
pub fn load_text(text: &str, file: &Path, report: &mut LoadReport) {
    let (docs, error) = k8syaml::documents(text, &k8syaml::Limits::default());
    let count = docs.len();
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: Some(i),
            item: None,
            line: doc.line,
        };
        resource(&doc.value, origin, report);
    }
    if let Some(e) = error {
        // The parser cannot resynchronise after a syntax error.
        report.problems.push((
            Origin {
                file: file.to_path_buf(),
                document: Some(count),
                item: None,
                line: e.line,
            },
            Issue::error("", "yaml", format!("invalid YAML: {}", e.message)),
        ));
    }
}

pub fn load_file(file: &Path, max_bytes: u64, report: &mut LoadReport) {
    let fail = |report: &mut LoadReport, msg: String| {
        report
            .problems
            .push((Origin::file(file), Issue::error("", "read", msg)));
    };
    match std::fs::metadata(file) {
        Ok(m) if m.len() > max_bytes => {
            return fail(
                report,
                format!("file is {} bytes, over the {max_bytes}-byte limit", m.len()),
            );
        }
        Err(e) => return fail(report, format!("cannot read: {e}")),
        Ok(_) => {}
    }
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return fail(report, format!("cannot read: {e}")),
    };
    // The file may have grown since the size check.
    if bytes.len() as u64 > max_bytes {
        return fail(report, format!("file is over the {max_bytes}-byte limit"));
    }
    match String::from_utf8(bytes) {
        Ok(text) => load_text(&text, file, report),
        Err(e) => fail(report, format!("not UTF-8: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serviceentry::Severity;

    fn load(text: &str) -> LoadReport {
        let mut r = LoadReport::default();
        load_text(text, Path::new("t.yaml"), &mut r);
        r
    }

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec: {hosts: [a.example.com], addresses: [10.0.0.1], ports: [{number: 443, name: https, protocol: TLS}]}\n";

    #[test]
    fn multi_document_files_with_lines() {
        let text = format!(
            "# comment\n{SE}---\n{}---\n",
            SE.replace("name: a", "name: b")
        );
        let r = load(&text);
        assert_eq!(r.entries.len(), 2, "{:?}", r.problems);
        assert_eq!(r.entries[0].origin.line, Some(2));
        assert_eq!(r.entries[1].origin.line, Some(7));
        assert_eq!(r.entries[1].origin.to_string(), "t.yaml:7 (document 1)");
        assert!(r.entries.iter().all(Loaded::is_valid));
    }

    #[test]
    fn document_start_lines() {
        let lines = |t: &str| -> Vec<Option<usize>> {
            let (docs, err) = k8syaml::documents(t, &k8syaml::Limits::default());
            assert!(err.is_none(), "{err:?}");
            docs.iter().map(|d| d.line).collect()
        };
        assert_eq!(lines("a: 1\n"), [Some(1)]);
        assert_eq!(lines("# c\n\na: 1\n---\n# c\nb: 2\n"), [Some(3), Some(6)]);
        assert_eq!(
            lines("---\na: 1\n---\n---\nb: 1\n"),
            [Some(2), None, Some(5)]
        );
        assert_eq!(lines("--- {a: 1}\n"), [Some(1)]);
    }

    #[test]
    fn lists_are_unpacked() {
        let item = SE
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!(
            "apiVersion: v1\nkind: List\nitems:\n  -\n{item}\n  -\n{}\n",
            item.replace("name: a", "name: b")
        );
        let r = load(&text);
        assert_eq!(r.entries.len(), 2, "{:?}", r.problems);
        assert_eq!(r.entries[1].origin.item, Some(1));
        assert_eq!(r.entries[1].id(), "default/b");
    }

    #[test]
    fn other_kinds_are_skipped_with_a_notice() {
        let r = load("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\nfoo: bar\n");
        assert!(r.entries.is_empty());
        assert_eq!(r.problems[0].1.severity, Severity::Notice);
        assert!(r.problems[0].1.message.contains("ConfigMap"));
        assert_eq!(r.problems[1].1.rule, "no-kind");
    }

    #[test]
    fn all_three_api_versions_and_no_other() {
        for v in API_VERSIONS {
            let r = load(&SE.replace("networking.istio.io/v1", v));
            assert!(r.entries[0].is_valid(), "{v}");
        }
        let r = load(&SE.replace("networking.istio.io/v1", "networking.istio.io/v2"));
        assert_eq!(r.entries[0].issues[0].rule, "api-version");
    }

    #[test]
    fn yaml_errors_have_a_line() {
        let r = load(&format!("{SE}---\nspec: [unclosed\n"));
        assert_eq!(r.entries.len(), 1);
        let (o, i) = &r.problems[0];
        assert_eq!(i.rule, "yaml");
        assert_eq!(o.document, Some(1));
        assert!(o.line.is_some_and(|l| l >= 6), "{o:?}");
    }

    #[test]
    fn alias_bombs_are_rejected_not_expanded() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            bomb.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let r = load(&bomb);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].1.rule, "yaml");
    }

    #[test]
    fn size_limit() {
        let dir = std::env::temp_dir().join(format!("ee-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("big.yaml");
        std::fs::write(&f, SE).unwrap();
        let mut r = LoadReport::default();
        load_file(&f, 10, &mut r);
        assert!(r.problems[0].1.message.contains("limit"));
        let mut r = LoadReport::default();
        load_file(&f, DEFAULT_MAX_FILE_BYTES, &mut r);
        assert_eq!(r.entries.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_are_walked_for_yaml_only_skipping_hidden() {
        let dir = std::env::temp_dir().join(format!("ee-walk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        for f in [
            "b.yaml",
            "a.yml",
            "c.txt",
            "sub/d.YAML",
            "..data/e.yaml",
            ".f.yaml",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let (files, problems) = collect_files(&[dir.clone(), dir.join("missing.yaml")]);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml", "sub/d.YAML"]);
        assert_eq!(problems.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
