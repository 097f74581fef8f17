//! # kahn-cli
//!
//! The `kahn` binary, and what it is made of as a library so services can embed it: the
//! resumable chunked [`push`]er, which works over any
//! [`StorageBackend`](kahn_core::StorageBackend) — a database or a remote server alike; the
//! store-to-store [`copy`] (SQLite → Postgres, resumable, every head verified); and the
//! NDJSON [`export`] of a tenant's runs, files `kahn push` accepts.

pub mod bridge;
pub mod copy;
pub mod dsn;
pub mod export;
pub mod provision;
pub mod push;
pub mod resume;
pub mod schema;

pub use bridge::{Bridge, CiContext, Profile};
pub use dsn::{redact_dsn, redact_dsns_in};
pub use provision::{Provisioned, provision};
pub use push::{PushOptions, PushReport, RunSource};
pub use resume::ResumeCache;
