//! KAHN's main job on the embedded SQLite default, start to finish: provision a tenant, push
//! a sample run, push it again, and show that the second push stored nothing new.
//!
//! ```sh
//! cargo run --example quickstart            # uses ./kahn.db
//! cargo run --example quickstart -- my.db   # or another file
//! ```

use std::process::ExitCode;

use kahn::sqlite::SqliteBackend;
use kahn::{AppendBatch, AppendReport, NewTenant, StorageBackend, StorageBackendExt};

/// A small run as a producer (an orchestrator, a CI job) would push it: run metadata with the
/// DAG, then the transitions of its three tasks.
const SAMPLE_RUN: &str = r#"{"kind":"run","run_id":"quickstart-1","source":"choco","graph":{"nodes":["plan","build","test"],"edges":[["plan","build"],["build","test"]]}}
{"run_id":"quickstart-1","seq":0,"ts":"2026-11-23T09:00:00Z","node":"plan","from":"pending","to":"running"}
{"run_id":"quickstart-1","seq":1,"ts":"2026-11-23T09:00:04Z","node":"plan","from":"running","to":"succeeded","attrs":{"duration_ms":4012}}
{"run_id":"quickstart-1","seq":2,"ts":"2026-11-23T09:00:05Z","node":"build","from":"pending","to":"running"}
{"run_id":"quickstart-1","seq":3,"ts":"2026-11-23T09:01:31Z","node":"build","from":"running","to":"succeeded","attrs":{"artifacts":["app.tar.zst"]}}
{"run_id":"quickstart-1","seq":4,"ts":"2026-11-23T09:01:32Z","node":"test","from":"pending","to":"running"}
{"run_id":"quickstart-1","seq":5,"ts":"2026-11-23T09:02:10Z","node":"test","from":"running","to":"succeeded","attrs":{"passed":412,"failed":0}}
"#;

fn print_report(label: &str, report: &AppendReport) {
    for run in &report.runs {
        println!(
            "{label}: run {} appended {} skipped {} next_seq {} head {}",
            run.run_id, run.appended, run.skipped, run.next_seq, run.head_hash
        );
    }
}

async fn run(path: &str) -> kahn::Result<()> {
    let store = SqliteBackend::connect(&format!("sqlite://{path}")).await?;
    println!("database: {path} (SQLite, WAL, schema v{})", SqliteBackend::schema_version());

    // Idempotent: a second run of this example finds the tenant it created.
    let tenant = store.provision_tenant(&NewTenant::new("quickstart")?).await?;
    let key = store.issue_api_key(tenant.id).await?;
    println!("tenant: {} ({}), API key {} issued for this run", tenant.name, tenant.id, key.id);
    let scope = store
        .resolve_api_key(&key.secret)
        .await?
        .ok_or_else(|| kahn::Error::Unauthorized("the key just issued did not resolve".into()))?;

    let batch = AppendBatch::from_ndjson(SAMPLE_RUN)?;
    let first = store.append(&scope, &batch).await?;
    print_report("push 1", &first);
    let second = store.append(&scope, &batch).await?;
    print_report("push 2", &second);
    println!(
        "second push stored {} new transitions ({} already there, confirmed by content)",
        second.appended(),
        second.skipped()
    );

    let run_id = &batch.runs()[0].run_id().clone();
    let summary = store.get_run(&scope.read(), run_id).await?;
    let head = store.verify_run(&scope.read(), run_id).await?;
    println!(
        "run {}: status {}, {} transitions, hash chain verified (head {head})",
        summary.info.run_id,
        summary.info.status,
        summary.info.transition_count()
    );
    // The example's key has done its job: revoke it, as a careful operator would.
    store.revoke_api_key(tenant.id, key.id).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let path = std::env::args().nth(1).unwrap_or_else(|| "kahn.db".to_owned());
    match run(&path).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}
