//! Peers: cqrs-es's `postgres-es` and `sqlite-es` event repositories appending the same
//! transitions as KAHN's benches (`../workload.rs`), one run = one aggregate, one
//! `persist` call per 1 MiB chunk (their API's batch: one transaction of row-by-row INSERTs).
//!
//! Usage: kahn-bench-peers --n N --reps R --out FILE [--pg URL] [--only pg|sqlite]
//! Writes `{"postgres-es": {"first_push_tps": ..}, "sqlite-es": {..}}` to FILE.

#[path = "../../workload.rs"]
mod workload;

use std::time::Instant;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::Executor;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Transition(Value);

impl DomainEvent for Transition {
    fn event_type(&self) -> String {
        "Transition".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug)]
enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}
impl std::error::Error for Never {}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Run {
    transitions: u64,
}

impl Aggregate for Run {
    const TYPE: &'static str = "run";
    type Command = ();
    type Event = Transition;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, _: (), _: &(), _: &EventSink<Self>) -> Result<(), Never> {
        Ok(())
    }

    fn apply(&mut self, _: Transition) {
        self.transitions += 1;
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// The run's events, cut into the pusher's chunks. Payloads are parsed outside the timing.
fn events(run: &str, n: u64) -> Vec<Vec<SerializedEvent>> {
    let lines: Vec<String> = (0..n).map(|s| workload::line(run, s)).collect();
    workload::chunks(&lines)
        .into_iter()
        .map(|(a, b)| {
            (a..b)
                .map(|i| SerializedEvent {
                    aggregate_id: run.to_owned(),
                    sequence: i + 1,
                    aggregate_type: Run::TYPE.to_owned(),
                    event_type: "Transition".into(),
                    event_version: "1".into(),
                    payload: serde_json::from_str(&lines[i]).expect("workload lines are JSON"),
                    metadata: json!({}),
                })
                .collect()
        })
        .collect()
}

async fn time_repo<R: PersistedEventRepository>(repo: &R, n: u64, rep: usize) -> f64 {
    let run = format!("peer-run-{rep:03}");
    let chunks = events(&run, n);
    let start = Instant::now();
    for chunk in &chunks {
        repo.persist::<Run>(chunk, None).await.expect("persist");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = arg("--n").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let reps: usize = arg("--reps").and_then(|v| v.parse().ok()).unwrap_or(3);
    let out = arg("--out").unwrap_or_else(|| "peers.json".into());
    let only = arg("--only");
    let pg_base = arg("--pg").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".into());
    let mut report = serde_json::Map::new();

    if only.as_deref() != Some("pg") {
        let dir = std::env::temp_dir().join(format!("kahn-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("events.db");
        // The same durability settings as kahn-sqlite: WAL, synchronous FULL.
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .disable_statement_logging();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .expect("sqlite pool");
        pool.execute(include_str!("sqlite_init.sql")).await.expect("sqlite schema");
        let repo = sqlite_es::SqliteEventRepository::new(pool.clone());
        let mut tps = Vec::new();
        for rep in 0..reps {
            tps.push(time_repo(&repo, n, rep).await);
        }
        report.insert("sqlite-es".into(), summary(&mut tps, n));
        pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    if only.as_deref() != Some("sqlite") {
        let db = format!("kahn_peers_{}", std::process::id());
        let admin = sqlx::PgPool::connect(&format!("{pg_base}/postgres")).await.expect("pg admin");
        admin.execute(format!("DROP DATABASE IF EXISTS {db}").as_str()).await.expect("drop");
        admin.execute(format!("CREATE DATABASE {db}").as_str()).await.expect("create");
        let opts: sqlx::postgres::PgConnectOptions =
            format!("{pg_base}/{db}").parse().expect("pg url");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts.disable_statement_logging())
            .await
            .expect("pg pool");
        pool.execute(include_str!("pg_init.sql")).await.expect("pg schema");
        let repo = postgres_es::PostgresEventRepository::new(pool.clone());
        let mut tps = Vec::new();
        for rep in 0..reps {
            tps.push(time_repo(&repo, n, rep).await);
        }
        report.insert("postgres-es".into(), summary(&mut tps, n));
        pool.close().await;
        let _ = admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await;
    }

    let text = serde_json::to_string_pretty(&Value::Object(report)).expect("json");
    std::fs::write(&out, &text).expect("write report");
    println!("{text}");
}

fn summary(tps: &mut [f64], n: u64) -> Value {
    let all = tps.to_vec();
    json!({"n": n, "first_push_tps": workload::median(tps), "samples": all})
}
