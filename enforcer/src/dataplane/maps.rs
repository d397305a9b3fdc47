//! Typed handles on the pinned maps, and the operations on them: rule apply (diffing, adds
//! before removes), config, counters, rule listing. Shared by the daemon and the read-only CLI.

use anyhow::{Context as _, bail};
use aya::maps::{
    Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapType, PerCpuArray, lpm_trie::Key,
};
use enforcer_common::{
    ABI_VERSION, ClientKey, Config, DnsSocket, LearnedValue, NO_PREFIX_WORDS, NUM_COUNTERS,
    POLICY_WORDS, RuleKey, RuleValue, TableSlot, map_names, overflow_words,
};
use serde::Serialize;

use super::{
    diff::{Changes, diff, diff_listed, patch, removals_listed},
    no_prefix::NoPrefix,
    pins::PinLayout,
    stats::Stats,
    table_map::{ExactRules, table_slots},
};
use crate::{config::MapSizes, policy::rules::DesiredRules};

pub struct Maps {
    /// `RULES_TABLE` and its overflow `RULES_EXACT`.
    pub exact: ExactRules,
    pub prefix: LpmTrie<MapData, RuleKey, RuleValue>,
    pub config: Array<MapData, Config>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Scoping (docs/architecture.md, "Scoping"): visibility sets, one word per entry.
    pub vsets: Array<MapData, u64>,
    /// Scoping: cgroup id → policy id.
    pub cgroup_policy: HashMap<MapData, u64, u32>,
    /// `None` in pins made before it existed (read by `inspect`, never applied to).
    no_prefix: Option<NoPrefix>,
    mirror: Mirror,
}

/// What this process last wrote to each rule map, sorted by key, so that the next apply diffs
/// against memory instead of reading every entry back (the LPM trie only entry by entry). The
/// pin directory's lock makes the daemon the only writer. `None` until the first apply reads
/// the map, and again after a write failed midway (the map's content is then unknown).
#[derive(Default)]
struct Mirror {
    exact: Option<Vec<(RuleKey, RuleValue)>>,
    prefix: Option<Vec<((u32, RuleKey), RuleValue)>>,
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    pub added: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// The exact and prefix rules the maps hold now.
    pub exact: usize,
    pub prefix: usize,
}

/// One rule as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRow {
    pub rule: String,
    pub kind: &'static str,
    pub rule_id: u32,
    /// Where the rule comes from, when the daemon has recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Learned rules (DNS-aware mode): the names whose answers allowed the address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Learned rules: seconds until the kernel stops matching it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Scoping: the policies that may use it; absent: every policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Vec<u32>>,
    /// Its visibility set in `VSETS` (0: everyone's).
    #[serde(skip)]
    pub vset: u32,
}

