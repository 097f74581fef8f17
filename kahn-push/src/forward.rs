//! Forwarding a file's lines as they are, to a store that parses NDJSON on its side (a
//! server: [`StorageBackend::prefers_ndjson`](kahn_core::StorageBackend::prefers_ndjson)).
//!
//! Parsing, canonicalising and hashing a line costs the pusher about as much as it costs the
//! server, which does all of it again anyway: on a machine the two share, the pusher's parse
//! takes CPU the server needs. So a line is only *looked at*: its top-level keys are found
//! without building a value, and a transition line is sent as it is, with `run_id` and `seq`
//! written in front when the file leaves them out. Anything the look cannot vouch for (run
//! metadata, an escape in a key, a `seq` spelled other than the next seq's digits, a line that
//! does not look like one JSON object, a line too long as written) is parsed in full, as when
//! pushing into a database, and sent in its canonical form. The server validates every line;
//! when it refuses one, the pusher parses that chunk's lines itself to name the file's line
//! (see [`Origins::explain`]).

use kahn_core::{BatchBuilder, Error, NdjsonLine, RunId};

/// What a look at one line found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// Only whitespace.
    Blank,
    /// One JSON object (as far as its structure goes) opening the line, with no `kind` key: a
    /// transition, whose `run_id` (when present) is the run's exactly and whose `seq` (when
    /// present) is the expected seq's digits exactly. The store checks the rest.
    Transition(Members),
    /// Anything else: parse it in full.
    Parse,
}

/// What a transition line [`look`] vouched for holds of what the pusher fills in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Members {
    /// The object has no member at all (`{}`).
    pub(crate) empty: bool,
    /// It names the run.
    pub(crate) run_id: bool,
    /// It names the seq.
    pub(crate) seq: bool,
}

/// Looks at `line` (one line of the file, its line ending included or not), the transition
/// `seq` of run `run_id` if it is one.
pub(crate) fn look(line: &[u8], run_id: &str, seq: u64) -> Look {
    let mut s = Scanner { b: line, i: 0 };
    if !s.eat(b'{') {
        s.ws();
        return if s.i == line.len() { Look::Blank } else { Look::Parse };
    }
    let mut found = Members { empty: false, run_id: false, seq: false };
    s.ws();
    found.empty = s.eat(b'}');
    if !found.empty {
        loop {
            let Some(key) = s.plain_string() else { return Look::Parse };
            s.ws();
            if !s.eat(b':') {
                return Look::Parse;
            }
            s.ws();
            let fine = match key {
                b"kind" => false,
                b"run_id" => !found.run_id && s.plain_string() == Some(run_id.as_bytes()),
                b"seq" => !found.seq && s.digits() == Decimal::new(seq).as_bytes(),
                _ => s.skip_value(),
            };
            if !fine {
                return Look::Parse;
            }
            found.run_id |= key == b"run_id";
            found.seq |= key == b"seq";
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
    Look::Transition(found)
}

/// A cursor over a line's bytes. It follows JSON's structure only as far as finding the
/// top-level keys needs; whether the values are valid is the store's to say. It never reads
/// past the line, whatever the line holds.
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

    /// What is left of the line.
    fn rest(&self) -> &'a [u8] {
        let line: &'a [u8] = self.b;
        line.get(self.i..).unwrap_or_default()
    }

    /// A string without escapes: its bytes between the quotes. `None` when the next thing is
    /// not a string, or is one holding an escape (its text is not its bytes).
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let rest = self.rest();
        let end = rest.iter().position(|b| matches!(b, b'"' | b'\\'))?;
        if rest[end] == b'\\' {
            return None;
        }
        self.i += end + 1;
        Some(&rest[..end])
    }

    /// The ASCII digits from here (none: empty).
    fn digits(&mut self) -> &'a [u8] {
        let rest = self.rest();
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        self.i += len;
        &rest[..len]
    }

    /// Steps over a string, the opening quote already eaten; `false` when it never closes.
    fn skip_string_body(&mut self) -> bool {
        loop {
            let rest = self.rest();
            let Some(at) = rest.iter().position(|b| matches!(b, b'"' | b'\\')) else {
                return false;
            };
            if rest[at] == b'"' {
                self.i += at + 1;
                return true;
            }
            // An escape: its next byte is never the string's end (and may be past the line's).
            self.i = (self.i + at + 2).min(self.b.len());
        }
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

/// How a line of a forwarded chunk was sent.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// As the file has it, line ending included, with `prefix` bytes in place of its opening
    /// `{` (0: none, the line was complete) and a `\n` added when the file's last line had none.
    Written { prefix: usize, newline_added: bool },
    /// Parsed by the pusher (so valid) and sent in its canonical form.
    Canonical,
}

