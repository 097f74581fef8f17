//! # kahn-cli
//!
//! The `kahn` binary, and what it is made of as a library so services can embed it: the
//! store-to-store [`copy`] (SQLite → Postgres, resumable, every head verified); and the
//! NDJSON [`export`] of a tenant's runs, files `kahn push` accepts. The resumable pusher, CI
//! bridges and provisioning are the `kahn-push` crate, which needs no adapter.

pub mod copy;
pub mod dsn;
pub mod export;
pub mod schema;

pub use dsn::{redact_dsn, redact_dsns_in};
