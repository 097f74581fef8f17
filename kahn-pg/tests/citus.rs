//! What only a Citus cluster can show (DESIGN.md "Scale-out"): `kahn migrate` places every
//! table, one tenant's appends and reads route to one worker, and KAHN's functions and roles
//! are on every node. The conformance suite, the RLS guarantees and the composition test also
//! run on the cluster (`scripts/test` runs them again with `KAHN_TEST_PG_TARGET=citus`).
//!
//! Needs the cluster (`scripts/ensure-citus.sh`, which `scripts/test` runs); without it every
//! test here fails, naming the script.

use kahn_core::{
    AppendBatch, NewTenant, RunId, RunQuery, StateClass, StorageBackend, StorageBackendExt,
};
use kahn_pg::{PgBackend, PgPool, PgPoolOptions};
use kahn_testkit::{Target, TestDb};
use serde_json::json;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;
use sqlx_core::row::Row;

/// The distributed tables, co-located, and the reference tables, as `kahn migrate` leaves them.
const DISTRIBUTED: [&str; 8] = kahn_pg::citus::DISTRIBUTED;
const REFERENCE: [&str; 2] = kahn_pg::citus::REFERENCE;

/// `(table, method, replication model, colocation id, distribution column)` of KAHN's tables.
async fn placements(pool: &PgPool) -> Vec<(String, String, String, i32, Option<String>)> {
    query(
        "SELECT logicalrelid::text AS t, partmethod::text AS m, repmodel::text AS r, \
                colocationid AS c, column_to_column_name(logicalrelid, partkey) AS k \
         FROM pg_dist_partition WHERE logicalrelid::text LIKE 'kahn.%' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("read pg_dist_partition")
    .iter()
    .map(|r| {
        (
            r.get::<String, _>("t"),
            r.get::<String, _>("m"),
            r.get::<String, _>("r"),
            r.get::<i32, _>("c"),
            r.get::<Option<String>, _>("k"),
        )
    })
    .collect()
}

/// `kahn migrate` on a Citus database makes `tenants` and `key_directory` reference tables and
/// the tenant tables hash-distributed by `tenant_id` in one co-location group; running it
/// again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_places_every_table_and_is_idempotent() {
    let (_db, admin) = TestDb::new_on(Target::Citus).await;
    let placed = placements(admin.pool()).await;
    let names: Vec<&str> = placed.iter().map(|p| p.0.as_str()).collect();
    let mut expected: Vec<&str> = DISTRIBUTED.iter().chain(REFERENCE.iter()).copied().collect();
    expected.sort_unstable();
    assert_eq!(names, expected, "every KAHN table is placed, and only those");
    let group = placed.iter().find(|p| p.0 == "kahn.runs").expect("runs").3;
    for (table, method, model, colocation, column) in &placed {
        if REFERENCE.contains(&table.as_str()) {
            assert_eq!(
                (method.as_str(), model.as_str()),
                ("n", "t"),
                "{table} is a reference table"
            );
        } else {
            assert_eq!(method, "h", "{table} is hash-distributed");
            assert_eq!(column.as_deref(), Some("tenant_id"), "{table} by tenant_id");
            assert_eq!(*colocation, group, "{table} is co-located with kahn.runs");
        }
    }
    admin.migrate().await.expect("migrate again");
    assert_eq!(placements(admin.pool()).await, placed, "a second migrate changes nothing");
}

fn batch(run: &str, seqs: std::ops::Range<u64>) -> AppendBatch {
    let mut lines = vec![
        json!({"kind": "run", "run_id": run, "source": "ci", "labels": {"repo": "https://example.com/r"}})
            .to_string(),
    ];
    for seq in seqs {
        let (node, to) = match seq % 3 {
            0 => ("build", "running"),
            1 => ("build", "succeeded"),
            _ => ("deploy", "failed"),
        };
        lines.push(
            json!({"run_id": run, "seq": seq, "ts": "2025-01-01T00:00:00Z", "node": node, "to": to})
                .to_string(),
        );
    }
    AppendBatch::from_ndjson(&lines.join("\n")).expect("valid batch")
}

