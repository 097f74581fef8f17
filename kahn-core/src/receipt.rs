//! Signed append receipts: what a KAHN server acknowledged, in a form a producer can keep and
//! check later without trusting the database.
//!
//! A run's hash chain makes any edit visible to whoever recomputes it, but whoever holds the
//! database can also recompute `head_hash` after an edit. A receipt closes that gap: the
//! server signs, with an Ed25519 key the database never sees, the statement "run R of tenant
//! T had `next_seq` N and head H when I acknowledged it at time A". Later, the run's stored
//! chain recomputed up to seq N must still end in H: an edited, truncated, deleted or moved
//! run cannot (see [`StorageBackendExt::check_receipt`](crate::StorageBackendExt::check_receipt)).
//!
//! The receipt is a [DSSE] envelope (the one in-toto attestations use): the payload is the
//! RFC 8785 canonical JSON of a [`Receipt`], its type is [`RECEIPT_PAYLOAD_TYPE`], and the
//! signature is over DSSE's pre-authentication encoding (`PAE`), so any DSSE verifier given the
//! public key can check one. The key id is the hex SHA-256 of the raw 32-byte public key.
//!
//! The same key signs tenants' checkpoints ([`crate::checkpoint`]), under their own payload
//! type: one code path signs and verifies both, and neither can be read as the other.
//!
//! [DSSE]: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SubsecRound as _, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::hash::{Digest, canonical_json};
use crate::id::{RunId, TenantId};
use crate::model::RunAppendReport;

/// The DSSE `payloadType` of a KAHN receipt.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.kahn.receipt.v1+json";

/// What a receipt states: at `received_at`, the server held run `run_id` of tenant
/// `tenant_id` with `next_seq` transitions whose chain ends in `head_hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The tenant the run belongs to.
    pub tenant_id: TenantId,
    /// The run.
    pub run_id: RunId,
    /// How many transitions the run held (the chain's length).
    pub next_seq: u64,
    /// The chain link of seq `next_seq - 1` ([`Digest::ZERO`] for an empty run).
    pub head_hash: Digest,
    /// The server's clock when it acknowledged the append (microsecond precision).
    pub received_at: DateTime<Utc>,
    /// The signing key's id ([`ReceiptKey::id`]).
    pub key_id: String,
}

/// A statement the server signs with its receipt key: a [`Receipt`], or a tenant's
/// [`Checkpoint`](crate::checkpoint::Checkpoint). Each has its own DSSE payload type, so one
/// can never be read as the other, and names the key that signed it.
pub(crate) trait SignedPayload: Serialize + serde::de::DeserializeOwned {
    /// The DSSE `payloadType`.
    const PAYLOAD_TYPE: &'static str;
    /// What it is called in errors (the `field` of [`Error::InvalidInput`]).
    const NAME: &'static str;
    /// The id of the key it says signed it.
    fn key_id(&self) -> &str;
}

impl SignedPayload for Receipt {
    const PAYLOAD_TYPE: &'static str = RECEIPT_PAYLOAD_TYPE;
    const NAME: &'static str = "receipt";
    fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// A DSSE envelope: a signed receipt (or checkpoint) as it travels and is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`RECEIPT_PAYLOAD_TYPE`] for a KAHN receipt,
    /// [`CHECKPOINT_PAYLOAD_TYPE`](crate::checkpoint::CHECKPOINT_PAYLOAD_TYPE) for a checkpoint.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
    /// One signature per signing key.
    pub signatures: Vec<EnvelopeSignature>,
}

impl Envelope {
    /// The receipt inside, read WITHOUT checking any signature: for bookkeeping (which run and
    /// head a kept receipt is about), never for trust — that is [`ReceiptKey::verify`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the payload is not a base64 KAHN receipt.
    pub fn unverified_receipt(&self) -> Result<Receipt, Error> {
        self.unverified_payload()
    }

