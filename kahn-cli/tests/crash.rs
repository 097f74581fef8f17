//! Crash safety with real processes: a real `kahn serve` (over SQLite, and over Postgres as
//! the app role) is killed with SIGKILL in the middle of sustained ingest, at several points;
//! it is restarted on the same database and the pusher re-pushes. Every transition the
//! pusher had an acknowledgement for before the kill is stored; nothing is duplicated or torn
//! (each request appends to two runs in one transaction: they are always equally long); the
//! chain verifies; after the re-push every run equals its source.
//!
//! The pusher killed mid-run is covered in `cli.rs`
//! (`a_pusher_killed_mid_run_is_resumed_by_a_rerun_and_the_log_equals_the_source`).
//! Postgres restarted under load is `postgres_restarted_under_load_…` below, `#[ignore]`d:
//! it restarts the machine's shared cluster.
#![allow(clippy::unwrap_used)] // test scaffolding: a failed setup step should panic right there

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kahn_core::conformance::SourceLog;
use kahn_core::conformance::fixtures::{batch_of, recent_base};
use kahn_core::{
    ApiKey, NewTenant, RunId, StorageBackend, StorageBackendExt, WriteScope, chain_link,
};
use kahn_http::HttpBackend;
use kahn_testkit::{KahnServer, TestDb};

const LEN: u64 = 4000;
const CHUNK: u64 = 40;

/// A `kahn serve` over `db` as the crash tests run it: no practical ingest limit.
fn serve(db: &str) -> KahnServer {
    KahnServer::builder(env!("CARGO_BIN_EXE_kahn"))
        .db(db)
        .args(["--ingest-rate", "1000000"])
        .start()
}

/// Two runs pushed together, chunk by chunk, one request (one transaction) per chunk pair.
struct Workload {
    a: SourceLog,
    b: SourceLog,
}

impl Workload {
    fn new(tag: &str) -> Self {
        let base = recent_base();
        Self {
            a: SourceLog::new("crash-a", LEN, &format!("{tag}-a"), base),
            b: SourceLog::new("crash-b", LEN, &format!("{tag}-b"), base),
        }
    }

    fn batch(&self, start: u64, end: u64) -> kahn_core::AppendBatch {
        let (s, e) = (start as usize, end as usize);
        batch_of(&[&self.a.lines[s..e], &self.b.lines[s..e]])
    }
}

/// Pushes from `from` until the log ends or a request fails; `acked` holds the highest
/// `next_seq` the server acknowledged. Returns when a request fails (the server died).
async fn push_until_failure(url: String, key: ApiKey, w: Arc<Workload>, acked: Arc<AtomicU64>) {
    let client = HttpBackend::new(&url).unwrap();
    let Ok(Some(scope)) = client.resolve_api_key(&key).await else { return };
    let mut start = acked.load(Ordering::SeqCst);
    while start < LEN {
        let end = (start + CHUNK).min(LEN);
        match client.append(&scope, &w.batch(start, end)).await {
            Ok(report) => {
                let a = report.runs.iter().find(|r| r.run_id.as_str() == "crash-a").unwrap();
                let b = report.runs.iter().find(|r| r.run_id.as_str() == "crash-b").unwrap();
                assert_eq!(a.next_seq, b.next_seq, "one transaction for both runs");
                acked.fetch_max(a.next_seq, Ordering::SeqCst);
                start = end;
            }
            Err(_) => return,
        }
    }
}

