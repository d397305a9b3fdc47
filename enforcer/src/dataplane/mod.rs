//! The kernel side as seen from userspace: load the programs, pin maps and links under
//! `<bpffs>/egress-enforcer/`, attach to cgroups, keep the rule maps equal to a rule set, and
//! read counters and events. All aya calls live in this module.

pub mod batch;
pub mod bpffs;
pub mod cgroup;
pub mod diff;
pub mod event_windows;
pub mod events;
pub mod foreign;
pub mod links;
pub mod lsm;
mod mapped_word;
pub mod maps;
mod no_prefix;
pub mod pins;
pub mod policy_record;
pub mod protections;
mod raw_link;
mod scoping;
pub mod sources;
pub mod stats;
pub mod table;
pub mod table_map;
mod table_mmap;
pub mod verdicts;

use std::{
    collections::HashSet,
    fs::{self, File},
    os::fd::AsRawFd as _,
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, LsmCgroup, links::FdLink,
    },
};
use enforcer_common::{
    DNS_PROGRAM_NAMES, EGRESS_PROGRAM_NAME, FOREIGN_PROGRAM_NAMES, GUARD_PROGRAM_NAME,
    LSM_PROGRAM_NAME, PROGRAM_NAMES, SOCKOPT_PROGRAM_NAME, map_names,
};

use self::{cgroup::Cgroup, event_windows::EventWindows, maps::Maps, pins::PinLayout};
use crate::config::MapSizes;

/// The kernel object built by `build.rs` (empty when built with AYA_BUILD_SKIP=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));

pub struct Dataplane {
    layout: PinLayout,
    /// The pin directory did not exist before this load: if the daemon stops before it
    /// attaches anything, the directory goes again (a failed start leaves the host as it was).
    new_root: bool,
    /// `attach` was called: what this load created stays.
    attached: bool,
    /// flock on the pin directory: one daemon per pin directory.
    _lock: File,
    ebpf: Ebpf,
    pub maps: Maps,
    events: Option<(RingBuf<MapData>, EventWindows)>,
    /// The maps were created in the staging directory; `attach` moves them into place.
    migrating: bool,
    /// When migrating, the exact rules the old maps enforced when this run started (see
    /// [`Self::rules_in_force`]).
    previous_exact: Option<Vec<(enforcer_common::RuleKey, enforcer_common::RuleValue)>>,
    /// Programs attached besides the enforcing ones.
    extras: Extras,
    /// The LSM program is loaded and attached to every cgroup; otherwise why not (packet
    /// sockets are then not refused).
    pub lsm: Result<(), String>,
    root_maps: foreign::RootMaps,
    /// The cgroup2 mount whose root gets the programs for sockets from outside; `None`:
    /// `foreignSockets: off`.
    host_mount: Option<std::path::PathBuf>,
    /// The cgroups enforced now.
    enforced: Vec<Cgroup>,
}

/// Every cgroup program in the object: the first `ENFORCING` are attached to every enforced
/// cgroup, the egress program when something needs it, the DNS programs in DNS-aware mode,
/// and the rest to the cgroup root. The LSM program is separate: not every kernel can run it.
pub static ALL_PROGRAMS: [&str; 15] = [
    PROGRAM_NAMES[0],
    PROGRAM_NAMES[1],
    PROGRAM_NAMES[2],
    PROGRAM_NAMES[3],
    GUARD_PROGRAM_NAME,
    EGRESS_PROGRAM_NAME,
    SOCKOPT_PROGRAM_NAME,
    DNS_PROGRAM_NAMES[0],
    DNS_PROGRAM_NAMES[1],
    DNS_PROGRAM_NAMES[2],
    DNS_PROGRAM_NAMES[3],
    FOREIGN_PROGRAM_NAMES[0],
    FOREIGN_PROGRAM_NAMES[1],
    FOREIGN_PROGRAM_NAMES[2],
    FOREIGN_PROGRAM_NAMES[3],
];

