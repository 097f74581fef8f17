//! What is specific to the SQLite adapter: durability across reopen, WAL, schema versions,
//! reads beside a held write lock, tamper evidence on the file, URL and file errors.

use std::sync::Arc;
use std::time::Duration;

use kahn_core::conformance::fixtures::recent_base;
use kahn_core::conformance::{Harness, SourceLog};
use kahn_core::{Error, RunQuery, StorageBackend, StorageBackendExt};
use kahn_sqlite::{SqliteBackend, SqliteOptions};

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("kahn.db").display())
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_appends_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = SourceLog::new("durable", 50, "a", recent_base());
    let (key, head) = {
        let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
        let t = h.fresh_tenant().await;
        let r = h.store.append(&t.write, &log.all()).await.unwrap();
        (t.key.secret, r.runs[0].head_hash)
    };
    let store = SqliteBackend::connect(&url(&dir)).await.unwrap();
    let scope = store.resolve_api_key(&key).await.unwrap().expect("the key survives reopen");
    assert_eq!(store.verify_run(&scope.read(), &log.run_id).await.unwrap(), head);
    let again = store.append(&scope, &log.all()).await.unwrap();
    assert_eq!((again.appended(), again.skipped()), (0, 50));
}

#[tokio::test]
async fn the_file_is_in_wal_mode_at_the_current_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteBackend::connect(&url(&dir)).await.unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let mode: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    let version: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!((mode.as_str(), version), ("wal", SqliteBackend::schema_version()));
    drop(store);
    // Reopening applies nothing twice.
    SqliteBackend::connect(&url(&dir)).await.unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteBackend::connect(&url(&dir)).await.unwrap());
    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    raw.pragma_update(None, "user_version", 99).unwrap();
    drop(raw);
    let err = SqliteBackend::connect(&url(&dir)).await.unwrap_err();
    assert!(err.chain().to_string().contains("newer than this build"), "{err:?}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kahn.db"), vec![0x5a; 8192]).unwrap();
    let err = SqliteBackend::connect(&url(&dir)).await.unwrap_err();
    assert!(matches!(err, Error::Backend { backend: "sqlite", .. }), "{err:?}");
    // The message names this layer; the hint and SQLite's own error are causes, each once.
    assert_eq!(err.to_string(), "sqlite backend error");
    let causes: Vec<String> = err.chain().causes().collect();
    assert!(causes[0].contains("not a KAHN SQLite database"), "{causes:?}");
    assert_eq!(causes.iter().filter(|c| c.contains("not a KAHN SQLite database")).count(), 1);
}

#[tokio::test]
async fn urls_name_what_is_wrong() {
    for bad in ["postgres://localhost/kahn", "sqlite://", "sqlite:"] {
        let err = SqliteOptions::from_url(bad).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field, .. } if field == "database_url"),
            "{bad}: {err}"
        );
    }
    for good in
        ["sqlite://kahn.db", "sqlite:kahn.db", "kahn.db", "sqlite:///tmp/k.db", "sqlite::memory:"]
    {
        SqliteOptions::from_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

/// WAL lets readers proceed while a writer holds the write lock: another process holds an
/// open write transaction, and every read still answers at once.
#[tokio::test(flavor = "multi_thread")]
async fn reads_proceed_while_another_writer_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("busy", 20, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.unwrap();

    let mut foreign = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let tx = foreign.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    tx.execute("UPDATE tenants SET retention_days = retention_days", []).unwrap();
    for _ in 0..20 {
        let read = tokio::time::timeout(Duration::from_secs(2), async {
            h.store.get_run(&t.read, &log.run_id).await.unwrap();
            h.store.list_runs(&t.read, &RunQuery::default()).await.unwrap();
            h.store.read_all_transitions(&t.read, &log.run_id).await.unwrap()
        })
        .await
        .expect("reads are not blocked by a held write lock");
        assert_eq!(read.len(), 20);
    }
    tx.rollback().unwrap();
}

/// Reads running beside a stream of appends always see a committed, consistent run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_see_only_committed_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    let log = Arc::new(SourceLog::new("stream", 400, "a", recent_base()));
    h.store.append(&t.write, &log.chunk(0, 1)).await.unwrap();
    let writer = {
        let (store, write, log) = (h.store.clone(), t.write.clone(), log.clone());
        tokio::spawn(async move {
            for start in (1..400).step_by(9) {
                store.append(&write, &log.chunk(start, (start + 9).min(400))).await.unwrap();
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (store, read, log) = (h.store.clone(), t.read.clone(), log.clone());
        readers.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..40 {
                let summary = store.get_run(&read, &log.run_id).await.unwrap();
                assert!(summary.info.next_seq >= last, "next_seq never goes back");
                last = summary.info.next_seq;
                let page = store.read_transitions(&read, &log.run_id, None, 1000).await.unwrap();
                assert!(page.len() as u64 >= last, "rows of a committed append are all visible");
                kahn_core::verify_chain(&page).expect("every prefix read is a valid chain");
            }
        }));
    }
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(h.store.get_run(&t.read, &log.run_id).await.unwrap().info.next_seq, 400);
}

