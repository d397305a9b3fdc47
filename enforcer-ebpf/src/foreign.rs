//! Sockets made outside an enforced cgroup and used inside it (docs/architecture.md, "Sockets
//! from outside"). The cgroup programs run by the socket's cgroup, fixed when the socket was
//! made: one created before its process joined, or received over a Unix socket from an
//! unenforced process, runs none of them. These programs sit on the cgroup root, so every
//! socket runs them, and decide by the calling task instead: a task inside an enforced cgroup
//! using a socket that was not made inside one gets the same verdict the cgroup programs give.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use enforcer_common::{
    DNS_REDIRECT, Hook, TASK_CGROUP_MAX_ID, TASK_CGROUP_UNKNOWN, task_cgroup_answer,
    task_cgroup_entry, task_cgroup_slot,
};

use crate::{
    dns::is_proxy,
    maps::{CONFIG, ENFORCED_ROOTS, NATIVE_SOCKETS, ROOTS_GEN, TASK_CGROUPS},
    programs::{ALLOW, Dest, decide_as, dest_v4, dest_v6},
};

/// Deeper cgroups than this are not searched for an enforced ancestor.
const MAX_CGROUP_DEPTH: i32 = 32;

#[cgroup_sock_addr(connect4)]
pub fn foreign_connect4(ctx: SockAddrContext) -> i32 {
    foreign(&ctx, Hook::ForeignConnect4, || dest_v4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn foreign_connect6(ctx: SockAddrContext) -> i32 {
    foreign(&ctx, Hook::ForeignConnect6, || dest_v6(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn foreign_sendmsg4(ctx: SockAddrContext) -> i32 {
    foreign(&ctx, Hook::ForeignSendmsg4, || dest_v4(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn foreign_sendmsg6(ctx: SockAddrContext) -> i32 {
    foreign(&ctx, Hook::ForeignSendmsg6, || dest_v6(&ctx))
}

/// Cheapest test first: most calls on a host come from tasks outside every enforced cgroup
/// (one helper call and one cache lookup); then sockets made inside one, which the cgroup
/// programs (they run before these) have already decided.
#[inline(always)]
fn foreign(ctx: &SockAddrContext, hook: Hook, dest: impl FnOnce() -> Dest) -> i32 {
    if !task_enforced() {
        return ALLOW;
    }
    // SAFETY: helper with a valid context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if NATIVE_SOCKETS.get_ptr(cookie).is_some() {
        return ALLOW;
    }
    let dest = dest();
    // A native socket's DNS query, sent to the proxy by its cgroup's program, when the socket
    // has left the native-socket cache: the proxy is where the rules wanted it to go.
    if CONFIG
        .get(0)
        .is_some_and(|c| c.dns & DNS_REDIRECT != 0 && is_proxy(c, &dest))
    {
        return ALLOW;
    }
    decide_as(ctx, hook, dest, false)
}

/// Whether the calling task's cgroup is an enforced one or below one. A cgroup's ancestry
/// never changes and its id is never reused, so the answer is cached per cgroup, tagged with
/// the generation of `ENFORCED_ROOTS` it was computed under. The generation is read before
/// the walk and the daemon bumps it after changing the roots: an answer computed while they
/// changed carries the old generation and is not used again. The cache is an array slot, read
/// and written as one word (`enforcer_common::task_cgroup_entry`): its lookup is inlined,
/// where a hash map's is a call.
#[inline(always)]
fn task_enforced() -> bool {
    let generation = roots_generation();
    // SAFETY: helper without preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let slot = TASK_CGROUPS.get_ptr_mut(task_cgroup_slot(cgroup));
    if let Some(p) = slot {
        // SAFETY: a map value pointer is valid for the program run; one aligned 8-byte load.
        let entry = unsafe { core::ptr::read_volatile(p) };
        let answer = task_cgroup_answer(entry, cgroup, generation);
        if answer != TASK_CGROUP_UNKNOWN {
            return answer != 0;
        }
    }
    let mut found = false;
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if ENFORCED_ROOTS.get_ptr(id).is_some() {
            found = true;
            break;
        }
        level += 1;
    }
    // Stored only if nothing moved during the walk: neither the enforced set (a newer
    // generation would not accept the answer anyway) nor the task (the walk would have
    // answered for its new cgroup).
    if let Some(p) = slot
        && cgroup < TASK_CGROUP_MAX_ID
        && roots_generation() == generation
        // SAFETY: helper without preconditions.
        && unsafe { bpf_get_current_cgroup_id() } == cgroup
    {
        // SAFETY: as above; one aligned 8-byte store, so a racing reader sees it whole.
        unsafe { core::ptr::write_volatile(p, task_cgroup_entry(cgroup, generation, found)) };
    }
    found
}

/// `ROOTS_GEN`, loaded afresh each time (the daemon changes it under the program).
#[inline(always)]
fn roots_generation() -> u32 {
    // SAFETY: a map value pointer is valid for the program run; one aligned 4-byte load.
    ROOTS_GEN
        .get_ptr(0)
        .map_or(0, |p| unsafe { core::ptr::read_volatile(p) })
}
