//! Arbitrary bytes as learn mode's observation store: reading must never panic, hang or blow
//! up memory, and whatever it accepts must give `suggest` output that validates as Istio
//! would, and save back to a store that reads the same.
#![no_main]

use std::path::Path;

use enforcer::{
    learn::{
        render,
        store::{Limits, Observation, Store},
        suggest::{Group, Options, Policy, suggest},
    },
    serviceentry::{LoadReport, Severity, source::load_text},
};

const LIMITS: Limits = Limits {
    max_observations: 1000,
    max_bytes: 1 << 16,
    max_per_workload: 100,
};

struct Nothing;

impl Policy for Nothing {
    fn allows(&self, _: &Observation) -> bool {
        false
    }
    fn registers(&self, _: &Observation) -> bool {
        false
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok((store, _)) = Store::decode(data, LIMITS) else {
        return;
    };
    let saved = store.encode().expect("a store encodes");
    let (again, skipped) = Store::decode(&saved, LIMITS).expect("a saved store reads back");
    assert_eq!(skipped.count, 0, "what is saved is in normal form");
    assert_eq!(again.observations(), store.observations());
    let obs = store.observations();
    for (group, wildcard) in [(Group::Host, false), (Group::Domain, true)] {
        let opts = Options {
            group,
            wildcard,
            ..Options::default()
        };
        let yaml = render::stream(&suggest(&obs, &opts, &Nothing));
        let mut r = LoadReport::default();
        load_text(&yaml, Path::new("suggested"), &mut r);
        assert!(r.problems.is_empty(), "{:?}\n{yaml}", r.problems);
        for e in &r.entries {
            assert!(
                !e.issues.iter().any(|i| i.severity == Severity::Error),
                "{:?}\n{yaml}",
                e.issues
            );
        }
    }
});
