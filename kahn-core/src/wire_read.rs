//! The fast way in for a line already in KAHN's wire form: `{"run_id":…,"seq":…,` followed by
//! the members of a body in its RFC 8785 canonical form — exactly what
//! [`ndjson::write_transition`](crate::ndjson::write_transition) writes, so what `kahn push`
//! and every [`HttpBackend`]-style client send.
//!
//! Such a line is checked where it lies, in one pass over its bytes: no tree is built, and the
//! body's canonical text is the line's own tail, not written again. The check is strict: the
//! first thing that is not exactly canonical (whitespace, an escape JCS would not write, a key
//! out of order or repeated, a number not in its shortest form, a key or field value holding
//! an escape) answers `None`, and the caller reads the line the general way
//! ([`NdjsonLine::parse`](crate::NdjsonLine::parse) does both). So this never decides what is
//! valid: whatever it accepts, the general reader accepts with the same result, which a
//! property test and the `ndjson` fuzz target hold it to.
//!
//!
//! A second fast way, [`any_order`], reads the lines producers write: members in any order,
//! insignificant whitespace, `run_id` and `seq` optional (a run file's lines may omit them).
//! It writes the canonical body as it scans, reordering an object's members only when they
//! came out of order, and is held to the same rule: `None` at anything it is not sure of
//! (an escape in a key, a number not in its canonical spelling, a repeated key), never an error
//! of its own.
//!
//! [`HttpBackend`]: https://docs.rs/kahn-http

use chrono::{DateTime, Utc};

use crate::hash::{MAX_EXACT_INTEGER, canonical_float, jcs_key_order};
use crate::id::{RunId, Seq};
use crate::transition::{Transition, TransitionBody};

/// Nesting beyond this is left to the general reader (which refuses past serde_json's 128).
const MAX_DEPTH: u32 = 100;

/// Reads `line` when it is a transition in the wire form with a canonical body and valid
/// fields; `None` otherwise (the general reader then decides, errors included). A line naming
/// run `previous` shares its id.
pub(crate) fn transition(line: &str, previous: Option<&RunId>) -> Option<Transition> {
    let mut s = Scan { text: line, i: 0, members: Vec::new(), scratch: String::new() };
    s.eat_str("{\"run_id\":")?;
    let id = s.plain_string()?;
    let run_id = match previous {
        Some(p) if p.as_str() == id => p.clone(),
        _ => RunId::new(id).ok()?,
    };
    s.eat_str(",\"seq\":")?;
    let seq = Seq::new(s.unsigned_integer()?).ok()?;
    s.eat(b',')?;
    let body_start = s.i;
    let (mut ts, mut to, mut node) = (None, None, None);
    let mut last_key: Option<&str> = None;
    loop {
        let key = s.plain_string()?;
        if last_key.is_some_and(|last| jcs_key_order(last, key) != std::cmp::Ordering::Less) {
            return None;
        }
        last_key = Some(key);
        s.eat(b':')?;
        match key {
            // Not part of a body: the general reader names the error.
            "run_id" | "seq" | "kind" => return None,
            "ts" => ts = Some(s.plain_string()?),
            "to" => to = Some(s.plain_string()?),
            "from" => {
                s.plain_string()?;
            }
            "node" => node = Some(s.plain_string()?),
            "attrs" => {
                if s.peek()? != b'{' {
                    return None;
                }
                s.value(1)?;
            }
            _ => s.value(1)?,
        }
        match s.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    if s.i != line.len() {
        return None;
    }
    let ts: DateTime<Utc> = DateTime::parse_from_rfc3339(ts?).ok()?.with_timezone(&Utc);
    let to = to.filter(|t| !t.is_empty())?;
    let mut canonical = String::with_capacity(line.len() - body_start + 1);
    canonical.push('{');
    canonical.push_str(&line[body_start..]);
    let body =
        TransitionBody::from_canonical(canonical.into(), ts, to.into(), node.map(Into::into));
    Some(Transition { run_id, seq, body })
}

/// A transition line as [`any_order`] read it: the `run_id` and `seq` it named (if it did),
/// and its body.
#[derive(Debug)]
pub(crate) struct AnyOrder<'a> {
    pub(crate) run_id: Option<&'a str>,
    pub(crate) seq: Option<u64>,
    pub(crate) body: TransitionBody,
}

