//! The workload's lines in the wire form the pusher sends (`run_id` and `seq` on every line),
//! written by kahn-core's one NDJSON encoder. Kept apart from `workload.rs`, which the peers'
//! workspace includes without depending on kahn-core.

#![allow(dead_code, unreachable_pub)]

use kahn_core::{RunId, TransitionBody, parse_json_object};

use crate::workload;

/// Transitions `seqs` of `run` as NDJSON, exactly as the HTTP client sends them.
pub fn text(run: &str, seqs: std::ops::Range<u64>) -> String {
    let id = RunId::new(run).expect("a valid run id");
    let mut out = String::new();
    for seq in seqs {
        let fields = parse_json_object(&workload::line(run, seq)).expect("a workload line");
        let body = TransitionBody::new(fields).expect("a valid transition");
        kahn_core::ndjson::write_transition(&mut out, &id, seq, &body);
    }
    out
}
