//! DNS-aware mode in the kernel (docs/architecture.md, "DNS-aware mode"): queries go to the
//! daemon's proxy, the workload sees replies and peers as the server it asked, and the proxy
//! learns which socket (process, cgroup, server) each query came from.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_map_lookup_elem,
        bpf_sk_release,
    },
    macros::cgroup_sock_addr,
    programs::{SkBuffContext, SockAddrContext},
};
use enforcer_common::{
    ClientKey, Config, DNS_HAS_EXEMPT, DNS_LOCAL_PROXY4, DNS_LOCAL_PROXY6, DNS_REDIRECT, DnsSocket,
    Hook, IPPROTO_TCP, IPPROTO_UDP, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, VERDICT_REDIRECT,
};

use crate::{
    maps::{CONFIG, DNS_CLIENTS, DNS_EXEMPT, DNS_OWN, DNS_PROXY, DNS_SOCKETS},
    programs::{ALLOW, Dest, MAPPED, dest_v4, dest_v6, port_of, sock_addr},
};

/// Deeper cgroups than this are not searched for an exempt ancestor (kubepods nest about 6).
const MAX_CGROUP_DEPTH: i32 = 16;

/// Sends a query to the proxy, remembering the server it was meant for. Returns the verdict:
/// redirected; allowed untouched (the daemon's own upstream socket, an exempt cgroup); or,
/// when the query cannot reach a proxy (none running, none of this family, or a loopback proxy
/// asked from another network namespace, where loopback is not the daemon), denied so that the
/// resolver fails at once instead of timing out, or in audit mode let through and reported.
#[inline(always)]
pub(crate) fn redirect(
    ctx: &SockAddrContext,
    cfg: &Config,
    hook: Hook,
    proto: u8,
    dest: &Dest,
    audit: bool,
) -> u8 {
    // SAFETY: helper with a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if DNS_OWN.get_ptr(cookie).is_some() {
        return VERDICT_ALLOW;
    }
    if cfg.dns & DNS_HAS_EXEMPT != 0 && exempt() {
        return VERDICT_ALLOW;
    }
    let unreachable = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
    if !proxy_present() {
        return unreachable;
    }
    let w = &dest.words;
    let v4 =
        matches!(hook, Hook::Connect4 | Hook::Sendmsg4) || (w[0] | w[1] == 0 && w[2] == MAPPED);
    let local_only = if v4 {
        DNS_LOCAL_PROXY4
    } else {
        DNS_LOCAL_PROXY6
    };
    // SAFETY: helper with a valid context.
    if cfg.dns & local_only != 0
        && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != cfg.netns_cookie
    {
        return unreachable;
    }
    // SAFETY: the context is valid for the run; these fields are writable in connect and
    // sendmsg hooks, each written with its natural width.
    let sa = unsafe { &mut *ctx.sock_addr };
    match hook {
        Hook::Connect4 | Hook::Sendmsg4 => {
            if cfg.proxy4 == 0 {
                return unreachable;
            }
            sa.user_ip4 = cfg.proxy4;
        }
        _ => {
            let to = if v4 {
                [0, 0, MAPPED, cfg.proxy4]
            } else {
                cfg.proxy6
            };
            // No proxy address of this family: fail the query rather than let it out.
            if to[3] == 0 && to[2] & !MAPPED == 0 && to[1] | to[0] == 0 {
                return unreachable;
            }
            sa.user_ip6[0] = to[0];
            sa.user_ip6[1] = to[1];
            sa.user_ip6[2] = to[2];
            sa.user_ip6[3] = to[3];
        }
    }
    sa.user_port = u32::from(cfg.proxy_port.to_be());
    remember(ctx, cookie, proto, dest);
    VERDICT_REDIRECT
}

#[inline(always)]
fn remember(ctx: &SockAddrContext, cookie: u64, proto: u8, dest: &Dest) {
    let socket = DnsSocket {
        server: dest.addr(),
        server_port: dest.port,
        proto,
        pad: 0,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        // SAFETY: as above.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
    };
    // An LRU map only fails on a broken map; the reply then shows the proxy's address, which
    // the resolver drops: a failed query, never a bypass.
    let _ignored = DNS_SOCKETS.insert(cookie, socket, 0);
}

/// A query from a socket made outside the enforced cgroups cannot be redirected (see
/// `programs::decide_as`): it may go only where a native one would have been let through
/// untouched.
#[inline(always)]
pub(crate) fn foreign_query_allowed(ctx: &SockAddrContext, cfg: &Config) -> bool {
    // SAFETY: helper with a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    DNS_OWN.get_ptr(cookie).is_some() || (cfg.dns & DNS_HAS_EXEMPT != 0 && exempt())
}

