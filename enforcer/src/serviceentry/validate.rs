//! Istio's `ValidateServiceEntry` (pkg/config/validation/validation.go at istio/istio@86c9f01)
//! plus the ServiceEntry CRD's schema rules and Kubernetes' metadata rules, which the API
//! server applies before Istio's webhook sees a resource. Errors and warnings are kept apart;
//! every problem is reported, not only the first.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    issue::{Issue, index, join, key},
    model::{Location, Protocol, Resolution, ServiceEntry, WorkloadEntry},
    names,
};

const UNIX_PREFIX: &str = "unix://";
const LABEL_USE_WAYPOINT: &str = "istio.io/use-waypoint";
const LABEL_AUTOALLOCATE: &str = "networking.istio.io/enable-autoallocate-ip";

#[derive(Default)]
struct Report {
    issues: Vec<Issue>,
}

impl Report {
    fn error(&mut self, path: impl Into<String>, rule: &'static str, msg: impl Into<String>) {
        self.issues.push(Issue::error(path, rule, msg));
    }

    fn warning(&mut self, path: impl Into<String>, rule: &'static str, msg: impl Into<String>) {
        self.issues.push(Issue::warning(path, rule, msg));
    }

    fn check(&mut self, path: impl Into<String>, rule: &'static str, r: Result<(), String>) {
        if let Err(msg) = r {
            self.error(path, rule, msg);
        }
    }
}

