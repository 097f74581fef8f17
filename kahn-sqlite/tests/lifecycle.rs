//! The data lifecycle where it is specific to SQLite: a schema-1 file migrating to retention
//! by receipt without losing its old runs, per-tenant purge transactions (one tenant's failure
//! keeps the others' purges and reports), key use recorded off the request path, and imports
//! of bad records refused before anything is written.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use kahn_core::conformance::fixtures::recent_base;
use kahn_core::conformance::{Harness, SourceLog, TestTenant};
use kahn_core::{
    ApiKey, ApiKeyId, ApiKeyInfo, ApiKeyRecord, Error, MemoryBackend, NewTenant, PurgeRequest,
    RunQuery, StorageBackend, StorageBackendExt, TenantId, TenantRecord,
};
use kahn_sqlite::{SqliteBackend, SqliteOptions};
use rusqlite::params;

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("kahn.db").display())
}

async fn run_ids(h: &Harness, t: &TestTenant) -> Vec<String> {
    let page = h.store.list_runs(&t.read, &RunQuery::default()).await.expect("list runs");
    let mut ids: Vec<String> = page.runs.into_iter().map(|r| r.run_id.to_string()).collect();
    ids.sort();
    ids
}

/// A database written by the previous release (schema 1: retention counted from the
/// producer's `ts`) holding a run dated a year ago. The new build migrates it: the run gets
/// `received_at` = the migration's time, so a purge at the store's clock keeps it (the old
/// rule would have removed it), it is intact and its key still works, and it expires only a
/// full retention after the migration.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_1_file_migrates_and_keeps_its_year_old_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kahn.db");
    let year_ago = recent_base() - Duration::days(365);

    // The run's rows as any store computes them (hashes, canonical bodies), from the
    // reference adapter.
    let log = SourceLog::new("last-year", 5, "a", year_ago);
    let reference = Harness::new(Arc::new(MemoryBackend::new()));
    let rt = reference.fresh_tenant().await;
    reference.store.append(&rt.write, &log.all()).await.unwrap();
    let run = reference.store.get_run(&rt.read, &log.run_id).await.unwrap().info;
    let rows = reference.store.read_all_transitions(&rt.read, &log.run_id).await.unwrap();

    // Schema 1, written as the previous release did: only 0001, user_version 1.
    let tenant = TenantId::new_random();
    let key = ApiKey::generate().unwrap();
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(include_str!("../migrations/0001_init.sql")).unwrap();
        raw.pragma_update(None, "user_version", 1).unwrap();
        let tid = tenant.as_uuid().as_bytes();
        let created = year_ago.timestamp_micros();
        raw.execute(
            "INSERT INTO tenants (id, name, retention_days, created_at) VALUES (?1, 'old', 90, ?2)",
            params![tid, created],
        )
        .unwrap();
        raw.execute(
            "INSERT INTO api_keys (tenant_id, key_id, key_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![tid, ApiKeyId::new_random().as_uuid().as_bytes(), key.hash().as_bytes(), created],
        )
        .unwrap();
        let last_ts = run.last_ts.unwrap().timestamp_micros();
        raw.execute(
            "INSERT INTO runs (tenant_id, run_id, next_seq, head_hash, status, first_ts, last_ts,
                               created_at, activity_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)",
            params![
                tid,
                log.run_id.as_str(),
                run.next_seq as i64,
                run.head_hash.as_bytes(),
                // The old rule: the `to` of the last transition.
                rows.last().unwrap().body["to"].as_str().unwrap(),
                run.first_ts.unwrap().timestamp_micros(),
                last_ts,
                created,
            ],
        )
        .unwrap();
        for t in &rows {
            raw.execute(
                "INSERT INTO transitions (tenant_id, run_id, seq, body, content_hash, chain_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    tid,
                    log.run_id.as_str(),
                    t.seq.as_i64(),
                    serde_json::to_string(&t.body).unwrap(),
                    t.content_hash.as_bytes(),
                    t.chain_hash.as_bytes(),
                ],
            )
            .unwrap();
        }
    }

    let before = Utc::now() - Duration::seconds(1);
    let store = Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap());
    let after = Utc::now() + Duration::seconds(1);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, SqliteBackend::schema_version());

    let scope = store.resolve_api_key(&key).await.unwrap().expect("the old key still works");
    assert_eq!(scope.tenant(), tenant);
    let read = scope.read();
    let info = store.get_run(&read, &log.run_id).await.unwrap().info;
    assert!(
        info.received_at >= before && info.received_at <= after,
        "received_at is the migration's time ({}), not the run's dates",
        info.received_at
    );
    assert_eq!((info.created_at, info.last_ts), (year_ago, run.last_ts), "dates are kept");
    // Schema 3 recomputed the status (and node summaries) by the new rule.
    assert_ne!(rows.last().unwrap().body["to"], "running", "the old rule said otherwise");
    let migrated = store.get_run(&read, &log.run_id).await.unwrap();
    let want = reference.store.get_run(&rt.read, &log.run_id).await.unwrap();
    assert_eq!(
        (migrated.info.status.as_str(), migrated.info.node_counts, migrated.info.ended_at),
        ("running", want.info.node_counts, None)
    );
    assert_eq!(migrated.nodes, want.nodes);

    let out = store.purge_expired(&PurgeRequest::at_store_clock()).await.unwrap();
    assert!(out.reports.is_empty() && out.failures.is_empty(), "{out:?}");
    assert_eq!(store.verify_run(&read, &log.run_id).await.unwrap(), run.head_hash);
    let again = store.append(&scope, &log.all()).await.unwrap();
    assert_eq!((again.appended(), again.skipped()), (0, 5), "the migrated run takes re-pushes");
    let received = store.get_run(&read, &log.run_id).await.unwrap().info.received_at;
    assert_eq!(received, info.received_at, "a re-push is not a receipt");

    // It expires a full retention after the migration, not before.
    let purge_at = |at: DateTime<Utc>| PurgeRequest::as_of(at).for_tenant(tenant);
    let kept = store.purge_expired(&purge_at(received + Duration::days(90))).await.unwrap();
    assert!(kept.reports.is_empty(), "{kept:?}");
    let gone = store
        .purge_expired(&purge_at(received + Duration::days(90) + Duration::microseconds(1)))
        .await
        .unwrap();
    let report = gone.report_for(tenant).expect("purged after the retention");
    assert_eq!((report.runs_removed, report.transitions_removed), (1, 5));

    // The purge's query is served by the (tenant_id, received_at) index.
    let plan: Vec<String> = raw
        .prepare("EXPLAIN QUERY PLAN DELETE FROM runs WHERE tenant_id = ?1 AND received_at < ?2")
        .unwrap()
        .query_map(params![tenant.as_uuid().as_bytes(), 0_i64], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(plan.iter().any(|p| p.contains("runs_by_receipt")), "{plan:?}");
}

