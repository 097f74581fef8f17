#!/usr/bin/env bash
# Schemathesis against a live `kahn serve`, once per backend: every operation of
# /openapi.json is exercised with generated requests (paths, query parameters, headers, bodies)
# carrying a valid API key; it fails on any 5xx and on any response that does not match the
# document (status, content type, headers, body schema).
#
#   scripts/schemathesis.sh                    # bounded: 25 examples per operation (CI)
#   MAX_EXAMPLES=500 scripts/schemathesis.sh   # longer
#   BACKENDS=postgres scripts/schemathesis.sh  # one backend (default: "sqlite postgres")
#
# sqlite:   a throwaway SQLite file.
# postgres: a fresh database on the PostgreSQL server of KAHN_TEST_PG_URL (an admin DSN;
#           default postgres://postgres@127.0.0.1:5432/postgres, the machine's cluster),
#           migrated and provisioned with the admin DSN, served as the app role kahn_app
#           (Row-Level Security on; password from KAHN_TEST_PG_APP_PASSWORD when set), and
#           dropped at the end. Query input PostgreSQL cannot represent (a NUL, a time out of
#           its range) must be refused with 400 before it reaches the database.
#
# Every check runs except positive_data_acceptance: `cursor` is an opaque token only the
# server issues, so a schema-valid but made-up cursor is rightly refused with 400.
#
# The coverage phase is left out: on this machine's Python 3.11 it dies inside hypothesis
# ("AST constructor recursion depth mismatch", a CPython bug), not on a server answer.
#
# Installs schemathesis from PyPI when it is missing. Builds and runs the debug `kahn`
# binary; seeds one run per server so reads have data.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES="${MAX_EXAMPLES:-25}"
BACKENDS="${BACKENDS:-sqlite postgres}"

# Pinned: the CLI's flags change between releases.
SCHEMATHESIS_VERSION="4.32.5"
st_bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st"
if ! "$st_bin" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p kahn-cli --bin kahn
bin="${CARGO_TARGET_DIR:-target}/debug/kahn"
work="$(mktemp -d)"
server_pids=()
pg_admin_url="${KAHN_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_db=""
cleanup() {
  for pid in "${server_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$pg_db" ]; then
    psql "$pg_admin_url" -qX -c "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "warning: could not drop database $pg_db" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# serve NAME DSN: starts `kahn serve` on a free loopback port; sets $url.
serve() {
  KAHN_LOG=warn "$bin" serve --db "$2" --listen 127.0.0.1:0 --retention-interval-secs 0 \
    --ingest-rate 100000 --auth-failures-per-minute 1000000 >"$work/$1.out" 2>"$work/$1.err" &
  server_pids+=($!)
  url=""
  for _ in $(seq 1 100); do
    url="$(grep -o 'http://[0-9.:]*' "$work/$1.out" | head -1 || true)"
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "kahn serve ($1) did not start:" >&2; cat "$work/$1.err" >&2; exit 1; }
}

# schemathesis NAME URL KEY: seeds one run through the server, then runs schemathesis on it.
schemathesis() {
  mkdir -p "$work/run-$1"
  printf '{"ts":"2026-01-01T00:00:00Z","to":"running","node":"plan"}\n{"ts":"2026-01-01T00:00:01Z","to":"succeeded","node":"plan"}\n' \
    >"$work/run-$1/transitions.ndjson"
  KAHN_API_KEY="$3" "$bin" push "$work/run-$1" --url "$2" --run-id seeded >/dev/null
  echo "==> schemathesis on $1: $2/openapi.json, $MAX_EXAMPLES examples per operation"
  SCHEMATHESIS_HOOKS=scripts.schemathesis_hooks PYTHONPATH=. "$st_bin" run "$2/openapi.json" \
    --header "Authorization: Bearer $3" \
    --checks all \
    --exclude-checks positive_data_acceptance \
    --max-examples "$MAX_EXAMPLES" \
    --phases examples,fuzzing,stateful \
    --generation-deterministic \
    --workers 2
}

provisioned_key() {
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])'
}

for backend in $BACKENDS; do
  case "$backend" in
    sqlite)
      db="sqlite://$work/kahn.db"
      key="$("$bin" tenant provision schemathesis --json --db "$db" | provisioned_key)"
      serve sqlite "$db"
      schemathesis sqlite "$url" "$key"
      ;;
    postgres)
      if [ -z "${KAHN_TEST_PG_URL:-}" ]; then bash scripts/ensure-postgres.sh >/dev/null; fi
      # The admin DSN split into scheme, user info, host and query, to name other databases
      # and the app role on the same server.
      base="${pg_admin_url%%\?*}"
      query=""
      if [[ "$pg_admin_url" == *\?* ]]; then query="?${pg_admin_url#*\?}"; fi
      scheme="${base%%://*}"
      host="${base#*://}"
      host="${host##*@}"
      host="${host%%/*}"
      pg_db="kahn_st_$(date +%s)_$$"
      psql "$pg_admin_url" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$pg_db\"" >/dev/null
      admin_dsn="${base%/*}/$pg_db$query"
      app_dsn="$scheme://kahn_app${KAHN_TEST_PG_APP_PASSWORD:+:$KAHN_TEST_PG_APP_PASSWORD}@$host/$pg_db$query"
      "$bin" migrate --db "$admin_dsn" >/dev/null
      key="$("$bin" tenant provision schemathesis --json --db "$admin_dsn" | provisioned_key)"
      serve postgres "$app_dsn"
      schemathesis postgres "$url" "$key"
      ;;
    *)
      echo "unknown backend $backend (BACKENDS takes sqlite and postgres)" >&2
      exit 2
      ;;
  esac
done
