//! Events → documents, without recursion and with every cost bounded by the input's size.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, Span, StrInput, Tag};
use serde_yaml_ng::{Mapping, Value};

use super::{
    Document, YamlError,
    resolve::{self, Scalar},
};

/// What one file may cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Nested collections. go-yaml allows 10,000; a ServiceEntry needs fewer than 10, and a
    /// value this deep is walked (and dropped) recursively later.
    pub max_depth: usize,
    /// Documents in one stream (16 MiB of `---` lines would otherwise be 4 million).
    pub max_documents: usize,
    /// Nodes that anchors and aliases may copy: this many per node read, plus a floor (the
    /// "billion laughs" guard; go-yaml has a similar ratio).
    pub alias_factor: usize,
    pub alias_floor: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 128,
            max_documents: 10_000,
            alias_factor: 10,
            alias_floor: 100_000,
        }
    }
}

/// A mapping key waiting for its value.
struct Key {
    text: String,
    line: usize,
    /// A plain `<<`: merge the value's keys.
    merge: bool,
}

enum Kind {
    Seq(Vec<Value>),
    Map {
        map: Mapping,
        key: Option<Key>,
        /// Keys set by a merge, which explicit keys may override.
        merged: HashSet<String>,
        /// The single-pair mapping of `[a: b]` (not written with braces).
        implicit_pair: bool,
        /// The pair's key was `x:` before `,`, `]` or `}` (go-yaml: the string `x:`).
        colon_key: bool,
    },
}

struct Frame {
    kind: Kind,
    anchor: usize,
    /// Inside `[...]` or `{...}`.
    flow: bool,
    line: usize,
    /// Nodes in this collection so far, itself included.
    nodes: usize,
}

/// Byte offsets of character indices (the parser counts characters). Lookups come in event
/// order, so the cursor moves forward (and back by at most a token): one pass over the file.
struct Cursor<'a> {
    text: &'a str,
    byte: usize,
    chr: usize,
}

impl Cursor<'_> {
    fn byte_of(&mut self, chr: usize) -> usize {
        // Events arrive in order, so a step back is at most one token long.
        if chr < self.chr {
            let back = self.chr - chr;
            let start = self.text[..self.byte]
                .char_indices()
                .rev()
                .nth(back - 1)
                .map_or(0, |(b, _)| b);
            (self.byte, self.chr) = (start, chr);
            return self.byte;
        }
        let mut it = self.text[self.byte..].char_indices();
        while self.chr < chr {
            match it.next() {
                Some((_, c)) => {
                    self.byte += c.len_utf8();
                    self.chr += 1;
                }
                None => break,
            }
        }
        self.byte
    }

    /// The two characters at character index `chr`.
    fn two_at(&mut self, chr: usize) -> (Option<char>, Option<char>) {
        let b = self.byte_of(chr);
        let mut cs = self.text[b..].chars();
        (cs.next(), cs.next())
    }
}

pub struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    limits: &'a Limits,
    cursor: Cursor<'a>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    read: usize,
    copied: usize,
    root: Option<Value>,
    doc_line: Option<usize>,
    docs: Vec<Document>,
}

fn err(message: impl Into<String>, line: usize) -> YamlError {
    YamlError {
        message: message.into(),
        line: Some(line),
    }
}

impl<'a> Builder<'a> {
    pub fn new(text: &'a str, limits: &'a Limits) -> Self {
        Self {
            parser: Parser::new_from_str(text),
            limits,
            cursor: Cursor {
                text,
                byte: 0,
                chr: 0,
            },
            stack: Vec::new(),
            anchors: HashMap::new(),
            read: 0,
            copied: 0,
            root: None,
            doc_line: None,
            docs: Vec::new(),
        }
    }

    pub fn run(mut self) -> (Vec<Document>, Option<YamlError>) {
        loop {
            let (event, span) = match self.parser.next_event() {
                None => return (self.docs, None),
                Some(Err(e)) => {
                    let line = e.marker().line();
                    return (self.docs, Some(err(e.info().to_owned(), line)));
                }
                Some(Ok(ev)) => ev,
            };
            match self.event(event, span) {
                Ok(true) => return (self.docs, None),
                Ok(false) => {}
                Err(e) => return (self.docs, Some(e)),
            }
        }
    }

