#!/usr/bin/env bash
# Runs one node:test browser suite of viewer-tests/ and judges it by its TAP totals: a
# cancelled or skipped test counts as failed (a setup failure — no browser, binary or
# provider — cancels every test), and a run with no passed test fails.
# Usage: scripts/node-suite.sh LABEL TEST_FILE TIMEOUT_MS   (KAHN_BIN and KAHN_SCREENSHOTS set)
set -euo pipefail
cd "$(dirname "$0")/.."
label="$1" file="$2" timeout="$3"

mkdir -p "$KAHN_SCREENSHOTS"
tap="$KAHN_SCREENSHOTS/${file%.test.mjs}.tap"
status=0
(cd viewer-tests && node --test --test-concurrency=1 --test-timeout="$timeout" \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" \
    "$file") || status=$?
total() { sed -n "s/^# $1 \([0-9]*\)$/\1/p" "$tap" | tail -n 1; }
passed="$(total pass)"
fail="$(total fail)" cancelled="$(total cancelled)" skipped="$(total skipped)"
failed=$(( ${fail:-0} + ${cancelled:-0} + ${skipped:-0} ))
echo "$label: ${passed:-0} passed, ${failed} failed (screenshots: $KAHN_SCREENSHOTS)"
if [ "$status" -ne 0 ] || [ "${passed:-0}" -eq 0 ] || [ "$failed" -ne 0 ]; then
    echo "$label failed (node exited $status)" >&2
    exit 1
fi
