//! The ABI shared by the kernel programs (`enforcer-ebpf`) and userspace (`enforcer`).
//!
//! Every type here is `#[repr(C)]` with explicit padding so that both sides agree byte for byte;
//! a change to any of them changes the pinned maps' layout, so it needs a bump of
//! [`ABI_VERSION`] (the daemon refuses to reuse pinned maps of another version).
#![no_std]

/// Stored in the config map; a daemon that finds pinned maps of another ABI version refuses to
/// reuse them instead of misreading them.
/// 6: `NO_PREFIX`, which the programs read and only this version's daemon keeps up to date
/// (an older one reusing the maps would change the trie under a stale map).
/// 7: `TASK_CGROUPS` is an array of packed slots ([`task_cgroup_entry`]), `ROOTS_GEN` 23 bits.
pub const ABI_VERSION: u32 = 7;

/// Names of the maps, as declared in the eBPF object and as pinned under `<pin dir>/maps/`.
pub mod map_names {
    /// The exact rules' open-addressed table ([`super::TableSlot`]).
    pub const RULES_TABLE: &str = "RULES_TABLE";
    /// Exact rules the table had no room for near their home slot.
    pub const RULES_EXACT: &str = "RULES_EXACT";
    /// One bit per 64 table slots: some rule whose home is there lives in `RULES_EXACT`.
    pub const OVERFLOW_HOMES: &str = "OVERFLOW_HOMES";
    /// Visibility sets: which policies may use a rule ([`super::PolicyBits`]).
    pub const VSETS: &str = "VSETS";
    /// cgroup id → policy id (pods, their containers, host units).
    pub const CGROUP_POLICY: &str = "CGROUP_POLICY";
    pub const RULES_PREFIX: &str = "RULES_PREFIX";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    /// Addresses learned from DNS answers (DNS-aware mode), with their expiry.
    pub const RULES_LEARNED: &str = "RULES_LEARNED";
    /// Socket cookie → the DNS server a redirected socket asked ([`super::DnsSocket`]).
    pub const DNS_SOCKETS: &str = "DNS_SOCKETS";
    /// A redirected query's source as the proxy sees it ([`super::ClientKey`]) → its socket's
    /// [`super::DnsSocket`].
    pub const DNS_CLIENTS: &str = "DNS_CLIENTS";
    /// cgroup ids whose DNS traffic is neither redirected nor denied (and their descendants).
    pub const DNS_EXEMPT: &str = "DNS_EXEMPT";
    /// The proxy's socket: present while a proxy (or systemd holding its socket) is there.
    pub const DNS_PROXY: &str = "DNS_PROXY";
    /// Cookies of the daemon's own upstream sockets, never redirected.
    pub const DNS_OWN: &str = "DNS_OWN";
    /// cgroup ids the cgroup programs are attached to.
    pub const ENFORCED_ROOTS: &str = "ENFORCED_ROOTS";
    /// cgroup id → enforced or not: the root programs' cache ([`super::task_cgroup_entry`]).
    pub const TASK_CGROUPS: &str = "TASK_CGROUPS";
    /// Cookies of sockets made inside an enforced cgroup.
    pub const NATIVE_SOCKETS: &str = "NATIVE_SOCKETS";
    /// The generation of `ENFORCED_ROOTS`, which tags `TASK_CGROUPS` entries.
    pub const ROOTS_GEN: &str = "ROOTS_GEN";
    /// Per CPU, the repeat windows of deny/audit events ([`super::EventWindow`]). Not pinned:
    /// a daemon reads the windows of the programs it loaded.
    pub const EVENT_WINDOWS: &str = "EVENT_WINDOWS";
    /// The current window generation, which the daemon advances once a second.
    pub const EVENT_GENERATION: &str = "EVENT_GENERATION";
    /// One bit per region of addresses ([`super::prefix_region`]): set when no prefix rule
    /// reaches any address of it, so that a lookup there skips the trie walks.
    pub const NO_PREFIX: &str = "NO_PREFIX";
    /// All maps that are pinned (and so survive a daemon restart).
    pub const PINNED: [&str; 20] = [
        RULES_TABLE,
        RULES_EXACT,
        OVERFLOW_HOMES,
        RULES_PREFIX,
        CONFIG,
        COUNTERS,
        EVENTS,
        RULES_LEARNED,
        DNS_SOCKETS,
        DNS_CLIENTS,
        DNS_EXEMPT,
        DNS_PROXY,
        DNS_OWN,
        ENFORCED_ROOTS,
        TASK_CGROUPS,
        NATIVE_SOCKETS,
        ROOTS_GEN,
        VSETS,
        CGROUP_POLICY,
        NO_PREFIX,
    ];
}

