#!/usr/bin/env bash
# Single sign-on end to end (issue 16): builds the kahn binary, then drives headless Chromium
# through a real OpenID provider (panva's oidc-provider, viewer-tests/oidc-provider.mjs, on a
# loopback port) and its own login page into a real `kahn serve` (viewer-tests/sso.test.mjs).
# Screenshots go to target/viewer-screenshots/sso-*.png. Exits non-zero on any failure,
# including a browser, binary or provider that cannot start: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-chromium.sh

echo "==> cargo build -p kahn-cli --bin kahn (the kahn binary the SSO tests serve)"
cargo build -p kahn-cli --bin kahn
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export KAHN_BIN="$target_dir/debug/kahn"
export KAHN_SCREENSHOTS="${KAHN_SCREENSHOTS:-$PWD/target/viewer-screenshots}"

echo "==> SSO e2e (a real OpenID provider, headless Chromium)"
bash scripts/node-suite.sh SSO sso.test.mjs 120000
