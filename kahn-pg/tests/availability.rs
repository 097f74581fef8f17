//! Writes cannot starve reads: appends hold at most the backend's write slots of the pool,
//! so a flood of appends (here, appends all stuck behind one run's lock) leaves connections
//! for reads and key lookups. Against the real PostgreSQL server as the app role.

use std::sync::Arc;
use std::time::Duration;

use kahn_core::{AppendBatch, Error, NewTenant, RunId, StorageBackend, StorageBackendExt};
use kahn_pg::PgBackend;
use kahn_testkit::TestDb;
use serde_json::json;
use sqlx_core::query::query;
use sqlx_postgres::PgPoolOptions;

fn one_run(run: &str) -> AppendBatch {
    let line = json!({"run_id": run, "seq": 0, "ts": "2026-01-01T00:00:00Z", "to": "running"});
    AppendBatch::from_ndjson(&line.to_string()).expect("valid")
}

/// A pool of 4 gives appends 3 slots. Four appends stuck behind a run lock held elsewhere take
/// 3 connections and the 4th waits for a slot (not a connection); a read of another tenant is
/// served at once. Before the slots, the 4 stuck appends held all 4 connections and the read
/// failed with a pool timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_stuck_on_a_lock_leave_a_connection_for_reads() {
    let (db, admin) = TestDb::new().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(db.options_as(kahn_pg::APP_ROLE))
        .await
        .expect("app pool");
    let app = Arc::new(PgBackend::app_from_pool(pool).await.expect("app backend"));
    assert_eq!(app.write_concurrency(), 3, "a pool of 4 keeps one connection for reads");

    let mut scopes = Vec::new();
    for name in ["writer", "reader"] {
        let t = admin.provision_tenant(&NewTenant::new(name).expect("valid")).await.expect("t");
        let key = admin.issue_api_key(t.id).await.expect("key");
        scopes.push(app.resolve_api_key(&key.secret).await.expect("resolve").expect("active"));
    }
    let (writer, reader) = (scopes[0].clone(), scopes[1].clone());
    app.append(&writer, &one_run("hot")).await.expect("create the hot run");
    app.append(&reader, &one_run("mine")).await.expect("the reader's run");

    // Another session (its own connection, outside the backend's pool) locks the hot run.
    let blocker = db.pool_as(kahn_pg::APP_ROLE, 1).await;
    let mut lock = blocker.begin().await.expect("begin");
    query("SELECT kahn.enter_tenant($1)")
        .bind(writer.tenant().as_uuid())
        .execute(&mut *lock)
        .await
        .expect("tenant");
    query("SELECT 1 FROM kahn.runs WHERE run_id = 'hot' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .expect("lock the run");

    let stuck: Vec<_> = (0..4)
        .map(|_| {
            let (app, writer) = (app.clone(), writer.clone());
            tokio::spawn(async move { app.append(&writer, &one_run("hot")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mine = RunId::new("mine").expect("valid");
    let read = app.get_run(&reader.read(), &mine).await;
    assert!(read.is_ok(), "a read is served while appends are stuck: {read:?}");
    assert!(app.authenticate_api_key(&writer_key(&admin, writer.tenant()).await).await.is_ok());

    lock.rollback().await.expect("release the lock");
    for task in stuck {
        match task.await.expect("task") {
            Ok(report) => assert_eq!(report.skipped(), 1, "the same content: a duplicate"),
            // Waited for a slot past the pool's acquire timeout: unavailable, retry later.
            Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

async fn writer_key(admin: &PgBackend, tenant: kahn_core::TenantId) -> kahn_core::ApiKey {
    admin.issue_api_key(tenant).await.expect("key").secret
}