const ENFORCING: usize = PROGRAM_NAMES.len() + 3;
const DNS_END: usize = ENFORCING + DNS_PROGRAM_NAMES.len();

/// What a daemon attaches to each enforced cgroup besides the enforcing programs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// DNS-aware mode: the DNS programs.
    pub dns_aware: bool,
}

/// The programs attached to each cgroup.
pub fn attached_programs(extras: Extras) -> Vec<&'static str> {
    let end = if extras.dns_aware { DNS_END } else { ENFORCING };
    ALL_PROGRAMS[..end].to_vec()
}

fn take_map<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    <T as TryFrom<aya::maps::Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    maps::take(ebpf.take_map(name), name)
}

/// Takes an exclusive lock on the pin directory, so two daemons never fight over one set of
/// maps and `uninstall` can tell whether a daemon is running. `make` makes the directories
/// first and says whether it made the pin directory itself; that answer, for the directory
/// locked, comes back with the lock.
fn lock(
    root: &Path,
    make: impl Fn() -> anyhow::Result<bool>,
) -> anyhow::Result<Option<(File, bool)>> {
    // A start that fails removes the directory it made, lock held: a daemon that opened it
    // just before would then lock a directory no longer there, and a third one could lock
    // its replacement. So the lock only counts on the directory still at the path.
    for _ in 0..3 {
        let made = make()?;
        let f = File::open(root).with_context(|| format!("opening {}", root.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e).with_context(|| format!("locking {}", root.display()));
            }
            if still_at(&f, root) {
                return Ok(None);
            }
        } else if still_at(&f, root) {
            return Ok(Some((f, made)));
        }
    }
    bail!(
        "cannot lock {}: it was removed (another start failing and cleaning up?) each of the \
         three times it was opened",
        root.display()
    )
}

/// Makes the pin directory and its `maps`/`links` directories; whether the pin directory
/// itself was made here (and so is this start's to remove if it fails).
fn make_pin_dirs(layout: &PinLayout) -> anyhow::Result<bool> {
    let root = &layout.root;
    if let Some(parent) = root.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let made = match fs::create_dir(root) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e).with_context(|| format!("creating {}", root.display())),
    };
    for dir in [layout.maps_dir(), layout.links_dir()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(made)
}

