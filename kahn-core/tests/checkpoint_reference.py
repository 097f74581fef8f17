#!/usr/bin/env python3
"""An independent encoding of KAHN's checkpoint leaves, standard library only.

kahn-core/tests/checkpoint_python.rs checks kahn_core::checkpoint against this. It is written
from the table in the module documentation of kahn-core/src/checkpoint.rs, not from the Rust
code: every integer big-endian,

  kind (1 byte: head 0, purged 1, missing 2) | next_seq (unsigned, 8 bytes)
  | head_hash (32 raw bytes) | received_at (microseconds since 1970-01-01T00:00:00Z, signed,
  8 bytes, floor) | run id length (unsigned, 2 bytes) | run id (UTF-8)

The leaf hash is SHA-256(0x00 | data) and a checkpoint's root RFC 9162's MTH over the log's
leaves in order (merkle_reference.py's, itself checked against the RFC by merkle_python.rs).

Reads one JSON object on stdin:

  {"leaves": [{"kind": "head" | "purged" | "missing", "run_id": str, "next_seq": int,
               "head_hash": hex, "received_at": RFC 3339 with "Z"}, ...],
   "tree_sizes": [n, ...]}

answers

  {"encodings": [hex, ...], "leaf_hashes": [hex, ...], "roots": [MTH(leaves[0:n]), ...]}
"""

import datetime
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from merkle_reference import mth  # noqa: E402

KINDS = {"head": 0, "purged": 1, "missing": 2}
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
ONE_MICROSECOND = datetime.timedelta(microseconds=1)


def micros_since_epoch(rfc3339):
    """Exact integer microseconds (floor), from the text: no floating point."""
    when = datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (when - EPOCH) // ONE_MICROSECOND


def encode(leaf):
    run_id = leaf["run_id"].encode("utf-8")
    head_hash = bytes.fromhex(leaf["head_hash"])
    assert len(head_hash) == 32, leaf
    return (
        struct.pack(
            ">BQ32sqH",
            KINDS[leaf["kind"]],
            leaf["next_seq"],
            head_hash,
            micros_since_epoch(leaf["received_at"]),
            len(run_id),
        )
        + run_id
    )


def main():
    request = json.load(sys.stdin)
    data = [encode(leaf) for leaf in request["leaves"]]
    answer = {
        "encodings": [d.hex() for d in data],
        "leaf_hashes": [hashlib.sha256(b"\x00" + d).hexdigest() for d in data],
        "roots": [mth(data[0:n]).hex() for n in request["tree_sizes"]],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