/// The four enforcing programs, in the order used by [`Hook`] and the counter index.
pub const PROGRAM_NAMES: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// The programs DNS-aware mode adds: the reply's and the peer's address seen by the workload
/// are the server it asked, not the proxy.
pub const DNS_PROGRAM_NAMES: [&str; 4] = ["recvmsg4", "recvmsg6", "getpeername4", "getpeername6"];

/// The programs on the cgroup root that decide for sockets made outside an enforced cgroup and
/// used inside one (docs/architecture.md, "Sockets from outside").
pub const FOREIGN_PROGRAM_NAMES: [&str; 4] = [
    "foreign_connect4",
    "foreign_connect6",
    "foreign_sendmsg4",
    "foreign_sendmsg6",
];

/// Runs at socket creation in every enforced cgroup: refuses the sockets the other programs
/// could not see (docs/architecture.md, "What is enforced").
pub const GUARD_PROGRAM_NAME: &str = "sock_create";

/// The `cgroup_skb` egress program: checks ICMP echo requests (which no `sock_addr` hook sees
/// when a ping socket uses `sendto`) and, in DNS-aware mode, tells the proxy which socket a
/// query came from.
pub const EGRESS_PROGRAM_NAME: &str = "egress";

/// The `cgroup/setsockopt` program: refuses the socket options that source-route packets
/// (`IP_OPTIONS`, `IPV6_RTHDR`), which would send them past the address the hooks checked.
pub const SOCKOPT_PROGRAM_NAME: &str = "sockopt";

/// The BPF LSM program (`lsm_cgroup/socket_create`): refuses packet and XDP sockets, which
/// `cgroup/sock_create` never sees. Attached only where the kernel runs BPF LSM.
pub const LSM_PROGRAM_NAME: &str = "lsm_sock_create";

/// Hook names in [`Hook`] order, as shown in counters, metrics and events.
pub const HOOK_NAMES: [&str; NUM_HOOKS as usize] = [
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "sock_create",
    "egress",
    "foreign_connect4",
    "foreign_connect6",
    "foreign_sendmsg4",
    "foreign_sendmsg6",
    "setsockopt",
];

/// The DNS port; every query to it from an enforced cgroup goes to the proxy in DNS-aware mode.
pub const DNS_PORT: u16 = 53;

/// IP protocol numbers as found in `bpf_sock_addr.protocol`.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Protocols whose `connect()` (UDP-Lite, SCTP) or implicit association (SCTP) runs none of
/// the `sock_addr` hooks: an enforced cgroup may not create such sockets at all.
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;
/// ICMP; also the protocol of every ICMP rule, IPv6 ones included (the address tells the
/// families apart).
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Socket families and types as found in `bpf_sock` and the LSM `socket_create` arguments.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_PACKET: u32 = 17;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;

/// [`RuleKey::policy`]: always 0. Scoping does not copy rules per policy: a rule's value
/// names the set of policies that may use it ([`RuleValue::vset`]).
pub const POLICY_NODE: u32 = 0;

/// Policies a visibility set can hold: one bit each in [`PolicyBits`].
pub const MAX_POLICIES: u32 = 1024;
/// Words of one visibility set in `VSETS`.
pub const POLICY_WORDS: u32 = MAX_POLICIES / 64;
/// One visibility set: bit `p` is set when policy `p` may use the rules that name the set.
pub type PolicyBits = [u64; POLICY_WORDS as usize];
/// [`RuleValue::vset`] of a rule every workload may use (config allows, unscoped entries):
/// no lookup at all.
pub const VSET_EVERYONE: u32 = 0;
/// The policy of a cgroup the daemon has not mapped, when the config says deny: it is in no
/// visibility set, so only rules for everyone apply to it.
pub const POLICY_UNMAPPED: u32 = 0;
/// How deep the programs look for a mapped ancestor of the calling task's cgroup.
pub const MAX_CGROUP_DEPTH: u32 = 16;

/// Key of the exact-rule hash map, and the data part of the prefix trie's key (which the
/// kernel prefixes with a `u32` prefix length).
///
/// The address is always 16 bytes: IPv4 destinations are normalised to `::ffff:a.b.c.d` so that
/// a single rule covers a v4 connect and a v4-mapped connect from a dual-stack socket.
/// `port` is in host byte order; 0 means "any port".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleKey {
    pub policy: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
    pub addr: [u8; 16],
}

