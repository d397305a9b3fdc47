//! Which sockets an enforced cgroup may create (docs/architecture.md, "What is enforced"):
//! only those whose traffic the other programs see. Raw sockets send hand-built packets no
//! `sock_addr` hook checks, ping sockets' `sendto` runs none either (the egress program checks
//! it instead, when ping is allowed), and UDP-Lite's and SCTP's `connect()` skip the hooks.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sockopt, lsm_cgroup},
    programs::{LsmContext, SockContext, SockoptContext},
};
use enforcer_common::{
    AF_INET, AF_INET6, AF_PACKET, Config, Hook, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, MODE_AUDIT, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_RAW, SOCK_DGRAM,
    SOCK_RAW, SOCK_STREAM, SOCKETS_ALLOW_PING, SOCKETS_ALLOW_RAW, SOCKETS_FOREIGN, VERDICT_AUDIT,
    VERDICT_DENY, counter_index,
};

use crate::{
    maps::{CONFIG, NATIVE_SOCKETS},
    programs::{ALLOW, DENY, count, report_option, report_socket},
};

/// MPTCP sockets run the TCP hooks on their subflows.
const IPPROTO_MPTCP: u32 = 262;

/// Families outside inet that reach nothing beyond the host: everything else that can carry
/// traffic off the node (vsock too: it reaches the hypervisor's host) is refused.
const AF_UNIX: u32 = 1;
const AF_KEY: u32 = 15;
const AF_NETLINK: u32 = 16;
const AF_ALG: u32 = 38;
/// XDP sockets send raw frames like packet sockets.
const AF_XDP: u32 = 44;

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel passes a valid context; the verifier accepts only 4-byte loads of
    // these fields, which volatile reads keep from being merged into one wider load.
    let (family, ty, protocol) = unsafe {
        let sk = ctx.sock;
        (
            core::ptr::read_volatile(&(*sk).family),
            core::ptr::read_volatile(&(*sk).type_),
            core::ptr::read_volatile(&(*sk).protocol),
        )
    };
    let class = match (ty, protocol) {
        (SOCK_STREAM, p) if p == u32::from(IPPROTO_TCP) || p == IPPROTO_MPTCP => None,
        (SOCK_DGRAM, p) if p == u32::from(IPPROTO_UDP) => None,
        (SOCK_DGRAM, p) if p == u32::from(IPPROTO_ICMP) || p == u32::from(IPPROTO_ICMPV6) => {
            Some(PROTO_CLASS_ICMP)
        }
        (SOCK_RAW, _) => Some(PROTO_CLASS_RAW),
        _ => Some(PROTO_CLASS_OTHER),
    };
    let verdict = match class {
        None => ALLOW,
        Some(c) => decide(c, family, ty, protocol),
    };
    if verdict == ALLOW
        && CONFIG
            .get(0)
            .is_some_and(|c| c.sockets & SOCKETS_FOREIGN != 0)
    {
        // SAFETY: helper with a valid context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // An LRU insert fails only on a broken map; the socket is then decided twice, by the
        // same rules.
        let _ignored = NATIVE_SOCKETS.insert(cookie, 1u8, 0);
    }
    verdict
}

/// Packet and XDP sockets (and other families that leave the host) never reach
/// `cgroup/sock_create`. This hook runs in the creating task's cgroup; it returns 1 to allow.
#[lsm_cgroup(hook = "socket_create")]
pub fn lsm_sock_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let kern: i32 = ctx.arg(3);
    let family = family as u32;
    let class = match family {
        AF_INET | AF_INET6 | AF_UNIX | AF_NETLINK | AF_KEY | AF_ALG => return ALLOW,
        _ if kern != 0 => return ALLOW,
        AF_PACKET | AF_XDP => PROTO_CLASS_RAW,
        _ => PROTO_CLASS_OTHER,
    };
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    decide(class, family, ty as u32, protocol as u32)
}

/// Allowed if the config allows the class; otherwise refused, or in audit mode let through and
/// reported. Without a config entry (before the daemon's first write) only TCP and UDP pass.
#[inline(always)]
fn decide(class: u32, family: u32, ty: u32, protocol: u32) -> i32 {
    let cfg = CONFIG.get(0);
    if cfg.is_some_and(|c| allowed(c, class)) {
        return ALLOW;
    }
    let verdict = match cfg {
        Some(c) if c.mode == MODE_AUDIT => VERDICT_AUDIT,
        _ => VERDICT_DENY,
    };
    count(counter_index(
        Hook::SockCreate as u32,
        class,
        u32::from(verdict),
    ));
    report_socket(verdict, family, ty, protocol);
    if verdict == VERDICT_DENY { DENY } else { ALLOW }
}

#[inline(always)]
fn allowed(cfg: &Config, class: u32) -> bool {
    match class {
        PROTO_CLASS_ICMP => cfg.sockets & SOCKETS_ALLOW_PING != 0,
        PROTO_CLASS_RAW => cfg.sockets & SOCKETS_ALLOW_RAW != 0,
        _ => false,
    }
}

const SOL_IP: i32 = 0;
const IP_OPTIONS: i32 = 4;
const SOL_IPV6: i32 = 41;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_RTHDR: i32 = 57;

/// Source routing sends a socket's packets to its first hop, past the address the connect
/// and sendmsg hooks checked: an enforced cgroup cannot set IPv4 options (where LSRR and SSRR
/// live) or an IPv6 routing header on a socket. Clearing them (length 0) is fine. The same
/// options given per message (cmsg) are dropped by the egress program.
#[cgroup_sockopt(setsockopt)]
pub fn sockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel passes a valid context; each field is read with its natural width.
    let (level, name, len) = unsafe {
        let s = ctx.sockopt;
        ((*s).level, (*s).optname, (*s).optlen)
    };
    let source_route = len > 0
        && match level {
            SOL_IP => name == IP_OPTIONS,
            SOL_IPV6 => name == IPV6_RTHDR || name == IPV6_2292RTHDR,
            _ => false,
        };
    if !source_route {
        return ALLOW;
    }
    let verdict = match CONFIG.get(0) {
        Some(c) if c.mode == MODE_AUDIT => VERDICT_AUDIT,
        _ => VERDICT_DENY,
    };
    count(counter_index(
        Hook::Setsockopt as u32,
        PROTO_CLASS_OTHER,
        u32::from(verdict),
    ));
    report_option(verdict, level, name);
    if verdict == VERDICT_DENY { DENY } else { ALLOW }
}
