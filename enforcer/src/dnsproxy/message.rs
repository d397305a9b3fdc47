//! DNS messages as the proxy handles them: a workload's query checked and classified, the
//! error answers the proxy makes itself, and the addresses an upstream answer allows. Pure,
//! on `hickory-proto`; every input is untrusted (docs/architecture.md, "DNS-aware mode").

use std::net::IpAddr;

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType, rdata::svcb::SvcParamValue},
};

/// Largest message over TCP (two-byte length); UDP messages are smaller still.
pub const MAX_MESSAGE: usize = 65_535;
/// A CNAME chain longer than this is not followed further (resolvers stop near 8 to 16).
const MAX_CHAIN: usize = 16;

/// A query the proxy will act on: exactly one question, opcode QUERY.
#[derive(Debug, Clone)]
pub struct ParsedQuery {
    pub id: u16,
    /// Lowercase, without the trailing dot ("" for the root).
    pub name: String,
    pub qtype: RecordType,
    query: Query,
    op_code: OpCode,
    recursion_desired: bool,
}

/// Why a workload's message is not forwarded.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not even a header: nothing to answer to.
    Drop,
    /// Answer with this message (FORMERR, NOTIMP).
    Reply(Vec<u8>),
}

/// The header ID, if there are at least two bytes.
fn id_of(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Checks a query from a workload. Responses, other opcodes and several questions are not
/// forwarded: the proxy must know the one name it is answering for.
pub fn parse_query(bytes: &[u8]) -> Result<ParsedQuery, Refusal> {
    if bytes.len() < 12 || bytes.len() > MAX_MESSAGE {
        return Err(Refusal::Drop);
    }
    let id = id_of(bytes).ok_or(Refusal::Drop)?;
    let msg = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return Err(Refusal::Reply(bare_error(id, ResponseCode::FormErr))),
    };
    if msg.metadata.message_type != MessageType::Query {
        return Err(Refusal::Drop);
    }
    if msg.metadata.op_code != OpCode::Query {
        return Err(Refusal::Reply(bare_error(id, ResponseCode::NotImp)));
    }
    let [query] = msg.queries.as_slice() else {
        return Err(Refusal::Reply(bare_error(id, ResponseCode::FormErr)));
    };
    Ok(ParsedQuery {
        id,
        name: name_key(query.name()),
        qtype: query.query_type(),
        query: query.clone(),
        op_code: msg.metadata.op_code,
        recursion_desired: msg.metadata.recursion_desired,
    })
}

/// A name as the tables key it: lowercase ASCII, no trailing dot.
fn name_key(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

fn bare_error(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let msg = Message::error_msg(id, OpCode::Query, rcode);
    msg.to_vec().unwrap_or_default()
}

/// An answer the proxy makes itself (NXDOMAIN, REFUSED, SERVFAIL), echoing the question as
/// resolvers expect.
pub fn error_answer(q: &ParsedQuery, rcode: ResponseCode) -> Vec<u8> {
    let mut msg = Message::error_msg(q.id, q.op_code, rcode);
    msg.metadata.recursion_desired = q.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.add_query(q.query.clone());
    msg.to_vec().unwrap_or_else(|_| bare_error(q.id, rcode))
}

/// What an upstream answer means for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Learned {
    /// Addresses of the queried name (through its CNAME chain), from A/AAAA records and the
    /// address hints of HTTPS/SVCB records, each with the lowest TTL on its way.
    pub addrs: Vec<(IpAddr, u32)>,
    pub rcode: u16,
}

/// Why an upstream message is not an answer to the query (it is dropped and the proxy keeps
/// waiting for the real one, as a resolver does with spoofed replies).
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    Malformed,
    NotAResponse,
    OtherId,
    OtherQuestion,
}

/// Reads an upstream answer to `q`, following the CNAME chain from the question's name.
/// Records for names outside the chain are ignored: they are not what the workload asked.
pub fn parse_answer(bytes: &[u8], q: &ParsedQuery) -> Result<Learned, Mismatch> {
    if bytes.len() > MAX_MESSAGE {
        return Err(Mismatch::Malformed);
    }
    let msg = Message::from_vec(bytes).map_err(|_| Mismatch::Malformed)?;
    if msg.metadata.message_type != MessageType::Response {
        return Err(Mismatch::NotAResponse);
    }
    if msg.metadata.id != q.id {
        return Err(Mismatch::OtherId);
    }
    match msg.queries.as_slice() {
        [one] if name_key(one.name()) == q.name && one.query_type() == q.qtype => {}
        _ => return Err(Mismatch::OtherQuestion),
    }
    Ok(Learned {
        addrs: chain_addresses(&msg, &q.name),
        rcode: u16::from(msg.metadata.response_code),
    })
}

/// The owner names reachable from `name` by CNAME, each with the lowest TTL on the way.
fn chain(msg: &Message, name: &str) -> Vec<(String, u32)> {
    let mut chain = vec![(name.to_owned(), u32::MAX)];
    let mut i = 0;
    while let Some((owner, ttl)) = chain.get(i).cloned() {
        if chain.len() > MAX_CHAIN {
            break;
        }
        for r in &msg.answers {
            if let RData::CNAME(target) = &r.data
                && name_key(&r.name) == owner
            {
                let next = name_key(&target.0);
                if !chain.iter().any(|(n, _)| *n == next) {
                    chain.push((next, ttl.min(r.ttl)));
                }
            }
        }
        i += 1;
    }
    chain
}

fn chain_addresses(msg: &Message, name: &str) -> Vec<(IpAddr, u32)> {
    let chain = chain(msg, name);
    let ttl_of = |owner: &Name| {
        let key = name_key(owner);
        chain.iter().find(|(n, _)| *n == key).map(|(_, t)| *t)
    };
    let mut out = Vec::new();
    for r in &msg.answers {
        let Some(chain_ttl) = ttl_of(&r.name) else {
            continue;
        };
        let ttl = chain_ttl.min(r.ttl);
        match &r.data {
            RData::A(a) => out.push((IpAddr::V4(a.0), ttl)),
            RData::AAAA(a) => out.push((IpAddr::V6(a.0), ttl)),
            RData::HTTPS(h) => out.extend(hints(&h.0.svc_params).map(|ip| (ip, ttl))),
            RData::SVCB(s) => out.extend(hints(&s.svc_params).map(|ip| (ip, ttl))),
            _ => {}
        }
    }
    out
}

fn hints(
    params: &[(hickory_proto::rr::rdata::svcb::SvcParamKey, SvcParamValue)],
) -> impl Iterator<Item = IpAddr> + '_ {
    params.iter().flat_map(|(_, v)| -> Vec<IpAddr> {
        match v {
            SvcParamValue::Ipv4Hint(h) => h.0.iter().map(|a| IpAddr::V4(a.0)).collect(),
            SvcParamValue::Ipv6Hint(h) => h.0.iter().map(|a| IpAddr::V6(a.0)).collect(),
            _ => Vec::new(),
        }
    })
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