impl RuleKey {
    /// The key as three words, as its 24 bytes read from memory. The programs hash and compare
    /// keys as words ([`table_hash_words`], [`TableSlot::key_words`]).
    #[inline(always)]
    pub fn words(&self) -> [u64; 3] {
        // SAFETY: RuleKey is 24 bytes of plain data with no padding; any bits are valid u64s.
        unsafe { core::mem::transmute::<Self, [u64; 3]>(*self) }
    }

    /// The key whose [`RuleKey::words`] are `w`.
    #[inline(always)]
    pub fn from_words(w: [u64; 3]) -> Self {
        // SAFETY: as above; every bit pattern is a valid RuleKey.
        unsafe { core::mem::transmute::<[u64; 3], Self>(w) }
    }
}

/// The first word of a key ([`RuleKey::words`]) with `pad` 0, computed in registers.
#[inline(always)]
pub fn key_head(policy: u32, port: u16, proto: u8) -> u64 {
    key_head_in(cfg!(target_endian = "little"), policy, port, proto)
}

/// [`key_head`] for either byte order, so that both are tested on any host.
#[inline(always)]
fn key_head_in(little: bool, policy: u32, port: u16, proto: u8) -> u64 {
    let (policy, port, proto) = (u64::from(policy), u64::from(port), u64::from(proto));
    if little {
        policy | port << 32 | proto << 48
    } else {
        policy << 32 | port << 16 | proto << 8
    }
}

/// Two consecutive `u32`s in memory order as the `u64` they make in memory (an address's
/// words into [`RuleKey::words`]).
#[inline(always)]
pub fn word_pair(first: u32, second: u32) -> u64 {
    word_pair_in(cfg!(target_endian = "little"), first, second)
}

/// [`word_pair`] for either byte order.
#[inline(always)]
fn word_pair_in(little: bool, first: u32, second: u32) -> u64 {
    let (first, second) = (u64::from(first), u64::from(second));
    if little {
        first | second << 32
    } else {
        first << 32 | second
    }
}

// Userspace only: the programs never order keys (and need no 128-bit arithmetic).
#[cfg(not(target_arch = "bpf"))]
impl RuleKey {
    /// The address (big-endian) first, then the other fields in declaration order: the
    /// daemon sorts and searches a million keys per reload, and two integers compare several
    /// times faster than the fields one by one. Address first because the daemon's static
    /// rules are sorted by address already (so its desired rules need no second sort).
    #[inline]
    fn order(&self) -> (u128, u64) {
        let head = (self.policy as u64) << 32
            | (self.port as u64) << 16
            | (self.proto as u64) << 8
            | self.pad as u64;
        (u128::from_be_bytes(self.addr), head)
    }
}

/// By address (big-endian), then policy, port, protocol and pad.
#[cfg(not(target_arch = "bpf"))]
impl Ord for RuleKey {
    #[inline]
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

#[cfg(not(target_arch = "bpf"))]
impl PartialOrd for RuleKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Number of key bits in front of the address; the LPM prefix length of a rule is this plus the
/// address prefix length (IPv4 prefixes count from bit 96 of the mapped form).
pub const RULE_KEY_FIXED_BITS: u32 = 64;

/// [`RuleValue::flags`]: the rule comes from a DNS answer. The programs ignore flags; the
/// daemon uses this one to know, after a restart, which live rules it may carry over while
/// the names are looked up again. Maps written before it existed have no flags set.
pub const RULE_FLAG_DNS: u32 = 1;

/// Value of `RULES_LEARNED`: like [`RuleValue`], plus when the rule stops matching
/// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), so that a learned address expires on time even
/// while the daemon is down.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LearnedValue {
    pub rule_id: u32,
    pub flags: u32,
    pub expires_ns: u64,
    /// Like [`RuleValue::vset`].
    pub vset: u32,
    pub pad: u32,
}

/// What the kernel knows about a socket it redirected to the DNS proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsSocket {
    /// The server the workload asked, normalised like [`RuleKey::addr`].
    pub server: [u8; 16],
    /// Host byte order.
    pub server_port: u16,
    pub proto: u8,
    pub pad: u8,
    /// Process id of the last sender.
    pub tgid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    /// The socket's network namespace (`SO_NETNS_COOKIE`): a loopback server in another
    /// namespace is not the one the proxy would reach.
    pub netns_cookie: u64,
}

/// A query's source address and port as the proxy receives it (address normalised like
/// [`RuleKey::addr`], port in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub pad: [u8; 5],
}