/// Tamper evidence: a body edited in the file behind KAHN's back breaks the chain, and
/// verification names the seq.
#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_the_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("tamper", 10, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.unwrap();
    h.store.verify_run(&t.read, &log.run_id).await.unwrap();

    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let changed = raw
        .execute(
            "UPDATE transitions SET body = replace(body, 'runner-04', 'runner-99') WHERE run_id = ?1 AND seq = 6",
            ["tamper"],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let err = h.store.verify_run(&t.read, &log.run_id).await.unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { run_id: Some(r), seq: Some(6), .. } if *r == log.run_id),
        "{err:?}"
    );
}

/// Stored values that do not decode — a body that is not JSON, a graph that is not JSON, a
/// negative next_seq — are the one corrupt variant (`Error::Integrity`), as on every backend:
/// not `Backend`, and never `InvalidInput`, which would blame the caller (a 400 over HTTP).
#[tokio::test(flavor = "multi_thread")]
async fn stored_values_that_do_not_decode_are_corrupt() {
    use kahn_core::conformance::fixtures::{batch, meta_line};

    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("rotten", 10, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.unwrap();
    let graph = batch(&[meta_line("rotten", serde_json::json!({"graph": {"nodes": ["a"]}}))]);
    h.store.append(&t.write, &graph).await.unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let corrupt =
        |err: &Error| matches!(err, Error::Integrity { run_id: Some(r), .. } if *r == log.run_id);

    raw.execute(
        "UPDATE transitions SET body = '{not json' WHERE run_id = 'rotten' AND seq = 4",
        [],
    )
    .unwrap();
    let err = h.store.read_transitions(&t.read, &log.run_id, None, 100).await.unwrap_err();
    assert!(corrupt(&err) && matches!(err, Error::Integrity { seq: Some(4), .. }), "{err:?}");
    let err = h.store.verify_run(&t.read, &log.run_id).await.unwrap_err();
    assert!(corrupt(&err), "{err:?}");

    raw.execute("UPDATE runs SET graph = '{not json' WHERE run_id = 'rotten'", []).unwrap();
    let err = h.store.get_run(&t.read, &log.run_id).await.unwrap_err();
    assert!(corrupt(&err), "{err:?}");
    let other = batch(&[meta_line("rotten", serde_json::json!({"source": "choco"}))]);
    let err = h.store.append(&t.write, &other).await.unwrap_err();
    assert!(corrupt(&err), "an append merging into a corrupt graph: {err:?}");

    raw.execute("UPDATE runs SET next_seq = -1 WHERE run_id = 'rotten'", []).unwrap();
    let err = h.store.list_runs(&t.read, &RunQuery::default()).await.unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }), "{err:?}");
}

/// The writer's queue is bounded: with the writer stuck (another process holds the write
/// lock) and the queue full, one more append fails at once with `Unavailable` and a retry
/// hint, instead of waiting in an ever-growing queue; the queued ones finish once the lock
/// goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_writer_queue_answers_unavailable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions::file(dir.path().join("kahn.db")).queue_capacity(2);
    let h = Harness::new(Arc::new(SqliteBackend::open(opts).await.unwrap()));
    let t = h.fresh_tenant().await;
    // Resolving the fresh key queued the record of its first use (off the request path): let
    // it finish before the lock is taken, so only the appends below wait on the writer.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut foreign = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let tx = foreign.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    // The writer takes this one and waits on the lock (its busy timeout is 10 s).
    let stuck = {
        let (store, write) = (h.store.clone(), t.write.clone());
        let log = SourceLog::new("stuck", 1, "a", recent_base());
        tokio::spawn(async move { store.append(&write, &log.all()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs: Vec<SourceLog> =
        (0..3).map(|i| SourceLog::new(&format!("q{i}"), 1, "a", recent_base())).collect();
    let queued: Vec<_> = logs
        .iter()
        .map(|log| {
            let (store, write, batch) = (h.store.clone(), t.write.clone(), log.all());
            tokio::spawn(async move { store.append(&write, &batch).await })
        })
        .collect();
    // The third of three finds the queue (2) full while the writer is stuck.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(tx);
    let mut results = Vec::new();
    for task in queued {
        results.push(task.await.unwrap());
    }
    let refused: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "exactly one over the bound: {results:?}");
    assert!(
        matches!(refused[0], Error::Unavailable { retry_after: Some(_), .. }),
        "{:?}",
        refused[0]
    );
    assert!(refused[0].to_string().contains("queue is full"), "{}", refused[0]);
    stuck.await.unwrap().expect("the stuck append finishes once the lock goes");
}

/// The process umask, from /proc (Linux).
#[cfg(target_os = "linux")]
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("Umask:")).expect("an Umask line");
    Some(u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).expect("octal"))
}

