//! API server objects → ServiceEntries, through the same decoding and validation as files
//! (the object's JSON is YAML).

use kube::api::DynamicObject;

use super::store::{Key, Rejected};
use crate::serviceentry::{Loaded, Origin, Severity, source::load_value};

/// The object's `namespace/name`.
pub fn key(obj: &DynamicObject) -> Key {
    (
        obj.metadata.namespace.clone().unwrap_or_default(),
        obj.metadata.name.clone().unwrap_or_default(),
    )
}

/// Where an object came from, as messages and `inspect` name it.
pub fn origin(resource: &str, key: &Key) -> Origin {
    Origin::named(format!("apiserver:{resource}/{}/{}", key.0, key.1))
}

/// Decodes one ServiceEntry object. `api_version` fills a list item that lacks its type
/// (the API server sends it for custom resources, but nothing requires it).
pub fn service_entry(obj: &DynamicObject, api_version: &str) -> (Key, Result<Loaded, Rejected>) {
    let key = key(obj);
    let rv = obj.metadata.resource_version.clone().unwrap_or_default();
    let rejected = |errors: Vec<String>| Rejected {
        resource_version: rv.clone(),
        errors,
    };
    let mut value = match serde_yaml_ng::to_value(obj) {
        Ok(v) => v,
        Err(e) => return (key, Err(rejected(vec![format!("unreadable object: {e}")]))),
    };
    if let serde_yaml_ng::Value::Mapping(m) = &mut value {
        for (field, fill) in [("apiVersion", api_version), ("kind", "ServiceEntry")] {
            let k = serde_yaml_ng::Value::from(field);
            if !m.contains_key(&k) {
                m.insert(k, serde_yaml_ng::Value::from(fill));
            }
        }
    }
    let report = load_value(&value, origin("serviceentries", &key));
    let mut errors: Vec<String> = report
        .problems
        .iter()
        .filter(|(_, i)| i.severity == Severity::Error)
        .map(|(_, i)| i.to_string())
        .collect();
    let mut entries = report.entries;
    let Some(loaded) = entries.pop() else {
        errors.push("not a ServiceEntry".to_owned());
        return (key, Err(rejected(errors)));
    };
    errors.extend(
        loaded
            .issues
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .map(ToString::to_string),
    );
    let rules = rule_estimate(&loaded);
    if rules > MAX_RULES_PER_OBJECT {
        errors.push(format!(
            "spec: would make about {rules} kernel rules (addresses × ports), over the \
             {MAX_RULES_PER_OBJECT} one object from the API server may add [rules-per-object]"
        ));
    }
    if errors.is_empty() {
        (key, Ok(loaded))
    } else {
        (key, Err(rejected(errors)))
    }
}

/// One object may not fill the maps on its own: whoever may create a ServiceEntry in some
/// namespace could otherwise make every reload fail for lack of room (and so hold every
/// later revocation). Istio's own limits allow 256 addresses × 256 ports.
pub const MAX_RULES_PER_OBJECT: usize = 4096;

/// An upper bound of the kernel rules an entry compiles to: each address, endpoint or host
/// on each port and its targetPort.
fn rule_estimate(loaded: &Loaded) -> usize {
    let spec = &loaded.entry.spec;
    let places = (spec.addresses.len() + spec.endpoints().len()).max(spec.hosts.len());
    places
        .saturating_mul(spec.ports.len().max(1))
        .saturating_mul(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value, with_type: bool) -> DynamicObject {
        let mut v = serde_json::json!({
            "metadata": {"name": "api", "namespace": "payments", "resourceVersion": "17"},
            "spec": spec,
        });
        if with_type {
            v["apiVersion"] = "networking.istio.io/v1".into();
            v["kind"] = "ServiceEntry".into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_valid_object_decodes_like_a_file() {
        let spec = serde_json::json!({
            "hosts": ["api.example.com"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
            "resolution": "DNS",
        });
        for with_type in [true, false] {
            let (key, got) =
                service_entry(&object(spec.clone(), with_type), "networking.istio.io/v1");
            assert_eq!(key, ("payments".to_owned(), "api".to_owned()));
            let loaded = got.unwrap();
            assert_eq!(loaded.id(), "payments/api");
            assert_eq!(
                loaded.origin.to_string(),
                "apiserver:serviceentries/payments/api"
            );
        }
    }

    #[test]
    fn an_object_too_large_for_the_maps_is_refused() {
        let cidrs: Vec<String> = (0..256).map(|i| format!("10.{i}.0.0/24")).collect();
        let ports: Vec<serde_json::Value> = (1..=256)
            .map(|p| serde_json::json!({"number": p, "name": format!("p{p}"), "protocol": "TCP"}))
            .collect();
        let spec = serde_json::json!({
            "hosts": ["big.example.com"], "addresses": cidrs, "ports": ports, "resolution": "NONE",
        });
        let (_, got) = service_entry(&object(spec, true), "networking.istio.io/v1");
        let r = got.unwrap_err();
        assert!(r.errors[0].contains("rules-per-object"), "{:?}", r.errors);
    }

    #[test]
    fn an_invalid_object_names_its_field_and_version() {
        let spec = serde_json::json!({"hosts": [], "ports": [{"number": 70000, "name": "x", "protocol": "TCP"}]});
        let (_, got) = service_entry(&object(spec, true), "networking.istio.io/v1");
        let r = got.unwrap_err();
        assert_eq!(r.resource_version, "17");
        assert!(
            r.errors.iter().any(|e| e.starts_with("spec.hosts")),
            "{:?}",
            r.errors
        );
        assert!(
            r.errors.iter().any(|e| e.contains("spec.ports[0]")),
            "{:?}",
            r.errors
        );
    }
}
