//! Which ways out of an enforced cgroup are closed, in words, for the daemon's start-up log,
//! `inspect` and `/readyz` (docs/threat-model.md has the whole table).

use enforcer_common::{SOCKETS_ALLOW_PING, SOCKETS_ALLOW_RAW, SOCKETS_FOREIGN};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Protections {
    /// Raw inet sockets (`SOCK_RAW`, IPPROTO_RAW included).
    pub raw_sockets: String,
    /// Packet and XDP sockets.
    pub packet_sockets: String,
    /// Ping sockets (`SOCK_DGRAM`, ICMP).
    pub ping: String,
    /// UDP-Lite, SCTP and every other inet protocol the hooks cannot see.
    pub other_protocols: String,
    /// TCP and UDP sockets made outside the enforced cgroups and used inside them.
    pub outside_sockets: String,
}

/// `sockets`: the config's `SOCKETS_*` bits; `lsm`: whether the LSM program is attached, or
/// why not.
pub fn describe(sockets: u32, lsm: Result<(), &str>) -> Protections {
    let raw_allowed = sockets & SOCKETS_ALLOW_RAW != 0;
    Protections {
        raw_sockets: if raw_allowed {
            "allowed, not enforced (allow.rawSockets)".to_owned()
        } else {
            "refused (cgroup/sock_create)".to_owned()
        },
        packet_sockets: match (raw_allowed, lsm) {
            (true, _) => "allowed, not enforced (allow.rawSockets)".to_owned(),
            (false, Ok(())) => "refused (BPF LSM)".to_owned(),
            (false, Err(why)) => format!("NOT refused: {why}"),
        },
        ping: if sockets & SOCKETS_ALLOW_PING != 0 {
            "registered destinations only (allow.ping)".to_owned()
        } else {
            "refused (cgroup/sock_create)".to_owned()
        },
        other_protocols: "refused (cgroup/sock_create)".to_owned(),
        outside_sockets: if sockets & SOCKETS_FOREIGN != 0 {
            "checked by the calling task (programs on the cgroup root)".to_owned()
        } else {
            "NOT checked (foreignSockets: off)".to_owned()
        },
    }
}

/// Whether the LSM program is attached to every enforced cgroup, judged from the pinned
/// links (for `inspect`, which cannot ask the daemon why not).
pub fn lsm_from_links(rows: &[super::links::LinkRow]) -> Result<(), &'static str> {
    let mut cgroups: Vec<&str> = rows.iter().map(|r| r.cgroup.as_str()).collect();
    cgroups.dedup();
    let with_lsm = |cg: &str| {
        rows.iter()
            .any(|r| r.cgroup == cg && r.hook == enforcer_common::LSM_PROGRAM_NAME)
    };
    if !cgroups.is_empty() && cgroups.iter().all(|cg| with_lsm(cg)) {
        Ok(())
    } else {
        Err("the BPF LSM program is not attached (the daemon's log says why)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_sockets_depend_on_the_lsm() {
        let p = describe(0, Ok(()));
        assert_eq!(p.packet_sockets, "refused (BPF LSM)");
        assert_eq!(p.ping, "refused (cgroup/sock_create)");
        let p = describe(SOCKETS_ALLOW_PING, Err("bpf is not among the active LSMs"));
        assert_eq!(
            p.packet_sockets,
            "NOT refused: bpf is not among the active LSMs"
        );
        assert!(p.ping.starts_with("registered"));
        let p = describe(SOCKETS_ALLOW_RAW, Err("x"));
        assert!(p.packet_sockets.starts_with("allowed"));
        assert!(p.raw_sockets.starts_with("allowed"));
    }
}
