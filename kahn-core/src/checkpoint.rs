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
//! use kahn_core::checkpoint::{RunHead, audit, checkpoint_for, next_leaves};
//! use kahn_core::merkle::{consistency_proof, root};
//! use kahn_core::receipt::ReceiptSigner;
//! use kahn_core::{Digest, RunId, TenantId};
//!
//! let signer = ReceiptSigner::generate()?;
//! let (tenant, key) = (TenantId::new_random(), signer.public_key().id().to_owned());
//! let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
//! let head = |id: &str, n: u64| RunHead {
//!     run_id: RunId::new(id).unwrap(),
//!     next_seq: n,
//!     head_hash: Digest::sha256(format!("{id}/{n}").as_bytes()),
//!     received_at: at,
//! };
//!
//! let mut log = next_leaves(&[], &[head("r1", 2)], &[]);
//! let c1 = checkpoint_for(tenant, &log, at, &key);
//! let more = next_leaves(&log, &[head("r1", 5), head("r2", 1)], &[]);
//! log.extend(more);
//! let c2 = checkpoint_for(tenant, &log, at, &key);
//!
//! // The server signs both; an auditor checks the envelopes, then the log between them.
//! let (e1, e2) = (signer.sign_checkpoint(&c1)?, signer.sign_checkpoint(&c2)?);
//! let (c1, c2) = (signer.public_key().verify_checkpoint(&e1)?, signer.public_key().verify_checkpoint(&e2)?);
//! let hashes: Vec<Digest> = log.iter().map(|l| l.hash()).collect();
//! let proof = consistency_proof(&hashes, c1.tree_size).unwrap();
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
///   run's latest logged head, or names a run not logged as stored.
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
