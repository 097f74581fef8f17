//! The whole-run benchmark runner: every row of BENCHMARKS.md, measured in one process run.
//!
//! `scripts/bench` runs it in full (`cargo bench --bench suite`); `cargo test --bench suite`
//! (no `--bench` argument) runs the same code on a tiny workload as a smoke test, and so does
//! `KAHN_BENCH_SMOKE=1`. Numbers are printed and written as JSON; nothing is asserted about
//! them. See BENCHMARKS.md for what each row means.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "wire.rs"]
mod wire;
#[path = "workload.rs"]
mod workload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kahn_core::{
    AppendBatch, Digest, NewTenant, ReadScope, RunId, RunQuery, Seq, StorageBackend,
    StorageBackendExt, WriteScope, chain_link,
};
use kahn_pg::PgBackend;
use kahn_push::ResumeCache;
use kahn_push::push::{PushOptions, Quiet, RunSource, push};
use kahn_sqlite::{SqliteBackend, SqliteOptions};
use kahn_testkit::{KahnServer, ServerStderr, TestDb, kahn_bin};
use serde_json::{Map, Value, json};
use sqlx_core::query::query;
use sqlx_core::sql_str::AssertSqlSafe;

/// Sizes of one run of the suite.
#[derive(Clone, Debug)]
struct Config {
    smoke: bool,
    /// Transitions per ingest run.
    sizes: Vec<u64>,
    /// Repetitions per ingest figure (the median is reported).
    reps: usize,
    /// Loaded store for reads: tenants × runs × transitions per run.
    read_shape: (u64, u64, u64),
    /// Read calls timed per figure.
    read_calls: usize,
    /// The pusher's large run, in MiB.
    big_mib: u64,
    /// Transitions of the run whose ingest CPU is measured.
    cpu_n: u64,
    /// Concurrent pushers into one server, and transitions per pusher's run.
    concurrent: (usize, u64),
}

impl Config {
    fn from_env() -> Self {
        let smoke = std::env::var("KAHN_BENCH_SMOKE").is_ok_and(|v| v != "0")
            || !std::env::args().any(|a| a == "--bench");
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        if smoke {
            return Self {
                smoke,
                sizes: vec![600],
                reps: 1,
                read_shape: (2, 3, 1200),
                read_calls: 10,
                big_mib: 2,
                cpu_n: 600,
                concurrent: (4, 300),
            };
        }
        let sizes = std::env::var("KAHN_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10_000, 100_000]);
        Self {
            smoke,
            sizes,
            reps: num("KAHN_BENCH_REPS", 5) as usize,
            read_shape: (
                num("KAHN_BENCH_READ_TENANTS", 10),
                num("KAHN_BENCH_READ_RUNS", 20),
                num("KAHN_BENCH_READ_TRANSITIONS", 1000),
            ),
            read_calls: num("KAHN_BENCH_READ_CALLS", 300) as usize,
            big_mib: num("KAHN_BENCH_BIG_MIB", 1024),
            cpu_n: num("KAHN_BENCH_CPU_N", 1_000_000),
            concurrent: (
                num("KAHN_BENCH_PUSHERS", 32) as usize,
                num("KAHN_BENCH_PUSHER_N", 20_000),
            ),
        }
    }
}

/// Results, keyed `section.name`, written as JSON at the end.
#[derive(Default)]
struct Results(Map<String, Value>);

impl Results {
    fn put(&mut self, key: &str, v: Value) {
        println!("{key:<48} {v}");
        self.0.insert(key.to_owned(), v);
    }
    fn f(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(|v| v.get("median").or(Some(v))).and_then(Value::as_f64)
    }
}

fn med(mut xs: Vec<f64>) -> Value {
    let m = workload::median(&mut xs);
    json!({"median": m.round(), "samples": xs.iter().map(|x| x.round()).collect::<Vec<_>>()})
}

/// A run's files (whole and first half); its chunk batches are built on demand.
struct Workload {
    run: String,
    n: u64,
    file: PathBuf,
    half: PathBuf,
}

impl Workload {
    fn new(dir: &Path, run: &str, n: u64) -> Self {
        let file = dir.join(format!("{run}.ndjson"));
        let half = dir.join(format!("{run}.half.ndjson"));
        workload::write_file(&file, run, n).unwrap();
        workload::write_file(&half, run, n / 2).unwrap();
        Self { run: run.to_owned(), n, file, half }
    }

    /// The run cut into 1 MiB chunks as the pusher cuts them, each parsed, validated,
    /// canonicalised and hashed into a batch.
    fn batches(&self) -> Vec<AppendBatch> {
        let lines: Vec<String> = (0..self.n).map(|s| workload::line(&self.run, s)).collect();
        workload::chunks(&lines)
            .into_iter()
            .map(|(a, b)| {
                AppendBatch::from_ndjson(&wire::text(&self.run, a as u64..b as u64)).unwrap()
            })
            .collect()
    }

    /// The rows a store holds for this run: canonical body, content hash, chain hash.
    /// Per 1 MiB chunk.
    fn rows(&self) -> Vec<Vec<(i64, String, Digest, Digest)>> {
        let mut prev = Digest::ZERO;
        let mut chunks = Vec::new();
        for b in &self.batches() {
            let mut out = Vec::with_capacity(b.transition_count());
            for run in b.runs() {
                for (i, body) in run.bodies().iter().enumerate() {
                    let c = body.content_hash();
                    prev = chain_link(&prev, &c);
                    out.push((
                        (run.start() + i as u64) as i64,
                        body.canonical_json().to_owned(),
                        c,
                        prev,
                    ));
                }
            }
            chunks.push(out);
        }
        chunks
    }

