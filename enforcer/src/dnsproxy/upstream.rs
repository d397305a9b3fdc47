//! The proxy's UDP sockets towards upstream servers, reused a bounded number of times.
//!
//! Why: a fresh socket per query costs nine system calls and two map writes (the kernel must
//! know it is ours, docs/architecture.md, "DNS-aware mode"), about half of the proxy's CPU
//! time at 10k queries/s. A socket here is connected to one server, carries one query at a
//! time with a fresh random ID, and is closed after `MAX_USES` queries, so that a forged
//! answer must still match a random ID and one of few short-lived random source ports.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
};

use tokio::net::UdpSocket;

use super::{kernel, message::MAX_MESSAGE};

/// Queries one socket carries before it is closed (its source port then changes).
pub const MAX_USES: u32 = 64;
/// Idle sockets kept, over all servers; more are closed when their query ends.
const MAX_IDLE: usize = 64;

/// Marks a socket (by cookie) as the daemon's own in the kernel, or clears the mark.
pub type Mark<'a> = &'a (dyn Fn(u64, bool) -> anyhow::Result<()> + Sync);

pub struct Upstream {
    pub sock: UdpSocket,
    /// Room for the largest answer, allocated once per socket.
    pub buf: Vec<u8>,
    cookie: u64,
    uses: u32,
}

#[derive(Default)]
struct Idle {
    by_server: HashMap<SocketAddr, Vec<Upstream>>,
    count: usize,
    /// Cookies of closed sockets, still marked in the kernel until the next lease clears them
    /// (harmless meanwhile: the kernel never gives a cookie out twice).
    closed: Vec<u64>,
}

#[derive(Default)]
pub struct UdpPool {
    idle: Mutex<Idle>,
}

/// One socket while it carries a query. Dropped without `reusable` (an error, a timeout, a
/// cancelled query), the socket is closed: a late answer must not meet the next query.
pub struct Lease<'a> {
    pool: &'a UdpPool,
    server: SocketAddr,
    socket: Option<Upstream>,
    reusable: bool,
}

impl UdpPool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A socket connected to `server`: an idle one, or a new one marked as ours before it
    /// connects (so the kernel neither redirects nor denies it). Needs the proxy's runtime.
    pub fn lease(&self, server: SocketAddr, mark: Mark<'_>) -> anyhow::Result<Lease<'_>> {
        let (reused, closed) = {
            let mut idle = self.idle();
            let reused = idle.by_server.get_mut(&server).and_then(Vec::pop);
            if reused.is_some() {
                idle.count -= 1;
            }
            (reused, std::mem::take(&mut idle.closed))
        };
        for cookie in closed {
            mark(cookie, false)?;
        }
        let socket = match reused {
            Some(s) => s,
            None => open(server, mark)?,
        };
        Ok(Lease {
            pool: self,
            server,
            socket: Some(socket),
            reusable: false,
        })
    }

    /// Sockets open and idle (for tests).
    pub fn idle_count(&self) -> usize {
        self.idle().count
    }
}

fn open(server: SocketAddr, mark: Mark<'_>) -> anyhow::Result<Upstream> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = std::net::UdpSocket::bind(local)?;
    let cookie = kernel::socket_cookie(&sock)?;
    mark(cookie, true)?;
    let ready = sock
        .connect(server)
        .and_then(|()| sock.set_nonblocking(true))
        .and_then(|()| UdpSocket::from_std(sock));
    match ready {
        Ok(sock) => Ok(Upstream {
            sock,
            buf: vec![0u8; MAX_MESSAGE],
            cookie,
            uses: 0,
        }),
        Err(e) => {
            mark(cookie, false)?;
            Err(e.into())
        }
    }
}

impl Lease<'_> {
    pub fn socket(&mut self) -> anyhow::Result<&mut Upstream> {
        self.socket
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("upstream socket already returned"))
    }

    /// The exchange ended cleanly: the socket may carry another query.
    pub fn reusable(&mut self) {
        self.reusable = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(mut s) = self.socket.take() else {
            return;
        };
        s.uses += 1;
        let mut idle = self.pool.idle();
        if self.reusable && s.uses < MAX_USES && idle.count < MAX_IDLE {
            idle.count += 1;
            idle.by_server.entry(self.server).or_default().push(s);
        } else {
            idle.closed.push(s.cookie);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn marks() -> Mutex<Vec<(u64, bool)>> {
        Mutex::new(Vec::new())
    }

    #[tokio::test]
    async fn a_socket_is_reused_after_a_clean_exchange_and_closed_after_its_uses() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let seen = marks();
        let mark = |c, on| {
            seen.lock().unwrap().push((c, on));
            Ok(())
        };
        let pool = UdpPool::default();
        let mut first = pool.lease(to, &mark).unwrap();
        let port = first.socket().unwrap().sock.local_addr().unwrap().port();
        first.reusable();
        drop(first);
        assert_eq!(pool.idle_count(), 1);
        for _ in 1..MAX_USES {
            let mut l = pool.lease(to, &mark).unwrap();
            let again = l.socket().unwrap().sock.local_addr().unwrap().port();
            assert_eq!(again, port, "the idle socket is reused");
            l.reusable();
        }
        assert_eq!(pool.idle_count(), 0, "closed after MAX_USES queries");
        let mut next = pool.lease(to, &mark).unwrap();
        assert_ne!(next.socket().unwrap().sock.local_addr().unwrap().port(), 0);
        let m = seen.lock().unwrap().clone();
        assert_eq!(
            m.len(),
            3,
            "marked, unmarked once closed, next marked: {m:?}"
        );
        assert!(m[0].1 && !m[1].1 && m[2].1 && m[0].0 == m[1].0);
    }

    #[tokio::test]
    async fn a_socket_whose_exchange_failed_is_closed() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let mark = |_, _| Ok(());
        let pool = UdpPool::default();
        drop(pool.lease(to, &mark).unwrap());
        assert_eq!(pool.idle_count(), 0);
    }
}
