//! Packets leaving an enforced cgroup. A ping socket's `sendto` runs no `sock_addr` hook, so
//! its echo requests are checked here against the ICMP rules (docs/architecture.md, "What is
//! enforced"); in DNS-aware mode the proxy also learns here which socket a query came from.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use enforcer_common::{
    DNS_REDIRECT, Hook, IPPROTO_ICMP, IPPROTO_ICMPV6, MODE_AUDIT, PROTO_CLASS_ICMP, VERDICT_ALLOW,
    VERDICT_ALLOW_LOOPBACK, VERDICT_AUDIT, VERDICT_DENY, counter_index,
};

use crate::{
    dns,
    maps::CONFIG,
    programs::{ALLOW, DENY, Dest, MAPPED, count, is_loopback, report, rule_matches},
};

const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    if let Some(dest) = echo_request(&ctx)
        && check_echo(&dest) == VERDICT_DENY
    {
        return DENY;
    }
    dns::publish_client(&ctx);
    ALLOW
}

/// The destination of an ICMP echo request; `None` for every other packet, after one
/// 20-byte copy (the minimal IPv4 header; IPv6 keeps its next header within it). An IPv6 echo
/// behind extension headers is not recognised: ping sockets never add any.
#[inline(always)]
fn echo_request(ctx: &SkBuffContext) -> Option<Dest> {
    let head: [u8; 20] = ctx.load(0).ok()?;
    match head[0] >> 4 {
        4 => {
            if head[9] != IPPROTO_ICMP {
                return None;
            }
            let ty: u8 = ctx.load(usize::from(head[0] & 0xf) * 4).ok()?;
            if ty != ICMP_ECHO {
                return None;
            }
            Some(Dest {
                words: [
                    0,
                    0,
                    MAPPED,
                    u32::from_ne_bytes([head[16], head[17], head[18], head[19]]),
                ],
                port: 0,
            })
        }
        6 => {
            if head[6] != IPPROTO_ICMPV6 {
                return None;
            }
            let ty: u8 = ctx.load(40).ok()?;
            if ty != ICMPV6_ECHO_REQUEST {
                return None;
            }
            Some(Dest {
                words: ctx.load(24).ok()?,
                port: 0,
            })
        }
        _ => None,
    }
}

#[inline(always)]
fn check_echo(dest: &Dest) -> u8 {
    let Some(cfg) = CONFIG.get(0) else {
        count(counter_index(
            Hook::Egress as u32,
            PROTO_CLASS_ICMP,
            u32::from(VERDICT_DENY),
        ));
        return VERDICT_DENY;
    };
    let verdict = if cfg.allow_loopback != 0 && is_loopback(&dest.words) {
        VERDICT_ALLOW_LOOPBACK
    } else if rule_matches(IPPROTO_ICMP, dest, cfg.skip, cfg.dns & DNS_REDIRECT != 0) {
        VERDICT_ALLOW
    } else if cfg.mode == MODE_AUDIT {
        VERDICT_AUDIT
    } else {
        VERDICT_DENY
    };
    count(counter_index(
        Hook::Egress as u32,
        PROTO_CLASS_ICMP,
        u32::from(verdict),
    ));
    if verdict == VERDICT_DENY || verdict == VERDICT_AUDIT {
        report(Hook::Egress, IPPROTO_ICMP, verdict, dest);
    }
    verdict
}
