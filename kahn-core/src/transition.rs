//! Transitions and run metadata, validated and hashed once, when they are made.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::hash::{Digest, canonical_json};
use crate::id::{RunId, Seq, validate_token};

/// A transition's body: every field of the line except `run_id` and `seq`, checked to hold an
/// RFC 3339 `ts` and a string `to` (and, when present, string `from`/`node` and object
/// `attrs`). Other fields are kept. Its canonical form and content hash are computed once,
/// here.
///
/// Only the canonical form is kept, not the parsed fields: it is what backends store and
/// what is hashed, it is a fraction of the parsed tree's size, and a batch of thousands of
/// bodies then frees a few thousand strings instead of hundreds of thousands of map nodes.
/// [`fields`](Self::fields) parses it back on demand.
#[derive(Clone, Debug, PartialEq)]
pub struct TransitionBody {
    canonical: Box<str>,
    content_hash: Digest,
    ts: DateTime<Utc>,
    to: Box<str>,
    node: Option<Box<str>>,
}

impl TransitionBody {
    /// Validates a body.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: `ts` missing, not a string or not RFC 3339;
    /// `to` missing, empty or not a string; `from`/`node` not strings; `attrs` not an object;
    /// `run_id`/`seq` present (they are not part of the body); `kind` present (it marks a
    /// metadata line).
    pub fn new(fields: Map<String, Value>) -> Result<Self, Error> {
        for reserved in ["run_id", "seq"] {
            if fields.contains_key(reserved) {
                return Err(Error::invalid(reserved, "is not part of a transition body"));
            }
        }
        if fields.contains_key("kind") {
            return Err(Error::invalid(
                "kind",
                "is reserved for metadata lines (\"kind\": \"run\"); a transition has none",
            ));
        }
        let ts = match fields.get("ts") {
            None => return Err(Error::invalid("ts", "is required")),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    Error::invalid("ts", format!("{s:?} is not an RFC 3339 timestamp: {e}"))
                })?
                .with_timezone(&Utc),
            Some(_) => return Err(Error::invalid("ts", "must be an RFC 3339 string")),
        };
        let to: Box<str> = match fields.get("to") {
            None => return Err(Error::invalid("to", "is required")),
            Some(Value::String(s)) if !s.is_empty() => s.as_str().into(),
            Some(Value::String(_)) => return Err(Error::invalid("to", "must not be empty")),
            Some(_) => return Err(Error::invalid("to", "must be a string")),
        };
        for optional in ["from", "node"] {
            if let Some(v) = fields.get(optional)
                && !v.is_string()
            {
                return Err(Error::invalid(optional, "must be a string"));
            }
        }
        if let Some(v) = fields.get("attrs")
            && !v.is_object()
        {
            return Err(Error::invalid("attrs", "must be an object"));
        }
        let node = fields.get("node").and_then(Value::as_str).map(Into::into);
        let canonical: Box<str> = canonical_json("body", &Value::Object(fields))?.into();
        let content_hash = Digest::sha256(canonical.as_bytes());
        Ok(Self { canonical, content_hash, ts, to, node })
    }

    /// A body read in place by the wire reader (`wire_read`), which checked that `canonical`
    /// is canonical JSON with these `ts`, `to` and `node`, as [`new`](Self::new) would have
    /// written and checked them.
    pub(crate) fn from_canonical(
        canonical: Box<str>,
        ts: DateTime<Utc>,
        to: Box<str>,
        node: Option<Box<str>>,
    ) -> Self {
        let content_hash = Digest::sha256(canonical.as_bytes());
        Self { canonical, content_hash, ts, to, node }
    }

    /// The body's fields, parsed from its canonical form (so numbers read as their canonical
    /// text does: `350.0` sent is `350` here).
    pub fn fields(&self) -> Map<String, Value> {
        // The canonical form was written from a JSON object, so it parses as one.
        match serde_json::from_str(&self.canonical) {
            Ok(Value::Object(fields)) => fields,
            _ => Map::new(),
        }
    }

    /// The RFC 8785 canonical JSON of the body: what backends store.
    pub fn canonical_json(&self) -> &str {
        &self.canonical
    }

    /// SHA-256 of [`canonical_json`](Self::canonical_json).
    pub fn content_hash(&self) -> Digest {
        self.content_hash
    }

    /// The parsed `ts`.
    pub fn ts(&self) -> DateTime<Utc> {
        self.ts
    }

    /// The `to` state.
    pub fn to_state(&self) -> &str {
        &self.to
    }

    /// The `node`, when the transition is a node's (without one it is run-level).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }
}

/// One transition of one run, as a producer sends it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The run.
    pub run_id: RunId,
    /// Its position in the run.
    pub seq: Seq,
    /// The content.
    pub body: TransitionBody,
}

