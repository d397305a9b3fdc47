//! YAML value → [`ServiceEntry`], checking types the way the CRD schema does, with a field
//! path on every problem. Unknown fields are reported, never silently dropped.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::{
    issue::{Issue, index, join, key},
    model::{
        Location, Metadata, Port, Resolution, ServiceEntry, Spec, WorkloadEntry, WorkloadSelector,
    },
};

/// Kubernetes object metadata fields that carry no meaning here but are expected in
/// `kubectl get -o yaml` output.
const METADATA_IGNORED: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "selfLink",
];

/// A field path, written out only when there is a problem to report: a file may hold a
/// million endpoints, and most have none.
trait FieldPath: Copy {
    fn text(self) -> String;
}

impl FieldPath for &str {
    fn text(self) -> String {
        self.to_owned()
    }
}

/// `list[i]`.
#[derive(Clone, Copy)]
struct Item<'a>(&'a str, usize);

impl FieldPath for Item<'_> {
    fn text(self) -> String {
        index(self.0, self.1)
    }
}

/// The most fields a schema object here has.
const MAX_FIELDS: usize = 16;

/// A mapping's known fields, by their place in the list of known names (an object decoded
/// allocates nothing for its fields).
#[derive(Default)]
struct Fields<'v, 'k> {
    known: &'k [&'k str],
    values: [Option<&'v Value>; MAX_FIELDS],
}

impl<'v> Fields<'v, '_> {
    fn get(&self, name: &str) -> Option<&'v Value> {
        let i = self.known.iter().position(|n| *n == name)?;
        self.values.get(i).copied().flatten()
    }
}

#[derive(Default)]
struct Decoder {
    issues: Vec<Issue>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

impl Decoder {
    fn type_error(&mut self, path: &str, want: &str, got: &Value) {
        self.issues.push(Issue::error(
            path,
            "schema-type",
            format!("expected {want}, found {}", type_name(got)),
        ));
    }

