//! An append plans the runs it does not find as empty runs and creates them with their final
//! summary. When another transaction creates one of them first (it commits while the append's
//! insert waits on its row), the plan was made on a wrong assumption: the append is rolled back
//! and made again, the run then stored and locked like any other. Here the other transaction is
//! held open by the test until the append waits on it, so the race happens every time. Against
//! the real PostgreSQL server as the app role (and, with `KAHN_TEST_PG_TARGET=citus`, on the
//! Citus cluster).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kahn_core::conformance::fixtures::{SourceLog, recent_base};
use kahn_core::{
    AppendBatch, ConflictAt, Digest, Error, NewTenant, RunId, StorageBackend, StorageBackendExt,
    WriteScope,
};
use kahn_pg::PgBackend;
use kahn_testkit::TestDb;
use serde_json::json;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;
use sqlx_postgres::{PgPoolOptions, PgTransaction};

fn batch(lines: &[serde_json::Value]) -> AppendBatch {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    AppendBatch::from_ndjson(&text).expect("valid batch")
}

fn transition(run: &str, seq: u64) -> serde_json::Value {
    json!({"run_id": run, "seq": seq, "ts": "2026-01-01T00:00:00Z", "to": "running"})
}

async fn setup() -> (TestDb, Arc<PgBackend>, WriteScope) {
    let (db, admin) = TestDb::new().await;
    let app = Arc::new(db.app().await);
    let t = admin.provision_tenant(&NewTenant::new("racer").expect("valid")).await.expect("t");
    let key = admin.issue_api_key(t.id).await.expect("key");
    let scope = app.resolve_api_key(&key.secret).await.expect("resolve").expect("active");
    (db, app, scope)
}

/// A transaction of another session, as the app role, in the scope's tenant.
async fn elsewhere(db: &TestDb, scope: &WriteScope) -> PgTransaction<'static> {
    let pool = db.pool_as(kahn_pg::APP_ROLE, 1).await;
    let mut tx = pool.begin().await.expect("begin");
    query("SELECT kahn.enter_tenant($1)")
        .bind(scope.tenant().as_uuid())
        .execute(&mut *tx)
        .await
        .expect("tenant");
    tx
}

/// Another session locks `run`'s row in a transaction it keeps open.
async fn hold_run(db: &TestDb, scope: &WriteScope, run: &RunId) -> PgTransaction<'static> {
    let mut tx = elsewhere(db, scope).await;
    query("SELECT FROM kahn.runs WHERE tenant_id = $1 AND run_id = $2 FOR UPDATE")
        .bind(scope.tenant().as_uuid())
        .bind(run.as_str())
        .execute(&mut *tx)
        .await
        .expect("hold the run");
    tx
}

/// Another session creates `runs` (`(run id, source)`) in a transaction it keeps open.
async fn create_elsewhere(
    db: &TestDb,
    scope: &WriteScope,
    runs: &[(&str, Option<&str>)],
) -> PgTransaction<'static> {
    let mut tx = elsewhere(db, scope).await;
    for (run, source) in runs {
        query(
            "INSERT INTO kahn.runs (tenant_id, run_id, source, head_hash, created_at) \
             VALUES ($1, $2, $3, $4, pg_catalog.now())",
        )
        .bind(scope.tenant().as_uuid())
        .bind(*run)
        .bind(*source)
        .bind(Digest::ZERO.as_bytes().as_slice())
        .execute(&mut *tx)
        .await
        .expect("create the run elsewhere");
    }
    tx
}

/// A one-connection pool as the admin, to watch the other sessions.
async fn watcher(db: &TestDb) -> sqlx_postgres::PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.admin_options())
        .await
        .expect("admin pool")
}

/// Waits until some session waits for another's lock (on Citus, on a worker: the coordinator's
/// `citus_lock_waits` shows it).
async fn until_someone_waits(db: &TestDb) {
    if !db.is_citus() {
        until_waiting(db, 1).await;
        return;
    }
    let admin = watcher(db).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = query_scalar("SELECT count(*) FROM citus_lock_waits")
            .fetch_one(&admin)
            .await
            .expect("lock waits");
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the append never waited for the other transaction");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The other transaction creates `raced` empty: the append, which planned it as new, appends
/// to it as stored, and creates the run nobody else touched; everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_created_meanwhile_is_appended_to_as_stored() {
    let (db, app, scope) = setup().await;
    let other = create_elsewhere(&db, &scope, &[("raced", None)]).await;

    let lines = [transition("raced", 0), transition("raced", 1), transition("fresh", 0)];
    let append = {
        let (app, scope, batch) = (app.clone(), scope.clone(), batch(&lines));
        tokio::spawn(async move { app.append(&scope, &batch).await })
    };
    until_someone_waits(&db).await;
    other.commit().await.expect("commit the other creation");

    let report = append.await.expect("task").expect("the append is made again, and succeeds");
    assert_eq!((report.appended(), report.skipped()), (3, 0));
    let read = scope.read();
    for (run, next) in [("raced", 2), ("fresh", 1)] {
        let summary = app.get_run(&read, &RunId::new(run).expect("id")).await.expect("run");
        assert_eq!(summary.info.next_seq, next, "{run}");
    }
    // Nothing twice: a re-push is all duplicates.
    let again = app.append(&scope, &batch(&lines)).await.expect("re-push");
    assert_eq!((again.appended(), again.skipped()), (0, 3));
}