/// What the store holds now, checked: both runs equally long (never torn), at least what was
/// acknowledged, every row the source's, the chain verifying. Returns the stored length.
async fn check_store(
    store: &dyn StorageBackend,
    scope: &WriteScope,
    w: &Workload,
    acked: u64,
) -> u64 {
    let read = scope.read();
    let mut lens = Vec::new();
    for log in [&w.a, &w.b] {
        let stored = match store.read_all_transitions(&read, &log.run_id).await {
            Ok(rows) => rows,
            Err(kahn_core::Error::NotFound { .. }) => Vec::new(),
            Err(e) => panic!("read {}: {e}", log.run_id),
        };
        let mut chain = kahn_core::Digest::ZERO;
        for (i, row) in stored.iter().enumerate() {
            let source = log.body(i as u64);
            assert_eq!(row.seq.get(), i as u64, "no gap, no duplicate");
            assert_eq!(row.content_hash, source.content_hash(), "{} seq {i}", log.run_id);
            chain = chain_link(&chain, &source.content_hash());
            assert_eq!(row.chain_hash, chain, "{} seq {i}", log.run_id);
        }
        if !stored.is_empty() {
            assert_eq!(store.verify_run(&read, &log.run_id).await.unwrap(), chain);
        }
        lens.push(stored.len() as u64);
    }
    assert_eq!(lens[0], lens[1], "a request's two runs are stored together or not at all");
    assert!(lens[0] >= acked, "acknowledged {acked}, stored only {}", lens[0]);
    lens[0]
}

