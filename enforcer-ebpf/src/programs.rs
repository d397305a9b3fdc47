use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE, bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use enforcer_common::{
    COUNTER_EVENTS_DROPPED, Config, DNS_PORT, DNS_REDIRECT, EVENT_WINDOW_SLOTS, Event, EventWindow,
    Hook, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MODE_AUDIT, POLICY_NODE,
    POLICY_UNMAPPED, PROTO_CLASS_ICMP, PROTO_CLASS_OTHER, PROTO_CLASS_TCP, PROTO_CLASS_UDP,
    RULE_KEY_FIXED_BITS, RuleKey, SKIP_EXACT_ANY_PORT, SKIP_PREFIX_ANY_PORT, SKIP_PREFIX_PORT,
    SKIP_SCOPING, SLOT_EMPTY, SLOT_LIVE, TABLE_PROBES, VERDICT_ALLOW, VERDICT_ALLOW_LOOPBACK,
    VERDICT_AUDIT, VERDICT_DENY, VSET_EVERYONE, counter_index, key_head, overflow_bit,
    prefix_region, table_hash_words, word_pair,
};

use crate::{
    dns,
    maps::{
        CONFIG, COUNTERS, EVENT_GENERATION, EVENT_WINDOWS, EVENTS, NO_PREFIX, OVERFLOW_HOMES,
        RULES_EXACT, RULES_LEARNED, RULES_PREFIX, RULES_TABLE,
    },
    scope::Caller,
};

pub(crate) const ALLOW: i32 = 1;
pub(crate) const DENY: i32 = 0;

/// No exact rule for the destination (never a set id).
const NO_RULE: u32 = u32::MAX;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide_as(&ctx, Hook::Connect4, dest_v4(&ctx), true)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide_as(&ctx, Hook::Connect6, dest_v6(&ctx), true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide_as(&ctx, Hook::Sendmsg4, dest_v4(&ctx), true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide_as(&ctx, Hook::Sendmsg6, dest_v6(&ctx), true)
}

/// Destination address as four words in memory (network) order, and port in host order.
/// Words rather than bytes: the key is built and compared with a few word moves instead of a
/// byte loop (which the compiler turned into a memset call and byte stores).
pub(crate) struct Dest {
    pub(crate) words: [u32; 4],
    pub(crate) port: u16,
}

impl Dest {
    #[inline(always)]
    pub(crate) fn addr(&self) -> [u8; 16] {
        // SAFETY: same size, and every bit pattern is a valid [u8; 16].
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(self.words) }
    }
}

#[inline(always)]
pub(crate) fn sock_addr(ctx: &SockAddrContext) -> &bpf_sock_addr {
    // SAFETY: the kernel passes a valid context for the whole program run; fields are read one at
    // a time with their natural width, which is what the verifier's context rewriting accepts.
    unsafe { &*ctx.sock_addr }
}

#[inline(always)]
pub(crate) fn port_of(sa: &bpf_sock_addr) -> u16 {
    // user_port holds the port in network order in its low 16 bits.
    u16::from_be(sa.user_port as u16)
}

/// The `::ffff:` word of a v4-mapped address, in memory order.
pub(crate) const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `user_ip4` may only be read in the v4 hooks; normalise to `::ffff:a.b.c.d`.
#[inline(always)]
pub(crate) fn dest_v4(ctx: &SockAddrContext) -> Dest {
    let sa = sock_addr(ctx);
    Dest {
        words: [0, 0, MAPPED, sa.user_ip4],
        port: port_of(sa),
    }
}

/// A v4-mapped destination from a dual-stack socket is already in the normalised form.
#[inline(always)]
pub(crate) fn dest_v6(ctx: &SockAddrContext) -> Dest {
    let sa = sock_addr(ctx);
    Dest {
        words: [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ],
        port: port_of(sa),
    }
}

/// Loopback in either form, plus the unspecified address, which the kernel connects to loopback.
#[inline(always)]
pub(crate) fn is_loopback(w: &[u32; 4]) -> bool {
    if w[0] | w[1] != 0 {
        return false;
    }
    if w[2] == MAPPED {
        // ::ffff:127.0.0.0/104 and ::ffff:0.0.0.0
        return w[3].to_ne_bytes()[0] == 127 || w[3] == 0;
    }
    // ::1 and ::
    w[2] == 0 && (w[3] == 0 || w[3] == u32::from_ne_bytes([0, 0, 0, 1]))
}

