//! # kahn-core
//!
//! The heart of KAHN: domain types validated at construction, canonical content hashing and
//! the per-run hash chain, the [`StorageBackend`] trait every adapter implements, the one
//! [`Error`] type they all convert into, the RFC 9162 Merkle tree and its inclusion and
//! consistency proofs behind tenants' signed checkpoints ([`merkle`]), the checkpoints' leaf
//! log, signing and audit ([`checkpoint`]), and — behind the `conformance` feature — the
//! shared conformance suite every adapter's tests run.
//!
//! Architecture invariant: this crate depends on no database driver, web framework or HTTP
//! client. Adapters (`kahn-sqlite`, `kahn-pg`, `kahn-http`) depend on it, never the reverse.
//!
//! ```
//! use kahn_core::{AppendBatch, MemoryBackend, NewTenant, StorageBackend, StorageBackendExt};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryBackend::new();
//! let tenant = store.provision_tenant(&NewTenant::new("choco")?).await?;
//! let key = store.issue_api_key(tenant.id).await?;
//! let scope = store.resolve_api_key(&key.secret).await?.expect("a fresh key resolves");
//!
//! let ndjson = r#"{"run_id":"r1","seq":0,"ts":"2026-01-01T00:00:00Z","to":"running"}"#;
//! let batch = AppendBatch::from_ndjson(ndjson)?;
//! let first = store.append(&scope, &batch).await?;
//! let again = store.append(&scope, &batch).await?;
//! assert_eq!((first.runs[0].appended, again.runs[0].skipped), (1, 1));
//! # Ok::<(), kahn_core::Error>(())
//! # }).unwrap();
//! ```

mod admin;
mod backend;
mod batch;
pub mod checkpoint;
mod error;
mod hash;
mod id;
mod memory;
pub mod merkle;
mod model;
pub mod ndjson;
mod progress_cache;
pub mod receipt;
pub mod rules;
mod scope;
mod secret;
mod shared;
mod status;
mod transition;
mod wire_read;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use admin::{
    ApiKeyRecord, KeyUseThrottle, MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, NewApiKey, PurgeFailure,
    PurgeOutcome, PurgeRequest, RetentionDays, RetiredKeys, TenantChange, TenantRecord, is_expired,
};
pub use backend::{StorageBackend, StorageBackendExt};
pub use batch::{
    AppendBatch, BatchBuilder, LineReader, NdjsonLine, RunAppend, parse_json, parse_json_object,
};
pub use error::{BoxError, ConflictAt, Error, ErrorChain, Result};
pub use hash::{ChainVerifier, Digest, chain_link, content_hash, verify_chain};
pub use id::{ApiKeyId, OrgId, RUN_ID_MAX_LEN, RunId, Seq, TenantId};
pub use memory::MemoryBackend;
pub use model::{
    ApiKeyInfo, ApiKeyState, AppendReport, Cursor, DEFAULT_PAGE_SIZE, DEFAULT_RETENTION_DAYS,
    IssuedApiKey, KEY_USE_RECORD_INTERVAL, MAX_CURSOR_MICROS, MAX_PAGE_SIZE, MIN_CURSOR_MICROS,
    NewTenant, PERSONAL_TENANT_PREFIX, PoolStatus, PurgeReport, RunAppendReport, RunInfo, RunPage,
    RunQuery, RunSummary, StoredTransition, Tenant, TenantSummary,
};
pub use progress_cache::ProgressCache;
pub use scope::{ReadScope, TenantSource, WriteScope};
pub use secret::{API_KEY_PREFIX, ApiKey, ApiKeyHash};
pub use shared::{Admission, IngestQuota, PurgeTurn};
pub use status::{ClassCounts, NodeSummary, Progress, RunProgress, StateClass};
pub use transition::{Labels, RunMeta, Transition, TransitionBody};
