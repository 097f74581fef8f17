//! The Merkle tree behind tenants' signed checkpoints: RFC 9162 §2.1 (the tree of RFC 6962,
//! Certificate Transparency) exactly, so any independent implementation can recompute a
//! checkpoint's root and check KAHN's proofs.
//!
//! A log is a list of leaves `D[0..n]`. Its root, the Merkle Tree Hash `MTH(D[n])`, is
//!
//! - for `n = 0`, SHA-256 of the empty string ([`empty_root`]);
//! - for `n = 1`, the leaf hash `SHA-256(0x00 ‖ d)` ([`leaf_hash`]);
//! - for `n > 1`, with `k` the largest power of two smaller than `n`, the node hash
//!   `SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))` ([`node_hash`]).
//!
//! The `0x00` and `0x01` prefixes separate the two domains: no leaf's data can be passed off
//! as an interior node, nor a node as a leaf.
//!
//! The functions here take leaves already hashed (`leaf_hash(d)` for each datum `d`) and
//! give:
//!
//! - [`root`]: `MTH`, in O(n) hashing and O(log n) memory;
//! - [`inclusion_proof`] and [`verify_inclusion`]: a leaf is at index `i` of the tree whose
//!   root a checkpoint signs (RFC 9162 §2.1.3);
//! - [`consistency_proof`] and [`verify_consistency`]: an older checkpoint's log is a prefix
//!   of a newer one's (RFC 9162 §2.1.4).
//!
//! The proofs are the RFC's `PATH` and `PROOF` lists, in the RFC's order (the hash nearest the
//! leaf first); the verifiers are the RFC's algorithms. `kahn-core/tests/merkle_python.rs`
//! holds all of them equal, byte for byte, to an independent Python implementation of the RFC's
//! recursive definitions.
//!
//! ```
//! use kahn_core::merkle::{
//!     consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion,
//! };
//!
//! let data = ["a", "b", "c", "d", "e"];
//! let leaves: Vec<_> = data.iter().map(|d| leaf_hash(d.as_bytes())).collect();
//! let (old, new) = (root(&leaves[..3]), root(&leaves));
//!
//! let path = inclusion_proof(&leaves, 2)?;
//! verify_inclusion(&leaves[2], 2, 5, &path, &new)?;
//!
//! let proof = consistency_proof(&leaves, 3)?;
//! verify_consistency(3, 5, &old, &new, &proof)?;
//! assert!(verify_consistency(3, 5, &new, &old, &proof).is_err());
//! # Ok::<(), kahn_core::merkle::ProofError>(())
//! ```

use sha2::{Digest as _, Sha256};

use crate::hash::Digest;

/// Why a proof could not be made or did not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// An inclusion proof was asked for, or checked at, an index the tree does not have.
    #[error("leaf index {index} is out of range: the tree has {tree_size} leaves")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree's number of leaves.
        tree_size: u64,
    },
    /// A consistency proof was asked for, or checked, from a larger tree to a smaller one.
    #[error(
        "the old tree size {old_size} is larger than the new tree size {new_size}: \
         a log only grows, so a consistency proof runs from a smaller tree to a larger one"
    )]
    SizesReversed {
        /// The old (first) tree size.
        old_size: u64,
        /// The new (second) tree size.
        new_size: u64,
    },
    /// An inclusion proof has more or fewer hashes than its index and tree size call for.
    #[error(
        "the inclusion proof has {actual} hashes, but leaf {index} of a tree of {tree_size} \
         leaves needs exactly {expected}"
    )]
    InclusionProofLength {
        /// The leaf index.
        index: u64,
        /// The tree's number of leaves.
        tree_size: u64,
        /// The number of hashes such a proof has.
        expected: usize,
        /// The number of hashes this proof has.
        actual: usize,
    },
    /// A consistency proof has more or fewer hashes than its two tree sizes call for.
    #[error(
        "the consistency proof has {actual} hashes, but one from {old_size} to {new_size} \
         leaves needs exactly {expected}"
    )]
    ConsistencyProofLength {
        /// The old tree size.
        old_size: u64,
        /// The new tree size.
        new_size: u64,
        /// The number of hashes such a proof has.
        expected: usize,
        /// The number of hashes this proof has.
        actual: usize,
    },
    /// An inclusion proof, or a consistency proof's new tree, leads to another root than the
    /// checkpoint's.
    #[error(
        "the proof leads to root {computed} for {tree_size} leaves, the checkpoint says {expected}"
    )]
    RootMismatch {
        /// The tree size the root belongs to.
        tree_size: u64,
        /// The root the proof leads to.
        computed: Digest,
        /// The root the checkpoint says.
        expected: Digest,
    },
    /// A consistency proof leads to another old root than the old checkpoint's: the old log
    /// is not a prefix of the new one (or the proof is not theirs).
    #[error(
        "the proof leads to old root {computed} for {old_size} leaves, the old checkpoint says \
         {expected}"
    )]
    OldRootMismatch {
        /// The old tree size.
        old_size: u64,
        /// The old root the proof leads to (for 0 leaves, the empty tree's root).
        computed: Digest,
        /// The root the old checkpoint says.
        expected: Digest,
    },
    /// Two checkpoints of the same size have different roots: they hold different logs.
    #[error(
        "both checkpoints have {tree_size} leaves but different roots: {old_root} and {new_root}"
    )]
    SameSizeRootsDiffer {
        /// The trees' common size.
        tree_size: u64,
        /// The old checkpoint's root.
        old_root: Digest,
        /// The new checkpoint's root.
        new_root: Digest,
    },
}