/// Exact rule for this port first (the common case: one hash lookup), then only the lookups
/// that can match: userspace sets `skip` bits for the kinds of rule that do not exist, which
/// saves the trie walks on a denied destination when there are no CIDR or any-port rules.
/// A rule the caller's policy may not use does not match: the next stage is tried. An exact
/// rule for everyone allows without the caller's policy; otherwise the policy is looked up
/// once, in one place (the lookup's ancestor walk is large, and every inlined copy costs the
/// verifier), unless `SKIP_SCOPING` says no rule needs it.
#[inline(always)]
pub(crate) fn rule_matches(proto: u8, dest: &Dest, cfg: &Config, caller: &mut Caller) -> bool {
    let (skip, learned) = (cfg.skip, cfg.dns & DNS_REDIRECT != 0);
    // The key as words in registers: hashed and compared without a trip through the stack.
    let w = &dest.words;
    let mut key = [
        key_head(POLICY_NODE, dest.port, proto),
        word_pair(w[0], w[1]),
        word_pair(w[2], w[3]),
    ];
    // SAFETY (every dereference below): a map value pointer is valid for the program run.
    // A sentinel rather than an Option: LLVM may copy a None's undefined payload into a
    // register, which the verifier refuses to read.
    let exact = exact_vset(&key, cfg);
    if exact == VSET_EVERYONE {
        return true;
    }
    let policy = if skip & SKIP_SCOPING == 0 {
        caller.policy()
    } else {
        POLICY_UNMAPPED
    };
    let sees = |vset: u32| vset == VSET_EVERYONE || Caller::in_set(vset, policy);
    if exact != NO_RULE && sees(exact) {
        return true;
    }
    // Learned rules (DNS-aware mode only) always name a port: they come from ServiceEntry
    // ports.
    if learned && let Some(v) = RULES_LEARNED.get_ptr(RuleKey::from_words(key)) {
        let (expires, vset) = unsafe { ((*v).expires_ns, (*v).vset) };
        // SAFETY: helper without preconditions.
        if (expires == 0 || unsafe { bpf_ktime_get_ns() } <= expires) && sees(vset) {
            return true;
        }
    }
    let skip = skip | prefix_skips(dest);
    let full = RULE_KEY_FIXED_BITS + 128;
    if skip & SKIP_PREFIX_PORT == 0
        && let Some(v) = RULES_PREFIX.get(Key::new(full, RuleKey::from_words(key)))
        && sees(v.vset)
    {
        return true;
    }
    // Port 0 in a rule means any port.
    key[0] = key_head(POLICY_NODE, 0, proto);
    if skip & SKIP_EXACT_ANY_PORT == 0 {
        let any_port = exact_vset(&key, cfg);
        if any_port != NO_RULE && sees(any_port) {
            return true;
        }
    }
    skip & SKIP_PREFIX_ANY_PORT == 0
        && RULES_PREFIX
            .get(Key::new(full, RuleKey::from_words(key)))
            .is_some_and(|v| sees(v.vset))
}

/// Both prefix skip bits when `NO_PREFIX` says no prefix rule reaches the destination's
/// region, else none. A value, not a branch around the walks: a branch that set the bits
/// would make the verifier walk the rest of the program once more for each outcome (it did:
/// 100 to 330 ms more loading, docs/architecture.md "The denied path"). The region is
/// computed without a branch for the same reason ([`prefix_region`]).
#[inline(always)]
fn prefix_skips(dest: &Dest) -> u32 {
    let region = prefix_region(&dest.words);
    let word = NO_PREFIX.get(region / 64).map_or(0, |w| *w);
    // Hidden from the optimiser, which would otherwise turn the product back into a branch.
    let bit = core::hint::black_box((word >> (region % 64)) as u32 & 1);
    bit * (SKIP_PREFIX_PORT | SKIP_PREFIX_ANY_PORT)
}

