//! Tenant checkpoints: a signed Merkle root over the history of every run of a tenant, so an
//! auditor can check that nothing was removed or rewritten between two checkpoints except what
//! retention purged (issue 19, item 2). This module is the pure core — no storage, no clock,
//! no I/O: the server's store keeps the leaf log and the signed checkpoints, and calls these
//! functions to extend the one and make the other.
//!
//! # The leaf log
//!
//! Each tenant has one **leaf log**, append-only like a Certificate Transparency log, so the
//! RFC 9162 consistency proofs of [`crate::merkle`] apply to it. A checkpoint appends one
//! [`Leaf`] per run whose state changed since the previous checkpoint ([`next_leaves`]), then
//! signs the root of the whole log ([`checkpoint_for`], [`ReceiptSigner::sign_checkpoint`]).
//! A leaf is one of ([`LeafKind`]):
//!
//! - `Head` (0): the run as stored — its `next_seq`, `head_hash` and `received_at`. A new run,
//!   a run that grew, and a run stored again after a purge each get one;
//! - `Purged` (1): retention removed the run; the leaf carries what the purge recorded of it,
//!   which must be the run's latest logged head;
//! - `Missing` (2): the run was logged as stored, is no longer stored, and no purge record names
//!   it. The server logs what it observed; any auditor then fails the audit ([`audit`]).
//!
//! A run's latest leaf is its state in the checkpoint; [`latest_leaf_index`] finds it, and
//! [`merkle::inclusion_proof`] proves it is there.
//!
//! # Leaf encoding
//!
//! The Merkle leaf data `d` of a [`Leaf`] ([`Leaf::encode`]) is, byte by byte, with every
//! integer big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | kind: `0x00` Head, `0x01` Purged, `0x02` Missing |
//! | 1 | 8 | `next_seq`, unsigned 64-bit |
//! | 9 | 32 | `head_hash`, the raw SHA-256 bytes (not hex) |
//! | 41 | 8 | `received_at` as microseconds since 1970-01-01T00:00:00Z, signed 64-bit two's complement (floor: a time before the epoch with a fraction rounds down) |
//! | 49 | 2 | `L`, the run id's length in bytes, unsigned 16-bit |
//! | 51 | `L` | the run id, UTF-8 (always ASCII: `[A-Za-z0-9._:-]`, 1–200 bytes) |
//!
//! The leaf hash is RFC 9162's `SHA-256(0x00 ‖ d)` ([`Leaf::hash`]), and a checkpoint's root
//! is `MTH` over the log's leaf hashes in order ([`merkle::root`]).
//! `kahn-core/tests/checkpoint_python.rs` holds this encoding, the leaf hashes and the root
//! equal to an independent Python implementation written from this table.
//!
//! # Checkpoints
//!
//! A [`Checkpoint`] states "tenant T's leaf log had `tree_size` leaves with root `root_hash` at
//! `issued_at`", signed as a DSSE envelope of type [`CHECKPOINT_PAYLOAD_TYPE`] by the same
//! Ed25519 key as receipts ([`crate::receipt`]).
//!
//! # Auditing
//!
//! [`audit`] takes two checkpoints, the log's leaves up to the newer one and the consistency
//! proof between them, and fails on anything an honest server's log cannot hold: a rewritten
//! or removed earlier leaf, a run removed outside retention, a head that went backwards, a
//! purge that removed something other than what was logged. It reports what changed in
//! between ([`AuditReport`]).
//!
//! ```
//! use chrono::{TimeZone as _, Utc};
//! use kahn_core::checkpoint::{RunHead, audit, checkpoint_for, leaf_hashes, next_leaves};
//! use kahn_core::merkle::consistency_proof;
//! use kahn_core::receipt::ReceiptSigner;
//! use kahn_core::{Digest, RunId, TenantId};
//!
//! let signer = ReceiptSigner::generate()?;
//! let (tenant, key_id) = (TenantId::new_random(), signer.public_key().id());
//! let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
//! let head = |id: &str, n: u64| RunHead {
//!     run_id: RunId::new(id).unwrap(),
//!     next_seq: n,
//!     head_hash: Digest::sha256(format!("{id}/{n}").as_bytes()),
//!     received_at: at,
//! };
//!
//! let mut log = next_leaves(&[], &[head("r1", 2)], &[]);
//! let c1 = checkpoint_for(tenant, &log, at, key_id);
//! let more = next_leaves(&log, &[head("r1", 5), head("r2", 1)], &[]);
//! log.extend(more);
//! let c2 = checkpoint_for(tenant, &log, at, key_id);
//!
//! // The server signs both; an auditor checks the envelopes, then the log between them.
//! let (e1, e2) = (signer.sign_checkpoint(&c1)?, signer.sign_checkpoint(&c2)?);
//! let key = signer.public_key();
//! let (c1, c2) = (key.verify_checkpoint(&e1)?, key.verify_checkpoint(&e2)?);
//! let proof = consistency_proof(&leaf_hashes(&log), c1.tree_size).unwrap();
//! let report = audit(&c1, &c2, &log, &proof)?;
//! assert_eq!(report.added, [RunId::new("r2")?]);
//! assert_eq!(report.extended, [(RunId::new("r1")?, 2, 5)]);
//! # Ok::<(), kahn_core::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::hash::Digest;
use crate::id::{RunId, TenantId};
use crate::merkle;
use crate::receipt::{Envelope, ReceiptKey, ReceiptSigner, SignedPayload};

/// The DSSE `payloadType` of a KAHN tenant checkpoint.
pub const CHECKPOINT_PAYLOAD_TYPE: &str = "application/vnd.kahn.checkpoint.v1+json";

/// The bytes of an encoded leaf before the run id: kind, `next_seq`, `head_hash`,
/// `received_at`, the id's length.
const FIXED_LEN: usize = 1 + 8 + 32 + 8 + 2;

/// What a [`Leaf`] says of its run. The discriminant is the leaf's first encoded byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum LeafKind {
    /// The run as stored: its current `next_seq`, `head_hash` and `received_at`.
    Head = 0,
    /// Retention removed the run; the leaf carries what the purge recorded (its last head).
    Purged = 1,
    /// The run was logged as stored, is no longer stored, and no purge record names it: it
    /// was removed outside retention. The leaf carries its latest logged head.
    Missing = 2,
}

impl LeafKind {
    /// The kind's byte in the encoding.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The kind whose byte is `byte`, if any.
    pub const fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Head),
            1 => Some(Self::Purged),
            2 => Some(Self::Missing),
            _ => None,
        }
    }
}

impl fmt::Display for LeafKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Head => "head",
            Self::Purged => "purged",
            Self::Missing => "missing",
        })
    }
}

/// One entry of a tenant's leaf log: a run's state at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// What the leaf says of the run.
    pub kind: LeafKind,
    /// The run.
    pub run_id: RunId,
    /// The run's number of transitions (its chain's length).
    pub next_seq: u64,
    /// The chain link of seq `next_seq - 1` ([`Digest::ZERO`] for an empty run).
    pub head_hash: Digest,
    /// The store's clock at the run's last append that stored something; encoded at
    /// microsecond precision (leaves made here are truncated to it).
    pub received_at: DateTime<Utc>,
}

