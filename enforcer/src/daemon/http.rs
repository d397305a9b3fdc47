//! The health and metrics endpoint (`http.listen`): `GET /healthz`, `/readyz` and `/metrics`
//! over plain HTTP/1.1 (hyper), one request per connection, with bounds: the request head
//! has a size limit and a deadline, each connection a deadline, and at most
//! [`MAX_CONNECTIONS`] are served at once, so a slow or hostile client cannot hold memory or
//! a task for long.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::metrics::{DaemonMetrics, render};
use crate::dataplane::{links, maps::Maps, pins::PinLayout};

/// The request head's size limit (hyper's smallest buffer; larger heads get 431).
const MAX_HEAD: usize = 8 * 1024;
const READ_DEADLINE: Duration = Duration::from_secs(5);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// What the endpoint reads: the pins (for health and kernel counters) and the daemon's own
/// counters.
pub struct State {
    pub layout: PinLayout,
    pub metrics: Arc<DaemonMetrics>,
    /// Which programs must be attached.
    expected: Expected,
    /// The last health check, refreshed every [`HEALTH_EVERY`] off the runtime: `/healthz`
    /// answers from it at once, whatever the daemon is busy with.
    health: RwLock<Result<(), String>>,
}

/// How often the pinned links are checked for `/healthz`.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// At most this many requests are served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

impl State {
    /// Checks the links once, so that the first request already has an answer.
    pub fn new(layout: PinLayout, metrics: Arc<DaemonMetrics>, expected: Expected) -> Self {
        let health = RwLock::new(check_attached(&layout, expected));
        Self {
            layout,
            metrics,
            expected,
            health,
        }
    }

    fn health(&self) -> Result<(), String> {
        self.health
            .read()
            .map_or_else(|_| Err("health state poisoned".to_owned()), |h| h.clone())
    }
}

/// Keeps [`State`]'s health current; the check reads every link pin, so it runs on the
/// blocking pool.
pub async fn watch_health(state: Arc<State>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let s = Arc::clone(&state);
        let checked = tokio::task::spawn_blocking(move || check_attached(&s.layout, s.expected))
            .await
            .unwrap_or_else(|e| Err(format!("health check failed: {e}")));
        if let Ok(mut h) = state.health.write() {
            *h = checked;
        }
    }
}

/// A response: status, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Routes one request. `health` says whether the pinned programs are attached (or why not),
/// `metrics` renders the scrape; both only run for their own route.
pub fn route(
    method: &str,
    path: &str,
    health: impl FnOnce() -> Result<(), String>,
    ready: Result<(), String>,
    metrics: impl FnOnce() -> Result<String, String>,
) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET\n");
    }
    // Query strings do not select anything here.
    match path.split('?').next().unwrap_or_default() {
        "/healthz" => match health() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        },
        "/readyz" => match ready {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("{why}\n")),
        },
        "/metrics" => match metrics() {
            Ok(body) => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
            },
            Err(why) => Response::text(500, format!("{why}\n")),
        },
        _ => Response::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

/// The programs a healthy daemon has attached, besides the enforcing ones on every cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    /// The programs on every cgroup besides the enforcing ones.
    pub extras: crate::dataplane::Extras,
    /// `foreignSockets: enforce`: the programs on the cgroup root.
    pub foreign: bool,
}

/// Every pinned link directory has all the mode's programs, and the kernel still knows each
/// link.
pub fn check_attached(layout: &PinLayout, expected: Expected) -> Result<(), String> {
    let rows = links::list(layout);
    if rows.is_empty() {
        return Err("no program is attached (no pinned links)".to_owned());
    }
    if let Some(bad) = rows
        .iter()
        .find(|r| r.error.is_some() || r.link_id.is_none())
    {
        return Err(format!(
            "{} on {}: {}",
            bad.hook,
            bad.cgroup,
            bad.error.as_deref().unwrap_or("link unreadable")
        ));
    }
    let mut cgroups: Vec<&str> = rows.iter().map(|r| r.cgroup.as_str()).collect();
    cgroups.dedup();
    for cg in cgroups {
        for hook in crate::dataplane::attached_programs(expected.extras) {
            if !rows.iter().any(|r| r.cgroup == cg && r.hook == hook) {
                return Err(format!("{hook} is not attached to {cg}"));
            }
        }
    }
    if expected.foreign {
        let host = links::list_host(layout);
        for hook in enforcer_common::FOREIGN_PROGRAM_NAMES {
            if !host.iter().any(|r| r.hook == hook && r.error.is_none()) {
                return Err(format!("{hook} is not attached to the cgroup root"));
            }
        }
    }
    Ok(())
}

fn scrape(state: &State) -> Result<String, String> {
    let stats = Maps::from_pins(&state.layout)
        .and_then(|m| m.stats())
        .map_err(|e| format!("reading the kernel counters: {e:#}"))?;
    Ok(render(&stats, &state.metrics, Instant::now()))
}

/// Answers one request; the scrape reads the pinned counters on the blocking pool.
async fn answer(state: Arc<State>, method: &str, path: &str) -> Response {
    let scraped = if path.starts_with("/metrics") {
        let s = Arc::clone(&state);
        Some(
            tokio::task::spawn_blocking(move || scrape(&s))
                .await
                .unwrap_or_else(|e| Err(format!("scrape failed: {e}"))),
        )
    } else {
        None
    };
    route(
        method,
        path,
        || state.health(),
        state.metrics.readiness(),
        || scraped.unwrap_or_else(|| Err("no scrape".to_owned())),
    )
}

