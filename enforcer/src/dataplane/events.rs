//! Deny/audit events from the kernel's ring buffer, decoded.

use std::net::IpAddr;

use enforcer_common::Event;
use serde::Serialize;

use super::verdicts::{hook_name, proto_name, verdict_name};
use crate::policy::allow_spec::Net;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Kernel monotonic clock, nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub hook: &'static str,
    pub proto: String,
    pub addr: IpAddr,
    pub port: u16,
    pub verdict: &'static str,
    /// A socket refused at creation (hook `sock_create`): `family/type`, e.g. `inet6/raw`;
    /// `proto` is then its protocol and the address and port are zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The kernel's repeat window this event opened (docs/architecture.md, "Events").
    #[serde(skip)]
    pub window: Option<WindowRef>,
}

/// Where a repeat window lives in `EVENT_WINDOWS`, and what the event says of the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRef {
    pub cpu: u16,
    pub slot: u16,
    pub generation: u32,
    /// The repeats of the window this one replaced in the same slot.
    pub replaced_repeats: u32,
}

fn family_name(family: u8) -> String {
    match u32::from(family) {
        enforcer_common::AF_INET => "inet".to_owned(),
        enforcer_common::AF_INET6 => "inet6".to_owned(),
        enforcer_common::AF_PACKET => "packet".to_owned(),
        44 => "xdp".to_owned(),
        n => format!("family-{n}"),
    }
}

fn type_name(ty: u8) -> String {
    match u32::from(ty) {
        enforcer_common::SOCK_STREAM => "stream".to_owned(),
        enforcer_common::SOCK_DGRAM => "dgram".to_owned(),
        enforcer_common::SOCK_RAW => "raw".to_owned(),
        5 => "seqpacket".to_owned(),
        n => format!("type-{n}"),
    }
}

/// The protocol of a socket refused at creation: an IP protocol for inet sockets, an
/// EtherType (network byte order, as passed to `socket()`) for packet sockets.
fn socket_proto_name(family: u8, protocol: u16) -> String {
    if u32::from(family) == enforcer_common::AF_PACKET {
        return format!("ethertype-0x{:04x}", u16::from_be(protocol));
    }
    match u8::try_from(protocol) {
        Ok(p) => proto_name(p),
        Err(_) if protocol == 262 => "mptcp".to_owned(),
        Err(_) => format!("proto-{protocol}"),
    }
}

/// The size of an event before repeat windows (ABI 4): programs of an older daemon may still
/// write these while a new one takes over.
const EVENT_V4_SIZE: usize = 64;

/// Decodes one ring-buffer record; `None` if it has the wrong size (another ABI).
pub fn decode(bytes: &[u8]) -> Option<EventRecord> {
    let len = bytes.len().min(size_of::<Event>());
    if len < EVENT_V4_SIZE {
        return None;
    }
    let mut raw = [0u8; size_of::<Event>()];
    raw[..len].copy_from_slice(&bytes[..len]);
    // SAFETY: Event is plain data valid for any bit pattern (missing fields of an older
    // event read as zero); read_unaligned does not need the array to be aligned.
    let ev: Event = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let comm_len = ev
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ev.comm.len());
    // Socket and option refusals carry no address: their port and protocol fields say what
    // was asked for instead (enforcer_common::Event).
    let (proto, port, socket) = match ev.hook {
        h if h == enforcer_common::Hook::SockCreate as u8 => (
            socket_proto_name(ev.family, ev.port),
            0,
            Some(format!(
                "{}/{}",
                family_name(ev.family),
                type_name(ev.sock_type)
            )),
        ),
        h if h == enforcer_common::Hook::Setsockopt as u8 => (
            if ev.proto == 41 { "ipv6" } else { "ip" }.to_owned(),
            0,
            Some(format!("option {}", option_name(ev.proto, ev.port))),
        ),
        _ => (proto_name(ev.proto), ev.port, None),
    };
    Some(EventRecord {
        ts_ns: ev.ts_ns,
        pid: ev.tgid,
        tid: ev.pid,
        comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
        cgroup_id: ev.cgroup_id,
        hook: hook_name(u32::from(ev.hook)),
        proto,
        addr: Net::from_normalized(ev.addr, 128).addr,
        port,
        verdict: verdict_name(ev.verdict),
        socket,
        window: (ev.window != 0).then(|| WindowRef {
            cpu: ev.cpu,
            slot: ev.window - 1,
            generation: ev.generation,
            replaced_repeats: ev.replaced_repeats,
        }),
    })
}

fn option_name(level: u8, name: u16) -> String {
    match (level, name) {
        (0, 4) => "IP_OPTIONS".to_owned(),
        (41, 57) => "IPV6_RTHDR".to_owned(),
        (41, 5) => "IPV6_2292RTHDR".to_owned(),
        (l, n) => format!("level {l} option {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::{IPPROTO_UDP, VERDICT_DENY};

    #[test]
    fn decodes_a_v4_mapped_udp_deny() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let ev = Event {
            ts_ns: 1,
            cgroup_id: 42,
            pid: 11,
            tgid: 10,
            comm,
            addr: "::ffff:198.18.0.9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            port: 53,
            hook: 2,
            proto: IPPROTO_UDP,
            verdict: VERDICT_DENY,
            family: 0,
            sock_type: 0,
            pad: 0,
            window: 3,
            cpu: 1,
            generation: 9,
            replaced_repeats: 5,
            pad2: 0,
        };
        // SAFETY: Event is repr(C) plain data.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        let r = decode(bytes).unwrap();
        assert_eq!(r.addr, "198.18.0.9".parse::<IpAddr>().unwrap());
        assert_eq!((r.pid, r.tid, r.comm.as_str()), (10, 11, "curl"));
        assert_eq!(
            (r.hook, r.proto.as_str(), r.verdict, r.port),
            ("sendmsg4", "udp", "deny", 53)
        );
        assert!(decode(&bytes[..10]).is_none());
        assert_eq!(r.socket, None);
        assert_eq!(
            r.window,
            Some(WindowRef {
                cpu: 1,
                slot: 2,
                generation: 9,
                replaced_repeats: 5
            })
        );
        // An event of the size older programs write: no window.
        let old = decode(&bytes[..64]).unwrap();
        assert_eq!((old.window, old.addr, old.port), (None, r.addr, 53));
    }

    #[test]
    fn decodes_a_refused_packet_socket() {
        let ev = Event {
            ts_ns: 1,
            cgroup_id: 42,
            pid: 11,
            tgid: 10,
            comm: [0; 16],
            addr: [0; 16],
            port: 0x0300,
            hook: enforcer_common::Hook::SockCreate as u8,
            proto: 0,
            verdict: VERDICT_DENY,
            family: enforcer_common::AF_PACKET as u8,
            sock_type: enforcer_common::SOCK_RAW as u8,
            window: 0,
            cpu: 0,
            generation: 0,
            replaced_repeats: 0,
            pad2: 0,
            pad: 0,
        };
        // SAFETY: Event is repr(C) plain data.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        let r = decode(bytes).unwrap();
        assert_eq!(r.hook, "sock_create");
        assert_eq!(r.socket.as_deref(), Some("packet/raw"));
        assert_eq!((r.proto.as_str(), r.port), ("ethertype-0x0003", 0));
    }
}