/// Where each line of a forwarded chunk came from, to name the file's line when the store
/// refuses one.
#[derive(Debug)]
pub(crate) struct Origins {
    /// Per line of the body: its line in the file (from 1; 0 for the run's metadata, which
    /// is no line of the file) and how it was sent.
    lines: Vec<(u64, Form)>,
    /// The seq of the chunk's first transition.
    start_seq: u64,
    run_id: RunId,
}

/// A chunk of lines being forwarded: the body so far, and where its lines came from.
#[derive(Debug)]
pub(crate) struct Forwarded {
    body: String,
    origins: Origins,
    /// The run id as a JSON string, written in front of lines that lack it.
    run_id_json: String,
}

impl Forwarded {
    pub(crate) fn new(run_id: &RunId, start_seq: u64) -> Self {
        Self {
            body: String::new(),
            origins: Origins { lines: Vec::new(), start_seq, run_id: run_id.clone() },
            // A run id is a plain JSON string already (see `RunId`'s alphabet); encoding it
            // costs nothing and takes no chance.
            run_id_json: serde_json::Value::from(run_id.as_str()).to_string(),
        }
    }

    /// The bytes `line` (a line of the file as read, its line ending included when it has
    /// one), which [`look`] found holds `members`, adds to the body when sent as written.
    pub(crate) fn wire_len(&self, line: &str, members: Members, seq: u64) -> usize {
        let newline = usize::from(!line.ends_with('\n'));
        let prefix = match members.run_id && members.seq {
            true => 0,
            false => prefix(&self.run_id_json, members, seq, None) - 1,
        };
        line.len() + newline + prefix
    }

    /// Adds `line` (as in [`wire_len`](Self::wire_len)), the file's line `file_line`, as
    /// written.
    pub(crate) fn push_looked(&mut self, line: &str, members: Members, seq: u64, file_line: u64) {
        let prefix = if members.run_id && members.seq {
            self.body.push_str(line);
            0
        } else {
            let n = prefix(&self.run_id_json, members, seq, Some(&mut self.body));
            // The look found the line's `{` first: a one-byte character.
            self.body.push_str(line.get(1..).unwrap_or_default());
            n
        };
        let newline_added = !line.ends_with('\n');
        if newline_added {
            self.body.push('\n');
        }
        self.origins.lines.push((file_line, Form::Written { prefix, newline_added }));
    }

    /// Adds a line the pusher parsed, in its canonical form; `file_line` 0 for the run's
    /// metadata.
    pub(crate) fn push_parsed(&mut self, line: &NdjsonLine, file_line: u64) {
        line.write_to(&mut self.body);
        self.origins.lines.push((file_line, Form::Canonical));
    }

    /// The body to send, and where its lines came from.
    pub(crate) fn finish(self) -> (bytes::Bytes, Origins) {
        (self.body.into_bytes().into(), self.origins)
    }
}

impl Origins {
    /// The store refused `body` (the chunk these are the origins of) with `refused`, an
    /// [`Error::InvalidInput`] naming a line of the body: the first bad line as the pusher
    /// reads it, named by its line in the file as a push into a database names it. When the
    /// pusher finds every line good (the store is stricter than the pusher, or refused the
    /// request whole, over its size limit say), the store's own error, saying which of the
    /// file's lines the request held.
    pub(crate) fn explain(&self, body: &[u8], refused: Error) -> Error {
        if let Some(named) = self.first_error(body) {
            return named;
        }
        let file_lines = self.lines.iter().map(|(line, _)| *line).filter(|line| *line > 0);
        let (first, last) = (file_lines.clone().min(), file_lines.max());
        match (refused, first, last) {
            (Error::InvalidInput { field, message }, Some(first), Some(last)) => {
                Error::InvalidInput {
                    field,
                    message: format!(
                        "{message} (in the request carrying lines {first}–{last} of the file)"
                    ),
                }
            }
            (other, ..) => other,
        }
    }