/// Elsewhere the test runs all the same, without reporting the umask.
#[cfg(not(target_os = "linux"))]
fn umask() -> Option<u32> {
    None
}

/// Opens a fresh database, writes to it (so its -wal and -shm exist) and returns the modes of
/// the three files while it is open.
#[cfg(unix)]
async fn modes_of_a_fresh_database() -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteBackend::connect(&url(&dir)).await.expect("open");
    let h = Harness::new(Arc::new(store));
    let t = h.fresh_tenant().await;
    h.store
        .append(&t.write, &SourceLog::new("r", 3, "a", recent_base()).all())
        .await
        .expect("append");
    ["kahn.db", "kahn.db-wal", "kahn.db-shm"]
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(dir.path().join(f))
                .unwrap_or_else(|e| panic!("{f} exists while the database is open: {e}"));
            (f.to_owned(), meta.permissions().mode() & 0o777)
        })
        .collect()
}

/// Red team, round two: the database file (every tenant's data, API key hashes) and its -wal
/// and -shm were created 0644 under the usual umask 022, readable by every local user. They
/// are created 0600 — under this process's umask, and again in a child process whose umask is
/// 000 (the most permissive).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn database_files_are_created_private_to_their_owner_whatever_the_umask() {
    let modes = modes_of_a_fresh_database().await;
    let shown: Vec<String> = modes.iter().map(|(f, m)| format!("{f} {m:o}")).collect();
    let mask = umask().map_or("unknown".to_owned(), |m| format!("{m:03o}"));
    assert!(modes.iter().all(|(_, m)| *m == 0o600), "umask {mask}: {shown:?}");
    if std::env::var_os("KAHN_TEST_UMASK_CHILD").is_some() {
        if let Some(mask) = umask() {
            assert_eq!(mask, 0, "the child runs under umask 000");
        }
        return;
    }
    // The same test again, in a process started under umask 000.
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(exe)
        .args([
            "--exact",
            "database_files_are_created_private_to_their_owner_whatever_the_umask",
            "--test-threads=1",
        ])
        .env("KAHN_TEST_UMASK_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "under umask 000: {text}{err}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

/// The writer's commits no longer checkpoint (a thread of the adapter's own does): the log
/// must still be copied into the database file while the store stays open, and stay bounded.
#[tokio::test(flavor = "multi_thread")]
async fn the_log_is_checkpointed_into_the_file_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kahn.db");
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let t = h.fresh_tenant().await;
    let page = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    let size = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", path.display())).map(|m| m.len()).unwrap_or(0)
    };
    let before = size("");
    // Well past SQLite's 1,000-page checkpoint threshold, in appends of 1,000 transitions.
    let log = SourceLog::new("checkpointed", 40_000, "a", recent_base());
    let mut largest_log = 0;
    for start in (0..log.len()).step_by(1000) {
        h.store.append(&t.write, &log.chunk(start, start + 1000)).await.unwrap();
        largest_log = largest_log.max(size("-wal"));
    }
    // The background checkpoint may still be copying the last frames: wait for it, not long.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while size("") < before + 1000 * page && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        size("") >= before + 1000 * page,
        "the database file did not grow ({before} -> {} bytes): nothing was checkpointed",
        size("")
    );
    // The log never grew past the writer's inline bound plus one append's frames.
    assert!(largest_log < 9000 * (page + 24), "the log reached {largest_log} bytes");
    let n = h.store.verify_run(&t.read, &log.run_id).await;
    assert!(n.is_ok(), "{n:?}");
}

/// Dropping the backend waits for its connections to close, the last of them copying the WAL
/// into the file and removing it: a copy of the file alone, taken once the backend is gone,
/// is the whole store.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_backend_leaves_the_whole_store_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kahn.db");
    let log = SourceLog::new("whole", 2_000, "a", recent_base());
    let (key, head) = {
        let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
        let t = h.fresh_tenant().await;
        let r = h.store.append(&t.write, &log.all()).await.unwrap();
        let wal = format!("{}-wal", path.display());
        assert!(std::path::Path::new(&wal).exists(), "appends go through the WAL");
        (t.key.secret, r.runs[0].head_hash)
    };
    for suffix in ["-wal", "-shm"] {
        let left = format!("{}{suffix}", path.display());
        assert!(!std::path::Path::new(&left).exists(), "{left} is left after the drop");
    }
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&path, copy.path().join("kahn.db")).unwrap();
    let store = SqliteBackend::connect(&url(&copy)).await.unwrap();
    let scope = store.resolve_api_key(&key).await.unwrap().expect("the key is in the file");
    assert_eq!(store.verify_run(&scope.read(), &log.run_id).await.unwrap(), head);
    let run = store.get_run(&scope.read(), &log.run_id).await.unwrap();
    assert_eq!(run.info.next_seq, 2_000, "every transition is in the file");
}

