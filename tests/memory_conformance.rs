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

/// Checks that run once rather than per adapter (each called by a test of its own above).
const RUN_ONCE: &[&str] = &["invalid_input_is_refused_naming_the_field"];

/// A check written but left out of `conformance_suite!`'s list would run for no adapter and
/// fail nothing. Every `pub async fn …(h: &Harness)` of the conformance module must be in
/// [`kahn_core::conformance::CHECKS`] (which the macro generates from its list) or in
/// [`RUN_ONCE`].
#[test]
fn every_conformance_check_is_in_the_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kahn-core/src/conformance");
    let mut written = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read kahn-core/src/conformance") {
        let path = entry.expect("directory entry").path();
        let src = std::fs::read_to_string(&path).expect("read a conformance source file");
        for line in src.lines() {
            let Some(rest) = line.trim_start().strip_prefix("pub async fn ") else { continue };
            if let Some((name, args)) = rest.split_once('(')
                && args.starts_with("h: &Harness")
            {
                written.push(name.to_owned());
            }
        }
    }
    written.sort();
    let mut listed: Vec<String> =
        kahn_core::conformance::CHECKS.iter().chain(RUN_ONCE).map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(written, listed, "conformance checks written vs. in conformance_suite!'s list");
    let mut unique = kahn_core::conformance::CHECKS.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), kahn_core::conformance::CHECKS.len(), "a check is listed twice");
}
