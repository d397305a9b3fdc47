//! Istio's own ServiceEntry validation vectors (tests/data/istio-serviceentry, see its README
//! for source and licence): every `valid/` file is accepted without warnings, every `warning/`
//! file is accepted with at least one warning, every `invalid/` file is rejected.

use std::path::{Path, PathBuf};

use enforcer::serviceentry::{Severity, load_paths, source::DEFAULT_MAX_FILE_BYTES};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/istio-serviceentry")
}

fn files(verdict: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus().join(verdict))
        .expect("corpus folder")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// (errors, warnings) for a file holding exactly one ServiceEntry.
fn verdict(file: &Path) -> (Vec<String>, Vec<String>) {
    let r = load_paths(&[file.to_path_buf()], DEFAULT_MAX_FILE_BYTES);
    assert!(
        r.problems.is_empty(),
        "{}: {:?}",
        file.display(),
        r.problems
    );
    assert_eq!(r.entries.len(), 1, "{}", file.display());
    let pick = |s: Severity| {
        r.entries[0]
            .issues
            .iter()
            .filter(|i| i.severity == s)
            .map(|i| format!("{} [{}] {}", i.path, i.rule, i.message))
            .collect()
    };
    (pick(Severity::Error), pick(Severity::Warning))
}

#[test]
fn istio_conformance_corpus() {
    let mut agree = 0;
    let mut disagree = Vec::new();
    for (folder, want_errors, want_warnings) in [
        ("valid", false, Some(false)),
        ("warning", false, Some(true)),
        ("invalid", true, None),
    ] {
        for f in files(folder) {
            let (errors, warnings) = verdict(&f);
            let ok = errors.is_empty() != want_errors
                && want_warnings.is_none_or(|w| warnings.is_empty() != w);
            if ok {
                agree += 1;
            } else {
                disagree.push(format!(
                    "{}: errors {errors:?} warnings {warnings:?}",
                    f.display()
                ));
            }
        }
    }
    assert!(
        disagree.is_empty(),
        "{} disagree:\n{}",
        disagree.len(),
        disagree.join("\n")
    );
    assert_eq!(agree, 76, "the corpus has 76 vectors");
}
