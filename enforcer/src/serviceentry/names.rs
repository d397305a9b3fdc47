//! Name and address syntax exactly as Istio checks it (`pkg/config/labels`,
//! `pkg/config/validation/agent`), written without regexes.

use std::net::IpAddr;

pub const DNS1123_LABEL_MAX: usize = 63;

/// `[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS1123_LABEL_MAX
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// `\*|(\*|\*-)?LABEL`: a label that may start with a wildcard.
pub fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > DNS1123_LABEL_MAX {
        return false;
    }
    if s == "*" {
        return true;
    }
    let rest = s
        .strip_prefix("*-")
        .filter(|r| is_dns1123_label(r))
        .or_else(|| s.strip_prefix('*'))
        .unwrap_or(s);
    is_dns1123_label(rest)
}

fn check_length(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    Ok(())
}

/// Labels of a domain (the last may be empty, for `istio.io.`); the top-level label may not be
/// all-numeric.
pub fn validate_dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if is_go_atoi(tld) {
        return Err(format!(
            "domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {domain:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

/// Go's `strconv.Atoi` succeeds: optional sign, then decimal digits that fit an int64.
fn is_go_atoi(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) && s.parse::<i64>().is_ok()
}

pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    check_length(fqdn)?;
    validate_dns1123_labels(fqdn)
}

/// An FQDN whose first label may be a wildcard (`*.example.com`, `*x.example.com`).
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    check_length(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(r) => validate_dns1123_labels(r),
        None => Ok(()),
    }
}

/// A `*` that is not the whole host and not followed by a dot.
pub fn is_partial_wildcard(host: &str) -> bool {
    host.contains('*') && host.len() != 1 && !host.starts_with("*.")
}

/// Go's `netip.ParseAddr`: IPv4, IPv6, or IPv6 with a zone (`fe80::1%eth0`).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Some((addr, zone)) = s.split_once('%') {
        if zone.is_empty() {
            return None;
        }
        return addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    s.parse().ok()
}

/// Go's `netip.ParsePrefix`: address (no zone) and a decimal length without leading zeros.
pub fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if bits.is_empty()
        || (bits.len() > 1 && bits.starts_with('0'))
        || !bits.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((addr, bits))
}

/// `ValidateIPSubnet`: a CIDR when there is exactly one `/`, else an address.
pub fn validate_ip_subnet(s: &str) -> Result<(), String> {
    if s.matches('/').count() == 1 {
        return parse_prefix(s)
            .map(drop)
            .ok_or_else(|| format!("{s} is not a valid CIDR block"));
    }
    parse_ip(s)
        .map(drop)
        .ok_or_else(|| format!("{s} is not a valid IP"))
}

/// Label values: empty, or `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name(s)
}

/// Label keys: an optional DNS-name prefix ending in `/`, then a qualified name.
pub fn validate_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| p.split('.').all(is_dns1123_label));
    if !prefix_ok || !is_qualified_name(name) {
        return Err(format!("invalid tag key: {k:?}"));
    }
    if prefix.is_some_and(|p| p.len() > 253) {
        return Err(format!("invalid tag key: {k:?} (DNS prefix is too long)"));
    }
    if name.len() > DNS1123_LABEL_MAX {
        return Err(format!("invalid tag key: {k:?} (name is too long)"));
    }
    Ok(())
}

/// Istio's `ValidateUnixAddress` (the part after `unix://`).
pub fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".to_owned());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels() {
        for ok in ["a", "a-b", "0", "x".repeat(63).as_str(), "A1"] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", "x".repeat(64).as_str(), "*"] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn wildcard_labels() {
        for ok in ["*", "*a", "*-a", "a", "*abc-d"] {
            assert!(is_wildcard_dns1123_label(ok), "{ok}");
        }
        for bad in ["**", "a*", "*-", "*_a", "*-*"] {
            assert!(!is_wildcard_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn fqdns() {
        assert!(validate_fqdn("istio.io").is_ok());
        assert!(validate_fqdn("istio.io.").is_ok());
        assert!(
            validate_fqdn("foo").is_ok(),
            "short names are FQDNs to Istio"
        );
        assert!(validate_fqdn("").is_err());
        assert!(validate_fqdn("a..b").is_err());
        assert!(validate_fqdn("1.2.3.4").is_err(), "numeric TLD");
        assert!(validate_fqdn("example.123").is_err());
        assert!(validate_fqdn("example.-1").is_err());
        assert!(
            validate_fqdn(&format!("{}.com", "a.".repeat(130))).is_err(),
            "over 255"
        );
        assert!(validate_fqdn("*.example.com").is_err());
    }

    #[test]
    fn wildcard_domains() {
        assert!(validate_wildcard_domain("*.example.com").is_ok());
        assert!(validate_wildcard_domain("*example.com").is_ok());
        assert!(validate_wildcard_domain("*").is_ok());
        assert!(
            validate_wildcard_domain("a.*.com").is_err(),
            "wildcard only in the first label"
        );
        assert!(validate_wildcard_domain("-").is_err());
        assert!(validate_wildcard_domain("*.123").is_err());
    }

    #[test]
    fn partial_wildcards() {
        assert!(is_partial_wildcard("*x"));
        assert!(is_partial_wildcard("*washingtonpost.com"));
        assert!(!is_partial_wildcard("*.x.com"));
        assert!(!is_partial_wildcard("*"));
        assert!(!is_partial_wildcard("x.com"));
    }

    #[test]
    fn ip_and_cidr_syntax() {
        assert!(validate_ip_subnet("1.2.3.4").is_ok());
        assert!(validate_ip_subnet("001:db8::").is_ok());
        assert!(validate_ip_subnet("fe80::1%eth0").is_ok());
        assert!(validate_ip_subnet("10.0.0.0/8").is_ok());
        assert!(
            validate_ip_subnet("10.1.2.3/8").is_ok(),
            "host bits are allowed"
        );
        assert!(validate_ip_subnet("2001:db8::/32").is_ok());
        assert!(validate_ip_subnet("10.0.0.0/33").is_err());
        assert!(validate_ip_subnet("10.0.0.0/08").is_err());
        assert!(validate_ip_subnet("10.0.0.0/").is_err());
        assert!(validate_ip_subnet("fe80::1%eth0/64").is_err());
        assert!(validate_ip_subnet("1.2.3.4/8/9").is_err());
        assert!(validate_ip_subnet("01.2.3.4").is_err(), "leading zeros");
        assert!(validate_ip_subnet("example.com").is_err());
        assert!(validate_ip_subnet("").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("security.istio.io/tlsMode").is_ok());
        assert!(validate_label_key("").is_err());
        assert!(validate_label_key("a/b/c").is_err());
        assert!(validate_label_key("/a").is_err());
        assert!(validate_label_key("-a").is_err());
        assert!(validate_label_key(&"a".repeat(64)).is_err());
        assert!(is_label_value(""));
        assert!(is_label_value("v1.2_3-x"));
        assert!(!is_label_value("a b"));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value("a*"));
    }

    #[test]
    fn unix_addresses() {
        assert!(validate_unix_address("/path/to/socket").is_ok());
        assert!(validate_unix_address("@abstract").is_ok());
        assert!(validate_unix_address("./relative/path.sock").is_err());
        assert!(validate_unix_address("/dir/").is_err());
        assert!(validate_unix_address("").is_err());
    }
}
