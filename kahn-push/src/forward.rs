//! Forwarding a file's lines as they are, to a store that parses NDJSON on its side (a
//! server: [`StorageBackend::prefers_ndjson`](kahn_core::StorageBackend::prefers_ndjson)).
//!
//! Parsing, canonicalising and hashing a line costs the pusher about as much as it costs the
//! server, which does all of it again; on a machine the two share, the pusher's copy halves
//! what the server gets. So a line is only *looked at*: its top-level keys are found without
//! building a value, and a transition line is sent as it is, with `run_id` and `seq` written
//! in front when the file leaves them out. Anything the look cannot vouch for (run metadata,
//! an escape in a key, a `seq` spelled other than the next seq's digits, a line that does not
//! look like one JSON object) is parsed in full, as when pushing into a database, and sent in
//! its canonical form. The server validates every line; when it refuses one, the pusher
//! parses that chunk's lines itself to name the file's line (see [`Origins::first_error`]).

use kahn_core::{BatchBuilder, Error, NdjsonLine, RunId};

/// What a look at one line found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// Only whitespace.
    Blank,
    /// One JSON object (as far as its structure goes) opening the line, with no `kind` key: a
    /// transition, whose `run_id` (when present) is the run's exactly and whose `seq` (when
    /// present) is the expected seq's digits exactly. The store checks the rest.
    Transition {
        /// Whether the object holds no member at all.
        empty: bool,
        /// Whether it names the run.
        has_run_id: bool,
        /// Whether it names the seq.
        has_seq: bool,
    },
    /// Anything else: parse it in full.
    Parse,
}

/// Looks at `line` (one line of the file, its newline included or not), the transition
/// `seq` of run `run_id` if it is one.
pub(crate) fn look(line: &[u8], run_id: &str, seq: u64) -> Look {
    let mut s = Scanner { b: line, i: 0 };
    if !s.eat(b'{') {
        s.ws();
        return if s.i == line.len() { Look::Blank } else { Look::Parse };
    }
    let (mut has_run_id, mut has_seq) = (false, false);
    s.ws();
    let empty = s.eat(b'}');
    if !empty {
        loop {
            let Some(key) = s.plain_string() else { return Look::Parse };
            s.ws();
            if !s.eat(b':') {
                return Look::Parse;
            }
            s.ws();
            let fine = match key {
                b"kind" => false,
                b"run_id" => !has_run_id && s.plain_string() == Some(run_id.as_bytes()),
                b"seq" => !has_seq && s.digits() == seq.to_string().as_bytes(),
                _ => s.skip_value(),
            };
            if !fine {
                return Look::Parse;
            }
            has_run_id |= key == b"run_id";
            has_seq |= key == b"seq";
            s.ws();
            if s.eat(b'}') {
                break;
            }
            if !s.eat(b',') {
                return Look::Parse;
            }
            s.ws();
        }
    }
    s.ws();
    if s.i != line.len() {
        return Look::Parse;
    }
    Look::Transition { empty, has_run_id, has_seq }
}

/// A cursor over a line's bytes. It follows JSON's structure only as far as finding the
/// top-level keys needs; whether the values are valid is the store's to say.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.i += usize::from(hit);
        hit
    }

    /// JSON's whitespace (and the line's own `\r\n`).
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    /// A string without escapes: its bytes between the quotes. `None` when the next thing is
    /// not a string, or is one holding an escape (its text is not its bytes).
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let line: &'a [u8] = self.b;
        let rest = &line[self.i..];
        let end = rest.iter().position(|b| matches!(b, b'"' | b'\\'))?;
        if rest[end] == b'\\' {
            return None;
        }
        let start = self.i;
        self.i += end + 1;
        Some(&line[start..start + end])
    }

    /// The ASCII digits from here (none: empty).
    fn digits(&mut self) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let line: &'a [u8] = self.b;
        &line[start..self.i]
    }

    /// Steps over a string, the opening quote already eaten; `false` when it never closes.
    fn skip_string_body(&mut self) -> bool {
        while let Some(at) = self.b[self.i..].iter().position(|b| matches!(b, b'"' | b'\\')) {
            self.i += at;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return true;
            }
            self.i += 2;
        }
        false
    }

    /// Steps over one value: a string, an object or array (nesting followed, strings inside
    /// stepped over), or a scalar up to the next `,`, `}`, `]` or whitespace.
    fn skip_value(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                self.skip_string_body()
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(b) = self.peek() {
                    self.i += 1;
                    match b {
                        // A string steps over itself (in the guard); one never closed ends it.
                        b'"' if !self.skip_string_body() => return false,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return true;
                            }
                        }
                        _ => {}
                    }
                }
                false
            }
            Some(_) => {
                let start = self.i;
                while self.peek().is_some_and(|b| {
                    !matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                }) {
                    self.i += 1;
                }
                self.i > start
            }
            None => false,
        }
    }
}

