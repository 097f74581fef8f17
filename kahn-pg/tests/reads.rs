//! How reads are planned. A prepared statement's generic plan knows neither the `LIMIT` nor
//! which filters are NULL; for the run listing it scanned and sorted all of a tenant's runs
//! (linear in them). Reads are planned with their parameters instead.

use kahn_core::conformance::fixtures::{SourceLog, batch, recent_base};
use kahn_core::{NewTenant, RunQuery, StorageBackend, StorageBackendExt};
use kahn_testkit::TestDb;
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;

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

/// A page after a cursor starts at the cursor: the listing's own prepared statement, explained
/// with a cursor half-way down 400 runs (distinct activity times), has the cursor's time in
/// its index condition and filters out no run newer than it (only the cursor's own). (With the cursor only in an `OR`
/// the index scan walked, and discarded, every newer run: linear in the page's depth.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_after_a_cursor_starts_at_the_cursor() {
    let (db, admin) = TestDb::new().await;
    let tenant = admin.provision_tenant(&NewTenant::new("deep").expect("valid")).await.expect("t");
    let key = admin.issue_api_key(tenant.id).await.expect("key");
    let app = db.app_as(kahn_pg::APP_ROLE, 1).await.expect("app pool of one");
    let write = app.resolve_api_key(&key.secret).await.expect("resolve").expect("active");
    let base = recent_base() - chrono::Duration::hours(1);
    let lines: Vec<String> = (0..400)
        .flat_map(|i| {
            let at = base + chrono::Duration::seconds(i);
            SourceLog::new(&format!("run-{i:03}"), 2, "a", at).lines
        })
        .collect();
    app.append(&write, &batch(&lines)).await.expect("seed 400 runs");
    query("ANALYZE kahn.runs").execute(admin.pool()).await.expect("analyze");

    // Page to half-way with the adapter itself, then read that page's plan.
    let read = write.read();
    let mut q = RunQuery { limit: 50, ..RunQuery::default() };
    for _ in 0..4 {
        let page = app.list_runs(&read, &q).await.expect("list");
        q.cursor = page.next_cursor;
    }
    let cursor = q.cursor.expect("a cursor after 200 runs");
    assert_eq!(cursor.run_id().as_str(), "run-200", "newest first");
    let mut tx = app.read_transaction(&read).await.expect("read tx");
    let name: String = query(
        "SELECT name FROM pg_catalog.pg_prepared_statements \
         WHERE statement LIKE 'SELECT run_id, source, labels, %FROM kahn.runs%ORDER BY activity_at%'",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("the listing is a prepared statement of this connection")
    .try_get("name")
    .expect("text");
    let at = chrono::DateTime::from_timestamp_micros(cursor.activity_micros()).expect("time");
    // 400 runs fit in a few pages, where a sequential scan is cheapest; at a tenant's real
    // size the index wins (benches/growth.rs), which is the plan under test.
    query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.expect("set");
    // EXECUTE takes no bind parameters: the server quotes the values into its text.
    let explain: String = query(
        "SELECT pg_catalog.format('EXPLAIN (ANALYZE, COSTS OFF) \
                EXECUTE %I(%L::uuid, NULL, NULL, %L::timestamptz, %L, 51, NULL, NULL)', \
                $1::text, $2::uuid, $3::timestamptz, $4::text) AS sql",
    )
    .bind(&name)
    .bind(tenant.id.as_uuid())
    .bind(at)
    .bind(cursor.run_id().as_str())
    .fetch_one(&mut *tx)
    .await
    .expect("quote the values")
    .try_get("sql")
    .expect("text");
    let plan: Vec<String> = query(AssertSqlSafe(explain))
        .fetch_all(&mut *tx)
        .await
        .expect("explain the listing")
        .iter()
        .map(|r| r.try_get::<String, _>(0).expect("plan line"))
        .collect();
    let text = plan.join("\n");
    assert!(
        plan.iter().any(|l| l.contains("Index Cond:") && l.contains("activity_at <=")),
        "the cursor bounds the index scan:\n{text}"
    );
    let removed: u64 = plan
        .iter()
        .filter_map(|l| l.trim().strip_prefix("Rows Removed by Filter: "))
        .map(|n| n.parse::<u64>().expect("a count"))
        .sum();
    // The cursor's own run shares its time; every newer one is outside the index condition.
    assert!(removed <= 1, "no newer run read and discarded ({removed} were):\n{text}");
    assert!(text.contains("rows=51"), "a full page (50 and one to know there is more):\n{text}");
}