impl Leaf {
    /// The leaf's Merkle data, as the module documentation's table lays it out.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.run_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(FIXED_LEN + id.len());
        out.push(self.kind.as_u8());
        out.extend_from_slice(&self.next_seq.to_be_bytes());
        out.extend_from_slice(self.head_hash.as_bytes());
        out.extend_from_slice(&self.received_at.timestamp_micros().to_be_bytes());
        // A run id is at most RUN_ID_MAX_LEN (200) bytes, far below u16::MAX.
        let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(id);
        out
    }

    /// Reads a leaf back from [`encode`](Self::encode)'s bytes, strictly: every byte must be
    /// accounted for.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `checkpoint leaf`) when the bytes are shorter than the
    /// fixed part, the kind byte is unknown, the length does not match the run id's, the
    /// time is out of range, or the run id is not a valid [`RunId`].
    pub fn decode(bytes: &[u8]) -> Result<Leaf, Error> {
        let bad = |message: String| Error::invalid("checkpoint leaf", message);
        if bytes.len() < FIXED_LEN {
            return Err(bad(format!(
                "is {} bytes long; a leaf has at least {FIXED_LEN}",
                bytes.len()
            )));
        }
        let (fixed, id) = bytes.split_at(FIXED_LEN);
        let kind = LeafKind::from_u8(fixed[0])
            .ok_or_else(|| bad(format!("kind byte {:#04x} is none of 0, 1, 2", fixed[0])))?;
        let array = |at: usize| -> [u8; 8] {
            let mut a = [0u8; 8];
            a.copy_from_slice(&fixed[at..at + 8]);
            a
        };
        let next_seq = u64::from_be_bytes(array(1));
        let head_hash = Digest::try_from_slice(&fixed[9..41])?;
        let micros = i64::from_be_bytes(array(41));
        let received_at = DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| bad(format!("received_at {micros} µs is out of range")))?;
        let len = usize::from(u16::from_be_bytes([fixed[49], fixed[50]]));
        if id.len() != len {
            return Err(bad(format!(
                "says its run id has {len} bytes, but {} bytes follow",
                id.len()
            )));
        }
        let id = std::str::from_utf8(id).map_err(|e| bad(format!("run id is not UTF-8: {e}")))?;
        let run_id = RunId::new(id).map_err(|e| bad(format!("run id {id:?}: {e}")))?;
        Ok(Leaf { kind, run_id, next_seq, head_hash, received_at })
    }

    /// The leaf's Merkle hash: [`merkle::leaf_hash`] of [`encode`](Self::encode).
    pub fn hash(&self) -> Digest {
        merkle::leaf_hash(&self.encode())
    }

    fn new(
        kind: LeafKind,
        run_id: &RunId,
        next_seq: u64,
        head_hash: Digest,
        at: DateTime<Utc>,
    ) -> Self {
        Leaf { kind, run_id: run_id.clone(), next_seq, head_hash, received_at: at.trunc_subsecs(6) }
    }
}

/// A run as the store holds it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunHead {
    /// The run.
    pub run_id: RunId,
    /// Its number of transitions.
    pub next_seq: u64,
    /// Its chain's head.
    pub head_hash: Digest,
    /// The store's clock at its last append that stored something.
    pub received_at: DateTime<Utc>,
}

/// What a retention purge recorded of a run it removed: its last head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgedRun {
    /// The run.
    pub run_id: RunId,
    /// Its number of transitions when purged.
    pub next_seq: u64,
    /// Its chain's head when purged.
    pub head_hash: Digest,
    /// Its `received_at` when purged (retention counted from it).
    pub received_at: DateTime<Utc>,
}

/// The leaves the next checkpoint appends to the log: one per change since `logged`.
///
/// - `logged`: the whole leaf log so far, in order;
/// - `current`: every run the store holds now (each once; a repeated run counts as its last
///   entry);
/// - `purged`: the purge records made since the previous checkpoint, in the order the purges
///   happened. Older records must not be passed again: a record for a run logged as stored
///   would be logged as a new purge.
///
/// The leaves are sorted by run id (byte order), and per run:
///
/// 1. for each purge record, when the run's latest leaf is `Head`: a `Purged` leaf with the
///    record's values — preceded by a `Head` leaf with them when the record's `next_seq` is
///    larger than the logged one (the run grew, then was purged, before this checkpoint saw
///    it). A record for a run not logged as stored (never logged, or already purged) adds
///    nothing: there is nothing in the log to remove;
/// 2. then, for a run in `current`: a `Head` leaf unless its latest leaf is a `Head` with the
///    same `next_seq` and `head_hash` — so a new run, a changed one, and one stored again
///    after a purge each get one; a changed `received_at` alone adds nothing;
/// 3. or, for a run not in `current` whose latest leaf is still a `Head`: a `Missing` leaf
///    with that head's values.
///
/// Unchanged runs add nothing. Times are truncated to microseconds. O((logged + current +
/// purged) · log n).
pub fn next_leaves(logged: &[Leaf], current: &[RunHead], purged: &[PurgedRun]) -> Vec<Leaf> {
    let mut latest: HashMap<&RunId, &Leaf> = HashMap::with_capacity(logged.len());
    for leaf in logged {
        latest.insert(&leaf.run_id, leaf);
    }
    // Every run that may need a leaf, in run id order.
    #[derive(Default)]
    struct Run<'a> {
        current: Option<&'a RunHead>,
        purges: Vec<&'a PurgedRun>,
    }
    let mut runs: BTreeMap<&RunId, Run<'_>> = BTreeMap::new();
    for head in current {
        runs.entry(&head.run_id).or_default().current = Some(head);
    }
    for record in purged {
        runs.entry(&record.run_id).or_default().purges.push(record);
    }
    for (run, leaf) in &latest {
        if leaf.kind == LeafKind::Head {
            runs.entry(run).or_default();
        }
    }

    let mut out = Vec::new();
    for (run_id, run) in runs {
        // The run's head while it is logged as stored.
        let mut head: Option<(u64, Digest, DateTime<Utc>)> = latest
            .get(run_id)
            .filter(|l| l.kind == LeafKind::Head)
            .map(|l| (l.next_seq, l.head_hash, l.received_at));
        for record in run.purges {
            let Some((next_seq, _, _)) = head else { continue };
            let leaf = |kind| {
                Leaf::new(kind, run_id, record.next_seq, record.head_hash, record.received_at)
            };
            if record.next_seq > next_seq {
                out.push(leaf(LeafKind::Head));
            }
            out.push(leaf(LeafKind::Purged));
            head = None;
        }
        match (run.current, head) {
            (Some(now), Some((next_seq, head_hash, _)))
                if now.next_seq == next_seq && now.head_hash == head_hash => {}
            (Some(now), _) => out.push(Leaf::new(
                LeafKind::Head,
                run_id,
                now.next_seq,
                now.head_hash,
                now.received_at,
            )),
            (None, Some((next_seq, head_hash, at))) => {
                out.push(Leaf::new(LeafKind::Missing, run_id, next_seq, head_hash, at));
            }
            (None, None) => {}
        }
    }
    out
}

/// A signed statement of a tenant's leaf log: it had `tree_size` leaves with Merkle root
/// `root_hash` at `issued_at`. Signed with [`ReceiptSigner::sign_checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The number of leaves in the log.
    pub tree_size: u64,
    /// [`merkle::root`] of the leaves' hashes.
    pub root_hash: Digest,
    /// The server's clock when it made the checkpoint (microsecond precision).
    pub issued_at: DateTime<Utc>,
    /// The signing key's id ([`ReceiptKey::id`]).
    pub key_id: String,
}

impl SignedPayload for Checkpoint {
    const PAYLOAD_TYPE: &'static str = CHECKPOINT_PAYLOAD_TYPE;
    const NAME: &'static str = "checkpoint";
    fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// The hashes of `leaves`, in order: the Merkle tree's leaves, for [`merkle::root`] and the
/// proofs.
pub fn leaf_hashes(leaves: &[Leaf]) -> Vec<Digest> {
    leaves.iter().map(Leaf::hash).collect()
}

/// The checkpoint of the log `leaves` (all of it, in order), to be signed by key `key_id`;
/// `issued_at` is truncated to microseconds.
pub fn checkpoint_for(
    tenant_id: TenantId,
    leaves: &[Leaf],
    issued_at: DateTime<Utc>,
    key_id: &str,
) -> Checkpoint {
    Checkpoint {
        tenant_id,
        tree_size: leaves.len() as u64,
        root_hash: merkle::root(&leaf_hashes(leaves)),
        issued_at: issued_at.trunc_subsecs(6),
        key_id: key_id.to_owned(),
    }
}

/// The index of `run`'s latest leaf in `leaves` — its state in a checkpoint over them, whose
/// inclusion [`merkle::inclusion_proof`] proves — or `None` when the run has no leaf.
pub fn latest_leaf_index(leaves: &[Leaf], run: &RunId) -> Option<u64> {
    leaves.iter().rposition(|l| &l.run_id == run).map(|i| i as u64)
}

impl ReceiptSigner {
    /// Signs `checkpoint` (its `key_id` must be this key's) as a DSSE envelope of type
    /// [`CHECKPOINT_PAYLOAD_TYPE`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `checkpoint`) when `checkpoint.key_id` is not this
    /// key's id.
    pub fn sign_checkpoint(&self, checkpoint: &Checkpoint) -> Result<Envelope, Error> {
        self.sign_payload(checkpoint)
    }
}

impl Envelope {
    /// The checkpoint inside, read WITHOUT checking any signature: for listing, never for
    /// trust — that is [`ReceiptKey::verify_checkpoint`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `checkpoint`) when the payload is not a base64 KAHN
    /// checkpoint.
    pub fn unverified_checkpoint(&self) -> Result<Checkpoint, Error> {
        self.unverified_payload()
    }
}

impl ReceiptKey {
    /// Checks `envelope` was signed by this key over a KAHN checkpoint, and returns it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `checkpoint`) saying why it is refused: another payload
    /// type (a receipt is not a checkpoint), no signature by this key, a signature that does
    /// not verify, a payload that is not a checkpoint, or a checkpoint naming another key.
    pub fn verify_checkpoint(&self, envelope: &Envelope) -> Result<Checkpoint, Error> {
        self.verify_payload(envelope)
    }
}

/// What changed in a tenant's log between two checkpoints: the leaves in
/// `[old.tree_size, new.tree_size)`, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Runs logged for the first time.
    pub added: Vec<RunId>,
    /// Runs that grew while stored: `(run, next_seq before, next_seq after)`. Successive
    /// growth of a run makes one entry; growth after a purge starts a new one.
    pub extended: Vec<(RunId, u64, u64)>,
    /// Runs retention removed (a run purged twice in between is listed twice).
    pub purged: Vec<RunId>,
    /// Runs stored again after a purge (or after being found missing before `old`).
    pub restored: Vec<RunId>,
}

