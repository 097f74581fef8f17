//! The NDJSON wire form, written (DESIGN.md "HTTP API"): the one encoder behind every line KAHN
//! writes — the HTTP client's append bodies, the server's NDJSON reads, `kahn export`, and the
//! pusher's chunk sizing — so the bytes a pusher counts are the bytes it sends. Reading is
//! [`NdjsonLine::parse`] and [`AppendBatch::from_ndjson`].
//!
//! Every line is one JSON object followed by `\n`:
//!
//! - a transition: `{"run_id":…,"seq":…,` then the body's canonical members (so the body is, byte
//!   for byte, what was hashed);
//! - run metadata: `{"kind":"run","run_id":…` then `"source"`, `"graph"` (canonical) and
//!   `"labels"` when set.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::batch::{AppendBatch, NdjsonLine};
use crate::id::RunId;
use crate::model::StoredTransition;
use crate::transition::{RunMeta, TransitionBody};

/// A transition line read by [`read_transition`]: the `run_id` and `seq` it named, if it
/// named them, and its validated, hashed body.
#[derive(Debug)]
#[non_exhaustive]
pub struct TransitionLine<'a> {
    /// The line's `run_id`, as written (not yet checked to be a valid run id).
    pub run_id: Option<&'a str>,
    /// The line's `seq`, when it named one.
    pub seq: Option<u64>,
    /// The body: every other member, canonical, with its content hash.
    pub body: TransitionBody,
}

/// Reads a transition line without building a JSON tree, when it can: members in any order,
/// insignificant whitespace, `run_id` and `seq` optional (a run file's lines may omit them),
/// every value in its RFC 8785 spelling (strings escaped only as JCS escapes them, numbers in
/// their shortest form). The body is written canonically as the line is scanned.
///
/// `None` means "read it the general way" ([`parse_json_object`](crate::parse_json_object)
/// and [`TransitionBody::new`]), which alone decides what is invalid and why: a line this
/// accepts reads the same both ways (a property test and the `ndjson` fuzz target hold it
/// to that), and a line it declines may still be valid (an escaped key, `1.0`, a metadata
/// line).
pub fn read_transition(line: &str) -> Option<TransitionLine<'_>> {
    crate::wire_read::any_order(line).map(|r| TransitionLine {
        run_id: r.run_id,
        seq: r.seq,
        body: r.body,
    })
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // A `Value`'s `Display` is its compact JSON and cannot fail.
    let _ = write!(out, "{}", Value::from(s));
}

/// Appends the opening of a transition line, up to and including the comma after `seq`. A
/// run id's characters (`[A-Za-z0-9._:-]`) need no escape in a JSON string.
fn push_transition_head(out: &mut String, run_id: &RunId, seq: u64) {
    out.push_str("{\"run_id\":\"");
    out.push_str(run_id.as_str());
    let _ = write!(out, "\",\"seq\":{seq},");
}

/// Appends members `{…}` without their opening brace (an empty object closes the line).
fn push_members(out: &mut String, object: &str) {
    match object.strip_prefix('{') {
        Some("}") | None => {
            // Only `{}` (or nothing) has no member: drop the comma the head left.
            if out.ends_with(',') {
                out.pop();
            }
            out.push('}');
        }
        Some(members) => out.push_str(members),
    }
    out.push('\n');
}

/// Appends the metadata line of `run_id` (with its newline), whatever `meta` holds.
pub fn write_run(out: &mut String, run_id: &RunId, meta: &RunMeta) {
    out.push_str("{\"kind\":\"run\",\"run_id\":");
    push_json_str(out, run_id.as_str());
    if let Some(source) = meta.source() {
        out.push_str(",\"source\":");
        push_json_str(out, source);
    }
    if let Some(graph) = meta.graph_canonical() {
        out.push_str(",\"graph\":");
        out.push_str(graph);
    }
    if !meta.labels().is_empty() {
        out.push_str(",\"labels\":{");
        for (i, (key, value)) in meta.labels().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(out, key);
            out.push(':');
            push_json_str(out, value);
        }
        out.push('}');
    }
    out.push_str("}\n");
}