/// Value of both rule maps. `rule_id` names the rule's source (a ServiceEntry or an `--allow`
/// flag) so that events and `inspect` can say which rule matched.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleValue {
    pub rule_id: u32,
    pub flags: u32,
    /// Index into `VSETS` of the policies that may use this rule; [`VSET_EVERYONE`]: all.
    pub vset: u32,
    pub pad: u32,
}

/// Enforcement mode stored in [`Config::mode`].
pub const MODE_ENFORCE: u32 = 0;
pub const MODE_AUDIT: u32 = 1;

/// The single entry of the `CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub abi_version: u32,
    pub mode: u32,
    /// 1: loopback and the unspecified address (which the kernel routes to loopback) are
    /// always allowed.
    pub allow_loopback: u32,
    /// `SKIP_*` bits: lookups the programs may leave out because no rule of that kind exists.
    /// 0 (what a map from before this field existed holds) means every lookup is made.
    pub skip: u32,
    /// `DNS_*` bits; 0 is the mode where the daemon resolves names itself.
    pub dns: u32,
    /// The proxy's port, host byte order.
    pub proxy_port: u16,
    pub pad: u16,
    /// The proxy's IPv4 address as in `bpf_sock_addr.user_ip4` (network order in memory).
    pub proxy4: u32,
    /// The proxy's IPv6 address as in `bpf_sock_addr.user_ip6`; all zero: none, and a query
    /// to an IPv6 server fails.
    pub proxy6: [u32; 4],
    /// `SOCKETS_*` bits: which sockets beyond TCP and UDP an enforced cgroup may create.
    pub sockets: u32,
    /// The daemon's network namespace (`SO_NETNS_COOKIE`), for `DNS_LOCAL_PROXY*`.
    pub netns_cookie: u64,
    /// The policy of a calling cgroup with no mapped ancestor ([`POLICY_UNMAPPED`]: only
    /// rules for everyone).
    pub default_policy: u32,
    /// `RULES_TABLE` slots - 1 (a power of two less one).
    pub table_mask: u32,
}

/// [`Config::dns`]: DNS-aware mode, every query to port 53 goes to the proxy.
pub const DNS_REDIRECT: u32 = 1;
/// [`Config::dns`]: `DNS_EXEMPT` has entries (the cgroup walk is needed).
pub const DNS_HAS_EXEMPT: u32 = 2;
/// [`Config::dns`]: the IPv4 (IPv6) proxy address is loopback, which only the daemon's own
/// network namespace reaches: a query from another namespace fails instead.
pub const DNS_LOCAL_PROXY4: u32 = 4;
pub const DNS_LOCAL_PROXY6: u32 = 8;

/// [`Config::sockets`]: raw (`SOCK_RAW`), packet and XDP sockets may be created; their
/// traffic is then not enforced.
pub const SOCKETS_ALLOW_RAW: u32 = 1;
/// [`Config::sockets`]: ping sockets may be created; echo requests go only where an ICMP rule
/// allows.
pub const SOCKETS_ALLOW_PING: u32 = 2;

/// [`Config::sockets`]: the root programs for sockets from outside are attached; the
/// creation program records every socket it lets through as native.
pub const SOCKETS_FOREIGN: u32 = 4;

/// No exact rule has port 0 (any port): the second exact lookup cannot match.
pub const SKIP_EXACT_ANY_PORT: u32 = 1;
/// No prefix rule has a specific port: the first prefix lookup cannot match.
pub const SKIP_PREFIX_PORT: u32 = 2;
/// No prefix rule has port 0: the second prefix lookup cannot match.
pub const SKIP_PREFIX_ANY_PORT: u32 = 4;
/// No rule names a visibility set and nothing scopes learned rules: the programs never look
/// up the caller's policy (a rule that names one anyway is then usable by no one).
pub const SKIP_SCOPING: u32 = 8;

/// Regions of [`prefix_region`]: the first 16 bits of an IPv4 address, then those of an IPv6
/// one.
pub const PREFIX_REGIONS: u32 = 2 << 16;
/// Words of `NO_PREFIX`.
pub const NO_PREFIX_WORDS: u32 = PREFIX_REGIONS / 64;