/// The exact rule's visibility set, or [`NO_RULE`]: the table's slots from the key's home on,
/// until an empty one (docs/architecture.md, "Rule maps"); `RULES_EXACT` only when some rule
/// of the home's region lives there. `key`: [`RuleKey::words`].
#[inline(always)]
fn exact_vset(key: &[u64; 3], cfg: &Config) -> u32 {
    let home = (table_hash_words(key) as u32) & cfg.table_mask;
    let mut i = 0;
    while i < TABLE_PROBES {
        let Some(slot) = RULES_TABLE.get(home.wrapping_add(i) & cfg.table_mask) else {
            break;
        };
        if slot.state == SLOT_EMPTY {
            break;
        }
        // The state before the key (a slot's key changes only while it is not live), and
        // one test of three words, not `==` on arrays (a call to memcmp).
        if slot.state == SLOT_LIVE {
            let k = slot.key_words();
            if (k[0] ^ key[0]) | (k[1] ^ key[1]) | (k[2] ^ key[2]) == 0 {
                return slot.value.vset;
            }
        }
        i += 1;
    }
    let (word, bit) = overflow_bit(home);
    if OVERFLOW_HOMES
        .get(word)
        .is_none_or(|w| (*w >> bit) & 1 == 0)
    {
        return NO_RULE;
    }
    // SAFETY: a map value pointer is valid for the program run.
    RULES_EXACT
        .get_ptr(RuleKey::from_words(*key))
        .map_or(NO_RULE, |v| unsafe { (*v).vset })
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// The verdict for one connect/sendmsg. `native`: the socket was made in an enforced cgroup,
/// whose recvmsg programs show DNS replies as coming from the server asked; a socket from
/// outside runs none of them, so its queries cannot go to the proxy.
#[inline(always)]
pub(crate) fn decide_as(ctx: &SockAddrContext, hook: Hook, mut dest: Dest, native: bool) -> i32 {
    let sa = sock_addr(ctx);
    let mut proto = sa.protocol as u8;
    let proto_class = match proto {
        IPPROTO_TCP => PROTO_CLASS_TCP,
        IPPROTO_UDP => PROTO_CLASS_UDP,
        // A ping socket's connect (kernel >= 6.1): its "port" is an echo identifier, and one
        // ICMP rule covers both families.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            proto = IPPROTO_ICMP;
            dest.port = 0;
            PROTO_CLASS_ICMP
        }
        _ => PROTO_CLASS_OTHER,
    };
    // A missing config entry can only happen before the daemon's first write: fail closed.
    let Some(cfg) = CONFIG.get(0) else {
        count(counter_index(hook as u32, proto_class, VERDICT_DENY as u32));
        return DENY;
    };
    // `mode` is read only where a call is not allowed: an array's values start 8 bytes
    // before a cache line, so it shares a line with the ABI version only, apart from the
    // fields every call reads.
    let audit = || cfg.mode == MODE_AUDIT;

    // DNS-aware mode: every query goes to the proxy, whatever server it was meant for,
    // loopback stubs included (docs/architecture.md, "DNS-aware mode").
    if cfg.dns & DNS_REDIRECT != 0
        && dest.port == DNS_PORT
        && (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
    {
        let verdict = if native {
            dns::redirect(ctx, cfg, hook, proto, &dest, audit())
        } else if dns::foreign_query_allowed(ctx, cfg) {
            VERDICT_ALLOW
        } else if audit() {
            VERDICT_AUDIT
        } else {
            VERDICT_DENY
        };
        count(counter_index(hook as u32, proto_class, verdict as u32));
        if verdict == VERDICT_DENY || verdict == VERDICT_AUDIT {
            report(hook, proto, verdict, &dest);
        }
        return if verdict == VERDICT_DENY { DENY } else { ALLOW };
    }

    let verdict = if cfg.allow_loopback != 0 && is_loopback(&dest.words) {
        VERDICT_ALLOW_LOOPBACK
    } else if rule_matches(proto, &dest, cfg, &mut Caller::task(cfg.default_policy)) {
        VERDICT_ALLOW
    } else if audit() {
        VERDICT_AUDIT
    } else {
        VERDICT_DENY
    };
    count(counter_index(hook as u32, proto_class, verdict as u32));

    if verdict == VERDICT_DENY || verdict == VERDICT_AUDIT {
        report(hook, proto, verdict, &dest);
        debug!(
            ctx,
            "hook {} proto {} port {}: verdict {} (2 deny, 3 audit)",
            hook as u8,
            proto,
            dest.port,
            verdict
        );
    }
    if verdict == VERDICT_DENY { DENY } else { ALLOW }
}

/// A deny or audit of a connection. The first one of a thread for this destination, hook and
/// verdict in a generation goes to the ring buffer and opens a repeat window; the same call
/// again only counts in the window (docs/architecture.md, "Events"): a workload retrying a
/// refused destination in a loop costs an increment per call, not an event.
#[inline(always)]
pub(crate) fn report(hook: Hook, proto: u8, verdict: u8, dest: &Dest) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let generation = EVENT_GENERATION.get(0).copied().unwrap_or(0);
    let w = &dest.words;
    let mix = (pid_tgid ^ (u64::from(w[0]) << 32 | u64::from(w[1])))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (u64::from(w[2]) << 32 | u64::from(w[3])).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ u64::from(dest.port) << 8
        ^ u64::from(hook as u8);
    let slot = ((mix >> 40) as u32) & (EVENT_WINDOW_SLOTS - 1);
    let Some(window) = EVENT_WINDOWS.get_ptr_mut(slot) else {
        emit(hook, proto, verdict, dest.addr(), dest.port, [0, 0], None);
        return;
    };
    // SAFETY: a map value pointer is valid for the program run; the slot is this CPU's.
    let win = unsafe { &mut *window };
    if win.pid_tgid == pid_tgid
        && win.generation == generation
        && win.addr == dest.addr()
        && win.port == dest.port
        && win.hook == hook as u8
        && win.proto == proto
        && win.verdict == verdict
    {
        win.repeats = win.repeats.wrapping_add(1);
        return;
    }
    let opened = Opened {
        slot,
        generation,
        replaced_repeats: win.repeats,
    };
    // The window changes hands only when the event that says so is in the buffer: a lost
    // event must not take the count of the window it would have replaced with it.
    if emit(
        hook,
        proto,
        verdict,
        dest.addr(),
        dest.port,
        [0, 0],
        Some(opened),
    ) {
        *win = EventWindow {
            pid_tgid,
            addr: dest.addr(),
            port: dest.port,
            hook: hook as u8,
            proto,
            verdict,
            pad: [0; 3],
            generation,
            repeats: 0,
        };
    }
}

