//! Append batches: per run, optional metadata and transitions with contiguous seqs. A batch
//! that breaks these rules cannot be built.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::hash::{Digest, chain_link};
use crate::id::{RunId, Seq};
use crate::transition::{RunMeta, Transition, TransitionBody};

/// What one run receives in a batch: metadata, and transitions `[start, start + len)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunAppend {
    run_id: RunId,
    meta: RunMeta,
    start: Seq,
    bodies: Vec<TransitionBody>,
    ahead: ChainAhead,
}

/// The chain links of a run's transitions computed before the append, off the store's writer,
/// from an expected link before them (see [`BatchBuilder::chain_ahead`]). Derived from the
/// bodies alone, so it is never part of what a batch is: two batches that differ only here are
/// equal.
#[derive(Clone, Debug, Default)]
struct ChainAhead(Option<(Digest, Vec<Digest>)>);

impl PartialEq for ChainAhead {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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

    /// The chain links of [`bodies`](Self::bodies), one per body, when they were computed
    /// ahead ([`BatchBuilder::chain_ahead`]) from `before`, the link before the first one;
    /// `None` otherwise (then whoever needs them computes them).
    pub fn links_ahead(&self, before: &Digest) -> Option<&[Digest]> {
        self.chained_ahead().and_then(|(from, links)| (from == before).then_some(links))
    }

    /// The links computed ahead ([`BatchBuilder::chain_ahead`]) and the link they were
    /// computed from, whatever the store holds: for a backend that writes the rows before it
    /// has read its stored link, on the condition that the link is that one.
    pub fn chained_ahead(&self) -> Option<(&Digest, &[Digest])> {
        match &self.ahead.0 {
            Some((from, links)) if links.len() == self.bodies.len() => Some((from, links)),
            _ => None,
        }
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
        Self::from_ndjson_bytes(text.as_bytes())
    }

    /// Builds a batch from NDJSON bytes, reading the lines as `POST /v1/ingest/transitions`
    /// reads a body's (its limits on size and runs aside): lines end at `\n` (a `\r` before
    /// it is whitespace), blank lines are ignored, a line that is not UTF-8 is refused.
    ///
    /// # Errors
    /// The first invalid line's [`Error::InvalidInput`], its message starting `line N:`.
    pub fn from_ndjson_bytes(body: &[u8]) -> Result<Self, Error> {
        let mut builder = BatchBuilder::new();
        let mut reader = LineReader::new();
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            let at_line = |e: Error| match e {
                Error::InvalidInput { field, message } => {
                    Error::InvalidInput { field, message: format!("line {}: {message}", i + 1) }
                }
                other => other,
            };
            if let Some(parsed) = reader.read(line).map_err(at_line)? {
                builder.push(parsed).map_err(at_line)?;
            }
        }
        Ok(builder.build())
    }
}

/// Reads a body's lines one after another, as `POST /v1/ingest/transitions` reads them: a
/// line naming the run the transition before it named shares that run's id (see
/// [`NdjsonLine::parse_after`]).
#[derive(Debug, Default)]
pub struct LineReader {
    /// The run the last transition named (the next line most likely names it too).
    last_run: Option<RunId>,
}

impl LineReader {
    /// A reader at a body's first line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one line's bytes (without its `\n`; a `\r` before it is whitespace): `None`
    /// for a blank line.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field, or `line` when it is not UTF-8.
    pub fn read(&mut self, line: &[u8]) -> Result<Option<NdjsonLine>, Error> {
        let text =
            std::str::from_utf8(line).map_err(|_| Error::invalid("line", "is not valid UTF-8"))?;
        let parsed = NdjsonLine::parse_after(text, self.last_run.as_ref())?;
        if let Some(NdjsonLine::Transition(t)) = &parsed
            && self.last_run.as_ref() != Some(&t.run_id)
        {
            self.last_run = Some(t.run_id.clone());
        }
        Ok(parsed)
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
        Self::parse_after(line, None)
    }

