//! # KAHN
//!
//! Tamper-evident, idempotent, multi-tenant storage for orchestrator run histories.
//!
//! Producers push a run's transitions; re-pushing any chunk of a run, from any number of
//! pushers, adds nothing; content that differs from what is stored is refused, never
//! rewritten; every run is a SHA-256 hash chain. One [`StorageBackend`] trait, several
//! adapters, one conformance suite they all pass.
//!
//! This facade re-exports [`kahn_core`] and, by feature, the adapters:
//!
//! | feature | module | what it brings |
//! | --- | --- | --- |
//! | `sqlite` (default) | `sqlite` | `SqliteBackend`: embedded, zero setup, one writer thread (rusqlite, bundled SQLite) |
//! | `postgres` | `pg` | `PgBackend`: production, tenancy enforced by Row-Level Security under an app role that cannot bypass it; Citus-ready (sqlx 0.9) |
//! | `http` | `http` | the axum server (`router`, `serve`, sign-in, CORS, the viewer) and `HttpBackend`, a client that is itself a `StorageBackend` (reqwest, rustls) |
//!
//! No feature: [`kahn_core`] alone — the trait, the model, the append rules, [`MemoryBackend`].
//! The crates behind the features can also be used directly (`kahn-sqlite`, `kahn-pg`,
//! `kahn-http`); the `kahn` binary is the `kahn-cli` crate. Every crate needs Rust 1.94.
//!
//! ```no_run
//! use kahn::{AppendBatch, NewTenant, StorageBackend, StorageBackendExt};
//!
//! # async fn demo() -> kahn::Result<()> {
//! let store = kahn::sqlite::SqliteBackend::connect("sqlite://kahn.db").await?;
//! let tenant = store.provision_tenant(&NewTenant::new("choco")?).await?;
//! let key = store.issue_api_key(tenant.id).await?;
//! let scope = store.resolve_api_key(&key.secret).await?.expect("a fresh key resolves");
//! let batch = AppendBatch::from_ndjson(
//!     r#"{"run_id":"r1","seq":0,"ts":"2026-01-01T00:00:00Z","to":"running"}"#,
//! )?;
//! let report = store.append(&scope, &batch).await?;
//! # Ok(()) }
//! ```

pub use kahn_core::{
    API_KEY_PREFIX, ApiKey, ApiKeyHash, ApiKeyId, ApiKeyInfo, ApiKeyRecord, ApiKeyState,
    AppendBatch, AppendReport, BatchBuilder, ConflictAt, Cursor, DEFAULT_RETENTION_DAYS, Digest,
    Error, ErrorChain, IssuedApiKey, Labels, MemoryBackend, NdjsonLine, NewApiKey, NewTenant,
    OrgId, PurgeFailure, PurgeOutcome, PurgeReport, PurgeRequest, ReadScope, Result, RetentionDays,
    RetiredKeys, RunAppend, RunAppendReport, RunId, RunInfo, RunMeta, RunPage, RunQuery,
    RunSummary, Seq, StorageBackend, StorageBackendExt, StoredTransition, Tenant, TenantChange,
    TenantId, TenantRecord, TenantSource, TenantSummary, Transition, TransitionBody, WriteScope,
    chain_link, content_hash, is_expired, verify_chain,
};

/// The append rules as pure functions, for adapter authors.
pub use kahn_core::rules;

/// The embedded SQLite adapter.
#[cfg(feature = "sqlite")]
pub use kahn_sqlite as sqlite;

/// The Postgres adapter (Row-Level Security enforced tenancy).
#[cfg(feature = "postgres")]
pub use kahn_pg as pg;

/// The HTTP adapter: the axum server and the `HttpBackend` client.
#[cfg(feature = "http")]
pub use kahn_http as http;
