//! A minimal KAHN server: SQLite (or memory) behind the HTTP API, JSON logs, graceful
//! shutdown on ctrl-c/SIGTERM. The `kahn serve` command of the CLI is the real thing; this
//! shows how little embedding takes.
//!
//! ```text
//! cargo run -p kahn-http --example serve -- [--db sqlite://kahn.db | --db memory]
//!     [--listen 127.0.0.1:8080] [--provision NAME]
//!     [--jwt-pem FILE | --jwt-jwks FILE  --issuer ISS --audience AUD]
//! ```
//!
//! `--provision NAME` creates (or gets) tenant NAME and prints a fresh API key for it. A JWT
//! key needs the issuer and the audience too (the server refuses to start without them).

use std::sync::Arc;

use kahn_core::{MemoryBackend, NewTenant, StorageBackend, StorageBackendExt};
use kahn_http::{AppState, JwtConfig, JwtKeySource, ServerConfig};

fn usage() -> ! {
    eprintln!(
        "usage: serve [--db URL|memory] [--listen ADDR] [--provision NAME] \
         [--jwt-pem FILE|--jwt-jwks FILE --issuer ISS --audience AUD]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();

    let (mut db, mut listen) = ("sqlite://kahn.db".to_owned(), "127.0.0.1:8080".to_owned());
    let (mut provision, mut key, mut issuer, mut audience) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--db" => db = value(),
            "--listen" => listen = value(),
            "--provision" => provision = Some(value()),
            "--jwt-pem" => key = Some(JwtKeySource::PemFile(value().into())),
            "--jwt-jwks" => key = Some(JwtKeySource::JwksFile(value().into())),
            "--issuer" => issuer = Some(value()),
            "--audience" => audience = Some(value()),
            _ => usage(),
        }
    }

    let backend: Arc<dyn StorageBackend> = if db == "memory" {
        Arc::new(MemoryBackend::new())
    } else {
        Arc::new(kahn_sqlite::SqliteBackend::connect(&db).await?)
    };
    if let Some(name) = provision {
        let tenant = backend.provision_tenant(&NewTenant::new(name)?).await?;
        let issued = backend.issue_api_key(tenant.id).await?;
        println!("tenant {} ({})", tenant.name, tenant.id);
        println!("api key (shown once): {}", issued.secret.expose_secret());
    }

    let mut config = ServerConfig::default();
    if let Some(key) = key {
        let mut jwt = JwtConfig::new(key);
        jwt.issuer = issuer;
        jwt.audience = audience;
        config = config.with_jwt(jwt);
    }
    let state = AppState::new(backend, config)?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    kahn_http::serve(listener, state, kahn_http::shutdown_signal()).await?;
    Ok(())
}
