//! Names for the kernel's hook, protocol-class and verdict codes (shared by stats and events).

use enforcer_common::{
    HOOK_NAMES, VERDICT_ALLOW, VERDICT_ALLOW_LOOPBACK, VERDICT_AUDIT, VERDICT_DENY,
};

pub fn hook_name(hook: u32) -> &'static str {
    HOOK_NAMES.get(hook as usize).copied().unwrap_or("unknown")
}

pub const PROTO_CLASS_NAMES: [&str; enforcer_common::NUM_PROTO_CLASSES as usize] =
    ["tcp", "udp", "other", "icmp", "raw"];

pub fn verdict_name(verdict: u8) -> &'static str {
    match verdict {
        VERDICT_ALLOW => "allow",
        VERDICT_ALLOW_LOOPBACK => "allow-loopback",
        VERDICT_DENY => "deny",
        VERDICT_AUDIT => "audit",
        enforcer_common::VERDICT_REDIRECT => "redirect",
        _ => "unknown",
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        enforcer_common::IPPROTO_TCP => "tcp".to_owned(),
        enforcer_common::IPPROTO_UDP => "udp".to_owned(),
        1 => "icmp".to_owned(),
        58 => "icmpv6".to_owned(),
        n => format!("proto-{n}"),
    }
}

/// Whether a hook can count a verdict for a protocol class at all: the metrics export only
/// these series (at zero until they happen), not every combination of the counter index.
pub fn possible(hook: u32, proto_class: u32, verdict: u8) -> bool {
    use enforcer_common::{
        Hook, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_RAW, VERDICT_REDIRECT,
    };
    let decided = matches!(
        verdict,
        VERDICT_ALLOW | VERDICT_ALLOW_LOOPBACK | VERDICT_DENY | VERDICT_AUDIT
    );
    match hook {
        h if h == Hook::SockCreate as u32 => {
            matches!(
                proto_class,
                PROTO_CLASS_ICMP | PROTO_CLASS_RAW | PROTO_CLASS_OTHER
            ) && matches!(verdict, VERDICT_DENY | VERDICT_AUDIT)
        }
        h if h == Hook::Egress as u32 => {
            (proto_class == PROTO_CLASS_ICMP && decided)
                || (proto_class == PROTO_CLASS_OTHER
                    && matches!(verdict, VERDICT_DENY | VERDICT_AUDIT))
        }
        h if h == Hook::Setsockopt as u32 => {
            proto_class == PROTO_CLASS_OTHER && matches!(verdict, VERDICT_DENY | VERDICT_AUDIT)
        }
        _ => {
            proto_class != PROTO_CLASS_RAW
                && (decided
                    || (verdict == VERDICT_REDIRECT
                        && proto_class < PROTO_CLASS_OTHER
                        && hook < Hook::SockCreate as u32))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::{
        Hook, PROTO_CLASS_ICMP, PROTO_CLASS_RAW, PROTO_CLASS_TCP, VERDICT_REDIRECT,
    };

    #[test]
    fn only_series_a_hook_can_count_are_possible() {
        assert!(possible(
            Hook::Connect4 as u32,
            PROTO_CLASS_TCP,
            VERDICT_REDIRECT
        ));
        assert!(!possible(
            Hook::ForeignConnect4 as u32,
            PROTO_CLASS_TCP,
            VERDICT_REDIRECT
        ));
        assert!(possible(
            Hook::SockCreate as u32,
            PROTO_CLASS_RAW,
            VERDICT_DENY
        ));
        assert!(!possible(
            Hook::SockCreate as u32,
            PROTO_CLASS_TCP,
            VERDICT_DENY
        ));
        assert!(!possible(
            Hook::SockCreate as u32,
            PROTO_CLASS_RAW,
            VERDICT_ALLOW
        ));
        assert!(possible(
            Hook::Egress as u32,
            PROTO_CLASS_ICMP,
            VERDICT_ALLOW_LOOPBACK
        ));
        assert!(!possible(
            Hook::Egress as u32,
            PROTO_CLASS_TCP,
            VERDICT_DENY
        ));
        assert!(!possible(
            Hook::Sendmsg4 as u32,
            PROTO_CLASS_RAW,
            VERDICT_DENY
        ));
    }
}
