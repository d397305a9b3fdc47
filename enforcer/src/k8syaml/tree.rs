//! Events → documents, without recursion and with every cost bounded by the input's size.

use std::collections::{HashMap, HashSet};

use granit_parser::{Event, Parser, ScalarStyle, Span, StrInput, StructureStyle, Tag};
use serde_yaml_ng::{Mapping, Value, mapping::Entry};

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
    /// Memory the documents of one file may take, estimated as they are built: at most
    /// `memory_floor` plus this many bytes per byte of input read so far. A real ServiceEntry
    /// file needs at most about 35 (a long list of `{address: …}` endpoints); many tiny nodes
    /// (`[a, a, …]` about 70, `[a: b, a: b, …]` about 130) and what anchors and aliases copy
    /// (the "billion laughs") are stopped early, so rejecting them stays cheap.
    pub memory_factor: usize,
    pub memory_floor: usize,
}

/// Estimated heap bytes of a node, calibrated by the peak RSS of `check` on large files of
/// each shape (a one-pair mapping in a list costs about 1 KiB).
const SCALAR_BYTES: usize = 64;
const SEQUENCE_BYTES: usize = 64;
const MAPPING_BYTES: usize = 400;
const ENTRY_BYTES: usize = 80;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 128,
            max_documents: 10_000,
            memory_factor: 40,
            memory_floor: 32 << 20,
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
    /// Estimated bytes of this collection so far, its children included.
    weight: usize,
}

pub struct Builder<'a> {
    parser: Parser<'a, StrInput<'a>>,
    limits: &'a Limits,
    text: &'a str,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Value, usize)>,
    /// Estimated bytes built so far, copies included, and the input read so far.
    spent: usize,
    read: usize,
    root: Option<Value>,
    doc_line: Option<usize>,
    docs: Vec<Document>,
}

fn err(message: impl Into<String>, line: usize) -> YamlError {
    YamlError {
        message: message.into(),
        line: Some(line),
        offset: None,
    }
}

impl<'a> Builder<'a> {
    pub fn new(text: &'a str, limits: &'a Limits) -> Self {
        Self {
            parser: Parser::new_from_str(text),
            limits,
            text,
            stack: Vec::new(),
            anchors: HashMap::new(),
            spent: 0,
            read: 0,
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
                    let error = YamlError {
                        message: e.kind().to_string(),
                        line: Some(e.marker().line()),
                        offset: e.marker().byte_offset(),
                    };
                    return (self.docs, Some(error));
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
        self.read = self.read.max(span.end.byte_offset().unwrap_or(self.read));
        match event {
            Event::StreamEnd => return Ok(true),
            Event::DocumentStart(..) => {
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
                if !(self.stack.is_empty() && span.start.index() == span.end.index()) {
                    self.node_line(line);
                }
                let weight = SCALAR_BYTES + text.len();
                self.charge(weight, line)?;
                let value = scalar(&text, style, tag.as_deref(), line)?;
                let colon_key = style == ScalarStyle::Plain && self.colon_follows(&span);
                let merge = style == ScalarStyle::Plain && tag.is_none() && text == "<<";
                self.complete(value, weight, anchor, line, colon_key, merge)?;
            }
            Event::SequenceStart(style, anchor, _) | Event::MappingStart(style, anchor, _) => {
                self.node_line(line);
                let is_seq = matches!(event, Event::SequenceStart(..));
                self.open(is_seq, style, anchor, &span)?;
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(line)?,
            Event::Alias(id) => {
                self.node_line(line);
                let weight = self
                    .anchors
                    .get(&id)
                    .map(|(_, w)| *w)
                    .ok_or_else(|| err("alias of an unknown anchor", line))?;
                // Charged before the copy is made.
                self.charge(weight, line)?;
                let value = self
                    .anchors
                    .get(&id)
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default();
                self.complete(value, weight, 0, line, false, false)?;
            }
            // Stream start, and metadata events this reader does not ask for.
            _ => {}
        }
        Ok(false)
    }

    fn node_line(&mut self, line: usize) {
        if self.doc_line.is_none() {
            self.doc_line = Some(line);
        }
    }

    /// A plain scalar in flow context followed at once by `:` and `,`, `]` or `}`.
    fn colon_follows(&self, span: &Span) -> bool {
        if !self.stack.last().is_some_and(|f| f.flow) {
            return false;
        }
        let next = span
            .end
            .byte_offset()
            .and_then(|at| self.text.as_bytes().get(at..at + 2));
        matches!(next, Some([b':', b',' | b']' | b'}']))
    }

    fn open(
        &mut self,
        is_seq: bool,
        style: StructureStyle,
        anchor: usize,
        span: &Span,
    ) -> Result<(), YamlError> {
        let line = span.start.line();
        if self.stack.len() >= self.limits.max_depth {
            return Err(err(
                format!("nested deeper than {} levels", self.limits.max_depth),
                line,
            ));
        }
        let parent_flow = self.stack.last().is_some_and(|f| f.flow);
        let first = span
            .start
            .byte_offset()
            .and_then(|at| self.text.as_bytes().get(at));
        let braced = first == Some(if is_seq { &b'[' } else { &b'{' });
        let flow = style == StructureStyle::Flow || parent_flow;
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
        let weight = if is_seq {
            SEQUENCE_BYTES
        } else {
            MAPPING_BYTES
        };
        self.charge(weight, line)?;
        self.stack.push(Frame {
            kind,
            anchor,
            flow,
            line,
            weight,
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
        self.complete(value, frame.weight, frame.anchor, frame.line, false, false)
    }

    /// Counts estimated bytes against the file's budget, before they are spent.
    fn charge(&mut self, weight: usize, line: usize) -> Result<(), YamlError> {
        self.spent = self.spent.saturating_add(weight);
        let budget = self
            .read
            .saturating_mul(self.limits.memory_factor)
            .saturating_add(self.limits.memory_floor);
        if self.spent > budget {
            return Err(err(
                format!(
                    "the documents would take too much memory (over {} bytes per byte of \
                     input: aliases, or very many small nodes)",
                    self.limits.memory_factor
                ),
                line,
            ));
        }
        Ok(())
    }

    /// A finished node goes into its parent (or becomes the document).
    fn complete(
        &mut self,
        value: Value,
        weight: usize,
        anchor: usize,
        line: usize,
        colon_key: bool,
        merge: bool,
    ) -> Result<(), YamlError> {
        if anchor != 0 {
            self.charge(weight, line)?;
            self.anchors.insert(anchor, (value.clone(), weight));
        }
        if !self.stack.is_empty() {
            self.charge(ENTRY_BYTES, line)?;
        }
        let Some(parent) = self.stack.last_mut() else {
            self.root = Some(value);
            return Ok(());
        };
        parent.weight = parent.weight.saturating_add(weight + ENTRY_BYTES);
        match &mut parent.kind {
            Kind::Seq(items) => items.push(value),
            Kind::Map {
                key: slot @ None,
                colon_key: pair_colon,
                ..
            } => {
                let mut text = key_text(value, line)?;
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
    match map.entry(Value::String(key.text)) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut slot) => {
            let text = slot.key().as_str().unwrap_or_default().to_owned();
            if !merged.remove(&text) {
                return Err(err(format!("duplicate key {text:?}"), key.line));
            }
            slot.insert(value);
        }
    }
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
fn key_text(v: Value, line: usize) -> Result<String, YamlError> {
    match v {
        Value::String(s) => Ok(s),
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
    let core = tag.and_then(Tag::core_suffix);
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
        (_, Some(t)) if t.parts() == ("", "!") => Scalar::Str,
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