/// Kills the server at each of `kill_after` acknowledged transitions (during a push that
/// keeps going), restarts it, checks, and finally pushes to the end from scratch (every
/// chunk re-sent: duplicates are skipped, never stored twice).
async fn crash_cycle(db: &str, key: &ApiKey, kill_after: &[u64], tag: &str) -> String {
    let w = Arc::new(Workload::new(tag));
    let acked = Arc::new(AtomicU64::new(0));
    let mut lost_windows = Vec::new();
    for &point in kill_after {
        let server = serve(db);
        let pusher = tokio::spawn(push_until_failure(
            server.url().to_owned(),
            key.clone(),
            w.clone(),
            acked.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < point {
            assert!(Instant::now() < deadline, "ingest stalled before {point}");
            assert!(!pusher.is_finished(), "the pusher stopped before the kill point");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The pusher is mid-request (it sends back to back): kill -9 now.
        server.kill();
        pusher.await.unwrap();
        let at_kill = acked.load(Ordering::SeqCst);
        // Restart on the same database and check against what was acknowledged.
        let server = serve(db);
        let client = HttpBackend::new(server.url()).unwrap();
        let scope = client.resolve_api_key(key).await.unwrap().unwrap();
        let stored = check_store(&client, &scope, &w, at_kill).await;
        // Stored beyond the last ack: a request that committed but whose answer was lost.
        lost_windows.push(stored - at_kill);
        acked.store(stored, Ordering::SeqCst);
        drop(server);
    }
    // Re-push everything from seq 0 to the end.
    let server = serve(db);
    let client = HttpBackend::new(server.url()).unwrap();
    let scope = client.resolve_api_key(key).await.unwrap().unwrap();
    let (mut appended, mut skipped) = (0, 0);
    let mut start = 0;
    while start < LEN {
        let end = (start + CHUNK * 5).min(LEN);
        let report = client.append(&scope, &w.batch(start, end)).await.unwrap();
        appended += report.appended();
        skipped += report.skipped();
        start = end;
    }
    assert_eq!(check_store(&client, &scope, &w, LEN).await, LEN);
    assert_eq!(appended + skipped, 2 * LEN);
    let run = RunId::new("crash-a").unwrap();
    assert_eq!(client.get_run(&scope.read(), &run).await.unwrap().info.next_seq, LEN);
    format!(
        "{} kills at {kill_after:?} acknowledged transitions per run; committed-but-unacknowledged at each kill: {lost_windows:?}; re-push of 2×{LEN}: {appended} appended, {skipped} skipped; zero acknowledged transitions lost",
        kill_after.len()
    )
}

fn kahn(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kahn"))
        .args(args)
        .env("KAHN_CACHE_DIR", std::env::temp_dir().join("kahn-test-resume-cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "kahn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_sqlite_server_under_ingest_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("kahn.db").display());
    let provisioned: serde_json::Value =
        serde_json::from_str(&kahn(&["tenant", "provision", "crash", "--json", "--db", &db]))
            .unwrap();
    let key = ApiKey::parse(provisioned["api_key"].as_str().unwrap()).unwrap();
    let report = crash_cycle(&db, &key, &[40, 1200, 2600], "sqlite").await;
    eprintln!("sqlite server: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_postgres_server_under_ingest_loses_nothing_acknowledged() {
    let (db, admin) = TestDb::new().await;
    let tenant = admin
        .provision_tenant(
            &NewTenant::new(format!("crash-{}", uuid::Uuid::new_v4().simple())).unwrap(),
        )
        .await
        .unwrap();
    let key = admin.issue_api_key(tenant.id).await.unwrap().secret;
    let report = crash_cycle(&db.url_as_app(), &key, &[40, 1200, 2600], "pg").await;
    eprintln!("postgres server: {report}");
}

/// Restarts the machine's PostgreSQL cluster while a `kahn serve` over it takes sustained
/// ingest: `/readyz` answers 503 while the database is down and 200 again by itself, the
/// pusher (retrying `Unavailable` as `kahn push` does) finishes, and nothing acknowledged is
/// lost. Ignored by default because it restarts the *shared* cluster, failing any other test
/// running against it at that moment. Run alone:
///
/// `KAHN_PG_RESTART="pg_ctlcluster --skip-systemctl-redirect 15 main restart" cargo test -p kahn-cli --test crash -- --ignored postgres_restarted`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared PostgreSQL cluster; run alone (see the doc comment)"]
async fn postgres_restarted_under_load_reports_unready_recovers_and_loses_nothing() {
    let restart = std::env::var("KAHN_PG_RESTART")
        .unwrap_or_else(|_| "pg_ctlcluster --skip-systemctl-redirect 15 main restart".to_owned());
    let (db, admin) = TestDb::new().await;
    let tenant = admin
        .provision_tenant(
            &NewTenant::new(format!("restart-{}", uuid::Uuid::new_v4().simple())).unwrap(),
        )
        .await
        .unwrap();
    let key = admin.issue_api_key(tenant.id).await.unwrap().secret;
    let server = serve(&db.url_as_app());
    let w = Arc::new(Workload::new("restart"));
    let acked = Arc::new(AtomicU64::new(0));
    let pusher = {
        let (url, key, w, acked) = (server.url().to_owned(), key.clone(), w.clone(), acked.clone());
        tokio::spawn(async move {
            // Like `kahn push`: retry Unavailable until the end, counting the retries.
            let mut retries = 0u64;
            while acked.load(Ordering::SeqCst) < LEN {
                push_until_failure(url.clone(), key.clone(), w.clone(), acked.clone()).await;
                if acked.load(Ordering::SeqCst) < LEN {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            retries
        })
    };
    while acked.load(Ordering::SeqCst) < 400 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client, url: String| async move {
        http.get(format!("{url}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    let watcher = {
        let (http, url) = (http.clone(), server.url().to_owned());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..600 {
                let s = ready(http.clone(), url.clone()).await;
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
                if seen.contains(&503) && s == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let status = Command::new("sh").args(["-c", &restart]).status().unwrap();
    assert!(status.success(), "{restart} failed");
    let seen = watcher.await.unwrap();
    assert!(seen.contains(&503), "readyz never reported unready: {seen:?}");
    assert_eq!(seen.last(), Some(&200), "readyz recovered by itself: {seen:?}");
    let retries = tokio::time::timeout(Duration::from_secs(120), pusher).await.unwrap().unwrap();
    let client = HttpBackend::new(server.url()).unwrap();
    let scope = client.resolve_api_key(&key).await.unwrap().unwrap();
    assert_eq!(check_store(&client, &scope, &w, LEN).await, LEN);
    eprintln!(
        "postgres restart: readyz went {seen:?}; pusher retried {retries} times; nothing lost"
    );
}
