//! The shared conformance suite against SQLite: each check on its own fresh database file.

use std::sync::Arc;

use kahn_core::conformance::Harness;
use kahn_sqlite::SqliteBackend;

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("kahn.db").display());
    let store = SqliteBackend::connect(&url).await.expect("open a fresh database");
    Harness::new(Arc::new(store)).with_guard(dir)
}

kahn_core::conformance_suite!(harness);

/// The same suite on a private in-memory database (one connection for reads and writes).
mod in_memory {
    use super::*;

    async fn harness() -> Harness {
        Harness::new(Arc::new(SqliteBackend::connect("sqlite::memory:").await.expect("open")))
    }

    kahn_core::conformance_suite!(harness);
}
