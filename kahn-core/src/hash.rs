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
/// # Errors
/// [`Error::InvalidInput`] naming `field` when the value has no canonical form (a number JCS
/// cannot represent).
pub(crate) fn canonical_json(field: &str, value: &serde_json::Value) -> Result<String, Error> {
    check_numbers(field, value)?;
    let mut out = Vec::with_capacity(256);
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, canon_json::CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .map_err(|e| Error::invalid(field, format!("has no canonical JSON form: {e}")))?;
    String::from_utf8(out).map_err(|e| Error::invalid(field, e.to_string()))
}

/// The largest integer magnitude RFC 8785 represents exactly (it treats numbers as IEEE-754
/// doubles): 2^53.
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Refuses integers beyond ±2^53: JCS would round them, so two producers could hash one value
/// differently. Names the field holding the number.
fn check_numbers(field: &str, value: &serde_json::Value) -> Result<(), Error> {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            let too_big = n.as_u64().is_some_and(|u| u > MAX_EXACT_INTEGER)
                || n.as_i64().is_some_and(|i| i.unsigned_abs() > MAX_EXACT_INTEGER);
            if too_big {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{n} is beyond ±2^53, which RFC 8785 cannot hash exactly; send it as a string"
                    ),
                ));
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| check_numbers(field, v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if field == "body" { check_numbers(k, v) } else { check_numbers(field, v) }
        }),
        _ => Ok(()),
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
mod tests {
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