impl AuditReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.extended.is_empty()
            && self.purged.is_empty()
            && self.restored.is_empty()
    }
}

fn integrity(run: Option<&RunId>, message: String) -> Error {
    Error::Integrity { run_id: run.cloned(), seq: None, message }
}

/// Audits a tenant's log between checkpoints `old` and `new`: checks it only grew, and that
/// what was appended in between is what an honest server logs; reports what changed.
///
/// `leaves` are the log's first `new.tree_size` leaves, in order, and `consistency` the
/// RFC 9162 consistency proof from `old.tree_size` to `new.tree_size`
/// ([`merkle::consistency_proof`]) — both as the server hands them out.
///
/// The audit trusts nothing the server says except what the checkpoints' signatures cover:
/// **the caller verifies both envelopes first** ([`ReceiptKey::verify_checkpoint`]); here
/// the leaves must hash to both signed roots, and the proof must join them. The leaves
/// before `old.tree_size` are then exactly those `old` signed, and each leaf after it is
/// checked against the run's state before it.
///
/// Not checked here: that an extended run's new head really extends its old one (same
/// transitions below the old `next_seq`). That needs the stored transitions — the job of
/// the store-side check (`StorageBackendExt`), not of the log.
///
/// # Errors
/// - [`Error::InvalidInput`] when the input is malformed: the checkpoints are of different
///   tenants, `old` is larger than `new`, or `leaves` is not `new.tree_size` long;
/// - [`Error::Integrity`], naming the run and the leaf index, when the log is not an honest
///   one: the consistency proof fails; the leaves do not hash to `new.root_hash`, or their
///   first `old.tree_size` to `old.root_hash` (an earlier leaf was rewritten or removed); a
///   leaf after `old` is `Missing` (a run removed outside retention); a run's `Head` has a
///   smaller `next_seq` than its previous one (rewound), or the same `next_seq` with
///   another head (rewritten); a `Purged` leaf's `next_seq` or `head_hash` differs from the
///   run's latest logged head, its `received_at` is earlier than that head's (moved back to
///   make the run expire), or it names a run not logged as stored.
pub fn audit(
    old: &Checkpoint,
    new: &Checkpoint,
    leaves: &[Leaf],
    consistency: &[Digest],
) -> Result<AuditReport, Error> {
    if old.tenant_id != new.tenant_id {
        return Err(Error::invalid(
            "checkpoint",
            format!(
                "the checkpoints are of different tenants: {} and {}",
                old.tenant_id, new.tenant_id
            ),
        ));
    }
    if old.tree_size > new.tree_size {
        return Err(Error::invalid(
            "checkpoint",
            format!(
                "the old checkpoint has {} leaves, more than the new one's {}: pass the older \
                 one first",
                old.tree_size, new.tree_size
            ),
        ));
    }
    if leaves.len() as u64 != new.tree_size {
        return Err(Error::invalid(
            "leaves",
            format!("{} leaves given, but the new checkpoint has {}", leaves.len(), new.tree_size),
        ));
    }
    merkle::verify_consistency(
        old.tree_size,
        new.tree_size,
        &old.root_hash,
        &new.root_hash,
        consistency,
    )
    .map_err(|e| {
        integrity(
            None,
            format!(
                "the log of {} leaves is not an extension of the one of {}: {e}",
                new.tree_size, old.tree_size
            ),
        )
    })?;
    let hashes = leaf_hashes(leaves);
    let computed = merkle::root(&hashes);
    if computed != new.root_hash {
        return Err(integrity(
            None,
            format!(
                "the {} leaves given hash to root {computed}, but the new checkpoint signs {}",
                new.tree_size, new.root_hash
            ),
        ));
    }
    // old.tree_size <= new.tree_size == leaves.len(), checked above.
    let old_size = old.tree_size as usize;
    let computed = merkle::root(&hashes[..old_size]);
    if computed != old.root_hash {
        return Err(integrity(
            None,
            format!(
                "the first {old_size} leaves hash to root {computed}, but the old checkpoint \
                 signs {}: a leaf before index {old_size} was rewritten or removed",
                old.root_hash
            ),
        ));
    }

    let mut latest: HashMap<&RunId, &Leaf> = HashMap::new();
    for leaf in &leaves[..old_size] {
        latest.insert(&leaf.run_id, leaf);
    }
    let mut report = AuditReport::default();
    // Per run, its open entry in `report.extended` while it stays stored.
    let mut growing: HashMap<&RunId, usize> = HashMap::new();
    for (index, leaf) in leaves.iter().enumerate().skip(old_size) {
        let run = &leaf.run_id;
        let before = latest.get(run).copied();
        let logged_head = before.filter(|l| l.kind == LeafKind::Head);
        match leaf.kind {
            LeafKind::Head => match logged_head {
                None if before.is_none() => report.added.push(run.clone()),
                None => report.restored.push(run.clone()),
                Some(prev) if leaf.next_seq < prev.next_seq => {
                    return Err(integrity(
                        Some(run),
                        format!(
                            "leaf {index}: the run was rewound from next_seq {} to {}",
                            prev.next_seq, leaf.next_seq
                        ),
                    ));
                }
                Some(prev) if leaf.next_seq == prev.next_seq => {
                    if leaf.head_hash != prev.head_hash {
                        return Err(integrity(
                            Some(run),
                            format!(
                                "leaf {index}: the run was rewritten: next_seq {} had head {}, \
                                 now {}",
                                leaf.next_seq, prev.head_hash, leaf.head_hash
                            ),
                        ));
                    }
                }
                Some(prev) => match growing.get(run) {
                    Some(&at) => report.extended[at].2 = leaf.next_seq,
                    None => {
                        growing.insert(run, report.extended.len());
                        report.extended.push((run.clone(), prev.next_seq, leaf.next_seq));
                    }
                },
            },
            LeafKind::Purged => {
                let Some(prev) = logged_head else {
                    return Err(integrity(
                        Some(run),
                        format!("leaf {index}: a purge of a run the log does not show as stored"),
                    ));
                };
                if (leaf.next_seq, leaf.head_hash) != (prev.next_seq, prev.head_hash) {
                    return Err(integrity(
                        Some(run),
                        format!(
                            "leaf {index}: the purge removed next_seq {} with head {}, but the \
                             log last showed next_seq {} with head {}",
                            leaf.next_seq, leaf.head_hash, prev.next_seq, prev.head_hash
                        ),
                    ));
                }
                // A run's `received_at` only moves forward, and retention counts from it: a
                // purge naming an earlier one than the log showed was made to look old.
                if leaf.received_at < prev.received_at {
                    return Err(integrity(
                        Some(run),
                        format!(
                            "leaf {index}: the purge says the run was last received at {}, \
                             before the {} the log showed: its received_at was moved back \
                             to make it expire",
                            leaf.received_at.to_rfc3339(),
                            prev.received_at.to_rfc3339()
                        ),
                    ));
                }
                growing.remove(run);
                report.purged.push(run.clone());
            }
            LeafKind::Missing => {
                return Err(integrity(
                    Some(run),
                    format!(
                        "leaf {index}: the run was removed outside retention (last logged \
                         next_seq {} with head {}; no purge record names it)",
                        leaf.next_seq, leaf.head_hash
                    ),
                ));
            }
        }
        latest.insert(run, leaf);
    }
    report.added.sort();
    report.extended.sort();
    report.purged.sort();
    report.restored.sort();
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// What a store keeps: the types of the storage methods of `StorageBackend` (no I/O here).

/// A signed checkpoint as a store keeps it: the size it covers, and the envelope as signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    /// The number of leaves it covers (its [`Checkpoint::tree_size`]).
    pub tree_size: u64,
    /// The signed [`Checkpoint`], a DSSE envelope of type [`CHECKPOINT_PAYLOAD_TYPE`].
    pub envelope: Envelope,
}

