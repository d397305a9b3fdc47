//! Packets leaving an enforced cgroup (docs/architecture.md, "What is enforced"). A ping
//! socket's `sendto` runs no `sock_addr` hook, so its echo requests are checked here against
//! the ICMP rules; a source-routed packet (IPv4 LSRR/SSRR, an IPv6 routing header), which
//! would go past the address the hooks checked, is dropped; in DNS-aware mode the proxy also
//! learns here which socket a query came from.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use enforcer_common::{
    Hook, IPPROTO_ICMP, IPPROTO_ICMPV6, MODE_AUDIT, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER,
    VERDICT_ALLOW, VERDICT_ALLOW_LOOPBACK, VERDICT_AUDIT, VERDICT_DENY, counter_index,
};

use crate::{
    dns,
    maps::CONFIG,
    programs::{ALLOW, DENY, Dest, MAPPED, count, is_loopback, report, rule_matches},
    scope::Caller,
};

const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    // One 20-byte copy: the minimal IPv4 header, or IPv6's up to its next header.
    let Ok(head) = ctx.load::<[u8; 20]>(0) else {
        return ALLOW;
    };
    let verdict = match head[0] >> 4 {
        4 => check_v4(&ctx, &head),
        6 => check_v6(&ctx, &head),
        _ => None,
    };
    if verdict == Some(VERDICT_DENY) {
        return DENY;
    }
    dns::publish_client(&ctx);
    ALLOW
}

#[inline(always)]
fn check_v4(ctx: &SkBuffContext, head: &[u8; 20]) -> Option<u8> {
    let dest = Dest {
        words: [
            0,
            0,
            MAPPED,
            u32::from_ne_bytes([head[16], head[17], head[18], head[19]]),
        ],
        port: 0,
    };
    let ihl = usize::from(head[0] & 0xf);
    // IPv4 options: the workload can add them only per message (the setsockopt program
    // refuses them on the socket), and among them are the loose and strict source routes.
    // Telling those apart means walking the options, which costs the verifier more than the
    // rare packet with options is worth: every one is refused (docs/threat-model.md).
    if ihl > 5 {
        return Some(refuse_source_route(head[9], &dest));
    }
    if head[9] != IPPROTO_ICMP {
        return None;
    }
    let ty: u8 = ctx.load(ihl * 4).ok()?;
    (ty == ICMP_ECHO).then(|| check_echo(ctx, &dest))
}

#[inline(always)]
fn check_v6(ctx: &SkBuffContext, head: &[u8; 20]) -> Option<u8> {
    let mut next = head[6];
    let mut off = 40usize;
    // Extension headers: hop-by-hop and destination options are walked (a few at most), a
    // routing header is refused wherever it sits.
    let mut hops = 0;
    while hops < MAX_EXT_HEADERS && (next == EXT_HOP_BY_HOP || next == EXT_DEST_OPTS) {
        let ext: [u8; 2] = ctx.load(off).ok()?;
        next = ext[0];
        off += (usize::from(ext[1]) + 1) * 8;
        hops += 1;
    }
    if next == EXT_ROUTING {
        let dest = Dest {
            words: ctx.load(24).ok()?,
            port: 0,
        };
        return Some(refuse_source_route(next, &dest));
    }
    // Ping sockets add no extension header: an echo behind one is not a ping socket's.
    if head[6] != IPPROTO_ICMPV6 {
        return None;
    }
    let ty: u8 = ctx.load(40).ok()?;
    if ty != ICMPV6_ECHO_REQUEST {
        return None;
    }
    let dest = Dest {
        words: ctx.load(24).ok()?,
        port: 0,
    };
    Some(check_echo(ctx, &dest))
}

const MAX_EXT_HEADERS: u32 = 4;
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_DEST_OPTS: u8 = 60;

/// A source-routed packet (or an IPv4 packet with options) from an enforced cgroup, set per
/// message where the setsockopt program cannot see it, is dropped, or in audit mode reported.
#[inline(always)]
fn refuse_source_route(proto: u8, dest: &Dest) -> u8 {
    let audit = CONFIG.get(0).is_some_and(|c| c.mode == MODE_AUDIT);
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
    count(counter_index(
        Hook::Egress as u32,
        PROTO_CLASS_OTHER,
        u32::from(verdict),
    ));
    report(Hook::Egress, proto, verdict, dest);
    verdict
}

#[inline(always)]
fn check_echo(ctx: &SkBuffContext, dest: &Dest) -> u8 {
    let skb = ctx.skb.skb;
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
    } else if rule_matches(
        IPPROTO_ICMP,
        dest,
        cfg,
        &mut Caller::packet(cfg.default_policy, skb),
    ) {
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