/// The other transaction creates `raced` with a source: the append, whose batch names another
/// source for it, is decided again on the stored run and refused with the metadata conflict;
/// the run it would have created beside it is not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_created_meanwhile_is_decided_on_its_stored_metadata() {
    let (db, app, scope) = setup().await;
    let other = create_elsewhere(&db, &scope, &[("raced", Some("theirs"))]).await;

    let lines = [
        json!({"kind": "run", "run_id": "raced", "source": "mine"}),
        transition("raced", 0),
        transition("fresh", 0),
    ];
    let append = {
        let (app, scope, batch) = (app.clone(), scope.clone(), batch(&lines));
        tokio::spawn(async move { app.append(&scope, &batch).await })
    };
    until_someone_waits(&db).await;
    other.commit().await.expect("commit the other creation");

    let refused = append.await.expect("task").expect_err("the stored source differs");
    assert!(
        matches!(&refused, Error::Conflict { at: ConflictAt::Metadata(_), run_id, .. }
            if run_id.as_str() == "raced"),
        "{refused:?}"
    );
    let read = scope.read();
    assert!(matches!(
        app.get_run(&read, &RunId::new("fresh").expect("id")).await,
        Err(Error::NotFound { .. })
    ));
}

/// Two servers on one database append one run's chunks in turns. Each keeps the node
/// summaries of the runs it appended to last, under the head they lead to: when the other
/// server has moved the run on, the head differs and the summaries are read back from the
/// database. Here they must come out as one store appending every chunk leaves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_appending_one_run_in_turns_leave_its_node_summaries_right() {
    let (db, a, scope) = setup().await;
    let b = db.app().await;
    let reference = kahn_core::MemoryBackend::new();
    let t = reference.provision_tenant(&NewTenant::new("ref").expect("valid")).await.expect("t");
    let key = reference.issue_api_key(t.id).await.expect("key");
    let ref_scope = reference.resolve_api_key(&key.secret).await.expect("resolve").expect("key");
    let log = SourceLog::new("turns", 60, "a", recent_base());
    // Chunks of 3 over 7 nodes: a chunk touches some nodes only, so a server that kept only
    // the touched ones would count the others as new. Servers a, a, b, a, b, b, …: each finds
    // the run moved on by the other some of the time.
    for (i, start) in (0..60).step_by(3).enumerate() {
        let (end, server) = (start + 3, if [0, 1, 3].contains(&(i % 6)) { &a } else { &b });
        let chunk = log.chunk_ahead(
            start,
            end,
            if start == 0 { Digest::ZERO } else { log.link(start - 1) },
        );
        server.append(&scope, &chunk).await.expect("a chunk");
        reference.append(&ref_scope, &chunk).await.expect("reference");
        for store in [&a, &b] {
            let run = store.get_run(&scope.read(), &log.run_id).await.expect("the run");
            let want = reference.get_run(&ref_scope.read(), &log.run_id).await.expect("ref run");
            assert_eq!(run.nodes, want.nodes, "node summaries after {start}..{end}");
            assert_eq!(run.info.status, want.info.status, "status after {start}..{end}");
        }
    }
}