/// The region in `NO_PREFIX` of a destination given as the four words (memory order) of its
/// mapped form ([`RuleKey::addr`]): an IPv4 address's /16, or an IPv6 address's /16 numbered
/// after IPv4's. A denied destination is mostly nowhere near a CIDR rule, and the region lets
/// it skip the trie walks, which are most of a denied call's cost.
///
/// Without a branch: in the programs, a branch would leave the verifier two ranges of the
/// region, which indexes a map and so is tracked exactly, and it would walk the rest of the
/// program once for each (the IPv6 programs took up to four times as long to load).
/// `black_box` keeps the optimiser from turning the arithmetic back into branches.
#[inline(always)]
pub fn prefix_region(w: &[u32; 4]) -> u32 {
    let first16 = |word: u32| {
        let b = word.to_ne_bytes();
        u32::from(b[0]) << 8 | u32::from(b[1])
    };
    // Zero only for a mapped IPv4 address. A zero-extended u32 that is not zero has a
    // negation with the top bit set: or-ed together, the top bit says IPv6.
    let off = u64::from(w[0] | w[1] | (w[2] ^ u32::from_ne_bytes([0, 0, 0xff, 0xff])));
    let is_v6 = ((off | core::hint::black_box(off).wrapping_neg()) >> 63) as u32;
    let (v4, v6) = (first16(w[3]), (PREFIX_REGIONS / 2) | first16(w[0]));
    v4 ^ ((v4 ^ v6) & core::hint::black_box(is_v6).wrapping_neg())
}

/// Slots a lookup in `RULES_TABLE` reads at most, from the key's home slot on (linear
/// probing). A rule with no free slot among them goes to `RULES_EXACT`, and the bit of its
/// home's region in `OVERFLOW_HOMES` is set: a miss in the table is final unless that bit is.
pub const TABLE_PROBES: u32 = 8;

/// `OVERFLOW_HOMES` has a bit for each run of `1 << OVERFLOW_REGION_SHIFT` slots.
pub const OVERFLOW_REGION_SHIFT: u32 = 6;

/// `TASK_CGROUPS`: the root programs' answers to "is this cgroup enforced?" (docs/architecture.md,
/// "Sockets from outside"), direct-mapped by cgroup id. An array slot, not a hash map: its
/// lookup is inlined, where a hash map's is a call, and a call is dear in the kernel (on the
/// bench VM a helper or map call costs 20-45 ns). One `u64` per slot, read and written whole:
/// CPUs race on a slot, and two words could be torn apart, one cgroup's id with another's
/// answer.
pub const TASK_CGROUP_SLOT_BITS: u32 = 14;
pub const TASK_CGROUP_SLOTS: u32 = 1 << TASK_CGROUP_SLOT_BITS;
/// Bits of `ROOTS_GEN` (the daemon wraps it there) that a slot keeps.
pub const ROOTS_GEN_MASK: u32 = (1 << 23) - 1;
/// The daemon empties `TASK_CGROUPS` before publishing a generation that is a multiple of
/// this: an answer tagged with a generation cannot outlive the generation's return.
pub const ROOTS_GEN_CLEAR_EVERY: u32 = 1 << 22;
/// Cgroup ids from here on are not cached (a slot keeps the id in 40 bits); the kernel's
/// are far below (the inode number, with a wrap count in the upper 32 bits).
pub const TASK_CGROUP_MAX_ID: u64 = 1 << 40;
/// [`task_cgroup_answer`]: the slot holds no answer for this cgroup and generation.
pub const TASK_CGROUP_UNKNOWN: u32 = 2;

/// The slot of cgroup `id` (ids are mostly consecutive: a multiplicative hash spreads them).
#[inline(always)]
pub fn task_cgroup_slot(id: u64) -> u32 {
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TASK_CGROUP_SLOT_BITS)) as u32
}

/// A slot's value: the id, the generation's low 23 bits, whether it is enforced.
#[inline(always)]
pub fn task_cgroup_entry(id: u64, generation: u32, enforced: bool) -> u64 {
    id << 24 | u64::from(generation & ROOTS_GEN_MASK) << 1 | u64::from(enforced)
}

/// 1 (enforced) or 0 from a slot holding `id`'s answer under `generation`, else
/// [`TASK_CGROUP_UNKNOWN`]. A number, not an Option, for the programs' verifier. An empty
/// slot (0) matches no cgroup: ids start at 1.
#[inline(always)]
pub fn task_cgroup_answer(entry: u64, id: u64, generation: u32) -> u32 {
    if id >= TASK_CGROUP_MAX_ID
        || entry >> 24 != id
        || (entry >> 1) as u32 & ROOTS_GEN_MASK != generation & ROOTS_GEN_MASK
    {
        return TASK_CGROUP_UNKNOWN;
    }
    (entry & 1) as u32
}

/// (word, bit) of the `OVERFLOW_HOMES` bit for home slot `home`.
#[inline(always)]
pub fn overflow_bit(home: u32) -> (u32, u32) {
    let region = home >> OVERFLOW_REGION_SHIFT;
    (region >> 6, region & 63)
}

