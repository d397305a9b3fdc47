//! A DNS server whose answers never repeat, as a CDN's: every A query gets one address from a
//! network, fresh each time (`random`) or derived from the name's first label (`indexed`:
//! `n1234.x` gets the 1234th address, for tests that need many distinct addresses), with a
//! short TTL. AAAA gets an empty answer; anything else NOTIMP. Messages are read and written
//! with hickory-proto.
//!
//! ```text
//! ee-dns-rotor --listen IP:PORT --net A.B.C.D/LEN [--ttl N | --ttl 0-1] [--mode random|indexed]
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    str::FromStr as _,
};

use anyhow::{Context as _, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for spreading answers over a network.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Net {
    base: u32,
    size: u32,
}

fn parse_net(s: &str) -> anyhow::Result<Net> {
    let (a, len) = s.split_once('/').context("--net A.B.C.D/LEN")?;
    let len: u32 = len.parse()?;
    if !(8..=30).contains(&len) {
        bail!("--net: prefix length 8 to 30");
    }
    let size = 1u32 << (32 - len);
    Ok(Net {
        base: u32::from(Ipv4Addr::from_str(a)?) & !(size - 1),
        size,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut net, mut ttl, mut indexed) = (None, None, "1".to_owned(), false);
    while let Some(a) = args.next() {
        let mut v = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(v()?.parse::<SocketAddr>()?),
            "--net" => net = Some(parse_net(&v()?)?),
            "--ttl" => ttl = v()?,
            "--mode" => indexed = v()? == "indexed",
            _ => bail!("unknown argument {a}"),
        }
    }
    let net = net.context("--net is required")?;
    let sock = UdpSocket::bind(listen.context("--listen is required")?)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut rng = Rng(seed | 1);
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(query) = q.queries.first().cloned() else {
            continue;
        };
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.message_type = MessageType::Response;
        r.add_query(query.clone());
        match query.query_type() {
            RecordType::A => {
                let offset = if indexed {
                    let first = query.name().iter().next().unwrap_or_default();
                    let digits: String = String::from_utf8_lossy(first)
                        .chars()
                        .filter(char::is_ascii_digit)
                        .collect();
                    digits.parse::<u32>().unwrap_or(0) % net.size
                } else {
                    (rng.next() % u64::from(net.size)) as u32
                };
                let t = match ttl.as_str() {
                    "0-1" => (rng.next() % 2) as u32,
                    t => t.parse().unwrap_or(1),
                };
                let addr = Ipv4Addr::from(net.base + offset);
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    t,
                    RData::A(A(addr)),
                ));
            }
            RecordType::AAAA => {}
            _ => r.metadata.response_code = ResponseCode::NotImp,
        }
        if let Ok(out) = r.to_vec() {
            let _ignored = sock.send_to(&out, peer);
        }
    }
}
