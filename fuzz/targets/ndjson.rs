//! Fuzz target logic: one NDJSON body through `NdjsonLine::parse` and `BatchBuilder`.
//! Shared by the cargo-fuzz target (`fuzz/fuzz_targets/ndjson.rs`) and the CI property test
//! (`kahn-http/tests/fuzz_props.rs`). Never panics; whatever is accepted is self-consistent.

use kahn_core::{BatchBuilder, NdjsonLine};

pub(crate) fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut builder = BatchBuilder::new();
    for line in text.lines() {
        match NdjsonLine::parse(line) {
            Ok(Some(parsed)) => {
                // A line in the wire form is read in place (no tree): it must come out exactly
                // as the general reader reads it.
                let general = kahn_core::parse_json_object(line).and_then(NdjsonLine::from_object);
                assert_eq!(general.ok().as_ref(), Some(&parsed), "{line}");
                if builder.push(parsed).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Refusals are InvalidInput naming a field, never anything else.
                assert!(matches!(e, kahn_core::Error::InvalidInput { .. }), "{e:?}");
                return;
            }
        }
    }
    let batch = builder.build();
    for run in batch.runs() {
        assert!(run.start() <= run.end());
        for body in run.bodies() {
            // The canonical form is JSON whose own canonical form is itself (canonicalising
            // is idempotent), and the hash is the hash of that form: what is stored is what
            // is hashed.
            let back: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(body.canonical_json()).expect("canonical form is an object");
            let again = kahn_core::TransitionBody::new(back.clone()).expect("still valid");
            assert_eq!(again.canonical_json(), body.canonical_json());
            // KAHN's one-walk canonicaliser writes exactly what the canon-json crate writes.
            let mut reference = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(
                &mut reference,
                canon_json::CanonicalFormatter::new(),
            );
            serde::Serialize::serialize(&back, &mut ser).expect("canon-json serializes it");
            assert_eq!(body.canonical_json().as_bytes(), reference.as_slice());
            assert_eq!(
                body.content_hash(),
                kahn_core::Digest::sha256(body.canonical_json().as_bytes())
            );
        }
    }
}
