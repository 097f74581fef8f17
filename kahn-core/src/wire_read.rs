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
//! [`HttpBackend`]: https://docs.rs/kahn-http

use chrono::{DateTime, Utc};

use crate::hash::{MAX_EXACT_INTEGER, canonical_float, jcs_key_order};
use crate::id::{RunId, Seq};
use crate::transition::{Transition, TransitionBody};

/// Nesting beyond this is left to the general reader (which refuses past serde_json's 128).
const MAX_DEPTH: u32 = 100;

/// Reads `line` when it is a transition in the wire form with a canonical body and valid
/// fields; `None` otherwise (the general reader then decides, errors included).
pub(crate) fn transition(line: &str) -> Option<Transition> {
    let mut s = Scan { text: line, i: 0 };
    s.eat_str("{\"run_id\":")?;
    let run_id = RunId::new(s.plain_string()?).ok()?;
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

/// A cursor over the line's bytes. Every method answers `None` at the first byte that is not
/// canonical JSON, leaving the line to the general reader.
struct Scan<'a> {
    text: &'a str,
    i: usize,
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
        assert_eq!(transition(&w).as_ref(), Some(&t), "{w}");
    }

    #[test]
    fn anything_not_exactly_canonical_is_left_to_the_general_reader() {
        let base =
            r#"{"run_id":"r","seq":1,"attrs":{"a":1,"b":2},"to":"x","ts":"2026-01-01T00:00:00Z"}"#;
        assert!(transition(base).is_some());
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
            assert!(transition(&line).is_none(), "{why}: {line}");
        }
        // Escapes JCS does write are canonical, and read in place.
        let escaped = base.replace(r#""a":1"#, r#""a":"\"\\\b\f\n\r\t\u0000\u001f""#);
        assert_eq!(transition(&escaped).as_ref(), general(&escaped).ok().as_ref());
        assert!(transition(&escaped).is_some());
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
            let fast = transition(&w);
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
            if let Some(fast) = transition(&w) {
                prop_assert_eq!(Some(fast), general(&w).ok(), "{}", w);
            }
        }
    }
}
