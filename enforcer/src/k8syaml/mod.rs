//! YAML read the way Kubernetes reads it, in time linear in the input (docs/architecture.md,
//! "Reading YAML").
//!
//! `kubectl apply` and the API server read manifests with go-yaml v2 (through
//! sigs.k8s.io/yaml). A file they accept must mean the same here, and a hostile file must
//! cost little. granit-parser supplies the events (a maintained YAML 1.2 parser that bounds
//! flow nesting and how far it looks ahead for a key, so its memory stays flat); this module
//! builds documents from them with go-yaml v2's meaning:
//!
//! - plain scalars resolve by YAML 1.1 rules (`resolve`);
//! - in flow context a plain scalar may end with `:` before `,`, `]` or `}` (go-yaml reads
//!   `[1.2.3.4, 001:db8::]` as two strings; a YAML 1.2 parser sees a key `001:db8:`);
//! - `<<` merge keys, keys of other types turned into strings, aliases expanded;
//! - and limits: nesting depth, alias expansion, documents per file.
//!
//! Duplicate keys are an error, as with `kubectl apply`'s default strict field validation.

mod resolve;
mod tree;

#[cfg(test)]
mod compat_tests;

use serde_yaml_ng::Value;

pub use self::tree::Limits;

/// One document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    /// 1-based line of the document's first node.
    pub line: Option<usize>,
}

/// Why the input is not acceptable YAML, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", .line.map(|l| format!(" at line {l}")).unwrap_or_default())]
pub struct YamlError {
    pub message: String,
    pub line: Option<usize>,
    /// Byte offset in the text, where the parser knows it.
    offset: Option<usize>,
}

/// How much text the flow-colon repair below may parse again, in all: a constant bound, so a
/// file full of such values costs at most this much more than one parse.
const REPARSE_BYTES: usize = 64 << 20;

/// Every document of `text` up to the first error (documents before it are kept: a syntax
/// error cannot be recovered from, but what came before it is whole).
pub fn documents(text: &str, limits: &Limits) -> (Vec<Document>, Option<YamlError>) {
    if let Some(e) = foreign_line_break(text) {
        return (Vec::new(), Some(e));
    }
    let mut text = std::borrow::Cow::Borrowed(text);
    let mut budget = REPARSE_BYTES;
    loop {
        let (docs, error) = tree::Builder::new(&text, limits).run();
        let repaired = error
            .as_ref()
            .filter(|_| budget >= text.len())
            .and_then(|e| quote_flow_value(&text, e));
        match repaired {
            Some(fixed) => {
                budget -= text.len();
                text = std::borrow::Cow::Owned(fixed);
            }
            None => return (docs, error),
        }
    }
}

/// go-yaml ends a plain scalar in flow context at `,`, `]` or `}` only, so `{address:
/// 2001:db8::}` is the string `2001:db8::`; a YAML 1.2 parser stops at the last `:` and fails
/// there. At exactly such a failure, the scalar is quoted (on its own line, so line numbers
/// stay) and the text read again. (The same scalar in key position needs no repair: the
/// builder handles it.)
fn quote_flow_value(text: &str, e: &YamlError) -> Option<String> {
    let at = e.offset?;
    let bytes = text.as_bytes();
    if !e.message.contains("flow")
        || bytes.get(at) != Some(&b':')
        || !matches!(bytes.get(at + 1), Some(b',' | b']' | b'}'))
    {
        return None;
    }
    let start = bytes[..at]
        .iter()
        .rposition(|b| b" \t\r\n,[]{}".contains(b))
        .map_or(0, |p| p + 1);
    if start == at {
        return None;
    }
    let scalar = &text[start..=at];
    Some(format!(
        "{}'{}'{}",
        &text[..start],
        scalar.replace('\'', "''"),
        &text[at + 1..]
    ))
}

/// go-yaml v2 also breaks lines at U+0085, U+2028 and U+2029 (even inside comments); YAML 1.2
/// parsers do not. A file using them would mean different things to Kubernetes and to us
/// (a "comment" that hides lines from one reader), so it is refused.
fn foreign_line_break(text: &str) -> Option<YamlError> {
    let (at, c) = text
        .char_indices()
        .find(|(_, c)| matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}'))?;
    let line = text[..at].bytes().filter(|b| *b == b'\n').count() + 1;
    Some(YamlError {
        message: format!(
            "U+{:04X} is a line break to Kubernetes' YAML reader but not to YAML 1.2: \
             remove it",
            u32::from(c)
        ),
        line: Some(line),
        offset: Some(at),
    })
}

/// A single-document file (a config file): its value, `Null` when empty.
pub fn single(text: &str, limits: &Limits) -> Result<Value, YamlError> {
    let (docs, err) = documents(text, limits);
    if let Some(e) = err {
        return Err(e);
    }
    let mut docs = docs.into_iter();
    let first = docs.next().map_or(Value::Null, |d| d.value);
    if let Some(extra) = docs.next() {
        return Err(YamlError {
            message: "more than one document".to_owned(),
            line: extra.line,
            offset: None,
        });
    }
    Ok(first)
}
