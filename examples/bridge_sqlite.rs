//! A Rust service embedding the CI bridge against a local SQLite file: after its job, it
//! onboards its product (idempotently) and pushes the run directory it produced, under a run
//! id derived from the CI environment — or from an explicit id outside CI.
//!
//! ```sh
//! cargo run --example bridge_sqlite -- examples/runs/nightly-42 nightly-42
//! cargo run --example bridge_sqlite -- examples/runs/nightly-42 nightly-42   # again: nothing new
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use kahn::sqlite::SqliteBackend;
use kahn::{StorageBackend, StorageBackendExt};
use kahn_push::bridge::{self, Bridge, CiContext};
use kahn_push::push::Quiet;

async fn run(dir: PathBuf, explicit_id: Option<String>) -> kahn::Result<()> {
    let store = SqliteBackend::connect("sqlite://bridge-example.db").await?;
    let bridge = Bridge::new(bridge::find_profile("choco", &[])?);

    // Onboarding is idempotent: the first call issues a key, later calls issue none. A real
    // service keeps the key as a secret; this example rotates to get a usable one each time.
    let onboarded = bridge.onboard(&store, true).await?;
    let issued =
        onboarded.issued.ok_or_else(|| kahn::Error::Unauthorized("no key issued".into()))?;
    let scope = store
        .resolve_api_key(&issued.secret)
        .await?
        .ok_or_else(|| kahn::Error::Unauthorized("the key just issued did not resolve".into()))?;

    let ci = CiContext::detect(|k| std::env::var(k).ok(), explicit_id.as_deref())?;
    let report = bridge.push(&store, &scope, &ci, &dir, 8, &Quiet).await?;
    println!(
        "{} ({}): run {} — {} appended, {} already stored, head {}",
        bridge.profile().name,
        ci.provider,
        report.run_id,
        report.appended,
        report.already_stored + report.skipped,
        report.head_hash
    );
    let summary = store.get_run(&scope.read(), &report.run_id).await?;
    println!("labels: {:?}", summary.info.labels);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "examples/runs/nightly-42".into()));
    match run(dir, args.next()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}
