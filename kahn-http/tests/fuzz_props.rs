//! The cargo-fuzz targets of `fuzz/` run as property tests, so CI exercises them on stable
//! Rust: the same target code (`fuzz/targets/*.rs`, included by path), fed by proptest with
//! arbitrary bytes, with mutations of the seed corpus, and with structured near-valid lines.

#[path = "../../fuzz/targets/ndjson.rs"]
mod ndjson;

#[path = "../../fuzz/targets/jwt.rs"]
mod jwt;

#[path = "../../fuzz/targets/ingest.rs"]
mod ingest;

use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|f| std::fs::read(f.expect("entry").path()).expect("seed"))
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{} has seeds", dir.display());
    seeds
}

/// A seed with a few bytes overwritten, inserted or cut: libFuzzer's simplest mutations.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    (0..seeds.len(), prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8)).prop_map(
        move |(i, edits)| {
            let mut s = seeds[i].clone();
            for (at, byte, op) in edits {
                let at = if s.is_empty() { 0 } else { at % s.len() };
                match op {
                    0 if !s.is_empty() => s[at] = byte,
                    1 => s.insert(at, byte),
                    _ if !s.is_empty() => {
                        s.truncate(at.max(1));
                    }
                    _ => {}
                }
            }
            s
        },
    )
}

/// Lines that are nearly valid: every field from a small menu of good and bad values.
fn near_valid_line() -> impl Strategy<Value = String> {
    let run = prop_oneof![
        Just("\"r\"".to_owned()),
        Just("\"..\"".to_owned()),
        "\"[a-z.:_-]{0,3}\"",
        Just("1".to_owned())
    ];
    let seq = prop_oneof![
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("1e3".to_owned()),
        Just("\"0\"".to_owned())
    ];
    let ts = prop_oneof![
        Just("\"2026-01-01T00:00:00Z\"".to_owned()),
        Just("\"2026-13-01T00:00:00Z\"".to_owned()),
        Just("0".to_owned())
    ];
    let attrs = prop_oneof![
        Just("{}".to_owned()),
        Just("[]".to_owned()),
        Just("{\"a\":1,\"a\":2}".to_owned()),
        Just("{\"n\":9007199254740993}".to_owned()),
        Just("{\"s\":\"\\u0000\\ud800\"}".to_owned())
    ];
    (run, seq, ts, attrs, any::<bool>()).prop_map(|(r, s, t, a, meta)| {
        if meta {
            format!("{{\"kind\":\"run\",\"run_id\":{r},\"source\":\"s\",\"graph\":{a}}}")
        } else {
            format!("{{\"run_id\":{r},\"seq\":{s},\"ts\":{t},\"to\":\"x\",\"attrs\":{a}}}")
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ndjson_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        ndjson::run(&data);
    }

    #[test]
    fn ndjson_mutated_seeds(data in mutated("ndjson")) {
        ndjson::run(&data);
    }

    #[test]
    fn ndjson_near_valid_lines(lines in prop::collection::vec(near_valid_line(), 1..6)) {
        ndjson::run(lines.join("\n").as_bytes());
        let mut first = vec![0u8];
        first.extend_from_slice(lines.join("\n").as_bytes());
        ingest::run(&first);
    }

    #[test]
    fn jwt_arbitrary_and_mutated(data in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), mutated("jwt")]) {
        jwt::run(&data);
    }

    #[test]
    fn ingest_arbitrary_and_mutated(data in prop_oneof![prop::collection::vec(any::<u8>(), 0..400), mutated("ingest")]) {
        ingest::run(&data);
    }
}
