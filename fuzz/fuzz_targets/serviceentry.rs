//! Arbitrary bytes through the whole ServiceEntry path: YAML decoding of every document,
//! Istio validation and policy compilation must never panic, hang or blow up memory.
#![no_main]

use std::path::Path;

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
    let policy = compile(&ConfigAllows::default(), &report.entries);
    let _rules = policy.desired_rules(|_| vec!["192.0.2.1".parse().expect("literal")]);
});