    /// Handles one event; `true` at the end of the stream.
    fn event(&mut self, event: Event<'a>, span: Span) -> Result<bool, YamlError> {
        let line = span.start.line();
        match event {
            Event::StreamEnd => return Ok(true),
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart(_) => {
                if self.docs.len() >= self.limits.max_documents {
                    return Err(err(
                        format!("more than {} documents", self.limits.max_documents),
                        line,
                    ));
                }
                self.root = None;
                self.doc_line = None;
            }
            Event::DocumentEnd => {
                self.anchors.clear();
                self.docs.push(Document {
                    value: self.root.take().unwrap_or(Value::Null),
                    line: self.doc_line,
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                // An empty document is an empty plain scalar: it has no line of its own.
                if !(self.stack.is_empty() && text.is_empty() && style == ScalarStyle::Plain) {
                    self.node_line(line);
                }
                self.read += 1;
                let value = scalar(&text, style, tag.as_deref(), line)?;
                let colon_key = style == ScalarStyle::Plain && self.colon_follows(&span);
                let merge = style == ScalarStyle::Plain && tag.is_none() && text == "<<";
                self.complete(value, 1, anchor, line, colon_key, merge)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                self.node_line(line);
                let is_seq = matches!(event, Event::SequenceStart(..));
                self.open(is_seq, anchor, &span)?;
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(line)?,
            Event::Alias(id) => {
                self.node_line(line);
                let (value, nodes) = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| err("alias of an unknown anchor", line))?;
                self.charge(nodes, line)?;
                self.complete(value, nodes, 0, line, false, false)?;
            }
        }
        Ok(false)
    }

    fn node_line(&mut self, line: usize) {
        if self.doc_line.is_none() {
            self.doc_line = Some(line);
        }
    }

    /// A plain scalar in flow context followed at once by `:` and `,`, `]` or `}`.
    fn colon_follows(&mut self, span: &Span) -> bool {
        if !self.stack.last().is_some_and(|f| f.flow) {
            return false;
        }
        matches!(
            self.cursor.two_at(span.end.index()),
            (Some(':'), Some(',' | ']' | '}'))
        )
    }

    fn open(&mut self, is_seq: bool, anchor: usize, span: &Span) -> Result<(), YamlError> {
        let line = span.start.line();
        if self.stack.len() >= self.limits.max_depth {
            return Err(err(
                format!("nested deeper than {} levels", self.limits.max_depth),
                line,
            ));
        }
        let parent_flow = self.stack.last().is_some_and(|f| f.flow);
        let (first, _) = self.cursor.two_at(span.start.index());
        let braced = first == Some(if is_seq { '[' } else { '{' });
        let kind = if is_seq {
            Kind::Seq(Vec::new())
        } else {
            Kind::Map {
                map: Mapping::new(),
                key: None,
                merged: HashSet::new(),
                implicit_pair: parent_flow && !braced,
                colon_key: false,
            }
        };
        self.read += 1;
        self.stack.push(Frame {
            kind,
            anchor,
            flow: braced || parent_flow,
            line,
            nodes: 1,
        });
        Ok(())
    }

    fn close(&mut self, line: usize) -> Result<(), YamlError> {
        let frame = self
            .stack
            .pop()
            .ok_or_else(|| err("unbalanced collection end", line))?;
        let value = match frame.kind {
            Kind::Seq(items) => Value::Sequence(items),
            // `[x:]` in go-yaml is the string `x:`, not a mapping.
            Kind::Map {
                map,
                implicit_pair: true,
                colon_key: true,
                ..
            } if map.len() == 1 && map.values().all(Value::is_null) => {
                map.into_iter().next().map_or(Value::Null, |(k, _)| k)
            }
            Kind::Map { map, .. } => Value::Mapping(map),
        };
        self.complete(value, frame.nodes, frame.anchor, frame.line, false, false)
    }

    /// Counts nodes copied for anchors and aliases against the budget.
    fn charge(&mut self, nodes: usize, line: usize) -> Result<(), YamlError> {
        self.copied = self.copied.saturating_add(nodes);
        let budget = self
            .read
            .saturating_mul(self.limits.alias_factor)
            .max(self.limits.alias_floor);
        if self.copied > budget {
            return Err(err(
                "anchors and aliases expand to too much (more than ten times the document)",
                line,
            ));
        }
        Ok(())
    }

    /// A finished node goes into its parent (or becomes the document).
    fn complete(
        &mut self,
        value: Value,
        nodes: usize,
        anchor: usize,
        line: usize,
        colon_key: bool,
        merge: bool,
    ) -> Result<(), YamlError> {
        if anchor != 0 {
            self.charge(nodes, line)?;
            self.anchors.insert(anchor, (value.clone(), nodes));
        }
        let Some(parent) = self.stack.last_mut() else {
            self.root = Some(value);
            return Ok(());
        };
        parent.nodes = parent.nodes.saturating_add(nodes);
        match &mut parent.kind {
            Kind::Seq(items) => items.push(value),
            Kind::Map {
                key: slot @ None,
                colon_key: pair_colon,
                ..
            } => {
                let mut text = key_text(&value, line)?;
                if colon_key {
                    text.push(':');
                    *pair_colon = true;
                }
                *slot = Some(Key { text, line, merge });
            }
            Kind::Map {
                map, key, merged, ..
            } => {
                let k = key.take().ok_or_else(|| err("value without a key", line))?;
                insert(map, merged, k, value)?;
            }
        }
        Ok(())
    }
}

fn insert(
    map: &mut Mapping,
    merged: &mut HashSet<String>,
    key: Key,
    value: Value,
) -> Result<(), YamlError> {
    if key.merge {
        return merge(map, merged, value, key.line);
    }
    let k = Value::String(key.text.clone());
    if map.contains_key(&k) && !merged.remove(&key.text) {
        return Err(err(format!("duplicate key {:?}", key.text), key.line));
    }
    map.insert(k, value);
    Ok(())
}

/// `<<: map`, `<<: [map, …]`: the maps' keys go in (in a list, earlier maps win); keys given
/// explicitly after the merge override them.
fn merge(
    map: &mut Mapping,
    merged: &mut HashSet<String>,
    value: Value,
    line: usize,
) -> Result<(), YamlError> {
    let sources = match value {
        Value::Mapping(m) => vec![m],
        Value::Sequence(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Mapping(m) => Ok(m),
                _ => Err(err("map merge requires map or sequence of maps", line)),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(err("map merge requires map or sequence of maps", line)),
    };
    for source in sources.into_iter().rev() {
        for (k, v) in source {
            if let Value::String(s) = &k {
                merged.insert(s.clone());
            }
            map.insert(k, v);
        }
    }
    Ok(())
}

/// Keys are strings in JSON: other scalars are written as text, like sigs.k8s.io/yaml does.
fn key_text(v: &Value, line: usize) -> Result<String, YamlError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Err(err("a null mapping key is not supported", line)),
        _ => Err(err("a collection is not a valid mapping key", line)),
    }
}

fn scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&Tag>,
    line: usize,
) -> Result<Value, YamlError> {
    let plain = style == ScalarStyle::Plain;
    // `!!int` arrives as the core schema's handle and a suffix, `!<tag:yaml.org,2002:int>`
    // as a suffix alone.
    let core = tag.and_then(|t| {
        if t.is_yaml_core_schema() {
            Some(t.suffix.as_str())
        } else {
            t.suffix.strip_prefix("tag:yaml.org,2002:")
        }
    });
    let resolved = match (core, tag) {
        (Some("str" | "binary" | "timestamp"), _) => Scalar::Str,
        (Some(want @ ("int" | "float" | "bool" | "null")), _) => {
            let r = resolve::plain(text);
            let ok = matches!(
                (want, &r),
                ("int", Scalar::Int(_) | Scalar::Uint(_))
                    | ("float", Scalar::Float(_) | Scalar::Int(_) | Scalar::Uint(_))
                    | ("bool", Scalar::Bool(_))
                    | ("null", Scalar::Null)
            );
            if !ok {
                return Err(err(format!("cannot decode !!{want} {text:?}"), line));
            }
            r
        }
        // The non-specific `!` makes a plain scalar a string.
        (_, Some(t)) if t.handle.is_empty() && t.suffix == "!" => Scalar::Str,
        _ if plain => resolve::plain(text),
        _ => Scalar::Str,
    };
    Ok(match resolved {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Bool(b),
        Scalar::Int(i) => Value::Number(i.into()),
        Scalar::Uint(u) => Value::Number(u.into()),
        Scalar::Float(f) => Value::Number(f.into()),
        Scalar::Str => Value::String(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_maps_character_indices_both_ways() {
        let text = "aé€𝄞b:]";
        let mut c = Cursor {
            text,
            byte: 0,
            chr: 0,
        };
        for (chr, (byte, _)) in text.char_indices().enumerate() {
            assert_eq!(c.byte_of(chr), byte);
        }
        assert_eq!(c.byte_of(2), 3, "back");
        assert_eq!(c.two_at(5), (Some(':'), Some(']')));
        assert_eq!(c.two_at(1), (Some('é'), Some('€')));
        assert_eq!(c.byte_of(99), text.len(), "past the end");
    }
}
