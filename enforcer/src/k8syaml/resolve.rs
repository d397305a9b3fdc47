//! What an untagged plain scalar means, as go-yaml v2 decides it (`resolve.go`, the version
//! behind sigs.k8s.io/yaml, which is how Kubernetes reads YAML). YAML 1.1 rules, not 1.2:
//! `yes`/`no`/`on`/`off` are booleans and a leading `0` makes an integer octal. Quoted and block
//! scalars are never resolved: they are strings.

/// A resolved plain scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str,
}

pub fn plain(s: &str) -> Scalar {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Scalar::Bool(true);
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Scalar::Bool(false);
        }
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        _ => {}
    }
    if !s.starts_with(|c: char| c == '+' || c == '-' || c == '.' || c.is_ascii_digit()) {
        return Scalar::Str;
    }
    // A timestamp stays text here (Kubernetes turns it into RFC 3339 text; no ServiceEntry
    // field holds one).
    if looks_like_date(s) {
        return Scalar::Str;
    }
    // Copied only when there is a `_` to drop: most numbers-like text (addresses) has none.
    let digits = if s.contains('_') {
        std::borrow::Cow::Owned(s.replace('_', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    if let Some(i) = parse_int(&digits) {
        return Scalar::Int(i);
    }
    if let Some(u) = parse_uint(&digits) {
        return Scalar::Uint(u);
    }
    if is_yaml_float(&digits)
        && let Ok(f) = digits.parse::<f64>()
    {
        return Scalar::Float(f);
    }
    Scalar::Str
}

/// `YYYY-M-D…`: go-yaml tries its timestamp layouts only on text of that shape.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// Go's `strconv.ParseInt(s, 0, 64)`: optional sign, then `0x`, `0o`, `0b` or a leading `0`
/// (octal) select the base.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_uint(rest)?;
    if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)`.
fn parse_uint(s: &str) -> Option<u64> {
    let (digits, radix) = match s.as_bytes() {
        [b'0', b'x' | b'X', ..] => (&s[2..], 16),
        [b'0', b'o' | b'O', ..] => (&s[2..], 8),
        [b'0', b'b' | b'B', ..] => (&s[2..], 2),
        [b'0', _, ..] => (&s[1..], 8),
        _ => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_booleans_and_nulls() {
        for t in [
            "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
        ] {
            assert_eq!(plain(t), Scalar::Bool(true), "{t}");
        }
        for f in [
            "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
        ] {
            assert_eq!(plain(f), Scalar::Bool(false), "{f}");
        }
        for n in ["", "~", "null", "Null", "NULL"] {
            assert_eq!(plain(n), Scalar::Null, "{n:?}");
        }
        for s in ["yES", "nULL", "oN", "tRUE", "enabled", "api.example.com"] {
            assert_eq!(plain(s), Scalar::Str, "{s}");
        }
    }

    #[test]
    fn integers_follow_go_parse_int_with_base_0() {
        assert_eq!(plain("443"), Scalar::Int(443));
        assert_eq!(plain("010"), Scalar::Int(8), "leading 0: octal");
        assert_eq!(plain("0o17"), Scalar::Int(15));
        assert_eq!(plain("0x1F"), Scalar::Int(31));
        assert_eq!(plain("0b101"), Scalar::Int(5));
        assert_eq!(plain("-0x10"), Scalar::Int(-16));
        assert_eq!(plain("+7"), Scalar::Int(7));
        assert_eq!(plain("1_000"), Scalar::Int(1000));
        assert_eq!(plain("0X1_f"), Scalar::Int(31));
        assert_eq!(plain("0B11"), Scalar::Int(3));
        assert_eq!(plain("0O7"), Scalar::Int(7));
        assert_eq!(plain("0_7"), Scalar::Int(7));
        assert_eq!(plain("18446744073709551615"), Scalar::Uint(u64::MAX));
        assert_eq!(plain("-9223372036854775808"), Scalar::Int(i64::MIN));
        // Not octal digits: a float by the regex, as in go-yaml.
        assert_eq!(plain("08"), Scalar::Float(8.0));
        assert_eq!(
            plain("18446744073709551616"),
            Scalar::Float(18_446_744_073_709_551_616.0)
        );
    }

    #[test]
    fn floats_and_text() {
        assert_eq!(plain("1.5"), Scalar::Float(1.5));
        assert_eq!(plain(".5"), Scalar::Float(0.5));
        assert_eq!(plain("1e3"), Scalar::Float(1000.0));
        assert_eq!(plain("-.inf"), Scalar::Float(f64::NEG_INFINITY));
        assert!(matches!(plain(".nan"), Scalar::Float(f) if f.is_nan()));
        for s in [
            "1.2.3.4",
            "001:db8::",
            "1.0e",
            "e3",
            "-",
            ".",
            "0x",
            "0é",
            "2001:db8::1",
            "10.0.0.0/8",
            "2024-01-02",
        ] {
            assert_eq!(plain(s), Scalar::Str, "{s}");
        }
    }
}
