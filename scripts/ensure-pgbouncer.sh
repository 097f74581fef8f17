#!/usr/bin/env bash
# Makes sure the `pgbouncer` binary is installed (Debian's package), for the tests that run
# several `kahn serve` processes behind a transaction-pooling pgbouncer. Nothing else: each
# test starts its own pgbouncer with a generated config on a free port
# (kahn_testkit::PgBouncer), so no system service is started or needed.
set -euo pipefail

if command -v pgbouncer >/dev/null 2>&1; then
    echo "pgbouncer: $(pgbouncer --version | head -n 1)"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "pgbouncer: not installed, and neither root nor sudo to install it." >&2
        echo "Install it: apt-get install pgbouncer" >&2
        exit 1
    fi
    sudo="sudo"
fi

echo "pgbouncer: installing Debian's package"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbouncer \
    || { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends pgbouncer; }
# The package enables a system service on port 6432; the tests do not use it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
    $sudo systemctl stop pgbouncer || true
fi
echo "pgbouncer: $(pgbouncer --version | head -n 1)"
