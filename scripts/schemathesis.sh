#!/usr/bin/env bash
# Schemathesis against a live `kahn serve`: every operation of /openapi.json is exercised
# with generated requests carrying a valid API key; it fails on any 5xx and on any response
# that does not match the document (status, content type, headers, body schema).
#
#   scripts/schemathesis.sh            # bounded: 25 examples per operation (CI)
#   MAX_EXAMPLES=500 scripts/schemathesis.sh   # longer
#
# Every check runs except positive_data_acceptance: `cursor` is an opaque token only the
# server issues, so a schema-valid but made-up cursor is rightly refused with 400.
#
# The coverage phase is left out: on this machine's Python 3.11 it dies inside hypothesis
# ("AST constructor recursion depth mismatch", a CPython bug), not on a server answer.
#
# Installs schemathesis from PyPI when it is missing. Builds and runs the debug `kahn`
# binary against a throwaway SQLite file; seeds one run so reads have data.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES="${MAX_EXAMPLES:-25}"

# Pinned: the CLI's flags change between releases.
SCHEMATHESIS_VERSION="4.32.5"
st_bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st"
if ! "$st_bin" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p kahn-cli --bin kahn
bin="${CARGO_TARGET_DIR:-target}/debug/kahn"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

db="sqlite://$work/kahn.db"
key="$("$bin" tenant provision schemathesis --json --db "$db" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"
# Schemathesis checks authentication by sending bad credentials from this one address; a
# failed-authentication limit of 20/min would then answer its valid key 429: raised knowingly.
KAHN_LOG=warn "$bin" serve --db "$db" --listen 127.0.0.1:0 --retention-interval-secs 0 \
  --ingest-rate 100000 --auth-failures-per-minute 1000000 >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
url=""
for _ in $(seq 1 100); do
  url="$(grep -o 'http://[0-9.:]*' "$work/serve.out" | head -1 || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "kahn serve did not start:" >&2; cat "$work/serve.err" >&2; exit 1; }

mkdir -p "$work/run"
printf '{"ts":"2026-01-01T00:00:00Z","to":"running","node":"plan"}\n{"ts":"2026-01-01T00:00:01Z","to":"succeeded","node":"plan"}\n' >"$work/run/transitions.ndjson"
KAHN_API_KEY="$key" "$bin" push "$work/run" --url "$url" --run-id seeded >/dev/null

echo "==> schemathesis: $url/openapi.json, $MAX_EXAMPLES examples per operation"
SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks PYTHONPATH=. "$st_bin" run "$url/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$MAX_EXAMPLES" \
  --phases examples,fuzzing,stateful \
  --generation-deterministic \
  --workers 2
