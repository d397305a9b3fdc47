use std::{net::Ipv4Addr, str::FromStr as _};

use hickory_proto::rr::{
    Record,
    rdata::{A, AAAA, CNAME, HTTPS, TXT, svcb},
};

use super::*;

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn answer(q: &[u8], records: Vec<Record>) -> Vec<u8> {
    let q = Message::from_vec(q).unwrap();
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.add_queries(q.queries.clone());
    m.add_answers(records);
    m.to_vec().unwrap()
}

fn rec(name: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
}

fn a(ip: &str) -> RData {
    RData::A(A(ip.parse().unwrap()))
}

#[test]
fn a_query_is_read_with_its_name_normalised() {
    let q = parse_query(&query("API.Example.COM.", RecordType::A)).unwrap();
    assert_eq!(
        (q.id, q.name.as_str(), q.qtype),
        (0x1234, "api.example.com", RecordType::A)
    );
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    assert_eq!(parse_query(&[0; 5]).unwrap_err(), Refusal::Drop);
    let mut bad = query("a.example.com", RecordType::A);
    bad.truncate(bad.len() - 3);
    let Refusal::Reply(r) = parse_query(&bad).unwrap_err() else {
        panic!("a truncated query gets an answer")
    };
    let r = Message::from_vec(&r).unwrap();
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // A compression pointer to itself.
    let mut looped = query("a.example.com", RecordType::A)[..12].to_vec();
    looped.extend([0xc0, 12, 0, 1, 0, 1]);
    assert!(matches!(parse_query(&looped), Err(Refusal::Reply(_))));
    // A response sent as a query is dropped.
    let resp = answer(&query("a.example.com", RecordType::A), vec![]);
    assert_eq!(parse_query(&resp).unwrap_err(), Refusal::Drop);
}

#[test]
fn two_questions_are_refused() {
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_str("a.example.com").unwrap(),
        RecordType::A,
    ));
    m.add_query(Query::query(
        Name::from_str("b.example.com").unwrap(),
        RecordType::A,
    ));
    assert!(matches!(
        parse_query(&m.to_vec().unwrap()),
        Err(Refusal::Reply(_))
    ));
}

#[test]
fn error_answers_echo_the_question() {
    let q = parse_query(&query("x.example.com", RecordType::AAAA)).unwrap();
    let r = Message::from_vec(&error_answer(&q, ResponseCode::NXDomain)).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.recursion_desired);
    assert_eq!(r.queries.len(), 1);
    assert_eq!(r.queries[0].query_type(), RecordType::AAAA);
}

#[test]
fn cname_chains_are_followed_and_strangers_ignored() {
    let raw = query("www.example.com", RecordType::A);
    let q = parse_query(&raw).unwrap();
    let ans = answer(
        &raw,
        vec![
            rec(
                "www.example.com.",
                300,
                RData::CNAME(CNAME(Name::from_str("edge.cdn.test.").unwrap())),
            ),
            rec(
                "edge.cdn.test.",
                60,
                RData::CNAME(CNAME(Name::from_str("a1.cdn.test.").unwrap())),
            ),
            rec("a1.cdn.test.", 20, a("198.18.5.1")),
            rec("a1.cdn.test.", 90, a("198.18.5.2")),
            rec("unrelated.test.", 300, a("198.18.9.9")),
            rec(
                "www.example.com.",
                300,
                RData::AAAA(AAAA("fd00::5".parse().unwrap())),
            ),
            rec(
                "www.example.com.",
                300,
                RData::TXT(TXT::new(vec!["x".into()])),
            ),
        ],
    );
    let got = parse_answer(&ans, &q).unwrap();
    assert_eq!(
        got.addrs,
        vec![
            ("198.18.5.1".parse().unwrap(), 20),
            ("198.18.5.2".parse().unwrap(), 60),
            ("fd00::5".parse().unwrap(), 300),
        ]
    );
}

#[test]
fn a_cname_loop_ends() {
    let raw = query("a.loop.test", RecordType::A);
    let q = parse_query(&raw).unwrap();
    let cname =
        |from: &str, to: &str| rec(from, 5, RData::CNAME(CNAME(Name::from_str(to).unwrap())));
    let ans = answer(
        &raw,
        vec![
            cname("a.loop.test.", "b.loop.test."),
            cname("b.loop.test.", "a.loop.test."),
        ],
    );
    assert!(parse_answer(&ans, &q).unwrap().addrs.is_empty());
}

#[test]
fn https_hints_are_addresses() {
    let raw = query("svc.example.com", RecordType::HTTPS);
    let q = parse_query(&raw).unwrap();
    let params = vec![
        (
            svcb::SvcParamKey::Ipv4Hint,
            svcb::SvcParamValue::Ipv4Hint(svcb::IpHint(vec![A(Ipv4Addr::new(198, 18, 7, 1))])),
        ),
        (
            svcb::SvcParamKey::Ipv6Hint,
            svcb::SvcParamValue::Ipv6Hint(svcb::IpHint(vec![AAAA("fd00::7".parse().unwrap())])),
        ),
    ];
    let https = HTTPS(svcb::SVCB::new(1, Name::root(), params));
    let ans = answer(&raw, vec![rec("svc.example.com.", 30, RData::HTTPS(https))]);
    let got: Vec<IpAddr> = parse_answer(&ans, &q)
        .unwrap()
        .addrs
        .into_iter()
        .map(|(ip, _)| ip)
        .collect();
    assert_eq!(
        got,
        [
            "198.18.7.1".parse::<IpAddr>().unwrap(),
            "fd00::7".parse().unwrap()
        ]
    );
}

#[test]
fn answers_to_something_else_are_not_taken() {
    let raw = query("a.example.com", RecordType::A);
    let q = parse_query(&raw).unwrap();
    let other = answer(
        &query("b.example.com", RecordType::A),
        vec![rec("b.example.com.", 5, a("198.18.0.1"))],
    );
    let mut other_id = other.clone();
    other_id[0] ^= 0xff;
    assert_eq!(
        parse_answer(&other, &q).unwrap_err(),
        Mismatch::OtherQuestion
    );
    assert_eq!(parse_answer(&other_id, &q).unwrap_err(), Mismatch::OtherId);
    assert_eq!(parse_answer(&raw, &q).unwrap_err(), Mismatch::NotAResponse);
    assert_eq!(
        parse_answer(&[1, 2, 3], &q).unwrap_err(),
        Mismatch::Malformed
    );
}
