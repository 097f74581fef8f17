//! A Rust service embedding the CI bridge against a remote KAHN server: the same bridge and
//! pusher, over `HttpBackend`. The key (from `kahn bridge onboard choco`) is the CI secret.
//!
//! ```sh
//! cargo run -p kahn-cli -- serve &                          # a server on 127.0.0.1:8080
//! export KAHN_API_KEY=$(cargo run -q -p kahn-cli -- bridge onboard choco --json | jq -r .api_key)
//! cargo run --example bridge_remote -- http://127.0.0.1:8080 examples/runs/nightly-42 nightly-42
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use kahn::{ApiKey, StorageBackendExt};
use kahn_http::HttpBackend;
use kahn_push::bridge::{self, Bridge, CiContext};
use kahn_push::push::Quiet;

async fn run(url: String, dir: PathBuf, explicit_id: Option<String>) -> kahn::Result<()> {
    let key = std::env::var("KAHN_API_KEY").map_err(|_| {
        kahn::Error::Unauthorized("set KAHN_API_KEY (kahn bridge onboard choco)".into())
    })?;
    let store = HttpBackend::new(&url)?;
    let scope = store
        .resolve_api_key(&ApiKey::parse(key.trim())?)
        .await?
        .ok_or_else(|| kahn::Error::Unauthorized("the server does not know this key".into()))?;
    let bridge = Bridge::new(bridge::find_profile("choco", &[])?);
    let ci = CiContext::detect(|k| std::env::var(k).ok(), explicit_id.as_deref())?;
    let report = bridge.push(&store, &scope, &ci, &dir, 8, &Quiet).await?;
    println!(
        "pushed {} to {url}: {} appended, {} already stored",
        report.run_id,
        report.appended,
        report.already_stored + report.skipped
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "examples/runs/nightly-42".into()));
    match run(url, dir, args.next()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::FAILURE
        }
    }
}