/// A tenant's whole checkpoint log as stored: every leaf and every signed checkpoint, oldest
/// first. Read by [`StorageBackend::read_checkpoint_log`](crate::StorageBackend::read_checkpoint_log).
///
/// Nothing here is trusted by itself: an auditor checks the envelopes with the server's key,
/// then that the leaves hash to their roots ([`audit`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointLog {
    /// The leaf log, in order.
    pub leaves: Vec<Leaf>,
    /// The signed checkpoints, by increasing `tree_size` (two may share one).
    pub checkpoints: Vec<StoredCheckpoint>,
}

impl CheckpointLog {
    /// The latest checkpoint, if any.
    pub fn latest(&self) -> Option<&StoredCheckpoint> {
        self.checkpoints.last()
    }

    /// The latest checkpoint covering exactly `tree_size` leaves, if any.
    pub fn at_size(&self, tree_size: u64) -> Option<&StoredCheckpoint> {
        self.checkpoints.iter().rev().find(|c| c.tree_size == tree_size)
    }
}

/// What retention's purge recorded of one run it removed, kept by the store until a
/// checkpoint logs it as a `Purged` leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgeRecord {
    /// The record's id in the store, increasing in the order records were made.
    pub id: u64,
    /// The run as it was when purged.
    pub run: PurgedRun,
    /// The store's clock at the purge.
    pub purged_at: DateTime<Utc>,
}

/// What the next checkpoint is made from, read by
/// [`StorageBackend::checkpoint_inputs`](crate::StorageBackend::checkpoint_inputs) in one
/// snapshot of the store, so a run a purge removed and the purge's record are never seen
/// one without the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointInputs {
    /// The log so far.
    pub log: CheckpointLog,
    /// Every run the tenant holds now.
    pub heads: Vec<RunHead>,
    /// The purge records no checkpoint has logged yet, by id.
    pub purges: Vec<PurgeRecord>,
}

/// A checkpoint to append: the leaves it adds and its signed envelope. Appended by
/// [`StorageBackend::append_checkpoint`](crate::StorageBackend::append_checkpoint) only while
/// the log still holds `after` leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCheckpoint {
    /// The log's size the leaves were computed against.
    pub after: u64,
    /// The leaves to append ([`next_leaves`]).
    pub leaves: Vec<Leaf>,
    /// The ids of the purge records these leaves log; they are marked logged.
    pub purges: Vec<u64>,
    /// The signed checkpoint over the log with the leaves appended; its `tree_size` is
    /// `after + leaves.len()`.
    pub checkpoint: StoredCheckpoint,
}

impl NewCheckpoint {
    /// Checks the parts agree (the size, and the envelope's unverified tenant) before a store
    /// writes anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `checkpoint`) naming what does not agree.
    pub fn validate(&self, tenant: TenantId) -> Result<(), Error> {
        let bad = |m: String| Err(Error::invalid("checkpoint", m));
        let size = self.after + self.leaves.len() as u64;
        if self.checkpoint.tree_size != size {
            return bad(format!(
                "covers {} leaves, but the log after the append holds {size}",
                self.checkpoint.tree_size
            ));
        }
        let signed = self.checkpoint.envelope.unverified_checkpoint()?;
        if signed.tenant_id != tenant || signed.tree_size != size {
            return bad(format!(
                "the envelope signs tenant {} at size {}, not tenant {tenant} at size {size}",
                signed.tenant_id, signed.tree_size
            ));
        }
        Ok(())
    }
}

/// The error a store returns from
/// [`append_checkpoint`](crate::StorageBackend::append_checkpoint) when the log moved since
/// the inputs were read: another server appended a checkpoint. Nothing was written; read the
/// inputs again.
pub fn log_moved(backend: &'static str, expected: u64, found: u64) -> Error {
    Error::Unavailable {
        backend,
        message: format!(
            "the checkpoint log holds {found} leaves, not the {expected} this checkpoint was \
             made against: another checkpoint was appended meanwhile"
        ),
        retry_after: None,
        source: None,
    }
}

/// Checks the stored log still extends its latest stored checkpoint: at least that many
/// leaves, whose root is the one it signs. A server checks it before signing the next one, so
/// it never signs a fork of its own history (leaves removed, reordered or edited).
///
/// # Errors
/// [`Error::Integrity`] saying what does not match, or that the latest envelope does not
/// decode.
pub fn check_extends_latest(log: &CheckpointLog) -> Result<(), Error> {
    let Some(latest) = log.latest() else { return Ok(()) };
    let signed = latest.envelope.unverified_checkpoint().map_err(|e| {
        integrity(None, format!("the latest stored checkpoint does not decode: {e}"))
    })?;
    let size = usize::try_from(signed.tree_size).unwrap_or(usize::MAX);
    let root = log.leaves.get(..size).map(|l| merkle::root(&leaf_hashes(l)));
    if root != Some(signed.root_hash) {
        return Err(integrity(
            None,
            format!(
                "the checkpoint log ({} leaves) no longer extends its latest signed checkpoint \
                 ({} leaves, root {}): leaves were removed or edited outside KAHN; no \
                 checkpoint is signed over it",
                log.leaves.len(),
                signed.tree_size,
                signed.root_hash
            ),
        ));
    }
    Ok(())
}

/// A checkpoint just made ([`StorageBackendExt::make_checkpoint_audited`]) and what its
/// maker found in it.
///
/// [`StorageBackendExt::make_checkpoint_audited`]: crate::StorageBackendExt::make_checkpoint_audited
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MadeCheckpoint {
    /// The tenant's latest checkpoint (the one just appended, or the previous one when nothing
    /// changed).
    pub checkpoint: StoredCheckpoint,
    /// When the checkpoint records a change made outside KAHN since the previous one: why the
    /// audit between them fails. The checkpoint was appended all the same: it is the evidence.
    pub alteration: Option<String>,
}

/// The proof that a run's state is in a checkpoint: its latest leaf there, the leaf's index
/// and the RFC 9162 inclusion proof (`GET /v1/runs/{id}/proof`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunProof {
    /// The signed checkpoint the proof is against.
    pub checkpoint: StoredCheckpoint,
    /// The run's latest leaf in it.
    pub leaf: Leaf,
    /// The leaf's index in the log.
    pub leaf_index: u64,
    /// The inclusion proof ([`merkle::inclusion_proof`]).
    pub audit_path: Vec<Digest>,
}

impl RunProof {
    /// Builds the proof of `run`'s latest leaf in `checkpoint` of `log`.
    ///
    /// # Errors
    /// [`Error::NotFound`] (`run`) when the run has no leaf in the checkpoint;
    /// [`Error::Integrity`] when the checkpoint covers more leaves than the log holds.
    pub fn build(
        log: &CheckpointLog,
        checkpoint: &StoredCheckpoint,
        run: &RunId,
    ) -> Result<Self, Error> {
        let size = usize::try_from(checkpoint.tree_size).unwrap_or(usize::MAX);
        let Some(leaves) = log.leaves.get(..size) else {
            return Err(integrity(
                None,
                format!(
                    "a checkpoint covers {} leaves, but the log holds {}",
                    checkpoint.tree_size,
                    log.leaves.len()
                ),
            ));
        };
        let leaf_index =
            latest_leaf_index(leaves, run).ok_or_else(|| Error::not_found("run", run))?;
        let audit_path = merkle::inclusion_proof(&leaf_hashes(leaves), leaf_index)
            .map_err(|e| integrity(Some(run), e.to_string()))?;
        let leaf = leaves[leaf_index as usize].clone();
        Ok(RunProof { checkpoint: checkpoint.clone(), leaf, leaf_index, audit_path })
    }

