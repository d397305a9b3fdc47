//! A fake Kubernetes API server for the end-to-end suite: no real one can run here. It speaks
//! the real wire protocol (checked by kubectl and by kube's own client in the tests):
//! discovery documents, lists with `resourceVersion`, `limit` and `continue`, chunked watch
//! streams of `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` frames, `410 Expired` as an
//! ERROR frame inside a 200 response (as the real server does when a watch starts from a
//! compacted version), and faults: dropped connections, 403 and 500 answers, a stopped
//! server. Fixtures follow the Kubernetes API documentation (api-concepts) and Istio's CRDs.
//! It serves HTTPS with a certificate from its own CA, as the real server does (client-go
//! sends a bearer token only over TLS).
//!
//! Not modelled: a list spread over pages is served from the current objects, not from a
//! snapshot (tests do not write while a client pages).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

pub const ISTIO_GROUP: &str = "networking.istio.io";
pub const TOKEN: &str = "fake-apiserver-token";

/// A resource the fake serves: `(plural, kind, group)`; the core group is "".
const RESOURCES: [(&str, &str, &str); 3] = [
    ("serviceentries", "ServiceEntry", ISTIO_GROUP),
    ("sidecars", "Sidecar", ISTIO_GROUP),
    ("pods", "Pod", ""),
];

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// Path and query as sent.
    pub uri: String,
    pub accept: String,
    pub status: u16,
}