/// Whether `f` is the directory at `path` (not one removed from there).
fn still_at(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

impl Dataplane {
    /// Loads the programs, reusing maps already pinned under `bpffs` (so the rules in force stay
    /// in force) or creating and pinning new ones. Nothing is attached yet.
    pub fn load(bpffs: &Path, sizes: &MapSizes, bpf_log: bool) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this binary was built with AYA_BUILD_SKIP=1 and has no eBPF programs; rebuild \
                 without it (cargo xtask setup installs the eBPF toolchain)"
            );
        }
        bpffs::ensure(bpffs)?;
        let layout = PinLayout::new(bpffs);
        let (lock, new_root) =
            lock(&layout.root, || make_pin_dirs(&layout))?.with_context(|| {
                format!(
                    "another egress-enforcer daemon is running with pins in {}",
                    layout.root.display()
                )
            })?;
        // The same lock (one open file) through a second descriptor: the load may fail and
        // drop its own, and the directory must be removed before another start can lock it.
        let held = lock
            .try_clone()
            .context("duplicating the pin directory's lock")?;
        let loaded = Self::load_locked(layout.clone(), lock, new_root, sizes, bpf_log);
        // What a load refused after creating the pin directory leaves nothing behind (the
        // lock is ours: no other daemon uses the directory).
        if loaded.is_err() && new_root {
            let _ignored = fs::remove_dir_all(&layout.root);
        }
        drop(held);
        loaded
    }

    fn load_locked(
        layout: PinLayout,
        lock: File,
        new_root: bool,
        sizes: &MapSizes,
        bpf_log: bool,
    ) -> anyhow::Result<Self> {
        // Pinned maps that cannot be reused stay in place (their programs keep enforcing) while
        // a complete new set is built beside them; `attach` swaps it in.
        let mismatches = maps::pinned_shape_mismatches(&layout, sizes)?;
        let migrating = !mismatches.is_empty();
        let maps_dir = if migrating {
            tracing::warn!(
                reasons = %mismatches.join("; "),
                "pinned maps cannot be reused: building new maps and migrating (counters restart)"
            );
            let staging = layout.staging_maps_dir();
            // Leftovers of an interrupted migration: unpinning does not disturb programs still
            // using them.
            let _ignored = fs::remove_dir_all(&staging);
            fs::create_dir_all(&staging)
                .with_context(|| format!("creating {}", staging.display()))?;
            staging
        } else {
            layout.maps_dir()
        };

        let pin_paths: Vec<_> = map_names::PINNED
            .iter()
            .map(|n| (*n, maps_dir.join(n)))
            .collect();
        // Maps pinned by no earlier run are created empty: nothing to read back.
        let created = migrating
            || [
                map_names::RULES_TABLE,
                map_names::RULES_EXACT,
                map_names::OVERFLOW_HOMES,
                map_names::RULES_PREFIX,
            ]
            .iter()
            .all(|n| !layout.map(n).exists());
        let log_level: u8 = if bpf_log { 4 } else { 0 };
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(map_names::RULES_EXACT, sizes.exact_rules)
            .map_max_entries(
                map_names::RULES_TABLE,
                table_map::table_slots(sizes.exact_rules),
            )
            .map_max_entries(
                map_names::OVERFLOW_HOMES,
                enforcer_common::overflow_words(table_map::table_slots(sizes.exact_rules)),
            )
            .map_max_entries(map_names::RULES_PREFIX, sizes.prefix_rules)
            .map_max_entries(map_names::EVENTS, sizes.event_buffer)
            .map_max_entries(map_names::RULES_LEARNED, sizes.learned_rules)
            .map_max_entries(map_names::DNS_SOCKETS, sizes.dns_sockets)
            .map_max_entries(map_names::DNS_CLIENTS, sizes.dns_sockets)
            .map_max_entries(map_names::NATIVE_SOCKETS, sizes.native_sockets)
            .map_max_entries(
                map_names::VSETS,
                sizes.visibility_sets * enforcer_common::POLICY_WORDS,
            )
            .map_max_entries(map_names::CGROUP_POLICY, sizes.cgroup_policies)
            .override_global("AYA_LOG_LEVEL", &log_level, false);
        let btf = std::thread::spawn(Btf::from_sys_fs);
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;

        for name in ALL_PROGRAMS {
            load_program(&mut ebpf, name)
                .with_context(|| format!("the kernel refused program {name} (verifier)"))?;
        }
        let lsm = load_lsm(&mut ebpf, btf).map_err(|e| format!("{e:#}"));
        let mut maps = Maps::from_ebpf(&mut ebpf)?;
        let root_maps = foreign::RootMaps::from_ebpf(&mut ebpf)?;
        if created {
            maps.created_empty();
        }
        // The exact rules in force until now, in the maps being replaced when migrating.
        let previous_exact = if migrating {
            Maps::from_pins(&layout)
                .and_then(|m| m.exact_entries())
                .map_err(|e| tracing::warn!("cannot read the rules in force: {e:#}"))
                .ok()
        } else {
            if !created && let Err(e) = maps.read_exact_in_force() {
                tracing::warn!("cannot read the rules in force: {e:#}");
            }
            None
        };
        let events = match ebpf.take_map(map_names::EVENTS) {
            Some(m) => Some((
                RingBuf::try_from(m).context("EVENTS is not a ring buffer")?,
                EventWindows::from_ebpf(&mut ebpf)?,
            )),
            None => None,
        };
        Ok(Self {
            layout,
            new_root,
            attached: false,
            _lock: lock,
            ebpf,
            maps,
            events,
            migrating,
            previous_exact,
            extras: Extras::default(),
            lsm,
            root_maps,
            host_mount: None,
            enforced: Vec::new(),
        })
    }

    /// Which programs besides the enforcing ones are attached from the next `attach` on
    /// (cgroups attached again without one lose it).
    pub fn set_extras(&mut self, extras: Extras) {
        self.extras = extras;
    }

    /// Whether the programs for sockets from outside go on the root of the cgroup2 `mount`
    /// from the next `attach` on.
    pub fn set_foreign(&mut self, mount: Option<std::path::PathBuf>) {
        self.host_mount = mount;
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The exact rules the kernel enforced when this run started (in the old maps when
    /// migrating), for the daemon to decide what to carry over; `None` if unreadable. Valid
    /// until the first apply.
    pub fn rules_in_force(
        &self,
    ) -> Option<&[(enforcer_common::RuleKey, enforcer_common::RuleValue)]> {
        if self.migrating {
            self.previous_exact.as_deref()
        } else {
            self.maps.exact_in_force()
        }
    }

    /// Forgets the old maps' rules once the carried answers are known.
    pub fn forget_previous(&mut self) {
        self.previous_exact = None;
    }

    /// The aya-log ring buffer, for kernel debug messages (only when loaded with `bpf_log`).
    pub fn take_logger(&mut self) -> anyhow::Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        Ok(aya_log::EbpfLogger::init(&mut self.ebpf)?)
    }

    /// The events' ring buffer and the repeat windows that go with it.
    pub fn take_events(&mut self) -> Option<(RingBuf<MapData>, EventWindows)> {
        self.events.take()
    }

    /// Attaches all four programs to every cgroup in `cgroups` and pins the links, replacing
    /// links pinned by an earlier run. The new link is attached before the old one goes away
    /// (both read the same maps), so enforcement never lapses. Links of cgroups no longer
    /// configured are detached.
    pub fn attach(&mut self, cgroups: &[Cgroup]) -> anyhow::Result<()> {
        self.attached = true;
        for cg in cgroups {
            cg.create()?;
        }
        for cg in cgroups {
            self.attach_one(cg)?;
        }
        self.pin_programs()?;
        // The root programs consult ENFORCED_ROOTS: in maps new to this run (a migration) it
        // must be full before they run, or every task would look unenforced for a moment.
        self.set_roots(cgroups)?;
        let mount = self.host_mount.clone();
        self.attach_host(mount.as_deref())?;
        self.detach_except(cgroups)?;
        if self.migrating {
            self.finish_migration()?;
        }
        Ok(())
    }

    /// Attaches to cgroups not enforced before (already created), all or none: on a failure
    /// the ones this call attached are detached again, so the kernel is as it was.
    pub fn attach_new(&mut self, cgroups: &[Cgroup]) -> anyhow::Result<()> {
        for (i, cg) in cgroups.iter().enumerate() {
            if let Err(e) = self.attach_one(cg) {
                for done in cgroups.iter().take(i + 1) {
                    let dir = self.layout.cgroup_links_dir(&done.relative);
                    if let Err(undo) = links::remove_cgroup_dir(&dir) {
                        tracing::error!(cgroup = %done.display(), "undoing a partial attach failed: {undo:#}");
                    }
                }
                return Err(e);
            }
        }
        let mut all = self.enforced.clone();
        all.extend(cgroups.iter().cloned());
        self.set_roots(&all)?;
        self.enforced = all;
        Ok(())
    }

    /// Attaches the four programs to one cgroup and pins the links, replacing any pinned
    /// before (attach first, then rename over the old pin, so the cgroup is never unenforced).
    fn attach_one(&mut self, cg: &Cgroup) -> anyhow::Result<()> {
        let dir = File::open(&cg.path)
            .with_context(|| format!("opening cgroup {}", cg.path.display()))?;
        let link_dir = self.layout.cgroup_links_dir(&cg.relative);
        fs::create_dir_all(&link_dir)
            .with_context(|| format!("creating {}", link_dir.display()))?;
        let mut names = attached_programs(self.extras);
        if self.lsm.is_ok() {
            names.push(LSM_PROGRAM_NAME);
        }
        for name in names.iter().copied() {
            let link = attach_program(&mut self.ebpf, name, &dir, &link_dir)
                .with_context(|| format!("attaching {name} to cgroup {}", cg.display()))?;
            pin_replacing(link, &link_dir, name)?;
        }
        // Leftovers of an interrupted earlier run (temporary pins, unknown names).
        if let Ok(rd) = fs::read_dir(&link_dir) {
            for e in rd.flatten() {
                let n = e.file_name();
                if !names.iter().any(|p| n == *p) {
                    let _ignored = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Detaches every cgroup that is not in `keep`.
    pub fn detach_except(&mut self, keep: &[Cgroup]) -> anyhow::Result<()> {
        self.set_roots(keep)?;
        self.enforced = keep.to_vec();
        let keep: HashSet<String> = keep
            .iter()
            .map(|c| pins::escape_cgroup(&c.relative))
            .collect();
        for (dir, rel) in links::cgroup_dirs(&self.layout) {
            if !keep.contains(&dir) {
                tracing::info!(
                    cgroup = rel.as_deref().unwrap_or(&dir),
                    "detaching cgroup no longer configured"
                );
                links::remove_cgroup_dir(&self.layout.links_dir().join(&dir))?;
            }
        }
        Ok(())
    }

    /// Pins the attached programs (replacing the previous run's), for `inspect` to read.
    fn pin_programs(&mut self) -> anyhow::Result<()> {
        let dir = self.layout.programs_dir();
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lsm = self.lsm.is_ok().then_some(LSM_PROGRAM_NAME);
        for name in ALL_PROGRAMS.iter().copied().chain(lsm) {
            let tmp = dir.join(format!("{name}-new"));
            let _ignored = fs::remove_file(&tmp);
            self.ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .pin(&tmp)
                .with_context(|| format!("pinning program {}", tmp.display()))?;
            fs::rename(&tmp, dir.join(name))
                .with_context(|| format!("replacing pinned program {name} in {}", dir.display()))?;
        }
        Ok(())
    }

    /// Every pinned link now runs the new programs on the new maps: move the new maps' pins
    /// over the old ones, which the kernel frees once nothing uses them.
    fn finish_migration(&mut self) -> anyhow::Result<()> {
        let staging = self.layout.staging_maps_dir();
        for name in map_names::PINNED {
            let from = staging.join(name);
            fs::rename(&from, self.layout.map(name)).with_context(|| {
                format!(
                    "moving {} into {}",
                    from.display(),
                    self.layout.maps_dir().display()
                )
            })?;
        }
        fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
        self.migrating = false;
        tracing::info!("migrated to new maps");
        Ok(())
    }
}

impl Drop for Dataplane {
    /// A start that stops before attaching removes what it created: the pin directory, or
    /// a migration's new maps (the old ones keep enforcing).
    fn drop(&mut self) {
        if self.attached {
            return;
        }
        let created = if self.new_root {
            self.layout.root.clone()
        } else if self.migrating {
            self.layout.staging_maps_dir()
        } else {
            return;
        };
        if let Err(e) = fs::remove_dir_all(&created) {
            tracing::warn!(
                "removing {}, created by a start that did not finish: {e}",
                created.display()
            );
        }
    }
}

/// Pins `link` as `dir/name`, replacing an earlier pin there without a gap: the new link is
/// pinned beside it, then renamed over it (rename() is atomic); dropping the old pin's last
/// reference detaches the old link, after the new one is already running.
fn pin_replacing(link: FdLink, dir: &Path, name: &str) -> anyhow::Result<()> {
    // bpffs allows no dots in names.
    let tmp = dir.join(format!("{name}-new"));
    let _ignored = fs::remove_file(&tmp);
    let pinned = link
        .pin(&tmp)
        .with_context(|| format!("pinning link {}", tmp.display()))?;
    fs::rename(&tmp, dir.join(name))
        .with_context(|| format!("replacing pinned link {name} in {}", dir.display()))?;
    drop(pinned);
    Ok(())
}

/// The `cgroup_skb` program.
const SKB_PROGRAM: &str = EGRESS_PROGRAM_NAME;

fn sock_addr_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSockAddr> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?)
}

fn skb_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSkb> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?)
}