/// A backend keeps the progress of the run it appended to last under the head it made, so its
/// next chunk of that run reads none of the run's node summaries back; a backend that did not
/// make the head (another process on the same file) reads them all, and from then on appends
/// from what it read. Seen through node summaries changed in the file behind both backends'
/// backs (every node's `attempts` raised by 99): the backend that knew the progress overwrites
/// the change in every node its rows touch; the other carries it on.
#[tokio::test(flavor = "multi_thread")]
async fn the_backend_that_made_a_head_appends_from_the_progress_it_knew() {
    let dir = tempfile::tempdir().unwrap();
    let a = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    let b = SqliteBackend::connect(&url(&dir)).await.unwrap();
    let t = a.fresh_tenant().await;
    let log = SourceLog::new("known", 50, "a", recent_base());
    let raw = rusqlite::Connection::open(dir.path().join("kahn.db")).unwrap();
    let tamper = || {
        let changed = raw
            .execute("UPDATE run_nodes SET attempts = attempts + 99 WHERE run_id = ?1", ["known"])
            .unwrap();
        assert_eq!(changed, 7, "the fixture's run has seven nodes");
    };
    // The reference's node summaries after `end`, with `carried` changes of 99 kept on.
    let want = |end: u64, carried: u64| {
        let log = &log;
        async move {
            let mut nodes = log.reference(&[(0, end)]).await.nodes;
            nodes.iter_mut().for_each(|n| n.attempts += 99 * carried);
            nodes
        }
    };
    let nodes = |store: Arc<dyn StorageBackend>| {
        let (read, run) = (t.read.clone(), log.run_id.clone());
        async move { store.get_run(&read, &run).await.unwrap().nodes }
    };
    // Every chunk of ten touches all seven nodes.
    a.store.append(&t.write, &log.chunk(0, 10)).await.unwrap();
    tamper();
    a.store.append(&t.write, &log.chunk(10, 20)).await.unwrap();
    assert_eq!(nodes(a.store.clone()).await, want(20, 0).await, "a overwrites the change");

    let b: Arc<dyn StorageBackend> = Arc::new(b);
    tamper();
    b.append(&t.write, &log.chunk(20, 30)).await.unwrap();
    assert_eq!(nodes(b.clone()).await, want(30, 1).await, "b reads the change, carries it on");
    tamper();
    b.append(&t.write, &log.chunk(30, 40)).await.unwrap();
    assert_eq!(nodes(b.clone()).await, want(40, 1).await, "b appends from what it read");

    // a's progress is of a head the run has moved on from: it reads the stored one.
    a.store.append(&t.write, &log.chunk(40, 50)).await.unwrap();
    assert_eq!(nodes(a.store.clone()).await, want(50, 1).await, "a reads what b left");
    assert_eq!(
        b.get_run(&t.read, &log.run_id).await.unwrap().info.node_counts,
        log.reference(&[(0, 50)]).await.info.node_counts
    );
}

/// `appends_in_poll_order`, which the HTTP server relies on to send a pusher's next chunk
/// before the previous one is answered: an append polled once is in the writer's queue, so an
/// append of the next chunk polled after it is applied after it (not refused as a gap), even
/// when the first future is not polled again until the second is answered.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_polled_once_is_applied_before_one_polled_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(Arc::new(SqliteBackend::connect(&url(&dir)).await.unwrap()));
    assert!(h.store.appends_in_poll_order());
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("in-order", 2000, "a", recent_base());
    for round in 0..5u64 {
        let (start, mid, end) = (round * 400, round * 400 + 200, round * 400 + 400);
        let (first, second) = (log.chunk(start, mid), log.chunk(mid, end));
        let mut earlier = std::pin::pin!(h.store.append(&t.write, &first));
        // Polled once; the writer may be done with it by then, and a finished future is not
        // polled again.
        let first_poll =
            std::future::poll_fn(|cx| std::task::Poll::Ready(earlier.as_mut().poll(cx))).await;
        let later = h.store.append(&t.write, &second).await.expect("applied after the first");
        assert_eq!((later.appended(), later.runs[0].next_seq), (200, end));
        let earlier = match first_poll {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => earlier.await,
        }
        .expect("the first");
        assert_eq!(earlier.appended(), 200);
    }
    let (stored, want) =
        (h.store.get_run(&t.read, &log.run_id).await.unwrap(), log.reference(&[(0, 2000)]).await);
    assert_eq!((stored.info.next_seq, stored.info.head_hash), (2000, want.info.head_hash));
    assert_eq!(stored.nodes, want.nodes);
}