#[derive(Default)]
struct Objects {
    live: BTreeMap<(String, String), Value>,
    /// `(resourceVersion, type, object)` after the compaction floor.
    log: Vec<(u64, &'static str, Value)>,
}

struct World {
    rv: u64,
    /// Watches from a version below this get 410 Expired.
    floor: u64,
    objects: BTreeMap<&'static str, Objects>,
    /// The Istio versions served, in the group's order (the first is preferred).
    versions: Vec<String>,
    /// A status code every request for the resource gets instead of an answer.
    faults: BTreeMap<String, u16>,
    /// Bumped to cut every open watch (no terminating chunk).
    cut: u64,
    /// Bumped to send a BOOKMARK on every open watch that allows them.
    bookmarks: u64,
    requests: Vec<Logged>,
}

struct Shared {
    world: Mutex<World>,
    changed: Notify,
    /// Set while [`FakeApiServer::expire`] makes its changes: watches are not woken, so none
    /// can replay them before the history is compacted.
    quiet: std::sync::atomic::AtomicBool,
    tls: tokio_rustls::TlsAcceptor,
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it; returns the acceptor and
/// the CA's PEM (for the kubeconfig).
fn tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake-apiserver-ca");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let der_key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .expect("server key DER");
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], der_key)
    .expect("server TLS config");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem())
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server: runs on its own runtime; dropping it (or [`FakeApiServer::stop`]) closes the
/// listener and every connection at once, like a killed process.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca_pem: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    /// Serves `versions` of networking.istio.io (e.g. `["v1", "v1beta1", "v1alpha3"]`).
    pub fn start(versions: &[&str]) -> Self {
        let (acceptor, ca_pem) = tls();
        let shared = Arc::new(Shared {
            tls: acceptor,
            world: Mutex::new(World {
                rv: 100,
                floor: 0,
                objects: RESOURCES
                    .iter()
                    .map(|(r, _, _)| (*r, Objects::default()))
                    .collect(),
                versions: versions.iter().map(|v| (*v).to_owned()).collect(),
                faults: BTreeMap::new(),
                cut: 0,
                bookmarks: 0,
                requests: Vec::new(),
            }),
            changed: Notify::new(),
            quiet: std::sync::atomic::AtomicBool::new(false),
        });
        let mut s = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared,
            ca_pem,
            rt: None,
        };
        s.listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        s
    }

    fn listen(&mut self, at: SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake API server runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(at))
            .expect("fake API server: bind");
        self.addr = listener.local_addr().expect("local addr");
        let shared = Arc::clone(&self.shared);
        rt.spawn(accept(listener, shared));
        self.rt = Some(rt);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes a kubeconfig for this server (its CA, token auth) and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        use base64::Engine as _;
        let path = dir.join("kubeconfig");
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             \x20   certificate-authority-data: {ca}\n\
             users:\n- name: fake\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fake\n  \
             context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`); returns its resourceVersion.
    pub fn apply(&self, resource: &str, mut object: Value) -> u64 {
        let mut w = self.shared.world();
        w.rv += 1;
        let rv = w.rv;
        let key = object_key(&object);
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let objects = w.objects.get_mut(resource).expect("a served resource");
        let kind = if objects.live.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        objects.live.insert(key, object.clone());
        objects.log.push((rv, kind, object));
        drop(w);
        self.wake();
        rv
    }

    fn wake(&self) {
        if !self.shared.quiet.load(std::sync::atomic::Ordering::SeqCst) {
            self.shared.changed.notify_waiters();
        }
    }

    /// Deletes an object (`DELETED`); false if there was none.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let mut w = self.shared.world();
        w.rv += 1;
        let rv = w.rv;
        let objects = w.objects.get_mut(resource).expect("a served resource");
        let Some(mut gone) = objects
            .live
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            return false;
        };
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        objects.log.push((rv, "DELETED", gone));
        drop(w);
        self.wake();
        true
    }

    /// Makes `changes` while the history is compacted past every open watch: each one gets
    /// an ERROR 410 frame and its client must list again to see the changes.
    pub fn expire(&self, changes: impl FnOnce(&Self)) {
        let quiet = &self.shared.quiet;
        quiet.store(true, std::sync::atomic::Ordering::SeqCst);
        changes(self);
        quiet.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut w = self.shared.world();
        w.floor = w.rv;
        for o in w.objects.values_mut() {
            o.log.clear();
        }
        drop(w);
        self.shared.changed.notify_waiters();
    }

    /// Cuts every open watch mid-stream (the client sees an unexpected end of the chunked
    /// body) without changing anything.
    pub fn cut_watches(&self) {
        self.shared.world().cut += 1;
        self.shared.changed.notify_waiters();
    }

    /// Sends a BOOKMARK on every open watch that allows them.
    pub fn bookmark(&self) {
        self.shared.world().bookmarks += 1;
        self.shared.changed.notify_waiters();
    }

    /// Every request for `resource` answers `status` (403, 500...) until [`Self::heal`].
    /// Open watches are cut too, so the client has to come back and meet the fault.
    pub fn fail(&self, resource: &str, status: u16) {
        self.shared
            .world()
            .faults
            .insert(resource.to_owned(), status);
        self.cut_watches();
    }

    pub fn heal(&self, resource: &str) {
        self.shared.world().faults.remove(resource);
    }

    /// Kills the server: the listener and every connection go at once.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Starts again on the same address, with the same objects.
    pub fn restart(&mut self) {
        self.stop();
        let at = self.addr;
        // The old listener's socket is closed asynchronously; retry briefly.
        for _ in 0..50 {
            if std::net::TcpListener::bind(at).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.listen(at);
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.shared.world().requests.clone()
    }

    /// Requests whose URI contains `needle`.
    pub fn count_requests(&self, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.uri.contains(needle))
            .count()
    }

    /// The server's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.world().rv
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn object_key(o: &Value) -> (String, String) {
    let m = &o["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(stream) = shared.tls.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `Status` object as the API server sends with every failure.
pub fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status_object(code, reason, message),
    )
}

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    // kube starts its queries with "?&": empty pairs are skipped.
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn handle(shared: &Arc<Shared>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let uri = req.uri().to_string();
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|a| a.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let response = if !authorized {
        failure(401, "Unauthorized", "Unauthorized")
    } else if req.method() != hyper::Method::GET {
        failure(405, "MethodNotAllowed", "the fake API server only reads")
    } else {
        route(shared, req.uri(), &accept)
    };
    shared.world().requests.push(Logged {
        method: req.method().to_string(),
        uri,
        accept,
        status: response.status().as_u16(),
    });
    response
}

fn route(shared: &Arc<Shared>, uri: &hyper::Uri, accept: &str) -> Response<Body> {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let versions = shared.world().versions.clone();
    match parts.as_slice() {
        ["api"] => full(StatusCode::OK, &fixtures::api_versions()),
        ["apis"] => full(StatusCode::OK, &fixtures::api_group_list(&versions)),
        ["apis", ISTIO_GROUP] => full(StatusCode::OK, &fixtures::api_group(&versions)),
        ["api", "v1"] => full(StatusCode::OK, &fixtures::core_resources()),
        ["apis", ISTIO_GROUP, v] if versions.iter().any(|s| s == v) => {
            full(StatusCode::OK, &fixtures::istio_resources(v))
        }
        ["apis", ISTIO_GROUP, v, plural] if versions.iter().any(|s| s == v) => collection(
            shared,
            plural,
            &format!("{ISTIO_GROUP}/{v}"),
            None,
            uri,
            accept,
        ),
        ["apis", ISTIO_GROUP, v, "namespaces", ns, plural] if versions.iter().any(|s| s == v) => {
            collection(
                shared,
                plural,
                &format!("{ISTIO_GROUP}/{v}"),
                Some(ns),
                uri,
                accept,
            )
        }
        ["apis", ISTIO_GROUP, v, "namespaces", ns, plural, name]
            if versions.iter().any(|s| s == v) =>
        {
            one(shared, plural, &format!("{ISTIO_GROUP}/{v}"), ns, name)
        }
        ["api", "v1", "pods"] => collection(shared, "pods", "v1", None, uri, accept),
        ["api", "v1", "namespaces", ns, "pods"] => {
            collection(shared, "pods", "v1", Some(ns), uri, accept)
        }
        _ => not_found(),
    }
}

/// How an object is shown to one request: its apiVersion as asked, or metadata only.
#[derive(Clone)]
struct View {
    api_version: String,
    kind: &'static str,
    metadata_only: bool,
    namespace: Option<String>,
    /// `spec.nodeName=X` (the one field selector the daemon uses).
    node: Option<String>,
}

impl View {
    fn matches(&self, o: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| o["metadata"]["namespace"] == ns)
            && self
                .node
                .as_deref()
                .is_none_or(|n| o["spec"]["nodeName"] == n)
    }

    fn show(&self, o: &Value) -> Value {
        if self.metadata_only {
            return json!({
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"].clone(),
            });
        }
        let mut o = o.clone();
        o["apiVersion"] = json!(self.api_version);
        o["kind"] = json!(self.kind);
        o
    }
}

/// A resource the fake serves: its plural and kind.
fn served(plural: &str) -> Option<(&'static str, &'static str)> {
    RESOURCES
        .iter()
        .find(|(r, _, _)| *r == plural)
        .map(|(r, k, _)| (*r, *k))
}

fn not_found() -> Response<Body> {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// GET of one object by name.
fn one(
    shared: &Arc<Shared>,
    plural: &str,
    api_version: &str,
    namespace: &str,
    name: &str,
) -> Response<Body> {
    let Some((resource, kind)) = served(plural) else {
        return not_found();
    };
    let view = View {
        api_version: api_version.to_owned(),
        kind,
        metadata_only: false,
        namespace: None,
        node: None,
    };
    let w = shared.world();
    match w.objects[resource]
        .live
        .get(&(namespace.to_owned(), name.to_owned()))
    {
        Some(o) => full(StatusCode::OK, &view.show(o)),
        None => failure(404, "NotFound", &format!("{plural} \"{name}\" not found")),
    }
}

fn collection(
    shared: &Arc<Shared>,
    plural: &str,
    api_version: &str,
    namespace: Option<&str>,
    uri: &hyper::Uri,
    accept: &str,
) -> Response<Body> {
    let Some((resource, kind)) = served(plural) else {
        return not_found();
    };
    // The fault and the watch generations are read together: a watch admitted before a
    // fault is set is cut with the generation that fault bumps, never missed by it.
    let (fault, generations) = {
        let w = shared.world();
        (w.faults.get(resource).copied(), (w.cut, w.bookmarks))
    };
    if let Some(code) = fault {
        return match code {
            403 => failure(
                403,
                "Forbidden",
                &format!(
                    "{resource} is forbidden: User \"system:serviceaccount:egress-enforcer:egress-enforcer\" \
                     cannot list resource \"{resource}\" at the cluster scope"
                ),
            ),
            code => failure(
                code,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out",
            ),
        };
    }
    let q = query(uri);
    let view = View {
        api_version: api_version.to_owned(),
        kind,
        metadata_only: accept.contains("as=PartialObjectMetadata"),
        namespace: namespace.map(str::to_owned),
        node: q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("spec.nodeName="))
            .map(str::to_owned),
    };
    if q.get("fieldSelector")
        .is_some_and(|f| !f.starts_with("spec.nodeName="))
    {
        return failure(400, "BadRequest", "unsupported field selector");
    }
    if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
        watch(shared, resource, view, &q, generations)
    } else {
        list(shared, resource, &view, &q)
    }
}

fn list(
    shared: &Arc<Shared>,
    resource: &str,
    view: &View,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let w = shared.world();
    let (mut list_rv, mut offset) = (w.rv, 0usize);
    if let Some(token) = q.get("continue").filter(|t| !t.is_empty()) {
        let parsed = token
            .split_once(':')
            .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
        match parsed {
            Some((rv, _)) if rv < w.floor => {
                return failure(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            Some((rv, off)) => (list_rv, offset) = (rv, off),
            None => return failure(400, "BadRequest", "invalid continue token"),
        }
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let all: Vec<Value> = w.objects[resource]
        .live
        .values()
        .filter(|o| view.matches(o))
        .map(|o| view.show(o))
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let next = offset + page.len();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if next < all.len() {
        metadata["continue"] = json!(format!("{list_rv}:{next}"));
        metadata["remainingItemCount"] = json!(all.len() - next);
    }
    let (api_version, kind) = if view.metadata_only {
        (
            "meta.k8s.io/v1".to_owned(),
            "PartialObjectMetadataList".to_owned(),
        )
    } else {
        (view.api_version.clone(), format!("{}List", view.kind))
    };
    full(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": page}),
    )
}

/// A chunked body fed from a channel; an `Err` aborts the connection mid-stream.
struct Stream(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn frame(kind: &str, object: &Value) -> Result<Bytes, std::io::Error> {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Ok(Bytes::from(line))
}

fn watch(
    shared: &Arc<Shared>,
    resource: &'static str,
    view: View,
    q: &BTreeMap<String, String>,
    generations: (u64, u64),
) -> Response<Body> {
    let from = q
        .get("resourceVersion")
        .and_then(|r| r.parse::<u64>().ok())
        .filter(|r| *r > 0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let params = WatchParams {
        from,
        timeout,
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
        generations,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(stream_events(
        Arc::clone(shared),
        resource,
        view,
        params,
        tx,
    ));
    let mut r = Response::new(BoxBody::new(Stream(rx)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// What one pass over the world gives a watch.
enum Step {
    Frames(Vec<Result<Bytes, std::io::Error>>, u64),
    Expired(Bytes),
    Cut,
}

/// Events after `cursor` (or every object as ADDED, for a watch without a version).
fn step(
    w: &World,
    resource: &str,
    view: &View,
    cursor: Option<u64>,
    cut: u64,
    bookmark: (bool, &mut u64),
) -> Step {
    if w.cut != cut {
        return Step::Cut;
    }
    let mut frames = Vec::new();
    let objects = &w.objects[resource];
    let cursor = match cursor {
        Some(c) if c < w.floor => {
            let status = status_object(
                410,
                "Expired",
                &format!("too old resource version: {c} ({})", w.floor),
            );
            return Step::Expired(frame("ERROR", &status).unwrap_or_default());
        }
        Some(c) => c,
        None => {
            for o in objects.live.values().filter(|o| view.matches(o)) {
                frames.push(frame("ADDED", &view.show(o)));
            }
            w.rv
        }
    };
    let mut last = cursor;
    for (rv, kind, o) in objects.log.iter().filter(|(rv, _, _)| *rv > cursor) {
        last = *rv;
        if view.matches(o) {
            frames.push(frame(kind, &view.show(o)));
        }
    }
    let (allowed, seen) = bookmark;
    if *seen != w.bookmarks {
        *seen = w.bookmarks;
        if allowed {
            last = last.max(w.rv);
            let kind = if view.metadata_only {
                ("meta.k8s.io/v1", "PartialObjectMetadata")
            } else {
                (view.api_version.as_str(), view.kind)
            };
            frames.push(frame(
                "BOOKMARK",
                &json!({"kind": kind.1, "apiVersion": kind.0,
                        "metadata": {"resourceVersion": last.to_string()}}),
            ));
        }
    }
    Step::Frames(frames, last)
}

/// One watch request's parameters, and the cut and bookmark generations when it was admitted.
struct WatchParams {
    from: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
    generations: (u64, u64),
}

async fn stream_events(
    shared: Arc<Shared>,
    resource: &'static str,
    view: View,
    params: WatchParams,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let deadline = tokio::time::Instant::now() + params.timeout;
    let bookmarks = params.bookmarks;
    let (cut, mut seen) = params.generations;
    let mut cursor = params.from;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let step = step(
            &shared.world(),
            resource,
            &view,
            cursor,
            cut,
            (bookmarks, &mut seen),
        );
        match step {
            Step::Cut => {
                let _ = tx
                    .send(Err(std::io::Error::other("connection cut by the test")))
                    .await;
                return;
            }
            Step::Expired(f) => {
                let _ = tx.send(Ok(f)).await;
                return;
            }
            Step::Frames(frames, last) => {
                for f in frames {
                    if tx.send(f).await.is_err() {
                        return;
                    }
                }
                cursor = Some(last);
            }
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => return,
            () = tx.closed() => return,
        }
    }
}

/// The discovery documents, as the real server serves them for Istio's CRDs
/// (manifests/charts/base/files/crd-all.gen.yaml: ServiceEntry and Sidecar are served in
/// v1, v1beta1 and v1alpha3, with a status subresource).
pub mod fixtures {
    use serde_json::{Value, json};

    use super::ISTIO_GROUP;

    const VERBS: [&str; 8] = [
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "create",
        "update",
        "watch",
    ];

    pub fn api_versions() -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
        })
    }

    fn group(versions: &[String]) -> Value {
        let gv: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{ISTIO_GROUP}/{v}"), "version": v}))
            .collect();
        json!({
            "name": ISTIO_GROUP,
            "versions": gv,
            "preferredVersion": gv.first().cloned().unwrap_or(Value::Null),
        })
    }

    pub fn api_group_list(versions: &[String]) -> Value {
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group(versions)]})
    }

    pub fn api_group(versions: &[String]) -> Value {
        let mut g = group(versions);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    }

    fn resource(name: &str, singular: &str, kind: &str, short: &str) -> [Value; 2] {
        [
            json!({
                "name": name, "singularName": singular, "namespaced": true, "kind": kind,
                "verbs": VERBS, "shortNames": [short],
                "categories": ["istio-io", "networking-istio-io"],
            }),
            json!({
                "name": format!("{name}/status"), "singularName": "", "namespaced": true,
                "kind": kind, "verbs": ["get", "patch", "update"],
            }),
        ]
    }

    pub fn istio_resources(version: &str) -> Value {
        let mut resources = Vec::new();
        resources.extend(resource(
            "serviceentries",
            "serviceentry",
            "ServiceEntry",
            "se",
        ));
        resources.extend(resource("sidecars", "sidecar", "Sidecar", "sc"));
        json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": format!("{ISTIO_GROUP}/{version}"),
            "resources": resources,
        })
    }

    pub fn core_resources() -> Value {
        json!({
            "kind": "APIResourceList", "groupVersion": "v1",
            "resources": [{
                "name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": ["po"], "categories": ["all"],
            }],
        })
    }

    /// A ServiceEntry as `kubectl apply` would store it (Istio's documentation example).
    pub fn service_entry(namespace: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": format!("{ISTIO_GROUP}/v1"), "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": spec,
        })
    }

    /// A pod as the metadata watch shows it (labels for Sidecar selectors, the node).
    pub fn pod(namespace: &str, name: &str, uid: &str, node: &str, labels: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1"}]},
        })
    }
}