/// Reads `line` as a transition whose members come in any order, with any insignificant
/// whitespace, each value in its canonical spelling; `None` otherwise (the general reader then
/// decides, errors included). `run_id` and `seq` are optional here: whoever calls decides
/// whether the line needed them.
pub(crate) fn any_order(line: &str) -> Option<AnyOrder<'_>> {
    let mut s = Scan { text: line, i: 0, members: Vec::new(), scratch: String::new() };
    s.ws();
    s.eat(b'{')?;
    let mut canonical = String::with_capacity(line.len());
    canonical.push('{');
    let (mut run_id, mut seq, mut ts, mut to, mut node) = (None, None, None, None, None);
    // Every key of the line goes in `s.members` (run_id and seq too, so a repeated one is
    // seen), with where each body member's canonical text lies in `canonical`.
    s.members.reserve(16);
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            let key = s.member_key()?;
            match key {
                "run_id" => {
                    run_id = Some(s.plain_string()?);
                    s.members.push(Member { key, range: None });
                }
                "seq" => {
                    seq = Some(s.unsigned_integer()?);
                    s.members.push(Member { key, range: None });
                }
                // A metadata line: the general reader reads those.
                "kind" => return None,
                _ => {
                    let start = begin_member(&mut canonical, key);
                    match key {
                        "ts" | "to" | "from" | "node" => {
                            let text = s.plain_string()?;
                            canonical.push('"');
                            canonical.push_str(text);
                            canonical.push('"');
                            match key {
                                "ts" => ts = Some(text),
                                "to" => to = Some(text),
                                "node" => node = Some(text),
                                _ => {}
                            }
                        }
                        "attrs" if s.peek()? != b'{' => return None,
                        _ => s.write_value(&mut canonical, 1)?,
                    }
                    s.members.push(Member { key, range: Some((start, canonical.len())) });
                }
            }
            if !s.more_members()? {
                break;
            }
        }
    }
    s.ws();
    if s.i != line.len() {
        return None;
    }
    let ts: DateTime<Utc> = DateTime::parse_from_rfc3339(ts?).ok()?.with_timezone(&Utc);
    let to = to.filter(|t| !t.is_empty())?;
    s.end_object(&mut canonical, 1, 0)?;
    let body =
        TransitionBody::from_canonical(canonical.into(), ts, to.into(), node.map(Into::into));
    Some(AnyOrder { run_id, seq, body })
}

/// One member of an object being written: its key, and where its `"key":value` text lies in
/// the output (`None` for a member read but not written: a line's `run_id` and `seq`).
struct Member<'a> {
    key: &'a str,
    range: Option<(usize, usize)>,
}

/// Writes the separator before a member and its `"key":`; returns where the member starts.
fn begin_member(out: &mut String, key: &str) -> usize {
    // Only an object's opening brace ends with `{`: a written value never does.
    if !out.ends_with('{') {
        out.push(',');
    }
    let start = out.len();
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    start
}

/// A cursor over the line's bytes. Every method answers `None` at the first byte that is not
/// canonical JSON, leaving the line to the general reader.
struct Scan<'a> {
    text: &'a str,
    i: usize,
    /// The members of the objects being written, innermost last (one vector for the whole
    /// line, not one per object).
    members: Vec<Member<'a>>,
    /// Where an object whose members came out of order is copied to be written again.
    scratch: String,
}