    fn source(&self, half: bool) -> RunSource {
        let p = if half { &self.half } else { &self.file };
        RunSource::from_path(p, Some(RunId::new(&self.run).unwrap())).unwrap()
    }
}

/// One push of `src` (with the resume cache `cache`, as `kahn push` does by default).
async fn push_file(
    store: &dyn StorageBackend,
    scope: &WriteScope,
    src: &RunSource,
    cache: Option<&ResumeCache>,
) -> f64 {
    // KAHN_BENCH_APPENDS_IN_FLIGHT: the pusher's window (default: the library's, 2), to
    // measure what pipelining does to a direct push.
    let in_flight = std::env::var("KAHN_BENCH_APPENDS_IN_FLIGHT").ok().and_then(|v| v.parse().ok());
    let mut opts = PushOptions { resume_cache: cache.cloned(), ..PushOptions::default() };
    if let Some(n) = in_flight {
        opts.appends_in_flight = n;
    }
    let start = Instant::now();
    let r = push(store, scope, src, &opts, &Quiet).await.unwrap();
    assert!(r.next_seq > 0);
    start.elapsed().as_secs_f64()
}

async fn append_all(
    store: &dyn StorageBackend,
    scope: &WriteScope,
    batches: &[AppendBatch],
) -> (f64, u64) {
    let start = Instant::now();
    let mut appended = 0;
    for b in batches {
        appended += store.append(scope, b).await.unwrap().appended();
    }
    (start.elapsed().as_secs_f64(), appended)
}

/// First push, re-push, resume (through the pusher) and first/duplicate append (pre-built
/// chunks) of `n` transitions, `reps` times each on fresh runs of a fresh tenant.
async fn ingest(
    res: &mut Results,
    label: &str,
    store: Arc<dyn StorageBackend>,
    control: Arc<dyn StorageBackend>,
    dir: &Path,
    n: u64,
    reps: usize,
) {
    let tenant =
        control.provision_tenant(&NewTenant::new(format!("{label}-{n}")).unwrap()).await.unwrap();
    let key = control.issue_api_key(tenant.id).await.unwrap();
    let scope = store.resolve_api_key(&key.secret).await.unwrap().unwrap();
    let cache = ResumeCache::new(dir.join("resume-cache"));
    let (mut first, mut again, mut again_nocache, mut resume, mut app, mut dup) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let w = Workload::new(dir, &format!("{label}-{n}-p{rep}"), n);
        let t = push_file(&*store, &scope, &w.source(false), Some(&cache)).await;
        first.push(n as f64 / t);
        let t = push_file(&*store, &scope, &w.source(false), Some(&cache)).await;
        again.push(n as f64 / t);
        let t = push_file(&*store, &scope, &w.source(false), None).await;
        again_nocache.push(n as f64 / t);
        let r = Workload::new(dir, &format!("{label}-{n}-r{rep}"), n);
        push_file(&*store, &scope, &r.source(true), Some(&cache)).await;
        let t = push_file(&*store, &scope, &r.source(false), Some(&cache)).await;
        resume.push(n as f64 / t);
        let a = Workload::new(dir, &format!("{label}-{n}-a{rep}"), n);
        let batches = a.batches();
        let (t, appended) = append_all(&*store, &scope, &batches).await;
        assert_eq!(appended, n);
        app.push(n as f64 / t);
        let (t, appended) = append_all(&*store, &scope, &batches).await;
        assert_eq!(appended, 0);
        dup.push(n as f64 / t);
        drop(batches);
        for f in [&w.file, &w.half, &r.file, &r.half, &a.file, &a.half] {
            let _ = std::fs::remove_file(f);
        }
    }
    res.put(&format!("{label}.n{n}.push_first_tps"), med(first));
    res.put(&format!("{label}.n{n}.push_again_tps"), med(again));
    res.put(&format!("{label}.n{n}.push_again_nocache_tps"), med(again_nocache));
    res.put(&format!("{label}.n{n}.push_resume_tps"), med(resume));
    res.put(&format!("{label}.n{n}.append_first_tps"), med(app));
    res.put(&format!("{label}.n{n}.append_dup_tps"), med(dup));
}

