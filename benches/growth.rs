//! Cost as work grows (issue 14, item 4): list and read latency as one tenant grows through
//! 1k, 10k and 100k runs among 100 tenants, on plain Postgres and on Citus; ingest
//! transitions/s on each; ingest through 1, 2 and 3 `kahn serve` processes.
//!
//! `cargo bench -p kahn --bench growth` runs it in full (after `cargo build --release -p
//! kahn-cli --bin kahn`); `cargo test -p kahn --bench growth` (no `--bench` argument) runs the
//! same code on a tiny workload as a smoke test, and so does `KAHN_BENCH_SMOKE=1`. Numbers are
//! printed and written as JSON (`KAHN_BENCH_OUT`, default `target/bench/growth.json`); nothing
//! is asserted about them. BENCHMARKS.md, "Growth", says what each figure means.
//!
//! Per target (a fresh database given by its admin connection): 100 tenants are provisioned;
//! the measured tenant (`grow-0`) grows in place through the steps, and at each step every
//! other tenant holds `step / KAHN_GROWTH_OTHERS_DIV` runs, so the table's total rows grow
//! with the step too. Runs carry `KAHN_GROWTH_PER_RUN` transitions of the suite's workload,
//! each run a second newer than the one loaded before it (distinct activity times, as real
//! runs have), appended through `PgBackend::append` as `kahn_app` in batches of many runs by
//! a few concurrent appenders. After each step's load: `VACUUM ANALYZE` (what autovacuum would
//! have done by then), then latency samples of `list_runs` (the first page of 50, and the page
//! after the tenant's middle run: a deep cursor), `read_transitions` (first page of one run,
//! runs spread over the tenant), directly and through a real `kahn serve` over HTTP, and the
//! `EXPLAIN ANALYZE` of the listing as the adapter runs it.
//!
//! Sections (`KAHN_BENCH_ONLY`): `growth` (the above, per target), `ingest` (the same append
//! workload on every target, interleaved round by round, for the Citus/Postgres ratio) and
//! `servers` (ingest through 1, 2, 3 `kahn serve` processes connecting to Postgres directly
//! and through a transaction-pooling pgbouncer, interleaved).

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use kahn_core::{
    AppendBatch, Cursor, NewTenant, ReadScope, RunId, RunQuery, StorageBackend, StorageBackendExt,
    TransitionBody, WriteScope, parse_json_object,
};
use kahn_http::HttpBackend;
use kahn_pg::PgBackend;
use kahn_testkit::{KahnServer, PgBouncer, ServerStderr, TestDb, kahn_bin};
use serde_json::{Map, Value, json};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use tokio::sync::mpsc;

/// Sizes of one run.
#[derive(Clone, Debug)]
struct Config {
    smoke: bool,
    /// The measured tenant's runs at each step (grown in place).
    steps: Vec<u64>,
    /// Tenants in the store, the measured one included.
    tenants: u64,
    /// Every other tenant holds `step / others_div` runs at each step.
    others_div: u64,
    /// Transitions per run.
    per_run: u64,
    /// Runs per append batch.
    batch_runs: u64,
    /// Appends in flight at once while loading.
    appenders: usize,
    /// Latency samples per figure.
    samples: usize,
    /// Targets, in order: `pg`, `citus`.
    targets: Vec<String>,
    /// Server counts for the ingest-through-servers figure.
    servers: Vec<usize>,
    /// Runs pushed per server-count figure (spread over `server_clients` clients and tenants).
    server_runs: u64,
    /// Concurrent HTTP clients in the ingest-through-servers figure, whatever the server count.
    server_clients: usize,
}

