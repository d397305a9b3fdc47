//! Connecting to the API server: the kubeconfig named in the config (or `--kubeconfig`), else
//! the pod's service account (in-cluster). Never `~/.kube/config` by accident: a daemon
//! enforcing a node must not follow whoever last ran kubectl as root.

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{observe::ObserveLayer, status::Status};

/// A client and the address it talks to (which must stay reachable: docs/kubernetes.md).
pub struct Connected {
    pub client: kube::Client,
    pub server: String,
    /// The API server's addresses, resolved once at start.
    pub addresses: Vec<SocketAddr>,
}

/// Connects with `kubeconfig` (or in-cluster); every successful list or watch of a
/// `watched` resource marks it in sync in `status`.
pub async fn connect(
    kubeconfig: Option<&Path>,
    status: &Arc<Status>,
    watched: &'static [&'static str],
) -> anyhow::Result<Connected> {
    let config = match kubeconfig {
        Some(p) => {
            let file = Kubeconfig::read_from(p)
                .with_context(|| format!("kubernetes.kubeconfig: reading {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubernetes.kubeconfig: {}", p.display()))?
        }
        None => kube::Config::incluster().context(
            "no kubeconfig given and not in a pod (KUBERNETES_SERVICE_HOST and the service \
             account token are needed): set kubernetes.kubeconfig or --kubeconfig",
        )?,
    };
    let url = &config.cluster_url;
    let server = url.to_string();
    let host = url
        .host()
        .with_context(|| format!("the API server URL {server} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = url.scheme_str() != Some("http");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    // A name that does not resolve now is not fatal: the client resolves it per connection,
    // and only the allow rule for the daemon's own way out needs the addresses.
    let addresses = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let name = host.clone();
            match tokio::task::spawn_blocking(move || (name.as_str(), port).to_socket_addrs()).await
            {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    tracing::warn!(server = %server, "the API server's name does not resolve now ({e}): no allow rule for it");
                    Vec::new()
                }
                Err(e) => return Err(e).context("resolving the API server"),
            }
        }
    };
    let client = kube::client::ClientBuilder::try_from(config)
        .context("building the API client")?
        .with_layer(&ObserveLayer {
            status: Arc::clone(status),
            watched,
        })
        .build();
    Ok(Connected {
        client,
        server,
        addresses,
    })
}
