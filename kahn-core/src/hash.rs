//! Content hashing (SHA-256 over RFC 8785 canonical JSON) and the per-run hash chain.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::Error;
use crate::model::StoredTransition;

/// A SHA-256 digest: a content hash or a chain link. Displays as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// 32 zero bytes: the chain link "before" seq 0 (`chain_hash[-1]`).
    pub const ZERO: Digest = Digest([0; 32]);

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a digest from a byte slice of length 32.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `bytes` is not 32 bytes long.
    pub fn try_from_slice(bytes: &[u8]) -> Result<Self, Error> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| Error::invalid("hash", format!("is {} bytes, expected 32", bytes.len())))
    }

    /// SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| Error::invalid("hash", format!("not 64 hex digits: {e}")))?;
        Ok(Self(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The RFC 8785 (JCS) canonical form of `value`: sorted keys, no insignificant whitespace,
/// ECMAScript number formatting.
///
/// One walk over the value, writing into one buffer: keys are sorted by UTF-16 code units
/// (a no-op when the map already iterates in that order, which a `serde_json::Map` does unless
/// a key holds a character at or above U+E000), strings are escaped as JCS says, integers are
/// written directly, and every other number is formatted by the `canon-json` crate, which owns
/// the hard part of JCS (ECMAScript's shortest round-trip double formatting). The result is
/// checked against `canon-json`'s own serializer by a property test and by the `ndjson` fuzz
/// target.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` (for a body, the top-level key holding the number)
/// when the value has no exact canonical form: an integer beyond ±2^53, or a whole double
/// that JCS would print as one (see [`prints_as_inexact_integer`]).
pub(crate) fn canonical_json(field: &str, value: &serde_json::Value) -> Result<String, Error> {
    let mut out = String::with_capacity(384);
    Canonical { out: &mut out }.value(field, value)?;
    Ok(out)
}

/// The largest integer magnitude RFC 8785 represents exactly (it treats numbers as IEEE-754
/// doubles): 2^53.
pub(crate) const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Whether JCS writes `f` as plain digits beyond ±2^53: a whole double below 1e21 (from 1e21
/// on it writes an exponent). Those digits read back as an integer RFC 8785 cannot hash
/// exactly, so the stored form could not be read and hashed again (by the server, by `verify`).
fn prints_as_inexact_integer(f: f64) -> bool {
    f.fract() == 0.0 && f.abs() > MAX_EXACT_INTEGER as f64 && f.abs() < 1e21
}

/// How RFC 8785 prints the double `f` that is not written as an integer literal (the
/// formatter [`Canonical`] uses for every such number); `None` when it has no canonical form
/// (not finite, or a whole number beyond ±2^53 printed as digits).
pub(crate) fn canonical_float(f: f64) -> Option<String> {
    if !f.is_finite() || prints_as_inexact_integer(f) {
        return None;
    }
    let n = serde_json::Number::from_f64(f)?;
    let mut buf = Vec::with_capacity(24);
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, canon_json::CanonicalFormatter::new());
    serde::Serialize::serialize(&n, &mut ser).ok()?;
    String::from_utf8(buf).ok()
}

/// RFC 8785's property order: by UTF-16 code units. UTF-8 byte order is code point order,
/// which differs from UTF-16 order only when a character at or above U+E000 (UTF-8 lead byte
/// 0xEE or above) meets a supplementary one; only then are the keys re-encoded.
pub(crate) fn jcs_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.bytes().chain(b.bytes()).all(|x| x < 0xEE) {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// The canonical writer.
struct Canonical<'a> {
    out: &'a mut String,
}

impl Canonical<'_> {
    /// Writes `value`; `field` names it in errors.
    fn value(&mut self, field: &str, value: &serde_json::Value) -> Result<(), Error> {
        use serde_json::Value;
        match value {
            Value::Null => self.out.push_str("null"),
            Value::Bool(true) => self.out.push_str("true"),
            Value::Bool(false) => self.out.push_str("false"),
            Value::Number(n) => self.number(field, n)?,
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(field, item)?;
                }
                self.out.push(']');
            }
            Value::Object(map) => {
                // A body's errors name its top-level key; deeper values keep that name.
                let top = field == "body";
                let sorted = map
                    .keys()
                    .zip(map.keys().skip(1))
                    .all(|(a, b)| jcs_key_order(a, b) == std::cmp::Ordering::Less);
                let write = |this: &mut Self, i: usize, k: &str, v: &Value| {
                    this.out.push(if i == 0 { '{' } else { ',' });
                    this.string(k);
                    this.out.push(':');
                    this.value(if top { k } else { field }, v)
                };
                if sorted {
                    for (i, (k, v)) in map.iter().enumerate() {
                        write(self, i, k, v)?;
                    }
                } else {
                    let mut entries: Vec<_> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| jcs_key_order(a.0, b.0));
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        write(self, i, k, v)?;
                    }
                }
                if map.is_empty() {
                    self.out.push('{');
                }
                self.out.push('}');
            }
        }
        Ok(())
    }

    /// Integers within ±2^53 as decimal digits (ECMAScript prints every such double so);
    /// beyond, refused; any other number through `canon-json`'s formatter.
    fn number(&mut self, field: &str, n: &serde_json::Number) -> Result<(), Error> {
        use std::fmt::Write as _;
        let beyond = || {
            Error::invalid(
                field,
                format!(
                    "{n} is beyond ±2^53, which RFC 8785 cannot hash exactly; send it as a string"
                ),
            )
        };
        let integer =
            n.as_u64().map(|u| (u, false)).or_else(|| n.as_i64().map(|i| (i.unsigned_abs(), true)));
        match integer {
            Some((magnitude, _)) if magnitude > MAX_EXACT_INTEGER => Err(beyond()),
            None if n.as_f64().is_some_and(prints_as_inexact_integer) => Err(beyond()),
            Some((magnitude, negative)) => {
                if negative && magnitude > 0 {
                    self.out.push('-');
                }
                // Writing into a String cannot fail.
                let _ = write!(self.out, "{magnitude}");
                Ok(())
            }
            None => {
                let mut buf = Vec::with_capacity(24);
                let mut ser = serde_json::Serializer::with_formatter(
                    &mut buf,
                    canon_json::CanonicalFormatter::new(),
                );
                serde::Serialize::serialize(n, &mut ser).map_err(|e| {
                    Error::invalid(field, format!("{n} has no canonical JSON form: {e}"))
                })?;
                let text = std::str::from_utf8(&buf)
                    .map_err(|e| Error::invalid(field, format!("{n}: {e}")))?;
                self.out.push_str(text);
                Ok(())
            }
        }
    }

    /// A string as RFC 8785 escapes it: `"` and `\` escaped, the controls below U+0020 as
    /// `\b \t \n \f \r` or `\u00xx` (lowercase hex), everything else verbatim.
    fn string(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.out.push('"');
        let mut run_start = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escape: &str = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.out.push_str(&s[run_start..i]);
            if escape.is_empty() {
                self.out.push_str("\\u00");
                self.out.push(char::from(HEX[usize::from(byte >> 4)]));
                self.out.push(char::from(HEX[usize::from(byte & 0xf)]));
            } else {
                self.out.push_str(escape);
            }
            run_start = i + 1;
        }
        self.out.push_str(&s[run_start..]);
        self.out.push('"');
    }
}