fn sock_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSock> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?)
}

fn lsm_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut LsmCgroup> {
    Ok(ebpf
        .program_mut(LSM_PROGRAM_NAME)
        .with_context(|| format!("program {LSM_PROGRAM_NAME} missing from the eBPF object"))?
        .try_into()?)
}

/// Loads the LSM program if this kernel runs BPF LSM programs and has per-cgroup ones (6.0).
/// `btf`: the kernel's BTF, parsed meanwhile on another thread (it takes as long as loading
/// every other program, and a restart's window for DNS answers waits on it).
fn load_lsm(
    ebpf: &mut Ebpf,
    btf: std::thread::JoinHandle<Result<Btf, aya::BtfError>>,
) -> anyhow::Result<()> {
    lsm::check_active()?;
    let btf = btf
        .join()
        .map_err(|_| anyhow::anyhow!("reading the kernel's BTF panicked"))?
        .context("reading the kernel's BTF")?;
    lsm_program(ebpf)?.load("socket_create", &btf).context(
        "loading lsm_cgroup/socket_create (needs Linux 6.0 or later with BPF trampolines; \
             some kernels refuse every trampoline program)",
    )?;
    Ok(())
}

fn sockopt_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut CgroupSockopt> {
    Ok(ebpf
        .program_mut(SOCKOPT_PROGRAM_NAME)
        .with_context(|| format!("program {SOCKOPT_PROGRAM_NAME} missing from the eBPF object"))?
        .try_into()?)
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    if name == SOCKOPT_PROGRAM_NAME {
        sockopt_program(ebpf)?.load()?;
    } else if name == SKB_PROGRAM {
        skb_program(ebpf, name)?.load()?;
    } else if name == GUARD_PROGRAM_NAME {
        sock_program(ebpf, name)?.load()?;
    } else {
        sock_addr_program(ebpf, name)?.load()?;
    }
    Ok(())
}

