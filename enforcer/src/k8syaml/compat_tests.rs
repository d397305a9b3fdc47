//! Where Kubernetes' YAML reader (go-yaml v2 via sigs.k8s.io/yaml) and a YAML 1.2 or libyaml
//! parser disagree, each case with what Kubernetes makes of it; and hostile input, rejected.

use serde_json::{Value as Json, json};

use super::{Limits, YamlError, documents, single};

/// The start of a (possibly huge) input, for failure messages.
fn head(yaml: &str) -> String {
    yaml.chars().take(60).collect()
}

fn read(yaml: &str) -> Json {
    let v = single(yaml, &Limits::default()).unwrap_or_else(|e| panic!("{:?}: {e}", head(yaml)));
    serde_json::to_value(v).expect("JSON")
}

fn fails(yaml: &str) -> YamlError {
    match single(yaml, &Limits::default()) {
        Ok(_) => panic!("{:?}… was accepted", head(yaml)),
        Err(e) => e,
    }
}

#[test]
fn istio_crd_test_data_reads_as_kubernetes_reads_it() {
    let text = include_str!("../../tests/data/k8s-yaml/serviceentry-valid-flow-addresses.yaml");
    let v = read(text);
    assert_eq!(v["spec"]["addresses"], json!(["1.2.3.4", "001:db8::"]));
    let mut report = crate::serviceentry::source::LoadReport::default();
    crate::serviceentry::source::load_text(text, std::path::Path::new("x.yaml"), &mut report);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.entries.len(), 1);
    assert!(
        report.entries[0].is_valid(),
        "{:?}",
        report.entries[0].issues
    );
}

#[test]
fn a_flow_scalar_may_end_with_a_colon() {
    assert_eq!(
        read("a: [1.2.3.4, 001:db8::]"),
        json!({"a": ["1.2.3.4", "001:db8::"]})
    );
    assert_eq!(read("a: [x:]"), json!({"a": ["x:"]}));
    assert_eq!(read("a: [x:, z]"), json!({"a": ["x:", "z"]}));
    assert_eq!(read("a: {k:, l: m}"), json!({"a": {"k:": null, "l": "m"}}));
    assert_eq!(read("a: {k:}"), json!({"a": {"k:": null}}));
    // Unchanged where both agree: `:` inside a scalar, and a real pair.
    assert_eq!(read("a: [x:y, 'b']"), json!({"a": ["x:y", "b"]}));
    assert_eq!(read("a: [x: w]"), json!({"a": [{"x": "w"}]}));
    assert_eq!(read("a: [x: ]"), json!({"a": [{"x": null}]}));
    assert_eq!(read("a: x::y"), json!({"a": "x::y"}), "block context");
    // A colon before the end of the line ends a plain scalar in both readers: an error.
    assert!(!fails("a: x::").message.is_empty());
}

#[test]
fn a_flow_value_may_end_with_a_colon_too() {
    assert_eq!(
        read("endpoints: [{address: 2001:db8::}, {address: 'fd00::1'}, {address: fd00::}]"),
        json!({"endpoints": [{"address": "2001:db8::"}, {"address": "fd00::1"}, {"address": "fd00::"}]})
    );
    assert_eq!(read("a: [k: v:]"), json!({"a": [{"k": "v:"}]}));
    assert_eq!(
        read("a: {k: it's:, l: m}"),
        json!({"a": {"k": "it's:", "l": "m"}})
    );
    assert_eq!(read("a: [x, y::]"), json!({"a": ["x", "y::"]}));
    // The repair keeps lines: a later error is where it would be in the quoted text.
    let e = fails("a: {k: v:,\n  l: m}\nb: [c\nd: 1\n");
    let quoted = fails("a: {k: 'v:',\n  l: m}\nb: [c\nd: 1\n");
    assert_eq!(e.line, quoted.line);
    assert!(e.line >= Some(3), "{e}");
}

#[test]
fn plain_scalars_resolve_by_yaml_1_1() {
    assert_eq!(
        read("a: yes\nb: Off\nc: y\nd: 'yes'\ne: \"on\""),
        json!({"a": true, "b": false, "c": true, "d": "yes", "e": "on"})
    );
    assert_eq!(
        read("a: 010\nb: 0o10\nc: 0x10\nd: 1_000\ne: '010'\nf: 08"),
        json!({"a": 8, "b": 8, "c": 16, "d": 1000, "e": "010", "f": 8.0})
    );
    assert_eq!(
        read("a: ~\nb: Null\nc:\nd: ''"),
        json!({"a": null, "b": null, "c": null, "d": ""})
    );
    assert_eq!(
        read("a: !!str 12\nb: !!int '12'\nc: ! 12"),
        json!({"a": "12", "b": 12, "c": "12"})
    );
    assert!(fails("a: !!int x").message.contains("!!int"));
}

#[test]
fn whole_floats_are_ports_as_in_json() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: f}\nspec:\n  hosts: [f.example]\n  ports: [{number: 443.0, name: a, protocol: TCP}, {number: 08, name: b, protocol: TCP}, {number: 1e3, name: c, protocol: TCP}]\n  resolution: DNS\n";
    let mut report = crate::serviceentry::source::LoadReport::default();
    crate::serviceentry::source::load_text(yaml, std::path::Path::new("f.yaml"), &mut report);
    let e = &report.entries[0];
    assert!(e.is_valid(), "{:?}", e.issues);
    let ports: Vec<u32> = e.entry.spec.ports.iter().map(|p| p.number).collect();
    assert_eq!(ports, [443, 8, 1000]);
}

