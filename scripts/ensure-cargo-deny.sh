#!/usr/bin/env bash
# Makes sure cargo-deny (the dependency policy check of deny.toml) is installed, at the version
# the policy was written for; installs it from crates.io when missing (a few minutes, once).
set -euo pipefail

want="0.20.2"
have="$(cargo deny --version 2>/dev/null | awk '{print $2}' || true)"
if [ "$have" = "$want" ]; then
    echo "cargo-deny: $have"
    exit 0
fi
echo "cargo-deny: ${have:-not installed}; installing $want from crates.io (once per machine)"
cargo install --locked cargo-deny --version "$want"
