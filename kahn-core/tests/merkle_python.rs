//! KAHN's Merkle tree (`kahn_core::merkle`) against an independent implementation:
//! `merkle_reference.py`, Python's standard library only, written from RFC 9162's recursive
//! definitions and verification algorithms. Both make the roots and proofs of the same
//! pseudo-random trees and must agree byte for byte; Python's verifier must accept every
//! proof Rust makes and, like Rust's, reject each one corrupted.
//!
//! A checkpoint is only worth something if someone other than KAHN can check it: this is the
//! "someone other". It needs `python3`; without it the test fails, it never skips.

mod reference;

use kahn_core::Digest;
use kahn_core::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion,
};
use serde_json::{Value, json};

/// Runs the Python reference on `request`, returns its answer.
fn python(request: &Value) -> Value {
    reference::python("merkle_reference.py", "Merkle", request)
}

/// A small deterministic generator (xorshift64*): the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// One tree: its leaves' data and the indices and old sizes to make proofs for.
struct Case {
    data: Vec<Vec<u8>>,
    indices: Vec<u64>,
    old_sizes: Vec<u64>,
}

impl Case {
    fn leaves(&self) -> Vec<Digest> {
        self.data.iter().map(|d| leaf_hash(d)).collect()
    }
}

/// `count` values in `0..end`, plus `always`; all of `0..end` when that is few.
fn pick(rng: &mut Rng, end: u64, count: usize, always: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = if end <= 17 {
        (0..end).collect()
    } else {
        always.iter().copied().chain((0..count).map(|_| rng.below(end))).collect()
    };
    out.retain(|&x| x < end);
    out.sort_unstable();
    out.dedup();
    out
}

/// Every size 0..=130 once, 69 more of random sizes in that range, and three of ~1000 leaves;
/// leaf data of 0..=64 random bytes.
fn cases() -> Vec<Case> {
    let mut rng = Rng(0x6b61_686e_6d65_726b);
    let mut sizes: Vec<u64> = (0..=130).chain((0..69).map(|_| rng.below(131))).collect();
    sizes.extend([999, 1024, 1000 + rng.below(100)]);
    sizes
        .into_iter()
        .map(|n| {
            let data = (0..n)
                .map(|_| {
                    let len = rng.below(65) as usize;
                    rng.bytes(len)
                })
                .collect();
            let many = if n > 200 { 24 } else { 10 };
            let pow2 = if n > 1 { 1 << (63 - (n - 1).leading_zeros()) } else { 0 };
            let indices = pick(&mut rng, n, many, &[0, n.saturating_sub(1), pow2, pow2 + 1]);
            let old_sizes =
                pick(&mut rng, n + 1, many, &[0, 1, pow2, pow2 + 1, n.saturating_sub(1), n]);
            Case { data, indices, old_sizes }
        })
        .collect()
}

fn hexes(digests: &[Digest]) -> Value {
    digests.iter().map(ToString::to_string).collect()
}

fn digests(value: &Value) -> Vec<Digest> {
    value
        .as_array()
        .expect("a list of hashes")
        .iter()
        .map(|h| h.as_str().expect("a hex hash").parse().expect("64 hex digits"))
        .collect()
}

fn digest(value: &Value) -> Digest {
    value.as_str().expect("a hex hash").parse().expect("64 hex digits")
}

