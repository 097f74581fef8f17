//! # kahn-cli
//!
//! The `kahn` binary, and what it is made of as a library so services can embed it: the
//! resumable chunked [`push`]er, which works over any
//! [`StorageBackend`](kahn_core::StorageBackend) — a database or a remote server alike.

pub mod bridge;
pub mod dsn;
pub mod provision;
pub mod push;
pub mod resume;

pub use bridge::{Bridge, CiContext, Profile};
pub use dsn::{redact_dsn, redact_dsns_in};
pub use provision::{Provisioned, provision};
pub use push::{PushOptions, PushReport, RunSource};
pub use resume::ResumeCache;