/// The expected shape of each pinned map; a pinned map of another shape is not reused.
pub struct Shape {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub fn expected_shapes(sizes: &MapSizes) -> [Shape; 20] {
    let lru = |name, key_size, max_entries| Shape {
        name,
        map_type: MapType::LruHash,
        key_size,
        value_size: size_of::<DnsSocket>() as u32,
        max_entries,
    };
    [
        Shape {
            name: map_names::RULES_TABLE,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<TableSlot>() as u32,
            max_entries: table_slots(sizes.exact_rules),
        },
        Shape {
            name: map_names::OVERFLOW_HOMES,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: overflow_words(table_slots(sizes.exact_rules)),
        },
        Shape {
            name: map_names::NO_PREFIX,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: NO_PREFIX_WORDS,
        },
        Shape {
            name: map_names::RULES_EXACT,
            map_type: MapType::Hash,
            key_size: size_of::<RuleKey>() as u32,
            value_size: size_of::<RuleValue>() as u32,
            max_entries: sizes.exact_rules,
        },
        Shape {
            name: map_names::RULES_PREFIX,
            map_type: MapType::LpmTrie,
            key_size: size_of::<Key<RuleKey>>() as u32,
            value_size: size_of::<RuleValue>() as u32,
            max_entries: sizes.prefix_rules,
        },
        Shape {
            name: map_names::CONFIG,
            map_type: MapType::Array,
            key_size: 4,
            value_size: size_of::<Config>() as u32,
            max_entries: 1,
        },
        Shape {
            name: map_names::COUNTERS,
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: 8,
            max_entries: NUM_COUNTERS,
        },
        Shape {
            name: map_names::EVENTS,
            map_type: MapType::RingBuf,
            key_size: 0,
            value_size: 0,
            max_entries: sizes.event_buffer,
        },
        Shape {
            name: map_names::RULES_LEARNED,
            map_type: MapType::Hash,
            key_size: size_of::<RuleKey>() as u32,
            value_size: size_of::<LearnedValue>() as u32,
            max_entries: sizes.learned_rules,
        },
        lru(map_names::DNS_SOCKETS, 8, sizes.dns_sockets),
        lru(
            map_names::DNS_CLIENTS,
            size_of::<ClientKey>() as u32,
            sizes.dns_sockets,
        ),
        Shape {
            name: map_names::DNS_EXEMPT,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: 1,
            max_entries: DNS_EXEMPT_ENTRIES,
        },
        Shape {
            name: map_names::DNS_PROXY,
            map_type: MapType::SockMap,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        },
        Shape {
            name: map_names::DNS_OWN,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: 1,
            max_entries: 4096,
        },
        Shape {
            name: map_names::ENFORCED_ROOTS,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: 1,
            max_entries: ENFORCED_ROOT_ENTRIES,
        },
        Shape {
            name: map_names::TASK_CGROUPS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: enforcer_common::TASK_CGROUP_SLOTS,
        },
        Shape {
            name: map_names::ROOTS_GEN,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        },
        Shape {
            name: map_names::NATIVE_SOCKETS,
            map_type: MapType::LruHash,
            key_size: 8,
            value_size: 1,
            max_entries: sizes.native_sockets,
        },
        Shape {
            name: map_names::VSETS,
            map_type: MapType::Array,
            key_size: 4,
            value_size: 8,
            max_entries: sizes.visibility_sets * POLICY_WORDS,
        },
        Shape {
            name: map_names::CGROUP_POLICY,
            map_type: MapType::Hash,
            key_size: 8,
            value_size: 4,
            max_entries: sizes.cgroup_policies,
        },
    ]
}

/// Enforced cgroups (attach points) the root programs know.
pub const ENFORCED_ROOT_ENTRIES: u32 = 1024;

/// Cgroups that may be exempt from the DNS redirect (with their descendants).
pub const DNS_EXEMPT_ENTRIES: u32 = 1024;

/// Compares maps already pinned under `layout` with the shapes this build and config expect,
/// returning why each one cannot be reused (empty: all reusable or absent). Reusing a map of
/// another layout would misread it; one of another size would silently keep the old size.
pub fn pinned_shape_mismatches(
    layout: &PinLayout,
    sizes: &MapSizes,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for want in expected_shapes(sizes) {
        let path = layout.map(want.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let got_type = info.map_type().ok();
        if got_type != Some(want.map_type)
            || info.key_size() != want.key_size
            || info.value_size() != want.value_size
        {
            out.push(format!(
                "{}: layout (type {got_type:?}, key {} B, value {} B) differs from this \
                 version's (type {:?}, key {} B, value {} B)",
                want.name,
                info.key_size(),
                info.value_size(),
                want.map_type,
                want.key_size,
                want.value_size
            ));
        } else if want.name == map_names::CONFIG
            && let Some(v) = pinned_abi_version(&path)
            && v != 0
            && v != ABI_VERSION
        {
            out.push(format!(
                "CONFIG: written by ABI version {v}, this build is {ABI_VERSION}"
            ));
        } else if info.max_entries() != want.max_entries {
            out.push(format!(
                "{}: {} entries pinned, {} configured",
                want.name,
                info.max_entries(),
                want.max_entries
            ));
        }
    }
    Ok(out)
}

fn pinned_abi_version(path: &std::path::Path) -> Option<u32> {
    let map = Map::from_map_data(MapData::from_pin(path).ok()?).ok()?;
    let config: Array<MapData, Config> = map.try_into().ok()?;
    Some(config.get(&0, 0).ok()?.abi_version)
}

pub(super) fn take<T: TryFrom<Map>>(map: Option<Map>, name: &str) -> anyhow::Result<T>
where
    <T as TryFrom<Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let map = map.with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        Ok(Self {
            exact: ExactRules::new(
                take(
                    ebpf.take_map(map_names::RULES_TABLE),
                    map_names::RULES_TABLE,
                )?,
                take(
                    ebpf.take_map(map_names::RULES_EXACT),
                    map_names::RULES_EXACT,
                )?,
                take(
                    ebpf.take_map(map_names::OVERFLOW_HOMES),
                    map_names::OVERFLOW_HOMES,
                )?,
            ),
            prefix: take(
                ebpf.take_map(map_names::RULES_PREFIX),
                map_names::RULES_PREFIX,
            )?,
            config: take(ebpf.take_map(map_names::CONFIG), map_names::CONFIG)?,
            counters: take(ebpf.take_map(map_names::COUNTERS), map_names::COUNTERS)?,
            vsets: take(ebpf.take_map(map_names::VSETS), map_names::VSETS)?,
            cgroup_policy: take(
                ebpf.take_map(map_names::CGROUP_POLICY),
                map_names::CGROUP_POLICY,
            )?,
            no_prefix: Some(NoPrefix::new(take(
                ebpf.take_map(map_names::NO_PREFIX),
                map_names::NO_PREFIX,
            )?)),
            mirror: Mirror::default(),
        })
    }