/// A chunk whose links were computed ahead sends its rows before it waits for the run: while
/// another transaction holds the run, the statement waiting is the one carrying the rows
/// (plain Postgres; Citus takes the usual path). Two such chunks alike, waiting together,
/// store it once: the first writes its rows, the second finds the tip moved and skips them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_waits_for_its_run_with_its_rows_sent_and_two_alike_store_it_once() {
    let (db, app, scope) = setup().await;
    let log = SourceLog::new("pipelined", 20, "a", recent_base());
    app.append(&scope, &log.chunk(0, 10)).await.expect("first 10");

    let holder = hold_run(&db, &scope, &log.run_id).await;
    let appends: Vec<_> = (0..2)
        .map(|_| {
            let (app, scope, chunk) =
                (app.clone(), scope.clone(), log.chunk_ahead(10, 20, log.link(9)));
            tokio::spawn(async move { app.append(&scope, &chunk).await })
        })
        .collect();
    if db.is_citus() {
        until_someone_waits(&db).await;
    } else {
        let waiting = until_waiting(&db, 2).await;
        assert!(
            waiting.iter().all(|q| q.trim_start().starts_with("WITH tip")),
            "the waiting statements carry the rows: {waiting:?}"
        );
    }
    holder.commit().await.expect("let the run go");

    let mut reports = Vec::new();
    for append in appends {
        let r = append.await.expect("task").expect("both appends succeed");
        reports.push((r.appended(), r.skipped(), r.runs[0].head_hash));
    }
    reports.sort();
    assert_eq!(reports, [(0, 10, log.link(19)), (10, 0, log.link(19))]);
    let stored = app.get_run(&scope.read(), &log.run_id).await.expect("the run");
    assert_eq!((stored.info.next_seq, stored.info.head_hash), (20, log.link(19)));
    let rows = app.read_all_transitions(&scope.read(), &log.run_id).await.expect("rows");
    assert_eq!(kahn_core::verify_chain(&rows).expect("the chain verifies"), log.link(19));
}

