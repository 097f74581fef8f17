//! The shared kahn-core conformance suite *through HTTP*: `HttpBackend` → real server on a
//! loopback port → a backend. Tenants and keys are provisioned on the backend behind the
//! server (the client cannot provision); every append, read and key resolution goes over
//! the wire. The client carries an admin JWT so the suite's org/sub/override resolutions
//! run through `/v1/whoami` and `/api/admin/tenants`.
//!
//! Over Postgres the server runs as the app role (`kahn_app`, under Row-Level Security) and
//! the harness provisions through the admin backend, as a deployment would.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;

use kahn_core::StorageBackend;
use kahn_core::conformance::Harness;
use support::{TestKeys, TestServer, test_config};

/// A harness whose store is an `HttpBackend` in front of a server over `backend`, and whose
/// control plane (provisioning, keys) is `control`. `guard` (a temporary directory, a test
/// database) lives as long as the server.
async fn through_http(
    backend: Arc<dyn StorageBackend>,
    control: Arc<dyn StorageBackend>,
    guard: impl std::any::Any + Send + Sync,
) -> Harness {
    let keys = TestKeys::generate();
    // The suite's concurrency check pushes hundreds of requests at once for one tenant.
    let config = test_config(&keys).with_ingest_rate(NonZeroU32::new(100_000).expect("not zero"));
    let server = TestServer::start(backend, keys, config).await.with_guard(guard);
    let client = server.client().with_bearer(server.admin_token());
    // The server lives as long as the harness.
    Harness::with_control(Arc::new(client), control).with_guard(server)
}

mod memory {
    use super::*;

    async fn harness() -> Harness {
        let backend: Arc<dyn StorageBackend> = Arc::new(kahn_core::MemoryBackend::new());
        through_http(backend.clone(), backend, ()).await
    }

    kahn_core::conformance_suite!(harness);
}

mod sqlite {
    use super::*;

    async fn harness() -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("kahn.db").display());
        let store = kahn_sqlite::SqliteBackend::connect(&url).await.expect("open a fresh database");
        let backend: Arc<dyn StorageBackend> = Arc::new(store);
        through_http(backend.clone(), backend, dir).await
    }

    kahn_core::conformance_suite!(harness);
}

mod postgres {
    use super::*;

    /// A fresh database per check: the server over the app-role backend (RLS enforced), the
    /// admin backend as the control plane; the database is dropped with the server.
    async fn harness() -> Harness {
        let (db, admin) = kahn_testkit::TestDb::new().await;
        let app = db.app().await;
        assert_eq!(app.mode(), kahn_pg::Mode::App);
        through_http(Arc::new(app), Arc::new(admin), db).await
    }

    kahn_core::conformance_suite!(harness);
}