/// Attaches one program; `scratch_dir` (in bpffs) may hold a temporary pin meanwhile.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &str,
    cgroup: &File,
    scratch_dir: &Path,
) -> anyhow::Result<FdLink> {
    if name == LSM_PROGRAM_NAME {
        let prog = lsm_program(ebpf)?;
        let id = prog.attach(cgroup)?;
        Ok(prog.take_link(id)?.into())
    } else if name == SOCKOPT_PROGRAM_NAME {
        // Made and pinned at a scratch path by hand (see raw_link), then handled like every
        // other link; the scratch pin goes once the caller has pinned its own.
        let prog = sockopt_program(ebpf)?;
        let scratch = scratch_dir.join(format!("{name}-raw"));
        let _ignored = fs::remove_file(&scratch);
        let link =
            raw_link::attach_pinned(prog.fd()?, cgroup, raw_link::CGROUP_SETSOCKOPT, &scratch);
        let _ignored = fs::remove_file(&scratch);
        link
    } else if name == SKB_PROGRAM {
        let prog = skb_program(ebpf, name)?;
        let id = prog.attach(
            cgroup,
            CgroupSkbAttachType::Egress,
            CgroupAttachMode::Single,
        )?;
        Ok(prog.take_link(id)?.try_into()?)
    } else if name == GUARD_PROGRAM_NAME {
        let prog = sock_program(ebpf, name)?;
        let id = prog.attach(cgroup, CgroupAttachMode::Single)?;
        Ok(prog.take_link(id)?.try_into()?)
    } else {
        let prog = sock_addr_program(ebpf, name)?;
        let id = prog.attach(cgroup, CgroupAttachMode::Single)?;
        Ok(prog.take_link(id)?.try_into()?)
    }
}