/// Words of `OVERFLOW_HOMES` for a table of `slots` slots.
pub const fn overflow_words(slots: u32) -> u32 {
    let words = slots >> (OVERFLOW_REGION_SHIFT + 6);
    if words == 0 { 1 } else { words }
}

/// [`TableSlot::state`]. Readers see a slot's key and value change only while it is not
/// live: a slot is written taken (key and value, not yet matching), then live (the state
/// alone changes), then dead (the state alone): a read that races a write sees either state,
/// never a live slot with half a key (docs/architecture.md, "Rule maps").
pub const SLOT_EMPTY: u32 = 0;
pub const SLOT_TAKEN: u32 = 1;
pub const SLOT_LIVE: u32 = 2;
pub const SLOT_DEAD: u32 = 3;

/// One slot of `RULES_TABLE`, the exact rules' open-addressed hash table: an array map, whose
/// lookups the verifier inlines (a kernel hash map costs a function call and its returns).
///
/// Aligned to 8 (the size, 48, and every offset are what they would be at 4): the key is read
/// as three words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSlot {
    pub key: RuleKey,
    pub value: RuleValue,
    pub state: u32,
    pub pad: u32,
}

impl TableSlot {
    /// [`RuleKey::words`] of the slot's key, as three word loads.
    #[inline(always)]
    pub fn key_words(&self) -> [u64; 3] {
        // SAFETY: the key is the slot's first 24 bytes and the slot is 8-aligned; any bits
        // are valid u64s.
        unsafe { *core::ptr::from_ref(self).cast::<[u64; 3]>() }
    }
}

/// A key's home slot in a table of `mask + 1` slots. The same function runs in the programs
/// and in the daemon, which places every rule within [`TABLE_PROBES`] slots of its home.
#[inline(always)]
pub fn table_home(key: &RuleKey, mask: u32) -> u32 {
    (table_hash(key) as u32) & mask
}

/// 64 well-mixed bits of a key: the words are combined, then Murmur3's finalizer spreads
/// every input bit over every output bit (sequential addresses land far apart).
#[inline(always)]
pub fn table_hash(key: &RuleKey) -> u64 {
    table_hash_words(&key.words())
}

/// [`table_hash`] of a key given as its three words ([`RuleKey::words`]): the programs build
/// their keys in registers, and a key stored in parts and read back as words stalls the CPU
/// (the loads cannot be forwarded from the smaller stores).
#[inline(always)]
pub fn table_hash_words(w: &[u64; 3]) -> u64 {
    let mut h =
        w[0].wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ w[1].wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ w[2];
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// The hook a verdict came from (named in [`HOOK_NAMES`]); the first four are also the index
/// of the program in [`PROGRAM_NAMES`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 0,
    Connect6 = 1,
    Sendmsg4 = 2,
    Sendmsg6 = 3,
    /// A socket refused (or audited) at creation, by `cgroup/sock_create` or the LSM program.
    SockCreate = 4,
    /// An ICMP echo request checked on its way out.
    Egress = 5,
    /// A socket made outside every enforced cgroup, used by a task inside one.
    ForeignConnect4 = 6,
    ForeignConnect6 = 7,
    ForeignSendmsg4 = 8,
    ForeignSendmsg6 = 9,
    /// A socket option refused (`port` holds the option, `proto` its level).
    Setsockopt = 10,
}
pub const NUM_HOOKS: u32 = 11;

/// Protocol class used in the counter index.
pub const PROTO_CLASS_TCP: u32 = 0;
pub const PROTO_CLASS_UDP: u32 = 1;
pub const PROTO_CLASS_OTHER: u32 = 2;
/// ICMP echo (ping sockets at creation and connect, echo requests on egress).
pub const PROTO_CLASS_ICMP: u32 = 3;
/// Raw, packet and XDP sockets at creation.
pub const PROTO_CLASS_RAW: u32 = 4;
pub const NUM_PROTO_CLASSES: u32 = 5;

/// What happened to one connect/sendmsg.
pub const VERDICT_ALLOW: u8 = 0;
/// Allowed because the destination is loopback and loopback is allowed.
pub const VERDICT_ALLOW_LOOPBACK: u8 = 1;
pub const VERDICT_DENY: u8 = 2;
/// No rule matched, allowed because of audit mode.
pub const VERDICT_AUDIT: u8 = 3;
/// A DNS query sent to the proxy instead (DNS-aware mode).
pub const VERDICT_REDIRECT: u8 = 4;
pub const NUM_VERDICTS: u32 = 5;