impl Transition {
    /// Reads a transition from a JSON object holding `run_id`, `seq` and the body fields.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field that is missing or wrong.
    pub fn from_json(mut fields: Map<String, Value>) -> Result<Self, Error> {
        let run_id = match fields.remove("run_id") {
            None => return Err(Error::invalid("run_id", "is required")),
            Some(Value::String(s)) => RunId::new(s)?,
            Some(_) => return Err(Error::invalid("run_id", "must be a string")),
        };
        let seq = match fields.remove("seq") {
            None => return Err(Error::invalid("seq", "is required")),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) => Seq::new(n)?,
                None => {
                    return Err(Error::invalid(
                        "seq",
                        format!("{n} is not a non-negative integer"),
                    ));
                }
            },
            Some(_) => return Err(Error::invalid("seq", "must be a non-negative integer")),
        };
        Ok(Self { run_id, seq, body: TransitionBody::new(fields)? })
    }
}

/// Run labels: string keys to string values. Each key is set once, like the other metadata.
pub type Labels = BTreeMap<String, String>;

/// A run's metadata. Each field is set once: absent → set; equal → no-op; different →
/// [`Error::Conflict`]. Labels follow the same rule key by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMeta {
    source: Option<String>,
    graph: Option<(Value, Box<str>)>,
    labels: Labels,
}

impl RunMeta {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `source` (the producer, e.g. `choco`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `source` when empty, over 256 bytes, or holding
    /// whitespace.
    pub fn with_source(mut self, source: impl Into<String>) -> Result<Self, Error> {
        let source = source.into();
        validate_token("source", &source)?;
        self.source = Some(source);
        Ok(self)
    }

    /// Sets the run's graph (the DAG, `graph.json`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `graph` when it is not an object or array, or has no
    /// canonical form.
    pub fn with_graph(mut self, graph: Value) -> Result<Self, Error> {
        if !(graph.is_object() || graph.is_array()) {
            return Err(Error::invalid("graph", "must be a JSON object or array"));
        }
        let canonical = canonical_json("graph", &graph)?.into();
        self.graph = Some((graph, canonical));
        Ok(self)
    }

    /// Adds a label.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `labels` when the key is empty or over 128 bytes, or the
    /// value over 1024 bytes.
    pub fn with_label(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, Error> {
        let (key, value) = (key.into(), value.into());
        if key.is_empty() || key.len() > 128 {
            return Err(Error::invalid("labels", "keys must be 1–128 bytes"));
        }
        if value.len() > 1024 {
            return Err(Error::invalid("labels", format!("value of {key:?} is over 1024 bytes")));
        }
        self.labels.insert(key, value);
        Ok(self)
    }

    /// Reads metadata from a JSON object with optional `source`, `graph`, `labels`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the wrong field, or any unknown field.
    pub fn from_json(fields: Map<String, Value>) -> Result<Self, Error> {
        let mut meta = RunMeta::new();
        for (key, value) in fields {
            meta = match (key.as_str(), value) {
                (_, Value::Null) => meta,
                ("source", Value::String(s)) => meta.with_source(s)?,
                ("source", _) => return Err(Error::invalid("source", "must be a string")),
                ("graph", v) => meta.with_graph(v)?,
                ("labels", Value::Object(labels)) => {
                    let mut m = meta;
                    for (k, v) in labels {
                        let Value::String(v) = v else {
                            return Err(Error::invalid(
                                "labels",
                                format!("value of {k:?} must be a string"),
                            ));
                        };
                        m = m.with_label(k, v)?;
                    }
                    m
                }
                ("labels", _) => {
                    return Err(Error::invalid("labels", "must be an object of strings"));
                }
                (other, _) => {
                    return Err(Error::invalid(
                        other,
                        "is not a run metadata field (source, graph, labels)",
                    ));
                }
            };
        }
        Ok(meta)
    }

    /// Rebuilds stored metadata: `graph` is the stored canonical JSON text.
    ///
    /// # Errors
    /// [`Error::Integrity`] ([`Error::corrupt`]) when the stored graph is not JSON: a corrupt
    /// store, never the caller's input.
    pub fn from_stored(
        source: Option<String>,
        graph: Option<&str>,
        labels: Labels,
    ) -> Result<Self, Error> {
        let mut meta = RunMeta { source, graph: None, labels };
        if let Some(text) = graph {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| Error::corrupt("stored graph", format!("not JSON: {e}")))?;
            meta.graph = Some((value, text.into()));
        }
        Ok(meta)
    }

    /// The source, if set.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The graph, if set.
    pub fn graph(&self) -> Option<&Value> {
        self.graph.as_ref().map(|(v, _)| v)
    }

    /// The graph's canonical JSON, if set: what backends store.
    pub fn graph_canonical(&self) -> Option<&str> {
        self.graph.as_ref().map(|(_, c)| &**c)
    }

    /// The labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.source.is_none() && self.graph.is_none() && self.labels.is_empty()
    }