    /// Checks the proof against `key`: the checkpoint is signed by it, for `tenant`, and the
    /// leaf is in it at its index. Returns the checkpoint.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the envelope is not `key`'s checkpoint;
    /// [`Error::Integrity`] when it is another tenant's or the leaf is not in it.
    pub fn verify(&self, key: &ReceiptKey, tenant: TenantId) -> Result<Checkpoint, Error> {
        let signed = key.verify_checkpoint(&self.checkpoint.envelope)?;
        if signed.tenant_id != tenant {
            return Err(integrity(
                Some(&self.leaf.run_id),
                format!("the checkpoint is tenant {}'s, not {tenant}'s", signed.tenant_id),
            ));
        }
        merkle::verify_inclusion(
            &self.leaf.hash(),
            self.leaf_index,
            signed.tree_size,
            &self.audit_path,
            &signed.root_hash,
        )
        .map_err(|e| {
            integrity(
                Some(&self.leaf.run_id),
                format!(
                    "leaf {} is not in the checkpoint of size {}: {e}",
                    self.leaf_index, signed.tree_size
                ),
            )
        })?;
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use chrono::TimeZone as _;
    use proptest::prelude::*;

    use super::*;
    use crate::merkle::{consistency_proof, empty_root, inclusion_proof, verify_inclusion};

    fn rid(s: &str) -> RunId {
        RunId::new(s).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap()
    }

    fn hash_of(id: &str, n: u64) -> Digest {
        Digest::sha256(format!("{id}/{n}").as_bytes())
    }

    /// Run `id` with `n` transitions, received at second `n`.
    fn head(id: &str, n: u64) -> RunHead {
        RunHead {
            run_id: rid(id),
            next_seq: n,
            head_hash: hash_of(id, n),
            received_at: at(n as i64),
        }
    }

    /// The purge record of `head(id, n)`.
    fn purge(id: &str, n: u64) -> PurgedRun {
        let h = head(id, n);
        PurgedRun {
            run_id: h.run_id,
            next_seq: n,
            head_hash: h.head_hash,
            received_at: h.received_at,
        }
    }

    fn leaf(kind: LeafKind, id: &str, n: u64) -> Leaf {
        Leaf::new(kind, &rid(id), n, hash_of(id, n), at(n as i64))
    }

    fn kinds(leaves: &[Leaf]) -> Vec<(LeafKind, &str, u64)> {
        leaves.iter().map(|l| (l.kind, l.run_id.as_str(), l.next_seq)).collect()
    }

    use LeafKind::{Head, Missing, Purged};

    // --- encoding --------------------------------------------------------------------------

    #[test]
    fn a_leaf_encodes_as_the_documented_table() {
        let leaf = Leaf {
            kind: Purged,
            run_id: rid("r-1"),
            next_seq: 0x0102_0304_0506_0708,
            head_hash: Digest::from_bytes([0xab; 32]),
            // One microsecond before the epoch: -1 as a signed 64-bit integer.
            received_at: DateTime::from_timestamp_micros(-1).unwrap(),
        };
        let mut expected = vec![0x01, 1, 2, 3, 4, 5, 6, 7, 8];
        expected.extend([0xab; 32]);
        expected.extend([0xff; 8]);
        expected.extend([0x00, 0x03]);
        expected.extend(b"r-1");
        assert_eq!(leaf.encode(), expected);
        assert_eq!(leaf.encode().len(), FIXED_LEN + 3);
        assert_eq!(leaf.hash(), merkle::leaf_hash(&expected));
        assert_eq!(Leaf::decode(&expected).unwrap(), leaf);
    }

    #[test]
    fn leaves_round_trip_through_their_encoding() {
        let long = "x".repeat(crate::id::RUN_ID_MAX_LEN);
        let times = [
            at(0),
            Utc.timestamp_opt(-1, 500_000_000).unwrap(),
            DateTime::from_timestamp_micros(1_234_567).unwrap(),
            DateTime::<Utc>::MIN_UTC.trunc_subsecs(6),
            DateTime::<Utc>::MAX_UTC.trunc_subsecs(6),
        ];
        for kind in [Head, Purged, Missing] {
            for (i, time) in times.iter().enumerate() {
                for id in ["a", "Run_1.2:3-x", long.as_str()] {
                    let leaf = Leaf {
                        kind,
                        run_id: rid(id),
                        next_seq: [0, 1, u64::MAX][i % 3],
                        head_hash: Digest::sha256(id.as_bytes()),
                        received_at: *time,
                    };
                    let bytes = leaf.encode();
                    assert_eq!(bytes.len(), FIXED_LEN + id.len());
                    assert_eq!(Leaf::decode(&bytes).unwrap(), leaf, "{kind} {id} {time}");
                }
            }
        }
        // Sub-microsecond digits are not encoded: the leaves made here never carry them.
        let fine = Utc.timestamp_opt(10, 123_456_789).unwrap();
        let made = &next_leaves(&[], &[RunHead { received_at: fine, ..head("r", 1) }], &[])[0];
        assert_eq!(made.received_at, Utc.timestamp_opt(10, 123_456_000).unwrap());
        assert_eq!(&Leaf::decode(&made.encode()).unwrap(), made);
    }

    #[test]
    fn decoding_is_strict() {
        let good = leaf(Head, "run", 3).encode();
        let err = |bytes: &[u8]| Leaf::decode(bytes).unwrap_err().to_string();
        assert!(err(&good[..FIXED_LEN - 1]).contains("at least 51"), "{}", err(&good[..10]));
        assert!(err(&[]).contains("0 bytes long"));
        let mut kind = good.clone();
        kind[0] = 3;
        assert!(err(&kind).contains("kind byte 0x03"), "{}", err(&kind));
        let mut trailing = good.clone();
        trailing.push(b'x');
        assert!(err(&trailing).contains("3 bytes, but 4 bytes follow"), "{}", err(&trailing));
        assert!(err(&good[..good.len() - 1]).contains("but 2 bytes follow"));
        let mut empty = good[..FIXED_LEN].to_vec();
        empty[50] = 0;
        assert!(err(&empty).contains("run id"), "{}", err(&empty));
        let mut slash = good.clone();
        slash[FIXED_LEN + 1] = b'/';
        assert!(err(&slash).contains("run id \"r/n\""), "{}", err(&slash));
        let mut not_utf8 = good.clone();
        not_utf8[FIXED_LEN] = 0xff;
        assert!(err(&not_utf8).contains("not UTF-8"), "{}", err(&not_utf8));
        let mut far = good.clone();
        far[41..49].copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(err(&far).contains("out of range"), "{}", err(&far));
        assert!(matches!(Leaf::decode(&kind), Err(Error::InvalidInput { field, .. })
                if field == "checkpoint leaf"));
    }

    // --- next_leaves -------------------------------------------------------------------------

    #[test]
    fn the_first_checkpoint_logs_every_run_in_run_id_order() {
        // Byte order: upper case before lower case, "r10" before "r2".
        let current = [head("r2", 1), head("b", 0), head("r10", 4), head("Z", 2)];
        let leaves = next_leaves(&[], &current, &[]);
        assert_eq!(
            kinds(&leaves),
            [(Head, "Z", 2), (Head, "b", 0), (Head, "r10", 4), (Head, "r2", 1)]
        );
        assert_eq!(leaves[2], leaf(Head, "r10", 4));
        assert!(next_leaves(&[], &[], &[]).is_empty());
    }

    #[test]
    fn unchanged_runs_add_nothing() {
        let current = [head("a", 1), head("b", 2)];
        let log = next_leaves(&[], &current, &[]);
        assert!(next_leaves(&log, &current, &[]).is_empty());
        // Nor does a later received_at alone (metadata set, nothing appended).
        let touched = [RunHead { received_at: at(99), ..head("a", 1) }, head("b", 2)];
        assert!(next_leaves(&log, &touched, &[]).is_empty());
    }

    #[test]
    fn extended_and_new_runs_get_a_head_leaf() {
        let log = next_leaves(&[], &[head("a", 1), head("b", 2)], &[]);
        let next = next_leaves(&log, &[head("c", 0), head("a", 5), head("b", 2)], &[]);
        assert_eq!(kinds(&next), [(Head, "a", 5), (Head, "c", 0)]);
        assert_eq!(next[0], leaf(Head, "a", 5));
    }

    #[test]
    fn a_purged_run_gets_a_purged_leaf_with_the_records_values() {
        let log = next_leaves(&[], &[head("a", 1), head("b", 2)], &[]);
        let next = next_leaves(&log, &[head("b", 2)], &[purge("a", 1)]);
        assert_eq!(next, [leaf(Purged, "a", 1)]);
        // Logged once: the purge of a run the log shows purged adds nothing.
        let mut log = log;
        log.extend(next);
        assert!(next_leaves(&log, &[head("b", 2)], &[purge("a", 1)]).is_empty());
        // Nor does the purge of a run never logged.
        assert!(next_leaves(&log, &[head("b", 2)], &[purge("zz", 3)]).is_empty());
    }

    #[test]
    fn a_run_grown_then_purged_before_a_checkpoint_logs_its_last_head_first() {
        let log = next_leaves(&[], &[head("a", 1)], &[]);
        let next = next_leaves(&log, &[], &[purge("a", 4)]);
        assert_eq!(next, [leaf(Head, "a", 4), leaf(Purged, "a", 4)]);
        // A record that does not extend the logged head is logged as it is (the audit fails it).
        let next = next_leaves(&log, &[], &[purge("a", 0)]);
        assert_eq!(next, [leaf(Purged, "a", 0)]);
    }

    #[test]
    fn a_run_gone_without_a_purge_record_gets_a_missing_leaf() {
        let log = next_leaves(&[], &[head("a", 1), head("b", 2)], &[]);
        let next = next_leaves(&log, &[head("b", 2)], &[]);
        assert_eq!(next, [leaf(Missing, "a", 1)]);
        // Its latest head, not its first.
        let mut log = log;
        log.extend(next_leaves(&log, &[head("a", 3), head("b", 2)], &[]));
        assert_eq!(next_leaves(&log, &[head("b", 2)], &[]), [leaf(Missing, "a", 3)]);
        // Once logged missing, it is not logged again.
        log.push(leaf(Missing, "a", 3));
        assert!(next_leaves(&log, &[head("b", 2)], &[]).is_empty());
    }

    #[test]
    fn a_run_pushed_again_after_a_purge_gets_a_head_leaf() {
        let mut log = next_leaves(&[], &[head("a", 3)], &[]);
        log.extend(next_leaves(&log, &[], &[purge("a", 3)]));
        // Stored again, shorter or identical: either way a new head.
        assert_eq!(next_leaves(&log, &[head("a", 1)], &[]), [leaf(Head, "a", 1)]);
        assert_eq!(next_leaves(&log, &[head("a", 3)], &[]), [leaf(Head, "a", 3)]);
        // Purged and pushed again between two checkpoints: the purge, then the head.
        let log = next_leaves(&[], &[head("a", 3)], &[]);
        let next = next_leaves(&log, &[head("a", 3)], &[purge("a", 3)]);
        assert_eq!(next, [leaf(Purged, "a", 3), leaf(Head, "a", 3)]);
    }

    #[test]
    fn leaves_of_several_runs_come_in_run_id_order() {
        let log = next_leaves(&[], &[head("m", 1), head("c", 1), head("x", 1), head("k", 1)], &[]);
        let next = next_leaves(&log, &[head("x", 2), head("a", 0), head("k", 1)], &[purge("c", 1)]);
        assert_eq!(
            kinds(&next),
            [(Head, "a", 0), (Purged, "c", 1), (Missing, "m", 1), (Head, "x", 2)]
        );
    }

    #[test]
    fn the_latest_leaf_of_a_run_is_proved_included() {
        let mut log = next_leaves(&[], &[head("a", 1), head("b", 1)], &[]);
        log.extend(next_leaves(&log, &[head("a", 2), head("b", 1)], &[]));
        assert_eq!(latest_leaf_index(&log, &rid("a")), Some(2));
        assert_eq!(latest_leaf_index(&log, &rid("b")), Some(1));
        assert_eq!(latest_leaf_index(&log, &rid("c")), None);
        let c = checkpoint_for(TenantId::new_random(), &log, at(0), "k");
        let hashes = leaf_hashes(&log);
        let path = inclusion_proof(&hashes, 2).unwrap();
        verify_inclusion(&log[2].hash(), 2, c.tree_size, &path, &c.root_hash).unwrap();
    }

    // --- signing -----------------------------------------------------------------------------

    fn signed() -> (ReceiptSigner, Checkpoint, Envelope) {
        let signer = ReceiptSigner::generate().unwrap();
        let log = next_leaves(&[], &[head("a", 1)], &[]);
        let c = checkpoint_for(
            TenantId::new_random(),
            &log,
            Utc.timestamp_opt(5, 123_456_789).unwrap(),
            signer.public_key().id(),
        );
        let envelope = signer.sign_checkpoint(&c).unwrap();
        (signer, c, envelope)
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_reads_back() {
        let (signer, c, envelope) = signed();
        assert_eq!(envelope.payload_type, CHECKPOINT_PAYLOAD_TYPE);
        assert_eq!(c.issued_at, Utc.timestamp_opt(5, 123_456_000).unwrap());
        assert_eq!((c.tree_size, c.root_hash), (1, leaf(Head, "a", 1).hash()));
        assert_eq!(signer.public_key().verify_checkpoint(&envelope).unwrap(), c);
        // Through JSON, as it travels.
        let json = serde_json::to_string(&envelope).unwrap();
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(signer.public_key().verify_checkpoint(&back).unwrap(), c);
    }

    #[test]
    fn a_checkpoint_by_another_key_or_altered_is_refused() {
        let (signer, c, envelope) = signed();
        let other = ReceiptSigner::generate().unwrap();
        let err = other.public_key().verify_checkpoint(&envelope).unwrap_err().to_string();
        assert!(err.contains("invalid checkpoint: not signed by key"), "{err}");
        let mut forged = envelope.clone();
        forged.signatures[0].keyid = other.public_key().id().to_owned();
        let err = other.public_key().verify_checkpoint(&forged).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");

        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = String::from_utf8(b64.decode(&envelope.payload).unwrap()).unwrap();
        let mut altered = envelope.clone();
        altered.payload = b64.encode(payload.replace("\"tree_size\":1", "\"tree_size\":0"));
        assert_ne!(altered.payload, envelope.payload);
        let err = signer.public_key().verify_checkpoint(&altered).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");

        // Another key's id in the checkpoint: the signer refuses it.
        let err = other.sign_checkpoint(&c).unwrap_err().to_string();
        assert!(err.contains("names key"), "{err}");
    }

    #[test]
    fn a_receipt_is_not_a_checkpoint_nor_the_reverse() {
        let (signer, _, envelope) = signed();
        let err = signer.public_key().verify(&envelope).unwrap_err().to_string();
        assert!(err.contains("payload type"), "{err}");
        let report = crate::RunAppendReport {
            run_id: rid("a"),
            appended: 1,
            skipped: 0,
            next_seq: 1,
            head_hash: hash_of("a", 1),
            receipt: None,
        };
        let receipt = signer.sign_report(TenantId::new_random(), &report, at(0)).unwrap();
        let err = signer.public_key().verify_checkpoint(&receipt).unwrap_err().to_string();
        assert!(err.contains("payload type"), "{err}");
        // Relabelled as a checkpoint, the signature (over the type too) fails.
        let mut relabelled = receipt;
        relabelled.payload_type = CHECKPOINT_PAYLOAD_TYPE.to_owned();
        let err = signer.public_key().verify_checkpoint(&relabelled).unwrap_err().to_string();
        assert!(err.contains("does not verify"), "{err}");
    }

    // --- audit -------------------------------------------------------------------------------

    /// A tenant's log and its checkpoints, as an honest server keeps them.
    struct Server {
        tenant: TenantId,
        log: Vec<Leaf>,
        checkpoints: Vec<Checkpoint>,
    }

    impl Server {
        fn new() -> Self {
            let tenant = TenantId::new_random();
            let empty = checkpoint_for(tenant, &[], at(0), "k");
            Self { tenant, log: Vec::new(), checkpoints: vec![empty] }
        }

        fn checkpoint(&mut self, current: &[RunHead], purged: &[PurgedRun]) -> Checkpoint {
            let next = next_leaves(&self.log, current, purged);
            self.log.extend(next);
            let c = checkpoint_for(self.tenant, &self.log, at(self.checkpoints.len() as i64), "k");
            self.checkpoints.push(c.clone());
            c
        }

        /// Audits checkpoint `i` against `j` with the honest proof.
        fn audit(&self, i: usize, j: usize) -> Result<AuditReport, Error> {
            let (old, new) = (&self.checkpoints[i], &self.checkpoints[j]);
            let leaves = &self.log[..new.tree_size as usize];
            let proof = consistency_proof(&leaf_hashes(leaves), old.tree_size).unwrap();
            audit(old, new, leaves, &proof)
        }
    }

    fn integrity_message(result: Result<AuditReport, Error>) -> (Option<RunId>, String) {
        match result {
            Err(Error::Integrity { run_id, message, .. }) => (run_id, message),
            other => panic!("expected an integrity failure, got {other:?}"),
        }
    }

    #[test]
    fn an_honest_sequence_of_checkpoints_passes_and_says_what_changed() {
        let mut s = Server::new();
        s.checkpoint(&[head("a", 1), head("b", 2)], &[]);
        s.checkpoint(&[head("a", 4), head("b", 2), head("c", 0)], &[]);
        s.checkpoint(&[head("a", 6), head("c", 1), head("b", 5)], &[purge("b", 2)]);
        assert_eq!(s.log.len(), 2 + 2 + 4);

        let r = s.audit(0, 1).unwrap();
        assert_eq!(r.added, [rid("a"), rid("b")]);
        assert!(r.extended.is_empty() && r.purged.is_empty() && r.restored.is_empty());

        let r = s.audit(1, 2).unwrap();
        assert_eq!(
            r,
            AuditReport {
                added: vec![rid("c")],
                extended: vec![(rid("a"), 1, 4)],
                ..Default::default()
            }
        );

        let r = s.audit(2, 3).unwrap();
        assert_eq!(
            r,
            AuditReport {
                added: vec![],
                extended: vec![(rid("a"), 4, 6), (rid("c"), 0, 1)],
                purged: vec![rid("b")],
                restored: vec![rid("b")],
            }
        );

        // Across checkpoints, successive growth makes one entry.
        let r = s.audit(1, 3).unwrap();
        assert_eq!(r.extended, [(rid("a"), 1, 6), (rid("c"), 0, 1)]);
        let r = s.audit(0, 3).unwrap();
        assert_eq!(r.added, [rid("a"), rid("b"), rid("c")]);
        assert_eq!(r.extended, [(rid("a"), 1, 6), (rid("c"), 0, 1)]);
        // A checkpoint against itself: nothing changed.
        for i in 0..4 {
            assert!(s.audit(i, i).unwrap().is_empty());
        }
    }

    #[test]
    fn a_rewritten_earlier_leaf_fails_the_audit() {
        let mut s = Server::new();
        let c1 = s.checkpoint(&[head("a", 1), head("b", 2)], &[]);
        s.checkpoint(&[head("a", 3), head("b", 2)], &[]);
        // The server rewrites b's first head and signs a new checkpoint over the rewritten log.
        let mut rewritten = s.log.clone();
        rewritten[1] = leaf(Head, "b", 1);
        let c2 = checkpoint_for(s.tenant, &rewritten, at(9), "k");
        let hashes = leaf_hashes(&rewritten);
        let proof = consistency_proof(&hashes, c1.tree_size).unwrap();
        let (_, message) = integrity_message(audit(&c1, &c2, &rewritten, &proof));
        assert!(message.contains("not an extension"), "{message}");
        // With the honest log's proof and checkpoint, the rewritten leaves do not hash to it.
        let (c2, honest) = (&s.checkpoints[2], &s.log);
        let proof = consistency_proof(&leaf_hashes(honest), c1.tree_size).unwrap();
        let (_, message) = integrity_message(audit(&c1, c2, &rewritten, &proof));
        assert!(message.contains("hash to root"), "{message}");
        // Rewriting an old leaf and the new tail so the new root matches is impossible
        // without the old root failing: the first leaves are checked against it too.
        let forged_new = checkpoint_for(s.tenant, &rewritten, at(9), "k");
        let proof_ok = consistency_proof(&hashes, 2).unwrap();
        let result = audit(&c1, &forged_new, &rewritten, &proof_ok);
        assert!(matches!(result, Err(Error::Integrity { .. })), "{result:?}");
    }

    #[test]
    fn a_run_removed_outside_retention_fails_the_audit() {
        let mut s = Server::new();
        s.checkpoint(&[head("a", 1), head("b", 2)], &[]);
        s.checkpoint(&[head("b", 3)], &[]);
        let (run, message) = integrity_message(s.audit(1, 2));
        assert_eq!(run, Some(rid("a")));
        assert!(message.contains("leaf 2: the run was removed outside retention"), "{message}");
        let err = s.audit(0, 2).unwrap_err().to_string();
        assert!(err.contains("in run a"), "{err}");
        // Later audits that do not span it pass; the log keeps it forever.
        s.checkpoint(&[head("b", 4)], &[]);
        s.audit(2, 3).unwrap();
        assert!(s.audit(1, 3).is_err());
    }

    #[test]
    fn a_rewound_or_rewritten_head_fails_the_audit() {
        let mut s = Server::new();
        s.checkpoint(&[head("a", 5)], &[]);
        s.checkpoint(&[head("a", 3)], &[]);
        let (run, message) = integrity_message(s.audit(1, 2));
        assert_eq!(run, Some(rid("a")));
        assert!(message.contains("leaf 1: the run was rewound from next_seq 5 to 3"), "{message}");

        let mut s = Server::new();
        s.checkpoint(&[head("a", 5)], &[]);
        s.checkpoint(&[RunHead { head_hash: hash_of("other", 5), ..head("a", 5) }], &[]);
        let (_, message) = integrity_message(s.audit(1, 2));
        assert!(message.contains("rewritten"), "{message}");
    }

    #[test]
    fn a_purge_that_differs_from_the_logged_head_fails_the_audit() {
        for record in [purge("a", 2), PurgedRun { head_hash: hash_of("x", 5), ..purge("a", 5) }] {
            let mut s = Server::new();
            s.checkpoint(&[head("a", 5)], &[]);
            s.checkpoint(&[], &[record]);
            let (run, message) = integrity_message(s.audit(1, 2));
            assert_eq!(run, Some(rid("a")));
            assert!(message.contains("the purge removed next_seq"), "{message}");
        }
        // A purged leaf for a run the log does not show as stored (hand-made; next_leaves
        // never makes one).
        let mut s = Server::new();
        s.checkpoint(&[head("a", 5)], &[]);
        s.log.push(leaf(Purged, "b", 1));
        let c = checkpoint_for(s.tenant, &s.log, at(9), "k");
        s.checkpoints.push(c);
        let (run, message) = integrity_message(s.audit(1, 2));
        assert_eq!(run, Some(rid("b")));
        assert!(message.contains("does not show as stored"), "{message}");
    }

    #[test]
    fn a_purge_of_a_run_made_to_look_old_fails_the_audit() {
        // The record names the logged head, but a received_at before the one logged: the run
        // was backdated (or the record forged) to expire early.
        let mut s = Server::new();
        s.checkpoint(&[head("a", 5)], &[]);
        s.checkpoint(&[], &[PurgedRun { received_at: at(-86_400 * 100), ..purge("a", 5) }]);
        let (run, message) = integrity_message(s.audit(1, 2));
        assert_eq!(run, Some(rid("a")));
        assert!(message.contains("moved back"), "{message}");
        // A later received_at is what an honest store records after a metadata-only append.
        let mut s = Server::new();
        s.checkpoint(&[head("a", 5)], &[]);
        s.checkpoint(&[], &[PurgedRun { received_at: at(60), ..purge("a", 5) }]);
        assert_eq!(s.audit(1, 2).expect("honest").purged, [rid("a")]);
    }

    #[test]
    fn malformed_audit_input_is_refused() {
        let mut s = Server::new();
        s.checkpoint(&[head("a", 1)], &[]);
        s.checkpoint(&[head("a", 2), head("b", 1)], &[]);
        let (c1, c2) = (s.checkpoints[1].clone(), s.checkpoints[2].clone());
        let proof = consistency_proof(&leaf_hashes(&s.log), 1).unwrap();
        let invalid = |r: Result<AuditReport, Error>| match r {
            Err(Error::InvalidInput { message, .. }) => message,
            other => panic!("expected invalid input, got {other:?}"),
        };
        // Another tenant's checkpoint.
        let swapped = Checkpoint { tenant_id: TenantId::new_random(), ..c2.clone() };
        assert!(invalid(audit(&c1, &swapped, &s.log, &proof)).contains("different tenants"));
        // Reversed.
        assert!(invalid(audit(&c2, &c1, &s.log[..1], &proof)).contains("pass the older one first"));
        // Too few leaves.
        assert!(invalid(audit(&c1, &c2, &s.log[..2], &proof)).contains("2 leaves given"));
    }

    #[test]
    fn a_wrong_consistency_proof_fails_the_audit() {
        let mut s = Server::new();
        for n in 1..=5 {
            let current: Vec<RunHead> = (0..n).map(|i| head(&format!("r{i}"), n)).collect();
            s.checkpoint(&current, &[]);
        }
        let (c2, c5) = (&s.checkpoints[2], &s.checkpoints[5]);
        let proof = consistency_proof(&leaf_hashes(&s.log), c2.tree_size).unwrap();
        assert!(audit(c2, c5, &s.log, &proof).is_ok());
        let mut flipped = proof.clone();
        flipped[0] = Digest::sha256(b"not it");
        let (_, message) = integrity_message(audit(c2, c5, &s.log, &flipped));
        assert!(message.contains("not an extension"), "{message}");
        let (_, message) = integrity_message(audit(c2, c5, &s.log, &proof[1..]));
        assert!(message.contains("not an extension"), "{message}");
        // The proof between other sizes.
        let other = consistency_proof(&leaf_hashes(&s.log), 1).unwrap();
        assert!(matches!(audit(c2, c5, &s.log, &other), Err(Error::Integrity { .. })));
        // From the empty log, the proof is empty and the old root the empty tree's.
        assert_eq!(s.checkpoints[0].root_hash, empty_root());
        assert!(s.audit(0, 5).is_ok());
        assert!(matches!(
            audit(&s.checkpoints[0], c5, &s.log, &proof),
            Err(Error::Integrity { .. })
        ));
    }

    // --- the whole cycle, at random ----------------------------------------------------------

    /// What happens to the store between checkpoints.
    #[derive(Clone, Debug)]
    enum Op {
        Add(u64),
        Extend(usize, u64),
        Purge(usize),
        Delete(usize),
        PushAgain(usize, u64),
        Checkpoint,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4u64).prop_map(Op::Add),
            4 => (any::<usize>(), 1..4u64).prop_map(|(i, k)| Op::Extend(i, k)),
            2 => any::<usize>().prop_map(Op::Purge),
            1 => any::<usize>().prop_map(Op::Delete),
            1 => (any::<usize>(), 0..4u64).prop_map(|(i, n)| Op::PushAgain(i, n)),
            3 => Just(Op::Checkpoint),
        ]
    }