/// Index of a verdict counter in the `COUNTERS` per-CPU array.
#[inline(always)]
pub const fn counter_index(hook: u32, proto_class: u32, verdict: u32) -> u32 {
    (hook * NUM_PROTO_CLASSES + proto_class) * NUM_VERDICTS + verdict
}
/// Index of the counter of events lost because the ring buffer was full.
pub const COUNTER_EVENTS_DROPPED: u32 = NUM_HOOKS * NUM_PROTO_CLASSES * NUM_VERDICTS;
pub const NUM_COUNTERS: u32 = COUNTER_EVENTS_DROPPED + 1;

/// A deny or audit event pushed to the `EVENTS` ring buffer. For [`Hook::SockCreate`] the
/// address is zero, `port` holds the full protocol number (`proto` only its low byte) and
/// `family`/`sock_type` say what was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Thread id (`pid` in kernel terms).
    pub pid: u32,
    /// Process id (`tgid` in kernel terms).
    pub tgid: u32,
    pub comm: [u8; 16],
    /// Destination, normalised like [`RuleKey::addr`].
    pub addr: [u8; 16],
    pub port: u16,
    pub hook: u8,
    pub proto: u8,
    pub verdict: u8,
    pub family: u8,
    pub sock_type: u8,
    pub pad: u8,
    /// The repeat window this event opened: `window - 1` is its slot in `EVENT_WINDOWS` on
    /// CPU `cpu`; 0: none (the event is not collapsed).
    pub window: u16,
    pub cpu: u16,
    /// The window's generation (`EVENT_GENERATION` when it opened).
    pub generation: u32,
    /// Repeats counted by the window this one replaced in the same slot (the daemon knows
    /// which event opened it).
    pub replaced_repeats: u32,
    pub pad2: u32,
}

/// Per-CPU slots in `EVENT_WINDOWS` (a power of two).
pub const EVENT_WINDOW_SLOTS: u32 = 256;

