//! Criterion: the cost of one 1 MiB chunk (~3,400 transitions) on kahn-sqlite — parsing it
//! into a batch (validation, RFC 8785 canonicalisation, hashing), appending it to a new run,
//! appending it again (all duplicate), and the same rows as plain prepared INSERTs.
//!
//! `cargo bench --bench append`; under `cargo test --benches` criterion runs each once.

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "wire.rs"]
mod wire;
#[path = "workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kahn_core::{AppendBatch, NewTenant, StorageBackend, StorageBackendExt, WriteScope};
use kahn_sqlite::{SqliteBackend, SqliteOptions};

/// One chunk's wire NDJSON for `run` (run_id and seq on each line, as the pusher sends).
fn chunk_text(run: &str) -> (String, u64) {
    let lines: Vec<String> = (0..5000).map(|s| workload::line(run, s)).collect();
    let (a, b) = workload::chunks(&lines)[0];
    (wire::text(run, 0..(b - a) as u64), (b - a) as u64)
}

fn bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        rt.block_on(SqliteBackend::open(SqliteOptions::file(dir.path().join("k.db")))).unwrap();
    let scope: WriteScope = rt.block_on(async {
        let t = store.provision_tenant(&NewTenant::new("crit").unwrap()).await.unwrap();
        let k = store.issue_api_key(t.id).await.unwrap();
        store.resolve_api_key(&k.secret).await.unwrap().unwrap()
    });
    let (text, n) = chunk_text("crit-run");
    let mut g = c.benchmark_group("sqlite_1mib_chunk");
    g.throughput(Throughput::Elements(n)).sample_size(10).measurement_time(Duration::from_secs(5));

    g.bench_function("parse_batch", |b| b.iter(|| AppendBatch::from_ndjson(&text).unwrap()));

    let mut fresh = 0u64;
    g.bench_function("append_first", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fresh += 1;
                let batch =
                    AppendBatch::from_ndjson(&chunk_text(&format!("crit-{fresh}")).0).unwrap();
                let t = Instant::now();
                rt.block_on(store.append(&scope, &batch)).unwrap();
                total += t.elapsed();
            }
            total
        })
    });

    let batch = AppendBatch::from_ndjson(&text).unwrap();
    rt.block_on(store.append(&scope, &batch)).unwrap();
    g.bench_function("append_duplicate", |b| {
        b.iter(|| rt.block_on(store.append(&scope, &batch)).unwrap())
    });

    let rows: Vec<(String, [u8; 32])> = batch.runs()[0]
        .bodies()
        .iter()
        .map(|b| (b.canonical_json().to_owned(), *b.content_hash().as_bytes()))
        .collect();
    let mut conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA cache_size = -16000;
         CREATE TABLE transitions (tenant_id BLOB NOT NULL, run_id TEXT NOT NULL,
            seq INTEGER NOT NULL CHECK (seq >= 0), body TEXT NOT NULL, content_hash BLOB NOT NULL,
            chain_hash BLOB NOT NULL, PRIMARY KEY (tenant_id, run_id, seq)) STRICT, WITHOUT ROWID;",
    )
    .unwrap();
    let mut run = 0u64;
    g.bench_function("raw_insert", |b| {
        b.iter(|| {
            run += 1;
            let tx = conn.transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO transitions VALUES (x'00', ?1, ?2, ?3, ?4, ?4)")
                    .unwrap();
                for (seq, (body, h)) in rows.iter().enumerate() {
                    st.execute(rusqlite::params![format!("r{run}"), seq as i64, body, &h[..]])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