#[test]
fn merkle_rust_and_python_make_the_same_roots_and_proofs() {
    let cases = cases();
    let request = json!({
        "trees": cases.iter().map(|c| json!({
            "leaves": c.data.iter().map(hex::encode).collect::<Vec<_>>(),
            "indices": c.indices,
            "old_sizes": c.old_sizes,
        })).collect::<Vec<_>>(),
    });
    let answer = python(&request);
    let trees = answer["trees"].as_array().expect("one answer per tree");
    assert_eq!(trees.len(), cases.len());

    let (mut inclusions, mut consistencies) = (0, 0);
    for (case, theirs) in cases.iter().zip(trees) {
        let n = case.data.len();
        let leaves = case.leaves();
        assert_eq!(digests(&theirs["leaf_hashes"]), leaves, "leaf hashes of {n} leaves");
        assert_eq!(root(&leaves), digest(&theirs["root"]), "root of {n} leaves");
        for (&i, path) in case.indices.iter().zip(theirs["inclusion"].as_array().expect("paths")) {
            let ours = inclusion_proof(&leaves, i).expect("an index in range");
            assert_eq!(ours, digests(path), "PATH({i}, D[{n}])");
            inclusions += 1;
        }
        let old_roots = theirs["old_roots"].as_array().expect("old roots");
        let proofs = theirs["consistency"].as_array().expect("consistency proofs");
        for ((&m, old_root), proof) in case.old_sizes.iter().zip(old_roots).zip(proofs) {
            assert_eq!(root(&leaves[..m as usize]), digest(old_root), "MTH(D[0:{m}]), n = {n}");
            let ours = consistency_proof(&leaves, m).expect("an old size in range");
            assert_eq!(ours, digests(proof), "PROOF({m}, D[{n}])");
            consistencies += 1;
        }
    }
    // The cases are what they claim to be, not silently fewer.
    assert_eq!(cases.len(), 203);
    assert!(inclusions > 2000 && consistencies > 2000, "{inclusions} / {consistencies}");
}

/// `d` with one bit flipped.
fn flip(d: &Digest, bit: u64) -> Digest {
    let mut bytes = *d.as_bytes();
    bytes[(bit / 8 % 32) as usize] ^= 1 << (bit % 8);
    Digest::from_bytes(bytes)
}

/// One inclusion check to send: what Rust and Python must both say of it.
struct InclusionCheck {
    leaf: Digest,
    index: u64,
    tree_size: u64,
    proof: Vec<Digest>,
    root: Digest,
    valid: bool,
    what: String,
}

/// One consistency check to send.
struct ConsistencyCheck {
    old_size: u64,
    new_size: u64,
    old_root: Digest,
    new_root: Digest,
    proof: Vec<Digest>,
    valid: bool,
    what: String,
}