    /// As [`parse`](Self::parse), for a line following one of run `previous`: a line naming
    /// that run again shares its id instead of copying it (a chunk names its run on every
    /// line). The result is the same as `parse`'s.
    ///
    /// # Errors
    /// As [`parse`](Self::parse).
    pub fn parse_after(line: &str, previous: Option<&RunId>) -> Result<Option<Self>, Error> {
        // A line in the wire form (what KAHN's own clients send) is read in place; any other
        // line, and every error, the general way.
        if let Some(t) = crate::wire_read::transition(line, previous) {
            return Ok(Some(NdjsonLine::Transition(t)));
        }
        // A transition a producer wrote (members in any order, whitespace) is canonicalised as
        // it is scanned, when every value is in its canonical spelling.
        if let Some(read) = crate::wire_read::any_order(line)
            && let (Some(run_id), Some(seq)) = (read.run_id, read.seq)
            && let (Ok(run_id), Ok(seq)) = (same_run_or_new(previous, run_id), Seq::new(seq))
        {
            return Ok(Some(NdjsonLine::Transition(Transition { run_id, seq, body: read.body })));
        }
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

/// `previous` when it is the run `id` names (a body's lines mostly name one run: no new
/// id is validated and allocated per line), else `id` validated.
fn same_run_or_new(previous: Option<&RunId>, id: &str) -> Result<RunId, Error> {
    match previous {
        Some(p) if p.as_str() == id => Ok(p.clone()),
        _ => RunId::new(id),
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

/// Parses `text` as one JSON value, refusing duplicate object keys at any depth, and numbers
/// no double holds.
///
/// RFC 8785 canonicalisation is defined only for I-JSON (RFC 7493), which forbids duplicate
/// member names: parsers disagree on them (first wins, last wins, error), so a producer
/// hashing its own log with another parser could compute another chain than the one KAHN
/// stores. Refusing them keeps "the stored content is what was sent" true for every reader.
/// Nesting is bounded by serde_json's recursion limit (128), refused as `json`.
///
/// I-JSON numbers are IEEE-754 doubles. A literal beyond the largest (`1e400`) or non-zero
/// but below half the smallest subnormal (`1e-400`) has none: it would be stored as infinity
/// or as `0`, silently another value. Both are refused naming the body's top-level field
/// (see [`unrepresentable_number`]). A literal that rounds to a nearby double (`0.1`, a
/// subnormal such as `3e-324` → `5e-324`) is stored as that double, like every JSON number.
fn parse_strict_json(text: &str) -> Result<Value, Error> {
    use serde::de::DeserializeSeed;
    let zero_float = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed =
        Strict { zero_float: &zero_float }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        // Only a zero that came from a literal with a fraction or an exponent can be an
        // underflow: the text is scanned again only then (rarely), never on the common path.
        Ok(value) if zero_float.get() => match unrepresentable_number(text) {
            Some(refusal) => Err(refusal),
            None => Ok(value),
        },
        Ok(value) => Ok(value),
        Err(e) if e.to_string().starts_with("number out of range") => {
            Err(unrepresentable_number(text)
                .unwrap_or_else(|| Error::invalid("json", format!("not valid JSON: {e}"))))
        }
        Err(e) => Err(Error::invalid("json", format!("not valid JSON: {e}"))),
    }
}

/// Reads one JSON value the way [`parse_json_object`] reads a line (duplicate keys and numbers
/// no double holds refused), whatever its type: for documents beside the lines, such as a
/// run's `graph.json`.
///
/// # Errors
/// [`Error::InvalidInput`] naming `json`, or the top-level field holding a number no double
/// holds.
pub fn parse_json(text: &str) -> Result<Value, Error> {
    parse_strict_json(text)
}

/// The first number literal of `text` (JSON) that no double holds — beyond ±`f64::MAX`, or
/// non-zero but rounding to zero — as an [`Error::InvalidInput`] naming the top-level key it
/// sits under (`json` when the text is not an object).
///
/// A small scanner over the text: strings are skipped whole (escapes included), the key of
/// each top-level member remembered, and each number literal checked with Rust's correctly
/// rounded `f64` parser (the same rounding serde_json applies with `float_roundtrip`).
fn unrepresentable_number(text: &str) -> Option<Error> {
    let bytes = text.as_bytes();
    let (mut i, mut depth, mut expect_key) = (0usize, 0u32, false);
    let mut top_is_object = false;
    let mut field: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && top_is_object && expect_key {
                    let raw = text.get(start..=i.min(bytes.len() - 1)).unwrap_or_default();
                    field = serde_json::from_str::<String>(raw).ok();
                    expect_key = false;
                }
                i += 1;
            }
            open @ (b'{' | b'[') => {
                if depth == 0 {
                    top_is_object = open == b'{';
                }
                depth += 1;
                expect_key = depth == 1 && open == b'{';
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                expect_key = depth == 1 && top_is_object;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal = text.get(start..i).unwrap_or_default();
                let Ok(value) = literal.parse::<f64>() else { continue };
                let significand = literal.split(['e', 'E']).next().unwrap_or_default();
                let why = if value.is_infinite() {
                    "is beyond the largest double (about 1.8e308)"
                } else if value == 0.0 && significand.bytes().any(|b| matches!(b, b'1'..=b'9')) {
                    "is not 0 but below the smallest double (5e-324): it would be stored as 0"
                } else {
                    continue;
                };
                let shown = if literal.len() > 40 {
                    format!("{}…({} characters)", &literal[..32], literal.len())
                } else {
                    literal.to_owned()
                };
                let name = if top_is_object { field.clone() } else { None };
                return Some(Error::invalid(
                    name.unwrap_or_else(|| "json".to_owned()),
                    format!("{shown} {why}; send it as a string"),
                ));
            }
            _ => i += 1,
        }
    }
    None
}

