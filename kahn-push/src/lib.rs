//! # kahn-push
//!
//! KAHN's pusher as a library an embedder can take: the resumable chunked [`push`]er, which
//! works over any [`StorageBackend`](kahn_core::StorageBackend) — a database or a remote
//! server alike —, its [`resume`] cache, the CI [`bridge`]s and idempotent [`provision`](mod@provision)ing.
//! It depends on `kahn-core` only; the `kahn` binary (`kahn-cli`) wires it to concrete
//! backends.

pub mod bridge;
mod forward;
pub mod provision;
pub mod push;
pub mod resume;

pub use bridge::{Bridge, CiContext, Profile};
pub use provision::{Provisioned, provision};
pub use push::{PushOptions, PushReport, RunSource};
pub use resume::ResumeCache;
