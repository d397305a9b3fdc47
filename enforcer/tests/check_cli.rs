//! `egress-enforcer check` as a user runs it: the real binary on real files.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egress-enforcer"))
        .current_dir(root())
        .arg("check")
        .args(args)
        .output()
        .expect("run egress-enforcer check")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_shipped_examples_are_valid_and_readable() {
    let o = check(&["config/", "--rules"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ServiceEntry default/jsonplaceholder: valid"),
        "{text}"
    );
    assert!(
        text.contains("jsonplaceholder.typicode.com (DNS)"),
        "{text}"
    );
    assert!(text.contains("203.0.113.0/24"), "{text}");
    assert!(text.contains("0 errors"), "{text}");
}

#[test]
fn errors_name_file_document_line_path_and_rule_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("ee-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("two.yaml");
    std::fs::write(
        &f,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ok}\nspec: {hosts: [a.example.com], addresses: [192.0.2.1], ports: [{number: 1, name: a, protocol: TLS}], resolution: STATIC}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bad}\nspec:\n  hosts: ['*']\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  - {number: 81, name: http2, protocol: HTTP, targetPort: 99999}\n",
    )
    .unwrap();
    let o = check(&[f.to_str().unwrap()]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("two.yaml:6 (document 1): ServiceEntry default/bad: INVALID"),
        "{text}"
    );
    assert!(
        text.contains("spec.hosts[0]: invalid host * [host-full-wildcard]"),
        "{text}"
    );
    assert!(
        text.contains("spec.ports[1].targetPort: port number 99999 must be in the range 1..65535 [target-port-range]"),
        "{text}"
    );
    assert!(text.contains("ServiceEntry default/ok: valid"), "{text}");

    let o = check(&[f.to_str().unwrap(), "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["errors"], 2);
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_paths_and_oversized_files_are_errors() {
    let o = check(&["/nonexistent/se.yaml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("no such file"));
    let o = check(&[
        "config/serviceentries/jsonplaceholder.yaml",
        "--max-file-size",
        "10",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("over the 10-byte limit"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_corpus_directory_is_walked() {
    let o = check(&["enforcer/tests/data/istio-serviceentry", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(76));
    let invalid = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["valid"] == false)
        .count();
    assert_eq!(invalid, 38);
    assert_eq!(o.status.code(), Some(1));
}