/// The hash of a leaf: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Digest {
    Digest::from_bytes(Sha256::new().chain_update([0x00]).chain_update(data).finalize().into())
}

/// The hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::from_bytes(
        Sha256::new()
            .chain_update([0x01])
            .chain_update(left.as_bytes())
            .chain_update(right.as_bytes())
            .finalize()
            .into(),
    )
}

/// The root of the empty tree: SHA-256 of the empty string (`e3b0c442…b855`).
pub fn empty_root() -> Digest {
    Digest::sha256(b"")
}

/// The Merkle Tree Hash of `leaves` (each already a [`leaf_hash`]): RFC 9162 §2.1.1's `MTH`.
///
/// Computed left to right with a stack of complete subtrees (one per bit of the count so
/// far): n − 1 node hashes, O(log n) memory, no recursion.
pub fn root(leaves: &[Digest]) -> Digest {
    // Each entry is the root and height of a complete subtree of 2^height leaves; heights
    // strictly decrease from bottom to top, as the bits of the number of leaves seen so far.
    let mut stack: Vec<(Digest, u32)> = Vec::with_capacity(64);
    for leaf in leaves {
        let mut node = (*leaf, 0);
        while let Some(&(left, height)) = stack.last() {
            if height != node.1 {
                break;
            }
            stack.pop();
            node = (node_hash(&left, &node.0), height + 1);
        }
        stack.push(node);
    }
    // MTH splits at the largest power of two, so the leftover complete subtrees join from the
    // right: MTH = node(s0, node(s1, … node(s_{j-1}, s_j))).
    let mut rest = stack.into_iter().rev().map(|(digest, _)| digest);
    match rest.next() {
        None => empty_root(),
        Some(last) => rest.fold(last, |acc, left| node_hash(&left, &acc)),
    }
}

/// The largest power of two smaller than `n` (`n >= 2`): where `MTH` splits a tree of `n`.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of `leaves[from..to]`; callers pass bounds at most `leaves.len()`.
fn subtree_root(leaves: &[Digest], from: u64, to: u64) -> Digest {
    let index = |i: u64| usize::try_from(i).unwrap_or(usize::MAX);
    root(leaves.get(index(from)..index(to)).unwrap_or_default())
}

/// The number of leaves, as the RFC's `u64` tree size.
fn tree_size_of(leaves: &[Digest]) -> u64 {
    leaves.len() as u64
}

/// The number of hashes in `PATH(index, D[tree_size])` (`index < tree_size`).
fn inclusion_len(mut index: u64, mut size: u64) -> usize {
    let mut len = 0;
    while size > 1 {
        let k = split(size);
        if index < k {
            size = k;
        } else {
            index -= k;
            size -= k;
        }
        len += 1;
    }
    len
}

/// The number of hashes in `PROOF(old_size, D[new_size])`.
fn consistency_len(old_size: u64, new_size: u64) -> usize {
    if old_size == 0 || old_size == new_size {
        return 0;
    }
    // SUBPROOF(m, D[n], b), walked down without the hashes.
    let (mut m, mut n, mut b, mut len) = (old_size, new_size, true, 0);
    while m != n {
        let k = split(n);
        if m <= k {
            n = k;
        } else {
            m -= k;
            n -= k;
            b = false;
        }
        len += 1;
    }
    len + usize::from(!b)
}