    /// A stored run: its length and which life it is in (a run pushed again after a purge
    /// starts a new chain).
    #[derive(Clone, Copy)]
    struct Stored {
        next_seq: u64,
        life: u64,
        received: i64,
    }

    fn run_head(id: &str, run: Stored) -> RunHead {
        RunHead {
            run_id: rid(id),
            next_seq: run.next_seq,
            head_hash: Digest::sha256(format!("{id}/{}/{}", run.life, run.next_seq).as_bytes()),
            received_at: at(run.received),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random histories of a store — runs added, grown, purged, deleted behind KAHN's back,
        /// pushed again after a purge — checkpointed now and then: the audit between every
        /// pair of checkpoints passes exactly when no run the log showed as stored was
        /// removed without a purge record in between.
        #[test]
        fn the_audit_passes_exactly_when_nothing_was_removed_outside_retention(
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let mut s = Server::new();
            let mut stored: BTreeMap<String, Stored> = BTreeMap::new();
            let mut purged_ids: Vec<String> = Vec::new();
            let mut lives: HashMap<String, u64> = HashMap::new();
            let mut purges: Vec<PurgedRun> = Vec::new();
            let mut deleted: BTreeSet<String> = BTreeSet::new();
            // Per checkpoint (after the empty one): whether its interval removed a run
            // outside retention.
            let mut tampered = vec![false];
            let mut next_id = 0;
            let mut clock = 0;
            let pick = |stored: &BTreeMap<String, Stored>, i: usize| {
                stored.keys().nth(i % stored.len().max(1)).cloned()
            };
            for op in ops.into_iter().chain([Op::Checkpoint]) {
                clock += 1;
                match op {
                    Op::Add(n) => {
                        next_id += 1;
                        let id = format!("run-{next_id:02}");
                        lives.insert(id.clone(), 0);
                        stored.insert(id, Stored { next_seq: n, life: 0, received: clock });
                    }
                    Op::Extend(i, k) => if let Some(id) = pick(&stored, i) {
                        let run = stored.get_mut(&id).unwrap();
                        run.next_seq += k;
                        run.received = clock;
                    },
                    Op::Purge(i) => if let Some(id) = pick(&stored, i) {
                        let run = stored.remove(&id).unwrap();
                        let h = run_head(&id, run);
                        purges.push(PurgedRun {
                            run_id: h.run_id,
                            next_seq: h.next_seq,
                            head_hash: h.head_hash,
                            received_at: h.received_at,
                        });
                        purged_ids.push(id);
                    },
                    Op::Delete(i) => if let Some(id) = pick(&stored, i) {
                        stored.remove(&id);
                        deleted.insert(id);
                    },
                    Op::PushAgain(i, n) => if !purged_ids.is_empty() {
                        let id = purged_ids.remove(i % purged_ids.len());
                        let life = lives.get_mut(&id).unwrap();
                        *life += 1;
                        stored.insert(id, Stored { next_seq: n, life: *life, received: clock });
                    },
                    Op::Checkpoint => {
                        // Detectable: a deleted run the log shows as stored, not purged since.
                        let removed = deleted.iter().any(|id| {
                            let logged = s.log.iter().rev().find(|l| l.run_id.as_str() == id);
                            logged.is_some_and(|l| l.kind == Head)
                                && !purges.iter().any(|p| p.run_id.as_str() == id)
                        });
                        let current: Vec<RunHead> =
                            stored.iter().map(|(id, run)| run_head(id, *run)).collect();
                        s.checkpoint(&current, &purges);
                        purges.clear();
                        deleted.clear();
                        tampered.push(removed);
                    }
                }
            }
            let n = s.checkpoints.len();
            for i in 0..n {
                for j in i..n {
                    let expect_failure = tampered[i + 1..=j].iter().any(|&t| t);
                    match s.audit(i, j) {
                        Ok(report) => {
                            prop_assert!(!expect_failure, "audit {i}..{j} passed: {report:?}");
                            let range = &s.log[s.checkpoints[i].tree_size as usize
                                ..s.checkpoints[j].tree_size as usize];
                            let purged = range.iter().filter(|l| l.kind == Purged).count();
                            prop_assert_eq!(report.purged.len(), purged);
                        }
                        Err(Error::Integrity { message, .. }) => {
                            prop_assert!(expect_failure, "audit {i}..{j} failed: {message}");
                            let named = message.contains("removed outside retention");
                            prop_assert!(named, "{message}");
                        }
                        Err(other) => prop_assert!(false, "audit {i}..{j}: {other}"),
                    }
                }
            }
        }
    }
}
