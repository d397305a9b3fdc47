//! The Istio `ServiceEntry` resource, every field (istio.io/api networking v1).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub api_version: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 as the API server writes it (compared as text); absent in most files.
    pub created: Option<String>,
}

impl Metadata {
    /// Namespace as Kubernetes would default it.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

impl Resolution {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Static => "STATIC",
            Self::Dns => "DNS",
            Self::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Self::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    pub hosts: Vec<String>,
    pub addresses: Vec<String>,
    pub ports: Vec<Port>,
    pub location: Location,
    pub resolution: Resolution,
    /// `None` when the field is absent; `Some(vec![])` for an explicit empty list (which the
    /// CRD's `has(self.endpoints)` rules treat as set).
    pub endpoints: Option<Vec<WorkloadEntry>>,
    /// Endpoints that are only an IP address, moved out of `endpoints` once the entry is
    /// validated ([`Spec::compact`]): 17 bytes each instead of a `WorkloadEntry`'s 190, for
    /// the entries of a million endpoints the daemon keeps between reloads. Shared, so that a
    /// reload that reuses a file's entries copies none of them.
    pub plain_endpoints: std::sync::Arc<[std::net::IpAddr]>,
    pub workload_selector: Option<WorkloadSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

impl Spec {
    pub fn endpoints(&self) -> &[WorkloadEntry] {
        self.endpoints.as_deref().unwrap_or_default()
    }

    /// Whether the entry has endpoints, plain or not.
    pub fn has_endpoints(&self) -> bool {
        !self.endpoints().is_empty() || !self.plain_endpoints.is_empty()
    }

    /// Moves the STATIC endpoints that are only an IP address into `plain_endpoints`. Only
    /// after validation: what is validated is the entry as written.
    pub fn compact(&mut self) {
        if self.resolution != Resolution::Static {
            return;
        }
        let Some(endpoints) = self.endpoints.as_mut() else {
            return;
        };
        let mut plain = self.plain_endpoints.to_vec();
        endpoints.retain(|we| match we.plain_ip() {
            Some(ip) => {
                plain.push(ip);
                false
            }
            None => true,
        });
        endpoints.shrink_to_fit();
        self.plain_endpoints = plain.into();
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Port {
    pub number: u32,
    /// As written; empty when unset. Parsed case-insensitively by [`Protocol::parse`].
    pub protocol: String,
    pub name: String,
    /// 0 when unset.
    pub target_port: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadEntry {
    pub address: String,
    /// Port name → port number overrides for this endpoint.
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub locality: String,
    pub weight: u32,
    pub service_account: String,
}

impl WorkloadEntry {
    /// The address of an endpoint that says nothing else (no ports, labels, network,
    /// locality, weight or service account) and whose address is a plain IP (not v4-mapped:
    /// that one draws a notice when compiled). Such an endpoint passes every endpoint check,
    /// which validation skips for it (a million of them are common).
    pub fn plain_ip(&self) -> Option<std::net::IpAddr> {
        let bare = self.ports.is_empty()
            && self.labels.is_empty()
            && self.network.is_empty()
            && self.locality.is_empty()
            && self.weight == 0
            && self.service_account.is_empty()
            && self.address.len() <= 256;
        if !bare {
            return None;
        }
        match super::names::parse_ip(&self.address)? {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
            ip => Some(ip),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadSelector {
    pub labels: BTreeMap<String, String>,
}

/// Istio's protocol names (`pkg/config/protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tcp,
    Tls,
    Udp,
    Mongo,
    Redis,
    MySql,
    Unsupported,
}

impl Protocol {
    /// Case-insensitive, as Istio parses it. (Istio lists "DoubleHBONE" in its parser but
    /// compares it against the lowercased input, so it never matches: unsupported here too.)
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "http" => Self::Http,
            "http_proxy" => Self::HttpProxy,
            "http2" => Self::Http2,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::MySql,
            _ => Self::Unsupported,
        }
    }

    pub const fn is_http(self) -> bool {
        matches!(
            self,
            Self::Http | Self::Http2 | Self::HttpProxy | Self::Grpc | Self::GrpcWeb
        )
    }

    pub const fn is_tcp(self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::MySql
        )
    }

    pub const fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }
}