    /// The mapping's fields by name. Unknown names draw a warning; `ignored` names are
    /// accepted silently.
    fn fields<'v, 'k>(
        &mut self,
        v: &'v Value,
        path: impl FieldPath,
        known: &'k [&'k str],
        ignored: &[&str],
    ) -> Option<Fields<'v, 'k>> {
        let m: &Mapping = match v {
            Value::Mapping(m) => m,
            Value::Null => return None,
            other => {
                self.type_error(&path.text(), "a mapping", other);
                return None;
            }
        };
        debug_assert!(known.len() <= MAX_FIELDS, "raise MAX_FIELDS");
        let mut out = Fields {
            known,
            values: [None; MAX_FIELDS],
        };
        for (k, val) in m {
            let Value::String(k) = k else {
                self.type_error(&path.text(), "string keys", k);
                continue;
            };
            if let Some(i) = known.iter().position(|n| n == k) {
                // An explicit null means "unset", as in Kubernetes.
                if !val.is_null()
                    && let Some(slot) = out.values.get_mut(i)
                {
                    *slot = Some(val);
                }
            } else if !ignored.contains(&k.as_str()) {
                self.issues.push(Issue::warning(
                    join(&path.text(), k),
                    "unknown-field",
                    "unknown field, ignored (not part of the ServiceEntry schema)",
                ));
            }
        }
        Some(out)
    }

    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.type_error(path, "a string", other);
                None
            }
        }
    }

    fn u32(&mut self, v: &Value, path: &str) -> Option<u32> {
        match v {
            // A whole float (`443.0`, `1e3`, or `08` by YAML 1.1) is that integer in JSON,
            // as Kubernetes sees it.
            Value::Number(n) => {
                match n.as_u64().or_else(|| whole(n.as_f64()?)).map(u32::try_from) {
                    Some(Ok(x)) => Some(x),
                    _ => {
                        self.issues.push(Issue::error(
                            path,
                            "schema-range",
                            format!("{n} is not an integer between 0 and 4294967295"),
                        ));
                        None
                    }
                }
            }
            other => {
                self.type_error(path, "an integer", other);
                None
            }
        }
    }

    fn list<'v>(&mut self, v: &'v Value, path: &str) -> &'v [Value] {
        match v {
            Value::Sequence(s) => s,
            other => {
                self.type_error(path, "a list", other);
                &[]
            }
        }
    }

    fn strings(&mut self, v: &Value, path: &str) -> Vec<String> {
        self.list(v, path)
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &index(path, i)))
            .collect()
    }

    fn map_of<T>(
        &mut self,
        v: &Value,
        path: &str,
        mut value: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        match v {
            Value::Mapping(m) => {
                for (k, val) in m {
                    let Value::String(k) = k else {
                        self.type_error(path, "string keys", k);
                        continue;
                    };
                    if let Some(x) = value(self, val, &key(path, k)) {
                        out.insert(k.clone(), x);
                    }
                }
            }
            Value::Null => {}
            other => self.type_error(path, "a mapping", other),
        }
        out
    }

    fn string_map(&mut self, v: &Value, path: &str) -> BTreeMap<String, String> {
        self.map_of(v, path, Self::string)
    }

    fn enum_value<T: Copy>(&mut self, v: &Value, path: &str, values: &[(&str, T)]) -> Option<T> {
        let s = self.string(v, path)?;
        let found = values.iter().find(|(name, _)| *name == s).map(|(_, t)| *t);
        if found.is_none() {
            let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
            self.issues.push(Issue::error(
                path,
                "schema-enum",
                format!("{s:?} is not one of {}", names.join(", ")),
            ));
        }
        found
    }

    fn metadata(&mut self, v: &Value) -> Metadata {
        let path = "metadata";
        let known = [
            "name",
            "namespace",
            "labels",
            "annotations",
            "creationTimestamp",
        ];
        let Some(f) = self.fields(v, path, &known, METADATA_IGNORED) else {
            return Metadata::default();
        };
        Metadata {
            name: f
                .get("name")
                .and_then(|v| self.string(v, "metadata.name"))
                .unwrap_or_default(),
            namespace: f
                .get("namespace")
                .and_then(|v| self.string(v, "metadata.namespace")),
            labels: f
                .get("labels")
                .map(|v| self.string_map(v, "metadata.labels"))
                .unwrap_or_default(),
            annotations: f
                .get("annotations")
                .map(|v| self.string_map(v, "metadata.annotations"))
                .unwrap_or_default(),
            created: f
                .get("creationTimestamp")
                .filter(|v| !v.is_null())
                .and_then(|v| self.string(v, "metadata.creationTimestamp")),
        }
    }

    fn port(&mut self, v: &Value, path: &str) -> Option<Port> {
        let f = self.fields(v, path, &["number", "protocol", "name", "targetPort"], &[])?;
        Some(Port {
            number: f
                .get("number")
                .and_then(|v| self.u32(v, &join(path, "number")))
                .unwrap_or(0),
            protocol: f
                .get("protocol")
                .and_then(|v| self.string(v, &join(path, "protocol")))
                .unwrap_or_default(),
            name: f
                .get("name")
                .and_then(|v| self.string(v, &join(path, "name")))
                .unwrap_or_default(),
            target_port: f
                .get("targetPort")
                .and_then(|v| self.u32(v, &join(path, "targetPort")))
                .unwrap_or(0),
        })
    }

    fn endpoint(&mut self, v: &Value, at: Item<'_>) -> Option<WorkloadEntry> {
        let known = [
            "address",
            "ports",
            "labels",
            "network",
            "locality",
            "weight",
            "serviceAccount",
        ];
        let f = self.fields(v, at, &known, &[])?;
        let s = |d: &mut Self, name: &str| match f.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => d.string(v, &join(&at.text(), name)).unwrap_or_default(),
            None => String::new(),
        };
        let path = |field: &str| join(&at.text(), field);
        Some(WorkloadEntry {
            address: s(self, "address"),
            ports: f
                .get("ports")
                .map(|v| self.map_of(v, &path("ports"), Self::u32))
                .unwrap_or_default(),
            labels: f
                .get("labels")
                .map(|v| self.string_map(v, &path("labels")))
                .unwrap_or_default(),
            network: s(self, "network"),
            locality: s(self, "locality"),
            weight: f
                .get("weight")
                .and_then(|v| self.u32(v, &path("weight")))
                .unwrap_or(0),
            service_account: s(self, "serviceAccount"),
        })
    }

    fn spec(&mut self, v: &Value) -> Spec {
        let known = [
            "hosts",
            "addresses",
            "ports",
            "location",
            "resolution",
            "endpoints",
            "workloadSelector",
            "exportTo",
            "subjectAltNames",
        ];
        let Some(f) = self.fields(v, "spec", &known, &[]) else {
            return Spec::default();
        };
        let strings = |d: &mut Self, name: &str| {
            f.get(name)
                .map(|v| d.strings(v, &join("spec", name)))
                .unwrap_or_default()
        };
        let hosts = strings(self, "hosts");
        let addresses = strings(self, "addresses");
        let export_to = strings(self, "exportTo");
        let subject_alt_names = strings(self, "subjectAltNames");
        let ports = match f.get("ports") {
            Some(v) => self
                .list(v, "spec.ports")
                .iter()
                .enumerate()
                .filter_map(|(i, p)| self.port(p, &index("spec.ports", i)))
                .collect(),
            None => Vec::new(),
        };
        let endpoints = f.get("endpoints").map(|v| {
            self.list(v, "spec.endpoints")
                .iter()
                .enumerate()
                .filter_map(|(i, e)| self.endpoint(e, Item("spec.endpoints", i)))
                .collect()
        });
        let workload_selector = f.get("workloadSelector").map(|v| {
            let labels = self
                .fields(v, "spec.workloadSelector", &["labels"], &[])
                .and_then(|sf| sf.get("labels"))
                .map(|l| self.string_map(l, "spec.workloadSelector.labels"))
                .unwrap_or_default();
            WorkloadSelector { labels }
        });
        let location = f
            .get("location")
            .and_then(|v| {
                self.enum_value(
                    v,
                    "spec.location",
                    &[
                        ("MESH_EXTERNAL", Location::MeshExternal),
                        ("MESH_INTERNAL", Location::MeshInternal),
                    ],
                )
            })
            .unwrap_or_default();
        let resolution = f
            .get("resolution")
            .and_then(|v| {
                self.enum_value(
                    v,
                    "spec.resolution",
                    &[
                        ("NONE", Resolution::None),
                        ("STATIC", Resolution::Static),
                        ("DNS", Resolution::Dns),
                        ("DNS_ROUND_ROBIN", Resolution::DnsRoundRobin),
                        ("DYNAMIC_DNS", Resolution::DynamicDns),
                    ],
                )
            })
            .unwrap_or_default();
        Spec {
            hosts,
            addresses,
            ports,
            location,
            resolution,
            endpoints,
            plain_endpoints: Default::default(),
            workload_selector,
            export_to,
            subject_alt_names,
        }
    }
}

