//! The conformance suite against the in-memory reference backend.

use std::sync::Arc;

use kahn_core::MemoryBackend;
use kahn_core::conformance::Harness;

async fn harness() -> Harness {
    Harness::new(Arc::new(MemoryBackend::new()))
}

kahn_core::conformance_suite!(harness);

/// Bad input is refused before any adapter sees it, so this runs once, not per adapter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_naming_the_field() {
    kahn_core::conformance::invalid_input_is_refused_naming_the_field(&harness().await).await;
}