/// The content hash of a JSON value: SHA-256 of its RFC 8785 canonical form, so key order and
/// whitespace never matter.
///
/// # Errors
/// [`Error::InvalidInput`] when the value has no canonical form.
pub fn content_hash(value: &serde_json::Value) -> Result<Digest, Error> {
    Ok(Digest::sha256(canonical_json("body", value)?.as_bytes()))
}

/// One link of the hash chain: `SHA-256(prev ‖ content)`.
pub fn chain_link(prev: &Digest, content: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update(prev.0);
    h.update(content.0);
    Digest(h.finalize().into())
}

/// Recomputes a run's hash chain incrementally, one stored transition at a time, holding
/// only the previous link: memory stays flat however long the run.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    next_seq: u64,
    head: Digest,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self { next_seq: 0, head: Digest::ZERO }
    }
}

impl ChainVerifier {
    /// A verifier expecting seq 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next transition: its seq, its content hash against its body, its chain link.
    ///
    /// # Errors
    /// [`Error::Integrity`] naming the seq where the chain breaks.
    pub fn push(&mut self, t: &StoredTransition) -> Result<(), Error> {
        let broken =
            |message: String| Error::Integrity { run_id: None, seq: Some(t.seq.get()), message };
        if t.seq.get() != self.next_seq {
            return Err(broken(format!("expected seq {}, found {}", self.next_seq, t.seq)));
        }
        let content = content_hash(&serde_json::Value::Object(t.body.clone()))
            .map_err(|e| broken(format!("stored body has no canonical form: {e}")))?;
        if content != t.content_hash {
            return Err(broken(format!(
                "body hashes to {content}, stored content hash {}",
                t.content_hash
            )));
        }
        let link = chain_link(&self.head, &content);
        if link != t.chain_hash {
            return Err(broken(format!("link is {link}, stored chain hash {}", t.chain_hash)));
        }
        self.head = link;
        self.next_seq += 1;
        Ok(())
    }

    /// The head link so far ([`Digest::ZERO`] before any transition).
    pub fn head(&self) -> Digest {
        self.head
    }

    /// How many transitions were verified.
    pub fn verified(&self) -> u64 {
        self.next_seq
    }
}

