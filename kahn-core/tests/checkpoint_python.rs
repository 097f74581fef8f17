//! KAHN's checkpoint leaves (`kahn_core::checkpoint`) against an independent encoding:
//! `checkpoint_reference.py`, Python's standard library only, written from the byte table in
//! the module's documentation. Python encodes the same leaves from their fields (its own
//! RFC 3339 parsing for the time), hashes them and computes each checkpoint's root; all must
//! equal Rust's, byte for byte.
//!
//! It needs `python3`; without it the test fails, it never skips.

mod reference;

use chrono::{DateTime, SecondsFormat, TimeZone as _, Utc};
use kahn_core::checkpoint::{
    Leaf, LeafKind, PurgedRun, RunHead, checkpoint_for, leaf_hashes, next_leaves,
};
use kahn_core::{Digest, RUN_ID_MAX_LEN, RunId, TenantId};
use serde_json::{Value, json};

/// Runs the Python reference on `request`, returns its answer.
fn python(request: &Value) -> Value {
    reference::python("checkpoint_reference.py", "checkpoint", request)
}

fn kind_name(kind: LeafKind) -> &'static str {
    match kind {
        LeafKind::Head => "head",
        LeafKind::Purged => "purged",
        LeafKind::Missing => "missing",
        other => panic!("a leaf kind this test does not know: {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn rid(s: &str) -> RunId {
    RunId::new(s).expect("a valid run id")
}

fn time(secs: i64, nanos: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, nanos).single().expect("a valid time")
}

/// A realistic log: three checkpoints of a small tenant (runs added, grown, purged, one
/// removed behind KAHN's back, one pushed again), then leaves chosen for their edges.
fn log() -> (Vec<Leaf>, Vec<u64>) {
    let head = |id: &str, n: u64, at: DateTime<Utc>| RunHead {
        run_id: rid(id),
        next_seq: n,
        head_hash: Digest::sha256(format!("{id}/{n}").as_bytes()),
        received_at: at,
    };
    let t = |s: i64| time(1_767_225_600 + s, 123_456_789);
    let mut leaves = next_leaves(
        &[],
        &[head("r1", 3, t(1)), head("Run_2.b:c-d", 0, t(2)), head("z", 7, t(3))],
        &[],
    );
    let mut sizes = vec![0, leaves.len() as u64];
    let more = next_leaves(
        &leaves,
        &[head("r1", 5, t(10)), head("Run_2.b:c-d", 0, t(2)), head("new", 1, t(11))],
        &[PurgedRun {
            run_id: rid("z"),
            next_seq: 7,
            head_hash: Digest::sha256(b"z/7"),
            received_at: t(3),
        }],
    );
    leaves.extend(more);
    sizes.push(leaves.len() as u64);
    let more = next_leaves(&leaves, &[head("z", 2, t(20)), head("new", 1, t(11))], &[]);
    leaves.extend(more);
    sizes.push(leaves.len() as u64);

    // Edges: every allowed character, the longest id, u64::MAX, times before the epoch
    // (with a fraction: floor), at it, and near the ends of Python's datetime range.
    let edges = [
        (LeafKind::Head, "ABCXYZabcxyz0189._:-", 0, time(0, 0)),
        (LeafKind::Purged, "x", u64::MAX, time(-1, 999_999_000)),
        (LeafKind::Missing, "m", 1 << 53, time(-2_208_988_800, 500_000)),
        (
            LeafKind::Head,
            &"L".repeat(RUN_ID_MAX_LEN),
            42,
            "9999-12-31T23:59:59.999999Z".parse().expect("a time"),
        ),
        (LeafKind::Purged, "y", 1, "0001-01-01T00:00:00.000001Z".parse().expect("a time")),
    ];
    for (kind, id, next_seq, received_at) in edges {
        leaves.push(Leaf {
            kind,
            run_id: rid(id),
            next_seq,
            head_hash: Digest::sha256(id.as_bytes()),
            received_at,
        });
        sizes.push(leaves.len() as u64);
    }
    (leaves, sizes)
}

#[test]
fn checkpoint_leaves_encode_and_hash_as_python_reads_the_documented_table() {
    let (leaves, sizes) = log();
    assert!(
        leaves.iter().any(|l| l.kind == LeafKind::Missing && l.run_id.as_str() == "Run_2.b:c-d")
    );
    let request = json!({
        "leaves": leaves.iter().map(|l| json!({
            "kind": kind_name(l.kind),
            "run_id": l.run_id.as_str(),
            "next_seq": l.next_seq,
            "head_hash": l.head_hash.to_string(),
            "received_at": l.received_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        })).collect::<Vec<_>>(),
        "tree_sizes": sizes,
    });
    let answer = python(&request);

    let encodings = strings(&answer["encodings"]);
    assert_eq!(encodings.len(), leaves.len());
    for (leaf, theirs) in leaves.iter().zip(&encodings) {
        assert_eq!(&hex::encode(leaf.encode()), theirs, "the encoding of {leaf:?}");
        let bytes = hex::decode(theirs).expect("hex");
        assert_eq!(&Leaf::decode(&bytes).expect("Python's bytes decode"), leaf);
    }
    let hashes: Vec<String> = leaf_hashes(&leaves).iter().map(ToString::to_string).collect();
    assert_eq!(hashes, strings(&answer["leaf_hashes"]));

    let roots = strings(&answer["roots"]);
    assert_eq!(roots.len(), sizes.len());
    let tenant = TenantId::new_random();
    for (&n, theirs) in sizes.iter().zip(&roots) {
        let c = checkpoint_for(tenant, &leaves[..n as usize], time(0, 0), "key");
        assert_eq!(c.tree_size, n);
        assert_eq!(&c.root_hash.to_string(), theirs, "the root of the first {n} leaves");
    }
}
