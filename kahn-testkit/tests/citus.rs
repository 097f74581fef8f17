//! The Citus handle, on the cluster `scripts/ensure-citus.sh` starts (scripts/test runs it).

use kahn_testkit::Citus;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;

/// No coordinator: the test fails (never skips), naming the script that starts the cluster.
#[tokio::test]
#[should_panic(expected = "bash ../shared/scripts/citus-cluster.sh")]
async fn no_cluster_fails_naming_the_script_that_starts_it() {
    Citus::connect_to("postgres://postgres@127.0.0.1:1/postgres").await;
}

/// A fresh database is a working Citus database: its workers are registered, and a table
/// distributed by `tenant_id` spreads its shards over them and routes a tenant's rows back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_spans_the_cluster_and_distributes_a_table() {
    let citus = Citus::connect().await;
    assert!(citus.workers().len() >= 2, "{:?}", citus.workers());
    let db = citus.fresh_database().await;
    let pool = db.pool(2).await;
    let workers: i64 = query_scalar("SELECT count(*) FROM citus_get_active_worker_nodes()")
        .fetch_one(&pool)
        .await
        .expect("list workers");
    assert_eq!(workers, citus.workers().len() as i64);
    query("CREATE TABLE runs (tenant_id uuid NOT NULL, run_id text NOT NULL, PRIMARY KEY (tenant_id, run_id))")
        .execute(&pool)
        .await
        .expect("create table");
    query("SELECT create_distributed_table('runs', 'tenant_id')")
        .execute(&pool)
        .await
        .expect("distribute it");
    let tenant = uuid::Uuid::new_v4();
    for run in ["a", "b", "c"] {
        query("INSERT INTO runs VALUES ($1, $2)")
            .bind(tenant)
            .bind(run)
            .execute(&pool)
            .await
            .expect("insert");
    }
    let n: i64 = query_scalar("SELECT count(*) FROM runs WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 3);
    let nodes: i64 = query_scalar(
        "SELECT count(DISTINCT nodeport) FROM citus_shards WHERE table_name = 'runs'::regclass",
    )
    .fetch_one(&pool)
    .await
    .expect("shard placements");
    assert!(nodes >= 2, "the shards spread over the workers ({nodes} nodes)");
    pool.close().await;
}
