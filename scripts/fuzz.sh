#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ for a bounded time (FUZZ_SECS each, default 20).
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them.
# Installs cargo-fuzz from crates.io when missing. Fuzzes a scratch copy of each seed corpus,
# so the committed seeds stay small; a crash leaves its input in fuzz/artifacts/<target>/
# and fails the script.
#
#   scripts/fuzz.sh                  # every target, 20 s each
#   FUZZ_SECS=600 scripts/fuzz.sh ndjson
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECS="${FUZZ_SECS:-20}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ndjson jwt ingest)

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  scratch="$(mktemp -d)"
  cp fuzz/corpus/"$t"/* "$scratch"/
  echo "==> cargo fuzz run $t for ${FUZZ_SECS}s"
  (cd fuzz && cargo fuzz run -O "$t" "$scratch" -- -max_total_time="$FUZZ_SECS" -rss_limit_mb=2048 2>&1 | tail -4)
  rm -rf "$scratch"
done
