//! Checkpoint logs where it is specific to SQLite: a purge's records as stored (the run as it
//! was, stamped with the store's clock), logs that survive reopening the file and go with
//! their tenant, and rows altered behind KAHN's back read as corrupt, never as a panic.

use std::sync::Arc;

use chrono::{Duration, Utc};
use kahn_core::checkpoint::CheckpointLog;
use kahn_core::conformance::fixtures::recent_base;
use kahn_core::conformance::{Harness, SourceLog, TestTenant};
use kahn_core::receipt::ReceiptSigner;
use kahn_core::{Error, PurgeRequest, StorageBackendExt};
use kahn_sqlite::SqliteBackend;
use rusqlite::params;

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("kahn.db").display())
}

/// Rows of `table` the tenant holds.
fn rows(raw: &rusqlite::Connection, table: &str, t: &TestTenant) -> i64 {
    raw.query_row(
        &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1"),
        params![t.tenant.id.as_uuid().as_bytes()],
        |r| r.get(0),
    )
    .expect("count the tenant's rows")
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_records_and_logs_survive_reopen_and_go_with_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let signer = ReceiptSigner::generate().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant_with(|r| r.with_retention_days(1).unwrap()).await;
    let other = h.fresh_tenant().await;
    let old = SourceLog::new("old", 3, "a", recent_base());
    h.store.append(&t.write, &old.all()).await.unwrap();
    h.store.append(&other.write, &old.all()).await.unwrap();
    h.control.make_checkpoint(&t.read, &signer, Utc::now()).await.unwrap();
    h.control.make_checkpoint(&other.read, &signer, Utc::now()).await.unwrap();
    let was = h.store.get_run(&t.read, &old.run_id).await.unwrap().info;

    // Purged as of two days on, at a store clock of now: the record is stamped with the
    // store's clock, not the request's instant.
    let before = Utc::now();
    let at = was.received_at + Duration::days(2);
    h.control.purge_expired(&PurgeRequest::as_of(at).for_tenant(t.tenant.id)).await.unwrap();
    let after = Utc::now();
    let inputs = h.control.checkpoint_inputs(&t.read).await.unwrap();
    assert_eq!(inputs.purges.len(), 1);
    let record = &inputs.purges[0];
    assert_eq!(
        (&record.run.run_id, record.run.next_seq, record.run.head_hash, record.run.received_at),
        (&old.run_id, was.next_seq, was.head_hash, was.received_at),
        "the run as it was"
    );
    assert!(
        before - Duration::milliseconds(1) <= record.purged_at && record.purged_at <= after,
        "purged at the store's clock: {} not in {before}..{after}",
        record.purged_at
    );
    let logged = h.control.read_checkpoint_log(&t.read).await.unwrap();

    // Reopened, the file holds the same log and the same unlogged record.
    drop(h);
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    assert_eq!(h.control.read_checkpoint_log(&t.read).await.unwrap(), logged);
    assert_eq!(h.control.checkpoint_inputs(&t.read).await.unwrap().purges, inputs.purges);
    let c2 = h.control.make_checkpoint(&t.read, &signer, Utc::now()).await.unwrap();
    assert_eq!(c2.tree_size, 2, "the purge logged");
    assert!(h.control.checkpoint_inputs(&t.read).await.unwrap().purges.is_empty());

    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let logged_in: Option<i64> = raw
        .query_row("SELECT logged_in FROM purge_records WHERE id = ?1", [record.id as i64], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(logged_in, Some(2), "the record names the checkpoint that logged it");

    let others = h.control.read_checkpoint_log(&other.read).await.unwrap();
    h.control.delete_tenant(t.tenant.id).await.unwrap();
    for table in ["checkpoint_leaves", "checkpoints", "purge_records"] {
        assert_eq!(rows(&raw, table, &t), 0, "{table}: the deleted tenant's rows are gone");
    }
    assert_eq!(h.control.read_checkpoint_log(&t.read).await.unwrap(), CheckpointLog::default());
    assert_eq!(h.control.read_checkpoint_log(&other.read).await.unwrap(), others);
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_checkpoint_rows_that_do_not_decode_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let signer = ReceiptSigner::generate().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    for run in ["a", "b"] {
        h.store.append(&t.write, &SourceLog::new(run, 2, "x", recent_base()).all()).await.unwrap();
    }
    h.control.make_checkpoint(&t.read, &signer, Utc::now()).await.unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let tid = t.tenant.id.as_uuid().as_bytes().to_vec();
    let corrupt = |err: &Error, names: &str| matches!(err, Error::Integrity { message, .. } if message.contains(names));
    let both_fail = |names: &'static str| {
        let (h, t) = (&h, &t);
        async move {
            let err = h.control.read_checkpoint_log(&t.read).await.unwrap_err();
            assert!(corrupt(&err, names), "read_checkpoint_log: {err:?}");
            let err = h.control.checkpoint_inputs(&t.read).await.unwrap_err();
            assert!(corrupt(&err, names), "checkpoint_inputs: {err:?}");
        }
    };

    // A leaf whose kind byte is none of the kinds.
    let leaf: Vec<u8> = raw
        .query_row(
            "SELECT leaf FROM checkpoint_leaves WHERE tenant_id = ?1 AND idx = 1",
            params![tid],
            |r| r.get(0),
        )
        .unwrap();
    let mut bad = leaf.clone();
    bad[0] = 0x07;
    let set = "UPDATE checkpoint_leaves SET leaf = ?2 WHERE tenant_id = ?1 AND idx = 1";
    raw.execute(set, params![tid, bad]).unwrap();
    both_fail("checkpoint leaf 1").await;
    raw.execute(set, params![tid, leaf]).unwrap();
    h.control.read_checkpoint_log(&t.read).await.expect("restored");

    // A leaf removed from the middle of the log.
    raw.execute("DELETE FROM checkpoint_leaves WHERE tenant_id = ?1 AND idx = 0", params![tid])
        .unwrap();
    both_fail("leaf 0 is missing").await;
    raw.execute("INSERT INTO checkpoint_leaves VALUES (?1, 0, ?2)", params![tid, leaf]).unwrap();

    // An envelope that is not JSON.
    raw.execute("UPDATE checkpoints SET envelope = '{not json' WHERE tenant_id = ?1", params![tid])
        .unwrap();
    both_fail("checkpoint 0 envelope").await;
}

/// A checkpoint made after a run was deleted behind KAHN's back records it (a `Missing`
/// leaf), is appended all the same, and says so; an honest one says nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_that_records_a_deletion_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let signer = ReceiptSigner::generate().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    for run in ["kept", "gone"] {
        h.store.append(&t.write, &SourceLog::new(run, 2, "a", recent_base()).all()).await.unwrap();
    }
    let first = h.control.make_checkpoint_audited(&t.read, &signer, Utc::now()).await.unwrap();
    assert_eq!((first.checkpoint.tree_size, first.alteration), (2, None), "the first is honest");

    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    for table in ["transitions", "run_nodes", "runs"] {
        raw.execute(&format!("DELETE FROM {table} WHERE run_id = 'gone'"), []).unwrap();
    }
    let made = h.control.make_checkpoint_audited(&t.read, &signer, Utc::now()).await.unwrap();
    assert_eq!(made.checkpoint.tree_size, 3, "appended: the Missing leaf is the evidence");
    let why = made.alteration.expect("the checkpoint records the deletion");
    assert!(why.contains("gone") && why.contains("removed outside retention"), "{why}");
    let log = h.control.read_checkpoint_log(&t.read).await.unwrap();
    assert_eq!(log.latest(), Some(&made.checkpoint));
}