/// What `uninstall` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Uninstalled {
    pub links: usize,
    pub maps: usize,
}

/// Detaches every program (by removing the link pins) and removes the pinned maps.
pub fn uninstall(bpffs: &Path, force: bool) -> anyhow::Result<Uninstalled> {
    let layout = PinLayout::new(bpffs);
    let mut done = Uninstalled::default();
    if !layout.root.exists() {
        return Ok(done);
    }
    let held = match lock(&layout.root, || Ok(false)) {
        Ok(held) => held,
        // Gone meanwhile: nothing to remove.
        Err(_) if !layout.root.exists() => return Ok(done),
        Err(e) => return Err(e),
    };
    if held.is_none() && !force {
        bail!(
            "an egress-enforcer daemon is running with pins in {}; stop it first (or pass --force)",
            layout.root.display()
        );
    }
    for (dir, _) in links::cgroup_dirs(&layout) {
        let path = layout.links_dir().join(&dir);
        done.links += fs::read_dir(&path).map(|rd| rd.count()).unwrap_or(0);
        links::remove_cgroup_dir(&path)?;
    }
    if let Ok(rd) = fs::read_dir(layout.maps_dir()) {
        for e in rd.flatten() {
            fs::remove_file(e.path())
                .with_context(|| format!("unpinning {}", e.path().display()))?;
            done.maps += 1;
        }
    }
    // A pinned program stays loaded (not attached) until its pin goes.
    if let Ok(rd) = fs::read_dir(layout.programs_dir()) {
        for e in rd.flatten() {
            fs::remove_file(e.path())
                .with_context(|| format!("unpinning {}", e.path().display()))?;
        }
    }
    if let Ok(rd) = fs::read_dir(layout.host_links_dir()) {
        done.links += rd.count();
    }
    links::remove_cgroup_dir(&layout.host_links_dir())?;
    sources::remove(&layout.root);
    for dir in [
        layout.links_dir(),
        layout.maps_dir(),
        layout.programs_dir(),
        layout.root.clone(),
    ] {
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", dir.display()));
            }
            _ => {}
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_on_a_directory_removed_and_made_again_does_not_count() {
        let dir = std::env::temp_dir().join(format!("ee-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let old = File::open(&dir).unwrap();
        assert!(still_at(&old, &dir));
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        assert!(
            !still_at(&old, &dir),
            "the removed directory is not the one at the path"
        );
        let free = lock(&dir, || Ok(false)).unwrap();
        let (held, _) = free.expect("the new directory is free");
        assert!(still_at(&held, &dir));
        assert!(lock(&dir, || Ok(false)).unwrap().is_none(), "and now held");
        // The lock is the open file's: a second descriptor keeps it after the first closes.
        let dup = held.try_clone().unwrap();
        drop(held);
        assert!(
            lock(&dir, || Ok(false)).unwrap().is_none(),
            "held through the copy"
        );
        fs::remove_dir_all(&dir).unwrap();
        assert!(!still_at(&dup, &dir));
        // The directory removed under a holder and made again: the new one is free.
        let made = || {
            fs::create_dir_all(&dir)
                .map(|()| true)
                .map_err(anyhow::Error::from)
        };
        let (again, made) = lock(&dir, made).unwrap().expect("made again, and free");
        assert!(made && still_at(&again, &dir));
        drop(dup);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_start_that_made_the_pin_directory_owns_it() {
        let bpffs = std::env::temp_dir().join(format!("ee-pins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&bpffs);
        let layout = PinLayout::new(&bpffs);
        assert!(make_pin_dirs(&layout).unwrap(), "made here");
        assert!(layout.maps_dir().is_dir() && layout.links_dir().is_dir());
        assert!(!make_pin_dirs(&layout).unwrap(), "there already");
        fs::remove_dir_all(&bpffs).unwrap();
    }
}
