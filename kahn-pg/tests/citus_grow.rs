//! Growing the Citus cluster with data in place (kahn-pg/README.md, "Growing the cluster"): a
//! third worker is added to a KAHN database and the shards are rebalanced onto it
//! (`citus_rebalance_start`) while pushers append. Afterwards every run's stored log is exactly
//! what was pushed (a re-push of each whole source adds nothing and conflicts nowhere, and the
//! chain verifies), and the new worker holds shards.
//!
//! It needs a third Citus node running, which changes the machine, so it is run by
//! `scripts/citus-grow.sh` (which brings up 127.0.0.1:5443 and passes it in
//! `KAHN_TEST_CITUS_NEW_WORKER`), not by `scripts/test`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kahn_core::{AppendBatch, NewTenant, RunId, StorageBackend, StorageBackendExt, WriteScope};
use kahn_testkit::{Target, TestDb};
use serde_json::json;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;

const TENANTS: usize = 16;
const RUNS_PER_TENANT: usize = 3;
const PUSHERS: usize = 8;
const CHUNK: u64 = 10;

fn chunk(run: &str, from: u64, to: u64) -> AppendBatch {
    let lines: Vec<String> = (from..to)
        .map(|seq| {
            json!({"run_id": run, "seq": seq, "ts": "2025-01-01T00:00:00Z",
                   "node": format!("n{}", seq % 4), "to": if seq % 2 == 0 { "running" } else { "succeeded" }})
            .to_string()
        })
        .collect();
    AppendBatch::from_ndjson(&lines.join("\n")).expect("valid batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "adds a third worker to the machine's Citus cluster: run by scripts/citus-grow.sh"]
async fn a_worker_added_and_rebalanced_while_pushers_run_loses_nothing() {
    let new_worker = std::env::var("KAHN_TEST_CITUS_NEW_WORKER").expect(
        "KAHN_TEST_CITUS_NEW_WORKER=host:port of a running Citus node (scripts/citus-grow.sh)",
    );
    let (host, port) = new_worker.rsplit_once(':').expect("host:port");
    let port: u16 = port.parse().expect("a port");

    let (mut db, admin) = TestDb::new_on(Target::Citus).await;
    let app = Arc::new(db.app().await);
    let mut scopes: Vec<WriteScope> = Vec::new();
    for i in 0..TENANTS {
        let t = admin
            .provision_tenant(
                &NewTenant::new(format!("grow-{i}-{}", uuid::Uuid::new_v4().simple()))
                    .expect("name"),
            )
            .await
            .expect("provision");
        let key = admin.issue_api_key(t.id).await.expect("key");
        scopes.push(app.resolve_api_key(&key.secret).await.expect("resolve").expect("active"));
    }
    let scopes = Arc::new(scopes);

    // Pushers: pusher p owns tenants p, p + PUSHERS, …; round after round it appends the next
    // CHUNK transitions of each of its runs, retrying an append that fails (as kahn push does)
    // until it is stored. They stop at `stop`; each returns how far every run of its got.
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let appended = Arc::new(AtomicU64::new(0));
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let (app, scopes, stop, retries, appended) =
            (app.clone(), scopes.clone(), stop.clone(), retries.clone(), appended.clone());
        pushers.push(tokio::spawn(async move {
            let mine: Vec<usize> = (p..TENANTS).step_by(PUSHERS).collect();
            let mut next = vec![0u64; mine.len() * RUNS_PER_TENANT];
            while !stop.load(Ordering::Relaxed) {
                for (k, &t) in mine.iter().enumerate() {
                    for r in 0..RUNS_PER_TENANT {
                        let at = k * RUNS_PER_TENANT + r;
                        let run = format!("run-{r}");
                        let batch = chunk(&run, next[at], next[at] + CHUNK);
                        let mut tries = 0;
                        loop {
                            match app.append(&scopes[t], &batch).await {
                                Ok(report) => {
                                    appended.fetch_add(report.appended(), Ordering::Relaxed);
                                    break;
                                }
                                Err(e) => {
                                    tries += 1;
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    assert!(tries < 100, "append kept failing: {e}");
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                            }
                        }
                        next[at] += CHUNK;
                    }
                }
            }
            (mine, next)
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let citus = db.citus_mut().expect("a Citus database");
    citus.add_worker(host, port).await;
    let started = Instant::now();
    // block_writes: Citus's default online move applies the shard by logical replication as a
    // subscription role of its own, and Postgres refuses to replicate into a table whose
    // row-level security that role is subject to (KAHN forces RLS on every tenant table), so
    // the move would retry for ever. Copying instead makes appends to a moving shard wait.
    query("SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')")
        .execute(admin.pool())
        .await
        .expect("start the rebalance");
    let wait = query("SELECT citus_rebalance_wait()").execute(admin.pool());
    if tokio::time::timeout(Duration::from_secs(600), wait).await.is_err() {
        let tasks: Vec<(String, Option<String>)> = sqlx_core::query_as::query_as(
            "SELECT status::text, message FROM pg_dist_background_task WHERE status <> 'done'",
        )
        .fetch_all(admin.pool())
        .await
        .unwrap_or_default();
        panic!("the rebalance did not end in 10 minutes; its unfinished tasks: {tasks:?}");
    }
    let rebalance = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut runs_checked = 0;
    let mut transitions = 0;
    for pusher in pushers {
        let (mine, next) = pusher.await.expect("a pusher panicked");
        for (k, &t) in mine.iter().enumerate() {
            for r in 0..RUNS_PER_TENANT {
                let n = next[k * RUNS_PER_TENANT + r];
                let run = format!("run-{r}");
                let again = app
                    .append(&scopes[t], &chunk(&run, 0, n))
                    .await
                    .expect("re-push the whole run");
                assert_eq!(
                    again.appended(),
                    0,
                    "tenant {t} {run}: every pushed transition was stored"
                );
                let id = RunId::new(&run).expect("id");
                let read = scopes[t].read();
                let summary = app.get_run(&read, &id).await.expect("get run");
                assert_eq!(
                    summary.info.transition_count(),
                    n,
                    "tenant {t} {run}: exactly the pushed log"
                );
                app.verify_run(&read, &id).await.expect("the chain verifies");
                runs_checked += 1;
                transitions += n;
            }
        }
    }
    let on_new: i64 = query_scalar("SELECT count(*) FROM citus_shards WHERE nodeport = $1")
        .bind(i32::from(port))
        .fetch_one(admin.pool())
        .await
        .expect("shards on the new worker");
    assert!(on_new > 0, "the rebalance moved shards onto the new worker");
    println!(
        "citus-grow: worker {new_worker} added; rebalance moved {on_new} shards onto it in {:.1} s \
         while {PUSHERS} pushers appended ({} transitions stored during the run, {} appends \
         retried); {runs_checked} runs of {TENANTS} tenants checked, {transitions} transitions, \
         every one exactly as pushed",
        rebalance.as_secs_f64(),
        appended.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
    );
}