fn validate_port(port: u32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

fn validate_port_name(name: &str) -> Result<(), String> {
    if names::is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

fn validate_labels(
    r: &mut Report,
    path: &str,
    labels: &BTreeMap<String, String>,
    rule: &'static str,
) {
    for (k, v) in labels {
        r.check(key(path, k), rule, names::validate_label_key(k));
        if !names::is_label_value(v) {
            r.error(key(path, k), rule, format!("invalid tag value: {v:?}"));
        }
    }
}

/// CRD `maxItems` / `maxLength` / `maxProperties` limits.
fn limit(r: &mut Report, path: impl Into<String>, len: usize, max: usize, what: &str) {
    if len > max {
        r.error(
            path,
            "crd-limit",
            format!("{len} {what}, at most {max} allowed"),
        );
    }
}

/// Kubernetes object names: a lowercase RFC 1123 subdomain.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.')
            .all(|l| names::is_dns1123_label(l) && !l.bytes().any(|c| c.is_ascii_uppercase()))
}

fn validate_metadata(r: &mut Report, se: &ServiceEntry) {
    let m = &se.metadata;
    if m.name.is_empty() {
        r.error("metadata.name", "k8s-name", "metadata.name is required");
    } else if !is_dns1123_subdomain(&m.name) {
        r.error(
            "metadata.name",
            "k8s-name",
            format!("{:?} is not a lowercase RFC 1123 subdomain", m.name),
        );
    }
    if let Some(ns) = &m.namespace
        && (!names::is_dns1123_label(ns) || ns.bytes().any(|c| c.is_ascii_uppercase()))
    {
        r.error(
            "metadata.namespace",
            "k8s-namespace",
            format!("{ns:?} is not a lowercase RFC 1123 label"),
        );
    }
    validate_labels(r, "metadata.labels", &m.labels, "k8s-labels");
    for (k, v) in &m.labels {
        if v.len() > names::DNS1123_LABEL_MAX {
            r.error(
                key("metadata.labels", k),
                "k8s-labels",
                "label values are at most 63 characters",
            );
        }
    }
}

/// `validateWorkloadEntry(we, servicePorts, allowFQDNAddresses=false)`, used for STATIC.
fn validate_static_endpoint(
    r: &mut Report,
    path: &str,
    we: &WorkloadEntry,
    service_ports: &BTreeSet<&str>,
) {
    let addr = we.address.as_str();
    if addr.is_empty() {
        if we.network.is_empty() {
            r.error(
                join(path, "address"),
                "endpoint-address-required",
                "address is required",
            );
            return;
        }
        r.warning(
            join(path, "address"),
            "endpoint-address-unset",
            format!("address is unset with network {:?}", we.network),
        );
    }
    let unix = addr.starts_with(UNIX_PREFIX);
    if let Some(socket) = addr.strip_prefix(UNIX_PREFIX) {
        r.check(
            join(path, "address"),
            "endpoint-unix-path",
            names::validate_unix_address(socket),
        );
        if !we.ports.is_empty() {
            r.error(
                join(path, "ports"),
                "endpoint-unix-ports",
                format!("unix endpoint {addr} must not include ports"),
            );
        }
    } else if !addr.is_empty() && names::parse_ip(addr).is_none() {
        r.error(
            join(path, "address"),
            "endpoint-ip",
            format!("endpoint address {addr:?} is not a valid IP address"),
        );
    }
    endpoint_ports(r, path, we, service_ports);
    validate_labels(r, &join(path, "labels"), &we.labels, "endpoint-labels");
    if unix && service_ports.len() != 1 {
        r.error(
            path,
            "unix-single-port",
            "exactly 1 service port required for unix endpoints",
        );
    }
}

fn endpoint_ports(r: &mut Report, path: &str, we: &WorkloadEntry, service_ports: &BTreeSet<&str>) {
    for (name, port) in &we.ports {
        let p = key(&join(path, "ports"), name);
        if !service_ports.contains(name.as_str()) {
            r.error(
                &p,
                "endpoint-port-undefined",
                format!("endpoint port {port} is not defined by the service entry"),
            );
        }
        r.check(&p, "endpoint-port-name", validate_port_name(name));
        r.check(&p, "endpoint-port-range", validate_port(*port));
    }
}

fn validate_dns_endpoint(
    r: &mut Report,
    path: &str,
    we: &WorkloadEntry,
    service_ports: &BTreeSet<&str>,
) {
    let addr = we.address.as_str();
    if names::parse_ip(addr).is_none() && names::validate_fqdn(addr).is_err() {
        r.error(
            join(path, "address"),
            "dns-endpoint-address",
            format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
        );
    }
    validate_labels(r, &join(path, "labels"), &we.labels, "endpoint-labels");
    endpoint_ports(r, path, we, service_ports);
}

/// CRD rules on each endpoint that Istio's webhook does not repeat.
fn crd_endpoint(r: &mut Report, path: &str, we: &WorkloadEntry) {
    for (field, len, max, what) in [
        ("address", we.address.len(), 256, "characters"),
        ("labels", we.labels.len(), 256, "labels"),
        ("locality", we.locality.len(), 2048, "characters"),
        ("network", we.network.len(), 2048, "characters"),
        ("ports", we.ports.len(), 128, "ports"),
        (
            "serviceAccount",
            we.service_account.len(),
            253,
            "characters",
        ),
    ] {
        limit(r, join(path, field), len, max, what);
    }
    // The CRD's port-name pattern uses size(key) < 63, one shorter than a DNS label's limit.
    // (Its other endpoint rules repeat checks Istio makes for STATIC and DNS, and endpoints
    // are an error with the other resolutions.)
    for name in we.ports.keys() {
        if name.len() == 63 {
            r.error(
                key(&join(path, "ports"), name),
                "crd-port-name",
                "port name must be valid (under 63 characters)",
            );
        }
    }
}

fn validate_export_to(r: &mut Report, namespace: &str, export_to: &[String]) {
    if export_to.is_empty() {
        return;
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let path = index("spec.exportTo", i);
        let k = if e == "." { namespace } else { e.as_str() };
        if seen.contains(k) {
            if k != e {
                r.error(
                    path,
                    "export-to-duplicate",
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                r.error(
                    path,
                    "export-to-duplicate",
                    format!("duplicate entries in exportTo for entry {e}"),
                );
            }
        } else if e == "~" || k == "." || k == "*" || names::is_dns1123_label(k) {
            seen.insert(k);
        } else {
            r.error(
                path,
                "export-to-syntax",
                "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
            );
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        r.error(
            "spec.exportTo",
            "export-to-public",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains("~") && export_to.len() > 1 {
        r.error(
            "spec.exportTo",
            "export-to-none",
            "cannot export service entry to no one (~) and someone",
        );
    }
}

/// All errors and warnings for one ServiceEntry.
pub fn validate(se: &ServiceEntry) -> Vec<Issue> {
    let mut r = Report::default();
    let spec = &se.spec;
    validate_metadata(&mut r, se);

    // CRD schema limits.
    limit(&mut r, "spec.hosts", spec.hosts.len(), 256, "hosts");
    limit(
        &mut r,
        "spec.addresses",
        spec.addresses.len(),
        256,
        "addresses",
    );
    limit(&mut r, "spec.ports", spec.ports.len(), 256, "ports");
    limit(
        &mut r,
        "spec.endpoints",
        spec.endpoints().len(),
        4096,
        "endpoints",
    );
    for (i, a) in spec.addresses.iter().enumerate() {
        limit(
            &mut r,
            index("spec.addresses", i),
            a.len(),
            64,
            "characters",
        );
    }
    for (i, p) in spec.ports.iter().enumerate() {
        limit(
            &mut r,
            join(&index("spec.ports", i), "name"),
            p.name.len(),
            256,
            "characters",
        );
        limit(
            &mut r,
            join(&index("spec.ports", i), "protocol"),
            p.protocol.len(),
            256,
            "characters",
        );
    }
    for (i, we) in spec.endpoints().iter().enumerate() {
        if we.plain_ip().is_none() {
            crd_endpoint(&mut r, &index("spec.endpoints", i), we);
        }
    }

    // Workload selector.
    if let Some(sel) = &spec.workload_selector {
        limit(
            &mut r,
            "spec.workloadSelector.labels",
            sel.labels.len(),
            256,
            "labels",
        );
        for (k, v) in &sel.labels {
            let p = key("spec.workloadSelector.labels", k);
            if k.is_empty() {
                r.error(
                    &p,
                    "selector-key-empty",
                    format!(
                        "empty key is not supported in selector: {:?}",
                        format!("{k}={v}")
                    ),
                );
            }
            if k.contains('*') || v.contains('*') {
                r.error(
                    &p,
                    "selector-wildcard",
                    format!(
                        "wildcard is not supported in selector: {:?}",
                        format!("{k}={v}")
                    ),
                );
            }
            limit(&mut r, &p, v.len(), 63, "characters");
        }
        if sel.labels.is_empty() {
            r.warning(
                "spec.workloadSelector",
                "selector-without-labels",
                "service entry: workload selector specified without labels, will be applied to all services in namespace",
            );
        }
        if spec.endpoints.is_some() {
            r.error(
                "spec.workloadSelector",
                "selector-and-endpoints",
                "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
            );
        }
    }

    // Hosts.
    if spec.hosts.is_empty() {
        r.error(
            "spec.hosts",
            "hosts-required",
            "service entry must have at least one host",
        );
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let p = index("spec.hosts", i);
        if h == "*" {
            r.error(&p, "host-full-wildcard", format!("invalid host {h}"));
        } else {
            r.check(&p, "host-syntax", names::validate_wildcard_domain(h));
            if spec.resolution != Resolution::DynamicDns && names::is_partial_wildcard(h) {
                r.warning(
                    &p,
                    "host-partial-wildcard",
                    format!("partial wildcard {h:?} not allowed"),
                );
            }
        }
    }

    // Addresses.
    let mut cidr_found = false;
    for (i, a) in spec.addresses.iter().enumerate() {
        cidr_found |= a.contains('/');
        r.check(
            index("spec.addresses", i),
            "address-syntax",
            names::validate_ip_subnet(a),
        );
    }
    if cidr_found && !matches!(spec.resolution, Resolution::None | Resolution::Static) {
        r.error(
            "spec.addresses",
            "cidr-resolution",
            "CIDR addresses are allowed only for NONE/STATIC resolution types",
        );
    }

    // Ports.
    let auto_allocation = spec.resolution != Resolution::None
        && !se
            .metadata
            .labels
            .get(LABEL_AUTOALLOCATE)
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
        && spec.addresses.is_empty();
    let mut port_names: BTreeSet<&str> = BTreeSet::new();
    let mut port_numbers: BTreeSet<u32> = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let p = index("spec.ports", i);
        if !port_names.insert(port.name.as_str()) {
            r.error(
                join(&p, "name"),
                "port-name-duplicate",
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !port_numbers.insert(port.number) {
            r.error(
                join(&p, "number"),
                "port-number-duplicate",
                format!("service entry port {} already defined", port.number),
            );
        }
        if port.target_port != 0 {
            r.check(
                join(&p, "targetPort"),
                "target-port-range",
                validate_port(port.target_port),
            );
        }
        // Istio compares the protocol case-sensitively here.
        if spec.addresses.is_empty()
            && !auto_allocation
            && (port.protocol.is_empty() || port.protocol == "TCP")
        {
            r.warning(
                &p,
                "addresses-for-tcp",
                "addresses are required for ports serving TCP (or unset) protocol when IP Autoallocation is not enabled",
            );
        }
        r.check(
            join(&p, "name"),
            "port-name-syntax",
            validate_port_name(&port.name),
        );
        if !port.protocol.is_empty() && Protocol::parse(&port.protocol) == Protocol::Unsupported {
            r.error(
                join(&p, "protocol"),
                "port-protocol",
                format!("unsupported protocol: {}", port.protocol),
            );
        }
        r.check(join(&p, "number"), "port-range", validate_port(port.number));
    }

    // Resolution-specific rules.
    let res = spec.resolution.as_str();
    match spec.resolution {
        Resolution::None => {
            if spec.endpoints.is_some() {
                r.error(
                    "spec.endpoints",
                    "none-endpoints",
                    "no endpoints should be provided for resolution type none",
                );
            }
            if spec.workload_selector.is_some() {
                r.warning(
                    "spec.workloadSelector",
                    "none-selector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, we) in spec.endpoints().iter().enumerate() {
                if we.plain_ip().is_none() {
                    validate_static_endpoint(&mut r, &index("spec.endpoints", i), we, &port_names);
                }
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if spec.endpoints().is_empty()
                && let Some((i, (h, e))) = spec
                    .hosts
                    .iter()
                    .enumerate()
                    .find_map(|(i, h)| names::validate_fqdn(h).err().map(|e| (i, (h, e))))
            {
                r.error(
                    index("spec.hosts", i),
                    "dns-hosts-fqdn",
                    format!("hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {res}, {e} ({h})"),
                );
            }
            if spec.resolution == Resolution::DnsRoundRobin && spec.endpoints().len() > 1 {
                r.error(
                    "spec.endpoints",
                    "dns-rr-endpoints",
                    format!("there must only be 0 or 1 endpoint for resolution mode {res}"),
                );
            }
            for (i, we) in spec.endpoints().iter().enumerate() {
                validate_dns_endpoint(&mut r, &index("spec.endpoints", i), we, &port_names);
            }
            if !spec.addresses.is_empty()
                && spec
                    .ports
                    .iter()
                    .any(|p| Protocol::parse(&p.protocol).is_tcp())
                && spec.hosts.len() > 1
            {
                r.warning(
                    "spec.hosts",
                    "dns-multiple-hosts-address-tcp",
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
        Resolution::DynamicDns => {
            if spec.hosts.is_empty() {
                r.error(
                    "spec.hosts",
                    "dynamic-dns-hosts",
                    format!(
                        "at least one wildcard host must be provided for resolution type {res}"
                    ),
                );
            }
            for (i, h) in spec.hosts.iter().enumerate() {
                if !h.starts_with('*') {
                    r.error(
                        index("spec.hosts", i),
                        "dynamic-dns-host-wildcard",
                        format!("host must be wildcarded for resolution mode {res}"),
                    );
                }
            }
            if !spec.addresses.is_empty() {
                r.error(
                    "spec.addresses",
                    "dynamic-dns-addresses",
                    format!("addresses cannot be set for resolution type {res}"),
                );
            }
            if !spec.endpoints().is_empty() {
                r.error(
                    "spec.endpoints",
                    "dynamic-dns-endpoints",
                    format!("endpoints cannot be set for resolution type {res}"),
                );
            }
            for (i, port) in spec.ports.iter().enumerate() {
                let proto = Protocol::parse(&port.protocol);
                if !matches!(
                    proto,
                    Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2
                ) {
                    r.error(
                        join(&index("spec.ports", i), "protocol"),
                        "dynamic-dns-protocol",
                        format!("only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type {res}"),
                    );
                }
            }
            let waypoint = se
                .metadata
                .labels
                .get(LABEL_USE_WAYPOINT)
                .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none"));
            if spec.location == Location::MeshInternal && waypoint {
                r.error("spec.location", "dynamic-dns-waypoint", format!("location MESH_INTERNAL with resolution type {res} is not supported when using waypoints"));
            }
        }
    }

    // Plain TCP cannot tell several hosts apart unless the hosts are ignored (NONE).
    if spec.resolution != Resolution::None
        && spec.hosts.len() > 1
        && let Some(i) = spec.ports.iter().position(|p| {
            let proto = Protocol::parse(&p.protocol);
            !proto.is_http() && !proto.is_tls()
        })
    {
        r.error(
            index("spec.ports", i),
            "multiple-hosts-tcp",
            "multiple hosts provided with non-HTTP, non-TLS ports",
        );
    }

    validate_export_to(&mut r, se.metadata.namespace(), &spec.export_to);
    r.issues
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
