#!/usr/bin/env bash
# The OpenAPI document a real `kahn serve` serves, checked by redocly's linter with the
# recommended rules (redocly.yaml says which one is off, and why). Needs the kahn binary
# (built here) and viewer-tests' npm packages (scripts/ensure-chromium.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p kahn-cli --bin kahn
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/kahn"
redocly="$PWD/viewer-tests/node_modules/.bin/redocly"
if [ ! -x "$redocly" ]; then
    echo "openapi-lint: $redocly is missing; run bash scripts/ensure-chromium.sh (npm ci in viewer-tests)" >&2
    exit 1
fi
tmp="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" serve --db "sqlite://$tmp/kahn.db" --listen "127.0.0.1:$port" >"$tmp/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/openapi.json" -o "$tmp/openapi.json" 2>/dev/null && break
    sleep 0.1
done
[ -s "$tmp/openapi.json" ] || { echo "openapi-lint: kahn serve did not answer" >&2; cat "$tmp/serve.log" >&2; exit 1; }
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
    "$redocly" lint --config redocly.yaml --format=stylish "$tmp/openapi.json"
echo "openapi-lint: the document is clean under redocly's recommended rules"