#[test]
fn merkle_python_verifies_rusts_proofs_and_both_reject_corrupted_ones() {
    let mut rng = Rng(0x7665_7269_6679_2121);
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for case in cases() {
        let leaves = case.leaves();
        let n = leaves.len() as u64;
        let r = root(&leaves);
        for &i in &case.indices {
            let leaf = leaves[i as usize];
            let proof = inclusion_proof(&leaves, i).expect("an index in range");
            let what = format!("leaf {i} of {n}");
            let check = |proof: Vec<Digest>, leaf, index, root, valid, how: &str| InclusionCheck {
                leaf,
                index,
                tree_size: n,
                proof,
                root,
                valid,
                what: format!("{what}, {how}"),
            };
            inclusion.push(check(proof.clone(), leaf, i, r, true, "as made"));
            // One corruption each, in turn: a hash of the proof, its length, the index, the
            // leaf, the root.
            let corrupted = match rng.below(5) {
                0 if !proof.is_empty() => {
                    let mut bad = proof.clone();
                    let j = rng.below(bad.len() as u64) as usize;
                    bad[j] = flip(&bad[j], rng.below(256));
                    check(bad, leaf, i, r, false, "a hash flipped")
                }
                1 => {
                    let mut bad = proof.clone();
                    if bad.pop().is_none() {
                        bad.push(r);
                    }
                    check(bad, leaf, i, r, false, "one hash short or extra")
                }
                2 if n > 1 => {
                    let j = (i + 1 + rng.below(n - 1)) % n;
                    check(proof.clone(), leaf, j, r, false, "another index")
                }
                3 => check(proof.clone(), flip(&leaf, rng.below(256)), i, r, false, "another leaf"),
                _ => check(proof.clone(), leaf, i, flip(&r, rng.below(256)), false, "another root"),
            };
            inclusion.push(corrupted);
        }
        for &m in &case.old_sizes {
            let old = root(&leaves[..m as usize]);
            let proof = consistency_proof(&leaves, m).expect("an old size in range");
            let what = format!("{m} -> {n} leaves");
            let check =
                |proof: Vec<Digest>, old_root, new_root, valid, how: &str| ConsistencyCheck {
                    old_size: m,
                    new_size: n,
                    old_root,
                    new_root,
                    proof,
                    valid,
                    what: format!("{what}, {how}"),
                };
            consistency.push(check(proof.clone(), old, r, true, "as made"));
            let corrupted = match rng.below(5) {
                0 if !proof.is_empty() => {
                    let mut bad = proof.clone();
                    let j = rng.below(bad.len() as u64) as usize;
                    bad[j] = flip(&bad[j], rng.below(256));
                    check(bad, old, r, false, "a hash flipped")
                }
                1 => {
                    let mut bad = proof.clone();
                    if bad.pop().is_none() {
                        bad.push(old);
                    }
                    check(bad, old, r, false, "one hash short or extra")
                }
                2 if m < n => check(proof.clone(), r, old, false, "roots swapped"),
                3 if m > 0 => {
                    check(proof.clone(), old, flip(&r, rng.below(256)), false, "new root")
                }
                _ => check(proof.clone(), flip(&old, rng.below(256)), r, false, "old root"),
            };
            consistency.push(corrupted);
        }
    }

    // Rust's own verdicts first.
    for c in &inclusion {
        let verdict = verify_inclusion(&c.leaf, c.index, c.tree_size, &c.proof, &c.root);
        assert_eq!(verdict.is_ok(), c.valid, "Rust on {}: {verdict:?}", c.what);
    }
    for c in &consistency {
        let verdict =
            verify_consistency(c.old_size, c.new_size, &c.old_root, &c.new_root, &c.proof);
        assert_eq!(verdict.is_ok(), c.valid, "Rust on {}: {verdict:?}", c.what);
    }

    // Then Python's, with its own verifier.
    let request = json!({
        "inclusion_checks": inclusion.iter().map(|c| json!({
            "leaf": c.leaf.to_string(),
            "index": c.index,
            "tree_size": c.tree_size,
            "proof": hexes(&c.proof),
            "root": c.root.to_string(),
        })).collect::<Vec<_>>(),
        "consistency_checks": consistency.iter().map(|c| json!({
            "old_size": c.old_size,
            "new_size": c.new_size,
            "old_root": c.old_root.to_string(),
            "new_root": c.new_root.to_string(),
            "proof": hexes(&c.proof),
        })).collect::<Vec<_>>(),
    });
    let answer = python(&request);
    let verdicts = |key: &str| -> Vec<bool> {
        answer[key]
            .as_array()
            .expect("a list of verdicts")
            .iter()
            .map(|v| v.as_bool().expect("true or false"))
            .collect()
    };
    let theirs = verdicts("inclusion_checks");
    assert_eq!(theirs.len(), inclusion.len());
    for (c, valid) in inclusion.iter().zip(theirs) {
        assert_eq!(valid, c.valid, "Python on the inclusion proof of {}", c.what);
    }
    let theirs = verdicts("consistency_checks");
    assert_eq!(theirs.len(), consistency.len());
    for (c, valid) in consistency.iter().zip(theirs) {
        assert_eq!(valid, c.valid, "Python on the consistency proof of {}", c.what);
    }
    // Each proof was checked as made and once corrupted.
    assert!(inclusion.iter().filter(|c| !c.valid).count() > 2000, "{}", inclusion.len());
    assert!(consistency.iter().filter(|c| !c.valid).count() > 2000, "{}", consistency.len());
}
