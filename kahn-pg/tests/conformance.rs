//! The shared conformance suite against the real PostgreSQL server: each check on its own
//! fresh database, the store under test being the app-role backend (`kahn_app`, under RLS)
//! and the control plane the admin backend.

use std::sync::Arc;

use kahn_core::conformance::Harness;

async fn harness() -> Harness {
    let (db, admin) = kahn_testkit::TestDb::new().await;
    let app = db.app().await;
    Harness::with_control(Arc::new(app), Arc::new(admin)).with_guard(db)
}

kahn_core::conformance_suite!(harness);