#[test]
fn keys_become_strings_as_in_json() {
    assert_eq!(
        read("1: a\ntrue: b\n0x10: c"),
        json!({"1": "a", "true": "b", "16": "c"})
    );
    assert_eq!(read("yes: a"), json!({"true": "a"}));
    assert!(fails("~: a").message.contains("null mapping key"));
    assert!(fails("[a]: b").message.contains("collection"));
    assert!(fails("? {a: 1}\n: b").message.contains("collection"));
}

#[test]
fn duplicate_keys_are_rejected_as_kubectl_does_by_default() {
    let e = fails("a: 1\nb: 2\na: 3\n");
    assert!(e.message.contains("duplicate key \"a\""), "{e}");
    assert_eq!(e.line, Some(3));
    // Two spellings of one JSON key are duplicates too.
    assert!(fails("1: a\n'1': b").message.contains("duplicate"));
}

#[test]
fn merge_keys_and_aliases() {
    assert_eq!(
        read("base: &b {p: 1, q: 2}\nm: {<<: *b, q: 3}"),
        json!({"base": {"p": 1, "q": 2}, "m": {"p": 1, "q": 3}})
    );
    assert_eq!(
        read("a: &a {p: 1}\nb: &b {p: 2, z: 2}\nm:\n  <<: [*a, *b]\n"),
        json!({"a": {"p": 1}, "b": {"p": 2, "z": 2}, "m": {"p": 1, "z": 2}}),
        "earlier maps win"
    );
    assert_eq!(
        read("'<<': 1"),
        json!({"<<": 1}),
        "a quoted << is an ordinary key"
    );
    assert!(fails("<<: 1").message.contains("map merge"));
    assert_eq!(
        read("a: &x [1, 2]\nb: *x"),
        json!({"a": [1, 2], "b": [1, 2]})
    );
    assert!(
        !fails("a: *nope").message.is_empty(),
        "an alias of no anchor"
    );
    // `y` is a YAML 1.1 boolean, as a key too.
    assert_eq!(read("y: 1"), json!({"true": 1}));
}

#[test]
fn line_breaks_only_go_yaml_knows_are_refused() {
    // To go-yaml the comment ends at U+2028 and `addresses` is a key; to YAML 1.2 it is all
    // comment. Either reading would be a surprise to someone, so neither is taken.
    for c in ['\u{85}', '\u{2028}', '\u{2029}'] {
        let text = format!("a: 1\nspec: # note{c}addresses: [0.0.0.0/0]\n");
        let e = fails(&text);
        assert!(e.message.contains("line break"), "{e}");
        assert_eq!(e.line, Some(2));
    }
    assert_eq!(
        read("a: \"\u{2027}\""),
        json!({"a": "\u{2027}"}),
        "neighbours are fine"
    );
}

#[test]
fn documents_keep_their_lines_and_stop_at_an_error() {
    let (docs, err) = documents("a: 1\n---\nb: [\n", &Limits::default());
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].line, Some(1));
    assert!(err.is_some_and(|e| e.line.is_some()));
}

#[test]
fn hostile_input_is_rejected() {
    const MIB: usize = 1 << 20;
    let deep_flow = "[".repeat(MIB);
    assert!(
        fails(&deep_flow).message.contains("recursion limit"),
        "flow"
    );
    let deep_map = "{a: ".repeat(MIB / 4);
    assert!(!fails(&deep_map).message.is_empty());
    let deep_block = "- ".repeat(MIB / 2);
    assert!(
        fails(&deep_block).message.contains("deeper than 128"),
        "compact block"
    );
    let indented: String = (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
    assert!(
        fails(&indented).message.contains("deeper than 128"),
        "indented block"
    );
    let docs = "---\n".repeat(20_000);
    let (_, e) = documents(&docs, &Limits::default());
    assert!(
        e.is_some_and(|e| e.message.contains("documents")),
        "many documents"
    );
    // An alias of a long string copies its bytes: charged by size, not as one node.
    let long = format!(
        "s: &s '{}'\nc: [{}]\n",
        "x".repeat(MIB),
        vec!["*s"; 100].join(", ")
    );
    assert!(
        fails(&long).message.contains("too much memory"),
        "aliased long string"
    );
    // Many tiny nodes cost far more memory than their bytes of input.
    let pairs = format!("x: [{}]", "a: b, ".repeat(2 * MIB / 6));
    assert!(
        fails(&pairs).message.contains("too much memory"),
        "tiny pairs"
    );
    // Billion laughs: each level doubles.
    let mut laughs = String::from("a0: &a0 [x, x]\n");
    for i in 1..40 {
        laughs.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
    }
    assert!(fails(&laughs).message.contains("too much"), "aliases");
    // Nested anchors are copies too.
    let nested: String =
        (0..100).map(|i| format!("&n{i} [")).collect::<String>() + &"]".repeat(100);
    let e = single(
        &nested,
        &Limits {
            memory_floor: 64 << 10,
            ..Limits::default()
        },
    );
    assert!(
        e.is_err_and(|e| e.message.contains("too much")),
        "nested anchors"
    );
    // Every value needs the flow-colon repair: the re-reading is bounded, then it is an error.
    let colons = format!("a: [{}]", "{k: v:}, ".repeat(MIB / 9));
    assert!(!fails(&colons).message.is_empty(), "bounded repairs");
    // An implicit key is at most 1024 characters (as in go-yaml); a long value is just long.
    let long_key = format!("{}: v", "k".repeat(MIB));
    assert!(!fails(&long_key).message.is_empty());
    let long_value = format!("k: {}", "v".repeat(MIB));
    assert_eq!(read(&long_value)["k"].as_str().map(str::len), Some(MIB));
}