/// The inclusion proof of the leaf at `index`: RFC 9162 §2.1.3.1's `PATH(index, D[n])`, the
/// sibling hashes from the leaf up to the root.
///
/// # Errors
/// [`ProofError::IndexOutOfRange`] when `index >= leaves.len()`.
pub fn inclusion_proof(leaves: &[Digest], index: u64) -> Result<Vec<Digest>, ProofError> {
    let tree_size = tree_size_of(leaves);
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    // PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])   when m < k
    //              = PATH(m - k, D[k:n]) : MTH(D[0:k]) otherwise.
    // Walk down from the root collecting the siblings, then reverse: the deepest comes first.
    let mut path = Vec::with_capacity(inclusion_len(index, tree_size));
    let (mut lo, mut hi, mut m) = (0, tree_size, index);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if m < k {
            path.push(subtree_root(leaves, lo + k, hi));
            hi = lo + k;
        } else {
            path.push(subtree_root(leaves, lo, lo + k));
            lo += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// Checks that `leaf` (a [`leaf_hash`]) is at `index` of the tree of `tree_size` leaves whose
/// root is `root`, with RFC 9162 §2.1.3.2's algorithm.
///
/// # Errors
/// - [`ProofError::IndexOutOfRange`] when `index >= tree_size`;
/// - [`ProofError::InclusionProofLength`] when `proof` has more or fewer hashes than a path
///   from `index` in a tree of `tree_size` leaves;
/// - [`ProofError::RootMismatch`] when the proof leads to another root.
pub fn verify_inclusion(
    leaf: &Digest,
    index: u64,
    tree_size: u64,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), ProofError> {
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    let expected = inclusion_len(index, tree_size);
    let wrong_length =
        || ProofError::InclusionProofLength { index, tree_size, expected, actual: proof.len() };
    if proof.len() != expected {
        return Err(wrong_length());
    }
    let (mut f, mut s) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(wrong_length());
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(wrong_length());
    }
    if r != *root {
        return Err(ProofError::RootMismatch { tree_size, computed: r, expected: *root });
    }
    Ok(())
}

/// The consistency proof from the first `old_size` leaves to all of `leaves`: RFC 9162
/// §2.1.4.1's `PROOF(old_size, D[n])`. Empty when `old_size` is 0 or `leaves.len()`.
///
/// # Errors
/// [`ProofError::SizesReversed`] when `old_size > leaves.len()`.
pub fn consistency_proof(leaves: &[Digest], old_size: u64) -> Result<Vec<Digest>, ProofError> {
    let new_size = tree_size_of(leaves);
    if old_size > new_size {
        return Err(ProofError::SizesReversed { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[n], b):
    //   m = n:  [] when b, else [MTH(D[n])];
    //   m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n]);
    //   m > k:  SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k]).
    // Walk down collecting the appended hashes, then reverse: the innermost comes first.
    let mut proof = Vec::with_capacity(consistency_len(old_size, new_size));
    let (mut lo, mut hi, mut m, mut b) = (0, new_size, old_size, true);
    while m != hi - lo {
        let k = split(hi - lo);
        if m <= k {
            proof.push(subtree_root(leaves, lo + k, hi));
            hi = lo + k;
        } else {
            proof.push(subtree_root(leaves, lo, lo + k));
            lo += k;
            m -= k;
            b = false;
        }
    }
    if !b {
        proof.push(subtree_root(leaves, lo, hi));
    }
    proof.reverse();
    Ok(proof)
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root`, with RFC 9162 §2.1.4.2's algorithm.
///
/// Equal sizes need equal roots and an empty proof. Every log starts from the empty tree: an
/// `old_size` of 0 needs an empty proof and the empty tree's root ([`empty_root`]) as
/// `old_root`.
///
/// # Errors
/// - [`ProofError::SizesReversed`] when `old_size > new_size`;
/// - [`ProofError::ConsistencyProofLength`] when `proof` has more or fewer hashes than a
///   proof between these sizes;
/// - [`ProofError::SameSizeRootsDiffer`] when the sizes are equal and the roots are not;
/// - [`ProofError::OldRootMismatch`], [`ProofError::RootMismatch`] when the proof leads to
///   another old or new root.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesReversed { old_size, new_size });
    }
    let expected = consistency_len(old_size, new_size);
    let wrong_length =
        || ProofError::ConsistencyProofLength { old_size, new_size, expected, actual: proof.len() };
    if proof.len() != expected {
        return Err(wrong_length());
    }
    if old_size == 0 {
        let empty = empty_root();
        if *old_root != empty {
            return Err(ProofError::OldRootMismatch {
                old_size,
                computed: empty,
                expected: *old_root,
            });
        }
    }
    if old_size == new_size {
        if old_root != new_root {
            return Err(ProofError::SameSizeRootsDiffer {
                tree_size: new_size,
                old_root: *old_root,
                new_root: *new_root,
            });
        }
        return Ok(());
    }
    if old_size == 0 {
        return Ok(());
    }
    // 0 < old_size < new_size, and the proof is not empty.
    let (first, rest) = match proof.split_first() {
        // When old_size is a power of two, the old root is the proof's implicit first hash.
        Some(_) if old_size.is_power_of_two() => (old_root, proof),
        Some((first, rest)) => (first, rest),
        None => return Err(wrong_length()),
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(wrong_length());
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(wrong_length());
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch { old_size, computed: fr, expected: *old_root });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            tree_size: new_size,
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    /// `MTH` straight from RFC 9162 §2.1.1, recursively.
    fn mth(leaves: &[Digest]) -> Digest {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// Leaf hashes of `n` distinct data.
    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| leaf_hash(format!("leaf {i}").as_bytes())).collect()
    }

    /// `d` with one bit flipped.
    fn flip(d: &Digest, bit: usize) -> Digest {
        let mut bytes = *d.as_bytes();
        bytes[bit / 8 % 32] ^= 1 << (bit % 8);
        Digest::from_bytes(bytes)
    }

    fn hex(s: &str) -> Digest {
        s.parse().unwrap()
    }

    /// How a root is made of a proof's hashes: the oracle for which altered sizes or indices
    /// a proof still verifies for (exactly those whose trees combine the same hashes the same
    /// way; the proof is then as true of them, since a leaf hash may stand for a subtree).
    /// Built from the RFC's recursive `PATH` and `SUBPROOF`, not from the verifiers.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Expr {
        /// The leaf an inclusion proof is for.
        Leaf,
        /// The old root a consistency verifier is handed, where the proof leaves it out.
        OldRoot,
        /// The proof's hash at this position.
        Hash(usize),
        /// `node_hash(left, right)`.
        Node(Box<Expr>, Box<Expr>),
    }

    fn node(l: Expr, r: Expr) -> Expr {
        Expr::Node(Box::new(l), Box::new(r))
    }

    /// The root of `n` leaves as `PATH(m, D[n])`'s hashes make it; `next` counts the hashes
    /// (the path lists the deepest first).
    fn path_expr(m: u64, n: u64, next: &mut usize) -> Expr {
        if n == 1 {
            return Expr::Leaf;
        }
        let k = split(n);
        let (sub, right) = if m < k {
            (path_expr(m, k, next), true)
        } else {
            (path_expr(m - k, n - k, next), false)
        };
        let h = Expr::Hash(*next);
        *next += 1;
        if right { node(sub, h) } else { node(h, sub) }
    }

    /// The old and new roots as `SUBPROOF(m, D[n], b)`'s hashes make them.
    fn subproof_expr(m: u64, n: u64, b: bool, next: &mut usize) -> (Expr, Expr) {
        if m == n {
            if b {
                return (Expr::OldRoot, Expr::OldRoot);
            }
            *next += 1;
            return (Expr::Hash(*next - 1), Expr::Hash(*next - 1));
        }
        let k = split(n);
        if m <= k {
            let (old, new) = subproof_expr(m, k, b, next);
            *next += 1;
            (old, node(new, Expr::Hash(*next - 1)))
        } else {
            let (old, new) = subproof_expr(m - k, n - k, false, next);
            *next += 1;
            let h = Expr::Hash(*next - 1);
            (node(h.clone(), old), node(h, new))
        }
    }

    fn substitute(e: &Expr, old_root: &Expr) -> Expr {
        match e {
            Expr::OldRoot => old_root.clone(),
            Expr::Node(l, r) => node(substitute(l, old_root), substitute(r, old_root)),
            other => other.clone(),
        }
    }

    /// `(old root, new root, number of hashes)` as `PROOF(m, D[n])` makes them (`0 < m < n`).
    type Combination = (Expr, Expr, usize);

    /// [`Combination`]s for every `0 < m < n <= max`, by `[m][n]`.
    fn combinations(max: u64) -> Vec<Vec<Option<Combination>>> {
        (0..=max)
            .map(|m| {
                (0..=max)
                    .map(|n| {
                        (0 < m && m < n).then(|| {
                            let mut used = 0;
                            let (old, new) = subproof_expr(m, n, true, &mut used);
                            (old, new, used)
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether a proof made as `real`, read as `other`, makes the same old and new roots: the
    /// old root handed in is what `real` makes it from, or itself when `real` leaves it out
    /// (an old size that is a power of two).
    fn same_combination(real: &Combination, other: &Combination) -> bool {
        let (old, new, len) = real;
        let (old2, new2, len2) = other;
        len == len2 && substitute(old2, old) == *old && substitute(new2, old) == *new
    }

    /// The values other than `x` in `0..=max` that a test alters `x` to: all of them, or (to
    /// keep debug-build tests quick) its neighbours, the ends, half and double, and `x` with
    /// each low bit flipped.
    fn alternatives(x: u64, max: u64, all: bool) -> Vec<u64> {
        let mut out: Vec<u64> = if all {
            (0..=max).collect()
        } else {
            [0, 1, x.wrapping_sub(2), x.wrapping_sub(1), x + 1, x + 2, x / 2, 2 * x, 2 * x + 1, max]
                .into_iter()
                .chain((0..7).map(|b| x ^ (1 << b)))
                .collect()
        };
        out.retain(|&y| y != x && y <= max);
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            empty_root(),
            hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(root(&[]), empty_root());
        // SHA-256(0x00), the hash of an empty leaf.
        assert_eq!(
            leaf_hash(b""),
            hex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
        );
        assert_eq!(root(&[leaf_hash(b"")]), leaf_hash(b""));
        // The domain separation: a leaf is SHA-256 over 0x00 ‖ data, a node over 0x01 ‖ l ‖ r.
        let (a, b, c) = (leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c"));
        assert_eq!(a, Digest::sha256(b"\x00a"));
        let mut both = vec![1u8];
        both.extend_from_slice(a.as_bytes());
        both.extend_from_slice(b.as_bytes());
        assert_eq!(node_hash(&a, &b), Digest::sha256(&both));
        assert_eq!(root(&[a, b]), node_hash(&a, &b));
        assert_eq!(root(&[a, b, c]), node_hash(&node_hash(&a, &b), &c));
    }

    /// The Certificate Transparency reference vectors (RFC 6962's test data, as the CT and
    /// transparency-dev Merkle libraries test with): eight leaves, the roots of their first
    /// 1..=8, and some inclusion and consistency proofs.
    #[test]
    fn certificate_transparency_vectors() {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves: Vec<Digest> = data.iter().map(|d| leaf_hash(d)).collect();
        let root_of = |n: usize| hex(roots[n - 1]);
        for n in 1..=8 {
            assert_eq!(root(&leaves[..n]), root_of(n), "root of {n} leaves");
        }
        let hexes = |hs: &[&str]| hs.iter().map(|h| hex(h)).collect::<Vec<_>>();

        // (index, tree size, PATH)
        let inclusion: [(u64, u64, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, path) in inclusion {
            let tree = &leaves[..size as usize];
            let path = hexes(path);
            assert_eq!(inclusion_proof(tree, index).unwrap(), path, "PATH({index}, D[{size}])");
            verify_inclusion(&tree[index as usize], index, size, &path, &root_of(size as usize))
                .unwrap();
        }

        // (old size, new size, PROOF)
        let consistency: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old_size, new_size, proof) in consistency {
            let tree = &leaves[..new_size as usize];
            let proof = hexes(proof);
            assert_eq!(
                consistency_proof(tree, old_size).unwrap(),
                proof,
                "PROOF({old_size}, D[{new_size}])"
            );
            let (old, new) = (root_of(old_size as usize), root_of(new_size as usize));
            verify_consistency(old_size, new_size, &old, &new, &proof).unwrap();
        }
    }

    #[test]
    fn root_equals_the_recursive_definition() {
        let all = leaves(300);
        for n in 0..=all.len() {
            assert_eq!(root(&all[..n]), mth(&all[..n]), "{n} leaves");
        }
    }

    #[test]
    fn every_inclusion_proof_up_to_64_leaves_verifies_and_fails_when_altered() {
        let all = leaves(65);
        let stranger = all[64];
        // shapes[size][i]: how PATH(i, D[size]) makes the root.
        let shapes: Vec<Vec<Expr>> = (0..=129)
            .map(|size| (0..size.min(64)).map(|i| path_expr(i, size, &mut 0)).collect())
            .collect();
        for n in 1..=64u64 {
            let tree = &all[..n as usize];
            let r = root(tree);
            for i in 0..n {
                let leaf = tree[i as usize];
                let proof = inclusion_proof(tree, i).unwrap();
                verify_inclusion(&leaf, i, n, &proof, &r).unwrap();
                let mut used = 0;
                let shape = &shapes[n as usize][i as usize];
                path_expr(i, n, &mut used);
                assert_eq!(proof.len(), used, "PATH({i}, D[{n}]) has one hash per level");

                // Any hash of the proof altered.
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j] = flip(&bad[j], j * 7 + 3);
                    assert!(matches!(
                        verify_inclusion(&leaf, i, n, &bad, &r),
                        Err(ProofError::RootMismatch { .. })
                    ));
                }
                // Truncated, extended at either end.
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(matches!(
                        verify_inclusion(&leaf, i, n, shorter, &r),
                        Err(ProofError::InclusionProofLength { .. })
                    ));
                }
                for longer in [[&proof[..], &[r]].concat(), [&[leaf], &proof[..]].concat()] {
                    assert!(matches!(
                        verify_inclusion(&leaf, i, n, &longer, &r),
                        Err(ProofError::InclusionProofLength { .. })
                    ));
                }
                // Another leaf, another root.
                assert!(verify_inclusion(&flip(&leaf, 0), i, n, &proof, &r).is_err());
                assert!(verify_inclusion(&stranger, i, n, &proof, &r).is_err());
                for wrong_root in [flip(&r, 255), empty_root(), leaf] {
                    if wrong_root != r {
                        assert!(matches!(
                            verify_inclusion(&leaf, i, n, &proof, &wrong_root),
                            Err(ProofError::RootMismatch { .. })
                        ));
                    }
                }
                // Any other index fails: a position in a tree has one path.
                for j in alternatives(i, n + 1, n <= 32) {
                    assert!(verify_inclusion(&leaf, j, n, &proof, &r).is_err(), "{i} as {j}/{n}");
                }
                // Another size verifies exactly when its tree combines the same hashes the
                // same way. Doubling or halving the size never does.
                for size in alternatives(n, 2 * n + 1, n <= 32) {
                    let same = i < size && shapes[size as usize][i as usize] == *shape;
                    assert_eq!(
                        verify_inclusion(&leaf, i, size, &proof, &r).is_ok(),
                        same,
                        "leaf {i} of {n} checked as of {size}"
                    );
                }
                assert!(verify_inclusion(&leaf, i, n * 2, &proof, &r).is_err());
                assert!(verify_inclusion(&leaf, i, n / 2, &proof, &r).is_err());
            }
        }
    }

    #[test]
    fn every_consistency_proof_up_to_64_leaves_verifies_and_fails_when_altered() {
        let all = leaves(64);
        let empty = empty_root();
        let combination = combinations(129);
        for n in 0..=64u64 {
            let tree = &all[..n as usize];
            let new = root(tree);
            for m in 0..=n {
                let old = root(&tree[..m as usize]);
                let proof = consistency_proof(tree, m).unwrap();
                verify_consistency(m, n, &old, &new, &proof).unwrap();
                let real = &combination[m as usize][n as usize];
                if let Some((_, _, used)) = real {
                    assert_eq!(proof.len(), *used, "PROOF({m}, D[{n}])");
                } else {
                    assert!(proof.is_empty());
                }
                let ok = |m2: u64, n2: u64, old: &Digest, new: &Digest, proof: &[Digest]| {
                    verify_consistency(m2, n2, old, new, proof).is_ok()
                };

                // Any hash altered; the proof truncated, emptied, or extended at either end.
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j] = flip(&bad[j], j * 11 + 5);
                    assert!(!ok(m, n, &old, &new, &bad), "{m}->{n}: hash {j} altered");
                }
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(matches!(
                        verify_consistency(m, n, &old, &new, shorter),
                        Err(ProofError::ConsistencyProofLength { .. })
                    ));
                    assert!(!ok(m, n, &old, &new, &[]));
                }
                for extra in [old, new, proof.first().copied().unwrap_or(new)] {
                    for longer in [[&proof[..], &[extra]].concat(), [&[extra], &proof[..]].concat()]
                    {
                        assert!(matches!(
                            verify_consistency(m, n, &old, &new, &longer),
                            Err(ProofError::ConsistencyProofLength { .. })
                        ));
                    }
                }
                // Either root altered, or the two swapped.
                assert!(!ok(m, n, &flip(&old, 1), &new, &proof), "{m}->{n}: old root altered");
                if m > 0 {
                    assert!(!ok(m, n, &old, &flip(&new, 2), &proof), "{m}->{n}: new root altered");
                }
                if m < n {
                    assert!(!ok(m, n, &new, &old, &proof), "{m}->{n}: roots swapped");
                    assert!(!ok(m, n, &new, &new, &proof));
                    if m > 0 {
                        assert!(!ok(m, n, &old, &old, &proof));
                    }
                    assert_eq!(
                        verify_consistency(n, m, &new, &old, &proof),
                        Err(ProofError::SizesReversed { old_size: n, new_size: m })
                    );
                }

                // Another old or new size verifies exactly when its trees combine the same
                // hashes the same way (the trivial cases by their rules).
                for (m2, n2) in alternatives(m, n + 1, n <= 32)
                    .into_iter()
                    .map(|m2| (m2, n))
                    .chain(alternatives(n, 2 * n + 1, n <= 32).into_iter().map(|n2| (m, n2)))
                {
                    let expected = if m2 > n2 {
                        false
                    } else if m2 == n2 {
                        proof.is_empty() && old == new && (m2 > 0 || old == empty)
                    } else if m2 == 0 {
                        proof.is_empty() && old == empty
                    } else {
                        match (real, &combination[m2 as usize][n2 as usize]) {
                            (Some(real), Some(other)) => same_combination(real, other),
                            _ => false,
                        }
                    };
                    assert_eq!(
                        ok(m2, n2, &old, &new, &proof),
                        expected,
                        "the proof {m}->{n} checked as {m2}->{n2}"
                    );
                }
            }
        }
    }

    #[test]
    fn edge_cases_and_messages() {
        let tree = leaves(5);
        let r = root(&tree);
        let r3 = root(&tree[..3]);
        let r4 = root(&tree[..4]);
        assert_eq!(
            inclusion_proof(&tree, 5),
            Err(ProofError::IndexOutOfRange { index: 5, tree_size: 5 })
        );
        assert_eq!(
            inclusion_proof(&[], 0),
            Err(ProofError::IndexOutOfRange { index: 0, tree_size: 0 })
        );
        assert_eq!(
            consistency_proof(&tree, 6),
            Err(ProofError::SizesReversed { old_size: 6, new_size: 5 })
        );
        assert_eq!(consistency_proof(&tree, 0), Ok(vec![]));
        assert_eq!(consistency_proof(&tree, 5), Ok(vec![]));
        assert_eq!(consistency_proof(&[], 0), Ok(vec![]));
        verify_consistency(0, 0, &empty_root(), &empty_root(), &[]).unwrap();
        verify_consistency(0, 5, &empty_root(), &r, &[]).unwrap();
        verify_consistency(5, 5, &r, &r, &[]).unwrap();

        let message = |e: ProofError| e.to_string();
        assert_eq!(
            message(verify_inclusion(&tree[0], 7, 5, &[], &r).unwrap_err()),
            "leaf index 7 is out of range: the tree has 5 leaves"
        );
        assert_eq!(
            message(verify_inclusion(&tree[0], 0, 5, &[], &r).unwrap_err()),
            "the inclusion proof has 0 hashes, but leaf 0 of a tree of 5 leaves needs exactly 3"
        );
        let path = inclusion_proof(&tree, 4).unwrap();
        assert_eq!(
            message(verify_inclusion(&tree[4], 4, 5, &path, &r4).unwrap_err()),
            format!("the proof leads to root {r} for 5 leaves, the checkpoint says {r4}")
        );
        assert_eq!(
            message(verify_consistency(5, 3, &r, &r3, &[]).unwrap_err()),
            "the old tree size 5 is larger than the new tree size 3: a log only grows, so a \
             consistency proof runs from a smaller tree to a larger one"
        );
        assert_eq!(
            message(verify_consistency(5, 5, &r, &r4, &[]).unwrap_err()),
            format!("both checkpoints have 5 leaves but different roots: {r} and {r4}")
        );
        assert_eq!(
            message(verify_consistency(0, 5, &r4, &r, &[]).unwrap_err()),
            format!(
                "the proof leads to old root {} for 0 leaves, the old checkpoint says {r4}",
                empty_root()
            )
        );
        assert_eq!(
            message(verify_consistency(3, 5, &r3, &r, &[]).unwrap_err()),
            "the consistency proof has 0 hashes, but one from 3 to 5 leaves needs exactly 4"
        );
        let proof = consistency_proof(&tree, 3).unwrap();
        assert_eq!(
            message(verify_consistency(3, 5, &r3, &r4, &proof).unwrap_err()),
            format!("the proof leads to root {r} for 5 leaves, the checkpoint says {r4}")
        );
        assert_eq!(
            message(verify_consistency(3, 5, &r4, &r, &proof).unwrap_err()),
            format!("the proof leads to old root {r3} for 3 leaves, the old checkpoint says {r4}")
        );
    }

    #[test]
    fn sizes_at_the_top_of_u64_do_not_overflow() {
        let top = u64::MAX;
        assert_eq!(inclusion_len(0, 1 << 63), 63);
        // 2^64 - 1 leaves: 2^63 + 2^62 + … + 1, the last leaf alone after 63 splits.
        assert_eq!(inclusion_len(top - 1, top), 63);
        let leaf = leaf_hash(b"x");
        assert!(matches!(
            verify_inclusion(&leaf, top - 1, top, &vec![leaf; 63], &leaf),
            Err(ProofError::RootMismatch { .. })
        ));
        for (m, n) in [(top - 1, top), (1, top), (1 << 63, top), (top >> 1, 1 << 63)] {
            let proof = vec![leaf; consistency_len(m, n)];
            assert!(matches!(
                verify_consistency(m, n, &leaf, &leaf, &proof),
                Err(ProofError::OldRootMismatch { .. } | ProofError::RootMismatch { .. })
            ));
        }
    }

    /// Leaf hashes of 0..300 random data.
    fn leaf_set() -> impl proptest::strategy::Strategy<Value = Vec<Digest>> {
        proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..300)
            .prop_map(|data| data.iter().map(|d| leaf_hash(d)).collect())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The iterative root is the RFC's recursive MTH; every proof verifies; a proof made
        /// for one tree does not verify against the same tree with one leaf changed.
        #[test]
        fn proofs_hold_for_random_trees(
            tree in leaf_set(),
            picks in (proptest::num::u64::ANY, proptest::num::u64::ANY, proptest::num::u64::ANY),
            bit in 0usize..256,
        ) {
            let n = tree.len() as u64;
            let r = root(&tree);
            proptest::prop_assert_eq!(r, mth(&tree));
            if n == 0 {
                return Ok(());
            }
            let (i, j, m) = (picks.0 % n, picks.1 % n, picks.2 % (n + 1));
            let leaf = tree[i as usize];
            let path = inclusion_proof(&tree, i).unwrap();
            proptest::prop_assert!(verify_inclusion(&leaf, i, n, &path, &r).is_ok());
            let old = root(&tree[..m as usize]);
            let proof = consistency_proof(&tree, m).unwrap();
            proptest::prop_assert!(verify_consistency(m, n, &old, &r, &proof).is_ok());

            // Leaf j changed: another root; the path proves nothing about it.
            let mut changed = tree.clone();
            changed[j as usize] = flip(&changed[j as usize], bit);
            let r2 = root(&changed);
            proptest::prop_assert_ne!(r2, r);
            proptest::prop_assert!(verify_inclusion(&leaf, i, n, &path, &r2).is_err());
            // The path covers every leaf but its own: with that leaf changed, it proves the
            // changed leaf instead.
            proptest::prop_assert_eq!(
                verify_inclusion(&changed[i as usize], i, n, &path, &r2).is_ok(),
                i == j
            );
            let path2 = inclusion_proof(&changed, i).unwrap();
            proptest::prop_assert_eq!(path2 == path, i == j);

            // The old root changes exactly when the changed leaf is in the old tree; the proof
            // never joins the first tree's old root to the changed tree's new root, nor the
            // changed tree's old root to the first tree's new root unless they are the same.
            let old2 = root(&changed[..m as usize]);
            proptest::prop_assert_eq!(old2 == old, j >= m);
            proptest::prop_assert_eq!(verify_consistency(m, n, &old, &r2, &proof).is_ok(), m == 0);
            proptest::prop_assert_eq!(verify_consistency(m, n, &old2, &r, &proof).is_ok(), j >= m);
            // Against the changed tree's own pair, it verifies exactly when it is that tree's
            // proof too (the changed leaf was inside an old tree of a power-of-two size).
            let proof2 = consistency_proof(&changed, m).unwrap();
            proptest::prop_assert!(verify_consistency(m, n, &old2, &r2, &proof2).is_ok());
            proptest::prop_assert_eq!(
                verify_consistency(m, n, &old2, &r2, &proof).is_ok(),
                proof == proof2
            );
        }
    }
}
