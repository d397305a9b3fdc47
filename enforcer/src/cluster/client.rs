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
    let addresses = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::task::spawn_blocking(move || (host.as_str(), port).to_socket_addrs())
            .await
            .context("resolving the API server")?
            .with_context(|| format!("resolving the API server in {server}"))?
            .collect(),
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
