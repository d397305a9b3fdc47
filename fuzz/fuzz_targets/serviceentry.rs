//! Arbitrary bytes through the whole ServiceEntry path: YAML decoding of every document,
//! Istio validation and policy compilation must never panic, hang or blow up memory, and
//! the rules a reload lists from the compiled policy must equal a whole copy of them.
#![no_main]

use std::{net::IpAddr, path::Path, sync::Arc};

use enforcer::{
    policy::{
        compile::{CompiledPolicy, ConfigAllows, compile, compile_scoped},
        visibility::{EntryScope, Visibility},
    },
    serviceentry::source::{LoadReport, load_text},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut report = LoadReport::default();
    load_text(text, Path::new("fuzz.yaml"), &mut report);
    let config = ConfigAllows::default();
    same_listed_or_copied(&Arc::new(compile(&config, &report.entries)));
    // Scoped per host only (the entries everyone's): answers may repeat static hosts.
    let scopes: Vec<EntryScope> = report
        .entries
        .iter()
        .map(|e| EntryScope {
            entry: Visibility::Everyone,
            hosts: (0..e.entry.spec.hosts.len())
                .map(|i| match i % 2 {
                    0 => Visibility::Only([1].into()),
                    _ => Visibility::Everyone,
                })
                .collect(),
        })
        .collect();
    same_listed_or_copied(&Arc::new(compile_scoped(
        &config,
        &report.entries,
        Some(&scopes),
    )));
});

/// What a reload lists from the policy is what a whole copy holds.
fn same_listed_or_copied(policy: &Arc<CompiledPolicy>) {
    let answers = |_: &str| -> Vec<IpAddr> {
        ["192.0.2.1", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().expect("literal"))
            .collect()
    };
    let whole = policy.desired_rules(answers);
    let listed = policy.desired_rules_listed(answers);
    assert!(whole.exact_rules().eq(listed.exact_rules()));
    assert_eq!(whole.prefix, listed.prefix);
    assert_eq!(whole.scoped, listed.scoped);
    assert_eq!(whole.scoped_prefix, listed.scoped_prefix);
    assert_eq!(whole.lookup_skips(), listed.lookup_skips());
}
