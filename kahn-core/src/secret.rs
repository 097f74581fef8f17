//! API key secrets: generated with 256 bits of randomness, stored only as a hash, never
//! printed by `Debug`.

use std::fmt;

use crate::error::Error;
use crate::hash::Digest;

/// Every API key starts with this prefix; the HTTP layer uses it to tell keys from JWTs.
pub const API_KEY_PREFIX: &str = "kahn_live_sk_";

const SECRET_BYTES: usize = 32;

/// An API key secret: `kahn_live_sk_` followed by 64 hex digits (256 random bits).
///
/// It has no `Display`, and its `Debug` is redacted; read the secret only with
/// [`ApiKey::expose_secret`], where it must be shown (once, when issued) or sent.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Generates a new key from the operating system's random source.
    ///
    /// # Errors
    /// [`Error::Backend`] if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| Error::backend("os-random", e.to_string()))?;
        Ok(Self(format!("{API_KEY_PREFIX}{}", hex::encode(bytes))))
    }

    /// Parses a key as a client presents it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `api_key` when the prefix or length is wrong. The message
    /// never repeats the key.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let Some(rest) = s.strip_prefix(API_KEY_PREFIX) else {
            return Err(Error::invalid("api_key", format!("must start with {API_KEY_PREFIX}")));
        };
        if rest.len() != SECRET_BYTES * 2 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "api_key",
                format!("must be {API_KEY_PREFIX} followed by {} hex digits", SECRET_BYTES * 2),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The secret itself. Call only to show it once or to send it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The hash under which the key is stored and looked up.
    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash(Digest::sha256(self.0.as_bytes()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({API_KEY_PREFIX}<redacted>)")
    }
}

/// SHA-256 of an API key: the only form in which a key is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ApiKeyHash(Digest);

impl ApiKeyHash {
    /// Wraps a stored hash.
    pub const fn from_digest(d: Digest) -> Self {
        Self(d)
    }

    /// The digest.
    pub const fn digest(&self) -> &Digest {
        &self.0
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = ApiKey::generate().unwrap();
        let b = ApiKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(ApiKey::parse(a.expose_secret()).unwrap(), a);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let k = ApiKey::generate().unwrap();
        let printed = format!("{k:?} {:?}", Some(&k));
        assert!(!printed.contains(&k.expose_secret()[API_KEY_PREFIX.len()..]));
    }

    #[test]
    fn malformed_keys_are_refused_without_echo() {
        for bad in [
            "",
            "kahn_live_sk_",
            "kahn_live_sk_xyz",
            "sk_0000",
            &format!("{API_KEY_PREFIX}{}", "g".repeat(64)),
        ] {
            let err = ApiKey::parse(bad).unwrap_err().to_string();
            assert!(err.contains("api_key"));
        }
    }
}
