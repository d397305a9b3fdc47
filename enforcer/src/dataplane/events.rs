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
}

/// Decodes one ring-buffer record; `None` if it has the wrong size (another ABI).
pub fn decode(bytes: &[u8]) -> Option<EventRecord> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the length was checked; Event is plain data valid for any bit pattern, and
    // read_unaligned copes with the ring buffer's 8-byte alignment not being guaranteed here.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let comm_len = ev
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ev.comm.len());
    Some(EventRecord {
        ts_ns: ev.ts_ns,
        pid: ev.tgid,
        tid: ev.pid,
        comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
        cgroup_id: ev.cgroup_id,
        hook: hook_name(u32::from(ev.hook)),
        proto: proto_name(ev.proto),
        addr: Net::from_normalized(ev.addr, 128).addr,
        port: ev.port,
        verdict: verdict_name(ev.verdict),
    })
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
            pad: [0; 3],
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
    }
}
