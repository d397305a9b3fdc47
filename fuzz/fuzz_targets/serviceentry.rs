//! Arbitrary bytes through the whole ServiceEntry path: YAML decoding of every document,
//! Istio validation and policy compilation must never panic, hang or blow up memory, and
//! the rules a reload lists from the compiled policy must equal a whole copy of them.
#![no_main]

use std::{net::IpAddr, path::Path, sync::Arc};

use enforcer::{
    policy::compile::{ConfigAllows, compile},
    serviceentry::source::{LoadReport, load_text},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut report = LoadReport::default();
    load_text(text, Path::new("fuzz.yaml"), &mut report);
    let policy = Arc::new(compile(&ConfigAllows::default(), &report.entries));
    let answers = |_: &str| -> Vec<IpAddr> {
        ["192.0.2.1", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().expect("literal"))
            .collect()
    };
    // What a reload lists from the policy is what a whole copy holds.
    let whole = policy.desired_rules(answers);
    let listed = policy.desired_rules_listed(answers);
    assert!(whole.exact_rules().eq(listed.exact_rules()));
    assert_eq!(whole.prefix, listed.prefix);
    assert_eq!(whole.lookup_skips(), listed.lookup_skips());
});