/// A `serde_json::Value` that refuses duplicate keys while it is built, and notes whether a
/// float parsed to zero (a possible underflow, checked against the text afterwards).
#[derive(Clone, Copy)]
struct Strict<'a> {
    zero_float: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict<'_> {
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
        if v == 0.0 {
            self.zero_float.set(true);
        }
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
        while let Some(v) = seq.next_element_seed(self)? {
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
            let v = map.next_value_seed(self)?;
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
    /// Looked up once per line: foldhash, seeded per process (see `touched_nodes`).
    index: foldhash::HashMap<RunId, usize>,
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
                    ahead: ChainAhead::default(),
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
        // Links computed before this body no longer cover the run's transitions.
        run.ahead = ChainAhead::default();
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

    /// Computes the chain links of each run's transitions ahead of the append, so the store's
    /// writer, which every append of a store waits on, need not: the caller (a pusher's
    /// reading thread, a server's request) does it while the writer works on something else.
    ///
    /// `before(run, start)` names the link the caller expects before the run's first
    /// transition, at seq `start` (the chain head it last saw or computed for the run; for
    /// `start` 0 that is [`Digest::ZERO`]), or `None` to leave the run alone. A backend uses
    /// the links only when its stored link before `start` is that one
    /// ([`RunAppend::links_ahead`]), so a wrong guess costs the work, never correctness.
    ///
    /// Returns, per run computed, its id, the seq after its last transition and the link
    /// there: what the caller expects before the run's next chunk.
    pub fn chain_ahead(
        &mut self,
        mut before: impl FnMut(&RunId, u64) -> Option<Digest>,
    ) -> Vec<(RunId, u64, Digest)> {
        let mut tips = Vec::new();
        for run in self.runs.iter_mut().filter(|r| !r.bodies.is_empty()) {
            let Some(from) = before(&run.run_id, run.start.get()) else { continue };
            let mut prev = from;
            let links = run
                .bodies
                .iter()
                .map(|b| {
                    prev = chain_link(&prev, &b.content_hash());
                    prev
                })
                .collect();
            run.ahead = ChainAhead(Some((from, links)));
            tips.push((run.run_id.clone(), run.end(), prev));
        }
        tips
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

    fn refusal(line: &str) -> (String, String) {
        match NdjsonLine::parse(line) {
            Err(Error::InvalidInput { field, message }) => (field.to_string(), message),
            other => panic!("{line} must be refused, got {other:?}"),
        }
    }

    /// Regression (red team, round two): `1e-400` was stored as `0`. A non-zero literal no
    /// double holds is refused naming the top-level field, like one beyond the largest double
    /// (which used to be refused naming only `json`).
    #[test]
    fn numbers_that_underflow_or_overflow_are_refused_naming_the_field() {
        let zeros = "0".repeat(400);
        for number in [
            "1e-400",
            "-1e-400",
            "2e-324",
            "0.9e-324",
            &format!("0.{zeros}1"),
            &format!("1{zeros}"),
            "1e400",
            "-1.5e309",
        ] {
            let line =
                format!(r#"{{"run_id":"a","seq":0,{T},"attrs":{{"k":[0.0,{{"x":{number}}}]}}}}"#);
            let (field, message) = refusal(&line);
            assert_eq!(field, "attrs", "{number}: {message}");
            assert!(message.contains("double") && message.contains("string"), "{message}");
            assert!(message.len() < 200, "a long literal is shortened: {message}");
        }
        // Named by the top-level key even when it is escaped, in a metadata line too, and as
        // `json` where there is no key.
        let escaped = format!(r#"{{"run_id":"a","seq":0,{T},"\u0061ttrs":{{"k":1e-400}}}}"#);
        assert_eq!(refusal(&escaped).0, "attrs");
        assert_eq!(refusal(r#"{"kind":"run","run_id":"a","graph":[1,1e-999]}"#).0, "graph");
        assert_eq!(refusal(&format!(r#"{{"run_id":"a","seq":1e999,{T}}}"#)).0, "seq");
        for top in ["1e-400", "[0.5,[1e-400]]", "1e400"] {
            assert!(
                matches!(parse_json(top), Err(Error::InvalidInput { field, .. }) if field == "json"),
                "{top}"
            );
        }
        assert_eq!(parse_json("[0.0, 1e-300]").unwrap(), serde_json::json!([0.0, 1e-300]));
    }

    #[test]
    fn zeros_subnormals_and_look_alikes_in_strings_are_kept() {
        for number in [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "0e5",
            "0.000e-999",
            "0E+400",
            "5e-324",
            "3e-324",
            "2.5e-324",
            "1e-300",
            "1.7976931348623157e308",
        ] {
            let line = format!(r#"{{"run_id":"a","seq":0,{T},"attrs":{{"k":{number}}}}}"#);
            let Some(NdjsonLine::Transition(t)) = NdjsonLine::parse(&line).unwrap() else {
                panic!()
            };
            let stored = t.body.fields()["attrs"]["k"].as_f64().unwrap();
            assert_eq!(stored, number.parse::<f64>().unwrap(), "{number}");
        }
        // A zero sends the text to the scanner: numbers spelled inside strings (escaped
        // quotes and backslashes around them) are not numbers.
        let line = format!(
            r#"{{"run_id":"a","seq":0,{T},"attrs":{{"z":0.0,"s":"\"1e-400\\","1e-400":"x\\\"1e400"}}}}"#
        );
        assert!(NdjsonLine::parse(&line).is_ok(), "{line}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any decimal literal is either stored as exactly the double Rust's correctly rounded
        /// parser reads from it, or refused naming `attrs` — and refused exactly when that
        /// double is infinite, or zero from a non-zero literal.
        #[test]
        fn a_number_is_stored_as_its_double_or_refused_when_it_has_none(
            negative in proptest::prelude::any::<bool>(),
            int in "(0|[1-9][0-9]{0,3})",
            frac in proptest::option::of("[0-9]{1,6}"),
            exp in proptest::option::of(-800i32..800),
        ) {
            let mut literal = format!("{}{int}", if negative { "-" } else { "" });
            if let Some(f) = &frac {
                literal.push('.');
                literal.push_str(f);
            }
            if let Some(e) = exp {
                literal.push_str(&format!("e{e}"));
            }
            let want = literal.parse::<f64>().unwrap();
            let nonzero =
                literal.split('e').next().unwrap().bytes().any(|b| matches!(b, b'1'..=b'9'));
            let no_double = want.is_infinite() || (want == 0.0 && nonzero);
            // (The canonicaliser's own refusal: whole doubles JCS would print as digits beyond
            // 2^53.)
            let inexact_whole =
                want.fract() == 0.0 && want.abs() > 9_007_199_254_740_992.0 && want.abs() < 1e21;
            let line =
                format!(r#"{{"run_id":"a","seq":0,{T},"attrs":{{"z":0.0,"k":{literal}}}}}"#);
            match NdjsonLine::parse(&line) {
                Ok(Some(NdjsonLine::Transition(t))) => {
                    proptest::prop_assert!(!no_double && !inexact_whole, "{literal} accepted");
                    let v = &t.body.fields()["attrs"]["k"];
                    proptest::prop_assert_eq!(v.as_f64(), Some(want), "{}", literal);
                }
                Err(Error::InvalidInput { field, message }) => {
                    proptest::prop_assert_eq!(field.to_string(), "attrs", "{}", message);
                    proptest::prop_assert!(no_double || inexact_whole, "{literal}: {message}");
                    proptest::prop_assert_eq!(
                        no_double,
                        message.contains("double ("),
                        "{}: {}",
                        literal,
                        message
                    );
                }
                other => proptest::prop_assert!(false, "{literal}: {other:?}"),
            }
        }
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
