//! Identifiers, validated when they are made so an invalid one cannot exist.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::Error;

/// A UUID newtype: random constructor, `Display`/`FromStr` as the hyphenated UUID (parse
/// errors name `$field`), transparent serde.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| Error::invalid($field, format!("not a UUID: {e}")))
            }
        }
    };
}

uuid_id!(
    /// A tenant's id: a UUID.
    TenantId,
    "tenant_id"
);

uuid_id!(
    /// An API key's public id (not secret): names a key for listing and revocation.
    ApiKeyId,
    "key_id"
);

/// Longest run id accepted, in bytes (all accepted characters are ASCII).
pub const RUN_ID_MAX_LEN: usize = 200;

/// A run's id: 1–200 characters of `[A-Za-z0-9._:-]`, neither `.` nor `..`, so it sits in a
/// URL path segment unescaped. Cloning it is cheap (a batch names its run on every line).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(std::sync::Arc<str>);

impl RunId {
    /// Validates `s` as a run id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `run_id` when `s` is empty, longer than 200 characters,
    /// contains a character outside `[A-Za-z0-9._:-]`, or is `.` or `..`.
    pub fn new(s: impl AsRef<str>) -> Result<Self, Error> {
        let s = s.as_ref();
        if s.is_empty() {
            return Err(Error::invalid("run_id", "must not be empty"));
        }
        if s.len() > RUN_ID_MAX_LEN {
            return Err(Error::invalid(
                "run_id",
                format!("is {} characters long; at most {RUN_ID_MAX_LEN} are allowed", s.len()),
            ));
        }
        if let Some(bad) =
            s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(Error::invalid(
                "run_id",
                format!("contains {bad:?}; only A-Z a-z 0-9 . _ : - are allowed"),
            ));
        }
        if s == "." || s == ".." {
            return Err(Error::invalid("run_id", "must not be \".\" or \"..\""));
        }
        Ok(Self(s.into()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({:?})", &*self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RunId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for RunId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for RunId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&*s).map_err(serde::de::Error::custom)
    }
}

/// A transition's position in its run: 0-based, contiguous, at most `i64::MAX` so every
/// database can store it in a signed 64-bit column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// The first seq of every run.
    pub const ZERO: Seq = Seq(0);
    /// The largest seq a run can hold.
    pub const MAX: Seq = Seq(i64::MAX as u64);

    /// Validates `n` as a seq.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `seq` when `n > i64::MAX`.
    pub fn new(n: u64) -> Result<Self, Error> {
        if n > Self::MAX.0 {
            return Err(Error::invalid("seq", format!("{n} is larger than {}", Self::MAX.0)));
        }
        Ok(Self(n))
    }

    /// The seq as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The seq as a signed number, for databases whose integers are signed (always lossless).
    pub const fn as_i64(self) -> i64 {
        self.0 as i64
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl TryFrom<u64> for Seq {
    type Error = Error;
    fn try_from(n: u64) -> Result<Self, Error> {
        Self::new(n)
    }
}

impl TryFrom<i64> for Seq {
    type Error = Error;
    fn try_from(n: i64) -> Result<Self, Error> {
        u64::try_from(n).map(Seq).map_err(|_| Error::invalid("seq", format!("{n} is negative")))
    }
}

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An identity provider's organisation id (the JWT `org_id` claim): 1–256 printable
/// characters, no whitespace or control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OrgId(Box<str>);

impl OrgId {
    /// Validates `s` as an org id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `org_id` when empty, longer than 256 bytes, or holding
    /// whitespace or control characters.
    pub fn new(s: impl AsRef<str>) -> Result<Self, Error> {
        let s = s.as_ref();
        validate_token("org_id", s)?;
        Ok(Self(s.into()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for OrgId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OrgId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// Checks an opaque identifier-like string (org ids, subjects, tenant names).
pub(crate) fn validate_token(field: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.len() > 256 {
        return Err(Error::invalid(field, "is longer than 256 bytes"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(field, "must not contain whitespace or control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_accepts_the_documented_alphabet() {
        for ok in ["a", "run-1", "gh:owner.repo:42:1", "A_b-C.d:e", &"x".repeat(200), "..."] {
            assert!(RunId::new(ok).is_ok(), "{ok:?} should be accepted");
        }
    }

    #[test]
    fn run_id_refuses_everything_else() {
        for bad in ["", ".", "..", "a/b", "a b", "é", "a%00", "a\0", &"x".repeat(201)] {
            let err = RunId::new(bad).expect_err(bad);
            assert!(
                matches!(&err, Error::InvalidInput { field, .. } if field == "run_id"),
                "{err}"
            );
        }
    }

    #[test]
    fn seq_bounds() {
        assert!(Seq::new(i64::MAX as u64).is_ok());
        assert!(Seq::new(u64::MAX).is_err());
        assert!(Seq::try_from(-1_i64).is_err());
    }
}