/// One repeat window (docs/architecture.md, "Events"): the first deny/audit of a thread for
/// one destination, hook and verdict goes to the ring buffer and opens the window; the same
/// call again while the generation lasts only counts here. The daemon reads the count once the
/// generation is over, or gets it with the event that replaces the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventWindow {
    pub pid_tgid: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub hook: u8,
    pub proto: u8,
    pub verdict: u8,
    pub pad: [u8; 3],
    pub generation: u32,
    pub repeats: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] with explicit padding fields and no pointers, so
    // every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::EventWindow {}
    unsafe impl aya::Pod for super::TableSlot {}
    unsafe impl aya::Pod for super::LearnedValue {}
    unsafe impl aya::Pod for super::DnsSocket {}
    unsafe impl aya::Pod for super::ClientKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The programs build keys as words in registers (`key_head`, `word_pair`) and read slot
    /// keys as words: both must be the key's bytes exactly, or a rule would never match.
    #[test]
    fn keys_built_as_words_are_the_keys_bytes() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let addr: [u8; 16] =
                (u128::from(seed) << 64 | u128::from(seed.rotate_left(29))).to_be_bytes();
            let key = RuleKey {
                policy: (seed >> 40) as u32,
                port: seed as u16,
                proto: (seed >> 16) as u8,
                pad: 0,
                addr,
            };
            let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
            let built = [
                key_head(key.policy, key.port, key.proto),
                word_pair(w(0), w(4)),
                word_pair(w(8), w(12)),
            ];
            assert_eq!(built, key.words());
            assert_eq!(RuleKey::from_words(built), key);
            assert_eq!(table_hash_words(&built), table_hash(&key));
            let slot = TableSlot {
                key,
                ..TableSlot::default()
            };
            assert_eq!(slot.key_words(), built);
        }
        assert_eq!(core::mem::align_of::<TableSlot>(), 8);
        assert_eq!(size_of::<TableSlot>(), 48);
    }

    #[test]
    fn a_task_cgroup_slot_answers_only_for_its_cgroup_and_generation() {
        let (id, generation) = (4_294_967_340u64, 7u32);
        for enforced in [false, true] {
            let e = task_cgroup_entry(id, generation, enforced);
            assert_eq!(task_cgroup_answer(e, id, generation), u32::from(enforced));
            assert_eq!(
                task_cgroup_answer(e, id + 1, generation),
                TASK_CGROUP_UNKNOWN
            );
            assert_eq!(
                task_cgroup_answer(e, id, generation + 1),
                TASK_CGROUP_UNKNOWN
            );
            // The generation as the daemon wraps it, and as the slot keeps it.
            let g = ROOTS_GEN_MASK;
            let w = task_cgroup_entry(id, g, enforced);
            assert_eq!(task_cgroup_answer(w, id, g), u32::from(enforced));
            assert_eq!(task_cgroup_answer(w, id, 0), TASK_CGROUP_UNKNOWN);
        }
        assert_eq!(task_cgroup_answer(0, 1, 0), TASK_CGROUP_UNKNOWN);
        // An id the slot cannot hold (the programs never store one) is never answered,
        // whatever the slot holds.
        let big = TASK_CGROUP_MAX_ID;
        for e in [0, u64::MAX, task_cgroup_entry(big, 0, true), big << 24 | 1] {
            assert_eq!(task_cgroup_answer(e, big, 0), TASK_CGROUP_UNKNOWN);
            assert_eq!(task_cgroup_answer(e, big + 5, 0), TASK_CGROUP_UNKNOWN);
        }
        // Consecutive ids spread over the slots.
        let mut used = [false; TASK_CGROUP_SLOTS as usize];
        for id in 1..=1024u64 {
            used[task_cgroup_slot(id) as usize] = true;
        }
        assert!(used.iter().filter(|u| **u).count() > 1000);
        const { assert!(ROOTS_GEN_CLEAR_EVERY <= ROOTS_GEN_MASK) };
    }

    /// The byte order this host does not have: the words are what a key's bytes read as in
    /// that order, so a big-endian build would match its programs' keys too.
    #[test]
    fn both_byte_orders_build_the_keys_bytes() {
        let (policy, port, proto) = (0x0102_0304u32, 0x0506u16, 0x07u8);
        // Each order's bytes of the fields in declaration order, read as that order's word.
        assert_eq!(
            key_head_in(true, policy, port, proto),
            u64::from_le_bytes([4, 3, 2, 1, 6, 5, 7, 0])
        );
        assert_eq!(
            key_head_in(false, policy, port, proto),
            u64::from_be_bytes([1, 2, 3, 4, 5, 6, 7, 0])
        );
        let bytes = [0x11u8, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        let (a, b) = ([0x11, 0x22, 0x33, 0x44], [0x55, 0x66, 0x77, 0x88]);
        assert_eq!(
            word_pair_in(true, u32::from_le_bytes(a), u32::from_le_bytes(b)),
            u64::from_le_bytes(bytes)
        );
        assert_eq!(
            word_pair_in(false, u32::from_be_bytes(a), u32::from_be_bytes(b)),
            u64::from_be_bytes(bytes)
        );
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<RuleKey>(), 24);
        assert_eq!(size_of::<RuleValue>(), 16);
        assert_eq!(size_of::<Config>(), 64);
        assert_eq!(size_of::<LearnedValue>(), 24);
        assert_eq!(size_of::<DnsSocket>(), 56);
        assert_eq!(size_of::<ClientKey>(), 24);
        assert_eq!(size_of::<Event>(), 80);
        assert_eq!(size_of::<EventWindow>(), 40);
        assert_eq!(size_of::<TableSlot>(), 48);
        assert!(EVENT_WINDOW_SLOTS.is_power_of_two());
        assert_eq!(
            RULE_KEY_FIXED_BITS as usize,
            8 * (size_of::<RuleKey>() - 16)
        );
    }

    #[test]
    fn rule_keys_order_by_address_then_the_other_fields() {
        let key = |policy, port, proto, addr: u8| RuleKey {
            policy,
            port,
            proto,
            pad: 0,
            addr: [addr, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255 - addr],
        };
        let keys = [
            key(0, 443, 6, 2),
            key(0, 443, 6, 1),
            key(0, 80, 17, 9),
            key(1, 0, 6, 0),
            key(0, 443, 17, 0),
            key(0, 256, 6, 0),
        ];
        for a in &keys {
            for b in &keys {
                let fieldwise = (a.addr, a.policy, a.port, a.proto, a.pad)
                    .cmp(&(b.addr, b.policy, b.port, b.proto, b.pad));
                assert_eq!(a.cmp(b), fieldwise, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn counter_indices_are_distinct_and_in_range() {
        let mut seen = [false; NUM_COUNTERS as usize];
        for h in 0..NUM_HOOKS {
            for p in 0..NUM_PROTO_CLASSES {
                for v in 0..NUM_VERDICTS {
                    let i = counter_index(h, p, v) as usize;
                    assert!(!seen[i]);
                    seen[i] = true;
                }
            }
        }
        assert!(!seen[COUNTER_EVENTS_DROPPED as usize]);
    }
}
