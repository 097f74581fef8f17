//! How reads are planned. A prepared statement's generic plan knows neither the `LIMIT` nor
//! which filters are NULL; for the run listing it scanned and sorted all of a tenant's runs
//! (linear in them). Reads are planned with their parameters instead.

use kahn_core::conformance::fixtures::{SourceLog, batch, recent_base};
use kahn_core::{NewTenant, RunQuery, StorageBackend, StorageBackendExt};
use kahn_testkit::TestDb;
use sqlx_core::query::query;
use sqlx_core::row::Row;

/// Listed many times on one pooled connection (past the five executions after which Postgres
/// may switch a prepared statement to its generic plan), the run listing is planned with its
/// parameters every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_listing_is_planned_with_its_parameters_every_time() {
    let (db, admin) = TestDb::new().await;
    let tenant = admin.provision_tenant(&NewTenant::new("reads").expect("valid")).await.expect("t");
    let key = admin.issue_api_key(tenant.id).await.expect("key");
    // One connection, so every call below reuses its statement cache.
    let app = db.app_as(kahn_pg::APP_ROLE, 1).await.expect("app pool of one");
    let write = app.resolve_api_key(&key.secret).await.expect("resolve").expect("active");
    let lines: Vec<String> = (0..50)
        .flat_map(|i| SourceLog::new(&format!("run-{i}"), 2, "a", recent_base()).lines)
        .collect();
    app.append(&write, &batch(&lines)).await.expect("seed 50 runs");

    let read = write.read();
    for _ in 0..12 {
        let page = app.list_runs(&read, &RunQuery { limit: 5, ..RunQuery::default() }).await;
        assert_eq!(page.expect("list").runs.len(), 5);
    }
    let mut tx = app.read_transaction(&read).await.expect("read tx");
    let row = query(
        "SELECT generic_plans, custom_plans FROM pg_catalog.pg_prepared_statements \
         WHERE statement LIKE 'SELECT run_id, source, labels, %FROM kahn.runs%ORDER BY activity_at%'",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("the listing is a prepared statement of this connection");
    let (generic, custom): (i64, i64) =
        (row.try_get("generic_plans").expect("n"), row.try_get("custom_plans").expect("n"));
    assert_eq!((generic, custom), (0, 12), "every listing planned with its parameters");
    let mode: String = query("SELECT pg_catalog.current_setting('plan_cache_mode') AS m")
        .fetch_one(&mut *tx)
        .await
        .expect("setting")
        .try_get("m")
        .expect("text");
    assert_eq!(mode, "force_custom_plan", "set for the read transaction");
}
