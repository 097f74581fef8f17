//! # kahn-cli
//!
//! The `kahn` binary, and what it is made of as a library so services can embed it: the
//! store-to-store [`copy`] (SQLite → Postgres, resumable, every head verified); and the
//! NDJSON [`export`] of a tenant's runs, files `kahn push` accepts. The resumable pusher, CI
//! bridges and provisioning live in `kahn-push`, re-exported here.

pub mod copy;
pub mod dsn;
pub mod export;
pub mod schema;

pub use dsn::{redact_dsn, redact_dsns_in};
// `provision` names both the module and its function, as before the move.
pub use kahn_push::{
    Bridge, CiContext, Profile, Provisioned, PushOptions, PushReport, ResumeCache, RunSource,
    bridge, provision, push, resume,
};
