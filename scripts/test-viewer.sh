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
bash scripts/node-suite.sh viewer e2e.test.mjs 180000
