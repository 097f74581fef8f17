//! Migration 0004 on a database holding data: stored runs are kept, and their retention starts
//! at the migration (received_at is the migration's time), so nothing is purged because of
//! the change, however old the runs' own timestamps.

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