/// The window an event opens.
pub(crate) struct Opened {
    slot: u32,
    generation: u32,
    replaced_repeats: u32,
}

/// A socket refused or audited at creation: no address; the port field holds the protocol.
#[inline(always)]
pub(crate) fn report_socket(verdict: u8, family: u32, ty: u32, protocol: u32) {
    emit(
        Hook::SockCreate,
        protocol as u8,
        verdict,
        [0; 16],
        protocol as u16,
        [family as u8, ty as u8],
        None,
    );
}

/// A socket option refused or audited: the port field holds the option, `proto` its level.
#[inline(always)]
pub(crate) fn report_option(verdict: u8, level: i32, name: i32) {
    emit(
        Hook::Setsockopt,
        level as u8,
        verdict,
        [0; 16],
        name as u16,
        [0, 0],
        None,
    );
}

/// Whether the event is in the buffer.
#[inline(always)]
fn emit(
    hook: Hook,
    proto: u8,
    verdict: u8,
    addr: [u8; 16],
    port: u16,
    family_type: [u8; 2],
    opened: Option<Opened>,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(COUNTER_EVENTS_DROPPED);
        return false;
    };
    let (window, generation, replaced_repeats) = match opened {
        Some(o) => (o.slot as u16 + 1, o.generation, o.replaced_repeats),
        None => (0, 0, 0),
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let ev = Event {
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        addr,
        port,
        hook: hook as u8,
        proto,
        verdict,
        family: family_type[0],
        sock_type: family_type[1],
        pad: 0,
        window,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        generation,
        replaced_repeats,
        pad2: 0,
    };
    entry.write(ev);
    // Waking the reader for each event costs more than the rest of the program; the daemon
    // drains the buffer on a short timer instead, and is woken only when it fills up.
    let used = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    let flags = if used > size / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
