#!/usr/bin/env python3
"""An independent Merkle tree (RFC 9162 section 2.1, the tree of RFC 6962), standard library only.

kahn-core/tests/merkle_python.rs checks KAHN's Rust implementation (kahn-core/src/merkle.rs)
against this one. It is written from the RFC's text, not from the Rust code: MTH, PATH, PROOF
and SUBPROOF as the RFC's recursive definitions (over the raw leaf data, so the leaf hash is
checked too), and the two verification algorithms step by step as sections 2.1.3.2 and 2.1.4.2
number them.

KAHN's conventions where the RFC defines nothing: the consistency proof from 0 leaves, or
between equal sizes, is empty; verifying one needs an empty proof, the empty tree's root
(SHA-256 of the empty string) for 0 leaves, and equal roots for equal sizes.

Reads one JSON object on stdin, writes one on stdout. Both keys are optional:

  {"trees": [{"leaves": [hex data, ...], "indices": [i, ...], "old_sizes": [m, ...]}, ...],
   "inclusion_checks": [{"leaf": hex, "index": i, "tree_size": n, "proof": [hex, ...],
                         "root": hex}, ...],
   "consistency_checks": [{"old_size": m, "new_size": n, "old_root": hex, "new_root": hex,
                           "proof": [hex, ...]}, ...]}

answers

  {"trees": [{"leaf_hashes": [hex, ...], "root": hex, "inclusion": [PATH(i, D[n]), ...],
              "old_roots": [MTH(D[0:m]), ...], "consistency": [PROOF(m, D[n]), ...]}, ...],
   "inclusion_checks": [true | false, ...], "consistency_checks": [true | false, ...]}
"""

import hashlib
import json
import sys


def sha256(data):
    return hashlib.sha256(data).digest()


def largest_power_of_two_below(n):
    """k, the largest power of two smaller than n (n > 1): k < n <= 2k."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries):
    """MTH(D[n]), section 2.1.1."""
    n = len(entries)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return sha256(b"\x00" + entries[0])
    k = largest_power_of_two_below(n)
    return sha256(b"\x01" + mth(entries[0:k]) + mth(entries[k:n]))


def path(m, entries):
    """PATH(m, D[n]), section 2.1.3.1."""
    n = len(entries)
    if n == 1:
        return []
    k = largest_power_of_two_below(n)
    if m < k:
        return path(m, entries[0:k]) + [mth(entries[k:n])]
    return path(m - k, entries[k:n]) + [mth(entries[0:k])]


def subproof(m, entries, b):
    """SUBPROOF(m, D[n], b), section 2.1.4.1."""
    n = len(entries)
    if m == n:
        return [] if b else [mth(entries)]
    k = largest_power_of_two_below(n)
    if m <= k:
        return subproof(m, entries[0:k], b) + [mth(entries[k:n])]
    return subproof(m - k, entries[k:n], False) + [mth(entries[0:k])]


def proof(m, entries):
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true); empty from 0 leaves (KAHN's convention)."""
    if m == 0:
        return []
    return subproof(m, entries, True)


def hash_children(left, right):
    return sha256(b"\x01" + left + right)


def verify_inclusion(leaf_index, tree_size, inclusion_path, hash_, root_hash):
    """Section 2.1.3.2: does the path prove `hash_` at `leaf_index` under `root_hash`?"""
    # 1.
    if leaf_index >= tree_size:
        return False
    # 2.
    fn, sn = leaf_index, tree_size - 1
    # 3.
    r = hash_
    # 4.
    for p in inclusion_path:
        if sn == 0:
            return False
        if fn & 1 == 1 or fn == sn:
            r = hash_children(p, r)
            if fn & 1 == 0:
                while not (fn & 1 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    # 5.
    return sn == 0 and r == root_hash


def verify_consistency(first, second, first_hash, second_hash, consistency_path):
    """Section 2.1.4.2, with KAHN's conventions for 0 and equal sizes."""
    if first > second:
        return False
    if first == 0:
        return consistency_path == [] and first_hash == sha256(b"")
    if first == second:
        return consistency_path == [] and first_hash == second_hash
    # 1.
    if not consistency_path:
        return False
    # 2.
    if first & (first - 1) == 0:
        consistency_path = [first_hash] + consistency_path
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    if fn & 1 == 1:
        while fn & 1 == 1:
            fn >>= 1
            sn >>= 1
    # 5.
    fr = sr = consistency_path[0]
    # 6.
    for c in consistency_path[1:]:
        if sn == 0:
            return False
        if fn & 1 == 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if fn & 1 == 0:
                while not (fn & 1 == 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    return fr == first_hash and sr == second_hash and sn == 0


def hexes(digests):
    return [d.hex() for d in digests]


def unhex(strings):
    return [bytes.fromhex(s) for s in strings]


def tree_answer(tree):
    entries = unhex(tree["leaves"])
    return {
        "leaf_hashes": [mth([e]).hex() for e in entries],
        "root": mth(entries).hex(),
        "inclusion": [hexes(path(i, entries)) for i in tree["indices"]],
        "old_roots": [mth(entries[0:m]).hex() for m in tree["old_sizes"]],
        "consistency": [hexes(proof(m, entries)) for m in tree["old_sizes"]],
    }


def main():
    request = json.load(sys.stdin)
    answer = {
        "trees": [tree_answer(t) for t in request.get("trees", [])],
        "inclusion_checks": [
            verify_inclusion(
                c["index"],
                c["tree_size"],
                unhex(c["proof"]),
                bytes.fromhex(c["leaf"]),
                bytes.fromhex(c["root"]),
            )
            for c in request.get("inclusion_checks", [])
        ],
        "consistency_checks": [
            verify_consistency(
                c["old_size"],
                c["new_size"],
                bytes.fromhex(c["old_root"]),
                bytes.fromhex(c["new_root"]),
                unhex(c["proof"]),
            )
            for c in request.get("consistency_checks", [])
        ],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