/// Decodes one resource whose `kind` is ServiceEntry. Type errors are reported and the field
/// left at its default, so that validation can still report everything else.
pub fn decode(v: &Value) -> (ServiceEntry, Vec<Issue>) {
    let mut d = Decoder::default();
    let known = ["apiVersion", "kind", "metadata", "spec"];
    let f = d.fields(v, "", &known, &["status"]).unwrap_or_default();
    let api_version = f
        .get("apiVersion")
        .and_then(|v| d.string(v, "apiVersion"))
        .unwrap_or_default();
    let metadata = f.get("metadata").map(|v| d.metadata(v)).unwrap_or_default();
    let spec = match f.get("spec") {
        Some(v) => d.spec(v),
        None => {
            d.issues
                .push(Issue::error("spec", "crd-required", "spec is required"));
            Spec::default()
        }
    };
    (
        ServiceEntry {
            api_version,
            metadata,
            spec,
        },
        d.issues,
    )
}

/// A float with no fractional part, as the integer JSON would write for it.
fn whole(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(yaml: &str) -> (ServiceEntry, Vec<Issue>) {
        decode(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn decodes_every_field() {
        let (se, issues) = dec(r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x, namespace: ns, labels: {a: b}, annotations: {c: d}, uid: "1"}
spec:
  hosts: [a.example.com]
  addresses: [10.0.0.0/8]
  ports: [{number: 443, protocol: HTTPS, name: https, targetPort: 8443}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 10.1.1.1, ports: {https: 9443}, labels: {l: v}, network: n, locality: r/z, weight: 3, serviceAccount: sa}
  exportTo: ["."]
  subjectAltNames: [spiffe://x]
status: {anything: goes}
"#);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(se.metadata.namespace(), "ns");
        assert_eq!(se.metadata.labels["a"], "b");
        assert_eq!(se.spec.ports[0].target_port, 8443);
        assert_eq!(se.spec.location, Location::MeshInternal);
        assert_eq!(se.spec.resolution, Resolution::Static);
        let ep = &se.spec.endpoints()[0];
        assert_eq!(
            (ep.ports["https"], ep.weight, ep.locality.as_str()),
            (9443, 3, "r/z")
        );
        assert_eq!(se.spec.subject_alt_names, ["spiffe://x"]);
    }

    #[test]
    fn type_errors_carry_the_field_path() {
        let (_, issues) = dec(
            "spec: {hosts: [a.com, 5], ports: [{number: x, name: a}, {number: -1, name: b}, {number: 4294967296, name: c}], resolution: dns, endpoints: {}}",
        );
        let paths: Vec<(&str, &str)> = issues.iter().map(|i| (i.path.as_str(), i.rule)).collect();
        assert!(
            paths.contains(&("spec.hosts[1]", "schema-type")),
            "{paths:?}"
        );
        assert!(paths.contains(&("spec.ports[0].number", "schema-type")));
        assert!(paths.contains(&("spec.ports[1].number", "schema-range")));
        assert!(paths.contains(&("spec.ports[2].number", "schema-range")));
        assert!(paths.contains(&("spec.resolution", "schema-enum")));
        assert!(paths.contains(&("spec.endpoints", "schema-type")));
    }

    #[test]
    fn unknown_fields_are_warnings_with_paths() {
        let (_, issues) = dec(
            "metadata: {name: x, colour: red}\nspec: {hosts: [a.com], adresses: [1.2.3.4], ports: [{number: 1, name: a, proto: TCP}]}\nextra: 1",
        );
        let w: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            w,
            [
                "extra",
                "metadata.colour",
                "spec.adresses",
                "spec.ports[0].proto"
            ]
        );
        assert!(issues.iter().all(|i| i.rule == "unknown-field"));
    }

    #[test]
    fn missing_spec_is_an_error_and_null_means_unset() {
        let (_, issues) = dec("metadata: {name: x}");
        assert_eq!(issues[0].rule, "crd-required");
        let (se, issues) = dec("spec: {hosts: [a.com], endpoints: null, addresses: ~}");
        assert!(issues.is_empty());
        assert!(se.spec.endpoints.is_none());
        let (se, _) = dec("spec: {hosts: [a.com], endpoints: []}");
        assert_eq!(se.spec.endpoints, Some(vec![]));
    }

    #[test]
    fn odd_label_keys_are_quoted_in_paths() {
        let (_, issues) = dec(
            "spec: {hosts: [a.com], workloadSelector: {labels: {'app.kubernetes.io/name': 3}}}",
        );
        assert_eq!(
            issues[0].path,
            r#"spec.workloadSelector.labels["app.kubernetes.io/name"]"#
        );
    }
}