    /// The payload of type `T` inside, read WITHOUT checking any signature.
    pub(crate) fn unverified_payload<T: SignedPayload>(&self) -> Result<T, Error> {
        let refused = |message: String| Error::invalid(T::NAME, message);
        if self.payload_type != T::PAYLOAD_TYPE {
            return Err(refused(format!("payload type is {:?}", self.payload_type)));
        }
        let payload = BASE64
            .decode(&self.payload)
            .map_err(|e| refused(format!("payload is not base64: {e}")))?;
        serde_json::from_slice(&payload)
            .map_err(|e| refused(format!("payload is not a KAHN {}: {e}", T::NAME)))
    }
}

/// One signature of an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's id.
    pub keyid: String,
    /// The Ed25519 signature over `PAE(payloadType, payload)`, base64.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`,
/// lengths in ASCII decimal. What is signed, so a payload cannot be read as another type.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(
        format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// Why `text` is not a PEM block labelled `want`, in words: not PEM at all, or the other kind
/// of key (the commonest mix-up: the private key where the public one goes, or back).
fn pem_mismatch(text: &str, want: &str, parse_error: impl fmt::Display) -> String {
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(str::to_owned);
    match label {
        None => "not PEM (no -----BEGIN line)".to_owned(),
        Some(found) if found != want => format!("holds a {found}, not a {want}"),
        Some(_) => format!("not an Ed25519 {} in PEM: {parse_error}", want.to_lowercase()),
    }
}

/// The public half of a receipt key: what a producer or an auditor holds to check receipts.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiptKey {
    key: VerifyingKey,
    id: String,
}

impl ReceiptKey {
    fn new(key: VerifyingKey) -> Self {
        let id = Digest::sha256(key.as_bytes()).to_string();
        Self { key, id }
    }

    /// Reads a public key from PEM (SubjectPublicKeyInfo, `BEGIN PUBLIC KEY`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the text is not an Ed25519 public key in PEM.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(Self::new)
            .map_err(|e| Error::invalid("public key", pem_mismatch(pem, "PUBLIC KEY", e)))
    }

    /// The key as PEM (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        // Encoding 32 bytes as an SPKI cannot fail; an empty string would only be a bug.
        self.key.to_public_key_pem(LineEnding::LF).unwrap_or_default()
    }

    /// The key id: hex SHA-256 of the raw 32-byte public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks `envelope` was signed by this key over a KAHN receipt, and returns the receipt.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `receipt`) saying why it is refused: another payload
    /// type, no signature by this key (naming the key ids it has), a signature that does not
    /// verify, a payload that is not a receipt, or a receipt naming another key.
    pub fn verify(&self, envelope: &Envelope) -> Result<Receipt, Error> {
        self.verify_payload(envelope)
    }

    /// Checks `envelope` was signed by this key over a `T` (its payload type is
    /// `T::PAYLOAD_TYPE`, and the `T` inside names this key), and returns the `T`: the one
    /// verification path of every signed KAHN statement.
    pub(crate) fn verify_payload<T: SignedPayload>(&self, envelope: &Envelope) -> Result<T, Error> {
        let refused = |message: String| Error::invalid(T::NAME, message);
        if envelope.payload_type != T::PAYLOAD_TYPE {
            return Err(refused(format!(
                "payload type is {:?}, expected {:?}",
                envelope.payload_type,
                T::PAYLOAD_TYPE
            )));
        }
        let Some(signature) = envelope.signatures.iter().find(|s| s.keyid == self.id) else {
            let ids: Vec<&str> = envelope.signatures.iter().map(|s| s.keyid.as_str()).collect();
            return Err(refused(format!(
                "not signed by key {} (signed by: {})",
                self.id,
                if ids.is_empty() { "nobody".to_owned() } else { ids.join(", ") }
            )));
        };
        let payload = BASE64
            .decode(&envelope.payload)
            .map_err(|e| refused(format!("payload is not base64: {e}")))?;
        let sig = BASE64
            .decode(&signature.sig)
            .ok()
            .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
            .ok_or_else(|| refused("signature is not a base64 Ed25519 signature".to_owned()))?;
        self.key
            .verify_strict(&pae(&envelope.payload_type, &payload), &sig)
            .map_err(|_| refused(format!("signature does not verify under key {}", self.id)))?;
        let value: T = serde_json::from_slice(&payload)
            .map_err(|e| refused(format!("signed payload is not a KAHN {}: {e}", T::NAME)))?;
        if value.key_id() != self.id {
            return Err(refused(format!(
                "{} names key {}, but was signed by key {}",
                T::NAME,
                value.key_id(),
                self.id
            )));
        }
        Ok(value)
    }
}