/// Every statement the app role runs for one tenant — resolving its key, appending (new runs,
/// a re-push, a longer chunk), listing with each filter, reading a run and its transitions —
/// reaches exactly one shard: its connections are set to raise an error on any query that would
/// run as several tasks (`citus.multi_task_query_log_level = error`), and none is raised. The
/// same setting does refuse a query that spans shards, so it is live. And the tenant's rows, in
/// every distributed table, are in shards on one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_appends_and_reads_route_to_one_worker() {
    let (db, admin) = TestDb::new_on(Target::Citus).await;
    let tenant = admin
        .provision_tenant(
            &NewTenant::new(format!("route-{}", uuid::Uuid::new_v4().simple())).expect("name"),
        )
        .await
        .expect("provision");
    let key = admin.issue_api_key(tenant.id).await.expect("key");
    let single_task =
        db.options_as(kahn_pg::APP_ROLE).options([("citus.multi_task_query_log_level", "error")]);
    let pool =
        PgPoolOptions::new().max_connections(4).connect_with(single_task).await.expect("connect");
    let app = PgBackend::app_from_pool(pool.clone()).await.expect("the app role passes its check");

    let write = app.resolve_api_key(&key.secret).await.expect("resolve").expect("active key");
    let read = write.read();
    for run in ["route-a", "route-b"] {
        app.append(&write, &batch(run, 0..4)).await.expect("append new runs");
    }
    app.append(&write, &batch("route-a", 0..4)).await.expect("re-push: nothing new");
    app.append(&write, &batch("route-a", 2..9)).await.expect("overlap with a new tail");
    for q in [
        RunQuery::default(),
        RunQuery { source: Some("ci".into()), ..RunQuery::default() },
        RunQuery { status: Some("failed".into()), ..RunQuery::default() },
        RunQuery { run_id_prefix: Some("route-".into()), ..RunQuery::default() },
        RunQuery { node_class: Some(StateClass::Failed), ..RunQuery::default() },
        RunQuery { limit: 1, ..RunQuery::default() },
    ] {
        let page = app.list_runs(&read, &q).await.unwrap_or_else(|e| panic!("list {q:?}: {e}"));
        assert!(!page.runs.is_empty(), "{q:?}");
    }
    let run = RunId::new("route-a").expect("id");
    let summary = app.get_run(&read, &run).await.expect("get run");
    assert_eq!(summary.info.transition_count(), 9);
    let rows = app.read_all_transitions(&read, &run).await.expect("read transitions");
    assert_eq!(rows.len(), 9);
    app.verify_run(&read, &run).await.expect("the chain verifies");
    // The checkpoint log (migration 0010): its append (the size compare, the checkpoint, the
    // leaves joined to it) and its snapshot reads route to the tenant's shard too.
    let signer = kahn_core::receipt::ReceiptSigner::generate().expect("a signing key");
    let first = app.make_checkpoint(&read, &signer, chrono::Utc::now()).await.expect("checkpoint");
    assert_eq!(first.tree_size, 2, "one leaf per run");
    app.append(&write, &batch("route-b", 0..6)).await.expect("grow a run");
    let second = app.make_checkpoint(&read, &signer, chrono::Utc::now()).await.expect("checkpoint");
    assert_eq!(second.tree_size, 3, "one leaf more for the grown run");
    let log = app.read_checkpoint_log(&read).await.expect("read the log");
    assert_eq!(log.checkpoints, [first, second]);
    let inputs = app.checkpoint_inputs(&read).await.expect("checkpoint inputs");
    assert_eq!((inputs.log, inputs.heads.len()), (log, 2));

    // The setting is live: a query over every shard is refused on these connections.
    let err = query("SELECT count(*) FROM kahn.runs")
        .execute(&pool)
        .await
        .expect_err("a multi-shard query raises on these connections");
    assert!(err.to_string().contains("multi-task"), "{err}");

    // One worker holds all of it: every table's shard for the tenant sits on one node, and no
    // other shard of kahn.runs or kahn.transitions holds any of the tenant's rows.
    let tables: Vec<String> = DISTRIBUTED.iter().map(|t| (*t).to_owned()).collect();
    let nodes: Vec<i32> = query_scalar(
        "SELECT DISTINCT s.nodeport FROM pg_catalog.unnest($1::text[]) AS t(name) \
         JOIN citus_shards AS s \
           ON s.shardid = get_shard_id_for_distribution_column(t.name::regclass, $2::uuid)",
    )
    .bind(&tables)
    .bind(tenant.id.as_uuid())
    .fetch_all(admin.pool())
    .await
    .expect("shard placements");
    assert_eq!(nodes.len(), 1, "the tenant's shards are on one worker: {nodes:?}");
    for table in ["kahn.runs", "kahn.transitions"] {
        let own: i64 =
            query_scalar("SELECT get_shard_id_for_distribution_column($1::regclass, $2::uuid)")
                .bind(table)
                .bind(tenant.id.as_uuid())
                .fetch_one(admin.pool())
                .await
                .expect("the tenant's shard");
        let per_shard = query(
            "SELECT shardid, result FROM run_command_on_shards($1::regclass, \
                 pg_catalog.format('SELECT count(*) FROM %%s WHERE tenant_id = %L', $2::text))",
        )
        .bind(table)
        .bind(tenant.id.to_string())
        .fetch_all(admin.pool())
        .await
        .expect("count on every shard");
        let mut total = 0;
        for row in &per_shard {
            let shard: i64 = row.get("shardid");
            let count: i64 = row.get::<String, _>("result").parse().expect("a count");
            if shard != own {
                assert_eq!(count, 0, "{table}: shard {shard} holds none of the tenant's rows");
            }
            total += count;
        }
        assert!(total > 0, "{table}: the tenant's rows are in its shard");
    }
}

