//! The proxy's side of the kernel maps: learned rules written before an answer is released,
//! who sent a query, the exempt cgroups, and the liveness entry (docs/architecture.md,
//! "DNS-aware mode").

use std::{net::SocketAddr, os::fd::AsRawFd, time::Duration};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData, SockMap};
use enforcer_common::{ClientKey, DnsSocket, LearnedValue, RuleKey, map_names};

use crate::dataplane::pins::PinLayout;

pub struct KernelMaps {
    learned: HashMap<MapData, RuleKey, LearnedValue>,
    clients: HashMap<MapData, ClientKey, DnsSocket>,
    exempt: HashMap<MapData, u64, u8>,
    proxy: SockMap<MapData>,
    own: HashMap<MapData, u64, u8>,
}

fn open<T>(layout: &PinLayout, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<Map>,
    <T as TryFrom<Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let path = layout.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data)?;
    T::try_from(map).with_context(|| format!("{name} has an unexpected type"))
}

/// A socket's cookie (`SO_COOKIE`), the key the kernel programs see.
pub fn socket_cookie(fd: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Two random bytes from the kernel, for upstream query IDs.
pub fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: getrandom writes at most 2 bytes into `b`.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    u16::from_ne_bytes(b)
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

pub fn after(now_ns: u64, d: Duration) -> u64 {
    now_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The normalised form the kernel uses for addresses.
pub fn normalized(addr: std::net::IpAddr) -> [u8; 16] {
    match addr {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

impl KernelMaps {
    pub fn open(layout: &PinLayout) -> anyhow::Result<Self> {
        Ok(Self {
            learned: open(layout, map_names::RULES_LEARNED)?,
            clients: open(layout, map_names::DNS_CLIENTS)?,
            exempt: open(layout, map_names::DNS_EXEMPT)?,
            proxy: open(layout, map_names::DNS_PROXY)?,
            own: open(layout, map_names::DNS_OWN)?,
        })
    }

    pub fn put(&mut self, puts: &[(RuleKey, LearnedValue)]) -> anyhow::Result<()> {
        for (k, v) in puts {
            self.learned
                .insert(k, v, 0)
                .context("writing a learned rule into RULES_LEARNED")?;
        }
        Ok(())
    }

    pub fn delete(&mut self, keys: &[RuleKey]) -> anyhow::Result<()> {
        for k in keys {
            match self.learned.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing from RULES_LEARNED"),
            }
        }
        Ok(())
    }

    /// Every learned rule in the map (what a previous run left).
    pub fn learned(&self) -> anyhow::Result<Vec<(RuleKey, LearnedValue)>> {
        self.learned
            .iter()
            .map(|r| r.context("reading RULES_LEARNED"))
            .collect()
    }

    /// What the kernel knows about the socket a query came from, if it was redirected.
    pub fn client(&self, peer: SocketAddr, proto: u8) -> Option<DnsSocket> {
        let key = ClientKey {
            addr: normalized(peer.ip()),
            port: peer.port(),
            proto,
            pad: [0; 5],
        };
        self.clients.get(&key, 0).ok()
    }

    /// Makes `ids` the exempt cgroups (adds first, then removes the others).
    pub fn set_exempt(&mut self, ids: &[u64]) -> anyhow::Result<()> {
        for id in ids {
            self.exempt.insert(id, 1, 0).context("writing DNS_EXEMPT")?;
        }
        let old: Vec<u64> = self.exempt.keys().filter_map(Result::ok).collect();
        for id in old.iter().filter(|id| !ids.contains(id)) {
            let _ignored = self.exempt.remove(id);
        }
        Ok(())
    }

    /// Marks one of the daemon's upstream sockets as its own while it connects: the hooks
    /// leave it alone whatever cgroup the daemon runs in.
    pub fn own_socket(&mut self, cookie: u64, on: bool) -> anyhow::Result<()> {
        if on {
            self.own.insert(cookie, 1, 0).context("writing DNS_OWN")
        } else {
            match self.own.remove(&cookie) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(e).context("removing from DNS_OWN"),
            }
        }
    }

    /// Forgets the sockets an earlier run marked as its own (all closed with it; the map
    /// would otherwise fill over crashes).
    pub fn clear_own(&mut self) -> anyhow::Result<()> {
        let old: Vec<u64> = self.own.keys().filter_map(Result::ok).collect();
        for cookie in old {
            self.own_socket(cookie, false)?;
        }
        Ok(())
    }

    /// Registers the proxy's socket: the kernel redirects queries only while it is open.
    pub fn set_proxy_socket(&mut self, socket: &impl AsRawFd) -> anyhow::Result<()> {
        self.proxy
            .set(0, socket, 0)
            .context("putting the proxy socket into DNS_PROXY")
    }
}