impl fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptKey").field("id", &self.id).finish()
    }
}

/// The private half: signs receipts. Held by the server only (`kahn serve --receipt-key`);
/// its `Debug` never shows the key.
#[derive(Clone)]
pub struct ReceiptSigner {
    key: SigningKey,
    public: ReceiptKey,
}

impl ReceiptSigner {
    /// A new random key (256 bits from the operating system).
    ///
    /// # Errors
    /// [`Error::Backend`] when the operating system's random source fails.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::backend("os-random", e.to_string()))?;
        Ok(Self::from_key(SigningKey::from_bytes(&seed)))
    }

    fn from_key(key: SigningKey) -> Self {
        let public = ReceiptKey::new(key.verifying_key());
        Self { key, public }
    }

    /// Reads a private key from PEM (PKCS#8, `BEGIN PRIVATE KEY`), as `kahn keygen` writes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the text is not an Ed25519 private key in PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(Self::from_key)
            .map_err(|e| Error::invalid("receipt key", pem_mismatch(pem, "PRIVATE KEY", e)))
    }

    /// The key as PKCS#8 PEM: the secret, for writing to a file only its owner reads.
    ///
    /// # Errors
    /// [`Error::Backend`] if encoding fails (it does not for a valid key).
    pub fn to_pem(&self) -> Result<String, Error> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| Error::backend("receipt", format!("cannot encode the key: {e}")))
    }

    /// The public key receipts are checked with.
    pub fn public_key(&self) -> &ReceiptKey {
        &self.public
    }

    /// Signs the receipt for one run of an append report, at `received_at` (truncated to
    /// microseconds, the precision every store keeps).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] only if the receipt had no canonical form (it always has).
    pub fn sign_report(
        &self,
        tenant_id: TenantId,
        report: &RunAppendReport,
        received_at: DateTime<Utc>,
    ) -> Result<Envelope, Error> {
        self.sign(&Receipt {
            tenant_id,
            run_id: report.run_id.clone(),
            next_seq: report.next_seq,
            head_hash: report.head_hash,
            received_at: received_at.trunc_subsecs(6),
            key_id: self.public.id.clone(),
        })
    }

    /// Signs `receipt` (its `key_id` must be this key's: a receipt naming another key would
    /// be refused by every verifier).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `receipt.key_id` is not this key's id.
    pub fn sign(&self, receipt: &Receipt) -> Result<Envelope, Error> {
        self.sign_payload(receipt)
    }

    /// Signs `value` as a DSSE envelope of type `T::PAYLOAD_TYPE` over its RFC 8785 canonical
    /// JSON: the one signing path of every signed KAHN statement.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `T::NAME`) when `value` names another key than this one,
    /// or has no canonical form.
    pub(crate) fn sign_payload<T: SignedPayload>(&self, value: &T) -> Result<Envelope, Error> {
        let refused = |message: String| Error::invalid(T::NAME, message);
        if value.key_id() != self.public.id {
            return Err(refused(format!(
                "names key {}, but this signer is key {}",
                value.key_id(),
                self.public.id
            )));
        }
        let json = serde_json::to_value(value).map_err(|e| refused(e.to_string()))?;
        let payload = canonical_json(T::NAME, &json)?;
        let signature = self.key.sign(&pae(T::PAYLOAD_TYPE, payload.as_bytes()));
        Ok(Envelope {
            payload_type: T::PAYLOAD_TYPE.to_owned(),
            payload: BASE64.encode(payload.as_bytes()),
            signatures: vec![EnvelopeSignature {
                keyid: self.public.id.clone(),
                sig: BASE64.encode(signature.to_bytes()),
            }],
        })
    }
}

