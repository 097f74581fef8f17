#!/usr/bin/env bash
# Remakes the README's viewer screenshots (docs/viewer-run.png, docs/viewer-list.png) from the
# README's own first-run steps: the example runs pushed into a fresh SQLite file, served, and
# opened in headless Chromium. Run it after a change to the viewer and look at the result.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-chromium.sh
cargo build -p kahn-cli
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export KAHN_BIN="$target_dir/debug/kahn"
(cd viewer-tests && node readme-shot.mjs)