/// One request's worth of many small runs: a batch of `runs` one-transition runs (the shape a
/// fan-out orchestrator, or an attacker within its rate limit, sends), appended first and
/// again (all duplicates), `reps` times each on fresh run ids. Seconds per batch.
async fn many_runs(
    res: &mut Results,
    label: &str,
    store: Arc<dyn StorageBackend>,
    control: Arc<dyn StorageBackend>,
    runs: u64,
    reps: usize,
) {
    let tenant = control
        .provision_tenant(&NewTenant::new(format!("{label}-many-{runs}")).unwrap())
        .await
        .unwrap();
    let key = control.issue_api_key(tenant.id).await.unwrap();
    let scope = store.resolve_api_key(&key.secret).await.unwrap().unwrap();
    let (mut first, mut again) = (vec![], vec![]);
    for rep in 0..reps {
        let text: String = (0..runs)
            .map(|i| {
                format!(
                    "{{\"run_id\":\"many-{rep}-{i}\",\"seq\":0,\"ts\":\"2026-01-01T00:00:00Z\",\"to\":\"succeeded\"}}\n"
                )
            })
            .collect();
        let batch = AppendBatch::from_ndjson(&text).unwrap();
        let start = Instant::now();
        assert_eq!(store.append(&scope, &batch).await.unwrap().appended(), runs);
        first.push(start.elapsed().as_secs_f64() * 1000.0);
        let start = Instant::now();
        assert_eq!(store.append(&scope, &batch).await.unwrap().skipped(), runs);
        again.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    res.put(&format!("{label}.many_runs{runs}.first_ms"), med(first));
    res.put(&format!("{label}.many_runs{runs}.again_ms"), med(again));
}

/// SQLite baseline: plain prepared INSERTs of the precomputed rows in one transaction, on the
/// same table shape and the same pragmas as kahn-sqlite (WAL, synchronous FULL).
fn sqlite_baseline(res: &mut Results, dir: &Path, n: u64, reps: usize) {
    let (mut whole, mut chunked) = (vec![], vec![]);
    for rep in 0..reps {
        let w = Workload::new(dir, &format!("base-{n}-{rep}"), n);
        let rows = w.rows();
        for (per_chunk, tps) in [(false, &mut whole), (true, &mut chunked)] {
            let path = dir.join(format!("baseline-{n}-{rep}-{per_chunk}.db"));
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).unwrap();
            conn.execute_batch(
                "PRAGMA synchronous = FULL; PRAGMA cache_size = -16000; PRAGMA temp_store = MEMORY;
                 CREATE TABLE transitions (
                    tenant_id BLOB NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL CHECK (seq >= 0),
                    body TEXT NOT NULL, content_hash BLOB NOT NULL, chain_hash BLOB NOT NULL,
                    PRIMARY KEY (tenant_id, run_id, seq)) STRICT, WITHOUT ROWID;",
            )
            .unwrap();
            let tenant = uuid::Uuid::new_v4();
            let groups: Vec<Vec<&(i64, String, Digest, Digest)>> = if per_chunk {
                rows.iter().map(|c| c.iter().collect()).collect()
            } else {
                vec![rows.iter().flatten().collect()]
            };
            let start = Instant::now();
            for group in groups {
                let tx = conn.transaction().unwrap();
                {
                    let mut st = tx
                        .prepare_cached("INSERT INTO transitions VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                        .unwrap();
                    for (seq, body, c, h) in group {
                        st.execute(rusqlite::params![
                            &tenant.as_bytes()[..],
                            &w.run,
                            seq,
                            body,
                            &c.as_bytes()[..],
                            &h.as_bytes()[..]
                        ])
                        .unwrap();
                    }
                }
                tx.commit().unwrap();
            }
            tps.push(n as f64 / start.elapsed().as_secs_f64());
            drop(conn);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        let _ = std::fs::remove_file(&w.file);
        let _ = std::fs::remove_file(&w.half);
    }
    res.put(&format!("sqlite.n{n}.baseline_insert_tps"), med(whole));
    res.put(&format!("sqlite.n{n}.baseline_insert_chunked_tps"), med(chunked));
}

/// Postgres baseline: one `COPY` as the owner of the precomputed rows into a table of the
/// same shape (`LIKE kahn.transitions INCLUDING ALL`: same columns, checks, primary key; no
/// RLS, no foreign key).
async fn pg_baseline(res: &mut Results, admin: &PgBackend, dir: &Path, n: u64, reps: usize) {
    query(
        "CREATE TABLE IF NOT EXISTS public.copy_transitions (LIKE kahn.transitions INCLUDING ALL)",
    )
    .execute(admin.pool())
    .await
    .unwrap();
    let (mut whole, mut chunked) = (vec![], vec![]);
    for rep in 0..reps {
        let w = Workload::new(dir, &format!("copy-{n}-{rep}"), n);
        let mut texts = Vec::new();
        for chunk in w.rows() {
            let mut text = String::with_capacity(chunk.len() * 450);
            for (seq, body, c, h) in chunk {
                // COPY text format: escape backslashes, tabs, newlines.
                let body = body.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n");
                text.push_str(&format!(
                    "{tenant}\t{}-{rep}\t{seq}\t{body}\t\\\\x{}\t\\\\x{}\n",
                    w.run,
                    hex(c.as_bytes()),
                    hex(h.as_bytes()),
                    tenant = uuid::Uuid::nil(),
                ));
            }
            texts.push(text);
        }
        // Whole: one COPY (one transaction) of every row. Chunked: one COPY per 1 MiB chunk,
        // each its own transaction, as KAHN commits each append.
        for (per_chunk, tps) in [(false, &mut whole), (true, &mut chunked)] {
            let tenant = uuid::Uuid::new_v4().to_string();
            let nil = uuid::Uuid::nil().to_string();
            let run_texts: Vec<String> = texts.iter().map(|t| t.replace(&nil, &tenant)).collect();
            let mut conn = admin.pool().acquire().await.unwrap();
            let start = Instant::now();
            let groups: Vec<Vec<&String>> = if per_chunk {
                run_texts.iter().map(|t| vec![t]).collect()
            } else {
                vec![run_texts.iter().collect()]
            };
            let mut rows = 0;
            for group in groups {
                let mut copy = conn
                    .copy_in_raw("COPY public.copy_transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) FROM STDIN")
                    .await
                    .unwrap();
                for text in group {
                    copy.send(text.as_bytes()).await.unwrap();
                }
                rows += copy.finish().await.unwrap();
            }
            assert_eq!(rows, n);
            tps.push(n as f64 / start.elapsed().as_secs_f64());
        }
        let _ = std::fs::remove_file(&w.file);
        let _ = std::fs::remove_file(&w.half);
    }
    res.put(&format!("pg.n{n}.baseline_copy_tps"), med(whole));
    res.put(&format!("pg.n{n}.baseline_copy_chunked_tps"), med(chunked));
}

/// Postgres baseline under the contract: what the app role itself can do at best. `COPY FROM`
/// is refused into a table whose RLS applies to the copying role, so DESIGN.md prescribes one
/// `INSERT … SELECT FROM UNNEST` per 1 MiB chunk; this is that statement alone, the
/// precomputed rows bound as arrays, one transaction per chunk (tenant entered, insert,
/// commit) into `kahn.transitions` itself, RLS on — no run summary, no chain links read, no
/// node summaries: the floor under KAHN's append.
async fn pg_unnest_baseline(res: &mut Results, app: &PgBackend, dir: &Path, n: u64, reps: usize) {
    let mut tps = vec![];
    for rep in 0..reps {
        let w = Workload::new(dir, &format!("unnest-{n}-{rep}"), n);
        let chunks = w.rows();
        let tenant = uuid::Uuid::new_v4();
        let run = format!("{}-u{rep}", w.run);
        let mut conn = app.pool().acquire().await.unwrap();
        let start = Instant::now();
        for chunk in &chunks {
            let seqs: Vec<i64> = chunk.iter().map(|r| r.0).collect();
            let bodies: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
            let contents: Vec<&[u8]> = chunk.iter().map(|r| &r.2.as_bytes()[..]).collect();
            let chains: Vec<&[u8]> = chunk.iter().map(|r| &r.3.as_bytes()[..]).collect();
            let mut tx = sqlx_core::connection::Connection::begin(&mut *conn).await.unwrap();
            query("SELECT kahn.enter_tenant($1)").bind(tenant).execute(&mut *tx).await.unwrap();
            query(
                "INSERT INTO kahn.transitions \
                 (tenant_id, run_id, seq, body, content_hash, chain_hash) \
                 SELECT $1, $2, t.seq, t.body, t.content_hash, t.chain_hash \
                 FROM UNNEST($3::bigint[], $4::text[], $5::bytea[], $6::bytea[]) \
                      AS t(seq, body, content_hash, chain_hash)",
            )
            .bind(tenant)
            .bind(&run)
            .bind(&seqs)
            .bind(&bodies)
            .bind(&contents)
            .bind(&chains)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
        tps.push(n as f64 / start.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&w.file);
        let _ = std::fs::remove_file(&w.half);
    }
    res.put(&format!("pg.n{n}.baseline_unnest_app_tps"), med(tps));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `kahn serve` over `db` on a free loopback port (its log on the bench's stderr); killed on
/// drop.
fn serve(db: &str, extra: &[String]) -> KahnServer {
    KahnServer::builder(kahn_bin()).db(db).args(extra).stderr(ServerStderr::Inherit).start()
}

/// The peak resident set of a running server, in KiB.
fn server_hwm_kib(server: &KahnServer) -> u64 {
    status_kib(server.id(), "VmHWM").unwrap_or(0)
}

/// A `/proc/<pid>/status` figure of a live process in KiB: `VmHWM` (peak resident set) or
/// `VmRSS` (resident now).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of the CPU times in `/proc` (`getconf CLK_TCK`; 100, Linux's
/// value, when getconf cannot say).
fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time (user + system, in clock ticks) from `/proc/<pid>/stat` (`pid` may be `self`):
/// the process's own, or with `reaped_children` that of its children it has waited for
/// (`cutime + cstime`, what `getrusage(RUSAGE_CHILDREN)` reports).
fn cpu_ticks(pid: &str, reaped_children: bool) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15, cutime 16, cstime 17.
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    let at = if reaped_children { 13 } else { 11 };
    Some(f.get(at)?.parse::<u64>().ok()? + f.get(at + 1)?.parse::<u64>().ok()?)
}

/// `kahn push FILE --run-id RUN --url URL --no-resume-cache`, the key in its environment and
/// its stdout discarded; the caller sets its stderr and flags and spawns it.
fn push_command(url: &str, key: &str, file: &Path, run: &str) -> Command {
    let mut cmd = Command::new(kahn_bin());
    cmd.args(["push", file.to_str().unwrap(), "--run-id", run, "--url", url])
        .arg("--no-resume-cache")
        .env("KAHN_API_KEY", key)
        .env("KAHN_LOG", "warn")
        .env_remove("KAHN_DATABASE_URL")
        .stdout(Stdio::null());
    cmd
}

/// Waits for every child, calling `tick` every 20 ms (first before any is reaped) until the
/// last has exited; each one's exit status.
fn wait_all(children: &mut [Child], mut tick: impl FnMut()) -> Vec<ExitStatus> {
    let mut status = vec![None; children.len()];
    loop {
        tick();
        for (child, s) in children.iter_mut().zip(&mut status) {
            if s.is_none() {
                *s = child.try_wait().unwrap();
            }
        }
        if status.iter().all(Option::is_some) {
            return status.into_iter().map(Option::unwrap).collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `kahn push FILE --url URL --json`; returns seconds and the pusher's peak RSS (KiB),
/// sampled from /proc every 20 ms on another thread while it runs (VmHWM only grows, so the
/// last sample is the peak up to ~20 ms before exit). The time ends when the process is
/// reaped, not at the next sample: polling every 20 ms added up to 20 ms to a ~80 ms push.
fn kahn_push(url: &str, key: &str, file: &Path, run: &str) -> (f64, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let start = Instant::now();
    let mut child =
        push_command(url, key, file, run).arg("--json").stderr(Stdio::inherit()).spawn().unwrap();
    let pid = child.id();
    let (done, hwm) = (AtomicBool::new(false), AtomicU64::new(0));
    let (status, elapsed) = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                hwm.fetch_max(status_kib(pid, "VmHWM").unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let status = child.wait().unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        (status, elapsed)
    });
    assert!(status.success(), "kahn push failed: {status}");
    (elapsed, hwm.into_inner())
}

/// The real pusher against the real server, taking turns with the same pusher straight into
/// the server's own database (the library's `push`, as the ingest section's push first, but
/// without a resume cache on either side): first pushes of `n`, `reps` times each, the two
/// alternating which goes first. The http/direct ratio is taken from these interleaved pairs:
/// measured sections apart, drift on this shared machine (the same binary ran 120k–172k/s in
/// runs minutes apart) moved the ratio more than any change did.
async fn http_ingest(res: &mut Results, label: &str, s: &Served, dir: &Path, n: u64, reps: usize) {
    let (server, key) = (&s.server, &s.keys[0]);
    let direct: Arc<dyn StorageBackend> = match (&s.path, &s.pg) {
        (Some(path), _) => Arc::new(SqliteBackend::open(SqliteOptions::file(path)).await.unwrap()),
        (None, Some((db, _))) => Arc::new(db.app().await),
        (None, None) => unreachable!("a served store is SQLite or Postgres"),
    };
    let secret = kahn_core::ApiKey::parse(key).unwrap();
    let scope = direct.resolve_api_key(&secret).await.unwrap().unwrap();
    let (mut tps, mut direct_tps) = (vec![], vec![]);
    let mut pusher_hwm = 0;
    for rep in 0..reps {
        let file = |run: &str| {
            let file = dir.join(format!("{run}.ndjson"));
            workload::write_file(&file, run, n).unwrap();
            file
        };
        let (run, direct_run) =
            (format!("{label}-http-{n}-{rep}"), format!("{label}-direct-{n}-{rep}"));
        let (http_file, direct_file) = (file(&run), file(&direct_run));
        let src =
            RunSource::from_path(&direct_file, Some(RunId::new(&direct_run).unwrap())).unwrap();
        let direct_push = async || n as f64 / push_file(&*direct, &scope, &src, None).await;
        if rep % 2 == 0 {
            direct_tps.push(direct_push().await);
        }
        let (t, hwm) = kahn_push(server.url(), key, &http_file, &run);
        tps.push(n as f64 / t);
        if rep % 2 == 1 {
            direct_tps.push(direct_push().await);
        }
        pusher_hwm = pusher_hwm.max(hwm);
        let _ = std::fs::remove_file(&http_file);
        let _ = std::fs::remove_file(&direct_file);
    }
    res.put(&format!("{label}.n{n}.http_push_first_tps"), med(tps));
    res.put(&format!("{label}.n{n}.http_pair_direct_push_first_tps"), med(direct_tps));
    res.put(&format!("{label}.n{n}.http_pusher_hwm_mib"), json!(pusher_hwm / 1024));
    res.put(&format!("{label}.n{n}.http_server_hwm_mib"), json!(server_hwm_kib(server) / 1024));
}

/// Milliseconds of one ingest request of `runs` one-transition runs (ids under `tag`) through
/// `HttpBackend` into `s`'s server.
async fn http_many_runs(s: &Served, tag: &str, runs: u64) -> f64 {
    let client = kahn_http::HttpBackend::new(s.server.url()).unwrap();
    let key = kahn_core::ApiKey::parse(&s.keys[0]).unwrap();
    let scope = client.resolve_api_key(&key).await.unwrap().unwrap();
    let text: String = (0..runs)
        .map(|i| {
            format!(
                "{{\"run_id\":\"many-{tag}-{i}\",\"seq\":0,\"ts\":\"2026-01-01T00:00:00Z\",\"to\":\"succeeded\"}}\n"
            )
        })
        .collect();
    let batch = AppendBatch::from_ndjson(&text).unwrap();
    let start = Instant::now();
    assert_eq!(client.append(&scope, &batch).await.unwrap().appended(), runs);
    start.elapsed().as_secs_f64() * 1000.0
}

/// Times `POST /v1/checkpoints` on `s`'s first tenant, in ms: the next checkpoint as it
/// stands, one after 100 new runs were pushed, one with nothing changed.
async fn checkpoint_costs(s: &Served) -> (f64, f64, f64) {
    let client = kahn_http::HttpBackend::new(s.server.url()).unwrap();
    let key = kahn_core::ApiKey::parse(&s.keys[0]).unwrap();
    let scope = client.resolve_api_key(&key).await.unwrap().unwrap();
    let timed = async || {
        let start = Instant::now();
        client.checkpoint_now(&scope.read()).await.unwrap();
        start.elapsed().as_secs_f64() * 1000.0
    };
    let full = timed().await;
    let text: String = (0..100)
        .map(|i| {
            format!(
                "{{\"run_id\":\"grown-{i}\",\"seq\":0,\"ts\":\"2026-01-01T00:00:00Z\",\"to\":\"running\"}}\n"
            )
        })
        .collect();
    client.append(&scope, &AppendBatch::from_ndjson(&text).unwrap()).await.unwrap();
    let grown = timed().await;
    (full, grown, timed().await)
}

/// A fresh database served by `kahn serve` (the release binary, as the `http` section runs
/// it): SQLite (a file in `dir`), or Postgres (a fresh test database, served as the app role)
/// with its admin backend; `tenants` tenants provisioned beforehand, one API key each.
struct Served {
    server: KahnServer,
    keys: Vec<String>,
    /// SQLite: the database file.
    path: Option<PathBuf>,
    /// Postgres: the database (dropped after the server) and its admin backend.
    pg: Option<(TestDb, PgBackend)>,
}

impl Served {
    async fn start(label: &str, dir: &Path, name: &str, tenants: usize) -> Self {
        Self::start_with(label, dir, name, tenants, &[]).await
    }

    /// As [`start`](Self::start), `kahn serve` given `extra` flags too.
    async fn start_with(
        label: &str,
        dir: &Path,
        name: &str,
        tenants: usize,
        extra: &[String],
    ) -> Self {
        if label == "sqlite" {
            let path = dir.join(format!("{name}.db"));
            let store = SqliteBackend::open(SqliteOptions::file(&path)).await.unwrap();
            let keys = provision(&store, name, tenants).await;
            drop(store);
            let server = serve(&format!("sqlite://{}", path.display()), extra);
            Self { server, keys, path: Some(path), pg: None }
        } else {
            let (db, admin) = TestDb::new().await;
            let keys = provision(&admin, name, tenants).await;
            let server = serve(&db.url_as_app(), extra);
            Self { server, keys, path: None, pg: Some((db, admin)) }
        }
    }

    /// Postgres: the CPU ticks so far of each backend serving the server's connections (the
    /// app role's in this database, per `pg_stat_activity`, read as the superuser admin).
    async fn pg_backend_ticks(&self) -> Option<HashMap<i32, u64>> {
        let (db, admin) = self.pg.as_ref()?;
        let pids: Vec<i32> = sqlx_core::query_scalar::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $2",
        )
        .bind(db.name())
        .bind(kahn_pg::APP_ROLE)
        .fetch_all(admin.pool())
        .await
        .unwrap();
        Some(
            pids.into_iter().filter_map(|p| Some((p, cpu_ticks(&p.to_string(), false)?))).collect(),
        )
    }

    async fn stop(self) {
        drop(self.server);
        if let Some(path) = self.path {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        if let Some((db, admin)) = self.pg {
            admin.close().await;
            drop(db);
        }
    }
}

/// Provisions `tenants` tenants named `name-<i>`; one API key secret each.
async fn provision(store: &dyn StorageBackend, name: &str, tenants: usize) -> Vec<String> {
    let mut keys = vec![];
    for t in 0..tenants {
        let tenant =
            store.provision_tenant(&NewTenant::new(format!("{name}-{t}")).unwrap()).await.unwrap();
        let key = store.issue_api_key(tenant.id).await.unwrap();
        keys.push(key.secret.expose_secret().to_owned());
    }
    keys
}

/// CPU seconds per 1M transitions of `ticks` clock ticks spent on `n` transitions.
fn cpu_per_1m(ticks: u64, tck: f64, n: u64) -> Value {
    json!((ticks as f64 / tck * 1e6 / n as f64 * 100.0).round() / 100.0)
}

/// CPU time of ingest over HTTP: one `kahn push --url` of `n` transitions into `s`'s server.
/// The server's utime + stime from `/proc/<pid>/stat` before and after; the pusher's from the
/// bench's reaped-children times (`cutime + cstime`) around it; on Postgres, the backends
/// serving the server's connections, read before the server stops (a backend that closed
/// during the push is lost: reported, expected 0 with the pool's 10-minute idle timeout).
async fn http_cpu(res: &mut Results, label: &str, s: &Served, dir: &Path, n: u64, tck: f64) {
    let run = format!("{label}-cpu-{n}");
    let file = dir.join(format!("{run}.ndjson"));
    workload::write_file(&file, &run, n).unwrap();
    let server = s.server.id().to_string();
    let pg_before = s.pg_backend_ticks().await;
    let (server0, pusher0) = (cpu_ticks(&server, false).unwrap(), cpu_ticks("self", true).unwrap());
    let (secs, _) = kahn_push(s.server.url(), &s.keys[0], &file, &run);
    let (server1, pusher1) = (cpu_ticks(&server, false).unwrap(), cpu_ticks("self", true).unwrap());
    let pg_after = s.pg_backend_ticks().await;
    let key = |m: &str| format!("cpu.{label}.n{n}.{m}");
    res.put(&key("http_tps"), json!((n as f64 / secs).round()));
    res.put(&key("server_cpu_s_per_1m"), cpu_per_1m(server1 - server0, tck, n));
    res.put(&key("pusher_cpu_s_per_1m"), cpu_per_1m(pusher1 - pusher0, tck, n));
    if let (Some(before), Some(after)) = (pg_before, pg_after) {
        let ticks = after.iter().map(|(p, t)| t.saturating_sub(*before.get(p).unwrap_or(&0))).sum();
        let closed = before.keys().filter(|p| !after.contains_key(p)).count();
        res.put(&key("pg_backends_cpu_s_per_1m"), cpu_per_1m(ticks, tck, n));
        res.put(&key("pg_backends"), json!({"at_end": after.len(), "closed_during_push": closed}));
    }
    let _ = std::fs::remove_file(&file);
}

/// One `kahn push --url` process per key of `s`, all at once, each its tenant's own run of `n`
/// transitions: the server's resident set (VmRSS sampled every 20 ms, VmHWM at the end), the
/// aggregate throughput, the server's CPU, and the pushers' retries (from their progress
/// lines). A failed push fails the bench with its stderr.
fn concurrent_push(res: &mut Results, label: &str, s: &Served, dir: &Path, n: u64, tck: f64) {
    let pushers = s.keys.len();
    let runs: Vec<(String, PathBuf, PathBuf)> = (0..pushers)
        .map(|i| {
            let run = format!("{label}-concurrent-{i}");
            let file = dir.join(format!("{run}.ndjson"));
            workload::write_file(&file, &run, n).unwrap();
            (run.clone(), file, dir.join(format!("{run}.stderr")))
        })
        .collect();
    let server = s.server.id();
    let cpu0 = cpu_ticks(&server.to_string(), false).unwrap();
    let start = Instant::now();
    let mut children: Vec<Child> = runs
        .iter()
        .zip(&s.keys)
        .map(|((run, file, err), key)| {
            push_command(s.server.url(), key, file, run)
                .stderr(std::fs::File::create(err).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut peak_rss = 0;
    let status = wait_all(&mut children, || {
        peak_rss = peak_rss.max(status_kib(server, "VmRSS").unwrap_or(0));
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_ticks(&server.to_string(), false).unwrap() - cpu0;
    let mut retries = 0;
    for ((run, file, err), status) in runs.iter().zip(&status) {
        let log = std::fs::read_to_string(err).unwrap_or_default();
        assert!(status.success(), "kahn push of {run} failed ({status}):\n{log}");
        retries += log.lines().filter(|l| l.starts_with("push: retry")).count();
        let _ = std::fs::remove_file(file);
        let _ = std::fs::remove_file(err);
    }
    let total = pushers as u64 * n;
    let key = |m: &str| format!("concurrent.{label}.{pushers}x{n}.{m}");
    res.put(&key("pushes_ok"), json!(pushers));
    res.put(&key("retries"), json!(retries));
    res.put(&key("aggregate_tps"), json!((total as f64 / secs).round()));
    res.put(&key("server_peak_rss_mib"), json!(peak_rss / 1024));
    res.put(&key("server_hwm_mib"), json!(server_hwm_kib(&s.server) / 1024));
    res.put(&key("server_cpu_s_per_1m"), cpu_per_1m(cpu, tck, total));
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// list_runs (first page, 50) and read_transitions(1000) latency in µs, p50/p99, over
/// `calls` calls spread over the loaded tenants and runs.
/// Latency of `list_runs` (first page of 50) and `read_transitions` (1,000 rows) on each of
/// `stores`, `calls` times each. Stores measured together are interleaved call by call, the
/// first of each pair alternating, so none gets a warmer cache than another.
async fn read_latency(
    res: &mut Results,
    stores: &[(&str, &dyn StorageBackend)],
    scopes: &[(ReadScope, Vec<RunId>)],
    calls: usize,
) {
    let mut list = vec![Vec::with_capacity(calls); stores.len()];
    let mut read = vec![Vec::with_capacity(calls); stores.len()];
    let q = RunQuery { limit: 50, ..RunQuery::default() };
    for i in 0..calls {
        let (scope, runs) = &scopes[i % scopes.len()];
        let run = &runs[(i / scopes.len()) % runs.len()];
        for k in 0..stores.len() {
            let which = (k + i) % stores.len();
            let store = stores[which].1;
            let t = Instant::now();
            let page = store.list_runs(scope, &q).await.unwrap();
            list[which].push(t.elapsed().as_secs_f64() * 1e6);
            assert!(!page.runs.is_empty());
            let t = Instant::now();
            let rows = store.read_transitions(scope, run, None::<Seq>, 1000).await.unwrap();
            read[which].push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(rows.len(), 1000.min(rows.len().max(1)));
        }
    }
    for (k, (key, _)) in stores.iter().enumerate() {
        list[k].sort_by(f64::total_cmp);
        read[k].sort_by(f64::total_cmp);
        res.put(
            &format!("{key}.list_runs_us"),
            json!({"p50": pct(&list[k], 0.5).round(), "p99": pct(&list[k], 0.99).round()}),
        );
        res.put(
            &format!("{key}.read_1000_us"),
            json!({"p50": pct(&read[k], 0.5).round(), "p99": pct(&read[k], 0.99).round()}),
        );
    }
}

/// Loads tenants × runs × transitions through `append`; returns each tenant's read scope,
/// run ids and API key.
async fn load(
    store: &dyn StorageBackend,
    shape: (u64, u64, u64),
) -> Vec<(ReadScope, Vec<RunId>, String)> {
    let (tenants, runs, n) = shape;
    let mut out = vec![];
    for t in 0..tenants {
        let tenant =
            store.provision_tenant(&NewTenant::new(format!("reader-{t}")).unwrap()).await.unwrap();
        let key = store.issue_api_key(tenant.id).await.unwrap();
        let scope = store.resolve_api_key(&key.secret).await.unwrap().unwrap();
        let mut ids = vec![];
        for r in 0..runs {
            let run = format!("load-{t}-{r}");
            let text = wire::text(&run, 0..n);
            store.append(&scope, &AppendBatch::from_ndjson(&text).unwrap()).await.unwrap();
            ids.push(RunId::new(&run).unwrap());
        }
        out.push((scope.read(), ids, key.secret.expose_secret().to_owned()));
    }
    out
}

fn ratio(res: &mut Results, key: &str, num: &str, den: &str) {
    if let (Some(a), Some(b)) = (res.f(num), res.f(den))
        && b > 0.0
    {
        res.put(key, json!((a / b * 100.0).round() / 100.0));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    kahn_http::install_crypto_provider();
    let cfg = Config::from_env();
    println!("kahn bench suite ({}): {cfg:?}", if cfg.smoke { "smoke" } else { "full" });
    let dir = tempfile::tempdir().unwrap();
    let mut res = Results::default();
    let only = std::env::var("KAHN_BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);

    // ---- direct ingest and baselines ------------------------------------------------------
    if want("ingest") {
        for &n in &cfg.sizes {
            let sq = Arc::new(
                SqliteBackend::open(SqliteOptions::file(dir.path().join(format!("kahn-{n}.db"))))
                    .await
                    .unwrap(),
            );
            ingest(&mut res, "sqlite", sq.clone(), sq.clone(), dir.path(), n, cfg.reps).await;
            sqlite_baseline(&mut res, dir.path(), n, cfg.reps);
            drop(sq);

            let (db, admin) = TestDb::new().await;
            let app: Arc<dyn StorageBackend> = Arc::new(db.app().await);
            let admin = Arc::new(admin);
            ingest(&mut res, "pg", app, admin.clone(), dir.path(), n, cfg.reps).await;
            pg_baseline(&mut res, &admin, dir.path(), n, cfg.reps).await;
            pg_unnest_baseline(&mut res, &db.app().await, dir.path(), n, cfg.reps).await;
            admin.close().await;
            drop(db);
            for (a, b) in [
                ("sqlite", "baseline_insert_tps"),
                ("pg", "baseline_copy_tps"),
                ("sqlite", "baseline_insert_chunked_tps"),
                ("pg", "baseline_copy_chunked_tps"),
                ("pg", "baseline_unnest_app_tps"),
            ] {
                for m in ["push_first_tps", "append_first_tps"] {
                    ratio(
                        &mut res,
                        &format!("ratio.{a}.n{n}.{m}/{b}"),
                        &format!("{a}.n{n}.{m}"),
                        &format!("{a}.n{n}.{b}"),
                    );
                }
            }
            for a in ["sqlite", "pg"] {
                for again in ["push_again", "push_again_nocache"] {
                    ratio(
                        &mut res,
                        &format!("ratio.{a}.n{n}.{again}/push_first"),
                        &format!("{a}.n{n}.{again}_tps"),
                        &format!("{a}.n{n}.push_first_tps"),
                    );
                }
                ratio(
                    &mut res,
                    &format!("ratio.{a}.n{n}.append_dup/append_first"),
                    &format!("{a}.n{n}.append_dup_tps"),
                    &format!("{a}.n{n}.append_first_tps"),
                );
            }
        }
    }

    // ---- many one-transition runs in one request ------------------------------------------
    if want("many_runs") {
        let runs = if cfg.smoke { 200 } else { 10_000 };
        let sq = Arc::new(
            SqliteBackend::open(SqliteOptions::file(dir.path().join("many-runs.db")))
                .await
                .unwrap(),
        );
        many_runs(&mut res, "sqlite", sq.clone(), sq, runs, cfg.reps).await;
        let (db, admin) = TestDb::new().await;
        let app: Arc<dyn StorageBackend> = Arc::new(db.app().await);
        let admin = Arc::new(admin);
        many_runs(&mut res, "pg", app, admin.clone(), runs, cfg.reps).await;
        admin.close().await;
        drop(db);
        for which in ["first_ms", "again_ms"] {
            ratio(
                &mut res,
                &format!("ratio.many_runs{runs}.{which}.pg/sqlite"),
                &format!("pg.many_runs{runs}.{which}"),
                &format!("sqlite.many_runs{runs}.{which}"),
            );
        }
    }

    // ---- HTTP end to end: the kahn binary (serve + push) over loopback -------------------
    if want("http") {
        for &n in &cfg.sizes {
            for label in ["sqlite", "pg"] {
                let s = Served::start(label, dir.path(), &format!("http-{n}"), 1).await;
                http_ingest(&mut res, label, &s, dir.path(), n, cfg.reps).await;
                s.stop().await;
            }
            for a in ["sqlite", "pg"] {
                // Interleaved pairs (see `http_ingest`); and against the ingest section's push
                // first (with its resume cache, minutes earlier), as this ratio was taken before.
                ratio(
                    &mut res,
                    &format!("ratio.{a}.n{n}.http/direct"),
                    &format!("{a}.n{n}.http_push_first_tps"),
                    &format!("{a}.n{n}.http_pair_direct_push_first_tps"),
                );
                ratio(
                    &mut res,
                    &format!("ratio.{a}.n{n}.http/ingest_push_first"),
                    &format!("{a}.n{n}.http_push_first_tps"),
                    &format!("{a}.n{n}.push_first_tps"),
                );
            }
        }
    }

    // ---- receipts: first push over HTTP to a server that signs them, against one that does
    // not (issue 19: within 5%). The two servers take turns, rep by rep, so drift hits both.
    if want("receipts") {
        let key_file = dir.path().join("receipt-key.pem");
        let signer = kahn_core::receipt::ReceiptSigner::generate().unwrap();
        std::fs::write(&key_file, signer.to_pem().unwrap()).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // A request of many runs costs 100 units per 10,000 runs: an allowance that never
        // makes the many-runs requests below wait for a 429.
        let unlimited = ["--ingest-rate".to_owned(), "1000000".to_owned()];
        let signing: Vec<String> = unlimited
            .iter()
            .cloned()
            .chain(["--receipt-key".to_owned(), key_file.display().to_string()])
            .collect();
        // The same signing server checkpointing every second: checkpoints are off the ingest
        // path, so a push must not notice them.
        let checkpointing: Vec<String> = signing
            .iter()
            .cloned()
            .chain(["--checkpoint-interval-secs".to_owned(), "1".to_owned()])
            .collect();
        for &n in &cfg.sizes {
            for label in ["sqlite", "pg"] {
                let plain =
                    Served::start_with(label, dir.path(), &format!("plain-{n}"), 1, &unlimited)
                        .await;
                let signed =
                    Served::start_with(label, dir.path(), &format!("signed-{n}"), 1, &signing)
                        .await;
                let busy = Served::start_with(
                    label,
                    dir.path(),
                    &format!("checkpointing-{n}"),
                    1,
                    &checkpointing,
                )
                .await;
                let (mut plain_tps, mut signed_tps, mut busy_tps) = (vec![], vec![], vec![]);
                for rep in 0..cfg.reps {
                    let mut turn = [
                        (&plain, &mut plain_tps, "plain"),
                        (&signed, &mut signed_tps, "signed"),
                        (&busy, &mut busy_tps, "checkpointing"),
                    ];
                    // Each server goes first, second and third in turn: order does not favour one.
                    turn.rotate_left(rep % 3);
                    for (s, tps, which) in turn {
                        let run = format!("{label}-{which}-{n}-{rep}");
                        let file = dir.path().join(format!("{run}.ndjson"));
                        workload::write_file(&file, &run, n).unwrap();
                        let (t, _) = kahn_push(s.server.url(), &s.keys[0], &file, &run);
                        tps.push(n as f64 / t);
                        let _ = std::fs::remove_file(&file);
                    }
                }
                // The worst case for receipts: one request of many one-transition runs signs
                // one receipt per run.
                let runs = if cfg.smoke { 200 } else { 10_000 };
                let (mut plain_ms, mut signed_ms) = (vec![], vec![]);
                for rep in 0..cfg.reps {
                    for (s, ms, which) in
                        [(&plain, &mut plain_ms, "plain"), (&signed, &mut signed_ms, "signed")]
                    {
                        ms.push(http_many_runs(s, &format!("{which}-{n}-{rep}"), runs).await);
                    }
                }
                // A checkpoint of the signing server's tenant, which now holds `reps * runs`
                // one-transition runs: the first (a leaf per run), one after 100 new runs
                // (reads the whole log again), one with nothing changed.
                let (full, grown, unchanged) = checkpoint_costs(&signed).await;
                res.put(&format!("{label}.checkpoint_first_ms"), full.into());
                res.put(&format!("{label}.checkpoint_after_100_ms"), grown.into());
                res.put(&format!("{label}.checkpoint_unchanged_ms"), unchanged.into());
                res.put(&format!("{label}.http_many_runs{runs}_ms_no_receipts"), med(plain_ms));
                res.put(&format!("{label}.http_many_runs{runs}_ms_receipts"), med(signed_ms));
                ratio(
                    &mut res,
                    &format!("ratio.{label}.http_many_runs{runs}.receipts/no_receipts"),
                    &format!("{label}.http_many_runs{runs}_ms_receipts"),
                    &format!("{label}.http_many_runs{runs}_ms_no_receipts"),
                );
                ratio(
                    &mut res,
                    &format!("ratio.{label}.checkpoint_first/http_many_runs{runs}"),
                    &format!("{label}.checkpoint_first_ms"),
                    &format!("{label}.http_many_runs{runs}_ms_no_receipts"),
                );
                res.put(&format!("{label}.n{n}.http_push_first_tps_no_receipts"), med(plain_tps));
                res.put(&format!("{label}.n{n}.http_push_first_tps_receipts"), med(signed_tps));
                res.put(&format!("{label}.n{n}.http_push_first_tps_checkpointing"), med(busy_tps));
                ratio(
                    &mut res,
                    &format!("ratio.{label}.n{n}.receipts/no_receipts"),
                    &format!("{label}.n{n}.http_push_first_tps_receipts"),
                    &format!("{label}.n{n}.http_push_first_tps_no_receipts"),
                );
                ratio(
                    &mut res,
                    &format!("ratio.{label}.n{n}.receipts_and_checkpoints/no_receipts"),
                    &format!("{label}.n{n}.http_push_first_tps_checkpointing"),
                    &format!("{label}.n{n}.http_push_first_tps_no_receipts"),
                );
                plain.stop().await;
                signed.stop().await;
                busy.stop().await;
            }
        }
    }

    // ---- memory: the pusher on a large run, the server ingesting it -----------------------
    if want("memory") {
        let run = "big-run";
        let file = dir.path().join("big.ndjson");
        let n = cfg.big_mib * 1024 * 1024 / 305;
        let bytes = workload::write_file(&file, run, n).unwrap();
        let s = Served::start("sqlite", dir.path(), "big", 1).await;
        let (secs, hwm) = kahn_push(s.server.url(), &s.keys[0], &file, run);
        res.put("memory.big_run_mib", json!(bytes / (1024 * 1024)));
        res.put("memory.big_run_transitions", json!(n));
        res.put("memory.big_run_http_tps", json!((n as f64 / secs).round()));
        res.put("memory.pusher_hwm_mib", json!(hwm / 1024));
        res.put("memory.server_hwm_mib", json!(server_hwm_kib(&s.server) / 1024));
        s.stop().await;
        let _ = std::fs::remove_file(&file);
    }

    // ---- CPU per 1M transitions ingested over HTTP: server, pusher, Postgres backends -----
    let tck = clk_tck();
    if want("cpu") {
        res.put("cpu.clk_tck", json!(tck));
        for label in ["sqlite", "pg"] {
            let s = Served::start(label, dir.path(), "cpu", 1).await;
            http_cpu(&mut res, label, &s, dir.path(), cfg.cpu_n, tck).await;
            s.stop().await;
        }
    }

    // ---- concurrent pushers into one server: its memory, the aggregate throughput ---------
    if want("concurrent") {
        let (pushers, n) = cfg.concurrent;
        for label in ["sqlite", "pg"] {
            let s = Served::start(label, dir.path(), "concurrent", pushers).await;
            concurrent_push(&mut res, label, &s, dir.path(), n, tck);
            s.stop().await;
        }
    }

    // ---- reads on a loaded store -----------------------------------------------------------
    if want("reads") {
        let calls = cfg.read_calls;
        res.put("reads.shape", json!(cfg.read_shape));
        // SQLite, direct and over HTTP.
        let path = dir.path().join("reads.db");
        let sq = SqliteBackend::open(SqliteOptions::file(&path)).await.unwrap();
        let loaded = load(&sq, cfg.read_shape).await;
        let scopes: Vec<_> = loaded.iter().map(|(s, r, _)| (s.clone(), r.clone())).collect();
        read_latency(&mut res, &[("reads.sqlite.direct", &sq)], &scopes, calls).await;
        drop(sq);
        let server = serve(&format!("sqlite://{}", path.display()), &[]);
        let http = kahn_http::HttpBackend::new(server.url()).unwrap();
        let mut hscopes = vec![];
        for (_, runs, key) in &loaded {
            let key = kahn_core::ApiKey::parse(key).unwrap();
            hscopes.push((http.resolve_api_key(&key).await.unwrap().unwrap().read(), runs.clone()));
        }
        read_latency(&mut res, &[("reads.sqlite.http", &http)], &hscopes, calls).await;
        drop(server);

        // Postgres: the app role under RLS vs the owner (a superuser: RLS does not apply), the
        // same backend code and queries.
        let (db, admin) = TestDb::new().await;
        let loaded = load(&admin, cfg.read_shape).await;
        query(AssertSqlSafe("VACUUM ANALYZE".to_owned())).execute(admin.pool()).await.unwrap();
        let scopes: Vec<_> = loaded.iter().map(|(s, r, _)| (s.clone(), r.clone())).collect();
        let app = db.app().await;
        // Interleaved call by call, so neither gets a warmer cache.
        let pair: [(&str, &dyn StorageBackend); 2] =
            [("reads.pg.rls_on_app_role", &app), ("reads.pg.rls_off_owner", &admin)];
        read_latency(&mut Results::default(), &pair, &scopes, calls.min(50)).await;
        read_latency(&mut res, &pair, &scopes, calls).await;
        let server = serve(&db.url_as_app(), &[]);
        let http = kahn_http::HttpBackend::new(server.url()).unwrap();
        let mut hscopes = vec![];
        for (_, runs, key) in &loaded {
            let key = kahn_core::ApiKey::parse(key).unwrap();
            hscopes.push((http.resolve_api_key(&key).await.unwrap().unwrap().read(), runs.clone()));
        }
        read_latency(&mut res, &[("reads.pg.http", &http)], &hscopes, calls).await;
        drop(server);
        app.close().await;
        admin.close().await;
        drop(db);
        for m in ["list_runs_us", "read_1000_us"] {
            if let (Some(on), Some(off)) = (
                res.0.get(&format!("reads.pg.rls_on_app_role.{m}")).and_then(|v| v["p50"].as_f64()),
                res.0.get(&format!("reads.pg.rls_off_owner.{m}")).and_then(|v| v["p50"].as_f64()),
            ) && off > 0.0
            {
                res.put(
                    &format!("ratio.reads.pg.{m}.p50.rls_on/off"),
                    json!((on / off * 100.0).round() / 100.0),
                );
            }
        }
    }

    // ---- peers (measured by benches/peers, a separate workspace) --------------------------
    if let Ok(p) = std::env::var("KAHN_BENCH_PEERS_JSON")
        && let Ok(text) = std::fs::read_to_string(&p)
    {
        let peers: Value = serde_json::from_str(&text).unwrap();
        for (name, ours) in [("sqlite-es", "sqlite"), ("postgres-es", "pg")] {
            if let Some(v) = peers.get(name) {
                let n = v["n"].as_u64().unwrap_or(0);
                res.put(&format!("peers.{name}.n{n}.first_push_tps"), v["first_push_tps"].clone());
                for m in ["push_first_tps", "append_first_tps"] {
                    if let (Some(a), Some(b)) =
                        (res.f(&format!("{ours}.n{n}.{m}")), v["first_push_tps"].as_f64())
                    {
                        res.put(
                            &format!("ratio.{ours}.n{n}.{m}/{name}"),
                            json!((a / b * 100.0).round() / 100.0),
                        );
                    }
                }
            }
        }
    }

    let out = std::env::var("KAHN_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("results.json"));
    let mut all = res.0;
    all.insert("config".into(), json!(format!("{cfg:?}")));
    std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(all)).unwrap()).unwrap();
    println!("results written to {}", out.display());
    if cfg.smoke {
        println!("bench smoke: 1 passed, 0 failed");
    }
}