/// Two signers are equal when they hold the same key (compared by its public half).
impl PartialEq for ReceiptSigner {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}

impl Eq for ReceiptSigner {}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiptSigner").field("key_id", &self.public.id).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn report() -> RunAppendReport {
        RunAppendReport {
            run_id: RunId::new("r1").unwrap(),
            appended: 3,
            skipped: 0,
            next_seq: 3,
            head_hash: Digest::sha256(b"head"),
            receipt: None,
        }
    }

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // protocol.md's example: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn a_signed_receipt_verifies_and_reads_back() {
        let signer = ReceiptSigner::generate().unwrap();
        let tenant = TenantId::new_random();
        let at = Utc::now();
        let envelope = signer.sign_report(tenant, &report(), at).unwrap();
        let receipt = signer.public_key().verify(&envelope).unwrap();
        assert_eq!(receipt.tenant_id, tenant);
        assert_eq!(receipt.next_seq, 3);
        assert_eq!(receipt.head_hash, Digest::sha256(b"head"));
        assert_eq!(receipt.received_at, at.trunc_subsecs(6));
        assert_eq!(receipt.key_id, signer.public_key().id());
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let signer = ReceiptSigner::generate().unwrap();
        let again = ReceiptSigner::from_pem(&signer.to_pem().unwrap()).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        let public = ReceiptKey::from_pem(&signer.public_key().to_pem()).unwrap();
        assert_eq!(&public, signer.public_key());
        assert!(!format!("{signer:?}").contains(&signer.to_pem().unwrap()));
    }

    #[test]
    fn another_key_is_refused() {
        let signer = ReceiptSigner::generate().unwrap();
        let other = ReceiptSigner::generate().unwrap();
        let envelope = other.sign_report(TenantId::new_random(), &report(), Utc::now()).unwrap();
        let err = signer.public_key().verify(&envelope).unwrap_err().to_string();
        assert!(err.contains("not signed by key"), "{err}");
        // Relabelling the signature with the expected key id does not help.
        let mut forged = envelope.clone();
        forged.signatures[0].keyid = signer.public_key().id().to_owned();
        let err = signer.public_key().verify(&forged).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
    }

    #[test]
    fn an_altered_payload_is_refused() {
        let signer = ReceiptSigner::generate().unwrap();
        let envelope = signer.sign_report(TenantId::new_random(), &report(), Utc::now()).unwrap();
        let payload = String::from_utf8(BASE64.decode(&envelope.payload).unwrap()).unwrap();
        let mut altered = envelope.clone();
        altered.payload = BASE64.encode(payload.replace("\"next_seq\":3", "\"next_seq\":2"));
        let err = signer.public_key().verify(&altered).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
        let mut retyped = envelope;
        retyped.payload_type = "application/json".into();
        assert!(signer.public_key().verify(&retyped).is_err());
    }

    #[test]
    fn malformed_keys_name_what_is_wrong() {
        let err = ReceiptSigner::from_pem("hello").unwrap_err().to_string();
        assert!(err.contains("receipt key") && err.contains("not PEM"), "{err}");
        let err = ReceiptKey::from_pem("hello").unwrap_err().to_string();
        assert!(err.contains("public key") && err.contains("not PEM"), "{err}");
        // The two halves mixed up say so.
        let signer = ReceiptSigner::generate().unwrap();
        let err = ReceiptKey::from_pem(&signer.to_pem().unwrap()).unwrap_err().to_string();
        assert!(err.contains("holds a PRIVATE KEY, not a PUBLIC KEY"), "{err}");
        let err = ReceiptSigner::from_pem(&signer.public_key().to_pem()).unwrap_err().to_string();
        assert!(err.contains("holds a PUBLIC KEY, not a PRIVATE KEY"), "{err}");
    }
}