impl<'a> Scan<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn eat_str(&mut self, want: &str) -> Option<()> {
        let end = self.i.checked_add(want.len())?;
        (self.bytes().get(self.i..end)? == want.as_bytes()).then(|| self.i = end)
    }

    /// A string without any escape; its text. (Keys and the fields read are compared and
    /// kept as written, so an escape there is left to the general reader.)
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = self.bytes().get(start..)?;
        let len = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        // The delimiters are ASCII, so the slice falls on character boundaries.
        self.text.get(start..start + len)
    }

    /// A string as RFC 8785 writes it: only `"` and `\` and the controls escaped, each in its
    /// one canonical spelling.
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = self.bytes().get(self.i..)?;
            let at = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            self.i += at;
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.bytes().get(self.i..self.i + 4)?;
                        self.i += 4;
                        // `\u00xx`, lower-case hex, a control character (below U+0020).
                        let control = hex[0] == b'0'
                            && hex[1] == b'0'
                            && matches!(hex[2], b'0' | b'1')
                            && matches!(hex[3], b'0'..=b'9' | b'a'..=b'f');
                        if !control {
                            return None;
                        }
                        // Those five have a short form, which is the canonical one.
                        if hex[2] == b'0' && matches!(hex[3], b'8' | b'9' | b'a' | b'c' | b'd') {
                            return None;
                        }
                    }
                    _ => return None,
                },
                // A raw control character is not JSON.
                _ => return None,
            }
        }
    }

    /// A non-negative integer in canonical form (no sign, no leading zero, within 2^53).
    fn unsigned_integer(&mut self) -> Option<u64> {
        let start = self.i;
        let len = self.bytes().get(start..)?.iter().take_while(|b| b.is_ascii_digit()).count();
        let digits = self.text.get(start..start + len)?;
        if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        if n > MAX_EXACT_INTEGER {
            return None;
        }
        self.i = start + len;
        Some(n)
    }

    /// A number exactly as RFC 8785 prints it.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        let len = self
            .bytes()
            .get(start..)?
            .iter()
            .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            .count();
        let literal = self.text.get(start..start + len)?;
        let is_integer = literal.bytes().all(|b| b == b'-' || b.is_ascii_digit());
        if is_integer {
            let magnitude = literal.strip_prefix('-').unwrap_or(literal);
            // "-0" is printed "0"; a sign with no digits, or a leading zero, is not canonical.
            if magnitude.is_empty()
                || magnitude.starts_with('-')
                || (magnitude.len() > 1 && magnitude.starts_with('0'))
                || literal == "-0"
            {
                return None;
            }
            let m: u64 = magnitude.parse().ok()?;
            if m > MAX_EXACT_INTEGER {
                return None;
            }
        } else {
            // Parsed as serde_json parses it (correctly rounded), printed as JCS prints it:
            // canonical when that is the literal itself.
            let f: f64 = literal.parse().ok()?;
            if canonical_float(f)? != literal {
                return None;
            }
        }
        self.i = start + len;
        Some(())
    }

    /// Skips JSON's insignificant whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Reads any value (whitespace around tokens allowed, every scalar in its canonical
    /// spelling, members in any order) and appends its canonical form to `out`.
    fn write_value(&mut self, out: &mut String, depth: u32) -> Option<()> {
        let start = self.i;
        match self.peek()? {
            b'{' => return self.write_object(out, depth + 1),
            b'[' => return self.write_array(out, depth + 1),
            _ => self.value(depth)?,
        }
        out.push_str(self.text.get(start..self.i)?);
        Some(())
    }

    fn write_object(&mut self, out: &mut String, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        out.push('{');
        let base = out.len();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            out.push('}');
            return Some(());
        }
        let first = self.members.len();
        loop {
            let key = self.member_key()?;
            let start = begin_member(out, key);
            self.write_value(out, depth)?;
            self.members.push(Member { key, range: Some((start, out.len())) });
            if !self.more_members()? {
                break;
            }
        }
        self.end_object(out, base, first)
    }

    /// A member's key (without escapes) and its colon, whitespace around them skipped.
    fn member_key(&mut self) -> Option<&'a str> {
        self.ws();
        let key = self.plain_string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(key)
    }

    /// After a member's value: `Some(true)` at a comma, `Some(false)` at the object's end.
    fn more_members(&mut self) -> Option<bool> {
        self.ws();
        match self.next()? {
            b',' => Some(true),
            b'}' => Some(false),
            _ => None,
        }
    }

    /// Ends the object whose members (`self.members[first..]`) were written from `out[base..]`
    /// as they came: when their keys came in RFC 8785 order (the common case) that is one
    /// `}`; otherwise they are written again in that order. `None` when a key repeats.
    fn end_object(&mut self, out: &mut String, base: usize, first: usize) -> Option<()> {
        use std::cmp::Ordering::{self, Less};
        let members = self.members.get_mut(first..)?;
        // RFC 8785 orders keys by UTF-16 code units; when no key holds a byte at or above
        // 0xEE that is their byte order (see `jcs_key_order`), checked once per object here
        // rather than on both keys of every comparison.
        let order: fn(&str, &str) -> Ordering =
            if members.iter().all(|m| m.key.bytes().all(|b| b < 0xEE)) {
                |a, b| a.as_bytes().cmp(b.as_bytes())
            } else {
                jcs_key_order
            };
        let in_order = |m: &[Member<'_>]| m.windows(2).all(|w| order(w[0].key, w[1].key) == Less);
        if !in_order(members) {
            members.sort_unstable_by(|a, b| order(a.key, b.key));
            if !in_order(members) {
                return None;
            }
            self.scratch.clear();
            self.scratch.push_str(out.get(base..)?);
            out.truncate(base);
            for (i, (start, end)) in members.iter().filter_map(|m| m.range).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(self.scratch.get(start - base..end - base)?);
            }
        }
        self.members.truncate(first);
        out.push('}');
        Some(())
    }

    fn write_array(&mut self, out: &mut String, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        self.ws();
        out.push('[');
        if self.peek()? == b']' {
            self.i += 1;
            out.push(']');
            return Some(());
        }
        loop {
            self.ws();
            self.write_value(out, depth)?;
            self.ws();
            match self.next()? {
                b',' => out.push(','),
                b']' => {
                    out.push(']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any value, canonical; `depth` counts the containers it sits in.
    fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b't' => self.eat_str("true"),
            b'f' => self.eat_str("false"),
            b'n' => self.eat_str("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn object(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let mut last: Option<&str> = None;
        loop {
            let key = self.plain_string()?;
            if last.is_some_and(|l| jcs_key_order(l, key) != std::cmp::Ordering::Less) {
                return None;
            }
            last = Some(key);
            self.eat(b':')?;
            self.value(depth)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.value(depth)?;
            match self.next()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::NdjsonLine;
    use crate::hash::tests::json_value;
    use crate::ndjson::write_transition;

    /// What the general reader makes of `line` (the fast path turned off).
    fn general(line: &str) -> Result<Transition, crate::Error> {
        match NdjsonLine::from_object(crate::parse_json_object(line)?)? {
            NdjsonLine::Transition(t) => Ok(t),
            NdjsonLine::Run { .. } => Err(crate::Error::invalid("kind", "a metadata line")),
        }
    }

    /// The line a client writes for `t`.
    fn wire(t: &Transition) -> String {
        let mut out = String::new();
        write_transition(&mut out, &t.run_id, t.seq.get(), &t.body);
        out.trim_end_matches('\n').to_owned()
    }

    #[test]
    fn the_wire_form_is_read_in_place_as_the_general_reader_reads_it() {
        let line = json!({"run_id": "r", "seq": 7, "ts": "2026-01-01T00:00:00.5+02:00",
            "to": "done", "from": "running", "node": "a/b",
            "attrs": {"n": [1, -2, 0.5, 1e21, null, true, "é\u{1}\""], "z": {}, "a": []}});
        let t = general(&line.to_string()).expect("valid");
        let w = wire(&t);
        assert_eq!(transition(&w, None).as_ref(), Some(&t), "{w}");
        // After a line of the same run the id is shared, after another run's it is read.
        for previous in [t.run_id.clone(), RunId::new("other").expect("valid")] {
            assert_eq!(transition(&w, Some(&previous)).as_ref(), Some(&t), "{w}");
        }
    }

    #[test]
    fn anything_not_exactly_canonical_is_left_to_the_general_reader() {
        let base =
            r#"{"run_id":"r","seq":1,"attrs":{"a":1,"b":2},"to":"x","ts":"2026-01-01T00:00:00Z"}"#;
        assert!(transition(base, None).is_some());
        for (why, line) in [
            ("keys out of order", base.replace(r#""a":1,"b":2"#, r#""b":2,"a":1"#)),
            ("a repeated key", base.replace(r#""a":1,"b":2"#, r#""a":1,"a":2"#)),
            ("whitespace", base.replace(r#""a":1"#, r#""a": 1"#)),
            ("a trailing CR", format!("{base}\r")),
            ("1.0 is printed 1", base.replace(r#""a":1"#, r#""a":1.0"#)),
            ("-0 is printed 0", base.replace(r#""a":1"#, r#""a":-0"#)),
            ("a leading zero", base.replace(r#""a":1"#, r#""a":01"#)),
            ("beyond 2^53", base.replace(r#""a":1"#, r#""a":9007199254740993"#)),
            ("an escaped slash", base.replace(r#""to":"x""#, r#""to":"\/""#)),
            ("an upper-case escape", base.replace(r#""a":1"#, r#""a":"\u001F""#)),
            ("a long escape with a short form", base.replace(r#""a":1"#, r#""a":"\u000a""#)),
            ("seq in the body", base.replace(r#""attrs""#, r#""seq":2,"attrs""#)),
            ("an empty to", base.replace(r#""to":"x""#, r#""to":"""#)),
            ("a ts that is no time", base.replace("2026-01-01T00:00:00Z", "soon")),
            ("attrs not an object", base.replace(r#"{"a":1,"b":2}"#, "[1]")),
            ("a metadata line", r#"{"kind":"run","run_id":"r"}"#.to_owned()),
            (
                "seq not first after run_id",
                r#"{"run_id":"r","ts":"2026-01-01T00:00:00Z","seq":1,"to":"x"}"#.to_owned(),
            ),
        ] {
            assert!(transition(&line, None).is_none(), "{why}: {line}");
        }
        // Escapes JCS does write are canonical, and read in place.
        let escaped = base.replace(r#""a":1"#, r#""a":"\"\\\b\f\n\r\t\u0000\u001f""#);
        assert_eq!(transition(&escaped, None).as_ref(), general(&escaped).ok().as_ref());
        assert!(transition(&escaped, None).is_some());
    }

    /// What the general reader makes of a line of a run file (`run_id` and `seq` may be
    /// missing): its body.
    fn general_body(line: &str) -> Result<TransitionBody, crate::Error> {
        let mut fields = crate::parse_json_object(line)?;
        fields.remove("run_id");
        fields.remove("seq");
        TransitionBody::new(fields)
    }

    /// Writes `v` with `order` choosing each object's member order and `gap` the whitespace
    /// around tokens; scalars in their canonical spelling.
    fn scrambled(v: &Value, order: &mut impl FnMut(usize) -> Vec<usize>, gap: &str) -> String {
        match v {
            Value::Object(map) => {
                let entries: Vec<_> = map.iter().collect();
                let members: Vec<String> = order(entries.len())
                    .into_iter()
                    .map(|i| {
                        let (k, v) = entries[i];
                        let k = crate::hash::canonical_json("k", &Value::String(k.clone()))
                            .expect("a string");
                        format!("{gap}{k}{gap}:{gap}{}{gap}", scrambled(v, order, gap))
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
            Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|i| format!("{gap}{}{gap}", scrambled(i, order, gap)))
                    .collect();
                format!("[{}]", items.join(","))
            }
            scalar => crate::hash::canonical_json("v", scalar).expect("canonical"),
        }
    }

    #[test]
    fn a_producers_line_is_canonicalised_as_it_is_scanned() {
        let line = r#" { "ts" : "2026-11-01T00:00:00.050Z", "node":"stage-3/task-119",
            "from":"queued","to":"running","attrs":{"attempt":2,"host":"runner-02.ci.internal",
            "timing":{"queued_ms":3,"ran_ms":17},"exit":0,"outputs":["s3://a/1.tar.zst",null],
            "resources":{"cpu":{"req":"500m","lim":"2"},"mem_mb":512}} , "seq": 1 } "#
            .replace('\n', " ");
        let fast = any_order(&line).expect("read without a tree");
        assert_eq!(fast.body, general_body(&line).expect("valid"));
        assert_eq!((fast.run_id, fast.seq), (None, Some(1)));
        assert!(fast.body.canonical_json().starts_with(r#"{"attrs":{"attempt":2,"exit":0,"#));
        let with_run = line.replacen('{', r#"{"run_id":"r-1","#, 1);
        let fast = any_order(&with_run).expect("read without a tree");
        assert_eq!(fast.run_id, Some("r-1"));
        // NdjsonLine::parse reads it the same way, when the line names its run and seq.
        let parsed = NdjsonLine::parse(&with_run).expect("valid").expect("a line");
        let general = NdjsonLine::from_object(crate::parse_json_object(&with_run).expect("json"));
        assert_eq!(Some(parsed), general.ok());
    }

    #[test]
    fn a_producers_line_not_sure_to_read_alike_is_left_to_the_general_reader() {
        let base = r#"{"to":"x","attrs":{"b":2,"a":1},"ts":"2026-01-01T00:00:00Z"}"#;
        assert!(any_order(base).is_some());
        for (why, line) in [
            ("a repeated key", base.replace(r#""b":2,"a":1"#, r#""a":2,"a":1"#)),
            ("a repeated top-level key", base.replace(r#""to":"x""#, r#""to":"x","to":"y""#)),
            ("a repeated seq", base.replace(r#""to":"x""#, r#""seq":1,"to":"x","seq":1"#)),
            ("1.0 is printed 1", base.replace(r#""a":1"#, r#""a":1.0"#)),
            ("-0 is printed 0", base.replace(r#""a":1"#, r#""a":-0"#)),
            ("beyond 2^53", base.replace(r#""a":1"#, r#""a":9007199254740993"#)),
            ("an escaped slash", base.replace(r#""to":"x""#, r#""to":"\/""#)),
            ("an escaped key", base.replace(r#""a":1"#, r#""\u0061":1"#)),
            ("a seq that is a float", base.replace(r#""to":"x""#, r#""seq":1.0,"to":"x""#)),
            ("an empty to", base.replace(r#""to":"x""#, r#""to":"""#)),
            ("a ts that is no time", base.replace("2026-01-01T00:00:00Z", "soon")),
            ("attrs not an object", base.replace(r#"{"b":2,"a":1}"#, "[1]")),
            ("a metadata line", r#"{"kind":"run","run_id":"r"}"#.to_owned()),
            ("trailing text", format!("{base} x")),
            ("a trailing comma", base.replace(r#""a":1}"#, r#""a":1,}"#)),
            ("a vertical tab is no JSON whitespace", base.replace(r#""a":1"#, "\"a\":\u{b}1")),
        ] {
            assert!(any_order(&line).is_none(), "{why}: {line}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Whatever body a line carries, its wire form reads in place to exactly what the
        /// general reader makes of it (or is left to it).
        #[test]
        fn wire_lines_read_as_the_general_reader_reads_them(
            attrs in json_value(),
            extra in json_value(),
            node in proptest::option::of("[a-z/é\\-]{0,8}"),
            seq in 0u64..(1 << 53),
        ) {
            let mut line = json!({"run_id": "run-1", "seq": seq, "ts": "2026-05-01T10:00:00Z",
                "to": "ok", "x": extra});
            if let Value::Object(o) = &attrs {
                line["attrs"] = Value::Object(o.clone());
            }
            if let Some(n) = node {
                line["node"] = Value::String(n);
            }
            let t = general(&line.to_string()).expect("a valid transition");
            let w = wire(&t);
            let fast = transition(&w, None);
            // Only a key holding an escape sends a wire line the general way.
            prop_assert!(fast.is_some() || w.contains('\\'), "read in place: {}", w);
            if let Some(fast) = fast {
                prop_assert_eq!(fast, t);
            }
        }

        /// Any change to a wire line: the fast path either leaves it to the general reader or
        /// agrees with it exactly.
        #[test]
        fn a_changed_wire_line_is_read_alike_or_left_alone(
            attrs in json_value(),
            at in any::<proptest::sample::Index>(),
            byte in prop_oneof![Just(b' '), Just(b'"'), Just(b'\\'), Just(b','), Just(b'0'),
                Just(b'-'), Just(b'.'), Just(b'e'), Just(b'}'), Just(b'{'), Just(b'['), Just(b'a')],
            replace in any::<bool>(),
        ) {
            let line = json!({"run_id": "r", "seq": 3, "ts": "2026-05-01T10:00:00Z",
                "to": "ok", "attrs": {"v": attrs}});
            let t = general(&line.to_string()).expect("valid");
            let mut w = wire(&t).into_bytes();
            let i = at.index(w.len());
            if replace { w[i] = byte } else { w.insert(i, byte) }
            let Ok(w) = String::from_utf8(w) else { return Ok(()) };
            if let Some(fast) = transition(&w, None) {
                prop_assert_eq!(Some(fast), general(&w).ok(), "{}", w);
            }
        }

        /// A producer's line (members in any order, whitespace around tokens, with or without
        /// run_id and seq) reads without a tree to exactly the body the general reader makes.
        #[test]
        fn producers_lines_read_as_the_general_reader_reads_them(
            attrs in json_value(),
            extra in json_value(),
            node in proptest::option::of("[a-z/é\\-]{0,8}"),
            ids in any::<(bool, bool)>(),
            seed in any::<u64>(),
            gap in prop_oneof![Just(""), Just(" "), Just("\t"), Just(" \r ")],
        ) {
            let mut line = json!({"ts": "2026-05-01T10:00:00+01:00", "to": "ok", "x": extra});
            if let Value::Object(o) = &attrs {
                line["attrs"] = Value::Object(o.clone());
            }
            if let Some(n) = node {
                line["node"] = Value::String(n);
            }
            if ids.0 {
                line["run_id"] = json!("run-1");
            }
            if ids.1 {
                line["seq"] = json!(seed % 1000);
            }
            // A member order from the seed: a rotation, reversed on odd objects.
            let mut state = seed;
            let mut order = |n: usize| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let mut o: Vec<usize> = (0..n).map(|i| (i + (state >> 33) as usize) % n.max(1)).collect();
                if state & 1 == 1 { o.reverse(); }
                o
            };
            let text = scrambled(&line, &mut order, gap);
            let expected = general_body(&text).expect("a valid body");
            let fast = any_order(&text);
            // Only a key holding an escape sends such a line the general way.
            prop_assert!(fast.is_some() || expected.canonical_json().contains('\\'), "{}", text);
            if let Some(fast) = fast {
                prop_assert_eq!(&fast.body, &expected, "{}", text);
                prop_assert_eq!(fast.run_id.is_some(), ids.0);
                prop_assert_eq!(fast.seq.is_some(), ids.1);
            }
        }

        /// Any change to a producer's line: read alike, or left to the general reader.
        #[test]
        fn a_changed_producers_line_is_read_alike_or_left_alone(
            attrs in json_value(),
            at in any::<proptest::sample::Index>(),
            byte in prop_oneof![Just(b' '), Just(b'"'), Just(b'\\'), Just(b','), Just(b'0'),
                Just(b'-'), Just(b'.'), Just(b'e'), Just(b'}'), Just(b'{'), Just(b'['), Just(b'a'),
                Just(b':'), Just(b'\t')],
            replace in any::<bool>(),
        ) {
            let line = json!({"to": "ok", "ts": "2026-05-01T10:00:00Z", "seq": 3,
                "attrs": {"v": attrs, "a": [1, {"z": 1, "b": null}]}});
            let mut order = |n: usize| (0..n).rev().collect::<Vec<_>>();
            let mut w = scrambled(&line, &mut order, " ").into_bytes();
            let i = at.index(w.len());
            if replace { w[i] = byte } else { w.insert(i, byte) }
            let Ok(w) = String::from_utf8(w) else { return Ok(()) };
            if let Some(fast) = any_order(&w) {
                prop_assert_eq!(Some(fast.body), general_body(&w).ok(), "{}", w);
            }
        }
    }
}