/// How a line of a forwarded chunk differs from the file's line.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// The file's bytes (without a `\r` before the newline).
    AsIs,
    /// The file's bytes with this many bytes in place of its opening `{`: `run_id` and `seq`
    /// written in front.
    Prefixed(usize),
    /// Parsed by the pusher (so valid) and sent in its canonical form.
    Canonical,
}

/// Where each line of a forwarded chunk came from, to name the file's line when the store
/// refuses one.
#[derive(Debug)]
pub(crate) struct Origins {
    /// Per line of the body: its line in the file (from 1; 0 for the run's metadata, which
    /// is no line of the file) and its form.
    lines: Vec<(u64, Form)>,
    /// The seq of the chunk's first transition.
    start_seq: u64,
    run_id: RunId,
}

/// A chunk of lines being forwarded: the body so far, and where its lines came from.
#[derive(Debug)]
pub(crate) struct Forwarded {
    body: Vec<u8>,
    origins: Origins,
    /// The run id as a JSON string, written in front of lines that lack it.
    run_id_json: String,
}

impl Forwarded {
    pub(crate) fn new(run_id: &RunId, start_seq: u64) -> Self {
        Self {
            body: Vec::new(),
            origins: Origins { lines: Vec::new(), start_seq, run_id: run_id.clone() },
            // A run id is a plain JSON string already (see `RunId`'s alphabet); encoding it
            // costs nothing and takes no chance.
            run_id_json: serde_json::Value::from(run_id.as_str()).to_string(),
        }
    }

    /// The bytes a line that [`look`] found to be a transition adds to the body, its newline
    /// included.
    pub(crate) fn wire_len(&self, line: &[u8], found: Look, seq: u64) -> usize {
        let line = trim_newline(line).len() + 1;
        match found {
            Look::Transition { empty, has_run_id, has_seq } if !(has_run_id && has_seq) => {
                line + prefix(&self.run_id_json, (empty, has_run_id, has_seq), seq, None) - 1
            }
            _ => line,
        }
    }

    /// Adds a line [`look`] found to be a transition (`found`), the file's line `file_line`.
    pub(crate) fn push_looked(&mut self, line: &[u8], found: Look, seq: u64, file_line: u64) {
        let line = trim_newline(line);
        let form = match found {
            Look::Transition { empty, has_run_id, has_seq } if !(has_run_id && has_seq) => {
                let found = (empty, has_run_id, has_seq);
                let n = prefix(&self.run_id_json, found, seq, Some(&mut self.body));
                self.body.extend_from_slice(&line[1..]);
                Form::Prefixed(n)
            }
            _ => {
                self.body.extend_from_slice(line);
                Form::AsIs
            }
        };
        self.body.push(b'\n');
        self.origins.lines.push((file_line, form));
    }

    /// Adds a line the pusher parsed, in its canonical form; `file_line` 0 for the run's
    /// metadata.
    pub(crate) fn push_parsed(&mut self, line: &NdjsonLine, file_line: u64) {
        let mut text = String::with_capacity(line.wire_len());
        line.write_to(&mut text);
        self.body.extend_from_slice(text.as_bytes());
        self.origins.lines.push((file_line, Form::Canonical));
    }

    /// The body to send, and where its lines came from.
    pub(crate) fn finish(self) -> (bytes::Bytes, Origins) {
        (self.body.into(), self.origins)
    }
}