    /// Merges `incoming` into `self` under the set-once rule: fields absent here are taken,
    /// equal fields are a no-op, a different field is an error `(field, stored, incoming)`.
    /// Returns whether anything changed. On error `self` is unchanged.
    pub(crate) fn merge(&mut self, incoming: &RunMeta) -> Result<bool, (String, String, String)> {
        if let (Some(a), Some(b)) = (&self.source, &incoming.source)
            && a != b
        {
            return Err(("source".into(), a.clone(), b.clone()));
        }
        if let (Some((_, a)), Some((_, b))) = (&self.graph, &incoming.graph)
            && a != b
        {
            return Err(("graph".into(), a.to_string(), b.to_string()));
        }
        for (k, v) in &incoming.labels {
            if let Some(stored) = self.labels.get(k)
                && stored != v
            {
                return Err((format!("labels.{k}"), stored.clone(), v.clone()));
            }
        }
        let mut changed = false;
        if self.source.is_none() && incoming.source.is_some() {
            self.source.clone_from(&incoming.source);
            changed = true;
        }
        if self.graph.is_none() && incoming.graph.is_some() {
            self.graph.clone_from(&incoming.graph);
            changed = true;
        }
        for (k, v) in &incoming.labels {
            if !self.labels.contains_key(k) {
                self.labels.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn body_requires_ts_and_to() {
        let field = |v: Value| match TransitionBody::new(obj(v)) {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        assert_eq!(field(json!({"to": "running"})), "ts");
        assert_eq!(field(json!({"ts": "yesterday", "to": "running"})), "ts");
        assert_eq!(field(json!({"ts": "2026-01-01T00:00:00Z"})), "to");
        assert_eq!(field(json!({"ts": "2026-01-01T00:00:00Z", "to": 3})), "to");
        assert_eq!(field(json!({"ts": "2026-01-01T00:00:00Z", "to": "x", "attrs": []})), "attrs");
        assert_eq!(field(json!({"ts": "2026-01-01T00:00:00Z", "to": "x", "node": 1})), "node");
    }

    #[test]
    fn unknown_fields_are_kept_and_hashed() {
        let a =
            TransitionBody::new(obj(json!({"ts": "2026-01-01T00:00:00Z", "to": "x", "extra": 1})))
                .unwrap();
        let b = TransitionBody::new(obj(json!({"ts": "2026-01-01T00:00:00Z", "to": "x"}))).unwrap();
        assert_eq!(a.fields()["extra"], json!(1));
        assert_ne!(a.content_hash(), b.content_hash());
    }

    #[test]
    fn transition_from_json_strips_run_id_and_seq() {
        let t = Transition::from_json(obj(
            json!({"run_id": "r", "seq": 3, "ts": "2026-01-01T00:00:00+02:00", "to": "done"}),
        ))
        .unwrap();
        assert_eq!((t.run_id.as_str(), t.seq.get()), ("r", 3));
        assert!(!t.body.fields().contains_key("seq"));
        assert_eq!(t.body.canonical_json(), r#"{"to":"done","ts":"2026-01-01T00:00:00+02:00"}"#);
        let neg = Transition::from_json(obj(
            json!({"run_id": "r", "seq": -1, "ts": "2026-01-01T00:00:00Z", "to": "x"}),
        ));
        assert!(matches!(neg, Err(Error::InvalidInput { field, .. }) if field == "seq"));
    }

    /// A stored graph that is not JSON is a corrupt store, not the caller's input: the
    /// corrupt variant (a 500 over HTTP), never `InvalidInput` (a 400 blaming the client).
    #[test]
    fn a_corrupt_stored_graph_is_integrity_not_invalid_input() {
        let err = RunMeta::from_stored(None, Some("{not json"), Labels::new()).unwrap_err();
        assert!(
            matches!(&err, Error::Integrity { message, .. } if message.contains("stored graph")),
            "{err:?}"
        );
        let ok = RunMeta::from_stored(Some("choco".into()), Some(r#"{"n":[1]}"#), Labels::new());
        assert_eq!(ok.unwrap().graph_canonical(), Some(r#"{"n":[1]}"#));
    }

    #[test]
    fn metadata_is_set_once() {
        let mut stored = RunMeta::new().with_source("choco").unwrap();
        let same = RunMeta::new().with_source("choco").unwrap().with_label("ci", "gh").unwrap();
        assert_eq!(stored.merge(&same), Ok(true));
        assert_eq!(stored.merge(&same), Ok(false));
        let other = RunMeta::new().with_source("stratt").unwrap();
        assert!(stored.merge(&other).is_err());
        assert_eq!(stored.source(), Some("choco"));
    }
}
