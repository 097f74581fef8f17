//! Checks of the checkpoint log's storage (issue 19): what a store keeps so that signed
//! checkpoints can prove nothing acknowledged was removed or rewritten except by retention.
//!
//! The checkpoints are made through the control plane (a server makes them, not a producer);
//! scopes and appends go through the store under test.

use chrono::{Duration, Utc};

use super::fixtures::{Harness, SourceLog, TestTenant, recent_base};
use crate::checkpoint::{
    CheckpointLog, LeafKind, NewCheckpoint, RunProof, StoredCheckpoint, audit, checkpoint_for,
    leaf_hashes,
};
use crate::merkle::consistency_proof;
use crate::receipt::ReceiptSigner;
use crate::{Error, PurgeRequest, RunId, StorageBackendExt};

fn signer() -> ReceiptSigner {
    ReceiptSigner::generate().expect("a fresh signing key")
}

async fn checkpoint(h: &Harness, t: &TestTenant, signer: &ReceiptSigner) -> StoredCheckpoint {
    h.control.make_checkpoint(&t.read, signer, Utc::now()).await.expect("make a checkpoint")
}

async fn log_of(h: &Harness, t: &TestTenant) -> CheckpointLog {
    h.control.read_checkpoint_log(&t.read).await.expect("read the checkpoint log")
}

fn run(id: &str) -> RunId {
    RunId::new(id).expect("a valid run id")
}

/// Audits the stored log between two of its checkpoints as an auditor would: both envelopes
/// checked with the key, the proof computed from the leaves handed out.
fn audit_between(
    log: &CheckpointLog,
    signer: &ReceiptSigner,
    old: &StoredCheckpoint,
    new: &StoredCheckpoint,
) -> crate::Result<crate::checkpoint::AuditReport> {
    let key = signer.public_key();
    let (c1, c2) = (key.verify_checkpoint(&old.envelope)?, key.verify_checkpoint(&new.envelope)?);
    let leaves = &log.leaves[..c2.tree_size as usize];
    let proof = consistency_proof(&leaf_hashes(leaves), c1.tree_size).expect("sizes in range");
    audit(&c1, &c2, leaves, &proof)
}

/// A checkpoint logs one leaf per new or grown run and signs the whole log; a second one
/// with nothing changed appends nothing; the stored log audits clean between them, proves
/// each run's latest state, and is the tenant's alone.
pub async fn checkpoints_log_every_change_and_prove_runs(h: &Harness) {
    let (t, other, signer) = (h.fresh_tenant().await, h.fresh_tenant().await, signer());
    let grown = SourceLog::new("grown", 4, "a", recent_base());
    h.store.append(&t.write, &grown.chunk(0, 2)).await.expect("push");
    let c1 = checkpoint(h, &t, &signer).await;
    assert_eq!(c1.tree_size, 1, "one run, one leaf");

    h.store.append(&t.write, &grown.all()).await.expect("push the rest");
    let added = SourceLog::new("added", 1, "b", recent_base());
    h.store.append(&t.write, &added.all()).await.expect("push another run");
    let c2 = checkpoint(h, &t, &signer).await;
    assert_eq!(c2.tree_size, 3, "a leaf for the grown run and one for the new run");
    let again = checkpoint(h, &t, &signer).await;
    assert_eq!(again, c2, "nothing changed: the latest checkpoint, nothing appended");

    let log = log_of(h, &t).await;
    assert_eq!(log.leaves.len(), 3);
    assert_eq!(log.checkpoints, [c1.clone(), c2.clone()], "every checkpoint kept, in order");
    let report = audit_between(&log, &signer, &c1, &c2).expect("an honest log audits clean");
    assert_eq!(report.added, [run("added")]);
    assert_eq!(report.extended, [(run("grown"), 2, 4)]);
    assert!(report.purged.is_empty() && report.restored.is_empty(), "{report:?}");

    let stored = h.store.get_run(&t.read, &grown.run_id).await.expect("get_run").info;
    let proof = RunProof::build(&log, &c2, &grown.run_id).expect("the run is in the checkpoint");
    proof.verify(signer.public_key(), t.tenant.id).expect("the proof verifies");
    assert_eq!((proof.leaf.kind, proof.leaf.next_seq), (LeafKind::Head, 4));
    assert_eq!(proof.leaf.head_hash, stored.head_hash, "the proven head is the stored one");
    match proof.verify(signer.public_key(), other.tenant.id) {
        Err(Error::Integrity { .. }) => {}
        wrong => panic!("a proof must not pass for another tenant: {wrong:?}"),
    }
    assert_eq!(log_of(h, &other).await, CheckpointLog::default(), "tenants never share a log");
}