/// Appends the line of transition `seq` of `run_id` (with its newline).
pub fn write_transition(out: &mut String, run_id: &RunId, seq: u64, body: &TransitionBody) {
    push_transition_head(out, run_id, seq);
    push_members(out, body.canonical_json());
}

/// The bytes [`write_transition`] writes, counted without writing them: the pusher sizes
/// every line of a file against the chunk limit.
fn transition_wire_len(run_id: &RunId, seq: u64, body: &TransitionBody) -> usize {
    // `{"run_id":"` id `","seq":` digits `,` then the members with their closing brace (the
    // body's canonical text without its opening one), then the newline.
    const HEAD: usize = r#"{"run_id":"","seq":,"#.len();
    let digits = seq.checked_ilog10().map_or(1, |d| d as usize + 1);
    let members = match body.canonical_json() {
        // No member: the head's comma is dropped and the brace closes the line.
        "{}" => 0,
        c => c.len() - 1,
    };
    HEAD + run_id.as_str().len() + digits + members + 1
}

/// Appends the line of a transition as read back from a store (with its newline).
pub fn write_stored(out: &mut String, run_id: &RunId, row: &StoredTransition) {
    push_transition_head(out, run_id, row.seq.get());
    push_members(out, &Value::Object(stored_body(row)).to_string());
}

/// The stored body without `run_id`/`seq`, which a body never holds but the line carries first.
fn stored_body(row: &StoredTransition) -> Map<String, Value> {
    let mut body = row.body.clone();
    body.remove("run_id");
    body.remove("seq");
    body
}

/// The whole batch as NDJSON: per run, its metadata line (also when the run carries nothing
/// else, so it still exists in the batch), then its transitions in seq order.
pub fn encode_batch(batch: &AppendBatch) -> String {
    // Sized first: grown by doubling, a 1 MiB body is reallocated (and copied) ~17 times.
    let transitions: usize = batch
        .runs()
        .iter()
        .flat_map(|run| (run.start()..).zip(run.bodies()).map(|(seq, b)| (run.run_id(), seq, b)))
        .map(|(run_id, seq, body)| transition_wire_len(run_id, seq, body))
        .sum();
    let mut out = String::with_capacity(transitions);
    for run in batch.runs() {
        if !run.meta().is_empty() || run.bodies().is_empty() {
            write_run(&mut out, run.run_id(), run.meta());
        }
        for (seq, body) in (run.start()..).zip(run.bodies()) {
            push_transition_head(&mut out, run.run_id(), seq);
            push_members(&mut out, body.canonical_json());
        }
    }
    out
}

impl NdjsonLine {
    /// Appends this line as NDJSON (with its newline).
    pub fn write_to(&self, out: &mut String) {
        match self {
            NdjsonLine::Transition(t) => write_transition(out, &t.run_id, t.seq.get(), &t.body),
            NdjsonLine::Run { run_id, meta } => write_run(out, run_id, meta),
        }
    }

