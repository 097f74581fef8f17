"""Schemathesis hooks for KAHN: teach it to send application/x-ndjson bodies.

The ingest body is documented as a string of NDJSON lines; schemathesis has no serializer
for the media type, so generated strings are sent as their UTF-8 bytes.
"""
import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