/// Tenants are purged each in its own transaction: when one tenant's purge fails (here a
/// trigger refuses to delete its runs), the tenants before and after it are still purged and
/// reported, its own runs are all intact, and the failure names it. Once the cause is gone, a
/// later purge removes its runs too.
#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_failed_purge_keeps_the_others_purges_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let mut tenants = Vec::new();
    for _ in 0..3 {
        let t = h.fresh_tenant_with(|r| r.with_retention_days(1).unwrap()).await;
        for (run, n) in [("a", 3), ("b", 2)] {
            h.store
                .append(&t.write, &SourceLog::new(run, n, "x", recent_base()).all())
                .await
                .unwrap();
        }
        tenants.push(t);
    }
    // Purged in id order: fail the middle one, so one tenant is purged before and one after.
    tenants.sort_by_key(|t| t.tenant.id);
    let failing = tenants[1].tenant.id;

    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    raw.execute_batch(
        "CREATE TABLE boom_tenants (id BLOB PRIMARY KEY);
         CREATE TRIGGER boom BEFORE DELETE ON runs
         WHEN old.tenant_id IN (SELECT id FROM boom_tenants)
         BEGIN SELECT RAISE(ABORT, 'boom'); END;",
    )
    .unwrap();
    raw.execute("INSERT INTO boom_tenants (id) VALUES (?1)", params![failing.as_uuid().as_bytes()])
        .unwrap();

    let at = Utc::now() + Duration::days(1) + Duration::minutes(1);
    let out = h.control.purge_expired(&PurgeRequest::as_of(at)).await.unwrap();
    let reported: Vec<(TenantId, u64, u64)> =
        out.reports.iter().map(|r| (r.tenant_id, r.runs_removed, r.transitions_removed)).collect();
    assert_eq!(reported, [(tenants[0].tenant.id, 2, 5), (tenants[2].tenant.id, 2, 5)]);
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    assert_eq!(out.failures[0].tenant_id, failing);
    let why = format!("{:?}", out.failures[0].error);
    assert!(why.contains("boom"), "the failure says why: {why}");

    for t in [&tenants[0], &tenants[2]] {
        assert!(run_ids(&h, t).await.is_empty(), "purged");
    }
    assert_eq!(run_ids(&h, &tenants[1]).await, ["a", "b"], "the failed tenant keeps its runs");
    for run in ["a", "b"] {
        let run = kahn_core::RunId::new(run).unwrap();
        h.store.verify_run(&tenants[1].read, &run).await.expect("intact, every transition kept");
    }
    let left: i64 = raw
        .query_row(
            "SELECT count(*) FROM transitions WHERE tenant_id = ?1",
            params![failing.as_uuid().as_bytes()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 5);
    // The purge's records of the runs it removes commit or roll back with it.
    let records = |t: TenantId| -> i64 {
        raw.query_row(
            "SELECT count(*) FROM purge_records WHERE tenant_id = ?1",
            params![t.as_uuid().as_bytes()],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        (records(tenants[0].tenant.id), records(failing), records(tenants[2].tenant.id)),
        (2, 0, 2)
    );

    raw.execute_batch("DROP TRIGGER boom; DROP TABLE boom_tenants;").unwrap();
    let out = h.control.purge_expired(&PurgeRequest::as_of(at)).await.unwrap();
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(
        out.reports.iter().map(|r| (r.tenant_id, r.runs_removed)).collect::<Vec<_>>(),
        [(failing, 2)]
    );
}

/// Recording a key's last use never waits for the writer: with the writer stuck behind
/// another process's lock and its queue full, authenticating still answers at once (the
/// record is skipped, not queued); appends already queued finish once the lock goes.
#[tokio::test(flavor = "multi_thread")]
async fn authenticating_never_waits_for_a_stuck_writer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::file(dir.path().join("kahn.db")).queue_capacity(1);
    let h = Harness::new(Arc::new(SqliteBackend::open(opts).await.unwrap()));
    let t = h.fresh_tenant().await;
    // Resolving the fresh key queued the record of its first use: let it take its slot and go.
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let unused = h.control.issue_api_key(t.tenant.id).await.unwrap();

    let mut foreign = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let tx = foreign.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let append = |run: &str| {
        let (store, write) = (h.store.clone(), t.write.clone());
        let batch = SourceLog::new(run, 1, "a", recent_base()).all();
        tokio::spawn(async move { store.append(&write, &batch).await })
    };
    // The writer takes the first and waits on the lock; the second fills the queue (1).
    let stuck = append("stuck");
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let queued = append("queued");
    tokio::time::sleep(StdDuration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let scope =
        tokio::time::timeout(StdDuration::from_secs(2), h.store.resolve_api_key(&unused.secret))
            .await
            .expect("authenticating does not wait for the writer")
            .unwrap();
    assert_eq!(scope.map(|s| s.tenant()), Some(t.tenant.id));
    assert!(started.elapsed() < StdDuration::from_secs(1), "{:?}", started.elapsed());

    drop(tx);
    stuck.await.unwrap().expect("the stuck append finishes");
    queued.await.unwrap().expect("the queued append finishes");
    let keys = h.control.list_api_keys(t.tenant.id).await.unwrap();
    let of = |id| keys.iter().find(|k| k.id == id).map(|k| k.last_used_at);
    assert_eq!(of(unused.id), Some(None), "with the queue full the record was skipped");
    assert!(of(t.key.id).flatten().is_some(), "the first use, with room, was recorded");
}

fn record_of(tenant: kahn_core::Tenant, keys: &[(&ApiKey, ApiKeyId)]) -> TenantRecord {
    let keys = keys
        .iter()
        .map(|(secret, id)| ApiKeyRecord {
            info: ApiKeyInfo {
                id: *id,
                tenant_id: tenant.id,
                created_at: kahn_core::rules::truncate_micros(Utc::now()),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            },
            hash: secret.hash(),
        })
        .collect();
    TenantRecord { tenant, keys }
}

/// A record is input: settings a tenant could never have, or a key id that is another key
/// of the tenant here, are refused naming the field, and nothing of the record is stored.
#[tokio::test]
async fn imports_of_bad_records_are_refused_and_change_nothing() {
    let store = SqliteBackend::connect("sqlite::memory:").await.unwrap();
    let fresh = || NewTenant::new(format!("m-{}", uuid::Uuid::new_v4().simple())).unwrap();

    let mut zero = fresh().to_tenant();
    zero.retention_days = 0;
    let mut spaced = fresh().to_tenant();
    spaced.name = "has space".into();
    for (bad, field) in [(zero, "retention_days"), (spaced, "name")] {
        let id = bad.id;
        match store.import_tenant(&record_of(bad, &[])).await {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
        assert!(matches!(store.get_tenant(id).await, Err(Error::NotFound { .. })));
    }

    // A key id that is another key of the tenant here (same id, other hash): refused.
    let t = fresh().to_tenant();
    let id = ApiKeyId::new_random();
    let (a, b) = (ApiKey::generate().unwrap(), ApiKey::generate().unwrap());
    let mut record = record_of(t.clone(), &[(&a, id)]);
    store.import_tenant(&record).await.unwrap();
    record.keys[0].hash = b.hash();
    match store.import_tenant(&record).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "keys"),
        other => panic!("{other:?}"),
    }
    assert!(store.resolve_api_key(&b).await.unwrap().is_none());
    assert!(store.resolve_api_key(&a).await.unwrap().is_some());
    // A new tenant whose second key's hash is another tenant's key here: refused, and the
    // tenant and first key, written in the same transaction, are not kept.
    let other = fresh().to_tenant();
    let clash = record_of(other.clone(), &[(&b, ApiKeyId::new_random()), (&a, id)]);
    match store.import_tenant(&clash).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "keys"),
        other => panic!("a hash that is another tenant's key: {other:?}"),
    }
    assert!(matches!(store.get_tenant(other.id).await, Err(Error::NotFound { .. })));
    assert!(store.resolve_api_key(&b).await.unwrap().is_none(), "nothing of it was stored");
}
