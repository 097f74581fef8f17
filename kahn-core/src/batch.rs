//! Append batches: per run, optional metadata and transitions with contiguous seqs. A batch
//! that breaks these rules cannot be built.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::error::Error;
use crate::id::{RunId, Seq};
use crate::transition::{RunMeta, Transition, TransitionBody};

/// What one run receives in a batch: metadata, and transitions `[start, start + len)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunAppend {
    run_id: RunId,
    meta: RunMeta,
    start: Seq,
    bodies: Vec<TransitionBody>,
}

impl RunAppend {
    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Metadata to set (possibly empty).
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// The first seq (meaningless when there are no transitions).
    pub fn start(&self) -> u64 {
        self.start.get()
    }

    /// One past the last seq.
    pub fn end(&self) -> u64 {
        self.start.get() + self.bodies.len() as u64
    }

    /// The transitions' bodies, in seq order from [`start`](Self::start).
    pub fn bodies(&self) -> &[TransitionBody] {
        &self.bodies
    }
}

/// One call to [`StorageBackend::append`](crate::StorageBackend::append): runs in the order
/// they first appear. Applied in one transaction: all runs or none.
///
/// Immutable once built, and cheap to clone (shared), so a backend can hand it to the thread
/// that owns its connection without copying transitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendBatch {
    runs: std::sync::Arc<[RunAppend]>,
}

impl AppendBatch {
    /// The runs.
    pub fn runs(&self) -> &[RunAppend] {
        &self.runs
    }

    /// True when the batch holds no run.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Total transitions over all runs.
    pub fn transition_count(&self) -> usize {
        self.runs.iter().map(|r| r.bodies.len()).sum()
    }

    /// Builds a batch from NDJSON text (see [`NdjsonLine`]). Blank lines are ignored.
    ///
    /// # Errors
    /// The first invalid line's [`Error::InvalidInput`], its message starting `line N:`.
    pub fn from_ndjson(text: &str) -> Result<Self, Error> {
        let mut builder = BatchBuilder::new();
        for (i, line) in text.lines().enumerate() {
            let at_line = |e: Error| match e {
                Error::InvalidInput { field, message } => {
                    Error::InvalidInput { field, message: format!("line {}: {message}", i + 1) }
                }
                other => other,
            };
            if let Some(parsed) = NdjsonLine::parse(line).map_err(at_line)? {
                builder.push(parsed).map_err(at_line)?;
            }
        }
        Ok(builder.build())
    }
}

/// One parsed NDJSON line: a transition, or run metadata (`"kind": "run"`).
#[derive(Clone, Debug, PartialEq)]
pub enum NdjsonLine {
    /// `{"run_id", "seq", "ts", "to", …}`.
    Transition(Transition),
    /// `{"kind": "run", "run_id", "source"?, "graph"?, "labels"?}`.
    Run {
        /// The run.
        run_id: RunId,
        /// Its metadata.
        meta: RunMeta,
    },
}

impl NdjsonLine {
    /// Parses one line. A blank line is `Ok(None)`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: `json` when the line is not JSON, `line`
    /// when it is not an object, `kind` when unknown, or the transition's/metadata's field.
    pub fn parse(line: &str) -> Result<Option<Self>, Error> {
        if line.trim().is_empty() {
            return Ok(None);
        }
        Self::from_object(parse_json_object(line)?).map(Some)
    }

    /// Reads a line already parsed into its JSON object (see [`parse_json_object`]).
    ///
    /// # Errors
    /// As [`parse`](Self::parse), for the fields.
    pub fn from_object(mut fields: Map<String, Value>) -> Result<Self, Error> {
        match fields.remove("kind") {
            None => Ok(NdjsonLine::Transition(Transition::from_json(fields)?)),
            Some(Value::String(kind)) if kind == "run" => {
                let run_id = match fields.remove("run_id") {
                    Some(Value::String(s)) => RunId::new(s)?,
                    Some(_) => return Err(Error::invalid("run_id", "must be a string")),
                    None => return Err(Error::invalid("run_id", "is required")),
                };
                Ok(NdjsonLine::Run { run_id, meta: RunMeta::from_json(fields)? })
            }
            Some(other) => Err(Error::invalid(
                "kind",
                format!("{other} is not a line kind (omit it for a transition, or \"run\")"),
            )),
        }
    }
}