/// A retention purge records what it removed; the next checkpoint logs those runs as
/// `Purged` with their last heads, consumes the records, and audits clean naming them. A
/// dry run records nothing.
pub async fn purges_are_logged_by_the_next_checkpoint(h: &Harness) {
    let t = h.fresh_tenant_with(|r| r.with_retention_days(1).expect("valid")).await;
    let signer = signer();
    let (old, kept) = (
        SourceLog::new("old", 2, "a", recent_base()),
        SourceLog::new("kept", 1, "b", recent_base()),
    );
    h.store.append(&t.write, &old.all()).await.expect("push");
    let c1 = checkpoint(h, &t, &signer).await;
    let received = h.store.get_run(&t.read, &old.run_id).await.expect("get_run").info.received_at;
    let at = received + Duration::days(2);
    let dry = PurgeRequest::as_of(at).for_tenant(t.tenant.id).dry_run();
    h.control.purge_expired(&dry).await.expect("dry run");
    let inputs = h.control.checkpoint_inputs(&t.read).await.expect("inputs");
    assert!(inputs.purges.is_empty(), "a dry run records nothing: {:?}", inputs.purges);

    let out = h.control.purge_expired(&PurgeRequest::as_of(at).for_tenant(t.tenant.id)).await;
    assert_eq!(out.expect("purge").runs_removed(), 1);
    let inputs = h.control.checkpoint_inputs(&t.read).await.expect("inputs");
    assert_eq!(inputs.purges.len(), 1, "the purge recorded the run it removed");
    let record = &inputs.purges[0].run;
    assert_eq!((record.run_id.as_str(), record.next_seq), ("old", 2));
    assert!(inputs.heads.is_empty(), "the purged run is gone: {:?}", inputs.heads);

    h.store.append(&t.write, &kept.all()).await.expect("push after the purge");
    let c2 = checkpoint(h, &t, &signer).await;
    let log = log_of(h, &t).await;
    let kinds: Vec<_> = log.leaves.iter().map(|l| (l.run_id.as_str(), l.kind)).collect();
    assert_eq!(
        kinds,
        [("old", LeafKind::Head), ("kept", LeafKind::Head), ("old", LeafKind::Purged)]
    );
    let report = audit_between(&log, &signer, &c1, &c2).expect("a retention purge audits clean");
    assert_eq!((report.purged, report.added), (vec![run("old")], vec![run("kept")]));
    let inputs = h.control.checkpoint_inputs(&t.read).await.expect("inputs");
    assert!(inputs.purges.is_empty(), "the checkpoint consumed the record");
    assert_eq!(checkpoint(h, &t, &signer).await, c2, "and it is not logged twice");
}

/// `append_checkpoint` appends only onto the log it was computed against (two servers
/// checkpointing at once append one checkpoint), and refuses a checkpoint whose parts do not
/// agree; neither refusal writes anything.
pub async fn append_checkpoint_compares_and_validates(h: &Harness) {
    let (t, other, signer) = (h.fresh_tenant().await, h.fresh_tenant().await, signer());
    let log = SourceLog::new("r", 1, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.expect("push");
    let inputs = h.control.checkpoint_inputs(&t.read).await.expect("inputs");
    assert_eq!(inputs.heads.len(), 1);
    let leaves = crate::checkpoint::next_leaves(&[], &inputs.heads, &[]);
    let key_id = signer.public_key().id().to_owned();
    let signed = |tenant, leaves: &[_]| {
        let c = checkpoint_for(tenant, leaves, Utc::now(), &key_id);
        StoredCheckpoint {
            tree_size: c.tree_size,
            envelope: signer.sign_checkpoint(&c).expect("sign"),
        }
    };
    let next = |after, checkpoint| NewCheckpoint {
        after,
        leaves: leaves.clone(),
        purges: Vec::new(),
        checkpoint,
    };

    let first = checkpoint(h, &t, &signer).await;
    match h.control.append_checkpoint(&t.read, &next(0, signed(t.tenant.id, &leaves))).await {
        Err(Error::Unavailable { .. }) => {}
        wrong => panic!("a checkpoint made against an older log must be refused: {wrong:?}"),
    }
    let theirs = next(0, signed(other.tenant.id, &leaves));
    match h.control.append_checkpoint(&other.read, &next(0, signed(t.tenant.id, &leaves))).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "checkpoint"),
        wrong => panic!("another tenant's checkpoint must be refused: {wrong:?}"),
    }
    let mut short = theirs.clone();
    short.checkpoint.tree_size = 5;
    match h.control.append_checkpoint(&other.read, &short).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "checkpoint"),
        wrong => panic!("a size that does not add up must be refused: {wrong:?}"),
    }
    assert_eq!(log_of(h, &t).await.checkpoints, [first], "nothing written by the refusals");
    assert_eq!(log_of(h, &other).await, CheckpointLog::default());
}