impl Origins {
    /// The store refused `body` (the chunk these are the origins of): its first bad line as
    /// the pusher reads it, named by its line in the file, as pushing into a database names
    /// it. `None` when the pusher finds every line good (the store is stricter than the
    /// pusher; its own error stands).
    pub(crate) fn first_error(&self, body: &[u8]) -> Option<Error> {
        let mut builder = BatchBuilder::new();
        let mut seq = self.start_seq;
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        for (&(file_line, form), sent) in self.lines.iter().zip(body.split(|b| *b == b'\n')) {
            let original;
            let line = match form {
                Form::Prefixed(n) => {
                    original = [b"{".as_slice(), &sent[n..]].concat();
                    &original
                }
                Form::AsIs | Form::Canonical => sent,
            };
            let checked = std::str::from_utf8(line)
                .map_err(|e| Error::invalid("line", format!("is not UTF-8: {e}")))
                .and_then(|text| crate::push::parse_line(text, &self.run_id, seq))
                .and_then(|parsed| {
                    let Some(parsed) = parsed else { return Ok(()) };
                    seq += u64::from(matches!(parsed, NdjsonLine::Transition(_)));
                    builder.push(parsed)
                });
            if let Err(e) = checked {
                return Some(crate::push::at_line(e, file_line));
            }
        }
        None
    }
}

/// Writes (when `out` is given) and measures what replaces a line's `{`: `{`, the members it
/// lacks (`found` says whether it is empty and which it has), and the comma before its own
/// members unless it has none.
fn prefix(
    run_id_json: &str,
    (empty, has_run_id, has_seq): (bool, bool, bool),
    seq: u64,
    out: Option<&mut Vec<u8>>,
) -> usize {
    let seq_text = seq.to_string();
    let parts: [&[u8]; 6] = [
        b"{",
        if has_run_id { b"" } else { b"\"run_id\":" },
        if has_run_id { b"" } else { run_id_json.as_bytes() },
        match (has_run_id, has_seq) {
            (false, false) => b",\"seq\":",
            (true, false) => b"\"seq\":",
            _ => b"",
        },
        if has_seq { b"" } else { seq_text.as_bytes() },
        if empty { b"" } else { b"," },
    ];
    if let Some(out) = out {
        parts.iter().for_each(|p| out.extend_from_slice(p));
    }
    parts.iter().map(|p| p.len()).sum()
}