    /// The exact bytes this line takes on the wire, its newline included.
    pub fn wire_len(&self) -> usize {
        match self {
            NdjsonLine::Transition(t) => transition_wire_len(&t.run_id, t.seq.get(), &t.body),
            NdjsonLine::Run { .. } => {
                let mut out = String::new();
                self.write_to(&mut out);
                out.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::id::Seq;
    use crate::transition::Transition;

    fn body(extra: &str) -> TransitionBody {
        let text = format!(r#"{{"ts":"2026-01-01T00:00:00Z","to":"x"{extra}}}"#);
        TransitionBody::new(crate::parse_json_object(&text).unwrap()).unwrap()
    }

    #[test]
    fn every_line_parses_back_to_what_was_written() {
        let run = RunId::new("r-1").unwrap();
        let meta = RunMeta::new()
            .with_source("choco")
            .unwrap()
            .with_graph(serde_json::json!({"b": [1, 2], "a": "é\"\n"}))
            .unwrap()
            .with_label("ci \"q\"", "https://x/y?z=1")
            .unwrap()
            .with_label("a", "")
            .unwrap();
        let lines = [
            NdjsonLine::Run { run_id: run.clone(), meta },
            NdjsonLine::Run { run_id: run.clone(), meta: RunMeta::new() },
            NdjsonLine::Transition(Transition {
                run_id: run.clone(),
                seq: Seq::new(u64::MAX >> 1).unwrap(),
                body: body(r#","attrs":{"k":[1,-2.5,"\u0000é"]},"node":"n""#),
            }),
        ];
        for line in lines {
            let mut out = String::new();
            line.write_to(&mut out);
            assert!(out.ends_with('\n') && !out[..out.len() - 1].contains('\n'), "{out:?}");
            assert_eq!(line.wire_len(), out.len());
            let parsed = NdjsonLine::parse(out.trim_end()).unwrap().unwrap();
            assert_eq!(parsed, line, "{out}");
        }
    }

    /// `wire_len` counts a transition's bytes without writing them: it must count exactly
    /// what is written, whatever the seq's digits, the id's length and the body.
    #[test]
    fn a_transitions_wire_len_is_what_is_written() {
        for id in ["r", "a.b:c-d_E9", &"x".repeat(200)] {
            for seq in [0, 1, 9, 10, 99, 100, 12_345, 1 << 40, u64::MAX >> 1] {
                for b in [body(""), body(r#","attrs":{"é":["\u0001",1e300]},"node":"n""#)] {
                    let line = NdjsonLine::Transition(Transition {
                        run_id: RunId::new(id).unwrap(),
                        seq: Seq::new(seq).unwrap(),
                        body: b,
                    });
                    let mut out = String::new();
                    line.write_to(&mut out);
                    assert_eq!(line.wire_len(), out.len(), "{out}");
                }
            }
        }
    }

    #[test]
    fn a_transition_line_carries_the_hashed_bytes_after_run_id_and_seq() {
        let run = RunId::new("r").unwrap();
        let b = body(r#","attrs":{"z":1,"a":2}"#);
        let mut out = String::new();
        write_transition(&mut out, &run, 7, &b);
        let expected = format!("{{\"run_id\":\"r\",\"seq\":7,{}\n", &b.canonical_json()[1..]);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_stored_row_writes_the_line_it_was_appended_as() {
        let run = RunId::new("r").unwrap();
        let b = body(r#","from":"y""#);
        let row = StoredTransition {
            seq: Seq::new(3).unwrap(),
            body: b.fields(),
            content_hash: b.content_hash(),
            chain_hash: b.content_hash(),
        };
        let (mut stored, mut appended) = (String::new(), String::new());
        write_stored(&mut stored, &run, &row);
        write_transition(&mut appended, &run, 3, &b);
        assert_eq!(stored, appended);
    }

    #[test]
    fn a_batch_encodes_to_ndjson_that_rebuilds_the_same_batch() {
        let mut builder = BatchBuilder::new();
        let (a, b) = (RunId::new("a").unwrap(), RunId::new("b").unwrap());
        builder.push_meta(&b, &RunMeta::new()).unwrap();
        builder.push_meta(&a, &RunMeta::new().with_source("s").unwrap()).unwrap();
        for seq in 4..7 {
            let t = Transition { run_id: a.clone(), seq: Seq::new(seq).unwrap(), body: body("") };
            builder.push_transition(t).unwrap();
        }
        let batch = builder.build();
        let text = encode_batch(&batch);
        assert_eq!(AppendBatch::from_ndjson(&text).unwrap(), batch, "{text}");
    }
}