impl Config {
    fn from_env() -> Self {
        let smoke = std::env::var("KAHN_BENCH_SMOKE").is_ok_and(|v| v != "0")
            || !std::env::args().any(|a| a == "--bench");
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let list = |k: &str, d: &str| -> Vec<String> {
            std::env::var(k)
                .unwrap_or_else(|_| d.to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let nums = |k: &str, d: &str| -> Vec<u64> {
            list(k, d).iter().map(|s| s.parse().expect("a list of numbers")).collect()
        };
        if smoke {
            return Self {
                smoke,
                steps: vec![40, 120],
                tenants: 3,
                others_div: 10,
                per_run: 3,
                batch_runs: 25,
                appenders: 2,
                samples: 8,
                targets: list("KAHN_GROWTH_TARGETS", "pg"),
                servers: vec![1, 2],
                server_runs: 60,
                server_clients: 2,
            };
        }
        Self {
            smoke,
            steps: nums("KAHN_GROWTH_STEPS", "1000,10000,100000"),
            tenants: num("KAHN_GROWTH_TENANTS", 100),
            others_div: num("KAHN_GROWTH_OTHERS_DIV", 10).max(1),
            per_run: num("KAHN_GROWTH_PER_RUN", 3).max(1),
            batch_runs: num("KAHN_GROWTH_BATCH_RUNS", 500).max(1),
            appenders: num("KAHN_GROWTH_APPENDERS", 4).max(1) as usize,
            samples: num("KAHN_GROWTH_SAMPLES", 300).max(1) as usize,
            targets: list("KAHN_GROWTH_TARGETS", "pg,citus"),
            servers: nums("KAHN_GROWTH_SERVERS", "1,2,3").into_iter().map(|n| n as usize).collect(),
            server_runs: num("KAHN_GROWTH_SERVER_RUNS", 60_000),
            server_clients: num("KAHN_GROWTH_SERVER_CLIENTS", 6).max(1) as usize,
        }
    }
}

/// Results, keyed `section.name`, written as JSON at the end.
#[derive(Default)]
struct Results(Map<String, Value>);

impl Results {
    fn put(&mut self, key: &str, v: Value) {
        println!("{key:<56} {v}");
        self.0.insert(key.to_owned(), v);
    }
    fn p50(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(|v| v.get("p50").or(Some(v))).and_then(Value::as_f64)
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p99 of latency samples in µs, rounded.
fn summary(mut xs: Vec<f64>) -> Value {
    xs.sort_by(f64::total_cmp);
    json!({"p50": pct(&xs, 0.5).round(), "p99": pct(&xs, 0.99).round(), "n": xs.len()})
}

/// The store under test: its admin backend, its app backend (`kahn_app`, through the startup
/// check), the app DSN `kahn serve` runs with, and the database (dropped at the end).
struct Target {
    name: String,
    admin: PgBackend,
    app: PgBackend,
    /// The app role on a pool of one connection, whose prepared statements can be read back.
    one: PgBackend,
    app_url: String,
    db: TestDb,
}

impl Target {
    /// A fresh, migrated database on `name`: `pg`, the test server; `citus`, the local
    /// cluster, where the migration distributes the tables (the test kit checks it did).
    async fn new(name: &str) -> Self {
        let on = match name {
            "pg" => kahn_testkit::Target::Postgres,
            "citus" => kahn_testkit::Target::Citus,
            other => panic!("KAHN_GROWTH_TARGETS: unknown target {other:?} (pg, citus)"),
        };
        let (db, admin) = TestDb::new_on(on).await;
        let app = db.app().await;
        let one = db.app_as(kahn_pg::APP_ROLE, 1).await.unwrap();
        let app_url = db.url_as_app();
        Self { name: name.to_owned(), admin, app, one, app_url, db }
    }

    async fn close(&self) {
        self.one.close().await;
        self.app.close().await;
        self.admin.close().await;
    }
}

/// The run id of a tenant's `i`-th run.
fn run_id(tenant: u64, i: u64) -> String {
    format!("t{tenant}-r{i:07}")
}

fn epoch() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

/// A batch's NDJSON: runs `runs` of `tenant`, `per_run` transitions each, the workload's
/// bodies with `ts` moved to the run's own time (`order` = the run's load order, in seconds
/// after 2026-01-01, plus 50 ms per seq).
fn batch_text(tenant: u64, runs: &[(u64, u64)], per_run: u64) -> String {
    let mut out = String::with_capacity(runs.len() * per_run as usize * 360);
    for &(i, order) in runs {
        let run = run_id(tenant, i);
        let id = RunId::new(&run).unwrap();
        for seq in 0..per_run {
            let mut fields = parse_json_object(&workload::line(&run, seq)).unwrap();
            let ts = epoch()
                + TimeDelta::seconds(order as i64)
                + TimeDelta::milliseconds(seq as i64 * 50);
            fields.insert(
                "ts".into(),
                Value::String(ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
            let body = TransitionBody::new(fields).unwrap();
            kahn_core::ndjson::write_transition(&mut out, &id, seq, &body);
        }
    }
    out
}

/// One tenant of the store: its write scope, API key and how many runs it holds.
struct Tenant {
    scope: WriteScope,
    key: String,
    runs: u64,
}

async fn provision(admin: &PgBackend, app: &PgBackend, prefix: &str, n: u64) -> Vec<Tenant> {
    let mut out = Vec::with_capacity(n as usize);
    for t in 0..n {
        let tenant = admin
            .provision_tenant(&NewTenant::new(format!("{prefix}-{t}")).unwrap())
            .await
            .unwrap();
        let key = admin.issue_api_key(tenant.id).await.unwrap();
        let scope = app.resolve_api_key(&key.secret).await.unwrap().unwrap();
        out.push(Tenant { scope, key: key.secret.expose_secret().to_owned(), runs: 0 });
    }
    out
}

/// One batch to append: the tenant's index and its runs as (run index, load order).
type Work = (u64, Vec<(u64, u64)>);

/// Grows every tenant to its size at `step`, batches built on a blocking thread one ahead of
/// `appenders` concurrent appends. Returns (transitions appended, seconds).
async fn load_step(
    store: &PgBackend,
    tenants: &mut [Tenant],
    step: u64,
    cfg: &Config,
    order: &mut u64,
) -> (u64, f64) {
    // The work: every tenant's missing runs, cut into batches, interleaved across tenants
    // (tenant after tenant, one batch each) so activity times interleave as real traffic's do.
    let mut queues: Vec<Vec<Work>> = Vec::new();
    for (t, tenant) in tenants.iter_mut().enumerate() {
        let want = if t == 0 { step } else { step / cfg.others_div };
        let mut q = Vec::new();
        let mut i = tenant.runs;
        while i < want {
            let end = (i + cfg.batch_runs).min(want);
            q.push((t as u64, (i..end).map(|r| (r, 0)).collect::<Vec<_>>()));
            i = end;
        }
        tenant.runs = tenant.runs.max(want);
        q.reverse();
        queues.push(q);
    }
    let mut work = Vec::new();
    loop {
        let mut any = false;
        for q in &mut queues {
            if let Some((t, mut runs)) = q.pop() {
                for r in &mut runs {
                    r.1 = *order;
                    *order += 1;
                }
                work.push((t, runs));
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    let per_run = cfg.per_run;
    let (tx, rx) = mpsc::channel::<(u64, AppendBatch)>(cfg.appenders * 2);
    let producer = tokio::task::spawn_blocking(move || {
        for (t, runs) in work {
            let batch = AppendBatch::from_ndjson(&batch_text(t, &runs, per_run)).unwrap();
            if tx.blocking_send((t, batch)).is_err() {
                return;
            }
        }
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let scopes: Arc<Vec<WriteScope>> = Arc::new(tenants.iter().map(|t| t.scope.clone()).collect());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.appenders {
        let (rx, scopes, store) = (rx.clone(), scopes.clone(), store.clone());
        tasks.spawn(async move {
            let mut appended = 0;
            loop {
                let next = rx.lock().await.recv().await;
                let Some((t, batch)) = next else { break };
                appended += store.append(&scopes[t as usize], &batch).await.unwrap().appended();
            }
            appended
        });
    }
    let mut appended = 0;
    while let Some(n) = tasks.join_next().await {
        appended += n.unwrap();
    }
    producer.await.unwrap();
    (appended, start.elapsed().as_secs_f64())
}

/// A deterministic pseudo-random sequence (splitmix64), for choosing runs to read.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// Latency (µs) of the three reads on each of `stores`, `samples` times, interleaved call by
/// call (the store that goes first alternates), so neither gets a warmer cache.
async fn read_latency(
    res: &mut Results,
    prefix: &str,
    stores: &[(&str, &dyn StorageBackend, ReadScope)],
    runs: u64,
    deep: &Cursor,
    samples: usize,
) {
    let ops = ["list_first50", "list_deep50", "read_first_page"];
    let mut lat: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    let mut rng = Rng(runs);
    let first = RunQuery { limit: 50, ..RunQuery::default() };
    let deep_q = RunQuery { limit: 50, cursor: Some(deep.clone()), ..RunQuery::default() };
    for i in 0..samples {
        let run = RunId::new(run_id(0, rng.below(runs))).unwrap();
        for k in 0..stores.len() {
            let which = (k + i) % stores.len();
            let (_, store, scope) = &stores[which];
            for (o, _) in ops.iter().enumerate() {
                let t = Instant::now();
                match o {
                    0 => {
                        let page = store.list_runs(scope, &first).await.unwrap();
                        assert_eq!(page.runs.len(), 50.min(runs as usize));
                    }
                    1 => {
                        let page = store.list_runs(scope, &deep_q).await.unwrap();
                        assert!(page.runs.len() <= 50);
                    }
                    _ => {
                        let rows = store.read_transitions(scope, &run, None, 1000).await.unwrap();
                        assert!(!rows.is_empty());
                    }
                }
                lat.entry((which, o)).or_default().push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    for ((which, o), xs) in lat {
        res.put(&format!("{prefix}.{}.{}_us", stores[which].0, ops[o]), summary(xs));
    }
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the listing (first page, or after `cursor`) as the app role
/// inside the adapter's own read transaction (tenant and plan_cache_mode set as it sets them),
/// with the values bound. The statement is the adapter's own: `one` (a pool of one connection)
/// lists once, and its text is read back from `pg_prepared_statements`. Returns the plan.
async fn explain_list(one: &PgBackend, scope: &ReadScope, cursor: Option<&Cursor>) -> Vec<String> {
    let q = RunQuery { limit: 50, cursor: cursor.cloned(), ..RunQuery::default() };
    one.list_runs(scope, &q).await.unwrap();
    let mut tx = one.read_transaction(scope).await.unwrap();
    let sql: String = query(
        "SELECT statement FROM pg_catalog.pg_prepared_statements \
         WHERE statement LIKE 'SELECT run_id, source, labels, %FROM kahn.runs%ORDER BY activity_at%'",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("the listing is a prepared statement of the one connection")
    .get("statement");
    let rows = query(AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS) {sql}")))
        .bind(scope.tenant().as_uuid())
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(cursor.map(|c| {
            DateTime::<Utc>::from_timestamp_micros(c.activity_micros()).expect("a cursor time")
        }))
        .bind(cursor.map(|c| c.run_id().as_str().to_owned()))
        .bind(51_i64)
        .bind(None::<String>)
        .bind(None::<String>)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.iter().map(|r| r.get::<String, _>(0)).collect()
}

/// The plan's top scan and its execution time, for the JSON; the whole plan is printed.
fn plan_value(label: &str, lines: &[String]) -> Value {
    println!("---- {label}");
    for l in lines {
        println!("  {l}");
    }
    let exec = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("Execution Time: "))
        .and_then(|s| s.trim_end_matches(" ms").parse::<f64>().ok());
    let scans: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("Scan") || l.contains("Sort") || l.contains("Custom Scan"))
        .map(|l| l.trim().trim_start_matches("-> ").split("  (").next().unwrap_or(""))
        .collect();
    json!({"execution_ms": exec, "nodes": scans})
}

/// The machine's load average (1, 5, 15 min), to show what else ran beside a figure.
fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// `(runs, transitions)` in the whole store.
async fn totals(admin: &PgBackend) -> (i64, i64) {
    let row = query(
        "SELECT (SELECT count(*) FROM kahn.runs) AS runs, \
                (SELECT count(*) FROM kahn.transitions) AS transitions",
    )
    .fetch_one(admin.pool())
    .await
    .unwrap();
    (row.get("runs"), row.get("transitions"))
}

/// `kahn serve` over `db` on a free loopback port; per-tenant ingest limits raised so the
/// figures measure the servers and the database, not the rate limiter. Killed on drop.
fn serve(db: &str) -> KahnServer {
    KahnServer::builder(kahn_bin())
        .db(db)
        .env("KAHN_INGEST_RATE", "1000000")
        .env("KAHN_MAX_INGESTS_IN_FLIGHT", "64")
        .env("KAHN_LOG", "warn")
        .retention_timer(false)
        .stderr(ServerStderr::Inherit)
        .start()
}

/// The growth of one target: load, measure, grow, measure.
async fn grow(res: &mut Results, cfg: &Config, target: &Target) {
    let name = &target.name;
    let t0 = Instant::now();
    let mut tenants = provision(&target.admin, &target.app, "grow", cfg.tenants).await;
    let server = serve(&target.app_url);
    let http = HttpBackend::new(server.url()).unwrap();
    let http_scope = http
        .resolve_api_key(&kahn_core::ApiKey::parse(&tenants[0].key).unwrap())
        .await
        .unwrap()
        .unwrap()
        .read();
    let scope = tenants[0].scope.read();
    let mut order = 0;
    for &step in &cfg.steps {
        let prefix = format!("growth.{name}.runs{step}");
        let (appended, secs) = load_step(&target.app, &mut tenants, step, cfg, &mut order).await;
        res.put(&format!("{prefix}.load_transitions"), json!(appended));
        res.put(&format!("{prefix}.load_secs"), json!((secs * 10.0).round() / 10.0));
        res.put(&format!("{prefix}.ingest_tps"), json!((appended as f64 / secs).round()));
        res.put(&format!("{prefix}.loadavg_after_load"), loadavg());
        let v = Instant::now();
        query(AssertSqlSafe("VACUUM ANALYZE".to_owned()))
            .execute(target.admin.pool())
            .await
            .unwrap();
        res.put(&format!("{prefix}.vacuum_analyze_secs"), json!(v.elapsed().as_secs()));
        let (runs, transitions) = totals(&target.admin).await;
        res.put(&format!("{prefix}.total_runs"), json!(runs));
        res.put(&format!("{prefix}.total_transitions"), json!(transitions));

        // The cursor after the tenant's middle run (by activity): a page half-way down.
        let middle = RunId::new(run_id(0, step / 2)).unwrap();
        let deep = Cursor::after(&target.app.get_run(&scope, &middle).await.unwrap().info);
        let plan = explain_list(&target.one, &scope, None).await;
        res.put(&format!("{prefix}.explain_first50"), plan_value(&prefix, &plan));
        let plan = explain_list(&target.one, &scope, Some(&deep)).await;
        res.put(&format!("{prefix}.explain_deep50"), plan_value(&prefix, &plan));

        let stores: [(&str, &dyn StorageBackend, ReadScope); 2] =
            [("direct", &target.app, scope.clone()), ("http", &http, http_scope.clone())];
        // A short warm-up, discarded, then the samples.
        read_latency(&mut Results::default(), &prefix, &stores, step, &deep, cfg.samples / 10 + 1)
            .await;
        read_latency(res, &prefix, &stores, step, &deep, cfg.samples).await;
        println!("  ({name}, {step} runs: {:.0} s so far)", t0.elapsed().as_secs_f64());
    }
    drop(server);
}

/// Ingest through `servers` `kahn serve` processes on `app_url` (the database directly, or a
/// pooler in front of it): `cfg.server_clients` concurrent HTTP clients, client `c` writing
/// tenant `c` through server `c % servers`, batches pre-built. Transitions/s over the wall.
async fn ingest_servers(
    label: &str,
    target: &Target,
    app_url: &str,
    servers: usize,
    cfg: &Config,
) -> f64 {
    let procs: Vec<KahnServer> = (0..servers).map(|_| serve(app_url)).collect();
    let tenants = provision(
        &target.admin,
        &target.app,
        &format!("{label}-x{servers}"),
        cfg.server_clients as u64,
    )
    .await;
    let per_client = cfg.server_runs / cfg.server_clients as u64;
    let mut clients = Vec::new();
    for (c, tenant) in tenants.iter().enumerate() {
        let http = HttpBackend::new(procs[c % servers].url()).unwrap();
        let scope = http
            .resolve_api_key(&kahn_core::ApiKey::parse(&tenant.key).unwrap())
            .await
            .unwrap()
            .unwrap();
        let batches: Vec<AppendBatch> = (0..per_client)
            .step_by(cfg.batch_runs as usize)
            .map(|i| {
                let runs: Vec<(u64, u64)> =
                    (i..(i + cfg.batch_runs).min(per_client)).map(|r| (r, r)).collect();
                AppendBatch::from_ndjson(&batch_text(c as u64, &runs, cfg.per_run)).unwrap()
            })
            .collect();
        clients.push((http, scope, batches));
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (http, scope, batches) in clients {
        tasks.spawn(async move {
            let mut n = 0;
            for b in &batches {
                n += http.append(&scope, b).await.unwrap().appended();
            }
            n
        });
    }
    let mut appended = 0;
    while let Some(n) = tasks.join_next().await {
        appended += n.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(appended, per_client * cfg.server_clients as u64 * cfg.per_run);
    drop(procs);
    appended as f64 / secs
}

/// Ingest through 1, 2, 3… servers on each of `routes` (a label and the DSN the servers
/// connect with: the database's own, or a pooler's in front of it), `reps` rounds, every
/// (route, server count) once per round in an order that rotates each round; the median per
/// figure, its ratio to the first server count, and each route's ratio to the first route.
async fn servers_section(
    res: &mut Results,
    target: &Target,
    routes: &[(&str, String)],
    cfg: &Config,
) {
    let reps = if cfg.smoke { 1 } else { 3 };
    let combos: Vec<(usize, usize)> =
        (0..routes.len()).flat_map(|r| (0..cfg.servers.len()).map(move |n| (r, n))).collect();
    let mut tps = vec![Vec::new(); combos.len()];
    for rep in 0..reps {
        for k in 0..combos.len() {
            let i = (k + rep) % combos.len();
            let (r, n) = combos[i];
            let name = format!("srv-r{rep}-{}", routes[r].0);
            tps[i].push(ingest_servers(&name, target, &routes[r].1, cfg.servers[n], cfg).await);
        }
    }
    let key = |r: usize, n: usize| {
        format!("servers.pg.{}.servers{}.ingest_tps", routes[r].0, cfg.servers[n])
    };
    for (i, &(r, n)) in combos.iter().enumerate() {
        let samples: Vec<f64> = tps[i].iter().map(|x| x.round()).collect();
        let median = workload::median(&mut tps[i]).round();
        res.put(&key(r, n), json!({"p50": median, "samples": samples}));
    }
    for (r, (route, _)) in routes.iter().enumerate() {
        for n in 1..cfg.servers.len() {
            let label = format!(
                "ratio.servers.pg.{route}.servers{}/servers{}",
                cfg.servers[n], cfg.servers[0]
            );
            ratio(res, &label, &key(r, n), &key(r, 0));
        }
    }
    for r in 1..routes.len() {
        for n in 0..cfg.servers.len() {
            let label = format!(
                "ratio.servers.pg.servers{}.{}/{}",
                cfg.servers[n], routes[r].0, routes[0].0
            );
            ratio(res, &label, &key(r, n), &key(0, n));
        }
    }
}

/// Ingest on every target, interleaved: `reps` rounds, each appending the same workload to
/// each target in turn (the first alternating), `appenders` tenants growing by `ab_runs` runs
/// each per round. Transitions/s per round; the median is reported. Interleaving keeps a
/// drift in the machine's other load from landing on one target only.
async fn ingest_ab(res: &mut Results, cfg: &Config, targets: &[Target], reps: usize, ab_runs: u64) {
    let mut tenants = Vec::new();
    for t in targets {
        tenants.push(provision(&t.admin, &t.app, "ab", cfg.appenders as u64).await);
    }
    let cfg = Config { others_div: 1, ..cfg.clone() };
    let mut tps = vec![Vec::new(); targets.len()];
    let mut order = vec![0; targets.len()];
    for rep in 0..reps {
        for k in 0..targets.len() {
            let i = (k + rep) % targets.len();
            let step = (rep as u64 + 1) * ab_runs;
            let (n, secs) =
                load_step(&targets[i].app, &mut tenants[i], step, &cfg, &mut order[i]).await;
            tps[i].push(n as f64 / secs);
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let mut xs = tps[i].clone();
        let median = workload::median(&mut xs).round();
        let samples: Vec<f64> = tps[i].iter().map(|x| x.round()).collect();
        res.put(&format!("ingest_ab.{}.tps", t.name), json!({"p50": median, "samples": samples}));
    }
}

fn ratio(res: &mut Results, key: &str, num: &str, den: &str) {
    if let (Some(a), Some(b)) = (res.p50(num), res.p50(den))
        && b > 0.0
    {
        res.put(key, json!((a / b * 100.0).round() / 100.0));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    kahn_http::install_crypto_provider();
    let cfg = Config::from_env();
    println!("kahn growth bench ({}): {cfg:?}", if cfg.smoke { "smoke" } else { "full" });
    let mut res = Results::default();
    res.put("loadavg_at_start", loadavg());
    let only = std::env::var("KAHN_BENCH_ONLY").unwrap_or_default();
    let want = |s: &str| only.is_empty() || only.split(',').any(|o| o == s);

    if want("growth") {
        for name in &cfg.targets {
            let target = Target::new(name).await;
            grow(&mut res, &cfg, &target).await;
            target.close().await;
        }
        let base = cfg.steps[0];
        for name in &cfg.targets {
            for &step in &cfg.steps[1..] {
                for via in ["direct", "http"] {
                    for op in ["list_first50", "list_deep50", "read_first_page"] {
                        for p in ["p50", "p99"] {
                            let key = |s: u64| format!("growth.{name}.runs{s}.{via}.{op}_us");
                            if let (Some(a), Some(b)) = (
                                res.0.get(&key(step)).and_then(|v| v[p].as_f64()),
                                res.0.get(&key(base)).and_then(|v| v[p].as_f64()),
                            ) && b > 0.0
                            {
                                res.put(
                                    &format!(
                                        "ratio.growth.{name}.{via}.{op}.{p}.runs{step}/runs{base}"
                                    ),
                                    json!((a / b * 100.0).round() / 100.0),
                                );
                            }
                        }
                    }
                }
            }
        }
        if cfg.targets.len() > 1 {
            let (a, b) = (&cfg.targets[1], &cfg.targets[0]);
            for &step in &cfg.steps {
                ratio(
                    &mut res,
                    &format!("ratio.growth.ingest_tps.runs{step}.{a}/{b}"),
                    &format!("growth.{a}.runs{step}.ingest_tps"),
                    &format!("growth.{b}.runs{step}.ingest_tps"),
                );
            }
        }
    }

    if want("ingest") && cfg.targets.len() > 1 {
        let mut targets = Vec::new();
        for name in &cfg.targets {
            targets.push(Target::new(name).await);
        }
        let (reps, runs) = if cfg.smoke { (2, 20) } else { (7, 2500) };
        res.put("ingest_ab.loadavg_before", loadavg());
        ingest_ab(&mut res, &cfg, &targets, reps, runs).await;
        res.put("ingest_ab.loadavg_after", loadavg());
        let (a, b) = (&cfg.targets[1], &cfg.targets[0]);
        ratio(
            &mut res,
            &format!("ratio.ingest_ab.tps.{a}/{b}"),
            &format!("ingest_ab.{a}.tps"),
            &format!("ingest_ab.{b}.tps"),
        );
        for t in &targets {
            t.close().await;
        }
    }

    if want("servers") {
        let target = Target::new("pg").await;
        // The servers connect to Postgres directly, and through a transaction-pooling
        // pgbouncer in front of it (scripts/ensure-pgbouncer.sh installs the binary).
        let bouncer = PgBouncer::start(&target.db.admin_options());
        let routes = [
            ("direct", target.app_url.clone()),
            ("pgbouncer", bouncer.url_as(&target.db.name, kahn_pg::APP_ROLE)),
        ];
        res.put("servers.loadavg_before", loadavg());
        servers_section(&mut res, &target, &routes, &cfg).await;
        res.put("servers.loadavg_after", loadavg());
        target.close().await;
        drop(bouncer);
    }

    let out = std::env::var("KAHN_BENCH_OUT").map(PathBuf::from).unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let dir = target.join("bench");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(if cfg.smoke { "growth-smoke.json" } else { "growth.json" })
    });
    let mut all = res.0;
    all.insert("config".into(), json!(format!("{cfg:?}")));
    std::fs::write(&out, serde_json::to_string_pretty(&Value::Object(all)).unwrap()).unwrap();
    println!("results written to {}", out.display());
    if cfg.smoke {
        println!("bench smoke: 1 passed, 0 failed");
    }
}