/// Parses one NDJSON line as a JSON object, as KAHN reads every line it is sent: duplicate
/// keys are refused at any depth (see below), and so is anything after the object.
///
/// # Errors
/// [`Error::InvalidInput`] naming `json` when the text is not JSON (or repeats a key), or
/// `line` when it is JSON but not an object.
pub fn parse_json_object(text: &str) -> Result<Map<String, Value>, Error> {
    match parse_strict_json(text)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(Error::invalid("line", "must be a JSON object")),
    }
}

/// Parses `text` as one JSON value, refusing duplicate object keys at any depth.
///
/// RFC 8785 canonicalisation is defined only for I-JSON (RFC 7493), which forbids duplicate
/// member names: parsers disagree on them (first wins, last wins, error), so a producer
/// hashing its own log with another parser could compute another chain than the one KAHN
/// stores. Refusing them keeps "the stored content is what was sent" true for every reader.
/// Nesting is bounded by serde_json's recursion limit (128), refused as `json`.
fn parse_strict_json(text: &str) -> Result<Value, Error> {
    use serde::Deserialize;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictJson::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v.0))
        .map_err(|e| Error::invalid("json", format!("not valid JSON: {e}")))?;
    Ok(value)
}

/// A `serde_json::Value` that refuses duplicate keys while it is built.
struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let StrictJson(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Groups transitions and metadata into an [`AppendBatch`], checking as it goes that each
/// run's seqs ascend contiguously with no duplicates and its metadata lines agree.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    runs: Vec<RunAppend>,
    index: HashMap<RunId, usize>,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn run_mut(&mut self, run_id: &RunId) -> &mut RunAppend {
        // Looked up before inserting: a chunk names one run thousands of times, and the
        // entry API would clone the id for every one of them.
        let i = match self.index.get(run_id) {
            Some(&i) => i,
            None => {
                self.runs.push(RunAppend {
                    run_id: run_id.clone(),
                    meta: RunMeta::new(),
                    start: Seq::ZERO,
                    bodies: Vec::new(),
                });
                self.index.insert(run_id.clone(), self.runs.len() - 1);
                self.runs.len() - 1
            }
        };
        &mut self.runs[i]
    }

    /// How many distinct runs the lines so far name.
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Adds a parsed line.
    ///
    /// # Errors
    /// As [`push_transition`](Self::push_transition) and [`push_meta`](Self::push_meta).
    pub fn push(&mut self, line: NdjsonLine) -> Result<(), Error> {
        match line {
            NdjsonLine::Transition(t) => self.push_transition(t),
            NdjsonLine::Run { run_id, meta } => self.push_meta(&run_id, &meta),
        }
    }

    /// Adds a transition; it must carry the next seq of its run within this batch.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `seq` for a duplicate or non-contiguous seq.
    pub fn push_transition(&mut self, t: Transition) -> Result<(), Error> {
        let run = self.run_mut(&t.run_id);
        if run.bodies.is_empty() {
            run.start = t.seq;
        } else {
            let next = run.end();
            let seq = t.seq.get();
            if seq != next {
                let why = if seq >= run.start.get() && seq < next {
                    format!("duplicate seq {seq} for run {} in one batch", t.run_id)
                } else {
                    format!(
                        "seqs of run {} must be contiguous: expected {next}, got {seq}",
                        t.run_id
                    )
                };
                return Err(Error::invalid("seq", why));
            }
            if seq > Seq::MAX.get() - 1 {
                return Err(Error::invalid("seq", "run would exceed the largest seq"));
            }
        }
        run.bodies.push(t.body);
        Ok(())
    }

    /// Adds run metadata; several metadata lines for one run must agree.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field two lines disagree on.
    pub fn push_meta(&mut self, run_id: &RunId, meta: &RunMeta) -> Result<(), Error> {
        let run = self.run_mut(run_id);
        run.meta.merge(meta).map(|_| ()).map_err(|(field, _, _)| {
            Error::invalid(field, format!("two metadata lines for run {run_id} disagree"))
        })
    }

    /// The batch.
    pub fn build(self) -> AppendBatch {
        AppendBatch { runs: self.runs.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = r#""ts":"2026-01-01T00:00:00Z","to":"x""#;

    /// Regression (reliability battery): duplicate keys were silently last-wins; they are
    /// refused at any depth, so no reader can disagree on what was hashed.
    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for line in [
            format!(r#"{{"run_id":"a","seq":0,{T},"to":"y"}}"#),
            format!(r#"{{"run_id":"a","run_id":"b","seq":0,{T}}}"#),
            format!(r#"{{"run_id":"a","seq":0,{T},"attrs":{{"k":1,"k":1}}}}"#),
            format!(r#"{{"run_id":"a","seq":0,{T},"attrs":{{"l":[{{"k":1,"k":2}}]}}}}"#),
            r#"{"kind":"run","run_id":"a","labels":{"x":"1","x":"2"}}"#.to_owned(),
        ] {
            let err = NdjsonLine::parse(&line).expect_err(&line);
            assert!(
                matches!(&err, Error::InvalidInput { field, message }
                    if field == "json" && message.contains("duplicate key")),
                "{line}: {err}"
            );
        }
        // Equal keys in different objects are fine, and values parse as before.
        let ok = format!(
            r#"{{"run_id":"a","seq":0,{T},"attrs":{{"k":{{"k":[1,-2,3.5e2,null,true,"s"]}}}}}}"#
        );
        let Some(NdjsonLine::Transition(t)) = NdjsonLine::parse(&ok).unwrap() else { panic!() };
        // (3.5e2 reads back as its canonical text, 350.)
        assert_eq!(
            t.body.fields()["attrs"]["k"]["k"],
            serde_json::json!([1, -2, 350, null, true, "s"])
        );
        // Trailing content after the value is still refused.
        assert!(NdjsonLine::parse(&format!("{ok} {{}}")).is_err());
    }

    #[test]
    fn groups_runs_in_order_of_appearance() {
        let text = format!(
            "{{\"run_id\":\"b\",\"seq\":5,{T}}}\n\n{{\"kind\":\"run\",\"run_id\":\"a\",\"source\":\"s\"}}\n{{\"run_id\":\"b\",\"seq\":6,{T}}}\n"
        );
        let batch = AppendBatch::from_ndjson(&text).unwrap();
        let ids: Vec<_> = batch.runs().iter().map(|r| r.run_id().as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!((batch.runs()[0].start(), batch.runs()[0].end()), (5, 7));
        assert_eq!(batch.runs()[1].meta().source(), Some("s"));
    }

    #[test]
    fn refuses_duplicate_and_non_contiguous_seqs() {
        for seqs in [[0, 0], [0, 2], [3, 1]] {
            let text = format!(
                "{{\"run_id\":\"r\",\"seq\":{},{T}}}\n{{\"run_id\":\"r\",\"seq\":{},{T}}}",
                seqs[0], seqs[1]
            );
            let err = AppendBatch::from_ndjson(&text).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field, message } if field == "seq" && message.starts_with("line 2:")),
                "{err}"
            );
        }
    }

    #[test]
    fn refuses_non_objects_and_unknown_kinds() {
        for (line, field) in [
            ("[1]", "line"),
            ("3", "line"),
            ("{", "json"),
            (r#"{"kind":"x","run_id":"r"}"#, "kind"),
        ] {
            let err = AppendBatch::from_ndjson(line).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field: f, .. } if f == field),
                "{line}: {err}"
            );
        }
    }
}