/// The line without its `\n` (and a `\r` before it).
fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::new("deploy-7").unwrap()
    }

    const PLAIN: Look = Look::Transition { empty: false, has_run_id: false, has_seq: false };

    #[test]
    fn a_transition_is_found_by_its_top_level_keys_only() {
        let at = |line: &str, seq| look(line.as_bytes(), "deploy-7", seq);
        assert_eq!(at("{\"ts\":\"t\",\"to\":\"running\"}\n", 0), PLAIN);
        assert_eq!(at("{\"ts\":\"t\",\"to\":\"running\"}\r\n", 0), PLAIN, "CRLF");
        assert_eq!(at("{ \"ts\" : \"t\" , \"to\":\"x\" }  ", 0), PLAIN, "whitespace");
        let both = Look::Transition { empty: false, has_run_id: true, has_seq: true };
        assert_eq!(at("{\"run_id\":\"deploy-7\",\"seq\":12,\"to\":\"x\"}", 12), both);
        assert_eq!(
            at("{\"seq\":3,\"to\":\"x\"}", 3),
            Look::Transition { empty: false, has_run_id: false, has_seq: true }
        );
        assert_eq!(
            at("{}", 0),
            Look::Transition { empty: true, has_run_id: false, has_seq: false }
        );
        // Nested keys named like the ones looked for, and strings holding braces, quotes and
        // escapes, are stepped over.
        let nested = r#"{"attrs":{"kind":"x","seq":9,"s":"}{\"]","l":[{"run_id":1},[]]},"to":"x"}"#;
        assert_eq!(at(nested, 0), PLAIN);
        assert_eq!(at("  \r\n", 4), Look::Blank);
        assert_eq!(at("", 4), Look::Blank);
    }

    #[test]
    fn anything_the_look_cannot_vouch_for_is_parsed() {
        let parse = |line: &str, seq| {
            assert_eq!(look(line.as_bytes(), "deploy-7", seq), Look::Parse, "{line}");
        };
        parse("{\"kind\":\"run\",\"source\":\"ci\"}", 0);
        parse("{\"run_id\":\"deploy-8\",\"to\":\"x\"}", 0);
        parse("{\"run_id\":\"deploy-7\",\"run_id\":\"deploy-7\",\"to\":\"x\"}", 0);
        parse("{\"seq\":4,\"to\":\"x\"}", 3);
        parse("{\"seq\":03,\"to\":\"x\"}", 3);
        parse("{\"seq\":3.0,\"to\":\"x\"}", 3);
        parse("{\"seq\":\"3\",\"to\":\"x\"}", 3);
        parse("{\"seq\":3,\"seq\":3,\"to\":\"x\"}", 3);
        parse("{\"\\u0074o\":\"x\"}", 0);
        parse("{\"r\\u0075n_id\":\"deploy-8\"}", 0);
        parse(" {\"to\":\"x\"}", 0);
        parse("[1]", 0);
        parse("{\"to\":\"x\"", 0);
        parse("{\"to\":\"x}", 0);
        parse("{\"to\":}", 0);
        parse("{\"to\":\"x\",}", 0);
        parse("{\"to\" \"x\"}", 0);
        parse("{\"to\":\"x\"} {}", 0);
        parse("{\"a\":[1,{\"b\":2}}", 0);
    }

    #[test]
    fn a_line_is_sent_as_written_with_what_it_lacks_in_front_and_measured_exactly() {
        let lines = [
            "{\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"seq\":1,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\r\n",
            "{\"run_id\":\"deploy-7\",\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}",
            "{\"run_id\":\"deploy-7\",\"seq\":3,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{}\n",
        ];
        let mut sent = Forwarded::new(&run(), 0);
        for (seq, line) in lines.iter().enumerate() {
            let seq = seq as u64;
            let found = look(line.as_bytes(), "deploy-7", seq);
            assert!(matches!(found, Look::Transition { .. }), "{line}");
            let before = sent.body.len();
            let wire = sent.wire_len(line.as_bytes(), found, seq);
            sent.push_looked(line.as_bytes(), found, seq, seq + 1);
            assert_eq!(sent.body.len() - before, wire, "measured as written: {line}");
        }
        let (body, _) = sent.finish();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let expected = concat!(
            "{\"run_id\":\"deploy-7\",\"seq\":0,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":1,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"seq\":2,\"run_id\":\"deploy-7\",\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":3,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":4}\n",
        );
        assert_eq!(text, expected);
        // What the server will read is what the pusher reads from the file.
        let batch = kahn_core::AppendBatch::from_ndjson(
            &text[..text.rfind("{\"run_id\":\"deploy-7\",\"seq\":4}").unwrap()],
        )
        .expect("the forwarded lines are valid NDJSON transitions");
        assert_eq!(batch.transition_count(), 4);
        for (seq, line) in lines.iter().take(4).enumerate() {
            let Ok(Some(NdjsonLine::Transition(t))) =
                crate::push::parse_line(line, &run(), seq as u64)
            else {
                panic!("the pusher reads line {seq}");
            };
            assert_eq!(
                batch.runs()[0].bodies()[seq],
                t.body,
                "line {seq} reads the same both ways"
            );
        }
    }

    #[test]
    fn a_refused_chunk_is_named_by_the_files_line_as_a_direct_push_names_it() {
        // Lines 1–2 good, line 3 blank (not sent), line 4 lacks `ts`: the look vouches for it,
        // the server would refuse it.
        let file = [
            "{\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"seq\":6,\"ts\":\"2026-11-01T00:00:01Z\",\"to\":\"done\"}\n",
            "\n",
            "{\"to\":\"x\",   \"attrs\":{\"a\":1}}\n",
        ];
        let mut sent = Forwarded::new(&run(), 5);
        let mut seq = 5;
        for (i, line) in file.iter().enumerate() {
            match look(line.as_bytes(), "deploy-7", seq) {
                Look::Blank => {}
                found @ Look::Transition { .. } => {
                    sent.push_looked(line.as_bytes(), found, seq, i as u64 + 1);
                    seq += 1;
                }
                Look::Parse => panic!("line {} is looked at", i + 1),
            }
        }
        let (body, origins) = sent.finish();
        let direct = crate::push::parse_line(file[3], &run(), 7).expect_err("no ts");
        let expected = crate::push::at_line(direct, 4).to_string();
        let named = origins.first_error(&body).expect("line 4 is bad");
        assert_eq!(named.to_string(), expected);
        assert!(expected.contains("line 4") && expected.contains("ts"), "{expected}");

        let mut good = Forwarded::new(&run(), 0);
        good.push_looked(file[0].as_bytes(), PLAIN, 0, 1);
        let (body, origins) = good.finish();
        assert!(origins.first_error(&body).is_none(), "a good chunk has no bad line");
    }
}