/// The destination is the proxy's address and port.
#[inline(always)]
pub(crate) fn is_proxy(cfg: &Config, dest: &Dest) -> bool {
    let w = &dest.words;
    let to_proxy4 = w[0] | w[1] == 0 && w[2] == MAPPED && w[3] == cfg.proxy4 && cfg.proxy4 != 0;
    let to_proxy6 = *w == cfg.proxy6 && cfg.proxy6 != [0; 4];
    dest.port == cfg.proxy_port && (to_proxy4 || to_proxy6)
}

/// The current cgroup or one of its ancestors is exempt from the redirect.
#[inline(always)]
fn exempt() -> bool {
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        if DNS_EXEMPT.get_ptr(id).is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// The proxy's socket is in `DNS_PROXY` while it is open: a closed socket leaves the map by
/// itself, so a dead daemon is seen here without anyone cleaning up.
#[inline(always)]
fn proxy_present() -> bool {
    let key: u32 = 0;
    // SAFETY: the map pointer is the map definition the loader relocates; a socket pointer
    // from a sockmap lookup is a reference that must be (and is) released.
    unsafe {
        let sk = bpf_map_lookup_elem(
            core::ptr::from_ref(&DNS_PROXY).cast_mut().cast(),
            core::ptr::from_ref(&key).cast(),
        );
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk);
    }
    true
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_server(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_server(&ctx, true);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore_server(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore_server(&ctx, true);
    ALLOW
}

/// A reply (or peer) that is the proxy, on a socket we redirected, is shown as the server the
/// workload asked: resolvers drop replies from any other address.
#[inline(always)]
fn restore_server(ctx: &SockAddrContext, v6: bool) {
    let Some(cfg) = CONFIG.get(0) else { return };
    if cfg.dns & DNS_REDIRECT == 0 || port_of(sock_addr(ctx)) != cfg.proxy_port {
        return;
    }
    let from = if v6 { dest_v6(ctx) } else { dest_v4(ctx) };
    let w = &from.words;
    let mapped = w[0] | w[1] == 0 && w[2] == MAPPED;
    let is_proxy = if mapped {
        w[3] == cfg.proxy4
    } else {
        w[0] == cfg.proxy6[0]
            && w[1] == cfg.proxy6[1]
            && w[2] == cfg.proxy6[2]
            && w[3] == cfg.proxy6[3]
    };
    if !is_proxy {
        return;
    }
    // SAFETY: helper with a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a map value pointer is valid for the program run.
    let Some(s) = (unsafe { DNS_SOCKETS.get(cookie) }) else {
        return;
    };
    // SAFETY: the server is 16 bytes, as four words.
    let to = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(s.server) };
    // SAFETY: these fields are writable in recvmsg and getpeername hooks.
    let sa = unsafe { &mut *ctx.sock_addr };
    if v6 {
        sa.user_ip6[0] = to[0];
        sa.user_ip6[1] = to[1];
        sa.user_ip6[2] = to[2];
        sa.user_ip6[3] = to[3];
    } else if to[0] | to[1] == 0 && to[2] == MAPPED {
        sa.user_ip4 = to[3];
    } else {
        return;
    }
    sa.user_port = u32::from(s.server_port.to_be());
}

/// For a packet to the proxy from a socket we redirected, records its source address and
/// port (which the proxy sees, and the connect hook could not: the port is chosen later) with
/// what the hook learned about the socket.
#[inline(always)]
pub(crate) fn publish_client(ctx: &SkBuffContext) -> Option<()> {
    let cfg = CONFIG.get(0)?;
    if cfg.dns & DNS_REDIRECT == 0 {
        return None;
    }
    let first: u8 = ctx.load(0).ok()?;
    let (proto, src, l4): (u8, [u32; 4], usize) = match first >> 4 {
        4 => {
            let dst: u32 = ctx.load(16).ok()?;
            if dst != cfg.proxy4 {
                return None;
            }
            let src: u32 = ctx.load(12).ok()?;
            (
                ctx.load(9).ok()?,
                [0, 0, MAPPED, src],
                usize::from(first & 0xf) * 4,
            )
        }
        6 => {
            let dst: [u32; 4] = ctx.load(24).ok()?;
            if dst != cfg.proxy6 {
                return None;
            }
            (ctx.load(6).ok()?, ctx.load(8).ok()?, 40)
        }
        _ => return None,
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    if u16::from_be(ports[1]) != cfg.proxy_port {
        return None;
    }
    // SAFETY: helper with a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: a map value pointer is valid for the program run.
    let socket = unsafe { DNS_SOCKETS.get(cookie) }?;
    let key = ClientKey {
        // SAFETY: same size, every bit pattern valid.
        addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(src) },
        port: u16::from_be(ports[0]),
        proto,
        pad: [0; 5],
    };
    DNS_CLIENTS.insert(key, socket, 0).ok()
}