/// The statements of the sessions of this database waiting for a lock, once `n` of them wait
/// (plain Postgres).
async fn until_waiting(db: &TestDb, n: usize) -> Vec<String> {
    let admin = watcher(db).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: Vec<String> = query_scalar(
            "SELECT query FROM pg_catalog.pg_stat_activity \
             WHERE datname = pg_catalog.current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_all(&admin)
        .await
        .expect("lock waits");
        if waiting.len() >= n {
            return waiting;
        }
        assert!(Instant::now() < deadline, "{n} sessions never waited for a lock: {waiting:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes the run's stored node counts behind the servers' backs (as the owner), its head
/// unchanged.
async fn tamper_with_counts(db: &TestDb, scope: &WriteScope, run: &RunId) {
    let admin = watcher(db).await;
    let done = query(
        "UPDATE kahn.runs SET nodes_other = nodes_other + 99 WHERE tenant_id = $1 AND run_id = $2",
    )
    .bind(scope.tenant().as_uuid())
    .bind(run.as_str())
    .execute(&admin)
    .await
    .expect("tamper");
    assert_eq!(done.rows_affected(), 1);
}

/// When the process's last append of a run left it at the head the next chunk's links were
/// computed from, that append knew the run's progress there: the next one writes its rows, its
/// node summaries and the run's summary in one statement, from that progress, without reading
/// the stored one back (plain Postgres; Citus takes the usual path). Seen here through a
/// stored count changed behind the servers' backs: the server that made the head overwrites it
/// with what its rows make of the progress it knew; another server, which did not know it,
/// reads the stored progress (all of it: the run has few nodes) and carries the change on, and
/// appends its own next chunk from what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_that_made_a_head_appends_from_the_progress_it_knew() {
    let (db, a, scope) = setup().await;
    let b = db.app().await;
    let log = SourceLog::new("known", 40, "a", recent_base());
    a.append(&scope, &log.chunk(0, 10)).await.expect("first 10");
    let read = scope.read();
    let whole = !db.is_citus();
    // The reference's counts after `end`, plus `changes` of the stored ones carried on.
    let want = |end: u64, changes: u64| {
        let log = &log;
        async move {
            let mut counts = log.reference(&[(0, end)]).await.info.node_counts;
            counts.other += 99 * changes;
            counts
        }
    };

    tamper_with_counts(&db, &scope, &log.run_id).await;
    a.append(&scope, &log.chunk_ahead(10, 20, log.link(9))).await.expect("10..20 on a");
    let stored = a.get_run(&read, &log.run_id).await.expect("the run");
    assert_eq!(stored.info.next_seq, 20);
    assert_eq!(stored.nodes, log.reference(&[(0, 20)]).await.nodes, "node summaries");
    let mut changes = u64::from(!whole);
    assert_eq!(stored.info.node_counts, want(20, changes).await, "a overwrites the change");

    tamper_with_counts(&db, &scope, &log.run_id).await;
    changes += 1;
    b.append(&scope, &log.chunk_ahead(20, 30, log.link(19))).await.expect("20..30 on b");
    let stored = b.get_run(&read, &log.run_id).await.expect("the run");
    assert_eq!(stored.info.node_counts, want(30, changes).await, "b reads them, carries them on");

    tamper_with_counts(&db, &scope, &log.run_id).await;
    changes += u64::from(!whole);
    b.append(&scope, &log.chunk_ahead(30, 40, log.link(29))).await.expect("30..40 on b");
    let stored = b.get_run(&read, &log.run_id).await.expect("the run");
    assert_eq!(stored.info.node_counts, want(40, changes).await, "b appends from what it read");
    assert_eq!(stored.nodes, log.reference(&[(0, 40)]).await.nodes, "node summaries");
}

/// A whole append written ahead waits for the run behind a transaction that changed the run's
/// row: its statement's snapshot holds the row as it was, and its update of the run's summary
/// must apply to the row as that transaction left it, not be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_append_behind_a_change_of_its_run_updates_the_run_as_changed() {
    let (db, app, scope) = setup().await;
    let log = SourceLog::new("behind", 20, "a", recent_base());
    app.append(&scope, &log.chunk(0, 10)).await.expect("first 10");

    // Its counts changed too: only the whole append, which writes them from the progress it
    // knew, leaves them right.
    let mut holder = elsewhere(&db, &scope).await;
    query(
        "UPDATE kahn.runs SET labels = '{\"team\":\"infra\"}', nodes_other = nodes_other + 99 \
         WHERE tenant_id = $1 AND run_id = $2",
    )
    .bind(scope.tenant().as_uuid())
    .bind(log.run_id.as_str())
    .execute(&mut *holder)
    .await
    .expect("change the run's row and hold it");
    let append = {
        let (app, scope, chunk) =
            (app.clone(), scope.clone(), log.chunk_ahead(10, 20, log.link(9)));
        tokio::spawn(async move { app.append(&scope, &chunk).await })
    };
    until_someone_waits(&db).await;
    holder.commit().await.expect("let the run go");
    let report = append.await.expect("task").expect("the append");
    assert_eq!((report.appended(), report.skipped()), (10, 0));

    let stored = app.get_run(&scope.read(), &log.run_id).await.expect("the run");
    let want = log.reference(&[(0, 10), (10, 20)]).await;
    assert_eq!((stored.info.next_seq, stored.info.head_hash), (20, log.link(19)));
    let mut counts = want.info.node_counts;
    counts.other += if db.is_citus() { 99 } else { 0 };
    assert_eq!(stored.info.node_counts, counts, "written from the progress known (plain Postgres)");
    assert_eq!(stored.info.status, want.info.status);
    assert_eq!(stored.nodes, want.nodes);
    assert_eq!(
        stored.info.labels.get("team").map(String::as_str),
        Some("infra"),
        "the change kept"
    );
}

/// A pipelined pusher's two chunks in flight at once, both behind a transaction holding the
/// run: the second is sent while the first waits, from the progress the first worked out,
/// and touches a node the first adds. Its statement's snapshot predates the first's commit,
/// so that node's summary is not visible to it; it must still be updated, not lost or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_chunks_in_flight_leave_the_run_as_one_after_the_other() {
    let (db, app, scope) = setup().await;
    // Nodes go round seq % 7: 4..8 adds nodes 4, 5 and 6, and 8..12 touches node 4 again.
    let log = SourceLog::new("inflight", 12, "a", recent_base());
    app.append(&scope, &log.chunk(0, 4)).await.expect("first 4");

    let holder = hold_run(&db, &scope, &log.run_id).await;
    let mut appends = Vec::new();
    for (n, (start, end)) in [(4, 8), (8, 12)].into_iter().enumerate() {
        let (app, scope) = (app.clone(), scope.clone());
        let chunk = log.chunk_ahead(start, end, log.link(start - 1));
        appends.push(tokio::spawn(async move { app.append(&scope, &chunk).await }));
        if db.is_citus() {
            until_someone_waits(&db).await;
        } else {
            until_waiting(&db, n + 1).await;
        }
    }
    holder.commit().await.expect("let the run go");
    for append in appends {
        let report = append.await.expect("task").expect("both appends succeed");
        assert_eq!((report.appended(), report.skipped()), (4, 0));
    }

    let stored = app.get_run(&scope.read(), &log.run_id).await.expect("the run");
    let want = log.reference(&[(0, 12)]).await;
    assert_eq!((stored.info.next_seq, stored.info.head_hash), (12, log.link(11)));
    assert_eq!(stored.nodes, want.nodes, "node summaries");
    assert_eq!(stored.info.node_counts, want.info.node_counts);
    assert_eq!(stored.info.status, want.info.status);
}