    /// The first line of `body` the pusher refuses, named by its line in the file.
    fn first_error(&self, body: &[u8]) -> Option<Error> {
        let body = std::str::from_utf8(body).ok()?;
        let mut builder = BatchBuilder::new();
        let mut seq = self.start_seq;
        for (&(file_line, form), sent) in self.lines.iter().zip(body.split_inclusive('\n')) {
            let original;
            let line = match form {
                Form::Written { prefix, newline_added } => {
                    let end = sent.len() - usize::from(newline_added);
                    original = match prefix {
                        0 => sent.get(..end)?.to_owned(),
                        n => format!("{{{}", sent.get(n..end)?),
                    };
                    original.as_str()
                }
                Form::Canonical => sent,
            };
            let checked = crate::push::parse_line(line, &self.run_id, seq).and_then(|parsed| {
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
/// lacks, and the comma before its own members unless it has none.
fn prefix(run_id_json: &str, has: Members, seq: u64, out: Option<&mut String>) -> usize {
    let seq_text = Decimal::new(seq);
    let parts: [&str; 6] = [
        "{",
        if has.run_id { "" } else { "\"run_id\":" },
        if has.run_id { "" } else { run_id_json },
        match (has.run_id, has.seq) {
            (false, false) => ",\"seq\":",
            (true, false) => "\"seq\":",
            _ => "",
        },
        if has.seq { "" } else { seq_text.as_str() },
        if has.empty { "" } else { "," },
    ];
    if let Some(out) = out {
        parts.iter().for_each(|p| out.push_str(p));
    }
    parts.iter().map(|p| p.len()).sum()
}

/// A number in decimal, written on the stack (a line's seq, read or written per line).
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Self {
        // u64::MAX has 20 digits.
        let (mut digits, mut start) = ([b'0'; 20], 20);
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return Self { digits, start };
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    fn as_str(&self) -> &str {
        // ASCII digits only.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::new("deploy-7").unwrap()
    }

    fn has(run_id: bool, seq: bool) -> Look {
        Look::Transition(Members { empty: false, run_id, seq })
    }

    #[test]
    fn decimals_are_written_as_to_string_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            assert_eq!(Decimal::new(n).as_str(), n.to_string());
        }
    }

    #[test]
    fn a_transition_is_found_by_its_top_level_keys_only() {
        let at = |line: &str, seq| look(line.as_bytes(), "deploy-7", seq);
        assert_eq!(at("{\"ts\":\"t\",\"to\":\"running\"}\n", 0), has(false, false));
        assert_eq!(at("{\"ts\":\"t\",\"to\":\"running\"}\r\n", 0), has(false, false), "CRLF");
        assert_eq!(at("{ \"ts\" : \"t\" , \"to\":\"x\" }  ", 0), has(false, false), "whitespace");
        assert_eq!(at("{\"run_id\":\"deploy-7\",\"seq\":12,\"to\":\"x\"}", 12), has(true, true));
        assert_eq!(at("{\"seq\":3,\"to\":\"x\"}", 3), has(false, true));
        let empty = Look::Transition(Members { empty: true, run_id: false, seq: false });
        assert_eq!(at("{}", 0), empty);
        // Nested keys named like the ones looked for, and strings holding braces, quotes and
        // escapes, are stepped over.
        let nested = r#"{"attrs":{"kind":"x","seq":9,"s":"}{\"]","l":[{"run_id":1},[]]},"to":"x"}"#;
        assert_eq!(at(nested, 0), has(false, false));
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
        // An escape as a line's last byte (a file still being written) ends the look there.
        parse("{\"a\":\"\\", 0);
        parse("{\"a\":[\"x\\", 0);
        parse("{\"a\":{\"b\":\"\\", 0);
    }

    #[test]
    fn a_line_is_sent_as_written_with_what_it_lacks_in_front_and_measured_exactly() {
        let lines = [
            "{\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"seq\":1,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\r\n",
            "{\"run_id\":\"deploy-7\",\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":3,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{}",
        ];
        let mut sent = Forwarded::new(&run(), 0);
        for (seq, line) in lines.iter().enumerate() {
            let seq = seq as u64;
            let Look::Transition(members) = look(line.as_bytes(), "deploy-7", seq) else {
                panic!("{line} is a transition line");
            };
            let before = sent.body.len();
            let wire = sent.wire_len(line, members, seq);
            sent.push_looked(line, members, seq, seq + 1);
            assert_eq!(sent.body.len() - before, wire, "measured as written: {line}");
        }
        let (body, _) = sent.finish();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let expected = concat!(
            "{\"run_id\":\"deploy-7\",\"seq\":0,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":1,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\r\n",
            "{\"seq\":2,\"run_id\":\"deploy-7\",\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":3,\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"x\"}\n",
            "{\"run_id\":\"deploy-7\",\"seq\":4}\n",
        );
        assert_eq!(text, expected);
        // What the server will read is what the pusher reads from the file.
        let good = &text[..text.rfind("{\"run_id\":\"deploy-7\",\"seq\":4}").unwrap()];
        let batch = kahn_core::AppendBatch::from_ndjson(good).expect("valid NDJSON transitions");
        assert_eq!(batch.transition_count(), 4);
        for (seq, line) in lines.iter().take(4).enumerate() {
            let parsed = crate::push::parse_line(line, &run(), seq as u64);
            let Ok(Some(NdjsonLine::Transition(t))) = parsed else {
                panic!("the pusher reads line {seq}");
            };
            assert_eq!(
                batch.runs()[0].bodies()[seq],
                t.body,
                "line {seq} reads the same both ways"
            );
        }
    }

    /// Forwards `file`'s lines from seq `start` as the reading thread does (every line must
    /// be one the look vouches for, or blank).
    fn forward_all(file: &[&str], start: u64) -> (bytes::Bytes, Origins) {
        let mut sent = Forwarded::new(&run(), start);
        let mut seq = start;
        for (i, line) in file.iter().enumerate() {
            match look(line.as_bytes(), "deploy-7", seq) {
                Look::Blank => {}
                Look::Transition(members) => {
                    sent.push_looked(line, members, seq, i as u64 + 1);
                    seq += 1;
                }
                Look::Parse => panic!("line {} is looked at", i + 1),
            }
        }
        sent.finish()
    }

    #[test]
    fn a_refused_chunk_is_named_by_the_files_line_in_a_direct_pushs_words() {
        // Lines 1–2 good, line 3 blank (not sent), line 4 lacks `ts` (the look vouches for it,
        // the server would refuse it).
        let file = [
            "{\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"running\"}\n",
            "{\"seq\":6,\"ts\":\"2026-11-01T00:00:01Z\",\"to\":\"done\"}\r\n",
            "\n",
            "{\"to\":\"x\",   \"attrs\":{\"a\":1}}\n",
        ];
        let (body, origins) = forward_all(&file, 5);
        let direct = crate::push::parse_line(file[3], &run(), 7).expect_err("no ts");
        let expected = crate::push::at_line(direct, 4).to_string();
        let refused = Error::invalid("ts", "line 3: is required");
        assert_eq!(origins.explain(&body, refused).to_string(), expected);
        assert!(expected.contains("line 4") && expected.contains("ts"), "{expected}");

        // Byte for byte as the file has it: serde_json's own words (its column at the end of
        // input, a CRLF, a last line without a newline) come out the same.
        for file in [["{\"a\":\"\\u\"}\r\n"], ["{\"a\":\"\\u\"}"]] {
            let (body, origins) = forward_all(&file, 0);
            let direct = crate::push::parse_line(file[0], &run(), 0).expect_err("bad escape");
            let refused = Error::invalid("line", "line 1: the server's words");
            assert_eq!(
                origins.explain(&body, refused).to_string(),
                crate::push::at_line(direct, 1).to_string()
            );
        }
    }

    /// The members of a generated line, as written (right or wrong), in any order: mostly a
    /// good `ts` and `to`, and up to five others of every kind the look must tell apart.
    fn members(seq: u64) -> impl proptest::strategy::Strategy<Value = Vec<String>> {
        use proptest::prelude::*;
        let text = prop_oneof![
            Just("x".to_owned()),
            Just("}{\\\"]".to_owned()),
            Just("é \\u00e9 \\\\".to_owned()),
            "[a-z{}\\[\\],:\" ]{0,6}".prop_map(|s| s.replace('"', "\\\"")),
        ];
        let ts = prop_oneof![
            8 => Just(r#""ts":"2026-11-01T00:00:00Z""#.to_owned()),
            1 => Just(r#""ts":"2026-11-01T00:00:00+02:00""#.to_owned()),
            1 => Just(r#""ts":"yesterday""#.to_owned()),
        ];
        let to = prop_oneof![
            8 => Just(r#""to":"running""#.to_owned()),
            1 => Just(r#""to":"""#.to_owned()),
        ];
        let other = prop_oneof![
            Just(r#""from":"queued""#.to_owned()),
            text.clone().prop_map(|t| format!(r#""node":"{t}""#)),
            text.clone()
                .prop_map(|t| format!(r#""attrs":{{"kind":"{t}","seq":[1,{{"run_id":2}}]}}"#)),
            Just(r#""attrs":[]"#.to_owned()),
            Just(r#""attrs":{"n":1e2,"m":-0.0,"k":1.50}"#.to_owned()),
            Just(r#""run_id":"deploy-7""#.to_owned()),
            Just(r#""run_id":"deploy-8""#.to_owned()),
            Just(r#""r\u0075n_id":"deploy-7""#.to_owned()),
            Just(format!(r#""seq":{seq}"#)),
            Just(format!(r#""seq":0{seq}"#)),
            Just(format!(r#""seq":{}"#, seq + 1)),
            Just(format!(r#""seq":{seq}.0"#)),
            Just(r#""kind":"run""#.to_owned()),
            Just(r#""ts":"2026-11-01T00:00:00Z""#.to_owned()),
            text.prop_map(|t| format!(r#""x{t}":"{t}""#)),
        ];
        (ts, to, proptest::collection::vec(other, 0..5)).prop_flat_map(|(ts, to, others)| {
            let mut all = vec![ts, to];
            all.extend(others);
            Just(all).prop_shuffle()
        })
    }

    proptest::proptest! {
        // About two cases in five are lines the look vouches for; the rest it sends to be
        // parsed, which is a direct push's own path.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Whatever a line holds, when the look vouches for it, the server reads the
        /// forwarded line (`from_ndjson_bytes` is its reader) as the pusher reads the file's:
        /// the same body at the same seq of the same run, or a refusal, which the pusher
        /// names in the words of a direct push.
        #[test]
        fn a_forwarded_line_reads_as_the_parsed_line(
            (seq, members) in proptest::strategy::Strategy::prop_flat_map(0u64..1_000, |seq| {
                (proptest::strategy::Just(seq), members(seq))
            }),
            space in "[ \t]{0,2}",
            ending in proptest::prop_oneof![
                proptest::strategy::Just(""),
                proptest::strategy::Just("\n"),
                proptest::strategy::Just("\r\n"),
            ],
        ) {
            let line = format!("{{{space}{}{space}}}{ending}", members.join(&format!("{space},")));
            let Look::Transition(found) = look(line.as_bytes(), "deploy-7", seq) else {
                return Ok(());
            };
            let mut sent = Forwarded::new(&run(), seq);
            sent.push_looked(&line, found, seq, 9);
            let (body, origins) = sent.finish();
            let direct = crate::push::parse_line(&line, &run(), seq);
            match (kahn_core::AppendBatch::from_ndjson_bytes(&body), direct) {
                (Ok(batch), Ok(Some(NdjsonLine::Transition(t)))) => {
                    let runs = batch.runs();
                    proptest::prop_assert_eq!(runs.len(), 1);
                    proptest::prop_assert_eq!(runs[0].run_id(), &run());
                    proptest::prop_assert_eq!(runs[0].start(), seq);
                    proptest::prop_assert_eq!(runs[0].bodies(), std::slice::from_ref(&t.body));
                }
                (Err(refused), Err(e)) => {
                    let named = origins.explain(&body, refused).to_string();
                    proptest::prop_assert_eq!(named, crate::push::at_line(e, 9).to_string());
                }
                (server, pusher) => proptest::prop_assert!(
                    false,
                    "{line:?}: the server read {server:?}, the pusher {pusher:?}"
                ),
            }
        }
    }

    #[test]
    fn a_refusal_the_pusher_cannot_explain_says_which_file_lines_the_request_held() {
        let file = ["{\"ts\":\"2026-11-01T00:00:00Z\",\"to\":\"a\"}\n", "\n"];
        let (body, origins) = forward_all(&[file[1], file[0], file[0]], 0);
        let refused = Error::invalid("body", "line 2: refused by the server");
        let explained = origins.explain(&body, refused).to_string();
        assert!(explained.contains("line 2: refused by the server"), "{explained}");
        assert!(explained.contains("lines 2–3 of the file"), "{explained}");
        let other = origins.explain(&body, Error::invalid("body", "x"));
        assert!(other.to_string().contains("lines 2–3"), "{other}");
    }
}