fn to_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *out.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(r.content_type),
    );
    out
}

/// One connection, one request: the head must arrive within [`READ_DEADLINE`] and fit in
/// [`MAX_HEAD`] (hyper closes the connection, or answers 431), and the whole exchange ends
/// within [`CONNECTION_DEADLINE`], so a slow reader cannot hold a slot either.
async fn handle(stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let r = answer(state, req.method().as_str(), &path).await;
            Ok::<_, std::convert::Infallible>(to_hyper(r))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_DEADLINE)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::time::timeout(CONNECTION_DEADLINE, conn)
        .await
        .context("connection took too long")?
        .context("serving")
}

/// Binds the endpoint; done before anything else at start-up, so a taken port is reported
/// at once and names the setting.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("http.listen: cannot listen on {addr}"))
}

/// Serves until the runtime stops. An accept error (out of fds, a reset connection) is
/// logged and the endpoint goes on after a short pause; at most [`MAX_CONNECTIONS`] requests
/// are in progress at once.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    serve_at_most(listener, state, MAX_CONNECTIONS).await;
}

async fn serve_at_most(listener: TcpListener, state: Arc<State>, max: usize) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("http: accept failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, state).await {
                debug!(%peer, "http: {e:#}");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn nowhere() -> Arc<State> {
        Arc::new(State::new(
            PinLayout::new(std::path::Path::new("/nonexistent-bpffs")),
            Arc::new(DaemonMetrics::default()),
            Expected::default(),
        ))
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A head over the limit is refused with 431 and never buffered whole; a normal request
    /// on the same server is still answered.
    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, nowhere()));
        let mut big = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 4 * MAX_HEAD));
        big.extend_from_slice(b"\r\n\r\n");
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may close before it has read everything: a reset is fine too.
        let _ = s.write_all(&big).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let got = String::from_utf8_lossy(&buf);
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 431"),
            "an oversized head got: {got}"
        );
        let ok = exchange(addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 503"), "{ok}");
        assert!(ok.contains("content-type: text/plain"), "{ok}");
    }

    /// A client that never finishes its head loses the connection at the deadline, with no
    /// answer (time is paused: the deadline passes as soon as the runtime is idle).
    #[tokio::test(start_paused = true)]
    async fn unfinished_heads_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, nowhere()));
        let before = tokio::time::Instant::now();
        let got = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost:").await;
        assert!(got.is_empty(), "answered an unfinished head: {got}");
        assert!(
            before.elapsed() >= READ_DEADLINE,
            "closed before the deadline"
        );
    }

    fn get(path: &str, healthy: bool, ready: bool) -> Response {
        let ready = if ready {
            Ok(())
        } else {
            Err("applying the policy failed: ENOMEM".to_owned())
        };
        route(
            "GET",
            path,
            || {
                if healthy {
                    Ok(())
                } else {
                    Err("connect4 is not attached to /x".into())
                }
            },
            ready,
            || Ok("egress_enforcer_ready 1\n".into()),
        )
    }

    #[test]
    fn health_reports_the_attachment() {
        assert_eq!(get("/healthz", true, false).status, 200);
        let r = get("/healthz", false, true);
        assert_eq!(r.status, 503);
        assert!(r.body.contains("connect4"), "{}", r.body);
    }

    #[test]
    fn readiness_follows_the_first_apply() {
        let r = get("/readyz", true, false);
        assert_eq!(r.status, 503);
        assert!(r.body.contains("ENOMEM"), "the reason is given: {}", r.body);
        assert_eq!(get("/readyz", true, true).status, 200);
        assert_eq!(get("/readyz?verbose", true, true).status, 200);
    }

    #[test]
    fn metrics_unknown_paths_and_methods() {
        let m = get("/metrics", true, true);
        assert_eq!(m.status, 200);
        assert!(m.content_type.starts_with("text/plain; version=0.0.4"));
        assert_eq!(get("/", true, true).status, 404);
        let post = route("POST", "/metrics", || Ok(()), Ok(()), || Ok(String::new()));
        assert_eq!(post.status, 405);
        let broken = route(
            "GET",
            "/metrics",
            || Ok(()),
            Ok(()),
            || Err("no pins".into()),
        );
        assert_eq!(broken.status, 500);
    }

    /// With one slot, a request waits until the connection holding the slot is gone: it is
    /// answered after that connection closes, never before.
    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_at_most(listener, nowhere(), 1));
        // Accepted first (the backlog is in order), it holds the slot without a request.
        let idle = TcpStream::connect(addr).await.unwrap();
        let mut waiting = TcpStream::connect(addr).await.unwrap();
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let answered = tokio::spawn(async move {
            let mut buf = Vec::new();
            waiting.read_to_end(&mut buf).await.unwrap();
            (Instant::now(), buf)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let closed = Instant::now();
        drop(idle);
        let (at, body) = answered.await.unwrap();
        assert!(at >= closed, "answered while the only slot was taken");
        assert!(
            body.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}