/// Recomputes a run's hash chain from its transitions, read in seq order from seq 0, and
/// returns the head link.
///
/// # Errors
/// [`Error::Integrity`] naming the first seq whose seq, content hash or chain link does not
/// match.
pub fn verify_chain<'a>(
    transitions: impl IntoIterator<Item = &'a StoredTransition>,
) -> Result<Digest, Error> {
    let mut v = ChainVerifier::new();
    for t in transitions {
        v.push(t)?;
    }
    Ok(v.head())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1, "a":{"y":2,"x":[1,2]}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str("{\n \"a\" : {\"x\":[1, 2],\"y\":2},\"b\":1}").unwrap();
        assert_eq!(content_hash(&a).unwrap(), content_hash(&b).unwrap());
        assert_ne!(content_hash(&a).unwrap(), content_hash(&json!({"b": 2})).unwrap());
    }

    #[test]
    fn canonical_form_is_rfc8785() {
        let v = json!({"b": 1.0, "a": "é\u{0001}", "c": 1e21});
        assert_eq!(canonical_json("x", &v).unwrap(), "{\"a\":\"é\\u0001\",\"b\":1,\"c\":1e+21}");
    }

    #[test]
    fn integers_beyond_2_53_are_refused_naming_the_field() {
        let ok =
            json!({"attrs": {"n": 9007199254740992_u64, "m": -9007199254740992_i64, "f": 1.5e300}});
        assert!(canonical_json("body", &ok).is_ok());
        let bad = json!({"attrs": {"n": 9007199254740993_u64}});
        let err = canonical_json("body", &bad).unwrap_err();
        assert!(matches!(&err, Error::InvalidInput { field, .. } if field == "attrs"), "{err}");
        // A whole double beyond 2^53 would be written as digits that read back as such an
        // integer: refused alike. From 1e21 on JCS writes an exponent, which reads back as a
        // double: fine. (Found by review: 1e16 was stored, then refused when re-read.)
        for f in [1e16, -1e16, 9007199254740994.0, 1.8e19, 9.9e20] {
            let err = canonical_json("body", &json!({"n": f})).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { field, .. } if field == "n"),
                "{f}: {err}"
            );
        }
        for f in [9007199254740992.0, 1e21, 1.5e300, 0.1, 5e-324] {
            let text = canonical_json("body", &json!({"n": f})).unwrap();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(canonical_json("body", &back).unwrap(), text, "{f} re-reads to itself");
        }
    }

    /// What `canon-json` alone writes for `value`: the reference the fast path must equal.
    fn reference(value: &serde_json::Value) -> String {
        let mut out = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, canon_json::CanonicalFormatter::new());
        value.serialize(&mut ser).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_sort_by_utf16_code_units_not_code_points() {
        // U+FF61 sorts before U+1F600 in code points but after it in UTF-16 (0xD83D…).
        let v = json!({"\u{ff61}": 1, "\u{1f600}": 2, "a": 3, "\u{e000}": 4, "": 5});
        assert_eq!(canonical_json("x", &v).unwrap(), reference(&v));
        assert_eq!(
            canonical_json("x", &v).unwrap(),
            "{\"\":5,\"a\":3,\"\u{1f600}\":2,\"\u{e000}\":4,\"\u{ff61}\":1}"
        );
    }

    /// Any JSON value with an exact canonical form: the strings hold the characters JCS treats
    /// specially, the numbers its edge cases.
    pub(crate) fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        // Characters that stress escaping and key order: controls, quotes, backslashes, DEL,
        // U+2028, the BMP's top, supplementary planes.
        let text = proptest::collection::vec(
            prop_oneof![
                Just('\u{0}'),
                Just('\u{c}'),
                Just('\n'),
                Just('\r'),
                Just('\t'),
                Just('\u{8}'),
                Just('\u{1f}'),
                Just('"'),
                Just('\\'),
                Just('/'),
                Just('\u{7f}'),
                Just('\u{2028}'),
                Just('\u{e000}'),
                Just('\u{ffff}'),
                Just('\u{10000}'),
                Just('\u{1f600}'),
                any::<char>(),
                proptest::char::range('a', 'e'),
            ],
            0..6,
        )
        .prop_map(|cs| cs.into_iter().collect::<String>());
        let number = prop_oneof![
            (-(1i64 << 53)..=(1i64 << 53)).prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite, with an exact canonical form", |f| {
                    f.is_finite() && !prints_as_inexact_integer(*f)
                })
                .prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(5e-324)),
            Just(serde_json::Value::from(1e21)),
            Just(serde_json::Value::from(-0.0)),
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            number,
            text.clone().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(text.clone(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The single-walk canonicaliser writes exactly what canon-json writes.
        #[test]
        fn canonical_form_equals_canon_json(v in json_value()) {
            let text = canonical_json("x", &v).unwrap();
            proptest::prop_assert_eq!(&text, &reference(&v));
            // What is stored reads back and hashes to itself (the server re-reads every line,
            // `verify` every stored body).
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(canonical_json("x", &back).unwrap(), text);
        }
    }

    #[test]
    fn chain_link_is_sha256_of_concatenation() {
        let c = Digest::sha256(b"x");
        let mut both = [0u8; 64];
        both[32..].copy_from_slice(c.as_bytes());
        assert_eq!(chain_link(&Digest::ZERO, &c), Digest::sha256(&both));
    }

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::sha256(b"kahn");
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("zz".parse::<Digest>().is_err());
    }
}