/// Citus runs a query's shard tasks as the current user, so KAHN's roles, and the functions the
/// shards' policies and triggers call, must be on every worker: the workers' `kahn` functions
/// (signature, SECURITY DEFINER, owner) and the roles' attributes are the coordinator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_and_roles_are_on_every_node() {
    let (_db, admin) = TestDb::new_on(Target::Citus).await;
    let functions = "SELECT string_agg(f, ', ' ORDER BY f) FROM ( \
                       SELECT p.oid::regprocedure::text || ' definer=' || p.prosecdef \
                              || ' owner=' || pg_catalog.pg_get_userbyid(p.proowner) AS f \
                       FROM pg_catalog.pg_proc AS p \
                       WHERE p.pronamespace = 'kahn'::regnamespace) AS s";
    let roles = "SELECT string_agg(f, ', ' ORDER BY f) FROM ( \
                   SELECT rolname || ' login=' || rolcanlogin || ' super=' || rolsuper \
                          || ' bypassrls=' || rolbypassrls AS f \
                   FROM pg_catalog.pg_roles \
                   WHERE rolname IN ('kahn_app', 'kahn_definer')) AS s";
    for sql in [functions, roles] {
        let here: String = query_scalar(sql).fetch_one(admin.pool()).await.expect("coordinator");
        assert!(here.contains("kahn"), "{here}");
        let workers = query("SELECT nodeport, success, result FROM run_command_on_workers($1)")
            .bind(sql)
            .fetch_all(admin.pool())
            .await
            .expect("ask every worker");
        assert!(workers.len() >= 2, "two workers at least");
        for w in &workers {
            let port: i32 = w.get("nodeport");
            assert!(w.get::<bool, _>("success"), "worker {port}: {}", w.get::<String, _>("result"));
            assert_eq!(w.get::<String, _>("result"), here, "worker {port}");
        }
    }
}
