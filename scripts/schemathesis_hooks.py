"""Schemathesis hooks for KAHN.

* Teach it to send application/x-ndjson bodies: the ingest body is documented as a string of
  NDJSON lines; schemathesis has no serializer for the media type, so generated strings are
  sent as their UTF-8 bytes.
* Reach the query input a database may not represent. The document describes what a client
  may send; the values that broke PostgreSQL (a NUL in `source`, a cursor whose time is out of
  its range) are rare among generated strings, so half of the generated `GET /v1/runs` queries
  get one parameter replaced by such a value. Every value here must be refused with a 4xx
  (never a 5xx), so a case stays right whether schemathesis generated it as valid or invalid.
"""
import schemathesis
from hypothesis import strategies as st

# kahn_core::MIN_CURSOR_MICROS / MAX_CURSOR_MICROS: the times a cursor may carry.
MIN_CURSOR_MICROS = -62_167_392_000_000_000
MAX_CURSOR_MICROS = 253_402_473_600_000_000


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _cursor(micros, run_id):
    """A cursor's text form, forged: hex of `MICROS|RUN_ID`."""
    return f"{micros}|{run_id}".encode().hex()


_OUT_OF_RANGE = st.one_of(
    st.sampled_from([-8_000_000_000_000_000_000, -(2**63), 2**63 - 1,
                     MIN_CURSOR_MICROS - 1, MAX_CURSOR_MICROS + 1]),
    st.integers(min_value=-(2**63), max_value=MIN_CURSOR_MICROS - 1),
    st.integers(min_value=MAX_CURSOR_MICROS + 1, max_value=2**63 - 1),
)

# Parameter name -> values `GET /v1/runs` must refuse with 400.
_REFUSED = {
    "cursor": st.one_of(
        st.tuples(_OUT_OF_RANGE, st.sampled_from(["x", "seeded", "a.b:c"])).map(
            lambda t: _cursor(*t)),
        st.sampled_from([_cursor(0, ""), _cursor(0, ".."), _cursor("1e3", "x"), "0", "zz"]),
    ),
    "source": st.one_of(
        st.text(max_size=8).map(lambda s: s + "\x00"),
        st.sampled_from(["\x00", "a b", "\t", "", "s" * 257, "\u0085"]),
    ),
    "status": st.just(""),
}


@schemathesis.hook
def flatmap_query(context, query):
    op = context.operation
    if op is None or op.path != "/v1/runs" or op.method.upper() != "GET":
        return st.just(query)
    base = dict(query or {})
    hostile = st.sampled_from(sorted(_REFUSED)).flatmap(
        lambda name: _REFUSED[name].map(lambda value: {**base, name: value}))
    return st.one_of(st.just(query), hostile)
