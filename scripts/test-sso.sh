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
mkdir -p "$KAHN_SCREENSHOTS"
tap="$KAHN_SCREENSHOTS/sso.tap"
status=0
(cd viewer-tests && node --test --test-concurrency=1 --test-timeout=120000 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" \
    sso.test.mjs) || status=$?
passed="$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
failed="$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
# A setup failure (no browser, binary or provider) cancels every test: those count as failed.
cancelled="$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
skipped="$(sed -n 's/^# skipped \([0-9]*\)$/\1/p' "$tap" | tail -n 1)"
failed=$(( ${failed:-0} + ${cancelled:-0} + ${skipped:-0} ))
echo "SSO screenshots: $KAHN_SCREENSHOTS/sso-*.png"
echo "SSO: ${passed:-0} passed, ${failed} failed"
if [ "$status" -ne 0 ] || [ "${passed:-0}" -eq 0 ] || [ "$failed" -ne 0 ]; then
    echo "SSO e2e failed (node exited $status)" >&2
    exit 1
fi
