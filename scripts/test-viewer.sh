#!/usr/bin/env bash
# The history viewer's end-to-end tests: builds the kahn binary, then drives headless Chromium
# against a real `kahn serve` with seeded data (viewer-tests/e2e.test.mjs). Screenshots of
# every state are written to target/viewer-screenshots/. Exits non-zero on any failure,
# including a browser that cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-chromium.sh

echo "==> cargo build -p kahn-cli (the kahn binary the viewer tests serve)"
cargo build -p kahn-cli
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export KAHN_BIN="$target_dir/debug/kahn"
export KAHN_SCREENSHOTS="${KAHN_SCREENSHOTS:-$PWD/target/viewer-screenshots}"

echo "==> viewer e2e (headless Chromium)"
mkdir -p "$KAHN_SCREENSHOTS"
tap="$KAHN_SCREENSHOTS/e2e.tap"
status=0
(cd viewer-tests && node --test --test-concurrency=1 --test-timeout=180000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" \
    e2e.test.mjs) || status=$?
passed="$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
failed="$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
# A setup failure (no browser, no binary) cancels every test: those count as failed, not skipped.
cancelled="$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
failed=$(( ${failed:-0} + ${cancelled:-0} ))
echo "viewer screenshots: $KAHN_SCREENSHOTS"
echo "viewer: ${passed:-0} passed, ${failed} failed"
if [ "$status" -ne 0 ] || [ "${passed:-0}" -eq 0 ] || [ "$failed" -ne 0 ]; then
    echo "viewer e2e failed (node exited $status)" >&2
    exit 1
fi
