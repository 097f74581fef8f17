//! Migrations on a database holding data. 0004: stored runs are kept, and their retention starts
//! at the migration (received_at is the migration's time), so nothing is purged because of
//! the change, however old the runs' own timestamps. 0005: stored runs get the new status rule.

use chrono::{Duration, Utc};
use kahn_core::{PurgeRequest, RunId, StorageBackend, StorageBackendExt, TenantId};
use kahn_pg::PgBackend;
use kahn_testkit::TestDb;
use sqlx_core::query::query;
use sqlx_core::row::Row;

/// A database at 0003 with a run whose transitions are a year old, in a tenant keeping runs
/// one day, is migrated to 0004: the run is intact, its received_at is the migration's time,
/// a purge at the store's clock (as the app role and as the operator) keeps it, and the
/// startup check passes on the migrated database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stored_before_0004_keeps_its_data_and_counts_from_the_migration() {
    let (db, pool) = TestDb::unmigrated().await;
    kahn_pg::migrator().run_to(3, &pool).await.expect("migrate to 0003");
    let tenant = TenantId::new_random();
    let year_ago = Utc::now() - Duration::days(365);
    query(
        "INSERT INTO kahn.tenants (id, name, retention_days, created_at) \
         VALUES ($1, 'before-0004', 1, $2)",
    )
    .bind(tenant.as_uuid())
    .bind(year_ago)
    .execute(&pool)
    .await
    .expect("tenant at 0003");
    // The run as 0003 stores it (no received_at yet): created and last active a year ago.
    query(
        "INSERT INTO kahn.runs (tenant_id, run_id, next_seq, head_hash, status_json, first_ts, \
                                last_ts, created_at) \
         VALUES ($1, 'old', 1, $2, '\"done\"', $3, $3, $3)",
    )
    .bind(tenant.as_uuid())
    .bind(vec![7u8; 32])
    .bind(year_ago)
    .execute(&pool)
    .await
    .expect("run at 0003");
    query(
        "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
         VALUES ($1, 'old', 0, '{}', $2, $2)",
    )
    .bind(tenant.as_uuid())
    .bind(vec![7u8; 32])
    .execute(&pool)
    .await
    .expect("transition at 0003");

    let before = Utc::now();
    let admin = PgBackend::admin_from_pool(pool).await.expect("migrate to 0004");
    let after = Utc::now();
    let received: chrono::DateTime<Utc> =
        query("SELECT received_at FROM kahn.runs WHERE tenant_id = $1 AND run_id = 'old'")
            .bind(tenant.as_uuid())
            .fetch_one(admin.pool())
            .await
            .expect("the run is kept")
            .try_get("received_at")
            .expect("received_at");
    let slack = Duration::seconds(5);
    assert!(
        received >= before - slack && received <= after + slack,
        "received_at is the migration's time: {received} not in [{before}, {after}]"
    );

    let app = db.app().await; // the startup check passes on the migrated database
    let out = app.purge_expired(&PurgeRequest::at_store_clock()).await.expect("app purge");
    assert!(out.reports.is_empty() && out.failures.is_empty(), "{out:?}");
    let out = admin.purge_expired(&PurgeRequest::at_store_clock()).await.expect("admin purge");
    assert!(out.reports.is_empty(), "{out:?}");
    let scope = admin.resolve_admin_override(tenant).await.expect("read scope");
    let run = RunId::new("old").expect("valid");
    let summary = app.get_run(&scope, &run).await.expect("still there");
    assert_eq!(summary.info.received_at, received);
    assert_eq!(summary.info.next_seq, 1);
    assert_eq!(app.read_transitions(&scope, &run, None, 10).await.expect("rows").len(), 1);
    // The retention then counts from the migration: one day after it, the run goes.
    let out = admin
        .purge_expired(&PurgeRequest::as_of(
            received + Duration::days(1) + Duration::microseconds(1),
        ))
        .await
        .expect("operator purge");
    assert_eq!(
        out.report_for(tenant).map(|r| (r.runs_removed, r.transitions_removed)),
        Some((1, 1))
    );
}