    /// Opens the pinned maps without loading any program (for `inspect`).
    pub fn from_pins(layout: &PinLayout) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<Option<Map>> {
            let path = layout.map(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "no pinned egress-enforcer state at {} (is the daemon installed with this \
                     bpffs/config?)",
                    path.display()
                )
            })?;
            Ok(Some(Map::from_map_data(data)?))
        };
        Ok(Self {
            exact: ExactRules::new(
                take(open(map_names::RULES_TABLE)?, map_names::RULES_TABLE)?,
                take(open(map_names::RULES_EXACT)?, map_names::RULES_EXACT)?,
                take(open(map_names::OVERFLOW_HOMES)?, map_names::OVERFLOW_HOMES)?,
            ),
            prefix: take(open(map_names::RULES_PREFIX)?, map_names::RULES_PREFIX)?,
            config: take(open(map_names::CONFIG)?, map_names::CONFIG)?,
            counters: take(open(map_names::COUNTERS)?, map_names::COUNTERS)?,
            vsets: take(open(map_names::VSETS)?, map_names::VSETS)?,
            cgroup_policy: take(open(map_names::CGROUP_POLICY)?, map_names::CGROUP_POLICY)?,
            no_prefix: if layout.map(map_names::NO_PREFIX).exists() {
                Some(NoPrefix::new(take(
                    open(map_names::NO_PREFIX)?,
                    map_names::NO_PREFIX,
                )?))
            } else {
                None
            },
            mirror: Mirror::default(),
        })
    }

    /// Maps created empty by this run: the first apply writes without reading them back.
    pub fn created_empty(&mut self) {
        self.exact.created_empty();
        self.mirror.exact = Some(Vec::new());
        self.mirror.prefix = Some(Vec::new());
    }

    /// Reads the exact rules in force: the first apply diffs against them, and the daemon
    /// decides from them what to carry over (one reading of a million rules, not two).
    pub fn read_exact_in_force(&mut self) -> anyhow::Result<()> {
        self.mirror.exact = Some(self.exact.reread()?);
        Ok(())
    }

    /// The exact rules in force as of the last apply or reading, sorted by key; `None` when
    /// unknown (a write failed midway).
    pub fn exact_in_force(&self) -> Option<&[(RuleKey, RuleValue)]> {
        self.mirror.exact.as_deref()
    }

    pub fn read_config(&self) -> anyhow::Result<Config> {
        Ok(self.config.get(&0, 0)?)
    }

    /// Writes the config entry (all but the ABI version and the skip bits, which describe the
    /// rule maps' content), refusing to overwrite one written by another ABI version.
    pub fn write_config(&mut self, want: Config) -> anyhow::Result<()> {
        let old = self.read_config()?;
        if old.abi_version != 0 && old.abi_version != ABI_VERSION {
            bail!(
                "pinned maps were written by ABI version {} (this build is {ABI_VERSION})",
                old.abi_version
            );
        }
        let cfg = Config {
            abi_version: ABI_VERSION,
            skip: old.skip,
            table_mask: self.exact.mask()?,
            ..want
        };
        self.config.set(0, cfg, 0)?;
        Ok(())
    }

    /// Rewrites the lookup-skip bits, leaving the rest of the config as it is.
    fn set_skips(&mut self, skip: impl FnOnce(u32) -> u32) -> anyhow::Result<()> {
        let mut cfg = self.read_config()?;
        let new = skip(cfg.skip);
        if new != cfg.skip {
            cfg.skip = new;
            self.config.set(0, cfg, 0)?;
        }
        Ok(())
    }

    /// Makes the rule maps equal to `desired`, whose rules move into the maps' mirror or are
    /// diffed against it: `desired` is left without them, whether the apply succeeds or not. New and changed rules go in before stale ones come out, so a rule
    /// present before and after is never missing; only when a map is too small to hold both
    /// at once are its stale rules removed first.
    pub fn apply(&mut self, desired: &mut DesiredRules) -> anyhow::Result<ApplyStats> {
        // While old and new rules coexist, the kernel makes every lookup either set needs;
        // it narrows to the new set's only once the old rules are gone. So do the regions
        // whose trie walks are skipped.
        let skips = desired.lookup_skips();
        let no_prefix = desired.no_prefix_words();
        let t0 = std::time::Instant::now();
        let live = take_live(&mut self.exact, &mut self.mirror.exact)?;
        let plan = match ExactPlan::new(&live, desired) {
            Ok(p) => p,
            Err(e) => {
                self.mirror.exact = Some(live);
                return Err(e);
            }
        };
        tracing::debug!(ms = t0.elapsed().as_millis(), "exact rules diffed");
        // Check both capacities before touching either map, so a too-large set changes nothing.
        let fits = check_capacity(&self.exact, plan.len_after(live.len()))
            .and_then(|()| check_capacity(&self.prefix, desired.prefix.len()));
        let narrowed = fits
            .and_then(|()| self.set_skips(|old| old & skips))
            .and_then(|()| {
                self.no_prefix
                    .as_mut()
                    .map(|m| m.narrow(&no_prefix))
                    .transpose()
            });
        let narrowed = match narrowed {
            Ok(n) => n,
            Err(e) => {
                self.mirror.exact = Some(live);
                return Err(e);
            }
        };
        let synced = self
            .sync_both(live, plan, desired, skips)
            .inspect(|_| self.widen(narrowed.as_deref(), &no_prefix));
        self.exact.applied();
        synced
    }

    fn sync_both(
        &mut self,
        live: Vec<(RuleKey, RuleValue)>,
        plan: ExactPlan,
        desired: &mut DesiredRules,
        skips: u32,
    ) -> anyhow::Result<ApplyStats> {
        let a = match plan {
            ExactPlan::Whole(want) => {
                sync_from(&mut self.exact, &mut self.mirror.exact, live, want)
            }
            ExactPlan::Listed(d) => sync_listed(&mut self.exact, &mut self.mirror.exact, live, &d),
        }?;
        let b = sync(
            &mut self.prefix,
            &mut self.mirror.prefix,
            desired.prefix.take(),
        )?;
        self.set_skips(|_| skips)?;
        Ok(ApplyStats {
            added: a.added + b.added,
            removed: a.removed + b.removed,
            unchanged: a.unchanged + b.unchanged,
            exact: self.mirror.exact.as_ref().map_or(0, Vec::len),
            prefix: self.mirror.prefix.as_ref().map_or(0, Vec::len),
        })
    }

    /// Once only the new rules are in force: skips the trie walks wherever they no longer
    /// reach. A failure leaves the narrowed words, right for these rules too (only slower on
    /// a denial): the rules are in force, so the apply stands, and the next one widens.
    fn widen(&mut self, now: Option<&[u64]>, want: &[u64]) {
        if let (Some(m), Some(now)) = (&mut self.no_prefix, now)
            && let Err(e) = m.widen(now, want)
        {
            tracing::warn!(error = %format!("{e:#}"), "NO_PREFIX left narrowed");
        }
    }

    /// Removes every rule that `desired` does not hold, adding nothing: when the whole set does
    /// not fit, what is no longer wanted (an expired carried address, a removed entry) must
    /// still go. The lookup-skip bits and the skipped regions stay as they were (fewer rules
    /// never need more lookups).
    pub fn remove_unwanted(&mut self, desired: &DesiredRules) -> anyhow::Result<usize> {
        let a = prune(
            &mut self.exact,
            &mut self.mirror.exact,
            desired.exact_rules(),
        )?;
        let b = prune(
            &mut self.prefix,
            &mut self.mirror.prefix,
            desired.prefix.iter().map(|(k, v)| (*k, *v)),
        )?;
        Ok(a + b)
    }

    /// Every exact rule, sorted by key.
    pub fn exact_entries(&self) -> anyhow::Result<Vec<(RuleKey, RuleValue)>> {
        self.exact.live()
    }

    /// Every prefix rule (LPM length over the whole key, key), sorted.
    pub fn prefix_entries(&self) -> anyhow::Result<Vec<((u32, RuleKey), RuleValue)>> {
        self.prefix.live()
    }

    /// The learned rules (DNS-aware mode) still in force at `now_ns` (CLOCK_MONOTONIC), from
    /// the pinned map; empty if there is none.
    pub fn learned_rules(
        layout: &PinLayout,
        now_ns: u64,
    ) -> anyhow::Result<Vec<(RuleKey, LearnedValue)>> {
        let path = layout.map(map_names::RULES_LEARNED);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let map = Map::from_map_data(MapData::from_pin(&path)?)?;
        let learned: HashMap<MapData, RuleKey, LearnedValue> = map.try_into()?;
        let mut rows = learned
            .iter()
            .filter(|r| r.as_ref().map_or(true, |(_, v)| v.expires_ns >= now_ns))
            .map(|r| r.context("reading RULES_LEARNED"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.sort_unstable_by_key(|(k, _)| *k);
        Ok(rows)
    }

    pub fn stats(&self) -> anyhow::Result<Stats> {
        let mut totals = vec![0u64; NUM_COUNTERS as usize];
        for (i, per_cpu) in self.counters.iter().enumerate() {
            let per_cpu = per_cpu.context("reading COUNTERS")?;
            if let Some(t) = totals.get_mut(i) {
                *t = per_cpu.iter().sum();
            }
        }
        Ok(Stats::from_totals(&totals))
    }

    pub fn rules(&self) -> anyhow::Result<Vec<RuleRow>> {
        let mut rows = Vec::new();
        for (k, v) in self.exact.live()? {
            rows.push(RuleRow {
                rule: crate::policy::rules::describe(None, &k).to_string(),
                kind: "exact",
                rule_id: v.rule_id,
                source: None,
                names: Vec::new(),
                expires_in_secs: None,
                policies: None,
                vset: v.vset,
            });
        }
        for ((len, k), v) in self.prefix.live()? {
            rows.push(RuleRow {
                rule: crate::policy::rules::describe(Some(len), &k).to_string(),
                kind: "prefix",
                rule_id: v.rule_id,
                source: None,
                names: Vec::new(),
                expires_in_secs: None,
                policies: None,
                vset: v.vset,
            });
        }
        Ok(rows)
    }
}

/// The two rule maps seen alike by `sync`.
trait RuleMap {
    type Key: Ord + Clone;
    const NAME: &'static str;
    /// The `maps:` config key that sizes this map.
    const SIZE_KEY: &'static str;
    fn capacity(&self) -> anyhow::Result<usize>;
    /// The map's entries, sorted by key.
    fn live(&self) -> anyhow::Result<Vec<(Self::Key, RuleValue)>>;

    /// The map's entries before an apply that has no mirror.
    fn reread(&mut self) -> anyhow::Result<Vec<(Self::Key, RuleValue)>> {
        self.live()
    }

    /// Adds or replaces `entries`; `live` is what the map held before this apply.
    fn put_many(
        &mut self,
        entries: &[(Self::Key, RuleValue)],
        live: &[(Self::Key, RuleValue)],
    ) -> anyhow::Result<()>;

    /// Writes `entries` into the map when it is empty and no program reads it yet, faster
    /// than [`Self::put_many`]; `false`: not done, nothing written.
    fn fill_empty(&mut self, _entries: &[(Self::Key, RuleValue)]) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// Removes `keys`; `live` is what the map held before this apply.
    fn del_many(
        &mut self,
        keys: &[Self::Key],
        live: &[(Self::Key, RuleValue)],
    ) -> anyhow::Result<()>;
}

impl RuleMap for ExactRules {
    type Key = RuleKey;
    const NAME: &'static str = map_names::RULES_TABLE;
    const SIZE_KEY: &'static str = "exactRules";

    fn capacity(&self) -> anyhow::Result<usize> {
        ExactRules::capacity(self)
    }

    fn live(&self) -> anyhow::Result<Vec<(RuleKey, RuleValue)>> {
        ExactRules::live(self)
    }

    fn reread(&mut self) -> anyhow::Result<Vec<(RuleKey, RuleValue)>> {
        ExactRules::reread(self)
    }

    fn put_many(
        &mut self,
        entries: &[(RuleKey, RuleValue)],
        live: &[(RuleKey, RuleValue)],
    ) -> anyhow::Result<()> {
        ExactRules::put_many(self, entries, live)
    }

    fn del_many(&mut self, keys: &[RuleKey], live: &[(RuleKey, RuleValue)]) -> anyhow::Result<()> {
        ExactRules::del_many(self, keys, live)
    }

    fn fill_empty(&mut self, entries: &[(RuleKey, RuleValue)]) -> anyhow::Result<bool> {
        ExactRules::fill_empty(self, entries)
    }
}

impl RuleMap for LpmTrie<MapData, RuleKey, RuleValue> {
    type Key = (u32, RuleKey);
    const NAME: &'static str = map_names::RULES_PREFIX;
    const SIZE_KEY: &'static str = "prefixRules";

    fn capacity(&self) -> anyhow::Result<usize> {
        Ok(self.map().info()?.max_entries() as usize)
    }

    fn live(&self) -> anyhow::Result<Vec<((u32, RuleKey), RuleValue)>> {
        let mut entries = self
            .iter()
            .map(|r| {
                let (k, v) = r.context("reading RULES_PREFIX")?;
                Ok(((k.prefix_len(), k.data()), v))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        entries.sort_unstable_by_key(|e| e.0);
        Ok(entries)
    }

    fn put_many(
        &mut self,
        entries: &[((u32, RuleKey), RuleValue)],
        _live: &[((u32, RuleKey), RuleValue)],
    ) -> anyhow::Result<()> {
        entries
            .iter()
            .try_for_each(|((len, key), v)| Ok(self.insert(&Key::new(*len, *key), v, 0)?))
    }

    fn del_many(
        &mut self,
        keys: &[(u32, RuleKey)],
        _live: &[((u32, RuleKey), RuleValue)],
    ) -> anyhow::Result<()> {
        keys.iter()
            .try_for_each(|(len, key)| Ok(self.remove(&Key::new(*len, *key))?))
    }
}

/// The policy needs more rules than a map holds: the config must change (exit 1), unlike a
/// kernel failure.
#[derive(Debug, thiserror::Error)]
#[error("{wanted} rules do not fit in {map} ({capacity} entries); raise maps.{size_key}")]
pub struct CapacityError {
    pub wanted: usize,
    pub map: &'static str,
    pub capacity: usize,
    pub size_key: &'static str,
}

fn check_capacity<M: RuleMap>(map: &M, wanted: usize) -> anyhow::Result<()> {
    let capacity = map.capacity()?;
    if wanted > capacity {
        return Err(CapacityError {
            wanted,
            map: M::NAME,
            capacity,
            size_key: M::SIZE_KEY,
        }
        .into());
    }
    Ok(())
}

/// How the exact map gets to the desired rules: a whole list, or a diff against rules listed
/// from the compiled policy (docs/architecture.md, "Reloads"), which are then never copied
/// whole. A map with nothing in it gets the whole list, which becomes its mirror.
enum ExactPlan {
    Whole(Vec<(RuleKey, RuleValue)>),
    Listed(Changes<RuleKey, RuleValue>),
}

impl ExactPlan {
    fn new(live: &[(RuleKey, RuleValue)], desired: &mut DesiredRules) -> anyhow::Result<Self> {
        Ok(match desired.listed {
            None => Self::Whole(desired.exact.take()),
            Some(_) if live.is_empty() => Self::Whole(desired.exact_rules().collect()),
            Some(_) => Self::Listed(diff_listed(live, desired.exact_rules())?),
        })
    }

    fn len_after(&self, live: usize) -> usize {
        match self {
            Self::Whole(want) => want.len(),
            Self::Listed(d) => d.len_after(live),
        }
    }
}

/// The mirror, taken out (if a write below fails, the mirror stays unknown and the next apply
/// reads), or the map's entries where there is none.
fn take_live<M: RuleMap>(
    map: &mut M,
    mirror: &mut Option<Vec<(M::Key, RuleValue)>>,
) -> anyhow::Result<Vec<(M::Key, RuleValue)>> {
    match mirror.take() {
        Some(live) => Ok(live),
        None => map.reread(),
    }
}

/// Makes `map` hold `desired` (sorted, each key once), diffing against what it held, and
/// keeps `desired` as its mirror (moved, not copied).
fn sync<M: RuleMap>(
    map: &mut M,
    mirror: &mut Option<Vec<(M::Key, RuleValue)>>,
    desired: Vec<(M::Key, RuleValue)>,
) -> anyhow::Result<ApplyStats> {
    let live = take_live(map, mirror)?;
    sync_from(map, mirror, live, desired)
}

/// [`sync`] from `live`, what the map holds.
fn sync_from<M: RuleMap>(
    map: &mut M,
    mirror: &mut Option<Vec<(M::Key, RuleValue)>>,
    live: Vec<(M::Key, RuleValue)>,
    desired: Vec<(M::Key, RuleValue)>,
) -> anyhow::Result<ApplyStats> {
    let t0 = std::time::Instant::now();
    if live.is_empty() && map.fill_empty(&desired)? {
        tracing::debug!(map = M::NAME, ms = t0.elapsed().as_millis(), "filled");
        let added = desired.len();
        *mirror = Some(desired);
        return Ok(changed(added, 0, 0));
    }
    let d = diff(&live, &desired);
    let diff_ms = t0.elapsed().as_millis();
    in_safe_order(
        map,
        d.removals_first(live.len(), map.capacity()?),
        |map| remove_at(map, &live, &d.removals),
        |map| put_at(map, &live, &desired, &d.upserts),
    )?;
    *mirror = Some(desired);
    tracing::debug!(
        map = M::NAME,
        diff_ms,
        ms = t0.elapsed().as_millis(),
        "synced"
    );
    Ok(changed(d.upserts.len(), d.removals.len(), d.unchanged))
}

/// Removes and writes in the order the capacity allows: writes first, so a rule present
/// before and after is never missing, unless the map cannot hold both sets at once.
fn in_safe_order<M>(
    map: &mut M,
    removals_first: bool,
    removals: impl FnOnce(&mut M) -> anyhow::Result<()>,
    upserts: impl FnOnce(&mut M) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if removals_first {
        removals(map)?;
        upserts(map)
    } else {
        upserts(map)?;
        removals(map)
    }
}

fn changed(added: usize, removed: usize, unchanged: usize) -> ApplyStats {
    ApplyStats {
        added,
        removed,
        unchanged,
        ..ApplyStats::default()
    }
}

/// Makes `map` hold the rules `d` was listed from, and patches `live` into its mirror.
fn sync_listed<M: RuleMap>(
    map: &mut M,
    mirror: &mut Option<Vec<(M::Key, RuleValue)>>,
    mut live: Vec<(M::Key, RuleValue)>,
    d: &Changes<M::Key, RuleValue>,
) -> anyhow::Result<ApplyStats>
where
    M::Key: Copy,
{
    let t0 = std::time::Instant::now();
    in_safe_order(
        map,
        d.removals_first(live.len(), map.capacity()?),
        |map| remove_at(map, &live, &d.removals),
        |map| put_entries(map, &live, &d.upserts),
    )?;
    patch(&mut live, d);
    *mirror = Some(live);
    tracing::debug!(
        map = M::NAME,
        ms = t0.elapsed().as_millis(),
        "synced (listed)"
    );
    Ok(changed(d.upserts.len(), d.removals.len(), d.unchanged))
}

/// Writes `entries`, a batch at a time.
fn put_entries<M: RuleMap>(
    map: &mut M,
    live: &[(M::Key, RuleValue)],
    entries: &[(M::Key, RuleValue)],
) -> anyhow::Result<()> {
    for chunk in entries.chunks(super::batch::CHUNK) {
        map.put_many(chunk, live)
            .with_context(|| format!("inserting into {}", M::NAME))?;
    }
    Ok(())
}

/// Writes `desired[i]` for each index, a batch at a time (a copy of a batch, never of all).
fn put_at<M: RuleMap>(
    map: &mut M,
    live: &[(M::Key, RuleValue)],
    desired: &[(M::Key, RuleValue)],
    at: &[u32],
) -> anyhow::Result<()> {
    for chunk in at.chunks(super::batch::CHUNK) {
        let entries: Vec<(M::Key, RuleValue)> =
            chunk.iter().map(|i| desired[*i as usize].clone()).collect();
        map.put_many(&entries, live)
            .with_context(|| format!("inserting into {}", M::NAME))?;
    }
    Ok(())
}

/// Removes `live[i]` for each index, a batch at a time.
fn remove_at<M: RuleMap>(
    map: &mut M,
    live: &[(M::Key, RuleValue)],
    at: &[u32],
) -> anyhow::Result<()> {
    for chunk in at.chunks(super::batch::CHUNK) {
        let keys: Vec<M::Key> = chunk.iter().map(|i| live[*i as usize].0.clone()).collect();
        map.del_many(&keys, live)
            .with_context(|| format!("removing from {}", M::NAME))?;
    }
    Ok(())
}

/// Removes what `desired` (sorted by key, each key once) does not hold, adding nothing.
fn prune<M: RuleMap>(
    map: &mut M,
    mirror: &mut Option<Vec<(M::Key, RuleValue)>>,
    desired: impl Iterator<Item = (M::Key, RuleValue)>,
) -> anyhow::Result<usize>
where
    M::Key: Copy,
{
    let mut live = take_live(map, mirror)?;
    let removals = removals_listed(&live, desired)?;
    remove_at(map, &live, &removals)?;
    let gone = Changes {
        upserts: Vec::new(),
        inserted: 0,
        removals,
        unchanged: 0,
    };
    patch(&mut live, &gone);
    *mirror = Some(live);
    Ok(gone.removals.len())
}
