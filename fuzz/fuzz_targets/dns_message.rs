//! Arbitrary bytes through DNS-aware mode's message handling, as a workload's query and as an
//! upstream's answer: parsing, the proxy's own error answers, name classification and the
//! CNAME-chain walk must never panic, hang or blow up memory.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use enforcer::{
    dnsproxy::{
        message::{error_answer, parse_answer, parse_query},
        names::NameTable,
    },
    policy::{allow_spec::Proto, compile::CompiledPolicy},
};
use hickory_proto::op::ResponseCode;

/// A query for `a.example.com` A, to read the input as its answer.
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x07example\x03com\x00\x00\x01\x00\x01";

fn table() -> NameTable {
    let mut p = CompiledPolicy::default();
    let targets = BTreeMap::from([((443, Proto::Tcp), BTreeSet::from([1]))]);
    p.hostnames.insert("a.example.com".into(), targets.clone());
    p.wildcards.insert("example.org".into(), targets.clone());
    p.wildcards.insert("*foo.example.net".into(), targets);
    NameTable::build(&p, &["cluster.local".to_owned()])
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_query(data) {
        let _class = table().classify(&q.name);
        let _nx = error_answer(&q, ResponseCode::NXDomain);
        let _self_answer = parse_answer(data, &q);
    }
    if let Ok(q) = parse_query(QUERY) {
        let _answer = parse_answer(data, &q);
    }
});