/// Migration 0005 on a database holding data: runs stored under the old status rule ("the last
/// `to`") are recomputed by the new one from their transitions — status, node counts, times and
/// node summaries equal what the reference adapter computes at append time — and the run then
/// takes appends that keep them current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stored_before_0005_get_the_new_status_from_their_transitions() {
    use kahn_core::conformance::{Harness, SourceLog, fixtures::recent_base};

    let (db, pool) = TestDb::unmigrated().await;
    kahn_pg::migrator().run_to(4, &pool).await.expect("migrate to 0004");

    // The rows as any store computes them, from the reference adapter.
    let log = SourceLog::new("before-0005", 12, "a", recent_base());
    let reference = Harness::new(std::sync::Arc::new(kahn_core::MemoryBackend::new()));
    let rt = reference.fresh_tenant().await;
    reference.store.append(&rt.write, &log.chunk(0, 8)).await.expect("reference append");
    let want = reference.store.get_run(&rt.read, &log.run_id).await.expect("reference run");
    let rows = reference.store.read_all_transitions(&rt.read, &log.run_id).await.expect("rows");
    let old_status = rows.last().expect("rows").body["to"].clone();
    assert_ne!(old_status, serde_json::json!(want.info.status), "the rules disagree here");

    let tenant = TenantId::new_random();
    query("INSERT INTO kahn.tenants (id, name, created_at) VALUES ($1, 'before-0005', now())")
        .bind(tenant.as_uuid())
        .execute(&pool)
        .await
        .expect("tenant at 0004");
    query(
        "INSERT INTO kahn.runs (tenant_id, run_id, next_seq, head_hash, status_json, first_ts, \
                                last_ts, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
    )
    .bind(tenant.as_uuid())
    .bind(log.run_id.as_str())
    .bind(want.info.next_seq as i64)
    .bind(want.info.head_hash.as_bytes().as_slice())
    .bind(old_status.to_string())
    .bind(want.info.first_ts)
    .bind(want.info.last_ts)
    .execute(&pool)
    .await
    .expect("run at 0004");
    for t in &rows {
        query(
            "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant.as_uuid())
        .bind(log.run_id.as_str())
        .bind(t.seq.as_i64())
        .bind(serde_json::to_string(&t.body).expect("json"))
        .bind(t.content_hash.as_bytes().as_slice())
        .bind(t.chain_hash.as_bytes().as_slice())
        .execute(&pool)
        .await
        .expect("transition at 0004");
    }

    let admin = PgBackend::admin_from_pool(pool).await.expect("migrate to 0005 and recompute");
    let app = db.app().await; // the startup check passes with kahn.run_nodes in place
    let scope = admin.resolve_admin_override(tenant).await.expect("read scope");
    let migrated = app.get_run(&scope, &log.run_id).await.expect("the migrated run");
    assert_eq!(
        (
            &migrated.info.status,
            migrated.info.node_counts,
            migrated.info.started_at,
            migrated.info.ended_at
        ),
        (&want.info.status, want.info.node_counts, want.info.started_at, want.info.ended_at)
    );
    assert_eq!(migrated.nodes, want.nodes);

    // Appends continue from the recomputed progress, as the reference does.
    let key = admin.issue_api_key(tenant).await.expect("key");
    let write = app.resolve_api_key(&key.secret).await.expect("resolve").expect("active key");
    app.append(&write, &log.all()).await.expect("append the rest");
    reference.store.append(&rt.write, &log.all()).await.expect("reference append the rest");
    let after = app.get_run(&scope, &log.run_id).await.expect("run");
    let want = reference.store.get_run(&rt.read, &log.run_id).await.expect("reference run");
    assert_eq!((after.info.status, after.nodes), (want.info.status, want.nodes));
}
