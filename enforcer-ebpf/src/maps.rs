//! Every map the programs share. Sizes here are defaults only: the daemon overrides
//! max_entries from its config before load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockMap},
};
use enforcer_common::{
    ClientKey, Config, DnsSocket, EVENT_WINDOW_SLOTS, EventWindow, LearnedValue, NO_PREFIX_WORDS,
    NUM_COUNTERS, POLICY_WORDS, RuleKey, RuleValue, TASK_CGROUP_SLOTS, TableSlot,
};

/// `BPF_F_NO_PREALLOC` (uapi/linux/bpf.h).
const BPF_F_NO_PREALLOC: u32 = 1;

/// `BPF_F_MMAPABLE` (uapi/linux/bpf.h).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The exact rules (docs/architecture.md, "Rule maps"); sized by the daemon to a power of two.
/// Mappable: the daemon fills a new table through its memory.
#[map]
pub(crate) static RULES_TABLE: Array<TableSlot> = Array::with_max_entries(1 << 17, BPF_F_MMAPABLE);

/// Exact rules with no room in the table near their home slot. Not preallocated: it holds
/// few rules, or none, whatever its limit.
#[map]
pub(crate) static RULES_EXACT: HashMap<RuleKey, RuleValue> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Which table regions have rules in `RULES_EXACT` ([`enforcer_common::overflow_bit`]).
#[map]
pub(crate) static OVERFLOW_HOMES: Array<u64> = Array::with_max_entries(32, 0);

#[map]
pub(crate) static RULES_PREFIX: LpmTrie<RuleKey, RuleValue> = LpmTrie::with_max_entries(16384, 0);

/// Address regions no prefix rule reaches ([`enforcer_common::prefix_region`]). All zero in a
/// map just made: nothing is skipped until the daemon says so.
#[map]
pub(crate) static NO_PREFIX: Array<u64> = Array::with_max_entries(NO_PREFIX_WORDS, 0);

#[map]
pub(crate) static RULES_LEARNED: HashMap<RuleKey, LearnedValue> =
    HashMap::with_max_entries(65536, 0);

#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Visibility sets (docs/architecture.md, "Scoping"), [`POLICY_WORDS`] words each: set `s`
/// is entries `s * POLICY_WORDS ..`. Set 0 is never read (everyone). Words rather than one
/// array value per set: the kernel bounds-checks each index, whatever the compiler proves.
#[map]
pub(crate) static VSETS: Array<u64> = Array::with_max_entries(4096 * POLICY_WORDS, 0);

/// cgroup id → policy id: pods and their containers, host units.
#[map]
pub(crate) static CGROUP_POLICY: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Repeat windows of deny/audit events (docs/architecture.md, "Events"). Per CPU: a repeat
/// costs a lookup the verifier inlines and an increment nobody else writes.
#[map]
pub(crate) static EVENT_WINDOWS: PerCpuArray<EventWindow> =
    PerCpuArray::with_max_entries(EVENT_WINDOW_SLOTS, 0);

#[map]
pub(crate) static EVENT_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// LRU: bounded whatever the workloads do. A workload that opens sockets without end evicts
/// the oldest entries, its own and others': a query whose entry is gone gets its answer from
/// the proxy's address, which the resolver drops (a failed query, never a bypass).
#[map]
pub(crate) static DNS_SOCKETS: LruHashMap<u64, DnsSocket> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub(crate) static DNS_CLIENTS: LruHashMap<ClientKey, DnsSocket> =
    LruHashMap::with_max_entries(65536, 0);

#[map]
pub(crate) static DNS_EXEMPT: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

#[map]
pub(crate) static DNS_PROXY: SockMap = SockMap::with_max_entries(1, 0);

/// cgroup ids the cgroup programs are attached to (their descendants are enforced too).
#[map]
pub(crate) static ENFORCED_ROOTS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// A cache of the ancestor walk, direct-mapped by cgroup id (`enforcer_common::task_cgroup_entry`); answers
/// of an older generation of `ENFORCED_ROOTS` do not count.
#[map]
pub(crate) static TASK_CGROUPS: Array<u64> = Array::with_max_entries(TASK_CGROUP_SLOTS, 0);

/// Bumped by the daemon after every change of `ENFORCED_ROOTS`. Mappable: the daemon writes
/// it with one atomic store (a `bpf(2)` update may copy it a byte at a time).
#[map]
pub(crate) static ROOTS_GEN: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Cookies of sockets made inside an enforced cgroup, whose own programs decide for them. LRU:
/// a socket evicted here is decided again by the root programs, with the same rules.
#[map]
pub(crate) static NATIVE_SOCKETS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// Cookies of the daemon's own upstream sockets while they connect: never redirected.
#[map]
pub(crate) static DNS_OWN: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);
